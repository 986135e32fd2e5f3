//! What stands in for `client` and `server` in a build without the `tls` feature: the same
//! types and functions, each answering "TLS not available", so that the stages using them
//! compile the same either way and carry no cfg of their own. No value of a session type can
//! exist here (each holds an `Infallible`), so their methods are never reached.
#![forbid(unsafe_code)]

/// quill-remote's side, without TLS.
pub mod client {
    use crate::base::fail::Error;
    pub use crate::tls::names::AcceptedNames;
    use std::convert::Infallible;
    use std::io::{self, Read, Write};
    use std::net::TcpStream;
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// This build does not speak TLS: quill-remote never offers it, and fails a destination
    /// that requires it.
    pub const AVAILABLE: bool = false;

    /// The words of every refusal here.
    const NOT_AVAILABLE: &str = "TLS not available: quill was built without the tls feature";

    /// No configuration can be made.
    pub struct Config(Infallible);

    /// No session can be made.
    pub struct Stream(Infallible);

    pub fn opportunistic() -> Result<Config, Error> {
        Err(Error::temporary(NOT_AVAILABLE))
    }

    pub fn verified(_ca_file: &Path, _names: AcceptedNames) -> Result<Config, Error> {
        Err(Error::temporary(NOT_AVAILABLE))
    }

    pub fn handshake(
        config: Config,
        _name: &str,
        _tcp: TcpStream,
        _timeout: Duration,
        _deadline: Instant,
    ) -> Result<Stream, Error> {
        match config.0 {}
    }

    impl Stream {
        pub fn socket(&self) -> &TcpStream {
            match self.0 {}
        }
        pub fn describe(&self) -> String {
            match self.0 {}
        }
        pub fn close(&mut self) {
            match self.0 {}
        }
    }

    impl Read for Stream {
        fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
            match self.0 {}
        }
    }

    impl Write for Stream {
        fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
            match self.0 {}
        }
        fn flush(&mut self) -> io::Result<()> {
            match self.0 {}
        }
    }
}

/// quill-smtpd's side, without TLS: no certificate loads, so STARTTLS is never offered.
pub mod server {
    use crate::base::fail::{Error, Result};
    use std::convert::Infallible;
    use std::io::{self, Read, Write};
    use std::marker::PhantomData;
    use std::path::Path;

    /// This build does not speak TLS: quill-smtpd never offers STARTTLS.
    pub const AVAILABLE: bool = false;

    /// No certificate can be loaded.
    pub struct ServerTls(Infallible);

    impl ServerTls {
        /// Always fails: this build has no TLS.
        pub fn load(_cert: &Path, _key: &Path) -> Result<ServerTls> {
            Err(Error::temporary("unable to use TLS: quill was built without the tls feature"))
        }
    }

    /// No session can be made.
    pub struct TlsStream<T: Read + Write> {
        never: Infallible,
        io: PhantomData<T>,
    }

    impl<T: Read + Write> TlsStream<T> {
        pub fn accept(tls: &ServerTls, _io: T) -> io::Result<TlsStream<T>> {
            match tls.0 {}
        }
        pub fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
            match self.never {}
        }
        pub fn write_all(&mut self, _bytes: &[u8]) -> io::Result<()> {
            match self.never {}
        }
        pub fn close(&mut self) {
            let _ = self.io;
            match self.never {}
        }
        pub fn describe(&self) -> String {
            match self.never {}
        }
    }
}
