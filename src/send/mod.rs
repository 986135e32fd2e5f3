//! The send stage, quill-send (doc/quill-send.8), and quill-start, which starts it with its
//! peers. `sendloop` (the poll loop and the `Sender`), `sendconf` (its configuration),
//! the views in `info/`, `schedule` (retry times and timers),
//! `destinations` (per-destination concurrency and errors), `bounce` (bounce messages).
#![forbid(unsafe_code)]

mod administrator;
pub mod bounce;
mod cleaning;
pub mod destinations;
mod dispatch;
mod finish;
mod message;
mod pickup;
pub mod pipes;
mod reports;
pub mod schedule;
pub mod sendconf;
pub mod sendloop;
mod timers;
mod views;
