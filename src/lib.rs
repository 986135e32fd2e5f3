//! Quill: a mail transfer agent made of small programs.
//!
//! The library is in tiers (doc/INTERNALS.md "Layout of src/", checked by tests/layout.rs):
//! `base` (generic Unix helpers that know nothing about mail), `mail` (the formats and codecs
//! that more than one program shares), `tls`, then one folder per stage of the pipeline. A
//! tier imports only the tiers below it; a stage imports no other stage. Each program in
//! `src/bin/` is a thin main over its stage.

pub mod base;
pub mod mail;
pub mod tls;

pub mod admin;
pub mod inject;
pub mod local;
pub mod queue;
pub mod remote;
pub mod send;
pub mod smtpd;
pub mod spawn;
pub mod tcpserver;
