//! Is a local address deliverable? The sources and their order are quill-lspawn's (users.rs):
//! aliases, users/assign.db, the password file, the alias user; for an address with an
//! extension, the dot files that quill-local would look for. quill-smtpd asks at RCPT time
//! (`smtpd::rcptcheck`), `sendmail -bv` for an administrator.
#![forbid(unsafe_code)]

use crate::base::fail::Result;
use crate::mail::aliases::{aliases_path, Aliases};
use crate::mail::control::Control;
use crate::mail::dotqmail::{candidates, safe_ext};
use crate::mail::users::{resolve, AssignDb, Assignment, Delimiters, Resolution};

/// The longest local part RFC 5321 §4.5.3.1.1 promises to take. Longer ones could never be
/// delivered here (dot-file and Maildir names are built from them), so they are refused at
/// RCPT instead of bounced later.
pub const MAX_LOCAL_PART: usize = 64;

/// What the check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Somebody receives mail at this address.
    Known,
    /// Nobody does: refuse it (550 5.1.1).
    Unknown,
    /// The local part is longer than [`MAX_LOCAL_PART`]: refuse it (553 5.1.3).
    TooLong,
    /// A lookup failed for now (the password database, a missing alias user): 451 4.3.0.
    Unsure(String),
    /// The user exists, but quill-smtpd may not look into the home directory that decides
    /// whether this extension exists (a 0700 home): 451 4.3.0 with the reason, and a warning
    /// for the administrator. Accepting would bounce the mail later if the extension does not
    /// exist (backscatter); refusing would lose it if it does. The fix is the administrator's:
    /// doc/quill-smtpd.8.
    Unseen(String),
}

impl Verdict {
    /// The RCPT reply, or None for an address to accept. The one table of RCPT-time verdicts.
    pub fn reply(&self) -> Option<(u16, &'static str)> {
        match self {
            Verdict::Known => None,
            Verdict::Unknown => Some((550, "5.1.1 no such user here")),
            Verdict::TooLong => Some((553, "5.1.3 local part longer than 64 octets (RFC 5321 4.5.3.1.1)")),
            Verdict::Unsure(_) => Some((451, "4.3.0 unable to check the recipient now, try again later")),
            Verdict::Unseen(_) => {
                Some((451, "4.3.0 unable to check this address: the mail system may not look into its home directory"))
            }
        }
    }
}

/// Everything the check needs, loaded once per SMTP session.
pub struct Checker {
    home: std::path::PathBuf,
    aliases: Aliases,
    assign: Option<AssignDb>,
    delimiters: Delimiters,
}

impl Checker {
    /// Load aliases and users/assign.db as quill-lspawn would.
    pub fn load(control: &Control) -> Result<Checker> {
        let aliases = match std::fs::metadata(aliases_path(control)) {
            Ok(_) => Aliases::load(&aliases_path(control))?,
            Err(_) => Aliases::parse(b"")?,
        };
        let delimiters = Delimiters::load(&control.home)?;
        Ok(Checker { home: control.home.clone(), aliases, assign: AssignDb::open(&control.home)?, delimiters })
    }

    /// Judge a local part that quill-send would deliver locally (after virtualdomains
    /// rewriting, if any). The caller checks the length of the local part as the client sent
    /// it ([`MAX_LOCAL_PART`]).
    pub fn check(&self, local: &[u8]) -> Verdict {
        if local.is_empty() {
            return Verdict::Unknown;
        }
        match self.resolution(local) {
            Resolution::Alias { .. } => Verdict::Known,
            Resolution::Temporary(why) => Verdict::Unsure(why),
            // Without a dash quill-local always has a delivery (the dot file, .forward or the
            // default); with one it needs a dot file, even for an empty extension.
            Resolution::User(a) if a.dash.is_empty() => Verdict::Known,
            Resolution::User(a) | Resolution::AliasUser(a) => dot_file_exists(&a),
        }
    }

    /// Who controls `local`, as quill-lspawn would find it.
    pub fn resolution(&self, local: &[u8]) -> Resolution {
        resolve(&self.home, local, &self.aliases, self.assign.as_ref(), &self.delimiters)
    }
}

/// Whether quill-local would find a dot file for this extension (exact or a `-default`).
/// Names too long for the file system do not exist. A home quill-smtpd (quilld) may not
/// search gives [`Verdict::Unseen`]: only a sure "no" may refuse mail, and only a sure "yes"
/// may accept it.
fn dot_file_exists(a: &Assignment) -> Verdict {
    if !safe_ext(&a.ext) {
        return Verdict::Unknown;
    }
    for (name, _) in candidates(&a.dash, &a.ext) {
        let path = a.home.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&name));
        match std::fs::symlink_metadata(&path) {
            Ok(_) => return Verdict::Known,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENAMETOOLONG) | Some(libc::ENOTDIR)) => continue,
            Err(e) => {
                return Verdict::Unseen(format!(
                "unable to stat {}: {e}; make {} searchable by quill-smtpd (chmod 711) to check extension addresses",
                crate::base::log::safe(path.as_os_str().as_encoded_bytes()),
                crate::base::log::safe(a.home.as_os_str().as_encoded_bytes())
            ))
            }
        }
    }
    Verdict::Unknown
}
