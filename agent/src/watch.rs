//! Directory watches (`watch`): inotify on one directory, or on a tree of them, streamed
//! to the node as batches of events under the stream's credits.
//!
//! A watch answers `ok` once its directories are watched, then sends `data` frames, each a
//! JSON array of events `{"type", "name", "dir"}` (`name` relative to the watched
//! directory; types `create`, `write`, `remove`, `rename`, `chmod`, and `overflow`: events
//! were lost there), until `cancel`, a new session, or the end of the watched directory
//! (removed or moved away), which sends `end`. Recursive watches add every subdirectory,
//! those made later too; a directory made (or moved in) under a recursive watch has its
//! contents reported as `create` events, as they may have come before its own watch did.
//!
//! Bounds (`proto.rs`): `MAX_WATCHES` watches at once per sandbox, `MAX_WATCH_DIRS`
//! directories per watch (a larger tree is refused at the start; later directories past
//! it are not watched, and an `overflow` says so), `MAX_WATCH_EVENTS` events waiting for
//! credits (past it, events are dropped behind one `overflow`), names of `MAX_PATH` bytes.
//! Each watch has a thread and an inotify instance of its own; the kernel's own inotify
//! limits (or gVisor's) refuse a watch as `resource_exhausted`.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::os::raw::c_int;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Lock;
use crate::channel::{Channel, Credits};
use crate::errors::{RequestError, Result};
use crate::files::{error, event};
use crate::json::{self, Obj, Value};
use crate::paths::{self, os, repr, Root};
use crate::proto::{self, MAX_PATH, MAX_WATCHES, MAX_WATCH_DIRS, MAX_WATCH_EVENTS};
use crate::sys;

const IN_MODIFY: u32 = 0x2;
const IN_ATTRIB: u32 = 0x4;
const IN_MOVED_FROM: u32 = 0x40;
const IN_MOVED_TO: u32 = 0x80;
const IN_CREATE: u32 = 0x100;
const IN_DELETE: u32 = 0x200;
const IN_DELETE_SELF: u32 = 0x400;
const IN_MOVE_SELF: u32 = 0x800;
const IN_Q_OVERFLOW: u32 = 0x4000;
const IN_IGNORED: u32 = 0x8000;
const IN_ONLYDIR: u32 = 0x0100_0000;
const IN_DONT_FOLLOW: u32 = 0x0200_0000;
const IN_ISDIR: u32 = 0x4000_0000;
const MASK: u32 = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;
/// The fixed part of `struct inotify_event`: wd, mask, cookie, len.
const EVENT_HEAD: usize = 16;
/// How long a watch's thread waits for inotify before it looks at its credits again.
const TICK_MS: i32 = 50;
/// Most bytes of events in one frame.
const BATCH_BYTES: usize = proto::CHUNK;
const PSEUDO_ROOTS: [&[u8]; 3] = [b"/proc", b"/sys", b"/dev"];
const WATCH_STACK: usize = 256 * 1024;

pub struct Watches {
    channel: Arc<Channel>,
    root: Arc<Root>,
    active: Mutex<HashMap<i64, Arc<Credits>>>,
}

/// The directories one watch follows: watch descriptor -> path relative to the watched one.
struct Tree {
    fd: c_int,
    /// The watched directory's sandbox path, and the path the agent opens for it.
    path: Vec<u8>,
    opened: Vec<u8>,
    recursive: bool,
    dirs: HashMap<c_int, Vec<u8>>,
    root_wd: c_int,
}

/// Events waiting for credits, bounded: past `MAX_WATCH_EVENTS` they are dropped behind
/// one `overflow` marker.
struct Pending {
    events: VecDeque<(Value, usize)>,
    marked: bool,
}

impl Pending {
    fn push(&mut self, kind: &str, name: &[u8], dir: bool) {
        if name.len() > MAX_PATH {
            return self.overflow();
        }
        if self.events.len() >= MAX_WATCH_EVENTS {
            return self.overflow();
        }
        let value = Obj::new().set("type", Value::str(kind)).set("name", Value::Str(name.to_vec()))
            .set("dir", Value::Bool(dir)).value();
        self.events.push_back((value, name.len() + 48));
    }

    /// Mark that events were lost here (once until the queue drains a little).
    fn overflow(&mut self) {
        if !self.marked {
            self.marked = true;
            let value = Obj::new().set("type", Value::str("overflow")).set("name", Value::str(""))
                .set("dir", Value::Bool(false)).value();
            self.events.push_back((value, 48));
        }
    }

    /// The next batch of events, at most `BATCH_BYTES` of them (one at least).
    fn batch(&mut self) -> Vec<u8> {
        let mut items = Vec::new();
        let mut size = 0;
        while let Some((_, cost)) = self.events.front() {
            if !items.is_empty() && size + cost > BATCH_BYTES {
                break;
            }
            size += cost;
            items.push(self.events.pop_front().map(|(v, _)| v).unwrap_or(Value::Null));
        }
        self.marked = false;
        json::to_string(&Value::Arr(items)).into_bytes()
    }
}

fn join(folder: &[u8], name: &[u8]) -> Vec<u8> {
    if folder.is_empty() {
        return name.to_vec();
    }
    let mut out = folder.to_vec();
    out.push(b'/');
    out.extend_from_slice(name);
    out
}

fn under(path: &[u8], prefix: &[u8]) -> bool {
    path == prefix || (path.starts_with(prefix) && path.get(prefix.len()) == Some(&b'/'))
}

fn limit_error(err: &std::io::Error, path: &[u8]) -> RequestError {
    match err.raw_os_error() {
        // EMFILE, ENFILE, ENOSPC, ENOMEM: the instance or watch limits of the kernel.
        Some(24) | Some(23) | Some(28) | Some(12) => RequestError::new("resource_exhausted",
            format!("watch {}: the sandbox's inotify limits are reached ({})", repr(path),
                    sys::strerror(err))),
        _ => RequestError::os("watch", path, err),
    }
}

impl Tree {
    /// Watch the directory at `rel` (relative to the watched one).
    fn add(&mut self, rel: &[u8]) -> std::io::Result<c_int> {
        let sandbox_path = if rel.is_empty() { self.path.clone() } else { join_abs(&self.path, rel) };
        if PSEUDO_ROOTS.iter().any(|p| under(&sandbox_path, p)) {
            return Err(std::io::Error::from_raw_os_error(1));
        }
        let host = if rel.is_empty() { self.opened.clone() } else { join_abs(&self.opened, rel) };
        if host.len() > MAX_PATH + 4096 || rel.len() > MAX_PATH {
            return Err(std::io::Error::from_raw_os_error(36)); // ENAMETOOLONG
        }
        let flags = if rel.is_empty() { MASK } else { MASK | IN_DONT_FOLLOW };
        let wd = sys::inotify_watch(self.fd, &host, flags)?;
        self.dirs.insert(wd, rel.to_vec());
        Ok(wd)
    }

    /// Watch every directory under `rel` (not `rel` itself), as far as the bound allows:
    /// false if a directory was left out. With `pending`, each entry found is reported as
    /// created.
    fn scan(&mut self, rel: &[u8], mut pending: Option<&mut Pending>) -> bool {
        let mut complete = true;
        let mut stack = vec![rel.to_vec()];
        while let Some(folder) = stack.pop() {
            let host = if folder.is_empty() { self.opened.clone() } else { join_abs(&self.opened, &folder) };
            let Ok(items) = fs::read_dir(os(&host)) else { continue };
            for item in items.flatten() {
                let child = join(&folder, item.file_name().as_bytes());
                let is_dir = item.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if let Some(pending) = pending.as_deref_mut() {
                    pending.push("create", &child, is_dir);
                }
                if !is_dir {
                    continue;
                }
                if self.dirs.len() >= MAX_WATCH_DIRS {
                    complete = false;
                    continue;
                }
                match self.add(&child) {
                    Ok(_) => stack.push(child),
                    Err(_) => complete = false,
                }
            }
        }
        complete
    }

    /// Stop watching `rel` and everything under it (a directory moved away).
    fn drop_under(&mut self, rel: &[u8]) {
        let gone: Vec<c_int> = self.dirs.iter().filter(|(_, p)| under(p, rel)).map(|(w, _)| *w).collect();
        for wd in gone {
            self.dirs.remove(&wd);
            sys::inotify_unwatch(self.fd, wd);
        }
    }

    /// Turn the kernel's events in `buf` into `pending`; true once the watched directory
    /// itself is gone (removed or moved away).
    fn take(&mut self, buf: &[u8], pending: &mut Pending) -> bool {
        let mut at = 0;
        let mut ended = false;
        while at + EVENT_HEAD <= buf.len() {
            let word = |i: usize| u32::from_ne_bytes([buf[at + i], buf[at + i + 1], buf[at + i + 2], buf[at + i + 3]]);
            let (wd, mask, len) = (word(0) as c_int, word(4), word(12) as usize);
            let end = (at + EVENT_HEAD + len).min(buf.len());
            let raw = &buf[at + EVENT_HEAD..end];
            let name = &raw[..raw.iter().position(|b| *b == 0).unwrap_or(raw.len())];
            at = end;
            if mask & IN_Q_OVERFLOW != 0 {
                pending.overflow();
                continue;
            }
            if wd == self.root_wd && mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED) != 0 {
                ended = true;
                continue;
            }
            if mask & IN_IGNORED != 0 {
                self.dirs.remove(&wd);
                continue;
            }
            let Some(folder) = self.dirs.get(&wd).cloned() else { continue };
            if name.is_empty() {
                continue; // a subdirectory's own removal or move: its parent reports it
            }
            let child = join(&folder, name);
            let dir = mask & IN_ISDIR != 0;
            let kind = if mask & (IN_CREATE | IN_MOVED_TO) != 0 { "create" }
                else if mask & IN_MODIFY != 0 { "write" }
                else if mask & IN_DELETE != 0 { "remove" }
                else if mask & IN_MOVED_FROM != 0 { "rename" }
                else if mask & IN_ATTRIB != 0 { "chmod" }
                else { continue };
            pending.push(kind, &child, dir);
            if !(self.recursive && dir) {
                continue;
            }
            if mask & IN_MOVED_FROM != 0 {
                self.drop_under(&child);
            } else if mask & (IN_CREATE | IN_MOVED_TO) != 0 {
                let added = self.dirs.len() < MAX_WATCH_DIRS && self.add(&child).is_ok();
                if !added || !self.scan(&child, Some(pending)) {
                    pending.overflow();
                }
            }
        }
        ended
    }
}

fn join_abs(base: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    if out.last() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(rel);
    out
}

impl Drop for Tree {
    fn drop(&mut self) {
        sys::close(self.fd);
    }
}

impl Watches {
    pub fn new(channel: Arc<Channel>, root: Arc<Root>) -> Arc<Watches> {
        Arc::new(Watches { channel, root, active: Mutex::new(HashMap::new()) })
    }

    /// Start watching: `ok` once the directories are watched, then the events.
    pub fn watch(self: &Arc<Self>, req_id: i64, req: &Value) -> Result<()> {
        let (path, opened) = paths::check(req.get("path"), &self.root)?;
        let recursive = req.get("recursive").map_or(false, Value::truthy);
        let meta = fs::metadata(os(&opened)).map_err(|e| RequestError::os("watch", &path, &e))?;
        if !meta.is_dir() {
            return Err(RequestError::invalid(format!("{} is not a directory", repr(&path))));
        }
        if self.active.locked().len() >= MAX_WATCHES {
            return Err(RequestError::new("resource_exhausted", format!(
                "the sandbox already has {MAX_WATCHES} watches; stop one first")));
        }
        let fd = sys::inotify_new().map_err(|e| limit_error(&e, &path))?;
        let mut tree = Tree { fd, path: path.clone(), opened, recursive, dirs: HashMap::new(), root_wd: -1 };
        tree.root_wd = tree.add(b"").map_err(|e| limit_error(&e, &path))?;
        if recursive && !tree.scan(b"", None) {
            return Err(RequestError::new("resource_exhausted", format!(
                "{} holds more than {MAX_WATCH_DIRS} directories (or ones that cannot be \
                 watched); watch a smaller tree, or without recursion", repr(&path))));
        }
        let credits = Arc::new(Credits::new());
        {
            let mut active = self.active.locked();
            if active.len() >= MAX_WATCHES {
                return Err(RequestError::new("resource_exhausted", format!(
                    "the sandbox already has {MAX_WATCHES} watches; stop one first")));
            }
            active.insert(req_id, credits.clone());
        }
        self.channel.send(Obj::new().set("id", Value::Int(req_id)).set("ev", Value::str("ok"))
            .set("dirs", Value::Int(tree.dirs.len() as i64)).value(), b"");
        let watches = self.clone();
        let spawned = std::thread::Builder::new().name("watch".into()).stack_size(WATCH_STACK)
            .spawn(move || {
                watches.follow(req_id, tree, &credits);
                watches.active.locked().remove(&req_id);
            });
        if spawned.is_err() {
            self.active.locked().remove(&req_id);
            self.channel.send(error(req_id, &RequestError::new("resource_exhausted",
                "cannot start a thread for the watch: the sandbox's pids limit is reached")), b"");
        }
        Ok(())
    }

    /// A watch's thread: read inotify, send what credits allow, until cancelled or ended.
    fn follow(&self, req_id: i64, mut tree: Tree, credits: &Credits) {
        let mut pending = Pending { events: VecDeque::new(), marked: false };
        let mut buf = vec![0u8; 64 * 1024];
        let mut ended = false;
        loop {
            if credits.is_closed() {
                return;
            }
            if !ended {
                let mut fds = [sys::PollFd { fd: tree.fd, events: sys::POLLIN, revents: 0 }];
                if sys::poll_fds(&mut fds, TICK_MS).is_err() {
                    std::thread::sleep(Duration::from_millis(TICK_MS as u64));
                }
                loop {
                    match sys::read_some(tree.fd, &mut buf) {
                        Ok(0) => break,
                        Ok(n) => ended |= tree.take(&buf[..n], &mut pending),
                        Err(_) => {
                            ended = true;
                            break;
                        }
                    }
                }
            }
            while !pending.events.is_empty() {
                // An ended watch has nothing left to read: it may wait for credits.
                let took = if ended { Some(credits.take()).filter(|t| *t) } else { credits.try_take() };
                match took {
                    None => return,
                    Some(false) => break,
                    Some(true) => self.channel.send(event(req_id, "data"), &pending.batch()),
                }
            }
            if ended && pending.events.is_empty() {
                self.channel.send(event(req_id, "end"), b"");
                return;
            }
        }
    }

    /// Stop a watch, its place free at once (its thread ends within a tick); false if
    /// there is none by that id.
    pub fn cancel(&self, target: i64) -> bool {
        match self.active.locked().remove(&target) {
            Some(credits) => {
                credits.close();
                true
            }
            None => false,
        }
    }

    pub fn credit(&self, target: i64, count: i64) -> bool {
        match self.active.locked().get(&target) {
            Some(credits) => {
                credits.give(count);
                true
            }
            None => false,
        }
    }

    /// The session ended: every watch stops.
    pub fn detach(&self) {
        for credits in self.active.locked().values() {
            credits.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(pending: &mut Pending) -> Vec<String> {
        let batch = String::from_utf8(pending.batch()).unwrap();
        batch.split("\"name\":\"").skip(1).map(|s| s.split('"').next().unwrap().to_string()).collect()
    }

    #[test]
    fn pending_events_are_bounded_behind_one_marker() {
        let mut pending = Pending { events: VecDeque::new(), marked: false };
        for i in 0..MAX_WATCH_EVENTS + 10 {
            pending.push("create", format!("f{i}").as_bytes(), false);
        }
        assert_eq!(pending.events.len(), MAX_WATCH_EVENTS + 1);
        let mut seen = Vec::new();
        while !pending.events.is_empty() {
            seen.extend(names(&mut pending));
        }
        assert_eq!(seen.len(), MAX_WATCH_EVENTS + 1);
        assert_eq!(seen.last().map(String::as_str), Some(""));
        pending.push("create", &vec![b'n'; MAX_PATH + 1], false);
        assert!(String::from_utf8(pending.batch()).unwrap().contains("overflow"));
    }

    #[test]
    fn a_tree_follows_new_and_moved_directories() {
        let dir = std::env::temp_dir().join(format!("corral-watch-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("a")).unwrap();
        let opened = dir.as_os_str().as_bytes().to_vec();
        let fd = sys::inotify_new().unwrap();
        let mut tree = Tree { fd, path: b"/w".to_vec(), opened, recursive: true, dirs: HashMap::new(), root_wd: -1 };
        tree.root_wd = tree.add(b"").unwrap();
        assert!(tree.scan(b"", None));
        assert_eq!(tree.dirs.len(), 2);
        fs::create_dir_all(dir.join("a/b/c")).unwrap();
        fs::write(dir.join("a/b/c/f"), b"x").unwrap();
        let mut pending = Pending { events: VecDeque::new(), marked: false };
        let mut buf = vec![0u8; 65536];
        let mut fds = [sys::PollFd { fd, events: sys::POLLIN, revents: 0 }];
        sys::poll_fds(&mut fds, 5000).unwrap();
        let n = sys::read_some(fd, &mut buf).unwrap();
        assert!(!tree.take(&buf[..n], &mut pending));
        let seen = names(&mut pending);
        assert!(seen.contains(&"a/b".to_string()), "{seen:?}");
        assert!(seen.contains(&"a/b/c/f".to_string()), "{seen:?}");
        assert_eq!(tree.dirs.len(), 4);
        tree.drop_under(b"a/b");
        assert_eq!(tree.dirs.len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
