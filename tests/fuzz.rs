//! Fuzzing: every parser that takes bytes from outside (a client, a server, a DNS answer, a
//! file someone else can write) gets a target here, driven by a small mutation fuzzer that
//! runs on stable Rust and adds no dependency (doc/DEPENDENCIES.md says why).
//!
//! - `fuzz_replay` (in `make test`): every seed file in `tests/fuzz/corpus/TARGET/` through
//!   its target, then a few thousand mutations from a fixed seed. Seconds, and the same
//!   inputs every run.
//! - `fuzz_soak` (ignored; `make soak`): each target for `QUILL_FUZZ_SECONDS` (60) from a
//!   seed taken from the clock or `QUILL_FUZZ_SEED`; `QUILL_FUZZ_TARGETS=a,b` picks targets.
//!
//! A target fails on a panic (caught, so the input is kept), on a broken invariant (the
//! targets check round trips and that feeding bytes piece by piece changes nothing), and on
//! one input taking longer than the hang limit (a watchdog sees it, since the parser itself may
//! never return). The failing input is written to `target/tmp/fuzz-crashes/`; to reproduce,
//! copy it into the target's corpus directory (named for the bug) and run
//! `cargo test --test fuzz fuzz_replay`.
//!
//! Without coverage instrumentation, novelty is measured by the outcome: each target returns
//! features of what the parser made of the input (error kinds, record counts, bucketed
//! lengths, each paired with the one before). An input that shows a feature not seen before
//! joins the pool that later mutations start from; the pool is bounded (a newcomer then
//! replaces a random member), and a small random sample of other inputs joins it too.
#![forbid(unsafe_code)]

mod common;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quill::mail::smtp::PathKind;

/// One parser (or a family of parsers fed the same bytes).
struct Target {
    name: &'static str,
    /// Tokens the mutator inserts: the parser's keywords and delimiters.
    dictionary: &'static [&'static [u8]],
    /// Run one input; panics on a broken invariant. Returns what the parser made of it.
    run: fn(&[u8]) -> Print,
    /// Mutations in `make test`'s replay (fewer where each input starts a process).
    replay: u64,
}

const TARGETS: &[Target] = &[
    Target { name: "smtp_command", dictionary: SMTP_WORDS, run: smtp_command, replay: 3000 },
    Target { name: "smtp_data", dictionary: DATA_WORDS, run: smtp_data, replay: 3000 },
    Target { name: "address", dictionary: ADDRESS_WORDS, run: address, replay: 3000 },
    Target { name: "header", dictionary: HEADER_WORDS, run: header, replay: 3000 },
    Target { name: "dkim", dictionary: HEADER_WORDS, run: dkim, replay: 3000 },
    Target { name: "dkim_signature", dictionary: DKIM_WORDS, run: dkim_signature, replay: 3000 },
    Target { name: "dkim_key", dictionary: DKIM_WORDS, run: dkim_key, replay: 3000 },
    Target { name: "dmarc", dictionary: DMARC_WORDS, run: dmarc, replay: 3000 },
    Target { name: "dns", dictionary: DNS_WORDS, run: dns, replay: 3000 },
    Target { name: "spf", dictionary: SPF_WORDS, run: spf, replay: 3000 },
    Target { name: "authres", dictionary: AUTHRES_WORDS, run: authres, replay: 3000 },
    Target { name: "smtp_reply", dictionary: REPLY_WORDS, run: smtp_reply, replay: 3000 },
    Target { name: "envelope", dictionary: QUEUE_WORDS, run: envelope, replay: 3000 },
    Target { name: "queuefile", dictionary: QUEUE_WORDS, run: queuefile, replay: 3000 },
    Target { name: "dotqmail", dictionary: DOT_WORDS, run: dotqmail, replay: 3000 },
    Target { name: "aliases", dictionary: ALIAS_WORDS, run: aliases, replay: 3000 },
    Target { name: "tcprules", dictionary: RULE_WORDS, run: tcprules, replay: 3000 },
    Target { name: "control", dictionary: CONTROL_WORDS, run: control, replay: 1000 },
    Target { name: "spawnproto", dictionary: SPAWN_WORDS, run: spawnproto, replay: 3000 },
    Target { name: "clean", dictionary: CLEAN_WORDS, run: clean, replay: 3000 },
    Target { name: "admin_fifo", dictionary: ADMIN_WORDS, run: admin_fifo, replay: 3000 },
    Target { name: "views", dictionary: VIEW_WORDS, run: views, replay: 3000 },
    Target { name: "smtpd_session", dictionary: SMTP_WORDS, run: smtpd_session, replay: 300 },
];

const SMTP_WORDS: &[&[u8]] = &[
    b"MAIL FROM:<",
    b"RCPT TO:<",
    b"EHLO ",
    b"HELO ",
    b"AUTH PLAIN ",
    b"AUTH LOGIN",
    b"DATA",
    b"BDAT",
    b"STARTTLS",
    b"RSET",
    b"QUIT",
    b"\r\n",
    b"<>",
    b"<",
    b">",
    b"@",
    b"\"",
    b"\\",
    b"[",
    b"]",
    b"IPv6:",
    b"::1",
    b"127.0.0.1",
    b"@a,@b:",
    b" SIZE=",
    b" BODY=8BITMIME",
    b" SMTPUTF8",
    b"=",
    b"postmaster",
    b"\xc3\xa9",
    b"\xff",
];
const DATA_WORDS: &[&[u8]] =
    &[b"\r\n.\r\n", b"\r\n", b"\n", b"\r", b".", b"..", b"Received: ", b"Delivered-To: ", b"\r\n\r\n"];
const ADDRESS_WORDS: &[&[u8]] =
    &[b"@", b"\"", b"\\", b".", b"[", b"]", b"IPv6:", b"<", b">", b" ", b"\r", b"\n", b"\0", b"-"];
const HEADER_WORDS: &[&[u8]] = &[
    b"To: ",
    b"From: ",
    b"Cc: ",
    b"Received: ",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"\n ",
    b"\n\t",
    b"<",
    b">",
    b"(",
    b")",
    b"\"",
    b"\\",
    b",",
    b";",
    b":",
    b"@",
    b"group:",
];
const DKIM_WORDS: &[&[u8]] = &[
    b";",
    b"=",
    b":",
    b" ",
    b"\r\n\t",
    b"v=1",
    b"a=rsa-sha256",
    b"a=ed25519-sha256",
    b"c=relaxed/simple",
    b"d=example.com",
    b"s=s1",
    b"h=from:to",
    b"i=@",
    b"l=",
    b"t=",
    b"x=",
    b"bh=",
    b"b=",
    b"v=DKIM1",
    b"k=ed25519",
    b"t=y:s",
    b"p=",
    b"MIIBIjAN",
    b"\x30\x82",
    b"\x02\x01",
    b"\x03\x82",
    b"99999999999999999999",
];
const DMARC_WORDS: &[&[u8]] = &[
    b";",
    b"=",
    b" ",
    b"v=DMARC1",
    b"p=reject",
    b"p=quarantine",
    b"sp=none",
    b"adkim=s",
    b"aspf=r",
    b"pct=",
    b"rua=mailto:",
    b"From: ",
    b"<",
    b">",
    b"@",
    b",",
    b"\n",
    b".co.uk",
];
const SPF_WORDS: &[&[u8]] = &[
    b"v=spf1 ",
    b" ",
    b"include:",
    b"redirect=",
    b"exp=",
    b"a",
    b"mx",
    b"ptr",
    b"exists:",
    b"ip4:192.0.2.0",
    b"ip6:2001:db8::",
    b"/24",
    b"//64",
    b"-all",
    b"~",
    b"?",
    b"%{",
    b"}",
    b"%{d}",
    b"%{p}",
    b"%{ir}",
    b"%{l1r-}",
    b"%%",
    b"%_",
    b"%-",
    b".example.com",
    b"\n",
];
const AUTHRES_WORDS: &[&[u8]] = &[
    b"Authentication-Results:",
    b" mx.example.org",
    b"MX.EXAMPLE.ORG.",
    b";",
    b"\n",
    b"\n\t",
    b"\n\n",
    b"(",
    b")",
    b"\"",
    b"\\",
    b"spf=pass",
];
const DNS_WORDS: &[&[u8]] = &[
    b"\xc0\x0c",
    b"\xc0",
    b"\x00\x0f",
    b"\x00\x01",
    b"\x00\x05",
    b"\x00\x1c",
    b"\x00\x29",
    b"\x00",
    b"\x3f",
    b"\x81\x80",
];
const REPLY_WORDS: &[&[u8]] = &[
    b"250-",
    b"250 ",
    b"220 ",
    b"421 ",
    b"554 ",
    b"\r\n",
    b"STARTTLS",
    b"SIZE ",
    b"8BITMIME",
    b"SMTPUTF8",
    b"PIPELINING",
    b"AUTH ",
    b"\0",
    b"h",
    b"s",
    b"r",
    b"K",
    b"Z",
    b"D",
];
const QUEUE_WORDS: &[&[u8]] =
    &[b"\0", b"F", b"T", b"u0\0", b"p1\0", b"t2\0", b"\0\0", b"@", b"\n", b"99999999999999999999"];
const DOT_WORDS: &[&[u8]] = &[
    b"\n",
    b"|",
    b"/",
    b"./",
    b"&",
    b"#",
    b":include:",
    b"${DEFAULT}",
    b"${EXT}",
    b"${LOCAL}",
    b"${",
    b"}",
    b"\"",
    b",",
    b"\\",
    b"-",
    b"..",
    b"\0",
];
const ALIAS_WORDS: &[&[u8]] =
    &[b":", b",", b"\"", b"|", b"/", b":include:", b"\n", b"\n ", b"\n\t", b"#", b"\\", b"@", b"postmaster"];
const RULE_WORDS: &[&[u8]] = &[
    b":allow",
    b":deny",
    b",",
    b"=",
    b"\"",
    b"RELAYCLIENT",
    b"\n",
    b"#",
    b".",
    b"/",
    b"-",
    b"::",
    b"127.",
    b"0.0.0.0/0",
    b"[",
    b"]",
    b"255",
];
const CONTROL_WORDS: &[&[u8]] = &[
    b"\n",
    b"#",
    b":",
    b".",
    b"[",
    b"]",
    b"IPv6:",
    b"nameserver ",
    b"options timeout:",
    b" attempts:",
    b"18446744073709551616",
    b"-1",
    b"=",
    b"+",
    b"!",
    b"\0",
    b"127.0.0.1",
    b"::1",
];
const SPAWN_WORDS: &[&[u8]] = &[b"\0", b"\0\0", b"F", b"T", b"K", b"Z", b"D", b"4294967296", b"0"];
const CLEAN_WORDS: &[&[u8]] = &[b"move ", b"remove ", b"hold ", b"release ", b"delete ", b"\n", b"/", b".", b"0"];
const ADMIN_WORDS: &[&[u8]] = &[
    b"flush",
    b"reread",
    b"requeue",
    b"hold ",
    b"release ",
    b"delete ",
    b"bounce ",
    b"R ",
    b"F",
    b"\0",
    b"\n",
    b" ",
    b"0",
];
const VIEW_WORDS: &[&[u8]] =
    &[b" ", b"\n", b"0", b"4294967296", b"18446744073709551616", b"msg ", b" to ", b": deferral: ", b"remote", b"+"];

// ---------------------------------------------------------------------------------------------
// The targets.

/// What the parser made of an input, not the input itself: a list of features (error kinds,
/// record counts, bucketed lengths), each hashed with the one before it, so that the order of
/// events counts too (as branch pairs do for coverage-guided fuzzers).
#[derive(Default)]
struct Print {
    features: Vec<u64>,
    last: u64,
}

impl Print {
    fn new() -> Print {
        Print::default()
    }
    fn add(&mut self, fact: impl Hash) -> &mut Print {
        let mut hasher = DefaultHasher::new();
        fact.hash(&mut hasher);
        let this = hasher.finish();
        self.features.push(this ^ self.last.rotate_left(17));
        self.last = this;
        self
    }
    /// A small value without Hash (an error kind, an outcome), by its Debug form.
    fn kind(&mut self, fact: impl std::fmt::Debug) -> &mut Print {
        self.add(format!("{fact:?}"))
    }
    /// A length, bucketed by its binary order so that every length is not a new outcome.
    fn len(&mut self, n: usize) -> &mut Print {
        self.add(usize::BITS - n.leading_zeros())
    }
    fn done(&mut self) -> Print {
        std::mem::take(self)
    }
}

/// Lines of the input: split at LF, a CR before it removed.
fn lines(input: &[u8]) -> impl Iterator<Item = &[u8]> {
    input.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// Cut points derived from the input itself, so that a run is reproducible from the input.
fn cuts(input: &[u8]) -> Vec<usize> {
    let mut hasher = DefaultHasher::new();
    input.hash(&mut hasher);
    let mut rng = Rng(hasher.finish());
    let mut points: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(input.len() + 1)).collect();
    points.sort_unstable();
    points.push(input.len());
    points
}

/// quill-smtpd's command parser: the verb, the MAIL/RCPT path and parameters, AUTH's base64.
fn smtp_command(input: &[u8]) -> Print {
    use quill::mail::smtp;
    let mut print = Print::new();
    for line in lines(input).take(64) {
        let (verb, arg) = smtp::parse_command(line);
        print.kind(verb);
        for (keyword, kind) in [(&b"FROM:"[..], PathKind::Reverse), (&b"TO:"[..], PathKind::Forward)] {
            let Some(path) = smtp::strip_keyword(arg, keyword) else { continue };
            match smtp::parse_path(path, kind) {
                Err(e) => {
                    print.kind(e);
                }
                Ok((mailbox, rest)) => {
                    print.add("path").len(mailbox.local.len()).len(mailbox.domain.len()).add(mailbox.is_ascii());
                    print.kind(smtp::parse_params(rest).map(|p| p.len()));
                    assert!(
                        !mailbox.local.iter().any(|&b| b < 0x20 || b == 0x7f),
                        "a parsed local part holds a control character"
                    );
                    // The client writes what the server parsed: the two must agree.
                    if !mailbox.domain.is_empty() {
                        let written = smtp::format_path(&mailbox.local, &mailbox.domain);
                        let again = smtp::parse_path(&written, kind);
                        assert!(
                            matches!(&again, Ok((m, rest)) if *m == mailbox && rest.is_empty()),
                            "format_path does not round-trip: {:?} -> {:?} -> {:?}",
                            mailbox,
                            String::from_utf8_lossy(&written),
                            again
                        );
                    }
                }
            }
        }
        if let Some(decoded) = smtp::base64_decode(arg) {
            print.add("base64").len(decoded.len());
            assert_eq!(smtp::base64_decode(&smtp::base64_encode(&decoded)), Some(decoded), "base64 round trip");
        }
        let shown = smtp::header_safe(arg, 200);
        assert!(!shown.bytes().any(|b| b == b'\r' || b == b'\n'), "header_safe lets a line end through");
    }
    print.done()
}

/// DATA: the end-of-data state machine and the hop counter, whole and in pieces.
fn smtp_data(input: &[u8]) -> Print {
    use quill::smtpd::data::{DataParser, HopCounter};
    let whole = {
        let mut parser = DataParser::default();
        let mut out = Vec::new();
        let (used, end) = parser.feed(input, &mut out);
        (used, end, out, parser.bare_line_end)
    };
    let (used, end, ref out, bare) = whole;
    assert!(used <= input.len());
    if end {
        assert!(input[..used].ends_with(b".\r\n"), "data ended without <CRLF>.<CRLF>");
    } else {
        assert_eq!(used, input.len(), "without the end, all input is consumed");
    }
    if !bare {
        assert!(!out.contains(&b'\r'), "a CR reached the message without a bare line end being noted");
    }
    // Piece by piece, as reads arrive: the same result.
    let mut parser = DataParser::default();
    let mut pieced = Vec::new();
    let (mut consumed, mut ended, mut start) = (0, false, 0);
    for cut in cuts(input) {
        if ended {
            break;
        }
        let (n, e) = parser.feed(&input[start..cut.max(start)], &mut pieced);
        consumed += n;
        ended = e;
        start = cut.max(start);
    }
    assert_eq!(
        (consumed, ended, &pieced, parser.bare_line_end),
        (used, end, out, bare),
        "DataParser gives another result when fed in pieces"
    );
    let mut hops = HopCounter::default();
    hops.feed(out);
    let mut pieced_hops = HopCounter::default();
    let mut start = 0;
    for cut in cuts(out) {
        pieced_hops.feed(&out[start..cut]);
        start = cut;
    }
    assert_eq!(hops.hops, pieced_hops.hops, "HopCounter gives another count when fed in pieces");
    Print::new().add(end).add(bare).len(out.len()).add(hops.hops.min(8)).done()
}

/// Envelope addresses: splitting, domains, the client's path writer against the server's
/// parser.
fn address(input: &[u8]) -> Print {
    use quill::mail::{address, smtp};
    let mut print = Print::new();
    for line in input.split(|&b| b == b'\n').take(64) {
        let (local, domain) = address::split(line);
        assert_eq!(local.len() + domain.len() + usize::from(local.len() + domain.len() < line.len()), line.len());
        let normal = address::normal_domain(domain);
        print.len(local.len()).len(normal.len()).add(address::is_clean(line));
        print.add(address::domain_listed(domain, &[b"example.com".to_vec(), b".example.org".to_vec()]));
        // The client's writer against the server's parser. Only for domains the server
        // accepts: a domain is not quoted, so one with `>` or a space in it is a path the
        // client must refuse before writing (audit item 5), not something to round-trip.
        let mut probe = b"<x@".to_vec();
        probe.extend_from_slice(domain);
        probe.push(b'>');
        let domain_ok = !domain.is_empty()
            && matches!(smtp::parse_path(&probe, PathKind::Forward), Ok((_, rest)) if rest.is_empty());
        let written = smtp::format_path(local, domain);
        match smtp::parse_path(&written, PathKind::Forward) {
            Ok((mailbox, rest)) => {
                print.add("parsed");
                if domain_ok {
                    assert!(rest.is_empty(), "format_path left text after the path");
                    assert_eq!(mailbox.local, local, "format_path then parse_path changes the local part");
                }
            }
            Err(e) => {
                print.kind(e);
            }
        }
        print.add(quill::remote::route::parse_literal(domain).is_some());
    }
    print.done()
}

/// Message headers: the split (whole and piece by piece), fields, address lists, quoting.
fn header(input: &[u8]) -> Print {
    use quill::mail::header;
    let split = header::split(input);
    assert!(split.header_end <= split.body_start && split.body_start <= input.len());
    let mut scanner = header::Scanner::new();
    let mut pieced = None;
    for cut in cuts(input) {
        let eof = cut == input.len();
        if let Some(found) = scanner.scan(&input[..cut], eof) {
            pieced = Some(found);
            break;
        }
    }
    assert_eq!(pieced, Some(split), "header::Scanner gives another split when fed in pieces");
    let block = &input[..split.header_end];
    let fields = header::fields(block);
    let mut print = Print::new();
    print.len(fields.len()).add(split.header_end == split.body_start);
    for field in fields.iter().take(32) {
        let list = header::addresses(field.value);
        print.len(list.len());
        let mut quoted = Vec::new();
        header::push_quoted(&mut quoted, field.value);
        print.add(header::is_field_line(field.value));
    }
    print.add(header::find(&fields, "received").is_some());
    print.len(header::addresses(input).len());
    print.done()
}

/// The DKIM signer's header parser and canonicalizations (mail::dkim): whatever the bytes, no
/// panic; every field parsed lies inside the input and has a name; relaxed canonical forms
/// hold no tab, no CR or LF but the final CRLF, and no space before it; LF and CRLF line ends
/// canonicalize alike.
fn dkim(input: &[u8]) -> Print {
    use quill::mail::dkim::{canon_body, canon_header, from_domain, parse, Canon};
    let mut print = Print::new();
    let parsed = parse(input);
    print.add(parsed.is_some()).add(from_domain(input).is_some());
    if let Some((fields, body)) = parsed {
        print.len(fields.len());
        for field in fields.iter().take(32) {
            assert!(!field.name.is_empty() && field.raw.len() <= input.len());
            let relaxed = canon_header(Canon::Relaxed, field);
            let line = &relaxed[..relaxed.len() - 2];
            assert!(!line.contains(&b'\t') && !line.contains(&b'\n') && !line.contains(&b'\r'), "{relaxed:?}");
            assert!(!line.ends_with(b" "), "{relaxed:?}");
            print.len(canon_header(Canon::Simple, field).len());
        }
        let relaxed = canon_body(Canon::Relaxed, body);
        assert!(relaxed.is_empty() || relaxed.ends_with(b"\r\n"));
        assert!(canon_body(Canon::Simple, body).ends_with(b"\r\n"));
        if !body.contains(&b'\r') {
            let crlf: Vec<u8> =
                body.iter().flat_map(|&b| if b == b'\n' { vec![b'\r', b'\n'] } else { vec![b] }).collect();
            assert_eq!(canon_body(Canon::Relaxed, &crlf), relaxed, "CRLF and LF bodies differ");
        }
        print.len(relaxed.len());
    }
    print.done()
}

/// DKIM-Signature tag lists (mail::dkimverify): the input as a DKIM-Signature over a small
/// message. Whatever the bytes, no panic; a signature that parses has a domain and signs
/// From; at most MAX_SIGNATURES verdicts; the verdicts are the same whether the body comes
/// whole or in pieces; an Authentication-Results text is one line of printable ASCII.
fn dkim_signature(input: &[u8]) -> Print {
    use quill::mail::dkimverify::{self, parse_signature, parse_tags, TxtTable, Verifier};
    let mut print = Print::new();
    print.kind(parse_tags(input).map(|t| t.len()).map_err(|_| ()));
    match parse_signature(input) {
        Ok(signature) => {
            assert!(!signature.domain.is_empty() && signature.headers.iter().any(|h| h == "from"));
            assert!(signature.b_prefix.len() <= 8);
            print.add("ok").kind(signature.algorithm).kind(signature.canon).len(signature.headers.len());
        }
        Err(refused) => {
            print.kind(refused.0).add(reason_kind(&refused.1));
        }
    }
    let message = [b"DKIM-Signature:".as_slice(), input, b"\r\nFrom: a@example.com\r\n\r\nbody \r\n\r\n"].concat();
    let split = quill::mail::header::split(&message);
    let table = || TxtTable(vec![("s1._domainkey.example.com".to_string(), b"v=DKIM1; k=ed25519; p=".to_vec())]);
    let whole = dkimverify::verify_message(&message, 0, &mut table());
    let mut verifier = Verifier::new(&message[..split.body_start], 0);
    let body = &message[split.body_start..];
    let mut from = 0;
    for cut in cuts(body) {
        verifier.feed(&body[from..cut]);
        from = cut;
    }
    assert_eq!(verifier.finish(&mut table()), whole, "pieces and whole differ");
    assert!(whole.len() <= dkimverify::MAX_SIGNATURES);
    for verdict in &whole {
        let text = verdict.authres();
        assert!(text.bytes().all(|b| (b' '..=b'~').contains(&b)), "{text:?}");
        print.kind(verdict.outcome).add(reason_kind(&verdict.reason));
    }
    print.done()
}

/// The kind of a reason, without the input bytes some reasons quote (so that each quoted
/// name is not a new feature).
fn reason_kind(reason: &str) -> &str {
    &reason[..reason.char_indices().nth(12).map_or(reason.len(), |(i, _)| i)]
}

/// DKIM key records (mail::dkimverify::parse_key) and the DER reader under RSA keys: no panic;
/// an RSA key's modulus is no longer than the bytes it came in.
fn dkim_key(input: &[u8]) -> Print {
    use quill::mail::dkimverify::{parse_key, rsa_public_key};
    let mut print = Print::new();
    match parse_key(input) {
        Ok(key) => {
            print.add("ok").kind(key.key_type).add(key.testing).add(key.strict).len(key.public.len());
            if let Some((pkcs1, bits)) = rsa_public_key(&key.public) {
                assert!(bits <= key.public.len() * 8 && pkcs1.len() <= key.public.len());
                print.len(bits);
            }
        }
        Err(why) => {
            print.add(reason_kind(&why));
        }
    }
    if let Some((pkcs1, bits)) = rsa_public_key(input) {
        assert!(bits <= input.len() * 8 && pkcs1.len() <= input.len());
        print.add("der").len(bits);
    }
    print.done()
}

/// DMARC (mail::dmarc): the input as a policy record, as a header block for the From
/// domain, and as a domain name. No panic; a record's pct is at most 100; the organizational
/// domain ends the domain; an Authentication-Results text is one line of printable ASCII.
fn dmarc(input: &[u8]) -> Print {
    use quill::mail::dkimverify::TxtTable;
    use quill::mail::dmarc::{evaluate_with_roll, from_domain, organizational_domain, parse_record};
    let mut print = Print::new();
    match parse_record(input) {
        Ok(record) => {
            assert!(record.pct <= 100);
            print.add("ok").kind(record.policy).kind(record.subdomain_policy).kind(record.adkim).add(record.pct);
        }
        Err(why) => {
            print.add(why.as_deref().map(reason_kind));
        }
    }
    print.kind(from_domain(input).map(|_| ()));
    let domain = String::from_utf8_lossy(&input[..input.len().min(300)]).to_ascii_lowercase();
    let domain = domain.trim_end_matches('.');
    let organization = organizational_domain(domain, &[]);
    assert!(domain.ends_with(&organization), "{domain:?} {organization:?}");
    let mut table = TxtTable(vec![("_dmarc.example.com".to_string(), input.to_vec())]);
    for from in ["example.com", "sub.example.com"] {
        let verdict =
            evaluate_with_roll(from, Some(("pass", "example.org")), &["mail.example.com"], &mut table, &[], 50);
        let text = verdict.authres();
        assert!(text.bytes().all(|b| (b' '..=b'~').contains(&b)), "{text:?}");
        print.kind(verdict.outcome).kind(verdict.disposition);
    }
    print.done()
}

/// SPF records (mail::spf): parsed, then evaluated with every name answering the input itself
/// as its TXT record (so include and redirect recurse into it) and fixed addresses, MX and
/// PTR names. The evaluation must end with a result, within a bounded number of lookups.
fn spf(input: &[u8]) -> Print {
    use quill::mail::spf::{check_host, parse_record, DnsFailure, SpfDns};
    use std::net::IpAddr;
    struct Echo<'a> {
        record: &'a [u8],
        asked: usize,
    }
    impl SpfDns for Echo<'_> {
        fn txt(&mut self, name: &[u8]) -> Result<Vec<Vec<u8>>, DnsFailure> {
            self.asked += 1;
            match name.first() {
                Some(b'n') => Err(DnsFailure::NxDomain),
                Some(b't') => Err(DnsFailure::Temporary),
                _ => Ok(vec![self.record.to_vec()]),
            }
        }
        fn addresses(&mut self, name: &[u8], v6: bool) -> Result<Vec<IpAddr>, DnsFailure> {
            self.asked += 1;
            match (name.first(), v6) {
                (Some(b'n'), _) => Err(DnsFailure::NxDomain),
                (_, false) => Ok(vec![IpAddr::from([192, 0, 2, 1])]),
                (_, true) => Ok(vec![IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1])]),
            }
        }
        fn mx(&mut self, name: &[u8]) -> Result<Vec<Vec<u8>>, DnsFailure> {
            self.asked += 1;
            Ok((0..name.len() % 12).map(|i| format!("mx{i}.example.com").into_bytes()).collect())
        }
        fn ptr(&mut self, _ip: IpAddr) -> Result<Vec<Vec<u8>>, DnsFailure> {
            self.asked += 1;
            Ok((0..12).map(|i| format!("host{i}.example.com").into_bytes()).collect())
        }
    }
    let mut print = Print::new();
    match parse_record(input) {
        Ok(record) => {
            print.len(record.mechanisms.len()).add(record.redirect.is_some()).add(record.exp.is_some());
            for (result, mechanism) in record.mechanisms.iter().take(16) {
                print.kind(result).add(std::mem::discriminant(mechanism));
            }
        }
        Err(e) => {
            print.add(e.split(' ').next().unwrap_or("").to_string());
        }
    }
    for ip in [IpAddr::from([192, 0, 2, 1]), IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2])] {
        let mut dns = Echo { record: input, asked: 0 };
        let outcome = check_host(&mut dns, ip, b"example.com", b"user@example.com", b"helo.example.com", b"mx.test");
        // 10 terms, each at most one record lookup and 10 address lookups, one PTR pass of
        // 11 lookups, an explanation: far below this.
        assert!(dns.asked <= 200, "{} lookups", dns.asked);
        if let Some(text) = &outcome.explanation {
            assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)), "{text:?}");
        }
        print.kind(outcome.result).len(dns.asked);
    }
    print.done()
}

/// Authentication-Results: the authserv-id test and the streaming filter that removes forged
/// fields; a split anywhere must give the same output as the whole.
fn authres(input: &[u8]) -> Print {
    use quill::mail::authres::{claims_our_id, ForgeryFilter};
    let mut print = Print::new();
    print.add(claims_our_id(input, b"mx.example.org"));
    let mut whole = Vec::new();
    let mut filter = ForgeryFilter::new(b"mx.example.org");
    filter.feed(input, &mut whole);
    filter.finish(&mut whole);
    assert!(whole.len() <= input.len());
    let removed = filter.removed;
    for cut in cuts(input).into_iter().take(4) {
        let mut pieces = Vec::new();
        let mut filter = ForgeryFilter::new(b"mx.example.org");
        filter.feed(&input[..cut], &mut pieces);
        filter.feed(&input[cut..], &mut pieces);
        filter.finish(&mut pieces);
        assert_eq!(pieces, whole, "cut at {cut}");
    }
    print.len(removed).len(whole.len());
    print.done()
}

/// DNS answers as quill-remote's resolver decodes them; a decoded message must encode and
/// decode to itself.
fn dns(input: &[u8]) -> Print {
    use quill::mail::dns;
    match dns::decode(input) {
        Err(e) => Print::new().add(format!("{e:?}")).done(),
        Ok(message) => {
            let mut print = Print::new();
            print.add(message.is_response()).add(message.truncated()).add(message.opcode()).add(message.rcode());
            print.len(message.questions.len()).len(message.answers.len()).len(message.authority.len());
            for record in message.answers.iter().chain(&message.authority).take(16) {
                print.add(std::mem::discriminant(&record.data));
            }
            // Decoding normalises (lower case, odd label bytes as `\DDD`, which the encoder
            // reads back); from the first encoding on, the message must be stable.
            if let Ok(bytes) = dns::encode_message(&message) {
                let again = dns::decode(&bytes);
                let Ok(again) = again else { panic!("an encoded DNS message does not decode: {again:?}") };
                assert_eq!(dns::encode_message(&again).as_ref(), Ok(&bytes), "a DNS message does not round-trip");
            }
            print.done()
        }
    }
}

/// What the SMTP client reads: reply lines, EHLO keywords, and quill-remote's report that
/// quill-rspawn folds.
fn smtp_reply(input: &[u8]) -> Print {
    let mut print = Print::new();
    let mut reply = Vec::new();
    for line in input.split_inclusive(|&b| b == b'\n').take(256) {
        match quill::mail::smtp::parse_reply_line(line) {
            None => {
                print.add("garbage");
            }
            Some((code, more, text)) => {
                assert!((200..600).contains(&code));
                print.add(code / 100).add(more);
                reply.push(text.to_vec());
            }
        }
    }
    let extensions = quill::remote::smtpclient::Extensions::parse(&reply);
    print.add(extensions.size.min(1)).add(extensions.has_size);
    let count = input.first().map_or(1, |&b| usize::from(b % 8) + 1);
    let folded = quill::mail::proto::remote_report::fold(input, count);
    assert_eq!(folded.len(), count, "fold gives one result per recipient");
    for result in &folded {
        print.kind(result.outcome);
    }
    print.done()
}

/// quill-queue's envelope on fd 1 (from any local user, through the setuid program).
fn envelope(input: &[u8]) -> Print {
    use quill::mail::envelope::Envelope;
    let decoded = Envelope::decode(input);
    let read = Envelope::read_from(&mut &input[..]);
    assert_eq!(
        decoded.as_ref().map_err(ToString::to_string),
        read.as_ref().map_err(ToString::to_string),
        "decode and read_from disagree"
    );
    match decoded {
        Err(e) => Print::new().add(e.to_string()).done(),
        Ok(envelope) => {
            assert_eq!(Envelope::decode(&envelope.encode()).ok().as_ref(), Some(&envelope), "envelope round trip");
            Print::new().len(envelope.sender.len()).len(envelope.recipients.len()).done()
        }
    }
}

/// Queue files (the header of mess/ID, info files) and queue ids.
fn queuefile(input: &[u8]) -> Print {
    use quill::mail::proto::info::Info;
    use quill::mail::queuefile::{valid_id, Header};
    let mut print = Print::new();
    match Header::decode(input) {
        Err(_) => {
            print.add("bad header");
        }
        Ok((header, length)) => {
            assert!(length <= input.len(), "header length past the input");
            let bytes = header.encode();
            assert_eq!(Header::decode(&bytes).ok(), Some((header.clone(), bytes.len())), "header round trip");
            print.len(header.envelope.recipients.len());
        }
    }
    match Info::decode(input) {
        None => {
            print.add("bad info");
        }
        Some(info) => {
            assert_eq!(Info::decode(&info.encode()), Some(info.clone()), "info round trip");
            print.len(info.entries.len());
        }
    }
    for line in lines(input).take(16) {
        print.add(valid_id(line));
    }
    print.done()
}

/// Dot files (.qmail, .forward and :include: lists) and the names made from extensions.
fn dotqmail(input: &[u8]) -> Print {
    use quill::mail::dotqmail;
    let mut print = Print::new();
    let file = dotqmail::parse_dotqmail(input);
    print.add(format!("{file:?}").len().min(64));
    for line in lines(input).take(64) {
        if let Some(instruction) = dotqmail::parse_line(line) {
            print.add(std::mem::discriminant(&instruction));
        }
    }
    match dotqmail::parse_sendmail(input) {
        Ok(items) => print.len(items.len()),
        Err(e) => print.add(format!("{e:?}")),
    };
    // An extension comes from an envelope address, at most 1003 bytes (quill-queue's limit):
    // candidates() makes one name per dash, so an unbounded one would only measure the fuzzer.
    let first = input.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let first = &first[..first.len().min(quill::mail::address::MAX_ADDRESS)];
    let safe = dotqmail::safe_ext(first);
    print.add(safe);
    if safe {
        for (name, _) in dotqmail::candidates(b"-", first) {
            assert!(!name.contains(&b'/'), "a dot file name with a slash");
        }
    }
    let values = dotqmail::Values { default: Some(first), ext: first, local: b"user" };
    match dotqmail::substitute(input, &values) {
        Ok((path, replaced)) => {
            print.add(replaced);
            // A value never starts with a dot nor holds a slash: it cannot make a `..`.
            let parents = |p: &[u8]| p.split(|&b| b == b'/').filter(|c| *c == b"..").count();
            assert!(parents(&path) <= parents(input), "substitute made a .. component");
        }
        Err(e) => {
            print.add(e.name);
        }
    }
    print.done()
}

/// The aliases file.
fn aliases(input: &[u8]) -> Print {
    use quill::mail::aliases::{split_rhs, Aliases};
    let mut print = Print::new();
    match Aliases::parse(input) {
        Err(e) => {
            print.add(e.to_string().len().min(8));
        }
        Ok(list) => {
            print.len(list.len()).len(list.warnings().len());
            for name in [&b"postmaster"[..], b"root", b"mailer-daemon", b"a"] {
                if let Some(rhs) = list.get(name) {
                    print.add(split_rhs(rhs).map(|items| items.len()).map_err(|e| e.len()));
                }
            }
        }
    }
    for line in lines(input).take(32) {
        print.add(split_rhs(line).is_ok());
    }
    print.done()
}

/// tcprules source files (quill-tcpserver's access rules).
fn tcprules(input: &[u8]) -> Print {
    use quill::tcpserver::tcprules::Rules;
    match Rules::parse(input) {
        Err(e) => Print::new().add(e.line.min(8)).done(),
        Ok(rules) => {
            let mut print = Print::new();
            print.len(rules.len());
            for ip in ["127.0.0.1", "10.1.2.3", "192.0.2.255", "::1", "2001:db8::1", "::ffff:127.0.0.1"] {
                let ip: IpAddr = ip.parse().expect("test address");
                print.kind(rules.lookup(ip).map(|rule| rule.verdict));
            }
            print.done()
        }
    }
}

/// Control files: the loaders of quill-smtpd and quill-send, smtproutes, dnsservers, dnsbl, and
/// users/assign compiled and read back as quill-lspawn reads it.
fn control(input: &[u8]) -> Print {
    thread_local! {
        static HOME: common::TempDir = common::TempDir::new("fuzz-control");
    }
    const NAMES: &[&str] = &[
        "me",
        "rcpthosts",
        "databytes",
        "maxrcpt",
        "timeoutsmtpd",
        "virtualdomains",
        "locals",
        "concurrencylocal",
        "backoffmin",
        "queuelifetime",
        "bouncefrom",
        "smtproutes",
        "dnsservers",
        "dnsbl",
        "recipientdelimiter",
        "greetdelay",
        "senderlogins",
    ];
    let mut print = Print::new();
    let (name, text) = match input.split_first() {
        Some((&b, rest)) => (NAMES[usize::from(b) % NAMES.len()], rest),
        None => ("me", input),
    };
    HOME.with(|home| {
        let dir = home.path().join("control");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create control dir");
        std::fs::write(dir.join("me"), b"fuzz.example\n").expect("write me");
        std::fs::write(dir.join(name), text).expect("write control file");
        let control = quill::mail::control::Control::new(home.path());
        print.add(name);
        print.add(
            quill::smtpd::session::Config::load(&control, Vec::new(), false).map(|c| c.rcpthosts.len().min(4)).is_ok(),
        );
        print.add(quill::send::sendconf::Config::load(&control).map(|c| c.rewriting.locals.len().min(4)).is_ok());
        print.add(quill::mail::dns::Resolver::from_control(&control).map(|r| r.servers.len()).ok());
        print.add(quill::mail::users::Delimiters::load(home.path()).is_ok());
        print.add(quill::mail::senderlogins::SenderLogins::load(&control).map(|m| m.is_some()).ok());
        for line in control.lines("smtproutes").unwrap_or_default().iter().take(32) {
            print.add(quill::remote::route::parse_route(line).is_some());
            print.add(quill::admin::check::smtproute_line(line).is_ok());
        }
        for line in control.lines("virtualdomains").unwrap_or_default().iter().take(32) {
            print.add(quill::admin::check::virtualdomain_line(line).is_ok());
        }
    });
    print.add(quill::mail::dns::Resolver::parse(input).servers.len());
    print.add(quill::mail::dnsbl::parse(input).map(|z| z.len().min(8)).map_err(|e| e.message.len().min(64)));
    match quill::mail::users::compile_assign(input) {
        Err(_) => {
            print.add("bad assign");
        }
        Ok(db) => {
            let db = quill::mail::users::AssignDb::parse(db).expect("compile_assign makes a database AssignDb accepts");
            print.len(db.len());
            for local in [&b"root"[..], b"alice", b"alice-ext", b""] {
                print.add(db.lookup(local).is_some());
            }
        }
    }
    print.add(quill::mail::users::AssignDb::parse(input.to_vec()).is_ok());
    print.done()
}

/// The spawn protocol between quill-send and its spawners: frames, requests, reports.
fn spawnproto(input: &[u8]) -> Print {
    use quill::mail::proto::spawn::{Reader, Report, Request};
    let mut print = Print::new();
    let mut whole = Reader::default();
    whole.push(input);
    let mut frames = Vec::new();
    while let Some(frame) = whole.next_frame() {
        frames.push(frame);
        if frames.len() > input.len() {
            panic!("more frames than bytes");
        }
    }
    let mut pieced = Reader::default();
    let mut pieced_frames = Vec::new();
    let mut start = 0;
    for cut in cuts(input) {
        pieced.push(&input[start..cut]);
        start = cut;
        while let Some(frame) = pieced.next_frame() {
            pieced_frames.push(frame);
        }
    }
    assert_eq!(frames, pieced_frames, "spawnproto::Reader gives other frames when fed in pieces");
    // Small reads, as from a busy pipe: the scan resumes where it stopped.
    let mut small = Reader::default();
    let mut small_frames = Vec::new();
    for piece in input.chunks(61) {
        small.push(piece);
        while let Some(frame) = small.next_frame() {
            small_frames.push(frame);
        }
    }
    assert_eq!(frames, small_frames, "spawnproto::Reader gives other frames when fed in small reads");
    print.len(frames.len()).add(whole.overflowed());
    for fields in frames.iter().take(16) {
        if let Some(request) = Request::decode(fields) {
            let mut reader = Reader::default();
            reader.push(&request.encode());
            let again = reader.next_frame().and_then(|f| Request::decode(&f));
            assert_eq!(again.as_ref(), Some(&request), "request round trip");
            print.add("request").len(request.recipients.len());
        }
        if let Some(report) = Report::decode(fields) {
            print.add("report").len(report.results.len());
            let mut reader = Reader::default();
            reader.push(&report.encode());
            let again = reader.next_frame().and_then(|f| Report::decode(&f));
            assert_eq!(again.map(|r| r.results.len()), Some(report.results.len()), "report round trip");
        }
    }
    print.done()
}

/// quill-clean's request lines, and the replies it gives (mail::proto::clean, both ways).
fn clean(input: &[u8]) -> Print {
    use quill::mail::proto::clean::{Reply, Request};
    let mut print = Print::new();
    for line in input.split(|&b| b == b'\n').take(64) {
        let reply = match Request::decode(line) {
            Ok(request) => {
                print.add(request.verb);
                assert_eq!(request.encode(), [line, b"\n"].concat(), "request round trip");
                Reply { id: request.id, result: Ok(()) }
            }
            Err(refused) => {
                assert!(refused.id.bytes().all(|b| b.is_ascii_graphic() || b == b'-'), "an unsafe byte echoed");
                print.add(refused.reason());
                refused
            }
        };
        let encoded = reply.encode();
        assert_eq!(Reply::decode(&encoded[..encoded.len() - 1]).as_ref(), Some(&reply), "reply round trip");
        print.add(Reply::decode(line).is_some());
    }
    print.done()
}

/// The administrator's FIFOs to quill-send (mail::proto::control): the trigger's bytes, and
/// the control FIFO's lines, both ways.
fn admin_fifo(input: &[u8]) -> Print {
    use quill::mail::proto::control::{decode_trigger, flush_text_ok, Request, Trigger};
    let mut print = Print::new();
    let (flush, matching) = decode_trigger(input);
    print.add(flush).add(matching.len().min(4));
    for text in matching {
        assert!(flush_text_ok(&text), "a flush text the writer would refuse");
        let again = Trigger::FlushMatching(text.clone()).encode().unwrap_or_default();
        assert_eq!(decode_trigger(&again), (false, vec![text]), "trigger round trip");
    }
    for line in input.split(|&b| b == b'\n').take(64) {
        let request = Request::decode(line);
        print.add(request.map(|r| (r.verb, r.id.is_some())));
        if let Some(request) = request {
            let encoded = request.encode();
            assert_eq!(Request::decode(&encoded.as_bytes()[..encoded.len() - 1]), Some(request), "request round trip");
        }
    }
    print.done()
}

/// quill-send's views in `queue/info/` (mail::proto::views), as `quill status` and `quill
/// queue why` read them: each line through each file's decoder; what decodes encodes to a line
/// that decodes to the same record.
fn views(input: &[u8]) -> Print {
    use quill::mail::proto::views::{decode_all, ChannelLoad, Destination, InFlight, LastError, Record};
    fn again<R: Record + PartialEq + std::fmt::Debug>(line: &str, print: &mut Print) {
        let Some(record) = R::decode(line) else {
            print.add((R::FILE, false));
            return;
        };
        print.add((R::FILE, true));
        let encoded = record.encode();
        let line = encoded.strip_suffix('\n').expect("a line ends in a newline");
        assert!(!line.contains('\n'), "{} wrote two lines", R::FILE);
        let decoded = R::decode(line).expect("a written line decodes");
        // A domain is written through log::safe: the same record once its bytes are printable.
        assert_eq!(R::decode(&decoded.encode()[..encoded.len() - 1]), Some(decoded), "{} round trip", R::FILE);
    }
    let mut print = Print::new();
    let text = String::from_utf8_lossy(input);
    for line in text.split('\n').take(64) {
        again::<Destination>(line, &mut print);
        again::<ChannelLoad>(line, &mut print);
        again::<InFlight>(line, &mut print);
        again::<LastError>(line, &mut print);
    }
    print.add(decode_all::<Destination>(&text).len().min(4)).add(decode_all::<InFlight>(&text).len().min(4));
    print.done()
}

/// A whole session through the real quill-smtpd, its input on stdin as tcpserver gives it: the
/// line reader, the state machine, DATA, BDAT and AUTH together (the parsers above are its
/// parts; the session loop itself is private to smtpd.rs). A process per input: slow.
fn smtpd_session(input: &[u8]) -> Print {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    thread_local! {
        static HOME: common::TempDir = {
            let home = common::home(
                "fuzz-smtpd",
                &[("me", "mx.example.com\n"), ("rcpthosts", "example.com\n"), ("databytes", "100000\n")],
            );
            // A stand-in for quill-queue that reads the message (fd 0) and the envelope (fd 1).
            let queue = home.path().join("fakeqq");
            common::write_script(&queue, "#!/bin/sh\ncat >/dev/null\ncat <&1 >/dev/null\nexit 0\n");
            home
        };
    }
    HOME.with(|home| {
        let mut child = Command::new(common::bin("quill-smtpd"))
            .env("QUILL_HOME", home.path())
            .env("PROTO", "TCP")
            .env("TCPREMOTEIP", "127.0.0.1")
            .env("TCPLOCALIP", "127.0.0.1")
            .env("QMAILQUEUE", home.path().join("fakeqq"))
            .env_remove("RELAYCLIENT")
            .env_remove("DATABYTES")
            .env_remove("SMTPS")
            .env_remove("AUTH_REQUIRED")
            .env_remove("AUTH_INSECURE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start quill-smtpd");
        let mut stdin = child.stdin.take().expect("stdin");
        let data = input.to_vec();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().expect("wait for quill-smtpd");
        let _ = writer.join();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.signal().is_none() && out.status.code() != Some(101) && !stderr.contains("panicked"),
            "quill-smtpd crashed: {:?}: {stderr}",
            out.status
        );
        let mut print = Print::new();
        print.add(out.status.code());
        for line in out.stdout.split_inclusive(|&b| b == b'\n').take(64) {
            print.add(quill::mail::smtp::parse_reply_line(line).map(|(code, more, _)| (code, more)));
        }
        print.done()
    })
}

// ---------------------------------------------------------------------------------------------
// The fuzzer.

/// splitmix64: small, fast, and the same sequence from the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (0 when n is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that parsers treat specially.
const INTERESTING: &[u8] = b"\0\r\n \t.@<>\"\\:;,=[]()-/|#&\x7f\x80\xc3\xff0019azAZ";

/// The largest input the mutator makes: big enough for quadratic behaviour to show as a hang.
const MAX_LEN: usize = 1 << 16;

/// Change `data` by one to eight stacked mutations.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, pool: &[Vec<u8>], dictionary: &[&[u8]]) {
    for _ in 0..1 + rng.below(8) {
        let len = data.len();
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                data.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                data.drain(i..i + n);
            }
            4 | 5 if !dictionary.is_empty() => {
                let word = dictionary[rng.below(dictionary.len())];
                let i = rng.below(len + 1);
                data.splice(i..i, word.iter().copied());
            }
            6 if !pool.is_empty() => {
                // Splice: a piece of another input.
                let other = &pool[rng.below(pool.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let n = 1 + rng.below((other.len() - from).min(64));
                    let i = rng.below(len + 1);
                    data.splice(i..i, other[from..from + n].iter().copied());
                }
            }
            7 if len > 0 => {
                // Repeat a piece many times: long lines, deep nesting, many records.
                let from = rng.below(len);
                let n = 1 + rng.below((len - from).min(8));
                let piece = data[from..from + n].to_vec();
                let most = if rng.below(16) == 0 { 4096 } else { 16 };
                let times = 1 + rng.below(most);
                let i = rng.below(len + 1);
                data.splice(i..i, piece.iter().copied().cycle().take(n * times));
            }
            8 if len > 0 => data.truncate(rng.below(len)),
            9 if len > 1 => {
                let i = rng.below(len);
                let j = rng.below(len);
                data.swap(i, j);
            }
            10 if len > 0 => {
                // A number in text: lengths and counts are where overflows hide.
                let numbers: [&[u8]; 6] = [b"0", b"-1", b"255", b"65536", b"4294967295", b"18446744073709551615"];
                let word = numbers[rng.below(numbers.len())];
                let i = rng.below(len + 1);
                data.splice(i..i, word.iter().copied());
            }
            _ => {
                let i = rng.below(len + 1);
                data.insert(i, rng.next() as u8);
            }
        }
    }
    data.truncate(MAX_LEN);
}

/// How long a campaign runs.
#[derive(Clone, Copy)]
enum Budget {
    Executions(u64),
    Time(Duration),
}

/// What a campaign found.
struct Figures {
    executions: u64,
    pool: usize,
    /// Distinct outcome features seen.
    features: usize,
    /// The longest any one input took.
    slowest: Duration,
    failure: Option<String>,
}

/// What the worker shares with the watchdog.
struct Shared {
    /// The input being run now.
    current: Mutex<Vec<u8>>,
    /// Milliseconds since the campaign began at which the current input started; u64::MAX
    /// between inputs.
    started: AtomicU64,
    executions: AtomicU64,
    stop: AtomicBool,
}

/// Where failing inputs go.
fn crash_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes")
}

fn save_failure(target: &str, kind: &str, input: &[u8]) -> PathBuf {
    let mut hasher = DefaultHasher::new();
    input.hash(&mut hasher);
    let dir = crash_dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{kind}-{:016x}", hasher.finish()));
    let _ = std::fs::write(&path, input);
    path
}

/// The text of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// Run `target` on every seed, then on mutations until the budget is spent or something fails.
fn campaign(target: &'static Target, seeds: Vec<Vec<u8>>, seed: u64, budget: Budget, hang: Duration) -> Figures {
    let shared = Arc::new(Shared {
        current: Mutex::new(Vec::new()),
        started: AtomicU64::new(u64::MAX),
        executions: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let begin = Instant::now();
    let worker_shared = Arc::clone(&shared);
    let worker = std::thread::Builder::new()
        .name(format!("fuzz-{}", target.name))
        .spawn(move || {
            let shared = worker_shared;
            let mut rng = Rng(seed);
            let mut pool: Vec<Vec<u8>> = seeds.clone();
            if pool.is_empty() {
                pool.push(Vec::new());
            }
            let mut features: HashSet<u64> = HashSet::new();
            let mut slowest = Duration::ZERO;
            let pool_limit = pool.len() + 1024;
            let mut executions: u64 = 0;
            let mut pending = seeds.into_iter();
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let from_seed = pending.next();
                let is_seed = from_seed.is_some();
                if !is_seed {
                    let spent = match budget {
                        Budget::Executions(n) => executions >= n,
                        Budget::Time(limit) => begin.elapsed() >= limit,
                    };
                    if spent {
                        break;
                    }
                }
                let input = from_seed.unwrap_or_else(|| {
                    let mut data = pool[rng.below(pool.len())].clone();
                    mutate(&mut rng, &mut data, &pool, target.dictionary);
                    data
                });
                if let Ok(mut current) = shared.current.lock() {
                    current.clone_from(&input);
                }
                shared.started.store(begin.elapsed().as_millis() as u64, Ordering::SeqCst);
                let clock = Instant::now();
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
                slowest = slowest.max(clock.elapsed());
                shared.started.store(u64::MAX, Ordering::SeqCst);
                executions += 1;
                shared.executions.store(executions, Ordering::Relaxed);
                match result {
                    Err(payload) => {
                        let path = save_failure(target.name, "crash", &input);
                        return (
                            executions,
                            pool.len(),
                            features.len(),
                            slowest,
                            Some(format!(
                                "crash: {} (input saved in {})",
                                panic_text(payload.as_ref()),
                                path.display()
                            )),
                        );
                    }
                    Ok(print) => {
                        let mut novel = false;
                        for feature in print.features {
                            novel |= features.insert(feature);
                        }
                        if !is_seed && (novel || rng.below(4096) == 0) {
                            if pool.len() < pool_limit {
                                pool.push(input);
                            } else {
                                let i = rng.below(pool.len());
                                pool[i] = input;
                            }
                        }
                    }
                }
            }
            (executions, pool.len(), features.len(), slowest, None)
        })
        .expect("start the fuzz worker");
    // The watchdog: a parser that never returns cannot report itself.
    loop {
        if worker.is_finished() {
            let (executions, pool, features, slowest, failure) = match worker.join() {
                Ok(result) => result,
                Err(payload) => {
                    (0, 0, 0, Duration::ZERO, Some(format!("worker died: {}", panic_text(payload.as_ref()))))
                }
            };
            return Figures { executions, pool, features, slowest, failure };
        }
        let started = shared.started.load(Ordering::SeqCst);
        let now = begin.elapsed().as_millis() as u64;
        if started != u64::MAX && now.saturating_sub(started) > hang.as_millis() as u64 {
            shared.stop.store(true, Ordering::SeqCst);
            let input = shared.current.lock().map(|c| c.clone()).unwrap_or_default();
            let path = save_failure(target.name, "hang", &input);
            // The worker is left running: nothing can stop a thread from outside. The test
            // fails, and the process ends with it.
            return Figures {
                executions: shared.executions.load(Ordering::Relaxed),
                pool: 0,
                features: 0,
                slowest: hang,
                failure: Some(format!(
                    "hang: one input ran over {} ms (input saved in {})",
                    hang.as_millis(),
                    path.display()
                )),
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus").join(target)
}

/// The seed files of a target, sorted by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = common::files(&corpus_dir(target))
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            Some((name, std::fs::read(&p).ok()?))
        })
        .collect();
    files.sort();
    files
}

/// A seed from the target's name, so that each target's replay differs but never changes.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Every target has a corpus, and every corpus file belongs to a target.
#[test]
fn fuzz_corpus_is_complete() {
    for target in TARGETS {
        assert!(!corpus(target.name).is_empty(), "tests/fuzz/corpus/{} has no seed files", target.name);
    }
    for dir in common::files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus")) {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        assert!(TARGETS.iter().any(|t| t.name == name), "tests/fuzz/corpus/{name} is no target");
    }
}

/// The quick run of `make test`: each corpus file, then a fixed set of mutations per target.
#[test]
fn fuzz_replay() {
    let scale = env_number("QUILL_FUZZ_REPLAY_PERCENT").unwrap_or(100);
    let mut failures = Vec::new();
    for target in TARGETS {
        let seeds: Vec<Vec<u8>> = corpus(target.name).into_iter().map(|(_, bytes)| bytes).collect();
        // A generous bound: a debug build on a busy machine; the soak uses a tighter one.
        let clock = Instant::now();
        let figures = campaign(
            target,
            seeds,
            name_seed(target.name),
            Budget::Executions(target.replay * scale / 100),
            Duration::from_secs(10),
        );
        eprintln!(
            "fuzz replay {}: {} executions in {} ms, slowest input {} ms",
            target.name,
            figures.executions,
            clock.elapsed().as_millis(),
            figures.slowest.as_millis()
        );
        if let Some(failure) = figures.failure {
            failures.push(format!("{}: {failure}", target.name));
        }
    }
    assert!(failures.is_empty(), "fuzz targets failed:\n{}", failures.join("\n"));
}

/// The long run of `make soak`: each target for QUILL_FUZZ_SECONDS from a fresh seed.
#[test]
#[ignore]
fn fuzz_soak() {
    let seconds = env_number("QUILL_FUZZ_SECONDS").unwrap_or(60);
    let hang = Duration::from_millis(env_number("QUILL_FUZZ_HANG_MS").unwrap_or(2000));
    let seed = env_number("QUILL_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let only = std::env::var("QUILL_FUZZ_TARGETS").ok();
    let mut report = format!("fuzz soak: seed {seed}, {seconds} s per target, hang limit {} ms\n", hang.as_millis());
    let mut failures = Vec::new();
    for target in TARGETS {
        if only.as_deref().is_some_and(|list| !list.split(',').any(|n| n.trim() == target.name)) {
            continue;
        }
        let seeds: Vec<Vec<u8>> = corpus(target.name).into_iter().map(|(_, bytes)| bytes).collect();
        let figures =
            campaign(target, seeds, seed ^ name_seed(target.name), Budget::Time(Duration::from_secs(seconds)), hang);
        let line = format!(
            "fuzz {}: {} executions, {} features, pool {}, slowest input {} ms, {}\n",
            target.name,
            figures.executions,
            figures.features,
            figures.pool,
            figures.slowest.as_millis(),
            figures.failure.as_deref().unwrap_or("0 crashes, 0 hangs")
        );
        eprint!("{line}");
        report.push_str(&line);
        if let Some(failure) = figures.failure {
            failures.push(format!("{}: {failure}", target.name));
        }
    }
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-soak.txt"), &report);
    println!("{report}");
    assert!(failures.is_empty(), "fuzz targets failed (seed {seed}):\n{}", failures.join("\n"));
}
