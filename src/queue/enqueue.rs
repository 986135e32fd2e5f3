//! quill-queue's work: one message on fd 0 and its envelope on fd 1 become one durable file in
//! `queue/todo/` (doc/quill-queue.8, doc/queue-format.5, INTERNALS.md "A message file").
//!
//! The order of events is chosen so that a caller that dies, stalls or lies leaves nothing
//! behind: the message is read into memory (or, past [`MEMORY_LIMIT`], into an unnamed file
//! that vanishes with the process), then the envelope; only then is `tmp/NAME` created,
//! written with one vectored write, fsynced, renamed to `todo/ID`, and `todo/` fsynced. The
//! named tmp file therefore exists only while local I/O runs, and every failure path after
//! its creation unlinks it.
#![forbid(unsafe_code)]

use crate::base::fail::{is_disk_full, qq, Error, Result};
use crate::mail::envelope::Envelope;
use crate::mail::queuefile::{Header, Layout};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, Write};
use std::os::fd::RawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A message smaller than this is held in memory until its envelope arrives; a larger one
/// spills into an unnamed file in `queue/tmp/`.
pub const MEMORY_LIMIT: usize = 1 << 20;

/// quill-queue waits this long for its caller (exit 52 after that), so that a stuck caller
/// cannot hold resources forever. The alarm is disarmed once the envelope is in: from then on
/// only local I/O remains, and an exit 52 after the rename would make the caller retry a
/// message that is already queued. Must stay below the age (36 hours) at which quill-send
/// removes debris from `queue/tmp/`.
pub const DEATH_SECONDS: u32 = 24 * 3600;

/// Who called quill-queue, judged by the caller's real uid; named in the Received line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invoker {
    /// The uid of `quilld`: quill-smtpd, mail from the network.
    Network,
    /// The uid of `quills`: quill-send injecting a bounce.
    Bounce,
    /// The uid of `alias`: a delivery for a system address forwarding mail.
    Alias,
    /// Anyone else.
    Uid(u32),
}

impl Invoker {
    /// Classify by the login name that owns `uid` (None when the uid has no passwd entry).
    pub fn from_login(uid: u32, login: Option<&str>) -> Invoker {
        match login {
            Some("quilld") => Invoker::Network,
            Some("quills") => Invoker::Bounce,
            Some("alias") => Invoker::Alias,
            _ => Invoker::Uid(uid),
        }
    }

    /// Look the uid up in the passwd database. One lookup by uid answers for all three names
    /// (instead of three lookups by name); a user that does not exist simply never matches.
    pub fn lookup(uid: u32) -> Invoker {
        if uid == 0 {
            return Invoker::Uid(0);
        }
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten();
        Invoker::from_login(uid, user.as_ref().map(|u| u.name.as_str()))
    }

    fn words(&self) -> String {
        match self {
            Invoker::Network => "from network".to_string(),
            Invoker::Bounce => "for bounce".to_string(),
            Invoker::Alias => "by alias".to_string(),
            Invoker::Uid(uid) => format!("by uid {uid}"),
        }
    }
}

/// `Received: (quill PID invoked WHO); DATE` and a newline: the line quill-queue puts in
/// front of every message.
pub fn received_line(pid: u32, invoker: &Invoker, time: u64) -> Vec<u8> {
    format!("Received: (quill {pid} invoked {}); {}\n", invoker.words(), crate::base::date::rfc5322(time)).into_bytes()
}

/// A raw descriptor as a reader (fd 0 and fd 1 of the qmail-queue protocol). It does not
/// own the descriptor.
pub struct Fd(pub RawFd);

impl Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(self.0, buf).map_err(io::Error::from)
    }
}

/// A message as read from the caller: the last (or only) part in memory, anything before it
/// in a spill file.
pub struct Message {
    memory: Vec<u8>,
    filled: usize,
    spill: Option<File>,
}

impl Message {
    /// The whole message when it is in memory (None when it spilled).
    pub fn in_memory(&self) -> Option<&[u8]> {
        self.spill.is_none().then(|| &self.memory[..self.filled])
    }

    /// True when the message outgrew memory and went to a spill file.
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }
}

/// A full disk, a quota and any other write failure share code 53; the words tell them apart.
pub fn write_error(what: &str, err: &io::Error) -> Error {
    Error::io_code(qq::WRITE_ERROR, what, err)
}

fn create_error(code: u8, what: &str, err: &io::Error) -> Error {
    if is_disk_full(err) {
        Error::io_code(qq::WRITE_ERROR, what, err)
    } else {
        Error::io_code(code, what, err)
    }
}

/// An unnamed file in `dir` (O_TMPFILE); where the file system cannot do that, a named one
/// unlinked at once. Either way nothing is left if the process dies.
fn open_spill(dir: &Path) -> Result<File> {
    let unnamed =
        OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC).open(dir);
    match unnamed {
        Ok(file) => return Ok(file),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)) => {}
        Err(e) => return Err(create_error(qq::TMP_TROUBLE, "create spill file in queue/tmp", &e)),
    }
    let (secs, nanos) = stamp();
    let name = dir.join(format!("{}.{secs}.{nanos}.spill", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&name)
        .map_err(|e| create_error(qq::TMP_TROUBLE, "create spill file in queue/tmp", &e))?;
    let _ = std::fs::remove_file(&name);
    Ok(file)
}

fn stamp() -> (u64, u32) {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

/// Read the whole message from `input`. Up to [`MEMORY_LIMIT`] bytes stay in memory; beyond
/// that, full megabytes go to a spill file created in `spill_dir`. Reads go straight into the
/// buffer (no intermediate copy), as large as the buffer allows.
pub fn read_message(input: &mut impl Read, spill_dir: &Path) -> Result<Message> {
    let mut memory = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let mut spill: Option<File> = None;
    loop {
        if filled == memory.len() {
            if memory.len() < MEMORY_LIMIT {
                let grown = (memory.len() * 2).min(MEMORY_LIMIT);
                memory.resize(grown, 0);
            } else {
                if spill.is_none() {
                    spill = Some(open_spill(spill_dir)?);
                }
                if let Some(file) = spill.as_mut() {
                    file.write_all(&memory).map_err(|e| write_error("write spill file", &e))?;
                }
                filled = 0;
            }
        }
        match input.read(&mut memory[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io_code(qq::READ_ERROR, "read message", &e)),
        }
    }
    Ok(Message { memory, filled, spill })
}

/// A tmp file that is unlinked when dropped unless it was committed.
struct Tmp {
    name: PathBuf,
    armed: bool,
}

impl Drop for Tmp {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.name);
        }
    }
}

/// Write every slice completely, with as few write calls as the kernel allows.
fn write_all_vectored(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A message file written and fsynced in `tmp/`, not yet visible: the first half of a commit,
/// shared by quill-queue ([`commit`]) and quill-queued (which syncs `todo/` for a group).
pub struct Written {
    tmp: Tmp,
    /// The queue id: the file's inode number.
    pub id: u64,
}

/// The tmp name of a message: `tmp/PID.SECS.NANOS`, and `.N` after it where one process
/// writes several messages at once (quill-queued's counter), so that no two collide.
pub fn tmp_name(layout: &Layout, pid: u32, serial: Option<u64>) -> PathBuf {
    let (secs, nanos) = stamp();
    match serial {
        None => layout.tmp().join(format!("{pid}.{secs}.{nanos}")),
        Some(n) => layout.tmp().join(format!("{pid}.{secs}.{nanos}.{n}")),
    }
}

/// Create `name` in `tmp/` exclusively, write header, Received line and message, fsync. On
/// failure nothing is left.
pub fn write_file(name: PathBuf, header: &Header, received: &[u8], mut message: Message) -> Result<Written> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&name)
        .map_err(|e| create_error(qq::TMP_TROUBLE, "create file in queue/tmp", &e))?;
    let tmp = Tmp { name, armed: true };

    let id = file.metadata().map_err(|e| Error::io_code(qq::TMP_TROUBLE, "stat file in queue/tmp", &e))?.ino();
    let encoded = header.encode();
    let tail = &message.memory[..message.filled];
    match message.spill.as_mut() {
        None => {
            let mut slices = [IoSlice::new(&encoded), IoSlice::new(received), IoSlice::new(tail)];
            write_all_vectored(&mut file, &mut slices).map_err(|e| write_error("write queue file", &e))?;
        }
        Some(spill) => {
            let mut slices = [IoSlice::new(&encoded), IoSlice::new(received)];
            write_all_vectored(&mut file, &mut slices).map_err(|e| write_error("write queue file", &e))?;
            // std::io::copy between two files uses copy_file_range: no trip through memory.
            spill.rewind().map_err(|e| write_error("rewind spill file", &e))?;
            io::copy(spill, &mut file).map_err(|e| write_error("copy spill file", &e))?;
            file.write_all(tail).map_err(|e| write_error("write queue file", &e))?;
        }
    }
    file.sync_all().map_err(|e| write_error("fsync queue file", &e))?;
    Ok(Written { tmp, id })
}

/// Rename the written file to `todo/ID`; returns that path. Visible to quill-send from here
/// on, but not durable until `todo/` is fsynced ([`sync_todo`]).
pub fn publish(layout: &Layout, mut written: Written) -> Result<PathBuf> {
    let target = layout.todo().join(written.id.to_string());
    std::fs::rename(&written.tmp.name, &target)
        .map_err(|e| create_error(qq::INCOMING_TROUBLE, "move file to queue/todo", &e))?;
    written.tmp.armed = false;
    Ok(target)
}

/// fsync `todo/`: every rename into it done before this call is durable when it returns Ok.
pub fn sync_todo(layout: &Layout) -> io::Result<()> {
    File::open(layout.todo()).and_then(|dir| dir.sync_all())
}

/// After a failed [`sync_todo`]: the message is not durable, so not acknowledged; take it back.
/// If quill-send already took it, the caller's retry may duplicate it; that is the allowed
/// direction of error. Returns the error to report (53).
pub fn take_back(target: &Path, err: &io::Error) -> Error {
    let _ = std::fs::remove_file(target);
    write_error("fsync queue/todo", err)
}

/// Make the message durable in the queue whose directory is `layout` (normally "." after
/// chdir): create `tmp/PID.SECS.NANOS`, write header, Received line and message, fsync,
/// rename to `todo/ID`, fsync `todo/`, pull the trigger. Returns the queue id. Exactly two
/// fsyncs; on failure nothing is left in `tmp/` or `todo/`.
pub fn commit(layout: &Layout, header: &Header, received: &[u8], message: Message) -> Result<u64> {
    let name = tmp_name(layout, header.pid, None);
    let written = write_file(name, header, received, message)?;
    let id = written.id;
    let target = publish(layout, written)?;
    if let Err(e) = sync_todo(layout) {
        return Err(take_back(&target, &e));
    }
    crate::mail::queuefile::pull_trigger(layout);
    Ok(id)
}

/// True when the caller asked for a DKIM signature.
pub fn sign_requested() -> bool {
    std::env::var_os(crate::mail::dkim::SIGN_VARIABLE).is_some_and(|v| v == "1")
}

/// The `DKIM-Signature:` field for `message` with the key of its From: domain from `control`
/// (empty when there is none; logged, except where `control/dkim` does not exist). A message
/// that spilled past [`MEMORY_LIMIT`] is not signed.
pub fn dkim_field(control: &Path, message: &Message, time: u64) -> Vec<u8> {
    use crate::mail::dkim;
    let signed = match message.in_memory() {
        Some(bytes) => dkim::sign_message(control, bytes, time),
        None if control.join("dkim").is_dir() => dkim::Signed::Trouble("larger than 1 MB".to_string()),
        None => dkim::Signed::Off,
    };
    let (field, line) = dkim::outcome(signed);
    if let Some(line) = line {
        crate::base::log::line(&line);
    }
    field
}

/// How a run of quill-queue ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Done {
    /// The message is queued under this id.
    Queued(u64),
    /// The caller closed the envelope before its first byte: the qmail-queue way to abandon a
    /// message (quill-smtpd refusing an oversized or smuggled message it has been streaming).
    /// Nothing is queued, the exit code is 54 as qmail-queue's, and nothing is logged: the
    /// caller has already said why.
    Abandoned,
}

/// A reader that counts what it hands out, to tell an empty envelope from a broken one.
struct Counted<'a, R> {
    inner: &'a mut R,
    count: usize,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n;
        Ok(n)
    }
}

/// Read the envelope; None when the caller sent not one byte of it (an abandoned message).
pub fn read_envelope(input: &mut impl Read) -> Result<Option<Envelope>> {
    let mut counted = Counted { inner: input, count: 0 };
    match Envelope::read_from(&mut counted) {
        Ok(envelope) => Ok(Some(envelope)),
        Err(e) if counted.count == 0 && e.code == qq::READ_ERROR => Ok(None),
        Err(e) => Err(e),
    }
}

/// Root submitting into a queue that belongs to someone else (a private instance run by an
/// ordinary user) becomes that user for the rest of the run, so that the message file is the
/// owner's and the stages can read it. Above all, root must not create and rename files by
/// path in a tree whose owner can swap `tmp/` or `todo/` for a link to a directory of root's.
/// The owner is that of the working directory, the queue already entered. A setuid
/// quill-queue is never root, so this never applies to a real install.
pub fn become_queue_owner() -> Result<()> {
    use crate::base::privilege::{drop_to, Credentials};
    if crate::base::sys::uids().1 != 0 {
        return Ok(());
    }
    let queue = std::fs::metadata(".").map_err(|e| Error::io_code(qq::QUEUE_TROUBLE, "stat queue", &e))?;
    if queue.uid() == 0 {
        return Ok(());
    }
    drop_to(&Credentials::only(queue.uid(), queue.gid()))
        .map_err(|e| Error::io_code(qq::QUEUE_TROUBLE, "become the owner of queue", &e))
}

/// The whole of quill-queue: set up, read, commit.
pub fn run() -> Result<Done> {
    let (secs, nanos) = stamp();
    crate::base::sys::umask(0o027);
    // A caller may set a file size limit; the write must then fail (and be cleaned up), not
    // kill the process with SIGXFSZ and leave a tmp file behind.
    crate::base::sys::ignore_signal(libc::SIGXFSZ);
    // The watchdog is SIGALRM, not a thread: two system calls instead of about twenty.
    crate::base::sys::exit_after(DEATH_SECONDS, qq::TIMEOUT)
        .map_err(|e| Error::io_code(qq::BUG, "set the watchdog alarm", &e))?;
    let (real_uid, _) = crate::base::sys::uids();
    let pid = std::process::id();

    // control::home() ignores QUILL_HOME in a setuid program. After these two chdirs every
    // path is relative to the queue and fixed by this program, never by the caller.
    let home = crate::mail::control::home();
    std::env::set_current_dir(&home)
        .map_err(|e| Error::io_code(qq::HOME_TROUBLE, format!("switch to {}", home.display()), &e))?;
    std::env::set_current_dir("queue").map_err(|e| Error::io_code(qq::QUEUE_TROUBLE, "switch to queue", &e))?;
    let layout = Layout { queue: PathBuf::from(".") };
    become_queue_owner()?;

    let received = received_line(pid, &Invoker::lookup(real_uid), secs);
    let message = read_message(&mut Fd(0), &layout.tmp())?;
    let Some(envelope) = read_envelope(&mut Fd(1))? else {
        return Ok(Done::Abandoned);
    };
    crate::base::sys::cancel_alarm();
    let mut received = received;
    if sign_requested() {
        received.extend(dkim_field(Path::new("../control"), &message, secs));
    }
    let header = Header { uid: real_uid, pid, time: secs, nanos, envelope, dsn: Default::default() };
    commit(&layout, &header, &received, message).map(Done::Queued)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn received_lines() {
        let line = received_line(77, &Invoker::Uid(1000), 0);
        assert_eq!(line, b"Received: (quill 77 invoked by uid 1000); Thu, 1 Jan 1970 00:00:00 +0000\n".to_vec());
        assert_eq!(Invoker::from_login(5, Some("quilld")), Invoker::Network);
        assert_eq!(Invoker::from_login(5, Some("quills")), Invoker::Bounce);
        assert_eq!(Invoker::from_login(5, Some("alias")), Invoker::Alias);
        assert_eq!(Invoker::from_login(5, Some("quillq")), Invoker::Uid(5));
        assert_eq!(Invoker::from_login(5, None), Invoker::Uid(5));
    }

    /// A reader that hands out its data in small pieces, as a pipe does.
    struct Trickle(Vec<u8>, usize);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7777).min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn an_empty_envelope_is_an_abandoned_message() {
        assert_eq!(read_envelope(&mut Trickle(Vec::new(), 0)).unwrap(), None);
        let half = read_envelope(&mut Trickle(b"Fa@b".to_vec(), 0)).unwrap_err();
        assert_eq!(half.code, qq::READ_ERROR);
        let whole = read_envelope(&mut Trickle(b"Fa@b\0Tc@d\0\0".to_vec(), 0)).unwrap().unwrap();
        assert_eq!(whole.recipients, vec![b"c@d".to_vec()]);
    }

    #[test]
    fn reading_in_memory_and_spilled() {
        let dir = std::env::temp_dir().join(format!("quill-enqueue-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for size in [0, 1, 65536, MEMORY_LIMIT, MEMORY_LIMIT + 1, 3 * MEMORY_LIMIT + 12345] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut message = read_message(&mut Trickle(data.clone(), 0), &dir).unwrap();
            assert_eq!(message.spilled(), size >= MEMORY_LIMIT, "size {size}");
            let mut all = Vec::new();
            if let Some(spill) = message.spill.as_mut() {
                spill.rewind().unwrap();
                spill.read_to_end(&mut all).unwrap();
            }
            all.extend_from_slice(&message.memory[..message.filled]);
            assert!(all == data, "size {size}");
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
