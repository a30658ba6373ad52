//! Processes inside the sandbox: spawn, stream, feed stdin, signal, time out, reap.
//!
//! A command may run on a pseudo-terminal of its own (`pty`): the terminal is its stdin,
//! stdout and stderr and its controlling terminal (so that Ctrl-C typed into it interrupts
//! the foreground job), its output is the terminal's, and `resize` changes its size.
//!
//! The agent is the sandbox's PID 1, so every orphan ends up as its child. One reaper
//! thread owns `waitpid(-1)`, and a command's pid is registered under the table's lock
//! before the reaper can see it exit, so an exit status can never be lost or stolen. A
//! command's whole tree is killed on timeout: its process group, its session, and every
//! descendant found under `/proc`, stopped first so that none can fork away between the
//! scan and the kill.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Lock;
use crate::channel::{Channel, Credits};
use crate::clock::Clock;
use crate::errors::{RequestError, Result};
use crate::files::{error, event};
use crate::json::{Obj, Value};
use crate::paths::{os, repr, Root};
use crate::proto::{self, MAX_ARGV};
use crate::sys::{self, Pid};
use crate::users;

/// How long output is still drained after the command's own exit.
const EXIT_GRACE: Duration = Duration::from_millis(200);
/// Looser than the node's bound (limits.MAX_ENV_VARS): a command gets the sandbox's
/// environment and its own, each within that bound.
const MAX_ENV: usize = 4096;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const THREAD_STACK: usize = 256 * 1024;
/// What `TERM` a command on a terminal gets unless its environment names one.
const DEFAULT_TERM: &str = "xterm-256color";

type StdinItem = (i64, Vec<u8>, bool);

struct Proc {
    req_id: i64,
    pid: Pid,
    argv: Vec<Vec<u8>>,
    started: f64,
    credits: Credits,
    stdin: Mutex<Option<mpsc::Sender<StdinItem>>>,
    /// The master side of the command's terminal, if it has one (for `resize`).
    pty: Option<File>,
    reason: Mutex<Option<&'static str>>,
    /// The raw wait status, once the reaper collected it.
    status: Mutex<Option<i32>>,
    exited: Condvar,
}

impl Proc {
    fn has_exited(&self) -> bool {
        self.status.locked().is_some()
    }

    fn set_reason(&self, reason: &'static str, overwrite: bool) {
        let mut slot = self.reason.locked();
        if overwrite || slot.is_none() {
            *slot = Some(reason);
        }
    }
}

#[derive(Default)]
struct Tables {
    by_id: HashMap<i64, Arc<Proc>>,
    by_pid: HashMap<Pid, Arc<Proc>>,
}

pub struct ProcessTable {
    channel: Arc<Channel>,
    root: Arc<Root>,
    /// Timeouts run on it: paused time does not count.
    clock: Arc<Clock>,
    tables: Mutex<Tables>,
    /// Set when a child was started: wakes a reaper that found none.
    have_children: Mutex<bool>,
    children_cond: Condvar,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A thread waiting for its work: it runs `f` on the one value sent, or ends if the sender
/// is dropped unused.
fn parked<T: Send + 'static, F: FnOnce(T) + Send + 'static>(name: &str, f: F)
        -> std::io::Result<mpsc::Sender<T>> {
    let (tx, rx) = mpsc::channel::<T>();
    std::thread::Builder::new().name(name.into()).stack_size(THREAD_STACK)
        .spawn(move || {
            if let Ok(work) = rx.recv() {
                f(work);
            }
        })
        .map(|_| tx)
}

fn cstring(bytes: &[u8]) -> CString {
    // Every string was checked for NUL bytes before it gets here.
    CString::new(bytes.to_vec()).unwrap_or_default()
}

impl ProcessTable {
    pub fn new(channel: Arc<Channel>, root: Arc<Root>, clock: Arc<Clock>) -> Arc<ProcessTable> {
        let table = Arc::new(ProcessTable {
            channel, root, clock, tables: Mutex::new(Tables::default()),
            have_children: Mutex::new(false), children_cond: Condvar::new(),
        });
        let reaper = table.clone();
        // The reaper is vital: without it no command would ever be seen to exit.
        std::thread::Builder::new().name("reaper".into()).stack_size(THREAD_STACK)
            .spawn(move || reaper.reap_forever()).expect("cannot start the reaper thread");
        table
    }

    // -- requests -------------------------------------------------------------------

    /// Start a command; its events follow on `req_id`.
    pub fn exec(self: &Arc<Self>, req_id: i64, req: &Value) -> Result<()> {
        let argv = argv_of(req)?;
        let mut env = env_of(req.get("env"))?;
        let cwd = match req.get("cwd") {
            None => b"/".to_vec(),
            Some(Value::Str(c)) if !c.contains(&0) && c.first() == Some(&b'/') => c.clone(),
            Some(_) => return Err(RequestError::invalid("cwd must be an absolute path")),
        };
        let cwd_opened = self.root.host(&cwd);
        if !std::fs::metadata(os(&cwd_opened)).map(|m| m.is_dir()).unwrap_or(false) {
            return Err(RequestError::new("not_found",
                format!("working directory {} does not exist", repr(&cwd))));
        }
        let timeout = match req.get("timeout") {
            None | Some(Value::Null) => None,
            Some(Value::Int(t)) if *t > 0 => Some(*t as f64),
            Some(Value::Float(t)) if *t > 0.0 => Some(*t),
            Some(_) => return Err(RequestError::invalid("timeout must be a positive number")),
        };
        let user = users::resolve(req.get("user"), &self.root)?;
        for (key, value) in [("HOME", user.home.clone()), ("USER", user.name.clone()),
                             ("LOGNAME", user.name.clone()), ("PATH", DEFAULT_PATH.into())] {
            if !env.iter().any(|(k, _)| k == key.as_bytes()) {
                env.push((key.as_bytes().to_vec(), value));
            }
        }
        let pty = pty_size(req.get("pty"))?;
        if pty.is_some() && !env.iter().any(|(k, _)| k == b"TERM") {
            env.push((b"TERM".to_vec(), DEFAULT_TERM.as_bytes().to_vec()));
        }
        // A terminal always takes input: typing into it is what it is for.
        let want_stdin = pty.is_some() || req.get("stdin").map_or(false, Value::truthy);

        // Everything the child needs, made before the fork (the child may not allocate).
        let path_var = env.iter().find(|(k, _)| k == b"PATH").map(|(_, v)| v.clone());
        let programs = candidates(&argv[0], path_var.as_deref());
        let argv_c: Vec<CString> = argv.iter().map(|a| cstring(a)).collect();
        let env_c: Vec<CString> = env.iter().map(|(k, v)| {
            let mut pair = k.clone();
            pair.push(b'=');
            pair.extend_from_slice(v);
            cstring(&pair)
        }).collect();
        let mut argv_p: Vec<*const std::os::raw::c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
        argv_p.push(std::ptr::null());
        let mut env_p: Vec<*const std::os::raw::c_char> = env_c.iter().map(|a| a.as_ptr()).collect();
        env_p.push(std::ptr::null());
        let (me_uid, me_gid) = (sys::uid(), sys::gid());
        let switch = user.uid != me_uid || user.gid != me_gid;
        let spawn_error = |err: std::io::Error| -> RequestError {
            let shown = repr(&argv[0]);
            match err.raw_os_error() {
                Some(2) | Some(20) => RequestError::new("not_found", format!("executable {shown} not found")),
                Some(13) | Some(1) => RequestError::new("permission_denied", format!("cannot execute {shown}")),
                Some(11) => RequestError::new("resource_exhausted",
                    "cannot start a process: the sandbox's pids limit is reached"),
                _ => RequestError::invalid(format!("cannot start {shown}: {}", sys::strerror(&err))),
            }
        };
        let Stdio { child: child_ends, stdin: stdin_parent, outputs, pty: pty_master } =
            match pty {
                Some((cols, rows)) => terminal(cols, rows).map_err(|e| RequestError::new(
                    // Out of descriptors or of terminals (pty max), or none in this sandbox.
                    if matches!(e.raw_os_error(), Some(11 | 23 | 24 | 28)) { "resource_exhausted" }
                    else { "unavailable" },
                    format!("cannot open a terminal: {}", sys::strerror(&e))))?,
                None => pipes(want_stdin).map_err(&spawn_error)?,
            };
        let plan = sys::ChildPlan {
            programs: programs.iter().map(|p| cstring(p)).collect(),
            argv: argv_p,
            envp: env_p,
            cwd: cstring(&cwd_opened),
            stdio: [child_ends[0].as_raw_fd(), child_ends[1].as_raw_fd(), child_ends[2].as_raw_fd()],
            user: switch.then(|| (user.uid, user.gid, user.groups.clone())),
            tty: pty.is_some(),
        };

        // Every thread that will serve the command starts before the command does: if the
        // pids limit stops one, the request is refused and nothing needs undoing.
        let refused = |_| RequestError::new("resource_exhausted", "cannot start a thread to \
            serve the command: the sandbox's pids limit is reached");
        let table = self.clone();
        let pump = parked("pump", move |(proc, outputs): (Arc<Proc>, Vec<(File, &'static str)>)| {
            table.pump(&proc, outputs)
        }).map_err(refused)?;
        let timer = match timeout {
            Some(seconds) => {
                let table = self.clone();
                Some(parked("timer", move |proc: Arc<Proc>| table.time_out(&proc, seconds))
                     .map_err(refused)?)
            }
            None => None,
        };
        let feeder = match stdin_parent {
            Some(pipe) => {
                let channel = self.channel.clone();
                let (tx, rx) = mpsc::channel();
                let feeder = parked("stdin", move |()| feed_stdin(pipe, rx, &channel))
                    .map_err(refused)?;
                Some((feeder, tx))
            }
            None => None,
        };

        let proc = {
            let mut tables = self.tables.locked();
            let pid = sys::spawn(&plan).map_err(&spawn_error)?;
            let proc = Arc::new(Proc {
                req_id, pid, argv, started: now(), credits: Credits::new(),
                stdin: Mutex::new(None), pty: pty_master, reason: Mutex::new(None),
                status: Mutex::new(None), exited: Condvar::new(),
            });
            tables.by_id.insert(req_id, proc.clone());
            tables.by_pid.insert(pid, proc.clone());
            proc
        };
        drop(child_ends);
        *self.have_children.locked() = true;
        self.children_cond.notify_all();
        // "started" goes out before the pump may send any output.
        self.channel.send(Obj::new().set("id", Value::Int(req_id)).set("ev", Value::str("started"))
                          .set("pid", Value::Int(i64::from(proc.pid))).value(), b"");
        if let Some((feeder, tx)) = feeder {
            *proc.stdin.locked() = Some(tx);
            let _ = feeder.send(());
        }
        if let Some(timer) = timer {
            let _ = timer.send(proc.clone());
        }
        let _ = pump.send((proc, outputs));
        Ok(())
    }

    /// Set the size of a command's terminal.
    pub fn resize(&self, req: &Value) -> Result<()> {
        let proc = self.get(req.get("target"))?;
        let (cols, rows) = pty_size(Some(req))?
            .ok_or_else(|| RequestError::invalid("cols and rows are required"))?;
        let Some(master) = proc.pty.as_ref() else {
            return Err(RequestError::invalid("the command was not started on a terminal (pty)"));
        };
        sys::set_window(master.as_raw_fd(), cols, rows)
            .map_err(|e| RequestError::invalid(format!("resizing the terminal: {}", sys::strerror(&e))))
    }

    /// Queue bytes (and/or EOF) for a command's stdin; acknowledged once written.
    pub fn stdin(&self, req_id: i64, req: &Value, data: Vec<u8>) -> Result<()> {
        let proc = self.get(req.get("target"))?;
        let sender = proc.stdin.locked();
        match sender.as_ref() {
            None => Err(RequestError::invalid("the command was not started with stdin open")),
            Some(tx) => {
                let eof = req.get("eof").map_or(false, Value::truthy);
                let _ = tx.send((req_id, data, eof));
                Ok(())
            }
        }
    }

    /// Send a signal to a command's process group (SIGKILL: to its whole tree).
    pub fn signal(&self, req: &Value) -> Result<()> {
        let proc = self.get(req.get("target"))?;
        let signum = match req.get("signal") {
            Some(Value::Int(s)) if (1..=31).contains(s) || (34..=64).contains(s) => *s as i32,
            other => {
                let shown = other.map(crate::json::to_string).unwrap_or_else(|| "None".into());
                return Err(RequestError::invalid(format!("unknown signal {shown}")));
            }
        };
        if signum == sys::SIGKILL {
            proc.set_reason(proto::REASON_KILLED, false);
            kill_tree(proc.pid);
        } else {
            sys::signal_group(proc.pid, signum);
        }
        Ok(())
    }

    /// Credit a command's output stream (flow control); false if no such command.
    pub fn grant(&self, target: i64, count: i64) -> bool {
        let proc = self.tables.locked().by_id.get(&target).cloned();
        match proc {
            Some(proc) => {
                proc.credits.give(count);
                true
            }
            None => false,
        }
    }

    pub fn list(&self) -> Value {
        let procs: Vec<Arc<Proc>> = self.tables.locked().by_id.values()
            .filter(|p| !p.has_exited()).cloned().collect();
        let mut procs = procs;
        procs.sort_by_key(|p| p.req_id);
        // argv may be long (a whole script): listings show its start only.
        let items = procs.iter().take(1000).map(|p| {
            let argv = p.argv.iter().take(32).map(|a| Value::Str(prefix(a, 256))).collect();
            Obj::new().set("id", Value::Int(p.req_id)).set("pid", Value::Int(i64::from(p.pid)))
                .set("argv", Value::Arr(argv)).set("started_at", Value::Float(p.started))
                .set("pty", Value::Bool(p.pty.is_some())).value()
        }).collect();
        Value::Arr(items)
    }

    /// The node went away: keep every command running, drop its output from now on.
    pub fn detach(&self) {
        for proc in self.tables.locked().by_id.values() {
            proc.credits.close();
        }
    }

    /// Stop sending one running command's output (the node stopped following it); the
    /// command runs on, and `attach` sends its output again. False if no such command.
    pub fn release(&self, target: i64) -> bool {
        match self.tables.locked().by_id.get(&target) {
            Some(proc) => {
                proc.credits.close();
                true
            }
            None => false,
        }
    }

    /// Send a running command's output (from now on) to the node again, under the
    /// command's own id, after a `detach` (a resumed sandbox's kernel bridge).
    pub fn attach(&self, target: Option<&Value>) -> Result<()> {
        self.get(target)?.credits.reopen();
        Ok(())
    }

    pub fn kill_all(&self) {
        let pids: Vec<Pid> = self.tables.locked().by_id.values().map(|p| p.pid).collect();
        for pid in pids {
            kill_tree(pid);
        }
    }

    // -- internals --------------------------------------------------------------------

    fn get(&self, target: Option<&Value>) -> Result<Arc<Proc>> {
        let proc = target.and_then(Value::as_int)
            .and_then(|t| self.tables.locked().by_id.get(&t).cloned());
        match proc {
            Some(proc) if !proc.has_exited() => Ok(proc),
            _ => {
                let shown = target.map(crate::json::to_string).unwrap_or_else(|| "None".into());
                Err(RequestError::new("not_found", format!("no running command with id {shown}")))
            }
        }
    }

    /// Kill the command once it has run `seconds` on the agent's clock (paused time left
    /// out: while paused, the deadline never comes).
    fn time_out(&self, proc: &Proc, seconds: f64) {
        let deadline = self.clock.now() + Duration::from_secs_f64(seconds.min(1e9));
        let mut status = proc.status.locked();
        while status.is_none() {
            let left = deadline.saturating_sub(self.clock.now());
            if left.is_zero() {
                drop(status);
                proc.set_reason(proto::REASON_TIMEOUT, true);
                kill_tree(proc.pid);
                return;
            }
            status = proc.exited.wait_timeout(status, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }

    /// Forward the command's outputs (stdout and stderr, or its terminal) until each
    /// reaches its end or the command exited a while ago.
    fn pump(&self, proc: &Proc, mut outputs: Vec<(File, &'static str)>) {
        let mut open = vec![true; outputs.len()];
        let mut buf = vec![0u8; proto::CHUNK];
        let mut deadline: Option<Instant> = None;
        while open.iter().any(|o| *o) {
            if deadline.is_none() && proc.has_exited() {
                deadline = Some(Instant::now() + EXIT_GRACE);
            }
            if deadline.map_or(false, |d| Instant::now() >= d) {
                break;
            }
            let mut fds: Vec<sys::PollFd> = Vec::with_capacity(outputs.len());
            for (n, (file, _)) in outputs.iter().enumerate() {
                if open[n] {
                    fds.push(sys::PollFd { fd: file.as_raw_fd(), events: sys::POLLIN, revents: 0 });
                }
            }
            if sys::poll_fds(&mut fds, 50).is_err() {
                break;
            }
            for fd in fds.iter().filter(|f| f.revents != 0) {
                let Some(n) = outputs.iter().position(|(file, _)| file.as_raw_fd() == fd.fd) else {
                    continue;
                };
                let (file, ev) = &mut outputs[n];
                // A terminal whose every slave end closed reads as EIO: its end.
                let count = match file.read(&mut buf) {
                    Ok(count) => count,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => 0,
                };
                if count == 0 {
                    open[n] = false;
                    continue;
                }
                if proc.credits.take() {
                    self.channel.send(event(proc.req_id, ev), &buf[..count]);
                }
            }
        }
        drop(outputs);
        let status = {
            let mut status = proc.status.locked();
            while status.is_none() {
                status = proc.exited.wait(status).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            status.unwrap_or(0)
        };
        let reason = proc.reason.locked().map_or(Value::Null, Value::str);
        let mut exit = Obj::new().set("id", Value::Int(proc.req_id)).set("ev", Value::str("exit"))
            .set("reason", reason);
        let (code, signal) = (status >> 8 & 0xff, status & 0x7f);
        if signal != 0 {
            exit.put("exit_code", Value::Int(128 + i64::from(signal)));
            exit.put("signal", Value::Int(i64::from(signal)));
        } else {
            exit.put("exit_code", Value::Int(i64::from(code)));
            exit.put("signal", Value::Null);
        }
        if let Some(tx) = proc.stdin.locked().take() {
            let _ = tx.send((-1, Vec::new(), true));
        }
        self.channel.send(exit.value(), b"");
        self.tables.locked().by_id.remove(&proc.req_id);
    }

    fn reap_forever(&self) {
        loop {
            *self.have_children.locked() = false;
            match sys::wait_any() {
                Ok((pid, status)) => {
                    // An orphan (not a command of ours) is only reaped.
                    let proc = self.tables.locked().by_pid.remove(&pid);
                    if let Some(proc) = proc {
                        *proc.status.locked() = Some(status);
                        proc.exited.notify_all();
                    }
                }
                Err(sys::ECHILD) => {
                    let flag = self.have_children.locked();
                    if !*flag {
                        let _ = self.children_cond.wait_timeout(flag, Duration::from_secs(1));
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// A command's standard descriptors: the child's three ends, the agent's end of its stdin
/// (if open), the outputs to pump with their event names, and the terminal's master.
struct Stdio {
    child: [File; 3],
    stdin: Option<File>,
    outputs: Vec<(File, &'static str)>,
    pty: Option<File>,
}

/// Pipes for stdout and stderr; a pipe for stdin if `want_stdin`, else /dev/null.
fn pipes(want_stdin: bool) -> std::io::Result<Stdio> {
    let pipe = || -> std::io::Result<(File, File)> {
        let (r, w) = sys::cloexec_pipe()?;
        Ok(unsafe { (File::from_raw_fd(r), File::from_raw_fd(w)) })
    };
    let (stdin_child, stdin) = if want_stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (File::open("/dev/null")?, None)
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok(Stdio { child: [stdin_child, out_w, err_w], stdin,
               outputs: vec![(out_r, "stdout"), (err_r, "stderr")], pty: None })
}

/// A new terminal of `cols` x `rows`: the child gets its slave side three times; the
/// agent reads and writes (and resizes) the master side, each through a descriptor of its
/// own.
fn terminal(cols: u16, rows: u16) -> std::io::Result<Stdio> {
    let (master, slave) = sys::open_pty(cols, rows)?;
    let (master, slave) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
    let copy = |file: &File| -> std::io::Result<File> {
        let fd = sys::dup_fd(file.as_raw_fd())?;
        sys::set_cloexec(fd);
        Ok(unsafe { File::from_raw_fd(fd) })
    };
    let child = [copy(&slave)?, copy(&slave)?, slave];
    let (input, resize) = (copy(&master)?, copy(&master)?);
    Ok(Stdio { child, stdin: Some(input), outputs: vec![(master, "stdout")], pty: Some(resize) })
}

/// A terminal size (`{"cols": c, "rows": r}`, each 1 to MAX_PTY_SIZE), if one is given.
fn pty_size(pty: Option<&Value>) -> Result<Option<(u16, u16)>> {
    let bad = || RequestError::invalid(format!(
        "pty must be {{\"cols\": c, \"rows\": r}}, each a whole number from 1 to {}",
        proto::MAX_PTY_SIZE));
    match pty {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Obj(_)) => {
            let mut dims = [0u16; 2];
            for (slot, key) in dims.iter_mut().zip(["cols", "rows"]) {
                match pty.and_then(|p| p.get(key)) {
                    Some(Value::Int(n)) if (1..=proto::MAX_PTY_SIZE).contains(n) => *slot = *n as u16,
                    _ => return Err(bad()),
                }
            }
            Ok(Some((dims[0], dims[1])))
        }
        Some(_) => Err(bad()),
    }
}

fn feed_stdin(pipe: File, rx: mpsc::Receiver<StdinItem>, channel: &Channel) {
    let mut pipe = Some(pipe);
    while let Ok((req_id, data, eof)) = rx.recv() {
        if req_id < 0 {
            break;
        }
        let outcome = match pipe.as_mut() {
            None => Err("stdin is closed".to_string()),
            Some(file) => match file.write_all(&data) {
                Ok(()) => {
                    if eof {
                        pipe = None;
                    }
                    Ok(())
                }
                Err(e) => {
                    pipe = None;
                    Err(format!("writing stdin: {}", sys::strerror(&e)))
                }
            },
        };
        match outcome {
            Ok(()) => channel.send(event(req_id, "ok"), b""),
            Err(message) => channel.send(error(req_id, &RequestError::invalid(message)), b""),
        }
    }
}

/// The first `limit` characters of `text` (bytes, if it is not UTF-8).
fn prefix(text: &[u8], limit: usize) -> Vec<u8> {
    match std::str::from_utf8(text) {
        Ok(s) => s.chars().take(limit).collect::<String>().into_bytes(),
        Err(_) => text[..text.len().min(limit)].to_vec(),
    }
}

/// The paths execve tries for `program`, in order: itself if it names a path, else each
/// folder of `path` (like execvpe, whose first error other than "not found" wins).
fn candidates(program: &[u8], path: Option<&[u8]>) -> Vec<Vec<u8>> {
    if program.contains(&b'/') {
        return vec![program.to_vec()];
    }
    let path = path.unwrap_or(DEFAULT_PATH.as_bytes());
    path.split(|b| *b == b':').map(|dir| {
        let dir = if dir.is_empty() { &b"."[..] } else { dir };
        let mut full = dir.to_vec();
        full.push(b'/');
        full.extend_from_slice(program);
        full
    }).collect()
}

fn argv_of(req: &Value) -> Result<Vec<Vec<u8>>> {
    match (req.get("argv"), req.get("cmd")) {
        (None, Some(cmd)) | (Some(Value::Null), Some(cmd)) if !matches!(cmd, Value::Null) => {
            let cmd = match cmd {
                Value::Str(c) if !c.is_empty() && !c.contains(&0) => c,
                _ => return Err(RequestError::invalid("cmd must be a non-empty string without NUL")),
            };
            if std::fs::symlink_metadata("/bin/sh").is_err() && std::fs::metadata("/bin/sh").is_err() {
                return Err(RequestError::new("not_found", "this image has no /bin/sh; pass argv instead"));
            }
            Ok(vec![b"/bin/sh".to_vec(), b"-c".to_vec(), cmd.clone()])
        }
        (Some(argv), None) | (Some(argv), Some(Value::Null)) if !matches!(argv, Value::Null) => {
            let bad = || RequestError::invalid("argv must be a non-empty list of strings");
            let Value::Arr(items) = argv else { return Err(bad()) };
            if items.is_empty() || items.len() > MAX_ARGV {
                return Err(bad());
            }
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::Str(s) if !s.contains(&0) => out.push(s.clone()),
                    _ => return Err(bad()),
                }
            }
            if out[0].is_empty() {
                return Err(bad());
            }
            Ok(out)
        }
        _ => Err(RequestError::invalid("give exactly one of argv or cmd")),
    }
}

fn env_of(env: Option<&Value>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let items = match env {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Obj(items)) if items.len() <= MAX_ENV => items,
        Some(_) => return Err(RequestError::invalid("env must be an object of strings")),
    };
    let mut out = Vec::with_capacity(items.len());
    for (key, value) in items {
        match value {
            Value::Str(v) if !key.is_empty() && !key.contains(&b'=') && !key.contains(&0)
                && !v.contains(&0) => out.push((key.clone(), v.clone())),
            _ => return Err(RequestError::invalid(format!(
                "invalid environment variable {}", repr(key)))),
        }
    }
    Ok(out)
}

/// (ppid, pgrp, session) of a pid, or None if it is gone.
fn stat_ids(pid: Pid) -> Option<(Pid, Pid, Pid)> {
    let raw = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = raw.iter().rposition(|b| *b == b')')?;
    let text = std::str::from_utf8(raw.get(close + 2..)?).ok()?;
    let mut fields = text.split_ascii_whitespace().skip(1);
    let mut next = || fields.next().and_then(|f| f.parse::<Pid>().ok());
    Some((next()?, next()?, next()?))
}

/// SIGKILL `leader`, its group, its session and all descendants.
pub fn kill_tree(leader: Pid) {
    let me = sys::pid();
    let mut doomed: HashSet<Pid> = HashSet::new();
    for _ in 0..50 {
        let mut table: HashMap<Pid, (Pid, Pid, Pid)> = HashMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<Pid>().ok()) else {
                    continue;
                };
                if pid != me {
                    if let Some(ids) = stat_ids(pid) {
                        table.insert(pid, ids);
                    }
                }
            }
        }
        let mut found: HashSet<Pid> = table.iter()
            .filter(|(pid, (_, pgrp, sid))| **pid == leader || *pgrp == leader || *sid == leader)
            .map(|(pid, _)| *pid).collect();
        loop {
            let more: Vec<Pid> = table.iter()
                .filter(|(pid, (ppid, _, _))| found.contains(ppid) && !found.contains(pid))
                .map(|(pid, _)| *pid).collect();
            if more.is_empty() {
                break;
            }
            found.extend(more);
        }
        let new: Vec<Pid> = found.into_iter().filter(|p| !doomed.contains(p)).collect();
        if new.is_empty() {
            break;
        }
        for pid in &new {
            let _ = sys::send_signal(*pid, sys::SIGSTOP);
        }
        doomed.extend(new);
    }
    for pid in doomed {
        let _ = sys::send_signal(pid, sys::SIGKILL);
    }
}
