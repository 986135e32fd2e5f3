//! quill-clean's work: the queue operations quill-send may ask for (doc/INTERNALS.md "send ↔
//! clean protocol"), and the sweep of debris in `tmp/`.
//!
//! Requests and replies are read and written with `crate::mail::proto::clean`, which checks
//! every ID to be a queue id (decimal digits only), so no request can name anything outside
//! the queue's own directories. The caller runs a
//! batch of requests, then [`Cleaner::sync`] once, then writes the batch's replies: a removal
//! is answered only after the directory fsync that makes it durable; [`serve`] is that loop.
#![forbid(unsafe_code)]

use crate::base::fail::Error;
use crate::base::log;
use crate::mail::proto::clean::{Reply, Request, RequestReader, Verb};
use crate::mail::queuefile::Layout;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Files in `tmp/` older than this are debris of a killed quill-queue (which gives up long
/// before: its own timeout must stay below this age).
pub const DEBRIS_AGE: Duration = Duration::from_secs(36 * 3600);

/// How often `tmp/` is swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// Requests answered per batch at most (so replies never wait behind an endless stream).
const MAX_BATCH: usize = 1000;

/// Performs requests and remembers which directories need an fsync.
pub struct Cleaner {
    layout: Layout,
    /// Directories changed since the last sync.
    touched: Vec<PathBuf>,
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

impl Cleaner {
    /// A cleaner for the queue under `home`.
    pub fn new(home: &Path) -> Cleaner {
        Cleaner { layout: Layout::new(home), touched: Vec::new() }
    }

    fn touch(&mut self, dir: PathBuf) {
        if !self.touched.contains(&dir) {
            self.touched.push(dir);
        }
    }

    /// Carry out one request; Err holds the reason for the `!` reply.
    pub fn perform(&mut self, request: &Request) -> Result<(), Error> {
        let l = self.layout.clone();
        let id = &request.id;
        match request.verb {
            Verb::Move => {
                // No fsync: the rename is atomic, so after a crash the message is in todo/ or in
                // mess/, and quill-send finds it in either (doc/INTERNALS.md, commit point 2).
                std::fs::rename(l.todo().join(id), l.mess().join(id)).map_err(|e| Error::io("move", &e))?;
            }
            Verb::Remove => {
                // Only mess/: quill-send removes only messages it has moved there. Touching
                // todo/ or hold/ as well could hit a new message that got the inode of this one
                // (freed by the unlink below, or by an earlier try of this same request whose
                // reply was an fsync failure) and so lose acknowledged mail. info/ID belongs to
                // quill-send, which removes it itself after the reply.
                match std::fs::remove_file(l.mess().join(id)) {
                    Ok(()) => self.touch(l.mess()),
                    Err(e) if not_found(&e) => {}
                    Err(e) => return Err(Error::io("remove", &e)),
                }
            }
            Verb::Hold => {
                let to = l.hold().join(id);
                let from = match std::fs::rename(l.todo().join(id), &to) {
                    Ok(()) => l.todo(),
                    Err(e) if not_found(&e) => {
                        std::fs::rename(l.mess().join(id), &to).map_err(|e| Error::io("hold", &e))?;
                        l.mess()
                    }
                    Err(e) => return Err(Error::io("hold", &e)),
                };
                self.touch(from);
                self.touch(self.layout.hold());
            }
            Verb::Delete => {
                std::fs::remove_file(l.hold().join(id)).map_err(|e| Error::io("delete", &e))?;
                self.touch(l.hold());
            }
            Verb::Release => {
                std::fs::rename(l.hold().join(id), l.todo().join(id)).map_err(|e| Error::io("release", &e))?;
                self.touch(self.layout.hold());
                self.touch(self.layout.todo());
            }
        }
        Ok(())
    }

    /// True when some request since the last sync changed a directory.
    pub fn needs_sync(&self) -> bool {
        !self.touched.is_empty()
    }

    /// fsync every directory changed since the last sync.
    pub fn sync(&mut self) -> io::Result<()> {
        for dir in std::mem::take(&mut self.touched) {
            std::fs::File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Remove files in `tmp/` older than [`DEBRIS_AGE`] at `now`; returns how many.
    pub fn sweep_tmp(&self, now: SystemTime) -> io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.layout.tmp())? {
            let entry = entry?;
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let old = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age > DEBRIS_AGE);
            if old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Sweep `tmp/`, saying what was removed or why it could not be.
pub fn sweep(cleaner: &Cleaner) {
    match cleaner.sweep_tmp(SystemTime::now()) {
        Ok(0) => {}
        Ok(n) => log::line(&format!("removed {n} stale files from tmp/")),
        Err(e) => log::warning(&format!("unable to sweep tmp/: {e}")),
    }
}

/// True when `input` has bytes (or end of file) waiting right now.
fn input_waiting(input: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(input, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// quill-clean's loop: read requests from `input` (quill-send's pipe) and carry them out in
/// batches (everything waiting, at most [`MAX_BATCH`]), sync the changed directories once per
/// batch, then write the batch's replies to `output`, in order; sweep `tmp/` every
/// [`SWEEP_INTERVAL`]. Returns at end of file on `input`; an error reading or writing the pipes
/// ends it (the caller exits 111 and quill-start stops the set).
pub fn serve(cleaner: &mut Cleaner, input: BorrowedFd<'_>, output: &mut impl Write) -> Result<(), Error> {
    sweep(cleaner);
    let mut last_sweep = Instant::now();
    let mut reader = RequestReader::default();
    // (reply, is a removal) for the batch in progress.
    let mut replies: Vec<(Reply, bool)> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if replies.is_empty() {
            let wait = SWEEP_INTERVAL.saturating_sub(last_sweep.elapsed());
            let mut fds = [PollFd::new(input, PollFlags::POLLIN)];
            let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    sweep(cleaner);
                    last_sweep = Instant::now();
                    continue;
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::temporary(format!("unable to poll fd 0: {e}"))),
            }
        }
        let n = match nix::unistd::read(input.as_raw_fd(), &mut chunk) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::temporary(format!("unable to read requests: {e}"))),
        };
        let eof = n == 0;
        reader.push(&chunk[..n]);
        while let Some(parsed) = reader.next_request() {
            let reply = match parsed {
                Ok(request) => {
                    let result = cleaner.perform(&request);
                    (Reply { id: request.id, result }, request.verb == Verb::Remove)
                }
                Err(refused) => (refused, false),
            };
            replies.push(reply);
        }
        if !eof && replies.len() < MAX_BATCH && input_waiting(input) {
            continue;
        }
        if cleaner.needs_sync() {
            if let Err(e) = cleaner.sync() {
                log::warning(&format!("unable to sync queue directories: {e}"));
                for (reply, removal) in replies.iter_mut() {
                    if *removal && reply.result.is_ok() {
                        reply.result = Err(Error::io("sync the queue", &e));
                    }
                }
            }
        }
        let text: Vec<u8> = replies.drain(..).flat_map(|(reply, _)| reply.encode()).collect();
        output.write_all(&text).and_then(|()| output.flush()).map_err(|e| Error::io("write replies", &e))?;
        if eof {
            return Ok(());
        }
        if last_sweep.elapsed() >= SWEEP_INTERVAL {
            sweep(cleaner);
            last_sweep = Instant::now();
        }
    }
}
