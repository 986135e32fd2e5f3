//! The base tier: generic Unix helpers that know nothing about mail, and import nothing of
//! the rest of Quill.
//!
//! `sys` (system calls nix does not wrap: the one module allowed `unsafe_code`), `confine`
//! (no_new_privs, Landlock and seccomp from a policy), `fail` (the
//! error type, the three outcomes and the exit codes), `log` (diagnostics and `log::safe` for
//! outside bytes), `privilege` (the one way to give up root), `children` (what a supervisor
//! does with its children), `date` (RFC 5322 dates), `tree` (walking a tree another user can
//! change, by descriptor), `trust` (whether a file that can name a program may be believed, by
//! its owner and mode).
// Cargo.toml denies `unsafe_code` for the whole crate; `sys` allows it for itself, every
// other module below says `forbid`.

pub mod children;
pub mod confine;
pub mod date;
pub mod fail;
pub mod log;
pub mod privilege;
pub mod sys;
pub mod tree;
pub mod trust;
