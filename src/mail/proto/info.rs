//! `queue/info/ID`: what quill-send knows about a message that needs another attempt. The
//! codec (writer and reader) and the file operations; quill-send writes these files and
//! `quill queue` (list, show, why, shape) reads them.
//!
//! A message delivered completely on its first attempt never gets this file (one file write,
//! two fsyncs and a rename saved per message). The file is text0, written whole under a
//! temporary name, fsynced, renamed over `info/ID`, and `info/` is fsynced (the caller does
//! that once for a batch of files, [`sync_dir`]):
//!
//! ```text
//! I<time>.<pid>\0     identity: the message header's t and p records
//! l<unixtime>\0       next attempt on the local channel (0: none planned)
//! r<unixtime>\0       next attempt on the remote channel (0: none planned)
//! w<unixtime>\0       optional: when the delay warning was queued (at most one is sent)
//! then one record per recipient, in the header's order, with the rewritten address:
//! L<address>\0        local, not yet delivered
//! R<address>\0        remote, not yet delivered
//! T<unixtime> <text>\0 after L or R: the last attempt's time and its temporary failure
//!                      (for `quill queue why`; absent before the first deferral)
//! K<address>\0        delivered
//! D<address>\0        failed for good, followed by
//! E<text>\0           the failure's text (for the bounce)
//! \0                  end of file
//! ```
//!
//! The identity record ties the file to one message: IDs are inode numbers and come back when
//! a file is removed, so an info file left behind by a crash between the removal of `mess/ID`
//! and of `info/ID` must not be mistaken for the state of a new message with the same inode.
#![forbid(unsafe_code)]

use crate::base::fail::{Error, Result};
use crate::mail::rewrite::Channel;
use std::io::Write;
use std::path::Path;

/// Where one recipient stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not delivered yet (never tried, deferred, or in flight).
    Waiting,
    /// Delivered.
    Delivered,
    /// Failed for good; the text goes into the bounce.
    Failed(Vec<u8>),
}

/// One recipient's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Local or remote.
    pub channel: Channel,
    /// The address after rewriting (what the spawner delivers to).
    pub address: Vec<u8>,
    /// Where it stands.
    pub progress: Progress,
    /// A waiting recipient's last deferral: when, and the text of the temporary failure.
    pub last: Option<(u64, Vec<u8>)>,
}

/// The contents of an info file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// The header's `t` record (also the message's birth for the retry grid).
    pub time: u64,
    /// The header's `p` record.
    pub pid: u32,
    /// Next attempt per channel (index: `Channel as usize`), 0 for none.
    pub due: [u64; 2],
    /// When the sender was sent its delay warning (`delaywarningtime`), 0 for not yet.
    pub warned: u64,
    /// One entry per recipient of the header, in order.
    pub entries: Vec<Entry>,
}

/// The largest info file quill-send reads (recipients with long failure texts).
const MAX_INFO: u64 = 64 * 1024 * 1024;

fn record(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    out.extend(value.iter().map(|&b| if b == 0 { b'?' } else { b }));
    out.push(0);
}

impl Info {
    /// True when this file belongs to the message whose header has these `t` and `p`.
    pub fn matches(&self, time: u64, pid: u32) -> bool {
        self.time == time && self.pid == pid
    }

    /// True when this file belongs to the message with this header: its identity and its
    /// number of recipients agree (a file left by an earlier message with the same inode
    /// does not).
    pub fn belongs_to(&self, header: &crate::mail::queuefile::Header) -> bool {
        self.matches(header.time, header.pid) && self.entries.len() == header.envelope.recipients.len()
    }

    /// The text0 form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.iter().map(|e| e.address.len() + 8).sum::<usize>());
        record(&mut out, b'I', format!("{}.{}", self.time, self.pid).as_bytes());
        record(&mut out, b'l', self.due[0].to_string().as_bytes());
        record(&mut out, b'r', self.due[1].to_string().as_bytes());
        if self.warned != 0 {
            record(&mut out, b'w', self.warned.to_string().as_bytes());
        }
        for e in &self.entries {
            match &e.progress {
                Progress::Waiting => {
                    record(&mut out, if e.channel == Channel::Local { b'L' } else { b'R' }, &e.address);
                    if let Some((time, text)) = &e.last {
                        let mut value = format!("{time} ").into_bytes();
                        value.extend_from_slice(text);
                        record(&mut out, b'T', &value);
                    }
                }
                Progress::Delivered => record(&mut out, b'K', &e.address),
                Progress::Failed(text) => {
                    record(&mut out, b'D', &e.address);
                    record(&mut out, b'E', text);
                }
            }
        }
        out.push(0);
        out
    }

    /// Parse the text0 form; None if it is malformed or truncated (the caller then treats the
    /// message as having no info: every recipient is tried again).
    pub fn decode(bytes: &[u8]) -> Option<Info> {
        let mut records = Vec::new();
        let mut pos = 0;
        loop {
            let end = memchr::memchr(0, &bytes[pos..])?;
            if end == 0 {
                break;
            }
            records.push(&bytes[pos..pos + end]);
            pos += end + 1;
        }
        if pos + 1 != bytes.len() || records.len() < 3 {
            return None;
        }
        let number = |r: &[u8], tag: u8| -> Option<u64> {
            if r.first() != Some(&tag) {
                return None;
            }
            std::str::from_utf8(&r[1..]).ok()?.parse().ok()
        };
        let identity = records[0].strip_prefix(b"I")?;
        let dot = memchr::memchr(b'.', identity)?;
        let time = std::str::from_utf8(&identity[..dot]).ok()?.parse().ok()?;
        let pid = std::str::from_utf8(&identity[dot + 1..]).ok()?.parse().ok()?;
        let due = [number(records[1], b'l')?, number(records[2], b'r')?];
        let mut warned = 0;
        let mut first = 3;
        if records.get(3).is_some_and(|r| r.first() == Some(&b'w')) {
            warned = number(records[3], b'w')?;
            first = 4;
        }
        let mut entries = Vec::new();
        let mut rest = records[first..].iter();
        while let Some(r) = rest.next() {
            let (tag, address) = (r[0], r[1..].to_vec());
            let entry = match tag {
                b'L' => Entry { channel: Channel::Local, address, progress: Progress::Waiting, last: None },
                b'R' => Entry { channel: Channel::Remote, address, progress: Progress::Waiting, last: None },
                b'K' => Entry { channel: Channel::Local, address, progress: Progress::Delivered, last: None },
                b'D' => {
                    let text = rest.next()?.strip_prefix(b"E")?.to_vec();
                    Entry { channel: Channel::Local, address, progress: Progress::Failed(text), last: None }
                }
                b'T' => {
                    let previous: &mut Entry = entries.last_mut()?;
                    if previous.progress != Progress::Waiting || previous.last.is_some() {
                        return None;
                    }
                    let space = memchr::memchr(b' ', &address)?;
                    let time = std::str::from_utf8(&address[..space]).ok()?.parse().ok()?;
                    previous.last = Some((time, address[space + 1..].to_vec()));
                    continue;
                }
                _ => return None,
            };
            entries.push(entry);
        }
        Some(Info { time, pid, due, warned, entries })
    }
}

/// Read `info/ID`. Ok(None) when it does not exist or cannot be parsed (a torn file is no
/// better than none: deliver everything again).
pub fn read(info_dir: &Path, id: u64) -> Result<Option<Info>> {
    use std::io::Read;
    let path = info_dir.join(id.to_string());
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("open info/{id}"), &e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_INFO).read_to_end(&mut bytes).map_err(|e| Error::io(format!("read info/{id}"), &e))?;
    Ok(Info::decode(&bytes))
}

/// Write `info/ID` durably except for the directory entry: a temporary name in `info/`,
/// fsync, rename. Call [`sync_dir`] after a batch of these.
pub fn write(info_dir: &Path, id: u64, info: &Info) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = info_dir.join(format!("{id}.new"));
    let final_path = info_dir.join(id.to_string());
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(&info.encode())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &final_path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("write info/{id}"), &e)
    })
}

/// fsync a directory, making the renames and unlinks in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Remove `info/ID`; a missing file is fine.
pub fn remove(info_dir: &Path, id: u64) -> std::io::Result<()> {
    match std::fs::remove_file(info_dir.join(id.to_string())) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Info {
        Info {
            time: 1_795_615_141,
            pid: 4242,
            due: [1_795_615_241, 0],
            warned: 0,
            entries: vec![
                Entry { channel: Channel::Local, address: b"a@here".to_vec(), progress: Progress::Waiting, last: None },
                Entry {
                    channel: Channel::Remote,
                    address: b"b@there".to_vec(),
                    progress: Progress::Waiting,
                    last: Some((1_795_615_200, b"Unreachable: connection refused (#4.4.1)".to_vec())),
                },
                Entry {
                    channel: Channel::Local,
                    address: b"c@here".to_vec(),
                    progress: Progress::Delivered,
                    last: None,
                },
                Entry {
                    channel: Channel::Local,
                    address: b"d@here".to_vec(),
                    progress: Progress::Failed(b"no mailbox (#5.1.1)".to_vec()),
                    last: None,
                },
                Entry {
                    channel: Channel::Local,
                    address: b"e@here".to_vec(),
                    progress: Progress::Failed(vec![]),
                    last: None,
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let info = sample();
        let bytes = info.encode();
        assert!(bytes.starts_with(
            b"I1795615141.4242\0l1795615241\0r0\0La@here\0Rb@there\0T1795615200 Unreachable: connection refused \
              (#4.4.1)\0Kc@here\0Dd@here\0E"
        ));
        assert_eq!(Info::decode(&bytes), Some(info.clone()));
        assert!(info.matches(1_795_615_141, 4242));
        assert!(!info.matches(1_795_615_141, 4243));
        let warned = Info { warned: 1_795_615_300, ..info };
        let bytes = warned.encode();
        assert!(bytes.starts_with(b"I1795615141.4242\0l1795615241\0r0\0w1795615300\0La@here\0"));
        assert_eq!(Info::decode(&bytes), Some(warned));
        assert_eq!(Info::decode(b"I1.2\0l0\0r0\0wx\0\0"), None);
    }

    #[test]
    fn damaged_files() {
        let bytes = sample().encode();
        // Every truncation is refused, never half-read.
        for len in 0..bytes.len() {
            assert_eq!(Info::decode(&bytes[..len]), None, "truncated at {len}");
        }
        assert_eq!(Info::decode(b"I1.2\0l0\0r0\0Xa@b\0\0"), None);
        assert_eq!(Info::decode(b"I1.2\0l0\0r0\0Da@b\0\0"), None);
        assert_eq!(Info::decode(b"Ix\0l0\0r0\0\0"), None);
        // A last attempt belongs after a waiting recipient, once.
        assert_eq!(Info::decode(b"I1.2\0l0\0r0\0T5 x\0\0"), None);
        assert_eq!(Info::decode(b"I1.2\0l0\0r0\0Ka@b\0T5 x\0\0"), None);
        assert_eq!(Info::decode(b"I1.2\0l0\0r0\0Ra@b\0T5 x\0T6 y\0\0"), None);
        assert_eq!(Info::decode(b"I1.2\0l0\0r0\0Ra@b\0Tfive x\0\0"), None);
        let mut trailing = bytes.clone();
        trailing.push(b'x');
        assert_eq!(Info::decode(&trailing), None);
    }

    #[test]
    fn files() {
        let dir = std::env::temp_dir().join(format!("quill-info-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&dir, 77).unwrap(), None);
        write(&dir, 77, &sample()).unwrap();
        sync_dir(&dir).unwrap();
        assert_eq!(read(&dir, 77).unwrap(), Some(sample()));
        assert!(!dir.join("77.new").exists());
        remove(&dir, 77).unwrap();
        remove(&dir, 77).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
