//! Delivery status notification parameters (RFC 3461): MAIL's RET and ENVID, RCPT's NOTIFY
//! and ORCPT, their xtext (RFC 3461 §4), and the record that carries them in the queue
//! (doc/queue-format.5, the `d` record of a message file's header). Encoder and decoder side
//! by side.
//!
//! ENVID and ORCPT are kept in their xtext form from the SMTP command to the queue and on to
//! the next server: xtext is printable ASCII without space, `+` or `=` except in `+XX`, so it
//! can sit in a text record and on an SMTP line as it is. It is decoded only to be shown in a
//! delivery report.
#![forbid(unsafe_code)]

/// RFC 3461 §4.4: ENVID's xtext is at most 100 characters.
pub const MAX_ENVID: usize = 100;
/// RFC 3461 §4.2: ORCPT's value is at most 500 characters.
pub const MAX_ORCPT: usize = 500;

/// What to return with a failure notice (RET).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    /// The whole message.
    Full,
    /// The header only.
    Headers,
}

impl Ret {
    /// The keyword, as on the wire.
    pub fn keyword(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Headers => "HDRS",
        }
    }

    /// Parse RET's value (case-insensitive).
    pub fn parse(value: &[u8]) -> Option<Ret> {
        if value.eq_ignore_ascii_case(b"FULL") {
            Some(Ret::Full)
        } else if value.eq_ignore_ascii_case(b"HDRS") {
            Some(Ret::Headers)
        } else {
            None
        }
    }
}

/// NOTIFY's value: NEVER is all three false.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    /// Report a delivery.
    pub success: bool,
    /// Report a failure.
    pub failure: bool,
    /// Report a delay.
    pub delay: bool,
}

impl Notify {
    /// Parse NOTIFY's value: `NEVER` alone, or a list of SUCCESS, FAILURE, DELAY, each at
    /// most once (case-insensitive).
    pub fn parse(value: &[u8]) -> Option<Notify> {
        if value.eq_ignore_ascii_case(b"NEVER") {
            return Some(Notify::default());
        }
        let mut notify = Notify::default();
        for word in value.split(|&b| b == b',') {
            let slot = if word.eq_ignore_ascii_case(b"SUCCESS") {
                &mut notify.success
            } else if word.eq_ignore_ascii_case(b"FAILURE") {
                &mut notify.failure
            } else if word.eq_ignore_ascii_case(b"DELAY") {
                &mut notify.delay
            } else {
                return None;
            };
            if *slot {
                return None;
            }
            *slot = true;
        }
        Some(notify)
    }

    /// The wire form: `NEVER` or the list in a fixed order.
    pub fn encode(self) -> String {
        let words: Vec<&str> = [(self.success, "SUCCESS"), (self.failure, "FAILURE"), (self.delay, "DELAY")]
            .into_iter()
            .filter_map(|(on, word)| on.then_some(word))
            .collect();
        if words.is_empty() {
            "NEVER".to_string()
        } else {
            words.join(",")
        }
    }
}

/// Whether `text` is valid xtext (RFC 3461 §4): characters `!` to `~` except `+` and `=`,
/// and `+` followed by two upper-case hex digits.
pub fn is_xtext(text: &[u8]) -> bool {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'+' => {
                let hex = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
                if !hex(text.get(i + 1)) || !hex(text.get(i + 2)) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            b'!'..=b'~' => i += 1,
            _ => return false,
        }
    }
    true
}

/// Decode valid xtext; None when it is not valid.
pub fn xtext_decode(text: &[u8]) -> Option<Vec<u8>> {
    if !is_xtext(text) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'+' {
            let digits = std::str::from_utf8(&text[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(digits, 16).ok()?);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Encode bytes as xtext.
pub fn xtext_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("+{b:02X}").as_bytes());
        }
    }
    out
}

/// Whether a decoded ENVID or ORCPT address may go into a report header: printable ASCII and
/// space only (RFC 3461 §4.2, §4.4), so it can never end a header line or start a new one.
fn printable(decoded: &[u8]) -> bool {
    decoded.iter().all(|&b| (b' '..=b'~').contains(&b))
}

/// Check ENVID's value; the xtext itself when it is acceptable.
pub fn parse_envid(value: &[u8]) -> Option<Vec<u8>> {
    let decoded = xtext_decode(value)?;
    (!value.is_empty() && value.len() <= MAX_ENVID && printable(&decoded)).then(|| value.to_vec())
}

/// Check ORCPT's value, `addr-type ; xtext`; the value with the address type as given and the
/// xtext as given when it is acceptable.
pub fn parse_orcpt(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() > MAX_ORCPT {
        return None;
    }
    let semi = memchr::memchr(b';', value)?;
    let (kind, address) = (&value[..semi], &value[semi + 1..]);
    let atom = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(b);
    if kind.is_empty() || !kind.iter().all(atom) || address.is_empty() {
        return None;
    }
    let decoded = xtext_decode(address)?;
    printable(&decoded).then(|| value.to_vec())
}

/// ORCPT's value for a report's Original-Recipient field: `type;address` with the address
/// decoded.
pub fn orcpt_display(orcpt: &[u8]) -> Vec<u8> {
    let Some(semi) = memchr::memchr(b';', orcpt) else { return orcpt.to_vec() };
    let mut out = orcpt[..=semi].to_vec();
    out.extend(xtext_decode(&orcpt[semi + 1..]).unwrap_or_else(|| orcpt[semi + 1..].to_vec()));
    out
}

/// One recipient's DSN parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// NOTIFY; None when not given (failures and delays are then reported).
    pub notify: Option<Notify>,
    /// ORCPT in its wire form (`rfc822;xtext`).
    pub orcpt: Option<Vec<u8>>,
}

impl RcptParams {
    /// Whether a failure is to be reported (no NOTIFY means yes).
    pub fn wants_failure(&self) -> bool {
        self.notify.is_none_or(|n| n.failure)
    }

    /// Whether a delay is to be reported (no NOTIFY means yes, RFC 3461 §4.1).
    pub fn wants_delay(&self) -> bool {
        self.notify.is_none_or(|n| n.delay)
    }

    /// Whether a delivery is to be reported.
    pub fn wants_success(&self) -> bool {
        self.notify.is_some_and(|n| n.success)
    }
}

/// The DSN parameters of one message: MAIL's, and each recipient's in envelope order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// RET.
    pub ret: Option<Ret>,
    /// ENVID in its xtext form.
    pub envid: Option<Vec<u8>>,
    /// One entry per envelope recipient, in order.
    pub recipients: Vec<RcptParams>,
}

impl Params {
    /// Whether no parameter at all was given (such a message gets no `d` record).
    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none() && self.recipients.iter().all(|r| *r == RcptParams::default())
    }

    /// The parameters of recipient `index`; the defaults for a recipient not covered.
    pub fn recipient(&self, index: usize) -> RcptParams {
        self.recipients.get(index).cloned().unwrap_or_default()
    }

    /// The record's text (doc/queue-format.5): lines separated by LF, the first `RET ENVID`,
    /// then one `NOTIFY ORCPT` per recipient, each field `-` when absent. No NUL, CR or space
    /// inside a field: ENVID and ORCPT are xtext.
    pub fn encode(&self) -> Vec<u8> {
        let field = |v: Option<&[u8]>| v.map_or_else(|| b"-".to_vec(), <[u8]>::to_vec);
        let mut out = field(self.ret.map(|r| r.keyword().as_bytes()));
        out.push(b' ');
        out.extend(field(self.envid.as_deref()));
        for r in &self.recipients {
            out.push(b'\n');
            out.extend(field(r.notify.map(Notify::encode).as_deref().map(str::as_bytes)));
            out.push(b' ');
            out.extend(field(r.orcpt.as_deref()));
        }
        out
    }

    /// Parse [`Params::encode`]'s form; None when it is malformed.
    pub fn decode(text: &[u8]) -> Option<Params> {
        let mut lines = text.split(|&b| b == b'\n');
        type Field = Option<Vec<u8>>;
        let pair = |line: &[u8]| -> Option<(Field, Field)> {
            let space = memchr::memchr(b' ', line)?;
            let some = |f: &[u8]| (f != b"-").then(|| f.to_vec());
            Some((some(&line[..space]), some(&line[space + 1..])))
        };
        let (ret, envid) = pair(lines.next()?)?;
        let ret = match ret {
            None => None,
            Some(r) => Some(Ret::parse(&r)?),
        };
        let envid = match envid {
            None => None,
            Some(e) => Some(parse_envid(&e)?),
        };
        let mut params = Params { ret, envid, recipients: Vec::new() };
        for line in lines {
            let (notify, orcpt) = pair(line)?;
            let notify = match notify {
                None => None,
                Some(n) => Some(Notify::parse(&n)?),
            };
            let orcpt = match orcpt {
                None => None,
                Some(o) => Some(parse_orcpt(&o)?),
            };
            params.recipients.push(RcptParams { notify, orcpt });
        }
        Some(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext() {
        assert_eq!(xtext_decode(b"a+2Bb").as_deref(), Some(&b"a+b"[..]));
        assert!(xtext_decode(b"a+2b").is_none());
        assert!(xtext_decode(b"a+2").is_none());
        assert!(xtext_decode(b"a=b").is_none());
        assert!(xtext_decode(b"a b").is_none());
        assert_eq!(xtext_encode(b"a+b=c d"), b"a+2Bb+3Dc+20d");
    }

    #[test]
    fn parameters() {
        assert_eq!(Notify::parse(b"never"), Some(Notify::default()));
        assert_eq!(Notify::parse(b"SUCCESS,delay").map(Notify::encode).as_deref(), Some("SUCCESS,DELAY"));
        assert!(Notify::parse(b"NEVER,SUCCESS").is_none());
        assert!(Notify::parse(b"SUCCESS,SUCCESS").is_none());
        assert!(Notify::parse(b"").is_none());
        assert!(parse_orcpt(b"rfc822;a+40b").is_some());
        assert!(parse_orcpt(b"rfc822").is_none());
        assert!(parse_orcpt(b";a").is_none());
        assert!(parse_orcpt(b"rfc822;a+0Db").is_none());
        assert!(parse_envid(&[b'x'; 101]).is_none());
        assert_eq!(orcpt_display(b"rfc822;a+40b"), b"rfc822;a@b");
    }

    #[test]
    fn round_trip() {
        let params = Params {
            ret: Some(Ret::Headers),
            envid: Some(b"id+2B1".to_vec()),
            recipients: vec![
                RcptParams::default(),
                RcptParams {
                    notify: Some(Notify { success: true, ..Notify::default() }),
                    orcpt: Some(b"rfc822;x@y".to_vec()),
                },
            ],
        };
        assert_eq!(Params::decode(&params.encode()), Some(params));
        assert!(Params::decode(b"FULL").is_none());
    }
}
