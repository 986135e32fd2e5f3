//! The stub resolver: whom to ask (`control/dnsservers`, else `/etc/resolv.conf`), for how
//! long, and the lookups quill-remote needs (MX, A, AAAA, with CNAMEs followed) within a
//! budget of queries and time.
//!
//! It asks over UDP from a fresh socket with a random source port and a random 16-bit id per
//! query, accepts only an answer that matches the question (source address and port, id,
//! name, type, class), and repeats the query over TCP when the answer is truncated.
#![forbid(unsafe_code)]

use super::wire::{
    encode_query, is_host_name, matching, Data, Message, CLASS_IN, RCODE_FORMERR, RCODE_NOERROR, RCODE_NXDOMAIN,
    RCODE_REFUSED, RCODE_SERVFAIL, TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_MX,
};
use crate::base::fail::{Enhanced, Error, Outcome, Status};
use crate::mail::control::Control;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// CNAMEs followed for one lookup at most.
pub const MAX_CNAMES: usize = 8;
/// Queries sent for one lookup at most: the first, and one per CNAME that had to be asked
/// for. Every query counts, whatever the answer said, so no answer can make a lookup ask
/// again and again (a CNAME target that never matches used to do that).
pub const MAX_QUERIES: usize = MAX_CNAMES + 1;
/// The longest one lookup may take, all its queries, servers and attempts together, unless
/// the caller gives an earlier deadline (quill-remote's whole-run deadline).
pub const LOOKUP_TIME: Duration = Duration::from_secs(120);

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
        self.status().outcome
    }

    /// What it means for mail to that name: the outcome, its RFC 3463 code and the words.
    pub fn status(&self) -> Status {
        match self {
            DnsError::NxDomain(name) => Status::permanent(
                Enhanced::BAD_SYSTEM,
                format!("Sorry, I couldn't find any host named {}.", crate::base::log::safe(name)),
            ),
            DnsError::BadName(name) => Status::permanent(
                Enhanced::BAD_SYSTEM,
                format!("Sorry, {} is not a valid host name.", crate::base::log::safe(name)),
            ),
            DnsError::Temporary(name, why) => Status::temporary(
                Enhanced::DIRECTORY,
                format!("DNS lookup of {} failed temporarily: {why}.", crate::base::log::safe(name)),
            ),
        }
    }

    /// The status rendered, for logs and tests.
    pub fn text(&self) -> String {
        self.status().to_string()
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that cannot unwrap has failed
mod tests {
    use super::*;
    use crate::mail::dns::wire::tests::rr;
    use crate::mail::dns::wire::{decode, encode_message, Record, TYPE_OPT};

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
}
