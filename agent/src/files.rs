//! File operations inside the sandbox.
//!
//! The agent runs inside the sandbox's own root, so every path (symlinks included)
//! resolves within the sandbox: there is no host path to escape to. What remains to guard
//! is the agent itself: kernel pseudo-filesystems are refused (`paths::check`); only
//! regular files are read (a FIFO or `/dev/zero` would hang or never end); and writes land
//! in a temporary file renamed into place on success, so a failed upload (disk full,
//! cancelled) leaves the old file intact.
//!
//! A write or mkdir may name a `user` (a name or uid of the image's /etc/passwd): the
//! agent still does the work, and what it creates (the file, each missing parent
//! directory) is then handed to that user and the user's group, without following links.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::sync::{Arc, Mutex};

use crate::Lock;
use crate::channel::{Channel, Credits};
use crate::errors::{RequestError, Result};
use crate::json::{self, Obj, Value};
use crate::paths::{self, os, repr, Root};
use crate::proto::{self, MAX_LIST_DEPTH, MAX_LIST_ENTRIES};
use crate::users;

const O_NONBLOCK: i32 = 0o4000;
const O_NOFOLLOW: i32 = 0o400000;

struct Upload {
    file: File,
    owner: Option<(u32, u32)>,
    mode: u32,
    tmp: Vec<u8>,
    opened: Vec<u8>,
    path: Vec<u8>,
}

pub struct Files {
    channel: Arc<Channel>,
    root: Arc<Root>,
    uploads: Mutex<HashMap<i64, Upload>>,
    downloads: Mutex<HashMap<i64, Arc<Credits>>>,
}

/// A handler's answer: the reply header's fields and the reply frame's data.
pub type Reply = (Obj, Vec<u8>);

fn describe(path: &[u8], meta: &fs::Metadata, opened: &[u8]) -> Value {
    let kind = meta.file_type();
    let kind = if kind.is_dir() { "dir" } else if kind.is_file() { "file" }
               else if kind.is_symlink() { "symlink" } else { "other" };
    let name = match path.iter().rposition(|b| *b == b'/') {
        Some(at) if at + 1 < path.len() => path[at + 1..].to_vec(),
        _ => b"/".to_vec(),
    };
    let mtime = meta.mtime() as f64 + meta.mtime_nsec() as f64 / 1e9;
    let mut info = Obj::new()
        .set("name", Value::Str(name))
        .set("path", Value::Str(path.to_vec()))
        .set("type", Value::str(kind))
        .set("size", Value::Int(meta.size() as i64))
        .set("mode", Value::Int(i64::from(meta.mode() & 0o7777)))
        .set("mtime", Value::Float(mtime))
        .set("uid", Value::Int(i64::from(meta.uid())))
        .set("gid", Value::Int(i64::from(meta.gid())));
    if kind == "symlink" {
        let target = fs::read_link(os(opened))
            .map(|t| Value::Str(std::os::unix::ffi::OsStringExt::into_vec(t.into_os_string())))
            .unwrap_or(Value::Null);
        info.put("target", target);
    }
    info.value()
}

fn join(folder: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = folder.to_vec();
    if out.last() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

fn lexists(opened: &[u8]) -> bool {
    fs::symlink_metadata(os(opened)).is_ok()
}

impl Files {
    pub fn new(channel: Arc<Channel>, root: Arc<Root>) -> Files {
        Files { channel, root, uploads: Mutex::new(HashMap::new()),
                downloads: Mutex::new(HashMap::new()) }
    }

    fn path(&self, req: &Value, key: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        paths::check(req.get(key), &self.root)
    }

    /// The (uid, gid) a request's `user` names; None: none named, the agent's own.
    fn owner(&self, req: &Value) -> Result<Option<(u32, u32)>> {
        match req.get("user") {
            None | Some(Value::Null) => Ok(None),
            spec => users::resolve(spec, &self.root).map(|u| Some((u.uid, u.gid))),
        }
    }

    pub fn stat(&self, req: &Value) -> Result<Reply> {
        let (path, opened) = self.path(req, "path")?;
        let meta = fs::symlink_metadata(os(&opened)).map_err(|e| RequestError::os("stat", &path, &e))?;
        match describe(&path, &meta, &opened) {
            Value::Obj(items) => Ok((Obj(items), Vec::new())),
            _ => unreachable!(),
        }
    }

    pub fn exists(&self, req: &Value) -> Result<Reply> {
        let (_, opened) = self.path(req, "path")?;
        Ok((Obj::new().set("exists", Value::Bool(lexists(&opened))), Vec::new()))
    }

    pub fn list(&self, req: &Value) -> Result<Reply> {
        let (path, _) = self.path(req, "path")?;
        let depth = match req.get("depth") {
            None => 1,
            Some(Value::Int(d)) if (1..=MAX_LIST_DEPTH).contains(d) => *d,
            Some(_) => return Err(RequestError::invalid(
                format!("depth must be between 1 and {MAX_LIST_DEPTH}"))),
        };
        let mut entries: Vec<(Vec<u8>, Value)> = Vec::new();
        let mut truncated = false;
        let mut pending = VecDeque::from([(path.clone(), 1)]);
        while let Some((folder, level)) = pending.pop_front() {
            if truncated {
                break;
            }
            let items = match fs::read_dir(os(&self.root.host(&folder))) {
                Ok(items) => items,
                Err(e) if folder == path => return Err(RequestError::os("list", &path, &e)),
                Err(_) => continue,
            };
            for item in items {
                let Ok(item) = item else { continue };
                if entries.len() >= MAX_LIST_ENTRIES {
                    truncated = true;
                    break;
                }
                let name = std::os::unix::ffi::OsStrExt::as_bytes(item.file_name().as_os_str()).to_vec();
                let child = join(&folder, &name);
                let opened = self.root.host(&child);
                let Ok(meta) = fs::symlink_metadata(os(&opened)) else { continue };
                entries.push((child.clone(), describe(&child, &meta, &opened)));
                if level < depth && meta.is_dir() {
                    pending.push_back((child, level + 1));
                }
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        // The entries travel as the frame's data (up to 1 MiB), not in its header.
        let mut values: Vec<Value> = entries.into_iter().map(|(_, v)| v).collect();
        let mut payload = json::to_string(&Value::Arr(values.clone())).into_bytes();
        while payload.len() > proto::MAX_DATA - 1024 {
            values.truncate(values.len() * 3 / 4);
            truncated = true;
            payload = json::to_string(&Value::Arr(values.clone())).into_bytes();
        }
        let reply = Obj::new().set("truncated", Value::Bool(truncated))
            .set("count", Value::Int(values.len() as i64));
        Ok((reply, payload))
    }

    pub fn mkdir(&self, req: &Value) -> Result<Reply> {
        let (path, opened) = self.path(req, "path")?;
        if fs::metadata(os(&opened)).map(|m| m.is_dir()).unwrap_or(false) {
            return Ok((Obj::new().set("created", Value::Bool(false)), Vec::new()));
        }
        let parents = req.get("parents").map_or(true, Value::truthy);
        let owner = self.owner(req)?;
        let made = if parents { make_dirs(&opened, owner) } else {
            fs::create_dir(os(&opened)).and_then(|_| give(&opened, owner))
        };
        made.map_err(|e| RequestError::os("mkdir", &path, &e))?;
        Ok((Obj::new().set("created", Value::Bool(true)), Vec::new()))
    }

    pub fn remove(&self, req: &Value) -> Result<Reply> {
        let (path, opened) = self.path(req, "path")?;
        if path == b"/" {
            return Err(RequestError::invalid("refusing to remove /"));
        }
        let fail = |e: std::io::Error| RequestError::os("remove", &path, &e);
        let meta = fs::symlink_metadata(os(&opened)).map_err(fail)?;
        if meta.is_dir() {
            if req.get("recursive").map_or(false, Value::truthy) {
                fs::remove_dir_all(os(&opened)).map_err(fail)?; // never follows symlinks
            } else if fs::read_dir(os(&opened)).map_err(fail)?.next().is_some() {
                return Err(RequestError::invalid(format!(
                    "{} is a directory that is not empty; pass recursive=True to remove it",
                    repr(&path))));
            } else {
                fs::remove_dir(os(&opened)).map_err(fail)?;
            }
        } else {
            fs::remove_file(os(&opened)).map_err(fail)?;
        }
        Ok((Obj::new(), Vec::new()))
    }

    pub fn rename(&self, req: &Value) -> Result<Reply> {
        let (src, src_opened) = self.path(req, "src")?;
        let (dst, dst_opened) = self.path(req, "dst")?;
        if !req.get("overwrite").map_or(false, Value::truthy) && lexists(&dst_opened) {
            return Err(RequestError::new("already_exists", format!("{} already exists", repr(&dst))));
        }
        fs::rename(os(&src_opened), os(&dst_opened)).map_err(|e| RequestError::os("rename", &src, &e))?;
        Ok((Obj::new(), Vec::new()))
    }

    // -- streamed transfers -----------------------------------------------------------

    /// Stream a regular file as data frames (runs on a thread of its own).
    pub fn read(&self, req_id: i64, req: &Value) -> Result<()> {
        let (path, opened) = self.path(req, "path")?;
        let mut file = OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(os(&opened))
            .map_err(|e| RequestError::os("read", &path, &e))?;
        let meta = file.metadata().map_err(|e| RequestError::os("read", &path, &e))?;
        if !meta.is_file() {
            let kind = if meta.is_dir() { "a directory" } else { "not a regular file" };
            return Err(RequestError::invalid(format!("{} is {kind}", repr(&path))));
        }
        let credits = Arc::new(Credits::new());
        self.downloads.locked().insert(req_id, credits.clone());
        let result = self.send_file(req_id, &path, &mut file, meta.len(), &credits);
        self.downloads.locked().remove(&req_id);
        result
    }

    fn send_file(&self, req_id: i64, path: &[u8], file: &mut File, size: u64,
                 credits: &Credits) -> Result<()> {
        self.channel.send(Obj::new().set("id", Value::Int(req_id)).set("ev", Value::str("ok"))
                          .set("size", Value::Int(size as i64)).value(), b"");
        let mut buf = vec![0u8; proto::CHUNK];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RequestError::os("read", path, &e)),
            };
            if !credits.take() {
                return Ok(());
            }
            self.channel.send(event(req_id, "data"), &buf[..n]);
        }
        self.channel.send(event(req_id, "end"), b"");
        Ok(())
    }

    pub fn write_open(&self, req_id: i64, req: &Value) -> Result<()> {
        let (path, opened) = self.path(req, "path")?;
        let mode = match req.get("mode") {
            None => 0o644,
            Some(Value::Int(m)) if (0..=0o7777).contains(m) => *m as u32,
            Some(_) => return Err(RequestError::invalid("mode must be an integer between 0 and 0o7777")),
        };
        if fs::metadata(os(&opened)).map(|m| m.is_dir()).unwrap_or(false) {
            return Err(RequestError::invalid(format!("{} is a directory", repr(&path))));
        }
        let parent = match opened.iter().rposition(|b| *b == b'/') {
            Some(0) | None => b"/".to_vec(),
            Some(at) => opened[..at].to_vec(),
        };
        let fail = |e: std::io::Error| RequestError::os("write", &path, &e);
        let owner = self.owner(req)?;
        make_dirs(&parent, owner).map_err(fail)?;
        let tmp = join(&parent, format!(".corral-upload-{req_id}-{}", crate::sys::pid()).as_bytes());
        let file = OpenOptions::new().write(true).create_new(true).custom_flags(O_NOFOLLOW)
            .mode(mode & 0o777).open(os(&tmp)).map_err(fail)?;
        self.uploads.locked().insert(req_id, Upload { file, owner, mode: mode & 0o777, tmp, opened, path });
        self.channel.send(event(req_id, "ok"), b"");
        Ok(())
    }

    /// Append one chunk to an open upload; finish it on `eof`.
    pub fn write_chunk(&self, req: &Value, data: &[u8]) {
        let Some(target) = req.get("target").and_then(Value::as_int) else { return };
        let mut uploads = self.uploads.locked();
        // An upload that already failed was reported: its remaining chunks are dropped.
        let Some(upload) = uploads.get_mut(&target) else { return };
        let eof = req.get("eof").map_or(false, Value::truthy);
        let result = upload.file.write_all(data).and_then(|_| {
            if !eof {
                return Ok(None);
            }
            let meta = upload.file.metadata()?;
            if let Some((uid, gid)) = upload.owner {
                std::os::unix::fs::fchown(&upload.file, Some(uid), Some(gid))?;
            }
            // The mode as asked, whatever the umask took away at creation.
            upload.file.set_permissions(fs::Permissions::from_mode(upload.mode))?;
            fs::rename(os(&upload.tmp), os(&upload.opened))?;
            Ok(Some(meta.len()))
        });
        match result {
            Ok(None) => self.channel.send(event(target, "ack"), b""),
            Ok(Some(size)) => {
                uploads.remove(&target);
                self.channel.send(Obj::new().set("id", Value::Int(target)).set("ev", Value::str("end"))
                                  .set("size", Value::Int(size as i64)).value(), b"");
            }
            Err(e) => {
                let err = RequestError::os("write", &upload.path, &e);
                if let Some(upload) = uploads.remove(&target) {
                    let _ = fs::remove_file(os(&upload.tmp));
                }
                self.channel.send(error(target, &err), b"");
            }
        }
    }

    /// Stop a download or abandon an upload (its temporary file is removed).
    pub fn cancel(&self, target: i64) {
        if let Some(credits) = self.downloads.locked().get(&target) {
            credits.close();
        }
        if let Some(upload) = self.uploads.locked().remove(&target) {
            drop(upload.file);
            let _ = fs::remove_file(os(&upload.tmp));
        }
    }

    pub fn credit(&self, target: i64, count: i64) -> bool {
        match self.downloads.locked().get(&target) {
            Some(credits) => {
                credits.give(count);
                true
            }
            None => false,
        }
    }

    /// The node went away: stop its downloads, abandon its unfinished uploads.
    pub fn detach(&self) {
        let mut targets: Vec<i64> = self.downloads.locked().keys().copied().collect();
        targets.extend(self.uploads.locked().keys().copied());
        for target in targets {
            self.cancel(target);
        }
    }
}

/// Hand a path just created to `owner` (the link itself, were it one).
fn give(opened: &[u8], owner: Option<(u32, u32)>) -> std::io::Result<()> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::lchown(os(opened), Some(uid), Some(gid)),
        None => Ok(()),
    }
}

/// `create_dir_all`, each directory it creates handed to `owner`.
fn make_dirs(opened: &[u8], owner: Option<(u32, u32)>) -> std::io::Result<()> {
    if owner.is_none() {
        return fs::create_dir_all(os(opened));
    }
    // The missing ancestors, nearest first (a path has at most MAX_PATH / 2 of them).
    let mut missing: Vec<&[u8]> = Vec::new();
    let mut at: &[u8] = opened;
    while !at.is_empty() && fs::symlink_metadata(os(at)).is_err() {
        missing.push(at);
        at = match at.iter().rposition(|b| *b == b'/') {
            Some(cut) => &at[..cut],
            None => b"",
        };
    }
    for dir in missing.into_iter().rev() {
        match fs::create_dir(os(dir)) {
            Ok(()) => give(dir, owner)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    if fs::metadata(os(opened))?.is_dir() { Ok(()) } else {
        Err(std::io::Error::from(std::io::ErrorKind::NotADirectory))
    }
}

pub fn event(id: i64, ev: &str) -> Value {
    Obj::new().set("id", Value::Int(id)).set("ev", Value::str(ev)).value()
}

pub fn error(id: i64, err: &RequestError) -> Value {
    let message: String = err.message.chars().take(2000).collect();
    Obj::new().set("id", Value::Int(id)).set("ev", Value::str("error"))
        .set("code", Value::str(err.code)).set("message", Value::Str(message.into_bytes())).value()
}
