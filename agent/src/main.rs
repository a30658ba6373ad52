//! Corral's agent: the first process of every sandbox.
//!
//! It serves the node over its stdin and stdout with the framed protocol of
//! `corral/api/agent_protocol.py`: commands (spawn, stream, stdin, signals, timeouts) and
//! files (stat, list, read and write streams, mkdir, remove, rename), and tunnels to TCP
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
//! It is written in Rust with the standard library only, and linked statically, because a
//! sandbox starts with it: `docs/benchmarks.md` has the measurements that chose it over the
//! Python agent it replaced (whose interpreter start alone took most of the start budget).

mod channel;
mod errors;
mod files;
mod json;
mod paths;
mod processes;
mod proto;
mod sys;
mod tunnels;
mod users;

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use channel::{Channel, Reader};
use errors::RequestError;
use files::{error, Files};
use json::{Obj, Value};
use processes::ProcessTable;
use tunnels::Tunnels;

/// Signals whose default ends or stops a process. As PID 1 the agent only gets signals it
/// handles; a no-op handler (reset to the default in every child at exec) keeps sandbox
/// code from interrupting it even where the sandbox's kernel does not shield its init.
/// SIGKILL and SIGSTOP stay fatal: the node then stops the sandbox with the reason. Fault
/// signals get `sys::guard_faults`.
const CAUGHT_SIGNALS: [i32; 18] = [2, 15, 1, 3, 10, 12, 14, 26, 27, 29, 30, 24, 25, 20, 21, 22, 6, 5];
const DEFAULT_ORPHAN_GRACE: f64 = 600.0;
const READ_STACK: usize = 256 * 1024;

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
    last_id: i64,
}

impl Agent {
    /// Serve nodes until none comes back within `orphan_grace`; then end the sandbox.
    fn serve(&mut self, mut reader: Reader, socket: Option<String>, orphan_grace: f64) {
        loop {
            self.serve_one(&mut reader);
            self.channel.detach();
            self.processes.detach();
            self.files.detach();
            self.tunnels.detach();
            let Some(path) = socket.as_deref().filter(|_| orphan_grace > 0.0) else { break };
            let deadline = Instant::now() + Duration::from_secs_f64(orphan_grace.min(1e9));
            let Some(stream) = channel::reconnect(path, deadline) else { break };
            let Ok(writer) = stream.try_clone() else { break };
            self.channel.attach(unsafe { File::from_raw_fd(writer.into_raw_fd()) });
            reader = BufReader::with_capacity(256 * 1024, unsafe { File::from_raw_fd(stream.into_raw_fd()) });
        }
        self.processes.kill_all();
    }

    fn serve_one(&mut self, reader: &mut Reader) {
        // next_id: request ids the node must not reuse (commands started by a previous
        // node keep theirs, so that a re-attached node can still signal them).
        self.channel.send(Obj::new().set("id", Value::Int(0)).set("ev", Value::str("hello"))
            .set("version", Value::Int(proto::PROTOCOL_VERSION))
            .set("pid", Value::Int(i64::from(sys::pid())))
            .set("next_id", Value::Int(self.last_id + 1)).value(), b"");
        loop {
            let (header, data) = match channel::recv(reader) {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(err) => {
                    log(&format!("closing the channel: {}", err.0));
                    return;
                }
            };
            let req_id = header.get("id").and_then(Value::as_int).unwrap_or(0);
            self.last_id = self.last_id.max(req_id);
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
                    if !self.processes.grant(target, n) && !self.files.credit(target, n) {
                        self.tunnels.credit(target, n);
                    }
                }
            }
            b"cancel" => {
                if let Some(target) = target {
                    self.files.cancel(target);
                    self.tunnels.cancel(target);
                }
            }
            b"stdin" => self.processes.stdin(req_id, req, data)?,
            b"signal" => {
                self.processes.signal(req)?;
                self.reply(req_id, Obj::new(), b"")?;
            }
            b"write" => self.files.write_open(req_id, req)?,
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
    let (reader, writer) = unsafe { (File::from_raw_fd(read_fd), File::from_raw_fd(write_fd)) };
    let channel = Arc::new(Channel::new(writer));
    let mut agent = Agent {
        processes: ProcessTable::new(channel.clone(), root.clone()),
        files: Arc::new(Files::new(channel.clone(), root)),
        tunnels: Tunnels::new(channel.clone()),
        channel,
        last_id: 0,
    };
    let socket = std::env::var("CORRAL_AGENT_SOCKET").ok().filter(|s| !s.is_empty());
    agent.serve(BufReader::with_capacity(256 * 1024, reader), socket, orphan_grace());
}
