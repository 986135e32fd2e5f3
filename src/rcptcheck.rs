//! Is a local address deliverable? quill-smtpd asks at RCPT time, so that Quill never accepts
//! mail it would only bounce later (backscatter). The sources and their order are quill-lspawn's
//! (users.rs): aliases, users/assign.db, the password file, the alias user; for an address with
//! an extension, the dot files that quill-local would look for.
#![forbid(unsafe_code)]

use crate::aliases::{aliases_path, Aliases};
use crate::control::Control;
use crate::dotqmail::{candidates, safe_ext};
use crate::fail::Result;
use crate::users::{resolve, AssignDb, Assignment, Resolution};

/// What the check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Somebody receives mail at this address (or we cannot tell, and must not refuse).
    Known,
    /// Nobody does: refuse it (550 5.1.1).
    Unknown,
    /// A lookup failed for now (the password database, a missing alias user): 451 4.3.0.
    Unsure(String),
}

/// Everything the check needs, loaded once per SMTP session.
pub struct Checker {
    home: std::path::PathBuf,
    aliases: Aliases,
    assign: Option<AssignDb>,
}

impl Checker {
    /// Load aliases and users/assign.db as quill-lspawn would.
    pub fn load(control: &Control) -> Result<Checker> {
        let aliases = match std::fs::metadata(aliases_path(control)) {
            Ok(_) => Aliases::load(&aliases_path(control))?,
            Err(_) => Aliases::parse(b"")?,
        };
        Ok(Checker { home: control.home.clone(), aliases, assign: AssignDb::open(&control.home)? })
    }

    /// Judge a local part that quill-send would deliver locally (after virtualdomains
    /// rewriting, if any).
    pub fn check(&self, local: &[u8]) -> Verdict {
        if local.is_empty() {
            return Verdict::Unknown;
        }
        match resolve(&self.home, local, &self.aliases, self.assign.as_ref()) {
            Resolution::Alias { .. } => Verdict::Known,
            Resolution::Temporary(why) => Verdict::Unsure(why),
            Resolution::User(a) if a.dash.is_empty() || a.ext.is_empty() => Verdict::Known,
            Resolution::User(a) | Resolution::AliasUser(a) => dot_file_exists(&a),
        }
    }
}

/// True when quill-local would find a dot file for this extension (exact or a `-default`).
/// A home we may not look into (quill-smtpd runs as quilld) gives Known: only a sure "no" may
/// refuse mail.
fn dot_file_exists(a: &Assignment) -> Verdict {
    if !safe_ext(&a.ext) {
        return Verdict::Unknown;
    }
    for (name, _) in candidates(&a.dash, &a.ext) {
        let path = a.home.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&name));
        match std::fs::symlink_metadata(&path) {
            Ok(_) => return Verdict::Known,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => return Verdict::Known,
        }
    }
    Verdict::Unknown
}
