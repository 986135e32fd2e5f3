//! The message quill-remote sends: read once to learn its sizes and whether it needs 8BITMIME
//! or SMTPUTF8, then as many times as there are attempts, written in the DATA phase with
//! CRLF line ends and dot-stuffing.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// The message to send, readable as many times as there are attempts.
pub struct Message {
    body: Body,
    /// The size on the wire (every line end as CRLF), for SIZE.
    pub wire_size: u64,
    /// The size as stored (from the message start), for the deadline ([`crate::mail::proto::remote_report::total_time`]).
    pub stored_size: u64,
    /// Some byte is not ASCII (BODY=8BITMIME).
    pub eight_bit: bool,
    /// The header holds UTF-8 that is not ASCII (needs SMTPUTF8). Non-ASCII bytes that are
    /// not UTF-8 are legacy 8-bit headers, which servers have always taken as they are.
    pub utf8_header: bool,
}

enum Body {
    /// A file positioned at the message start (a queue file): offset of the message.
    File(File, u64),
    /// Input that cannot seek (a pipe), read into memory.
    Memory(Vec<u8>),
}

impl Message {
    /// Take the message from `file` (fd 0), starting at its current position.
    pub fn new(mut file: File) -> io::Result<Message> {
        let body = match file.stream_position() {
            Ok(start) => Body::File(file, start),
            Err(_) => {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                Body::Memory(bytes)
            }
        };
        let mut message = Message { body, wire_size: 0, stored_size: 0, eight_bit: false, utf8_header: false };
        message.scan()?;
        Ok(message)
    }

    /// A message from bytes (tests).
    pub fn from_bytes(bytes: Vec<u8>) -> Message {
        let mut message =
            Message { body: Body::Memory(bytes), wire_size: 0, stored_size: 0, eight_bit: false, utf8_header: false };
        let _ = message.scan();
        message
    }

    /// The message from its start, for one more attempt.
    pub fn reader(&mut self) -> io::Result<Box<dyn Read + '_>> {
        match &mut self.body {
            Body::File(file, start) => {
                file.seek(SeekFrom::Start(*start))?;
                Ok(Box::new(io::BufReader::with_capacity(65536, file)))
            }
            Body::Memory(bytes) => Ok(Box::new(bytes.as_slice())),
        }
    }

    /// One pass over the message: wire size, 8-bit bytes, UTF-8 in the header.
    fn scan(&mut self) -> io::Result<()> {
        let mut reader = self.reader()?;
        let mut chunk = vec![0u8; 65536];
        let (mut size, mut stored, mut eight_bit) = (0u64, 0u64, false);
        let mut previous = b'\n';
        loop {
            let n = match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            stored += n as u64;
            for &b in &chunk[..n] {
                size += if b == b'\n' && previous != b'\r' { 2 } else { 1 };
                eight_bit |= b >= 0x80;
                previous = b;
            }
        }
        drop(reader);
        self.wire_size = size;
        self.stored_size = stored;
        self.eight_bit = eight_bit;
        // Only a message with 8-bit bytes can have a UTF-8 header: a second, short pass.
        self.utf8_header = eight_bit && self.header_is_utf8()?;
        Ok(())
    }

    /// True when the header section has non-ASCII bytes and is valid UTF-8.
    fn header_is_utf8(&mut self) -> io::Result<bool> {
        let mut reader = self.reader()?;
        let mut header = Vec::new();
        let mut chunk = vec![0u8; 65536];
        loop {
            let n = reader.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            header.extend_from_slice(&chunk[..n]);
            if memchr::memmem::find(&header, b"\n\n").is_some() || header.len() > 1 << 20 {
                break;
            }
        }
        let end = memchr::memmem::find(&header, b"\n\n").unwrap_or(header.len());
        let header = &header[..end];
        Ok(header.iter().any(|&b| b >= 0x80) && std::str::from_utf8(header).is_ok())
    }
}

/// Send the message in the DATA phase: every line end as CRLF (a lone CR or LF too, so no
/// bare CR or LF reaches the wire), dot-stuffing, a final line end if the message lacks one,
/// then the final dot.
pub fn write_data(reader: &mut dyn Read, out: &mut dyn Write) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0u8; 1 << 16];
    let mut line_start = true;
    let mut pending_cr = false;
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for &b in &chunk[..n] {
            if pending_cr {
                pending_cr = false;
                buffer.extend_from_slice(b"\r\n");
                line_start = true;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => pending_cr = true,
                b'\n' => {
                    buffer.extend_from_slice(b"\r\n");
                    line_start = true;
                }
                _ => {
                    if line_start && b == b'.' {
                        buffer.push(b'.');
                    }
                    buffer.push(b);
                    line_start = false;
                }
            }
        }
        if buffer.len() >= 1 << 15 {
            out.write_all(&buffer)?;
            buffer.clear();
        }
    }
    if pending_cr || !line_start {
        buffer.extend_from_slice(b"\r\n");
    }
    buffer.extend_from_slice(b".\r\n");
    out.write_all(&buffer)?;
    out.flush()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that cannot unwrap has failed
mod tests {
    use super::*;

    fn data(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_data(&mut &input[..], &mut out).unwrap();
        out
    }

    #[test]
    fn data_conversion() {
        assert_eq!(data(b""), b".\r\n");
        assert_eq!(data(b"a\nb\n"), b"a\r\nb\r\n.\r\n");
        assert_eq!(data(b"a\r\nb"), b"a\r\nb\r\n.\r\n");
        assert_eq!(data(b".\n..x\nx.\n"), b"..\r\n...x\r\nx.\r\n.\r\n");
        assert_eq!(data(b"a\rb\r"), b"a\r\nb\r\n.\r\n");
        assert_eq!(data(b"a\r\r\n.b"), b"a\r\n\r\n..b\r\n.\r\n");
        // Long input across chunk boundaries keeps the state.
        let mut big = Vec::new();
        for _ in 0..30_000 {
            big.extend_from_slice(b".x\r");
        }
        let out = data(&big);
        assert_eq!(out.len(), 30_000 * 5 + 3);
        assert!(!out.windows(2).enumerate().any(|(i, w)| w[0] == b'\r' && w[1] != b'\n' && i + 1 < out.len()));
    }

    #[test]
    fn message_scan() {
        let m = Message::from_bytes(b"Subject: x\n\nbody\n".to_vec());
        assert_eq!((m.wire_size, m.eight_bit, m.utf8_header), (20, false, false));
        let m = Message::from_bytes("Subject: caf\u{e9}\n\nbody\n".as_bytes().to_vec());
        assert!(m.eight_bit && m.utf8_header);
        let m = Message::from_bytes(b"Subject: caf\xe9\n\nbody\n".to_vec());
        assert!(m.eight_bit && !m.utf8_header, "latin-1 header is legacy 8-bit");
        let m = Message::from_bytes("Subject: x\n\ncaf\u{e9}\n".as_bytes().to_vec());
        assert!(m.eight_bit && !m.utf8_header);
    }
}
