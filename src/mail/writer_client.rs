//! The client side of quill-queued (doc/quill-queued.8; protocol [`crate::mail::proto::writer`]),
//! behind [`crate::mail::submit::Submission`]: one connection per process (quill-smtpd runs one
//! process per SMTP session), kept between messages.
//!
//! A message goes to the writer only if the connection is up and greeted before the message
//! begins; otherwise the caller runs quill-queue, and says so once per process. Once a message
//! has begun, its bytes are gone into the socket: a writer lost mid-message is a temporary
//! failure (SMTP 451), never a silent fallback that would lose what was already sent.
#![forbid(unsafe_code)]

use crate::base::fail::{qq, qq_outcome, qq_text, Error, Outcome, Result};
use crate::mail::envelope::Envelope;
use crate::mail::proto::writer::{frame_head, Reply, Tag, GREETING, MAX_CHUNK, MAX_REPLY};
use crate::mail::submit::Accepted;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How long the writer may take to greet a new connection.
const GREETING_SECONDS: u64 = 10;
/// How long the writer may take to answer a complete message: its work is local I/O only (two
/// fsyncs at most); past this the message is reported as a temporary failure.
const REPLY_SECONDS: u64 = 600;

static ENABLED: AtomicBool = AtomicBool::new(false);
static WARNED: AtomicBool = AtomicBool::new(false);
/// The connection between two messages.
static KEPT: Mutex<Option<UnixStream>> = Mutex::new(None);

/// Use the writer from now on (quill-smtpd).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The one warning line of a process that falls back to quill-queue.
fn warn_once(reason: &str) {
    if !WARNED.swap(true, Ordering::Relaxed) {
        let instead = if crate::base::confine::active() {
            "not running quill-queue: this process is confined (no_new_privs), it would not be quillq"
        } else {
            "running quill-queue instead"
        };
        crate::base::log::warning(&format!("unable to reach quill-queued: {reason}; {instead}"));
    }
}

/// True when a kept connection still looks usable: the writer sends nothing between messages,
/// so anything readable is its end (idle timeout, restart).
fn alive(stream: &UnixStream) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

/// Connect and read the greeting; None (with the reason) when the writer is not there, busy or
/// broken.
fn connect() -> std::result::Result<UnixStream, String> {
    let path = crate::mail::queuefile::Layout::new(&crate::mail::control::home()).writer_socket();
    let mut stream = UnixStream::connect(&path).map_err(|e| format!("connect to {}: {e}", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(GREETING_SECONDS))).map_err(|e| e.to_string())?;
    let mut greeting = [0u8; 2];
    stream.read_exact(&mut greeting).map_err(|e| format!("read its greeting: {e}"))?;
    if greeting != GREETING {
        return Err("it is busy".to_string());
    }
    Ok(stream)
}

/// Begin a message on the writer, or None when the caller should run quill-queue.
pub fn begin() -> Option<Message> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let kept = KEPT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let stream = match kept.filter(alive) {
        Some(stream) => stream,
        None => match connect() {
            Ok(stream) => stream,
            Err(reason) => {
                warn_once(&reason);
                return None;
            }
        },
    };
    let mut buffer = Vec::with_capacity(5 + MAX_CHUNK);
    buffer.extend_from_slice(&[0u8; 5]);
    Some(Message { stream: Some(stream), buffer, broken: false, sign: false, fields: Vec::new() })
}

/// A message on its way to the writer: bytes are gathered into `M` frames of up to
/// [`MAX_CHUNK`] bytes. Dropped unfinished, it sends `A` (abandon).
pub struct Message {
    stream: Option<UnixStream>,
    /// A frame being filled: five bytes for its head, then the payload.
    buffer: Vec<u8>,
    broken: bool,
    /// Ask quill-queued for a DKIM signature (an `S` frame for the envelope instead of `E`).
    pub sign: bool,
    /// Header fields for quill-queued to put at the top of the message (an `H` frame before
    /// the envelope): quill-smtpd's Authentication-Results.
    pub fields: Vec<u8>,
}

impl Message {
    /// Take message bytes; a full frame is sent at once.
    pub fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.broken {
            let room = 5 + MAX_CHUNK - self.buffer.len();
            let take = room.min(bytes.len());
            self.buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buffer.len() == 5 + MAX_CHUNK {
                self.send_frame();
            }
        }
    }

    /// Send the frame being filled, if it holds anything.
    fn send_frame(&mut self) {
        let payload = self.buffer.len() - 5;
        if payload == 0 || self.broken {
            return;
        }
        self.buffer[..5].copy_from_slice(&frame_head(Tag::Message, payload as u32));
        let sent = match self.stream.as_mut() {
            Some(stream) => stream.write_all(&self.buffer).is_ok(),
            None => false,
        };
        self.broken |= !sent;
        self.buffer.truncate(5);
    }

    /// Send the rest and the envelope, and read the writer's answer.
    pub fn finish(mut self, envelope: &Envelope, dsn: &crate::mail::dsn::Params) -> Result<Accepted> {
        self.send_frame();
        let lost = || Error {
            outcome: Outcome::Temporary,
            code: qq::BUG,
            message: "lost the connection to quill-queued (#4.3.0)".to_string(),
        };
        let Some(mut stream) = self.stream.take() else { return Err(lost()) };
        if self.broken {
            return Err(lost());
        }
        if !self.fields.is_empty() {
            let mut frame = frame_head(Tag::Fields, self.fields.len() as u32).to_vec();
            frame.extend_from_slice(&self.fields);
            if stream.write_all(&frame).is_err() {
                return Err(lost());
            }
        }
        let mut encoded = envelope.encode();
        if !dsn.is_empty() {
            encoded.push(b'd');
            encoded.extend(dsn.encode());
            encoded.push(0);
        }
        let tag = if self.sign { Tag::SignedEnvelope } else { Tag::Envelope };
        let mut frame = frame_head(tag, encoded.len() as u32).to_vec();
        frame.extend_from_slice(&encoded);
        if stream.write_all(&frame).is_err() {
            return Err(lost());
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(REPLY_SECONDS)));
        let mut line = Vec::with_capacity(MAX_REPLY);
        let mut byte = [0u8; MAX_REPLY];
        // The writer sends nothing after its answer until the next message, so reading whatever
        // has arrived never takes bytes of a later reply.
        while !line.ends_with(b"\n") && line.len() < MAX_REPLY {
            match stream.read(&mut byte[..MAX_REPLY - line.len()]) {
                Ok(0) => break,
                Ok(n) => line.extend_from_slice(&byte[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        match Reply::decode(&line) {
            Some(Reply::Queued { pid, .. }) => {
                *KEPT.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stream);
                Ok(Accepted { pid })
            }
            // The writer closes after a refusal; so do we.
            Some(Reply::Failed(code)) => Err(Error { outcome: qq_outcome(code), code, message: qq_text(code) }),
            None => Err(lost()),
        }
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        // Unfinished: abandon the message and keep the connection for the next one.
        if let Some(mut stream) = self.stream.take() {
            if !self.broken && stream.write_all(&frame_head(Tag::Abandon, 0)).is_ok() {
                *KEPT.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stream);
            }
        }
    }
}
