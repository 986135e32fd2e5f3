//! International domain names (RFC 5890, UTS #46): inside Quill and on the wire a domain is
//! its A-label form (`xn--bcher-kva.example`), so that DNS, control files, routes and every
//! SMTP server understand it; a client may write it in UTF-8 (`bücher.example`, with
//! SMTPUTF8). Local parts are never changed. The Unicode tables are the `idna` crate's
//! (doc/DEPENDENCIES.md).
#![forbid(unsafe_code)]

/// The A-label form of `domain`: ASCII domains as they are (case kept: only their comparison
/// ignores it), UTF-8 ones through UTS #46 (non-transitional, as IDNA 2008 wants). None for a
/// name that is not valid UTF-8 or that UTS #46 refuses. A domain literal (`[…]`) is
/// returned as it is.
pub fn domain_to_ascii(domain: &[u8]) -> Option<Vec<u8>> {
    if domain.is_ascii() {
        return Some(domain.to_vec());
    }
    let text = std::str::from_utf8(domain).ok()?;
    let ascii = idna::domain_to_ascii_strict(text).ok()?;
    (!ascii.is_empty()).then(|| ascii.into_bytes())
}

/// `local@domain` with the domain as its A-label; None when the domain cannot be converted.
/// An address without `@` is returned as it is.
pub fn address_to_ascii(address: &[u8]) -> Option<Vec<u8>> {
    let Some(at) = address.iter().rposition(|&b| b == b'@') else { return Some(address.to_vec()) };
    if address[at + 1..].is_ascii() {
        return Some(address.to_vec());
    }
    let mut out = address[..at + 1].to_vec();
    out.extend_from_slice(&domain_to_ascii(&address[at + 1..])?);
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn u_labels_become_a_labels() {
        assert_eq!(domain_to_ascii("bücher.example".as_bytes()).unwrap(), b"xn--bcher-kva.example".to_vec());
        assert_eq!(domain_to_ascii("BÜCHER.Example".as_bytes()).unwrap(), b"xn--bcher-kva.example".to_vec());
        assert_eq!(domain_to_ascii("例え.テスト".as_bytes()).unwrap(), b"xn--r8jz45g.xn--zckzah".to_vec());
        // IDNA 2008, not 2003: ß stays ß.
        assert_eq!(domain_to_ascii("faß.de".as_bytes()).unwrap(), b"xn--fa-hia.de".to_vec());
        assert_eq!(domain_to_ascii(b"Example.COM").unwrap(), b"Example.COM".to_vec());
        assert_eq!(domain_to_ascii(b"\xff.example"), None);
        assert_eq!(domain_to_ascii("a\u{202e}b.example".as_bytes()), None);
        assert_eq!(
            address_to_ascii("Jörg@bücher.example".as_bytes()).unwrap(),
            "Jörg@xn--bcher-kva.example".as_bytes().to_vec()
        );
        assert_eq!(address_to_ascii(b"x@example.com").unwrap(), b"x@example.com".to_vec());
        assert_eq!(address_to_ascii(b"postmaster").unwrap(), b"postmaster".to_vec());
    }
}
