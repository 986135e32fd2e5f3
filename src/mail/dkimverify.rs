//! DKIM verification (RFC 6376 rsa-sha256, RFC 8463 ed25519-sha256), streaming: the header
//! block first, then the body in chunks of any size, then the key lookups and the verdicts.
//! Nothing of the body is kept: each signature hashes it as it goes by.
//!
//! ```text
//! let mut verifier = Verifier::new(header_block, now);   // the fields up to the empty line
//! verifier.feed(chunk); verifier.feed(chunk); …           // the body, LF or CRLF line ends
//! let verdicts = verifier.finish(&mut ResolverLookup::new(&resolver));
//! for v in &verdicts { v.authres() }                      // "dkim=pass header.d=… header.s=…"
//! ```
//!
//! The header block may hold the empty line and even the start of the body: whatever follows
//! the empty line is taken as body. The key records come through [`TxtLookup`], so that tests
//! give a table and programs give Quill's resolver ([`ResolverLookup`]).
//!
//! Results follow RFC 8601 §2.7.1: `pass`; `fail` (the body hash or the signature does not
//! match); `neutral` (the DKIM-Signature cannot be used: a required tag missing, a syntax
//! error, an unknown version or algorithm, `i=` outside `d=`, `h=` without from); `policy`
//! (acceptable in form but not to us: rsa-sha1 (RFC 8301), an RSA key under 1024 bits,
//! expired `x=`, a `t=s` key with an `i=` in a subdomain); `temperror` (the key lookup failed
//! for now); `permerror` (no key record, a revoked key (`p=` empty), a key record that cannot
//! be used or that does not fit the signature).
//!
//! Work is bounded: at most [`MAX_SIGNATURES`] signatures are checked (later ones are
//! ignored), each names at most [`MAX_SIGNED_FIELDS`] fields, one key lookup per distinct
//! selector and domain, and the header block is bounded by `dkim::MAX_HEADER`. The body is
//! hashed as it streams, so its cost is linear and its size is the caller's limit (databytes).
#![forbid(unsafe_code)]

use crate::mail::dkim::{self, canon_header, unbase64, Canon, Field};
use crate::mail::dns::{Data, DnsError, Resolver, TYPE_TXT};
use std::time::{Duration, Instant};

/// At most this many DKIM-Signature fields are checked, from the top; the rest are ignored.
pub const MAX_SIGNATURES: usize = 5;
/// A signature naming more header fields than this in `h=` is not checked (neutral).
pub const MAX_SIGNED_FIELDS: usize = 128;
/// RSA keys shorter than this are refused (RFC 8301 §3.2).
pub const MIN_RSA_BITS: usize = 1024;
/// At most this many TXT lookups per [`ResolverLookup`], and this long for all of them.
pub const MAX_LOOKUPS: usize = 10;
/// See [`MAX_LOOKUPS`].
pub const LOOKUP_BUDGET: Duration = Duration::from_secs(30);

/// Why a TXT lookup gave no records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxtError {
    /// The name does not exist (NXDOMAIN).
    NotFound,
    /// The servers failed or timed out, or the lookup budget is spent: try again later.
    Temporary(String),
}

/// Where TXT records come from: Quill's resolver ([`ResolverLookup`]), or a table in tests.
pub trait TxtLookup {
    /// The TXT records at `name`, each record's strings joined. Ok and empty: the name
    /// exists but has no TXT record.
    fn txt(&mut self, name: &str) -> Result<Vec<Vec<u8>>, TxtError>;
}

/// A fixed table of TXT records: (name, record) pairs; a name that is not there does not
/// exist. For tests and fuzz targets.
#[derive(Clone, Debug, Default)]
pub struct TxtTable(pub Vec<(String, Vec<u8>)>);

impl TxtLookup for TxtTable {
    fn txt(&mut self, name: &str) -> Result<Vec<Vec<u8>>, TxtError> {
        let name = name.trim_end_matches('.');
        let records: Vec<Vec<u8>> =
            self.0.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, r)| r.clone()).collect();
        if records.is_empty() {
            Err(TxtError::NotFound)
        } else {
            Ok(records)
        }
    }
}

/// TXT lookups through Quill's resolver, at most [`MAX_LOOKUPS`] of them within
/// [`LOOKUP_BUDGET`] from its creation (one message's worth).
pub struct ResolverLookup<'a> {
    resolver: &'a Resolver,
    deadline: Instant,
    lookups: usize,
}

impl<'a> ResolverLookup<'a> {
    /// A lookup budget for one message.
    pub fn new(resolver: &'a Resolver) -> ResolverLookup<'a> {
        ResolverLookup { resolver, deadline: Instant::now() + LOOKUP_BUDGET, lookups: 0 }
    }
}

impl TxtLookup for ResolverLookup<'_> {
    fn txt(&mut self, name: &str) -> Result<Vec<Vec<u8>>, TxtError> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            return Err(TxtError::Temporary("too many DNS lookups for one message".to_string()));
        }
        match self.resolver.lookup_until(name.as_bytes(), TYPE_TXT, self.deadline) {
            Ok(answer) => Ok(answer
                .records
                .into_iter()
                .filter_map(|d| match d {
                    Data::Txt(strings) => Some(strings.concat()),
                    _ => None,
                })
                .collect()),
            Err(DnsError::NxDomain(_)) | Err(DnsError::BadName(_)) => Err(TxtError::NotFound),
            Err(DnsError::Temporary(_, why)) => Err(TxtError::Temporary(why)),
        }
    }
}

/// The result of one signature (RFC 8601 §2.7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The signature verified.
    Pass,
    /// The body hash or the signature did not match.
    Fail,
    /// The signature could not be used (syntax, unknown version or algorithm).
    Neutral,
    /// Well formed but not acceptable (obsolete algorithm, short key, expired).
    Policy,
    /// The key could not be fetched for now.
    TempError,
    /// The key record is missing, revoked or unusable.
    PermError,
}

impl Outcome {
    /// The result keyword of Authentication-Results.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Neutral => "neutral",
            Outcome::Policy => "policy",
            Outcome::TempError => "temperror",
            Outcome::PermError => "permerror",
        }
    }
}

/// What became of one DKIM-Signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The result.
    pub outcome: Outcome,
    /// Why, in a few words (empty for a plain pass).
    pub reason: String,
    /// `d=`, lowercase; empty when the field had none that could be read.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// `i=`, or `@d` by default.
    pub identity: String,
    /// The first 8 characters of `b=` (RFC 6008's header.b).
    pub b_prefix: String,
    /// The key is in testing mode (`t=y`): RFC 6376 §3.6.1 asks that such a pass count for
    /// no more than no signature, so it gives no DMARC alignment.
    pub testing: bool,
}

impl Verdict {
    fn new(outcome: Outcome, reason: impl Into<String>) -> Verdict {
        Verdict {
            outcome,
            reason: reason.into(),
            domain: String::new(),
            selector: String::new(),
            identity: String::new(),
            b_prefix: String::new(),
            testing: false,
        }
    }

    /// The method result for an Authentication-Results header (RFC 8601, RFC 6008):
    /// `dkim=pass header.d=example.com header.s=sel header.i=@example.com header.b="abcd1234"`.
    pub fn authres(&self) -> String {
        let mut out = format!("dkim={}", self.outcome.name());
        if !self.reason.is_empty() {
            out.push_str(" reason=");
            out.push_str(&quoted(&self.reason));
        }
        for (property, value) in [
            ("header.d", &self.domain),
            ("header.s", &self.selector),
            ("header.i", &self.identity),
            ("header.b", &self.b_prefix),
        ] {
            if !value.is_empty() {
                out.push_str(&format!(" {property}={}", pvalue(value)));
            }
        }
        out
    }

    /// The `d=` domain a DMARC check may count as DKIM-authenticated: only for a pass whose
    /// key is not in testing mode.
    pub fn dmarc_domain(&self) -> Option<&str> {
        (self.outcome == Outcome::Pass && !self.testing && !self.domain.is_empty()).then_some(self.domain.as_str())
    }
}

/// The Authentication-Results method results for all verdicts: `dkim=none` when there are none.
pub fn authres_all(verdicts: &[Verdict]) -> Vec<String> {
    if verdicts.is_empty() {
        return vec!["dkim=none".to_string()];
    }
    verdicts.iter().map(Verdict::authres).collect()
}

/// An RFC 8601 reason value: a quoted string of printable ASCII.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// A property value: bare when it is an RFC 2045 token or `[local-part]@domain` of plain
/// characters, else quoted.
fn pvalue(text: &str) -> String {
    let token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`{|}~".contains(&b));
    let plain = match text.rsplit_once('@') {
        Some((local, domain)) => (local.is_empty() || token(local)) && token(domain),
        None => token(text),
    };
    if plain {
        text.to_string()
    } else {
        quoted(text)
    }
}

/// A signing algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// rsa-sha256 (RFC 6376).
    RsaSha256,
    /// ed25519-sha256 (RFC 8463).
    Ed25519Sha256,
}

impl Algorithm {
    fn key_type(self) -> KeyType {
        match self {
            Algorithm::RsaSha256 => KeyType::Rsa,
            Algorithm::Ed25519Sha256 => KeyType::Ed25519,
        }
    }
}

/// A DKIM-Signature's tags (RFC 6376 §3.5), checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// `a=`.
    pub algorithm: Algorithm,
    /// `b=`, decoded.
    pub signature: Vec<u8>,
    /// The first 8 characters of `b=` as written (without whitespace).
    pub b_prefix: String,
    /// `bh=`, decoded.
    pub body_hash: Vec<u8>,
    /// `c=`: header and body canonicalization.
    pub canon: (Canon, Canon),
    /// `d=`, lowercase.
    pub domain: String,
    /// `h=`, lowercase, in order.
    pub headers: Vec<String>,
    /// `i=` (default `@d`).
    pub identity: String,
    /// `l=`.
    pub length: Option<u64>,
    /// `s=`.
    pub selector: String,
    /// `t=`.
    pub timestamp: Option<u64>,
    /// `x=`.
    pub expires: Option<u64>,
}

/// Why a DKIM-Signature is refused: the result it gets and the words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(pub Outcome, pub String);

fn neutral(why: impl Into<String>) -> Refused {
    Refused(Outcome::Neutral, why.into())
}

/// One tag of a tag list: its name and value.
pub type Tag<'a> = (&'a [u8], &'a [u8]);

/// Split a tag list (RFC 6376 §3.2) into (name, value) pairs, whitespace and folding around
/// names and values removed. A duplicate tag, a malformed name or a missing `=` is an error;
/// one `;` at the end is allowed.
pub fn parse_tags(text: &[u8]) -> Result<Vec<Tag<'_>>, String> {
    let mut tags: Vec<Tag<'_>> = Vec::new();
    let specs: Vec<&[u8]> = text.split(|&b| b == b';').collect();
    let count = specs.len();
    for (i, spec) in specs.into_iter().enumerate() {
        let spec = trim_fws(spec);
        if spec.is_empty() {
            if i + 1 == count {
                break;
            }
            return Err("empty tag".to_string());
        }
        let Some(eq) = memchr::memchr(b'=', spec) else {
            return Err(format!("tag without = ({})", crate::base::log::safe(&spec[..spec.len().min(20)])));
        };
        let name = trim_fws(&spec[..eq]);
        let value = trim_fws(&spec[eq + 1..]);
        let name_ok = name.first().is_some_and(u8::is_ascii_alphabetic)
            && name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(format!("bad tag name {}", crate::base::log::safe(&name[..name.len().min(20)])));
        }
        if tags.iter().any(|(n, _)| *n == name) {
            return Err(format!("duplicate tag {}", String::from_utf8_lossy(name)));
        }
        tags.push((name, value));
    }
    Ok(tags)
}

fn is_fws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim_fws(mut bytes: &[u8]) -> &[u8] {
    while let [b, rest @ ..] = bytes {
        if !is_fws(*b) {
            break;
        }
        bytes = rest;
    }
    while let [rest @ .., b] = bytes {
        if !is_fws(*b) {
            break;
        }
        bytes = rest;
    }
    bytes
}

/// The value with all folding whitespace taken out (base64 and colon lists).
fn squeeze(value: &[u8]) -> Vec<u8> {
    value.iter().copied().filter(|&b| !is_fws(b)).collect()
}

/// A domain name as DKIM takes it: LDH labels (and `_`), 1–253 bytes, no empty label.
fn domain_name(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?.trim_end_matches('.').to_ascii_lowercase();
    let ok = !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(text)
}

fn number(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Parse and check a DKIM-Signature field's value (after the colon).
pub fn parse_signature(value: &[u8]) -> Result<Signature, Refused> {
    let tags = parse_tags(value).map_err(neutral)?;
    let get = |name: &str| tags.iter().find(|(n, _)| *n == name.as_bytes()).map(|(_, v)| *v);
    let required = |name: &str| get(name).ok_or_else(|| neutral(format!("no {name}= tag")));
    if required("v")? != b"1" {
        return Err(neutral("unknown version"));
    }
    let algorithm = match required("a")?.to_ascii_lowercase().as_slice() {
        b"rsa-sha256" => Algorithm::RsaSha256,
        b"ed25519-sha256" => Algorithm::Ed25519Sha256,
        b"rsa-sha1" => return Err(Refused(Outcome::Policy, "rsa-sha1 is not accepted (RFC 8301)".to_string())),
        _ => return Err(neutral("unknown algorithm")),
    };
    let b = squeeze(required("b")?);
    let signature = unbase64(&b).filter(|s| !s.is_empty()).ok_or_else(|| neutral("b= is not base64"))?;
    let b_prefix = String::from_utf8_lossy(&b[..b.len().min(8)]).into_owned();
    let body_hash = unbase64(&squeeze(required("bh")?)).ok_or_else(|| neutral("bh= is not base64"))?;
    let canon = match get("c") {
        None => (Canon::Simple, Canon::Simple),
        Some(c) => {
            let c = squeeze(c).to_ascii_lowercase();
            let one = |s: &[u8]| match s {
                b"simple" => Ok(Canon::Simple),
                b"relaxed" => Ok(Canon::Relaxed),
                _ => Err(neutral("unknown canonicalization")),
            };
            match c.iter().position(|&b| b == b'/') {
                Some(slash) => (one(&c[..slash])?, one(&c[slash + 1..])?),
                None => (one(&c)?, Canon::Simple),
            }
        }
    };
    let domain = domain_name(required("d")?).ok_or_else(|| neutral("d= is not a domain"))?;
    let selector = std::str::from_utf8(required("s")?)
        .ok()
        .and_then(|s| domain_name(s.as_bytes()))
        .ok_or_else(|| neutral("s= is not a selector"))?;
    let h = squeeze(required("h")?);
    let headers: Vec<String> =
        h.split(|&b| b == b':').map(|n| String::from_utf8_lossy(n).to_ascii_lowercase()).collect();
    if headers.iter().any(|n| !crate::mail::header::is_name(n.as_bytes())) {
        return Err(neutral("h= names no field"));
    }
    if !headers.iter().any(|n| n == "from") {
        return Err(neutral("From is not signed"));
    }
    if headers.len() > MAX_SIGNED_FIELDS {
        return Err(neutral(format!("h= names more than {MAX_SIGNED_FIELDS} fields")));
    }
    let identity = match get("i") {
        None => format!("@{domain}"),
        Some(i) => {
            let text = String::from_utf8_lossy(i).into_owned();
            let at = text.rfind('@').ok_or_else(|| neutral("i= has no @"))?;
            let i_domain = domain_name(&i[at + 1..]).ok_or_else(|| neutral("i= has no domain"))?;
            if i_domain != domain && !i_domain.ends_with(&format!(".{domain}")) {
                return Err(neutral("i= is not in d="));
            }
            text
        }
    };
    let length = match get("l") {
        None => None,
        Some(l) => Some(number(l).ok_or_else(|| neutral("l= is not a number"))?),
    };
    if let Some(q) = get("q") {
        let q = squeeze(q).to_ascii_lowercase();
        if !q.split(|&b| b == b':').any(|m| m == b"dns/txt") {
            return Err(neutral("q= has no dns/txt"));
        }
    }
    let timestamp = match get("t") {
        None => None,
        Some(t) => Some(number(t).ok_or_else(|| neutral("t= is not a number"))?),
    };
    let expires = match get("x") {
        None => None,
        Some(x) => Some(number(x).ok_or_else(|| neutral("x= is not a number"))?),
    };
    if let (Some(t), Some(x)) = (timestamp, expires) {
        if x < t {
            return Err(neutral("x= is before t="));
        }
    }
    Ok(Signature {
        algorithm,
        signature,
        b_prefix,
        body_hash,
        canon,
        domain,
        headers,
        identity,
        length,
        selector,
        timestamp,
        expires,
    })
}

/// A key type (`k=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// RSA, `p=` a SubjectPublicKeyInfo (or a bare RSAPublicKey).
    Rsa,
    /// Ed25519, `p=` the 32-byte public key (RFC 8463).
    Ed25519,
}

/// A key record at `SELECTOR._domainkey.DOMAIN` (RFC 6376 §3.6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// `k=` (default rsa).
    pub key_type: KeyType,
    /// `p=`, decoded; empty: the key is revoked.
    pub public: Vec<u8>,
    /// `h=`: the hashes allowed, lowercase (None: all).
    pub hashes: Option<Vec<String>>,
    /// `t=y`: testing mode.
    pub testing: bool,
    /// `t=s`: the `i=` domain must be `d=` itself.
    pub strict: bool,
}

/// Parse a key record; Err: why it cannot be used (a permerror).
pub fn parse_key(text: &[u8]) -> Result<KeyRecord, String> {
    let tags = parse_tags(text)?;
    let get = |name: &str| tags.iter().find(|(n, _)| *n == name.as_bytes()).map(|(_, v)| *v);
    if let Some(v) = get("v") {
        if tags.first().map(|(n, _)| *n) != Some(b"v") || v != b"DKIM1" {
            return Err("key record version is not DKIM1".to_string());
        }
    }
    let key_type = match get("k").map(<[u8]>::to_ascii_lowercase).as_deref() {
        None | Some(b"rsa") => KeyType::Rsa,
        Some(b"ed25519") => KeyType::Ed25519,
        Some(_) => return Err("unknown key type".to_string()),
    };
    let hashes = get("h")
        .map(|h| squeeze(h).split(|&b| b == b':').map(|n| String::from_utf8_lossy(n).to_ascii_lowercase()).collect());
    if let Some(s) = get("s") {
        let s = squeeze(s).to_ascii_lowercase();
        if !s.split(|&b| b == b':').any(|t| t == b"*" || t == b"email") {
            return Err("key is not for email".to_string());
        }
    }
    let flags: Vec<Vec<u8>> = get("t")
        .map(|t| squeeze(t).to_ascii_lowercase().split(|&b| b == b':').map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let public = unbase64(&squeeze(get("p").ok_or("key record has no p=")?)).ok_or("p= is not base64")?;
    Ok(KeyRecord {
        key_type,
        public,
        hashes,
        testing: flags.iter().any(|f| f == b"y"),
        strict: flags.iter().any(|f| f == b"s"),
    })
}

/// One DER element: (tag, contents, the rest after it).
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |a, &b| (a << 8) | usize::from(b)), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The RSAPublicKey (PKCS#1) in `p=`, which is normally a SubjectPublicKeyInfo for
/// rsaEncryption and sometimes the bare RSAPublicKey; and the modulus length in bits.
pub fn rsa_public_key(p: &[u8]) -> Option<(&[u8], usize)> {
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let (tag, outer, _) = der_element(p)?;
    if tag != 0x30 {
        return None;
    }
    let (first_tag, first, rest) = der_element(outer)?;
    let pkcs1 = if first_tag == 0x02 {
        p
    } else if first_tag == 0x30 {
        let (oid_tag, oid, _) = der_element(first)?;
        if oid_tag != 0x06 || oid != RSA_ENCRYPTION {
            return None;
        }
        let (bits_tag, bits, _) = der_element(rest)?;
        let (&unused, key) = bits.split_first()?;
        if bits_tag != 0x03 || unused != 0 {
            return None;
        }
        key
    } else {
        return None;
    };
    let (tag, sequence, _) = der_element(pkcs1)?;
    let (int_tag, modulus, rest) = der_element(sequence)?;
    let (exp_tag, _, _) = der_element(rest)?;
    if tag != 0x30 || int_tag != 0x02 || exp_tag != 0x02 {
        return None;
    }
    let modulus: &[u8] = &modulus[modulus.iter().take_while(|&&b| b == 0).count()..];
    let bits = match modulus.first() {
        Some(&top) => modulus.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    };
    Some((&pkcs1[..pkcs1.len() - der_element(pkcs1)?.2.len()], bits))
}

/// The body canonicalizer and hash of one signature: bytes in, no line kept (RFC 6376
/// §3.4.3, §3.4.4). A line ends at LF; a CR just before it belongs to the line end.
struct BodyHash {
    canon: Canon,
    hash: ring::digest::Context,
    /// `l=`: hash no more than this.
    limit: Option<u64>,
    /// Canonical bytes so far (hashed or not).
    length: u64,
    /// Empty lines seen and not yet written (they are dropped at the end).
    empty_lines: u64,
    /// The current line has content.
    in_line: bool,
    /// Relaxed: whitespace seen and not yet written.
    space: bool,
    /// A CR seen and not yet written (it may be part of a CRLF).
    cr: bool,
    /// Canonical output waiting to be hashed.
    out: Vec<u8>,
}

impl BodyHash {
    fn new(canon: Canon, limit: Option<u64>) -> BodyHash {
        BodyHash {
            canon,
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            limit,
            length: 0,
            empty_lines: 0,
            in_line: false,
            space: false,
            cr: false,
            out: Vec::with_capacity(4096),
        }
    }

    /// Write content byte `b` of the current line.
    fn content(&mut self, b: u8) {
        if !self.in_line {
            for _ in 0..self.empty_lines {
                self.out.extend_from_slice(b"\r\n");
            }
            self.empty_lines = 0;
            self.in_line = true;
        }
        if self.space {
            self.out.push(b' ');
            self.space = false;
        }
        self.out.push(b);
    }

    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.cr {
                self.cr = false;
                if b != b'\n' {
                    self.content(b'\r');
                }
            }
            match b {
                b'\n' => {
                    if self.in_line {
                        self.out.extend_from_slice(b"\r\n");
                    } else {
                        self.empty_lines += 1;
                    }
                    self.in_line = false;
                    self.space = false;
                }
                b'\r' => self.cr = true,
                b' ' | b'\t' if self.canon == Canon::Relaxed => self.space = true,
                _ => self.content(b),
            }
            if self.out.len() >= 4096 {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        let n = self.out.len() as u64;
        let take = match self.limit {
            Some(l) => l.saturating_sub(self.length).min(n),
            None => n,
        };
        // take <= n, which is a usize.
        self.hash.update(&self.out[..take as usize]);
        self.length += n;
        self.out.clear();
    }

    /// The hash and the canonical body's whole length.
    fn finish(mut self) -> (Vec<u8>, u64) {
        // A last line without LF is a line; a CR alone at the very end is taken as its end.
        if self.in_line {
            self.out.extend_from_slice(b"\r\n");
        }
        if self.length == 0 && self.out.is_empty() && self.canon == Canon::Simple {
            self.out.extend_from_slice(b"\r\n");
        }
        self.flush();
        (self.hash.finish().as_ref().to_vec(), self.length)
    }
}

/// One signature being checked.
struct Check {
    signature: Signature,
    /// The canonical header fields and the signature's own field: what was signed.
    signed: Vec<u8>,
    body: BodyHash,
}

enum Slot {
    Done(Verdict),
    Pending(Box<Check>),
}

/// A message being verified: made from its header block, fed its body, finished with the
/// key lookups.
pub struct Verifier {
    slots: Vec<Slot>,
    now: u64,
}

impl Verifier {
    /// Start on a message whose header block (up to and, optionally, including the empty
    /// line; bytes after the empty line, or from the first line that is no header field, are
    /// taken as the body's start) is `header`; `now` is
    /// the time in seconds since the epoch, for `x=`.
    pub fn new(header: &[u8], now: u64) -> Verifier {
        let mut verifier = Verifier { slots: Vec::new(), now };
        // The header ends where quill-smtpd's scanner ends it: at the empty line, or at the
        // first line that is no field (which then starts the body), so that a message is
        // judged alike whether it comes whole or as header block and body.
        let split = crate::mail::header::split(header);
        let Some((fields, _)) = dkim::parse(&header[..split.header_end]) else {
            // Fields that cannot be told apart cannot be checked; say so only if signed.
            if memchr::memmem::find(&header.to_ascii_lowercase(), b"dkim-signature").is_some() {
                verifier.slots.push(Slot::Done(Verdict::new(Outcome::PermError, "the header cannot be parsed")));
            }
            return verifier;
        };
        for field in fields.iter().filter(|f| f.name.eq_ignore_ascii_case(b"dkim-signature")).take(MAX_SIGNATURES) {
            verifier.slots.push(start(&fields, field));
        }
        verifier.feed(&header[split.body_start..]);
        verifier
    }

    /// The next piece of the body, any size, as it arrives (LF or CRLF line ends; SMTP's dot
    /// stuffing already undone).
    pub fn feed(&mut self, chunk: &[u8]) {
        for slot in &mut self.slots {
            if let Slot::Pending(check) = slot {
                check.body.feed(chunk);
            }
        }
    }

    /// True when the message has no DKIM-Signature to check (the result is `dkim=none`).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The end of the body: fetch the keys and give each signature's verdict, in the order
    /// of the fields (empty: no signature).
    pub fn finish(self, dns: &mut dyn TxtLookup) -> Vec<Verdict> {
        let mut keys: KeyCache = Vec::new();
        let now = self.now;
        self.slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Done(verdict) => verdict,
                Slot::Pending(pending) => {
                    let Check { signature, signed, body } = *pending;
                    let mut verdict = Verdict::new(Outcome::Pass, "");
                    verdict.domain = signature.domain.clone();
                    verdict.selector = signature.selector.clone();
                    verdict.identity = signature.identity.clone();
                    verdict.b_prefix = signature.b_prefix.clone();
                    let (outcome, reason, testing) = check(&signature, &signed, body, now, dns, &mut keys);
                    verdict.outcome = outcome;
                    verdict.reason = reason;
                    verdict.testing = testing;
                    verdict
                }
            })
            .collect()
    }
}

/// Verify a whole message at once (for `quill dkim verify` and tests).
pub fn verify_message(message: &[u8], now: u64, dns: &mut dyn TxtLookup) -> Vec<Verdict> {
    Verifier::new(message, now).finish(dns)
}

/// Parse one DKIM-Signature and gather what it signed.
fn start(fields: &[Field<'_>], own: &Field<'_>) -> Slot {
    let colon = memchr::memchr(b':', own.raw).unwrap_or(0);
    let signature = match parse_signature(&own.raw[colon + 1..]) {
        Ok(s) => s,
        Err(Refused(outcome, why)) => {
            let mut verdict = Verdict::new(outcome, why);
            // Say whose signature it was when that much can be read.
            if let Ok(tags) = parse_tags(&own.raw[colon + 1..]) {
                for (name, value) in tags {
                    match name {
                        b"d" => verdict.domain = domain_name(value).unwrap_or_default(),
                        b"s" => verdict.selector = domain_name(value).unwrap_or_default(),
                        _ => {}
                    }
                }
            }
            return Slot::Done(verdict);
        }
    };
    let mut signed = Vec::new();
    // RFC 6376 §5.4.2: each name takes the next instance from the bottom; a name with no
    // instance left adds nothing (which is what makes oversigning work).
    let mut used = vec![false; fields.len()];
    for name in &signature.headers {
        let found = (0..fields.len()).rev().find(|&i| !used[i] && fields[i].name.eq_ignore_ascii_case(name.as_bytes()));
        if let Some(i) = found {
            used[i] = true;
            signed.extend_from_slice(&canon_header(signature.canon.0, &fields[i]));
        }
    }
    let stripped = without_b(own.raw);
    let mut own_canon = canon_header(signature.canon.0, &Field { name: own.name, raw: &stripped });
    own_canon.truncate(own_canon.len() - 2);
    signed.extend_from_slice(&own_canon);
    let body = BodyHash::new(signature.canon.1, signature.length);
    Slot::Pending(Box::new(Check { signature, signed, body }))
}

/// The field with the value of its `b=` tag removed (RFC 6376 §3.5: the signature is over the
/// field with `b=` empty), everything else as it was.
fn without_b(raw: &[u8]) -> Vec<u8> {
    let colon = memchr::memchr(b':', raw).map_or(0, |c| c + 1);
    let mut at = colon;
    while at < raw.len() {
        let end = memchr::memchr(b';', &raw[at..]).map_or(raw.len(), |e| at + e);
        if let Some(eq) = memchr::memchr(b'=', &raw[at..end]) {
            if trim_fws(&raw[at..at + eq]) == b"b" {
                return [&raw[..at + eq + 1], &raw[end..]].concat();
            }
        }
        at = end + 1;
    }
    raw.to_vec()
}

type KeyCache = Vec<(String, Result<Vec<Vec<u8>>, TxtError>)>;

/// The checks after the body: expiry, body hash, key, signature.
fn check(
    signature: &Signature,
    signed: &[u8],
    body: BodyHash,
    now: u64,
    dns: &mut dyn TxtLookup,
    keys: &mut KeyCache,
) -> (Outcome, String, bool) {
    let done = |o: Outcome, why: &str| (o, why.to_string(), false);
    if signature.expires.is_some_and(|x| x < now) {
        return done(Outcome::Policy, "signature expired");
    }
    let (hash, length) = body.finish();
    if signature.length.is_some_and(|l| l > length) {
        return done(Outcome::Fail, "body shorter than l=");
    }
    if hash != signature.body_hash {
        return done(Outcome::Fail, "body hash did not verify");
    }
    let name = format!("{}._domainkey.{}", signature.selector, signature.domain);
    let answer = match keys.iter().find(|(n, _)| *n == name) {
        Some((_, answer)) => answer.clone(),
        None => {
            let answer = dns.txt(&name);
            keys.push((name, answer.clone()));
            answer
        }
    };
    let records = match answer {
        Ok(records) => records,
        Err(TxtError::NotFound) => return done(Outcome::PermError, "no key"),
        Err(TxtError::Temporary(why)) => return (Outcome::TempError, format!("key lookup: {why}"), false),
    };
    // Several records at the name: the first one that parses.
    let key = match records.iter().map(|r| parse_key(r)).reduce(|a, b| a.or(b)) {
        Some(Ok(key)) => key,
        Some(Err(why)) => return (Outcome::PermError, why, false),
        None => return done(Outcome::PermError, "no key"),
    };
    if key.public.is_empty() {
        return done(Outcome::PermError, "key revoked");
    }
    if key.key_type != signature.algorithm.key_type() {
        return done(Outcome::PermError, "key type does not match a=");
    }
    if key.hashes.as_ref().is_some_and(|h| !h.iter().any(|n| n == "sha256")) {
        return done(Outcome::PermError, "key does not allow sha256");
    }
    if key.strict && !signature.identity.to_ascii_lowercase().ends_with(&format!("@{}", signature.domain)) {
        return done(Outcome::Policy, "i= is a subdomain of d= but the key says t=s");
    }
    let good = match signature.algorithm {
        Algorithm::RsaSha256 => {
            let Some((pkcs1, bits)) = rsa_public_key(&key.public) else {
                return done(Outcome::PermError, "RSA key cannot be read");
            };
            if bits < MIN_RSA_BITS {
                return done(Outcome::Policy, "RSA key shorter than 1024 bits");
            }
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                pkcs1,
            )
            .verify(signed, &signature.signature)
            .is_ok()
        }
        Algorithm::Ed25519Sha256 => {
            if key.public.len() != 32 {
                return done(Outcome::PermError, "Ed25519 key is not 32 bytes");
            }
            let hash = ring::digest::digest(&ring::digest::SHA256, signed);
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key.public)
                .verify(hash.as_ref(), &signature.signature)
                .is_ok()
        }
    };
    if !good {
        return done(Outcome::Fail, "signature did not verify");
    }
    let mut reason = Vec::new();
    if key.testing {
        reason.push("key in testing mode".to_string());
    }
    if let Some(l) = signature.length {
        if l < length {
            reason.push(format!("l= covers {l} of {length} body bytes"));
        }
    }
    (Outcome::Pass, reason.join("; "), key.testing)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::mail::dkim::{base64, canon_body, Key, DEFAULT_HEADERS};

    const RSA_KEY: &[u8] = include_bytes!("../../tests/data/dkim/rsa2048.pk8");
    const RSA_768_PUBLIC: &[u8] = include_bytes!("../../tests/data/dkim/rsa768.spki");
    const MESSAGE: &[u8] = b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: a  test\r\n\tfolded\r\nDate: Sun, 6 Dec 2026 03:00:00 +0000\r\n\r\nHello  there \r\n\r\n.. dots\r\n\r\n\r\n";

    fn ed25519() -> Key {
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        Key::from_bytes("example.com", "s1", doc.as_ref()).unwrap()
    }

    fn rsa() -> Key {
        Key::from_bytes("example.com", "s1", RSA_KEY).unwrap()
    }

    fn table(key: &Key) -> TxtTable {
        TxtTable(vec![("s1._domainkey.example.com".to_string(), key.dns_record().into_bytes())])
    }

    fn signed(key: &Key, canon: (Canon, Canon), message: &[u8]) -> Vec<u8> {
        [key.sign(message, canon, DEFAULT_HEADERS, 1_000_000).unwrap(), message.to_vec()].concat()
    }

    /// Verify with the header given first and the body in `chunk`-byte pieces.
    fn verify_chunked(message: &[u8], chunk: usize, dns: &mut dyn TxtLookup) -> Vec<Verdict> {
        let split = crate::mail::header::split(message);
        let mut verifier = Verifier::new(&message[..split.body_start], 2_000_000);
        for piece in message[split.body_start..].chunks(chunk.max(1)) {
            verifier.feed(piece);
        }
        verifier.finish(dns)
    }

    fn one(message: &[u8], dns: &mut dyn TxtLookup) -> Verdict {
        let verdicts = verify_message(message, 2_000_000, dns);
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        verdicts.into_iter().next().unwrap()
    }

    fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
        [&bytes[..at], to, &bytes[at + from.len()..]].concat()
    }

    const CANONS: [(Canon, Canon); 4] = [
        (Canon::Relaxed, Canon::Relaxed),
        (Canon::Simple, Canon::Simple),
        (Canon::Relaxed, Canon::Simple),
        (Canon::Simple, Canon::Relaxed),
    ];

    #[test]
    fn both_algorithms_pass_in_every_canonicalization_and_any_chunking() {
        for key in [ed25519(), rsa()] {
            for canon in CANONS {
                let message = signed(&key, canon, MESSAGE);
                for chunk in [1, 2, 3, 7, 64, 100_000] {
                    let verdicts = verify_chunked(&message, chunk, &mut table(&key));
                    assert_eq!(verdicts.len(), 1);
                    assert_eq!(verdicts[0].outcome, Outcome::Pass, "{} {canon:?} {chunk}: {verdicts:?}", key.kind());
                }
                // LF line ends, as in the queue, verify alike.
                let lf: Vec<u8> = message.iter().copied().filter(|&b| b != b'\r').collect();
                assert_eq!(one(&lf, &mut table(&key)).outcome, Outcome::Pass);
            }
        }
    }

    #[test]
    fn tampering_fails() {
        for key in [ed25519(), rsa()] {
            let message = signed(&key, (Canon::Relaxed, Canon::Relaxed), MESSAGE);
            let body = one(&replace(&message, b"Hello", b"Jello"), &mut table(&key));
            assert_eq!((body.outcome, body.reason.as_str()), (Outcome::Fail, "body hash did not verify"));
            let header = one(&replace(&message, b"a  test", b"a best"), &mut table(&key));
            assert_eq!((header.outcome, header.reason.as_str()), (Outcome::Fail, "signature did not verify"));
            // A From added above the signed one is caught by the oversigned From.
            let added = replace(&message, b"From: Alice", b"From: Mallory <m@example.org>\r\nFrom: Alice");
            assert_eq!(one(&added, &mut table(&key)).outcome, Outcome::Fail);
            // Relaxed forgives whitespace; simple does not.
            let spaced = replace(&message, b"Hello  there", b"Hello \t there");
            assert_eq!(one(&spaced, &mut table(&key)).outcome, Outcome::Pass);
            let simple = signed(&key, (Canon::Simple, Canon::Simple), MESSAGE);
            assert_eq!(
                one(&replace(&simple, b"Hello  there", b"Hello \t there"), &mut table(&key)).outcome,
                Outcome::Fail
            );
            assert_eq!(one(&replace(&simple, b"a  test", b"a test"), &mut table(&key)).outcome, Outcome::Fail);
            // Unsigned fields may be added; trailing empty lines do not count.
            let extra = [b"X-Added: yes\r\n".as_slice(), &message, b"\r\n\r\n"].concat();
            assert_eq!(one(&extra, &mut table(&key)).outcome, Outcome::Pass);
        }
    }

    #[test]
    fn key_records() {
        let key = ed25519();
        let message = signed(&key, (Canon::Relaxed, Canon::Relaxed), MESSAGE);
        let with = |record: &str| TxtTable(vec![("s1._domainkey.example.com".to_string(), record.as_bytes().to_vec())]);
        let verdict = one(&message, &mut with("v=DKIM1; k=ed25519; p="));
        assert_eq!((verdict.outcome, verdict.reason.as_str()), (Outcome::PermError, "key revoked"));
        assert_eq!(one(&message, &mut TxtTable::default()).outcome, Outcome::PermError);
        let record = key.dns_record();
        let p = record.split("p=").nth(1).unwrap();
        assert_eq!(one(&message, &mut with(&format!("k=ed25519; p={p}"))).outcome, Outcome::Pass);
        assert_eq!(one(&message, &mut with(&format!("v=DKIM1; k=rsa; p={p}"))).outcome, Outcome::PermError);
        assert_eq!(one(&message, &mut with(&format!("v=DKIM1; k=ed25519; h=sha1; p={p}"))).outcome, Outcome::PermError);
        assert_eq!(one(&message, &mut with(&format!("k=ed25519; v=DKIM1; p={p}"))).outcome, Outcome::PermError);
        assert_eq!(
            one(&message, &mut with(&format!("v=DKIM1; k=ed25519; s=tlsrpt; p={p}"))).outcome,
            Outcome::PermError
        );
        let testing = one(&message, &mut with(&format!("v=DKIM1; k=ed25519; t=y; p={p}")));
        assert_eq!(testing.outcome, Outcome::Pass);
        assert!(testing.testing && testing.dmarc_domain().is_none());
        // Folded and spaced base64, as zone files split it.
        let spaced: String =
            p.chars().enumerate().flat_map(|(i, c)| if i % 10 == 9 { vec![c, ' '] } else { vec![c] }).collect();
        assert_eq!(one(&message, &mut with(&format!("v=DKIM1 ;\tk = ed25519 ; p = {spaced}"))).outcome, Outcome::Pass);
        // Several records: the first that parses.
        let mut two = with("garbage");
        two.0.push(("s1._domainkey.example.com".to_string(), record.clone().into_bytes()));
        assert_eq!(one(&message, &mut two).outcome, Outcome::Pass);
    }

    struct Failing;
    impl TxtLookup for Failing {
        fn txt(&mut self, _: &str) -> Result<Vec<Vec<u8>>, TxtError> {
            Err(TxtError::Temporary("timed out".to_string()))
        }
    }

    #[test]
    fn dns_trouble_is_temporary() {
        let key = ed25519();
        let verdict = one(&signed(&key, (Canon::Relaxed, Canon::Relaxed), MESSAGE), &mut Failing);
        assert_eq!(verdict.outcome, Outcome::TempError);
        assert!(verdict.authres().starts_with("dkim=temperror reason=\"key lookup: timed out\" header.d=example.com"));
    }

    #[test]
    fn rsa_keys_in_both_forms_and_too_short() {
        let key = rsa();
        let message = signed(&key, (Canon::Relaxed, Canon::Relaxed), MESSAGE);
        let record = key.dns_record();
        let spki = unbase64(record.split("p=").nth(1).unwrap().as_bytes()).unwrap();
        let (pkcs1, bits) = rsa_public_key(&spki).unwrap();
        assert_eq!(bits, 2048);
        assert_eq!(rsa_public_key(pkcs1).unwrap(), (pkcs1, 2048));
        let bare = TxtTable(vec![(
            "s1._domainkey.example.com".to_string(),
            format!("v=DKIM1; p={}", base64(pkcs1)).into_bytes(),
        )]);
        assert_eq!(one(&message, &mut bare.clone()).outcome, Outcome::Pass);
        assert_eq!(rsa_public_key(RSA_768_PUBLIC).unwrap().1, 768);
        let short = TxtTable(vec![(
            "s1._domainkey.example.com".to_string(),
            format!("v=DKIM1; k=rsa; p={}", base64(RSA_768_PUBLIC)).into_bytes(),
        )]);
        let verdict = one(&message, &mut short.clone());
        assert_eq!((verdict.outcome, verdict.reason.as_str()), (Outcome::Policy, "RSA key shorter than 1024 bits"));
        assert!(rsa_public_key(b"\x30\x03\x02\x01\x01").is_none());
        assert!(rsa_public_key(b"").is_none());
    }

    /// A signature made here with any tags (for x=, l=, odd algorithms): `tags` then bh= and
    /// b=, the headers in `h` from the bottom, the body cut to `length` canonical bytes.
    fn sign_raw(message: &[u8], tags: &str, h: &[&str], canon: (Canon, Canon), length: Option<usize>) -> Vec<u8> {
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let (fields, body) = dkim::parse(message).unwrap();
        let mut canonical = canon_body(canon.1, body);
        if let Some(l) = length {
            canonical.truncate(l);
        }
        let bh = base64(ring::digest::digest(&ring::digest::SHA256, &canonical).as_ref());
        let head = format!("DKIM-Signature: {tags}; h={};\r\n\tbh={bh};\r\n\tb=", h.join(":"));
        let mut data = Vec::new();
        let mut used = vec![false; fields.len()];
        for name in h {
            if let Some(i) =
                (0..fields.len()).rev().find(|&i| !used[i] && fields[i].name.eq_ignore_ascii_case(name.as_bytes()))
            {
                used[i] = true;
                data.extend(canon_header(canon.0, &fields[i]));
            }
        }
        let mut own = canon_header(canon.0, &Field { name: b"DKIM-Signature", raw: head.as_bytes() });
        own.truncate(own.len() - 2);
        data.extend(own);
        let signature = pair.sign(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
        let record = format!("v=DKIM1; k=ed25519; p={}", base64(ring::signature::KeyPair::public_key(&pair).as_ref()));
        [head.as_bytes(), base64(signature.as_ref()).as_bytes(), b"\r\n", message, b"\0", record.as_bytes()].concat()
    }

    /// Split sign_raw's output into the message and its key table.
    fn raw(
        message: &[u8],
        tags: &str,
        h: &[&str],
        canon: (Canon, Canon),
        length: Option<usize>,
    ) -> (Vec<u8>, TxtTable) {
        let out = sign_raw(message, tags, h, canon, length);
        let nul = out.iter().position(|&b| b == 0).unwrap();
        let table = TxtTable(vec![("s1._domainkey.example.com".to_string(), out[nul + 1..].to_vec())]);
        (out[..nul].to_vec(), table)
    }

    const BASE: &str = "v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.com; s=s1";
    const RR: (Canon, Canon) = (Canon::Relaxed, Canon::Relaxed);

    #[test]
    fn the_raw_signer_agrees() {
        let (message, mut dns) = raw(MESSAGE, BASE, &["from", "subject"], RR, None);
        assert_eq!(one(&message, &mut dns).outcome, Outcome::Pass);
        // c= defaults to simple/simple; "relaxed" alone is relaxed/simple.
        let tags = "v=1; a=ed25519-sha256; d=example.com; s=s1";
        let (message, mut dns) = raw(MESSAGE, tags, &["from"], (Canon::Simple, Canon::Simple), None);
        assert_eq!(one(&message, &mut dns).outcome, Outcome::Pass);
        let tags = "v=1; a=ed25519-sha256; c=relaxed; d=example.com; s=s1";
        let (message, mut dns) = raw(MESSAGE, tags, &["from"], (Canon::Relaxed, Canon::Simple), None);
        assert_eq!(one(&message, &mut dns).outcome, Outcome::Pass);
    }

    #[test]
    fn expiry() {
        let (message, mut dns) = raw(MESSAGE, &format!("{BASE}; t=1000; x=1999999"), &["from"], RR, None);
        let verdict = one(&message, &mut dns);
        assert_eq!((verdict.outcome, verdict.reason.as_str()), (Outcome::Policy, "signature expired"));
        let (message, mut dns) = raw(MESSAGE, &format!("{BASE}; t=1000; x=2000001"), &["from"], RR, None);
        assert_eq!(one(&message, &mut dns).outcome, Outcome::Pass);
        let (message, mut dns) = raw(MESSAGE, &format!("{BASE}; t=3000000; x=2000001"), &["from"], RR, None);
        assert_eq!(one(&message, &mut dns).outcome, Outcome::Neutral);
    }

    #[test]
    fn body_length() {
        let length = canon_body(Canon::Relaxed, b"Hello  there \r\n\r\n.. dots\r\n").len();
        let (message, mut dns) = raw(MESSAGE, &format!("{BASE}; l={length}"), &["from"], RR, Some(length));
        assert_eq!(one(&message, &mut dns).outcome, Outcome::Pass);
        // Text appended after the signed length still passes, and the reason says so.
        let longer = [message.as_slice(), b"Appended by a list\r\n"].concat();
        let verdict = one(&longer, &mut dns);
        assert_eq!(verdict.outcome, Outcome::Pass);
        assert!(verdict.reason.contains("l= covers"), "{verdict:?}");
        // l= beyond the body fails.
        let (message, mut dns) = raw(MESSAGE, &format!("{BASE}; l={}", length + 100), &["from"], RR, Some(length));
        assert_eq!(one(&message, &mut dns).reason, "body shorter than l=");
        // l=0 signs no body at all.
        let (message, mut dns) = raw(MESSAGE, &format!("{BASE}; l=0"), &["from"], RR, Some(0));
        assert_eq!(one(&replace(&message, b"Hello", b"Jello"), &mut dns).outcome, Outcome::Pass);
    }

    #[test]
    fn malformed_signatures() {
        let cases: &[(&str, Outcome, &str)] = &[
            ("v=1; a=rsa-sha512; c=relaxed/relaxed; d=example.com; s=s1", Outcome::Neutral, "unknown algorithm"),
            (
                "v=1; a=rsa-sha1; c=relaxed/relaxed; d=example.com; s=s1",
                Outcome::Policy,
                "rsa-sha1 is not accepted (RFC 8301)",
            ),
            ("v=2; a=ed25519-sha256; c=relaxed/relaxed; d=example.com; s=s1", Outcome::Neutral, "unknown version"),
            ("a=ed25519-sha256; c=relaxed/relaxed; d=example.com; s=s1", Outcome::Neutral, "no v= tag"),
            ("v=1; a=ed25519-sha256; c=relaxed/relaxed; s=s1", Outcome::Neutral, "no d= tag"),
            ("v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.com", Outcome::Neutral, "no s= tag"),
            ("v=1; a=ed25519-sha256; c=odd/relaxed; d=example.com; s=s1", Outcome::Neutral, "unknown canonicalization"),
            (
                "v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.com; s=s1; i=a@example.org",
                Outcome::Neutral,
                "i= is not in d=",
            ),
            (
                "v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.com; s=s1; q=http",
                Outcome::Neutral,
                "q= has no dns/txt",
            ),
            (
                "v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.com; s=s1; l=x",
                Outcome::Neutral,
                "l= is not a number",
            ),
            ("v=1; a=ed25519-sha256; a=ed25519-sha256; d=example.com; s=s1", Outcome::Neutral, "duplicate tag a"),
            ("v=1; a=ed25519-sha256; d=exa mple.com; s=s1", Outcome::Neutral, "d= is not a domain"),
        ];
        for (tags, outcome, reason) in cases {
            let (message, mut dns) = raw(MESSAGE, tags, &["from"], RR, None);
            let verdict = one(&message, &mut dns);
            assert_eq!((verdict.outcome, verdict.reason.as_str()), (*outcome, *reason), "{tags}");
        }
        let (message, mut dns) = raw(MESSAGE, BASE, &["subject"], RR, None);
        assert_eq!(one(&message, &mut dns).reason, "From is not signed");
        let no_bh = b"DKIM-Signature: v=1; a=ed25519-sha256; d=example.com; s=s1; h=from; b=AAAA\r\nFrom: a@example.com\r\n\r\n";
        assert_eq!(one(no_bh, &mut TxtTable::default()).reason, "no bh= tag");
        // i= in a subdomain of d= is fine, unless the key says t=s.
        let (message, mut dns) = raw(MESSAGE, &format!("{BASE}; i=alice@mail.example.com"), &["from"], RR, None);
        assert_eq!(one(&message, &mut dns).outcome, Outcome::Pass);
        let record = String::from_utf8(dns.0[0].1.clone()).unwrap().replace("v=DKIM1;", "v=DKIM1; t=s;");
        dns.0[0].1 = record.into_bytes();
        assert_eq!(one(&message, &mut dns).outcome, Outcome::Policy);
    }

    #[test]
    fn work_is_bounded() {
        let key = ed25519();
        let mut message = MESSAGE.to_vec();
        for _ in 0..8 {
            message = signed(&key, RR, &message);
        }
        let verdicts = verify_message(&message, 2_000_000, &mut table(&key));
        assert_eq!(verdicts.len(), MAX_SIGNATURES);
        let many: Vec<&str> = std::iter::repeat_n("x", MAX_SIGNED_FIELDS).chain(["from"]).collect();
        let (message, mut dns) = raw(MESSAGE, BASE, &many, RR, None);
        assert_eq!(one(&message, &mut dns).outcome, Outcome::Neutral);
        assert!(verify_message(b"Subject: no signature\r\n\r\nbody\r\n", 0, &mut TxtTable::default()).is_empty());
        assert_eq!(authres_all(&[]), vec!["dkim=none".to_string()]);
    }

    #[test]
    fn authentication_results_text() {
        let key = ed25519();
        let message = signed(&key, RR, MESSAGE);
        let verdict = one(&message, &mut table(&key));
        let text = verdict.authres();
        assert!(
            text.starts_with("dkim=pass header.d=example.com header.s=s1 header.i=@example.com header.b="),
            "{text}"
        );
        let b = text.split("header.b=").nth(1).unwrap().trim_matches('"');
        assert_eq!(b.len(), 8);
        assert_eq!(verdict.dmarc_domain(), Some("example.com"));
        assert_eq!(pvalue("a b"), "\"a b\"");
        assert_eq!(pvalue("ab/c+d=="), "\"ab/c+d==\"");
        assert_eq!(pvalue("user@example.com"), "user@example.com");
        assert_eq!(quoted("say \"x\"\n"), "\"say \\\"x\\\"?\"");
    }

    /// The streaming canonicalizer gives the signer's canonical body for any chunking.
    #[test]
    fn streaming_body_matches_the_signer() {
        let bodies: &[&[u8]] = &[
            b"",
            b"\r\n",
            b"\n\n\n",
            b"x",
            b"x\r",
            b"a \t b  \r\n\r\n \t\r\nc\r\n\r\n \r\n",
            b"bare\rcr\r\n\r\r\n",
            b"  leading\n\ttab\t\n\n",
            b"no final line end  ",
            b"\r\r\n\r",
        ];
        for body in bodies {
            for canon in [Canon::Simple, Canon::Relaxed] {
                let want = ring::digest::digest(&ring::digest::SHA256, &canon_body(canon, body)).as_ref().to_vec();
                for chunk in [1, 2, 5, 1000] {
                    let mut hash = BodyHash::new(canon, None);
                    for piece in body.chunks(chunk) {
                        hash.feed(piece);
                    }
                    let (got, length) = hash.finish();
                    assert_eq!(got, want, "{canon:?} {body:?} {chunk}");
                    assert_eq!(length as usize, canon_body(canon, body).len());
                }
            }
        }
    }

    #[test]
    fn tag_lists() {
        assert_eq!(parse_tags(b" a = 1 ;\r\n\tb=2;").unwrap(), vec![(b"a".as_slice(), b"1".as_slice()), (b"b", b"2")]);
        assert!(parse_tags(b"a=1;;b=2").is_err());
        assert!(parse_tags(b"a").is_err());
        assert!(parse_tags(b"1a=2").is_err());
        assert!(parse_tags(b"").unwrap().is_empty());
        assert_eq!(
            without_b(b"DKIM-Signature: a=1; b=xy z;\r\n\tbh=q; c=2"),
            b"DKIM-Signature: a=1; b=;\r\n\tbh=q; c=2"
        );
        assert_eq!(without_b(b"DKIM-Signature: bh=1; b =xyz"), b"DKIM-Signature: bh=1; b =");
    }
}
