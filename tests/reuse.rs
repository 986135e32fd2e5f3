//! Kept connections (doc/quill-rspawn.8, doc/quill-remote.8 "Kept connections"): quill-rspawn
//! driven request by request, as quill-send drives it, against a sink on loopback that counts
//! connections, RSETs, QUITs and messages, and answers the end of data as each message asks
//! (its `X-Reply:` header). Every wait is bounded.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

/// What the sink saw.
#[derive(Default, Debug)]
struct Counts {
    connections: usize,
    rsets: usize,
    quits: usize,
    /// The `Subject:` of every message taken (answered 250).
    taken: Vec<String>,
}

/// An SMTP sink on 127.0.0.1: a thread per connection, PIPELINING offered. A message with
/// `X-Reply: CODE TEXT` gets that answer at its end of data; after a 421 the sink hangs up;
/// `X-Reply: drop` makes it hang up at the end of data without an answer.
/// With `close_after_message`, it hangs up (without a word) after every message.
struct Sink {
    port: u16,
    counts: Arc<Mutex<Counts>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Sink {
    fn start(close_after_message: bool) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            while !s.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        c.lock().unwrap().connections += 1;
                        let c = c.clone();
                        std::thread::spawn(move || serve(stream, &c, close_after_message));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Sink { port, counts, stop }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap()
    }
}

fn serve(stream: TcpStream, counts: &Mutex<Counts>, close_after_message: bool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut say = |line: &str| writer.write_all(format!("{line}\r\n").as_bytes()).is_ok();
    say("220 sink.test ESMTP");
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let verb = line.trim_end().split([' ', ':']).next().unwrap_or("").to_ascii_uppercase();
        let ok = match verb.as_str() {
            "EHLO" => say("250-sink.test\r\n250-PIPELINING\r\n250 8BITMIME"),
            "RSET" => {
                counts.lock().unwrap().rsets += 1;
                say("250 2.0.0 ok")
            }
            "QUIT" => {
                counts.lock().unwrap().quits += 1;
                say("221 2.0.0 bye");
                return;
            }
            "MAIL" | "RCPT" => say("250 2.1.0 ok"),
            "DATA" => {
                say("354 go ahead");
                let (mut subject, mut reply) = (String::new(), "250 2.0.0 taken".to_string());
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let text = line.trim_end();
                    if text == "." {
                        break;
                    }
                    if let Some(s) = text.strip_prefix("Subject: ") {
                        subject = s.to_string();
                    }
                    if let Some(r) = text.strip_prefix("X-Reply: ") {
                        reply = r.to_string();
                    }
                }
                // `X-Reply: drop`: the connection goes down with the message in flight, its
                // end of data never answered (whether the server kept it is unknown).
                if reply == "drop" {
                    return;
                }
                if reply.starts_with('2') {
                    counts.lock().unwrap().taken.push(subject);
                }
                say(&reply);
                if reply.starts_with("421") || close_after_message {
                    return;
                }
                true
            }
            _ => say("502 5.5.1 unknown"),
        };
        if !ok {
            return;
        }
    }
}

/// A home routing `sink.test` to the sink, with the reuse settings given.
fn home(tag: &str, port: u16, controls: &[(&str, &str)]) -> common::TempDir {
    let route = format!("sink.test:[127.0.0.1]:{port}\n");
    let mut all: Vec<(&str, &str)> = vec![
        ("me", "quill.test"),
        ("timeoutconnect", "5"),
        ("timeoutremote", "10"),
        ("dnsservers", "127.0.0.1:9\n"),
        ("smtproutes", route.as_str()),
        ("timeoutremoteidle", "1"),
    ];
    all.extend_from_slice(controls);
    common::home(tag, &all)
}

/// Message `id` in queue/mess/, with a Subject and an optional X-Reply.
fn queue_message(home: &Path, id: u64, subject: &str, reply: Option<&str>) {
    let header = quill::mail::queuefile::Header {
        uid: 0,
        pid: 1,
        time: 1_800_000_000,
        nanos: 0,
        envelope: quill::mail::envelope::Envelope {
            sender: b"s@quill.test".to_vec(),
            recipients: vec![b"a@sink.test".to_vec()],
        },
        dsn: Default::default(),
    };
    let mut bytes = header.encode();
    bytes.extend_from_slice(format!("Subject: {subject}\n").as_bytes());
    if let Some(reply) = reply {
        bytes.extend_from_slice(format!("X-Reply: {reply}\n").as_bytes());
    }
    bytes.extend_from_slice(b"\nbody\n");
    std::fs::write(home.join("queue/mess").join(id.to_string()), bytes).unwrap();
}

/// quill-rspawn with its requests written one at a time and its reports read back.
struct Rspawn {
    child: Child,
    input: Option<ChildStdin>,
    reports: mpsc::Receiver<quill::mail::proto::spawn::Report>,
}

impl Rspawn {
    fn start(home: &Path) -> Rspawn {
        let mut child = Command::new(common::bin("quill-rspawn"))
            .env("QUILL_HOME", home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take();
        let mut output = child.stdout.take().unwrap();
        let (send, reports) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = quill::mail::proto::spawn::Reader::default();
            let mut buffer = [0u8; 4096];
            while let Ok(n) = output.read(&mut buffer) {
                if n == 0 {
                    return;
                }
                reader.push(&buffer[..n]);
                while let Some(fields) = reader.next_frame() {
                    let _ = send.send(quill::mail::proto::spawn::Report::decode(&fields).unwrap());
                }
            }
        });
        Rspawn { child, input, reports }
    }

    /// One delivery of message `id` to a@sink.test; its result letter.
    fn deliver(&mut self, slot: u32, id: u64, backlog: bool) -> char {
        let request = quill::mail::proto::spawn::Request {
            slot,
            id: id.to_string().into_bytes(),
            sender: b"s@quill.test".to_vec(),
            recipients: vec![b"a@sink.test".to_vec()],
            retry: false,
            backlog,
        };
        self.input.as_mut().unwrap().write_all(&request.encode()).unwrap();
        let report = self.reports.recv_timeout(LIMIT).expect("a report in time");
        assert_eq!(report.slot, slot);
        report.results[0].outcome.letter() as char
    }

    /// End of input: quill-rspawn ends once everything is reported and closed.
    fn finish(mut self) {
        self.input = None;
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < LIMIT, "quill-rspawn did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rspawn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deliver messages 1..=n in turn (each with the backlog mark but the last); their letters.
fn run(home: &Path, replies: &[Option<&str>]) -> String {
    let mut rspawn = Rspawn::start(home);
    let mut letters = String::new();
    for (i, reply) in replies.iter().enumerate() {
        let id = i as u64 + 1;
        queue_message(home, id, &format!("m{id}"), *reply);
        letters.push(rspawn.deliver(id as u32, id, i + 1 < replies.len()));
    }
    rspawn.finish();
    letters
}

fn subjects(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("m{i}")).collect()
}

#[test]
fn one_connection_carries_a_backlog_and_each_message_once() {
    let sink = Sink::start(false);
    let h = home("reuse-many", sink.port, &[]);
    assert_eq!(run(h.path(), &[None; 6]), "KKKKKK");
    let counts = sink.counts();
    assert_eq!(counts.taken, subjects(6), "each message exactly once, in order");
    assert_eq!(counts.connections, 1, "{counts:?}");
    assert_eq!(counts.rsets, 5, "RSET between messages: {counts:?}");
    drop(counts);
    assert!(common::wait_for(LIMIT, || sink.counts().quits == 1), "the kept connection ends with QUIT");
}

#[test]
fn without_a_backlog_every_message_has_its_own_connection() {
    let sink = Sink::start(false);
    let h = home("reuse-none", sink.port, &[]);
    let mut rspawn = Rspawn::start(h.path());
    for id in 1..=3u64 {
        queue_message(h.path(), id, &format!("m{id}"), None);
        assert_eq!(rspawn.deliver(id as u32, id, false), 'K');
    }
    rspawn.finish();
    let counts = sink.counts();
    assert_eq!((counts.connections, counts.rsets, counts.quits), (3, 0, 3), "{counts:?}");
    assert_eq!(counts.taken, subjects(3));
}

#[test]
fn a_refused_message_does_not_poison_the_next() {
    let sink = Sink::start(false);
    let h = home("reuse-refused", sink.port, &[]);
    let letters = run(h.path(), &[None, Some("550 5.7.1 no thanks"), Some("451 4.3.0 later"), None]);
    assert_eq!(letters, "KDZK");
    let counts = sink.counts();
    assert_eq!(counts.taken, vec!["m1".to_string(), "m4".to_string()]);
    // A connection is kept only after a message it took: the refusals each end theirs.
    assert_eq!(counts.connections, 3, "{counts:?}");
}

#[test]
fn an_idle_connection_is_closed_with_quit_after_the_idle_time() {
    let sink = Sink::start(false);
    let h = home("reuse-idle", sink.port, &[]);
    let mut rspawn = Rspawn::start(h.path());
    queue_message(h.path(), 1, "m1", None);
    assert_eq!(rspawn.deliver(1, 1, true), 'K');
    // quill-rspawn is still running and gets no request: the idle time (1 s) ends the kept
    // connection, politely.
    assert!(common::wait_for(LIMIT, || sink.counts().quits == 1), "{:?}", sink.counts());
    queue_message(h.path(), 2, "m2", None);
    assert_eq!(rspawn.deliver(2, 2, false), 'K');
    rspawn.finish();
    let counts = sink.counts();
    assert_eq!((counts.connections, counts.rsets), (2, 0), "{counts:?}");
}

#[test]
fn the_reuse_limit_is_respected() {
    let sink = Sink::start(false);
    let h = home("reuse-limit", sink.port, &[("reuseremote", "2")]);
    assert_eq!(run(h.path(), &[None; 5]), "KKKKK");
    let counts = sink.counts();
    assert_eq!(counts.taken, subjects(5));
    assert_eq!((counts.connections, counts.rsets), (3, 2), "{counts:?}");
}

#[test]
fn a_421_ends_reuse() {
    let sink = Sink::start(false);
    let h = home("reuse-421", sink.port, &[]);
    let letters = run(h.path(), &[None, Some("421 4.3.2 shutting down"), None, None]);
    assert_eq!(letters, "KZKK");
    let counts = sink.counts();
    assert_eq!(counts.taken, vec!["m1".to_string(), "m3".to_string(), "m4".to_string()]);
    assert_eq!((counts.connections, counts.rsets), (2, 2), "{counts:?}");
}

#[test]
fn a_kept_connection_the_server_dropped_costs_no_deferral() {
    // The server hangs up after every message: each RSET on the kept connection fails, and
    // the message goes out on a new connection, as if nothing had been kept.
    let sink = Sink::start(true);
    let h = home("reuse-dropped", sink.port, &[]);
    assert_eq!(run(h.path(), &[None; 4]), "KKKK");
    let counts = sink.counts();
    assert_eq!(counts.taken, subjects(4));
    assert_eq!(counts.connections, 4, "{counts:?}");
}

#[test]
fn a_connection_dropped_mid_batch_defers_only_the_message_in_flight() {
    // Two messages taken on the kept connection, the third's end of data unanswered (the
    // server drops the connection): only the third is deferred; the fourth and fifth go out on
    // a new connection, and the third on its retry, each once.
    let sink = Sink::start(false);
    let h = home("reuse-midbatch", sink.port, &[]);
    let mut rspawn = Rspawn::start(h.path());
    let replies = [None, None, Some("drop"), None, None];
    let mut letters = String::new();
    for (i, reply) in replies.iter().enumerate() {
        let id = i as u64 + 1;
        queue_message(h.path(), id, &format!("m{id}"), *reply);
        letters.push(rspawn.deliver(id as u32, id, true));
    }
    assert_eq!(letters, "KKZKK");
    // The retry of message 3, as quill-send would make it later (the sink now takes it).
    queue_message(h.path(), 3, "m3", None);
    assert_eq!(rspawn.deliver(6, 3, false), 'K');
    rspawn.finish();
    let counts = sink.counts();
    let mut taken = counts.taken.clone();
    taken.sort();
    assert_eq!(taken, subjects(5), "nothing lost, nothing twice: {counts:?}");
    assert_eq!(counts.taken[..2], ["m1".to_string(), "m2".to_string()], "{counts:?}");
    assert_eq!(counts.connections, 2, "one new connection after the drop: {counts:?}");
}

#[test]
fn quill_remote_by_hand_is_unchanged() {
    let sink = Sink::start(false);
    let h = home("reuse-hand", sink.port, &[]);
    let output =
        common::run(h.path(), "quill-remote", &["sink.test", "s@quill.test", "a@sink.test"], b"Subject: hand\n\nx\n");
    let texts: Vec<&[u8]> = output.stdout.split(|&b| b == 0).collect();
    assert_eq!(texts.len(), 3, "{:?}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(texts[0].first(), Some(&b'r'));
    assert_eq!(texts[1].first(), Some(&b'K'));
    let counts = sink.counts();
    assert_eq!((counts.connections, counts.quits), (1, 1));
}

/// The whole pipeline (quill-up: quill-send, quill-rspawn, quill-remote) with a backlog for one
/// destination: every message arrives once, over fewer connections than messages.
#[test]
fn a_queue_backlog_goes_over_fewer_connections() {
    let sink = Sink::start(false);
    let dir = common::TempDir::new("reuse-up");
    let home = dir.path().join("q");
    std::fs::create_dir_all(home.join("control")).unwrap();
    let route = format!("sink.test:[127.0.0.1]:{}\n", sink.port);
    // One delivery at a time to the destination: the rest wait, so there is a backlog.
    for (name, value) in [("smtproutes", route.as_str()), ("concurrencydestination", "1\n")] {
        std::fs::write(home.join("control").join(name), value).unwrap();
    }
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut up = Command::new(common::bin("quill-up"))
        .arg("-d")
        .arg(&home)
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(common::wait_for(LIMIT, || read_log().contains("status: local")), "{}", read_log());
    const N: usize = 20;
    for i in 1..=N {
        let message = format!("Subject: m{i}\n\nbody {i}\n");
        let out = common::run(&home, "sendmail", &["-i", "-f", "s@quill.test", "a@sink.test"], message.as_bytes());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let all_taken = common::wait_for(Duration::from_secs(60), || sink.counts().taken.len() >= N);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(up.id() as i32), nix::sys::signal::SIGTERM);
    let _ = common::wait_for(LIMIT, || !matches!(up.try_wait(), Ok(None)));
    let _ = up.kill();
    let _ = up.wait();
    assert!(all_taken, "{:?}\n{}", sink.counts(), read_log());
    let counts = sink.counts();
    let mut taken = counts.taken.clone();
    taken.sort();
    let mut expected = subjects(N);
    expected.sort();
    assert_eq!(taken, expected, "every message exactly once");
    eprintln!("connections {} rsets {} quits {} for {N} messages", counts.connections, counts.rsets, counts.quits);
    assert!(counts.connections < N, "fewer connections than messages: {counts:?}");
    assert!(counts.rsets > 0, "{counts:?}");
}
