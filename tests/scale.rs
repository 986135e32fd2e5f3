//! How quill-send's cost grows with the queue (`make soak` only): a backlog of N deferred
//! messages for a destination that is down, written straight into the queue in the format of
//! queue-format(5), then a private instance (quill-up) started on it twice. Each time: how long
//! one new local message takes to reach its Maildir right after the start, and again once the
//! backlog is read, and quill-send's peak resident memory (VmHWM). N is `QUILL_SCALE_N` (a
//! comma-separated list; 1000,10000,100000,200000 by default). The table goes to the output
//! and to target/tmp/scale-soak.txt. Only the memory bound is asserted (64 MB up to 200,000
//! messages); the durations are printed, never asserted.
mod common;

use common::{bin, files, wait_for, TempDir};
use quill::mail::envelope::Envelope;
use quill::mail::proto::info::{Entry, Info, Progress};
use quill::mail::queuefile::Header;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The memory quill-send may use with 200,000 messages queued, in kB.
const MEMORY_BOUND_KB: u64 = 64 * 1024;

fn sizes() -> Vec<usize> {
    let text = std::env::var("QUILL_SCALE_N").unwrap_or_else(|_| "1000,10000,100000,200000".to_string());
    text.split(',').filter_map(|n| n.trim().replace('_', "").parse().ok()).collect()
}

/// A closed loopback port: bound, read, released, and never listened on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A process's peak resident memory, in kB.
fn peak_kb(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Up {
    child: Child,
    log: PathBuf,
}

impl Up {
    fn start(home: &Path, log: PathBuf) -> Up {
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(bin("quill-up"))
            .arg("-d")
            .arg(home)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start quill-up");
        Up { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM);
        let child = &mut self.child;
        let stopped = wait_for(Duration::from_secs(120), || !matches!(child.try_wait(), Ok(None)));
        assert!(stopped, "quill-up did not stop");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The backlog: `n` messages in mess/, each to one recipient at down.example, deferred once,
/// as quill-send leaves them (queue-format(5): the header, the message; info/ID). One in ten
/// is due at once (so the destination is tried and found down); the others in an hour.
fn write_backlog(home: &Path, n: usize) {
    let q = home.join("queue");
    let now = quill::base::date::now();
    let birth = now - 600;
    let uid = quill::base::sys::uids().0;
    for i in 0..n {
        let rcpt = format!("user{i}@down.example").into_bytes();
        let pid = 1_000_000 + i as u32;
        let header = Header {
            uid,
            pid,
            time: birth,
            nanos: 0,
            envelope: Envelope { sender: b"sender@localhost".to_vec(), recipients: vec![rcpt.clone()] },
            dsn: Default::default(),
        };
        let mut bytes = header.encode();
        bytes.extend_from_slice(format!("Subject: backlog {i}\n\nbacklog message {i}\n").as_bytes());
        let tmp = q.join(format!("tmp/scale.{i}"));
        std::fs::write(&tmp, &bytes).expect("write message");
        let id = std::fs::metadata(&tmp).expect("stat").ino();
        std::fs::rename(&tmp, q.join("mess").join(id.to_string())).expect("rename");
        let due = if i % 10 == 0 { now - 1 } else { now + 3600 };
        let info = Info {
            time: birth,
            pid,
            due: [0, due],
            warned: 0,
            entries: vec![Entry {
                channel: quill::send::sendconf::Channel::Remote,
                address: rcpt,
                progress: Progress::Waiting,
                last: Some((birth + 1, b"Unreachable: connection refused by every host (#4.4.1)".to_vec())),
            }],
        };
        std::fs::write(q.join("info").join(id.to_string()), info.encode()).expect("write info");
    }
}

/// Submit one local message and wait for it in its Maildir; the seconds it took.
fn pickup_time(home: &Path, tag: &str) -> f64 {
    let maildir = home.join("maildir").join(tag).join("new");
    let started = Instant::now();
    let out =
        common::run(home, "sendmail", &["-t", "-i"], format!("To: {tag}@localhost\nSubject: {tag}\n\nhi\n").as_bytes());
    assert!(out.status.success(), "sendmail: {}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_for(Duration::from_secs(300), || !files(&maildir).is_empty()), "{tag} was not delivered");
    started.elapsed().as_secs_f64()
}

/// One start of the instance on the backlog: (pickup right after the start, seconds until
/// the backlog was read, pickup once it was, peak kB).
fn one_start(home: &Path, dir: &Path, round: &str) -> (f64, f64, f64, u64) {
    let up = Up::start(home, dir.join(format!("log-{round}")));
    let started = Instant::now();
    let mut pid = None;
    assert!(
        wait_for(Duration::from_secs(60), || {
            pid = common::instance_pids(home, "quill-send").first().copied();
            pid.is_some()
        }),
        "quill-send did not start:\n{}",
        up.log()
    );
    let pid = pid.expect("quill-send");
    let first = pickup_time(home, &format!("first-{round}"));
    let read = wait_for(Duration::from_secs(1800), || up.log().contains("status: queue read: "));
    assert!(read, "the backlog was not read:\n{}", up.log());
    let read_secs = started.elapsed().as_secs_f64();
    let running = pickup_time(home, &format!("running-{round}"));
    let peak = peak_kb(pid).expect("VmHWM of quill-send");
    assert_eq!(
        common::instance_pids(home, "quill-send"),
        vec![pid],
        "quill-send restarted during the run:\n{}",
        up.log()
    );
    up.stop();
    (first, read_secs, running, peak)
}

#[test]
#[ignore]
fn scale_deferred_backlog_memory_and_pickup() {
    let mut rows = Vec::new();
    let header = format!(
        "{:>8} {:>9} {:>11} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "N", "write_s", "peak1_MB", "peak2_MB", "start1_s", "read1_s", "run1_s", "restart_s", "run2_s"
    );
    for n in sizes() {
        let dir = TempDir::new(&format!("scale{n}"));
        let home = dir.path().join("q");
        std::fs::create_dir_all(&home).expect("mkdir");
        // A first start makes the instance; the backlog is written while it is stopped.
        let up = Up::start(&home, dir.path().join("log-init"));
        assert!(
            wait_for(Duration::from_secs(60), || !common::instance_pids(&home, "quill-send").is_empty()),
            "{}",
            up.log()
        );
        up.stop();
        std::fs::write(home.join("control/smtproutes"), format!("down.example:127.0.0.1:{}\n", closed_port()))
            .expect("smtproutes");
        let writing = Instant::now();
        write_backlog(&home, n);
        let write_secs = writing.elapsed().as_secs_f64();
        let (start1, read1, run1, peak1) = one_start(&home, dir.path(), "1");
        let (restart, _read2, run2, peak2) = one_start(&home, dir.path(), "2");
        let left = files(&home.join("queue/mess")).len();
        assert_eq!(left, n, "the backlog is still queued, whole");
        let row = format!(
            "{n:>8} {write_secs:>9.1} {:>11.1} {:>11.1} {start1:>10.2} {read1:>10.1} {run1:>10.2} {restart:>10.2} {run2:>10.2}",
            peak1 as f64 / 1024.0,
            peak2 as f64 / 1024.0
        );
        eprintln!("{header}\n{row}");
        rows.push((n, peak1.max(peak2), row));
    }
    let mut table = format!("quill-send with N deferred messages (scale soak)\n{header}\n");
    for (_, _, row) in &rows {
        table.push_str(row);
        table.push('\n');
    }
    println!("{table}");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scale-soak.txt");
    let _ = std::fs::write(out, &table);
    for (n, peak, _) in &rows {
        if *n <= 200_000 {
            assert!(*peak <= MEMORY_BOUND_KB, "quill-send peaked at {peak} kB with {n} messages:\n{table}");
        }
    }
}
