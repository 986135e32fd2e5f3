//! The clean protocol (doc/INTERNALS.md "send ↔ clean protocol"): quill-send asks quill-clean
//! for queue operations on fd 7 and reads the answers on fd 8.
//!
//! A request is a line `VERB ID\n`, VERB one of `move`, `remove`, `hold`, `release`, `delete`
//! and ID a queue id (decimal digits only, so that no request can name anything outside the
//! queue's own directories). Each request is answered, in order, by `+ ID\n` (done) or
//! `! ID REASON\n` (not done, REASON in words).
#![forbid(unsafe_code)]

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
        let refused = |shown: String, reason: &str| Reply { id: shown, result: Err(reason.to_string()) };
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request's id (or what stood in its place, for a request that did not parse).
    pub id: String,
    /// Done, or the reason it was not.
    pub result: Result<(), String>,
}

impl Reply {
    /// The line on the pipe, with its newline: `+ ID` or `! ID REASON`.
    pub fn encode(&self) -> Vec<u8> {
        match &self.result {
            Ok(()) => format!("+ {}\n", self.id),
            Err(reason) => format!("! {} {reason}\n", self.id),
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
            "!" => Err(reason.to_string()),
            _ => return None,
        };
        Some(Reply { id: id.to_string(), result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(id: &str, reason: &str) -> Result<Request, Reply> {
        Err(Reply { id: id.into(), result: Err(reason.into()) })
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
            Reply { id: "42".into(), result: Err("unable to move: No such file or directory (os error 2)".into()) },
            Reply { id: "-".into(), result: Err("request too long".into()) },
            Reply { id: "9".into(), result: Err(String::new()) },
        ];
        for reply in replies {
            let line = reply.encode();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(Reply::decode(&line[..line.len() - 1]), Some(reply));
        }
        assert_eq!(Reply { id: "42".into(), result: Ok(()) }.encode(), b"+ 42\n");
        assert_eq!(Reply { id: "4".into(), result: Err("no".into()) }.encode(), b"! 4 no\n");
        assert_eq!(Reply::decode(b"! 4"), Some(Reply { id: "4".into(), result: Err(String::new()) }));
        assert_eq!(Reply::decode(b"? 4"), None);
        assert_eq!(Reply::decode(b""), None);
    }
}
