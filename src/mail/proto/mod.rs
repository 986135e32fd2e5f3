//! One codec module per pipe protocol between the stages, writer and reader side by side, so
//! that both ends of a pipe read and write it with the same code (doc/INTERNALS.md).
//!
//! `clean` (quill-send ↔ quill-clean), `remote_report` (quill-remote → quill-rspawn, and the
//! time limit of a run both sides compute), `spawn` (quill-send ↔ quill-lspawn and
//! quill-rspawn: requests and reports), `control` (the administrator → quill-send, through the
//! trigger and control FIFOs), `info` (quill-send's state file `queue/info/ID`, written by
//! quill-send, read by `quill queue`), `views` (quill-send's views `queue/info/destinations`,
//! `channels`, `flight` and `errors`, read by `quill status` and `quill queue why`/`show`),
//! `writer` (quill-smtpd ↔ quill-queued over `queue/writer/socket`),
//! `local` (quill-lspawn → quill-local: one delivery's arguments, as a command line or as the
//! value its forked child runs with).
#![forbid(unsafe_code)]

pub mod clean;
pub mod control;
pub mod info;
pub mod local;
pub mod remote_report;
pub mod spawn;
pub mod views;
pub mod writer;
