//! The DNS wire format, encoder and decoder side by side: names (with the escapes that keep
//! one text from standing for two names), queries, whole messages and their records, and the
//! check that a packet answers the question we asked.
//!
//! The decoder trusts nothing in a packet: every count, length and compression pointer is
//! checked against the bytes that are really there, pointers may only point backwards (so no
//! loop is possible) and their number is capped, and a name never grows past 255 bytes. Any
//! malformed packet is an error, never a panic.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

/// Record types we ask for or understand.
pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_MX: u16 = 15;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
/// Class IN.
pub const CLASS_IN: u16 = 1;

/// Response codes.
pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_REFUSED: u8 = 5;

/// The UDP payload size we announce with EDNS0 (the 2020 "DNS flag day" value: no IP
/// fragmentation on any usual path).
pub const EDNS_BUFFER: u16 = 1232;
/// The longest name on the wire (RFC 1035 §2.3.4).
pub const MAX_NAME: usize = 255;
/// Compression pointers followed for one name at most. Pointers must point backwards, which
/// already rules out loops; this caps the work a hostile packet can cause.
const MAX_POINTERS: usize = 64;

/// What is wrong with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The packet ends inside a field.
    Truncated,
    /// A compression pointer points forwards or to itself, or too many pointers.
    BadPointer,
    /// A label type other than a plain label or a pointer.
    BadLabel,
    /// A name longer than 255 bytes, or a label longer than 63 bytes when encoding.
    NameTooLong,
    /// Record data whose length does not fit its type.
    BadRecord,
}

/// Decoded record data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// A canonical name.
    Cname(Vec<u8>),
    /// A mail exchanger: preference and host.
    Mx(u16, Vec<u8>),
    /// A pointer: the name an address maps back to (SPF's ptr mechanism and %{p} macro).
    Ptr(Vec<u8>),
    /// Start of authority: primary server and the negative-caching TTL.
    Soa(Vec<u8>, u32),
    /// Text: its character-strings, each at most 255 bytes (RFC 1035 §3.3.14).
    Txt(Vec<Vec<u8>>),
    /// Anything else (kept as its type only).
    Other,
}

/// One resource record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Owner name, lower case, without the final dot ("" for the root).
    pub name: Vec<u8>,
    /// Type.
    pub rtype: u16,
    /// Class.
    pub class: u16,
    /// Time to live.
    pub ttl: u32,
    /// Decoded data.
    pub data: Data,
}

/// A decoded DNS message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Query id.
    pub id: u16,
    /// The flags word as sent (QR, opcode, AA, TC, RD, RA, Z, RCODE).
    pub flags: u16,
    /// The questions: name, type, class.
    pub questions: Vec<(Vec<u8>, u16, u16)>,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authority: Vec<Record>,
    /// The extended RCODE bits from an OPT record, if one came.
    pub edns_rcode_high: u8,
}

impl Message {
    /// True for a response (QR set).
    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }
    /// True when the answer was truncated (TC).
    pub fn truncated(&self) -> bool {
        self.flags & 0x0200 != 0
    }
    /// The opcode.
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }
    /// The 4-bit RCODE (the extended bits only matter for EDNS errors, which we treat as
    /// failures anyway).
    pub fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }
}

/// Split a presentation name into wire labels: the inverse of [`push_label`], so `\DDD` and
/// `\X` stand for the byte itself (a dot inside a label among them). A trailing dot is
/// allowed; empty labels, labels over 63 bytes, names over 255 bytes and broken escapes are
/// not.
fn encode_name(name: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    let name = match name.strip_suffix(b".") {
        // The root's dot, unless an odd number of backslashes escapes it.
        Some(rest) if rest.iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 0 => rest,
        _ => name,
    };
    let start = out.len();
    if !name.is_empty() {
        let mut label: Vec<u8> = Vec::with_capacity(63);
        let mut i = 0;
        loop {
            let end = i >= name.len();
            if end || name[i] == b'.' {
                if label.is_empty() || label.len() > 63 {
                    return Err(WireError::NameTooLong);
                }
                out.push(label.len() as u8);
                out.extend_from_slice(&label);
                label.clear();
                if end {
                    break;
                }
                i += 1;
                continue;
            }
            if name[i] == b'\\' {
                let digits = name.get(i + 1..i + 4).filter(|d| d.iter().all(u8::is_ascii_digit));
                if let Some(d) = digits {
                    let value = d.iter().fold(0u32, |v, &c| v * 10 + u32::from(c - b'0'));
                    label.push(u8::try_from(value).map_err(|_| WireError::NameTooLong)?);
                    i += 4;
                } else {
                    label.push(*name.get(i + 1).ok_or(WireError::NameTooLong)?);
                    i += 2;
                }
            } else {
                label.push(name[i]);
                i += 1;
            }
            if label.len() > 63 {
                return Err(WireError::NameTooLong);
            }
        }
    }
    out.push(0);
    if out.len() - start > MAX_NAME {
        return Err(WireError::NameTooLong);
    }
    Ok(())
}

/// A query for one question, recursion desired, with an EDNS0 OPT record when `edns`.
pub fn encode_query(id: u16, name: &[u8], qtype: u16, edns: bool) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    out.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    out.extend_from_slice(&[0, 0, 0, 0]); // ANCOUNT, NSCOUNT
    out.extend_from_slice(&(edns as u16).to_be_bytes()); // ARCOUNT
    encode_name(name, &mut out)?;
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    if edns {
        out.push(0); // root name
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&EDNS_BUFFER.to_be_bytes()); // class = UDP payload size
        out.extend_from_slice(&[0, 0, 0, 0]); // extended RCODE, version 0, flags 0
        out.extend_from_slice(&[0, 0]); // no options
    }
    Ok(out)
}

/// Encoder for answers, used by the tests to build packets (and to keep the two directions
/// side by side). Names are never compressed.
pub fn encode_message(message: &Message) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&message.id.to_be_bytes());
    out.extend_from_slice(&message.flags.to_be_bytes());
    for count in [message.questions.len(), message.answers.len(), message.authority.len(), 0] {
        out.extend_from_slice(&(count.min(0xffff) as u16).to_be_bytes());
    }
    for (name, qtype, class) in &message.questions {
        encode_name(name, &mut out)?;
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&class.to_be_bytes());
    }
    for record in message.answers.iter().chain(&message.authority) {
        encode_name(&record.name, &mut out)?;
        out.extend_from_slice(&record.rtype.to_be_bytes());
        out.extend_from_slice(&record.class.to_be_bytes());
        out.extend_from_slice(&record.ttl.to_be_bytes());
        let mut data = Vec::new();
        match &record.data {
            Data::A(ip) => data.extend_from_slice(&ip.octets()),
            Data::Aaaa(ip) => data.extend_from_slice(&ip.octets()),
            Data::Cname(name) | Data::Ptr(name) => encode_name(name, &mut data)?,
            Data::Mx(preference, name) => {
                data.extend_from_slice(&preference.to_be_bytes());
                encode_name(name, &mut data)?;
            }
            Data::Soa(mname, minimum) => {
                encode_name(mname, &mut data)?;
                encode_name(b"hostmaster", &mut data)?;
                for value in [1u32, 3600, 600, 86400, *minimum] {
                    data.extend_from_slice(&value.to_be_bytes());
                }
            }
            Data::Txt(strings) => {
                for string in strings {
                    let string = &string[..string.len().min(255)];
                    data.push(string.len() as u8);
                    data.extend_from_slice(string);
                }
            }
            Data::Other => {}
        }
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    Ok(out)
}

/// A cursor over a packet that never reads past its end.
struct Cursor<'a> {
    packet: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let slice = self.packet.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Read a possibly compressed name at the cursor; the cursor moves past the name's bytes
    /// at this place (a pointer ends it). Lower case, dot-separated, no final dot.
    fn name(&mut self) -> Result<Vec<u8>, WireError> {
        let mut name = Vec::new();
        let mut wire_len = 0usize;
        let mut pos = self.pos;
        let mut pointers = 0;
        let mut resume: Option<usize> = None;
        loop {
            let len = *self.packet.get(pos).ok_or(WireError::Truncated)? as usize;
            match len & 0xc0 {
                0x00 => {
                    wire_len += len + 1;
                    if wire_len > MAX_NAME {
                        return Err(WireError::NameTooLong);
                    }
                    if len == 0 {
                        self.pos = resume.unwrap_or(pos + 1);
                        return Ok(name);
                    }
                    let label = self.packet.get(pos + 1..pos + 1 + len).ok_or(WireError::Truncated)?;
                    if !name.is_empty() {
                        name.push(b'.');
                    }
                    push_label(&mut name, label);
                    pos += 1 + len;
                }
                0xc0 => {
                    let low = *self.packet.get(pos + 1).ok_or(WireError::Truncated)? as usize;
                    let target = ((len & 0x3f) << 8) | low;
                    pointers += 1;
                    // Strictly backwards: every pointer moves to an earlier offset, so a chain
                    // of them ends; the count cap bounds the work on top.
                    if target >= pos || pointers > MAX_POINTERS {
                        return Err(WireError::BadPointer);
                    }
                    if resume.is_none() {
                        resume = Some(pos + 2);
                    }
                    pos = target;
                }
                _ => return Err(WireError::BadLabel),
            }
        }
    }
}

/// Append one label in presentation form, lower case: a byte that would change how the name
/// reads — a dot inside a label, a backslash, a space or control character, a byte above
/// 0x7e — becomes `\DDD` (RFC 1035 §5.1). So one text never stands for two different names
/// (the label `te.st` is `te\046st`, not the two labels `te` and `st`), and such a name is
/// never a valid host name ([`is_host_name`]).
fn push_label(name: &mut Vec<u8>, label: &[u8]) {
    for &b in label {
        if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
            name.push(b.to_ascii_lowercase());
        } else {
            name.extend_from_slice(format!("\\{b:03}").as_bytes());
        }
    }
}

/// Letters, digits, hyphens, underscores and dots, no empty label, no label over 63 bytes,
/// at most 253 bytes: a name we are willing to look up or connect to. Names decoded from
/// answers with any other byte in a label (escaped by [`push_label`]) fail here.
pub fn is_host_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split(|&b| b == b'.').all(|l| !l.is_empty() && l.len() <= 63)
        && name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Decode a whole message. Records of unknown types are kept as [`Data::Other`]; the
/// additional section is read only for the OPT record.
pub fn decode(packet: &[u8]) -> Result<Message, WireError> {
    let mut c = Cursor { packet, pos: 0 };
    let mut message = Message { id: c.u16()?, flags: c.u16()?, ..Message::default() };
    let qdcount = c.u16()?;
    let ancount = c.u16()?;
    let nscount = c.u16()?;
    let arcount = c.u16()?;
    for _ in 0..qdcount {
        let name = c.name()?;
        let qtype = c.u16()?;
        let class = c.u16()?;
        message.questions.push((name, qtype, class));
    }
    for _ in 0..ancount {
        message.answers.push(record(&mut c)?);
    }
    for _ in 0..nscount {
        message.authority.push(record(&mut c)?);
    }
    for _ in 0..arcount {
        let r = record(&mut c)?;
        if r.rtype == TYPE_OPT {
            message.edns_rcode_high = (r.ttl >> 24) as u8;
        }
    }
    Ok(message)
}

fn record(c: &mut Cursor) -> Result<Record, WireError> {
    let name = c.name()?;
    let rtype = c.u16()?;
    let class = c.u16()?;
    let ttl = c.u32()?;
    let length = c.u16()? as usize;
    let start = c.pos;
    let rdata = c.bytes(length)?;
    let end = c.pos;
    // Names inside the data may point back into the packet, so they are read with a cursor
    // over the whole packet, then checked to have ended inside the data.
    let mut inner = Cursor { packet: c.packet, pos: start };
    let data = match rtype {
        TYPE_A => Data::A(Ipv4Addr::from(<[u8; 4]>::try_from(rdata).map_err(|_| WireError::BadRecord)?)),
        TYPE_AAAA => Data::Aaaa(Ipv6Addr::from(<[u8; 16]>::try_from(rdata).map_err(|_| WireError::BadRecord)?)),
        TYPE_CNAME => Data::Cname(inner.name()?),
        TYPE_PTR => Data::Ptr(inner.name()?),
        TYPE_MX => {
            let preference = inner.u16()?;
            Data::Mx(preference, inner.name()?)
        }
        TYPE_SOA => {
            let mname = inner.name()?;
            let _rname = inner.name()?;
            inner.bytes(16)?;
            Data::Soa(mname, inner.u32()?)
        }
        TYPE_TXT => {
            let mut strings = Vec::new();
            let mut rest = rdata;
            while let Some((&length, tail)) = rest.split_first() {
                let length = length as usize;
                if length > tail.len() {
                    return Err(WireError::BadRecord);
                }
                strings.push(tail[..length].to_vec());
                rest = &tail[length..];
            }
            Data::Txt(strings)
        }
        _ => Data::Other,
    };
    if !matches!(data, Data::Other | Data::A(_) | Data::Aaaa(_) | Data::Txt(_)) && inner.pos != end {
        return Err(WireError::BadRecord);
    }
    Ok(Record { name, rtype, class, ttl, data })
}

/// Decode a packet and accept it only as the answer to our question.
pub fn matching(packet: &[u8], id: u16, name: &[u8], qtype: u16) -> Option<Message> {
    let message = decode(packet).ok()?;
    if message.id != id || !message.is_response() || message.opcode() != 0 {
        return None;
    }
    // A FORMERR from a server that does not know EDNS may come without the question.
    if message.questions.is_empty() && message.rcode() == RCODE_FORMERR {
        return Some(message);
    }
    match message.questions.as_slice() {
        [(qname, t, class)] if qname.as_slice() == name && *t == qtype && *class == CLASS_IN => Some(message),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that cannot unwrap has failed
pub(super) mod tests {
    use super::*;

    fn answer(id: u16, name: &[u8], qtype: u16, answers: Vec<Record>) -> Vec<u8> {
        let message = Message {
            id,
            flags: 0x8180,
            questions: vec![(name.to_vec(), qtype, CLASS_IN)],
            answers,
            ..Message::default()
        };
        encode_message(&message).unwrap()
    }

    /// One record of class IN (the resolver's tests build their answers with it too).
    pub(in crate::mail::dns) fn rr(name: &[u8], rtype: u16, data: Data) -> Record {
        Record { name: name.to_vec(), rtype, class: CLASS_IN, ttl: 60, data }
    }

    #[test]
    fn query_encoding() {
        let q = encode_query(0x1234, b"Example.COM.", TYPE_MX, true).unwrap();
        assert_eq!(&q[..12], &[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&q[12..25], b"\x07Example\x03COM\x00");
        let m = decode(&q).unwrap();
        assert_eq!(m.questions, vec![(b"example.com".to_vec(), TYPE_MX, CLASS_IN)]);
        assert!(encode_query(1, b"a..b", TYPE_A, false).is_err());
        assert!(encode_query(1, &[b'a'; 64], TYPE_A, false).is_err());
        let long = vec![&b"abcdefghij"[..]; 26].join(&b'.');
        assert!(encode_query(1, &long, TYPE_A, false).is_err());
    }

    #[test]
    fn round_trip() {
        let records = vec![
            rr(b"example.com", TYPE_MX, Data::Mx(10, b"mx.example.com".to_vec())),
            rr(b"mx.example.com", TYPE_A, Data::A(Ipv4Addr::new(192, 0, 2, 1))),
            rr(b"mx.example.com", TYPE_AAAA, Data::Aaaa(Ipv6Addr::LOCALHOST)),
            rr(b"www.example.com", TYPE_CNAME, Data::Cname(b"example.com".to_vec())),
            rr(b"2.0.0.127.bl.example", TYPE_TXT, Data::Txt(vec![b"listed: see".to_vec(), vec![], b"x".to_vec()])),
        ];
        let packet = answer(7, b"example.com", TYPE_MX, records.clone());
        let m = decode(&packet).unwrap();
        assert_eq!(m.id, 7);
        assert_eq!(m.answers, records);
        let soa = Message {
            id: 1,
            flags: 0x8183,
            questions: vec![(b"nx.example".to_vec(), TYPE_A, CLASS_IN)],
            authority: vec![rr(b"example", TYPE_SOA, Data::Soa(b"ns.example".to_vec(), 300))],
            ..Message::default()
        };
        let m = decode(&encode_message(&soa).unwrap()).unwrap();
        assert_eq!(m.rcode(), RCODE_NXDOMAIN);
        assert_eq!(m.authority, soa.authority);
    }

    #[test]
    fn txt_strings_must_fit_their_record() {
        let good = answer(3, b"t.example", TYPE_TXT, vec![rr(b"t.example", TYPE_TXT, Data::Txt(vec![b"ab".to_vec()]))]);
        assert!(decode(&good).is_ok());
        // The string claims 3 bytes where the record holds 2.
        let mut bad = good.clone();
        let at = bad.len() - 3;
        bad[at] = 3;
        assert_eq!(decode(&bad), Err(WireError::BadRecord));
    }

    #[test]
    fn compression_pointers() {
        // Header, question "a.b" at 12, answer name = pointer to 12, MX data with a pointer.
        let mut p = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(b"\x01a\x01b\x00\x00\x0f\x00\x01");
        p.extend_from_slice(&[0xc0, 12, 0, 15, 0, 1, 0, 0, 0, 60, 0, 7, 0, 5, 2, b'm', b'x', 0xc0, 12]);
        let m = decode(&p).unwrap();
        assert_eq!(m.answers[0].data, Data::Mx(5, b"mx.a.b".to_vec()));
    }

    #[test]
    fn garbage_is_an_error() {
        let good = answer(9, b"example.com", TYPE_MX, vec![rr(b"example.com", TYPE_MX, Data::Mx(0, b"".to_vec()))]);
        // Every truncation fails cleanly.
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "prefix {n}");
        }
        assert!(decode(&good).is_ok());
        // A pointer to itself, a forward pointer and a two-pointer loop.
        let mut p = vec![0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(decode(&p), Err(WireError::BadPointer));
        p[13] = 20;
        assert_eq!(decode(&p), Err(WireError::BadPointer));
        let looped = [0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 14, 0xc0, 12, 0, 1, 0, 1];
        assert!(decode(&looped).is_err());
        // Extended label types.
        let p = [0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0x41, 0, 0, 1, 0, 1];
        assert_eq!(decode(&p), Err(WireError::BadLabel));
        // Huge counts with nothing behind them.
        let p = [0, 1, 0x81, 0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(decode(&p), Err(WireError::Truncated));
        // Wrong A length.
        let mut bad = answer(1, b"a", TYPE_A, vec![rr(b"a", TYPE_A, Data::A(Ipv4Addr::LOCALHOST))]);
        let len = bad.len();
        bad[len - 6] = 0;
        bad[len - 5] = 3;
        bad.truncate(len - 1);
        assert_eq!(decode(&bad), Err(WireError::BadRecord));
    }

    #[test]
    fn long_pointer_chain_is_capped() {
        // An opaque record (type 99) whose data holds labels of 63 bytes chained by backward
        // pointers, then an A record whose name points at the end of the chain: far past 255.
        let label = [b'z'; 63];
        let data_start = 12 + 11;
        let mut chain = vec![63];
        chain.extend_from_slice(&label);
        chain.push(0);
        let mut prev = data_start;
        for _ in 0..6 {
            let here = data_start + chain.len();
            chain.push(63);
            chain.extend_from_slice(&label);
            chain.extend_from_slice(&[0xc0 | (prev >> 8) as u8, prev as u8]);
            prev = here;
        }
        let mut p = vec![0, 1, 0x81, 0x80, 0, 0, 0, 2, 0, 0, 0, 0];
        p.extend_from_slice(&[0, 0, 99, 0, 1, 0, 0, 0, 1]);
        p.extend_from_slice(&(chain.len() as u16).to_be_bytes());
        p.extend_from_slice(&chain);
        p.extend_from_slice(&[0xc0 | (prev >> 8) as u8, prev as u8, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        assert_eq!(decode(&p), Err(WireError::NameTooLong));
    }

    #[test]
    fn answers_must_match_the_question() {
        let p = answer(5, b"example.com", TYPE_MX, vec![]);
        assert!(matching(&p, 5, b"example.com", TYPE_MX).is_some());
        assert!(matching(&p, 6, b"example.com", TYPE_MX).is_none());
        assert!(matching(&p, 5, b"example.org", TYPE_MX).is_none());
        assert!(matching(&p, 5, b"example.com", TYPE_A).is_none());
        let query = encode_query(5, b"example.com", TYPE_MX, false).unwrap();
        assert!(matching(&query, 5, b"example.com", TYPE_MX).is_none(), "QR must be set");
    }
    #[test]
    fn escaped_names_encode_back_to_their_bytes() {
        let mut out = Vec::new();
        encode_name(b"te\\046st.example.", &mut out).expect("encode");
        assert_eq!(out, b"\x05te.st\x07example\x00");
        let mut out = Vec::new();
        encode_name(b"a\\\\b.c", &mut out).expect("an escaped backslash");
        assert_eq!(out, b"\x03a\\b\x01c\x00");
        for bad in [&b"a..b"[..], b"a\\", b"a\\999.b", b""] {
            let mut out = Vec::new();
            assert!(bad.is_empty() == encode_name(bad, &mut out).is_ok(), "{bad:?}");
        }
    }

    #[test]
    fn label_bytes_that_change_a_name_are_escaped() {
        // Question "x", one CNAME answer whose target is the single label "te.st".
        let mut p = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(b"\x01x\x00\x00\x05\x00\x01");
        p.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 7]);
        p.extend_from_slice(b"\x05te.st\x00");
        let m = decode(&p).unwrap();
        let Data::Cname(target) = &m.answers[0].data else { panic!("not a CNAME") };
        assert_eq!(target, b"te\\046st");
        assert!(!is_host_name(target));
        assert!(is_host_name(b"mx-1.example_domain.test"));
        for bad in [&b"a b"[..], b"a\\.b", b"a..b", b"", b"-\x00", &[b'a'; 64]] {
            assert!(!is_host_name(bad), "{bad:?}");
        }
    }
    /// A deterministic generator for the fuzz loop (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn fuzz_decoder_never_panics() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let seeds: Vec<Vec<u8>> = vec![
            answer(
                1,
                b"example.com",
                TYPE_MX,
                vec![
                    rr(b"example.com", TYPE_MX, Data::Mx(10, b"mx.example.com".to_vec())),
                    rr(b"example.com", TYPE_CNAME, Data::Cname(b"x.example.com".to_vec())),
                    rr(b"mx.example.com", TYPE_AAAA, Data::Aaaa(Ipv6Addr::LOCALHOST)),
                ],
            ),
            encode_message(&Message {
                id: 2,
                flags: 0x8183,
                questions: vec![(b"a.b".to_vec(), TYPE_A, CLASS_IN)],
                authority: vec![rr(b"b", TYPE_SOA, Data::Soa(b"ns.b".to_vec(), 60))],
                ..Message::default()
            })
            .unwrap(),
            encode_query(3, b"x.y.z", TYPE_AAAA, true).unwrap(),
        ];
        for round in 0..20_000 {
            let mut packet = if round % 5 == 0 {
                let len = rng.below(600);
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                seeds[rng.below(seeds.len())].clone()
            };
            for _ in 0..1 + rng.below(8) {
                if packet.is_empty() {
                    break;
                }
                let at = rng.below(packet.len());
                match rng.below(5) {
                    0 => packet[at] = rng.next() as u8,
                    1 => packet[at] = 0xc0 | (rng.next() as u8 & 0x3f),
                    2 => packet.truncate(at),
                    3 => packet.insert(at, rng.next() as u8),
                    _ => {
                        let n = rng.below(8).min(packet.len() - at);
                        let chunk = packet[at..at + n].to_vec();
                        packet.splice(at..at, chunk);
                    }
                }
            }
            // The property is only "no panic": Ok and Err are both fine.
            let _ = decode(&packet);
            let _ = matching(&packet, 1, b"example.com", TYPE_MX);
        }
    }
}
