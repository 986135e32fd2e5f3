//! The smtpd stage, quill-smtpd (doc/quill-smtpd.8): `entry` (the program after its name, one
//! function for the binary and for quill-tcpserver's linked child), `session` (one SMTP connection from
//! greeting to QUIT), `config` (its control files and environment), `data` (the message data
//! after 354: end of data, hop count, the queue's reply), `auth` (the AUTH payloads and
//! checkpassword), `broker` (the process that runs checkpassword for a confined smtpd) and
//! `rcptcheck` (the RCPT decision: relaying, and whether a local recipient exists). The DNS
//! block- and allowlists asked at connect are `mail::dnsbl`.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod config;
pub mod data;
pub mod entry;
pub mod rcptcheck;
pub mod session;
