//! The local stage, quill-local (doc/quill-local.8): `delivery` (the instructions for one
//! address and carrying them out), `maildir` and `mbox` (the two mailbox formats).
#![forbid(unsafe_code)]

pub mod delivery;
pub mod maildir;
pub mod mbox;
