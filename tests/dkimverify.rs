//! DKIM verification and DMARC, checked against a real signer: messages signed by python3-dkim
//! (dkimpy's `dkim.sign`, rsa-sha256 and ed25519-sha256, with keys made by `quill dkim
//! keygen`) and verified by the real `quill dkim verify`, which asks Quill's own resolver for
//! the key and the DMARC record, served by dnsmasq on loopback (`control/dnsservers`).
//! Tampered copies fail. The cost of verification is measured for doc/PERFORMANCE.md.

mod common;

use common::dnsmasq::Dnsmasq;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const PYTHON: &str = "/usr/bin/python3";

const MESSAGE: &[u8] = b"From: Alice <alice@example.test>\r\nTo: bob@example.net\r\nSubject: a  test\r\n\tfolded\r\nDate: Sun, 6 Dec 2026 03:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\nHello  there \r\n\r\n..dots\r\n\r\n";

/// python3 with the dkim module (Debian's python3-dkim), or a skip.
fn skip_without_dkimpy() -> bool {
    common::skip_unless_can(PYTHON, &["-c", "import dkim\nprint('dkim ok')"], "dkim ok", "import dkim (python3-dkim)")
}

/// `quill dkim keygen` in `home`: the TXT record, and the private key in the form dkimpy
/// takes (PKCS#8 PEM for RSA; the base64 32-byte seed for Ed25519).
fn keygen(home: &Path, selector: &str, kind: &str) -> (String, String) {
    let out = common::run(home, "quill", &["dkim", "keygen", "example.test", selector, kind], b"");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "keygen: {text} {}", String::from_utf8_lossy(&out.stderr));
    let record: String = text.trim().split_once(" IN TXT ").map(|(_, r)| r).unwrap_or("").replace("\" \"", "");
    let record = record.trim_matches('"').to_string();
    let der = std::fs::read(home.join("control/dkim").join(format!("example.test.{selector}"))).expect("key");
    let private = match kind {
        // ring's PKCS#8 v2 for Ed25519: the seed is the OCTET STRING at bytes 16..48.
        "ed25519" => quill::mail::dkim::base64(&der[16..48]),
        _ => {
            let b64 = quill::mail::dkim::base64(&der);
            let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
            format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
        }
    };
    (record, private)
}

/// `message` signed by dkimpy: its DKIM-Signature field and the message, CRLF line ends.
fn dkimpy_sign(message: &[u8], selector: &str, kind: &str, private: &str, canon: &str, length: bool) -> Vec<u8> {
    let (header, body) = canon.split_once('/').expect("canon");
    let algorithm = if kind == "rsa" { "rsa-sha256" } else { "ed25519-sha256" };
    let script = format!(
        "import sys, dkim\nmsg = sys.stdin.buffer.read()\nsig = dkim.sign(msg, b'{selector}', b'example.test', {private:?}.encode(), canonicalize=(b'{header}', b'{body}'), signature_algorithm=b'{algorithm}', include_headers=[b'from', b'to', b'subject', b'date', b'message-id', b'from'], length={})\nsys.stdout.buffer.write(sig + msg)\n",
        if length { "True" } else { "False" }
    );
    let mut child = Command::new(PYTHON)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().expect("stdin").write_all(message).expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "dkim.sign: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.starts_with(b"DKIM-Signature:"), "{}", String::from_utf8_lossy(&out.stdout));
    out.stdout
}

/// dnsmasq serving `records` (name, text) as TXT, a home whose control/dnsservers names it.
fn dns_and_home(tag: &str, records: &[(String, String)]) -> Option<(Dnsmasq, common::TempDir)> {
    let options: Vec<String> = records
        .iter()
        .map(|(name, text)| {
            // A TXT string holds at most 255 bytes: dnsmasq takes comma-separated pieces.
            let pieces: Vec<String> =
                text.as_bytes().chunks(250).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
            format!("--txt-record={name},{}", pieces.join(","))
        })
        .collect();
    let dns = Dnsmasq::start(&options)?;
    let home = common::home(tag, &[("dnsservers", &dns.servers())]);
    Some((dns, home))
}

/// `quill dkim verify` on `message`: its exit code and the result lines.
fn quill_verify(home: &Path, message: &[u8]) -> (i32, String) {
    let file = home.join("message");
    std::fs::write(&file, message).expect("write the message");
    let out = common::run(
        home,
        "quill",
        &["dkim", "verify", "--home", home.to_str().expect("path"), file.to_str().expect("path")],
        b"",
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.stderr.is_empty(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), said)
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes.windows(from.len()).position(|w| w == from).expect("text to tamper with");
    [&bytes[..at], to, &bytes[at + from.len()..]].concat()
}

fn dkimpy_signed_quill_verifies(kind: &str, canon: &str) {
    if skip_without_dkimpy() || (kind == "rsa" && common::skip_without("openssl")) {
        return;
    }
    // The key is made first, in a home of its own, to know the record dnsmasq is to serve.
    let keys = common::home("dkimv-keys", &[]);
    let (record, private) = keygen(keys.path(), "s1", kind);
    let records = [
        ("s1._domainkey.example.test".to_string(), record),
        ("_dmarc.example.test".to_string(), "v=DMARC1; p=reject; rua=mailto:dmarc@example.test".to_string()),
    ];
    let Some((_dns, home)) = dns_and_home("dkimv", &records) else { return };
    let signed = dkimpy_sign(MESSAGE, "s1", kind, &private, canon, false);
    let (code, said) = quill_verify(home.path(), &signed);
    assert!(said.starts_with("dkim=pass header.d=example.test header.s=s1 header.i=@example.test header.b="), "{said}");
    assert!(said.contains("\ndmarc=pass (p=reject dis=none) header.from=example.test\n"), "{said}");
    assert_eq!(code, 0, "{said}");
    // LF line ends (as in the queue) verify alike.
    let lf: Vec<u8> = signed.iter().copied().filter(|&b| b != b'\r').collect();
    assert!(quill_verify(home.path(), &lf).1.starts_with("dkim=pass"));
    // A changed body, a changed signed header, an added From: each fails, and DMARC with it.
    for (from, to, reason) in [
        (b"Hello".as_slice(), b"Jello".as_slice(), "body hash did not verify"),
        (b"a  test", b"a best", "signature did not verify"),
        (b"From: Alice", b"From: Mallory <m@example.test>\r\nFrom: Alice", "signature did not verify"),
    ] {
        let (code, said) = quill_verify(home.path(), &replace(&signed, from, to));
        assert!(said.starts_with(&format!("dkim=fail reason=\"{reason}\" header.d=example.test")), "{said}");
        assert_eq!(code, 1);
        if from == b"Hello" {
            assert!(said.contains("\ndmarc=fail (p=reject dis=reject) header.from=example.test\n"), "{said}");
        }
    }
}

#[test]
fn dkimpy_ed25519_relaxed() {
    dkimpy_signed_quill_verifies("ed25519", "relaxed/relaxed");
}

#[test]
fn dkimpy_ed25519_simple() {
    dkimpy_signed_quill_verifies("ed25519", "simple/simple");
}

#[test]
fn dkimpy_rsa_relaxed() {
    dkimpy_signed_quill_verifies("rsa", "relaxed/relaxed");
}

#[test]
fn dkimpy_rsa_simple() {
    dkimpy_signed_quill_verifies("rsa", "simple/simple");
}

/// dkimpy's `l=`: text appended after signing still passes (and the reason says how much was
/// signed); a key record that is revoked, or missing, is a permerror; no DMARC record is none;
/// a subdomain's From finds the organizational record and its sp=.
#[test]
fn body_length_revoked_keys_and_dmarc_fallback() {
    if skip_without_dkimpy() {
        return;
    }
    let keys = common::home("dkimv-keys", &[]);
    let (record, private) = keygen(keys.path(), "s1", "ed25519");
    let records = [
        ("s1._domainkey.example.test".to_string(), record),
        ("gone._domainkey.example.test".to_string(), "v=DKIM1; k=ed25519; p=".to_string()),
        ("_dmarc.example.test".to_string(), "v=DMARC1; p=reject; sp=quarantine".to_string()),
    ];
    let Some((_dns, home)) = dns_and_home("dkimv-more", &records) else { return };
    let signed = dkimpy_sign(MESSAGE, "s1", "ed25519", &private, "relaxed/relaxed", true);
    let longer = [signed.as_slice(), b"-- \r\nAppended by a list\r\n"].concat();
    let (code, said) = quill_verify(home.path(), &longer);
    assert!(said.starts_with("dkim=pass reason=\"l= covers"), "{said}");
    assert_eq!(code, 0);
    let revoked = dkimpy_sign(MESSAGE, "gone", "ed25519", &private, "relaxed/relaxed", false);
    let said = quill_verify(home.path(), &revoked).1;
    assert!(said.starts_with("dkim=permerror reason=\"key revoked\" header.d=example.test header.s=gone"), "{said}");
    let missing = dkimpy_sign(MESSAGE, "nokey", "ed25519", &private, "relaxed/relaxed", false);
    assert!(quill_verify(home.path(), &missing).1.starts_with("dkim=permerror reason=\"no key\""));
    // Unsigned, from a subdomain: the organizational record's sp= applies.
    let sub = replace(MESSAGE, b"alice@example.test", b"alice@news.example.test");
    let (code, said) = quill_verify(home.path(), &sub);
    assert_eq!(said, "dkim=none\ndmarc=fail (p=quarantine dis=quarantine) header.from=news.example.test\n");
    assert_eq!(code, 1);
    let other = replace(MESSAGE, b"alice@example.test", b"alice@other.test");
    let said = quill_verify(home.path(), &other).1;
    assert!(said.ends_with("dmarc=none reason=\"no DMARC record\" header.from=other.test\n"), "{said}");
}

/// The verification cost per message of each algorithm, in process, printed for
/// doc/PERFORMANCE.md (measured, never asserted): the 2.2 kB message of tests/dkim.rs's
/// signing figure, relaxed/relaxed, the key from a table (no DNS in the figure).
#[test]
fn verification_cost_per_message() {
    use quill::mail::dkim::{Canon, Key, DEFAULT_HEADERS};
    use quill::mail::dkimverify::{Outcome, TxtTable, Verifier};
    let mut message = MESSAGE.to_vec();
    message.extend(
        std::iter::repeat_n(b"The quick brown fox jumps over the lazy dog again.\r\n".as_slice(), 40).flatten(),
    );
    let rsa = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dkim/rsa2048.pk8")).expect("key");
    let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
    for (kind, der) in [("rsa-2048", rsa.as_slice()), ("ed25519", ed.as_ref())] {
        let key = Key::from_bytes("example.test", "s1", der).expect("key");
        let signed = [
            key.sign(&message, (Canon::Relaxed, Canon::Relaxed), DEFAULT_HEADERS, 0).expect("signed"),
            message.clone(),
        ]
        .concat();
        let split = quill::mail::header::split(&signed);
        let mut table = TxtTable(vec![("s1._domainkey.example.test".to_string(), key.dns_record().into_bytes())]);
        let rounds = 300;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            let mut verifier = Verifier::new(&signed[..split.body_start], 0);
            for chunk in signed[split.body_start..].chunks(1024) {
                verifier.feed(chunk);
            }
            let verdicts = verifier.finish(&mut table);
            assert_eq!(verdicts[0].outcome, Outcome::Pass);
        }
        let each = start.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
        eprintln!("dkim verify {kind}: {each:.3} ms per message ({} bytes)", signed.len());
    }
}
