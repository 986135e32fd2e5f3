//! A small synchronous stub resolver: the DNS wire format (encoder and decoder side by side)
//! and the queries quill-remote needs (MX, A, AAAA, with CNAMEs followed).
//!
//! The decoder trusts nothing in a packet: every count, length and compression pointer is
//! checked against the bytes that are really there, pointers may only point backwards (so no
//! loop is possible) and their number is capped, and a name never grows past 255 bytes. Any
//! malformed packet is an error, never a panic.
//!
//! The resolver asks the servers of `control/dnsservers` (else `/etc/resolv.conf`) over UDP
//! from a fresh socket with a random source port and a random 16-bit id per query, accepts
//! only an answer that matches the question (source address and port, id, name, type, class),
//! and repeats the query over TCP when the answer is truncated.
#![forbid(unsafe_code)]

use crate::base::fail::{Error, Outcome};
use crate::mail::control::Control;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Record types we ask for or understand.
pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_MX: u16 = 15;
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
/// CNAMEs followed for one lookup at most.
pub const MAX_CNAMES: usize = 8;
/// Queries sent for one lookup at most: the first, and one per CNAME that had to be asked
/// for. Every query counts, whatever the answer said, so no answer can make a lookup ask
/// again and again (a CNAME target that never matches used to do that).
pub const MAX_QUERIES: usize = MAX_CNAMES + 1;
/// The longest one lookup may take, all its queries, servers and attempts together, unless
/// the caller gives an earlier deadline (quill-remote's whole-run deadline).
pub const LOOKUP_TIME: Duration = Duration::from_secs(120);

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
    /// Start of authority: primary server and the negative-caching TTL.
    Soa(Vec<u8>, u32),
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
            Data::Cname(name) => encode_name(name, &mut data)?,
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
        _ => Data::Other,
    };
    if !matches!(data, Data::Other | Data::A(_) | Data::Aaaa(_)) && inner.pos != end {
        return Err(WireError::BadRecord);
    }
    Ok(Record { name, rtype, class, ttl, data })
}

/// Random bytes from the kernel (`/dev/urandom`). Used for query ids, source ports and the
/// order of equal-preference MX hosts. A failure falls back to the clock mixed with the pid:
/// weaker, but it must not stop mail.
pub fn random_bytes(out: &mut [u8]) {
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(out)).is_ok();
    if !ok {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut x = nanos ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        for b in out.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
}

/// A random 16-bit number.
pub fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    random_bytes(&mut b);
    u16::from_be_bytes(b)
}

/// Why a lookup failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN): permanent.
    NxDomain(Vec<u8>),
    /// The name is not something DNS can ask for (empty label, too long): permanent.
    BadName(Vec<u8>),
    /// The servers failed, refused, timed out, answered nonsense, or the CNAME chain was too
    /// long: temporary. The text says which.
    Temporary(Vec<u8>, String),
}

impl DnsError {
    /// Temporary or permanent.
    pub fn outcome(&self) -> Outcome {
        match self {
            DnsError::NxDomain(_) | DnsError::BadName(_) => Outcome::Permanent,
            DnsError::Temporary(..) => Outcome::Temporary,
        }
    }

    /// The text for logs and bounces, with its RFC 3463 code.
    pub fn text(&self) -> String {
        match self {
            DnsError::NxDomain(name) => {
                format!("Sorry, I couldn't find any host named {}. (#5.1.2)", crate::base::log::safe(name))
            }
            DnsError::BadName(name) => {
                format!("Sorry, {} is not a valid host name. (#5.1.2)", crate::base::log::safe(name))
            }
            DnsError::Temporary(name, why) => {
                format!("DNS lookup of {} failed temporarily: {why}. (#4.4.3)", crate::base::log::safe(name))
            }
        }
    }
}

/// The answer to one lookup after CNAMEs: the canonical name and its records of the type
/// asked for (empty: the name exists but has no such record, "NODATA").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The name the records belong to.
    pub canonical: Vec<u8>,
    /// Records of the asked type owned by `canonical`.
    pub records: Vec<Data>,
}

/// The resolver's configuration: whom to ask, how long to wait.
#[derive(Clone, Debug)]
pub struct Resolver {
    /// Servers in order of preference.
    pub servers: Vec<SocketAddr>,
    /// How long to wait for one answer.
    pub timeout: Duration,
    /// How many rounds over all servers.
    pub attempts: u32,
}

/// resolv.conf's defaults (resolv.conf(5)).
const DEFAULT_TIMEOUT: u64 = 5;
const DEFAULT_ATTEMPTS: u32 = 2;
/// Bounds on what a configuration file may ask for.
const MAX_TIMEOUT: u64 = 30;
const MAX_ATTEMPTS: u32 = 5;
const MAX_SERVERS: usize = 8;

/// Parse one server: `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT`.
pub fn parse_server(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, tail) = rest.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        let port = match tail {
            "" => 53,
            t => t.strip_prefix(':')?.parse().ok()?,
        };
        return Some(SocketAddr::new(IpAddr::V6(ip), port));
    }
    let (ip, port) = text.rsplit_once(':')?;
    Some(SocketAddr::new(IpAddr::V4(ip.parse().ok()?), port.parse().ok()?))
}

impl Resolver {
    /// Build from lines of `control/dnsservers` or `/etc/resolv.conf`: servers (`nameserver
    /// X` or a bare `X`) and `options timeout:N attempts:N`. Other lines are ignored.
    pub fn parse(text: &[u8]) -> Resolver {
        let mut resolver =
            Resolver { servers: Vec::new(), timeout: Duration::from_secs(DEFAULT_TIMEOUT), attempts: DEFAULT_ATTEMPTS };
        for line in String::from_utf8_lossy(text).lines() {
            let line = line.split(['#', ';']).next().unwrap_or("").trim();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("options") => {
                    for option in words {
                        if let Some(n) = option.strip_prefix("timeout:").and_then(|n| n.parse::<u64>().ok()) {
                            resolver.timeout = Duration::from_secs(n.clamp(1, MAX_TIMEOUT));
                        } else if let Some(n) = option.strip_prefix("attempts:").and_then(|n| n.parse::<u32>().ok()) {
                            resolver.attempts = n.clamp(1, MAX_ATTEMPTS);
                        }
                    }
                }
                Some("nameserver") => resolver.servers.extend(words.next().and_then(parse_server)),
                Some(word) if words.next().is_none() => resolver.servers.extend(parse_server(word)),
                _ => {}
            }
        }
        resolver.servers.truncate(MAX_SERVERS);
        resolver
    }

    /// The resolver for this installation: `control/dnsservers` if it exists, else
    /// `/etc/resolv.conf`; with no server named anywhere, the local one (127.0.0.1:53), as
    /// the C library does.
    pub fn from_control(control: &Control) -> Result<Resolver, Error> {
        let text = match control.read("dnsservers")? {
            Some(text) => text,
            None => match std::fs::read("/etc/resolv.conf") {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Error::io("read /etc/resolv.conf", &e)),
            },
        };
        let mut resolver = Resolver::parse(&text);
        if resolver.servers.is_empty() {
            resolver.servers.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
        }
        Ok(resolver)
    }

    /// Ask one question and return the validated response; NXDOMAIN and server failures are
    /// errors. Tries every server `attempts` times over, for at most [`LOOKUP_TIME`].
    pub fn query(&self, name: &[u8], qtype: u16) -> Result<Message, DnsError> {
        self.query_until(name, qtype, Instant::now() + LOOKUP_TIME)
    }

    /// [`Resolver::query`], giving up (temporarily) at `deadline`.
    pub fn query_until(&self, name: &[u8], qtype: u16, deadline: Instant) -> Result<Message, DnsError> {
        let name = crate::mail::address::normal_domain(name);
        if encode_query(0, &name, qtype, false).is_err() || name.is_empty() {
            return Err(DnsError::BadName(name));
        }
        let mut last = String::from("no name server configured");
        for _ in 0..self.attempts {
            for server in &self.servers {
                if Instant::now() >= deadline {
                    return Err(DnsError::Temporary(name, format!("out of time ({last})")));
                }
                match self.ask(*server, &name, qtype, deadline) {
                    Ok(message) => match message.rcode() {
                        RCODE_NOERROR => return Ok(message),
                        RCODE_NXDOMAIN => return Err(DnsError::NxDomain(name)),
                        RCODE_SERVFAIL => last = format!("{server} answered SERVFAIL"),
                        RCODE_REFUSED => last = format!("{server} refused the query"),
                        code => last = format!("{server} answered RCODE {code}"),
                    },
                    Err(why) => last = format!("{server}: {why}"),
                }
            }
        }
        Err(DnsError::Temporary(name, last))
    }

    /// One exchange with one server: UDP with EDNS0, then without EDNS0 if the server did not
    /// understand it, then TCP if the answer was truncated.
    fn ask(&self, server: SocketAddr, name: &[u8], qtype: u16, deadline: Instant) -> Result<Message, String> {
        let mut message = self.ask_udp(server, name, qtype, true, deadline)?;
        if message.rcode() == RCODE_FORMERR {
            message = self.ask_udp(server, name, qtype, false, deadline)?;
        }
        if message.truncated() {
            message = self.ask_tcp(server, name, qtype, deadline)?;
        }
        Ok(message)
    }

    /// How long to wait for one answer: the configured timeout, less if the deadline is nearer.
    fn wait(&self, deadline: Instant) -> Result<Duration, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".to_string());
        }
        Ok(left.min(self.timeout))
    }

    fn ask_udp(
        &self,
        server: SocketAddr,
        name: &[u8],
        qtype: u16,
        edns: bool,
        deadline: Instant,
    ) -> Result<Message, String> {
        let id = random_u16();
        let query = encode_query(id, name, qtype, edns).map_err(|e| format!("{e:?}"))?;
        let socket = bind_random(server).map_err(|e| format!("unable to bind a UDP socket: {e}"))?;
        // connect() makes the kernel drop datagrams from any other address or port; the
        // check after recv_from says the same in code.
        socket.connect(server).map_err(|e| format!("unable to reach: {e}"))?;
        socket.send(&query).map_err(|e| format!("unable to send: {e}"))?;
        let deadline = Instant::now() + self.wait(deadline)?;
        let mut buffer = vec![0u8; 65535];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out".to_string());
            }
            socket.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
            match socket.recv_from(&mut buffer) {
                Ok((n, from)) => {
                    if from != server {
                        continue;
                    }
                    if let Some(message) = matching(&buffer[..n], id, name, qtype) {
                        return Ok(message);
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err("timed out".to_string())
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn ask_tcp(&self, server: SocketAddr, name: &[u8], qtype: u16, deadline: Instant) -> Result<Message, String> {
        let id = random_u16();
        let query = encode_query(id, name, qtype, false).map_err(|e| format!("{e:?}"))?;
        // One wait for the whole exchange: a server that sends a byte at a time gets no more.
        let wait = self.wait(deadline)?;
        let until = Instant::now() + wait;
        let mut stream = TcpStream::connect_timeout(&server, wait).map_err(|e| format!("TCP: {e}"))?;
        let _ = stream.set_write_timeout(Some(wait));
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        stream.write_all(&framed).map_err(|e| format!("TCP: {e}"))?;
        let mut length = [0u8; 2];
        read_until(&mut stream, &mut length, until)?;
        let mut packet = vec![0u8; u16::from_be_bytes(length) as usize];
        read_until(&mut stream, &mut packet, until)?;
        matching(&packet, id, name, qtype).ok_or_else(|| "TCP: answer does not match the question".to_string())
    }

    /// Records of `qtype` for `name`, following CNAMEs (in the answer, or by asking again)
    /// at most [`MAX_CNAMES`] times, in at most [`MAX_QUERIES`] queries and [`LOOKUP_TIME`].
    pub fn lookup(&self, name: &[u8], qtype: u16) -> Result<Answer, DnsError> {
        self.lookup_until(name, qtype, Instant::now() + LOOKUP_TIME)
    }

    /// [`Resolver::lookup`], giving up (temporarily) at `deadline` or after [`LOOKUP_TIME`],
    /// whichever comes first. A CNAME target that is not a valid host name is an invalid
    /// answer: a temporary failure, never a name to ask for.
    pub fn lookup_until(&self, name: &[u8], qtype: u16, deadline: Instant) -> Result<Answer, DnsError> {
        let deadline = deadline.min(Instant::now() + LOOKUP_TIME);
        let mut current = crate::mail::address::normal_domain(name);
        let mut hops = 0;
        let mut queries = 0;
        let failed = |why: String| Err(DnsError::Temporary(name.to_vec(), why));
        loop {
            queries += 1;
            if queries > MAX_QUERIES {
                return failed("CNAME chain too long".to_string());
            }
            let message = self.query_until(&current, qtype, deadline)?;
            // Walk the chain inside this answer.
            loop {
                let next = message.answers.iter().find_map(|r| match &r.data {
                    Data::Cname(target) if r.name == current && r.class == CLASS_IN => Some(target.clone()),
                    _ => None,
                });
                let records: Vec<Data> = message
                    .answers
                    .iter()
                    .filter(|r| r.name == current && r.rtype == qtype && r.class == CLASS_IN)
                    .map(|r| r.data.clone())
                    .collect();
                if !records.is_empty() || qtype == TYPE_CNAME {
                    return Ok(Answer { canonical: current, records });
                }
                let Some(target) = next else {
                    if message.questions.first().map(|q| &q.0) == Some(&current) {
                        return Ok(Answer { canonical: current, records });
                    }
                    break;
                };
                hops += 1;
                if hops > MAX_CNAMES {
                    return failed("CNAME chain too long".to_string());
                }
                if !is_host_name(&target) {
                    return failed(format!("invalid CNAME target {}", crate::base::log::safe(&target)));
                }
                current = target;
            }
            // The chain left this answer without records: ask for the new name.
        }
    }

    /// Mail exchangers of a domain: (preference, host), in no particular order. Empty means
    /// the domain exists without MX records.
    pub fn mx(&self, domain: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, DnsError> {
        self.mx_until(domain, Instant::now() + LOOKUP_TIME)
    }

    /// [`Resolver::mx`] with a deadline.
    pub fn mx_until(&self, domain: &[u8], deadline: Instant) -> Result<Vec<(u16, Vec<u8>)>, DnsError> {
        let answer = self.lookup_until(domain, TYPE_MX, deadline)?;
        Ok(answer
            .records
            .into_iter()
            .filter_map(|d| match d {
                Data::Mx(preference, host) => Some((preference, host)),
                _ => None,
            })
            .collect())
    }

    /// The IPv6 and IPv4 addresses of a host, IPv6 first. A temporary failure of one family
    /// is ignored when the other gives addresses; NXDOMAIN from either is final.
    pub fn addresses(&self, host: &[u8]) -> Result<Vec<IpAddr>, DnsError> {
        self.addresses_until(host, Instant::now() + LOOKUP_TIME)
    }

    /// [`Resolver::addresses`] with a deadline.
    pub fn addresses_until(&self, host: &[u8], deadline: Instant) -> Result<Vec<IpAddr>, DnsError> {
        let six = self.lookup_until(host, TYPE_AAAA, deadline);
        if let Err(e @ (DnsError::NxDomain(_) | DnsError::BadName(_))) = &six {
            return Err(e.clone());
        }
        let four = self.lookup_until(host, TYPE_A, deadline);
        let mut out = Vec::new();
        for answer in [&six, &four].into_iter().flatten() {
            for data in &answer.records {
                match data {
                    Data::Aaaa(ip) => out.push(IpAddr::V6(*ip)),
                    Data::A(ip) => out.push(IpAddr::V4(*ip)),
                    _ => {}
                }
            }
        }
        if out.is_empty() {
            // Report the more telling failure: a temporary error beats "no address".
            for result in [four, six] {
                result?;
            }
        }
        Ok(out)
    }
}

/// Fill `buffer` from a TCP stream by `until`, each read waiting only for the time left.
fn read_until(stream: &mut TcpStream, buffer: &mut [u8], until: Instant) -> Result<(), String> {
    let mut filled = 0;
    while filled < buffer.len() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("TCP: timed out".to_string());
        }
        stream.set_read_timeout(Some(left)).map_err(|e| format!("TCP: {e}"))?;
        match stream.read(&mut buffer[filled..]) {
            Ok(0) => return Err("TCP: the server closed the connection".to_string()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err("TCP: timed out".to_string())
            }
            Err(e) => return Err(format!("TCP: {e}")),
        }
    }
    Ok(())
}

/// Bind a UDP socket of the server's family to a random port above 1023 (a few tries), or
/// to a port the kernel picks (also random on Linux) if those are taken.
fn bind_random(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: IpAddr = if server.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    for _ in 0..8 {
        let port = 1024 + random_u16() % (65535 - 1024);
        if let Ok(socket) = UdpSocket::bind(SocketAddr::new(any, port)) {
            return Ok(socket);
        }
    }
    UdpSocket::bind(SocketAddr::new(any, 0))
}

/// Decode a packet and accept it only as the answer to our question.
fn matching(packet: &[u8], id: u16, name: &[u8], qtype: u16) -> Option<Message> {
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
mod tests {
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

    fn rr(name: &[u8], rtype: u16, data: Data) -> Record {
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
    fn configuration() {
        let r = Resolver::parse(
            b"# comment\nnameserver 10.0.0.1\nnameserver ::1\noptions timeout:1 attempts:9 rotate\n127.0.0.1:5353\n[::1]:5354\nsearch x\n",
        );
        assert_eq!(
            r.servers,
            vec![
                "10.0.0.1:53".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:5354".parse().unwrap()
            ]
        );
        assert_eq!(r.timeout, Duration::from_secs(1));
        assert_eq!(r.attempts, MAX_ATTEMPTS);
        assert_eq!(parse_server("[::1]"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(parse_server("1.2.3.4:x"), None);
    }

    /// A UDP "server" on loopback that answers each query through `respond` (which gets
    /// the query and returns the datagrams to send back, in order).
    fn udp_server(
        respond: impl Fn(&Message, &[u8]) -> Vec<Vec<u8>> + Send + 'static,
        queries: usize,
    ) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let address = socket.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 2048];
            for _ in 0..queries {
                let Ok((n, from)) = socket.recv_from(&mut buffer) else { return };
                let query = decode(&buffer[..n]).unwrap();
                for reply in respond(&query, &buffer[..n]) {
                    socket.send_to(&reply, from).unwrap();
                }
            }
        });
        (address, thread)
    }

    fn reply_to(query: &Message, flags: u16, answers: Vec<Record>) -> Vec<u8> {
        encode_message(&Message {
            id: query.id,
            flags,
            questions: query.questions.clone(),
            answers,
            ..Message::default()
        })
        .unwrap()
    }

    fn resolver(servers: Vec<SocketAddr>) -> Resolver {
        Resolver { servers, timeout: Duration::from_millis(500), attempts: 1 }
    }

    #[test]
    fn spoofed_answers_are_ignored() {
        let (address, thread) = udp_server(
            |q, _| {
                let good = reply_to(q, 0x8180, vec![rr(b"mx.test", TYPE_A, Data::A(Ipv4Addr::new(127, 0, 0, 7)))]);
                let mut wrong_id = good.clone();
                wrong_id[0] ^= 0xff;
                let mut other = q.clone();
                other.questions[0].0 = b"evil.test".to_vec();
                let wrong_name =
                    reply_to(&other, 0x8180, vec![rr(b"evil.test", TYPE_A, Data::A(Ipv4Addr::new(6, 6, 6, 6)))]);
                vec![wrong_id, wrong_name, b"garbage".to_vec(), good]
            },
            1,
        );
        let answer = resolver(vec![address]).lookup(b"mx.test", TYPE_A).unwrap();
        assert_eq!(answer.records, vec![Data::A(Ipv4Addr::new(127, 0, 0, 7))]);
        thread.join().unwrap();
    }

    #[test]
    fn truncated_answers_are_asked_again_over_tcp() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let socket = UdpSocket::bind(("127.0.0.1", port));
        let Ok(socket) = socket else { return }; // the UDP port is taken: nothing to test here
        let address = socket.local_addr().unwrap();
        let udp = std::thread::spawn(move || {
            let mut buffer = [0u8; 2048];
            socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            if let Ok((n, from)) = socket.recv_from(&mut buffer) {
                let q = decode(&buffer[..n]).unwrap();
                assert_eq!(&buffer[n - 10..n - 8], &TYPE_OPT.to_be_bytes(), "EDNS0 OPT record sent");
                socket.send_to(&reply_to(&q, 0x8380, vec![]), from).unwrap();
            }
        });
        let tcp = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut length = [0u8; 2];
            stream.read_exact(&mut length).unwrap();
            let mut query = vec![0u8; u16::from_be_bytes(length) as usize];
            stream.read_exact(&mut query).unwrap();
            let q = decode(&query).unwrap();
            let mx: Vec<Record> = (0..100u16)
                .map(|i| rr(b"big.test", TYPE_MX, Data::Mx(i, format!("mx{i}.big.test").into_bytes())))
                .collect();
            let reply = reply_to(&q, 0x8180, mx);
            stream.write_all(&(reply.len() as u16).to_be_bytes()).unwrap();
            stream.write_all(&reply).unwrap();
        });
        let mx = resolver(vec![address]).mx(b"big.test").unwrap();
        assert_eq!(mx.len(), 100);
        udp.join().unwrap();
        tcp.join().unwrap();
    }

    #[test]
    fn silent_and_failing_servers_then_a_good_one() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (failing, t1) = udp_server(|q, _| vec![reply_to(q, 0x8182, vec![])], 1);
        let (good, t2) = udp_server(
            |q, _| vec![reply_to(q, 0x8180, vec![rr(b"x.test", TYPE_AAAA, Data::Aaaa(Ipv6Addr::LOCALHOST))])],
            1,
        );
        let r = resolver(vec![silent.local_addr().unwrap(), failing, good]);
        // AAAA: the silent server times out, the failing one says SERVFAIL, the third answers.
        // A: nobody answers any more, which does not matter when AAAA gave an address.
        assert_eq!(r.addresses(b"x.test").unwrap(), vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        t1.join().unwrap();
        t2.join().unwrap();
        // Only silent and failing servers: temporary.
        let (failing, t3) = udp_server(|q, _| vec![reply_to(q, 0x8182, vec![])], 1);
        let err = resolver(vec![silent.local_addr().unwrap(), failing]).query(b"x.test", TYPE_A).unwrap_err();
        assert_eq!(err.outcome(), Outcome::Temporary);
        assert!(err.text().contains("#4.4.3"), "{}", err.text());
        t3.join().unwrap();
        // NXDOMAIN is permanent.
        let (nx, t4) = udp_server(|q, _| vec![reply_to(q, 0x8183, vec![])], 1);
        let err = resolver(vec![nx]).query(b"x.test", TYPE_A).unwrap_err();
        assert_eq!(err.outcome(), Outcome::Permanent);
        assert!(err.text().contains("#5.1.2"));
        t4.join().unwrap();
    }

    #[test]
    fn cname_chains_are_followed_and_bounded() {
        // a.test → b.test (in the answer), b.test → c.test (asked again), c.test has the MX.
        let (server, thread) = udp_server(
            |q, _| {
                let name = q.questions[0].0.clone();
                let answers = match name.as_slice() {
                    b"a.test" => vec![
                        rr(b"a.test", TYPE_CNAME, Data::Cname(b"b.test".to_vec())),
                        rr(b"b.test", TYPE_CNAME, Data::Cname(b"c.test".to_vec())),
                    ],
                    b"c.test" => vec![rr(b"c.test", TYPE_MX, Data::Mx(10, b"mx.c.test".to_vec()))],
                    _ => vec![rr(&name, TYPE_CNAME, Data::Cname(name.clone()))],
                };
                vec![reply_to(q, 0x8180, answers)]
            },
            2 + MAX_CNAMES + 1,
        );
        let r = resolver(vec![server]);
        assert_eq!(r.mx(b"a.test").unwrap(), vec![(10, b"mx.c.test".to_vec())]);
        // A name that is its own CNAME: a loop, stopped.
        let err = r.mx(b"loop.test").unwrap_err();
        assert_eq!(err.outcome(), Outcome::Temporary);
        drop(thread);
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

    #[test]
    fn hostile_cnames_cost_a_bounded_number_of_queries() {
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        // Every answer: the question's name is a CNAME for the one label "test." (the
        // audit's packet, which made the old loop ask forever).
        let (server, thread) = udp_server(
            move |q, _| {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut packet =
                    reply_to(q, 0x8180, vec![rr(&q.questions[0].0, TYPE_CNAME, Data::Cname(b"xxxxx".to_vec()))]);
                let at = packet.windows(7).rposition(|w| w == b"\x05xxxxx\x00").unwrap();
                packet[at + 1..at + 6].copy_from_slice(b"test.");
                vec![packet]
            },
            MAX_QUERIES + 5,
        );
        let err = resolver(vec![server]).mx(b"victim.test").unwrap_err();
        assert_eq!(err.outcome(), Outcome::Temporary);
        assert!(err.text().contains("invalid CNAME target"), "{}", err.text());
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop(thread);
        // Past the deadline nothing is asked at all.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let err =
            resolver(vec![silent.local_addr().unwrap()]).lookup_until(b"x.test", TYPE_A, Instant::now()).unwrap_err();
        assert!(err.text().contains("out of time"), "{}", err.text());
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
