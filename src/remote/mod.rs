//! The remote stage, quill-remote (doc/quill-remote.8): `smtpclient` (one SMTP transaction
//! per message and its report), `route` (which hosts to try for a domain), `dns` (the
//! resolver and its wire format).
#![forbid(unsafe_code)]

pub mod dns;
pub mod route;
pub mod smtpclient;
