//! The spawn stage: quill-lspawn (doc/quill-lspawn.8) and quill-rspawn (doc/quill-rspawn.8).
//! `lspawn` is quill-lspawn's engine; quill-rspawn's is still in its binary.
#![forbid(unsafe_code)]

pub mod lspawn;
