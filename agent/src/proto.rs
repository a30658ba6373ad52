//! The frame format and the limits the agent shares with the node.
//!
//! The node's side is `corral/api/agent_protocol.py` and `corral/api/limits.py`; the
//! constants here must equal theirs, which `tests/unit/agent/test_native.py` checks.

use crate::json::{self, Value};

pub const PROTOCOL_VERSION: i64 = 1;
pub const PREFIX: usize = 8;
/// Largest header a node request may have (argv, env and paths travel in it).
pub const MAX_HEADER: usize = 1024 * 1024;
pub const MAX_DATA: usize = 1024 * 1024;
pub const CHUNK: usize = 64 * 1024;
pub const STREAM_WINDOW: i64 = 32;

// From limits.py.
pub const MAX_PATH: usize = 4096;
pub const NAME_MAX: usize = 255;
pub const MAX_LIST_DEPTH: i64 = 16;
pub const MAX_LIST_ENTRIES: usize = 10_000;
pub const MAX_ARGV: usize = 4096;
pub const MAX_PORT_CONNECTIONS: usize = 256;

// Directory watches (watch.rs).
pub const MAX_WATCHES: usize = 64;
pub const MAX_WATCH_DIRS: usize = 4096;
pub const MAX_WATCH_EVENTS: usize = 4096;

pub const REASON_TIMEOUT: &str = "timeout";
pub const REASON_KILLED: &str = "killed";

#[derive(Debug)]
pub struct ProtocolError(pub String);

/// Serialize one frame.
pub fn encode(header: &Value, data: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let head = json::to_string(header);
    if head.len() > MAX_HEADER {
        return Err(ProtocolError(format!(
            "frame header of {} bytes exceeds {MAX_HEADER}", head.len())));
    }
    if data.len() > MAX_DATA {
        return Err(ProtocolError(format!("frame data of {} bytes exceeds {MAX_DATA}", data.len())));
    }
    let mut frame = Vec::with_capacity(PREFIX + head.len() + data.len());
    frame.extend_from_slice(&(head.len() as u32).to_be_bytes());
    frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
    frame.extend_from_slice(head.as_bytes());
    frame.extend_from_slice(data);
    Ok(frame)
}

/// The two lengths of a frame prefix, checked against the bounds.
pub fn parse_prefix(prefix: &[u8; PREFIX]) -> Result<(usize, usize), ProtocolError> {
    let head = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let data = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
    if !(2..=MAX_HEADER).contains(&head) {
        return Err(ProtocolError(format!("frame header length {head} out of bounds")));
    }
    if data > MAX_DATA {
        return Err(ProtocolError(format!("frame data length {data} out of bounds")));
    }
    Ok((head, data))
}

/// A frame header: a JSON object with a non-negative integer `id`.
pub fn parse_header(raw: &[u8]) -> Result<Value, ProtocolError> {
    let header = json::parse(raw)
        .map_err(|e| ProtocolError(format!("frame header is not JSON: {e}")))?;
    if !matches!(header, Value::Obj(_)) {
        return Err(ProtocolError("frame header is not a JSON object".into()));
    }
    match header.get("id") {
        Some(Value::Int(i)) if *i >= 0 => Ok(header),
        _ => Err(ProtocolError("frame header lacks a non-negative integer id".into())),
    }
}
