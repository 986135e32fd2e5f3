//! The queue stage: the programs that own the queue's files (uid quillq). `enqueue` is
//! quill-queue's work (doc/quill-queue.8), `clean` quill-clean's (doc/quill-clean.8),
//! `writer` quill-queued's (doc/quill-queued.8: enqueue's commit for many clients at once).
#![forbid(unsafe_code)]

pub mod clean;
pub mod enqueue;
pub mod writer;
