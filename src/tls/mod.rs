//! TLS on rustls, for the stages that speak SMTP: `server` (quill-smtpd's STARTTLS; built
//! without the `tls` feature it always refuses to load) and `client` (quill-remote's
//! STARTTLS, only with the `tls` feature). It imports only `base`.
#![forbid(unsafe_code)]

#[cfg(feature = "tls")]
pub mod client;
pub mod server;
