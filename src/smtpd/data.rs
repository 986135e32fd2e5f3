//! The message data of one SMTP transaction, after `354`: the end-of-data state machine
//! (dot-unstuffing, CRLF to LF, bare CR and LF noted: SMTP smuggling); the chunks of BDAT
//! (RFC 3030: counted octets, CRLF to LF, the same bare CR and LF rule); the hop counter (mail
//! loops), [`Incoming`] (one message's data streamed to the queue program, and the verdict at
//! its end), and the reply for the queue program's verdict.
#![forbid(unsafe_code)]

use crate::base::fail::{qq, Enhanced, Error, Outcome, Status};
use crate::mail::envelope::Envelope;
use crate::mail::submit::Submission;

/// `Received:` plus `Delivered-To:` header lines at which a message is taken to loop.
pub const MAX_HOPS: usize = 100;

/// The state machine of message data after `354`: end only at `<CRLF>.<CRLF>`, remove the
/// stuffed dot, turn CRLF into LF, and note any CR or LF that is not part of a CRLF pair
/// (the data is then still read to its real end, but never queued: SMTP smuggling).
pub struct DataParser {
    state: DataState,
    /// A bare CR or bare LF was seen.
    pub bare_line_end: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DataState {
    /// After CRLF (or at the start): a dot here is special.
    LineStart,
    /// A dot at the start of a line.
    Dot,
    /// A dot and CR at the start of a line: LF ends the data.
    DotCr,
    /// Inside a line.
    Middle,
    /// CR inside a line: LF ends the line.
    Cr,
}

impl Default for DataParser {
    fn default() -> Self {
        DataParser { state: DataState::LineStart, bare_line_end: false }
    }
}

impl DataParser {
    /// Consume `input`, appending message bytes (LF line ends) to `out`. Returns how many
    /// bytes were consumed and whether the end of data was reached; without the end, all of
    /// `input` is consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            if self.state == DataState::Middle {
                i += self.line_text(&input[i..], out);
                continue;
            }
            match self.step(input[i], out) {
                Step::Next => i += 1,
                Step::Again => {}
                Step::End => return (i + 1, true),
            }
        }
        (i, false)
    }

    /// Inside a line: copy up to the next CR or LF; returns the bytes consumed.
    fn line_text(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let Some(k) = memchr::memchr2(b'\r', b'\n', input) else {
            out.extend_from_slice(input);
            return input.len();
        };
        out.extend_from_slice(&input[..k]);
        if input[k] == b'\r' {
            self.state = DataState::Cr;
        } else {
            // A bare LF ends nothing: the next byte is not at a line start.
            self.bare_line_end = true;
            out.push(b'\n');
        }
        k + 1
    }

    /// One byte in any state but [`DataState::Middle`].
    fn step(&mut self, byte: u8, out: &mut Vec<u8>) -> Step {
        match self.state {
            DataState::LineStart | DataState::Dot => {
                self.state = match (self.state, byte) {
                    (DataState::LineStart, b'.') => DataState::Dot,
                    (DataState::LineStart, b'\r') => DataState::Cr,
                    (DataState::Dot, b'\r') => DataState::DotCr,
                    (_, b'\n') => {
                        self.bare_line_end = true;
                        out.push(b'\n');
                        DataState::Middle
                    }
                    _ => {
                        out.push(byte);
                        DataState::Middle
                    }
                };
                Step::Next
            }
            DataState::DotCr | DataState::Cr if byte == b'\n' => {
                if self.state == DataState::DotCr {
                    self.state = DataState::LineStart;
                    return Step::End;
                }
                out.push(b'\n');
                self.state = DataState::LineStart;
                Step::Next
            }
            // ".\r" or "\r" and not LF: a bare CR; the byte is looked at again as line text.
            DataState::DotCr | DataState::Cr => {
                self.bare_line_end = true;
                out.push(b'\r');
                self.state = DataState::Middle;
                Step::Again
            }
            // Line text is [`DataParser::line_text`]'s.
            DataState::Middle => Step::Again,
        }
    }
}

/// What [`DataParser::step`] did with a byte.
enum Step {
    /// Consumed it.
    Next,
    /// Changed state only: the byte is to be looked at again.
    Again,
    /// Consumed it, and it ended the data.
    End,
}

/// BDAT's chunks (RFC 3030): octets counted by the client, with no dot-stuffing and no end
/// marker. CRLF becomes LF as the queue stores it, across chunk boundaries too; a CR not
/// followed by LF, or an LF not after CR, is a bare line end, refused as in DATA.
#[derive(Default)]
pub struct ChunkParser {
    /// The last octet so far was a CR whose LF may start the next chunk.
    cr: bool,
    /// A bare CR or bare LF was seen.
    pub bare_line_end: bool,
}

impl ChunkParser {
    /// Consume all of `input`, appending message bytes (LF line ends) to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.cr {
                self.cr = false;
                if input[0] == b'\n' {
                    out.push(b'\n');
                    input = &input[1..];
                    continue;
                }
                self.bare_line_end = true;
            }
            let Some(k) = memchr::memchr2(b'\r', b'\n', input) else {
                out.extend_from_slice(input);
                return;
            };
            out.extend_from_slice(&input[..k]);
            if input[k] == b'\r' {
                self.cr = true;
            } else {
                self.bare_line_end = true;
                out.push(b'\n');
            }
            input = &input[k + 1..];
        }
    }

    /// The message ended (BDAT LAST): a CR still waiting for its LF was a bare one.
    pub fn end(&mut self) {
        if self.cr {
            self.cr = false;
            self.bare_line_end = true;
        }
    }
}

/// Counts `Received:` and `Delivered-To:` lines in the header of a message (LF line ends),
/// which ends at the first empty line, and notes whether it has `Date:` and `Message-ID:`.
#[derive(Default)]
pub struct HopCounter {
    done: bool,
    in_line: bool,
    prefix: Vec<u8>,
    /// The count so far.
    pub hops: usize,
    /// A `Date:` field was seen.
    pub date: bool,
    /// A `Message-ID:` field was seen.
    pub message_id: bool,
}

impl HopCounter {
    /// Look at the next bytes of the message: a line at a time (memchr), and only the first
    /// 13 bytes of each line are kept, so the body after the header costs nothing. Returns
    /// where in `bytes` the empty line that ends the header starts, when it is in them.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut rest = bytes;
        while !self.done && !rest.is_empty() {
            let offset = bytes.len() - rest.len();
            let (part, ends) = match memchr::memchr(b'\n', rest) {
                Some(k) => (&rest[..k], true),
                None => (rest, false),
            };
            rest = if ends { &rest[part.len() + 1..] } else { &[] };
            if ends && part.is_empty() && !self.in_line {
                self.done = true;
                return Some(offset);
            }
            let room = 13usize.saturating_sub(self.prefix.len());
            if room > 0 && !part.is_empty() {
                let before = self.prefix.len();
                self.prefix.extend_from_slice(&part[..part.len().min(room)]);
                // A name counts once, when the line's prefix first reaches it.
                let reached = |name: &[u8]| {
                    before < name.len()
                        && self.prefix.len() >= name.len()
                        && self.prefix[..name.len()].eq_ignore_ascii_case(name)
                };
                for name in [&b"received:"[..], b"delivered-to:"] {
                    if reached(name) {
                        self.hops += 1;
                    }
                }
                self.date |= reached(b"date:");
                self.message_id |= reached(b"message-id:");
            }
            if ends {
                self.in_line = false;
                self.prefix.clear();
            } else if !part.is_empty() {
                self.in_line = true;
            }
        }
        None
    }
}

/// One message's data as it arrives after `354`: unstuffed, counted, and streamed to the queue
/// program until a limit is passed (databytes, a bare CR or LF, too many hops); the rest is
/// still read to the end of data, but the message is then refused.
pub struct Incoming {
    parser: Parser,
    hops: HopCounter,
    /// The message bytes of the last input.
    chunk: Vec<u8>,
    /// The size as the client sent it (each line end counted as CRLF).
    size: u64,
    /// Bytes given to the queue program, our Received line included.
    written: u64,
    /// control/databytes; 0 for no limit.
    databytes: u64,
    /// None once the message is refused: the queue program is fed no more and gets no
    /// envelope. Closing both pipes before the first envelope byte is the qmail-queue way to
    /// abandon a message, which quill-queue takes quietly (doc/quill-queue.8); quill-queued is
    /// sent an abandon frame instead (doc/quill-queued.8).
    submission: Option<Submission>,
    /// For a local or authenticated sender: the `Date:` and `Message-ID:` lines to add at the
    /// end of the header when it has none ([`Incoming::complete_header`]).
    complete: Option<(Vec<u8>, Vec<u8>)>,
    /// The last byte given to the queue program.
    last: u8,
    /// Removes `Authentication-Results:` fields that claim our authserv-id (RFC 8601 §5).
    forgeries: Option<crate::mail::authres::ForgeryFilter>,
    /// The message as the client sent it, for DKIM and DMARC ([`Incoming::check_dkim`]).
    dkim: Option<DkimInput>,
    /// A refusal decided at the end of the data ([`Incoming::refuse`]): code, text, detail.
    refusal: Option<(u16, String, String)>,
}

/// What DKIM verification and DMARC need of a message as it streams by: its header block
/// (bounded by `dkim::MAX_HEADER`, plus one chunk), then its body, hashed and not kept.
struct DkimInput {
    header: Vec<u8>,
    verifier: Option<crate::mail::dkimverify::Verifier>,
    now: u64,
}

impl DkimInput {
    fn feed(&mut self, chunk: &[u8]) {
        if let Some(verifier) = self.verifier.as_mut() {
            verifier.feed(chunk);
            return;
        }
        let from = self.header.len().saturating_sub(1);
        self.header.extend_from_slice(chunk);
        let end = if self.header.first() == Some(&b'\n') {
            Some(1)
        } else {
            memchr::memmem::find(&self.header[from..], b"\n\n").map(|i| from + i + 2)
        };
        if let Some(end) = end {
            // Bytes after the empty line are the body's start; the verifier takes them.
            self.verifier = Some(crate::mail::dkimverify::Verifier::new(&self.header, self.now));
            self.header.truncate(end);
        } else if self.header.len() > crate::mail::dkim::MAX_HEADER {
            // Too big to parse: a signed message's result is permerror.
            self.verifier = Some(crate::mail::dkimverify::Verifier::new(&self.header, self.now));
        }
    }

    /// The header block and the verifier, fed all of the message.
    fn finish(self) -> (Vec<u8>, crate::mail::dkimverify::Verifier) {
        let verifier = match self.verifier {
            Some(verifier) => verifier,
            None => crate::mail::dkimverify::Verifier::new(&self.header, self.now),
        };
        (self.header, verifier)
    }
}

/// How the client's bytes become message bytes: DATA's end-of-data machine, or BDAT's chunks.
enum Parser {
    Data(DataParser),
    Chunks(ChunkParser),
}

impl Parser {
    fn bare_line_end(&self) -> bool {
        match self {
            Parser::Data(p) => p.bare_line_end,
            Parser::Chunks(p) => p.bare_line_end,
        }
    }
}

/// How a message's data ended: the reply, and what the `message` log line says.
#[derive(Debug)]
pub struct Ending {
    pub code: u16,
    pub text: String,
    /// The queue program's process id, when it queued the message.
    pub queued: Option<u32>,
    /// Bytes given to the queue program.
    pub written: u64,
    /// Why it was refused, for the log line (empty when the queue program decided).
    pub detail: String,
}

impl Incoming {
    /// A message for `submission` (a queue program just started), which gets our `received`
    /// line first; `databytes` is the size limit (0 for none).
    pub fn new(submission: Submission, received: &[u8], databytes: u64) -> Incoming {
        Incoming::with(Parser::Data(DataParser::default()), submission, received, databytes)
    }

    /// The same for a message sent in BDAT chunks ([`Incoming::feed_chunk`]).
    pub fn chunked(submission: Submission, received: &[u8], databytes: u64) -> Incoming {
        Incoming::with(Parser::Chunks(ChunkParser::default()), submission, received, databytes)
    }

    fn with(parser: Parser, mut submission: Submission, received: &[u8], databytes: u64) -> Incoming {
        submission.write(received);
        Incoming {
            parser,
            hops: HopCounter::default(),
            chunk: Vec::new(),
            size: 0,
            written: received.len() as u64,
            databytes,
            submission: Some(submission),
            complete: None,
            last: b'\n',
            forgeries: None,
            dkim: None,
            refusal: None,
        }
    }

    /// Add `date` and `message_id` (whole lines) at the end of the header when it lacks them,
    /// as sendmail does for a local user's message (issue 12: mail from local or authenticated
    /// senders gets them; mail relayed in from strangers is left as it came).
    pub fn complete_header(&mut self, date: Vec<u8>, message_id: Vec<u8>) {
        self.complete = Some((date, message_id));
    }

    /// Remove from the header the `Authentication-Results:` fields that claim `authserv_id`
    /// (ours: only this server's own header may).
    pub fn remove_forged_results(&mut self, authserv_id: &[u8]) {
        self.forgeries = Some(crate::mail::authres::ForgeryFilter::new(authserv_id));
    }

    /// Gather the message as the client sent it (forged Authentication-Results fields still
    /// in, before our own lines) for DKIM verification and DMARC; `now` for `x=`.
    pub fn check_dkim(&mut self, now: u64) {
        self.dkim = Some(DkimInput { header: Vec::new(), verifier: None, now });
    }

    /// At the end of the data, for a message not refused: its header block and the DKIM
    /// verifier fed all of it (None when not asked).
    pub fn take_dkim(&mut self) -> Option<(Vec<u8>, crate::mail::dkimverify::Verifier)> {
        self.dkim.take().map(DkimInput::finish)
    }

    /// Whether fields can still go at the top of the message ([`Submission::takes_top_fields`]).
    pub fn takes_top_fields(&self) -> bool {
        self.submission.as_ref().is_some_and(Submission::takes_top_fields)
    }

    /// Fields for the top of the message, known at the end of the data; false when they
    /// cannot go there ([`Submission::add_top_fields`]).
    pub fn add_top_fields(&mut self, fields: &[u8]) -> bool {
        self.submission.as_mut().is_some_and(|s| s.add_top_fields(fields))
    }

    /// Refuse the message at the end of the data: nothing is queued, the reply is `code`
    /// `text`, the log line ends in `detail`.
    pub fn refuse(&mut self, code: u16, text: &str, detail: String) {
        self.submission = None;
        self.refusal = Some((code, text.to_string(), detail));
    }

    /// How many forged `Authentication-Results:` fields were removed.
    pub fn forged_results(&self) -> usize {
        self.forgeries.as_ref().map_or(0, |f| f.removed)
    }

    /// The lines of [`Incoming::complete_header`] the header lacks.
    fn missing(&mut self) -> Vec<u8> {
        let Some((date, message_id)) = self.complete.take() else { return Vec::new() };
        let mut lines = Vec::new();
        if !self.hops.date {
            lines.extend_from_slice(&date);
        }
        if !self.hops.message_id {
            lines.extend_from_slice(&message_id);
        }
        lines
    }

    fn too_big(&self) -> bool {
        self.databytes > 0 && self.size > self.databytes
    }

    /// Whether the message is already refused, whatever comes after.
    pub fn refused(&self) -> bool {
        self.too_big() || self.parser.bare_line_end() || self.hops.hops >= MAX_HOPS
    }

    /// Take what the client sent; returns how many bytes of `input` were used and whether the
    /// data ended (without the end, all of it is used).
    pub fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        self.chunk.clear();
        let (used, done) = match &mut self.parser {
            Parser::Data(parser) => parser.feed(input, &mut self.chunk),
            // A BDAT message never comes here; its bytes go to feed_chunk.
            Parser::Chunks(_) => (input.len(), false),
        };
        self.take_chunk();
        (used, done)
    }

    /// Take octets of a BDAT chunk (all of `input`); `last` after the final octet of the
    /// message (BDAT LAST).
    pub fn feed_chunk(&mut self, input: &[u8], last: bool) {
        self.chunk.clear();
        if let Parser::Chunks(parser) = &mut self.parser {
            parser.feed(input, &mut self.chunk);
            if last {
                parser.end();
            }
        }
        self.take_chunk();
    }

    /// Count, check and pass on the message bytes in `chunk`.
    fn take_chunk(&mut self) {
        self.size += self.chunk.len() as u64 + memchr::memchr_iter(b'\n', &self.chunk).count() as u64;
        let too_big = self.too_big();
        if let Some(dkim) = self.dkim.as_mut().filter(|_| !too_big) {
            dkim.feed(&self.chunk);
        }
        if let Some(filter) = self.forgeries.as_mut().filter(|f| !f.passing()) {
            let mut kept = Vec::with_capacity(self.chunk.len());
            filter.feed(&self.chunk, &mut kept);
            self.chunk = kept;
        }
        if let Some(end) = self.hops.feed(&self.chunk) {
            let missing = self.missing();
            self.chunk.splice(end..end, missing);
        }
        if self.refused() {
            self.submission = None;
        } else if let Some(submission) = self.submission.as_mut() {
            submission.write(&self.chunk);
            self.written += self.chunk.len() as u64;
            self.last = self.chunk.last().copied().unwrap_or(self.last);
        }
    }

    /// The verdict at the end of data: refused here, or the queue program's for `envelope`.
    /// `id` is the one in our Received line; `dsn` goes to the queue with the envelope.
    pub fn finish(mut self, envelope: &Envelope, dsn: &crate::mail::dsn::Params, id: &str) -> Ending {
        let refused = |code: u16, text: &str, detail: String| (code, text.to_string(), None, detail);
        let (code, text, queued, detail) = if let Some((code, text, detail)) = self.refusal.take() {
            (code, text, None, detail)
        } else if self.parser.bare_line_end() {
            let text = "5.6.0 message refused: bare CR or LF in the data; lines must end with CRLF";
            refused(550, text, " (refused: SMTP smuggling attempt or broken client)".to_string())
        } else if self.too_big() {
            let detail = format!(" (refused: size {} over databytes {})", self.size, self.databytes);
            refused(552, "5.3.4 message size exceeds fixed maximum message size", detail)
        } else if self.hops.hops >= MAX_HOPS {
            let detail = format!(" (refused: {} hops)", self.hops.hops);
            refused(554, "5.4.6 too many hops, this message is looping", detail)
        } else {
            // A message that is all header (no empty line): a field the forgery filter still
            // holds is decided, and the missing lines come at its end.
            let mut held = Vec::new();
            if let Some(filter) = self.forgeries.as_mut() {
                filter.finish(&mut held);
            }
            if let Some(submission) = self.submission.as_mut().filter(|_| !held.is_empty()) {
                submission.write(&held);
                self.written += held.len() as u64;
                self.last = held.last().copied().unwrap_or(self.last);
            }
            let mut missing = self.missing();
            if let Some(submission) = self.submission.as_mut().filter(|_| !missing.is_empty()) {
                if self.last != b'\n' {
                    missing.insert(0, b'\n');
                }
                submission.write(&missing);
                self.written += missing.len() as u64;
            }
            match self.submission.take().map(|s| s.finish_with_dsn(envelope, dsn)) {
                Some(Ok(accepted)) => {
                    (250, format!("2.0.0 ok {id} qp {}", accepted.pid), Some(accepted.pid), String::new())
                }
                Some(Err(e)) => {
                    let (code, text) = queue_reply(&e);
                    (code, text, None, String::new())
                }
                None => refused(451, "4.3.0 internal error", String::new()),
            }
        };
        Ending { code, text, queued, written: self.written, detail }
    }
}

/// The reply for a failure of the queue program: permanent → 554, a full disk → 452 4.3.1,
/// other temporary → 451. The status is the one the queue program's words end in (`… (#4.3.0)`,
/// from quill-queue's table or a filter's own text on fd 6), its class the reply's; words
/// without one get x.3.0.
pub fn queue_reply(error: &Error) -> (u16, String) {
    let outcome = if error.outcome == Outcome::Permanent { Outcome::Permanent } else { Outcome::Temporary };
    let mut status = Status::parse(outcome, &error.message);
    let code = if outcome == Outcome::Permanent {
        554
    } else if error.code == qq::WRITE_ERROR {
        status.code = Enhanced::SYSTEM_FULL;
        452
    } else {
        451
    };
    (code, reply_text(&status))
}

/// A status as the text of an SMTP reply (RFC 2034): the code first, then the words.
pub fn reply_text(status: &Status) -> String {
    format!("{} {}", status.code_text(), status.text.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> (Vec<u8>, usize, bool, bool) {
        let mut parser = DataParser::default();
        let mut out = Vec::new();
        let (used, done) = parser.feed(input, &mut out);
        (out, used, done, parser.bare_line_end)
    }

    #[test]
    fn data_end_and_unstuffing() {
        assert_eq!(parse(b"a\r\n..b\r\n.\r\nQUIT\r\n"), (b"a\n.b\n".to_vec(), 11, true, false));
        assert_eq!(parse(b".\r\n"), (b"".to_vec(), 3, true, false));
        assert_eq!(parse(b"a\r\n.x\r\n"), (b"a\nx\n".to_vec(), 7, false, false));
    }

    #[test]
    fn data_byte_by_byte() {
        let input = b"Subject: x\r\n\r\n..\r\nline\r\n.\r\n";
        let mut parser = DataParser::default();
        let mut out = Vec::new();
        let mut done_at = None;
        for (i, b) in input.iter().enumerate() {
            let (used, done) = parser.feed(std::slice::from_ref(b), &mut out);
            assert_eq!(used, 1);
            if done {
                done_at = Some(i);
            }
        }
        assert_eq!(done_at, Some(input.len() - 1));
        assert_eq!(out, b"Subject: x\n\n.\nline\n");
    }

    #[test]
    fn smuggling_never_ends_data() {
        for input in [&b"a\n.\r\n"[..], b"a\r\n.\n", b"a\r.\r\n", b"a\r\n.\r\r\n", b"a\n.\n"] {
            let (_, _, done, bare) = parse(input);
            assert!(!done, "{input:?} ended the data");
            assert!(bare, "{input:?} not flagged");
        }
        let (_, used, done, bare) = parse(b"a\n.\r\nMAIL FROM:<x@y>\r\n\r\n.\r\n");
        assert!(done && bare);
        assert_eq!(used, 27);
    }

    #[test]
    fn hop_counting() {
        let mut hops = HopCounter::default();
        hops.feed(b"Received: a\nDELIVERED-TO: b\nX: y\n Received: folded\n");
        hops.feed(b"recei");
        hops.feed(b"ved: c\n\nReceived: in body\n");
        assert_eq!(hops.hops, 3);
    }

    /// The byte-at-a-time counter this one replaced: the reference for any split of the input.
    fn hops_bytewise(input: &[u8]) -> usize {
        let (mut hops, mut in_line, mut prefix) = (0, false, Vec::new());
        for &byte in input {
            if byte == b'\n' {
                if !in_line {
                    break;
                }
                in_line = false;
                prefix.clear();
                continue;
            }
            in_line = true;
            if prefix.len() < 13 {
                prefix.push(byte);
                if prefix.eq_ignore_ascii_case(b"received:") || prefix.eq_ignore_ascii_case(b"delivered-to:") {
                    hops += 1;
                }
            }
        }
        hops
    }

    #[test]
    fn hop_counting_matches_the_bytewise_count_for_every_split() {
        let inputs: [&[u8]; 5] = [
            b"Received: a\nDELIVERED-TO: b\nX: y\n Received: folded\nreceived:\n\nReceived: body\n",
            b"Delivered-To:x\nDelivered-To\nReceived:\r\nreceived :\n\n",
            b"\nReceived: after an empty first line\n",
            b"Received: no end",
            b"X-Very-Long-Header-Name: Received: inside\nDelivered-To: y\n\n",
        ];
        for input in inputs {
            let want = hops_bytewise(input);
            for a in 0..=input.len() {
                for b in a..=input.len() {
                    let mut hops = HopCounter::default();
                    hops.feed(&input[..a]);
                    hops.feed(&input[a..b]);
                    hops.feed(&input[b..]);
                    assert_eq!(hops.hops, want, "{input:?} split at {a} and {b}");
                }
            }
        }
    }

    #[test]
    fn dkim_input_finds_the_header_block_however_split() {
        for message in [&b"From: a@b.example\nSubject: x\n\nbody\n\nmore\n"[..], b"\nbody\n", b"From: a@b.example\n"] {
            let whole = {
                let mut input = DkimInput { header: Vec::new(), verifier: None, now: 0 };
                input.feed(message);
                input.finish().0
            };
            let end = memchr::memmem::find(message, b"\n\n")
                .map_or(if message[0] == b'\n' { 1 } else { message.len() }, |i| i + 2);
            assert_eq!(whole, &message[..end]);
            for split in 0..message.len() {
                let mut input = DkimInput { header: Vec::new(), verifier: None, now: 0 };
                input.feed(&message[..split]);
                input.feed(&message[split..]);
                assert_eq!(input.finish().0, whole, "split at {split}");
            }
        }
    }

    #[test]
    fn queue_replies() {
        let full = Error::queue(qq::WRITE_ERROR, crate::base::fail::qq_text(qq::WRITE_ERROR));
        assert_eq!(queue_reply(&full), (452, "4.3.1 qq write error or disk full".to_string()));
        let perm = Error::queue(31, crate::base::fail::qq_text(31));
        assert_eq!(queue_reply(&perm), (554, "5.3.0 mail server permanently rejected message".to_string()));
        let long = Error::queue(11, crate::base::fail::qq_text(11));
        assert_eq!(queue_reply(&long).0, 554);
        assert!(queue_reply(&long).1.starts_with("5.1.3 "));
        let custom = Error { outcome: Outcome::Permanent, code: 82, message: "spam (#5.7.1)".to_string() };
        assert_eq!(queue_reply(&custom), (554, "5.7.1 spam".to_string()));
        let temp = Error::queue(81, crate::base::fail::qq_text(81));
        assert_eq!(queue_reply(&temp), (451, "4.3.0 qq internal bug".to_string()));
        let unrun = Error::queue(qq::CANNOT_EXEC, "unable to run /x/quill-queue: gone");
        assert_eq!(queue_reply(&unrun), (451, "4.3.0 unable to run /x/quill-queue: gone".to_string()));
        let timeout = Error::queue(72, crate::base::fail::qq_text(72));
        assert_eq!(queue_reply(&timeout), (451, "4.4.1 connection to mail server timed out".to_string()));
        // A filter's code of the wrong class keeps its subject and detail, in the reply's class.
        let mixed = Error { outcome: Outcome::Temporary, code: 82, message: " greylisted (#5.7.1)".to_string() };
        assert_eq!(queue_reply(&mixed), (451, "4.7.1 greylisted".to_string()));
    }
}
