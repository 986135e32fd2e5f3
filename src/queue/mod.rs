//! The queue stage: the programs that own the queue's files (uid quillq). `enqueue` is
//! quill-queue's work (doc/quill-queue.8), `clean` quill-clean's (doc/quill-clean.8).
#![forbid(unsafe_code)]

pub mod clean;
pub mod enqueue;
