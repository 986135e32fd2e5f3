//! Where mail for a domain goes: `control/smtproutes`, then MX records by preference, then the
//! domain's own A/AAAA records; and the refusal to deliver to ourselves.
//!
//! smtproutes lines are `domain:relay[:port]`, `.suffix:relay[:port]` or `:relay[:port]`
//! (the default route). The most specific entry wins: the domain itself, then each parent
//! suffix from the longest down, then the default. The relay is a host name or a bracketed
//! host or address (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, `[::1]`, `[mx.example]`), looked up
//! for its addresses only (never MX). An empty relay (`example.com:` or `example.com::2525`)
//! means "use MX as usual", with the port if one is given.
//!
//! After the port, an optional marker says how TLS is used with that relay (qmail reads the
//! port with scan_ulong and ignores the rest, so such a line still means the same relay
//! there): `:tls` (or `:smtps`) implicit TLS from the first byte, as on port 465; `:starttls`
//! STARTTLS required. Port 465 without a marker is implicit TLS. A relay with credentials in
//! `control/smtpauth` (`crate::remote::auth`) always requires TLS.
//!
//! `control/senderroutes` (Postfix's sender_dependent_relayhost_maps) routes by the sender:
//! `user@domain:relay[:port[:marker]]` or `@domain:relay[:port[:marker]]`, the whole address
//! first. Precedence, as Postfix's: a recipient route for the domain or one of its parents
//! (transport_maps) wins; then the sender route; then the default route `:relay` (relayhost);
//! then MX.
//!
//! `control/lmtproutes` names destinations that speak LMTP (RFC 2033), such as Dovecot's
//! `dovecot-lmtpd`: `domain:/path/to/socket` (a unix socket, the path absolute) or
//! `domain:relay[:port]` (TCP, port 24 unless given; no TLS marker: LMTP goes to a server on
//! this machine or a trusted network, in plain text). Its lines are recipient routes as
//! smtproutes' are, looked at first: for the same pattern lmtproutes wins, and a more
//! specific line in either file wins over a less specific one in the other.
#![forbid(unsafe_code)]

use crate::base::fail::{Enhanced, Outcome, Status};
use crate::mail::dns::{DnsError, Resolver};
use crate::remote::results::Text;
use std::net::IpAddr;
use std::path::PathBuf;

// The routes files' lines, parsed in the mail tier so that `quill check` reads them too.
pub use crate::mail::routes::{
    parse_literal, parse_lmtp_route, parse_route, parse_sender_route, Relay, Route, RouteTls, LMTP_PORT, SMTPS_PORT,
    SMTP_PORT,
};
/// At most this many mail exchangers are looked at (a hostile zone may list hundreds).
pub const MAX_HOSTS: usize = 16;
/// At most this many addresses per host are tried.
pub const MAX_ADDRESSES_PER_HOST: usize = 8;

/// x.1.10: the recipient's domain accepts no mail, by its null MX (RFC 7505).
const NULL_MX: Enhanced = Enhanced::new(1, 10);

/// A failure to route: a DNS failure as the resolver says it, temporary ones marked
/// unreachable (quill-send backs the destination off; see `mail::proto::remote_report`).
fn dns_failure(error: &DnsError) -> Text {
    let text = Text::Status(error.status());
    match error.outcome() {
        Outcome::Permanent => text,
        _ => text.unreachable(),
    }
}

/// The sender route for `sender`: its whole address first, then `@domain`.
pub fn find_sender_route<'a>(routes: &'a [Route], sender: &[u8]) -> Option<&'a Route> {
    let at = memchr::memrchr(b'@', sender)?;
    let domain = crate::mail::address::normal_domain(&sender[at + 1..]);
    let whole = [&sender[..at], b"@", &domain].concat();
    let bare = [b"@", domain.as_slice()].concat();
    routes.iter().find(|r| r.pattern == whole).or_else(|| routes.iter().find(|r| r.pattern == bare))
}

/// Which route a message takes: a recipient route for the domain or a parent wins, then the
/// sender's, then the default route (Postfix: transport_maps, sender_dependent_relayhost_maps,
/// relayhost).
pub fn choose_route<'a>(
    routes: &'a [Route],
    sender_routes: &'a [Route],
    domain: &[u8],
    sender: &[u8],
) -> Option<&'a Route> {
    match find_route(routes, domain) {
        Some(r) if !r.pattern.is_empty() => Some(r),
        default => find_sender_route(sender_routes, sender).or(default),
    }
}

/// Read a routes file (`smtproutes` with [`parse_route`], `senderroutes` with
/// [`parse_sender_route`]); a line that does not parse is skipped with a warning.
pub fn read_routes(
    control: &crate::mail::control::Control,
    name: &str,
    parse: fn(&[u8]) -> Option<Route>,
) -> crate::base::fail::Result<Vec<Route>> {
    let mut routes = Vec::new();
    for line in control.lines(name)? {
        match parse(&line) {
            Some(r) => routes.push(r),
            None => crate::base::log::warning(&format!(
                "unable to parse control/{name} line: {}",
                crate::base::log::safe(&line)
            )),
        }
    }
    Ok(routes)
}

/// The most specific route for a domain: exact, then `.suffix` entries from the longest,
/// then the default (empty pattern).
pub fn find_route<'a>(routes: &'a [Route], domain: &[u8]) -> Option<&'a Route> {
    let domain = crate::mail::address::normal_domain(domain);
    let exact = |pattern: &[u8]| routes.iter().find(|r| r.pattern == pattern);
    if let Some(r) = exact(&domain) {
        return Some(r);
    }
    for (i, &b) in domain.iter().enumerate() {
        if b == b'.' {
            if let Some(r) = exact(&domain[i..]) {
                return Some(r);
            }
        }
    }
    exact(b"")
}

/// What we are willing to look up or connect to (defined with the DNS decoder, which makes
/// every other name fail it).
pub use crate::mail::dns::is_host_name;

/// The addresses that are this machine: `control/ipme` plus every local interface. Loopback
/// addresses from the interfaces count unless the route came from smtproutes (where a relay
/// on 127.0.0.1 is a content filter or a test, not a loop); addresses listed in
/// `control/ipme` always count.
#[derive(Clone, Debug, Default)]
pub struct Ours {
    /// From control/ipme.
    pub listed: Vec<IpAddr>,
    /// From the interfaces.
    pub interfaces: Vec<IpAddr>,
}

impl Ours {
    /// Read control/ipme and the interface list.
    pub fn discover(ipme: &[Vec<u8>]) -> Ours {
        let listed = ipme
            .iter()
            .filter_map(|l| {
                let text = std::str::from_utf8(l).ok()?.trim();
                parse_literal(text.as_bytes()).or_else(|| text.parse().ok())
            })
            .collect();
        let mut interfaces = Vec::new();
        if let Ok(list) = nix::ifaddrs::getifaddrs() {
            for interface in list {
                let Some(address) = interface.address else { continue };
                if let Some(v4) = address.as_sockaddr_in() {
                    interfaces.push(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = address.as_sockaddr_in6() {
                    interfaces.push(IpAddr::V6(v6.ip()));
                }
            }
        }
        Ours { listed, interfaces }
    }

    /// True if `ip` is ours, with loopback counted or not.
    pub fn contains(&self, ip: &IpAddr, count_loopback: bool) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*ip),
            _ => *ip,
        };
        if self.listed.contains(&ip) {
            return true;
        }
        if ip.is_loopback() || ip.is_unspecified() {
            return count_loopback;
        }
        self.interfaces.contains(&ip)
    }
}

/// One host to try, with its addresses in the order to try them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The host name (for logs, SNI and certificate checks); the address text for literals.
    pub name: Vec<u8>,
    /// MX preference (0 for relays, literals and the implicit MX).
    pub preference: u16,
    /// Addresses, IPv6 first.
    pub addresses: Vec<IpAddr>,
}

/// Where to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Hosts in the order to try them.
    pub hosts: Vec<Host>,
    /// The port to connect to.
    pub port: u16,
    /// True when smtproutes chose the route.
    pub from_routes: bool,
    /// True when smtproutes named the hosts (a relay host or address, not MX): the
    /// administrator chose them, so their names may stand for the destination in a
    /// certificate check (remotetls).
    pub named_relay: bool,
    /// How the route uses TLS (opportunistic without a route).
    pub tls: RouteTls,
    /// Hosts that were skipped and why (temporary DNS failures of one MX, …), for the text
    /// of a failure if no host works. Only a DNS failure is ever temporary.
    pub notes: Vec<Text>,
    /// Speak LMTP (control/lmtproutes): LHLO, no TLS, no AUTH, a reply per recipient after
    /// the message.
    pub lmtp: bool,
    /// The unix socket of an LMTP route, tried instead of any host.
    pub socket: Option<PathBuf>,
}

/// Order mail exchangers by preference, shuffling equal preferences with `random`.
pub fn order_mx(mut mx: Vec<(u16, Vec<u8>)>, random: &mut dyn FnMut() -> u16) -> Vec<(u16, Vec<u8>)> {
    // Random keys first, then a stable sort by preference keeps the random order among equals.
    let mut keyed: Vec<(u16, u16, Vec<u8>)> = mx.drain(..).map(|(p, h)| (p, random(), h)).collect();
    keyed.sort_by_key(|&(p, k, _)| (p, k));
    keyed.into_iter().map(|(p, _, h)| (p, h)).collect()
}

/// Work out where mail for `domain` goes along `route` (from [`choose_route`]); every DNS
/// lookup ends by `deadline`.
pub fn plan(
    domain: &[u8],
    route: Option<&Route>,
    resolver: &Resolver,
    ours: &Ours,
    deadline: std::time::Instant,
) -> Result<Plan, Text> {
    let domain = crate::mail::address::normal_domain(domain);
    let shown = crate::base::log::safe(&domain);
    let from_routes = route.is_some();
    let port = route.map(|r| r.port).unwrap_or(SMTP_PORT);
    let named_relay = matches!(route.map(|r| &r.relay), Some(Relay::Address(_) | Relay::Host(_) | Relay::Socket(_)));
    let tls = route.map(|r| r.tls).unwrap_or_default();
    let lmtp = route.is_some_and(|r| r.lmtp);
    let mut plan =
        Plan { hosts: Vec::new(), port, from_routes, named_relay, tls, notes: Vec::new(), lmtp, socket: None };
    match route.map(|r| &r.relay) {
        // An LMTP server on a unix socket: no DNS, no host.
        Some(Relay::Socket(path)) => {
            plan.socket = Some(path.clone());
            return Ok(plan);
        }
        // A relay named by the administrator is used as given: no MX, no loop check (it may
        // be a filter on this very machine).
        Some(Relay::Address(ip)) => {
            plan.hosts.push(Host { name: ip.to_string().into_bytes(), preference: 0, addresses: vec![*ip] });
            return Ok(plan);
        }
        Some(Relay::Host(host)) => {
            let mut addresses = resolver.addresses_until(host, deadline).map_err(|e| dns_failure(&e))?;
            addresses.truncate(MAX_ADDRESSES_PER_HOST);
            if addresses.is_empty() {
                let words = format!("Sorry, the relay {} for {shown} has no address.", crate::base::log::safe(host));
                return Err(Status::permanent(Enhanced::UNROUTABLE, words).into());
            }
            plan.hosts.push(Host { name: host.clone(), preference: 0, addresses });
            return Ok(plan);
        }
        Some(Relay::Mx) | None => {}
    }
    if let Some(ip) = parse_literal(&domain) {
        plan.hosts.push(Host { name: ip.to_string().into_bytes(), preference: 0, addresses: vec![ip] });
    } else {
        mail_exchangers(&mut plan, &domain, resolver, deadline)?;
    }
    drop_ourselves(&mut plan, &domain, ours)?;
    if plan.hosts.is_empty() {
        return Err(no_host_left(&shown, &plan.notes));
    }
    Ok(plan)
}

/// The hosts of a domain's MX records (or the domain itself when it has none), by
/// preference, each with its addresses; those that cannot be used become notes.
fn mail_exchangers(
    plan: &mut Plan,
    domain: &[u8],
    resolver: &Resolver,
    deadline: std::time::Instant,
) -> Result<(), Text> {
    let shown = crate::base::log::safe(domain);
    if !is_host_name(domain) {
        let words = format!("Sorry, {shown} is not a valid domain name.");
        return Err(Status::permanent(Enhanced::BAD_SYSTEM, words).into());
    }
    let mx = resolver.mx_until(domain, deadline).map_err(|e| dns_failure(&e))?;
    if !mx.is_empty() && mx.iter().all(|(_, host)| host.is_empty()) {
        let words = format!("Sorry, {shown} does not accept mail (null MX).");
        return Err(Status::permanent(NULL_MX, words).into());
    }
    let implicit = mx.is_empty();
    let mx = if implicit { vec![(0, domain.to_vec())] } else { mx };
    let mut ordered =
        order_mx(mx.into_iter().filter(|(_, h)| !h.is_empty()).collect(), &mut crate::mail::dns::random_u16);
    ordered.truncate(MAX_HOSTS);
    for (preference, name) in ordered {
        if !is_host_name(&name) {
            let words = format!("MX {} is not a valid host name", crate::base::log::safe(&name));
            plan.notes.push(Text::Verbatim(Outcome::Permanent, words));
            continue;
        }
        match resolver.addresses_until(&name, deadline) {
            Ok(mut addresses) if !addresses.is_empty() => {
                addresses.truncate(MAX_ADDRESSES_PER_HOST);
                plan.hosts.push(Host { name, preference, addresses });
            }
            Ok(_) => {
                let words = format!("{} has no address", crate::base::log::safe(&name));
                plan.notes.push(Text::Verbatim(Outcome::Permanent, words));
            }
            Err(e) if implicit => return Err(dns_failure(&e)),
            Err(e) => plan.notes.push(Text::Status(e.status())),
        }
    }
    Ok(())
}

/// Every mail exchanger was skipped: temporary (and the destination unreachable) if one was
/// for a temporary DNS failure, which a later try may not meet; else permanent. The notes'
/// outcomes decide, never their words (an MX name is the domain owner's to choose).
fn no_host_left(shown: &str, notes: &[Text]) -> Text {
    let why = notes.iter().map(Text::to_string).collect::<Vec<_>>().join("; ");
    if notes.iter().any(|n| n.outcome() == Outcome::Temporary) {
        Text::Verbatim(Outcome::Temporary, format!("no mail exchanger of {shown} could be looked up: {why}"))
            .unreachable()
    } else {
        let words = format!("Sorry, no mail exchanger of {shown} has an address: {why}.");
        Status::permanent(Enhanced::UNROUTABLE, words).into()
    }
}

/// qmail's rule against loops: if we are one of the hosts, only hosts with a strictly better
/// (lower) preference than our best one may be used; none left is a configuration error.
pub fn drop_ourselves(plan: &mut Plan, domain: &[u8], ours: &Ours) -> Result<(), Text> {
    let count_loopback = !plan.from_routes;
    let mine = plan
        .hosts
        .iter()
        .filter(|h| h.addresses.iter().any(|ip| ours.contains(ip, count_loopback)))
        .map(|h| (h.preference, h.name.clone(), h.addresses.clone()))
        .min_by_key(|(p, _, _)| *p);
    let Some((best, name, addresses)) = mine else { return Ok(()) };
    plan.hosts.retain(|h| h.preference < best);
    if plan.hosts.is_empty() {
        let ip =
            addresses.iter().find(|ip| ours.contains(ip, count_loopback)).map(|ip| ip.to_string()).unwrap_or_default();
        let words = format!(
            "Sorry, {} [{ip}] is one of my own addresses, but {} is not a local domain here. \
             MX points back to me: configuration error",
            crate::base::log::safe(&name),
            crate::base::log::safe(domain)
        );
        return Err(Status::permanent(Enhanced::LOOP, words).into());
    }
    Ok(())
}

/// The TLS policy for a domain from `control/tlsdestinations`: None for opportunistic TLS
/// (the domain is not listed), else TLS is required with a verified certificate, and the list
/// holds the extra names the certificate may match.
///
/// A line is `DOMAIN` or `.SUFFIX`, then optionally `:verify` (the only level there is, kept
/// for old files), then `:NAME` fields: host names (`mx.provider.example`) or `.suffix`
/// patterns (`.provider.example`, any name under it). Whatever the line says, a certificate
/// for the recipient domain itself or a name under it matches (Postfix's `secure` level with
/// its default `nexthop:dot-nexthop`); the listed names are the admin's additions, for
/// domains whose mail is handled by a provider whose certificate names only the provider.
/// The first matching line wins.
pub fn tls_policy(domain: &[u8], lines: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    for line in lines {
        let mut fields = line.split(|&b| b == b':');
        let pattern = crate::mail::address::normal_domain(fields.next().unwrap_or_default());
        if pattern.is_empty() || !crate::mail::address::domain_listed(domain, std::slice::from_ref(&pattern)) {
            continue;
        }
        let names = fields
            .map(|f| f.trim_ascii().to_ascii_lowercase())
            .filter(|f| !f.is_empty() && f.as_slice() != b"verify")
            .map(|f| crate::mail::address::normal_domain(&f))
            .collect();
        return Some(names);
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that cannot unwrap has failed
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn route_lines() {
        let r = parse_route(b"example.com:relay.example.net:2525").unwrap();
        assert_eq!(
            (r.pattern.as_slice(), r.relay, r.port),
            (&b"example.com"[..], Relay::Host(b"relay.example.net".to_vec()), 2525)
        );
        let r = parse_route(b".Example.COM:[192.0.2.1]").unwrap();
        assert_eq!(
            (r.pattern.as_slice(), r.relay, r.port),
            (&b".example.com"[..], Relay::Address(Ipv4Addr::new(192, 0, 2, 1).into()), 25)
        );
        let r = parse_route(b":[IPv6:::1]:26").unwrap();
        assert_eq!((r.pattern.as_slice(), r.relay, r.port), (&b""[..], Relay::Address(Ipv6Addr::LOCALHOST.into()), 26));
        let r = parse_route(b"x.org:[::1]").unwrap();
        assert_eq!(r.relay, Relay::Address(Ipv6Addr::LOCALHOST.into()));
        let r = parse_route(b"x.org:[mx.x.org]:587").unwrap();
        assert_eq!((r.relay, r.port), (Relay::Host(b"mx.x.org".to_vec()), 587));
        let r = parse_route(b"x.org:").unwrap();
        assert_eq!((r.relay, r.port), (Relay::Mx, 25));
        let r = parse_route(b"x.org::2525").unwrap();
        assert_eq!((r.relay, r.port), (Relay::Mx, 2525));
        for bad in
            [&b"no colon"[..], b"x:[1.2.3.4", b"x:host:port", b"x:host:0", b"x:host:99999", b"x:bad host", b"x:[]"]
        {
            assert_eq!(parse_route(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn most_specific_route_wins() {
        let routes: Vec<Route> =
            [&b":default"[..], b".example.com:suffix", b".b.example.com:deeper", b"a.b.example.com:exact"]
                .iter()
                .map(|l| parse_route(l).unwrap())
                .collect();
        let pick = |d: &[u8]| match &find_route(&routes, d).unwrap().relay {
            Relay::Host(h) => String::from_utf8(h.clone()).unwrap(),
            other => format!("{other:?}"),
        };
        assert_eq!(pick(b"A.B.example.com"), "exact");
        assert_eq!(pick(b"c.b.example.com"), "deeper");
        assert_eq!(pick(b"b.example.com"), "suffix");
        assert_eq!(pick(b"example.com"), "default");
        assert_eq!(pick(b"other.org"), "default");
        assert!(find_route(&routes[1..], b"other.org").is_none());
    }

    #[test]
    fn mx_order_is_by_preference_and_random_among_equals() {
        let mx = vec![(20, b"c".to_vec()), (10, b"a".to_vec()), (10, b"b".to_vec()), (5, b"z".to_vec())];
        let mut seen = std::collections::HashSet::new();
        let mut state = 1u16;
        for _ in 0..64 {
            let mut next = || {
                state = state.wrapping_mul(25173).wrapping_add(13849);
                state
            };
            let order: Vec<Vec<u8>> = order_mx(mx.clone(), &mut next).into_iter().map(|(_, h)| h).collect();
            assert_eq!(order[0], b"z");
            assert_eq!(order[3], b"c");
            seen.insert(order[1].clone());
        }
        assert_eq!(seen.len(), 2, "both equal-preference hosts come first sometimes");
    }

    fn host(preference: u16, ip: &str) -> Host {
        Host { name: format!("mx{preference}").into_bytes(), preference, addresses: vec![ip.parse().unwrap()] }
    }

    #[test]
    fn loops_are_refused() {
        let ours = Ours { listed: vec!["192.0.2.9".parse().unwrap()], interfaces: vec!["127.0.0.1".parse().unwrap()] };
        let mut plan = Plan {
            hosts: vec![host(5, "198.51.100.1"), host(10, "192.0.2.9"), host(20, "198.51.100.2")],
            port: 25,
            from_routes: false,
            named_relay: false,
            tls: RouteTls::Opportunistic,
            notes: vec![],
            lmtp: false,
            socket: None,
        };
        drop_ourselves(&mut plan, b"example.com", &ours).unwrap();
        assert_eq!(plan.hosts, vec![host(5, "198.51.100.1")]);
        let mut plan = Plan {
            hosts: vec![host(10, "127.0.0.5")],
            port: 25,
            from_routes: false,
            named_relay: false,
            tls: RouteTls::Opportunistic,
            notes: vec![],
            lmtp: false,
            socket: None,
        };
        let failure = drop_ourselves(&mut plan, b"example.com", &ours).unwrap_err();
        assert_eq!(failure.outcome(), Outcome::Permanent);
        assert!(failure.to_string().ends_with("MX points back to me: configuration error (#5.4.6)"));
        let mut plan = Plan {
            hosts: vec![host(10, "127.0.0.5")],
            port: 2525,
            from_routes: true,
            named_relay: false,
            tls: RouteTls::Opportunistic,
            notes: vec![],
            lmtp: false,
            socket: None,
        };
        drop_ourselves(&mut plan, b"example.com", &ours).unwrap();
        let mut plan = Plan {
            hosts: vec![host(10, "::ffff:192.0.2.9")],
            port: 25,
            from_routes: true,
            named_relay: false,
            tls: RouteTls::Opportunistic,
            notes: vec![],
            lmtp: false,
            socket: None,
        };
        assert!(drop_ourselves(&mut plan, b"example.com", &ours).is_err());
    }

    #[test]
    fn tls_markers_and_sender_routes() {
        let r = parse_route(b":smtp.provider.example:587").unwrap();
        assert_eq!((r.port, r.tls), (587, RouteTls::Opportunistic));
        assert_eq!(parse_route(b":smtp.provider.example:465").unwrap().tls, RouteTls::Implicit);
        assert_eq!(parse_route(b":[192.0.2.1]:2465:tls").unwrap().tls, RouteTls::Implicit);
        assert_eq!(parse_route(b":192.0.2.1:587:STARTTLS").unwrap().tls, RouteTls::Starttls);
        assert_eq!(parse_route(b"x.example:relay.example:587:bogus"), None);
        let senders = vec![
            parse_sender_route(b"@Corp.Example:relay.corp.example:587").unwrap(),
            parse_sender_route(b"boss@corp.example:[192.0.2.7]:465").unwrap(),
        ];
        assert_eq!(senders[0].pattern, b"@corp.example");
        assert_eq!(parse_sender_route(b"corp.example:relay"), None);
        assert_eq!(find_sender_route(&senders, b"joe@CORP.example").unwrap().port, 587);
        assert_eq!(find_sender_route(&senders, b"boss@corp.example").unwrap().tls, RouteTls::Implicit);
        assert_eq!(find_sender_route(&senders, b"joe@other.example"), None);
        let routes = vec![parse_route(b"special.example:[192.0.2.9]").unwrap(), parse_route(b":[192.0.2.8]").unwrap()];
        let pick = |domain: &[u8], sender: &[u8]| choose_route(&routes, &senders, domain, sender).unwrap().port;
        // A recipient route wins, then the sender's, then the default.
        assert_eq!(pick(b"special.example", b"joe@corp.example"), 25);
        assert_eq!(pick(b"elsewhere.example", b"joe@corp.example"), 587);
        assert_eq!(choose_route(&routes, &senders, b"elsewhere.example", b"joe@x.example").unwrap().pattern, b"");
    }

    #[test]
    fn tls_destinations() {
        let lines = vec![
            b"secure.example".to_vec(),
            b".bank.example:verify".to_vec(),
            b"hosted.example:verify:mx.provider.example:.provider.net".to_vec(),
            b"Listed.Example:MX.Other.Example".to_vec(),
        ];
        assert_eq!(tls_policy(b"Secure.Example", &lines), Some(vec![]));
        assert_eq!(tls_policy(b"www.bank.example", &lines), Some(vec![]));
        assert_eq!(tls_policy(b"bank.example", &lines), None);
        assert_eq!(tls_policy(b"other.example", &lines), None);
        assert_eq!(
            tls_policy(b"hosted.example", &lines),
            Some(vec![b"mx.provider.example".to_vec(), b".provider.net".to_vec()])
        );
        assert_eq!(tls_policy(b"listed.example", &lines), Some(vec![b"mx.other.example".to_vec()]));
    }

    #[test]
    fn lmtp_routes() {
        let r = parse_lmtp_route(b"mail.example:/run/dovecot/lmtp").unwrap();
        assert_eq!(r.relay, Relay::Socket(PathBuf::from("/run/dovecot/lmtp")));
        assert!(r.lmtp);
        let r = parse_lmtp_route(b".example:[127.0.0.1]").unwrap();
        assert_eq!((r.relay, r.port, r.lmtp), (Relay::Address(Ipv4Addr::LOCALHOST.into()), LMTP_PORT, true));
        let r = parse_lmtp_route(b"example:lmtp.internal:2424").unwrap();
        assert_eq!((r.relay, r.port), (Relay::Host(b"lmtp.internal".to_vec()), 2424));
        // No MX for LMTP, no TLS marker, no relative path, nothing too long for sun_path.
        for bad in [&b"example:"[..], b"example::24", b"example:[::1]:24:starttls", b"example:run/lmtp"] {
            assert_eq!(parse_lmtp_route(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_lmtp_route(format!("x:/{}", "a".repeat(120)).as_bytes()), None);
        // smtproutes lines stay SMTP, with port 25 by default.
        assert!(!parse_route(b"example:[127.0.0.1]").unwrap().lmtp);
        // For one pattern the LMTP line (read first) wins; a more specific line wins in
        // either direction.
        let routes = vec![
            parse_lmtp_route(b"example:/run/lmtp").unwrap(),
            parse_route(b"example:[192.0.2.1]").unwrap(),
            parse_route(b"sub.example:[192.0.2.2]").unwrap(),
            parse_lmtp_route(b".example:/run/other").unwrap(),
        ];
        assert!(find_route(&routes, b"example").unwrap().lmtp);
        assert!(!find_route(&routes, b"sub.example").unwrap().lmtp);
        assert_eq!(find_route(&routes, b"x.example").unwrap().relay, Relay::Socket(PathBuf::from("/run/other")));
        // A socket route plans no host and needs no DNS.
        let resolver = Resolver {
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: std::time::Duration::from_millis(100),
            attempts: 1,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let plan = plan(b"example", Some(&routes[0]), &resolver, &Ours::default(), deadline).unwrap();
        assert!(plan.lmtp && plan.hosts.is_empty());
        assert_eq!(plan.socket, Some(PathBuf::from("/run/lmtp")));
    }

    #[test]
    fn bare_addresses_in_routes_need_no_dns() {
        let r = parse_route(b"example.com:192.0.2.1").unwrap();
        assert_eq!((r.relay, r.port), (Relay::Address(Ipv4Addr::new(192, 0, 2, 1).into()), 25));
        let r = parse_route(b"example.com:127.0.0.1:2525").unwrap();
        assert_eq!((r.relay, r.port), (Relay::Address(Ipv4Addr::LOCALHOST.into()), 2525));
        let r = parse_route(b":[::1]:2525").unwrap();
        assert_eq!((r.relay, r.port), (Relay::Address(Ipv6Addr::LOCALHOST.into()), 2525));
        // A name made of digits that is not an address is still a name.
        let r = parse_route(b"x:1.2.3").unwrap();
        assert_eq!(r.relay, Relay::Host(b"1.2.3".to_vec()));
        // The plan for an address needs no resolver: nothing answers on port 9.
        let resolver = Resolver {
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: std::time::Duration::from_millis(100),
            attempts: 1,
        };
        let route = parse_route(b"example.com:192.0.2.1:26").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let plan = plan(b"example.com", Some(&route), &resolver, &Ours::default(), deadline).unwrap();
        assert_eq!(plan.hosts[0].addresses, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]);
        assert_eq!((plan.port, plan.named_relay), (26, true));
    }

    /// An MX name is the domain owner's to choose: one that looks like a status code in a
    /// note must not make the failure temporary (the old check read the notes' words).
    #[test]
    fn an_mx_name_cannot_pass_for_a_status() {
        use crate::mail::dns::{decode, encode_message, Data, Message, Record, CLASS_IN, TYPE_MX};
        use std::time::{Duration, Instant};
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let server = socket.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 2048];
            if let Ok((n, from)) = socket.recv_from(&mut buffer) {
                let query = decode(&buffer[..n]).unwrap();
                let mx = Record {
                    name: query.questions[0].0.clone(),
                    rtype: TYPE_MX,
                    class: CLASS_IN,
                    ttl: 60,
                    data: Data::Mx(10, b"(#4.4.4)".to_vec()),
                };
                let answer = Message {
                    id: query.id,
                    flags: 0x8180,
                    questions: query.questions,
                    answers: vec![mx],
                    ..Message::default()
                };
                socket.send_to(&encode_message(&answer).unwrap(), from).unwrap();
            }
        });
        let resolver = Resolver { servers: vec![server], timeout: Duration::from_secs(2), attempts: 1 };
        let deadline = Instant::now() + Duration::from_secs(10);
        let failure = plan(b"victim.test", None, &resolver, &Ours::default(), deadline).unwrap_err();
        assert_eq!(failure.outcome(), Outcome::Permanent, "{failure}");
        assert_eq!(
            failure.to_string(),
            "Sorry, no mail exchanger of victim.test has an address: MX (#4.4.4) is not a valid host name. (#5.4.4)"
        );
        thread.join().unwrap();
    }
}
