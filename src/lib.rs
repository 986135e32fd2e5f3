//! Quill: a mail transfer agent made of small programs.
//!
//! The library is layered: generic Unix helpers (`sys`, `fail`, `log`, `date`) know nothing
//! about mail; the mail modules above them (`address`, `envelope`, `control`, `queue`, …) use
//! them, never the other way round. Each program in `src/bin/` is a thin main over these.

pub mod sys;
pub mod fail;
pub mod log;
pub mod date;

pub mod address;
pub mod control;
pub mod envelope;
pub mod queuefile;
pub mod submit;
pub mod spawnproto;
pub mod users;
pub mod aliases;
pub mod dotqmail;
pub mod maildir;
pub mod mbox;
pub mod header;
pub mod bounce;
pub mod schedule;
pub mod smtp;
pub mod tcprules;
pub mod listener;
pub mod local;
pub mod lspawn;
pub mod rcptcheck;
pub mod sendconf;
pub mod sendstate;
pub mod sendloop;
pub mod clean;
pub mod dns;
pub mod route;
#[cfg(feature = "tls")]
pub mod remotetls;
pub mod smtpclient;
pub mod destinations;
pub mod enqueue;
pub mod inject;
pub mod tls;
pub mod smtpd;
pub mod admin;
