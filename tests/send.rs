//! quill-send, quill-clean and quill-start, run for real.
//!
//! quill-send runs directly (not through quill-start) with its descriptors wired to this test:
//! the test plays the spawners on the other ends of fds 3/4 (and 5/6), reading requests with
//! `mail::proto::spawn::Reader` and answering the reports each test chooses; the real quill-clean sits
//! on fds 7/8. Messages are written into the queue as quill-queue writes them (header, message,
//! rename into `todo/` under the inode number), so each test knows their ids and can choose
//! their header time. Bounces go through QMAILQUEUE: a small script that runs the real
//! quill-queue when it is built beside quill-send, or else writes the same queue files itself
//! (and that can be told to fail, to test bounce retries).
mod common;

use common::{bin, files, home, is_root, wait_for, TempDir};
use quill::base::fail::Outcome;
use quill::mail::envelope::Envelope;
use quill::mail::proto::spawn::{Reader, Report, Request, Result as SpawnResult};
use quill::mail::queuefile::{Header, Layout};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(15);
const ME: &str = "test.example";
const SENDER: &str = "sender@remote.example";

fn now() -> u64 {
    quill::base::date::now()
}

/// The test's end of one spawner's pipes.
struct FakeSpawner {
    requests: File,
    reports: File,
    reader: Reader,
}

impl FakeSpawner {
    /// The next request send makes, waiting at most `limit`.
    fn next(&mut self, limit: Duration) -> Option<Request> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let deadline = Instant::now() + limit;
        loop {
            if let Some(frame) = self.reader.next_frame() {
                return Some(Request::decode(&frame).expect("a well-formed request"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut fds = [PollFd::new(self.requests.as_fd(), PollFlags::POLLIN)];
            let wait = PollTimeout::try_from(left.min(Duration::from_millis(100))).expect("timeout");
            if poll(&mut fds, wait).unwrap_or(0) == 0 {
                continue;
            }
            let mut chunk = [0u8; 65536];
            match self.requests.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.reader.push(&chunk[..n]),
            }
        }
    }

    /// Exactly `n` requests (fails the test if they do not come).
    fn take(&mut self, n: usize) -> Vec<Request> {
        (0..n).map(|i| self.next(LIMIT).unwrap_or_else(|| panic!("request {} of {n} did not come", i + 1))).collect()
    }

    fn answer(&mut self, slot: u32, results: &[(Outcome, &str)]) {
        let report = Report {
            slot,
            results: results.iter().map(|(o, t)| SpawnResult::new(*o, t.as_bytes().to_vec())).collect(),
        };
        self.reports.write_all(&report.encode()).expect("write report");
    }
}

/// quill-send and quill-clean on a home, with the test as the spawners.
struct Rig {
    home: PathBuf,
    send: Child,
    clean: Child,
    local: FakeSpawner,
    remote: Option<FakeSpawner>,
    log: PathBuf,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

/// The queue program quill-send's bounces go to: a script that refuses (exit 53, disk full)
/// while `HOME/queue-refuses` exists, and otherwise runs the real quill-queue if it is built,
/// or else writes a queue file the way quill-queue does.
fn queue_program(home: &Path) -> PathBuf {
    let script = home.join("fake-queue.sh");
    let real = bin("quill-queue");
    let work = if real.is_file() {
        format!("exec '{}'\n", real.display())
    } else {
        r#"q="$QUILL_HOME/queue"
t="$q/tmp/fake.$$"
cat > "$t.msg" || exit 54
cat <&1 > "$t.env" || exit 54
{ printf 'u%s\000p%s\000t%s\000' "$(id -u)" "$$" "$(date +%s)"; cat "$t.env" "$t.msg"; } > "$t" || exit 53
rm -f "$t.msg" "$t.env"
mv "$t" "$q/todo/$(stat -c %i "$t")" || exit 66
printf x > "$q/lock/trigger"
exit 0
"#
        .to_string()
    };
    let text = format!(
        "#!/bin/sh\n# Message on fd 0, envelope on fd 1.\n[ -e \"$QUILL_HOME/queue-refuses\" ] && exit 53\n{work}"
    );
    common::write_script(&script, text);
    script
}

impl Rig {
    fn start(home: &Path, tag: &str, remote: bool) -> Rig {
        let log = home.join(format!("{tag}.log"));
        let log_file = || std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let (l_req_r, l_req_w) = pipe();
        let (l_rep_r, l_rep_w) = pipe();
        let (c_req_r, c_req_w) = pipe();
        let (c_rep_r, c_rep_w) = pipe();
        let clean = Command::new(bin("quill-clean"))
            .env("QUILL_HOME", home)
            .stdin(Stdio::from(c_req_r))
            .stdout(Stdio::from(c_rep_w))
            .stderr(log_file())
            .spawn()
            .expect("start quill-clean");
        let mut fds: Vec<(OwnedFd, i32)> = vec![(l_req_w, 3), (l_rep_r, 4), (c_req_w, 7), (c_rep_r, 8)];
        let mut remote_ends = None;
        if remote {
            let (r_req_r, r_req_w) = pipe();
            let (r_rep_r, r_rep_w) = pipe();
            fds.extend([(r_req_w, 5), (r_rep_r, 6)]);
            remote_ends = Some((r_req_r, r_rep_w));
        }
        let high: Vec<(OwnedFd, i32)> =
            fds.iter().map(|(fd, to)| (quill::base::sys::dup_at_least(fd.as_fd(), 30).expect("dup"), *to)).collect();
        let mut command = Command::new(bin("quill-send"));
        command.env("QUILL_HOME", home).stdin(Stdio::null()).stdout(log_file()).stderr(log_file());
        command.env("QMAILQUEUE", queue_program(home));
        quill::base::sys::map_fds(&mut command, high.iter().map(|(fd, to)| (fd.as_raw_fd(), *to)).collect());
        let send = command.spawn().expect("start quill-send");
        drop(high);
        drop(fds);
        let spawner = |requests: OwnedFd, reports: OwnedFd| FakeSpawner {
            requests: File::from(requests),
            reports: File::from(reports),
            reader: Reader::default(),
        };
        let rig = Rig {
            home: home.to_path_buf(),
            send,
            clean,
            local: spawner(l_req_r, l_rep_w),
            remote: remote_ends.map(|(r, w)| spawner(r, w)),
            log,
        };
        assert!(rig.wait_log("status: local 0/"), "quill-send did not start; log:\n{}", rig.log());
        rig
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) -> bool {
        wait_for(LIMIT, || self.log().contains(needle))
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.send.id() as i32), signal);
    }

    /// Wait for quill-send to exit (bounded); None if it did not.
    fn wait_send(&mut self) -> Option<ExitStatus> {
        let mut status = None;
        wait_for(Duration::from_secs(20), || {
            status = self.send.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// Kill quill-send without warning, as a crash would.
    fn crash(mut self) {
        let _ = self.send.kill();
        let _ = self.send.wait();
        let clean = &mut self.clean;
        wait_for(LIMIT, || clean.try_wait().ok().flatten().is_some());
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for child in [&mut self.send, &mut self.clean] {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Write a message into `queue/DIR/` the way quill-queue does; returns its id.
fn write_message(home: &Path, dir: &str, sender: &str, rcpts: &[&str], time: u64, body: &str) -> u64 {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let header = Header {
        uid: quill::base::sys::uids().0,
        pid: std::process::id().wrapping_mul(1000).wrapping_add(n),
        time,
        nanos: 0,
        envelope: Envelope {
            sender: sender.as_bytes().to_vec(),
            recipients: rcpts.iter().map(|r| r.as_bytes().to_vec()).collect(),
        },
        dsn: Default::default(),
    };
    let mut bytes = header.encode();
    bytes.extend_from_slice(format!("Received: (quill-queue test)\nSubject: {body}\n\n{body}\n").as_bytes());
    let tmp = home.join(format!("queue/tmp/test.{}.{n}", std::process::id()));
    std::fs::write(&tmp, &bytes).expect("write message");
    let id = std::fs::metadata(&tmp).expect("stat").ino();
    std::fs::rename(&tmp, home.join("queue").join(dir).join(id.to_string())).expect("rename");
    id
}

/// Queue a new message and wake quill-send.
fn inject(home: &Path, sender: &str, rcpts: &[&str], subject: &str) -> u64 {
    let id = write_message(home, "todo", sender, rcpts, now(), subject);
    quill::mail::queuefile::pull_trigger(&Layout::new(home));
    id
}

/// Every message in todo/ or mess/ with this envelope sender: (id, header, message).
fn queued_from(home: &Path, sender: &str) -> Vec<(u64, Header, String)> {
    let mut found = Vec::new();
    for dir in ["todo", "mess"] {
        for path in files(&home.join("queue").join(dir)) {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let Ok((header, len)) = Header::decode(&bytes) else { continue };
            if header.envelope.sender == sender.as_bytes() {
                let id = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()).unwrap_or(0);
                found.push((id, header, String::from_utf8_lossy(&bytes[len..]).into_owned()));
            }
        }
    }
    found
}

fn wait_bounce(home: &Path, sender: &str) -> (u64, Header, String) {
    let mut found = None;
    wait_for(LIMIT, || {
        found = queued_from(home, sender).pop();
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no message from <{sender}> was queued"))
}

fn rcpt(r: &Request) -> String {
    String::from_utf8_lossy(&r.recipients[0]).into_owned()
}

fn basic_home(tag: &str, extra: &[(&str, &str)]) -> TempDir {
    let mut controls = vec![("me", "test.example\n")];
    controls.extend_from_slice(extra);
    home(tag, &controls)
}

fn check_rfc3464(bounce: &str, to: &str, failed: &str, status: &str) {
    for needle in [
        format!("From: MAILER-DAEMON@{ME}\n"),
        format!("To: {to}\n"),
        "Content-Type: multipart/report; report-type=delivery-status;".to_string(),
        "Content-Type: text/plain".to_string(),
        "Content-Type: message/delivery-status\n\n".to_string(),
        format!("Reporting-MTA: dns; {ME}\n"),
        "Arrival-Date: ".to_string(),
        format!("Final-Recipient: rfc822; {failed}\nAction: failed\nStatus: {status}\nDiagnostic-Code: x-quill; "),
        "Content-Type: text/rfc822-headers\n\nReceived: (quill-queue test)\nSubject: ".to_string(),
    ] {
        assert!(bounce.contains(&needle), "bounce lacks {needle:?}:\n{bounce}");
    }
}

#[test]
fn deliveries_deferral_restart_and_bounce() {
    let h = basic_home("results", &[]);
    let mut rig = Rig::start(h.path(), "first", false);
    let id = inject(h.path(), SENDER, &["a@test.example", "b@test.example", "c@test.example"], "hello");
    let requests = rig.local.take(3);
    let q = &rig.home.join("queue");
    assert!(wait_for(LIMIT, || !q.join(format!("todo/{id}")).exists() && q.join(format!("mess/{id}")).exists()));
    for r in &requests {
        assert_eq!(r.id, id.to_string().into_bytes());
        assert_eq!(r.sender, SENDER.as_bytes());
        assert_eq!(r.recipients.len(), 1);
        assert!(!r.retry, "a first attempt is not a retry");
        let answer = match rcpt(r).as_str() {
            "a@test.example" => (Outcome::Success, "did 1+0+0/"),
            "b@test.example" => (Outcome::Permanent, "Sorry, no mailbox here by that name. (#5.1.1)"),
            "c@test.example" => (Outcome::Temporary, "temporary trouble (#4.3.0)"),
            other => panic!("unexpected recipient {other}"),
        };
        rig.local.answer(r.slot, &[answer]);
    }
    // After the attempt, the info file says: a delivered, b failed, c waiting.
    let info_dir = q.join("info");
    let mut info = None;
    wait_for(LIMIT, || {
        info = quill::mail::proto::info::read(&info_dir, id).ok().flatten();
        info.is_some()
    });
    let info = info.expect("info file after a deferral");
    let states: Vec<String> =
        info.entries.iter().map(|e| format!("{}:{:?}", String::from_utf8_lossy(&e.address), e.progress)).collect();
    assert!(states[0].starts_with("a@test.example:Delivered"), "{states:?}");
    assert!(states[1].starts_with("b@test.example:Failed"), "{states:?}");
    assert!(states[2].starts_with("c@test.example:Waiting"), "{states:?}");
    assert!(info.due[0] > now(), "the local retry is in the future");
    let log = rig.log();
    for needle in [
        format!("new msg {id}\n"),
        format!("info msg {id}: bytes "),
        format!("from <{SENDER}> qp "),
        format!("msg {id} to local a@test.example\n"),
        ": success: did 1+0+0/\n".to_string(),
        ": failure: Sorry, no mailbox here by that name. (#5.1.1)\n".to_string(),
        ": deferral: temporary trouble (#4.3.0)\n".to_string(),
        "status: local 3/10 remote 0/20\n".to_string(),
    ] {
        assert!(log.contains(&needle), "log lacks {needle:?}:\n{log}");
    }

    // A crash, then a new quill-send: only the deferred recipient is tried again.
    rig.crash();
    let mut rig = Rig::start(h.path(), "second", false);
    rig.signal(nix::sys::signal::Signal::SIGALRM);
    let retry = rig.local.take(1);
    assert_eq!(rcpt(&retry[0]), "c@test.example");
    // quill-local is told that an earlier attempt may have delivered (audit item 14).
    assert!(retry[0].retry, "a second attempt is a retry");
    rig.local.answer(retry[0].slot, &[(Outcome::Success, "did 1+0+0/")]);
    assert!(rig.wait_log(&format!("end msg {id}\n")), "{}", rig.log());
    assert!(rig.local.next(Duration::from_millis(300)).is_none(), "a done recipient was tried again");
    assert!(!q.join(format!("mess/{id}")).exists());
    assert!(!info_dir.join(id.to_string()).exists());
    assert!(rig.log().contains(&format!("bounce msg {id} qp ")));

    // The bounce: RFC 3464, to the sender, from <>, naming the failed recipient.
    let (_, header, bounce) = wait_bounce(h.path(), "");
    assert_eq!(header.envelope.recipients, vec![SENDER.as_bytes().to_vec()]);
    check_rfc3464(&bounce, SENDER, "b@test.example", "5.1.1");
    assert!(bounce.contains("Subject: hello\n"));
    assert!(!bounce.contains("Final-Recipient: rfc822; a@test.example"));
}

#[test]
fn full_success_writes_no_info() {
    let h = basic_home("noinfo", &[]);
    let mut rig = Rig::start(h.path(), "send", false);
    let id = inject(h.path(), SENDER, &["a@test.example", "b@test.example"], "quick");
    let info_dir = h.path().join("queue/info");
    let mut info_seen = false;
    // Info files are named by queue id; quill-send's views (flight, …) are not info files.
    let info_files = || {
        files(&info_dir)
            .iter()
            .filter(|p| p.file_name().is_some_and(|n| quill::mail::queuefile::valid_id(n.as_encoded_bytes())))
            .count()
    };
    for r in rig.local.take(2) {
        info_seen |= info_files() > 0;
        rig.local.answer(r.slot, &[(Outcome::Success, "did 1+0+0/")]);
    }
    let done = wait_for(LIMIT, || {
        info_seen |= info_files() > 0;
        rig.log().contains(&format!("end msg {id}\n"))
    });
    assert!(done, "{}", rig.log());
    assert!(!info_seen, "an info file was written for a message done on its first attempt");
    assert!(files(&h.path().join("queue/mess")).is_empty());
    assert!(files(&h.path().join("queue/todo")).is_empty());
}

#[test]
fn double_bounce_then_triple_bounce_is_discarded() {
    let h = basic_home("double", &[]);
    let mut rig = Rig::start(h.path(), "send", false);
    // A bounce (sender <>) that fails: the report goes to the postmaster, from #@[].
    let id = inject(h.path(), "", &["gone@test.example"], "a bounce");
    let r = rig.local.take(1);
    rig.local.answer(r[0].slot, &[(Outcome::Permanent, "no such user (#5.1.1)")]);
    let (double_id, header, bounce) = wait_bounce(h.path(), "#@[]");
    assert_eq!(header.envelope.recipients, vec![format!("postmaster@{ME}").into_bytes()]);
    check_rfc3464(&bounce, &format!("postmaster@{ME}"), "gone@test.example", "5.1.1");
    assert!(rig.wait_log(&format!("end msg {id}\n")));
    // The double bounce is picked up and fails too: it is dropped, with a log line.
    let r = rig.local.take(1);
    assert_eq!(r[0].id, double_id.to_string().into_bytes());
    assert_eq!(rcpt(&r[0]), format!("postmaster@{ME}"));
    assert_eq!(r[0].sender, b"#@[]");
    rig.local.answer(r[0].slot, &[(Outcome::Permanent, "mailbox full (#5.2.2)")]);
    assert!(rig.wait_log(&format!("end msg {double_id}\n")), "{}", rig.log());
    assert!(rig.log().contains(&format!("triple bounce: discarding bounce for msg {double_id}")));
    assert!(files(&h.path().join("queue/todo")).is_empty());
    assert!(files(&h.path().join("queue/mess")).is_empty());
}

#[test]
fn queuelifetime_turns_a_deferral_into_a_bounce() {
    let h = basic_home("lifetime", &[("queuelifetime", "86400\n")]);
    let mut rig = Rig::start(h.path(), "send", false);
    let id = write_message(h.path(), "todo", SENDER, &["slow@test.example"], now() - 2 * 86400, "old");
    quill::mail::queuefile::pull_trigger(&Layout::new(h.path()));
    let r = rig.local.take(1);
    rig.local.answer(r[0].slot, &[(Outcome::Temporary, "disk quota exceeded (#4.2.2)")]);
    assert!(rig.wait_log(&format!("end msg {id}\n")), "{}", rig.log());
    assert!(rig.log().contains("failure: message has been in the queue too long (#5.4.7)"));
    let (_, _, bounce) = wait_bounce(h.path(), "");
    check_rfc3464(&bounce, SENDER, "slow@test.example", "5.4.7");
}

#[test]
fn a_bounce_that_cannot_be_queued_keeps_the_message() {
    let h = basic_home("bounceretry", &[]);
    let mut rig = Rig::start(h.path(), "send", false);
    std::fs::write(h.path().join("queue-refuses"), b"").expect("write flag");
    let id = inject(h.path(), SENDER, &["nobody@test.example"], "retry");
    let r = rig.local.take(1);
    rig.local.answer(r[0].slot, &[(Outcome::Permanent, "no mailbox (#5.1.1)")]);
    assert!(rig.wait_log(&format!("unable to queue bounce for msg {id}")), "{}", rig.log());
    // The message and its state stay until the bounce is queued.
    let mess = h.path().join(format!("queue/mess/{id}"));
    assert!(mess.exists());
    let info = h.path().join("queue/info");
    assert!(wait_for(LIMIT, || quill::mail::proto::info::read(&info, id).ok().flatten().is_some()));
    assert!(!rig.log().contains(&format!("end msg {id}")));
    std::fs::remove_file(h.path().join("queue-refuses")).expect("remove flag");
    rig.signal(nix::sys::signal::Signal::SIGALRM);
    assert!(rig.wait_log(&format!("end msg {id}\n")), "{}", rig.log());
    assert!(rig.log().contains(&format!("bounce msg {id} qp ")));
    assert!(!mess.exists() && !info.join(id.to_string()).exists());
    let (_, _, bounce) = wait_bounce(h.path(), "");
    check_rfc3464(&bounce, SENDER, "nobody@test.example", "5.1.1");
}

#[test]
fn sighup_rereads_the_control_files() {
    let h = basic_home("hup", &[("concurrencylocal", "0\n")]);
    let mut rig = Rig::start(h.path(), "send", false);
    let id = inject(h.path(), SENDER, &["held@test.example"], "held");
    assert!(rig.wait_log(&format!("new msg {id}")));
    assert!(rig.local.next(Duration::from_millis(300)).is_none(), "concurrencylocal 0 holds local deliveries");
    std::fs::write(h.path().join("control/concurrencylocal"), "1\n").expect("write control");
    rig.signal(nix::sys::signal::Signal::SIGHUP);
    let r = rig.local.take(1);
    rig.local.answer(r[0].slot, &[(Outcome::Success, "did 1+0+0/")]);
    assert!(rig.wait_log(&format!("end msg {id}\n")));
    assert!(rig.log().contains("status: local 1/1 remote 0/20"));
}

#[test]
fn sigterm_waits_for_deliveries_in_flight() {
    let h = basic_home("term", &[("concurrencylocal", "1\n")]);
    let mut rig = Rig::start(h.path(), "first", false);
    let id = inject(h.path(), SENDER, &["one@test.example", "two@test.example"], "term");
    let first = rig.local.take(1);
    rig.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(rig.wait_log("stopping"));
    assert!(rig.local.next(Duration::from_millis(300)).is_none(), "a delivery started after SIGTERM");
    assert!(matches!(rig.send.try_wait(), Ok(None)), "quill-send left before its delivery ended");
    rig.local.answer(first[0].slot, &[(Outcome::Success, "did 1+0+0/")]);
    let status = rig.wait_send().expect("quill-send exits after SIGTERM");
    assert!(status.success(), "{status}");
    let info = quill::mail::proto::info::read(&h.path().join("queue/info"), id).expect("read").expect("info saved");
    let waiting = info.entries.iter().filter(|e| e.progress == quill::mail::proto::info::Progress::Waiting).count();
    assert_eq!(waiting, 1);
    drop(rig);
    // The next quill-send goes on with the recipient left.
    let mut rig = Rig::start(h.path(), "second", false);
    let next = rig.local.take(1);
    assert_ne!(rcpt(&next[0]), rcpt(&first[0]));
    rig.local.answer(next[0].slot, &[(Outcome::Success, "did 1+0+0/")]);
    assert!(rig.wait_log(&format!("end msg {id}\n")));
}

#[test]
fn concurrencylocal_is_respected() {
    let h = basic_home("concurrency", &[("concurrencylocal", "2\n")]);
    let mut rig = Rig::start(h.path(), "send", false);
    for i in 0..3 {
        inject(h.path(), SENDER, &["x@test.example", "y@test.example"], &format!("m{i}"));
    }
    let mut outstanding: Vec<Request> = Vec::new();
    let (mut answered, mut most) = (0, 0);
    while answered < 6 {
        // Collect whatever send starts; it must never exceed the limit.
        let limit = if outstanding.is_empty() { LIMIT } else { Duration::from_millis(200) };
        while let Some(r) = rig.local.next(limit) {
            outstanding.push(r);
            most = most.max(outstanding.len());
            assert!(outstanding.len() <= 2, "{} deliveries at once with concurrencylocal 2", outstanding.len());
            if outstanding.len() == 2 {
                break;
            }
        }
        assert!(!outstanding.is_empty(), "deliveries stopped after {answered}");
        let r = outstanding.remove(0);
        rig.local.answer(r.slot, &[(Outcome::Success, "did 1+0+0/")]);
        answered += 1;
    }
    assert_eq!(most, 2);
    assert!(wait_for(LIMIT, || rig.log().matches("end msg").count() == 3));
}

#[test]
fn virtualdomains_and_kept_remote_recipients() {
    let h = basic_home("virtual", &[("virtualdomains", "virt.example:vu\nnot.example:\n")]);
    let mut rig = Rig::start(h.path(), "send", false);
    let id = inject(h.path(), SENDER, &["x@virt.example", "bare", "far@not.example"], "virtual");
    let mut got: Vec<String> = Vec::new();
    for r in rig.local.take(2) {
        assert!(!r.retry, "a first attempt is not a retry");
        got.push(rcpt(&r));
        rig.local.answer(r.slot, &[(Outcome::Success, "did 1+0+0/")]);
    }
    got.sort();
    assert_eq!(got, vec!["bare@test.example".to_string(), "vu-x@virt.example".to_string()]);
    // The remote recipient stays, written down, with a log line; the message is not ended.
    let info_dir = h.path().join("queue/info");
    assert!(wait_for(LIMIT, || quill::mail::proto::info::read(&info_dir, id).ok().flatten().is_some()));
    let info = quill::mail::proto::info::read(&info_dir, id).expect("read").expect("info");
    assert_eq!(info.entries[2].address, b"far@not.example");
    assert_eq!(info.entries[2].channel, quill::send::sendconf::Channel::Remote);
    assert_eq!(info.entries[2].progress, quill::mail::proto::info::Progress::Waiting);
    assert!(rig.log().contains("remote channel is not running"));
    assert!(!rig.log().contains("end msg"));
    assert!(h.path().join(format!("queue/mess/{id}")).exists());
}

#[test]
fn remote_recipients_are_grouped_by_domain() {
    let h = basic_home("remote", &[]);
    let mut rig = Rig::start(h.path(), "send", true);
    let id = inject(h.path(), SENDER, &["a@one.example", "d@test.example", "b@ONE.example", "c@two.example"], "r");
    let local = rig.local.take(1);
    assert_eq!(rcpt(&local[0]), "d@test.example");
    rig.local.answer(local[0].slot, &[(Outcome::Success, "did 1+0+0/")]);
    let remote = rig.remote.as_mut().expect("remote spawner");
    let mut requests = remote.take(2);
    requests.sort_by_key(|r| r.recipients.len());
    assert_eq!(requests[0].recipients, vec![b"c@two.example".to_vec()]);
    assert_eq!(requests[1].recipients, vec![b"a@one.example".to_vec(), b"b@ONE.example".to_vec()]);
    remote.answer(requests[0].slot, &[(Outcome::Success, "two.example accepted")]);
    remote.answer(
        requests[1].slot,
        &[(Outcome::Success, "one.example accepted"), (Outcome::Permanent, "550 no such user (#5.1.1)")],
    );
    assert!(rig.wait_log(&format!("end msg {id}\n")), "{}", rig.log());
    assert!(rig.log().contains(&format!("msg {id} to remote c@two.example")));
    let (_, _, bounce) = wait_bounce(h.path(), "");
    check_rfc3464(&bounce, SENDER, "b@ONE.example", "5.1.1");
}

#[test]
fn restart_recovers_mess_and_removes_stale_info() {
    let h = basic_home("recover", &[]);
    let t = now();
    // Picked up before a crash, on its first attempt (no info file): everything again.
    let plain = write_message(h.path(), "mess", SENDER, &["p@test.example"], t, "plain");
    // An info file from an earlier message that had the same inode: recognised and ignored.
    let reused = write_message(h.path(), "mess", SENDER, &["r@test.example"], t, "reused");
    let foreign = quill::mail::proto::info::Info {
        time: t - 1000,
        pid: 1,
        due: [0, 0],
        warned: 0,
        entries: vec![quill::mail::proto::info::Entry {
            channel: quill::send::sendconf::Channel::Local,
            address: b"r@test.example".to_vec(),
            progress: quill::mail::proto::info::Progress::Delivered,
            last: None,
        }],
    };
    let info_dir = h.path().join("queue/info");
    quill::mail::proto::info::write(&info_dir, reused, &foreign).expect("write info");
    // An info file for no message at all, and a torn temporary one.
    quill::mail::proto::info::write(&info_dir, 999_999_999, &foreign).expect("write info");
    std::fs::write(info_dir.join("5.new"), b"I").expect("write");
    // A held message is left alone, its info file too.
    let held = write_message(h.path(), "hold", SENDER, &["h@test.example"], t, "held");
    quill::mail::proto::info::write(&info_dir, held, &foreign).expect("write info");

    let mut rig = Rig::start(h.path(), "send", false);
    let mut got: Vec<String> = Vec::new();
    for r in rig.local.take(2) {
        // Found in mess/: an earlier quill-send may have delivered without recording it.
        assert!(r.retry, "a message recovered from mess/ is retried as such");
        got.push(rcpt(&r));
        rig.local.answer(r.slot, &[(Outcome::Success, "did 1+0+0/")]);
    }
    got.sort();
    assert_eq!(got, vec!["p@test.example".to_string(), "r@test.example".to_string()]);
    assert!(rig.wait_log(&format!("end msg {plain}\n")));
    assert!(rig.wait_log(&format!("end msg {reused}\n")));
    assert!(!info_dir.join("999999999").exists());
    assert!(!info_dir.join("5.new").exists());
    assert!(info_dir.join(held.to_string()).exists());
    assert!(h.path().join(format!("queue/hold/{held}")).exists());
    assert!(rig.local.next(Duration::from_millis(300)).is_none());
}

#[test]
fn a_second_quill_send_refuses_to_run() {
    let h = basic_home("mutex", &[]);
    let _rig = Rig::start(h.path(), "send", false);
    let out = common::run(h.path(), "quill-send", &[], b"");
    assert_eq!(out.status.code(), Some(111));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another quill-send is running"));
}

#[test]
fn pickup_and_delivery_interleave() {
    let h = basic_home("fair", &[]);
    let n = 300;
    let ids: Vec<u64> =
        (0..n).map(|i| write_message(h.path(), "todo", SENDER, &["f@test.example"], now(), &format!("f{i}"))).collect();
    let mut rig = Rig::start(h.path(), "send", false);
    let mut answered = 0;
    while answered < n {
        let Some(r) = rig.local.next(LIMIT) else { break };
        rig.local.answer(r.slot, &[(Outcome::Success, "did 1+0+0/")]);
        answered += 1;
    }
    assert_eq!(answered, n, "{}", rig.log());
    assert!(wait_for(LIMIT, || rig.log().matches("end msg").count() == n));
    let log = rig.log();
    let first_delivery = log.find("starting delivery").expect("a delivery");
    let last_pickup = log.rfind("new msg").expect("a pickup");
    assert!(first_delivery < last_pickup, "every message was picked up before the first delivery started");
    assert_eq!(log.matches("new msg").count(), ids.len());
}

#[test]
fn clean_refuses_bad_ids_and_removes_debris() {
    let h = basic_home("clean", &[]);
    let q = h.path().join("queue");
    std::fs::write(q.join("todo/123"), b"x").expect("write");
    std::fs::write(q.join("todo/124"), b"x").expect("write");
    std::fs::write(q.join("tmp/old"), b"x").expect("write");
    std::fs::write(q.join("tmp/new"), b"x").expect("write");
    let old = nix::sys::time::TimeVal::new(now() as i64 - 40 * 3600, 0);
    nix::sys::stat::utimes(&q.join("tmp/old"), &old, &old).expect("utimes");
    let out = common::run(
        h.path(),
        "quill-clean",
        &[],
        b"move 123\nmove ../etc/passwd\nremove 12a\nfrob 1\nhold 123\nrelease 123\nmove 123\nremove 123\nremove 456\n\
          remove 124\nrelease 7\n",
    );
    assert!(out.status.success());
    let replies = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = replies.lines().collect();
    assert_eq!(lines.len(), 11, "{replies}");
    assert_eq!(
        &lines[..10],
        [
            "+ 123",
            "! ../etc/passwd invalid id",
            "! 12a invalid id",
            "! 1 unknown request",
            "+ 123",
            "+ 123",
            "+ 123",
            "+ 123",
            "+ 456",
            "+ 124",
        ]
    );
    assert!(lines[10].starts_with("! 7 unable to release: "), "{replies}");
    assert!(!q.join("todo/123").exists() && !q.join("mess/123").exists() && !q.join("hold/123").exists());
    // remove touches mess/ only: a message in todo/ with that id is a newer one.
    assert!(q.join("todo/124").exists(), "remove took a message from todo/");
    assert!(!q.join("tmp/old").exists(), "debris older than 36 hours stays");
    assert!(q.join("tmp/new").exists(), "a recent tmp file was removed");
    // Nothing outside the queue was touched.
    assert!(Path::new("/etc/passwd").exists());
}

/// A bin directory with copies of quill-start, quill-send and quill-clean and a stand-in
/// quill-lspawn that swallows requests (quill-start finds its stages beside itself), owned by
/// `owner` if given. Returns the directory.
fn private_bin(home: &Path, owner: Option<u32>) -> PathBuf {
    let dir = home.join("bin");
    std::fs::create_dir_all(&dir).expect("mkdir bin");
    for program in ["quill-start", "quill-send", "quill-clean"] {
        std::fs::copy(bin(program), dir.join(program)).expect("copy program");
    }
    common::write_script(
        &dir.join("quill-lspawn"),
        "#!/bin/sh\n# Keeps its report pipe (stdout) open while it swallows requests.\ncat > /dev/null\n",
    );
    if let Some(uid) = owner {
        let status = Command::new("chown").arg("-R").arg(format!("{uid}:{uid}")).arg(home).status().expect("chown");
        assert!(status.success());
    }
    dir
}

/// Process ids whose executable is `path`.
fn pids_of(path: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if std::fs::read_link(entry.path().join("exe")).is_ok_and(|exe| exe == path) {
            pids.push(pid);
        }
    }
    pids
}

/// quill-start as a private instance: as the current user, or as `nobody` when the tests run
/// as root (a root quill-start needs the quill users, which a test machine may lack).
fn run_start(home: &Path, bin_dir: &Path, log: &Path) -> Child {
    let mut command = Command::new(bin_dir.join("quill-start"));
    command.env("QUILL_HOME", home).stdout(File::create(log).expect("log")).stderr(Stdio::null());
    if is_root() {
        use std::os::unix::process::CommandExt;
        command.uid(65534).gid(65534);
    }
    command.spawn().expect("start quill-start")
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_for(limit, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

#[test]
fn quill_start_runs_the_set_and_stops_it() {
    let h = basic_home("start", &[]);
    let bin_dir = private_bin(h.path(), is_root().then_some(65534));
    let log = h.path().join("start.log");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();

    // SIGTERM stops the set cleanly.
    let mut start = run_start(h.path(), &bin_dir, &log);
    assert!(wait_for(LIMIT, || read().contains("status: local 0/10 remote 0/20")), "{}", read());
    assert!(read().contains("quill-rspawn is not installed"));
    let send = pids_of(&bin_dir.join("quill-send"));
    assert_eq!(send.len(), 1, "one quill-send");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(start.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut start, Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", read());
    assert!(read().contains("status: exiting"), "{}", read());
    assert!(wait_for(LIMIT, || pids_of(&bin_dir.join("quill-send")).is_empty()));
    assert!(wait_for(LIMIT, || pids_of(&bin_dir.join("quill-clean")).is_empty()));

    // A stage that dies takes the set down with exit 111, for the supervisor to restart.
    let mut start = run_start(h.path(), &bin_dir, &log);
    let clean = bin_dir.join("quill-clean");
    assert!(wait_for(LIMIT, || pids_of(&clean).len() == 1), "{}", read());
    assert!(wait_for(LIMIT, || pids_of(&bin_dir.join("quill-send")).len() == 1), "{}", read());
    for pid in pids_of(&clean) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let status = wait_exit(&mut start, Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(111), "{}", read());
    assert!(wait_for(LIMIT, || pids_of(&bin_dir.join("quill-send")).is_empty()), "quill-send outlived quill-start");
}

#[test]
fn an_unreachable_destination_is_backed_off_and_probed() {
    let h = basic_home("backoff", &[("backoffmin", "3600\n")]);
    let mut rig = Rig::start(h.path(), "send", true);
    let first = inject(h.path(), SENDER, &["a@down.example"], "one");
    let remote = rig.remote.as_mut().expect("remote spawner");
    let r = remote.take(1);
    remote.answer(r[0].slot, &[(Outcome::Temporary, "Unreachable: connection refused by every host (#4.4.1)")]);
    assert!(rig.wait_log("deferral: Unreachable"), "{}", rig.log());
    let table = h.path().join("queue/info/destinations");
    assert!(wait_for(LIMIT, || std::fs::read_to_string(&table).unwrap_or_default().starts_with("down.example 1 ")));
    // A second message for the same destination waits; one for another destination does not.
    let second = inject(h.path(), SENDER, &["b@down.example"], "two");
    let third = inject(h.path(), SENDER, &["c@up.example"], "three");
    let remote = rig.remote.as_mut().expect("remote spawner");
    let r = remote.take(1);
    assert_eq!(rcpt(&r[0]), "c@up.example");
    remote.answer(r[0].slot, &[(Outcome::Success, "ok")]);
    assert!(remote.next(Duration::from_millis(1500)).is_none(), "the backed-off destination is left alone");
    assert!(rig.wait_log(&format!("end msg {third}\n")));
    // A flush (SIGALRM) ends the back-off: one probe goes out, and its success releases the rest.
    rig.signal(nix::sys::signal::Signal::SIGALRM);
    let remote = rig.remote.as_mut().expect("remote spawner");
    let probe = remote.take(1);
    let rest = remote.next(Duration::from_millis(800));
    assert!(rest.is_none(), "only one probe while the destination is in doubt");
    remote.answer(probe[0].slot, &[(Outcome::Success, "ok")]);
    let next = remote.take(1);
    remote.answer(next[0].slot, &[(Outcome::Success, "ok")]);
    assert!(rig.wait_log(&format!("end msg {first}\n")), "{}", rig.log());
    assert!(rig.wait_log(&format!("end msg {second}\n")), "{}", rig.log());
    assert!(wait_for(LIMIT, || std::fs::read_to_string(&table).unwrap_or_default().is_empty()));
}

#[test]
fn one_slow_recipient_holds_at_most_concurrencyrecipient_slots() {
    // Six messages to one slow address (a program that never ends, as far as quill-send
    // knows: the test does not answer), then three to another: the slow address gets at most
    // concurrencyrecipient (default 2) of the four local slots, and the others go through.
    let h = basic_home("per-recipient", &[("concurrencylocal", "4\n")]);
    let mut rig = Rig::start(h.path(), "send", false);
    for i in 0..6 {
        inject(h.path(), SENDER, &["Slow@test.example"], &format!("slow{i}"));
    }
    for i in 0..3 {
        inject(h.path(), SENDER, &[&format!("fast{i}@test.example")], &format!("fast{i}"));
    }
    let mut slow: Vec<Request> = Vec::new();
    let mut fast_done = 0;
    // Bounded: nine messages need at most a few dozen requests.
    for _ in 0..50 {
        let Some(r) = rig.local.next(LIMIT) else { break };
        if rcpt(&r).eq_ignore_ascii_case("slow@test.example") {
            slow.push(r);
            assert!(slow.len() <= 2, "{} deliveries at once to one recipient", slow.len());
        } else {
            rig.local.answer(r.slot, &[(Outcome::Success, "did 1+0+0/")]);
            fast_done += 1;
            if fast_done == 3 {
                break;
            }
        }
    }
    assert_eq!(fast_done, 3, "the other recipients waited behind the slow one; log:\n{}", rig.log());
    assert_eq!(slow.len(), 2, "the slow recipient got its two slots");
    // As the slow deliveries end, the rest follow, two at a time.
    let mut answered = 0;
    while answered < 6 {
        let r = slow.remove(0);
        rig.local.answer(r.slot, &[(Outcome::Success, "did 0+0+1/")]);
        answered += 1;
        if answered <= 4 {
            slow.extend(rig.local.next(LIMIT));
        }
        assert!(slow.len() <= 2, "{} deliveries at once to one recipient", slow.len());
        assert!(!slow.is_empty() || answered == 6, "deliveries stopped after {answered}");
    }
    assert!(wait_for(LIMIT, || rig.log().matches("end msg").count() == 9), "{}", rig.log());
}

/// `n` messages in `mess/` as an earlier quill-send left them: each to one remote recipient
/// at `domain`, deferred once, with its info file saying the next remote attempt is `due`.
/// Written without fsync (a test's queue need not survive a crash). Returns their ids.
fn write_deferred(home: &Path, n: usize, domain: &str, due: u64) -> Vec<u64> {
    use quill::mail::proto::info::{Entry, Info, Progress};
    let t = now() - 600;
    let q = home.join("queue");
    (0..n)
        .map(|i| {
            let rcpt = format!("u{i}@{domain}");
            let pid = 7_000_000 + i as u32;
            let header = Header {
                uid: quill::base::sys::uids().0,
                pid,
                time: t,
                nanos: 0,
                envelope: Envelope { sender: SENDER.as_bytes().to_vec(), recipients: vec![rcpt.clone().into_bytes()] },
                dsn: Default::default(),
            };
            let mut bytes = header.encode();
            bytes.extend_from_slice(format!("Subject: backlog {i}\n\nbacklog {i}\n").as_bytes());
            let tmp = q.join(format!("tmp/backlog.{i}"));
            std::fs::write(&tmp, &bytes).expect("write message");
            let id = std::fs::metadata(&tmp).expect("stat").ino();
            std::fs::rename(&tmp, q.join("mess").join(id.to_string())).expect("rename");
            let info = Info {
                time: t,
                pid,
                due: [0, due],
                warned: 0,
                entries: vec![Entry {
                    channel: quill::send::sendconf::Channel::Remote,
                    address: rcpt.into_bytes(),
                    progress: Progress::Waiting,
                    last: Some((t + 1, b"Unreachable: connection refused (#4.4.1)".to_vec())),
                }],
            };
            std::fs::write(q.join("info").join(id.to_string()), info.encode()).expect("write info");
            id
        })
        .collect()
}

#[test]
fn a_deferred_backlog_rests_on_disk_and_new_mail_goes_first() {
    // 2,000 deferred messages, 40 held in memory at most (queueactive): the rest wait on disk.
    let limit = 40;
    let h = basic_home("backlog", &[("queueactive", "40\n"), ("backoffmin", "3600\n")]);
    let ids = write_deferred(h.path(), 2000, "down.example", now() + 3600);
    let mut rig = Rig::start(h.path(), "first", true);
    // New mail goes out while the backlog is read (a batch per turn of the loop).
    let fresh = inject(h.path(), SENDER, &["new@test.example"], "fresh");
    let r = rig.local.take(1);
    assert_eq!(rcpt(&r[0]), "new@test.example");
    rig.local.answer(r[0].slot, &[(Outcome::Success, "did 1+0+0/")]);
    assert!(rig.wait_log(&format!("end msg {fresh}\n")), "{}", rig.log());
    assert!(rig.wait_log("status: queue read: "), "{}", rig.log());
    let log = rig.log();
    let held: usize = log
        .split("status: queue read: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a count of messages held");
    assert!(held <= limit, "{held} messages held with queueactive {limit}");
    let remote = rig.remote.as_mut().expect("remote spawner");
    assert!(remote.next(Duration::from_millis(300)).is_none(), "nothing in the backlog is due yet");

    // A flush makes the whole backlog due: the first jobs find the destination down; the jobs
    // after them are parked or deferred unattempted, and the rest of the backlog stays on disk.
    rig.signal(nix::sys::signal::Signal::SIGALRM);
    let remote = rig.remote.as_mut().expect("remote spawner");
    let first = remote.next(LIMIT).expect("a first attempt after the flush");
    remote.answer(first.slot, &[(Outcome::Temporary, "Unreachable: connection refused by every host (#4.4.1)")]);
    let table = h.path().join("queue/info/destinations");
    assert!(wait_for(LIMIT, || std::fs::read_to_string(&table).unwrap_or_default().starts_with("down.example 1 ")));
    // The attempts that were already out (concurrencydestination) end the same way.
    while let Some(r) = remote.next(Duration::from_millis(500)) {
        remote.answer(r.slot, &[(Outcome::Temporary, "Unreachable: connection refused by every host (#4.4.1)")]);
    }
    let second = inject(h.path(), SENDER, &["again@test.example"], "second");
    let r = rig.local.take(1);
    assert_eq!(rcpt(&r[0]), "again@test.example");
    rig.local.answer(r[0].slot, &[(Outcome::Success, "did 1+0+0/")]);
    assert!(rig.wait_log(&format!("end msg {second}\n")), "{}", rig.log());
    let remote = rig.remote.as_mut().expect("remote spawner");
    assert!(remote.next(Duration::from_millis(500)).is_none(), "the backed-off destination is left alone");

    // A restart: new mail again goes out first, and the backlog is all still there.
    rig.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(rig.wait_send().and_then(|s| s.code()), Some(0), "{}", rig.log());
    drop(rig);
    let rig = Rig::start(h.path(), "second", true);
    let third = inject(h.path(), SENDER, &["third@test.example"], "third");
    let mut rig = rig;
    let r = rig.local.take(1);
    assert_eq!(rcpt(&r[0]), "third@test.example");
    rig.local.answer(r[0].slot, &[(Outcome::Success, "did 1+0+0/")]);
    assert!(rig.wait_log(&format!("end msg {third}\n")), "{}", rig.log());
    assert!(rig.wait_log("status: queue read: "), "{}", rig.log());
    let mess = h.path().join("queue/mess");
    let info = h.path().join("queue/info");
    for id in &ids {
        assert!(mess.join(id.to_string()).exists() && info.join(id.to_string()).exists(), "msg {id} lost");
    }
    assert_eq!(rig.log().matches("end msg").count(), 1, "no backlog message ended:\n{}", rig.log());
}
