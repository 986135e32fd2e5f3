//! A message as quill-send holds it while it is delivered: its recipients and where each
//! stands, when each channel is next due, and the jobs and deliveries made of it.
#![forbid(unsafe_code)]

use crate::mail::proto::info::{Entry, Info, Progress};
use crate::mail::queuefile::Header;
use crate::send::sendconf::Channel;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// `move ID` asked of quill-clean; no delivery before the answer.
    Moving,
    /// Being delivered.
    Active,
    /// Every recipient done; the bounce is not queued yet.
    Bouncing,
    /// `remove ID` asked of quill-clean.
    Removing,
    /// `hold ID` asked of quill-clean (the administrator's request).
    Holding,
}

/// What the administrator asked for a message (`quill queue …`), carried out as soon as none
/// of its recipients is queued or in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AdminAction {
    Hold,
    Delete,
    Bounce,
    /// Route the waiting recipients anew (`requeue`).
    Requeue,
}

pub(super) struct Recipient {
    pub(super) channel: Channel,
    pub(super) address: Vec<u8>,
    pub(super) progress: Progress,
    /// Queued for a delivery or in flight.
    pub(super) busy: bool,
    /// The last deferral: when, and why (kept in the info file for `quill queue why`).
    pub(super) last: Option<(u64, Vec<u8>)>,
    /// An attempt may have delivered to it without its outcome being recorded: it was sent
    /// to a spawner before, or the message was found in `mess/` or with an info file. Its next
    /// request says so (quill-local then looks for its own earlier Maildir file in `cur/`).
    pub(super) tried: bool,
}

/// Index of the "finish" timer beside the two channels' timers.
pub(super) const FINISH: usize = 2;

pub(super) struct Message {
    pub(super) birth: u64,
    pub(super) pid: u32,
    pub(super) sender: Vec<u8>,
    pub(super) originals: Vec<Vec<u8>>,
    /// The DSN parameters (RFC 3461) the message was queued with.
    pub(super) dsn: crate::mail::dsn::Params,
    /// Where the message starts in its file (the header's length).
    pub(super) offset: u64,
    pub(super) recipients: Vec<Recipient>,
    /// When each channel (and the finish retry) is next due; the timers hold the same times.
    pub(super) due: [Option<u64>; 3],
    /// When its sender was sent the delay warning (`delaywarningtime`), 0 for not yet: kept in
    /// the info file, so that a restarted quill-send does not warn again.
    pub(super) warned: u64,
    /// Recipients queued or in flight per channel.
    pub(super) busy: [usize; 2],
    /// Changed since its info file was last written.
    pub(super) dirty: bool,
    /// Its info file may exist: it was read at pickup, or this quill-send wrote (or began
    /// to write) it. A message delivered at its first attempt never has one, and its end
    /// then costs no unlink of a missing file.
    pub(super) info_on_disk: bool,
    pub(super) phase: Phase,
    /// The administrator's request waiting for the message's deliveries to end.
    pub(super) pending: Option<AdminAction>,
}

impl Message {
    /// A message from its header and its info file (which the caller found to belong to it,
    /// [`Info::belongs_to`]): with the file, each recipient where the file says and marked as
    /// possibly tried; without, every recipient waiting, routed by `rewrite`.
    pub(super) fn new(
        header: Header,
        offset: u64,
        info: Option<Info>,
        rewrite: impl Fn(&[u8]) -> (Channel, Vec<u8>),
    ) -> Message {
        let tried = info.is_some();
        let warned = info.as_ref().map_or(0, |i| i.warned);
        let (recipients, due) = match info {
            Some(info) => (
                info.entries
                    .into_iter()
                    .map(|e| Recipient {
                        channel: e.channel,
                        address: e.address,
                        progress: e.progress,
                        busy: false,
                        last: e.last,
                        tried,
                    })
                    .collect(),
                [Some(info.due[0]).filter(|&t| t > 0), Some(info.due[1]).filter(|&t| t > 0), None],
            ),
            None => (
                header
                    .envelope
                    .recipients
                    .iter()
                    .map(|r| {
                        let (channel, address) = rewrite(r);
                        Recipient { channel, address, progress: Progress::Waiting, busy: false, last: None, tried }
                    })
                    .collect(),
                [None; 3],
            ),
        };
        Message {
            birth: header.time,
            pid: header.pid,
            sender: header.envelope.sender,
            originals: header.envelope.recipients,
            dsn: header.dsn,
            offset,
            recipients,
            due,
            warned,
            busy: [0, 0],
            dirty: false,
            info_on_disk: tried,
            phase: Phase::Moving,
            pending: None,
        }
    }

    pub(super) fn done(&self) -> bool {
        self.recipients.iter().all(|r| r.progress != Progress::Waiting)
    }

    pub(super) fn waiting(&self, channel: Channel) -> bool {
        self.recipients.iter().any(|r| r.channel == channel && r.progress == Progress::Waiting)
    }

    /// When the message is next due, if it does nothing but wait for that time and its
    /// state is on disk: it may then rest there ([`crate::send::dormant`]) until the time.
    pub(super) fn resting_until(&self) -> Option<u64> {
        let idle = self.phase == Phase::Active
            && self.pending.is_none()
            && self.busy == [0, 0]
            && !self.dirty
            && self.due[FINISH].is_none();
        if !idle {
            return None;
        }
        self.due[..FINISH].iter().flatten().copied().min()
    }

    pub(super) fn info(&self) -> Info {
        Info {
            time: self.birth,
            pid: self.pid,
            due: [self.due[0].unwrap_or(0), self.due[1].unwrap_or(0)],
            warned: self.warned,
            entries: self
                .recipients
                .iter()
                .map(|r| Entry {
                    channel: r.channel,
                    address: r.address.clone(),
                    progress: r.progress.clone(),
                    last: r.last.clone().filter(|_| r.progress == Progress::Waiting),
                })
                .collect(),
        }
    }
}

/// One delivery queued or in flight: a message and the recipients it carries.
pub(super) struct Job {
    pub(super) id: u64,
    pub(super) recipients: Vec<usize>,
    /// The unit of concurrency: the recipients' domain for remote jobs (also the back-off
    /// unit), the recipient address (lower case) for local ones.
    pub(super) domain: Vec<u8>,
}

pub(super) struct Delivery {
    pub(super) id: u64,
    pub(super) domain: Vec<u8>,
    pub(super) channel: Channel,
    pub(super) recipients: Vec<usize>,
    /// The delivery numbers of the log lines, one per recipient.
    pub(super) numbers: Vec<u64>,
}

/// A report or log text as one line: trailing white space dropped, newlines as `/`, other
/// control and non-ASCII bytes as `?`.
pub(super) fn words(text: &[u8]) -> String {
    let mut end = text.len();
    while end > 0 && text[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    text[..end]
        .iter()
        .map(|&b| {
            if b == b'\n' {
                '/'
            } else if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::envelope::Envelope;

    fn header() -> Header {
        Header {
            uid: 0,
            pid: 42,
            time: 1000,
            nanos: 0,
            envelope: Envelope {
                sender: b"s@x".to_vec(),
                recipients: vec![b"Local@here".to_vec(), b"far@there".to_vec()],
            },
            dsn: Default::default(),
        }
    }

    fn route(address: &[u8]) -> (Channel, Vec<u8>) {
        let channel = if address.ends_with(b"@here") { Channel::Local } else { Channel::Remote };
        (channel, address.to_ascii_lowercase())
    }

    #[test]
    fn new_message_routes_every_recipient() {
        let m = Message::new(header(), 99, None, route);
        let routed: Vec<(Channel, &[u8], bool)> =
            m.recipients.iter().map(|r| (r.channel, &r.address[..], r.tried)).collect();
        assert_eq!(
            routed,
            vec![(Channel::Local, &b"local@here"[..], false), (Channel::Remote, &b"far@there"[..], false)]
        );
        assert_eq!((m.birth, m.pid, m.offset, m.phase, m.due), (1000, 42, 99, Phase::Moving, [None; 3]));
        assert!(m.waiting(Channel::Local) && m.waiting(Channel::Remote) && !m.done());
        assert_eq!(m.resting_until(), None, "not active yet");
    }

    #[test]
    fn only_a_message_that_just_waits_may_rest() {
        let mut m = Message::new(header(), 99, None, route);
        m.phase = Phase::Active;
        assert_eq!(m.resting_until(), None, "nothing due: it must stay (its remote channel may not run)");
        m.due = [Some(500), Some(300), None];
        assert_eq!(m.resting_until(), Some(300));
        m.busy = [0, 1];
        assert_eq!(m.resting_until(), None, "a delivery is queued or in flight");
        m.busy = [0, 0];
        m.dirty = true;
        assert_eq!(m.resting_until(), None, "its info file is not written yet");
        m.dirty = false;
        m.pending = Some(AdminAction::Hold);
        assert_eq!(m.resting_until(), None);
    }

    #[test]
    fn info_file_restores_progress_and_round_trips() {
        let mut m = Message::new(header(), 99, None, route);
        m.recipients[0].progress = Progress::Delivered;
        m.recipients[0].last = Some((1500, b"stale".to_vec()));
        m.recipients[1].last = Some((1600, b"busy (#4.2.1)".to_vec()));
        m.due = [None, Some(2000), None];
        m.warned = 1700;
        let info = m.info();
        assert_eq!(info.entries[0].last, None, "only a waiting recipient keeps its last error");
        assert!(info.belongs_to(&header()));
        let again = Message::new(header(), 99, Some(info.clone()), |_| unreachable!("the info file routes"));
        assert_eq!(again.info(), info);
        assert!(again.recipients.iter().all(|r| r.tried), "a message with an info file may have been tried");
        assert_eq!((again.due, again.warned), ([None, Some(2000), None], 1700));
        assert!(!again.waiting(Channel::Local) && again.waiting(Channel::Remote));
    }
}
