//! The clean protocol (doc/INTERNALS.md "send ↔ clean protocol"): quill-send asks quill-clean
//! for queue operations on fd 7 and reads the answers on fd 8.
//!
//! A request is a line `VERB ID\n`, VERB one of `move`, `remove`, `hold`, `release`, `delete`
//! and ID a queue id (decimal digits only, so that no request can name anything outside the
//! queue's own directories). Each request is answered, in order, by `+ ID\n` (done) or
//! `! ID REASON\n` (not done, REASON in words). A reason read back is a temporary error:
//! quill-send tries a request again later or logs it, never bounces for it.
//!
//! quill-clean reads its requests through [`RequestReader`], which keeps its memory bounded
//! however long a line is; quill-send reads the replies a line at a time with [`Reply::decode`].
#![forbid(unsafe_code)]

use crate::base::fail::Error;
use crate::mail::queuefile::valid_id;

/// The longest request line accepted (without its newline).
pub const MAX_LINE: usize = 100;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `todo/ID` → `mess/ID`.
    Move,
    /// Unlink `mess/ID` (a missing file is not an error).
    Remove,
    /// `todo/ID` or `mess/ID` → `hold/ID`.
    Hold,
    /// `hold/ID` → `todo/ID` (quill-send then picks it up again, with its info file).
    Release,
    /// Unlink `hold/ID`: the administrator deletes a held message.
    Delete,
}

impl Verb {
    /// The word on the pipe.
    pub fn word(self) -> &'static str {
        match self {
            Verb::Move => "move",
            Verb::Remove => "remove",
            Verb::Hold => "hold",
            Verb::Release => "release",
            Verb::Delete => "delete",
        }
    }

    fn from_word(word: &[u8]) -> Option<Verb> {
        [Verb::Move, Verb::Remove, Verb::Hold, Verb::Release, Verb::Delete]
            .into_iter()
            .find(|v| v.word().as_bytes() == word)
    }
}

/// A request: a verb and a checked queue id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub verb: Verb,
    /// The queue id, decimal digits only (as written: `007` stays `007`).
    pub id: String,
}

impl Request {
    /// The request for message `id`, as quill-send asks it.
    pub fn new(verb: Verb, id: u64) -> Request {
        Request { verb, id: id.to_string() }
    }

    /// The line on the pipe, with its newline.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}\n", self.verb.word(), self.id).into_bytes()
    }

    /// Parse one request line (without its newline). Err is the `!` reply to give: the text
    /// to echo as the ID (printable, at most 40 bytes, `-` if empty) and the reason.
    pub fn decode(line: &[u8]) -> Result<Request, Reply> {
        let refused = |shown: String, reason: &str| Reply { id: shown, result: Err(Error::permanent(reason)) };
        let shown = |bytes: &[u8]| -> String {
            let s: String =
                bytes.iter().take(40).map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect();
            if s.is_empty() {
                "-".to_string()
            } else {
                s
            }
        };
        if line.len() > MAX_LINE {
            return Err(refused("-".to_string(), "request too long"));
        }
        let (verb, id) = match memchr::memchr(b' ', line) {
            Some(space) => (&line[..space], &line[space + 1..]),
            None => (line, &b""[..]),
        };
        if !valid_id(id) {
            return Err(refused(shown(id), "invalid id"));
        }
        let id = String::from_utf8_lossy(id).into_owned();
        match Verb::from_word(verb) {
            Some(verb) => Ok(Request { verb, id }),
            None => Err(refused(id, "unknown request")),
        }
    }
}

/// The answer to one request.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The request's id (or what stood in its place, for a request that did not parse).
    pub id: String,
    /// Done, or why it was not (only the words travel: the outcome read back is temporary).
    pub result: Result<(), Error>,
}

/// Two replies are the same when they put the same line on the pipe.
impl PartialEq for Reply {
    fn eq(&self, other: &Reply) -> bool {
        self.id == other.id && self.reason() == other.reason()
    }
}

impl Eq for Reply {}

impl Reply {
    /// None when done, else the words of why not.
    pub fn reason(&self) -> Option<&str> {
        self.result.as_ref().err().map(|e| e.message.as_str())
    }

    /// The line on the pipe, with its newline: `+ ID` or `! ID REASON`.
    pub fn encode(&self) -> Vec<u8> {
        match self.reason() {
            None => format!("+ {}\n", self.id),
            Some(reason) => format!("! {} {reason}\n", self.id),
        }
        .into_bytes()
    }

    /// Parse one reply line (without its newline); None if it is neither `+` nor `!`.
    pub fn decode(line: &[u8]) -> Option<Reply> {
        let text = String::from_utf8_lossy(line);
        let mut parts = text.splitn(3, ' ');
        let (mark, id) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let reason = parts.next().unwrap_or("");
        let result = match mark {
            "+" => Ok(()),
            "!" => Err(Error::temporary(reason)),
            _ => return None,
        };
        Some(Reply { id: id.to_string(), result })
    }
}

/// Request lines from a pipe, read in chunks: complete lines come out as requests (or as the
/// refusal to reply with), and a line longer than [`MAX_LINE`] is skipped as it arrives, its
/// remains kept nowhere, and refused as "request too long" when its newline comes.
#[derive(Debug, Default)]
pub struct RequestReader {
    buffer: Vec<u8>,
    /// The line being read was too long: what is left of it is skipped.
    overlong: bool,
}

impl RequestReader {
    /// Bytes as read from the pipe.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete line, decoded; None until a newline has come.
    pub fn next_request(&mut self) -> Option<Result<Request, Reply>> {
        let Some(newline) = memchr::memchr(b'\n', &self.buffer) else {
            if self.buffer.len() > MAX_LINE {
                self.buffer.clear();
                self.overlong = true;
            }
            return None;
        };
        let line: Vec<u8> = self.buffer.drain(..=newline).collect();
        let line = &line[..line.len() - 1];
        if std::mem::take(&mut self.overlong) {
            return Some(Request::decode(&[b'x'; MAX_LINE + 1]));
        }
        Some(Request::decode(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::fail::Outcome;

    fn refused(id: &str, reason: &str) -> Result<Request, Reply> {
        Err(Reply { id: id.into(), result: Err(Error::permanent(reason)) })
    }

    #[test]
    fn the_reader_splits_lines_and_skips_an_overlong_one_without_keeping_it() {
        let mut reader = RequestReader::default();
        reader.push(b"move 1\nremo");
        assert_eq!(reader.next_request(), Some(Ok(Request::new(Verb::Move, 1))));
        assert_eq!(reader.next_request(), None);
        reader.push(b"ve 2\n");
        assert_eq!(reader.next_request(), Some(Ok(Request::new(Verb::Remove, 2))));
        for _ in 0..100 {
            reader.push(&[b'7'; 1000]);
            assert_eq!(reader.next_request(), None);
            assert!(reader.buffer.len() <= 1000 + MAX_LINE);
        }
        reader.push(b"7\nhold 3\n");
        assert_eq!(reader.next_request(), Some(refused("-", "request too long")));
        assert_eq!(reader.next_request(), Some(Ok(Request::new(Verb::Hold, 3))));
        assert_eq!(reader.next_request(), None);
    }

    #[test]
    fn requests_decode() {
        let ok = |verb, id: &str| Ok(Request { verb, id: id.into() });
        assert_eq!(Request::decode(b"move 123"), ok(Verb::Move, "123"));
        assert_eq!(Request::decode(b"remove 9"), ok(Verb::Remove, "9"));
        assert_eq!(Request::decode(b"hold 9"), ok(Verb::Hold, "9"));
        assert_eq!(Request::decode(b"release 9"), ok(Verb::Release, "9"));
        assert_eq!(Request::decode(b"delete 9"), ok(Verb::Delete, "9"));
        assert_eq!(Request::decode(b"move 007"), ok(Verb::Move, "007"));
        assert_eq!(Request::decode(b"move ../etc/passwd"), refused("../etc/passwd", "invalid id"));
        assert_eq!(Request::decode(b"remove 12a"), refused("12a", "invalid id"));
        assert_eq!(Request::decode(b"remove "), refused("-", "invalid id"));
        assert_eq!(Request::decode(b"remove 1 2"), refused("1?2", "invalid id"));
        assert_eq!(Request::decode(b"remove 123456789012345678901"), refused("123456789012345678901", "invalid id"));
        assert_eq!(Request::decode(b"frob 1"), refused("1", "unknown request"));
        assert_eq!(Request::decode(&[b'x'; 101]), refused("-", "request too long"));
    }

    #[test]
    fn requests_round_trip() {
        for verb in [Verb::Move, Verb::Remove, Verb::Hold, Verb::Release, Verb::Delete] {
            for id in [0, 7, 10_010_721, u64::MAX] {
                let request = Request::new(verb, id);
                let line = request.encode();
                assert_eq!(line, format!("{} {id}\n", verb.word()).into_bytes());
                assert_eq!(Request::decode(&line[..line.len() - 1]), Ok(request));
            }
        }
    }

    #[test]
    fn replies_round_trip() {
        let replies = [
            Reply { id: "42".into(), result: Ok(()) },
            Reply {
                id: "42".into(),
                result: Err(Error::temporary("unable to move: No such file or directory (os error 2)")),
            },
            Reply { id: "-".into(), result: Err(Error::permanent("request too long")) },
            Reply { id: "9".into(), result: Err(Error::temporary("")) },
        ];
        for reply in replies {
            let line = reply.encode();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(Reply::decode(&line[..line.len() - 1]), Some(reply));
        }
        assert_eq!(Reply { id: "42".into(), result: Ok(()) }.encode(), b"+ 42\n");
        assert_eq!(Reply { id: "4".into(), result: Err(Error::temporary("no")) }.encode(), b"! 4 no\n");
        assert_eq!(Reply::decode(b"! 4"), Some(Reply { id: "4".into(), result: Err(Error::temporary("")) }));
        assert!(Reply::decode(b"! 4 no").is_some_and(|r| r.result.is_err_and(|e| e.outcome == Outcome::Temporary)));
        assert_eq!(Reply::decode(b"? 4"), None);
        assert_eq!(Reply::decode(b""), None);
    }
}
