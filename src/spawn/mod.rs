//! The spawn stage: quill-lspawn (doc/quill-lspawn.8) and quill-rspawn (doc/quill-rspawn.8).
//! `engine` is the one skeleton both run (requests, the table of running deliveries, reaping,
//! deadlines, reports, stopping); `local` and `remote` hold only what differs: how a request
//! is checked and a delivery started and read back.
#![forbid(unsafe_code)]

pub mod engine;
pub mod local;
pub mod remote;
