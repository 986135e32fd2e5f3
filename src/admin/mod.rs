//! The administrator's front end, `quill` (doc/quill.8): one module per subcommand.
//!
//! `setup` makes a host ready (accounts, queue, control files, certificate, links), `check`
//! says what is wrong and how to fix it, `status` and `queue` look at what runs and what
//! waits (`why` says why), `stats` reads the logs. Everything here but `setup` only reads;
//! changes to the queue are requests to quill-send (`queue::request`). `command` is the
//! command line (usage, dispatch, each subcommand's options), `queue_command` that of
//! `quill queue`; `up` is quill-up (a private instance and its supervision).
#![forbid(unsafe_code)]

pub mod check;
pub mod command;
pub mod dkim;
pub mod json;
pub mod queue;
pub mod queue_command;
pub mod setup;
pub mod shape;
pub mod stats;
pub mod status;
pub mod up;
pub mod why;

use std::path::Path;

/// The group that owns the queue.
pub const QUEUE_GROUP: &str = "quill";
/// The group that must own no files (the daemons' primary group where they write nothing).
pub const NOFILES_GROUP: &str = "nofiles";

/// One system account Quill needs, and its primary group.
#[derive(Clone, Copy, Debug)]
pub struct Account {
    /// Login name.
    pub name: &'static str,
    /// Primary group.
    pub group: &'static str,
    /// What it is for (shown by `check`).
    pub role: &'static str,
}

/// Every account, in the order `setup` creates them (DESIGN §2).
pub const ACCOUNTS: [Account; 6] = [
    Account { name: "quilld", group: NOFILES_GROUP, role: "quill-smtpd" },
    Account { name: "quillq", group: QUEUE_GROUP, role: "owner of the queue, quill-queue, quill-clean" },
    Account { name: "quills", group: QUEUE_GROUP, role: "quill-send" },
    Account { name: "quillr", group: QUEUE_GROUP, role: "quill-rspawn, quill-remote" },
    Account { name: "quilll", group: NOFILES_GROUP, role: "the logger" },
    Account { name: "alias", group: NOFILES_GROUP, role: "mail for postmaster, root and other system names" },
];

/// A user's uid and primary gid, or None if the account does not exist.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    nix::unistd::User::from_name(name).ok().flatten().map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

/// A user's home directory, or None.
pub fn user_home(name: &str) -> Option<std::path::PathBuf> {
    nix::unistd::User::from_name(name).ok().flatten().map(|u| u.dir)
}

/// A group's gid, or None.
pub fn group_id(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name).ok().flatten().map(|g| g.gid.as_raw())
}

/// The name of a uid, or the number.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// The name of a gid, or the number.
pub fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string())
}

/// The owner, group and permission bits (with setuid/setgid/sticky) of a path, without
/// following a final symbolic link; None if it does not exist.
pub fn owner_mode(path: &Path) -> Option<(u32, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.uid(), m.gid(), m.mode() & 0o7777))
}

/// Quote a path for a shell command line shown to the administrator.
pub fn shell_quote(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@,".contains(&b)) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

pub use crate::mail::queuelist::age;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_ages() {
        assert_eq!(shell_quote("/var/quill/queue"), "/var/quill/queue");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(4 * 86_400), "4d");
    }
}
