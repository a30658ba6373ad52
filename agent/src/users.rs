//! Resolve a user name or uid against the sandbox's own /etc/passwd and /etc/group.
//!
//! Parsed by hand rather than through NSS: the answer must come from the image's files
//! only, whatever libc the image has.

use crate::errors::{RequestError, Result};
use crate::json::Value;
use crate::paths::Root;
use crate::sys;

pub struct User {
    pub name: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    pub home: Vec<u8>,
    pub groups: Vec<u32>,
}

fn read_table(path: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let text = std::fs::read(crate::paths::os(path)).unwrap_or_default();
    text.split(|b| *b == b'\n')
        .filter(|line| line.iter().filter(|b| **b == b':').count() >= 3)
        .map(|line| line.split(|b| *b == b':').map(<[u8]>::to_vec).collect())
        .collect()
}

fn digits(text: &[u8]) -> Option<u32> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The user for `spec`: a name, a uid (number or digits), or None for the agent's own.
pub fn resolve(spec: Option<&Value>, root: &Root) -> Result<User> {
    let passwd = read_table(&root.host(b"/etc/passwd"));
    let uid: Option<i64> = match spec {
        None | Some(Value::Null) => Some(i64::from(sys::uid())),
        Some(Value::Int(i)) => Some(*i),
        Some(Value::Str(s)) if !s.is_empty() && s.iter().all(u8::is_ascii_digit) => {
            Some(std::str::from_utf8(s).ok().and_then(|t| t.parse::<i64>().ok()).unwrap_or(i64::MAX))
        }
        Some(Value::Str(_)) => None,
        Some(_) => return Err(RequestError::invalid("user must be a name or a uid")),
    };
    let row = match uid {
        Some(uid) => {
            if !(0..(1i64 << 31)).contains(&uid) {
                return Err(RequestError::invalid(format!("uid {uid} out of range")));
            }
            let text = uid.to_string().into_bytes();
            match passwd.iter().find(|r| r.len() >= 7 && r[2] == text) {
                Some(row) => row,
                None => {
                    return Ok(User { name: text, uid: uid as u32, gid: uid as u32,
                                     home: b"/".to_vec(), groups: Vec::new() });
                }
            }
        }
        None => {
            let name = spec.and_then(Value::as_bytes).unwrap_or_default();
            match passwd.iter().find(|r| r.len() >= 7 && r[0] == name) {
                Some(row) => row,
                None => {
                    return Err(RequestError::new("not_found", format!(
                        "user '{}' does not exist in this sandbox", String::from_utf8_lossy(name))));
                }
            }
        }
    };
    let (uid, gid) = match (digits(&row[2]), digits(&row[3])) {
        (Some(u), Some(g)) => (u, g),
        _ => {
            return Err(RequestError::invalid(format!(
                "malformed /etc/passwd entry for '{}'", String::from_utf8_lossy(&row[0]))));
        }
    };
    let groups = read_table(&root.host(b"/etc/group"))
        .iter()
        .filter(|g| g.len() >= 4 && g[3].split(|b| *b == b',').any(|m| m == &row[0][..]))
        .filter_map(|g| digits(&g[2]))
        .collect();
    let home = if row[5].is_empty() { b"/".to_vec() } else { row[5].clone() };
    Ok(User { name: row[0].clone(), uid, gid, home, groups })
}
