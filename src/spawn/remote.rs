//! What is quill-rspawn's own in the spawner skeleton (spawn::engine, doc/quill-rspawn.8): a
//! request carries every recipient of one message at one domain, quill-remote delivers them
//! as quillr in a process group of its own, and a run still going past its deadline
//! (`timeoutremotetotal`, the same deadline quill-remote keeps itself) is killed with its group.
#![forbid(unsafe_code)]

use crate::base::fail::{Enhanced, Status};
use crate::mail::address;
use crate::mail::proto::remote_report;
use crate::mail::proto::spawn::{self as proto, Request};
use crate::mail::queuefile;
use crate::spawn::engine::{Ended, Exit, Kind, Message, Started};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// quill-rspawn's part: the quill-remote it runs.
pub struct Remote {
    program: PathBuf,
}

impl Remote {
    pub fn new(program: PathBuf) -> Remote {
        Remote { program }
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
        let total = remote_report::total_seconds(&crate::mail::control::Control::from_env())
            .unwrap_or(remote_report::DEFAULT_TOTAL_SECONDS);
        let allowed = remote_report::total_time(total, message.size);
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
}
