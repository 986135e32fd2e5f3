//! The caller's side of the qmail-queue protocol: every program that injects mail (smtpd,
//! inject, sendmail, local forwarding, send's bounces) goes through here.
//!
//! The queue program is `QMAILQUEUE` from the environment when set (a content filter that ends
//! by calling quill-queue), except in setuid programs; otherwise `quill-queue` beside the
//! running program.
//!
//! A program that called [`use_queue_writer`] (quill-smtpd) hands its messages to the
//! long-lived quill-queued over `queue/writer/socket` instead (`writer_client`), when no
//! `QMAILQUEUE` is set: no exec per message. Where the writer cannot be reached before a
//! message begins, the message goes to quill-queue as before.
#![forbid(unsafe_code)]

use crate::base::fail::{qq, qq_outcome, qq_text, Error, Outcome, Result};
use crate::mail::envelope::Envelope;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};

/// A message being handed to the queue: write the message, then `finish` with the envelope.
/// Dropping it unfinished abandons the message: nothing is queued.
pub struct Submission {
    way: Way,
}

enum Way {
    Program(Program),
    Writer(super::writer_client::Message),
}

/// Hand this process's messages to quill-queued rather than quill-queue, where it can be
/// reached (quill-smtpd and quill-send call it once).
pub fn use_queue_writer() {
    super::writer_client::enable();
}

/// The queue program, running: its stdin takes the message.
struct Program {
    child: Child,
    message: Option<std::io::BufWriter<ChildStdin>>,
    envelope: Option<std::fs::File>,
    reply: Option<std::fs::File>,
    write_failed: bool,
}

/// What the queue program said.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The queue program's process id (qmail's "qp").
    pub pid: u32,
}

/// The queue program to run.
pub fn queue_program() -> PathBuf {
    filter().unwrap_or_else(|| crate::mail::control::program("quill-queue"))
}

/// `QMAILQUEUE`, when it is set, not empty, and this is not a setuid program.
pub fn filter() -> Option<PathBuf> {
    if crate::base::sys::is_secure_exec() {
        return None;
    }
    std::env::var_os("QMAILQUEUE").filter(|q| !q.is_empty()).map(PathBuf::from)
}

impl Submission {
    /// Begin a message: to quill-queued when [`use_queue_writer`] was called, no `QMAILQUEUE`
    /// is set and the writer answers; otherwise to the queue program ([`Program::start`]).
    pub fn start() -> Result<Submission> {
        Submission::begin(false)
    }

    /// Begin a message from a local or authenticated sender, to be DKIM-signed by the queue
    /// with the key of its From: domain where there is one (src/mail/dkim.rs).
    pub fn start_signed() -> Result<Submission> {
        Submission::begin(true)
    }

    fn begin(sign: bool) -> Result<Submission> {
        if filter().is_none() {
            if let Some(mut message) = super::writer_client::begin() {
                message.sign = sign;
                return Ok(Submission { way: Way::Writer(message) });
            }
        }
        Program::start(sign).map(|program| Submission { way: Way::Program(program) })
    }

    /// Write message bytes. A write error (the queue program or the writer went away) is
    /// remembered and reported by `finish`.
    pub fn write(&mut self, bytes: &[u8]) {
        match &mut self.way {
            Way::Program(program) => program.write(bytes),
            Way::Writer(message) => message.write(bytes),
        }
    }

    /// Whether header fields can still be put at the top of the message at its end
    /// ([`Submission::add_top_fields`]): only quill-queued takes them (an `H` frame); the
    /// qmail-queue protocol of quill-queue and of filters has no way to.
    pub fn takes_top_fields(&self) -> bool {
        matches!(self.way, Way::Writer(_))
    }

    /// Header fields (whole, LF-ended, well formed, at most `proto::writer::MAX_FIELDS` bytes
    /// in all) for quill-queued to put at the top of the message; false, and nothing done,
    /// when it cannot be (quill-queue, a filter, too long, not fields).
    pub fn add_top_fields(&mut self, fields: &[u8]) -> bool {
        let Way::Writer(message) = &mut self.way else { return false };
        let total = message.fields.len() + fields.len();
        let mut all = message.fields.clone();
        all.extend_from_slice(fields);
        if total > super::proto::writer::MAX_FIELDS || !super::proto::writer::fields_well_formed(&all) {
            return false;
        }
        message.fields = all;
        true
    }

    /// Close the message, send the envelope, and map the queue's answer: quill-queue's exit
    /// code, or the same code as quill-queued's reply.
    pub fn finish(self, envelope: &Envelope) -> Result<Accepted> {
        self.finish_with_dsn(envelope, &crate::mail::dsn::Params::default())
    }

    /// [`Submission::finish`] with the message's DSN parameters (RFC 3461). Only quill-queued
    /// stores them: the qmail-queue protocol (quill-queue, a `QMAILQUEUE` filter) has no room
    /// for them, and a message that goes that way loses them (doc/INTERNALS.md).
    pub fn finish_with_dsn(self, envelope: &Envelope, dsn: &crate::mail::dsn::Params) -> Result<Accepted> {
        match self.way {
            Way::Program(program) => program.finish(envelope),
            Way::Writer(message) => message.finish(envelope, dsn),
        }
    }
}

impl Program {
    /// Start the queue program. Its stdin takes the message, its stdout the envelope, and, for
    /// a `QMAILQUEUE` filter, fd 6 an optional custom reply (qmail-queue exit 82).
    ///
    /// quill-queue itself never writes fd 6, so it gets none: without the descriptor to move
    /// into place there is no code to run between fork and exec, and std starts the program
    /// with posix_spawn (vfork-style, no copy of this process's page tables) instead of fork.
    fn start(sign: bool) -> Result<Program> {
        // Under no_new_privs the setuid quill-queue would run as the caller, unable to write
        // the queue: a temporary failure now says more than a permission error later.
        if crate::base::confine::active() && filter().is_none() {
            return Err(Error::queue(
                qq::CANNOT_EXEC,
                "unable to queue the message: quill-queued is not reachable and quill-queue cannot run under confinement (#4.3.0)",
            ));
        }
        let (envelope_read, envelope_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::queue(qq::CANNOT_EXEC, format!("unable to make a pipe: {e}")))?;
        let filter = filter();
        let program = filter.clone().unwrap_or_else(|| crate::mail::control::program("quill-queue"));
        let mut command = Command::new(&program);
        command.stdin(Stdio::piped()).stdout(Stdio::from(envelope_read));
        // Set or removed, never inherited: forwarding a stranger's message must not sign it.
        if sign {
            command.env(super::dkim::SIGN_VARIABLE, "1");
        } else {
            command.env_remove(super::dkim::SIGN_VARIABLE);
        }
        let mut reply = None;
        if filter.is_some() {
            let (reply_read, reply_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| Error::queue(qq::CANNOT_EXEC, format!("unable to make a pipe: {e}")))?;
            crate::base::sys::map_fds(&mut command, vec![(reply_write.as_raw_fd(), 6)]);
            reply = Some((reply_read, reply_write));
        }
        let mut child = command
            .spawn()
            .map_err(|e| Error::queue(qq::CANNOT_EXEC, format!("unable to run {}: {e}", program.display())))?;
        let reply = reply.map(|(read, write)| {
            drop(write);
            std::fs::File::from(read)
        });
        let stdin = child.stdin.take().map(|s| std::io::BufWriter::with_capacity(65536, s));
        Ok(Program {
            child,
            message: stdin,
            envelope: Some(std::fs::File::from(envelope_write)),
            reply,
            write_failed: false,
        })
    }

    /// Write message bytes. A write error (the queue program died) is remembered and reported
    /// by `finish` with the program's own exit code.
    fn write(&mut self, bytes: &[u8]) {
        if self.write_failed {
            return;
        }
        if let Some(m) = self.message.as_mut() {
            if m.write_all(bytes).is_err() {
                self.write_failed = true;
            }
        }
    }

    /// Close the message, send the envelope, wait for the queue program and map its exit code.
    fn finish(mut self, envelope: &Envelope) -> Result<Accepted> {
        if let Some(mut m) = self.message.take() {
            if m.flush().is_err() {
                self.write_failed = true;
            }
        }
        if let Some(mut e) = self.envelope.take() {
            let _ = e.write_all(&envelope.encode());
        }
        let pid = self.child.id();
        let status = self
            .child
            .wait()
            .map_err(|e| Error::queue(qq::BUG, format!("unable to wait for the queue program: {e}")))?;
        let code = match status.code() {
            Some(c) => c as u8,
            None => qq::BUG,
        };
        if code == 0 && !self.write_failed {
            return Ok(Accepted { pid });
        }
        if code == 0 {
            return Err(Error::queue(qq::WRITE_ERROR, qq_text(qq::WRITE_ERROR)));
        }
        if code == qq::CUSTOM_REPLY {
            let mut text = Vec::new();
            if let Some(mut r) = self.reply.take() {
                let _ = Read::by_ref(&mut r).take(1000).read_to_end(&mut text);
            }
            let outcome = if text.first() == Some(&b'D') { Outcome::Permanent } else { Outcome::Temporary };
            let words = String::from_utf8_lossy(text.get(1..).unwrap_or(&[])).trim_end().to_string();
            return Err(Error { outcome, code, message: if words.is_empty() { qq_text(code) } else { words } });
        }
        Err(Error { outcome: qq_outcome(code), code, message: qq_text(code) })
    }
}

/// Queue a whole message held in memory.
pub fn submit(message: &[u8], envelope: &Envelope) -> Result<Accepted> {
    let mut s = Submission::start()?;
    s.write(message);
    s.finish(envelope)
}
