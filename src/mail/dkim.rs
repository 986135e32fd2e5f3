//! DKIM signing (RFC 6376 rsa-sha256, RFC 8463 ed25519-sha256) of mail from local and
//! authenticated senders: the canonicalizations, the header fields to sign, the keys in
//! `control/dkim/DOMAIN.SELECTOR` (PKCS#8, PEM or DER) and the `DKIM-Signature:` line.
//!
//! Who signs: quill-queue and quill-queued (uid `quillq`, the only uid that may read the keys),
//! and only when the caller asked for it (doc/quill-queue.8): inject and sendmail always ask,
//! quill-smtpd asks for RELAYCLIENT and authenticated clients, local forwarding and bounces
//! never do. Messages in the queue have LF line ends; every line counts as ending in CRLF.
#![forbid(unsafe_code)]

use std::path::Path;

/// The environment variable by which quill-queue's caller asks for a DKIM signature
/// (doc/quill-queue.8). Even in the setuid quill-queue it is honoured: it names no path and
/// grants nothing a local user lacks, since every local user is a local sender; the
/// programs that pass on strangers' mail (local forwarding, bounces) never set it
/// (`submit` removes it from their queue program's environment).
pub const SIGN_VARIABLE: &str = "QUILL_DKIMSIGN";

/// The header fields signed by default (OpenDKIM's set), each occurrence present; `from` is
/// signed once more than it occurs (oversigned) so that no From: can be added after signing.
pub const DEFAULT_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// The longest header a signer looks at; a larger one is left unsigned.
pub const MAX_HEADER: usize = 256 * 1024;
/// At most this many header fields are parsed.
pub const MAX_FIELDS: usize = 1000;

/// A canonicalization algorithm (RFC 6376 §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Canon {
    /// No change but line ends.
    Simple,
    /// Whitespace folded, header names lowercased.
    Relaxed,
}

impl Canon {
    fn name(self) -> &'static str {
        match self {
            Canon::Simple => "simple",
            Canon::Relaxed => "relaxed",
        }
    }
}

/// One header field: its name and its whole text (name, colon, value, folded lines), without
/// the final line end; inner line ends as they came (LF or CRLF).
#[derive(Debug, PartialEq, Eq)]
pub struct Field<'a> {
    /// The name as written.
    pub name: &'a [u8],
    /// The whole field.
    pub raw: &'a [u8],
}

/// Split `message` into its header fields and body. None when the header is larger than
/// [`MAX_HEADER`], has more than [`MAX_FIELDS`] fields, or has a line that is no field (the
/// message is then sent unsigned). A message without an empty line is all header.
pub fn parse(message: &[u8]) -> Option<(Vec<Field<'_>>, &[u8])> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut at = 0;
    let mut start: Option<usize> = None;
    loop {
        if at >= message.len() {
            if let Some(s) = start {
                fields.push(field(&message[s..trim_eol(message, message.len())])?);
            }
            return Some((fields, &[]));
        }
        if at > MAX_HEADER || fields.len() > MAX_FIELDS {
            return None;
        }
        let end = memchr::memchr(b'\n', &message[at..]).map_or(message.len(), |k| at + k + 1);
        let line = &message[at..end];
        let bare = &line[..trim_eol(line, line.len())];
        if bare.is_empty() {
            if let Some(s) = start {
                fields.push(field(&message[s..trim_eol(message, at)])?);
            }
            return Some((fields, &message[end..]));
        }
        if bare[0] == b' ' || bare[0] == b'\t' {
            start?;
        } else {
            if let Some(s) = start {
                fields.push(field(&message[s..trim_eol(message, at)])?);
            }
            start = Some(at);
        }
        at = end;
    }
}

/// Where the bytes before `end` stop once one line end (LF or CRLF) is taken off.
fn trim_eol(bytes: &[u8], mut end: usize) -> usize {
    if end > 0 && bytes[end - 1] == b'\n' {
        end -= 1;
        if end > 0 && bytes[end - 1] == b'\r' {
            end -= 1;
        }
    }
    end
}

fn field(raw: &[u8]) -> Option<Field<'_>> {
    let colon = memchr::memchr(b':', raw)?;
    let name = trim_wsp_end(&raw[..colon]);
    if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
        return None;
    }
    Some(Field { name, raw })
}

fn trim_wsp_end(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The canonical form of one header field, CRLF at the end.
pub fn canon_header(canon: Canon, field: &Field<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.raw.len() + 2);
    match canon {
        Canon::Simple => {
            // Inner line ends become CRLF as they would be on the wire.
            for (i, line) in field.raw.split(|&b| b == b'\n').enumerate() {
                if i > 0 {
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
            }
        }
        Canon::Relaxed => {
            out.extend(field.name.iter().map(u8::to_ascii_lowercase));
            out.push(b':');
            let colon = memchr::memchr(b':', field.raw).unwrap_or(field.raw.len().saturating_sub(1));
            // Whitespace is dropped after the separating colon only: a colon inside the value
            // ("Subject: Re: x") keeps the space after it.
            let mut space = false;
            let mut started = false;
            for &b in &field.raw[colon + 1..] {
                if b == b'\r' || b == b'\n' {
                    continue;
                }
                if is_wsp(b) {
                    space = true;
                } else {
                    if space && started {
                        out.push(b' ');
                    }
                    space = false;
                    started = true;
                    out.push(b);
                }
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The canonical body (RFC 6376 §3.4.3 and §3.4.4), CRLF line ends.
pub fn canon_body(canon: Canon, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 32 + 2);
    let mut empty_run = 0usize;
    let mut lines = body.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        // The piece after a final LF is no line; a last line without LF still counts as one.
        if lines.peek().is_none() && line.is_empty() {
            break;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut canonical = Vec::new();
        let text: &[u8] = match canon {
            Canon::Simple => line,
            Canon::Relaxed => {
                let mut space = false;
                for &b in line {
                    if is_wsp(b) {
                        space = true;
                    } else {
                        if space {
                            canonical.push(b' ');
                        }
                        space = false;
                        canonical.push(b);
                    }
                }
                &canonical
            }
        };
        if text.is_empty() {
            empty_run += 1;
            continue;
        }
        for _ in 0..empty_run {
            out.extend_from_slice(b"\r\n");
        }
        empty_run = 0;
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }
    if out.is_empty() && canon == Canon::Simple {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A signing key and what it signs for.
pub struct Key {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    secret: Secret,
}

enum Secret {
    Rsa(ring::rsa::KeyPair),
    Ed25519(ring::signature::Ed25519KeyPair),
}

/// Why a key could not be used.
#[derive(Debug)]
pub enum KeyError {
    /// Not PEM "PRIVATE KEY" nor DER PKCS#8 that ring takes as RSA or Ed25519.
    Format(String),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Format(why) => write!(f, "{why}"),
        }
    }
}

impl Key {
    /// A key from PKCS#8, PEM (`-----BEGIN PRIVATE KEY-----`) or DER.
    pub fn from_bytes(domain: &str, selector: &str, bytes: &[u8]) -> Result<Key, KeyError> {
        let der = if bytes.starts_with(b"-----BEGIN") { pem_to_der(bytes)? } else { bytes.to_vec() };
        let secret = if let Ok(k) = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            Secret::Ed25519(k)
        } else {
            ring::rsa::KeyPair::from_pkcs8(&der)
                .map(Secret::Rsa)
                .map_err(|e| KeyError::Format(format!("not a PKCS#8 RSA or Ed25519 key: {e}")))?
        };
        Ok(Key { domain: domain.to_string(), selector: selector.to_string(), secret })
    }

    /// `rsa` or `ed25519`: the `k=` of the DNS record.
    pub fn kind(&self) -> &'static str {
        match self.secret {
            Secret::Rsa(_) => "rsa",
            Secret::Ed25519(_) => "ed25519",
        }
    }

    /// The TXT record to publish at `SELECTOR._domainkey.DOMAIN`.
    pub fn dns_record(&self) -> String {
        use ring::signature::KeyPair;
        let public = match &self.secret {
            Secret::Rsa(k) => spki_rsa(k.public().as_ref()),
            Secret::Ed25519(k) => k.public_key().as_ref().to_vec(),
        };
        format!("v=DKIM1; k={}; p={}", self.kind(), base64(&public))
    }

    /// The `DKIM-Signature:` field for `message` (LF or CRLF line ends), folded, ending in
    /// LF, to put at the top of the message. None when the header cannot be parsed.
    pub fn sign(&self, message: &[u8], canon: (Canon, Canon), signed: &[&str], time: u64) -> Option<Vec<u8>> {
        let (fields, body) = parse(message)?;
        let bh = base64(ring::digest::digest(&ring::digest::SHA256, &canon_body(canon.1, body)).as_ref());
        let mut data = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for name in signed {
            // Bottom-up, each occurrence once (RFC 6376 §5.4.2).
            let mut matching: Vec<&Field<'_>> =
                fields.iter().filter(|f| f.name.eq_ignore_ascii_case(name.as_bytes())).collect();
            matching.reverse();
            for f in &matching {
                data.extend_from_slice(&canon_header(canon.0, f));
                names.push(name.to_string());
            }
            if *name == "from" {
                // Oversigned: names a From: that is not there, which verifiers take as empty.
                names.push(name.to_string());
            }
        }
        let algorithm = match self.secret {
            Secret::Rsa(_) => "rsa-sha256",
            Secret::Ed25519(_) => "ed25519-sha256",
        };
        let head = format!(
            "DKIM-Signature: v=1; a={algorithm}; c={}/{}; d={}; s={}; t={time};\n\th={};\n\tbh={bh};\n\tb=",
            canon.0.name(),
            canon.1.name(),
            self.domain,
            self.selector,
            names.join(":")
        );
        let own = Field { name: b"DKIM-Signature", raw: head.as_bytes() };
        let mut own_canon = canon_header(canon.0, &own);
        own_canon.truncate(own_canon.len() - 2);
        data.extend_from_slice(&own_canon);
        let signature = match &self.secret {
            Secret::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), &data, &mut sig).ok()?;
                sig
            }
            Secret::Ed25519(k) => {
                let hash = ring::digest::digest(&ring::digest::SHA256, &data);
                k.sign(hash.as_ref()).as_ref().to_vec()
            }
        };
        let mut line = head.into_bytes();
        for (i, chunk) in base64(&signature).as_bytes().chunks(72).enumerate() {
            if i > 0 {
                line.extend_from_slice(b"\n\t ");
            }
            line.extend_from_slice(chunk);
        }
        line.push(b'\n');
        Some(line)
    }
}

/// The domain of the first `From:` address of `message`, lowercased.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let (fields, _) = parse(message)?;
    let from = fields.iter().find(|f| f.name.eq_ignore_ascii_case(b"from"))?;
    let value = &from.raw[memchr::memchr(b':', from.raw)? + 1..];
    // The address is in angle brackets when there are any, else the first word with an @.
    let address: &[u8] = match (memchr::memchr(b'<', value), memchr::memchr(b'>', value)) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(|&b| b == b',').next().unwrap_or(value),
    };
    let at = memchr::memrchr(b'@', address)?;
    let domain: Vec<u8> =
        address[at + 1..].iter().take_while(|b| !b" \t\r\n>(,;".contains(b)).map(u8::to_ascii_lowercase).collect();
    let domain = String::from_utf8(domain).ok()?;
    let valid = !domain.is_empty()
        && domain.len() <= 253
        && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then_some(domain)
}

/// The key for `domain` in `dir` (`control/dkim`): `DOMAIN.SELECTOR`, else its parent
/// domain's, and so on up to a domain of two labels. Ok(None): no key file for any of them.
/// A selector has no dots; when a domain has several, the first in name order is used.
pub fn find_key(dir: &Path, domain: &str) -> Result<Option<Key>, String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("unable to read {}: {e}", dir.display())),
    };
    names.sort();
    let mut candidate = domain;
    loop {
        let prefix = format!("{candidate}.");
        let found = names.iter().find(|n| {
            n.strip_prefix(&prefix).is_some_and(|s| !s.is_empty() && !s.contains('.') && !s.starts_with('.'))
        });
        if let Some(name) = found {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|e| format!("unable to read {}: {e}", path.display()))?;
            let selector = &name[prefix.len()..];
            return Key::from_bytes(candidate, selector, &bytes)
                .map(Some)
                .map_err(|e| format!("unable to use {}: {e}", path.display()));
        }
        match candidate.split_once('.') {
            Some((_, parent)) if parent.contains('.') => candidate = parent,
            _ => return Ok(None),
        }
    }
}

/// The signing settings from `control/dkimsign` (doc/quill-control.5): `c=relaxed/simple`-style
/// canonicalization and `h=a:b:c` header names, one per line; defaults when absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Header and body canonicalization.
    pub canon: (Canon, Canon),
    /// Header names to sign, lowercase.
    pub headers: Vec<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            canon: (Canon::Relaxed, Canon::Relaxed),
            headers: DEFAULT_HEADERS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Settings {
    /// Parse the file's text; unknown lines are ignored with a reason returned.
    pub fn parse(text: &str) -> (Settings, Vec<String>) {
        let mut settings = Settings::default();
        let mut problems = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            if let Some(c) = line.strip_prefix("c=") {
                let one = |s: &str| match s {
                    "simple" => Some(Canon::Simple),
                    "relaxed" => Some(Canon::Relaxed),
                    _ => None,
                };
                let (h, b) = c.split_once('/').unwrap_or((c, "simple"));
                match (one(h), one(b)) {
                    (Some(h), Some(b)) => settings.canon = (h, b),
                    _ => problems.push(format!("unknown canonicalization {c}")),
                }
            } else if let Some(h) = line.strip_prefix("h=") {
                let names: Vec<String> =
                    h.split(':').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect();
                if names.iter().any(|n| n == "from") {
                    settings.headers = names;
                } else {
                    problems.push("h= without from: From: must be signed (RFC 6376 §5.4)".to_string());
                }
            } else {
                problems.push(format!("unknown line {line}"));
            }
        }
        (settings, problems)
    }
}

/// What signing did to one message, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Signed {
    /// There is no `control/dkim`: signing is not set up, nothing to say.
    Off,
    /// Signed: the field to put on top, the domain and selector.
    Yes(Vec<u8>, String, String),
    /// No From: domain, or no key for it.
    NoKey(String),
    /// The key or the header could not be used.
    Trouble(String),
}

/// Sign `message` with the key of its From: domain from `control` (the control directory).
pub fn sign_message(control: &Path, message: &[u8], time: u64) -> Signed {
    if !control.join("dkim").is_dir() {
        return Signed::Off;
    }
    let Some(domain) = from_domain(message) else {
        return Signed::NoKey("no From: domain".to_string());
    };
    let key = match find_key(&control.join("dkim"), &domain) {
        Ok(Some(key)) => key,
        Ok(None) => return Signed::NoKey(format!("no key for {domain}")),
        Err(e) => return Signed::Trouble(e),
    };
    let settings = match std::fs::read_to_string(control.join("dkimsign")) {
        Ok(text) => Settings::parse(&text).0,
        Err(_) => Settings::default(),
    };
    let headers: Vec<&str> = settings.headers.iter().map(String::as_str).collect();
    match key.sign(message, settings.canon, &headers, time) {
        Some(field) => Signed::Yes(field, key.domain, key.selector),
        None => Signed::Trouble("header too large or malformed".to_string()),
    }
}

/// The field to add (empty when none) and the log line, if any, for a signing outcome.
pub fn outcome(signed: Signed) -> (Vec<u8>, Option<String>) {
    match signed {
        Signed::Off => (Vec::new(), None),
        Signed::Yes(field, d, s) => (field, Some(format!("dkim: signed d={d} s={s}"))),
        Signed::NoKey(why) | Signed::Trouble(why) => (Vec::new(), Some(format!("dkim: not signed: {why}"))),
    }
}

/// RSAPublicKey (PKCS#1) wrapped as SubjectPublicKeyInfo, the form `p=` carries for k=rsa.
fn spki_rsa(pkcs1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier: rsaEncryption (1.2.840.113549.1.1.1) with NULL parameters.
    let algorithm: &[u8] = &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut inner = algorithm.to_vec();
    inner.extend(der(0x03, &bits));
    der(0x30, &inner)
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().iter().copied().skip_while(|&b| b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decode base64, skipping whitespace; None on any other byte outside the alphabet.
pub fn unbase64(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &b in text {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The DER inside a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
pub fn pem_to_der(pem: &[u8]) -> Result<Vec<u8>, KeyError> {
    let text = std::str::from_utf8(pem).map_err(|_| KeyError::Format("PEM is not text".to_string()))?;
    let begin = "-----BEGIN PRIVATE KEY-----";
    let start = text.find(begin).ok_or_else(|| KeyError::Format("PEM is not a PKCS#8 \"PRIVATE KEY\"".to_string()))?
        + begin.len();
    let end = text[start..].find("-----END").ok_or_else(|| KeyError::Format("PEM has no END line".to_string()))?;
    unbase64(&text.as_bytes()[start..start + end]).ok_or_else(|| KeyError::Format("PEM is not base64".to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // RFC 6376 §3.4.5, the example, with its visible whitespace made real.
    const EXAMPLE: &[u8] = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n";

    fn headers(canon: Canon) -> Vec<u8> {
        let (fields, _) = parse(EXAMPLE).unwrap();
        fields.iter().flat_map(|f| canon_header(canon, f)).collect()
    }

    #[test]
    fn rfc6376_relaxed() {
        assert_eq!(headers(Canon::Relaxed), b"a:X\r\nb:Y Z\r\n");
        // Regression: the space after a colon inside the value stays (it was dropped, and
        // relaxed signatures over "Subject: Re: x" or dkimpy's "h=from : to" failed).
        let (fields, _) = parse(b"Subject:  Re:  x : y\r\n\r\n").unwrap();
        assert_eq!(canon_header(Canon::Relaxed, &fields[0]), b"subject:Re: x : y\r\n");
        let (_, body) = parse(EXAMPLE).unwrap();
        assert_eq!(canon_body(Canon::Relaxed, body), b" C\r\nD E\r\n");
    }

    #[test]
    fn rfc6376_simple() {
        assert_eq!(headers(Canon::Simple), b"A: X\r\nB : Y\t\r\n\tZ  \r\n");
        let (_, body) = parse(EXAMPLE).unwrap();
        assert_eq!(canon_body(Canon::Simple, body), b" C \r\nD \t E\r\n");
    }

    #[test]
    fn lf_line_ends_count_as_crlf() {
        let lf: Vec<u8> = EXAMPLE.iter().copied().filter(|&b| b != b'\r').collect();
        let (fields, body) = parse(&lf).unwrap();
        let relaxed: Vec<u8> = fields.iter().flat_map(|f| canon_header(Canon::Relaxed, f)).collect();
        assert_eq!(relaxed, b"a:X\r\nb:Y Z\r\n");
        assert_eq!(canon_body(Canon::Relaxed, body), b" C\r\nD E\r\n");
        assert_eq!(canon_body(Canon::Simple, body), b" C \r\nD \t E\r\n");
    }

    #[test]
    fn empty_bodies() {
        // §3.4.3: an empty body is one CRLF in simple; §3.4.4: nothing in relaxed.
        assert_eq!(canon_body(Canon::Simple, b""), b"\r\n");
        assert_eq!(canon_body(Canon::Simple, b"\r\n\r\n"), b"\r\n");
        assert_eq!(canon_body(Canon::Relaxed, b""), b"");
        assert_eq!(canon_body(Canon::Relaxed, b"  \n\n"), b"");
        assert_eq!(canon_body(Canon::Relaxed, b"x"), b"x\r\n");
    }

    #[test]
    fn from_domains() {
        assert_eq!(from_domain(b"From: A <a@Example.COM>\n\nx").as_deref(), Some("example.com"));
        assert_eq!(from_domain(b"Subject: s\nfrom: b@sub.example.org (B)\n\n").as_deref(), Some("sub.example.org"));
        assert_eq!(from_domain(b"From: nobody\n\n"), None);
        assert_eq!(from_domain(b"To: a@b.c\n\n"), None);
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert!(parse(b" continuation first\n\n").is_none());
        assert!(parse(b"no colon here\n\n").is_none());
        assert!(parse(b"Bad Name: x\n\n").is_none());
    }

    #[test]
    fn base64_round_trip() {
        for n in 0..10 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37) as u8).collect();
            assert_eq!(unbase64(base64(&bytes).as_bytes()).unwrap(), bytes);
        }
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fo"), "Zm8=");
    }

    #[test]
    fn settings() {
        let (s, problems) = Settings::parse("# x\nc=simple/relaxed\nh=From:To\n");
        assert!(problems.is_empty());
        assert_eq!(s.canon, (Canon::Simple, Canon::Relaxed));
        assert_eq!(s.headers, vec!["from", "to"]);
        assert_eq!(Settings::parse("h=To\nbogus\n").1.len(), 2);
    }

    #[test]
    fn ed25519_signs_and_prints_a_record() {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = Key::from_bytes("example.com", "s1", doc.as_ref()).unwrap();
        assert!(key.dns_record().starts_with("v=DKIM1; k=ed25519; p="));
        let field = key
            .sign(b"From: a@example.com\nSubject: x\n\nbody\n", (Canon::Relaxed, Canon::Relaxed), DEFAULT_HEADERS, 1)
            .unwrap();
        let text = String::from_utf8(field).unwrap();
        assert!(text.contains("h=from:from:subject;"), "{text}");
        assert!(text.contains("d=example.com; s=s1;"));
    }
}
