//! The only module that may use `unsafe`. Every block carries a `// SAFETY:` line.
//!
//! Keep this file small: wrap one raw call per function, return `std::io::Result`, and let the
//! safe modules build on it.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// True when the process runs with privileges it did not start with (setuid or setgid
/// binary, or any other exec the kernel marked "secure"). Such a program must ignore its
/// environment for every path and setting.
pub fn is_secure_exec() -> bool {
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave the process.
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) };
    secure != 0
}

/// Arrange for `command`, when spawned, to run with exactly these credentials, dropped by
/// [`crate::base::privilege::drop_to`] (groups, gid, uid, then the check that root cannot be
/// regained). Used by the root programs (quill-start, quill-lspawn).
pub fn set_credentials(command: &mut Command, uid: u32, gid: u32, groups: Vec<u32>) {
    let who = crate::base::privilege::Credentials::new(uid, gid, &groups);
    // SAFETY: the closure runs in the child between fork and exec; drop_to only makes the
    // async-signal-safe system calls setgroups, setgid, setuid, get*id and allocates nothing
    // (the credentials were built before the fork and are only read).
    unsafe {
        command.pre_exec(move || crate::base::privilege::drop_to(&who));
    }
}

/// Put the child in a new session (so a signal to the parent's process group does not reach
/// it, and it cannot reach the parent's terminal).
pub fn new_session(command: &mut Command) {
    // SAFETY: setsid is async-signal-safe and needs no memory.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Make the child die with SIGTERM when its parent dies (used by supervisors for stages).
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and needs no memory.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Have the kernel send `signal` to this process when its parent dies (prctl
/// PR_SET_PDEATHSIG); for a forked helper that must not outlive the process it serves. The
/// caller checks afterwards that its parent is still the one it was forked from.
pub fn die_with_parent_now(signal: i32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG only sets a field of the calling process; touches no memory.
    let status = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Move descriptors into place in the child: for each pair (from, to), dup2(from, to).
/// Descriptors 0–2 are set with `Command::stdin` etc.; this is for 3 and above (the pipes of
/// quill-start, fd 6 of the qmail-queue protocol).
pub fn map_fds(command: &mut Command, pairs: Vec<(i32, i32)>) {
    // SAFETY: move_fd is only dup2 and fcntl, both async-signal-safe, on descriptors the
    // parent owns and keeps open until the spawn returns.
    unsafe {
        command.pre_exec(move || {
            for &(from, to) in &pairs {
                move_fd(from, to)?;
            }
            Ok(())
        });
    }
}

/// The real and effective user ids.
pub fn uids() -> (u32, u32) {
    // SAFETY: getuid and geteuid cannot fail and touch no memory.
    unsafe { (libc::getuid(), libc::geteuid()) }
}

/// The real group id.
pub fn gid() -> u32 {
    // SAFETY: getgid cannot fail and touches no memory.
    unsafe { libc::getgid() }
}

/// Set the process umask and return the old one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail and touches no memory.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// Reset a signal to its default disposition (for SIGPIPE before running user programs).
pub fn default_signal(signal: i32) {
    // SAFETY: installing SIG_DFL has no handler to be unsafe about.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

/// Ignore a signal (SIGPIPE in programs that write to pipes and check write errors).
pub fn ignore_signal(signal: i32) {
    // SAFETY: installing SIG_IGN has no handler to be unsafe about.
    unsafe {
        libc::signal(signal, libc::SIG_IGN);
    }
}

static SIGNAL_PIPE_WRITE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn note_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE_WRITE.load(std::sync::atomic::Ordering::Relaxed);
    let byte = signal as u8;
    // SAFETY: write(2) is async-signal-safe; the buffer is a local byte. A full pipe drops the
    // byte, which is fine: the reader only needs to learn that some signal came.
    unsafe {
        libc::write(fd, &byte as *const u8 as *const libc::c_void, 1);
    }
}

/// The self-pipe trick: after this call each of `signals` writes its number as one byte to a
/// non-blocking pipe, whose read end is returned for the caller's poll loop. Call once.
pub fn signal_pipe(signals: &[i32]) -> io::Result<std::os::fd::OwnedFd> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    use std::os::fd::IntoRawFd;
    SIGNAL_PIPE_WRITE.store(write.into_raw_fd(), std::sync::atomic::Ordering::Relaxed);
    for &signal in signals {
        // SAFETY: a zeroed sigaction is a valid starting value; the handler only calls
        // write(2) on a descriptor that stays open for the life of the process.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        note_handled(signal);
    }
    Ok(read)
}

/// The name a reverse DNS lookup gives for `ip` (getnameinfo with NI_NAMEREQD), or None when
/// there is none or the lookup fails. It blocks for as long as the resolver takes: call it only
/// where waiting is harmless (quill-tcpserver runs it in the connection's own process).
pub fn reverse_name(ip: std::net::IpAddr) -> Option<String> {
    let mut host = [0 as libc::c_char; 1025];
    let status = match ip {
        std::net::IpAddr::V4(v4) => {
            // SAFETY: a zeroed sockaddr_in is valid; every field we need is then set.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            // SAFETY: the address pointer and length describe `sa`, the host buffer and its
            // length describe `host`; no service buffer is asked for.
            unsafe {
                libc::getnameinfo(
                    &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    host.as_mut_ptr(),
                    host.len() as libc::socklen_t,
                    std::ptr::null_mut(),
                    0,
                    libc::NI_NAMEREQD,
                )
            }
        }
        std::net::IpAddr::V6(v6) => {
            // SAFETY: a zeroed sockaddr_in6 is valid; every field we need is then set.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = v6.octets();
            // SAFETY: as above, for `sa` of type sockaddr_in6.
            unsafe {
                libc::getnameinfo(
                    &sa as *const libc::sockaddr_in6 as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    host.as_mut_ptr(),
                    host.len() as libc::socklen_t,
                    std::ptr::null_mut(),
                    0,
                    libc::NI_NAMEREQD,
                )
            }
        }
    };
    if status != 0 {
        return None;
    }
    // SAFETY: on success getnameinfo wrote a NUL-terminated string into `host`.
    let name = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) };
    name.to_str().ok().map(str::to_string)
}

/// Make the child change to `dir` as its last step before exec, after any credentials set
/// with [`set_credentials`] (std's own `current_dir` runs before them, that is as root). Used
/// by quill-lspawn, so that a user's home is entered with the user's own rights.
pub fn change_dir_last(command: &mut Command, dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "directory name contains a NUL byte"))?;
    // SAFETY: the closure runs in the child between fork and exec and only calls chdir, which
    // is async-signal-safe, on a string allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::chdir(dir.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Take ownership of a descriptor inherited from the parent (quill-start's pipes: quill-send's
/// fds 3–8), if it is open, and mark it close-on-exec so that programs this process runs (the
/// queue program for bounces) do not inherit it. Call at most once per number, and before the
/// process opens any file (which could otherwise land on a closed number and be taken here).
pub fn inherited_fd(fd: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_GETFD only queries the descriptor table; an unused number gives EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if fd < 0 || flags < 0 {
        return None;
    }
    // SAFETY: the number names an open descriptor, and the caller promises that nothing else in
    // the process owns it (it was inherited, not opened here), so this becomes its one owner.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD on a descriptor this function now owns; touches no memory.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
    }
    Some(owned)
}

/// A close-on-exec duplicate of `fd` numbered `min` or higher. Used before [`map_fds`] so that
/// no source descriptor sits on a number that an earlier dup2 in the child overwrites.
pub fn dup_at_least(fd: std::os::fd::BorrowedFd<'_>, min: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor and touches no memory.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just created by fcntl and is owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

static ALARM_EXIT_CODE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(111);

extern "C" fn exit_on_alarm(_signal: libc::c_int) {
    let code = ALARM_EXIT_CODE.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: _exit is async-signal-safe; it skips destructors and atexit handlers, which is
    // what a handler must do.
    unsafe { libc::_exit(code) }
}

/// A watchdog without a thread: after `seconds`, SIGALRM ends the process with exit `code`.
/// [`cancel_alarm`] disarms it.
pub fn exit_after(seconds: u32, code: u8) -> io::Result<()> {
    ALARM_EXIT_CODE.store(i32::from(code), std::sync::atomic::Ordering::Relaxed);
    // SAFETY: a zeroed sigaction is a valid starting value; the handler only calls _exit.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = exit_on_alarm as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::alarm(seconds);
    }
    note_handled(libc::SIGALRM);
    Ok(())
}

/// Disarm the alarm set by [`exit_after`].
pub fn cancel_alarm() {
    // SAFETY: alarm cannot fail and touches no memory.
    unsafe {
        libc::alarm(0);
    }
}

/// Raise the soft limit on open descriptors to the hard limit; returns the new soft limit.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// How long the peer of a TCP socket has sent us no data (Linux `TCP_INFO`,
/// `tcpi_last_data_recv`; for a peer that never sent anything, the time since the connection
/// was set up). None when the kernel does not tell. quill-tcpserver reads it on its own copy of
/// each connection's socket to find the idlest session without knowing the protocol.
pub fn tcp_silence(socket: std::os::fd::BorrowedFd<'_>) -> Option<std::time::Duration> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain integers; all zeros is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `info`; the kernel writes at most `length` bytes
    // and reports how many it wrote.
    let status = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut length,
        )
    };
    // tcpi_last_data_recv sits in the part of the struct every kernel since 2.6 fills.
    if status != 0 || (length as usize) < 64 {
        return None;
    }
    Some(std::time::Duration::from_millis(u64::from(info.tcpi_last_data_recv)))
}

/// openat(2): open `name` relative to the directory `dir` (the working directory when None),
/// with `flags` plus O_CLOEXEC and, for O_CREAT, `mode`. The walkers of `crate::base::tree` build on
/// it: a descriptor pins what was checked, so no later step acts on a path that could change.
pub fn open_at(
    dir: Option<std::os::fd::BorrowedFd<'_>>,
    name: &std::ffi::CStr,
    flags: i32,
    mode: u32,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let dirfd = dir.map(|d| d.as_raw_fd()).unwrap_or(libc::AT_FDCWD);
    // SAFETY: `name` is a NUL-terminated string that outlives the call, and openat reads only
    // it; `dirfd` is borrowed for the call or is AT_FDCWD.
    let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Which side of [`fork_single_threaded`] this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forked {
    /// The new process.
    Child,
    /// The caller, with the child's pid.
    Parent(i32),
}

/// fork(2), for a process with one thread only, and refused (an error, nothing forked) in any
/// other: quill-lspawn, whose delivery child goes on running Rust code instead of exec'ing.
/// In a one-thread process the child is a whole copy: no lock of std's (stderr, the
/// environment, the allocator's, which glibc's fork resets anyway) can be held by a thread
/// that is not there, so the child may allocate, log and spawn like any program.
pub fn fork_single_threaded() -> io::Result<Forked> {
    fork_checked(self_stat_fields(&[17])?[0])
}

/// /proc/self/stat kept open by a process that forks often (quill-lspawn, once per delivery),
/// so that the thread count before each fork costs one pread instead of open, read and close.
/// A forked child must close it (quill-lspawn's children close every descriptor from 3 on):
/// in the child it still describes the parent.
pub struct SelfStat(std::fs::File);

impl SelfStat {
    /// Open /proc/self/stat (close-on-exec).
    pub fn open() -> io::Result<SelfStat> {
        std::fs::File::open("/proc/self/stat").map(SelfStat)
    }

    /// [`fork_single_threaded`], reading the thread count through the open file.
    pub fn fork_single_threaded(&self) -> io::Result<Forked> {
        use std::os::unix::fs::FileExt;
        let mut buffer = [0u8; 4096];
        let n = self.0.read_at(&mut buffer, 0)?;
        fork_checked(stat_fields(&buffer[..n], &[17])?[0])
    }
}

/// fork(2) when `threads`, the thread count just read, is one.
fn fork_checked(threads: u64) -> io::Result<Forked> {
    if threads != 1 {
        return Err(io::Error::other(format!("the process has {threads} threads, so it cannot fork safely")));
    }
    // SAFETY: the process has exactly one thread (checked just above from /proc/self/stat,
    // and quill-lspawn never starts a thread: one poll loop, no thread pool, NSS lookups
    // in-line), so the child is a consistent copy of it and may run any code, allocation
    // included. glibc's fork runs its own atfork handlers (the malloc locks).
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Fields of /proc/self/stat by their index after the command name (0 is field 3, `state`,
/// of proc(5)), read with one open and one read.
fn self_stat_fields(indexes: &[usize]) -> io::Result<Vec<u64>> {
    use std::io::Read;
    let mut buffer = [0u8; 4096];
    let mut file = std::fs::File::open("/proc/self/stat")?;
    let n = file.read(&mut buffer)?;
    stat_fields(&buffer[..n], indexes)
}

/// [`self_stat_fields`] of the text of a /proc/PID/stat.
fn stat_fields(buffer: &[u8], indexes: &[usize]) -> io::Result<Vec<u64>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unable to parse /proc/self/stat");
    // The command name is in parentheses and may hold anything: the fields start after the last.
    let after = memchr::memrchr(b')', buffer).ok_or_else(bad)? + 1;
    let text = std::str::from_utf8(&buffer[after..]).map_err(|_| bad())?;
    let fields: Vec<&str> = text.split_ascii_whitespace().collect();
    indexes.iter().map(|&i| fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(bad)).collect()
}

/// The signals this module gave a handler of its own ([`signal_pipe`], [`exit_after`]), one
/// bit each: what a forked child must put back ([`reset_signals`]).
static HANDLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn note_handled(signal: i32) {
    if (1..64).contains(&signal) {
        HANDLED.fetch_or(1 << signal, std::sync::atomic::Ordering::Relaxed);
    }
}

/// For a forked child that goes on without exec: what an exec would have reset. Every signal
/// this process gave a handler (quill-lspawn: SIGCHLD and SIGTERM, whose handler writes into
/// its self-pipe) back to its default action, and an empty signal mask. Ignored signals stay
/// ignored, as across an exec (SIGPIPE, ignored by Rust's start-up in every Quill program);
/// std's own SIGSEGV and SIGBUS handlers (stack overflow reports) stay, as a new Rust program
/// would install them again. Two or three system calls, where resetting all 64 would be 64.
pub fn reset_signals() -> io::Result<()> {
    let handled = HANDLED.load(std::sync::atomic::Ordering::Relaxed);
    for signal in 1..64 {
        if handled & (1 << signal) != 0 {
            // SAFETY: SIG_DFL installs no handler.
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
    }
    // SAFETY: the set is initialised by sigemptyset before sigprocmask reads it.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// dup2(from, to), without close-on-exec on `to` (a descriptor moved into place for a child);
/// a source equal to its target only needs its close-on-exec flag cleared.
pub fn move_fd(from: i32, to: i32) -> io::Result<()> {
    // SAFETY: dup2 and fcntl on descriptor numbers touch no memory; the caller owns `from`,
    // and `to` is being replaced on purpose.
    unsafe {
        if from == to {
            let flags = libc::fcntl(from, libc::F_GETFD);
            if flags < 0 || libc::fcntl(from, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
        } else if libc::dup2(from, to) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Close every descriptor numbered `first` or higher (close_range(2)). For a forked child,
/// which must not keep its parent's descriptors; no object of the parent's that owns one of
/// them may be dropped afterwards (the child ends with [`exit_now`]).
pub fn close_from(first: u32) -> io::Result<()> {
    close_between(first, u32::MAX)
}

/// Close every descriptor from `first` to `last`, both included; see [`close_from`].
pub fn close_between(first: u32, last: u32) -> io::Result<()> {
    if first > last {
        return Ok(());
    }
    // SAFETY: close_range only closes descriptors; it touches no memory.
    let status = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if status == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::ENOSYS) {
        return Err(error);
    }
    // Kernels before 5.9: the numbers from /proc/self/fd, listed first (its own descriptor is
    // among them and is closed by the listing's end), then closed.
    let mut open = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        if let Some(fd) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) {
            open.push(fd);
        }
    }
    for fd in open.into_iter().filter(|&fd| fd >= first && fd <= last) {
        // SAFETY: as above; a number that is no longer open gives EBADF, which is harmless.
        unsafe {
            libc::close(fd as i32);
        }
    }
    Ok(())
}

/// End the process at once with `code`: _exit(2), no destructor, no atexit handler, no
/// unwinding. The only way a forked child that runs Rust code may end, so that it never
/// returns into its parent's frames (and never closes or flushes what they own).
pub fn exit_now(code: u8) -> ! {
    // SAFETY: _exit ends the process; it needs no memory and never returns.
    unsafe { libc::_exit(i32::from(code)) }
}

/// Where the kernel keeps the process's argument and environment strings, which ps(1) and
/// /proc/PID/cmdline and /proc/PID/environ show. A forked child that goes on as another
/// program (quill-lspawn's delivery child, running quill-local's code) writes its own name
/// and environment there, so that ps, the administrator and the tests see what runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessTitle {
    args: (usize, usize),
    env: (usize, usize),
}

/// The most bytes [`ProcessTitle::set`] writes in either area (a sanity bound).
const TITLE_MAX: usize = 1 << 20;

impl ProcessTitle {
    /// Read the two areas' bounds from /proc/self/stat (fields 48 to 51 of proc(5)).
    pub fn find() -> io::Result<ProcessTitle> {
        let f = self_stat_fields(&[45, 46, 47, 48])?;
        let area = |start: u64, end: u64| -> io::Result<(usize, usize)> {
            let (start, end) = (start as usize, end as usize);
            if start == 0 || end <= start || end - start > TITLE_MAX {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "unusable bounds in /proc/self/stat"));
            }
            Ok((start, end))
        };
        Ok(ProcessTitle { args: area(f[0], f[1])?, env: area(f[2], f[3])? })
    }

    /// Rename the process: `comm` (what ps -e and top show, 15 bytes at most) through
    /// prctl(PR_SET_NAME), the argument area to `argv0` alone, and the environment area to
    /// `env` (NAME=value entries, each whole or not at all), the rest of each area zeroed.
    ///
    /// Only for a forked child with one thread whose environment was cleared
    /// (`std::env::remove_var` for every name) before this call: then nothing points at the
    /// old environment strings, and what still points into the argument area (std's argv,
    /// glibc's program_invocation_name) reads NUL-terminated bytes within it, as before.
    pub fn set(&self, argv0: &[u8], env: &[&[u8]]) {
        let mut comm = [0u8; 16];
        let short = argv0.len().min(15);
        comm[..short].copy_from_slice(&argv0[..short]);
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes: `comm`.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0);
        }
        let mut args = Vec::with_capacity(argv0.len() + 1);
        args.extend_from_slice(argv0);
        args.push(0);
        write_area(self.args, &args);
        let mut entries = Vec::new();
        for entry in env {
            if entries.len() + entry.len() + 1 < self.env.1 - self.env.0 {
                entries.extend_from_slice(entry);
                entries.push(0);
            }
        }
        write_area(self.env, &entries);
    }
}

/// Write `bytes` at the start of the area and zero the rest; nothing if they do not fit
/// with a NUL to spare.
fn write_area((start, end): (usize, usize), bytes: &[u8]) {
    let length = end - start;
    if bytes.len() >= length {
        return;
    }
    // SAFETY: [start, end) is the kernel's argument or environment area of this process, read
    // from /proc/self/stat by ProcessTitle::find in this process or the parent it was forked
    // from (same addresses): strings on the initial stack, mapped and writable for the life of
    // the process. No Rust reference to them exists (std keeps raw pointers), and the caller
    // of ProcessTitle::set promises one thread and no reader of the old environment; the last
    // byte stays NUL, so any C string read there still ends inside the area.
    unsafe {
        let area = start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), area, bytes.len());
        std::ptr::write_bytes(area.add(bytes.len()), 0, length - bytes.len());
    }
}

/// prctl(PR_SET_NO_NEW_PRIVS): from now on no exec of this process or its children gains
/// privileges (setuid and setgid bits and file capabilities are ignored). Landlock and a
/// seccomp filter both require it of an unprivileged process. It cannot be undone.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: this prctl takes integers only and touches no memory.
    let status = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The Landlock ABI version the kernel offers (1 to 7 as of Linux 6.15), or the error that
/// says it has none (ENOSYS: not built in; EOPNOTSUPP: built in but not enabled at boot).
pub fn landlock_abi() -> io::Result<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: with the VERSION flag the kernel reads no attribute (NULL, size 0) and returns
    // a number.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if version < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(version as u32)
}

/// struct landlock_ruleset_attr of <linux/landlock.h>: what the ruleset handles (denies
/// unless a rule allows it). Older kernels take a prefix of it (the size says how much).
#[repr(C)]
struct LandlockRulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// landlock_create_ruleset(2): a ruleset that handles these access rights; `abi` decides how
/// much of the attribute the kernel is shown (net rights from ABI 4, scopes from ABI 6), and
/// the caller has already dropped the bits that ABI does not know.
pub fn landlock_ruleset(abi: u32, fs: u64, net: u64, scoped: u64) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let attr = LandlockRulesetAttr { handled_access_fs: fs, handled_access_net: net, scoped };
    let size = match abi {
        0..=3 => 8,
        4 | 5 => 16,
        _ => std::mem::size_of::<LandlockRulesetAttr>(),
    };
    // SAFETY: `attr` outlives the call and `size` is at most its size; the kernel only reads it.
    let fd =
        unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &attr as *const LandlockRulesetAttr, size, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor (close-on-exec) and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// struct landlock_path_beneath_attr: packed, as the kernel declares it.
#[repr(C, packed)]
struct LandlockPathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// struct landlock_net_port_attr.
#[repr(C)]
struct LandlockNetPortAttr {
    allowed_access: u64,
    port: u64,
}

/// landlock_add_rule(2), LANDLOCK_RULE_PATH_BENEATH: `access` for the file or directory open
/// at `beneath` (an O_PATH descriptor will do) and everything under it.
pub fn landlock_allow_beneath(
    ruleset: std::os::fd::BorrowedFd<'_>,
    beneath: std::os::fd::BorrowedFd<'_>,
    access: u64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const LANDLOCK_RULE_PATH_BENEATH: u32 = 1;
    let attr = LandlockPathBeneathAttr { allowed_access: access, parent_fd: beneath.as_raw_fd() };
    // SAFETY: `attr` outlives the call and the kernel only reads it; both descriptors are
    // borrowed for the call.
    let status = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_PATH_BENEATH,
            &attr as *const LandlockPathBeneathAttr,
            0u32,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// landlock_add_rule(2), LANDLOCK_RULE_NET_PORT (ABI 4): `access` (bind or connect) for a
/// TCP port.
pub fn landlock_allow_port(ruleset: std::os::fd::BorrowedFd<'_>, port: u16, access: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const LANDLOCK_RULE_NET_PORT: u32 = 2;
    let attr = LandlockNetPortAttr { allowed_access: access, port: u64::from(port) };
    // SAFETY: `attr` outlives the call and the kernel only reads it.
    let status = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_NET_PORT,
            &attr as *const LandlockNetPortAttr,
            0u32,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// landlock_restrict_self(2): the calling thread (and every process it forks afterwards)
/// enters the ruleset's domain for good. Threads that already exist are not affected, so it
/// is called while the process has one thread.
pub fn landlock_restrict_self(ruleset: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: takes a descriptor and flags only; touches no memory of ours.
    let status = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One classic BPF instruction (struct sock_filter of <linux/filter.h>).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInstruction {
    /// Operation (BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K, …).
    pub code: u16,
    /// Instructions to skip when the test is true.
    pub jt: u8,
    /// Instructions to skip when it is false.
    pub jf: u8,
    /// The operand.
    pub k: u32,
}

/// struct sock_fprog.
#[repr(C)]
struct BpfProgram {
    len: u16,
    filter: *const BpfInstruction,
}

/// seccomp(SECCOMP_SET_MODE_FILTER): install `program` for the calling thread and every
/// process it forks (the caller has set no_new_privs). With `log`, the kernel also logs every
/// action other than allow (SECCOMP_FILTER_FLAG_LOG, Linux 4.14); a kernel that refuses the
/// flag gets the filter without it. The kernel checks the program (length, jumps, a return
/// at its end) and refuses a bad one with EINVAL.
pub fn seccomp_filter(program: &[BpfInstruction], log: bool) -> io::Result<()> {
    const SECCOMP_SET_MODE_FILTER: u32 = 1;
    const SECCOMP_FILTER_FLAG_LOG: u32 = 2;
    let len = u16::try_from(program.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let fprog = BpfProgram { len, filter: program.as_ptr() };
    let install = |flags: u32| {
        // SAFETY: `fprog` points at `program`, both outlive the call, and the kernel copies the
        // instructions before it returns.
        unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fprog as *const BpfProgram) }
    };
    if log && install(SECCOMP_FILTER_FLAG_LOG) == 0 {
        return Ok(());
    }
    if install(0) != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time this process has used, user plus system (getrusage(RUSAGE_SELF)), and the same
/// for its waited-for children (RUSAGE_CHILDREN): for counting what a step costs.
pub fn cpu_time() -> io::Result<(std::time::Duration, std::time::Duration)> {
    let read = |who: i32| -> io::Result<std::time::Duration> {
        // SAFETY: rusage is plain integers; all zeros is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes only the struct we pass.
        if unsafe { libc::getrusage(who, &mut usage) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        Ok(std::time::Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime)))
    };
    Ok((read(libc::RUSAGE_SELF)?, read(libc::RUSAGE_CHILDREN)?))
}

/// Send `bytes` on a unix stream socket with `fd` attached (SCM_RIGHTS): the receiver gets its
/// own descriptor of the same open file. Returns how many bytes went; the caller writes the
/// rest of a longer frame with plain writes (the descriptor travels with the first byte).
pub fn send_with_fd(
    socket: std::os::fd::BorrowedFd<'_>,
    bytes: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let fds = [fd.as_raw_fd()];
    let iov = [io::IoSlice::new(bytes)];
    let control = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &control, MsgFlags::MSG_NOSIGNAL, None).map_err(io::Error::from)
}

/// Receive bytes from a unix stream socket with any descriptors sent along (SCM_RIGHTS), each
/// close-on-exec and owned by the caller. At most 4 descriptors per read are taken; a peer
/// that sends more loses them (they are closed by the kernel when the message is truncated).
pub fn receive_with_fds(
    socket: std::os::fd::BorrowedFd<'_>,
    buffer: &mut [u8],
) -> io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let mut iov = [io::IoSliceMut::new(buffer)];
    let message = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for control in message.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = control {
            for fd in raw {
                // SAFETY: the kernel just installed this descriptor in our table for this
                // message (SCM_RIGHTS); nothing else in the process knows its number, so it
                // gets exactly one owner here.
                fds.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok((message.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fork in a process with another thread is refused, not made: the child could find a
    /// lock held by a thread that it does not have.
    #[test]
    fn fork_is_refused_with_a_second_thread() {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = wait.recv_timeout(std::time::Duration::from_secs(30));
        });
        let refused = fork_single_threaded();
        let _ = done.send(());
        let _ = other.join();
        let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("threads, so it cannot fork safely"), "{error:?}");
    }

    /// The kept /proc/self/stat is read afresh at each fork: a thread started after it was
    /// opened is seen, and the fork refused.
    #[test]
    fn kept_self_stat_sees_a_later_thread() {
        let Ok(stat) = SelfStat::open() else { panic!("unable to open /proc/self/stat") };
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = wait.recv_timeout(std::time::Duration::from_secs(30));
        });
        let refused = stat.fork_single_threaded();
        let _ = done.send(());
        let _ = other.join();
        let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("threads, so it cannot fork safely"), "{error:?}");
    }

    #[test]
    fn the_argument_and_environment_areas_are_found() {
        let title = ProcessTitle::find().expect("bounds in /proc/self/stat");
        assert!(title.args.0 < title.args.1 && title.env.0 < title.env.1, "{title:?}");
        assert!(title.args.1 <= title.env.0, "the arguments come before the environment: {title:?}");
    }
}
