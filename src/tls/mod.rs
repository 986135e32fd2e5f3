//! TLS on rustls for the stages that speak SMTP: `server` (quill-smtpd's STARTTLS), `client`
//! (quill-remote's STARTTLS) and `names` (what a verified certificate may match). It imports
//! only `base`.
//!
//! This folder is the only place that knows about the `tls` feature (tests/layout.rs checks
//! it): built without it, `none` provides `client` and `server` with the same types and
//! functions, each answering "TLS not available", so quill-smtpd never offers STARTTLS and
//! quill-remote never asks for it (and fails a destination that requires it).
#![forbid(unsafe_code)]

pub mod names;

#[cfg(feature = "tls")]
pub mod client;
#[cfg(feature = "tls")]
pub mod server;

#[cfg(not(feature = "tls"))]
mod none;
#[cfg(not(feature = "tls"))]
pub use none::{client, server};
