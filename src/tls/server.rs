//! quill-smtpd's side of TLS: rustls with the `ring` provider, over any byte stream.
//!
//! The stream is generic (`Read + Write`), so the same code serves quill-smtpd's fd 0/1 and a
//! client's socket; timeouts belong to the stream underneath. A build without the `tls`
//! feature has `tls::none::server` in its place, whose [`ServerTls::load`] always fails.
#![forbid(unsafe_code)]

use crate::base::fail::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// This build speaks TLS: a readable certificate is worth offering STARTTLS for.
pub const AVAILABLE: bool = true;

/// A server's certificate chain and key, ready to accept connections.
pub struct ServerTls {
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Load a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1). Errors are temporary: a broken certificate is the administrator's to fix,
    /// and the mail should wait for it.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|iter| iter.collect::<std::result::Result<_, _>>())
            .map_err(|e| Error::temporary(format!("unable to read certificate {}: {e}", cert.display())))?;
        if certs.is_empty() {
            return Err(Error::temporary(format!(
                "unable to read certificate {}: no certificate in it",
                cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| Error::temporary(format!("unable to read key {}: {e}", key.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| Error::temporary(format!("unable to use certificate {}: {e}", cert.display())))?;
        Ok(ServerTls { config: Arc::new(config) })
    }
}

/// A server-side TLS session over `T`.
pub struct TlsStream<T: Read + Write> {
    connection: ServerConnection,
    io: T,
}

impl<T: Read + Write> TlsStream<T> {
    /// Run the whole handshake over `io` before returning: the caller must not have read
    /// anything the client sent after the command that started TLS (STARTTLS injection).
    pub fn accept(tls: &ServerTls, mut io: T) -> io::Result<TlsStream<T>> {
        let mut connection = ServerConnection::new(tls.config.clone()).map_err(io::Error::other)?;
        while connection.is_handshaking() {
            let (read, _) = connection.complete_io(&mut io)?;
            if read == 0 && connection.is_handshaking() && connection.wants_read() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed during handshake"));
            }
        }
        Ok(TlsStream { connection, io })
    }

    /// Read plaintext; 0 at the end of the stream (with or without the peer's close_notify).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match rustls::Stream::new(&mut self.connection, &mut self.io).read(buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            other => other,
        }
    }

    /// Write and send all of `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut stream = rustls::Stream::new(&mut self.connection, &mut self.io);
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Send close_notify, best effort.
    pub fn close(&mut self) {
        self.connection.send_close_notify();
        while self.connection.wants_write() {
            if self.connection.write_tls(&mut self.io).is_err() {
                break;
            }
        }
    }

    /// `TLSv1.3 TLS13_AES_256_GCM_SHA384`: the version and cipher suite, for headers and logs.
    pub fn describe(&self) -> String {
        let version = match self.connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "TLS".to_string(),
        };
        match self.connection.negotiated_cipher_suite() {
            Some(suite) => format!("{version} {:?}", suite.suite()),
            None => version,
        }
    }
}
