//! The send stage, quill-send (doc/quill-send.8), and quill-start (`start`), which starts it
//! with its peers.
//!
//! quill-send's engine is the `Sender` in `sendloop` (its poll loop, one bounded turn at a
//! time), whose work is split by concern: `pickup` (from `todo/`, and the state rebuilt at
//! start), `dispatch` (jobs to the spawners within the concurrency limits), `reports` (the
//! spawners' results), `finish` (bounce, then removal), `cleaning` (what quill-clean is asked
//! and answers), `administrator` (`quill queue …`, `sendmail -q`), `timers`, `views` (the info
//! files and the views `quill status` reads). Under them: `message` (a message and its
//! recipients as held), `pipes` (non-blocking descriptors), `sendconf` (the control files),
//! `schedule` (retry times and timers), `destinations` (per-destination concurrency and
//! back-off), `bounce` (bounce messages), `dormant` (the messages
//! at rest on disk beyond `queueactive`, and their loading and eviction). The info files' format is `mail::proto::info`.
#![forbid(unsafe_code)]

mod administrator;
pub mod bounce;
mod cleaning;
pub mod destinations;
mod dispatch;
pub mod dormant;
mod finish;
mod message;
mod pickup;
pub mod pipes;
mod reports;
pub mod schedule;
pub mod sendconf;
pub mod sendloop;
pub mod start;
mod timers;
mod views;
