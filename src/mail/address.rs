//! Envelope addresses as bytes: splitting, case rules, and the checks every program applies.
#![forbid(unsafe_code)]

/// The longest address the queue accepts (qmail-queue's limit; longer gives exit 11).
pub const MAX_ADDRESS: usize = 1003;

/// Split at the last `@`: (local part, domain). No `@` gives an empty domain.
pub fn split(address: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memrchr(b'@', address) {
        Some(at) => (&address[..at], &address[at + 1..]),
        None => (address, &[]),
    }
}

/// The domain in lower case with any trailing dot removed (domains compare case-insensitively).
pub fn normal_domain(domain: &[u8]) -> Vec<u8> {
    // A UTF-8 name in a control file means its A-label, the form addresses have inside Quill.
    // A leading dot ("every subdomain", in rcpthosts) is kept outside the conversion.
    let (dot, name) = match domain.strip_prefix(b".") {
        Some(rest) => (&b"."[..], rest),
        None => (&b""[..], domain),
    };
    let ascii = crate::mail::idna::domain_to_ascii(name).map(|a| [dot, a.as_slice()].concat());
    let mut d = ascii.as_deref().unwrap_or(domain).to_ascii_lowercase();
    while d.last() == Some(&b'.') {
        d.pop();
    }
    d
}

/// An envelope address may hold any byte but NUL, CR and LF (those would break the queue's
/// records or the headers written from them).
pub fn is_clean(address: &[u8]) -> bool {
    !address.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
}

/// True when a domain is listed, either exactly or under a `.suffix` entry
/// (`.example.com` matches every subdomain of example.com). `list` holds normal domains.
pub fn domain_listed(domain: &[u8], list: &[Vec<u8>]) -> bool {
    let domain = normal_domain(domain);
    for entry in list {
        if entry.first() == Some(&b'.') {
            if domain.ends_with(entry) {
                return true;
            }
        } else if *entry == domain {
            return true;
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn splitting() {
        assert_eq!(split(b"a@b@c.d"), (&b"a@b"[..], &b"c.d"[..]));
        assert_eq!(split(b"nobody"), (&b"nobody"[..], &b""[..]));
        assert_eq!(normal_domain(b"Example.COM."), b"example.com".to_vec());
    }

    #[test]
    fn listing() {
        let list = vec![b"example.com".to_vec(), b".sub.org".to_vec()];
        assert!(domain_listed(b"EXAMPLE.com", &list));
        assert!(domain_listed(b"a.sub.org", &list));
        assert!(!domain_listed(b"sub.org", &list));
        assert!(!domain_listed(b"xexample.com", &list));
    }
}
