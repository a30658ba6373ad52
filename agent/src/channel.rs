//! The agent's end of the node channel: framed reads, locked writes, and the wait for a
//! restarted node.
//!
//! The first channel is the agent's stdin/stdout, which the node opened when it started the
//! sandbox. When that node goes away (a server restart), the agent keeps the sandbox alive
//! and waits for the next node on a Unix socket (`reconnect`); the channel is then
//! re-attached to that socket and everything else carries on.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::Lock;
use crate::json::Value;
use crate::proto::{self, ProtocolError};

pub struct Channel {
    writer: Mutex<Option<File>>,
}

pub type Reader = BufReader<File>;

impl Channel {
    pub fn new(writer: File) -> Channel {
        Channel { writer: Mutex::new(Some(writer)) }
    }

    /// Serve a node over this writer (the previous one must be detached).
    pub fn attach(&self, writer: File) {
        *self.writer.locked() = Some(writer);
    }

    /// Serve a node over `writer`, starting with the frame `first`: no other thread's frame
    /// can come before it.
    pub fn attach_first(&self, writer: File, first: Value) {
        let mut slot = self.writer.locked();
        *slot = Some(writer);
        if let (Ok(frame), Some(file)) = (proto::encode(&first, b""), slot.as_mut()) {
            if file.write_all(&frame).is_err() {
                slot.take();
            }
        }
    }

    /// Drop the node that went away: later sends are discarded until `attach`.
    pub fn detach(&self) {
        self.writer.locked().take();
    }

    /// Send one frame; frames from different threads never interleave. A frame over the
    /// protocol's bounds is refused (nothing is sent).
    pub fn send_checked(&self, header: Value, data: &[u8]) -> Result<(), ProtocolError> {
        let frame = proto::encode(&header, data)?;
        let mut writer = self.writer.locked();
        if let Some(file) = writer.as_mut() {
            if file.write_all(&frame).is_err() {
                writer.take();
            }
        }
        Ok(())
    }

    pub fn send(&self, header: Value, data: &[u8]) {
        let _ = self.send_checked(header, data);
    }
}

/// The next frame, Ok(None) once the node closed the channel.
pub fn recv(reader: &mut Reader) -> Result<Option<(Value, Vec<u8>)>, ProtocolError> {
    let mut prefix = [0u8; proto::PREFIX];
    if read_full(reader, &mut prefix).is_none() {
        return Ok(None);
    }
    let (head_len, data_len) = proto::parse_prefix(&prefix)?;
    let mut raw = vec![0u8; head_len];
    if read_full(reader, &mut raw).is_none() {
        return Ok(None);
    }
    let mut data = vec![0u8; data_len];
    if read_full(reader, &mut data).is_none() {
        return Ok(None);
    }
    Ok(Some((proto::parse_header(&raw)?, data)))
}

fn read_full(reader: &mut Reader, buf: &mut [u8]) -> Option<()> {
    reader.read_exact(buf).ok()
}

const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);

/// Connect to the next node's socket at `path`; None once `deadline` passed. The node
/// binds the socket only after it restarted, so until then every attempt fails fast.
pub fn reconnect(path: &str, deadline: Instant) -> Option<UnixStream> {
    while Instant::now() < deadline {
        match UnixStream::connect(path) {
            Ok(stream) => return Some(stream),
            Err(_) => std::thread::sleep(RECONNECT_INTERVAL),
        }
    }
    None
}

/// Flow-control credits for one outgoing stream (see agent_protocol.py).
pub struct Credits {
    state: Mutex<(i64, bool)>,
    cond: Condvar,
}

impl Credits {
    pub fn new() -> Credits {
        Credits { state: Mutex::new((proto::STREAM_WINDOW, false)), cond: Condvar::new() }
    }

    /// Block until one credit is free; false once the stream was cancelled.
    pub fn take(&self) -> bool {
        let mut state = self.state.locked();
        while state.0 <= 0 && !state.1 {
            state = self.cond.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if state.1 {
            return false;
        }
        state.0 -= 1;
        true
    }

    /// Take one credit if one is free, without waiting: Some(taken), or None once the
    /// stream was cancelled.
    pub fn try_take(&self) -> Option<bool> {
        let mut state = self.state.locked();
        if state.1 {
            return None;
        }
        if state.0 <= 0 {
            return Some(false);
        }
        state.0 -= 1;
        Some(true)
    }

    pub fn is_closed(&self) -> bool {
        self.state.locked().1
    }

    pub fn give(&self, count: i64) {
        let mut state = self.state.locked();
        state.0 = state.0.saturating_add(count.clamp(0, proto::STREAM_WINDOW));
        self.cond.notify_all();
    }

    pub fn close(&self) {
        self.state.locked().1 = true;
        self.cond.notify_all();
    }

    /// Open a closed stream again with a full window (a new node follows it).
    pub fn reopen(&self) {
        *self.state.locked() = (proto::STREAM_WINDOW, false);
        self.cond.notify_all();
    }
}
