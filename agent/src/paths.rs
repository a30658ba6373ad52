//! Sandbox paths: the one normalization rule, symlink resolution, and where the sandbox's
//! `/` lies for the agent.
//!
//! The runtimes start the agent inside the sandbox's own root, so a sandbox path is the
//! path the agent opens and [`Root`] changes nothing. Only the test suite's fake runtime
//! (`tests/fakes/runtime.py`), which runs the agent as a plain host process with no
//! isolation, starts it with `--root DIR`: sandbox paths then resolve under `DIR`. The
//! command line is the runtime's alone; nothing inside a sandbox can set it. This is not a
//! wall: a symlink or a command's own absolute paths still reach the host.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::errors::RequestError;
use crate::json::Value;
use crate::proto::{MAX_PATH, NAME_MAX};

pub struct Root {
    prefix: Vec<u8>,
}

impl Root {
    pub fn slash() -> Root {
        Root { prefix: Vec::new() }
    }

    /// The root at `directory` (absolute; resolved, as paths are checked resolved).
    pub fn at(directory: &str) -> Result<Root, String> {
        if !directory.starts_with('/') {
            return Err(format!("the sandbox root must be an absolute path, not {directory:?}"));
        }
        let real = std::fs::canonicalize(directory)
            .map_err(|e| format!("the sandbox root {directory:?}: {e}"))?;
        let bytes = real.as_os_str().as_bytes().to_vec();
        Ok(Root { prefix: if bytes == b"/" { Vec::new() } else { bytes } })
    }

    /// The path the agent opens for sandbox path `path`.
    pub fn host(&self, path: &[u8]) -> Vec<u8> {
        if self.prefix.is_empty() {
            return path.to_vec();
        }
        let mut out = self.prefix.clone();
        out.extend_from_slice(&normpath(path));
        out
    }

    /// The sandbox path of `path` (one the agent opens); None if it lies outside.
    pub fn inside(&self, path: &[u8]) -> Option<Vec<u8>> {
        if self.prefix.is_empty() {
            return Some(path.to_vec());
        }
        if path == &self.prefix[..] {
            return Some(b"/".to_vec());
        }
        if path.starts_with(&self.prefix) && path.get(self.prefix.len()) == Some(&b'/') {
            return Some(path[self.prefix.len()..].to_vec());
        }
        None
    }
}

pub fn os(path: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(path))
}

/// `/` joined with the components of `path`, `.` and `..` resolved lexically (`..` at the
/// root stays there) and repeated slashes collapsed.
pub fn normpath(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    if parts.is_empty() {
        return b"/".to_vec();
    }
    let mut out = Vec::with_capacity(path.len() + 1);
    for part in parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    out
}

/// The node's rule for every request path (`limits.normalize_path`, without a working
/// directory): absolute, normal, no NUL, at most MAX_PATH bytes, names of at most NAME_MAX.
pub fn normalize(path: Option<&Value>) -> Result<Vec<u8>, String> {
    let path = match path {
        Some(Value::Str(s)) if !s.is_empty() => s,
        Some(Value::Invalid) => return Err("path is not valid UTF-8".into()),
        _ => return Err("path must be a non-empty string".into()),
    };
    if path.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    if path.len() > MAX_PATH {
        return Err(format!("path is longer than {MAX_PATH} bytes"));
    }
    if path[0] != b'/' {
        let shown: String = String::from_utf8_lossy(path).chars().take(78).collect();
        return Err(format!("path '{shown}' is not absolute"));
    }
    let normal = normpath(path);
    if normal.split(|b| *b == b'/').any(|part| part.len() > NAME_MAX) {
        return Err(format!("a path component is longer than {NAME_MAX} bytes"));
    }
    Ok(normal)
}

/// `path` with every symlink resolved, as far as it exists (the rest is appended as it
/// is); a link loop stops resolution there. Python's `os.path.realpath`, non-strict.
pub fn realpath(path: &[u8]) -> Vec<u8> {
    let mut seen: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let (resolved, _) = join_real(Vec::new(), path, &mut seen, 0);
    if resolved.is_empty() { b"/".to_vec() } else { resolved }
}

const MAX_LINKS: usize = 64;

fn join(path: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = path.to_vec();
    if out.last() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

fn join_real(mut path: Vec<u8>, rest: &[u8], seen: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
             depth: usize) -> (Vec<u8>, bool) {
    let mut rest = rest;
    if rest.first() == Some(&b'/') {
        rest = &rest[1..];
        path = b"/".to_vec();
    }
    while !rest.is_empty() {
        let (name, tail) = match rest.iter().position(|b| *b == b'/') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &b""[..]),
        };
        rest = tail;
        if name.is_empty() || name == b"." {
            continue;
        }
        if name == b".." {
            // The path so far is resolved and absolute: its parent is lexical.
            match path.iter().rposition(|b| *b == b'/') {
                Some(0) | None => path = b"/".to_vec(),
                Some(at) => path.truncate(at),
            }
            continue;
        }
        let newpath = join(&path, name);
        let is_link = std::fs::symlink_metadata(os(&newpath))
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if !is_link {
            path = newpath;
            continue;
        }
        if let Some((_, known)) = seen.iter().find(|(p, _)| *p == newpath) {
            match known {
                Some(target) => {
                    path = target.clone();
                    continue;
                }
                None => return (join(&newpath, rest), false), // a loop
            }
        }
        if depth > MAX_LINKS || seen.len() > 4 * MAX_LINKS {
            return (join(&newpath, rest), false);
        }
        seen.push((newpath.clone(), None));
        let target = match std::fs::read_link(os(&newpath)) {
            Ok(t) => t.into_os_string().into_vec(),
            Err(_) => return (join(&newpath, rest), false),
        };
        let (resolved, ok) = join_real(path, &target, seen, depth + 1);
        if !ok {
            return (join(&resolved, rest), false);
        }
        path = resolved.clone();
        if let Some(slot) = seen.iter_mut().find(|(p, _)| *p == newpath) {
            slot.1 = Some(resolved);
        }
    }
    (path, true)
}

use std::os::unix::ffi::OsStringExt;

const PSEUDO_ROOTS: [&[u8]; 3] = [b"/proc", b"/sys", b"/dev"];

/// Validate a request path and return it normalized, with the path the agent opens for it.
///
/// The node applies the same rule first; the agent applies it again, as it trusts no
/// peer, and refuses the kernel's pseudo-filesystems (`/proc/self/fd` would hand out the
/// agent's channel) whether named or reached through a link.
pub fn check(path: Option<&Value>, root: &Root) -> Result<(Vec<u8>, Vec<u8>), RequestError> {
    let normal = normalize(path).map_err(|m| RequestError::new("invalid_argument", m))?;
    let opened = root.host(&normal);
    let real = match root.inside(&realpath(&opened)) {
        Some(real) => real,
        None => {
            return Err(RequestError::new("permission_denied",
                format!("{} resolves outside the sandbox", repr(&normal))));
        }
    };
    for candidate in [&normal, &real] {
        for pseudo in PSEUDO_ROOTS {
            if candidate.as_slice() == pseudo
                || (candidate.starts_with(pseudo) && candidate.get(pseudo.len()) == Some(&b'/'))
            {
                return Err(RequestError::new("permission_denied", format!(
                    "the file API does not serve {}", String::from_utf8_lossy(pseudo))));
            }
        }
    }
    Ok((normal, opened))
}

/// A path quoted for a message, like Python's repr of it.
pub fn repr(path: &[u8]) -> String {
    let text = String::from_utf8_lossy(path);
    if text.contains('\'') && !text.contains('"') {
        format!("\"{text}\"")
    } else {
        format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normpath(b"//a/./b/../c/"), b"/a/c");
        assert_eq!(normpath(b"/../.."), b"/");
        assert!(normalize(Some(&Value::str("a/b"))).is_err());
        assert!(normalize(Some(&Value::str(""))).is_err());
        assert!(normalize(Some(&Value::Str(b"/a\0".to_vec()))).is_err());
        assert_eq!(normalize(Some(&Value::str("/x/../y"))).unwrap(), b"/y");
        let long = format!("/{}", "n".repeat(256));
        assert!(normalize(Some(&Value::str(&long))).is_err());
    }

    #[test]
    fn resolves_links() {
        let dir = std::env::temp_dir().join(format!("corral-agent-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::os::unix::fs::symlink("real", dir.join("link")).unwrap();
        std::os::unix::fs::symlink("loop", dir.join("loop")).unwrap();
        let base = std::fs::canonicalize(&dir).unwrap().into_os_string().into_vec();
        assert_eq!(realpath(&join(&base, b"link/x/y")), join(&base, b"real/x/y"));
        assert_eq!(realpath(&join(&base, b"loop/z")), join(&base, b"loop/z"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
