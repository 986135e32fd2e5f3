//! The qmail-queue envelope (DESIGN §4): `F` sender NUL, `T` recipient NUL for each
//! recipient, then one more NUL. Encoder and decoder side by side.
#![forbid(unsafe_code)]

use crate::base::fail::{qq, Error, Result};
use crate::mail::address::{is_clean, MAX_ADDRESS};
use std::io::Read;

/// The most recipients one envelope may carry; more is an envelope format error.
pub const MAX_RECIPIENTS: usize = 10_000;

/// A sender and its recipients.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The envelope sender; empty for bounces.
    pub sender: Vec<u8>,
    /// The recipients, in order.
    pub recipients: Vec<Vec<u8>>,
}

impl Envelope {
    /// The wire form, ready for quill-queue's fd 1.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.sender.len() + 3 + self.recipients.iter().map(|r| r.len() + 2).sum::<usize>());
        out.push(b'F');
        out.extend_from_slice(&self.sender);
        out.push(0);
        for r in &self.recipients {
            out.push(b'T');
            out.extend_from_slice(r);
            out.push(0);
        }
        out.push(0);
        out
    }

    /// Parse the wire form from the start of `bytes`. Errors carry qmail-queue's exit codes:
    /// 54 when the input ends early, 11 for an address over 1003 bytes, 91 for anything else
    /// malformed (a missing `F`, a record letter other than `T`, CR or LF in an address, too
    /// many recipients).
    pub fn decode(bytes: &[u8]) -> Result<Envelope> {
        let mut pos = 0;
        let mut envelope = Envelope::default();
        let mut first = true;
        loop {
            let Some(end) = memchr::memchr(0, &bytes[pos..]) else {
                return Err(Error::queue(qq::READ_ERROR, "unable to read envelope: it ends before its final NUL"));
            };
            let record = &bytes[pos..pos + end];
            pos += end + 1;
            if record.is_empty() {
                if first {
                    return Err(Error::queue(qq::ENVELOPE_FORMAT, "envelope format error: no sender record"));
                }
                return Ok(envelope);
            }
            let (tag, address) = (record[0], &record[1..]);
            if address.len() > MAX_ADDRESS {
                return Err(Error::queue(qq::ADDRESS_TOO_LONG, "address too long: over 1003 bytes"));
            }
            if !is_clean(address) {
                return Err(Error::queue(qq::ENVELOPE_FORMAT, "envelope format error: CR or LF in an address"));
            }
            match (first, tag) {
                (true, b'F') => envelope.sender = address.to_vec(),
                (false, b'T') => {
                    if envelope.recipients.len() >= MAX_RECIPIENTS {
                        return Err(Error::queue(qq::ENVELOPE_FORMAT, "envelope format error: too many recipients"));
                    }
                    envelope.recipients.push(address.to_vec());
                }
                _ => return Err(Error::queue(qq::ENVELOPE_FORMAT, "envelope format error: unexpected record")),
            }
            first = false;
        }
    }

    /// Read and parse an envelope from a descriptor, reading no more than the largest valid
    /// envelope could need (so a peer cannot make us buffer without bound).
    pub fn read_from(input: &mut impl Read) -> Result<Envelope> {
        let cap = (MAX_ADDRESS + 2) * (MAX_RECIPIENTS + 1) + 1;
        let mut bytes = Vec::with_capacity(4096);
        let mut chunk = [0u8; 8192];
        loop {
            let n = match input.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io_code(qq::READ_ERROR, "read envelope", &e)),
            };
            if n == 0 {
                return Envelope::decode(&bytes);
            }
            bytes.extend_from_slice(&chunk[..n]);
            // Stop reading as soon as the terminating empty record has arrived.
            if terminated(&bytes) {
                return Envelope::decode(&bytes);
            }
            if bytes.len() > cap {
                return Err(Error::queue(qq::ENVELOPE_FORMAT, "envelope format error: envelope too large"));
            }
        }
    }
}

/// True when `bytes` holds a complete envelope: records up to an empty one.
fn terminated(bytes: &[u8]) -> bool {
    let mut pos = 0;
    while let Some(end) = memchr::memchr(0, &bytes[pos..]) {
        if end == 0 {
            return true;
        }
        pos += end + 1;
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = Envelope { sender: b"a@b.c".to_vec(), recipients: vec![b"u@x.y".to_vec(), b"v@x.y".to_vec()] };
        assert_eq!(e.encode(), b"Fa@b.c\0Tu@x.y\0Tv@x.y\0\0".to_vec());
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        let bounce = Envelope { sender: vec![], recipients: vec![b"u@x".to_vec()] };
        assert_eq!(Envelope::decode(&bounce.encode()).unwrap(), bounce);
    }

    #[test]
    fn refusals() {
        assert_eq!(Envelope::decode(b"Tu@x\0\0").unwrap_err().code, 91);
        assert_eq!(Envelope::decode(b"Fa\0Tu@x\0").unwrap_err().code, 54);
        assert_eq!(Envelope::decode(b"Fa\0Xu@x\0\0").unwrap_err().code, 91);
        assert_eq!(Envelope::decode(b"\0").unwrap_err().code, 91);
        assert_eq!(Envelope::decode(b"Fa\0Tu\r\n@x\0\0").unwrap_err().code, 91);
        let mut long = b"F".to_vec();
        long.extend(std::iter::repeat_n(b'a', 1004));
        long.extend_from_slice(b"\0\0");
        assert_eq!(Envelope::decode(&long).unwrap_err().code, 11);
    }
}
