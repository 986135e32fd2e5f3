//! The TLS client side of quill-remote, on rustls: the two configurations (opportunistic and
//! verified) and the handshake over an SMTP connection after STARTTLS.
//!
//! Opportunistic ("may") TLS accepts any certificate, as RFC 7435 allows: without DANE or
//! MTA-STS nobody knows which name an MX should present, and refusing would only push the
//! mail back to plain text. The handshake itself is still done properly — the server must
//! prove it holds the key of the certificate it sent — so the session is encrypted against
//! passive listeners. Verified TLS (control/tlsdestinations) checks the chain against the
//! system roots or control/tlsca, and the names in the certificate against names that do not
//! come from DNS: the recipient domain or a name under it, names the administrator listed
//! for it, and a relay host the administrator named in smtproutes. An MX name learned from
//! unauthenticated DNS proves nothing by itself (an attacker who forges the MX answer can
//! hold a valid certificate for a host of his own), so it counts only when it lies under the
//! recipient domain or a listed suffix (Postfix's `secure` level).
#![forbid(unsafe_code)]

pub use super::names::AcceptedNames;
use crate::base::fail::Error;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// This build speaks TLS (`tls::none::client` says false).
pub const AVAILABLE: bool = true;

/// A client configuration: which certificates to accept.
pub type Config = Arc<ClientConfig>;

/// A TLS session over a TCP connection.
pub struct Stream(StreamOwned<ClientConnection, TcpStream>);

/// A verifier that accepts any certificate but still checks the handshake signatures with
/// the certificate's key.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The configuration for opportunistic TLS: any certificate, proper handshake.
pub fn opportunistic() -> Result<Config, Error> {
    let provider = provider();
    let verifier = AnyCertificate { algorithms: provider.signature_verification_algorithms };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(failed)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Chain verification by webpki, then the names of [`AcceptedNames`] instead of the name
/// the handshake was made for (that one is only the SNI).
#[derive(Debug)]
struct DestinationVerifier {
    chain: Arc<WebPkiServerVerifier>,
    names: AcceptedNames,
}

impl ServerCertVerifier for DestinationVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut presented: Vec<String> = Vec::new();
        // webpki checks the chain before the name, so a name error means the chain is good.
        for name in &self.names.exact {
            let Ok(reference) = ServerName::try_from(name.clone()) else { continue };
            match self.chain.verify_server_cert(end_entity, intermediates, &reference, ocsp_response, now) {
                Ok(verified) => return Ok(verified),
                Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                    presented: names,
                    ..
                })) => presented = names,
                Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)) => {}
                Err(other) => return Err(other),
            }
        }
        if presented.iter().any(|p| self.names.suffix_matches(p)) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::General(format!(
            "the certificate names {} but none of {}",
            if presented.is_empty() { "nothing usable".to_string() } else { presented.join(", ") },
            self.names.describe()
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The configuration for verified TLS: roots from `ca_file` (PEM), all of which must parse;
/// the certificate must match one of `names`. With no exact name the chain could not be
/// checked at all, so that is refused here.
pub fn verified(ca_file: &Path, names: AcceptedNames) -> Result<Config, Error> {
    if names.exact.is_empty() {
        return Err(Error::temporary("no name to verify the certificate against"));
    }
    let mut roots = RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| Error::temporary(format!("unable to read {}: {e}", ca_file.display())))?;
    for certificate in certificates {
        let certificate =
            certificate.map_err(|e| Error::temporary(format!("unable to parse {}: {e}", ca_file.display())))?;
        // A root the verifier cannot use (an odd algorithm in the system bundle) is skipped,
        // as every TLS client does; the others still count.
        let _ = roots.add(certificate);
    }
    if roots.is_empty() {
        return Err(Error::temporary(format!("no usable certificate in {}", ca_file.display())));
    }
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().map_err(failed)?;
    let verifier = DestinationVerifier { chain, names };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(failed)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A rustls error as Quill's: temporary (TLS trouble is the administrator's or the peer's to
/// fix, and the mail waits), its words as rustls gives them.
fn failed(error: impl std::fmt::Display) -> Error {
    Error::temporary(error.to_string())
}

/// Run the handshake on `tcp` (right after the server's 220 to STARTTLS) for the host
/// `name` (a DNS name or an address, sent as SNI). Each read and write waits at most
/// `timeout` and none goes past `deadline`: rustls loops inside one call until the handshake
/// is done, so a server that sends its handshake a byte at a time is stopped by the deadline
/// on each read, not between calls.
pub fn handshake(
    config: Config,
    name: &str,
    mut tcp: TcpStream,
    timeout: Duration,
    deadline: Instant,
) -> Result<Stream, Error> {
    let server_name =
        ServerName::try_from(name.to_string()).map_err(|e| Error::temporary(format!("bad server name {name}: {e}")))?;
    let mut connection = ClientConnection::new(config, server_name).map_err(failed)?;
    let mut bounded = Bounded { tcp: &mut tcp, timeout, deadline };
    while connection.is_handshaking() {
        connection.complete_io(&mut bounded).map_err(|e| {
            if Instant::now() >= deadline {
                Error::temporary("out of time")
            } else {
                failed(e)
            }
        })?;
    }
    Ok(Stream(StreamOwned::new(connection, tcp)))
}

/// A TCP stream whose every read and write waits at most `timeout` and never past `deadline`.
struct Bounded<'a> {
    tcp: &'a mut TcpStream,
    timeout: Duration,
    deadline: Instant,
}

impl Bounded<'_> {
    fn arm(&mut self) -> std::io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
        }
        self.tcp.set_read_timeout(Some(left.min(self.timeout)))?;
        self.tcp.set_write_timeout(Some(left.min(self.timeout)))
    }
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.tcp.read(buf)
    }
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

impl Stream {
    /// The TCP connection underneath, whose timeouts bound every read and write.
    pub fn socket(&self) -> &TcpStream {
        &self.0.sock
    }

    /// "TLSv1.3 TLS13_AES_256_GCM_SHA384", for logs.
    pub fn describe(&self) -> String {
        let version = match self.0.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "TLS".to_string(),
        };
        match self.0.conn.negotiated_cipher_suite() {
            Some(suite) => format!("{version} {:?}", suite.suite()),
            None => version,
        }
    }

    /// Say goodbye properly (close_notify); errors do not matter any more.
    pub fn close(&mut self) {
        self.0.conn.send_close_notify();
        let _ = self.0.conn.complete_io(&mut self.0.sock);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
