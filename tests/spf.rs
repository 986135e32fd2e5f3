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

/// pyspf (python3-spf, on Debian's python3 with dnspython) asks the dnsmasq of the test.
const PYSPF: &str = r#"
import sys
import dns.resolver
import spf
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = int(sys.argv[1])
dns.resolver.default_resolver = resolver
for line in sys.stdin.read().splitlines():
    ip, sender, helo = line.split("\t")
    result, code, text = spf.query(i=ip, s=sender, h=helo, receiver="receiver.test").check()
    print(result)
"#;

/// The same questions to Quill's library (on Quill's resolver) and to pyspf, both asking
/// dnsmasq on loopback for the same records: every answer must agree.
#[test]
fn same_results_as_pyspf_on_dnsmasq() {
    if common::skip_unless_can(
        "/usr/bin/python3",
        &["-c", "import spf, dns.resolver; print('pyspf ok')"],
        "pyspf ok",
        "import spf and dns.resolver (python3-spf, python3-dnspython)",
    ) {
        return;
    }
    let records = [
        "--local=/in-addr.arpa/",
        "--local=/ip6.arpa/",
        "--txt-record=p.test,v=spf1 ip4:192.0.2.0/24 -all",
        "--txt-record=a.test,v=spf1 a -all",
        "--host-record=a.test,192.0.2.10",
        "--txt-record=mx.test,v=spf1 mx/24 ~all",
        "--mx-host=mx.test,mail.mx.test,10",
        "--host-record=mail.mx.test,198.51.100.20",
        "--txt-record=inc.test,v=spf1 include:p.test ?all",
        "--txt-record=red.test,v=spf1 redirect=a.test",
        "--txt-record=ex.test,v=spf1 exists:%{ir}.%{l1r-}.x.test -all",
        "--host-record=10.2.0.192.ok.x.test,127.0.0.2",
        "--txt-record=ptr.test,v=spf1 ptr -all",
        "--ptr-record=10.2.0.192.in-addr.arpa,host.ptr.test",
        "--host-record=host.ptr.test,192.0.2.10",
        "--txt-record=perm.test,v=spf1 ip4:192.0.2.300 -all",
        "--txt-record=two.test,v=spf1 -all",
        "--txt-record=two.test,v=spf1 +all",
        "--txt-record=void.test,v=spf1 a:n1.test a:n2.test a:n3.test +all",
        "--txt-record=loop.test,v=spf1 include:loop.test",
        "--txt-record=helo.test,v=spf1 a:a.test -all",
        "--txt-record=soft.test,v=spf1 ~all",
        "--txt-record=neutral.test,v=spf1",
        "--txt-record=other.test,not an spf record",
        "--txt-record=v6.test,v=spf1 ip6:2001:db8::/32 -all",
        "--txt-record=exp.test,v=spf1 -all exp=why.exp.test",
        "--txt-record=why.exp.test,%{i} may not send for %{d}",
        "--txt-record=big.test,v=spf1 ip4:203.0.113.1 ip4:203.0.113.2 include:p.test mx:mx.test a:a.test -all",
    ]
    .map(String::from);
    let Some(dnsmasq) = common::dnsmasq::Dnsmasq::start(&records) else { return };
    let senders = [
        "u@p.test",
        "u@a.test",
        "u@mx.test",
        "u@inc.test",
        "u@red.test",
        "ok-foo@ex.test",
        "no-foo@ex.test",
        "u@ptr.test",
        "u@perm.test",
        "u@two.test",
        "u@void.test",
        "u@loop.test",
        "",
        "u@soft.test",
        "u@neutral.test",
        "u@other.test",
        "u@none.test",
        "u@v6.test",
        "u@exp.test",
        "u@big.test",
    ];
    let mut cases = Vec::new();
    for ip in ["192.0.2.10", "198.51.100.20", "203.0.113.9", "2001:db8::1"] {
        for sender in senders {
            cases.push((ip, sender, "helo.test"));
        }
    }
    let input: String = cases.iter().map(|(ip, sender, helo)| format!("{ip}\t{sender}\t{helo}\n")).collect();
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PYSPF, &dnsmasq.port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("pyspf");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    assert_eq!(theirs.len(), cases.len(), "{}", String::from_utf8_lossy(&out.stderr));
    let resolver = quill::mail::dns::Resolver {
        servers: vec![std::net::SocketAddr::from(([127, 0, 0, 1], dnsmasq.port))],
        timeout: std::time::Duration::from_secs(2),
        attempts: 2,
    };
    let mut differ = Vec::new();
    let mut tally: HashMap<String, usize> = HashMap::new();
    for ((ip, sender, helo), theirs) in cases.iter().zip(&theirs) {
        let mut dns = spf::ResolverDns::new(&resolver);
        let ours =
            spf::check_mail(&mut dns, ip.parse().expect("IP"), sender.as_bytes(), helo.as_bytes(), b"receiver.test");
        let ours = ours.outcome.result.name();
        *tally.entry(ours.to_string()).or_default() += 1;
        if ours != theirs {
            differ.push(format!("{ip} <{sender}> helo {helo}: Quill {ours}, pyspf {theirs}"));
        }
    }
    eprintln!("{} cases against pyspf, {} differ; Quill's results: {tally:?}", cases.len(), differ.len());
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    // Every result but temperror (dnsmasq does not fail on demand) came up.
    for result in ["pass", "fail", "softfail", "neutral", "none", "permerror"] {
        assert!(tally.contains_key(result), "no {result} among {tally:?}");
    }
}
