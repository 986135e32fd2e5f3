//! The TLS client side of quill-remote, on rustls: the two configurations (opportunistic and
//! verified) and the handshake over an SMTP connection after STARTTLS.
//!
//! Opportunistic ("may") TLS accepts any certificate, as RFC 7435 allows: without DANE or
//! MTA-STS nobody knows which name an MX should present, and refusing would only push the
//! mail back to plain text. The handshake itself is still done properly — the server must
//! prove it holds the key of the certificate it sent — so the session is encrypted against
//! passive listeners. Verified TLS (control/tlsdestinations) checks the chain against the
//! system roots or control/tlsca and the name of the host we connected to.
#![forbid(unsafe_code)]

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme, StreamOwned};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

/// A TLS session over a TCP connection.
pub type Stream = StreamOwned<ClientConnection, TcpStream>;

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
pub fn opportunistic() -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let verifier = AnyCertificate { algorithms: provider.signature_verification_algorithms };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The configuration for verified TLS: roots from `ca_file` (PEM), all of which must parse.
pub fn verified(ca_file: &Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let certificates =
        CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("unable to read {}: {e}", ca_file.display()))?;
    for certificate in certificates {
        let certificate = certificate.map_err(|e| format!("unable to parse {}: {e}", ca_file.display()))?;
        // A root the verifier cannot use (an odd algorithm in the system bundle) is skipped,
        // as every TLS client does; the others still count.
        let _ = roots.add(certificate);
    }
    if roots.is_empty() {
        return Err(format!("no usable certificate in {}", ca_file.display()));
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Run the handshake on `tcp` (right after the server's 220 to STARTTLS) for the host
/// `name` (a DNS name or an address). The TCP read and write timeouts bound each step.
pub fn handshake(config: Arc<ClientConfig>, name: &str, mut tcp: TcpStream) -> Result<Stream, String> {
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| format!("bad server name {name}: {e}"))?;
    let mut connection = ClientConnection::new(config, server_name).map_err(|e| e.to_string())?;
    while connection.is_handshaking() {
        connection.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(StreamOwned::new(connection, tcp))
}

/// "TLSv1.3 TLS13_AES_256_GCM_SHA384", for logs.
pub fn describe(stream: &Stream) -> String {
    let version = match stream.conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_string(),
    };
    match stream.conn.negotiated_cipher_suite() {
        Some(suite) => format!("{version} {:?}", suite.suite()),
        None => version,
    }
}

/// Say goodbye properly (close_notify); errors do not matter any more.
pub fn close(stream: &mut Stream) {
    stream.conn.send_close_notify();
    let _ = stream.conn.complete_io(&mut stream.sock);
}
