//! DNS blocklists and allowlists at connect (ucspi-tcp's rblsmtpd, Postfix's
//! postscreen_dnsbl_sites): `control/dnsbl` names the zones, one a line, and what a listing
//! means. quill-smtpd asks them before its greeting, before it confines itself (the lookups
//! need a socket; no byte from the client has been read yet), on Quill's own resolver
//! (`mail::dns`). A listed client is greeted as usual, so that it can read why; its MAIL gets
//! the zone's code and the list's own words (its TXT record), unless it authenticates first.
//! A client an allowlist names is never refused and never delayed (control/greetdelay).
//! A lookup that fails (a dead list, a slow resolver) lists nobody: a blocklist must not stop
//! mail when it breaks.
#![forbid(unsafe_code)]

use crate::base::fail::{Error, Result};
use crate::mail::control::Control;
use crate::mail::dns::{Data, DnsError, Resolver, TYPE_A, TYPE_TXT};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// The control file.
pub const FILE: &str = "dnsbl";
/// All lookups of one connection together: a client waits for them before its greeting.
pub const LOOKUP_TIME: Duration = Duration::from_secs(5);
/// The longest list text quill-smtpd repeats in its reply.
const MAX_TEXT: usize = 200;

/// What a listing in a zone means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A blocklist: refuse MAIL with this code (451: try later; 554: go away).
    Refuse(u16),
    /// An allowlist: never refuse, never delay.
    Allow,
}

/// One line of control/dnsbl: `ZONE[=A.B.C.D] ACTION`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// The zone, lower case, without a final dot.
    pub name: Vec<u8>,
    /// Only this answer counts as listed (lists encode reasons in the address they answer).
    pub answer: Option<Ipv4Addr>,
    /// What a listing means.
    pub action: Action,
}

/// Why a client is refused: the zone, the code, and the text for the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// The zone that lists the client.
    pub zone: String,
    /// 451 or 554.
    pub code: u16,
    /// The list's TXT record, or a text naming the zone.
    pub text: String,
}

impl Listing {
    /// The reply to MAIL: `451 4.7.1 TEXT` or `554 5.7.1 TEXT`.
    pub fn reply(&self) -> (u16, String) {
        let class = if self.code < 500 { '4' } else { '5' };
        (self.code, format!("{class}.7.1 {}", self.text))
    }
}

/// What the lookups found for this client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// A blocklist names the client (and no allowlist does).
    pub listed: Option<Listing>,
    /// An allowlist names the client.
    pub allowed: bool,
}

/// Parse control/dnsbl: `#` comments and blank lines are skipped; each other line is a zone,
/// optionally `=` one IPv4 answer, then `451`, `554` or `allow`. A bad line is an error naming
/// it (quill check shows it; quill-smtpd then answers 421, as for any broken control file).
pub fn parse(text: &[u8]) -> Result<Vec<Zone>> {
    let mut zones = Vec::new();
    for (number, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = String::from_utf8_lossy(line);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| Error::permanent(format!("control/{FILE} line {}: {why}", number + 1));
        let mut words = line.split_whitespace();
        let (Some(zone), Some(action), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad("want ZONE[=ANSWER] and 451, 554 or allow"));
        };
        let (name, answer) = match zone.split_once('=') {
            Some((name, answer)) => {
                (name, Some(answer.parse::<Ipv4Addr>().map_err(|_| bad("the answer after = is not an IPv4 address"))?))
            }
            None => (zone, None),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase().into_bytes();
        if !crate::mail::dns::is_host_name(&name) || !name.contains(&b'.') {
            return Err(bad("not a DNS zone"));
        }
        let action = match action {
            "451" => Action::Refuse(451),
            "554" => Action::Refuse(554),
            "allow" => Action::Allow,
            _ => return Err(bad("the action must be 451, 554 or allow")),
        };
        zones.push(Zone { name, answer, action });
    }
    Ok(zones)
}

/// The name to ask a list about `ip`: the address's octets (IPv4) or nibbles (IPv6), reversed,
/// then the zone (RFC 5782 §2.1, §2.4).
pub fn query_name(ip: IpAddr, zone: &[u8]) -> Vec<u8> {
    let mut name = String::new();
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            for octet in v4.octets().iter().rev() {
                name.push_str(&format!("{octet}."));
            }
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
        }
    }
    let mut name = name.into_bytes();
    name.extend_from_slice(zone);
    name
}

/// Whether an A answer means "listed": the one configured answer, else any 127.0.0.0/8 address
/// except 127.255.255.0/24, where lists such as Spamhaus put their error codes (a refused
/// query is not a listing: RFC 5782 §2.1 keeps 127.0.0.1 out too).
fn means_listed(zone: &Zone, address: Ipv4Addr) -> bool {
    match zone.answer {
        Some(wanted) => address == wanted,
        None => address.octets()[0] == 127 && address.octets()[1..3] != [255, 255] && address != Ipv4Addr::LOCALHOST,
    }
}

/// Ask every zone about `ip`, allowlists first, within `deadline`. A failed lookup is logged
/// and lists nobody.
pub fn check(zones: &[Zone], ip: IpAddr, resolver: &Resolver, deadline: Instant) -> Verdict {
    let listed_in = |zone: &Zone| -> bool {
        let name = query_name(ip, &zone.name);
        match resolver.lookup_until(&name, TYPE_A, deadline) {
            Ok(answer) => answer.records.iter().any(|r| matches!(r, Data::A(a) if means_listed(zone, *a))),
            Err(DnsError::NxDomain(_)) => false,
            Err(e) => {
                crate::base::log::warning(&format!(
                    "unable to ask {} about {ip}: {}; not counted as listed",
                    String::from_utf8_lossy(&zone.name),
                    e.text()
                ));
                false
            }
        }
    };
    if zones.iter().filter(|z| z.action == Action::Allow).any(listed_in) {
        return Verdict { listed: None, allowed: true };
    }
    for zone in zones {
        let Action::Refuse(code) = zone.action else { continue };
        if listed_in(zone) {
            let zone_name = String::from_utf8_lossy(&zone.name).into_owned();
            let text = list_text(resolver, &query_name(ip, &zone.name), deadline)
                .unwrap_or_else(|| format!("{ip} is listed by {zone_name}"));
            return Verdict { listed: Some(Listing { zone: zone_name, code, text }), allowed: false };
        }
    }
    Verdict::default()
}

/// The list's TXT record for the listing, made safe to repeat in a reply: printable ASCII,
/// at most [`MAX_TEXT`] bytes. None when there is none.
fn list_text(resolver: &Resolver, name: &[u8], deadline: Instant) -> Option<String> {
    let answer = resolver.lookup_until(name, TYPE_TXT, deadline).ok()?;
    let strings = answer.records.into_iter().find_map(|r| match r {
        Data::Txt(strings) => Some(strings.concat()),
        _ => None,
    })?;
    let text: String =
        strings.iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '?' }).take(MAX_TEXT).collect();
    let text = text.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The lookups for this session: nothing without control/dnsbl, for a RELAYCLIENT client, or
/// for a client address that is not an IP address.
pub fn lookup(control: &Control, remote_ip: &str, trusted: bool) -> Result<Verdict> {
    if trusted {
        return Ok(Verdict::default());
    }
    let Some(text) = control.read(FILE)? else { return Ok(Verdict::default()) };
    let zones = parse(&text)?;
    let Ok(ip) = remote_ip.parse::<IpAddr>() else { return Ok(Verdict::default()) };
    if zones.is_empty() {
        return Ok(Verdict::default());
    }
    let resolver = Resolver::from_control(control)?;
    let verdict = check(&zones, ip, &resolver, Instant::now() + LOOKUP_TIME);
    if let Some(listing) = &verdict.listed {
        crate::base::log::line(&format!("dnsbl {remote_ip} listed by {}: {}", listing.zone, listing.text));
    }
    Ok(verdict)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_their_errors() {
        let zones =
            parse(b"# lists\n\nzen.example.org 554\nbl.example.net.=127.0.0.4 451\nwl.example allow\n").unwrap();
        assert_eq!(zones.len(), 3);
        assert_eq!(zones[0], Zone { name: b"zen.example.org".to_vec(), answer: None, action: Action::Refuse(554) });
        assert_eq!(zones[1].answer, Some(Ipv4Addr::new(127, 0, 0, 4)));
        assert_eq!(zones[1].name, b"bl.example.net".to_vec());
        assert_eq!(zones[2].action, Action::Allow);
        for (bad, why) in [
            ("zen.example.org\n", "line 1: want"),
            ("\nzen.example.org 550\n", "line 2: the action"),
            ("zen.example.org=x 554\n", "not an IPv4"),
            ("not_a zone 554\n", "line 1: want"),
            ("localhost 554\n", "not a DNS zone"),
        ] {
            let e = parse(bad.as_bytes()).unwrap_err();
            assert!(e.message.contains(why), "{bad:?}: {}", e.message);
        }
    }

    #[test]
    fn query_names_reverse_the_address() {
        assert_eq!(query_name("192.0.2.99".parse().unwrap(), b"bl.example"), b"99.2.0.192.bl.example".to_vec());
        assert_eq!(query_name("::ffff:192.0.2.1".parse().unwrap(), b"z"), b"1.2.0.192.z".to_vec());
        let v6 = query_name("2001:db8::1".parse().unwrap(), b"z");
        assert_eq!(v6, b"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.z".to_vec());
    }

    #[test]
    fn error_answers_are_not_listings() {
        let any = Zone { name: b"z.example".to_vec(), answer: None, action: Action::Refuse(554) };
        assert!(means_listed(&any, Ipv4Addr::new(127, 0, 0, 2)));
        assert!(means_listed(&any, Ipv4Addr::new(127, 0, 0, 11)));
        assert!(!means_listed(&any, Ipv4Addr::new(127, 255, 255, 254)));
        assert!(!means_listed(&any, Ipv4Addr::new(127, 0, 0, 1)));
        assert!(!means_listed(&any, Ipv4Addr::new(192, 0, 2, 1)));
        let one = Zone { answer: Some(Ipv4Addr::new(127, 0, 0, 4)), ..any };
        assert!(!means_listed(&one, Ipv4Addr::new(127, 0, 0, 2)));
        assert!(means_listed(&one, Ipv4Addr::new(127, 0, 0, 4)));
        let reply = Listing { zone: "z".into(), code: 451, text: "busy".into() }.reply();
        assert_eq!(reply, (451, "4.7.1 busy".to_string()));
    }
}
