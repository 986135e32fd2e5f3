//! The rules file of quill-tcpserver (`doc/tcprules.5`): which clients may connect, and which
//! environment variables the program run for them gets.
//!
//! One rule per line, `ADDRESS:INSTRUCTIONS`, read as text (no compiled cdb): ucspi-tcp's
//! tcprules syntax for the addresses it knows (exact IPv4, `192.168.` prefixes, `1.2.3.10-20`
//! ranges of the last number, the empty default), plus CIDR for IPv4 and IPv6. The most
//! specific rule wins: the longest prefix that contains the client's address. A rule never
//! depends on the order of the lines, except that of two rules for the same network the first
//! counts (as with a tcprules cdb, where the first record for a key is the one found).
#![forbid(unsafe_code)]

use crate::base::fail::Error;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// What to do with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Run the program, with the rule's variables in its environment.
    Allow,
    /// Close the connection at once; nothing runs.
    Deny,
}

/// Environment variables a rule sets: name and value bytes, in the order written.
pub type Variables = Vec<(String, Vec<u8>)>;

/// One rule: its verdict, the variables it sets, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Variables for the program's environment, in the order written (`NAME`, value bytes).
    pub env: Variables,
    /// The line of the file (counted from 1), for log lines and warnings.
    pub line: usize,
}

/// A malformed line: its number and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The line, counted from 1.
    pub line: usize,
    /// What is wrong, in words.
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

/// A network: the address with its host bits cleared, and the prefix length. IPv4 addresses
/// sit in the low 32 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Network {
    v6: bool,
    bits: u128,
    length: u8,
}

fn mask(v6: bool, length: u8) -> u128 {
    let width = if v6 { 128 } else { 32 };
    if length == 0 {
        0
    } else {
        let ones = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        (ones >> (width - u32::from(length))) << (width - u32::from(length))
    }
}

fn ip_bits(ip: IpAddr) -> (bool, u128) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (true, u128::from(v6)),
    }
}

/// A parsed rules file.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// The rule for the empty address, if any.
    default: Option<Rule>,
    /// One table per (family, prefix length) present, longest prefixes first.
    tables: Vec<(bool, u8, HashMap<u128, Rule>)>,
    /// Lines that parsed but have no effect (a second rule for the same network).
    pub warnings: Vec<String>,
}

impl Rules {
    /// No rules: every client is allowed, no variables are set.
    pub fn empty() -> Rules {
        Rules::default()
    }

    /// The number of rules (each address of a range counts once).
    pub fn len(&self) -> usize {
        self.tables.iter().map(|t| t.2.len()).sum::<usize>() + usize::from(self.default.is_some())
    }

    /// True when there is no rule at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any rule sets the variable `name`.
    pub fn sets(&self, name: &str) -> bool {
        let rules = self.default.iter().chain(self.tables.iter().flat_map(|t| t.2.values()));
        rules.into_iter().any(|rule| rule.env.iter().any(|(n, _)| n == name))
    }

    /// The rule for a client: the most specific one containing its address, else the default
    /// rule, else None (which means allow, as with tcpserver). IPv4-mapped IPv6 addresses are
    /// looked up as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Rule> {
        let (v6, bits) = ip_bits(ip);
        for (family, length, table) in &self.tables {
            if *family != v6 {
                continue;
            }
            if let Some(rule) = table.get(&(bits & mask(v6, *length))) {
                return Some(rule);
            }
        }
        self.default.as_ref()
    }

    /// Read and parse a rules file. The error is one line for the log, naming the file; a file
    /// that does not parse is a temporary error, as the administrator can fix it.
    pub fn load(path: &Path) -> Result<Rules, Error> {
        let text = std::fs::read(path).map_err(|e| Error::io(format_args!("read {}", path.display()), &e))?;
        if looks_like_cdb(&text) {
            return Err(Error::temporary(format!(
                "unable to parse {}: it looks like a compiled tcprules cdb; give the text rules instead",
                path.display()
            )));
        }
        Rules::parse(&text).map_err(|e| Error::temporary(format!("unable to parse {}: {e}", path.display())))
    }

    /// Parse the text of a rules file; the first malformed line is an error.
    pub fn parse(text: &[u8]) -> Result<Rules, ParseError> {
        let mut rules = Rules::empty();
        let mut index: HashMap<(bool, u8), usize> = HashMap::new();
        for (number, raw) in text.split(|&b| b == b'\n').enumerate() {
            let line = number + 1;
            let trimmed = trim(raw);
            if trimmed.is_empty() || trimmed[0] == b'#' {
                continue;
            }
            let fail = |reason: String| ParseError { line, reason };
            let (networks, rule) = parse_line(trimmed, line).map_err(fail)?;
            match networks {
                None => match &rules.default {
                    Some(first) => rules
                        .warnings
                        .push(format!("line {line}: a second default rule has no effect (line {} counts)", first.line)),
                    None => rules.default = Some(rule),
                },
                Some(list) => {
                    for network in list {
                        let slot = *index.entry((network.v6, network.length)).or_insert_with(|| {
                            rules.tables.push((network.v6, network.length, HashMap::new()));
                            rules.tables.len() - 1
                        });
                        let table = &mut rules.tables[slot].2;
                        match table.get(&network.bits) {
                            Some(first) => rules.warnings.push(format!(
                                "line {line}: a second rule for the same network has no effect (line {} counts)",
                                first.line
                            )),
                            None => {
                                table.insert(network.bits, rule.clone());
                            }
                        }
                    }
                }
            }
        }
        rules.tables.sort_by_key(|table| std::cmp::Reverse(table.1));
        Ok(rules)
    }
}

/// A cdb starts with a 2048-byte table of little-endian offsets: NULs appear at once, which a
/// text file never has.
fn looks_like_cdb(text: &[u8]) -> bool {
    text.len() >= 2048 && text[..2048].contains(&0)
}

fn trim(line: &[u8]) -> &[u8] {
    let mut start = 0;
    let mut end = line.len();
    while start < end && matches!(line[start], b' ' | b'\t') {
        start += 1;
    }
    while end > start && matches!(line[end - 1], b' ' | b'\t' | b'\r') {
        end -= 1;
    }
    &line[start..end]
}

/// The characters an address may contain. Every instruction holds a character outside this
/// set before any colon of its own (`allow` has `l`, `deny` has `n`, `NAME=` has `=`), so the
/// colon that ends the address is the last one before the first character outside the set;
/// that is how `::1:deny` splits into `::1` and `deny`.
fn address_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b'/' | b'-')
}

/// One rule line: the networks it covers (None for the default rule) and the rule.
fn parse_line(text: &[u8], line: usize) -> Result<(Option<Vec<Network>>, Rule), String> {
    let first_other = text.iter().position(|&b| !address_byte(b)).unwrap_or(text.len());
    let colon = match text[..first_other].iter().rposition(|&b| b == b':') {
        Some(colon) => colon,
        None => {
            let head = text.split(|&b| b == b':').next().unwrap_or(text);
            if head.starts_with(b"=") || head.contains(&b'@') {
                return Err(format!(
                    "rules for TCPREMOTEINFO@ or =HOSTNAME are not supported ({}): \
                     quill-tcpserver does no ident or DNS lookups",
                    crate::base::log::safe(head)
                ));
            }
            return Err(format!(
                "no colon after the address in {:?}: a rule is ADDRESS:allow or ADDRESS:deny",
                crate::base::log::safe(text)
            ));
        }
    };
    let address = std::str::from_utf8(&text[..colon]).map_err(|_| "address is not ASCII".to_string())?;
    let networks = if address.is_empty() { None } else { Some(parse_address(address)?) };
    let (verdict, env) = parse_instructions(&text[colon + 1..])?;
    Ok((networks, Rule { verdict, env, line }))
}

/// The networks an address stands for.
fn parse_address(address: &str) -> Result<Vec<Network>, String> {
    let bad = |why: &str| format!("bad address {address:?}: {why}");
    if let Some((ip, length)) = address.split_once('/') {
        let ip: IpAddr = ip.parse().map_err(|_| bad("not an IP address before the /"))?;
        let length: u8 = length.parse().map_err(|_| bad("the prefix length is not a number"))?;
        let (v6, bits) = (
            ip.is_ipv6(),
            match ip {
                IpAddr::V4(v4) => u128::from(u32::from(v4)),
                IpAddr::V6(v6) => u128::from(v6),
            },
        );
        let width = if v6 { 128 } else { 32 };
        if length > width {
            return Err(bad(&format!("the prefix length is more than {width}")));
        }
        if bits & !mask(v6, length) != 0 {
            return Err(bad("bits are set after the prefix length (write the network's first address)"));
        }
        return Ok(vec![canonical(Network { v6, bits, length })]);
    }
    if address.contains(':') {
        let ip: Ipv6Addr = address.parse().map_err(|_| bad("not an IPv6 address"))?;
        return Ok(vec![canonical(Network { v6: true, bits: u128::from(ip), length: 128 })]);
    }
    if let Some(prefix) = address.strip_suffix('.') {
        // tcprules prefix: whole numbers of the address, each followed by a dot.
        let parts: Vec<&str> = prefix.split('.').collect();
        if parts.len() > 3 {
            return Err(bad("a prefix has at most three numbers"));
        }
        let mut bits: u128 = 0;
        for (i, part) in parts.iter().enumerate() {
            let n = octet(part).ok_or_else(|| bad("each part of a prefix is a number from 0 to 255"))?;
            bits |= u128::from(n) << (24 - 8 * i);
        }
        return Ok(vec![Network { v6: false, bits, length: 8 * parts.len() as u8 }]);
    }
    if let Some((head, last)) = address.split_once('-') {
        // tcprules range: 1.2.3.10-20 stands for 1.2.3.10 to 1.2.3.20.
        let start: Ipv4Addr = head.parse().map_err(|_| bad("a range is A.B.C.FIRST-LAST"))?;
        let end = octet(last).ok_or_else(|| bad("a range is A.B.C.FIRST-LAST"))?;
        let first = start.octets()[3];
        if end < first {
            return Err(bad("the range ends before it starts"));
        }
        let base = u32::from(start) & 0xffff_ff00;
        return Ok((first..=end)
            .map(|n| Network { v6: false, bits: u128::from(base | u32::from(n)), length: 32 })
            .collect());
    }
    let ip: Ipv4Addr =
        address.parse().map_err(|_| bad("not an IP address, a prefix ending in a dot, or a CIDR network"))?;
    Ok(vec![Network { v6: false, bits: u128::from(u32::from(ip)), length: 32 }])
}

/// Rules written for IPv4-mapped IPv6 addresses apply to the IPv4 clients they stand for
/// (clients are always looked up by their plain IPv4 address).
fn canonical(network: Network) -> Network {
    const MAPPED: u128 = 0xffff_0000_0000;
    if network.v6 && network.length >= 96 && network.bits >> 32 == MAPPED >> 32 {
        return Network { v6: false, bits: network.bits & u128::from(u32::MAX), length: network.length - 96 };
    }
    network
}

fn octet(text: &str) -> Option<u8> {
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && !name[0].is_ascii_digit() && name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `allow` or `deny`, and `NAME=VALUE`, separated by commas. As with tcprules, the first
/// character of a value is its quote, whatever it is, and the value runs to the next one:
/// `"…"`, `'…'`, `/…/` (and `X=abca` is `bc`, so that a file means what it meant to tcprules).
fn parse_instructions(text: &[u8]) -> Result<(Verdict, Variables), String> {
    if text.is_empty() {
        return Err("no instructions after the colon: write allow or deny".to_string());
    }
    let mut verdict = None;
    let mut env = Vec::new();
    let mut rest = text;
    loop {
        let end = rest.iter().position(|&b| b == b',' || b == b'=').unwrap_or(rest.len());
        let word = &rest[..end];
        if end == rest.len() || rest[end] == b',' {
            let this = match word {
                b"allow" => Verdict::Allow,
                b"deny" => Verdict::Deny,
                _ => {
                    return Err(format!(
                        "unknown instruction {:?}: expected allow, deny or NAME=\"value\"",
                        crate::base::log::safe(word)
                    ))
                }
            };
            if verdict.is_some_and(|v| v != this) {
                return Err("both allow and deny in one rule".to_string());
            }
            verdict = Some(this);
            rest = &rest[end..];
        } else {
            if !valid_name(word) {
                return Err(format!(
                    "bad variable name {:?}: letters, digits and _ only, not starting with a digit",
                    crate::base::log::safe(word)
                ));
            }
            let after = &rest[end + 1..];
            let Some(&quote) = after.first() else {
                return Err(format!(
                    "{} has no value: write {}=\"\" for an empty one",
                    crate::base::log::safe(word),
                    crate::base::log::safe(word)
                ));
            };
            let close = after[1..].iter().position(|&c| c == quote).ok_or_else(|| {
                format!("the value of {} has no closing {}", crate::base::log::safe(word), quote as char)
            })?;
            let (value, remaining) = (&after[1..1 + close], &after[close + 2..]);
            if value.contains(&0) {
                return Err(format!("the value of {} holds a NUL byte", crate::base::log::safe(word)));
            }
            env.push((String::from_utf8_lossy(word).into_owned(), value.to_vec()));
            rest = remaining;
        }
        match rest.first() {
            None => break,
            Some(b',') if rest.len() > 1 => rest = &rest[1..],
            Some(b',') => return Err("a comma with nothing after it".to_string()),
            Some(_) => {
                return Err(format!(
                    "unexpected {:?} after a value: separate instructions with commas",
                    crate::base::log::safe(rest)
                ))
            }
        }
    }
    let verdict = verdict.ok_or_else(|| "no verdict: a rule needs allow or deny".to_string())?;
    Ok((verdict, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Rules {
        Rules::parse(text.as_bytes()).expect("rules parse")
    }

    fn verdict(r: &Rules, ip: &str) -> Option<(Verdict, usize)> {
        r.lookup(ip.parse().expect("ip")).map(|rule| (rule.verdict, rule.line))
    }

    #[test]
    fn sets_names_a_variable_of_any_rule() {
        let r =
            rules("127.0.0.1:allow,RELAYCLIENT=\"\"\n10.:allow,QMAILQUEUE=\"/bin/filter\"\n:allow,DATABYTES=\"5\"\n");
        assert!(r.sets("QMAILQUEUE") && r.sets("RELAYCLIENT") && r.sets("DATABYTES"));
        assert!(!r.sets("QUILL_HOME"));
        assert!(!Rules::empty().sets("QMAILQUEUE"));
    }

    fn error(text: &str) -> ParseError {
        Rules::parse(text.as_bytes()).expect_err("should not parse")
    }

    #[test]
    fn empty_file_allows_nothing_specially() {
        let r = rules("# nothing\n\n   \n");
        assert!(r.is_empty());
        assert_eq!(verdict(&r, "1.2.3.4"), None);
    }

    #[test]
    fn exact_prefix_default_and_most_specific_wins() {
        let r = rules(
            ":deny\n127.:allow\n127.0.0.1:allow,RELAYCLIENT=\"\"\n10.0.0.0/8:allow\n10.1.:deny\n10.1.2.0/24:allow\n",
        );
        assert_eq!(verdict(&r, "8.8.8.8"), Some((Verdict::Deny, 1)));
        assert_eq!(verdict(&r, "127.0.0.2"), Some((Verdict::Allow, 2)));
        assert_eq!(verdict(&r, "127.0.0.1"), Some((Verdict::Allow, 3)));
        assert_eq!(verdict(&r, "10.9.9.9"), Some((Verdict::Allow, 4)));
        assert_eq!(verdict(&r, "10.1.9.9"), Some((Verdict::Deny, 5)));
        assert_eq!(verdict(&r, "10.1.2.3"), Some((Verdict::Allow, 6)));
        let relay = r.lookup("127.0.0.1".parse().expect("ip")).expect("rule");
        assert_eq!(relay.env, vec![("RELAYCLIENT".to_string(), Vec::new())]);
    }

    #[test]
    fn order_of_lines_does_not_matter() {
        let a = rules("127.0.0.1:deny\n127.:allow\n");
        let b = rules("127.:allow\n127.0.0.1:deny\n");
        for r in [a, b] {
            assert_eq!(verdict(&r, "127.0.0.1").map(|v| v.0), Some(Verdict::Deny));
            assert_eq!(verdict(&r, "127.0.0.9").map(|v| v.0), Some(Verdict::Allow));
        }
    }

    #[test]
    fn ipv6_exact_cidr_and_families_apart() {
        let r = rules("::1:allow,RELAYCLIENT=\"\"\n2001:db8::/32:deny\n2001:db8:1::/48:allow\n::/0:allow,V6=\"yes\"\n0.0.0.0/0:allow,V4=\"yes\"\n");
        assert_eq!(verdict(&r, "::1"), Some((Verdict::Allow, 1)));
        assert_eq!(verdict(&r, "2001:db8:ffff::1"), Some((Verdict::Deny, 2)));
        assert_eq!(verdict(&r, "2001:db8:1::25"), Some((Verdict::Allow, 3)));
        assert_eq!(verdict(&r, "2002::1"), Some((Verdict::Allow, 4)));
        assert_eq!(verdict(&r, "192.0.2.1"), Some((Verdict::Allow, 5)));
    }

    #[test]
    fn ipv4_mapped_clients_and_rules_are_ipv4() {
        let r = rules("192.0.2.:deny\n::ffff:198.51.100.7:allow,X=\"1\"\n");
        assert_eq!(verdict(&r, "::ffff:192.0.2.9"), Some((Verdict::Deny, 1)));
        assert_eq!(verdict(&r, "198.51.100.7"), Some((Verdict::Allow, 2)));
    }

    #[test]
    fn ranges_expand() {
        let r = rules("1.2.3.10-12:deny\n");
        assert_eq!(r.len(), 3);
        assert_eq!(verdict(&r, "1.2.3.9"), None);
        assert_eq!(verdict(&r, "1.2.3.10").map(|v| v.0), Some(Verdict::Deny));
        assert_eq!(verdict(&r, "1.2.3.12").map(|v| v.0), Some(Verdict::Deny));
        assert_eq!(verdict(&r, "1.2.3.13"), None);
    }

    #[test]
    fn variables_quotes_commas_and_crlf() {
        let r = rules("1.2.3.4:allow,A=\"x, y\",B='q\"',C=/p/,D=abca,F=\"\"\r\n  # indented comment\n");
        let rule = r.lookup("1.2.3.4".parse().expect("ip")).expect("rule");
        let env: Vec<(&str, &[u8])> = rule.env.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        assert_eq!(env, vec![("A", &b"x, y"[..]), ("B", b"q\""), ("C", b"p"), ("D", b"bc"), ("F", b"")]);
    }

    #[test]
    fn duplicates_first_counts_with_warning() {
        let r = rules("1.2.3.4:deny\n1.2.3.4:allow\n:allow\n:deny\n");
        assert_eq!(verdict(&r, "1.2.3.4"), Some((Verdict::Deny, 1)));
        assert_eq!(verdict(&r, "9.9.9.9"), Some((Verdict::Allow, 3)));
        assert_eq!(r.warnings.len(), 2);
        assert!(r.warnings[0].starts_with("line 2:"), "{:?}", r.warnings);
    }

    #[test]
    fn malformed_lines_name_their_number() {
        let cases = [
            ("# ok\n1.2.3.4\n", 2, "no colon"),
            ("1.2.3.4:\n", 1, "no instructions"),
            ("\n\n1.2.3.4:alow\n", 3, "unknown instruction"),
            ("1.2.3.4:allow,deny\n", 1, "both allow and deny"),
            ("1.2.3.400:allow\n", 1, "bad address"),
            ("1.2.3:allow\n", 1, "bad address"),
            ("1.2.3.4.:allow\n", 1, "at most three"),
            ("10.0.0.0/33:allow\n", 1, "more than 32"),
            ("10.0.0.1/8:allow\n", 1, "bits are set"),
            ("2001:db8::/129:allow\n", 1, "more than 128"),
            ("2001:db8::1/32:allow\n", 1, "bits are set"),
            ("2001:zz8::1:allow\n", 1, "bad address"),
            ("fe80:::1:allow\n", 1, "not an IPv6"),
            ("1.2.3.4:allow,X=\"open\n", 1, "no closing"),
            ("1.2.3.4:allow,9X=1\n", 1, "bad variable name"),
            ("1.2.3.4:allow,X=\"a\"b\n", 1, "separate instructions"),
            ("1.2.3.4:allow,\n", 1, "comma with nothing"),
            ("1.2.3.4:allow,X=\n", 1, "has no value"),
            ("1.2.3.4:allow,X=1000\n", 1, "no closing 1"),
            ("1.2.3.4:RELAYCLIENT=\"\"\n", 1, "no verdict"),
            ("joe@1.2.3.4:allow\n", 1, "not supported"),
            ("=mail.example:allow\n", 1, "not supported"),
            ("1.2.3.9-3:deny\n", 1, "ends before"),
            ("ok:allow\n", 1, "no colon"),
        ];
        for (text, line, words) in cases {
            let e = error(text);
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().contains(words), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")), "{e}");
        }
    }

    #[test]
    fn address_and_instruction_split_is_unambiguous() {
        let r = rules("::dead:beef:deny\n::de:allow,DEAD=\"a:b\"\n");
        assert_eq!(verdict(&r, "::dead:beef"), Some((Verdict::Deny, 1)));
        let rule = r.lookup("::de".parse().expect("ip")).expect("rule");
        assert_eq!(rule.env, vec![("DEAD".to_string(), b"a:b".to_vec())]);
    }

    #[test]
    fn cdb_files_are_recognised() {
        let mut cdb = vec![0u8; 2048];
        cdb[0] = 8;
        assert!(looks_like_cdb(&cdb));
        assert!(!looks_like_cdb(b":allow\n"));
    }
}
