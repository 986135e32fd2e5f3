//! The inject stage: local submission by quill-inject (doc/quill-inject.8) and sendmail
//! (doc/sendmail.8). `message` (make a composed message a proper one and queue it),
//! `sendmailmodes` (sendmail's other modes: `-bs`, `-bp`, `-bi`, `-q`).
#![forbid(unsafe_code)]

pub mod message;
pub mod sendmailmodes;
