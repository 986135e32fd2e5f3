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

/// Arrange for `command`, when spawned, to run with exactly these credentials: supplementary
/// groups first, then gid, then uid (the order matters: after setuid the others are
/// impossible). Used by the root programs (quill-start, quill-lspawn).
pub fn set_credentials(command: &mut Command, uid: u32, gid: u32, groups: Vec<u32>) {
    // SAFETY: the closure runs in the child between fork and exec; it only makes the
    // async-signal-safe system calls setgroups, setgid and setuid and touches no allocator
    // (the group vector was allocated before the fork and is only read).
    unsafe {
        command.pre_exec(move || {
            let list: Vec<libc::gid_t> = groups.clone();
            if libc::setgroups(list.len(), list.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgid(gid) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setuid(uid) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
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

/// Move descriptors into place in the child: for each pair (from, to), dup2(from, to).
/// Descriptors 0–2 are set with `Command::stdin` etc.; this is for 3 and above (the pipes of
/// quill-start, fd 6 of the qmail-queue protocol).
pub fn map_fds(command: &mut Command, pairs: Vec<(i32, i32)>) {
    // SAFETY: only dup2 and fcntl, both async-signal-safe, on descriptors the parent owns
    // and keeps open until the spawn returns. A source equal to its target only needs its
    // close-on-exec flag cleared.
    unsafe {
        command.pre_exec(move || {
            for &(from, to) in &pairs {
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
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(io::Error::from)?;
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
    }
    Ok(read)
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
    Ok(())
}

/// Disarm the alarm set by [`exit_after`].
pub fn cancel_alarm() {
    // SAFETY: alarm cannot fail and touches no memory.
    unsafe {
        libc::alarm(0);
    }
}
