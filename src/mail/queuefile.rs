//! The queue's layout and the format of a message file (doc/queue-format.5).
//!
//! One message is one file: a header of text0 records (who queued it, when, the envelope),
//! ended by an empty record, then the message bytes. It is born in `tmp/`, made durable there,
//! and renamed into `todo/` (the commit point, followed by an fsync of `todo/`). quill-send
//! picks it up and has quill-clean move it to `mess/` while it is delivered; its per-recipient
//! state lives beside it in `info/ID` only if a first attempt leaves work for later.
#![forbid(unsafe_code)]

use crate::base::fail::{Error, Result};
use crate::mail::envelope::Envelope;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Paths inside `HOME/queue`.
#[derive(Clone, Debug)]
pub struct Layout {
    /// `HOME/queue`.
    pub queue: PathBuf,
}

impl Layout {
    /// The layout under a Quill home.
    pub fn new(home: &Path) -> Layout {
        Layout { queue: home.join("queue") }
    }

    /// Files being written by quill-queue (owner quillq, mode 0700).
    pub fn tmp(&self) -> PathBuf {
        self.queue.join("tmp")
    }
    /// Committed messages not yet seen by quill-send (quillq, 0750).
    pub fn todo(&self) -> PathBuf {
        self.queue.join("todo")
    }
    /// Messages quill-send has picked up (quillq, 0750).
    pub fn mess(&self) -> PathBuf {
        self.queue.join("mess")
    }
    /// Delivery state kept by quill-send (quills, 0700).
    pub fn info(&self) -> PathBuf {
        self.queue.join("info")
    }
    /// Messages put on hold by the administrator (quillq, 0750).
    pub fn hold(&self) -> PathBuf {
        self.queue.join("hold")
    }
    /// The queue writer's socket (doc/quill-queued.8), where quill-smtpd hands it messages.
    pub fn writer_socket(&self) -> PathBuf {
        self.queue.join("writer").join("socket")
    }
    /// The wake-up FIFO quill-queue writes one byte to.
    pub fn trigger(&self) -> PathBuf {
        self.queue.join("lock").join("trigger")
    }
    /// The administrator's FIFO to quill-send (`quill queue hold|release|delete|bounce|flush`);
    /// quills 0600, so only root and quill-send can use it.
    pub fn control(&self) -> PathBuf {
        self.queue.join("lock").join("control")
    }
    /// The lock that keeps a second quill-send from starting.
    pub fn sendmutex(&self) -> PathBuf {
        self.queue.join("lock").join("sendmutex")
    }
}

/// A queue id is the decimal inode number of the message file: unique while the file exists.
pub fn valid_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 20 && id.iter().all(u8::is_ascii_digit)
}

/// The header of a message file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Real uid of the process that ran quill-queue.
    pub uid: u32,
    /// Process id of quill-queue (the `qp` of the logs).
    pub pid: u32,
    /// Unix time the message was queued.
    pub time: u64,
    /// The nanoseconds of that time (record `n`; 0 in files written before it existed). With
    /// the inode, `time` and `pid` it names this message and no later one that reuses the
    /// inode: Maildir deliveries are named by it, so that a retry finds its own file.
    pub nanos: u32,
    /// Sender and recipients.
    pub envelope: Envelope,
    /// The DSN parameters (RFC 3461; record `d`, absent when none were given).
    pub dsn: crate::mail::dsn::Params,
}

/// What names one message for ever, not only while its file exists: the queue id (an inode
/// number, which a later message may get again) with the header's time to the nanosecond and
/// quill-queue's pid. Maildir deliveries are named by it (doc/quill-local.8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The queue id (inode number of the message file).
    pub id: u64,
    /// The header's `t`.
    pub time: u64,
    /// The header's `n`.
    pub nanos: u32,
    /// The header's `p`.
    pub pid: u32,
}

impl Identity {
    /// The identity of the message with this queue id and header.
    pub fn of(id: u64, header: &Header) -> Identity {
        Identity { id, time: header.time, nanos: header.nanos, pid: header.pid }
    }

    /// `ID.TIME.NANOS.PID`, the form quill-lspawn gives quill-local (`-i`).
    pub fn encode(&self) -> String {
        format!("{}.{}.{}.{}", self.id, self.time, self.nanos, self.pid)
    }

    /// Parse [`Identity::encode`]'s form; None unless it is exactly four decimal numbers.
    pub fn decode(text: &[u8]) -> Option<Identity> {
        let text = std::str::from_utf8(text).ok()?;
        let mut parts = text.split('.');
        let mut number = || -> Option<u64> {
            let part = parts.next()?;
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let (id, time, nanos, pid) = (number()?, number()?, number()?, number()?);
        if parts.next().is_some() || nanos >= 1_000_000_000 {
            return None;
        }
        Some(Identity { id, time, nanos: nanos as u32, pid: u32::try_from(pid).ok()? })
    }
}

/// The largest header quill-send will read (the envelope's own cap plus a little).
pub const MAX_HEADER: usize = (crate::mail::address::MAX_ADDRESS + 2) * (crate::mail::envelope::MAX_RECIPIENTS + 1)
    + 128
    + crate::mail::proto::writer::MAX_DSN;

impl Header {
    /// `u<uid>\0p<pid>\0t<time>\0n<nanos>\0[d<dsn>\0]F<sender>\0T<rcpt>\0…\0`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("u{}\0p{}\0t{}\0n{}\0", self.uid, self.pid, self.time, self.nanos).into_bytes();
        if !self.dsn.is_empty() {
            out.push(b'd');
            out.extend(self.dsn.encode());
            out.push(0);
        }
        out.extend_from_slice(&self.envelope.encode());
        out
    }

    /// Parse a header at the start of `bytes`; returns it and its length in bytes (the offset
    /// of the message).
    pub fn decode(bytes: &[u8]) -> Result<(Header, usize)> {
        let bad = || Error::temporary("unable to parse queue file header: malformed");
        let mut header = Header::default();
        let mut pos = 0;
        for tag in [b'u', b'p', b't'] {
            let end = memchr::memchr(0, &bytes[pos..]).ok_or_else(bad)?;
            let record = &bytes[pos..pos + end];
            if record.first() != Some(&tag) {
                return Err(bad());
            }
            let value: u64 = std::str::from_utf8(&record[1..]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            // uid and pid are 32 bits: a larger number is a malformed header, never truncated
            // (u4294967296 must not read as uid 0).
            match tag {
                b'u' => header.uid = u32::try_from(value).map_err(|_| bad())?,
                b'p' => header.pid = u32::try_from(value).map_err(|_| bad())?,
                _ => header.time = value,
            }
            pos += end + 1;
        }
        // Optional, so that files queued before it existed still read (the sender's tag is F).
        if bytes.get(pos) == Some(&b'n') {
            let end = memchr::memchr(0, &bytes[pos..]).ok_or_else(bad)?;
            let nanos: u32 =
                std::str::from_utf8(&bytes[pos + 1..pos + end]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            if nanos >= 1_000_000_000 {
                return Err(bad());
            }
            header.nanos = nanos;
            pos += end + 1;
        }
        // Optional too: only a message given DSN parameters has it.
        if bytes.get(pos) == Some(&b'd') {
            let end = memchr::memchr(0, &bytes[pos..]).ok_or_else(bad)?;
            header.dsn = crate::mail::dsn::Params::decode(&bytes[pos + 1..pos + end]).ok_or_else(bad)?;
            pos += end + 1;
        }
        let envelope = Envelope::decode(&bytes[pos..]).map_err(|_| bad())?;
        // The envelope's length is what encode gives back; recompute rather than re-scan.
        pos += envelope.encode().len();
        header.envelope = envelope;
        Ok((header, pos))
    }
}

/// Read the header of an open message file from its start. Returns the header and the offset
/// at which the message begins; leaves the file position unspecified.
pub fn read_header(file: &mut File) -> Result<(Header, u64)> {
    let mut bytes = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16384];
    loop {
        let n = file.read(&mut chunk).map_err(|e| Error::io("read queue file", &e))?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        if let Ok((header, len)) = Header::decode(&bytes) {
            return Ok((header, len as u64));
        }
        if bytes.len() > MAX_HEADER {
            break;
        }
    }
    Header::decode(&bytes).map(|(h, len)| (h, len as u64))
}

/// Open one of the queue's FIFOs (`lock/trigger`, `lock/control`) without blocking and
/// without following a symbolic link, and make sure it is a FIFO before anything is written:
/// `lock/` belongs to quillq, and the programs that write here can run as root (`quill
/// queue`, `sendmail -q`), so a link or a hard-linked file put in the FIFO's place must not
/// receive the bytes. `read` also opens it for reading (quill-send: the FIFO then always has a
/// writer). ENXIO means no reader is running.
pub fn open_fifo(path: &Path, read: bool) -> std::io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(read)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => std::io::Error::other("it is a symbolic link, not a named pipe"),
            _ => e,
        })?;
    if !file.metadata()?.file_type().is_fifo() {
        return Err(std::io::Error::other("it is not a named pipe"));
    }
    Ok(file)
}

/// Wake quill-send: one byte into the trigger FIFO, without blocking. Failure is not an error
/// (quill-send also scans on a timer).
pub fn pull_trigger(layout: &Layout) {
    use std::io::Write;
    if let Ok(mut fifo) = open_fifo(&layout.trigger(), false) {
        let _ = fifo.write(&crate::mail::proto::control::Trigger::Wake.encode().unwrap_or_default());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            uid: 1000,
            pid: 42,
            time: 1_795_615_141,
            nanos: 123_456_789,
            envelope: Envelope { sender: b"a@b".to_vec(), recipients: vec![b"c@d".to_vec()] },
            dsn: crate::mail::dsn::Params::default(),
        };
        let mut bytes = h.encode();
        let len = bytes.len();
        assert!(bytes.starts_with(b"u1000\0p42\0t1795615141\0n123456789\0Fa@b\0"));
        bytes.extend_from_slice(b"Subject: x\n\nbody\n");
        assert_eq!(Header::decode(&bytes).unwrap(), (h.clone(), len));
    }

    #[test]
    fn header_with_dsn_round_trip() {
        let mut h = Header {
            envelope: Envelope { sender: b"a@b".to_vec(), recipients: vec![b"c@d".to_vec()] },
            ..Header::default()
        };
        h.dsn.ret = Some(crate::mail::dsn::Ret::Headers);
        h.dsn.recipients.push(crate::mail::dsn::RcptParams { notify: None, orcpt: Some(b"rfc822;c@d".to_vec()) });
        let mut bytes = h.encode();
        let len = bytes.len();
        assert!(bytes.starts_with(b"u0\0p0\0t0\0n0\0dHDRS -\n- rfc822;c@d\0Fa@b\0"));
        bytes.extend_from_slice(b"Subject: x\n\nbody\n");
        assert_eq!(Header::decode(&bytes).unwrap(), (h.clone(), len));
    }

    #[test]
    fn identity_round_trip() {
        let i = Identity { id: 1234, time: 1_795_615_141, nanos: 5, pid: 99 };
        assert_eq!(i.encode(), "1234.1795615141.5.99");
        assert_eq!(Identity::decode(i.encode().as_bytes()), Some(i));
        for bad in ["", "1.2.3", "1.2.3.4.5", "1.2.1000000000.4", "1.2.3.x", "1..3.4", "1.2.3.+4", "1.2.3.4294967296"] {
            assert_eq!(Identity::decode(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn header_without_nanoseconds() {
        // A file queued before the n record existed reads with nanos 0.
        let (h, len) = Header::decode(b"u1\0p2\0t3\0Fa@b\0Tc@d\0\0msg").unwrap();
        assert_eq!((h.time, h.nanos, len), (3, 0, 20));
        assert!(Header::decode(b"u1\0p2\0t3\0n1000000000\0Fa@b\0\0").is_err());
        assert!(Header::decode(b"u1\0p2\0t3\0nx\0Fa@b\0\0").is_err());
    }

    #[test]
    fn header_numbers_past_32_bits_are_malformed_not_truncated() {
        let mut bytes = b"u4294967296\0p1\0t1\0".to_vec();
        bytes.extend_from_slice(b"Fa@b\0Tc@d\0\0");
        assert!(Header::decode(&bytes).is_err(), "u2^32 must not read as uid 0");
        let mut bytes = b"u1\0p4294967297\0t1\0".to_vec();
        bytes.extend_from_slice(b"Fa@b\0Tc@d\0\0");
        assert!(Header::decode(&bytes).is_err());
        let mut bytes = b"u4294967295\0p1\0t1\0".to_vec();
        bytes.extend_from_slice(b"Fa@b\0Tc@d\0\0");
        assert_eq!(Header::decode(&bytes).expect("the largest uid reads").0.uid, u32::MAX);
    }
}

/// Owners for the queue tree when installing as root (DESIGN §2). `None` when a user builds a
/// private instance (quill-up): everything then belongs to that user.
#[derive(Clone, Copy, Debug)]
pub struct Owners {
    /// uid of quillq (owns the message directories).
    pub quillq: u32,
    /// uid of quills (owns info/ and the trigger).
    pub quills: u32,
    /// gid of group quill.
    pub quill_group: u32,
}

/// The mode of `queue/tmp/`: 0700 plus set-group-id. quill-queue runs setuid quillq with the
/// caller's group; the bit gives each message file the group quill instead, so that quill-send
/// (quills, group quill) can read it after the rename into todo/.
pub const TMP_MODE: u32 = 0o2700;

/// The mode of `queue/`: 0751, so that quill-smtpd can pass through it to `writer/socket`.
pub const QUEUE_MODE: u32 = 0o751;

/// The mode of `queue/writer/`: 0711, for the same reason.
pub const WRITER_MODE: u32 = 0o711;

/// The queue tree (doc/queue-format.5) and `control/`, parents first: types, modes and, with
/// `owners` (root installing), owners. Without them everything stays the caller's (quill-up).
pub fn tree_specs(owners: Option<Owners>) -> Vec<crate::base::tree::Spec> {
    use crate::base::tree::{Kind, Spec};
    let q = owners.map(|o| (o.quillq, o.quill_group));
    let s = owners.map(|o| (o.quills, o.quill_group));
    let root = owners.map(|_| (0, 0));
    let entry = |path, kind, mode, owner| Spec { path, kind, mode, owner };
    vec![
        // Searchable by all (not listable), so that quill-smtpd (quilld, not in group quill)
        // can reach writer/socket; every directory under it still shuts others out.
        entry("queue", Kind::Directory, QUEUE_MODE, q),
        entry("queue/tmp", Kind::Directory, TMP_MODE, q),
        entry("queue/todo", Kind::Directory, 0o750, q),
        entry("queue/mess", Kind::Directory, 0o750, q),
        entry("queue/hold", Kind::Directory, 0o750, q),
        entry("queue/info", Kind::Directory, 0o700, s),
        entry("queue/lock", Kind::Directory, 0o750, q),
        // quill-queued's socket directory: searchable, not listable; the socket itself is
        // made by quill-queued, which also checks who connects (doc/quill-queued.8).
        entry("queue/writer", Kind::Directory, WRITER_MODE, q),
        // quill-send cannot create files in lock/ (quillq's), so its mutex is made here.
        entry("queue/lock/sendmutex", Kind::File, 0o600, s),
        entry("queue/lock/control", Kind::Fifo, 0o600, s),
        entry("queue/lock/trigger", Kind::Fifo, 0o622, s),
        entry("control", Kind::Directory, 0o755, root),
    ]
}

/// Create the queue tree under `home` if parts are missing and put modes (and, with `owners`,
/// owners) right; idempotent. By descriptor ([`crate::base::tree`]): quillq owns the directories, so
/// a symbolic link or an entry of the wrong type there is refused, never followed. Stops at
/// the first problem; `quill setup` uses [`tree_specs`] itself to report every one.
pub fn create_tree(home: &Path, owners: Option<Owners>) -> std::io::Result<()> {
    let root = crate::base::tree::Dir::open(home)?;
    for (_, _, result) in crate::base::tree::apply(&root, &tree_specs(owners)) {
        result?;
    }
    Ok(())
}
