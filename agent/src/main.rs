//! Corral's agent: the first process of every sandbox.
//!
//! It serves the node over its stdin and stdout with the framed protocol of
//! `corral/api/agent_protocol.py`: commands (spawn, stream, stdin, signals, timeouts) and
//! files (stat, list, read and write streams, mkdir, remove, rename, directory watches
//! with inotify), and tunnels to TCP
//! ports on the sandbox's own loopback (`connect`: exposed ports). The main thread reads
//! frames and dispatches them; quick operations run inline, a file download gets a thread
//! of its own, each command a thread pumping its output, and each tunnel two threads.
//!
//! When the node goes away (its end of the channel closes), the sandbox lives on:
//! transfers in flight are dropped and tunnels closed, running commands keep running with
//! their output discarded, and the agent waits up to `CORRAL_AGENT_ORPHAN_GRACE` seconds for
//! a restarted node to connect to the socket at `CORRAL_AGENT_SOCKET`. Past that, it kills
//! everything and exits, which ends the sandbox: no sandbox outlives its node for long.
//!
//! Pausing (`pause`): the agent answers once it has read every request before it, drops the
//! session as if the node had gone (a socket channel is closed: a connected host socket
//! makes gVisor's checkpoint fail), stops the clock its deadlines run on (`clock.rs`), and
//! waits, with no deadline, for the next session: a `hello` request on its stdin (the pipes
//! a restore gave it, or the same ones after a freeze) or a node on the socket. Its original
//! stdin and stdout stay open for ever for that reason: a gVisor restore re-binds them to the
//! restoring process's pipes.
//!
//! It is written in Rust with the standard library only, and linked statically, because a
//! sandbox starts with it: `docs/benchmarks.md` has the measurements that chose it over the
//! Python agent it replaced (whose interpreter start alone took most of the start budget).

mod channel;
mod clock;
mod errors;
mod files;
mod json;
mod paths;
mod processes;
mod proto;
mod sys;
mod tunnels;
mod users;
mod watch;

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use channel::{Channel, Reader};
use clock::Clock;
use errors::RequestError;
use files::{error, Files};
use json::{Obj, Value};
use processes::ProcessTable;
use tunnels::Tunnels;
use watch::Watches;

/// Signals whose default ends or stops a process. As PID 1 the agent only gets signals it
/// handles; a no-op handler (reset to the default in every child at exec) keeps sandbox
/// code from interrupting it even where the sandbox's kernel does not shield its init.
/// SIGKILL and SIGSTOP stay fatal: the node then stops the sandbox with the reason. Fault
/// signals get `sys::guard_faults`.
const CAUGHT_SIGNALS: [i32; 18] = [2, 15, 1, 3, 10, 12, 14, 26, 27, 29, 30, 24, 25, 20, 21, 22, 6, 5];
const DEFAULT_ORPHAN_GRACE: f64 = 600.0;
const READ_STACK: usize = 256 * 1024;
/// How often a paused agent whose stdin is at its end looks again (and tries the socket).
const PAUSED_POLL: Duration = Duration::from_millis(20);

/// A mutex lock that survives a panic of another holder (the agent must go on serving).
pub trait Lock<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Lock<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Agent {
    channel: Arc<Channel>,
    processes: Arc<ProcessTable>,
    files: Arc<Files>,
    tunnels: Arc<Tunnels>,
    watches: Arc<Watches>,
    clock: Arc<Clock>,
    last_id: i64,
    /// The stdout the sandbox started with (a descriptor of its own, never closed): a
    /// session on stdin answers on it.
    stdio_out: RawFd,
}

/// Why a session ended.
enum Ended {
    /// The node closed the channel (or broke the protocol).
    Closed,
    /// The node paused the sandbox (see `pause`).
    Paused,
}

impl Agent {
    /// Serve nodes until none comes back within `orphan_grace`; then end the sandbox.
    /// `stdio` (the sandbox's stdin) is never dropped: a paused sandbox's next session may
    /// come on it.
    fn serve(&mut self, mut stdio: Reader, socket: Option<String>, orphan_grace: f64) {
        let mut attached: Option<Reader> = None; // a node on the socket
        let mut greet = true;
        loop {
            let ended = match attached.as_mut() {
                Some(reader) => self.serve_one(reader, greet, false),
                None => self.serve_one(&mut stdio, greet, true),
            };
            attached = None; // a socket's read half closes here, its write half in `pause`
            let stream = match ended {
                Ended::Paused => match await_session(&stdio, socket.as_deref()) {
                    None => {
                        greet = false; // the node's `hello` starts the session
                        continue;
                    }
                    Some(stream) => stream,
                },
                Ended::Closed => {
                    self.channel.detach();
                    self.detach_all();
                    let Some(path) = socket.as_deref().filter(|_| orphan_grace > 0.0) else { break };
                    let deadline = Instant::now() + Duration::from_secs_f64(orphan_grace.min(1e9));
                    let Some(stream) = channel::reconnect(path, deadline) else { break };
                    stream
                }
            };
            let Ok(writer) = stream.try_clone() else { break };
            self.channel.attach(unsafe { File::from_raw_fd(writer.into_raw_fd()) });
            attached = Some(BufReader::with_capacity(256 * 1024, unsafe { File::from_raw_fd(stream.into_raw_fd()) }));
            greet = true;
        }
        self.processes.kill_all();
    }

    fn serve_one(&mut self, reader: &mut Reader, greet: bool, on_stdio: bool) -> Ended {
        if greet {
            self.hello(0, None);
        }
        loop {
            let (header, data) = match channel::recv(reader) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ended::Closed,
                Err(err) => {
                    log(&format!("closing the channel: {}", err.0));
                    return Ended::Closed;
                }
            };
            let req_id = header.get("id").and_then(Value::as_int).unwrap_or(0);
            self.last_id = self.last_id.max(req_id);
            match header.get("op").and_then(Value::as_bytes).unwrap_or_default() {
                b"pause" => {
                    self.pause(req_id);
                    return Ended::Paused;
                }
                b"hello" => {
                    let writer = if on_stdio { self.stdio_writer() } else { None };
                    self.hello(req_id, writer);
                    continue;
                }
                _ => {}
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| self.dispatch(req_id, &header, data)));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(err)) => self.channel.send(error(req_id, &err), b""),
                // A bug in the agent must not end the sandbox.
                Err(_) => self.channel.send(error(req_id, &RequestError::new(
                    "agent_error", "the agent failed serving this request")), b""),
            }
        }
    }

    /// Start a session: what earlier sessions followed (output, transfers, tunnels) is no
    /// longer followed, the clock runs, and the node gets the hello (`next_id`: request ids
    /// it must not reuse, so that commands started before keep theirs). With `writer`, the
    /// session answers there, the hello first.
    fn hello(&mut self, req_id: i64, writer: Option<File>) {
        self.detach_all();
        self.clock.resume();
        let hello = Obj::new().set("id", Value::Int(req_id)).set("ev", Value::str("hello"))
            .set("version", Value::Int(proto::PROTOCOL_VERSION))
            .set("pid", Value::Int(i64::from(sys::pid())))
            .set("next_id", Value::Int(self.last_id + 1)).value();
        match writer {
            Some(writer) => self.channel.attach_first(writer, hello),
            None => self.channel.send(hello, b""),
        }
    }

    /// The node pauses the sandbox: every request before this one was read; answer, then
    /// drop the session (its output, transfers and tunnels; a socket's write half) and stop
    /// the clock. Commands run on until the sandbox is frozen or checkpointed.
    fn pause(&mut self, req_id: i64) {
        self.clock.pause();
        self.detach_all();
        let _ = self.reply(req_id, Obj::new(), b"");
        self.channel.detach();
    }

    fn detach_all(&self) {
        self.processes.detach();
        self.files.detach();
        self.tunnels.detach();
        self.watches.detach();
    }

    /// A new descriptor of the sandbox's original stdout.
    fn stdio_writer(&self) -> Option<File> {
        let fd = sys::dup_fd(self.stdio_out).ok()?;
        sys::set_cloexec(fd);
        Some(unsafe { File::from_raw_fd(fd) })
    }

    fn dispatch(&self, req_id: i64, req: &Value, mut data: Vec<u8>) -> errors::Result<()> {
        let op = req.get("op").and_then(Value::as_bytes).unwrap_or_default();
        let simple = match op {
            b"stat" => Some(self.files.stat(req)?),
            b"exists" => Some(self.files.exists(req)?),
            b"list" => Some(self.files.list(req)?),
            b"mkdir" => Some(self.files.mkdir(req)?),
            b"remove" => Some(self.files.remove(req)?),
            b"rename" => Some(self.files.rename(req)?),
            b"ping" => Some((Obj::new().set("pid", Value::Int(i64::from(sys::pid()))), Vec::new())),
            b"processes" => Some((Obj::new().set("processes", self.processes.list()), Vec::new())),
            _ => None,
        };
        if let Some((fields, data)) = simple {
            return self.reply(req_id, fields, &data);
        }
        let target = req.get("target").and_then(Value::as_int);
        match op {
            b"exec" => self.processes.exec(req_id, req)?,
            b"connect" => self.tunnels.connect(req_id, req)?,
            b"chunk" => {
                if !self.tunnels.chunk(req, &mut data) {
                    self.files.write_chunk(req, &data);
                }
            }
            b"credit" => {
                if let (Some(target), Some(n)) = (target, req.get("n").and_then(Value::as_int)) {
                    if !self.processes.grant(target, n) && !self.files.credit(target, n)
                        && !self.watches.credit(target, n) {
                        self.tunnels.credit(target, n);
                    }
                }
            }
            b"cancel" => {
                if let Some(target) = target {
                    if !self.processes.release(target) && !self.watches.cancel(target) {
                        self.files.cancel(target);
                        self.tunnels.cancel(target);
                    }
                }
            }
            b"stdin" => self.processes.stdin(req_id, req, data)?,
            b"signal" => {
                self.processes.signal(req)?;
                self.reply(req_id, Obj::new(), b"")?;
            }
            b"attach" => {
                self.processes.attach(req.get("target"))?;
                self.reply(req_id, Obj::new(), b"")?;
            }
            b"write" => self.files.write_open(req_id, req)?,
            b"watch" => self.watches.watch(req_id, req)?,
            b"read" => {
                let (files, channel, req) = (self.files.clone(), self.channel.clone(), req.clone());
                let spawned = std::thread::Builder::new().name("read".into()).stack_size(READ_STACK)
                    .spawn(move || {
                        if let Err(err) = files.read(req_id, &req) {
                            channel.send(error(req_id, &err), b"");
                        }
                    });
                if spawned.is_err() {
                    return Err(RequestError::new("resource_exhausted", "cannot start a thread to \
                        serve the download: the sandbox's pids limit is reached"));
                }
            }
            _ => {
                let shown = req.get("op").map(json::to_string).unwrap_or_else(|| "None".into());
                return Err(RequestError::invalid(format!("unknown operation {shown}")));
            }
        }
        Ok(())
    }

    fn reply(&self, req_id: i64, fields: Obj, data: &[u8]) -> errors::Result<()> {
        let mut header = Obj::new().set("id", Value::Int(req_id)).set("ev", Value::str("ok"));
        for (key, value) in fields.0 {
            header.0.push((key, value));
        }
        self.channel.send_checked(header.value(), data).map_err(|err| {
            RequestError::new("resource_exhausted", format!("the reply is too large: {}", err.0))
        })
    }
}

/// A line on stderr, which the node keeps a tail of; nowhere once the node is gone.
fn log(message: &str) {
    let _ = writeln!(std::io::stderr(), "corral-agent: {message}");
}

/// A paused agent's wait for its next session, with no deadline: None once a request is
/// waiting on stdin (the new pipes of a restore, or the same ones after a freeze), or the
/// socket once a node listens there (a restarted node resuming a frozen sandbox). A stdin
/// at its end (its node gone) is looked at again every `PAUSED_POLL`: a restore re-binds it.
fn await_session(stdio: &Reader, socket: Option<&str>) -> Option<UnixStream> {
    loop {
        if !stdio.buffer().is_empty() {
            return None;
        }
        let mut fds = [sys::PollFd { fd: stdio.get_ref().as_raw_fd(), events: sys::POLLIN, revents: 0 }];
        let polled = sys::poll_fds(&mut fds, 100);
        if matches!(polled, Ok(n) if n > 0) && fds[0].revents & sys::POLLIN != 0 {
            return None;
        }
        if let Some(stream) = socket.and_then(|path| UnixStream::connect(path).ok()) {
            return Some(stream);
        }
        if !matches!(polled, Ok(0)) {
            std::thread::sleep(PAUSED_POLL);
        }
    }
}

fn orphan_grace() -> f64 {
    std::env::var("CORRAL_AGENT_ORPHAN_GRACE").ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .map_or(DEFAULT_ORPHAN_GRACE, |v| v.max(0.0))
}

/// The root named on the command line: none (`/`), or `--root DIR` (tests only). With
/// `--sync` the agent only flushes the sandbox's filesystems (sync(2)) and exits: an
/// image build's step ends with it, whatever the image has (or lacks) of its own.
fn root_from_args() -> Result<paths::Root, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(paths::Root::slash()),
        [flag] if flag == "--sync" => {
            sys::sync_all();
            std::process::exit(0);
        }
        [flag, dir] if flag == "--root" => paths::Root::at(dir),
        _ => Err(format!("unexpected arguments {args:?}; the agent takes none (or --root DIR, \
                          or --sync)")),
    }
}

fn main() {
    let root = match root_from_args() {
        Ok(root) => Arc::new(root),
        Err(message) => {
            log(&message);
            std::process::exit(2);
        }
    };
    for signum in CAUGHT_SIGNALS {
        sys::catch(signum);
    }
    sys::guard_faults();
    // The channel moves off descriptors 0 and 1 (close-on-exec), which become /dev/null:
    // no command can inherit it.
    let (read_fd, write_fd) = match (sys::dup_fd(0), sys::dup_fd(1)) {
        (Ok(r), Ok(w)) => (r, w),
        _ => {
            log("cannot duplicate the channel's descriptors");
            std::process::exit(2);
        }
    };
    for fd in [read_fd, write_fd] {
        sys::set_cloexec(fd);
    }
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        let null = null.into_raw_fd();
        let _ = sys::dup2_fd(null, 0);
        let _ = sys::dup2_fd(null, 1);
        sys::close(null);
    }
    // The channel's writer is a copy of the original stdout: pausing drops the writer, and
    // the original stays for the session after it.
    let Ok(channel_fd) = sys::dup_fd(write_fd) else {
        log("cannot duplicate the channel's descriptors");
        std::process::exit(2);
    };
    sys::set_cloexec(channel_fd);
    let (reader, writer) = unsafe { (File::from_raw_fd(read_fd), File::from_raw_fd(channel_fd)) };
    let channel = Arc::new(Channel::new(writer));
    let clock = Arc::new(Clock::new());
    let mut agent = Agent {
        processes: ProcessTable::new(channel.clone(), root.clone(), clock.clone()),
        files: Arc::new(Files::new(channel.clone(), root.clone())),
        tunnels: Tunnels::new(channel.clone()),
        watches: Watches::new(channel.clone(), root.clone()),
        channel,
        clock,
        last_id: 0,
        stdio_out: write_fd,
    };
    let socket = std::env::var("CORRAL_AGENT_SOCKET").ok().filter(|s| !s.is_empty());
    agent.serve(BufReader::with_capacity(256 * 1024, reader), socket, orphan_grace());
}
