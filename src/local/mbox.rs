//! Delivery into an mbox file: append under two locks (a `PATH.lock` dot-lock and an fcntl
//! write lock, both given up after [`LOCK_WAIT`]), a `From ` line, the prefix, the body with
//! mboxrd quoting (`From `, `>From `, `>>From ` … at a line start get one more `>`), a blank
//! line, fsync. A failed write truncates the file back to its old length.
#![forbid(unsafe_code)]

use crate::base::fail::{Enhanced, Status};
use crate::local::Result;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How long to wait for both locks together before deferring the delivery.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);
/// A dot-lock older than this was left by a crashed program and is removed.
pub const STALE_DOTLOCK: Duration = Duration::from_secs(300);
/// Pause between two attempts to take a lock.
const LOCK_RETRY: Duration = Duration::from_millis(50);
/// Size of one write.
const CHUNK: usize = 256 * 1024;

/// The streaming `From ` quoter (mboxrd): feed it the body in pieces of any size.
#[derive(Debug)]
pub struct Quoter {
    /// At a line start: how many `>` have been seen and how much of `From ` matched after
    /// them. `None` in the middle of a line.
    start: Option<(usize, usize)>,
    /// The last byte passed through (to end the message with a newline).
    last: Option<u8>,
}

const FROM: &[u8] = b"From ";

impl Default for Quoter {
    fn default() -> Quoter {
        Quoter { start: Some((0, 0)), last: None }
    }
}

impl Quoter {
    /// Quote `input`, appending to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if let Some(&b) = input.last() {
            self.last = Some(b);
        }
        while !input.is_empty() {
            match self.start {
                None => match memchr::memchr(b'\n', input) {
                    Some(n) => {
                        out.extend_from_slice(&input[..=n]);
                        input = &input[n + 1..];
                        self.start = Some((0, 0));
                    }
                    None => {
                        out.extend_from_slice(input);
                        input = &[];
                    }
                },
                Some((quotes, matched)) => {
                    let b = input[0];
                    input = &input[1..];
                    if matched == 0 && b == b'>' {
                        self.start = Some((quotes + 1, 0));
                    } else if b == FROM[matched] {
                        if matched + 1 == FROM.len() {
                            out.push(b'>');
                            out.extend(std::iter::repeat_n(b'>', quotes));
                            out.extend_from_slice(FROM);
                            self.start = None;
                        } else {
                            self.start = Some((quotes, matched + 1));
                        }
                    } else {
                        out.extend(std::iter::repeat_n(b'>', quotes));
                        out.extend_from_slice(&FROM[..matched]);
                        out.push(b);
                        self.start = if b == b'\n' { Some((0, 0)) } else { None };
                    }
                }
            }
        }
    }

    /// End the message: flush a pending line start, add a newline if the body lacked one,
    /// then the blank line that separates messages.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some((quotes, matched)) = self.start {
            out.extend(std::iter::repeat_n(b'>', quotes));
            out.extend_from_slice(&FROM[..matched]);
        }
        if self.last.is_some_and(|b| b != b'\n') {
            out.push(b'\n');
        }
        out.push(b'\n');
    }
}

/// A held dot-lock; removed when dropped.
struct DotLock(Option<PathBuf>);

impl Drop for DotLock {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Take `PATH.lock` (O_EXCL). A directory the user may not write to gives no dot-lock (the
/// fcntl lock still protects the file: /var/mail is often writable only by group mail).
fn dotlock(path: &Path, deadline: Instant) -> Result<DotLock> {
    let lock = lock_path(path);
    loop {
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&lock) {
            Ok(_) => return Ok(DotLock(Some(lock))),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)) => {
                return Ok(DotLock(None));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let age = std::fs::symlink_metadata(&lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                if age.is_some_and(|a| a > STALE_DOTLOCK) {
                    let _ = std::fs::remove_file(&lock);
                    continue;
                }
            }
            Err(e) => return Err(failure(path, "lock", &e, false)),
        }
        if Instant::now() >= deadline {
            return Err(Status::temporary(
                Enhanced::MAILBOX,
                format!("Unable to lock mailbox {}: {} is held too long.", path.display(), lock.display()),
            ));
        }
        std::thread::sleep(LOCK_RETRY);
    }
}

/// Take an fcntl write lock on the whole file, retrying until `deadline`.
fn fcntl_lock(file: &File, path: &Path, deadline: Instant) -> Result<()> {
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    loop {
        match nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETLK(&lock)) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EACCES) | Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(failure(path, "lock", &io::Error::from(e), false)),
        }
        if Instant::now() >= deadline {
            return Err(Status::temporary(
                Enhanced::MAILBOX,
                format!("Unable to lock mailbox {}: timed out.", path.display()),
            ));
        }
        std::thread::sleep(LOCK_RETRY);
    }
}

/// What went wrong, for the report (see [`crate::local::file_failure`]).
fn failure(path: &Path, what: &str, err: &io::Error, written: bool) -> Status {
    crate::local::file_failure("mailbox", path, what, err, written)
}

/// Append one message to the mbox at `path`: `from_line` (with its newline), `prefix` (the
/// Return-Path and Delivered-To lines), then the quoted body.
pub fn deliver(path: &Path, from_line: &[u8], prefix: &[u8], body: &mut dyn Read) -> Result<()> {
    let deadline = Instant::now() + LOCK_WAIT;
    let _dotlock = dotlock(path, deadline)?;
    let (mut file, created) = open_append(path).map_err(|e| failure(path, "open", &e, false))?;
    fcntl_lock(&file, path, deadline)?;
    let old_length = file.metadata().map_err(|e| failure(path, "stat", &e, false))?.len();
    if let Err(err) = append(&mut file, from_line, prefix, body).and_then(|()| file.sync_all()) {
        // Leave the mailbox as it was rather than with half a message in it.
        let _ = file.set_len(old_length);
        let _ = file.sync_all();
        return Err(failure(path, "write", &err, true));
    }
    if created {
        // A new mailbox exists after a crash only once its directory entry is on disk too.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent).and_then(|d| d.sync_all()).map_err(|e| failure(path, "sync the directory of", &e, true))?;
    }
    Ok(())
}

/// Open the mailbox for appending; create it (mode 0600) if it does not exist. Also says
/// whether it was created.
fn open_append(path: &Path) -> io::Result<(File, bool)> {
    let mut options = OpenOptions::new();
    options.append(true).custom_flags(libc::O_CLOEXEC);
    match options.open(path) {
        Ok(file) => return Ok((file, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match options.clone().create_new(true).mode(0o600).open(path) {
        Ok(file) => Ok((file, true)),
        // Someone else created it in between: append to theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => options.open(path).map(|f| (f, false)),
        Err(e) => Err(e),
    }
}

fn append(file: &mut File, from_line: &[u8], prefix: &[u8], body: &mut dyn Read) -> io::Result<()> {
    let mut quoter = Quoter::default();
    // Both buffers grow only as far as the message needs: a small one costs no big allocation.
    let mut out = [from_line, prefix].concat();
    let mut input = Vec::new();
    loop {
        input.clear();
        let n = body.take(CHUNK as u64).read_to_end(&mut input)?;
        quoter.feed(&input, &mut out);
        if n < CHUNK {
            break;
        }
        if out.len() >= CHUNK {
            file.write_all(&out)?;
            out.clear();
        }
    }
    quoter.finish(&mut out);
    file.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(pieces: &[&[u8]]) -> Vec<u8> {
        let mut q = Quoter::default();
        let mut out = Vec::new();
        for p in pieces {
            q.feed(p, &mut out);
        }
        q.finish(&mut out);
        out
    }

    #[test]
    fn quoting() {
        let body: &[u8] = b"From a\nx From b\n>From c\n>>From d\n>Fro\nFrom\nFromage\n";
        let want: &[u8] = b">From a\nx From b\n>>From c\n>>>From d\n>Fro\nFrom\nFromage\n\n";
        assert_eq!(quote(&[body]), want);
        // Any split gives the same result.
        for cut in 0..body.len() {
            assert_eq!(quote(&[&body[..cut], &body[cut..]]), want, "cut at {cut}");
        }
        assert_eq!(quote(&[b"no newline"]), b"no newline\n\n");
        assert_eq!(quote(&[b">Fr"]), b">Fr\n\n");
        assert_eq!(quote(&[]), b"\n");
    }
}
