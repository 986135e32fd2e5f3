//! Bounce messages: RFC 3464 delivery status notifications, composed by quill-send when every
//! recipient of a message is done and some failed.
//!
//! Shape: `multipart/report; report-type=delivery-status` with three parts: a human-readable
//! `text/plain` part (it opens with "Hi. This is the quill-send program at HOST." so that
//! programs that parse qmail's QSBMF bounces still find the failed addresses), a
//! `message/delivery-status` part (one per-message block, one block per failed recipient), and
//! a `text/rfc822-headers` part with the original message's header block — or, when the
//! sender asked for it with RET=FULL (RFC 3461) and it is small enough, a `message/rfc822`
//! part with the whole message. Recipients that asked for no failure notice (NOTIFY without
//! FAILURE) are left out; their ORCPT becomes an Original-Recipient field, the ENVID an
//! Original-Envelope-Id.
#![forbid(unsafe_code)]

use crate::base::fail::{parse_enhanced, Enhanced, Status};

/// The most bytes of the original header block a bounce carries.
pub const MAX_ORIGINAL_HEADERS: usize = 64 * 1024;
/// The most bytes of one recipient's failure text in a bounce.
pub const MAX_TEXT: usize = 2000;

/// What happened to a recipient in a report (RFC 3464 §2.3.3's Action).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Failed for good.
    Failed,
    /// Delivered here, to a mailbox or program (a success notice, NOTIFY=SUCCESS).
    Delivered,
    /// Handed to another server that will send no notice of its own (NOTIFY=SUCCESS).
    Relayed,
    /// Still deferred after `delaywarningtime`, and still being tried (a delay warning).
    Delayed,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Delayed => "delayed",
        }
    }
}

/// One recipient in a report: one that failed for good, or one whose delivery the sender
/// asked to hear of (NOTIFY=SUCCESS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The recipient as the sender gave it.
    pub recipient: Vec<u8>,
    /// What the delivery said.
    pub text: Vec<u8>,
    /// Its ORCPT (RFC 3461), in wire form, when the client gave one: the Original-Recipient.
    pub orcpt: Option<Vec<u8>>,
    /// What happened.
    pub action: Action,
}

/// What goes into one bounce.
#[derive(Clone, Debug)]
pub struct Bounce<'a> {
    /// This host (`control/me`): the Reporting-MTA.
    pub me: &'a [u8],
    /// `From:` (bouncefrom@bouncehost).
    pub from: &'a [u8],
    /// `To:`: the original sender, or doublebounceto@doublebouncehost for a double bounce.
    pub to: &'a [u8],
    /// True when the failed message was itself a bounce (this goes to the postmaster).
    pub double: bool,
    /// The queue id of the failed message (for the Message-ID and the boundary).
    pub id: u64,
    /// When the failed message was queued (Arrival-Date).
    pub arrival: u64,
    /// Now (Date).
    pub now: u64,
    /// The failed recipients.
    pub failures: &'a [Failure],
    /// The header block of the failed message.
    pub original_headers: &'a [u8],
    /// The whole failed message, returned instead of its header block (RET=FULL, when it is
    /// no larger than `bouncemaxbytes`).
    pub original_message: Option<&'a [u8]>,
    /// The ENVID the client gave (RFC 3461), in xtext: the Original-Envelope-Id.
    pub envid: Option<&'a [u8]>,
}

/// The RFC 3463 status of a failure: the subject and detail of the first `#5.X.Y` in its
/// text (a spawner's report, rendered by `Status` or by a remote server), else `5.0.0`.
pub fn status_code(text: &[u8]) -> Enhanced {
    code_of_class(text, b'5')
}

/// The RFC 3463 status of a deferral: the subject and detail of the first `#4.X.Y` in its
/// text, else `4.0.0`'s.
pub fn temporary_code(text: &[u8]) -> Enhanced {
    code_of_class(text, b'4')
}

fn code_of_class(text: &[u8], class: u8) -> Enhanced {
    let mut pos = 0;
    while let Some(hash) = memchr::memchr(b'#', &text[pos..]) {
        let start = pos + hash + 1;
        if let Some(code) = parse_code(&text[start..], class) {
            return code;
        }
        pos = start;
    }
    Enhanced::OTHER
}

/// `C.D{1,3}.D{1,3}` (C the class, 5 or 4) at the start of `bytes`, not followed by another
/// digit.
fn parse_code(bytes: &[u8], class: u8) -> Option<Enhanced> {
    if bytes.first() != Some(&class) || bytes.get(1) != Some(&b'.') {
        return None;
    }
    let mut end = 2;
    for part in 0..2 {
        let digits = bytes[end..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 3 {
            return None;
        }
        end += digits;
        if part == 0 {
            if bytes.get(end) != Some(&b'.') {
                return None;
            }
            end += 1;
        }
    }
    if bytes.get(end).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let (_, code) = parse_enhanced(std::str::from_utf8(&bytes[..end]).ok()?)?;
    Some(code)
}

/// The header block at the start of a message: everything up to (not including) the first
/// empty line, cut at a line end to at most [`MAX_ORIGINAL_HEADERS`] bytes.
pub fn header_block(message: &[u8]) -> &[u8] {
    header_block_within(message, MAX_ORIGINAL_HEADERS)
}

/// [`header_block`], cut at a line end to at most `limit` bytes (`bouncemaxbytes`).
pub fn header_block_within(message: &[u8], limit: usize) -> &[u8] {
    let limit = limit.min(MAX_ORIGINAL_HEADERS);
    let mut pos = 0;
    while pos < message.len() {
        let end = memchr::memchr(b'\n', &message[pos..]).map(|e| pos + e + 1).unwrap_or(message.len());
        let line = &message[pos..end];
        if line == b"\n" || line == b"\r\n" || end > limit {
            break;
        }
        pos = end;
    }
    &message[..pos]
}

/// Bytes safe for a us-ascii text line: printable ASCII and tabs kept, the rest `?`.
fn ascii(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend(bytes.iter().map(|&b| if b == b'\t' || (0x20..0x7f).contains(&b) { b } else { b'?' }));
}

/// The failure text as lines of the human-readable part.
fn text_lines(text: &[u8], out: &mut Vec<u8>) {
    let text = &text[..text.len().min(MAX_TEXT)];
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        ascii(line, out);
        out.push(b'\n');
    }
}

/// The failure text as one header field value (Diagnostic-Code): one line, ASCII.
fn one_line(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len().min(MAX_TEXT));
    let mut last_space = true;
    for &b in text.iter().take(MAX_TEXT) {
        let c = match b {
            b'\n' | b'\r' | b'\t' | b' ' => b' ',
            0x21..=0x7e => b,
            _ => b'?',
        };
        if c == b' ' && last_space {
            continue;
        }
        last_space = c == b' ';
        out.push(c);
    }
    while out.last() == Some(&b' ') {
        out.pop();
    }
    out
}

/// Compose the whole bounce message (headers and body, LF line ends: the queue stores mail
/// with LF; the SMTP client adds CR).
pub fn compose(b: &Bounce) -> Vec<u8> {
    let boundary = format!("quill-report-{}-{}-{}", b.now, b.id, std::process::id());
    let me = String::from_utf8_lossy(b.me).into_owned();
    let mut out = Vec::with_capacity(2048 + b.original_headers.len());
    let push = |out: &mut Vec<u8>, parts: &[&[u8]]| {
        for p in parts {
            out.extend_from_slice(p);
        }
    };
    push(&mut out, &[b"From: ", b.from, b"\n"]);
    // The bounce goes to the envelope sender, which the original client chose.
    push(&mut out, &[b"To: ", &crate::mail::header::field_safe(b.to), b"\n"]);
    let failed = b.failures.iter().any(|f| f.action == Action::Failed);
    let delayed = b.failures.iter().any(|f| f.action == Action::Delayed);
    let subject: &[u8] = if b.double {
        b"Subject: failure notice (undeliverable bounce)\n"
    } else if failed {
        b"Subject: failure notice\n"
    } else if delayed {
        b"Subject: delay warning: not delivered yet, still trying (no action needed)\n"
    } else {
        b"Subject: delivery notice\n"
    };
    push(&mut out, &[subject]);
    push(&mut out, &[b"Date: ", crate::base::date::rfc5322(b.now).as_bytes(), b"\n"]);
    push(&mut out, &[format!("Message-ID: <{}.{}.bounce@{}>\n", b.now, b.id, me).as_bytes()]);
    push(&mut out, &[b"Auto-Submitted: auto-replied\nMIME-Version: 1.0\n"]);
    push(&mut out, &[b"Content-Type: multipart/report; report-type=delivery-status;\n"]);
    push(&mut out, &[format!("\tboundary=\"{boundary}\"\n\n").as_bytes()]);
    push(&mut out, &[b"This is a MIME-formatted delivery status notification (RFC 3464).\n\n"]);

    // The human-readable part.
    push(&mut out, &[format!("--{boundary}\nContent-Type: text/plain; charset=us-ascii\n\n").as_bytes()]);
    push(&mut out, &[format!("Hi. This is the quill-send program at {me}.\n").as_bytes()]);
    if b.double {
        push(&mut out, &[b"A bounce message could not be delivered to the sender it was meant for.\n"]);
        push(&mut out, &[b"The recipients of that bounce and the reasons follow; its headers are attached.\n\n"]);
    } else if failed {
        push(&mut out, &[b"Your message could not be delivered to the addresses below, and no further\n"]);
        push(&mut out, &[b"attempts will be made. Its headers are attached for reference.\n\n"]);
    }
    for f in b.failures.iter().filter(|f| f.action == Action::Failed) {
        out.push(b'<');
        ascii(&f.recipient, &mut out);
        out.extend_from_slice(b">:\n");
        text_lines(&f.text, &mut out);
        out.push(b'\n');
    }

    let mut warned = false;
    for f in b.failures.iter().filter(|f| f.action == Action::Delayed) {
        if !warned {
            push(&mut out, &[b"This is only a warning: your message has not been delivered yet to the\n"]);
            push(&mut out, &[b"addresses below, and delivery is still being tried. You need do nothing.\n"]);
            push(&mut out, &[b"You will hear again only if the message fails for good.\n"]);
            push(&mut out, &[b"Its headers are attached for reference.\n\n"]);
            warned = true;
        }
        out.push(b'<');
        ascii(&f.recipient, &mut out);
        out.extend_from_slice(b">:\n");
        text_lines(&f.text, &mut out);
        out.push(b'\n');
    }

    let mut told = false;
    for f in b.failures.iter().filter(|f| matches!(f.action, Action::Delivered | Action::Relayed)) {
        if !told {
            push(&mut out, &[b"You asked to be told when your message was delivered to the addresses below.\n"]);
            push(&mut out, &[b"Delivered means it reached the mailbox; relayed means it went on to a server\n"]);
            push(&mut out, &[b"that will not report its delivery.\n\n"]);
            told = true;
        }
        out.push(b'<');
        ascii(&f.recipient, &mut out);
        push(&mut out, &[b">: ", f.action.word().as_bytes(), b"\n\n"]);
    }

    // The machine-readable part.
    push(&mut out, &[format!("--{boundary}\nContent-Type: message/delivery-status\n\n").as_bytes()]);
    if let Some(envid) = b.envid {
        // Checked at MAIL: its decoded form is printable ASCII.
        let decoded = crate::mail::dsn::xtext_decode(envid).unwrap_or_default();
        push(&mut out, &[b"Original-Envelope-Id: ", &one_line(&decoded), b"\n"]);
    }
    push(&mut out, &[format!("Reporting-MTA: dns; {me}\n").as_bytes()]);
    push(&mut out, &[format!("Arrival-Date: {}\n", crate::base::date::rfc5322(b.arrival)).as_bytes()]);
    for f in b.failures {
        out.push(b'\n');
        if let Some(orcpt) = &f.orcpt {
            push(&mut out, &[b"Original-Recipient: ", &one_line(&crate::mail::dsn::orcpt_display(orcpt)), b"\n"]);
        }
        out.extend_from_slice(b"Final-Recipient: rfc822; ");
        ascii(&f.recipient, &mut out);
        push(&mut out, &[b"\nAction: ", f.action.word().as_bytes(), b"\n"]);
        if f.action == Action::Failed {
            push(
                &mut out,
                &[format!("Status: {}\n", Status::permanent(status_code(&f.text), "").code_text()).as_bytes()],
            );
        } else if f.action == Action::Delayed {
            push(
                &mut out,
                &[format!("Status: {}\n", Status::temporary(temporary_code(&f.text), "").code_text()).as_bytes()],
            );
        } else {
            out.extend_from_slice(b"Status: 2.0.0\n");
        }
        if !f.text.is_empty() {
            push(&mut out, &[b"Diagnostic-Code: x-quill; ", &one_line(&f.text), b"\n"]);
        }
    }
    out.push(b'\n');

    // The original message, or its headers.
    let (kind, original) = match b.original_message {
        Some(message) => ("message/rfc822", message),
        None => ("text/rfc822-headers", b.original_headers),
    };
    push(&mut out, &[format!("--{boundary}\nContent-Type: {kind}\n\n").as_bytes()]);
    out.extend_from_slice(original);
    if !original.is_empty() && !original.ends_with(b"\n") {
        out.push(b'\n');
    }
    push(&mut out, &[format!("\n--{boundary}--\n").as_bytes()]);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        let code = |text: &[u8]| Status::permanent(status_code(text), "").code_text();
        assert_eq!(code(b"Sorry, no mailbox here by that name. (#5.1.1)"), "5.1.1");
        assert_eq!(code(b"deferred (#4.2.2) then refused (#5.7.1)"), "5.7.1");
        assert_eq!(code(b"no code at all"), "5.0.0");
        assert_eq!(code(b"#5.1 #5.x.1 #5.1234.1 #5.1.1234"), "5.0.0");
        assert_eq!(code(b"#5.10.100"), "5.10.100");
        assert_eq!(code(b"trailing #"), "5.0.0");
        assert_eq!(status_code(b"over quota (#5.2.2)"), Enhanced::MAILBOX_FULL);
    }

    #[test]
    fn header_blocks() {
        assert_eq!(header_block(b"A: 1\nB: 2\n\nbody\n"), b"A: 1\nB: 2\n");
        assert_eq!(header_block(b"A: 1\r\n\r\nbody"), b"A: 1\r\n");
        assert_eq!(header_block(b"A: 1\nB: 2"), b"A: 1\nB: 2");
        assert_eq!(header_block(b"\nbody"), b"");
        // bouncemaxbytes cuts at a line end.
        assert_eq!(header_block_within(b"A: 1\nB: 2\n\nbody\n", 7), b"A: 1\n");
        assert_eq!(header_block_within(b"A: 1\nB: 2\n\nbody\n", 3), b"");
    }

    #[test]
    fn report_shape() {
        let failures = vec![
            Failure {
                recipient: b"joe@example.org".to_vec(),
                text: b"Sorry, no mailbox here by that name. (#5.1.1)\n".to_vec(),
                orcpt: None,
                action: Action::Failed,
            },
            Failure {
                recipient: b"ann@example.org".to_vec(),
                text: b"line one\nline two\n".to_vec(),
                orcpt: None,
                action: Action::Failed,
            },
        ];
        let b = Bounce {
            me: b"mx.example.net",
            from: b"MAILER-DAEMON@mx.example.net",
            to: b"sender@example.com",
            double: false,
            id: 1234,
            arrival: 0,
            now: 1_795_615_141,
            failures: &failures,
            original_headers: b"Subject: hello\nFrom: sender@example.com\n",
            original_message: None,
            envid: None,
        };
        let text = String::from_utf8(compose(&b)).unwrap();
        assert!(text.starts_with("From: MAILER-DAEMON@mx.example.net\nTo: sender@example.com\n"));
        assert!(
            text.contains("Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"quill-report-")
        );
        assert!(text.contains("Hi. This is the quill-send program at mx.example.net.\n"));
        assert!(text.contains("<joe@example.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"));
        assert!(text.contains("Reporting-MTA: dns; mx.example.net\nArrival-Date: Thu, 1 Jan 1970 00:00:00 +0000\n"));
        assert!(text.contains("\nFinal-Recipient: rfc822; joe@example.org\nAction: failed\nStatus: 5.1.1\n"));
        assert!(text.contains("Diagnostic-Code: x-quill; Sorry, no mailbox here by that name. (#5.1.1)\n"));
        assert!(text.contains("Status: 5.0.0\nDiagnostic-Code: x-quill; line one line two\n"));
        assert!(text.contains("Content-Type: text/rfc822-headers\n\nSubject: hello\nFrom: sender@example.com\n"));
        let boundary = text.split("boundary=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(text.matches(&format!("--{boundary}\n")).count(), 3);
        assert!(text.ends_with(&format!("--{boundary}--\n")));
        // Headers end at the first empty line, and no header line has 8-bit bytes.
        let (head, _) = text.split_once("\n\n").unwrap();
        assert!(head.contains("MIME-Version: 1.0"));
    }

    #[test]
    fn delay_warning_shape() {
        let failures = vec![Failure {
            recipient: b"slow@example.org".to_vec(),
            text: b"Connection refused (#4.4.1)".to_vec(),
            orcpt: None,
            action: Action::Delayed,
        }];
        let b = Bounce {
            me: b"mx.example.net",
            from: b"MAILER-DAEMON@mx.example.net",
            to: b"sender@example.com",
            double: false,
            id: 7,
            arrival: 0,
            now: 1_795_615_141,
            failures: &failures,
            original_headers: b"Subject: hello\n",
            original_message: None,
            envid: None,
        };
        let text = String::from_utf8(compose(&b)).unwrap();
        assert!(text.contains("Subject: delay warning: not delivered yet, still trying (no action needed)\n"));
        assert!(text.contains("This is only a warning"), "{text}");
        assert!(!text.contains("no further"), "{text}");
        assert!(text.contains(
            "Final-Recipient: rfc822; slow@example.org\nAction: delayed\nStatus: 4.4.1\n\
             Diagnostic-Code: x-quill; Connection refused (#4.4.1)\n"
        ));
        assert_eq!(temporary_code(b"no code"), Enhanced::OTHER);
        assert_eq!(temporary_code(b"full (#5.2.2) then (#4.2.2)"), Enhanced::MAILBOX_FULL);
    }

    #[test]
    fn eight_bit_text_is_made_ascii() {
        let failures = vec![Failure {
            recipient: "jö@x".as_bytes().to_vec(),
            text: "bad \u{e9}\0".as_bytes().to_vec(),
            orcpt: None,
            action: Action::Failed,
        }];
        let b = Bounce {
            me: b"m",
            from: b"f@m",
            to: b"t@m",
            double: true,
            id: 1,
            arrival: 0,
            now: 0,
            failures: &failures,
            original_headers: b"",
            original_message: None,
            envid: None,
        };
        let bytes = compose(&b);
        let marker = b"text/rfc822-headers\n\n";
        let body_end = bytes.windows(marker.len()).position(|w| w == marker).unwrap();
        assert!(bytes[..body_end].iter().all(|&b| b < 0x80));
        assert!(String::from_utf8_lossy(&bytes).contains("undeliverable bounce"));
    }
}
