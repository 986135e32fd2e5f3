//! `quill dkim keygen DOMAIN SELECTOR [rsa|ed25519]` (doc/quill.8): make a DKIM signing key in
//! `control/dkim/DOMAIN.SELECTOR` (PKCS#8 DER, mode 0400, owned by `quillq` when run as root:
//! quill-queue and quill-queued sign as that uid) and print the TXT record to publish.
//!
//! `quill dkim verify [FILE]`: check a message's DKIM signatures and its DMARC policy with
//! the installation's resolver, printing the Authentication-Results method results.
//!
//! Ed25519 keys come from ring; ring cannot generate RSA keys, so RSA 2048 keys come from
//! `openssl genpkey`.
#![forbid(unsafe_code)]

use crate::mail::dkim::Key;
use crate::mail::dkimverify::{self, ResolverLookup, Verifier};
use crate::mail::{dmarc, dns::Resolver};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Make the key; returns the DNS record's name and text, or why not.
pub fn keygen(home: &Path, domain: &str, selector: &str, kind: &str) -> Result<(String, String), String> {
    let domain = domain.to_ascii_lowercase();
    let name_ok = |s: &str, dots: bool| {
        !s.is_empty()
            && s.len() <= 253
            && !s.starts_with(['.', '-'])
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (dots && b == b'.'))
    };
    if !name_ok(&domain, true) || !domain.contains('.') {
        return Err(format!("{domain:?} is not a domain name"));
    }
    if !name_ok(selector, false) {
        return Err(format!("{selector:?} is not a selector (letters, digits, - and _, no dots)"));
    }
    let der = match kind {
        "ed25519" => ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| "unable to generate an Ed25519 key".to_string())?
            .as_ref()
            .to_vec(),
        "rsa" => openssl_rsa()?,
        other => return Err(format!("unknown key type {other:?}: rsa or ed25519")),
    };
    let key = Key::from_bytes(&domain, selector, &der).map_err(|e| format!("unable to use the new key: {e}"))?;
    let dir = home.join("control").join("dkim");
    std::fs::create_dir_all(&dir).map_err(|e| format!("unable to create {}: {e}", dir.display()))?;
    let path = dir.join(format!("{domain}.{selector}"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&path)
        .map_err(|e| format!("unable to create {}: {e}", path.display()))?;
    file.write_all(&der)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("unable to write {}: {e}", path.display()))?;
    if nix::unistd::geteuid().is_root() {
        let owner = nix::unistd::User::from_name("quillq")
            .ok()
            .flatten()
            .ok_or_else(|| format!("no user quillq to own {}", path.display()))?;
        nix::unistd::chown(&path, Some(owner.uid), Some(owner.gid))
            .map_err(|e| format!("unable to give {} to quillq: {e}", path.display()))?;
    }
    Ok((format!("{selector}._domainkey.{domain}"), key.dns_record()))
}

/// A new RSA 2048 key as PKCS#8 DER, from `openssl genpkey` (its progress dots on stderr).
fn openssl_rsa() -> Result<Vec<u8>, String> {
    let output = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("unable to run openssl (needed for RSA keys; ed25519 needs nothing): {e}"))?;
    if !output.status.success() || output.stdout.is_empty() {
        return Err("openssl genpkey failed".to_string());
    }
    // PEM: openssl writes PKCS#8 there ("PRIVATE KEY"), while its DER may be PKCS#1.
    crate::mail::dkim::pem_to_der(&output.stdout).map_err(|e| format!("openssl's key: {e}"))
}

/// Verify `message` as quill-smtpd would, with the resolver of `home` (`control/dnsservers`,
/// else /etc/resolv.conf): the header block first, then the body in pieces. Returns the
/// Authentication-Results method results (one `dkim=` per signature, or `dkim=none`, then
/// `dmarc=` with no SPF result) and whether a signature passed.
pub fn verify(home: &Path, message: &[u8], now: u64) -> Result<(Vec<String>, bool), String> {
    let control = crate::mail::control::Control::new(home);
    let resolver = Resolver::from_control(&control).map_err(|e| format!("unable to set up DNS: {e}"))?;
    let split = crate::mail::header::split(message);
    let mut verifier = Verifier::new(&message[..split.body_start], now);
    for chunk in message[split.body_start..].chunks(4096) {
        verifier.feed(chunk);
    }
    let mut dns = ResolverLookup::new(&resolver);
    let verdicts = verifier.finish(&mut dns);
    let mut lines = dkimverify::authres_all(&verdicts);
    let passed: Vec<&str> = verdicts.iter().filter_map(dkimverify::Verdict::dmarc_domain).collect();
    lines.push(dmarc::evaluate_header(&message[..split.header_end], None, &passed, &mut dns, &[]).authres());
    Ok((lines, verdicts.iter().any(|v| v.outcome == dkimverify::Outcome::Pass)))
}
