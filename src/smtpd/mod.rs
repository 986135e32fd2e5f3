//! The smtpd stage, quill-smtpd (doc/quill-smtpd.8): `session` (one SMTP connection from
//! greeting to QUIT) and `rcptcheck` (whether a local recipient exists, asked at RCPT).
#![forbid(unsafe_code)]

pub mod rcptcheck;
pub mod session;
