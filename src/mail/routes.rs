//! The lines of control/smtproutes, control/senderroutes and control/lmtproutes, parsed:
//! where a destination's mail goes, on which port, with which TLS, over SMTP or LMTP.
//! quill-remote plans its connections from them (`remote::route`); `quill check` reads them
//! to name a line that does not parse.
#![forbid(unsafe_code)]

use crate::mail::dns::is_host_name;
use std::net::IpAddr;
use std::path::PathBuf;

/// The SMTP port.
pub const SMTP_PORT: u16 = 25;

/// The relay of an smtproutes entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relay {
    /// Empty relay: use MX.
    Mx,
    /// A host name, looked up for addresses.
    Host(Vec<u8>),
    /// An address literal.
    Address(IpAddr),
    /// A unix socket (lmtproutes only).
    Socket(PathBuf),
}

/// The LMTP port (RFC 2033 §5: "not 25"; 24 is the one assigned).
pub const LMTP_PORT: u16 = 24;
/// The longest path a unix socket address holds (`sun_path`, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The submission port with implicit TLS (RFC 8314).
pub const SMTPS_PORT: u16 = 465;

/// How a route uses TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RouteTls {
    /// STARTTLS when offered (required with credentials or `tlsdestinations`).
    #[default]
    Opportunistic,
    /// `:starttls`: STARTTLS required and the certificate verified.
    Starttls,
    /// `:tls`, `:smtps` or port 465: TLS from the first byte, the certificate verified.
    Implicit,
}

/// One smtproutes (or senderroutes) entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `example.com`, `.example.com` or empty for the default route (lower case); in
    /// senderroutes `user@domain` or `@domain`.
    pub pattern: Vec<u8>,
    /// Where to go.
    pub relay: Relay,
    /// The port (25 unless given).
    pub port: u16,
    /// How TLS is used with this relay.
    pub tls: RouteTls,
    /// Speak LMTP, not SMTP (a line of control/lmtproutes).
    pub lmtp: bool,
}

/// Parse an address literal: `[1.2.3.4]`, `[IPv6:…]`, `[::1]`. None if it is not one.
pub fn parse_literal(text: &[u8]) -> Option<IpAddr> {
    let inner = text.strip_prefix(b"[")?.strip_suffix(b"]")?;
    let inner = std::str::from_utf8(inner).ok()?;
    let inner = inner.strip_prefix("IPv6:").or_else(|| inner.strip_prefix("ipv6:")).unwrap_or(inner);
    inner.parse().ok()
}

/// Parse one smtproutes line; None if malformed (the caller warns and skips it).
pub fn parse_route(line: &[u8]) -> Option<Route> {
    parse_route_with(line, SMTP_PORT)
}

/// Parse one lmtproutes line: `pattern:/socket/path`, or `pattern:relay[:port]` as smtproutes
/// with port 24 by default, a relay required and no TLS marker. None if malformed.
pub fn parse_lmtp_route(line: &[u8]) -> Option<Route> {
    use std::os::unix::ffi::OsStrExt;
    let colon = memchr::memchr(b':', line)?;
    let rest = line[colon + 1..].trim_ascii_end();
    if rest.first() == Some(&b'/') {
        if rest.len() > MAX_SOCKET_PATH || rest.iter().any(|&b| b < b' ' || b == 0x7f) {
            return None;
        }
        let relay = Relay::Socket(PathBuf::from(std::ffi::OsStr::from_bytes(rest)));
        let pattern = crate::mail::address::normal_domain(&line[..colon]);
        return Some(Route { pattern, relay, port: 0, tls: RouteTls::Opportunistic, lmtp: true });
    }
    let route = parse_route_with(line, LMTP_PORT)?;
    if route.relay == Relay::Mx || route.tls != RouteTls::Opportunistic {
        return None;
    }
    Some(Route { lmtp: true, ..route })
}

/// A routes line with `default_port` where it gives none.
fn parse_route_with(line: &[u8], default_port: u16) -> Option<Route> {
    let colon = memchr::memchr(b':', line)?;
    let pattern = crate::mail::address::normal_domain(&line[..colon]);
    let rest = &line[colon + 1..];
    let (relay, port) = if rest.first() == Some(&b'[') {
        let close = memchr::memchr(b']', rest)?;
        let port = match &rest[close + 1..] {
            b"" => None,
            tail => Some(tail.strip_prefix(b":")?),
        };
        let inside = &rest[1..close];
        let relay = match parse_literal(&rest[..=close]) {
            Some(ip) => Relay::Address(ip),
            None if !inside.is_empty() && is_host_name(inside) => Relay::Host(inside.to_ascii_lowercase()),
            None => return None,
        };
        (relay, port)
    } else {
        let (host, port) = match memchr::memchr(b':', rest) {
            Some(c) => (&rest[..c], Some(&rest[c + 1..])),
            None => (rest, None),
        };
        // A bare address (`example.com:192.0.2.1`, common in qmail installations) is used as
        // it is, as qmail does: it needs no DNS, and looking it up as a name fails.
        let bare_ip = std::str::from_utf8(host).ok().and_then(|h| h.parse::<std::net::Ipv4Addr>().ok());
        let relay = if host.is_empty() {
            Relay::Mx
        } else if let Some(ip) = bare_ip {
            Relay::Address(IpAddr::V4(ip))
        } else if is_host_name(host) {
            Relay::Host(host.to_ascii_lowercase())
        } else {
            return None;
        };
        (relay, port)
    };
    let (port, marker) = match port.map(|p| p.splitn(2, |&b| b == b':').collect::<Vec<_>>()) {
        Some(parts) => (parts.first().copied().unwrap_or_default(), parts.get(1).copied()),
        None => (&b""[..], None),
    };
    let port = match port {
        b"" => default_port,
        p => std::str::from_utf8(p).ok()?.parse::<u16>().ok().filter(|&p| p != 0)?,
    };
    let tls = match marker.map(|m| m.trim_ascii().to_ascii_lowercase()).as_deref() {
        None | Some(b"") if port == SMTPS_PORT => RouteTls::Implicit,
        None | Some(b"") => RouteTls::Opportunistic,
        Some(b"tls" | b"smtps") => RouteTls::Implicit,
        Some(b"starttls") => RouteTls::Starttls,
        Some(_) => return None,
    };
    Some(Route { pattern, relay, port, tls, lmtp: false })
}

/// Parse one senderroutes line: `user@domain:…` or `@domain:…`, then as smtproutes. None if
/// malformed.
pub fn parse_sender_route(line: &[u8]) -> Option<Route> {
    let at = memchr::memchr(b'@', line)?;
    let colon = at + memchr::memchr(b':', &line[at..])?;
    let local = &line[..at];
    let domain = crate::mail::address::normal_domain(&line[at + 1..colon]);
    if domain.is_empty() || local.iter().any(|&b| b == b':' || b <= b' ') {
        return None;
    }
    let mut route = parse_route(&[b"x", &line[colon..]].concat())?;
    route.pattern = [local, b"@", &domain].concat();
    Some(route)
}
