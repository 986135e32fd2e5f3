//! quill-send's pipes: the descriptors quill-start gives it, non-blocking, with the bytes
//! waiting to go out on each.
#![forbid(unsafe_code)]

use crate::mail::proto::spawn as spawnproto;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

/// The descriptors quill-start gives quill-send (doc/INTERNALS.md "quill-start's pipes").
pub struct Pipes {
    /// fd 3: requests to quill-lspawn.
    pub lspawn_requests: OwnedFd,
    /// fd 4: reports from quill-lspawn.
    pub lspawn_reports: OwnedFd,
    /// fds 5 and 6, if quill-rspawn runs.
    pub rspawn: Option<(OwnedFd, OwnedFd)>,
    /// fd 7: requests to quill-clean.
    pub clean_requests: OwnedFd,
    /// fd 8: replies from quill-clean.
    pub clean_replies: OwnedFd,
}

/// Bytes waiting to go out on a non-blocking pipe.
pub(super) struct Output {
    pub(super) file: File,
    pub(super) buffer: Vec<u8>,
}

impl Output {
    pub(super) fn new(fd: OwnedFd) -> io::Result<Output> {
        set_nonblocking(&fd)?;
        Ok(Output { file: File::from(fd), buffer: Vec::new() })
    }

    pub(super) fn queue(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Write what the pipe takes now.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        while !self.buffer.is_empty() {
            match self.file.write(&self.buffer) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.buffer.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Read everything available on a non-blocking descriptor. Returns false at end of file.
pub(super) fn read_available(file: &mut impl Read, mut sink: impl FnMut(&[u8])) -> io::Result<bool> {
    let mut chunk = [0u8; 16384];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => sink(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Make a descriptor non-blocking.
pub fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let raw = fd.as_fd().as_raw_fd();
    let flags = fcntl(raw, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    fcntl(raw, FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    Ok(())
}

/// A spawner's pair of pipes.
pub(super) struct Spawner {
    pub(super) requests: Output,
    pub(super) reports: File,
    pub(super) reader: spawnproto::Reader,
}

impl Spawner {
    pub(super) fn new(requests: OwnedFd, reports: OwnedFd) -> io::Result<Spawner> {
        set_nonblocking(&reports)?;
        Ok(Spawner { requests: Output::new(requests)?, reports: File::from(reports), reader: Default::default() })
    }
}
