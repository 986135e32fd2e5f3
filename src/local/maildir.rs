//! Delivery into a Maildir: a new file in `tmp/` under a unique name, written in large
//! writes and fsynced, then linked into `new/`, the `tmp/` name removed, and `new/` fsynced.
//! Only then is the delivery done (DESIGN §3 invariant 4).
//!
//! Exactly once ([`Exact`], audit item 14): when quill-lspawn names the message, the file in
//! `new/` gets a name made from the message's identity and the recipient, the same on every
//! attempt. It is written as an unnamed file in `tmp/` (O_TMPFILE: a killed attempt leaves
//! nothing, never a partial file) and linked into `new/` only when complete and fsynced; the
//! link fails with EEXIST when an earlier attempt got there first, and that is success. A
//! retry also looks in `cur/`, where a mail reader moves the file (adding `:2,FLAGS`).
#![forbid(unsafe_code)]

use crate::base::fail::Status;
use crate::local::Result;
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
    let (secs, micros) = crate::base::date::now_micros();
    let pid = std::process::id();
    if attempt == 0 {
        format!("{secs}.M{micros}P{pid}.{host}")
    } else {
        format!("{secs}.M{micros}P{pid}Q{attempt}.{host}")
    }
}

/// The longest host part put into an exact name: the whole name stays far below NAME_MAX
/// (255) with room for the `:2,FLAGS` a reader appends.
const HOST_MAX: usize = 64;

/// A delivery that must happen once: the same name on every attempt, a different name for
/// any other message, recipient, or later message that reuses the queue id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exact {
    /// `SECONDS.QidPpidNnanosRhash.`: everything in the name before the host, with the dot.
    /// A file in `new/` or `cur/` whose name starts with it is this delivery's.
    unique: String,
    /// An earlier attempt may have delivered: look in `new/` and `cur/` before writing.
    retry: bool,
}

impl Exact {
    /// The name for delivering `message` to `recipient`; `retry` when quill-send says an
    /// earlier attempt may have delivered it.
    pub fn new(message: &crate::mail::queuefile::Identity, recipient: &[u8], retry: bool) -> Exact {
        let unique = format!(
            "{}.Q{}P{}N{}R{:032x}.",
            message.time,
            message.id,
            message.pid,
            message.nanos,
            fnv1a_128(recipient)
        );
        Exact { unique, retry }
    }

    /// The whole file name in `new/`.
    pub fn name(&self, host: &str) -> String {
        let mut end = host.len().min(HOST_MAX);
        while !host.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{}", self.unique, &host[..end])
    }

    /// True when `name` (in `new/` or `cur/`, with or without `:2,FLAGS`) is this delivery's.
    pub fn owns(&self, name: &[u8]) -> bool {
        name.starts_with(self.unique.as_bytes())
    }
}

/// FNV-1a, 128 bits: the recipient in a fixed length of hex digits that need no escaping
/// (an address may hold `/`, `:` and more, and be 1003 bytes long). Stable across versions
/// and machines, which a retry needs; not a defence against anyone, none is needed: only
/// the message's own recipients are hashed, and they share the rest of the name.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    bytes.iter().fold(OFFSET, |hash, &b| (hash ^ b as u128).wrapping_mul(PRIME))
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

/// What went wrong, for the report (see [`crate::local::file_failure`]).
fn failure(dir: &Path, what: &str, err: &io::Error, written: bool) -> Status {
    crate::local::file_failure("maildir", dir, what, err, written)
}

/// Deliver `prefix` followed by everything `body` yields into the Maildir `dir`. With
/// `create_missing`, a Maildir that does not exist yet is made first. With `exact`, the
/// delivery happens once however often it is attempted (see the module's comment); without,
/// every call delivers a copy.
pub fn deliver(
    dir: &Path,
    prefix: &[u8],
    body: &mut dyn Read,
    create_missing: bool,
    exact: Option<&Exact>,
) -> Result<()> {
    let host = host_part();
    let Some(exact) = exact else {
        return deliver_named(dir, prefix, body, create_missing, None, &host);
    };
    let name = exact.name(&host);
    if exact.retry && delivered_before(dir, exact, &name)? {
        return sync_dir(dir, "new");
    }
    let mut file = match open_unnamed(dir, create_missing)? {
        Some(file) => file,
        None => return deliver_named(dir, prefix, body, create_missing, Some(&name), &host),
    };
    if let Err(err) = write_all(&mut file, prefix, body).and_then(|()| file.sync_all()) {
        return Err(failure(dir, "write", &err, true));
    }
    let new = dir.join("new").join(&name);
    let proc_path = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)));
    match nix::unistd::linkat(None, proc_path.as_path(), None, new.as_path(), nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW) {
        // EEXIST: an earlier (or a concurrent) attempt delivered this very message; its file
        // was complete and fsynced before it was linked.
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        // Without /proc the unnamed file cannot be linked: copy it into a named one.
        Err(nix::errno::Errno::ENOENT) if !Path::new("/proc/self/fd").is_dir() => {
            io::Seek::rewind(&mut file).map_err(|err| failure(dir, "read back", &err, true))?;
            return deliver_named(dir, b"", &mut file, create_missing, Some(&name), &host);
        }
        Err(err) => return Err(failure(dir, "link into", &io::Error::from(err), true)),
    }
    drop(file);
    sync_dir(dir, "new")
}

/// On a retry: is this delivery's file in `new/` (one stat) or `cur/` (one readdir)? A
/// reader moves `new/NAME` to `cur/NAME:2,FLAGS` in one rename, so looking at `new/` first
/// and `cur/` second cannot miss a file that is moved in between. Unsure is temporary.
fn delivered_before(dir: &Path, exact: &Exact, name: &str) -> Result<bool> {
    match std::fs::symlink_metadata(dir.join("new").join(name)) {
        Ok(_) => return Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(failure(dir, "look into", &err, true)),
    }
    let entries = match std::fs::read_dir(dir.join("cur")) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(failure(dir, "read", &err, true)),
    };
    for entry in entries {
        let entry = entry.map_err(|err| failure(dir, "read", &err, true))?;
        if exact.owns(entry.file_name().as_encoded_bytes()) {
            // The reader's rename may not be durable yet.
            sync_dir(dir, "cur")?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// fsync `dir/sub`.
fn sync_dir(dir: &Path, sub: &str) -> Result<()> {
    File::open(dir.join(sub)).and_then(|d| d.sync_all()).map_err(|err| failure(dir, "sync", &err, true))
}

/// An unnamed file in `tmp/` (O_TMPFILE), made with the Maildir if `create_missing`; None
/// where the file system cannot make one.
fn open_unnamed(dir: &Path, create_missing: bool) -> Result<Option<File>> {
    let tmp = dir.join("tmp");
    let open = || {
        // Readable too: without /proc it is copied into a named file.
        OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC).open(&tmp)
    };
    let opened = match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound && create_missing => {
            create(dir).map_err(|err| failure(dir, "create", &err, false))?;
            open()
        }
        other => other,
    };
    match opened {
        Ok(file) => Ok(Some(file)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)) => {
            Ok(None)
        }
        Err(e) => Err(failure(dir, "open a file in", &e, false)),
    }
}

/// The classic delivery: a named file in `tmp/`, linked into `new/` as `final_name` (a
/// fresh unique name when None; EEXIST then means an earlier attempt delivered it).
fn deliver_named(
    dir: &Path,
    prefix: &[u8],
    body: &mut dyn Read,
    create_missing: bool,
    final_name: Option<&str>,
    host: &str,
) -> Result<()> {
    let (mut file, name, tmp) = open_unique(dir, host, create_missing)?;
    if let Err(err) = write_all(&mut file, prefix, body).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = std::fs::remove_file(&tmp);
        return Err(failure(dir, "write", &err, true));
    }
    drop(file);
    let new = dir.join("new").join(final_name.unwrap_or(&name));
    match std::fs::hard_link(&tmp, &new) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && final_name.is_some() => {}
        Err(err) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(failure(dir, "link into", &err, true));
        }
    }
    // A tmp/ name that survives a crash is debris Maildir readers clean up; new/ is what
    // counts. Its name is this process's own, so no other attempt ever links it.
    let _ = std::fs::remove_file(&tmp);
    sync_dir(dir, "new")
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::mail::queuefile::Identity;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("quill-maildir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut list: Vec<String> = std::fs::read_dir(dir)
            .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        list.sort();
        list
    }

    const MESSAGE: Identity = Identity { id: 1234, time: 1_795_615_141, nanos: 987_654_321, pid: 4711 };

    #[test]
    fn exact_names() {
        let a = Exact::new(&MESSAGE, b"ann@example.org", false);
        let name = a.name("host\\072x");
        assert_eq!(name, format!("1795615141.Q1234P4711N987654321R{:032x}.host\\072x", fnv1a_128(b"ann@example.org")));
        // The same on a retry; different for another recipient, a later message with the
        // same inode (another time, nanosecond or pid), or another queue id.
        assert_eq!(Exact::new(&MESSAGE, b"ann@example.org", true).name("h"), a.name("h"));
        let others = [
            Exact::new(&MESSAGE, b"bob@example.org", false),
            Exact::new(&Identity { nanos: 987_654_322, ..MESSAGE }, b"ann@example.org", false),
            Exact::new(&Identity { pid: 4712, ..MESSAGE }, b"ann@example.org", false),
            Exact::new(&Identity { time: 1_795_615_142, ..MESSAGE }, b"ann@example.org", false),
            Exact::new(&Identity { id: 1235, ..MESSAGE }, b"ann@example.org", false),
        ];
        for other in &others {
            assert_ne!(other.name("h"), a.name("h"));
            assert!(!other.owns(a.name("h").as_bytes()) && !a.owns(other.name("h").as_bytes()));
        }
        assert!(a.owns(format!("{}:2,S", a.name("h")).as_bytes()));
        assert!(a.owns(a.name("otherhost").as_bytes()), "a renamed host still finds its file");
        // The longest address and a silly host still give a short name without / or :.
        let long = Exact::new(
            &Identity { id: u64::MAX, time: u64::MAX, nanos: 999_999_999, pid: u32::MAX },
            &[b'/'; 1003],
            false,
        );
        let name = long.name(&"\\057".repeat(100));
        assert!(name.len() + ":2,FRST".len() < 200, "{}", name.len());
        assert!(!name.contains('/') && !name.contains(':'));
    }

    #[test]
    fn exact_delivery_happens_once() {
        let root = scratch("once");
        let dir = root.join("Maildir");
        let exact = Exact::new(&MESSAGE, b"ann@example.org", false);
        deliver(&dir, b"Delivered-To: ann@example.org\n", &mut &b"hello\n"[..], true, Some(&exact)).unwrap();
        deliver(&dir, b"Delivered-To: ann@example.org\n", &mut &b"hello\n"[..], true, Some(&exact)).unwrap();
        let new = listing(&dir.join("new"));
        assert_eq!(new, vec![exact.name(&host_part())]);
        assert!(listing(&dir.join("tmp")).is_empty(), "an unnamed tmp file leaves nothing");
        let text = std::fs::read(dir.join("new").join(&new[0])).unwrap();
        assert_eq!(text, b"Delivered-To: ann@example.org\nhello\n");
        // Another recipient of the same message gets its own copy.
        let bob = Exact::new(&MESSAGE, b"bob@example.org", false);
        deliver(&dir, b"", &mut &b"hello\n"[..], true, Some(&bob)).unwrap();
        assert_eq!(listing(&dir.join("new")).len(), 2);
        // Without a name, every call is a copy (quill-local run by hand).
        deliver(&dir, b"", &mut &b"hello\n"[..], true, None).unwrap();
        assert_eq!(listing(&dir.join("new")).len(), 3);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn concurrent_attempts_give_one_copy() {
        // An orphaned quill-local still writing while quill-send's retry runs: the first
        // link wins, the others find it (EEXIST), and the file is whole.
        let root = scratch("concurrent");
        let dir = root.join("Maildir");
        create(&dir).unwrap();
        let body = vec![b'x'; 512 * 1024];
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (dir, body) = (dir.clone(), body.clone());
                std::thread::spawn(move || {
                    let exact = Exact::new(&MESSAGE, b"ann@example.org", i % 2 == 1);
                    deliver(&dir, b"", &mut &body[..], false, Some(&exact))
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let new = listing(&dir.join("new"));
        assert_eq!(new.len(), 1);
        assert_eq!(std::fs::read(dir.join("new").join(&new[0])).unwrap(), body);
        assert!(listing(&dir.join("tmp")).is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn retry_finds_the_file_a_reader_moved_to_cur() {
        let root = scratch("cur");
        let dir = root.join("Maildir");
        let first = Exact::new(&MESSAGE, b"ann@example.org", false);
        deliver(&dir, b"", &mut &b"hello\n"[..], true, Some(&first)).unwrap();
        let name = first.name(&host_part());
        std::fs::rename(dir.join("new").join(&name), dir.join("cur").join(format!("{name}:2,S"))).unwrap();
        let retry = Exact::new(&MESSAGE, b"ann@example.org", true);
        deliver(&dir, b"", &mut &b"hello\n"[..], true, Some(&retry)).unwrap();
        assert!(listing(&dir.join("new")).is_empty(), "no second copy");
        assert_eq!(listing(&dir.join("cur")), vec![format!("{name}:2,S")]);
        // Another message's file in cur/ is not ours.
        let later = Exact::new(&Identity { nanos: 1, ..MESSAGE }, b"ann@example.org", true);
        deliver(&dir, b"", &mut &b"later\n"[..], true, Some(&later)).unwrap();
        assert_eq!(listing(&dir.join("new")), vec![later.name(&host_part())]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn named_fallback_happens_once_and_never_links_debris() {
        let root = scratch("named");
        let dir = root.join("Maildir");
        create(&dir).unwrap();
        // A killed attempt's half-written file in tmp/: nobody links it.
        std::fs::write(dir.join("tmp").join("1.M2P3.host"), b"half").unwrap();
        let exact = Exact::new(&MESSAGE, b"ann@example.org", false);
        let name = exact.name("h");
        deliver_named(&dir, b"", &mut &b"whole\n"[..], false, Some(&name), "h").unwrap();
        deliver_named(&dir, b"", &mut &b"whole\n"[..], false, Some(&name), "h").unwrap();
        assert_eq!(listing(&dir.join("new")), vec![name.clone()]);
        assert_eq!(std::fs::read(dir.join("new").join(&name)).unwrap(), b"whole\n");
        assert_eq!(listing(&dir.join("tmp")), vec!["1.M2P3.host".to_string()]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn names() {
        let a = unique_name("h\\072x", 0);
        assert!(a.contains(".M") && a.contains(&format!("P{}.h", std::process::id())));
        assert!(unique_name("h", 3).contains("Q3.h"));
        assert!(!host_part().contains('/') && !host_part().contains(':'));
    }
}
