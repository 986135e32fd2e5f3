//! Quill: a mail transfer agent made of small programs.
//!
//! The library is layered: generic Unix helpers (`sys`, `fail`, `log`, `date`) know nothing
//! about mail; the mail modules above them (`address`, `envelope`, `control`, `queue`, …) use
//! them, never the other way round. Each program in `src/bin/` is a thin main over these.

pub mod date;
pub mod fail;
pub mod log;
pub mod sys;
pub mod tree;

pub mod address;
pub mod admin;
pub mod aliases;
pub mod bounce;
pub mod clean;
pub mod control;
pub mod destinations;
pub mod dns;
pub mod dotqmail;
pub mod enqueue;
pub mod envelope;
pub mod header;
pub mod inject;
pub mod listener;
pub mod local;
pub mod lspawn;
pub mod maildir;
pub mod mbox;
pub mod queuefile;
pub mod rcptcheck;
#[cfg(feature = "tls")]
pub mod remotetls;
pub mod route;
pub mod schedule;
pub mod sendconf;
pub mod sendloop;
pub mod sendmailmodes;
pub mod sendstate;
pub mod smtp;
pub mod smtpclient;
pub mod smtpd;
pub mod spawnproto;
pub mod submit;
pub mod tcprules;
pub mod tls;
pub mod trust;
pub mod users;
