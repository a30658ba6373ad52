//! TCP tunnels to ports on the sandbox's own loopback: the agent's side of exposed ports.
//!
//! The node names a port, never an address: the agent connects to 127.0.0.1, then [::1],
//! and nowhere else, so a tunnel can neither leave the sandbox nor get around its network
//! policy. Each tunnel has two threads of its own, so that a slow or stuck app stalls only
//! its own tunnel: a reader that connects, answers `ok`, then forwards what the app sends as
//! `data` frames (credit flow control, like a download) and `end` at its EOF; and a writer
//! that writes the node's chunks in order, queued by the dispatch thread, and `ack`s each
//! one once written (`eof` shuts the socket's write side down).
//!
//! A tunnel leaves the table when both directions are done, at its first error (sent as
//! the tunnel's last frame) or on `cancel`; either of the last two shuts the socket down in
//! both directions, which wakes both threads.
//!
//! Threads outlive their tunnel a while in a small pool (`Pool`) and serve the next one:
//! under gVisor, starting two threads cost most of a new tunnel's latency (~3 ms of 4).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::Lock;
use crate::channel::{Channel, Credits};
use crate::errors::{RequestError, Result};
use crate::files::{error, event};
use crate::json::Value;
use crate::proto::{self, MAX_PORT_CONNECTIONS};
use crate::sys::strerror;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Buffers live on the heap: a tunnel's threads need little stack.
const THREAD_STACK: usize = 64 * 1024;
/// Chunks queued for the writer. The node keeps at most STREAM_WINDOW/2 unacknowledged
/// (a queued chunk is one), so only a node out of protocol fills the queue.
const WRITE_QUEUE: usize = proto::STREAM_WINDOW as usize;
/// Finished tunnel threads kept waiting for the next tunnel's work, and for how long.
const IDLE_THREADS: usize = 8;
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes from the node for the app; `eof` then shuts the write side down.
struct Chunk {
    data: Vec<u8>,
    eof: bool,
}

struct Tunnel {
    id: i64,
    port: u16,
    credits: Credits,
    /// The writer's queue; None once the node sent `eof` or the tunnel closed.
    writes: Mutex<Option<SyncSender<Chunk>>>,
    state: Mutex<State>,
}

struct State {
    /// Set once connected: kept to shut the socket down from another thread.
    stream: Option<Arc<TcpStream>>,
    reading: bool,
    writing: bool,
    /// No frame goes out for a closed tunnel.
    closed: bool,
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

pub struct Tunnels {
    channel: Arc<Channel>,
    open: Mutex<HashMap<i64, Arc<Tunnel>>>,
    pool: Arc<Pool>,
}

impl Tunnels {
    pub fn new(channel: Arc<Channel>) -> Arc<Tunnels> {
        let pool = Arc::new(Pool::default());
        Arc::new(Tunnels { channel, open: Mutex::new(HashMap::new()), pool })
    }

    /// Open a tunnel to `port` on loopback; its `ok` (or error) follows from its reader.
    ///
    /// The connect itself runs on the reader thread: an app that does not accept (a full
    /// backlog drops the SYN) would otherwise hold the dispatch thread for the timeout.
    pub fn connect(self: &Arc<Self>, req_id: i64, req: &Value) -> Result<()> {
        let port = port_of(req.get("port"))?;
        let (writes, queued) = mpsc::sync_channel(WRITE_QUEUE);
        let tunnel = Arc::new(Tunnel {
            id: req_id, port, credits: Credits::new(), writes: Mutex::new(Some(writes)),
            state: Mutex::new(State { stream: None, reading: true, writing: true, closed: false }),
        });
        {
            let mut open = self.open.locked();
            if open.len() >= MAX_PORT_CONNECTIONS {
                return Err(RequestError::new("resource_exhausted", format!(
                    "{MAX_PORT_CONNECTIONS} connections to the sandbox's ports are open, the most \
                     there may be; close one first")));
            }
            open.insert(req_id, tunnel.clone());
        }
        // Both threads start before anything happens: if the pids limit stops one, the
        // request is refused and dropping the other's sender ends it.
        let started = self.thread(&tunnel, move |tunnels, tunnel, stream: Arc<TcpStream>| {
            tunnels.write(tunnel, &stream, &queued);
        }).and_then(|writer| self.thread(&tunnel, move |tunnels, tunnel, ()| {
            tunnels.read(tunnel, &writer);
        }));
        match started {
            Ok(reader) => {
                let _ = reader.send(());
                Ok(())
            }
            Err(_) => {
                self.open.locked().remove(&req_id);
                Err(RequestError::new("resource_exhausted", "cannot start a thread to serve the \
                    connection: the sandbox's pids limit is reached"))
            }
        }
    }

    /// Queue a chunk for a tunnel's app; false if `target` is no tunnel (the chunk is then
    /// left in `data` for another table).
    pub fn chunk(&self, req: &Value, data: &mut Vec<u8>) -> bool {
        let Some(tunnel) = self.get(req.get("target").and_then(Value::as_int)) else { return false };
        let eof = req.get("eof").is_some_and(Value::truthy);
        let mut writes = tunnel.writes.locked();
        // Chunks after `eof`, or for a tunnel that failed, are dropped.
        let Some(queue) = writes.as_ref() else { return true };
        let full = matches!(queue.try_send(Chunk { data: std::mem::take(data), eof }),
                            Err(TrySendError::Full(_)));
        if eof {
            writes.take();
        }
        drop(writes);
        if full {
            self.close(&tunnel, Some(RequestError::invalid(format!(
                "more than {WRITE_QUEUE} chunks were sent without waiting for their ack"))));
        }
        true
    }

    pub fn credit(&self, target: i64, count: i64) -> bool {
        match self.get(Some(target)) {
            Some(tunnel) => {
                tunnel.credits.give(count);
                true
            }
            None => false,
        }
    }

    /// Close a tunnel at once, both directions, with no further frame.
    pub fn cancel(&self, target: i64) -> bool {
        match self.get(Some(target)) {
            Some(tunnel) => {
                self.close(&tunnel, None);
                true
            }
            None => false,
        }
    }

    /// The node went away: close every tunnel (its clients went with it).
    pub fn detach(&self) {
        let tunnels: Vec<Arc<Tunnel>> = self.open.locked().values().cloned().collect();
        for tunnel in tunnels {
            self.close(&tunnel, None);
        }
    }

    // -- internals --------------------------------------------------------------------

    fn get(&self, target: Option<i64>) -> Option<Arc<Tunnel>> {
        target.and_then(|t| self.open.locked().get(&t).cloned())
    }

    /// Start a thread of `tunnel` (a pooled one or a new one) waiting for its work: `body`
    /// runs on the one value sent, or never if the sender is dropped unused. A panic in
    /// `body` closes the tunnel only.
    fn thread<T: Send + 'static>(self: &Arc<Self>, tunnel: &Arc<Tunnel>,
                                 body: impl FnOnce(&Tunnels, &Tunnel, T) + Send + 'static)
            -> io::Result<mpsc::Sender<T>> {
        let (tx, rx) = mpsc::channel::<T>();
        let (tunnels, tunnel) = (self.clone(), tunnel.clone());
        Pool::run(&self.pool, Box::new(move || {
            let Ok(work) = rx.recv() else { return };
            if catch_unwind(AssertUnwindSafe(|| body(&tunnels, &tunnel, work))).is_err() {
                tunnels.close(&tunnel, Some(RequestError::new(
                    "agent_error", "the agent failed serving this connection")));
            }
        }))?;
        Ok(tx)
    }

    /// The reader: connect, answer `ok`, hand the socket to the writer, then forward the
    /// app's bytes until its EOF.
    fn read(&self, tunnel: &Tunnel, writer: &mpsc::Sender<Arc<TcpStream>>) {
        let stream = match dial(tunnel.port) {
            Ok(stream) => Arc::new(stream),
            Err(err) => return self.close(tunnel, Some(err)),
        };
        {
            let mut state = tunnel.state.locked();
            if state.closed {
                return; // cancelled while connecting
            }
            state.stream = Some(stream.clone());
            // `ok` goes out before the writer can ack and before any data.
            self.channel.send(event(tunnel.id, "ok"), b"");
        }
        let _ = writer.send(stream.clone());
        let mut buf = vec![0u8; proto::CHUNK];
        loop {
            let count = match (&*stream).read(&mut buf) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.close(tunnel, Some(RequestError::new("port_unavailable",
                    format!("the app in the sandbox reset the connection on port {}: {}",
                            tunnel.port, strerror(&e))))),
            };
            if count == 0 {
                self.emit(tunnel, event(tunnel.id, "end"), b"");
                return self.finish(tunnel, Direction::Read);
            }
            if !tunnel.credits.take() {
                return; // closed
            }
            self.emit(tunnel, event(tunnel.id, "data"), &buf[..count]);
        }
    }

    /// The writer: write each queued chunk fully, then ack it.
    fn write(&self, tunnel: &Tunnel, stream: &TcpStream, queued: &Receiver<Chunk>) {
        while let Ok(chunk) = queued.recv() {
            let mut written = (&*stream).write_all(&chunk.data);
            if chunk.eof {
                written = written.and_then(|()| stream.shutdown(Shutdown::Write));
            }
            if let Err(e) = written {
                return self.close(tunnel, Some(RequestError::new("port_unavailable", format!(
                    "the app in the sandbox closed the connection on port {}: {}",
                    tunnel.port, strerror(&e)))));
            }
            self.emit(tunnel, event(tunnel.id, "ack"), b"");
            if chunk.eof {
                return self.finish(tunnel, Direction::Write);
            }
        }
    }

    /// Send a frame of an open tunnel; none once it closed.
    fn emit(&self, tunnel: &Tunnel, header: Value, data: &[u8]) {
        let state = tunnel.state.locked();
        if !state.closed {
            self.channel.send(header, data);
        }
    }

    /// One direction is done; with both, the tunnel leaves the table.
    fn finish(&self, tunnel: &Tunnel, direction: Direction) {
        let mut state = tunnel.state.locked();
        match direction {
            Direction::Read => state.reading = false,
            Direction::Write => state.writing = false,
        }
        if state.reading || state.writing || state.closed {
            return;
        }
        state.closed = true;
        drop(state);
        self.open.locked().remove(&tunnel.id);
    }

    /// Close a tunnel: `err` as its last frame (none on cancel), the socket shut down both
    /// ways, both threads woken to end, and the tunnel out of the table.
    fn close(&self, tunnel: &Tunnel, err: Option<RequestError>) {
        {
            let mut state = tunnel.state.locked();
            if state.closed {
                return;
            }
            if let Some(err) = err {
                self.channel.send(error(tunnel.id, &err), b"");
            }
            state.closed = true;
            if let Some(stream) = state.stream.take() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        tunnel.writes.locked().take();
        tunnel.credits.close();
        self.open.locked().remove(&tunnel.id);
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads for tunnels, kept a while once their tunnel is done. A job never waits for a
/// busy thread: it goes to an idle one, or to one started for it. At most IDLE_THREADS
/// stay idle, each for at most IDLE_TIMEOUT, so the sandbox's pids limit loses little.
#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    wake: Condvar,
}

#[derive(Default)]
struct PoolState {
    /// Never more jobs than idle threads: each queued job has an idle thread to take it.
    jobs: Vec<Job>,
    idle: usize,
}

impl Pool {
    fn run(pool: &Arc<Pool>, job: Job) -> io::Result<()> {
        {
            let mut state = pool.state.locked();
            if state.idle > state.jobs.len() {
                state.jobs.push(job);
                pool.wake.notify_one();
                return Ok(());
            }
        }
        let pool = pool.clone();
        std::thread::Builder::new().name("tunnel".into()).stack_size(THREAD_STACK)
            .spawn(move || pool.serve(job)).map(drop)
    }

    /// Run `job`, then the jobs handed over while idle; end after IDLE_TIMEOUT without one,
    /// or at once when IDLE_THREADS others already wait.
    fn serve(&self, mut job: Job) {
        loop {
            job();
            let mut state = self.state.locked();
            if state.idle >= IDLE_THREADS {
                return;
            }
            state.idle += 1;
            let mut timed_out = false;
            while state.jobs.is_empty() && !timed_out {
                let (next, wait) = self.wake.wait_timeout(state, IDLE_TIMEOUT)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                state = next;
                timed_out = wait.timed_out();
            }
            state.idle -= 1;
            match state.jobs.pop() {
                Some(next) => job = next,
                None => return,
            }
        }
    }
}

/// The port a `connect` names: an integer 1..=65535.
fn port_of(value: Option<&Value>) -> Result<u16> {
    match value {
        Some(Value::Int(port)) if (1..=65535).contains(port) => Ok(*port as u16),
        _ => Err(RequestError::invalid("port must be an integer between 1 and 65535")),
    }
}

/// Connect to `port` on loopback: 127.0.0.1, else [::1]; never another address.
fn dial(port: u16) -> Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT)
        .or_else(|first| TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| first));
    match stream {
        Ok(stream) => {
            // Interactive traffic (a terminal over a WebSocket) must not wait for Nagle.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        // 127.0.0.1's error: an app on [::1] only would have answered.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(RequestError::new(
            "port_unavailable", format!("nothing is listening on port {port} in the sandbox \
            ({}); listen on 0.0.0.0 or 127.0.0.1", strerror(&e)))),
        Err(e) => Err(RequestError::new("port_unavailable", format!(
            "port {port} in the sandbox does not accept connections ({})", strerror(&e)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn ports_are_checked() {
        for bad in [Value::Int(0), Value::Int(65536), Value::Int(-1), Value::str("80"),
                    Value::Bool(true), Value::Float(80.0), Value::Null] {
            assert!(port_of(Some(&bad)).is_err(), "{bad:?}");
        }
        assert!(port_of(None).is_err());
        assert_eq!(port_of(Some(&Value::Int(1))).unwrap(), 1);
        assert_eq!(port_of(Some(&Value::Int(65535))).unwrap(), 65535);
    }

    /// Run `count` jobs at once, each until `release` is sent; their threads' ids.
    fn run_together(pool: &Arc<Pool>, count: usize) -> Vec<std::thread::ThreadId> {
        let (started, ids) = mpsc::channel();
        let release: Vec<mpsc::Sender<()>> = (0..count).map(|_| {
            let (release, wait) = mpsc::channel::<()>();
            let started = started.clone();
            Pool::run(pool, Box::new(move || {
                started.send(std::thread::current().id()).unwrap();
                let _ = wait.recv();
            })).unwrap();
            release
        }).collect();
        // Every job runs while all the others still block: none waits for a busy thread.
        let ids: Vec<_> = (0..count).map(|_| ids.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        drop(release);
        ids
    }

    fn wait_idle(pool: &Pool, count: usize) {
        for _ in 0..1000 {
            if pool.state.locked().idle == count {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("{count} threads never went idle");
    }

    #[test]
    fn pool_reuses_threads_and_keeps_few() {
        let pool = Arc::new(Pool::default());
        let first = run_together(&pool, IDLE_THREADS + 4);
        let distinct: std::collections::HashSet<_> = first.iter().collect();
        assert_eq!(distinct.len(), IDLE_THREADS + 4);
        wait_idle(&pool, IDLE_THREADS);
        let again = run_together(&pool, 2);
        assert!(again.iter().all(|id| distinct.contains(id)), "a new thread served a job");
        wait_idle(&pool, IDLE_THREADS);
    }

    #[test]
    fn dials_loopback_only() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = dial(port).unwrap();
        assert!(stream.peer_addr().unwrap().ip().is_loopback());
        assert!(stream.nodelay().unwrap());
        drop(listener);
        let err = dial(port).unwrap_err();
        assert_eq!(err.code, "port_unavailable");
        assert!(err.message.contains(&format!("port {port}")), "{}", err.message);
    }
}
