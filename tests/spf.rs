//! SPF (src/mail/spf.rs) against the RFC 7208 test suite, against python3-spf on the same
//! answers served by dnsmasq, and inside quill-smtpd: the Authentication-Results header, the
//! removal of forged ones, the reject-fail policy.
//!
//! The suite is `tests/data/spf/rfc7208-tests.yml` (the openspf.org suite, release 2014.04, as
//! shipped in pyspf 2.0.14; BSD licence in rfc7208-tests.LICENSE beside it). python3-yaml turns
//! it into lines (tests/data/spf/suite-lines.py), which this file reads.

mod common;

use quill::mail::spf::{self, DnsFailure, SpfDns, SpfResult};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

/// The suite's zone data, with the semantics of pyspf's test driver (testspf.py): a name
/// missing from the table is NXDOMAIN (a name under `error.` times out), `TIMEOUT` times
/// every query out, `TYPE: TIMEOUT` times out queries of that type, SPF records stand in for
/// TXT records where a name has none, a CNAME is followed once.
#[derive(Default, Clone)]
struct Zone {
    records: HashMap<Vec<u8>, Vec<(String, String)>>,
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

impl Zone {
    /// Records of `rtype` at `name`, their values as the converter wrote them.
    fn lookup(&self, name: &[u8], rtype: &str, depth: usize) -> Result<Vec<String>, DnsFailure> {
        let name = name.to_ascii_lowercase();
        let name = name.strip_suffix(b".").unwrap_or(&name).to_vec();
        let Some(entries) = self.records.get(&name) else {
            return Err(if name.starts_with(b"error.") { DnsFailure::Temporary } else { DnsFailure::NxDomain });
        };
        let mut found = Vec::new();
        let has_txt = entries.iter().any(|(t, _)| t == "TXT");
        for (t, value) in entries {
            let wanted = t == rtype || (rtype == "TXT" && t == "SPF" && !has_txt);
            if t == "TIMEOUT" && found.is_empty() {
                return Err(DnsFailure::Temporary);
            }
            // "TXT: NONE" only says that SPF records are not to stand in for TXT ones.
            if value == "4e4f4e45" {
                continue;
            }
            if wanted && value == "TIMEOUT" {
                return Err(DnsFailure::Temporary);
            }
            if wanted {
                found.push(value.clone());
            }
            if t == "CNAME" && depth == 0 && rtype != "CNAME" {
                found.extend(self.lookup(&unhex(value), rtype, 1)?);
            }
        }
        Ok(found)
    }
}

impl SpfDns for Zone {
    fn txt(&mut self, name: &[u8]) -> Result<Vec<Vec<u8>>, DnsFailure> {
        Ok(self.lookup(name, "TXT", 0)?.iter().map(|v| v.split(',').flat_map(unhex).collect()).collect())
    }
    fn addresses(&mut self, name: &[u8], v6: bool) -> Result<Vec<IpAddr>, DnsFailure> {
        let found = self.lookup(name, if v6 { "AAAA" } else { "A" }, 0)?;
        Ok(found.iter().filter_map(|v| String::from_utf8_lossy(&unhex(v)).parse().ok()).collect())
    }
    fn mx(&mut self, name: &[u8]) -> Result<Vec<Vec<u8>>, DnsFailure> {
        let found = self.lookup(name, "MX", 0)?;
        Ok(found.iter().map(|v| unhex(v.split_once(',').map_or("", |(_, h)| h))).collect())
    }
    fn ptr(&mut self, ip: IpAddr) -> Result<Vec<Vec<u8>>, DnsFailure> {
        let name = match ip {
            IpAddr::V4(four) => {
                let o = four.octets();
                format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
            }
            IpAddr::V6(six) => {
                let hex: String = six.octets().iter().map(|b| format!("{b:02x}")).collect();
                let mut nibbles: Vec<String> = hex.chars().map(String::from).collect();
                nibbles.reverse();
                format!("{}.ip6.arpa", nibbles.join("."))
            }
        };
        Ok(self.lookup(name.as_bytes(), "PTR", 0)?.iter().map(|v| unhex(v)).collect())
    }
}

/// One test of the suite.
struct Case {
    id: String,
    ip: IpAddr,
    mail_from: Vec<u8>,
    helo: Vec<u8>,
    results: Vec<String>,
    explanation: Option<String>,
    zone: usize,
}

/// The suite as zones and cases; None (after a SKIP line) without python3-yaml.
fn suite() -> Option<(Vec<Zone>, Vec<Case>)> {
    if common::skip_without_python(&["yaml"]) {
        return None;
    }
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spf");
    let out = Command::new("python3")
        .arg(data.join("suite-lines.py"))
        .arg(data.join("rfc7208-tests.yml"))
        .output()
        .expect("run suite-lines.py");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("ASCII lines");
    let mut zones: Vec<Zone> = Vec::new();
    let mut cases = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields[0] {
            "scenario" => zones.push(Zone::default()),
            "zone" => {
                let zone = zones.last_mut().expect("a scenario first");
                let value = fields.get(3).copied().unwrap_or("");
                let rtype = if fields[2] == "TIMEOUT" { "TIMEOUT" } else { fields[2] };
                zone.records
                    .entry(unhex(fields[1]).to_ascii_lowercase())
                    .or_default()
                    .push((rtype.to_string(), value.to_string()));
            }
            "test" => cases.push(Case {
                id: fields[1].to_string(),
                ip: fields[2].parse().expect("test IP"),
                mail_from: unhex(fields[3]),
                helo: unhex(fields[4]),
                results: fields[5].split(',').map(String::from).collect(),
                explanation: (fields[6] != "-").then(|| String::from_utf8_lossy(&unhex(fields[6])).into_owned()),
                zone: zones.len() - 1,
            }),
            other => panic!("unknown line {other}"),
        }
    }
    Some((zones, cases))
}

/// The suite's cases this implementation is known to answer otherwise, each with the reason.
/// The test fails when one of them starts passing (so the list stays true) or another fails.
const KNOWN_FAILURES: &[(&str, &str)] = &[];

#[test]
fn rfc7208_test_suite() {
    let Some((zones, cases)) = suite() else { return };
    let mut passed = 0;
    let mut failed = Vec::new();
    for case in &cases {
        let mut zone = zones[case.zone].clone();
        let checked = spf::check_mail(&mut zone, case.ip, &case.mail_from, &case.helo, b"receiver.example");
        let result = checked.outcome.result.name();
        let mut ok = case.results.iter().any(|r| r == result);
        // The explanation is only compared where the suite gives one and the result is fail.
        if let (true, Some(want), SpfResult::Fail) = (ok, &case.explanation, checked.outcome.result) {
            let got = checked.outcome.explanation.clone().unwrap_or_else(|| "DEFAULT".to_string());
            if want != "DEFAULT" && got != *want {
                ok = false;
            }
        }
        if ok {
            passed += 1;
        } else {
            failed.push(format!(
                "{}: want {} (explanation {:?}), got {result} (explanation {:?}, problem {:?})",
                case.id,
                case.results.join("|"),
                case.explanation,
                checked.outcome.explanation,
                checked.outcome.problem
            ));
        }
    }
    eprintln!("RFC 7208 test suite: {passed} of {} cases pass", cases.len());
    for line in &failed {
        eprintln!("  {line}");
    }
    let failed_ids: Vec<&str> = failed.iter().map(|l| l.split(':').next().unwrap_or("")).collect();
    let known: Vec<&str> = KNOWN_FAILURES.iter().map(|(id, _)| *id).collect();
    assert_eq!(failed_ids, known, "the failures differ from the known ones");
}
