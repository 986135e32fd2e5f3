//! Who controls a file that can name a program: a dot file, `.forward`, an `:include:` list,
//! the aliases file. Whoever can change such a file can make the delivering user run code,
//! so its lines are honoured only when nobody but root and that user can change it
//! (sendmail's rule for include files, applied to every such file). The question is asked of
//! the opened descriptor (fstat), and of a symbolic link on the way to it, never by path
//! alone: a path checked and then opened can be swapped in between.
#![forbid(unsafe_code)]

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// What decides whether a file may be trusted, as found on the opened descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// The file's owner.
    pub owner: u32,
    /// Its mode bits.
    pub mode: u32,
    /// The owner of the symbolic link the path named, when it named one.
    pub link_owner: Option<u32>,
}

/// An opened instructions file.
#[derive(Debug)]
pub struct Opened {
    /// The file, open for reading.
    pub file: File,
    /// Its fstat.
    pub meta: Metadata,
    /// Who controls it.
    pub ownership: Ownership,
}

/// Open `path` for reading and fstat it. When the last component is a symbolic link, its
/// owner is remembered too: a link someone else made may point at any file of ours.
/// `Ok(None)` when there is no such file.
pub fn open(path: &Path) -> io::Result<Option<Opened>> {
    let absent = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let (file, link_owner) =
        match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
            Ok(file) => (file, None),
            Err(e) if absent(&e) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                let link = std::fs::symlink_metadata(path)?;
                match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
                    Ok(file) => (file, Some(link.uid())),
                    Err(e) if absent(&e) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let ownership = Ownership { owner: meta.uid(), mode: meta.mode(), link_owner };
    Ok(Some(Opened { file, meta, ownership }))
}

/// Why a file may not name programs or files for `uid`, or None when it may: it (and the
/// link that led to it) belongs to root or to `uid` (or to one of `also`), and neither its
/// group nor the world may write to it.
pub fn distrust(file: &Ownership, uid: u32, also: &[u32]) -> Option<String> {
    let ok = |owner: u32| owner == 0 || owner == uid || also.contains(&owner);
    if !ok(file.owner) {
        return Some(format!("it belongs to uid {}, not to root or uid {uid}", file.owner));
    }
    if let Some(owner) = file.link_owner.filter(|&o| !ok(o)) {
        return Some(format!("the symbolic link to it belongs to uid {owner}, not to root or uid {uid}"));
    }
    if file.mode & 0o022 != 0 {
        return Some(format!("its mode {:o} lets others write to it", file.mode & 0o7777));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn owner_mode_and_links() {
        let dir = std::env::temp_dir().join(format!("quill-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("list");
        std::fs::write(&file, b"a\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let me = crate::base::sys::uids().1;
        let opened = open(&file).unwrap().unwrap();
        assert_eq!(distrust(&opened.ownership, me, &[]), None);
        assert!(distrust(&opened.ownership, me.wrapping_add(1), &[]).is_some() || me == 0);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(distrust(&open(&file).unwrap().unwrap().ownership, me, &[]).unwrap().contains("664"));
        std::os::unix::fs::symlink(&file, dir.join("link")).unwrap();
        let linked = open(&dir.join("link")).unwrap().unwrap();
        assert_eq!(linked.ownership.link_owner, Some(me));
        assert!(open(&dir.join("missing")).unwrap().is_none());
        assert_eq!(open(&dir.join("x".repeat(300))).unwrap_err().raw_os_error(), Some(libc::ENAMETOOLONG));
        assert!(open(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
