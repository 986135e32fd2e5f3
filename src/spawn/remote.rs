//! What is quill-rspawn's own in the spawner skeleton (spawn::engine, doc/quill-rspawn.8): a
//! request carries every recipient of one message at one domain, quill-remote delivers them
//! as quillr in a process group of its own, and a run still going past its deadline
//! (`timeoutremotetotal`, the same deadline quill-remote keeps itself) is killed with its group.
//! With reuse on, requests for a domain with a backlog go to a kept `quill-remote -k` instead
//! (the engine's kept processes, keyed by the domain; doc/INTERNALS.md "Kept remote
//! connections").
#![forbid(unsafe_code)]

use crate::base::fail::{Enhanced, Status};
use crate::mail::address;
use crate::mail::control::{self, Control};
use crate::mail::proto::remote_report::{self, KeptJob};
use crate::mail::proto::spawn::{self as proto, Request};
use crate::mail::queuefile;
use crate::spawn::engine::{Ended, Exit, KeptLimits, Kind, Message, Started};
use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long handing a job to a kept quill-remote may block (it is waiting for one, so the
/// write normally finds room at once).
const HAND_TIMEOUT: Duration = Duration::from_secs(10);

/// quill-rspawn's part: the quill-remote it runs, and the bounds of kept connections.
pub struct Remote {
    program: PathBuf,
    limits: KeptLimits,
}

impl Remote {
    /// `control` gives the kept connections' bounds: `timeoutremoteidle`, `reuseremote`, and
    /// `concurrencyremote` for the processes at once (idle ones included).
    pub fn new(program: PathBuf, control: &Control) -> Remote {
        let number = |name: &str, default: u64| {
            control.number(name, default).unwrap_or_else(|e| {
                crate::base::log::warning(&format!("{e}; using {default}"));
                default
            })
        };
        let limits = KeptLimits {
            idle: Duration::from_secs(number("timeoutremoteidle", control::DEFAULT_TIMEOUTREMOTEIDLE)),
            jobs: usize::try_from(number("reuseremote", control::DEFAULT_REUSEREMOTE)).unwrap_or(usize::MAX),
            processes: usize::try_from(number("concurrencyremote", control::DEFAULT_CONCURRENCYREMOTE))
                .unwrap_or(usize::MAX)
                .max(1),
        };
        Remote { program, limits }
    }

    /// The time one message may take, from the same control file and stored size that
    /// quill-remote uses.
    fn allowed(size: u64) -> Duration {
        let total = remote_report::total_seconds(&Control::from_env()).unwrap_or(remote_report::DEFAULT_TOTAL_SECONDS);
        remote_report::total_time(total, size)
    }
}

/// A temporary failure of the mail system (`4.3.0`).
fn temporary(text: impl Into<String>) -> Status {
    Status::temporary(Enhanced::MAIL_SYSTEM, text)
}

/// The recipients' domain, in lower case.
fn domain(recipient: &[u8]) -> Vec<u8> {
    address::normal_domain(address::split(recipient).1)
}

impl Kind for Remote {
    /// The run's deadline, for the texts.
    type Job = Duration;
    const MALFORMED: &'static str = "malformed request";
    const ONE_RECIPIENT: bool = false;
    /// quill-remote cuts each text at 3000 bytes itself; this only bounds a broken one.
    const MAX_OUTPUT: usize = proto::MAX_FRAME;

    fn check(&mut self, request: &Request) -> Result<(), Status> {
        if !queuefile::valid_id(&request.id) {
            return Err(temporary("malformed message id in request"));
        }
        let domain = domain(&request.recipients[0]);
        if domain.is_empty() {
            return Err(Status::permanent(Enhanced::BAD_SYNTAX, "Sorry, the address has no domain."));
        }
        if request.recipients.iter().any(|r| self::domain(r) != domain) {
            return Err(temporary("request mixes recipients of several domains"));
        }
        Ok(())
    }

    fn start(&mut self, request: &Request, message: Message, output: OwnedFd) -> Result<Started<Duration>, Status> {
        // The same deadline quill-remote computes for itself (from the same control file and
        // the same stored size), then the margin.
        let allowed = Remote::allowed(message.size);
        let started = Instant::now();
        let mut command = Command::new(&self.program);
        command.arg(OsStr::from_bytes(&domain(&request.recipients[0]))).arg(OsStr::from_bytes(&request.sender));
        for r in &request.recipients {
            command.arg(OsStr::from_bytes(r));
        }
        let child = command
            .process_group(0)
            .stdin(Stdio::from(message.file))
            .stdout(Stdio::from(output))
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| temporary(format!("unable to run quill-remote: {e}")))?;
        // The Child is dropped without waiting: the engine reaps by pid.
        Ok(Started {
            pid: child.id() as i32,
            job: allowed,
            deadline: Some(started + allowed + remote_report::KILL_MARGIN),
        })
    }

    fn overdue(&mut self, slot: u32, allowed: &Duration) {
        crate::base::log::warning(&format!(
            "unable to wait longer for quill-remote in slot {slot}: past its deadline of {} s, killed",
            allowed.as_secs()
        ));
    }

    /// quill-remote's output folded into one result per recipient; a non-zero exit or a
    /// signal makes every recipient without a result of its own temporary (remote_report::fold).
    fn finish(&mut self, ended: Ended<Duration>) -> Vec<proto::Result> {
        if ended.killed {
            let status = Status::temporary(
                Enhanced::BAD_CONNECTION,
                format!(
                    "quill-remote ran past its deadline (control/timeoutremotetotal: {} s for this message) and was \
                     stopped; trying again later",
                    ended.job.as_secs()
                ),
            );
            return vec![proto::Result::from(&status); ended.count];
        }
        if ended.exit != Exit::Code(0) {
            crate::base::log::warning(&format!("quill-remote for slot {} ended badly: it {}", ended.slot, ended.exit));
        }
        remote_report::fold(&ended.output, ended.count)
    }

    /// With reuse on, a request may go to a kept connection (the engine starts one only for
    /// a request with the backlog mark: more mail waits for its destination). The key is the recipients' domain: every route
    /// (smtproutes, MX, TLS policy) is chosen by the domain alone, so one domain's messages
    /// share a route, and no connection is ever used for another domain.
    fn kept_key(&mut self, request: &Request) -> Option<Vec<u8>> {
        if self.limits.idle.is_zero() || self.limits.jobs <= 1 {
            return None;
        }
        Some(domain(&request.recipients[0]))
    }

    fn kept_limits(&self) -> KeptLimits {
        self.limits
    }

    /// `quill-remote -k SECONDS DOMAIN` with one end of a socket pair on its fd 0 and 1, in
    /// a process group of its own (killed with its group).
    fn start_kept(&mut self, key: &[u8]) -> Result<(i32, UnixStream), Status> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| temporary(format!("unable to make a socket pair: {e}")))?;
        let theirs = OwnedFd::from(theirs);
        let output = theirs.try_clone().map_err(|e| temporary(format!("unable to duplicate a socket: {e}")))?;
        ours.set_write_timeout(Some(HAND_TIMEOUT))
            .map_err(|e| temporary(format!("unable to set a socket's timeout: {e}")))?;
        let child = Command::new(&self.program)
            .arg("-k")
            .arg(self.limits.idle.as_secs().to_string())
            .arg(OsStr::from_bytes(key))
            .process_group(0)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::from(output))
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| temporary(format!("unable to run quill-remote: {e}")))?;
        Ok((child.id() as i32, ours))
    }

    /// The job's envelope as a frame, the message's descriptor passed with its first byte.
    fn hand(&mut self, socket: &UnixStream, request: &Request, message: &Message) -> Result<Started<Duration>, Status> {
        let allowed = Remote::allowed(message.size);
        let started = Instant::now();
        let frame = KeptJob { sender: request.sender.clone(), recipients: request.recipients.clone() }.encode();
        let failed = |e: std::io::Error| temporary(format!("unable to hand the message to quill-remote: {e}"));
        let sent = crate::base::sys::send_with_fd(socket.as_fd(), &frame, message.file.as_fd()).map_err(failed)?;
        (&*socket).write_all(&frame[sent..]).map_err(failed)?;
        Ok(Started { pid: 0, job: allowed, deadline: Some(started + allowed + remote_report::KILL_MARGIN) })
    }

    fn kept_report_end(output: &[u8]) -> Option<usize> {
        remote_report::kept_report_end(output)
    }
}
