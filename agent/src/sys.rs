//! The few libc calls the standard library does not wrap. Every `unsafe` of the agent is
//! here or in the forked child of `processes::spawn`.

use std::io;
use std::os::raw::{c_char, c_int, c_long, c_short, c_uint};

pub type Pid = c_int;

pub const SIGKILL: c_int = 9;
pub const SIGPIPE: c_int = 13;
pub const SIGSTOP: c_int = 19;
const SIG_DFL: usize = 0;
const WNOHANG_NONE: c_int = 0;
const EINTR: i32 = 4;
const ESRCH: i32 = 3;
pub const ECHILD: i32 = 10;
pub const POLLIN: c_short = 0x1;
pub const O_CLOEXEC: c_int = 0o2000000;

#[repr(C)]
pub struct PollFd {
    pub fd: c_int,
    pub events: c_short,
    pub revents: c_short,
}

extern "C" {
    fn clone(f: extern "C" fn(*mut u8) -> c_int, stack: *mut u8, flags: c_int, arg: *mut u8, ...) -> Pid;
    fn syscall(number: c_long, ...) -> c_long;
    fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    fn _exit(status: c_int) -> !;
    fn dup2(old: c_int, new: c_int) -> c_int;
    fn dup(fd: c_int) -> c_int;
    fn chdir(path: *const c_char) -> c_int;
    fn pipe2(fds: *mut c_int, flags: c_int) -> c_int;
    fn write(fd: c_int, buf: *const u8, count: usize) -> isize;
    fn waitpid(pid: Pid, status: *mut c_int, options: c_int) -> Pid;
    fn kill(pid: Pid, sig: c_int) -> c_int;
    fn signal(sig: c_int, handler: usize) -> usize;
    fn sigprocmask(how: c_int, set: *const u64, old: *mut u64) -> c_int;
    fn poll(fds: *mut PollFd, n: u64, timeout: c_int) -> c_int;
    fn getpid() -> Pid;
    fn getuid() -> c_uint;
    fn getgid() -> c_uint;
    fn __errno_location() -> *mut c_int;
}

fn errno() -> i32 {
    // SAFETY: glibc's thread-local errno.
    unsafe { *__errno_location() }
}

fn check(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn pid() -> Pid {
    unsafe { getpid() }
}

pub fn uid() -> u32 {
    unsafe { getuid() }
}

pub fn gid() -> u32 {
    unsafe { getgid() }
}

pub fn dup_fd(fd: c_int) -> io::Result<c_int> {
    check(unsafe { dup(fd) })
}

pub fn dup2_fd(old: c_int, new: c_int) -> io::Result<()> {
    check(unsafe { dup2(old, new) }).map(|_| ())
}

/// A pipe whose both ends are close-on-exec: (read, write).
pub fn cloexec_pipe() -> io::Result<(c_int, c_int)> {
    let mut fds = [0 as c_int; 2];
    check(unsafe { pipe2(fds.as_mut_ptr(), O_CLOEXEC) })?;
    Ok((fds[0], fds[1]))
}

/// `kill(2)`; a process already gone is not an error.
pub fn send_signal(pid: Pid, sig: c_int) -> io::Result<()> {
    if unsafe { kill(pid, sig) } < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// Signal a process group; false if it is gone.
pub fn signal_group(pgid: Pid, sig: c_int) -> bool {
    unsafe { kill(-pgid, sig) == 0 }
}

/// Wait for any child: (pid, raw status), or the errno.
pub fn wait_any() -> Result<(Pid, c_int), i32> {
    let mut status: c_int = 0;
    loop {
        let pid = unsafe { waitpid(-1, &mut status, WNOHANG_NONE) };
        if pid >= 0 {
            return Ok((pid, status));
        }
        let err = errno();
        if err != EINTR {
            return Err(err);
        }
    }
}

extern "C" fn ignore(_: c_int) {}

/// Give `sig` a handler that does nothing: the signal no longer ends or stops the agent,
/// and, unlike an ignored signal, it is back to its default in every child after exec.
pub fn catch(sig: c_int) {
    unsafe {
        signal(sig, ignore as extern "C" fn(c_int) as usize);
    }
}

/// Wait until one of `fds` is readable (or hung up), at most `timeout_ms`.
pub fn poll_fds(fds: &mut [PollFd], timeout_ms: i32) -> io::Result<usize> {
    let ret = unsafe { poll(fds.as_mut_ptr(), fds.len() as u64, timeout_ms) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(EINTR) {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(ret as usize)
}

/// What the child of [`spawn`] does between fork and exec, all prepared beforehand: it
/// may not allocate (another thread may hold the allocator's lock at fork).
pub struct ChildPlan {
    /// Paths execve tries in turn (a PATH search is done by the parent).
    pub programs: Vec<std::ffi::CString>,
    pub argv: Vec<*const c_char>,
    pub envp: Vec<*const c_char>,
    pub cwd: std::ffi::CString,
    /// (stdin, stdout, stderr) of the child.
    pub stdio: [c_int; 3],
    /// (uid, gid, supplementary groups) to become, or None to stay the agent's user.
    pub user: Option<(u32, u32, Vec<c_uint>)>,
}

/// Start `plan` as a new process: the new pid, or the errno of whichever step failed in
/// the child (reported over a close-on-exec pipe, so a successful exec closes it with
/// nothing said).
///
/// The child shares the agent's memory until it execs (`clone` with `CLONE_VM |
/// CLONE_VFORK`, on a stack of its own, as `posix_spawn` does): a `fork` would copy the
/// agent's address space, which under gVisor costs more than the whole command. The child
/// gets a session of its own, the requested user, `SIGPIPE` back at its default and an
/// empty signal mask. The caller must hold whatever lock registers the pid, so that the
/// reaper cannot see this child before it is known.
pub fn spawn(plan: &ChildPlan) -> io::Result<Pid> {
    const CLONE_VM: c_int = 0x100;
    const CLONE_VFORK: c_int = 0x4000;
    const SIGCHLD: c_int = 17;
    const CHILD_STACK: usize = 64 * 1024;
    let (err_read, err_write) = cloexec_pipe()?;
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down from its end, 16-byte aligned.
    let top = unsafe { stack.as_mut_ptr().add(CHILD_STACK) } as usize & !15;
    let mut args = ChildArgs { plan, err_write };
    let pid = unsafe {
        clone(child_entry, top as *mut u8, CLONE_VM | CLONE_VFORK | SIGCHLD,
              &mut args as *mut ChildArgs as *mut u8)
    };
    // CLONE_VFORK: the child has exec'd or exited by now; its stack is free again.
    drop(stack);
    close(err_write);
    let mut reader = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(err_read) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match std::io::Read::read(&mut reader, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if got == 4 {
        // The child failed and _exit()ed; the reaper collects its status.
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf)));
    }
    Ok(pid)
}

struct ChildArgs<'a> {
    plan: &'a ChildPlan,
    err_write: c_int,
}

extern "C" fn child_entry(arg: *mut u8) -> c_int {
    let args = unsafe { &*(arg as *const ChildArgs) };
    unsafe { child(args.plan, args.err_write) }
}

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const SETSID: super::c_long = 112;
    pub const SETGROUPS: super::c_long = 116;
    pub const SETGID: super::c_long = 106;
    pub const SETUID: super::c_long = 105;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const SETSID: super::c_long = 157;
    pub const SETGROUPS: super::c_long = 159;
    pub const SETGID: super::c_long = 144;
    pub const SETUID: super::c_long = 146;
}

/// The child's side of `spawn`, in the agent's memory: system calls only. The id changes
/// are raw system calls, not glibc's wrappers, which would signal every thread of the
/// agent (its thread list is in this shared memory) to change their ids too.
unsafe fn child(plan: &ChildPlan, err_write: c_int) -> ! {
    let fail = |_: ()| -> ! {
        let code = errno().to_ne_bytes();
        write(err_write, code.as_ptr(), 4);
        _exit(127)
    };
    // The three descriptors first, each to its place (dup2 clears close-on-exec).
    for (target, fd) in plan.stdio.iter().enumerate() {
        if dup2(*fd, target as c_int) < 0 {
            fail(());
        }
    }
    if chdir(plan.cwd.as_ptr()) < 0 {
        fail(());
    }
    if syscall(nr::SETSID) < 0 {
        fail(());
    }
    if let Some((uid, gid, groups)) = &plan.user {
        if syscall(nr::SETGROUPS, groups.len(), groups.as_ptr()) < 0
            || syscall(nr::SETGID, *gid) < 0
            || syscall(nr::SETUID, *uid) < 0
        {
            fail(());
        }
    }
    // The standard library ignores SIGPIPE in the agent; a command gets the default.
    signal(SIGPIPE, SIG_DFL);
    let empty: [u64; 16] = [0; 16];
    sigprocmask(2 /* SIG_SETMASK */, empty.as_ptr(), std::ptr::null_mut());
    // Like execvpe: the first error other than "not found" is the one reported.
    let mut saved = 0;
    for program in &plan.programs {
        execve(program.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        let err = errno();
        if err != 2 && err != 20 && saved == 0 {
            saved = err;
        }
    }
    if saved != 0 {
        *__errno_location() = saved;
    }
    fail(())
}

pub fn close(fd: c_int) {
    extern "C" {
        #[link_name = "close"]
        fn c_close(fd: c_int) -> c_int;
    }
    unsafe {
        c_close(fd);
    }
}

/// An OS error's text without the standard library's " (os error N)" suffix, as
/// `strerror` would say it.
pub fn strerror(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Mark `fd` close-on-exec.
pub fn set_cloexec(fd: c_int) {
    extern "C" {
        fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
    }
    const F_GETFD: c_int = 1;
    const F_SETFD: c_int = 2;
    const FD_CLOEXEC: c_int = 1;
    unsafe {
        let flags = fcntl(fd, F_GETFD);
        if flags >= 0 {
            fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
        }
    }
}

/// glibc's `struct sigaction` (x86_64 and aarch64 alike).
#[repr(C)]
struct SigAction {
    handler: usize,
    mask: [u64; 16],
    flags: c_int,
    restorer: usize,
}

extern "C" fn on_fault(sig: c_int, info: *const c_int, _context: *mut u8) {
    // siginfo_t starts with si_signo, si_errno, si_code. A code above zero is the kernel's
    // own report of a fault in the agent; zero or below, a signal some process sent.
    let code = if info.is_null() { 0 } else { unsafe { *info.add(2) } };
    if code > 0 {
        // A real fault: back to the default, so that the faulting instruction, run again,
        // ends the agent (the node then stops the sandbox, saying why).
        unsafe {
            signal(sig, SIG_DFL);
        }
    }
}

/// Fault signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL) sent by sandbox code are ignored, like
/// every other signal it may send the agent; a real fault still ends the agent.
pub fn guard_faults() {
    extern "C" {
        fn sigaction(sig: c_int, act: *const SigAction, old: *mut SigAction) -> c_int;
    }
    const SA_SIGINFO: c_int = 4;
    const SA_RESTART: c_int = 0x1000_0000;
    let action = SigAction {
        handler: on_fault as extern "C" fn(c_int, *const c_int, *mut u8) as usize,
        mask: [0; 16],
        flags: SA_SIGINFO | SA_RESTART,
        restorer: 0,
    };
    for sig in [4, 7, 8, 11] {
        unsafe {
            sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Flush every filesystem's dirty data (sync(2)); it cannot fail.
pub fn sync_all() {
    extern "C" {
        fn sync();
    }
    // SAFETY: sync(2) takes no arguments and touches no memory of ours.
    unsafe { sync() }
}

// -- inotify (watch.rs) -------------------------------------------------------------------

/// A new inotify instance, non-blocking and close-on-exec.
pub fn inotify_new() -> io::Result<c_int> {
    extern "C" {
        fn inotify_init1(flags: c_int) -> c_int;
    }
    const IN_NONBLOCK: c_int = 0o4000;
    check(unsafe { inotify_init1(IN_NONBLOCK | O_CLOEXEC) })
}

/// Watch `path` (no NUL byte in it) on inotify instance `fd`: the watch descriptor.
pub fn inotify_watch(fd: c_int, path: &[u8], mask: u32) -> io::Result<c_int> {
    extern "C" {
        fn inotify_add_watch(fd: c_int, path: *const c_char, mask: u32) -> c_int;
    }
    let path = std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(22))?;
    check(unsafe { inotify_add_watch(fd, path.as_ptr(), mask) })
}

/// Stop watch `wd` of instance `fd` (its `IN_IGNORED` follows); an unknown one is no error.
pub fn inotify_unwatch(fd: c_int, wd: c_int) {
    extern "C" {
        fn inotify_rm_watch(fd: c_int, wd: c_int) -> c_int;
    }
    unsafe {
        inotify_rm_watch(fd, wd);
    }
}

/// `read(2)` into `buf`: Ok(0) when nothing is waiting on a non-blocking descriptor.
pub fn read_some(fd: c_int, buf: &mut [u8]) -> io::Result<usize> {
    extern "C" {
        fn read(fd: c_int, buf: *mut u8, count: usize) -> isize;
    }
    const EAGAIN: i32 = 11;
    loop {
        let n = unsafe { read(fd, buf.as_mut_ptr(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(EINTR) => continue,
            Some(EAGAIN) => return Ok(0),
            _ => return Err(err),
        }
    }
}
