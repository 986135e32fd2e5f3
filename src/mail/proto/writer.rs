//! The queue writer's protocol (doc/quill-queued.8, doc/INTERNALS.md "quill-smtpd ↔
//! quill-queued"): quill-smtpd hands messages to the long-lived quill-queued over the unix
//! socket `queue/writer/socket`, instead of running quill-queue for each.
//!
//! On connecting, the client reads one greeting line: `+\n` (a slot is free) or `-\n` (the
//! writer is at its connection cap; the client then runs quill-queue). A session then carries
//! any number of messages, one after the other. Each message is a sequence of frames, a tag
//! byte and a 4-byte big-endian length, then that many bytes:
//! - `M` message bytes, 1 to [`MAX_CHUNK`] of them, as many frames as the message needs (so
//!   the client streams what it receives and never needs the size up front);
//! - optionally `H` and header fields, 1 to [`MAX_FIELDS`] bytes of whole LF-ended fields,
//!   at most one per message, after the last `M`: quill-queued puts them at the top of the
//!   message, under its own Received line (quill-smtpd's Authentication-Results field, whose
//!   DKIM and DMARC results are known only at the end of the data);
//! - then `E` and the envelope in qmail-queue's encoding (`F` sender NUL, `T` recipient NUL …,
//!   NUL), optionally followed by the message's DSN parameters (RFC 3461) as `d`, the text of
//!   [`crate::mail::dsn::Params::encode`], NUL; at most [`MAX_ENVELOPE`] bytes: the message is complete, the writer commits it and
//!   answers one line, `K ID PID\n` (queued as ID by the writer with process id PID) or
//!   `Q CODE\n` (not queued; CODE is the qmail-queue exit code quill-queue would have given);
//! - or `A` with length 0: the client abandons the message; nothing is queued, nothing is
//!   answered (qmail-queue's closing of the envelope before its first byte).
//!
//! A session ends when the client closes between messages (a close inside a message is an
//! abandon). After any `Q` reply the writer closes the session: the framing cannot be trusted
//! any more.
#![forbid(unsafe_code)]

/// The greeting of a writer with a free slot.
pub const GREETING: &[u8] = b"+\n";
/// The greeting of a writer at its connection cap.
pub const BUSY: &[u8] = b"-\n";
/// The largest `M` frame's payload.
pub const MAX_CHUNK: usize = 64 * 1024;
/// The largest envelope: quill-queue's own bound on what it reads (1003-byte addresses, 10000
/// recipients), and room for the DSN record.
pub const MAX_ENVELOPE: usize =
    (crate::mail::address::MAX_ADDRESS + 2) * (crate::mail::envelope::MAX_RECIPIENTS + 1) + 1 + MAX_DSN;
/// The largest DSN record: RET and ENVID, then NOTIFY and ORCPT per recipient.
pub const MAX_DSN: usize = (crate::mail::dsn::MAX_ORCPT + 32) * (crate::mail::envelope::MAX_RECIPIENTS + 1);
/// The largest `H` frame's payload.
pub const MAX_FIELDS: usize = 16 * 1024;
/// The longest reply line, newline included.
pub const MAX_REPLY: usize = 64;

/// A frame's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// Message bytes.
    Message,
    /// The envelope: the message is complete.
    Envelope,
    /// The message is abandoned.
    Abandon,
    /// The envelope, and the message is from a local or authenticated sender: sign it with
    /// DKIM where its From: domain has a key (src/mail/dkim.rs).
    SignedEnvelope,
    /// Header fields to put at the top of the message.
    Fields,
}

impl Tag {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Tag::Message => b'M',
            Tag::Envelope => b'E',
            Tag::Abandon => b'A',
            Tag::SignedEnvelope => b'S',
            Tag::Fields => b'H',
        }
    }

    /// The tag for a byte, None for any other.
    pub fn from_byte(byte: u8) -> Option<Tag> {
        match byte {
            b'M' => Some(Tag::Message),
            b'E' => Some(Tag::Envelope),
            b'A' => Some(Tag::Abandon),
            b'S' => Some(Tag::SignedEnvelope),
            b'H' => Some(Tag::Fields),
            _ => None,
        }
    }
}

/// Why a frame head is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A tag byte that is none of `M`, `H`, `E`, `S`, `A`.
    UnknownTag(u8),
    /// A length beyond the tag's bound (an empty `M` or `H` included, and an `A` with any payload).
    BadLength(Tag, u32),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::UnknownTag(byte) => write!(f, "unknown frame tag {byte:#04x}"),
            FrameError::BadLength(tag, length) => {
                write!(f, "frame {} with length {length} out of bounds", char::from(tag.byte()))
            }
        }
    }
}

/// The five bytes in front of a frame's payload.
pub fn frame_head(tag: Tag, length: u32) -> [u8; 5] {
    let l = length.to_be_bytes();
    [tag.byte(), l[0], l[1], l[2], l[3]]
}

/// Read a frame head, checking the length against the tag's bound before anything is
/// allocated for it.
pub fn decode_head(head: [u8; 5]) -> Result<(Tag, usize), FrameError> {
    let tag = Tag::from_byte(head[0]).ok_or(FrameError::UnknownTag(head[0]))?;
    let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let fits = match tag {
        Tag::Message => (1..=MAX_CHUNK as u64).contains(&u64::from(length)),
        Tag::Envelope | Tag::SignedEnvelope => u64::from(length) <= MAX_ENVELOPE as u64,
        Tag::Abandon => length == 0,
        Tag::Fields => (1..=MAX_FIELDS as u64).contains(&u64::from(length)),
    };
    if !fits {
        return Err(FrameError::BadLength(tag, length));
    }
    Ok((tag, length as usize))
}

/// Whether an `H` payload is whole header fields (RFC 5322 §2.2) with LF line ends: each line
/// a `name:` (printable ASCII, no space) or a continuation starting with a space or a tab, no
/// empty line, no NUL or CR, the last line ended.
pub fn fields_well_formed(fields: &[u8]) -> bool {
    if !fields.ends_with(b"\n") || fields.iter().any(|&b| b == 0 || b == b'\r') {
        return false;
    }
    fields[..fields.len() - 1].split(|&b| b == b'\n').enumerate().all(|(i, line)| {
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return i > 0 && line.iter().any(|b| !b.is_ascii_whitespace());
        }
        match memchr::memchr(b':', line) {
            Some(colon) => colon > 0 && line[..colon].iter().all(|&b| (33..=126).contains(&b)),
            None => false,
        }
    })
}

/// The writer's answer to a complete message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Durable in `queue/todo/` under this id, by the writer with this process id.
    Queued { id: u64, pid: u32 },
    /// Not queued, with quill-queue's exit code for the reason (never 0).
    Failed(u8),
}

impl Reply {
    /// The reply line.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Queued { id, pid } => format!("K {id} {pid}\n").into_bytes(),
            Reply::Failed(code) => format!("Q {code}\n").into_bytes(),
        }
    }

    /// Parse a reply line (with or without its newline); None for anything else, which the
    /// client takes as a broken writer.
    pub fn decode(line: &[u8]) -> Option<Reply> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let text = std::str::from_utf8(line).ok()?;
        let mut words = text.split(' ');
        let number = |word: Option<&str>| -> Option<u64> {
            let word = word?;
            if word.is_empty() || word.len() > 20 || !word.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            word.parse().ok()
        };
        let reply = match words.next()? {
            "K" => Reply::Queued { id: number(words.next())?, pid: u32::try_from(number(words.next())?).ok()? },
            "Q" => match u8::try_from(number(words.next())?).ok()? {
                0 => return None,
                code => Reply::Failed(code),
            },
            _ => return None,
        };
        if words.next().is_some() {
            return None;
        }
        Some(reply)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fields_frames() {
        assert_eq!(decode_head(frame_head(Tag::Fields, MAX_FIELDS as u32)).unwrap(), (Tag::Fields, MAX_FIELDS));
        assert!(decode_head(frame_head(Tag::Fields, 0)).is_err());
        assert!(decode_head(frame_head(Tag::Fields, MAX_FIELDS as u32 + 1)).is_err());
        assert!(fields_well_formed(b"Authentication-Results: mx; spf=pass\n\tdkim=pass\n"));
        assert!(fields_well_formed(b"A: 1\nB: 2\n"));
        for bad in [&b"A: 1"[..], b"A: 1\n\n", b" A: 1\n", b"A 1\n", b": 1\n", b"A: 1\r\n", b"A: 1\n \n", b"\n"] {
            assert!(!fields_well_formed(bad), "{bad:?}");
        }
    }

    #[test]
    fn frame_heads_round_trip_and_bounds() {
        for (tag, length) in
            [(Tag::Message, 1), (Tag::Message, MAX_CHUNK as u32), (Tag::Envelope, 0), (Tag::Abandon, 0)]
        {
            assert_eq!(decode_head(frame_head(tag, length)).unwrap(), (tag, length as usize));
        }
        assert_eq!(decode_head(*b"X\0\0\0\x01"), Err(FrameError::UnknownTag(b'X')));
        assert!(decode_head(frame_head(Tag::Message, 0)).is_err());
        assert!(decode_head(frame_head(Tag::Message, MAX_CHUNK as u32 + 1)).is_err());
        assert!(decode_head(frame_head(Tag::Envelope, MAX_ENVELOPE as u32 + 1)).is_err());
        assert!(decode_head(frame_head(Tag::Abandon, 1)).is_err());
        assert!(decode_head(frame_head(Tag::Message, u32::MAX)).is_err());
    }

    #[test]
    fn replies_round_trip() {
        for reply in [Reply::Queued { id: 123456, pid: 77 }, Reply::Failed(53), Reply::Failed(91)] {
            assert_eq!(Reply::decode(&reply.encode()), Some(reply));
        }
        for bad in [&b"K 1\n"[..], b"Q 0\n", b"Q 256\n", b"K 1 2 3\n", b"Z 1\n", b"K -1 2\n", b"", b"K 1 99999999999\n"]
        {
            assert_eq!(Reply::decode(bad), None, "{bad:?}");
        }
    }
}
