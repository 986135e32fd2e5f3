//! The administrator's requests to quill-send, through its two FIFOs (doc/quill-send.8).
//!
//! `queue/lock/trigger`: a NUL byte is quill-queue's "new mail"; `F` is `sendmail -q` (try
//! everything now); `R TEXT` and a newline is `sendmail -qR TEXT` (try the messages with a
//! recipient containing TEXT: printable ASCII without spaces, at most [`MAX_FLUSH_TEXT`]
//! bytes). Any other byte is noise.
//!
//! `queue/lock/control` (`quill queue …`): one request a line, `VERB` or `VERB ID`, VERB one of
//! `flush`, `reread`, `requeue`, `hold`, `release`, `delete`, `bounce`.
#![forbid(unsafe_code)]

use crate::mail::queuefile::valid_id;

/// The longest `sendmail -qR` text quill-send takes from the trigger.
pub const MAX_FLUSH_TEXT: usize = 255;

/// A request written into the trigger FIFO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// quill-queue's "new mail": look into `todo/`.
    Wake,
    /// `sendmail -q`: every message is due now.
    FlushAll,
    /// `sendmail -qR TEXT`: the messages with a recipient containing TEXT are due now.
    FlushMatching(Vec<u8>),
}

/// True when `text` may follow `-qR`: not empty, printable ASCII without spaces, at most
/// [`MAX_FLUSH_TEXT`] bytes.
pub fn flush_text_ok(text: &[u8]) -> bool {
    !text.is_empty() && text.len() <= MAX_FLUSH_TEXT && text.iter().all(u8::is_ascii_graphic)
}

impl Trigger {
    /// The bytes to write; None for a `FlushMatching` text that [`flush_text_ok`] refuses.
    pub fn encode(&self) -> Option<Vec<u8>> {
        match self {
            Trigger::Wake => Some(b"\0".to_vec()),
            Trigger::FlushAll => Some(b"F".to_vec()),
            Trigger::FlushMatching(text) => flush_text_ok(text).then(|| [b"R ", text.as_slice(), b"\n"].concat()),
        }
    }
}

/// What bytes read from the trigger ask for: whether everything is to be flushed (an `F`
/// outside a request), and the texts of the `R TEXT\n` requests (one that [`flush_text_ok`]
/// refuses is ignored as noise).
pub fn decode_trigger(bytes: &[u8]) -> (bool, Vec<Vec<u8>>) {
    let (mut flush, mut matching) = (false, Vec::new());
    let mut rest = bytes;
    while let Some(&first) = rest.first() {
        if first == b'R' {
            let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            let text = rest[1..end].strip_prefix(b" ").unwrap_or(&rest[1..end]);
            if flush_text_ok(text) {
                matching.push(text.to_vec());
            }
            rest = &rest[(end + 1).min(rest.len())..];
            continue;
        }
        flush |= first == b'F';
        rest = &rest[1..];
    }
    (flush, matching)
}

/// What a line of the control FIFO asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// Every message (or message ID) is due now.
    Flush,
    /// Read the control files again.
    Reread,
    /// Route the waiting recipients (of every message, or of message ID) anew.
    Requeue,
    /// Move message ID to `hold/`.
    Hold,
    /// Move held message ID back to the queue.
    Release,
    /// Remove message ID without delivering to its waiting recipients.
    Delete,
    /// Bounce message ID's waiting recipients.
    Bounce,
}

const VERBS: [Verb; 7] =
    [Verb::Flush, Verb::Reread, Verb::Requeue, Verb::Hold, Verb::Release, Verb::Delete, Verb::Bounce];

impl Verb {
    /// The word on the pipe.
    pub fn word(self) -> &'static str {
        match self {
            Verb::Flush => "flush",
            Verb::Reread => "reread",
            Verb::Requeue => "requeue",
            Verb::Hold => "hold",
            Verb::Release => "release",
            Verb::Delete => "delete",
            Verb::Bounce => "bounce",
        }
    }

    /// The verb a word names.
    pub fn from_word(word: &str) -> Option<Verb> {
        VERBS.into_iter().find(|v| v.word() == word)
    }
}

/// A queue id as the administrator types it: decimal digits that fit a message number.
pub fn parse_id(word: &str) -> Option<u64> {
    Some(word).filter(|w| valid_id(w.as_bytes())).and_then(|w| w.parse().ok())
}

/// One line of the control FIFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub verb: Verb,
    /// The message it is for; None: every message (or none, for `reread`).
    pub id: Option<u64>,
}

impl Request {
    /// The line, with its newline.
    pub fn encode(&self) -> String {
        match self.id {
            Some(id) => format!("{} {id}\n", self.verb.word()),
            None => format!("{}\n", self.verb.word()),
        }
    }

    /// Parse a line (without its newline). None for an unknown verb. A second word that is
    /// not a queue id counts as no id, and further words are ignored: quill-send then decides
    /// whether the request makes sense.
    pub fn decode(line: &[u8]) -> Option<Request> {
        let text = String::from_utf8_lossy(line);
        let mut words = text.split_whitespace();
        let verb = Verb::from_word(words.next()?)?;
        Some(Request { verb, id: words.next().and_then(parse_id) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_decodes() {
        assert_eq!(decode_trigger(b"\0\0"), (false, vec![]));
        assert_eq!(decode_trigger(b"\0F\0"), (true, vec![]));
        assert_eq!(decode_trigger(b"R example.com\n\0"), (false, vec![b"example.com".to_vec()]));
        // An F inside a request's text is not a flush of everything.
        assert_eq!(decode_trigger(b"RFoo.example\nF"), (true, vec![b"Foo.example".to_vec()]));
        assert_eq!(decode_trigger(b"R bad text\nR \x1b\n"), (false, vec![]));
        let long = [b"R ".to_vec(), vec![b'a'; MAX_FLUSH_TEXT + 1], b"\n".to_vec()].concat();
        assert_eq!(decode_trigger(&long), (false, vec![]));
    }

    #[test]
    fn trigger_round_trip() {
        let mut bytes = Vec::new();
        for t in [
            Trigger::Wake,
            Trigger::FlushMatching(b"example.com".to_vec()),
            Trigger::FlushAll,
            Trigger::FlushMatching(vec![b'a'; MAX_FLUSH_TEXT]),
        ] {
            bytes.extend(t.encode().unwrap_or_default());
        }
        assert_eq!(decode_trigger(&bytes), (true, vec![b"example.com".to_vec(), vec![b'a'; MAX_FLUSH_TEXT]]));
        assert_eq!(Trigger::FlushMatching(b"a b".to_vec()).encode(), None);
        assert_eq!(Trigger::FlushMatching(Vec::new()).encode(), None);
        assert_eq!(Trigger::FlushMatching(vec![b'a'; MAX_FLUSH_TEXT + 1]).encode(), None);
        assert_eq!(Trigger::FlushMatching(b"x.test".to_vec()).encode(), Some(b"R x.test\n".to_vec()));
    }

    #[test]
    fn requests_round_trip() {
        for verb in VERBS {
            for id in [None, Some(0), Some(10_011_023), Some(u64::MAX)] {
                let request = Request { verb, id };
                let line = request.encode();
                assert!(line.ends_with('\n'));
                assert_eq!(Request::decode(&line.as_bytes()[..line.len() - 1]), Some(request));
            }
        }
        assert_eq!(Request { verb: Verb::Hold, id: Some(42) }.encode(), "hold 42\n");
        assert_eq!(Request { verb: Verb::Flush, id: None }.encode(), "flush\n");
    }

    #[test]
    fn requests_decode() {
        let r = |verb, id| Some(Request { verb, id });
        assert_eq!(Request::decode(b"hold 007"), r(Verb::Hold, Some(7)));
        assert_eq!(Request::decode(b"  flush   12 extra"), r(Verb::Flush, Some(12)));
        assert_eq!(Request::decode(b"flush abc"), r(Verb::Flush, None));
        assert_eq!(Request::decode(b"hold 99999999999999999999"), r(Verb::Hold, None));
        assert_eq!(Request::decode(b"frob 1"), None);
        assert_eq!(Request::decode(b""), None);
        assert_eq!(parse_id("12a"), None);
        assert_eq!(parse_id(""), None);
    }
}
