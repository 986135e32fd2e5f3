//! quill-queued's work (doc/quill-queued.8): a long-lived queue writer, running as quillq, that
//! takes messages from quill-smtpd over `queue/writer/socket` (the protocol is
//! [`crate::mail::proto::writer`]) and commits them as quill-queue does, with the same
//! checks, but with one `todo/` fsync for every group of messages that commit together.
//!
//! One thread per connection. Each thread reads its message with quill-queue's reader
//! ([`enqueue::read_message`]), writes and fsyncs its own file in `tmp/` (concurrent file
//! fsyncs share the file system's journal commits), renames it into `todo/`, and then waits in
//! [`GroupSync`]: one thread fsyncs `todo/` for every rename done before that fsync began, the
//! others wait for it. Only then is the message acknowledged, so the invariant of
//! doc/quill-queue.8 holds: a `K` reply means the file and its `todo/` entry are durable.
#![forbid(unsafe_code)]

use super::enqueue::{self, Invoker};
use crate::base::fail::{qq, Error, Result};
use crate::base::log;
use crate::mail::dsn::Params;
use crate::mail::envelope::Envelope;
use crate::mail::proto::writer::{decode_head, fields_well_formed, Reply, Tag, BUSY, GREETING};
use crate::mail::queuefile::{Header, Layout};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// At most this many connections at once; one more is told [`BUSY`] and its client runs
/// quill-queue instead. Each connection is one SMTP session of quill-smtpd.
pub const MAX_CONNECTIONS: usize = 200;
/// A session may wait this long between messages; then the writer closes it (the client
/// notices before its next message and connects again).
pub const IDLE_SECONDS: u64 = 300;
/// Inside a message, each read may wait this long: above quill-smtpd's own deadlines for a
/// read from its client and for a whole DATA (control/timeoutsmtpd 1200 s, timeoutsmtpddata
/// 1800 s by default), which bound how long it takes to pass a message on. Below quill-send's
/// 36-hour age for debris in `queue/tmp/`.
pub const MESSAGE_SECONDS: u64 = 3600;
/// A reply that cannot be written within this time is given up (the client is gone).
const WRITE_SECONDS: u64 = 60;
/// A connection thread's stack: the message itself lives on the heap (read_message).
const STACK_BYTES: usize = 256 * 1024;
/// How long a stopping writer waits for the messages it is committing.
const STOP_SECONDS: u64 = 10;

/// What the connection threads share.
struct Shared {
    layout: Layout,
    /// `control/`, where the DKIM keys are.
    control: PathBuf,
    pid: u32,
    /// Makes each tmp name unique among this process's threads.
    serial: AtomicU64,
    sync: GroupSync,
    connections: AtomicUsize,
}

/// The group commit of `todo/` (module comment). `renamed` counts renames into `todo/`;
/// every rename numbered up to `synced` is durable, and those up to `failed` (and above
/// `synced`) were covered by an fsync that failed.
#[derive(Default)]
pub struct GroupSync {
    state: Mutex<SyncState>,
    wake: Condvar,
}

#[derive(Default)]
struct SyncState {
    renamed: u64,
    synced: u64,
    failed: u64,
    syncing: bool,
    error: String,
}

impl GroupSync {
    /// The state; a thread that panicked holding it left it consistent (no step between two
    /// of its fields can panic), so poisoning is ignored.
    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Called right after a rename into `todo/`: returns once that rename is durable, after
    /// `sync` (the fsync of `todo/`) ran, in this thread or another, having begun after the
    /// rename. `after` runs once per successful `sync` (pulling quill-send's trigger once per
    /// group). An error means the fsync that covered this rename failed.
    pub fn wait_durable(&self, sync: impl Fn() -> io::Result<()>, after: impl Fn()) -> io::Result<()> {
        let mut state = self.lock();
        state.renamed += 1;
        let mine = state.renamed;
        loop {
            if state.synced >= mine {
                return Ok(());
            }
            if state.failed >= mine {
                return Err(io::Error::other(state.error.clone()));
            }
            if state.syncing {
                state = self.wake.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            state.syncing = true;
            let target = state.renamed;
            drop(state);
            let result = sync();
            if result.is_ok() {
                after();
            }
            state = self.lock();
            state.syncing = false;
            match result {
                Ok(()) => state.synced = state.synced.max(target),
                Err(e) => {
                    state.failed = state.failed.max(target);
                    state.error = e.to_string();
                }
            }
            self.wake.notify_all();
        }
    }
}

/// How a message's frames ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// An `E` frame with the envelope's length (or an `S` frame: true, sign the message).
    Envelope(usize, bool),
    /// An `A` frame.
    Abandon,
    /// The client closed before the message's first frame: the session is over.
    Closed,
}

/// The message bytes of one message as a reader: the payloads of its `M` frames, then end of
/// file at the `E` or `A` frame. A bad frame head is an error and stays in `bad`.
struct Frames<'a, R> {
    inner: &'a mut R,
    left: usize,
    end: Option<End>,
    seen: bool,
    bad: Option<String>,
    /// A read timed out (the client went quiet).
    timed_out: bool,
    /// The payload of the message's `H` frame: fields for the top of the message.
    fields: Option<Vec<u8>>,
}

impl<R: Read> Frames<'_, R> {
    fn new(inner: &mut R) -> Frames<'_, R> {
        Frames { inner, left: 0, end: None, seen: false, bad: None, timed_out: false, fields: None }
    }

    fn inner_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.inner.read(buf);
        if let Err(e) = &result {
            self.timed_out |= read_failure(e) == qq::TIMEOUT;
        }
        result
    }

    /// Read the next frame head unless a payload or the end is pending: after this, a message
    /// has begun (or the session ended).
    fn begin(&mut self) -> io::Result<()> {
        if self.left == 0 && self.end.is_none() {
            // An empty buffer reads the head only; the count is 0 whatever happened.
            let _ = self.read(&mut [])?;
        }
        Ok(())
    }

    /// Why reading failed, as the step to take: a bad frame or a timeout is refused with its
    /// code; a client that went away (a close inside a message) is an abandon.
    fn failure(&self) -> Step {
        if let Some(bad) = &self.bad {
            return Step::Refuse(Error::queue(qq::READ_ERROR, format!("unable to read message: {bad}")));
        }
        if self.timed_out {
            return Step::Refuse(Error::queue(qq::TIMEOUT, "timeout: the client stopped sending"));
        }
        Step::Over
    }
}

impl<R: Read> Read for Frames<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.end.is_some() {
                return Ok(0);
            }
            if self.left > 0 {
                if buf.is_empty() {
                    return Ok(0);
                }
                let want = self.left.min(buf.len());
                let n = self.inner_read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                self.left -= n;
                return Ok(n);
            }
            let mut head = [0u8; 5];
            let mut got = 0;
            while got < head.len() {
                match self.inner_read(&mut head[got..]) {
                    Ok(0) if got == 0 && !self.seen => {
                        self.end = Some(End::Closed);
                        return Ok(0);
                    }
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.seen = true;
            match decode_head(head) {
                Ok((Tag::Message, length)) => self.left = length,
                Ok((Tag::Envelope, length)) => self.end = Some(End::Envelope(length, false)),
                Ok((Tag::SignedEnvelope, length)) => self.end = Some(End::Envelope(length, true)),
                Ok((Tag::Abandon, _)) => self.end = Some(End::Abandon),
                Ok((Tag::Fields, length)) => {
                    let mut fields = vec![0u8; length];
                    read_fully(self, &mut fields)?;
                    let fault = if self.fields.is_some() {
                        Some("a second H frame")
                    } else if !fields_well_formed(&fields) {
                        Some("an H frame that is not whole header fields")
                    } else {
                        None
                    };
                    if let Some(fault) = fault {
                        self.bad = Some(fault.to_string());
                        return Err(io::Error::from(io::ErrorKind::InvalidData));
                    }
                    self.fields = Some(fields);
                }
                Err(e) => {
                    self.bad = Some(e.to_string());
                    return Err(io::Error::from(io::ErrorKind::InvalidData));
                }
            }
        }
    }
}

/// Read an `H` payload (at most `MAX_FIELDS` bytes) from the frames' input.
fn read_fully<R: Read>(frames: &mut Frames<'_, R>, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match frames.inner_read(&mut buf[got..]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A read failure's code: 52 for a client that went quiet, 54 otherwise.
fn read_failure(err: &io::Error) -> u8 {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => qq::TIMEOUT,
        _ => qq::READ_ERROR,
    }
}

/// The outcome of one message of a session.
enum Step {
    /// Go on with the next message (after a `K` reply or an abandon).
    Next,
    /// Close the session: the client closed or vanished; nothing to say.
    Over,
    /// Answer `Q code` and close the session (framing or queue trouble).
    Refuse(Error),
}

/// One message: read it and its envelope, commit, reply.
fn message<R: Read>(shared: &Shared, reader: &mut R, stream: &UnixStream, uid: u32, invoker: &Invoker) -> Step {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(IDLE_SECONDS)));
    let mut frames = Frames::new(reader);
    // The first frame head is read here, with the idle timeout: only then has a message begun.
    if frames.begin().is_err() {
        return frames.failure();
    }
    match frames.end {
        Some(End::Closed) => return Step::Over,
        Some(End::Abandon) => return Step::Next,
        _ => {}
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(MESSAGE_SECONDS)));
    let (secs, nanos) = now();
    let received = enqueue::received_line(shared.pid, invoker, secs);
    let body = match enqueue::read_message(&mut frames, &shared.layout.tmp()) {
        Ok(body) => body,
        Err(e) if e.code == qq::READ_ERROR => return frames.failure(),
        Err(e) => return Step::Refuse(e),
    };
    let (length, sign) = match frames.end {
        Some(End::Envelope(length, sign)) => (length, sign),
        Some(End::Abandon) => return Step::Next,
        _ => return Step::Over,
    };
    let mut bytes = vec![0u8; length];
    if let Err(e) = frames.inner.read_exact(&mut bytes) {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => Step::Over,
            _ => Step::Refuse(Error::io_code(read_failure(&e), "read envelope", &e)),
        };
    }
    let envelope = match Envelope::decode(&bytes) {
        Ok(envelope) => envelope,
        Err(e) => return Step::Refuse(e),
    };
    // Exactly one envelope and at most one DSN record: other bytes would be a framing error.
    let rest = &bytes[envelope.encode().len()..];
    let dsn = match rest {
        [] => Params::default(),
        [b'd', text @ .., 0] => match Params::decode(text) {
            Some(dsn) if dsn.recipients.len() <= envelope.recipients.len() => dsn,
            _ => return Step::Refuse(Error::queue(qq::ENVELOPE_FORMAT, "envelope format error: bad DSN record")),
        },
        _ => return Step::Refuse(Error::queue(qq::ENVELOPE_FORMAT, "envelope format error: bytes after the end")),
    };
    let mut received = received;
    // quill-smtpd's Authentication-Results (doc/quill-queued.8): under our Received line.
    received.extend(frames.fields.take().unwrap_or_default());
    if sign {
        received.extend(enqueue::dkim_field(&shared.control, &body, secs));
    }
    let header = Header { uid, pid: shared.pid, time: secs, nanos, envelope, dsn };
    match commit(shared, &header, &received, body) {
        Ok(id) => match write_reply(stream, Reply::Queued { id, pid: shared.pid }) {
            Ok(()) => Step::Next,
            Err(_) => Step::Over,
        },
        Err(e) => Step::Refuse(e),
    }
}

fn now() -> (u64, u32) {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

/// quill-queue's commit, with the `todo/` fsync shared by the group (module comment).
fn commit(shared: &Shared, header: &Header, received: &[u8], body: enqueue::Message) -> Result<u64> {
    let serial = shared.serial.fetch_add(1, Ordering::Relaxed);
    let name = enqueue::tmp_name(&shared.layout, shared.pid, Some(serial));
    let written = enqueue::write_file(name, header, received, body)?;
    let id = written.id;
    let target = enqueue::publish(&shared.layout, written)?;
    let layout = &shared.layout;
    match shared.sync.wait_durable(|| enqueue::sync_todo(layout), || crate::mail::queuefile::pull_trigger(layout)) {
        Ok(()) => Ok(id),
        Err(e) => Err(enqueue::take_back(&target, &e)),
    }
}

fn write_reply(mut stream: &UnixStream, reply: Reply) -> io::Result<()> {
    stream.write_all(&reply.encode())
}

/// One connection, from greeting to close.
fn serve(shared: &Shared, stream: UnixStream, uid: u32) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(WRITE_SECONDS)));
    if (&stream).write_all(GREETING).is_err() {
        return;
    }
    let invoker = Invoker::lookup(uid);
    let Ok(clone) = stream.try_clone() else { return };
    let mut reader = BufReader::with_capacity(crate::mail::proto::writer::MAX_CHUNK + 5, clone);
    loop {
        match message(shared, &mut reader, &stream, uid, &invoker) {
            Step::Next => {}
            Step::Over => return,
            Step::Refuse(e) => {
                // Errors only: a line per message would be too chatty (quill-send logs each).
                if e.code != qq::TIMEOUT {
                    log::warning(&format!("message from uid {uid} not queued: {}", e.message));
                }
                let _ = write_reply(&stream, Reply::Failed(e.code));
                return;
            }
        }
    }
}

/// The uids that may hand over messages: quilld (quill-smtpd in an installation), quills
/// (quill-send's bounces: confined, it cannot gain quill-queue's setuid) and our own (a
/// private instance, where every stage is the same user).
fn allowed_uids() -> Vec<u32> {
    let mut uids = vec![crate::base::sys::uids().1];
    for name in ["quilld", "quills"] {
        if let Some(user) = nix::unistd::User::from_name(name).ok().flatten() {
            uids.push(user.uid.as_raw());
        }
    }
    uids
}

/// Remove a socket left by an earlier run (only a socket: anything else there is trouble for
/// the administrator), then listen.
fn listen(path: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)
                .map_err(|e| Error::io_code(qq::QUEUE_TROUBLE, "remove the stale queue/writer/socket", &e))?;
        }
    }
    let listener =
        UnixListener::bind(path).map_err(|e| Error::io_code(qq::QUEUE_TROUBLE, "listen on queue/writer/socket", &e))?;
    // Anyone who can reach it may connect: the directories decide that, and the peer's uid is
    // checked on every connection.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| Error::io_code(qq::QUEUE_TROUBLE, "chmod queue/writer/socket", &e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io_code(qq::QUEUE_TROUBLE, "set queue/writer/socket non-blocking", &e))?;
    Ok(listener)
}

/// Take one connection: refuse it (busy, or a uid that may not queue here) or start its thread.
fn accept(shared: &Arc<Shared>, stream: UnixStream, allowed: &[u32]) {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let _ = stream.set_nonblocking(false);
    let uid = match getsockopt(&stream.as_fd(), PeerCredentials) {
        Ok(credentials) => credentials.uid(),
        Err(e) => {
            log::warning(&format!("unable to get the credentials of a client: {e}"));
            return;
        }
    };
    if !allowed.contains(&uid) {
        log::warning(&format!("refused a connection from uid {uid}: only quill-smtpd and quill-send may queue here"));
        return;
    }
    if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        shared.connections.fetch_sub(1, Ordering::SeqCst);
        let _ = (&stream).write_all(BUSY);
        return;
    }
    let mine = Arc::clone(shared);
    let spawned = std::thread::Builder::new().stack_size(STACK_BYTES).spawn(move || {
        serve(&mine, stream, uid);
        mine.connections.fetch_sub(1, Ordering::SeqCst);
    });
    if let Err(e) = spawned {
        shared.connections.fetch_sub(1, Ordering::SeqCst);
        log::warning(&format!("unable to start a thread: {e}"));
    }
}

/// The whole of quill-queued: set up, listen, serve until TERM or INT.
pub fn run() -> Result<()> {
    crate::base::sys::umask(0o027);
    crate::base::sys::ignore_signal(libc::SIGXFSZ);
    let home = crate::mail::control::home();
    std::env::set_current_dir(&home)
        .map_err(|e| Error::io_code(qq::HOME_TROUBLE, format!("switch to {}", home.display()), &e))?;
    std::env::set_current_dir("queue").map_err(|e| Error::io_code(qq::QUEUE_TROUBLE, "switch to queue", &e))?;
    enqueue::become_queue_owner()?;
    let layout = Layout { queue: PathBuf::from(".") };
    let socket = layout.writer_socket();
    let signals = crate::base::sys::signal_pipe(&[libc::SIGTERM, libc::SIGINT])
        .map_err(|e| Error::io_code(qq::BUG, "catch signals", &e))?;
    let listener = listen(&socket)?;
    let allowed = allowed_uids();
    let shared = Arc::new(Shared {
        layout,
        control: home.join("control"),
        pid: std::process::id(),
        serial: AtomicU64::new(0),
        sync: GroupSync::default(),
        connections: AtomicUsize::new(0),
    });
    // Set up: the socket listens and no thread runs yet (Landlock binds only the calling
    // thread and those it starts afterwards).
    crate::base::confine::apply(&crate::mail::jail::queued(&home));
    log::line(&format!(
        "status: listening on {}",
        crate::mail::queuefile::Layout::new(&home).writer_socket().display()
    ));
    loop {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds =
            [PollFd::new(listener.as_fd(), PollFlags::POLLIN), PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::io_code(qq::BUG, "poll", &io::Error::from(e))),
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            break;
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => accept(&shared, stream, &allowed),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors or memory: say so, and let the clients fall back.
                    log::warning(&format!("unable to accept a connection: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
    }
    // New clients fall back to quill-queue from here on; messages being committed finish.
    let _ = std::fs::remove_file(&socket);
    drop(listener);
    for _ in 0..STOP_SECONDS * 10 {
        if shared.connections.load(Ordering::SeqCst) == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    log::line("status: stopped");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn one_fsync_serves_every_rename_before_it() {
        let sync = Arc::new(GroupSync::default());
        let fsyncs = Arc::new(AtomicUsize::new(0));
        let triggers = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (sync, fsyncs, triggers) = (Arc::clone(&sync), Arc::clone(&fsyncs), Arc::clone(&triggers));
                std::thread::spawn(move || {
                    sync.wait_durable(
                        || {
                            fsyncs.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            Ok(())
                        },
                        || {
                            triggers.fetch_add(1, Ordering::SeqCst);
                        },
                    )
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let n = fsyncs.load(Ordering::SeqCst);
        assert!((1..16).contains(&n), "{n} fsyncs for 16 renames");
        assert_eq!(triggers.load(Ordering::SeqCst), n);
    }

    #[test]
    fn a_failed_fsync_fails_its_group_only() {
        let sync = GroupSync::default();
        let err = sync.wait_durable(|| Err(io::Error::other("disk on fire")), || {}).unwrap_err();
        assert!(err.to_string().contains("disk on fire"));
        sync.wait_durable(|| Ok(()), || {}).unwrap();
    }

    #[test]
    fn frames_give_the_message_then_end() {
        use crate::mail::proto::writer::frame_head;
        let mut wire = Vec::new();
        wire.extend_from_slice(&frame_head(Tag::Message, 3));
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&frame_head(Tag::Message, 2));
        wire.extend_from_slice(b"de");
        wire.extend_from_slice(&frame_head(Tag::Fields, 5));
        wire.extend_from_slice(b"X: 1\n");
        wire.extend_from_slice(&frame_head(Tag::Envelope, 4));
        let mut input = &wire[..];
        let mut frames = Frames::new(&mut input);
        let mut out = Vec::new();
        frames.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcde");
        assert_eq!(frames.end, Some(End::Envelope(4, false)));
        assert_eq!(frames.fields.as_deref(), Some(&b"X: 1\n"[..]));

        // A second H frame, or one that is no header field, is a framing error.
        for bad in [&b"H\0\0\0\x05X: 1\nH\0\0\0\x05X: 1\n"[..], b"H\0\0\0\x03X1\n"] {
            let mut input = bad;
            let mut frames = Frames::new(&mut input);
            assert!(frames.read_to_end(&mut Vec::new()).is_err());
            assert!(frames.bad.is_some());
        }

        let mut input = &b"Z\0\0\0\x01x"[..];
        let mut frames = Frames::new(&mut input);
        assert!(frames.read_to_end(&mut Vec::new()).is_err());
        assert!(frames.bad.is_some());

        let mut input = &b""[..];
        let mut frames = Frames::new(&mut input);
        assert_eq!(frames.read(&mut [0u8; 8]).unwrap(), 0);
        assert_eq!(frames.end, Some(End::Closed));
    }
}
