//! The network side of quill-tcpserver: the listening socket, addresses as UCSPI-TCP writes
//! them, the privilege drop, and the table of running connections with its limits.
//! Generic Unix and TCP code; it knows nothing about mail.
#![forbid(unsafe_code)]

use crate::base::fail::Error;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::process::Command;
use std::time::Duration;

/// The host that means every address of both families.
pub const ANY: &str = "any";

/// The listen address from the command line: an IPv4 or IPv6 address (brackets allowed),
/// tcpserver's `0` for every IPv4 address, or [`ANY`] for every address of both families
/// (`::`, made dual-stack by [`bind`]). Host names are refused: there is no DNS to ask.
pub fn parse_host(text: &str) -> Result<IpAddr, Error> {
    if text == "0" {
        return Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    if text == ANY {
        return Ok(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    bare.parse()
        .map_err(|_| Error::permanent(format!("{text} is not an IP address (quill-tcpserver looks up no host names)")))
}

/// The port from the command line: a number, or a TCP service name from `/etc/services`
/// (`smtp` is 25), as tcpserver accepts.
pub fn parse_port(text: &str) -> Result<u16, Error> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| Error::permanent(format!("port {text} is out of range")));
    }
    let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
    service_port(&services, text).ok_or_else(|| {
        Error::permanent(format!("unknown port {text}: not a number nor a tcp service in /etc/services"))
    })
}

/// Look up a TCP service name (or alias) in the text of an `/etc/services` file.
pub fn service_port(services: &str, name: &str) -> Option<u16> {
    for line in services.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let (Some(first), Some(port_proto)) = (words.next(), words.next()) else { continue };
        let Some((port, "tcp")) = port_proto.split_once('/') else { continue };
        if first == name || words.any(|alias| alias == name) {
            return port.parse().ok();
        }
    }
    None
}

/// A listening socket with SO_REUSEADDR, IPV6_V6ONLY for IPv6 (an IPv4 listener on the same
/// port is then a separate program), non-blocking for the poll loop. The backlog is where
/// clients wait while every slot is busy (and with `-w`), so it should be large.
///
/// With `any` (host [`ANY`]) the socket is `[::]` without IPV6_V6ONLY: IPv4 clients arrive as
/// IPv4-mapped addresses, which [`canonical`] turns back into IPv4. A kernel without IPv6
/// (EAFNOSUPPORT, or `::` not assignable) gets `0.0.0.0` instead, with a warning.
pub fn bind(address: SocketAddr, backlog: i32, any: bool) -> io::Result<TcpListener> {
    match bind_family(address, backlog, any) {
        Err(e) if any && matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)) => {
            crate::base::log::warning(&format!("no IPv6 here ({e}): listening on IPv4 only"));
            bind_family(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), address.port()), backlog, false)
        }
        other => other,
    }
}

fn bind_family(address: SocketAddr, backlog: i32, any: bool) -> io::Result<TcpListener> {
    use nix::sys::socket::{setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage};
    let family = if address.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if address.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &!any)?;
    }
    nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrStorage::from(address))?;
    nix::sys::socket::listen(&fd, Backlog::new(backlog).unwrap_or(Backlog::MAXCONN))?;
    let listener = TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// An address as UCSPI-TCP reports it: IPv4-mapped IPv6 addresses become plain IPv4.
pub fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// The `PROTO` value for a connection: `TCP`, or `TCP6` for an IPv6 client.
pub fn proto(remote: IpAddr) -> &'static str {
    if remote.is_ipv6() {
        "TCP6"
    } else {
        "TCP"
    }
}

/// What the per-client limit counts: one IPv4 address, or one IPv6 /64 (a single host
/// usually holds a whole /64 and can change addresses inside it at will).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl ClientKey {
    /// The key for a client address (IPv4-mapped IPv6 counts as IPv4).
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(v4),
            IpAddr::V6(v6) => ClientKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKey::V4(v4) => write!(f, "{v4}"),
            ClientKey::V6(prefix) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*prefix) << 64)),
        }
    }
}

/// Why a connection is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// Every one of the `-c` slots is busy.
    Total,
    /// This client already has `-C` connections.
    PerClient,
}

/// One running connection: whom it serves, and a copy of its socket, kept so that the
/// listener can see how long the client has been silent.
#[derive(Debug)]
struct Entry {
    client: ClientKey,
    socket: Option<OwnedFd>,
}

/// The running connections: which child serves which client, and the limits.
#[derive(Debug)]
pub struct Table {
    /// At most this many connections at once (`-c`).
    pub limit: usize,
    /// At most this many from one client (`-C`).
    pub per_client: u32,
    children: HashMap<i32, Entry>,
    clients: HashMap<ClientKey, u32>,
}

/// A connection picked to make room: its child, its client and how long that client has
/// been silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idlest {
    /// The child's process id.
    pub pid: i32,
    /// Its client.
    pub client: ClientKey,
    /// How long the client has sent nothing.
    pub silent: Duration,
}

impl Table {
    /// An empty table with these limits.
    pub fn new(limit: usize, per_client: u32) -> Table {
        Table { limit, per_client, children: HashMap::new(), clients: HashMap::new() }
    }

    /// The number of running connections.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// True when no connection is running.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// True when every slot is busy.
    pub fn full(&self) -> bool {
        self.children.len() >= self.limit
    }

    /// Whether one more connection from this client would break a limit.
    pub fn check(&self, client: ClientKey) -> Result<(), Over> {
        if self.full() {
            return Err(Over::Total);
        }
        if self.clients.get(&client).copied().unwrap_or(0) >= self.per_client {
            return Err(Over::PerClient);
        }
        Ok(())
    }

    /// Whether the next connection starts under stress: it would take the table above 80 % of
    /// the limit (Postfix's processes get `stress=yes` only at 100 %; starting earlier leaves
    /// the stressed sessions room to finish before the table is full).
    pub fn stressed(&self) -> bool {
        (self.children.len() + 1) * 5 > self.limit * 4
    }

    /// Count a new child serving `client`, with a copy of its socket if one can be kept.
    pub fn add(&mut self, pid: i32, client: ClientKey, socket: Option<OwnedFd>) {
        self.children.insert(pid, Entry { client, socket });
        *self.clients.entry(client).or_insert(0) += 1;
    }

    /// The connection to close to make room: the one whose client has been silent longest,
    /// at least `minimum`; between equally silent ones, the one whose client holds the most
    /// connections. `silence` tells how long the client behind a socket has sent nothing.
    pub fn idlest(&self, minimum: Duration, silence: impl Fn(&OwnedFd) -> Option<Duration>) -> Option<Idlest> {
        let mut best: Option<(Idlest, u32)> = None;
        for (&pid, entry) in &self.children {
            let Some(silent) = entry.socket.as_ref().and_then(&silence) else { continue };
            if silent < minimum {
                continue;
            }
            let held = self.clients.get(&entry.client).copied().unwrap_or(0);
            let candidate = Idlest { pid, client: entry.client, silent };
            let better = match &best {
                None => true,
                Some((b, b_held)) => (silent, held, pid) > (b.silent, *b_held, b.pid),
            };
            if better {
                best = Some((candidate, held));
            }
        }
        best.map(|(idlest, _)| idlest)
    }

    /// Forget a child that ended (or was told to end); false if it was not ours (the table is
    /// unchanged).
    pub fn remove(&mut self, pid: i32) -> bool {
        let Some(Entry { client, .. }) = self.children.remove(&pid) else { return false };
        if let Some(count) = self.clients.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                self.clients.remove(&client);
            }
        }
        true
    }
}

/// Give up root for good after binding, by [`crate::base::privilege::drop_to`]: supplementary
/// groups reduced to the one group, then the group, then the user, then checked. With only
/// `-u`, the group stays the current one but the supplementary groups still go; with only
/// `-g`, the user stays the current one.
pub fn drop_privileges(uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    use crate::base::privilege::{drop_to, Credentials};
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    let group = gid.unwrap_or_else(|| nix::unistd::getegid().as_raw());
    let user = uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw());
    drop_to(&Credentials::only(user, group))
}

/// Answer a connection over a limit with the refusal line (if any) and close it. The socket is
/// new, so the short line fits its buffer; what the client already sent is read first, so that
/// closing does not reset the connection before the line arrives.
pub fn refuse(stream: TcpStream, text: &[u8]) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = (&stream).read(&mut sink);
    if !text.is_empty() {
        let _ = (&stream).write(text);
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// The wait status as tcpserver prints it in its `end` line: exit code × 256, or the signal
/// number (plus 128 with a core dump).
pub fn raw_status(status: nix::sys::wait::WaitStatus) -> Option<(i32, i32)> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code << 8)),
        WaitStatus::Signaled(pid, signal, core) => Some((pid.as_raw(), signal as i32 | if core { 0x80 } else { 0 })),
        _ => None,
    }
}

/// The UCSPI-TCP environment of one connection's program, as changes to the server's own
/// environment, applied in order (None removes): stale `TCPREMOTEHOST` and `TCPREMOTEINFO`
/// removed (no lookup made them), the connection's variables set, then the rule's variables
/// on top (a rule may override any of them). One list for both ways to run the program: an
/// exec'd one gets it through `Command::env` ([`apply`]), a linked one from its forked child.
pub fn environment(
    local: SocketAddr,
    remote: SocketAddr,
    local_name: &str,
    rule: &[(String, Vec<u8>)],
) -> Vec<(OsString, Option<OsString>)> {
    let set = |name: &str, value: String| (OsString::from(name), Some(OsString::from(value)));
    let mut changes = vec![
        (OsString::from("TCPREMOTEHOST"), None),
        (OsString::from("TCPREMOTEINFO"), None),
        set("PROTO", proto(remote.ip()).to_string()),
        set("TCPLOCALIP", local.ip().to_string()),
        set("TCPLOCALPORT", local.port().to_string()),
        set("TCPLOCALHOST", local_name.to_string()),
        set("TCPREMOTEIP", remote.ip().to_string()),
        set("TCPREMOTEPORT", remote.port().to_string()),
    ];
    for (name, value) in rule {
        changes.push((OsString::from(name), Some(OsString::from_vec(value.clone()))));
    }
    changes
}

/// Give `command` the environment changes of [`environment`], in order.
pub fn apply(command: &mut Command, changes: &[(OsString, Option<OsString>)]) {
    for (name, value) in changes {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports() {
        assert_eq!(parse_host("0").ok(), Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert_eq!(parse_host("::").ok(), Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
        assert_eq!(parse_host("[::1]").ok(), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(parse_host("mail.example").is_err());
        assert_eq!(parse_port("2525").ok(), Some(2525));
        assert!(parse_port("70000").is_err());
        let services = "# comment\nsmtp\t\t25/tcp\t\tmail\nsmtp 25/udp\nsubmission 587/tcp\n";
        assert_eq!(service_port(services, "smtp"), Some(25));
        assert_eq!(service_port(services, "mail"), Some(25));
        assert_eq!(service_port(services, "submission"), Some(587));
        assert_eq!(service_port(services, "imap"), None);
    }

    #[test]
    fn mapped_addresses_and_client_keys() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:25".parse().expect("address");
        assert_eq!(canonical(mapped).to_string(), "192.0.2.1:25");
        assert_eq!(proto(canonical(mapped).ip()), "TCP");
        let a = ClientKey::of("2001:db8:1:2::1".parse().expect("ip"));
        let b = ClientKey::of("2001:db8:1:2:ffff::9".parse().expect("ip"));
        let c = ClientKey::of("2001:db8:1:3::1".parse().expect("ip"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn table_limits() {
        let one = ClientKey::of("192.0.2.1".parse().expect("ip"));
        let two = ClientKey::of("192.0.2.2".parse().expect("ip"));
        let mut t = Table::new(3, 2);
        assert_eq!(t.check(one), Ok(()));
        t.add(10, one, None);
        t.add(11, one, None);
        assert_eq!(t.check(one), Err(Over::PerClient));
        assert_eq!(t.check(two), Ok(()));
        t.add(12, two, None);
        assert_eq!(t.check(two), Err(Over::Total));
        assert!(t.remove(10));
        assert!(!t.remove(10));
        assert_eq!(t.check(one), Ok(()));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn stress_above_eighty_percent() {
        let one = ClientKey::of("192.0.2.1".parse().expect("ip"));
        let mut t = Table::new(10, 10);
        for pid in 0..7 {
            t.add(pid, one, None);
        }
        assert!(!t.stressed(), "the 8th of 10 is at 80 %, not above");
        t.add(7, one, None);
        assert!(t.stressed());
    }

    #[test]
    fn idlest_is_the_longest_silent_then_the_busiest_client() {
        // A socket stands for its silence: pipes make real descriptors, and the test's silence
        // function maps their numbers to made-up durations.
        use std::os::fd::AsRawFd;
        let one = ClientKey::of("192.0.2.1".parse().expect("ip"));
        let two = ClientKey::of("192.0.2.2".parse().expect("ip"));
        let mut t = Table::new(10, 10);
        let mut silences = HashMap::new();
        for (pid, client, seconds) in [(1, one, 3), (2, one, 30), (3, two, 30), (4, two, 1)] {
            let (read, _write) = nix::unistd::pipe().expect("pipe");
            silences.insert(read.as_raw_fd(), Duration::from_secs(seconds));
            t.add(pid, client, Some(read));
        }
        t.add(5, two, None);
        let silence = |fd: &OwnedFd| silences.get(&fd.as_raw_fd()).copied();
        let pick = t.idlest(Duration::from_secs(5), silence).expect("a pick");
        // 2 and 3 are equally silent; client two holds three connections, client one two.
        assert_eq!((pick.pid, pick.client), (3, two));
        assert_eq!(t.idlest(Duration::from_secs(60), silence), None);
    }
}
