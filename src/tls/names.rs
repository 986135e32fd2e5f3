//! The names a verified certificate may match (quill-remote's `tlsdestinations`): plain data,
//! the same whether or not this build has TLS.
#![forbid(unsafe_code)]

/// The names a verified certificate may match: exact names (DNS names or addresses) and
/// `.suffix` patterns (any DNS name under the suffix, wildcards included).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptedNames {
    /// Checked by webpki as reference names, wildcards and addresses handled there.
    pub exact: Vec<String>,
    /// Lower case, with their leading dot.
    pub suffixes: Vec<String>,
}

impl AcceptedNames {
    /// Add a name: `.suffix` or an exact name. Empty names are ignored.
    pub fn add(&mut self, name: &str) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.len() > 1 && name.starts_with('.') {
            self.suffixes.push(name);
        } else if !name.is_empty() && !name.starts_with('.') {
            self.exact.push(name);
        }
    }

    /// For texts: every name, exact names first.
    pub fn describe(&self) -> String {
        self.exact.iter().chain(&self.suffixes).cloned().collect::<Vec<_>>().join(", ")
    }

    /// True when a name the certificate presents lies under a suffix. `presented` is as
    /// rustls reports it (`DnsName("mx.example")`); anything else matches nothing.
    pub fn suffix_matches(&self, presented: &str) -> bool {
        let Some(name) = presented.strip_prefix("DnsName(\"").and_then(|n| n.strip_suffix("\")")) else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        self.suffixes.iter().any(|suffix| name.ends_with(suffix.as_str()) && name.len() > suffix.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_names() {
        let mut names = AcceptedNames::default();
        for name in ["B.Test", ".b.test", "mx.other.test.", "", "."] {
            names.add(name);
        }
        assert_eq!(names.exact, vec!["b.test".to_string(), "mx.other.test".to_string()]);
        assert_eq!(names.suffixes, vec![".b.test".to_string()]);
        assert!(names.suffix_matches("DnsName(\"MX1.b.test\")"));
        assert!(names.suffix_matches("DnsName(\"*.b.test\")"));
        assert!(!names.suffix_matches("DnsName(\"evilb.test\")"));
        assert!(!names.suffix_matches("DnsName(\".b.test\")"), "the suffix alone is no name under it");
        assert!(!names.suffix_matches("IpAddress(127.0.0.1)"));
        assert!(!names.suffix_matches("mx.b.test"));
    }
}
