//! DMARC (RFC 7489): the RFC5322.From domain, the policy record at `_dmarc.DOMAIN` (or at the
//! organizational domain), identifier alignment of the SPF and DKIM results, and the
//! disposition to apply.
//!
//! ```text
//! let from = dmarc::from_domain(header_block)?;           // exactly one From, one address
//! let passed: Vec<&str> = verdicts.iter().filter_map(Verdict::dmarc_domain).collect();
//! let verdict = dmarc::evaluate(&from, Some(("pass", mail_from_domain)), &passed, &mut dns, &[]);
//! verdict.authres()     // "dmarc=fail (p=reject dis=reject) header.from=example.com"
//! verdict.disposition   // what the policy asks: none, quarantine or reject
//! ```
//!
//! Organizational domain without the Public Suffix List: the public suffix of a domain is the
//! longest of [`PUBLIC_SUFFIXES`] (a short built-in list of two-label suffixes such as
//! `co.uk`), plus any the caller names, that ends it, else its last label; the organizational
//! domain is that suffix and one label more. So `mail.example.com` → `example.com`,
//! `a.b.example.co.uk` → `example.co.uk`. A suffix missing from the list makes two unrelated
//! registrants under it look aligned in relaxed mode and share a record by fallback; the
//! caller's list (one day `control/publicsuffixes`) is the remedy.
#![forbid(unsafe_code)]

use crate::mail::dkimverify::{parse_tags, TxtError, TxtLookup};

/// The control file that says what quill-smtpd does with DKIM and DMARC.
pub const FILE: &str = "dmarcpolicy";

/// control/dmarcpolicy (doc/quill-control.5): what quill-smtpd does with DKIM and DMARC at the
/// end of the data, for a client that is neither RELAYCLIENT, authenticated, local nor on the
/// loopback (the clients SPF skips).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checking {
    /// `off`: no DKIM or DMARC check.
    Off,
    /// `record` (the default): check, and say the results in the Authentication-Results field.
    Record,
    /// `reject`: as record, and refuse a message that fails DMARC with disposition reject
    /// (550 5.7.1). Quarantine is only recorded.
    Reject,
}

impl Checking {
    /// The file's word; an unknown one is an error (the caller answers 421).
    pub fn load(control: &crate::mail::control::Control) -> Result<Checking, crate::base::fail::Error> {
        match control.line(FILE)?.as_deref() {
            None | Some(b"record") => Ok(Checking::Record),
            Some(b"off") => Ok(Checking::Off),
            Some(b"reject") => Ok(Checking::Reject),
            Some(other) => Err(crate::base::fail::Error::queue(
                crate::base::fail::qq::CONFIG_ERROR,
                format!(
                    "unable to parse control/dmarcpolicy: {} is not off, record or reject",
                    crate::base::log::safe(other)
                ),
            )),
        }
    }
}

/// Two-label public suffixes known without the Public Suffix List: the common second-level
/// registries of country-code domains.
pub const PUBLIC_SUFFIXES: &[&str] = &[
    "ac.uk", "co.uk", "gov.uk", "ltd.uk", "me.uk", "net.uk", "nhs.uk", "org.uk", "plc.uk", "sch.uk", "ac.jp", "co.jp",
    "go.jp", "ne.jp", "or.jp", "com.au", "net.au", "org.au", "edu.au", "gov.au", "id.au", "co.nz", "net.nz", "org.nz",
    "ac.nz", "govt.nz", "com.br", "net.br", "org.br", "gov.br", "com.cn", "net.cn", "org.cn", "gov.cn", "edu.cn",
    "co.in", "net.in", "org.in", "ac.in", "gov.in", "co.za", "org.za", "gov.za", "ac.za", "com.mx", "org.mx", "gob.mx",
    "com.ar", "com.tr", "org.tr", "gov.tr", "com.tw", "org.tw", "edu.tw", "co.kr", "or.kr", "ac.kr", "com.sg",
    "edu.sg", "gov.sg", "com.hk", "org.hk", "edu.hk", "co.il", "org.il", "ac.il", "co.th", "ac.th", "or.th", "com.my",
    "com.ph", "com.pl", "com.ua", "co.id", "or.id", "ac.id", "com.vn", "com.co", "com.pe", "com.ve", "com.ec",
    "com.eg", "com.sa", "com.pk", "com.ng", "co.ke",
];

/// A policy (`p=`, `sp=`) and a disposition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Deliver as usual.
    None,
    /// Treat as suspicious (a spam folder).
    Quarantine,
    /// Refuse (550 5.7.1 at the end of DATA).
    Reject,
}

impl Policy {
    /// The keyword.
    pub fn name(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Quarantine => "quarantine",
            Policy::Reject => "reject",
        }
    }

    fn parse(value: &[u8]) -> Option<Policy> {
        match value.to_ascii_lowercase().as_slice() {
            b"none" => Some(Policy::None),
            b"quarantine" => Some(Policy::Quarantine),
            b"reject" => Some(Policy::Reject),
            _ => None,
        }
    }

    /// The next milder policy: what is applied to a message outside `pct=` (RFC 7489 §6.6.4).
    fn milder(self) -> Policy {
        match self {
            Policy::Reject => Policy::Quarantine,
            _ => Policy::None,
        }
    }
}

/// Identifier alignment mode (`adkim=`, `aspf=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alignment {
    /// Same organizational domain.
    Relaxed,
    /// The very same domain.
    Strict,
}

/// A DMARC record (RFC 7489 §6.3). Reporting tags are kept as text; Quill sends no reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `p=`.
    pub policy: Policy,
    /// `sp=`: for subdomains of the organizational domain (default: `p=`).
    pub subdomain_policy: Option<Policy>,
    /// `adkim=` (default relaxed).
    pub adkim: Alignment,
    /// `aspf=` (default relaxed).
    pub aspf: Alignment,
    /// `pct=` (default 100).
    pub pct: u8,
    /// `rua=`, as written.
    pub rua: String,
    /// `ruf=`, as written.
    pub ruf: String,
    /// `fo=` (default 0).
    pub fo: String,
    /// `rf=` (default afrf).
    pub rf: String,
    /// `ri=` (default 86400).
    pub ri: u32,
}

/// Parse a TXT record as DMARC. Err(None): it is not a DMARC record (no `v=DMARC1` first) and
/// is to be ignored; Err(Some(why)): it is one, but unusable (RFC 7489 §6.6.3 then treats it
/// as `p=none` when `rua=` is given, which this function does itself, so Err(Some) means no
/// policy at all).
pub fn parse_record(text: &[u8]) -> Result<Record, Option<String>> {
    let tags = match parse_tags(text) {
        Ok(tags) => tags,
        Err(why) => {
            let first = text.iter().position(|&b| b == b';').map_or(text, |s| &text[..s]);
            let is_dmarc = squeeze_eq(first, b"v=DMARC1");
            return Err(is_dmarc.then_some(why));
        }
    };
    match tags.first() {
        Some((b"v", v)) if *v == b"DMARC1" => {}
        _ => return Err(None),
    }
    let get = |name: &str| tags.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| *v);
    let text_of =
        |name: &str, default: &str| get(name).map_or(default.to_string(), |v| String::from_utf8_lossy(v).into_owned());
    let align = |name: &str| match get(name).map(<[u8]>::to_ascii_lowercase).as_deref() {
        Some(b"s") => Alignment::Strict,
        _ => Alignment::Relaxed,
    };
    let rua = text_of("rua", "");
    let policy = match get("p").and_then(Policy::parse) {
        Some(p) => p,
        // §6.6.3: no valid p=, but somewhere to report: as if p=none.
        None if rua.contains(':') => Policy::None,
        None => return Err(Some("no valid p=".to_string())),
    };
    let subdomain_policy = match get("sp") {
        None => None,
        Some(sp) => match Policy::parse(sp) {
            Some(p) => Some(p),
            None if rua.contains(':') => Some(Policy::None),
            None => return Err(Some("invalid sp=".to_string())),
        },
    };
    let pct = match get("pct") {
        None => 100,
        Some(v) => std::str::from_utf8(v).ok().and_then(|s| s.parse::<u8>().ok()).filter(|&n| n <= 100).unwrap_or(100),
    };
    let ri = get("ri").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()).unwrap_or(86400);
    Ok(Record {
        policy,
        subdomain_policy,
        adkim: align("adkim"),
        aspf: align("aspf"),
        pct,
        rua,
        ruf: text_of("ruf", ""),
        fo: text_of("fo", "0"),
        rf: text_of("rf", "afrf"),
        ri,
    })
}

fn squeeze_eq(bytes: &[u8], want: &[u8]) -> bool {
    let squeezed: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    squeezed == want
}

/// Lowercase, without a final dot.
fn normal(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// The organizational domain of `domain` (see the module's notes), with `extra` public
/// suffixes beside [`PUBLIC_SUFFIXES`]. A domain that is itself a public suffix is its own.
pub fn organizational_domain(domain: &str, extra: &[&str]) -> String {
    let domain = normal(domain);
    let labels: Vec<&str> = domain.split('.').collect();
    let mut suffix_labels = 1;
    for suffix in PUBLIC_SUFFIXES.iter().chain(extra) {
        let suffix = normal(suffix);
        let n = suffix.split('.').count();
        if n > suffix_labels && (domain == suffix || domain.ends_with(&format!(".{suffix}"))) {
            suffix_labels = n;
        }
    }
    let keep = (suffix_labels + 1).min(labels.len());
    labels[labels.len() - keep..].join(".")
}

/// Whether `a` and `b` are aligned under `mode`.
pub fn aligned(a: &str, b: &str, mode: Alignment, extra: &[&str]) -> bool {
    match mode {
        Alignment::Strict => normal(a) == normal(b),
        Alignment::Relaxed => organizational_domain(a, extra) == organizational_domain(b, extra),
    }
}

/// Why the RFC5322.From domain cannot be had (RFC 7489 §6.6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromError {
    /// No From field, or one without an address: DMARC does not apply (`none`).
    Missing,
    /// Several From fields, several addresses, or a domain that is none: `permerror`.
    Invalid(String),
}

/// The domain of the single RFC5322.From address of a header block, lowercase.
pub fn from_domain(header: &[u8]) -> Result<String, FromError> {
    let end = crate::mail::header::split(header).header_end;
    let fields = crate::mail::header::fields(&header[..end]);
    let mut froms = fields.iter().filter(|f| f.is("from"));
    let Some(from) = froms.next() else { return Err(FromError::Missing) };
    if froms.next().is_some() {
        return Err(FromError::Invalid("more than one From field".to_string()));
    }
    let addresses = crate::mail::header::addresses(from.value);
    let address = match addresses.as_slice() {
        [] => return Err(FromError::Missing),
        [one] => one,
        _ => return Err(FromError::Invalid("more than one From address".to_string())),
    };
    let Some(at) = address.iter().rposition(|&b| b == b'@') else {
        return Err(FromError::Missing);
    };
    let domain = String::from_utf8_lossy(&address[at + 1..]).to_ascii_lowercase();
    let domain = domain.trim_end_matches('.');
    let valid = !domain.is_empty()
        && domain.len() <= 253
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if valid {
        Ok(domain.to_string())
    } else {
        Err(FromError::Invalid("From domain is not a domain name".to_string()))
    }
}

/// The DMARC result (RFC 7489 §11.2, RFC 8601 §2.7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An aligned identifier passed.
    Pass,
    /// A record was found and nothing aligned passed.
    Fail,
    /// No record (or no From domain): DMARC does not apply.
    None,
    /// A lookup failed for now.
    TempError,
    /// The From field or the record is unusable.
    PermError,
}

impl Outcome {
    /// The result keyword.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::None => "none",
            Outcome::TempError => "temperror",
            Outcome::PermError => "permerror",
        }
    }
}

/// What DMARC made of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The result.
    pub outcome: Outcome,
    /// The RFC5322.From domain (empty when there was none).
    pub from_domain: String,
    /// The policy published for this From domain (p=, or sp= for a subdomain), if a record was found.
    pub policy: Option<Policy>,
    /// What to do: the policy on a fail (made milder outside pct=), else none.
    pub disposition: Policy,
    /// Where the record was found (`_dmarc.` and this).
    pub record_domain: String,
    /// Why, in a few words, for the log and the header.
    pub reason: String,
}

impl Verdict {
    fn new(outcome: Outcome, from_domain: &str, reason: &str) -> Verdict {
        Verdict {
            outcome,
            from_domain: from_domain.to_string(),
            policy: None,
            disposition: Policy::None,
            record_domain: String::new(),
            reason: reason.to_string(),
        }
    }

    /// The method result for an Authentication-Results header:
    /// `dmarc=fail (p=reject dis=quarantine) header.from=example.com`.
    pub fn authres(&self) -> String {
        let mut out = format!("dmarc={}", self.outcome.name());
        if let Some(p) = self.policy {
            out.push_str(&format!(" (p={} dis={})", p.name(), self.disposition.name()));
        } else if !self.reason.is_empty() {
            let reason: String =
                self.reason.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
            out.push_str(&format!(" reason=\"{}\"", reason.replace(['"', '\\'], "'")));
        }
        if !self.from_domain.is_empty() {
            out.push_str(&format!(" header.from={}", self.from_domain));
        }
        out
    }
}

/// The record for `domain`: Ok(None) when there is none (no name, no DMARC record, or
/// several).
fn discover(domain: &str, dns: &mut dyn TxtLookup) -> Result<Option<Record>, (Outcome, String)> {
    let records = match dns.txt(&format!("_dmarc.{domain}")) {
        Ok(records) => records,
        Err(TxtError::NotFound) => return Ok(None),
        Err(TxtError::Temporary(why)) => return Err((Outcome::TempError, format!("DMARC lookup: {why}"))),
    };
    let mut found: Vec<Result<Record, String>> = Vec::new();
    for record in &records {
        match parse_record(record) {
            Ok(r) => found.push(Ok(r)),
            Err(Some(why)) => found.push(Err(why)),
            Err(None) => {}
        }
    }
    match found.len() {
        0 => Ok(None),
        // §6.6.3: more than one DMARC record is as good as none.
        2.. => Ok(None),
        _ => match found.pop() {
            Some(Ok(record)) => Ok(Some(record)),
            _ => Ok(None),
        },
    }
}

/// Evaluate DMARC for a message whose RFC5322.From domain is `from_domain`: `spf` is the SPF
/// result and the domain it was for (MAIL FROM's, or HELO's for a null sender),
/// `dkim_pass` the `d=` of every DKIM signature that passed (see
/// `dkimverify::Verdict::dmarc_domain`), `extra_suffixes` public suffixes beside the
/// built-in ones. `pct=` sampling draws a random number.
pub fn evaluate(
    from_domain: &str,
    spf: Option<(&str, &str)>,
    dkim_pass: &[&str],
    dns: &mut dyn TxtLookup,
    extra_suffixes: &[&str],
) -> Verdict {
    let roll = u32::from(crate::mail::dns::random_u16()) % 100;
    evaluate_with_roll(from_domain, spf, dkim_pass, dns, extra_suffixes, roll)
}

/// [`evaluate`] with the `pct=` draw given (0–99): the policy applies when `roll < pct`.
pub fn evaluate_with_roll(
    from_domain: &str,
    spf: Option<(&str, &str)>,
    dkim_pass: &[&str],
    dns: &mut dyn TxtLookup,
    extra_suffixes: &[&str],
    roll: u32,
) -> Verdict {
    let from = normal(from_domain);
    let organization = organizational_domain(&from, extra_suffixes);
    let (record, record_domain) = match discover(&from, dns) {
        Err((outcome, why)) => return Verdict::new(outcome, &from, &why),
        Ok(Some(record)) => (record, from.clone()),
        Ok(None) if organization != from => match discover(&organization, dns) {
            Err((outcome, why)) => return Verdict::new(outcome, &from, &why),
            Ok(Some(record)) => (record, organization.clone()),
            Ok(None) => return Verdict::new(Outcome::None, &from, "no DMARC record"),
        },
        Ok(None) => return Verdict::new(Outcome::None, &from, "no DMARC record"),
    };
    // §6.6.3: sp= applies when the record came from the organizational domain and the From
    // domain is below it.
    let policy = if record_domain != from { record.subdomain_policy.unwrap_or(record.policy) } else { record.policy };
    let dkim_aligned = dkim_pass.iter().any(|d| aligned(d, &from, record.adkim, extra_suffixes));
    let spf_aligned = spf.is_some_and(|(result, domain)| {
        result.eq_ignore_ascii_case("pass") && aligned(domain, &from, record.aspf, extra_suffixes)
    });
    let mut verdict = Verdict::new(Outcome::Pass, &from, "");
    verdict.policy = Some(policy);
    verdict.record_domain = record_domain;
    if dkim_aligned || spf_aligned {
        verdict.reason = if dkim_aligned { "DKIM aligned".to_string() } else { "SPF aligned".to_string() };
        return verdict;
    }
    verdict.outcome = Outcome::Fail;
    verdict.reason = "no aligned SPF or DKIM pass".to_string();
    verdict.disposition = if roll < u32::from(record.pct) { policy } else { policy.milder() };
    verdict
}

/// DMARC for a header block: the From domain first (none or permerror when it cannot be had),
/// then [`evaluate`].
pub fn evaluate_header(
    header: &[u8],
    spf: Option<(&str, &str)>,
    dkim_pass: &[&str],
    dns: &mut dyn TxtLookup,
    extra_suffixes: &[&str],
) -> Verdict {
    match from_domain(header) {
        Ok(domain) => evaluate(&domain, spf, dkim_pass, dns, extra_suffixes),
        Err(FromError::Missing) => Verdict::new(Outcome::None, "", "no From domain"),
        Err(FromError::Invalid(why)) => Verdict::new(Outcome::PermError, "", &why),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::mail::dkimverify::TxtTable;

    fn dns(records: &[(&str, &str)]) -> TxtTable {
        TxtTable(records.iter().map(|(n, r)| (n.to_string(), r.as_bytes().to_vec())).collect())
    }

    fn run(from: &str, spf: Option<(&str, &str)>, dkim: &[&str], table: &mut TxtTable) -> Verdict {
        evaluate_with_roll(from, spf, dkim, table, &[], 0)
    }

    #[test]
    fn records() {
        let r =
            parse_record(b"v=DMARC1; p=reject; sp=none; adkim=s; aspf=r; pct=50; rua=mailto:d@example.com").unwrap();
        assert_eq!(r.policy, Policy::Reject);
        assert_eq!(r.subdomain_policy, Some(Policy::None));
        assert_eq!((r.adkim, r.aspf, r.pct), (Alignment::Strict, Alignment::Relaxed, 50));
        assert_eq!(r.rua, "mailto:d@example.com");
        let r = parse_record(b"v=DMARC1;p=Quarantine").unwrap();
        assert_eq!((r.policy, r.subdomain_policy, r.pct, r.ri), (Policy::Quarantine, None, 100, 86400));
        assert_eq!(parse_record(b"v=spf1 -all"), Err(None));
        assert_eq!(parse_record(b"p=reject; v=DMARC1"), Err(None));
        assert_eq!(parse_record(b"v=DMARC1; p=bogus"), Err(Some("no valid p=".to_string())));
        // §6.6.3: no valid p= but a report address: as if p=none.
        assert_eq!(parse_record(b"v=DMARC1; rua=mailto:a@b.example").unwrap().policy, Policy::None);
        assert!(parse_record(b"v=DMARC1; p=none; p=reject").is_err());
        assert_eq!(parse_record(b"v=DMARC1; p=none; pct=250").unwrap().pct, 100);
    }

    #[test]
    fn organizational_domains() {
        assert_eq!(organizational_domain("mail.Example.COM.", &[]), "example.com");
        assert_eq!(organizational_domain("example.com", &[]), "example.com");
        assert_eq!(organizational_domain("com", &[]), "com");
        assert_eq!(organizational_domain("a.b.example.co.uk", &[]), "example.co.uk");
        assert_eq!(organizational_domain("co.uk", &[]), "co.uk");
        assert_eq!(organizational_domain("x.shop.example.net", &["example.net"]), "shop.example.net");
        assert!(aligned("mail.example.com", "example.com", Alignment::Relaxed, &[]));
        assert!(!aligned("mail.example.com", "example.com", Alignment::Strict, &[]));
        assert!(!aligned("a.co.uk", "b.co.uk", Alignment::Relaxed, &[]));
    }

    #[test]
    fn from_domains() {
        assert_eq!(
            from_domain(b"From: Alice <alice@Example.COM>\r\nTo: b@c.d\r\n\r\nbody"),
            Ok("example.com".to_string())
        );
        assert_eq!(from_domain(b"Subject: x\nfrom: a@b.example (c)\n\n"), Ok("b.example".to_string()));
        assert_eq!(from_domain(b"To: a@b.example\n\n"), Err(FromError::Missing));
        assert!(matches!(from_domain(b"From: a@b.example\nFrom: c@d.example\n\n"), Err(FromError::Invalid(_))));
        assert!(matches!(from_domain(b"From: a@b.example, c@d.example\n\n"), Err(FromError::Invalid(_))));
        assert!(matches!(from_domain(b"From: a@[127.0.0.1]\n\n"), Err(FromError::Invalid(_))));
        assert_eq!(from_domain(b"From: undisclosed\n\n"), Err(FromError::Missing));
    }

    #[test]
    fn aligned_and_unaligned() {
        let mut table = dns(&[("_dmarc.example.com", "v=DMARC1; p=reject")]);
        let v = run("example.com", None, &["example.com"], &mut table);
        assert_eq!((v.outcome, v.disposition), (Outcome::Pass, Policy::None));
        assert_eq!(v.authres(), "dmarc=pass (p=reject dis=none) header.from=example.com");
        // Relaxed: a signature by a subdomain, or SPF for one, aligns.
        assert_eq!(run("example.com", None, &["mail.example.com"], &mut table).outcome, Outcome::Pass);
        assert_eq!(run("example.com", Some(("pass", "bounce.example.com")), &[], &mut table).outcome, Outcome::Pass);
        // Unaligned passes, or failed SPF, fail; the policy is applied.
        let v = run("example.com", Some(("pass", "example.org")), &["example.net"], &mut table);
        assert_eq!((v.outcome, v.policy, v.disposition), (Outcome::Fail, Some(Policy::Reject), Policy::Reject));
        assert_eq!(v.authres(), "dmarc=fail (p=reject dis=reject) header.from=example.com");
        assert_eq!(run("example.com", Some(("fail", "example.com")), &[], &mut table).outcome, Outcome::Fail);
        assert_eq!(run("example.com", Some(("softfail", "example.com")), &[], &mut table).outcome, Outcome::Fail);
    }

    #[test]
    fn strict_alignment() {
        let mut table = dns(&[("_dmarc.example.com", "v=DMARC1; p=quarantine; adkim=s; aspf=s")]);
        assert_eq!(run("example.com", None, &["mail.example.com"], &mut table).outcome, Outcome::Fail);
        assert_eq!(run("example.com", Some(("pass", "mail.example.com")), &[], &mut table).outcome, Outcome::Fail);
        assert_eq!(run("example.com", None, &["EXAMPLE.com"], &mut table).outcome, Outcome::Pass);
        assert_eq!(run("example.com", Some(("pass", "example.com")), &[], &mut table).outcome, Outcome::Pass);
    }

    #[test]
    fn subdomains_use_the_organizational_record_and_sp() {
        let mut table = dns(&[("_dmarc.example.com", "v=DMARC1; p=reject; sp=quarantine")]);
        let v = run("news.example.com", None, &[], &mut table);
        assert_eq!((v.outcome, v.policy, v.disposition), (Outcome::Fail, Some(Policy::Quarantine), Policy::Quarantine));
        assert_eq!(v.record_domain, "example.com");
        // Without sp=, p= applies to subdomains.
        let mut table = dns(&[("_dmarc.example.com", "v=DMARC1; p=reject")]);
        assert_eq!(run("news.example.com", None, &[], &mut table).disposition, Policy::Reject);
        // A subdomain's own record wins over the organizational one.
        let mut table =
            dns(&[("_dmarc.example.com", "v=DMARC1; p=reject"), ("_dmarc.news.example.com", "v=DMARC1; p=none")]);
        let v = run("news.example.com", None, &[], &mut table);
        assert_eq!(
            (v.outcome, v.disposition, v.record_domain.as_str()),
            (Outcome::Fail, Policy::None, "news.example.com")
        );
    }

    #[test]
    fn missing_broken_and_doubled_records() {
        let v = run("example.com", None, &["example.com"], &mut dns(&[]));
        assert_eq!(v.outcome, Outcome::None);
        assert_eq!(v.authres(), "dmarc=none reason=\"no DMARC record\" header.from=example.com");
        let mut table = dns(&[("_dmarc.example.com", "v=spf1 -all")]);
        assert_eq!(run("example.com", None, &[], &mut table).outcome, Outcome::None);
        let mut table =
            dns(&[("_dmarc.example.com", "v=DMARC1; p=reject"), ("_dmarc.example.com", "v=DMARC1; p=none")]);
        assert_eq!(run("example.com", None, &[], &mut table).outcome, Outcome::None);
        struct Failing;
        impl TxtLookup for Failing {
            fn txt(&mut self, _: &str) -> Result<Vec<Vec<u8>>, TxtError> {
                Err(TxtError::Temporary("timed out".to_string()))
            }
        }
        assert_eq!(evaluate("example.com", None, &[], &mut Failing, &[]).outcome, Outcome::TempError);
        let v = evaluate_header(b"From: a@b.example\nFrom: c@d.example\n\n", None, &[], &mut dns(&[]), &[]);
        assert_eq!(v.outcome, Outcome::PermError);
        assert_eq!(evaluate_header(b"To: x@y.example\n\n", None, &[], &mut dns(&[]), &[]).outcome, Outcome::None);
    }

    #[test]
    fn pct_samples_the_policy() {
        let mut table = dns(&[("_dmarc.example.com", "v=DMARC1; p=reject; pct=20")]);
        assert_eq!(evaluate_with_roll("example.com", None, &[], &mut table, &[], 19).disposition, Policy::Reject);
        assert_eq!(evaluate_with_roll("example.com", None, &[], &mut table, &[], 20).disposition, Policy::Quarantine);
        let mut table = dns(&[("_dmarc.example.com", "v=DMARC1; p=quarantine; pct=0")]);
        assert_eq!(evaluate_with_roll("example.com", None, &[], &mut table, &[], 0).disposition, Policy::None);
    }
}
