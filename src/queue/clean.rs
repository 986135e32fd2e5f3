//! quill-clean's work: the queue operations quill-send may ask for (doc/INTERNALS.md "send ↔
//! clean protocol"), and the sweep of debris in `tmp/`.
//!
//! Requests and replies are read and written with `crate::mail::proto::clean`, which checks
//! every ID to be a queue id (decimal digits only), so no request can name anything outside
//! the queue's own directories. The caller runs a
//! batch of requests, then [`Cleaner::sync`] once, then writes the batch's replies: a removal
//! is answered only after the directory fsync that makes it durable.
#![forbid(unsafe_code)]

use crate::mail::proto::clean::{Request, Verb};
use crate::mail::queuefile::Layout;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Files in `tmp/` older than this are debris of a killed quill-queue (which gives up long
/// before: its own timeout must stay below this age).
pub const DEBRIS_AGE: Duration = Duration::from_secs(36 * 3600);

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
    pub fn perform(&mut self, request: &Request) -> Result<(), String> {
        let l = self.layout.clone();
        let id = &request.id;
        match request.verb {
            Verb::Move => {
                // No fsync: the rename is atomic, so after a crash the message is in todo/ or in
                // mess/, and quill-send finds it in either (doc/INTERNALS.md, commit point 2).
                std::fs::rename(l.todo().join(id), l.mess().join(id)).map_err(|e| format!("unable to move: {e}"))?;
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
                    Err(e) => return Err(format!("unable to remove: {e}")),
                }
            }
            Verb::Hold => {
                let to = l.hold().join(id);
                let from = match std::fs::rename(l.todo().join(id), &to) {
                    Ok(()) => l.todo(),
                    Err(e) if not_found(&e) => {
                        std::fs::rename(l.mess().join(id), &to).map_err(|e| format!("unable to hold: {e}"))?;
                        l.mess()
                    }
                    Err(e) => return Err(format!("unable to hold: {e}")),
                };
                self.touch(from);
                self.touch(self.layout.hold());
            }
            Verb::Delete => {
                std::fs::remove_file(l.hold().join(id)).map_err(|e| format!("unable to delete: {e}"))?;
                self.touch(l.hold());
            }
            Verb::Release => {
                std::fs::rename(l.hold().join(id), l.todo().join(id)).map_err(|e| format!("unable to release: {e}"))?;
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
