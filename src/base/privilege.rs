//! The one way a Quill program gives up root: supplementary groups, then the group, then the
//! user (after setuid the others are no longer possible), then a check that the ids are what
//! was asked and that root cannot be taken back. quill-up (a private instance started by
//! root), quill-tcpserver (after binding), quill-queue (root submitting into someone else's
//! queue) and the children of quill-start and quill-lspawn (between fork and exec, through
//! [`crate::base::sys::set_credentials`]) all use it.
#![forbid(unsafe_code)]

use nix::unistd::{getegid, geteuid, getgid, getuid, setgid, setgroups, setuid, Gid, Uid};
use std::io;

/// Whom to become. The groups are kept in the form the system call takes, made before any
/// fork, so that [`drop_to`] allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    groups: Vec<Gid>,
}

impl Credentials {
    /// A user with these supplementary groups (usually just `gid`).
    pub fn new(uid: u32, gid: u32, groups: &[u32]) -> Credentials {
        Credentials { uid, gid, groups: groups.iter().copied().map(Gid::from_raw).collect() }
    }

    /// A user whose only group is `gid`.
    pub fn only(uid: u32, gid: u32) -> Credentials {
        Credentials::new(uid, gid, &[gid])
    }
}

/// Become `who` for good: supplementary groups (only root can change them; a process that is
/// not root keeps its own, which it had anyway), then gid, then uid; then check the real and
/// effective ids, and, unless `who` is root, that `setuid(0)` and `setgid(0)` now fail. Any
/// surprise is an error, and the caller must not go on.
///
/// Makes only async-signal-safe system calls and allocates nothing (the errors are errno
/// values or an [`io::ErrorKind`]), so it may run in a child between fork and exec.
pub fn drop_to(who: &Credentials) -> io::Result<()> {
    if geteuid().is_root() {
        setgroups(&who.groups)?;
    }
    setgid(Gid::from_raw(who.gid))?;
    setuid(Uid::from_raw(who.uid))?;
    let uid_held = getuid().as_raw() == who.uid && geteuid().as_raw() == who.uid;
    let gid_held = getgid().as_raw() == who.gid && getegid().as_raw() == who.gid;
    if !uid_held || !gid_held {
        return Err(io::ErrorKind::PermissionDenied.into());
    }
    if who.uid != 0 && (setuid(Uid::from_raw(0)).is_ok() || (who.gid != 0 && setgid(Gid::from_raw(0)).is_ok())) {
        return Err(io::ErrorKind::PermissionDenied.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Run as root (as here and in CI), a child given credentials runs as them, with only the
    /// given groups, and cannot become root again. The drop happens in a child, never in the
    /// test process, whose other threads it would change too.
    #[test]
    fn a_child_runs_as_the_user_given_and_cannot_become_root_again() {
        if !geteuid().is_root() {
            println!("SKIP: not root, so there is nothing to drop");
            return;
        }
        if Command::new("python3").arg("-c").arg("pass").status().map(|s| !s.success()).unwrap_or(true) {
            println!("SKIP: python3 is missing");
            return;
        }
        let probe = "import os\n\
                     print(os.getuid(), os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups()))\n\
                     for call in (os.setuid, os.setgid, os.seteuid):\n\
                     \x20   try:\n\
                     \x20       call(0)\n\
                     \x20       print('regained')\n\
                     \x20   except PermissionError:\n\
                     \x20       print('kept')\n";
        let mut command = Command::new("python3");
        command.arg("-c").arg(probe);
        crate::base::sys::set_credentials(&mut command, 65534, 65533, vec![65533, 65532]);
        let output = command.output().expect("python3 runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{text} {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(text, "65534 65534 65533 65533 [65532, 65533]\nkept\nkept\nkept\n");
    }

    #[test]
    fn the_groups_are_kept_as_given() {
        let who = Credentials::new(1, 2, &[2, 3]);
        assert_eq!(who.groups, vec![Gid::from_raw(2), Gid::from_raw(3)]);
        assert_eq!(Credentials::only(1, 2), Credentials::new(1, 2, &[2]));
    }
}
