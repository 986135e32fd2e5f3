//! quill-tcpserver's connection child for a linked program (doc/quill-tcpserver.8, "The linked
//! quill-smtpd"): a fork of the server that becomes the program's process without exec and
//! runs its code, linked into quill-tcpserver, as a function. The tcpserver stage may not
//! import the smtpd stage, so quill-tcpserver's main hands the function over ([`Program`]);
//! tests/layout.rs lists that one link (`LINKED`).
//!
//! The child presents the program with what an exec of it would have seen: the socket on fd 0
//! and 1, the log on fd 2 and nothing else open; the same environment (the server's, changed
//! by [`super::listener::environment`] exactly as for an exec'd program, then `-h`'s
//! TCPREMOTEHOST); the same arguments; the signals it did not ignore back to their defaults
//! and an empty mask; its own name in ps and in its log lines; the uid and gid the server
//! dropped to before it accepted anything. It keeps nothing of a client before it: each
//! connection is a fresh fork of the server, which never runs the program's code itself.
#![forbid(unsafe_code)]

use crate::base::fail::exit;
use crate::base::sys::{self, Forked, ProcessTitle};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

/// A linked program: its arguments after its name in, its exit code out. Descriptors and
/// environment are the process's own, set up as for an exec'd program.
pub type Program = fn(Vec<OsString>) -> u8;

/// The linked program, as quill-tcpserver's main chose it.
#[derive(Clone, Copy)]
pub struct Linked {
    /// Its name: the process title, its log lines' prefix.
    pub name: &'static str,
    /// Its code.
    pub program: Program,
    /// Where the child writes its name for ps (None: not found; the child keeps the server's).
    pub title: Option<ProcessTitle>,
}

/// What one connection's child is given (all of it made in the server before the fork).
pub struct Plan<'a> {
    /// The arguments after the program's name.
    pub args: &'a [OsString],
    /// The connection's socket, in the server (any number; the child moves it to 0 and 1).
    pub socket: i32,
    /// The changes to the server's environment, in order (None removes the variable).
    pub changes: &'a [(OsString, Option<OsString>)],
    /// `-h`: look up TCPREMOTEHOST in the child first, waiting at most this long.
    pub lookup: Option<Duration>,
}

/// Fork the connection's child; in the server, its pid. The child never returns.
pub fn start(linked: &Linked, plan: &Plan<'_>) -> std::io::Result<i32> {
    match sys::fork_single_threaded()? {
        Forked::Child => child(linked, plan),
        Forked::Parent(pid) => Ok(pid),
    }
}

/// The child: it ends with `_exit` and never returns into the server's frames (a panic too:
/// exit 101, as Rust's runtime exits after a panic in main). What the program wrote to fd 1
/// through std's buffer is flushed first, as a returning main would.
fn child(linked: &Linked, plan: &Plan<'_>) -> ! {
    // 101: what Rust's runtime exits with after a panic in main.
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| become_program(linked, plan))).unwrap_or(101);
    let _ = std::io::stdout().flush();
    sys::exit_now(code)
}

/// The steps of [`child`], in order; returns the exit code.
fn become_program(linked: &Linked, plan: &Plan<'_>) -> u8 {
    // The server's handlers (SIGCHLD, SIGHUP, SIGTERM into its self-pipe) go first, so that no
    // signal to the child reaches the server's loop; then the descriptors: the socket on 0 and
    // 1, fd 2 (the log) as it is, and nothing else (the listener, the self-pipe, the other
    // connections' sockets the server keeps), except the Landlock ruleset a confined server
    // keeps for its children (`confine::serve`), closed once the program has entered it.
    let setup = || -> std::io::Result<()> {
        sys::reset_signals()?;
        sys::move_fd(plan.socket, 0)?;
        sys::move_fd(plan.socket, 1)?;
        match crate::base::confine::served_descriptor().and_then(|fd| u32::try_from(fd).ok()).filter(|&fd| fd >= 3) {
            Some(ruleset) => {
                sys::close_between(3, ruleset - 1)?;
                sys::close_from(ruleset + 1)
            }
            None => sys::close_from(3),
        }
    };
    if let Err(e) = setup() {
        crate::base::log::fatal(&format!("unable to set up the connection for {}: {e}", linked.name));
        return exit::TEMPORARY;
    }
    crate::base::log::rename(linked.name);
    let environment = environment(plan.changes);
    // Emptied first, so that nothing points at the strings of the server's environment area
    // when the title overwrites it (ProcessTitle::set).
    let names: Vec<OsString> = std::env::vars_os().map(|(name, _)| name).collect();
    for name in names {
        std::env::remove_var(name);
    }
    set_title(linked, &environment);
    for (name, value) in &environment {
        std::env::set_var(name, value);
    }
    if let Some(wait) = plan.lookup {
        // As the `-h` helper does before it execs the program (server::lookup_and_exec).
        std::env::remove_var("TCPREMOTEHOST");
        let remote = std::env::var("TCPREMOTEIP").ok().and_then(|ip| ip.parse().ok());
        if let Some(host) = remote.and_then(|ip| super::server::remote_name(ip, wait)) {
            // Only once the lookup's thread has ended (remote_name joins it): no other thread
            // may read the environment while it changes.
            std::env::set_var("TCPREMOTEHOST", &host);
            let mut environment = environment;
            environment.retain(|(name, _)| name != "TCPREMOTEHOST");
            environment.push((OsString::from("TCPREMOTEHOST"), OsString::from(host)));
            set_title(linked, &environment);
        }
    }
    (linked.program)(plan.args.to_vec())
}

/// The server's environment with `changes` applied in order, as std's Command applies its
/// `env` and `env_remove` calls to the environment it passes to an exec'd program. Names std
/// could not set (empty, or holding `=` or NUL: not made by the rules file, which checks its
/// names) are left out.
fn environment(changes: &[(OsString, Option<OsString>)]) -> Vec<(OsString, OsString)> {
    let mut environment: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    for (name, value) in changes {
        environment.retain(|(n, _)| n != name);
        if let Some(value) = value {
            environment.push((name.clone(), value.clone()));
        }
    }
    environment.retain(|(name, value)| {
        let name = name.as_bytes();
        !name.is_empty() && !name.contains(&b'=') && !name.contains(&0) && !value.as_bytes().contains(&0)
    });
    environment
}

/// The child's name and environment where ps and /proc/PID/environ read them.
fn set_title(linked: &Linked, environment: &[(OsString, OsString)]) {
    let Some(title) = linked.title else { return };
    let entries: Vec<Vec<u8>> =
        environment.iter().map(|(name, value)| [name.as_bytes(), b"=", value.as_bytes()].concat()).collect();
    let entries: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
    title.set(linked.name.as_bytes(), &entries);
}

/// Whether a program named on the command line is the linked one: the same file (through
/// links) as `beside`, the linked program's binary next to quill-tcpserver's; a name without
/// a slash is looked for in PATH, as the exec would.
pub fn names(program: &OsStr, beside: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let found = if program.as_bytes().contains(&b'/') {
        Some(std::path::PathBuf::from(program))
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
        })
    };
    match (found.map(std::fs::metadata), std::fs::metadata(beside)) {
        (Some(Ok(a)), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}
