//! The remote stage, quill-remote (doc/quill-remote.8): `smtpclient` (one SMTP transaction per
//! message, step by step), over `connection` (one SMTP connection: stream, replies, EHLO
//! keywords, QUIT) and `message` (the message's sizes and its DATA encoding); `results` (what
//! became of each recipient, rendered once into the report); `route` (which hosts to try for
//! a domain, by recipient and by sender); `auth` (SMTP AUTH for a relay that wants it: the
//! credentials of control/smtpauth and the exchanges); `run` (one message, or the jobs of a
//! kept connection); the resolver is `mail::dns`.
#![forbid(unsafe_code)]

pub mod auth;
pub mod connection;
pub mod message;
pub mod results;
pub mod route;
pub mod run;
pub mod smtpclient;
