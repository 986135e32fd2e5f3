//! SPF, RFC 7208: may this client IP send mail for this domain? `check_host()` (§4) with every
//! mechanism (all, include, a, mx, ptr, ip4, ip6, exists), the modifiers redirect= and exp=,
//! macros (§7) and the processing limits of §4.6.4 (10 terms that query DNS, 2 void lookups,
//! 10 MX and 10 PTR names). The DNS side is the trait [`SpfDns`]: quill-smtpd answers it with
//! Quill's own resolver ([`ResolverDns`]), the tests with a table of answers.
//!
//! Every loop here runs over a record already in memory (a TXT record of at most
//! [`MAX_RECORD`] bytes), and the recursion of include= and redirect= is bounded by the term
//! limit: an evaluation makes at most about 10 × 11 lookups, each bounded in time by the DNS
//! side.
#![forbid(unsafe_code)]

use crate::base::fail::{qq, Error};
use crate::mail::control::Control;
use crate::mail::dns::{Data, DnsError, Resolver, TYPE_A, TYPE_AAAA, TYPE_MX, TYPE_PTR, TYPE_TXT};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Terms that query DNS (include, a, mx, ptr, exists, redirect) per evaluation (§4.6.4).
pub const MAX_TERMS: usize = 10;
/// Lookups that answer NXDOMAIN or no records, per evaluation (§4.6.4).
pub const MAX_VOID: usize = 2;
/// MX names one mx mechanism may look at; more is a permerror (§4.6.4).
pub const MAX_MX: usize = 10;
/// PTR names the ptr mechanism and %{p} look at; the rest are ignored (§4.6.4).
pub const MAX_PTR: usize = 10;
/// The longest SPF record (all TXT strings of one record) looked at; longer is a permerror.
pub const MAX_RECORD: usize = 4096;
/// The longest explanation kept.
const MAX_EXPLANATION: usize = 512;
/// The whole evaluation's time, at least the 20 seconds §4.6.4 asks for.
pub const CHECK_TIME: Duration = Duration::from_secs(20);

/// The control file of [`Policy`].
pub const FILE: &str = "spfpolicy";

/// control/spfpolicy (doc/quill-control.5, [`FILE`]): what quill-smtpd does with SPF for a
/// client that is neither RELAYCLIENT, authenticated, local nor on the loopback. `quill check`
/// reads it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// `off`: no check, no Authentication-Results header.
    Off,
    /// `record` (the default): check, and say the result in the Authentication-Results header.
    Record,
    /// `reject`: as record, and refuse MAIL when the result is fail (550 5.7.23, RFC 7372) or
    /// temperror (451 4.7.24).
    Reject,
}

impl Policy {
    /// The file's word; an unknown one is an error (the caller answers 421).
    pub fn load(control: &Control) -> Result<Policy, Error> {
        match control.line(FILE)?.as_deref() {
            None | Some(b"record") => Ok(Policy::Record),
            Some(b"off") => Ok(Policy::Off),
            Some(b"reject") => Ok(Policy::Reject),
            Some(other) => Err(Error::queue(
                qq::CONFIG_ERROR,
                format!(
                    "unable to parse control/spfpolicy: {} is not off, record or reject",
                    crate::base::log::safe(other)
                ),
            )),
        }
    }
}

/// The results of §2.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpfResult {
    /// No record, or no valid domain to check.
    None,
    /// The domain says nothing about this client.
    Neutral,
    /// The client may send for the domain.
    Pass,
    /// The client may not send for the domain.
    Fail,
    /// Probably not, says the domain.
    SoftFail,
    /// DNS failed for now.
    TempError,
    /// The domain's records are wrong.
    PermError,
}

impl SpfResult {
    /// The result's name as in RFC 7208 and RFC 8601 (`spf=NAME`).
    pub fn name(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }
}

/// Why a lookup gave nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsFailure {
    /// The name does not exist (RCODE 3), or cannot be asked for.
    NxDomain,
    /// A server failure, a timeout: for now.
    Temporary,
}

/// The lookups SPF makes. An empty list is "the name exists without such records".
pub trait SpfDns {
    /// The TXT records of `name`, each one's strings joined.
    fn txt(&mut self, name: &[u8]) -> Result<Vec<Vec<u8>>, DnsFailure>;
    /// The A (`v6` false) or AAAA (`v6` true) addresses of `name`.
    fn addresses(&mut self, name: &[u8], v6: bool) -> Result<Vec<IpAddr>, DnsFailure>;
    /// The MX host names of `name`.
    fn mx(&mut self, name: &[u8]) -> Result<Vec<Vec<u8>>, DnsFailure>;
    /// The PTR names of an address.
    fn ptr(&mut self, ip: IpAddr) -> Result<Vec<Vec<u8>>, DnsFailure>;
}

/// What check_host() found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The result.
    pub result: SpfResult,
    /// The explanation of a fail (exp=, §6.2), when the domain gave a usable one.
    pub explanation: Option<String>,
    /// For temperror and permerror, what went wrong (for the log).
    pub problem: Option<String>,
}

/// What quill-smtpd checked: MAIL FROM's domain, or HELO's when MAIL FROM is <> (§2.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The outcome.
    pub outcome: Outcome,
    /// True when the identity checked was the HELO name.
    pub helo: bool,
    /// The identity: MAIL FROM's address (local@domain) or the HELO name.
    pub identity: Vec<u8>,
}

/// The inputs of one evaluation that stay the same down includes and redirects.
struct Check<'d, D: SpfDns> {
    dns: &'d mut D,
    ip: IpAddr,
    local: Vec<u8>,
    sender_domain: Vec<u8>,
    helo: Vec<u8>,
    receiver: Vec<u8>,
    terms: usize,
    voids: usize,
    /// The client's validated PTR names, looked up once per evaluation (ptr and %{p}).
    validated: Option<Vec<Vec<u8>>>,
}

/// Why an evaluation stopped early.
enum Stop {
    Temp(String),
    Perm(String),
}

/// A result below include= and redirect=, with the explanation of a fail.
type Verdict = Result<(SpfResult, Option<String>), Stop>;

/// RFC 7208 §4: check_host(ip, domain, sender). `sender` is MAIL FROM's address (a missing
/// local part reads "postmaster"), `helo` the HELO name (for %{h}), `receiver` our own name
/// (for %{r} in explanations).
pub fn check_host<D: SpfDns>(
    dns: &mut D,
    ip: IpAddr,
    domain: &[u8],
    sender: &[u8],
    helo: &[u8],
    receiver: &[u8],
) -> Outcome {
    let (local, sender_domain) = match memchr::memrchr(b'@', sender) {
        Some(at) if at > 0 => (sender[..at].to_vec(), sender[at + 1..].to_vec()),
        Some(at) => (b"postmaster".to_vec(), sender[at + 1..].to_vec()),
        None => (b"postmaster".to_vec(), sender.to_vec()),
    };
    let ip = match ip {
        IpAddr::V6(six) => six.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        four => four,
    };
    let mut check = Check {
        dns,
        ip,
        local,
        sender_domain,
        helo: helo.to_vec(),
        receiver: if receiver.is_empty() { b"unknown".to_vec() } else { receiver.to_vec() },
        terms: 0,
        voids: 0,
        validated: None,
    };
    match check.evaluate(&trim_dot(domain).to_ascii_lowercase()) {
        Ok((result, explanation)) => Outcome { result, explanation, problem: None },
        Err(Stop::Temp(why)) => Outcome { result: SpfResult::TempError, explanation: None, problem: Some(why) },
        Err(Stop::Perm(why)) => Outcome { result: SpfResult::PermError, explanation: None, problem: Some(why) },
    }
}

/// What an SMTP server checks (§2.3, §2.4): MAIL FROM's domain; for the null sender, the
/// HELO name as `postmaster@HELO`.
pub fn check_mail<D: SpfDns>(dns: &mut D, ip: IpAddr, mail_from: &[u8], helo: &[u8], receiver: &[u8]) -> Checked {
    if mail_from.is_empty() {
        let sender = [b"postmaster@", helo].concat();
        let outcome = check_host(dns, ip, helo, &sender, helo, receiver);
        return Checked { outcome, helo: true, identity: helo.to_vec() };
    }
    let domain = match memchr::memrchr(b'@', mail_from) {
        Some(at) => &mail_from[at + 1..],
        None => mail_from,
    };
    let outcome = check_host(dns, ip, domain, mail_from, helo, receiver);
    Checked { outcome, helo: false, identity: mail_from.to_vec() }
}

fn trim_dot(name: &[u8]) -> &[u8] {
    name.strip_suffix(b".").unwrap_or(name)
}

/// §4.3: a name SPF may look up: labels of 1 to 63 bytes, at least two of them, at most 253
/// bytes, no control byte and no backslash (the resolver reads it as an escape). Spaces and
/// percent signs may come from macros (%_, %-) and DNS carries them.
fn valid_domain(name: &[u8]) -> bool {
    let name = trim_dot(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let mut labels = 0;
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 63 || label.iter().any(|&b| !(b' '..0x7f).contains(&b) || b == b'\\') {
            return false;
        }
        labels += 1;
    }
    labels >= 2
}

/// The qualifier of a mechanism, as the result it gives when it matches.
fn qualifier(byte: u8) -> Option<SpfResult> {
    match byte {
        b'+' => Some(SpfResult::Pass),
        b'-' => Some(SpfResult::Fail),
        b'~' => Some(SpfResult::SoftFail),
        b'?' => Some(SpfResult::Neutral),
        _ => None,
    }
}

/// One mechanism of a record, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// all
    All,
    /// include:domain-spec
    Include(Vec<u8>),
    /// a[:domain-spec][/4][//6]
    A(Option<Vec<u8>>, u8, u8),
    /// mx[:domain-spec][/4][//6]
    Mx(Option<Vec<u8>>, u8, u8),
    /// ptr[:domain-spec]
    Ptr(Option<Vec<u8>>),
    /// ip4:network[/len]
    Ip4(Ipv4Addr, u8),
    /// ip6:network[/len]
    Ip6(Ipv6Addr, u8),
    /// exists:domain-spec
    Exists(Vec<u8>),
}

/// A parsed SPF record: its mechanisms with their results, and its two modifiers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The mechanisms in order, each with the result it gives when it matches.
    pub mechanisms: Vec<(SpfResult, Mechanism)>,
    /// redirect=domain-spec
    pub redirect: Option<Vec<u8>>,
    /// exp=domain-spec
    pub exp: Option<Vec<u8>>,
}

/// True when a TXT record is an SPF version 1 record (§4.5).
pub fn is_spf_record(text: &[u8]) -> bool {
    text.len() >= 6 && text[..6].eq_ignore_ascii_case(b"v=spf1") && (text.len() == 6 || text[6] == b' ')
}

/// Parse an SPF record (its text after the TXT strings were joined), §4.6 and §12. Any
/// syntax error anywhere is an error (§4.6: permerror before anything is evaluated).
pub fn parse_record(text: &[u8]) -> Result<Record, String> {
    if !is_spf_record(text) {
        return Err("not an SPF record".to_string());
    }
    if text.len() > MAX_RECORD {
        return Err("record too long".to_string());
    }
    let mut record = Record::default();
    for term in text[6..].split(|&b| b == b' ').filter(|t| !t.is_empty()) {
        if let Some((name, value)) = modifier(term) {
            macro_string(value, false).map_err(|e| format!("{e} in {}", show(term)))?;
            let slot = if name.eq_ignore_ascii_case(b"redirect") {
                &mut record.redirect
            } else if name.eq_ignore_ascii_case(b"exp") {
                &mut record.exp
            } else {
                continue;
            };
            if slot.is_some() {
                return Err(format!("a second {}", show(name)));
            }
            domain_spec(value).map_err(|e| format!("{e} in {}", show(term)))?;
            *slot = Some(value.to_vec());
            continue;
        }
        let (result, rest) = match term.first().and_then(|&b| qualifier(b)) {
            Some(result) => (result, &term[1..]),
            None => (SpfResult::Pass, term),
        };
        let mechanism = mechanism(rest).map_err(|e| format!("{e} in {}", show(term)))?;
        record.mechanisms.push((result, mechanism));
    }
    Ok(record)
}

/// The printable form of record bytes, for messages.
fn show(bytes: &[u8]) -> String {
    crate::base::log::safe(bytes)
}

/// `name=value` when the term is a modifier: name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ).
fn modifier(term: &[u8]) -> Option<(&[u8], &[u8])> {
    let equals = memchr::memchr(b'=', term)?;
    let name = &term[..equals];
    let ok = name.first().is_some_and(|b| b.is_ascii_alphabetic())
        && name.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| (name, &term[equals + 1..]))
}

/// Split off `[/ip4-cidr][//ip6-cidr]` from the end of a term.
fn split_cidr(term: &[u8]) -> (&[u8], Option<&[u8]>, Option<&[u8]>) {
    let mut rest = term;
    let mut six = None;
    if let Some(at) = rest.windows(2).rposition(|w| w == b"//") {
        if let Some(digits) = digits_after(rest, at, 2) {
            six = Some(digits);
            rest = &rest[..at];
        }
    }
    let mut four = None;
    if let Some(at) = memchr::memrchr(b'/', rest) {
        if let Some(digits) = digits_after(rest, at, 1) {
            four = Some(digits);
            rest = &rest[..at];
        }
    }
    (rest, four, six)
}

fn digits_after(text: &[u8], at: usize, skip: usize) -> Option<&[u8]> {
    let digits = &text[at + skip..];
    (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit)).then_some(digits)
}

/// A prefix length: no leading zero, at most `max`.
fn cidr(digits: &[u8], max: u8) -> Result<u8, String> {
    if digits.len() > 3 || (digits.len() > 1 && digits[0] == b'0') {
        return Err("bad prefix length".to_string());
    }
    let value = digits.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    if value > u32::from(max) {
        return Err("prefix length too long".to_string());
    }
    Ok(value as u8)
}

fn mechanism(text: &[u8]) -> Result<Mechanism, String> {
    let (body, four_text, six_text) = split_cidr(text);
    let (four, six) = match (four_text, six_text) {
        // ip6:network/length has one slash.
        (Some(length), None) if body.len() >= 4 && body[..4].eq_ignore_ascii_case(b"ip6:") => {
            (None, Some(cidr(length, 128)?))
        }
        (four, six) => (four.map(|f| cidr(f, 32)).transpose()?, six.map(|s| cidr(s, 128)).transpose()?),
    };
    let (name, argument) = match memchr::memchr(b':', body) {
        Some(colon) => (&body[..colon], Some(&body[colon + 1..])),
        None => (body, None),
    };
    let name = name.to_ascii_lowercase();
    let no_cidr = four.is_none() && six.is_none();
    let spec = |argument: Option<&[u8]>| -> Result<Option<Vec<u8>>, String> {
        match argument {
            None => Ok(None),
            Some(value) => domain_spec(value).map(|()| Some(value.to_vec())),
        }
    };
    let required = |argument: Option<&[u8]>| -> Result<Vec<u8>, String> {
        spec(argument)?.ok_or_else(|| "a domain is needed".to_string())
    };
    match name.as_slice() {
        b"all" if argument.is_none() && no_cidr => Ok(Mechanism::All),
        b"include" if no_cidr => Ok(Mechanism::Include(required(argument)?)),
        b"exists" if no_cidr => Ok(Mechanism::Exists(required(argument)?)),
        b"ptr" if no_cidr => Ok(Mechanism::Ptr(spec(argument)?)),
        b"a" => Ok(Mechanism::A(spec(argument)?, four.unwrap_or(32), six.unwrap_or(128))),
        b"mx" => Ok(Mechanism::Mx(spec(argument)?, four.unwrap_or(32), six.unwrap_or(128))),
        b"ip4" if six.is_none() => {
            let text = argument.ok_or("an address is needed")?;
            Ok(Mechanism::Ip4(parse_ip4(text).ok_or("bad IPv4 address")?, four.unwrap_or(32)))
        }
        b"ip6" if four.is_none() && six_text.is_none() => {
            let text = argument.ok_or("an address is needed")?;
            let ip = std::str::from_utf8(text).ok().and_then(|t| t.parse::<Ipv6Addr>().ok());
            Ok(Mechanism::Ip6(ip.ok_or("bad IPv6 address")?, six.unwrap_or(128)))
        }
        b"all" | b"include" | b"exists" | b"ptr" | b"ip4" | b"ip6" => Err("bad arguments".to_string()),
        _ => Err("unknown mechanism".to_string()),
    }
}

/// A dotted quad of four decimal numbers (§5.6: ip4-network).
fn parse_ip4(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split(|&b| b == b'.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let value = part.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
        *octet = u8::try_from(value).ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// One piece of a macro-string.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Literal(&'a [u8]),
    Macro { letter: u8, upper: bool, digits: Option<usize>, reverse: bool, delimiters: &'a [u8] },
}

/// Parse a macro-string (§7.1). `explanation` allows the letters c, r and t.
fn macro_string(text: &[u8], explanation: bool) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let percent = memchr::memchr(b'%', &text[at..]).map_or(text.len(), |p| at + p);
        if percent > at {
            let literal = &text[at..percent];
            if !explanation && literal.iter().any(|&b| !(0x21..=0x7e).contains(&b)) {
                return Err("bad byte in macro-string".to_string());
            }
            pieces.push(Piece::Literal(literal));
        }
        if percent == text.len() {
            break;
        }
        match text.get(percent + 1) {
            Some(b'%') => pieces.push(Piece::Literal(b"%")),
            Some(b'_') => pieces.push(Piece::Literal(b" ")),
            Some(b'-') => pieces.push(Piece::Literal(b"%20")),
            Some(b'{') => {
                let close = memchr::memchr(b'}', &text[percent..]).ok_or("unclosed macro")? + percent;
                pieces.push(macro_expand(&text[percent + 2..close], explanation)?);
                at = close + 1;
                continue;
            }
            _ => return Err("bad % in macro-string".to_string()),
        }
        at = percent + 2;
    }
    Ok(pieces)
}

/// The inside of `%{...}`: letter, transformers, delimiters.
fn macro_expand(inside: &[u8], explanation: bool) -> Result<Piece<'_>, String> {
    let (&letter, rest) = inside.split_first().ok_or("empty macro")?;
    let lower = letter.to_ascii_lowercase();
    let allowed = b"slodiphv".contains(&lower) || (explanation && b"crt".contains(&lower));
    if !allowed {
        return Err(format!("bad macro letter {}", show(&[letter])));
    }
    let count = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let digits = match count {
        0 => None,
        _ => {
            let value =
                rest[..count].iter().fold(0usize, |n, &d| n.saturating_mul(10).saturating_add(usize::from(d - b'0')));
            if value == 0 {
                return Err("macro keeps zero parts".to_string());
            }
            Some(value)
        }
    };
    let mut rest = &rest[count..];
    let reverse = matches!(rest.first(), Some(b'r' | b'R'));
    if reverse {
        rest = &rest[1..];
    }
    if !rest.iter().all(|b| b".-+,/_=".contains(b)) {
        return Err("bad macro delimiter".to_string());
    }
    Ok(Piece::Macro { letter: lower, upper: letter.is_ascii_uppercase(), digits, reverse, delimiters: rest })
}

/// A domain-spec (§7.1): a macro-string ending in a macro or in "." toplabel ["."].
fn domain_spec(text: &[u8]) -> Result<(), String> {
    let pieces = macro_string(text, false)?;
    if matches!(pieces.last(), Some(Piece::Macro { .. })) {
        return Ok(());
    }
    let name = trim_dot(text);
    let Some(dot) = memchr::memrchr(b'.', name) else {
        return Err("domain has no dot".to_string());
    };
    let top = &name[dot + 1..];
    let alnum = top.iter().all(u8::is_ascii_alphanumeric);
    let ok = if alnum {
        top.iter().any(u8::is_ascii_alphabetic)
    } else {
        top.first().is_some_and(u8::is_ascii_alphanumeric)
            && top.last().is_some_and(u8::is_ascii_alphanumeric)
            && top.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !ok {
        return Err("bad top label".to_string());
    }
    Ok(())
}

/// An address as %{i} writes it: dotted decimal, or 32 dotted hex nibbles (§7.3), upper case
/// as in §7.4's example (DNS does not mind; an explanation shows it).
fn dotted_ip(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(four) => four.to_string().into_bytes(),
        IpAddr::V6(six) => {
            let mut out = Vec::with_capacity(64);
            for octet in six.octets() {
                for nibble in [octet >> 4, octet & 15] {
                    if !out.is_empty() {
                        out.push(b'.');
                    }
                    out.push(b"0123456789ABCDEF"[usize::from(nibble)]);
                }
            }
            out
        }
    }
}

/// True when `ip` is in `network/length`.
fn in_network(ip: IpAddr, four: Option<(Ipv4Addr, u8)>, six: Option<(Ipv6Addr, u8)>) -> bool {
    match (ip, four, six) {
        (IpAddr::V4(ip), Some((net, len)), _) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), _, Some((net, len))) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// A name from an expansion cut to 253 bytes by dropping labels on the left (§7.3).
fn shorten(mut name: Vec<u8>) -> Vec<u8> {
    while trim_dot(&name).len() > 253 {
        match memchr::memchr(b'.', &name) {
            Some(dot) => name.drain(..=dot),
            None => return name,
        };
    }
    name
}

impl<D: SpfDns> Check<'_, D> {
    /// check_host() for one domain (§4.3 to §4.7).
    fn evaluate(&mut self, domain: &[u8]) -> Verdict {
        if !valid_domain(domain) {
            return Ok((SpfResult::None, None));
        }
        let records = match self.dns.txt(domain) {
            Ok(records) => records,
            Err(DnsFailure::NxDomain) => return Ok((SpfResult::None, None)),
            Err(DnsFailure::Temporary) => return Err(Stop::Temp(format!("DNS failed for {}", show(domain)))),
        };
        let mut spf = records.iter().filter(|r| is_spf_record(r));
        let Some(text) = spf.next() else {
            return Ok((SpfResult::None, None));
        };
        if spf.next().is_some() {
            return Err(Stop::Perm(format!("{} has more than one SPF record", show(domain))));
        }
        let record = parse_record(text).map_err(|e| Stop::Perm(format!("{}: {e}", show(domain))))?;
        for (result, mechanism) in &record.mechanisms {
            if self.matches(mechanism, domain)? {
                let explanation = match (result, &record.exp) {
                    (SpfResult::Fail, Some(exp)) => self.explain(exp, domain),
                    _ => None,
                };
                return Ok((*result, explanation));
            }
        }
        if let Some(redirect) = &record.redirect {
            self.count_term()?;
            let target = self.expand_domain(redirect, domain)?;
            return match self.evaluate(&target)? {
                (SpfResult::None, _) => Err(Stop::Perm(format!("redirect to {} without a record", show(&target)))),
                verdict => Ok(verdict),
            };
        }
        Ok((SpfResult::Neutral, None))
    }

    fn count_term(&mut self) -> Result<(), Stop> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(Stop::Perm(format!("more than {MAX_TERMS} DNS lookups")));
        }
        Ok(())
    }

    fn void(&mut self) -> Result<(), Stop> {
        self.voids += 1;
        if self.voids > MAX_VOID {
            return Err(Stop::Perm(format!("more than {MAX_VOID} void lookups")));
        }
        Ok(())
    }

    /// Addresses of `name` in the client's family; a missing name or no records is void when
    /// `counts`, and nothing in any case.
    fn addresses(&mut self, name: &[u8], counts: bool) -> Result<Vec<IpAddr>, Stop> {
        if !valid_domain(name) {
            if counts {
                self.void()?;
            }
            return Ok(Vec::new());
        }
        match self.dns.addresses(name, self.ip.is_ipv6()) {
            Ok(found) if !found.is_empty() => Ok(found),
            Ok(_) | Err(DnsFailure::NxDomain) => {
                if counts {
                    self.void()?;
                }
                Ok(Vec::new())
            }
            Err(DnsFailure::Temporary) => Err(Stop::Temp(format!("DNS failed for {}", show(name)))),
        }
    }

    fn target(&mut self, spec: &Option<Vec<u8>>, domain: &[u8]) -> Result<Vec<u8>, Stop> {
        match spec {
            Some(spec) => self.expand_domain(spec, domain),
            None => Ok(domain.to_vec()),
        }
    }

    fn matches(&mut self, mechanism: &Mechanism, domain: &[u8]) -> Result<bool, Stop> {
        let ip = self.ip;
        match mechanism {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(net, len) => Ok(in_network(ip, Some((*net, *len)), None)),
            Mechanism::Ip6(net, len) => Ok(in_network(ip, None, Some((*net, *len)))),
            Mechanism::Include(spec) => {
                self.count_term()?;
                let target = self.expand_domain(spec, domain)?;
                match self.evaluate(&target)?.0 {
                    SpfResult::Pass => Ok(true),
                    SpfResult::None => Err(Stop::Perm(format!("include of {} without a record", show(&target)))),
                    _ => Ok(false),
                }
            }
            Mechanism::A(spec, four, six) => {
                self.count_term()?;
                let target = self.target(spec, domain)?;
                let found = self.addresses(&target, true)?;
                Ok(found.into_iter().any(|a| cidr_match(ip, a, *four, *six)))
            }
            Mechanism::Mx(spec, four, six) => {
                self.count_term()?;
                let target = self.target(spec, domain)?;
                let hosts = if valid_domain(&target) { self.dns.mx(&target) } else { Err(DnsFailure::NxDomain) };
                let hosts = match hosts {
                    Ok(hosts) if !hosts.is_empty() => hosts,
                    Ok(_) | Err(DnsFailure::NxDomain) => {
                        self.void()?;
                        return Ok(false);
                    }
                    Err(DnsFailure::Temporary) => return Err(Stop::Temp(format!("DNS failed for {}", show(&target)))),
                };
                if hosts.len() > MAX_MX {
                    return Err(Stop::Perm(format!("{} has more than {MAX_MX} MX records", show(&target))));
                }
                for host in hosts {
                    if self.addresses(&host, false)?.into_iter().any(|a| cidr_match(ip, a, *four, *six)) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                self.count_term()?;
                let target = self.target(spec, domain)?;
                let target = trim_dot(&target).to_ascii_lowercase();
                Ok(self.validated_names()?.iter().any(|name| is_within(name, &target)))
            }
            Mechanism::Exists(spec) => {
                self.count_term()?;
                let target = self.expand_domain(spec, domain)?;
                let found =
                    if valid_domain(&target) { self.dns.addresses(&target, false) } else { Err(DnsFailure::NxDomain) };
                match found {
                    Ok(found) if !found.is_empty() => Ok(true),
                    Ok(_) | Err(DnsFailure::NxDomain) => self.void().map(|()| false),
                    Err(DnsFailure::Temporary) => Err(Stop::Temp(format!("DNS failed for {}", show(&target)))),
                }
            }
        }
    }

    /// The client's PTR names that point back at it (§5.5), lower case, at most [`MAX_PTR`]
    /// looked at, once per evaluation (a record full of %{p} costs no more than one). A DNS
    /// failure on the way gives fewer names, never an error.
    fn validated_names(&mut self) -> Result<Vec<Vec<u8>>, Stop> {
        if let Some(names) = &self.validated {
            return Ok(names.clone());
        }
        let names = self.dns.ptr(self.ip).unwrap_or_default();
        let mut validated = Vec::new();
        for name in names.into_iter().take(MAX_PTR) {
            let name = trim_dot(&name).to_ascii_lowercase();
            if !valid_domain(&name) {
                continue;
            }
            if let Ok(found) = self.dns.addresses(&name, self.ip.is_ipv6()) {
                if found.contains(&self.ip) {
                    validated.push(name);
                }
            }
        }
        self.validated = Some(validated.clone());
        Ok(validated)
    }

    /// exp= (§6.2): the TXT record at the expanded name, itself expanded; nothing when any
    /// step fails.
    fn explain(&mut self, spec: &[u8], domain: &[u8]) -> Option<String> {
        let target = self.expand_domain(spec, domain).ok()?;
        if !valid_domain(&target) {
            return None;
        }
        let records = self.dns.txt(&target).ok()?;
        let [text] = records.as_slice() else {
            return None;
        };
        let pieces = macro_string(text, true).ok()?;
        let expanded = self.expand(&pieces, domain).ok()?;
        let printable = expanded.iter().all(|&b| (0x20..0x7f).contains(&b));
        (printable && !expanded.is_empty()).then(|| {
            let mut text = String::from_utf8_lossy(&expanded).into_owned();
            text.truncate(MAX_EXPLANATION);
            text
        })
    }

    fn expand_domain(&mut self, spec: &[u8], domain: &[u8]) -> Result<Vec<u8>, Stop> {
        let pieces = macro_string(spec, false).map_err(Stop::Perm)?;
        let expanded = self.expand(&pieces, domain)?;
        Ok(shorten(trim_dot(&expanded).to_ascii_lowercase()))
    }

    fn expand(&mut self, pieces: &[Piece<'_>], domain: &[u8]) -> Result<Vec<u8>, Stop> {
        let mut out = Vec::new();
        for piece in pieces {
            let (letter, upper, digits, reverse, delimiters) = match piece {
                Piece::Literal(bytes) => {
                    out.extend_from_slice(bytes);
                    continue;
                }
                Piece::Macro { letter, upper, digits, reverse, delimiters } => {
                    (*letter, *upper, *digits, *reverse, *delimiters)
                }
            };
            let value = match letter {
                b's' => [&self.local[..], b"@", &self.sender_domain].concat(),
                b'l' => self.local.clone(),
                b'o' => self.sender_domain.clone(),
                b'd' => domain.to_vec(),
                b'i' => dotted_ip(self.ip),
                b'p' => self.p_macro(domain)?,
                b'v' => {
                    if self.ip.is_ipv4() {
                        b"in-addr".to_vec()
                    } else {
                        b"ip6".to_vec()
                    }
                }
                b'h' => self.helo.clone(),
                b'c' => self.ip.to_string().into_bytes(),
                b'r' => self.receiver.clone(),
                b't' => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    .to_string()
                    .into_bytes(),
                _ => return Err(Stop::Perm("bad macro letter".to_string())),
            };
            let delimiters: &[u8] = if delimiters.is_empty() { b"." } else { delimiters };
            let mut parts: Vec<&[u8]> = value.split(|b| delimiters.contains(b)).collect();
            if reverse {
                parts.reverse();
            }
            if let Some(keep) = digits {
                let skip = parts.len().saturating_sub(keep);
                parts.drain(..skip);
            }
            let joined = parts.join(&b'.');
            if upper {
                for &byte in &joined {
                    if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                        out.push(byte);
                    } else {
                        out.extend_from_slice(format!("%{byte:02X}").as_bytes());
                    }
                }
            } else {
                out.extend_from_slice(&joined);
            }
        }
        Ok(out)
    }

    /// %{p} (§7.3): a validated name of the client, the domain itself or one under it when
    /// there is one, "unknown" otherwise.
    fn p_macro(&mut self, domain: &[u8]) -> Result<Vec<u8>, Stop> {
        let names = self.validated_names()?;
        let domain = domain.to_ascii_lowercase();
        let best = names.iter().find(|n| **n == domain).or_else(|| names.iter().find(|n| is_within(n, &domain)));
        Ok(best.or(names.first()).cloned().unwrap_or_else(|| b"unknown".to_vec()))
    }
}

/// `name` is `target` or a name below it.
fn is_within(name: &[u8], target: &[u8]) -> bool {
    name == target
        || (name.len() > target.len() && name.ends_with(target) && name[name.len() - target.len() - 1] == b'.')
}

fn cidr_match(ip: IpAddr, found: IpAddr, four: u8, six: u8) -> bool {
    match found {
        IpAddr::V4(net) => in_network(ip, Some((net, four)), None),
        IpAddr::V6(net) => in_network(ip, None, Some((net, six))),
    }
}

/// [`SpfDns`] over Quill's resolver, all lookups of one evaluation within one deadline
/// ([`CHECK_TIME`]).
pub struct ResolverDns<'r> {
    resolver: &'r Resolver,
    deadline: Instant,
}

impl<'r> ResolverDns<'r> {
    /// Lookups on `resolver` for the next [`CHECK_TIME`].
    pub fn new(resolver: &'r Resolver) -> ResolverDns<'r> {
        ResolverDns { resolver, deadline: Instant::now() + CHECK_TIME }
    }

    fn lookup(&self, name: &[u8], qtype: u16) -> Result<Vec<Data>, DnsFailure> {
        match self.resolver.lookup_until(name, qtype, self.deadline) {
            Ok(answer) => Ok(answer.records),
            Err(DnsError::NxDomain(_) | DnsError::BadName(_)) => Err(DnsFailure::NxDomain),
            Err(DnsError::Temporary(..)) => Err(DnsFailure::Temporary),
        }
    }
}

impl SpfDns for ResolverDns<'_> {
    fn txt(&mut self, name: &[u8]) -> Result<Vec<Vec<u8>>, DnsFailure> {
        Ok(self
            .lookup(name, TYPE_TXT)?
            .into_iter()
            .filter_map(|d| match d {
                Data::Txt(strings) => Some(strings.concat()),
                _ => None,
            })
            .collect())
    }

    fn addresses(&mut self, name: &[u8], v6: bool) -> Result<Vec<IpAddr>, DnsFailure> {
        Ok(self
            .lookup(name, if v6 { TYPE_AAAA } else { TYPE_A })?
            .into_iter()
            .filter_map(|d| match d {
                Data::A(four) => Some(IpAddr::V4(four)),
                Data::Aaaa(six) => Some(IpAddr::V6(six)),
                _ => None,
            })
            .collect())
    }

    fn mx(&mut self, name: &[u8]) -> Result<Vec<Vec<u8>>, DnsFailure> {
        Ok(self
            .lookup(name, TYPE_MX)?
            .into_iter()
            .filter_map(|d| match d {
                Data::Mx(_, host) => Some(host),
                _ => None,
            })
            .collect())
    }

    fn ptr(&mut self, ip: IpAddr) -> Result<Vec<Vec<u8>>, DnsFailure> {
        let mut name = dotted_ip(ip);
        if ip.is_ipv4() {
            let mut octets: Vec<&[u8]> = name.split(|&b| b == b'.').collect();
            octets.reverse();
            name = [octets.join(&b'.').as_slice(), b".in-addr.arpa"].concat();
        } else {
            name.reverse();
            name.extend_from_slice(b".ip6.arpa");
        }
        Ok(self
            .lookup(&name, TYPE_PTR)?
            .into_iter()
            .filter_map(|d| match d {
                Data::Ptr(host) => Some(host),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A table of answers: (name, type) → records; a name absent from every key is NXDOMAIN.
    #[derive(Default)]
    struct Table {
        txt: HashMap<Vec<u8>, Vec<Vec<u8>>>,
        addresses: HashMap<Vec<u8>, Vec<IpAddr>>,
        mx: HashMap<Vec<u8>, Vec<Vec<u8>>>,
        ptr: HashMap<IpAddr, Vec<Vec<u8>>>,
        temporary: Vec<Vec<u8>>,
        asked: usize,
    }

    impl Table {
        fn exists(&self, name: &[u8]) -> bool {
            self.txt.contains_key(name) || self.addresses.contains_key(name) || self.mx.contains_key(name)
        }
        fn answer<T: Clone>(
            &mut self,
            map: fn(&Table) -> &HashMap<Vec<u8>, Vec<T>>,
            name: &[u8],
        ) -> Result<Vec<T>, DnsFailure> {
            self.asked += 1;
            if self.temporary.iter().any(|t| t == name) {
                return Err(DnsFailure::Temporary);
            }
            match map(self).get(name) {
                Some(found) => Ok(found.clone()),
                None if self.exists(name) => Ok(Vec::new()),
                None => Err(DnsFailure::NxDomain),
            }
        }
    }

    impl SpfDns for Table {
        fn txt(&mut self, name: &[u8]) -> Result<Vec<Vec<u8>>, DnsFailure> {
            self.answer(|t| &t.txt, name)
        }
        fn addresses(&mut self, name: &[u8], v6: bool) -> Result<Vec<IpAddr>, DnsFailure> {
            let found = self.answer(|t| &t.addresses, name)?;
            Ok(found.into_iter().filter(|a| a.is_ipv6() == v6).collect())
        }
        fn mx(&mut self, name: &[u8]) -> Result<Vec<Vec<u8>>, DnsFailure> {
            self.answer(|t| &t.mx, name)
        }
        fn ptr(&mut self, ip: IpAddr) -> Result<Vec<Vec<u8>>, DnsFailure> {
            self.asked += 1;
            self.ptr.get(&ip).cloned().ok_or(DnsFailure::NxDomain)
        }
    }

    fn table(records: &[(&str, &str)]) -> Table {
        let mut table = Table::default();
        for (name, text) in records {
            table.txt.entry(name.as_bytes().to_vec()).or_default().push(text.as_bytes().to_vec());
        }
        table
    }

    fn check(table: &mut Table, ip: &str, sender: &str) -> SpfResult {
        check_mail(table, ip.parse().expect("IP"), sender.as_bytes(), b"helo.example.org", b"mx.test").outcome.result
    }

    #[test]
    fn ip_mechanisms_and_qualifiers() {
        let mut t = table(&[("example.com", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all")]);
        assert_eq!(check(&mut t, "192.0.2.9", "a@example.com"), SpfResult::Pass);
        assert_eq!(check(&mut t, "2001:db8::1", "a@example.com"), SpfResult::Pass);
        assert_eq!(check(&mut t, "::ffff:192.0.2.9", "a@example.com"), SpfResult::Pass);
        assert_eq!(check(&mut t, "198.51.100.1", "a@example.com"), SpfResult::SoftFail);
        assert_eq!(check(&mut t, "198.51.100.1", "a@nothing.example"), SpfResult::None);
    }

    #[test]
    fn syntax_errors_anywhere_are_permerror() {
        for record in [
            "v=spf1 +all foo:bar",
            "v=spf1 ip4:1.2.3.4/33",
            "v=spf1 a:museum",
            "v=spf1 %{z}.x.com",
            "v=spf1 redirect=a.com redirect=b.com",
            "v=spf1 ip4:1.2.3.4/032",
        ] {
            let mut t = table(&[("example.com", record)]);
            assert_eq!(check(&mut t, "192.0.2.1", "a@example.com"), SpfResult::PermError, "{record}");
        }
    }

    #[test]
    fn lookup_limits() {
        let mut records = vec![("example.com", "v=spf1 include:i1.example.com -all")];
        let names: Vec<String> = (1..=11).map(|i| format!("i{i}.example.com")).collect();
        let texts: Vec<String> = (1..=11).map(|i| format!("v=spf1 include:i{}.example.com", i + 1)).collect();
        for (name, text) in names.iter().zip(&texts) {
            records.push((name, text));
        }
        let mut t = table(&records);
        assert_eq!(check(&mut t, "192.0.2.1", "a@example.com"), SpfResult::PermError);
        let mut t = table(&[("example.com", "v=spf1 a:x1.example.com a:x2.example.com a:x3.example.com +all")]);
        assert_eq!(check(&mut t, "192.0.2.1", "a@example.com"), SpfResult::PermError);
        let mut t = table(&[("example.com", "v=spf1 a:x1.example.com a:x2.example.com +all")]);
        assert_eq!(check(&mut t, "192.0.2.1", "a@example.com"), SpfResult::Pass);
    }

    #[test]
    fn a_mx_ptr_exists_include_redirect() {
        let mut t = table(&[
            ("example.com", "v=spf1 mx/24 -all"),
            ("a.example", "v=spf1 a:host.example.com include:example.com -all"),
            ("r.example", "v=spf1 redirect=a.example"),
            ("p.example", "v=spf1 ptr -all"),
            ("e.example", "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all"),
        ]);
        t.mx.insert(b"example.com".to_vec(), vec![b"mail.example.com".to_vec()]);
        t.addresses.insert(b"mail.example.com".to_vec(), vec!["192.0.2.10".parse().expect("IP")]);
        t.addresses.insert(b"host.example.com".to_vec(), vec!["198.51.100.7".parse().expect("IP")]);
        t.addresses.insert(b"mx.p.example".to_vec(), vec!["203.0.113.5".parse().expect("IP")]);
        t.addresses.insert(b"1.2.0.192.foo._spf.e.example".to_vec(), vec!["127.0.0.2".parse().expect("IP")]);
        t.ptr.insert("203.0.113.5".parse().expect("IP"), vec![b"mx.p.example".to_vec()]);
        assert_eq!(check(&mut t, "192.0.2.99", "a@example.com"), SpfResult::Pass);
        assert_eq!(check(&mut t, "192.0.3.1", "a@example.com"), SpfResult::Fail);
        assert_eq!(check(&mut t, "198.51.100.7", "a@a.example"), SpfResult::Pass);
        assert_eq!(check(&mut t, "192.0.2.99", "a@r.example"), SpfResult::Pass);
        assert_eq!(check(&mut t, "192.0.9.9", "a@r.example"), SpfResult::Fail);
        assert_eq!(check(&mut t, "203.0.113.5", "a@p.example"), SpfResult::Pass);
        assert_eq!(check(&mut t, "203.0.113.6", "a@p.example"), SpfResult::Fail);
        assert_eq!(check(&mut t, "192.0.2.1", "foo-bar@e.example"), SpfResult::Pass);
        assert_eq!(check(&mut t, "192.0.2.1", "baz-bar@e.example"), SpfResult::Fail);
    }

    #[test]
    fn temperror_helo_and_explanation() {
        let mut t = table(&[
            ("example.com", "v=spf1 -all exp=why.example.com"),
            ("why.example.com", "%{i} is not one of %{d}'s hosts, says %{r}"),
            ("helo.example.org", "v=spf1 +all"),
        ]);
        t.temporary.push(b"down.example".to_vec());
        assert_eq!(check(&mut t, "192.0.2.1", "a@down.example"), SpfResult::TempError);
        let checked = check_mail(&mut t, "192.0.2.1".parse().expect("IP"), b"", b"helo.example.org", b"mx.test");
        assert!(checked.helo);
        assert_eq!(checked.outcome.result, SpfResult::Pass);
        let outcome =
            check_host(&mut t, "192.0.2.1".parse().expect("IP"), b"example.com", b"a@example.com", b"h", b"mx.test");
        assert_eq!(outcome.result, SpfResult::Fail);
        assert_eq!(outcome.explanation.as_deref(), Some("192.0.2.1 is not one of example.com's hosts, says mx.test"));
    }

    #[test]
    fn macros_of_section_7_4() {
        // RFC 7208 §7.4's examples: sender strong-bad@email.example.com, client 192.0.2.3.
        let mut t = Table::default();
        let mut check = Check {
            dns: &mut t,
            ip: "192.0.2.3".parse().expect("IP"),
            local: b"strong-bad".to_vec(),
            sender_domain: b"email.example.com".to_vec(),
            helo: b"h".to_vec(),
            receiver: b"r".to_vec(),
            terms: 0,
            voids: 0,
            validated: None,
        };
        let cases: [(&str, &str); 9] = [
            ("%{s}", "strong-bad@email.example.com"),
            ("%{o}", "email.example.com"),
            ("%{d4}", "email.example.com"),
            ("%{d2}", "example.com"),
            ("%{dr}", "com.example.email"),
            ("%{d2r}", "example.email"),
            ("%{l-}", "strong.bad"),
            ("%{lr-}", "bad.strong"),
            ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ];
        for (spec, want) in cases {
            let pieces = macro_string(spec.as_bytes(), false).expect("macro");
            let got = check.expand(&pieces, b"email.example.com").ok().expect("test value");
            assert_eq!(String::from_utf8_lossy(&got), want, "{spec}");
        }
        check.ip = "2001:db8::cb01".parse().expect("IP");
        let pieces = macro_string(b"%{ir}.%{v}._spf.%{d2}", false).expect("test value");
        let got = check.expand(&pieces, b"email.example.com").ok().expect("test value");
        assert_eq!(
            String::from_utf8_lossy(&got),
            "1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2.ip6._spf.example.com"
        );
        let pieces = macro_string(b"%{L}%%%_%-", false).expect("test value");
        assert_eq!(check.expand(&pieces, b"x").ok().expect("test value"), b"strong-bad% %20");
    }
}
