//! quill-start's engine (doc/quill-start.8): the pipes between quill-send and its peers, the
//! stages started each under its own uid with the descriptors of doc/INTERNALS.md
//! "quill-start's pipes", and the supervision of the set: one stage that dies stops them all
//! (they are one pipeline), and the stop is ordered (quill-send first, so that it saves its
//! state). quill-queued, the queue writer, is not part of that pipeline: when it dies it alone
//! is started again (at most every [`RESTART_PAUSE`]), and meanwhile quill-smtpd runs
//! quill-queue as before. The generic parts (the signal tick, waiting, stopping a child) are `base::children`.
#![forbid(unsafe_code)]

use crate::base::children;
use crate::base::fail::{Error, Outcome, Result};
use crate::base::log;
use nix::sys::signal::Signal;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// How long a stopping quill-send may take: above its own wait for deliveries in flight
/// (`crate::send::sendloop::STOP_WAIT`), so that it can save its state.
const SEND_STOP_WAIT: Duration = Duration::from_secs(crate::send::sendloop::STOP_WAIT + 10);
/// How long the other stages get to notice their closed pipes, then to obey SIGTERM.
const STAGE_STOP_WAIT: Duration = Duration::from_secs(5);

/// The shortest time between two starts of quill-queued, so that one that cannot start (a
/// missing `queue/writer/`) costs a log line every few seconds, not a busy loop.
const RESTART_PAUSE: Duration = Duration::from_secs(5);

/// uid, gid and supplementary groups.
pub type Credentials = (u32, u32, Vec<u32>);

/// One running stage.
pub struct Stage {
    name: &'static str,
    child: Child,
    /// What it takes to start it again, for a stage that is restarted alone (quill-queued).
    restart: Option<Restart>,
}

/// A stage that is restarted alone when it exits.
struct Restart {
    credentials: Option<Credentials>,
    log_fd: OwnedFd,
    started: Instant,
    /// Its exit has been logged (it waits for [`RESTART_PAUSE`]).
    noticed: bool,
}

/// Look up a user by name, with group `quill` as its group.
fn credentials(user: &str, group: u32) -> Result<Credentials> {
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok((u.uid.as_raw(), group, vec![group])),
        Ok(None) => Err(Error::temporary(format!("unable to find user {user}"))),
        Err(e) => Err(Error::temporary(format!("unable to look up user {user}: {e}"))),
    }
}

/// The credentials of rspawn, clean and send when running as root.
fn users() -> Result<(Credentials, Credentials, Credentials)> {
    let group = match nix::unistd::Group::from_name("quill") {
        Ok(Some(g)) => g.gid.as_raw(),
        Ok(None) => return Err(Error::temporary("unable to find group quill")),
        Err(e) => return Err(Error::temporary(format!("unable to look up group quill: {e}"))),
    };
    Ok((credentials("quillr", group)?, credentials("quillq", group)?, credentials("quills", group)?))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::temporary(format!("unable to make a pipe: {e}")))
}

/// Run one stage. The Command (and with it the parent's copies of the descriptors handed to
/// the child) is dropped on return.
fn spawn(
    name: &'static str,
    args: &[OsString],
    stdin: Stdio,
    stdout: Stdio,
    credentials: Option<&Credentials>,
    log_fd: &OwnedFd,
) -> Result<Stage> {
    let path = crate::mail::control::bindir().join(name);
    let mut command = Command::new(&path);
    let stderr = log_fd.try_clone().map_err(|e| Error::temporary(format!("unable to duplicate stdout: {e}")))?;
    command.args(args).stdin(stdin).stdout(stdout).stderr(Stdio::from(stderr));
    if let Some((uid, gid, groups)) = credentials {
        crate::base::sys::set_credentials(&mut command, *uid, *gid, groups.clone());
    }
    // After the credentials: changing them clears the parent-death signal.
    crate::base::sys::die_with_parent(&mut command);
    let child = command.spawn().map_err(|e| Error::temporary(format!("unable to start {}: {e}", path.display())))?;
    Ok(Stage { name, child, restart: None })
}

/// quill-queued: stdin /dev/null, as clean's user; restarted alone when it exits.
fn spawn_writer(credentials: Option<&Credentials>, log_fd: &OwnedFd) -> Result<Stage> {
    let mut stage = spawn("quill-queued", &[], Stdio::null(), Stdio::null(), credentials, log_fd)?;
    let log_fd = log_fd.try_clone().map_err(|e| Error::temporary(format!("unable to duplicate stdout: {e}")))?;
    stage.restart =
        Some(Restart { credentials: credentials.cloned(), log_fd, started: Instant::now(), noticed: false });
    Ok(stage)
}

/// A restartable stage that exited: log it once, and start it again once [`RESTART_PAUSE`]
/// has passed since its last start. A failed start is tried again after the same pause.
fn restart(stage: &mut Stage, status: std::process::ExitStatus) {
    let Some(restart) = stage.restart.as_mut() else { return };
    if !restart.noticed {
        log::warning(&format!("{} exited ({status}); starting it again", stage.name));
        restart.noticed = true;
    }
    if restart.started.elapsed() < RESTART_PAUSE {
        return;
    }
    restart.started = Instant::now();
    match spawn(stage.name, &[], Stdio::null(), Stdio::null(), restart.credentials.as_ref(), &restart.log_fd) {
        Ok(fresh) => {
            stage.child = fresh.child;
            restart.noticed = false;
        }
        Err(e) => log::warning(&e.message),
    }
}

/// Stop the set: quill-send first (SIGTERM, so it waits for its deliveries and saves its
/// state), then the others, which exit when their input pipes close; SIGTERM and at last
/// SIGKILL for any that do not.
fn stop(stages: &mut [Stage]) {
    for stage in stages.iter_mut().filter(|s| s.name == "quill-send") {
        if children::running(&mut stage.child)
            && !children::ask_to_stop(&mut stage.child, Instant::now() + SEND_STOP_WAIT)
        {
            log::warning("quill-send did not stop in time; killing it");
            children::kill(&mut stage.child);
        }
    }
    // quill-queued has no pipe to notice: it is told at once (it stops taking connections and
    // finishes the messages it is committing).
    for stage in stages.iter_mut().filter(|s| s.restart.is_some()) {
        if children::running(&mut stage.child) {
            children::signal(&stage.child, Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + STAGE_STOP_WAIT;
    for stage in stages.iter_mut() {
        children::wait_until(&mut stage.child, deadline);
    }
    for stage in stages.iter_mut() {
        if children::running(&mut stage.child) {
            children::signal(&stage.child, Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + STAGE_STOP_WAIT;
    for stage in stages.iter_mut() {
        if !children::wait_until(&mut stage.child, deadline) {
            log::warning(&format!("{} did not stop in time; killing it", stage.name));
            children::kill(&mut stage.child);
        }
    }
}

/// Start the stages. On failure the ones already started are stopped.
pub fn start(default_delivery: OsString, root: bool) -> Result<Vec<Stage>> {
    let (rspawn_user, clean_user, send_user) = match root {
        true => {
            let (r, c, s) = users()?;
            (Some(r), Some(c), Some(s))
        }
        false => (None, None, None),
    };
    let log_fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::temporary(format!("unable to duplicate stdout: {e}")))?;
    let (l_req_r, l_req_w) = pipe()?;
    let (l_rep_r, l_rep_w) = pipe()?;
    let (c_req_r, c_req_w) = pipe()?;
    let (c_rep_r, c_rep_w) = pipe()?;
    let mut stages = Vec::new();
    let mut send_fds = vec![l_req_w, l_rep_r];
    let result = (|| {
        stages.push(spawn("quill-lspawn", &[default_delivery], l_req_r.into(), l_rep_w.into(), None, &log_fd)?);
        if crate::mail::control::bindir().join("quill-rspawn").is_file() {
            let (r_req_r, r_req_w) = pipe()?;
            let (r_rep_r, r_rep_w) = pipe()?;
            stages.push(spawn("quill-rspawn", &[], r_req_r.into(), r_rep_w.into(), rspawn_user.as_ref(), &log_fd)?);
            send_fds.extend([r_req_w, r_rep_r]);
        } else {
            log::warning("quill-rspawn is not installed: remote mail stays in the queue");
        }
        stages.push(spawn("quill-clean", &[], c_req_r.into(), c_rep_w.into(), clean_user.as_ref(), &log_fd)?);
        if crate::mail::control::bindir().join("quill-queued").is_file() {
            stages.push(spawn_writer(clean_user.as_ref(), &log_fd)?);
        } else {
            log::warning("quill-queued is not installed: quill-smtpd runs quill-queue for every message");
        }
        let send_log = log_fd.try_clone().map_err(|e| Error::temporary(format!("unable to duplicate stdout: {e}")))?;
        stages.push(spawn_send(send_fds, c_req_w, c_rep_r, send_user.as_ref(), send_log, &log_fd)?);
        Ok::<(), Error>(())
    })();
    match result {
        Ok(()) => Ok(stages),
        Err(e) => {
            stop(&mut stages);
            Err(e)
        }
    }
}

/// quill-send: fd 0 /dev/null, 1 and 2 the log, 3/4 lspawn, 5/6 rspawn if present, 7/8 clean.
fn spawn_send(
    spawners: Vec<OwnedFd>,
    clean_requests: OwnedFd,
    clean_replies: OwnedFd,
    credentials: Option<&Credentials>,
    stdout: OwnedFd,
    log_fd: &OwnedFd,
) -> Result<Stage> {
    let path = crate::mail::control::bindir().join("quill-send");
    let mut command = Command::new(&path);
    let stderr = log_fd.try_clone().map_err(|e| Error::temporary(format!("unable to duplicate stdout: {e}")))?;
    command.stdin(Stdio::null()).stdout(Stdio::from(stdout)).stderr(Stdio::from(stderr));
    let mut high = Vec::new();
    for fd in spawners.iter().chain([&clean_requests, &clean_replies]) {
        high.push(
            crate::base::sys::dup_at_least(fd.as_fd(), 10)
                .map_err(|e| Error::temporary(format!("unable to duplicate a pipe: {e}")))?,
        );
    }
    // Sources sit above 9, so no dup2 in the child overwrites one that a later one needs.
    // Without rspawn, 5 and 6 stay closed: that is how quill-send knows.
    let targets: &[i32] = if high.len() == 6 { &[3, 4, 5, 6, 7, 8] } else { &[3, 4, 7, 8] };
    let pairs = high.iter().map(std::os::fd::AsRawFd::as_raw_fd).zip(targets.iter().copied()).collect();
    crate::base::sys::map_fds(&mut command, pairs);
    if let Some((uid, gid, groups)) = credentials {
        crate::base::sys::set_credentials(&mut command, *uid, *gid, groups.clone());
    }
    crate::base::sys::die_with_parent(&mut command);
    let child = command.spawn().map_err(|e| Error::temporary(format!("unable to start {}: {e}", path.display())))?;
    Ok(Stage { name: "quill-send", child, restart: None })
}

/// Wait for a signal or a stage's exit; then stop the set.
pub fn supervise(stages: &mut [Stage], signals: &OwnedFd) -> ExitCode {
    loop {
        for caught in children::caught(signals, Duration::from_millis(1000)) {
            if children::is_stop(caught) {
                stop(stages);
                return ExitCode::SUCCESS;
            }
            let forward = match caught {
                libc::SIGHUP => Signal::SIGHUP,
                libc::SIGALRM => Signal::SIGALRM,
                _ => continue,
            };
            for stage in stages.iter().filter(|s| s.name == "quill-send") {
                children::signal(&stage.child, forward);
            }
        }
        for i in 0..stages.len() {
            if let Ok(Some(status)) = stages[i].child.try_wait() {
                if stages[i].restart.is_some() {
                    restart(&mut stages[i], status);
                    continue;
                }
                log::warning(&format!("{} exited ({status}); stopping the others", stages[i].name));
                stop(stages);
                return Outcome::Temporary.exit();
            }
        }
    }
}
