//! The pipes between quill-send and the spawners (quill-lspawn, quill-rspawn), in text0: both
//! directions, the writer and the reader of each (doc/INTERNALS.md).
//!
//! A frame is a list of NUL-terminated fields ended by an empty field (one extra NUL).
//! Request, send → spawner: `SLOT\0 ID\0 Fsender\0 [R\0] Trcpt\0 [Trcpt\0 …] \0` (the tags keep an
//! empty sender from being an empty field; `R` says an earlier attempt may have delivered).
//! Report, spawner → send: `SLOT\0 Ltext\0 [Ltext\0 …] \0` with one result per recipient of
//! the request, in order, where L is K (delivered), Z (temporary) or D (permanent).
//! SLOT is a decimal number chosen by send; it names the delivery in the report.
#![forbid(unsafe_code)]

use crate::base::fail::{Outcome, Status};
use crate::mail::proto::remote_report::UNREACHABLE;

/// The longest report text kept per recipient (a spawner truncates longer ones).
pub const MAX_TEXT: usize = 3000;
/// The longest frame a reader accepts before declaring the pipe mangled.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Encode fields as one frame. NUL bytes inside a field are replaced by `?`.
pub fn encode(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 1).sum::<usize>() + 1);
    for f in fields {
        if f.is_empty() {
            // An empty field would end the frame early; a lone space keeps its place.
            out.push(b' ');
        } else {
            out.extend(f.iter().map(|&b| if b == 0 { b'?' } else { b }));
        }
        out.push(0);
    }
    out.push(0);
    out
}

/// A delivery request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Send's name for this delivery.
    pub slot: u32,
    /// The queue id of the message (file `mess/ID`).
    pub id: Vec<u8>,
    /// Envelope sender (empty for bounces).
    pub sender: Vec<u8>,
    /// One recipient for local deliveries; one or more of one domain for remote ones.
    pub recipients: Vec<Vec<u8>>,
    /// An earlier attempt for these recipients may have delivered without its outcome being
    /// recorded (it was tried before, or quill-send restarted with the message in `mess/`):
    /// quill-local then looks for its own earlier Maildir file in `cur/` too.
    pub retry: bool,
    /// More mail for this destination is waiting at quill-send (remote requests only): the
    /// spawner may keep the connection open for it (quill-rspawn's connection reuse).
    pub backlog: bool,
}

impl Request {
    /// The frame for this request. The sender travels with a leading `F` and each recipient
    /// with a leading `T`, so that an empty sender is not an empty field (which ends a frame).
    pub fn encode(&self) -> Vec<u8> {
        let slot = self.slot.to_string();
        let mut sender = b"F".to_vec();
        sender.extend_from_slice(&self.sender);
        let mut fields: Vec<&[u8]> = vec![slot.as_bytes(), &self.id, &sender];
        if self.retry {
            fields.push(b"R");
        }
        if self.backlog {
            fields.push(b"B");
        }
        let rcpts: Vec<Vec<u8>> = self.recipients.iter().map(|r| [b"T".as_slice(), r].concat()).collect();
        fields.extend(rcpts.iter().map(Vec::as_slice));
        encode(&fields)
    }

    /// Parse a frame's fields; None if malformed.
    pub fn decode(fields: &[Vec<u8>]) -> Option<Request> {
        if fields.len() < 4 {
            return None;
        }
        let slot = std::str::from_utf8(&fields[0]).ok()?.parse().ok()?;
        let sender = fields[2].strip_prefix(b"F")?.to_vec();
        let retry = fields[3] == b"R";
        let mut first = if retry { 4 } else { 3 };
        let backlog = fields.get(first).is_some_and(|f| f == b"B");
        if backlog {
            first += 1;
        }
        if fields.len() <= first {
            return None;
        }
        let recipients =
            fields[first..].iter().map(|r| r.strip_prefix(b"T").map(<[u8]>::to_vec)).collect::<Option<Vec<_>>>()?;
        Some(Request { slot, id: fields[1].clone(), sender, recipients, retry, backlog })
    }
}

/// One recipient's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Result {
    /// Delivered, temporary or permanent failure.
    pub outcome: Outcome,
    /// What happened, in words (the server's reply, the program's output, …).
    pub text: Vec<u8>,
    /// A temporary failure of the remote destination itself, not of this message: quill-send
    /// backs the destination off. On the pipe it is the text's first words
    /// (`mail::proto::remote_report::UNREACHABLE`), which stay in the text for logs.
    pub unreachable: bool,
}

impl Result {
    /// A result as read from a pipe: `unreachable` when a temporary text starts with the mark.
    pub fn new(outcome: Outcome, text: Vec<u8>) -> Result {
        let unreachable = outcome == Outcome::Temporary && text.starts_with(UNREACHABLE.as_bytes());
        Result { outcome, text, unreachable }
    }
}

/// A status becomes a result at this edge, rendered once (`TEXT (#4.3.0)`).
impl From<&Status> for Result {
    fn from(status: &Status) -> Result {
        Result::new(status.outcome, status.to_string().into_bytes())
    }
}

/// A report for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The request's slot.
    pub slot: u32,
    /// One result per recipient of the request.
    pub results: Vec<Result>,
}

impl Report {
    /// The frame for this report.
    pub fn encode(&self) -> Vec<u8> {
        let slot = self.slot.to_string();
        let texts: Vec<Vec<u8>> = self
            .results
            .iter()
            .map(|r| {
                let mut t = vec![r.outcome.letter()];
                if r.unreachable && !r.text.starts_with(UNREACHABLE.as_bytes()) {
                    t.extend_from_slice(UNREACHABLE.as_bytes());
                }
                t.extend(r.text.iter().take(MAX_TEXT).map(|&b| if b == 0 { b'?' } else { b }));
                t
            })
            .collect();
        let mut fields: Vec<&[u8]> = vec![slot.as_bytes()];
        fields.extend(texts.iter().map(Vec::as_slice));
        encode(&fields)
    }

    /// Parse a frame's fields; None if malformed.
    pub fn decode(fields: &[Vec<u8>]) -> Option<Report> {
        let slot = std::str::from_utf8(fields.first()?).ok()?.parse().ok()?;
        // A Reader never yields an empty field, but an empty one here is malformed, not a panic.
        let results = fields[1..]
            .iter()
            .map(|f| f.split_first().map(|(&letter, text)| Result::new(Outcome::from_letter(letter), text.to_vec())))
            .collect::<Option<Vec<_>>>()?;
        Some(Report { slot, results })
    }
}

/// Accumulates bytes from a pipe and yields whole frames.
#[derive(Default)]
pub struct Reader {
    buffer: Vec<u8>,
    /// Where the next frame starts: frames already returned are dropped at the next push, all
    /// at once, not one by one (many small frames in one read would cost quadratic copying).
    start: usize,
    /// How far the current frame has been scanned (the start of its first unterminated
    /// field): a long frame arriving in many reads is not scanned again from its start after
    /// each one.
    scanned: usize,
}

impl Reader {
    /// Add bytes read from the pipe.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// True when the buffered bytes exceed any sane frame (the peer is broken).
    pub fn overflowed(&self) -> bool {
        self.buffer.len() - self.start > MAX_FRAME
    }

    /// The next complete frame's fields, if one has arrived.
    pub fn next_frame(&mut self) -> Option<Vec<Vec<u8>>> {
        let mut pos = self.scanned.max(self.start);
        while let Some(end) = memchr::memchr(0, &self.buffer[pos..]) {
            if end == 0 {
                // An empty field: the frame is `buffer[start..pos]`, fields each ending in NUL.
                let body = &self.buffer[self.start..pos];
                let fields = match body.split_last() {
                    None => Vec::new(),
                    Some((_, fields)) => fields.split(|&b| b == 0).map(<[u8]>::to_vec).collect(),
                };
                self.start = pos + 1;
                self.scanned = self.start;
                return Some(fields);
            }
            pos += end + 1;
        }
        self.scanned = pos;
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let r = Request {
            slot: 7,
            id: b"123".to_vec(),
            sender: vec![],
            recipients: vec![b"a@b".to_vec()],
            retry: false,
            backlog: false,
        };
        let mut reader = Reader::default();
        let bytes = r.encode();
        reader.push(&bytes[..3]);
        assert!(reader.next_frame().is_none());
        reader.push(&bytes[3..]);
        let fields = reader.next_frame().unwrap();
        assert_eq!(Request::decode(&fields).unwrap(), r);
        let again = Request { retry: true, ..r };
        assert_eq!(again.encode(), b"7\x00123\x00F\x00R\x00Ta@b\x00\x00");
        reader.push(&again.encode());
        assert_eq!(Request::decode(&reader.next_frame().unwrap()).unwrap(), again);
        let busy = Request { backlog: true, ..again.clone() };
        assert_eq!(busy.encode(), b"7\x00123\x00F\x00R\x00B\x00Ta@b\x00\x00");
        reader.push(&busy.encode());
        assert_eq!(Request::decode(&reader.next_frame().unwrap()).unwrap(), busy);
        // A retry mark without a recipient is malformed.
        assert_eq!(Request::decode(&[b"7".to_vec(), b"1".to_vec(), b"F".to_vec(), b"R".to_vec()]), None);
    }

    /// Frames split across reads at every byte, several frames in one read, empty frames: the
    /// resumed scan gives what a scan of everything at once gives.
    #[test]
    fn frames_across_reads() {
        let bytes = b"1\0ab\0\0\0x\0y\0\0" as &[u8];
        let expected: Vec<Vec<Vec<u8>>> =
            vec![vec![b"1".to_vec(), b"ab".to_vec()], vec![], vec![b"x".to_vec(), b"y".to_vec()]];
        let mut whole = Reader::default();
        whole.push(bytes);
        let frames: Vec<_> = std::iter::from_fn(|| whole.next_frame()).collect();
        assert_eq!(frames, expected);
        let mut pieced = Reader::default();
        let mut frames = Vec::new();
        for &b in bytes {
            pieced.push(&[b]);
            frames.extend(std::iter::from_fn(|| pieced.next_frame()));
        }
        assert_eq!(frames, expected);
        assert!(!pieced.overflowed());
        // A frame still open keeps its fields until its end arrives.
        pieced.push(b"open\0fie");
        assert_eq!(pieced.next_frame(), None);
        pieced.push(b"ld\0\0");
        assert_eq!(pieced.next_frame(), Some(vec![b"open".to_vec(), b"field".to_vec()]));
    }

    /// A status crosses the pipe as its rendered text and reads back as the same status.
    #[test]
    fn status_round_trip() {
        use crate::base::fail::Enhanced;
        let statuses = [
            Status::temporary(Enhanced::MAIL_SYSTEM, "unable to open message 12: gone"),
            Status::permanent(Enhanced::BAD_SYNTAX, "Sorry, the address has no domain."),
            Status::success("delivered"),
        ];
        let report = Report { slot: 9, results: statuses.iter().map(Result::from).collect() };
        let bytes = report.encode();
        assert_eq!(
            bytes,
            b"9\0Zunable to open message 12: gone (#4.3.0)\0DSorry, the address has no domain. (#5.1.3)\0Kdelivered\0\0"
        );
        let mut reader = Reader::default();
        reader.push(&bytes);
        let again = Report::decode(&reader.next_frame().unwrap()).unwrap();
        let read: Vec<Status> =
            again.results.iter().map(|r| Status::parse(r.outcome, &String::from_utf8_lossy(&r.text))).collect();
        assert_eq!(read, statuses);
    }

    #[test]
    fn report_with_an_empty_field_is_malformed() {
        assert_eq!(Report::decode(&[b"1".to_vec(), Vec::new()]), None);
    }

    #[test]
    fn report_round_trip() {
        let r = Report {
            slot: 3,
            results: vec![
                Result::new(Outcome::Success, b"did 1+0+0/".to_vec()),
                Result::new(Outcome::Permanent, vec![]),
                Result::new(Outcome::Temporary, b"Unreachable: refused (#4.4.1)".to_vec()),
                Result::new(Outcome::Temporary, b"busy (#4.3.0)".to_vec()),
            ],
        };
        let mut reader = Reader::default();
        reader.push(&r.encode());
        let again = Report::decode(&reader.next_frame().unwrap()).unwrap();
        assert_eq!(again, r);
        assert_eq!(again.results.iter().map(|r| r.unreachable).collect::<Vec<_>>(), [false, false, true, false]);
        // The field survives the pipe even when the text lacks the mark.
        let marked = Report {
            slot: 4,
            results: vec![Result { unreachable: true, ..Result::new(Outcome::Temporary, b"refused".to_vec()) }],
        };
        reader.push(&marked.encode());
        let again = Report::decode(&reader.next_frame().unwrap()).unwrap();
        assert!(again.results[0].unreachable && again.results[0].text == b"Unreachable: refused");
    }
}
