//! Delivery into a Maildir: a new file in `tmp/` under a unique name, written in large
//! writes and fsynced, then linked into `new/`, the `tmp/` name removed, and `new/` fsynced.
//! Only then is the delivery done (DESIGN §3 invariant 4).
#![forbid(unsafe_code)]

use crate::fail::{errno_outcome, is_disk_full, Error, Outcome, Result};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Size of one write: big enough that a typical message goes out in one call.
const CHUNK: usize = 256 * 1024;

/// How many names to try when one is taken (two deliveries in the same microsecond).
const NAME_TRIES: u32 = 10;

/// The host part of a unique name: the host name with `/` and `:` written as `\057` and
/// `\072` (the Maildir convention, since both would break the name).
pub fn host_part() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    host.replace('/', "\\057").replace(':', "\\072")
}

/// `SECONDS.MmicrosPpid.HOST`, with `Q<try>` after the pid when an earlier name was taken.
pub fn unique_name(host: &str, attempt: u32) -> String {
    let (secs, micros) = crate::date::now_micros();
    let pid = std::process::id();
    if attempt == 0 {
        format!("{secs}.M{micros}P{pid}.{host}")
    } else {
        format!("{secs}.M{micros}P{pid}Q{attempt}.{host}")
    }
}

/// Make a Maildir (and missing parents) with `tmp/`, `new/` and `cur/`, mode 0700, and fsync
/// what was created so that the new directories survive a crash with the mail in them.
pub fn create(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    // tmp/ last: a quill-local that finds tmp/ may rely on new/ being there too (two
    // deliveries can create the same Maildir at once).
    for sub in ["new", "cur", "tmp"] {
        match DirBuilder::new().mode(0o700).create(dir.join(sub)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    File::open(dir)?.sync_all()?;
    if let Some(parent) = dir.parent() {
        let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// What went wrong, for the report. A full disk or quota is temporary with #4.3.0; so is
/// every failure once the file is open (`written`): a write that fails today may work after
/// the user makes room. Failures to open are sorted by errno (a path through a plain file is
/// permanent).
fn failure(dir: &Path, what: &str, err: &io::Error, written: bool) -> Error {
    let shown = dir.display();
    if is_disk_full(err) {
        return Error::temporary(format!("Unable to {what} maildir {shown}: {err}. (#4.3.0)"));
    }
    let outcome = if written { Outcome::Temporary } else { errno_outcome(err) };
    let code = if outcome == Outcome::Permanent { "5.2.0" } else { "4.2.0" };
    Error { outcome, code: 0, message: format!("Unable to {what} maildir {shown}: {err}. (#{code})") }
}

/// Deliver `prefix` followed by everything `body` yields into the Maildir `dir`. With
/// `create_missing`, a Maildir that does not exist yet is made first.
pub fn deliver(dir: &Path, prefix: &[u8], body: &mut dyn Read, create_missing: bool) -> Result<()> {
    let host = host_part();
    let (mut file, name, tmp) = open_unique(dir, &host, create_missing)?;
    if let Err(err) = write_all(&mut file, prefix, body).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = std::fs::remove_file(&tmp);
        return Err(failure(dir, "write", &err, true));
    }
    drop(file);
    let new = dir.join("new").join(&name);
    if let Err(err) = std::fs::hard_link(&tmp, &new) {
        let _ = std::fs::remove_file(&tmp);
        return Err(failure(dir, "link into", &err, true));
    }
    // A tmp/ name that survives a crash is debris Maildir readers clean up; new/ is what counts.
    let _ = std::fs::remove_file(&tmp);
    File::open(dir.join("new")).and_then(|d| d.sync_all()).map_err(|err| failure(dir, "sync", &err, true))?;
    Ok(())
}

/// Create `tmp/NAME` exclusively; returns the open file, the name and its path.
fn open_unique(dir: &Path, host: &str, create_missing: bool) -> Result<(File, String, PathBuf)> {
    let mut created = false;
    let mut attempt = 0;
    loop {
        let name = unique_name(host, attempt);
        let tmp = dir.join("tmp").join(&name);
        match OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_CLOEXEC).open(&tmp) {
            Ok(file) => return Ok((file, name, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt + 1 < NAME_TRIES => attempt += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create_missing && !created => {
                create(dir).map_err(|err| failure(dir, "create", &err, false))?;
                created = true;
            }
            Err(e) => return Err(failure(dir, "open a file in", &e, false)),
        }
    }
}

/// Write the prefix and the body in chunks of up to [`CHUNK`] bytes, the prefix sharing the
/// first chunk (so a small message costs one write, from a buffer no bigger than it).
fn write_all(file: &mut File, prefix: &[u8], body: &mut dyn Read) -> io::Result<()> {
    let mut buffer = prefix.to_vec();
    loop {
        let n = body.take(CHUNK as u64).read_to_end(&mut buffer)?;
        if !buffer.is_empty() {
            file.write_all(&buffer)?;
            buffer.clear();
        }
        if n < CHUNK {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let a = unique_name("h\\072x", 0);
        assert!(a.contains(".M") && a.contains(&format!("P{}.h", std::process::id())));
        assert!(unique_name("h", 3).contains("Q3.h"));
        assert!(!host_part().contains('/') && !host_part().contains(':'));
    }
}
