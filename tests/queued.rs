//! quill-queued, the long-lived queue writer (doc/quill-queued.8): its socket protocol spoken
//! directly (concurrent clients, group commit, abandon, refused framing), and quill-smtpd
//! handing it messages in a private instance (quill-up), falling back to quill-queue where it
//! cannot be reached, and answering 451 when it dies in the middle of a message.

mod common;

use common::{bin, files, wait_for, TempDir};
use quill::mail::proto::writer::{frame_head, Reply, Tag, GREETING, MAX_CHUNK};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// quill-queued alone on a fresh home (no quill-send: what it commits stays in todo/).
struct Writer {
    home: TempDir,
    child: Child,
}

impl Writer {
    fn start(tag: &str) -> Writer {
        Writer::start_with(tag, None)
    }

    /// Under `strace -f -c -o FILE` when `strace` is given.
    fn start_with(tag: &str, strace: Option<&Path>) -> Writer {
        let home = common::home(tag, &[("me", "localhost")]);
        let log = home.path().join("log");
        let mut command = match strace {
            Some(out) => {
                let mut c = Command::new("strace");
                c.args(["-f", "-c", "-e", "trace=fsync,fdatasync,execve", "-o"]).arg(out).arg(bin("quill-queued"));
                c
            }
            None => Command::new(bin("quill-queued")),
        };
        let child = command
            .env("QUILL_HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start quill-queued");
        let writer = Writer { home, child };
        let up = wait_for(Duration::from_secs(20), || UnixStream::connect(writer.socket()).is_ok());
        assert!(up, "quill-queued did not listen; log:\n{}", writer.log());
        writer
    }

    fn socket(&self) -> PathBuf {
        self.home.path().join("queue/writer/socket")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("log")).unwrap_or_default()
    }

    fn todo(&self) -> Vec<PathBuf> {
        files(&self.home.path().join("queue/todo"))
    }

    fn tmp(&self) -> Vec<PathBuf> {
        files(&self.home.path().join("queue/tmp"))
    }

    fn connect(&self) -> Session {
        let mut stream = UnixStream::connect(self.socket()).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut greeting = [0u8; 2];
        stream.read_exact(&mut greeting).expect("greeting");
        assert_eq!(greeting, GREETING);
        Session { stream }
    }

    /// Stop it with SIGTERM (as quill-start does) and wait. Under strace, the signal goes to
    /// quill-queued itself, so that strace sees it exit and writes its table.
    fn stop(&mut self) {
        let id = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children")).unwrap_or_default();
        let target = children.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(id as i32);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(target), nix::sys::signal::SIGTERM);
        let _ = wait_for(Duration::from_secs(20), || !matches!(self.child.try_wait(), Ok(None)));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client speaking the protocol by hand.
struct Session {
    stream: UnixStream,
}

impl Session {
    fn chunk(&mut self, bytes: &[u8]) {
        self.stream.write_all(&frame_head(Tag::Message, bytes.len() as u32)).expect("head");
        self.stream.write_all(bytes).expect("chunk");
    }

    fn envelope(&mut self, envelope: &[u8]) -> Option<Reply> {
        self.stream.write_all(&frame_head(Tag::Envelope, envelope.len() as u32)).expect("head");
        self.stream.write_all(envelope).expect("envelope");
        self.reply()
    }

    fn reply(&mut self) -> Option<Reply> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") && line.len() < 64 {
            match self.stream.read(&mut byte) {
                Ok(1) => line.push(byte[0]),
                _ => break,
            }
        }
        Reply::decode(&line)
    }

    /// One message in chunks of at most MAX_CHUNK; the reply.
    fn message(&mut self, body: &[u8], envelope: &[u8]) -> Option<Reply> {
        for piece in body.chunks(MAX_CHUNK) {
            self.chunk(piece);
        }
        self.envelope(envelope)
    }

    /// True when the writer closed the session.
    fn closed(&mut self) -> bool {
        matches!(self.stream.read(&mut [0u8; 1]), Ok(0) | Err(_))
    }
}

const ENVELOPE: &[u8] = b"Fa@example.org\0Tb@localhost\0\0";

#[test]
fn concurrent_clients_each_get_their_own_id_and_share_fsyncs() {
    let strace = !common::skip_without("strace");
    let dir = TempDir::new("queued-strace");
    let trace = dir.path().join("strace.out");
    let mut writer = Writer::start_with("queued-many", strace.then_some(trace.as_path()));
    let (clients, each) = (12, 5);
    // All clients start together, so that their commits overlap.
    let start = std::sync::Arc::new(std::sync::Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let mut session = writer.connect();
            let start = std::sync::Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                let mut got = Vec::new();
                for m in 0..each {
                    let body = format!("Subject: c{c} m{m}\n\nbody {c}.{m}\n");
                    match session.message(body.as_bytes(), ENVELOPE) {
                        Some(Reply::Queued { id, .. }) => got.push((id, body)),
                        other => panic!("client {c} message {m}: {other:?}"),
                    }
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().expect("client"));
    }
    let mut ids: Vec<u64> = all.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), clients * each, "every message has its own id");
    for (id, body) in &all {
        let file =
            std::fs::read(writer.home.path().join("queue/todo").join(id.to_string())).expect("acknowledged file");
        let text = String::from_utf8_lossy(&file);
        assert!(text.contains(body.as_str()), "todo/{id} holds its message");
        assert!(text.contains(&format!("Received: (quill {} invoked", writer.child.id())) || strace);
    }
    assert_eq!(writer.todo().len(), clients * each);
    assert!(writer.tmp().is_empty(), "no debris in tmp/");
    writer.stop();
    if !strace {
        return;
    }
    // strace -c's table: "% time  seconds  usecs/call  calls  errors syscall".
    let table = std::fs::read_to_string(&trace).expect("strace output");
    let calls = |name: &str| -> usize {
        table
            .lines()
            .filter(|l| l.split_whitespace().last() == Some(name))
            .filter_map(|l| l.split_whitespace().nth(3).and_then(|n| n.parse::<usize>().ok()))
            .sum()
    };
    let fsyncs = calls("fsync") + calls("fdatasync");
    let messages = clients * each;
    eprintln!("queued: {fsyncs} fsyncs for {messages} messages from {clients} concurrent clients");
    assert!(fsyncs >= messages, "each file is fsynced: {table}");
    assert!(fsyncs < 2 * messages, "fewer than two fsyncs per message: {fsyncs} for {messages}\n{table}");
    assert!(calls("execve") <= 1, "quill-queued runs nothing: {table}");
}

#[test]
fn an_abandoned_message_leaves_nothing_and_the_session_goes_on() {
    let writer = Writer::start("queued-abandon");
    let mut session = writer.connect();
    session.chunk(b"Subject: abandoned\n\n");
    session.chunk(&vec![b'x'; MAX_CHUNK]);
    session.stream.write_all(&frame_head(Tag::Abandon, 0)).expect("abandon");
    // A large abandoned message (spilled to an unnamed file) leaves nothing either.
    for _ in 0..20 {
        session.chunk(&vec![b'y'; MAX_CHUNK]);
    }
    session.stream.write_all(&frame_head(Tag::Abandon, 0)).expect("abandon");
    let reply = session.message(b"Subject: kept\n\nhello\n", ENVELOPE);
    assert!(matches!(reply, Some(Reply::Queued { .. })), "{reply:?}");
    let todo = writer.todo();
    assert_eq!(todo.len(), 1, "only the finished message");
    assert!(String::from_utf8_lossy(&std::fs::read(&todo[0]).expect("read")).contains("Subject: kept"));
    // A client that hangs up inside a message abandons it too.
    let mut session = writer.connect();
    session.chunk(b"Subject: cut\n\n");
    drop(session);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(writer.todo().len(), 1);
    assert!(writer.tmp().is_empty(), "no debris in tmp/");
}

#[test]
fn bad_framing_and_envelopes_are_refused_with_quill_queues_codes() {
    let writer = Writer::start("queued-garbage");
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        ("unknown tag", b"Z\0\0\0\x01x".to_vec(), 54),
        ("empty chunk", frame_head(Tag::Message, 0).to_vec(), 54),
        ("oversized chunk", frame_head(Tag::Message, MAX_CHUNK as u32 + 1).to_vec(), 54),
        ("huge envelope", frame_head(Tag::Envelope, u32::MAX).to_vec(), 54),
        ("abandon with bytes", frame_head(Tag::Abandon, 3).to_vec(), 54),
    ];
    for (what, wire, code) in cases {
        let mut session = writer.connect();
        session.chunk(b"Subject: x\n\n");
        session.stream.write_all(&wire).expect("write");
        assert_eq!(session.reply(), Some(Reply::Failed(code)), "{what}");
        assert!(session.closed(), "{what}: the session is closed");
    }
    let long = format!("Fa@b\0T{}@localhost\0\0", "x".repeat(1100));
    let envelopes: Vec<(&str, Vec<u8>, u8)> = vec![
        ("no sender", b"Tb@localhost\0\0".to_vec(), 91),
        ("address too long", long.into_bytes(), 11),
        ("CR in an address", b"Fa@b\0Tb\r@c\0\0".to_vec(), 91),
        ("bytes after the end", b"Fa@b\0Tc@d\0\0junk".to_vec(), 91),
        ("unterminated", b"Fa@b\0Tc@d\0".to_vec(), 54),
    ];
    for (what, envelope, code) in envelopes {
        let mut session = writer.connect();
        assert_eq!(session.message(b"Subject: x\n\nbody\n", &envelope), Some(Reply::Failed(code)), "{what}");
        assert!(session.closed(), "{what}: the session is closed");
    }
    assert!(writer.todo().is_empty(), "nothing queued");
    assert!(writer.tmp().is_empty(), "no debris in tmp/");
    // Still serving.
    let mut session = writer.connect();
    assert!(matches!(session.message(b"Subject: ok\n\n", ENVELOPE), Some(Reply::Queued { .. })));
}

#[test]
fn a_stale_socket_is_replaced_and_stop_removes_it() {
    let home = common::home("queued-stale", &[]);
    let socket = home.path().join("queue/writer/socket");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    assert!(socket.exists());
    let mut child = Command::new(bin("quill-queued"))
        .env("QUILL_HOME", home.path())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let up = wait_for(Duration::from_secs(20), || UnixStream::connect(&socket).is_ok());
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM);
    let stopped = wait_for(Duration::from_secs(20), || !matches!(child.try_wait(), Ok(None)));
    let _ = child.kill();
    let status = child.wait().expect("wait");
    assert!(up, "listening on the old socket's name");
    assert!(stopped && status.success(), "TERM stops it: {status}");
    assert!(!socket.exists(), "its socket is gone");
}

#[test]
fn something_else_at_the_socket_is_kept_and_quill_check_names_it() {
    let home = common::home("queued-notsocket", &[("me", "localhost")]);
    let socket = home.path().join("queue/writer/socket");
    std::fs::write(&socket, "not a socket\n").expect("write");
    let out = Command::new(bin("quill-queued"))
        .env("QUILL_HOME", home.path())
        .stdin(Stdio::null())
        .output()
        .expect("run quill-queued");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(111), "{said}");
    assert!(said.starts_with("quill-queued: fatal: unable to listen on queue/writer/socket: "), "{said}");
    assert_eq!(std::fs::read(&socket).expect("kept"), b"not a socket\n", "only a socket is removed");
    let out = common::run(home.path(), "quill", &["check"], b"");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("queue/writer/socket is not a socket: quill-queued cannot listen"), "{report}");
}

// ---- through quill-smtpd, in a private instance ----

/// A running quill-up with an SMTP listener, stopped when dropped.
struct Instance {
    dir: TempDir,
    child: Option<Child>,
    port: u16,
}

impl Instance {
    fn start(tag: &str) -> Instance {
        Instance::start_with_env(tag, &[])
    }

    /// With more environment for quill-up and everything it runs (QUILL_CONFINE=0).
    fn start_with_env(tag: &str, env: &[(&str, &str)]) -> Instance {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let dir = TempDir::new(tag);
        let home = dir.path().join("q");
        std::fs::create_dir_all(&home).expect("mkdir");
        let log = dir.path().join("log");
        let child = Command::new(bin("quill-up"))
            .arg("-d")
            .arg(&home)
            .arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::options().create(true).append(true).open(&log).expect("log"))
            .stderr(std::fs::File::options().append(true).open(&log).expect("log"))
            .spawn()
            .expect("start quill-up");
        let instance = Instance { dir, child: Some(child), port };
        let up = wait_for(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok() && instance.pids("quill-queued").len() == 1
        });
        assert!(up, "the instance did not come up; log:\n{}", instance.log());
        instance
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("q")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Pids of `program` whose QUILL_HOME is this instance's.
    fn pids(&self, program: &str) -> Vec<i32> {
        common::instance_pids(&self.home(), program)
    }

    /// Delivered messages (the instance delivers every local part to maildir/LOCALPART/).
    fn delivered(&self, user: &str) -> Vec<String> {
        let mailbox = self.home().join("maildir").join(user);
        let mut all = files(&mailbox.join("new"));
        all.extend(files(&mailbox.join("cur")));
        all.iter().map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap_or_default()).into_owned()).collect()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::SIGTERM);
            let _ = wait_for(Duration::from_secs(30), || !matches!(c.try_wait(), Ok(None)));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An SMTP client session on loopback, one command at a time.
struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    fn open(port: u16) -> Smtp {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let mut smtp = Smtp { reader: BufReader::new(stream.try_clone().expect("clone")), writer: stream };
        assert!(smtp.reply().starts_with("220"));
        assert!(smtp.command("HELO test").starts_with("250"));
        smtp
    }

    /// The reply's last line.
    fn reply(&mut self) -> String {
        for _ in 0..50 {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return String::new();
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
        String::new()
    }

    fn command(&mut self, line: &str) -> String {
        let _ = self.writer.write_all(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Up to DATA's 354.
    fn begin(&mut self, to: &str) {
        for (line, code) in [
            ("MAIL FROM:<sender@example.org>".to_string(), "250"),
            (format!("RCPT TO:<{to}>"), "250"),
            ("DATA".to_string(), "354"),
        ] {
            let reply = self.command(&line);
            assert!(reply.starts_with(code), "{line}: {reply}");
        }
    }

    fn send(&mut self, to: &str, subject: &str) -> String {
        self.begin(to);
        self.command(&format!("Subject: {subject}\r\nX-Test-Id: {subject}\r\n\r\nhello\r\n."))
    }
}

/// The pid in the Received line quill-queue or quill-queued put at the top of a message.
fn queue_pid(message: &str) -> Option<i32> {
    let start = message.find("Received: (quill ")? + "Received: (quill ".len();
    message[start..].split(' ').next()?.parse().ok()
}

#[test]
fn smtp_messages_go_through_the_writer() {
    let q = Instance::start("queued-smtp");
    let writer = q.pids("quill-queued")[0];
    let (sessions, each) = (10, 2);
    for s in 0..sessions {
        let mut smtp = Smtp::open(q.port);
        for m in 0..each {
            let reply = smtp.send("bob@localhost", &format!("s{s}m{m}"));
            assert!(reply.starts_with("250"), "session {s} message {m}: {reply}; log:\n{}", q.log());
            assert!(reply.contains(&format!("qp {writer}")), "qp is the writer's: {reply}");
        }
        smtp.command("QUIT");
    }
    let all = wait_for(Duration::from_secs(60), || q.delivered("bob").len() == sessions * each);
    assert!(all, "delivered {} of {}; log:\n{}", q.delivered("bob").len(), sessions * each, q.log());
    for message in q.delivered("bob") {
        assert_eq!(queue_pid(&message), Some(writer), "queued by quill-queued, not by a quill-queue run:\n{message}");
    }
    assert!(!q.log().contains("unable to reach quill-queued"), "no fallback; log:\n{}", q.log());
}

#[test]
fn smtpd_falls_back_to_quill_queue_without_the_writer() {
    // Unconfined (QUILL_CONFINE=0): confined, quill-queue could not gain its setuid (below).
    let q = Instance::start_with_env("queued-fallback", &[("QUILL_CONFINE", "0")]);
    // A writer that cannot come back: its directory is gone, so every restart fails.
    std::fs::remove_dir_all(q.home().join("queue/writer")).expect("remove writer/");
    for pid in q.pids("quill-queued") {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    let mut smtp = Smtp::open(q.port);
    for m in 0..2 {
        let reply = smtp.send("carol@localhost", &format!("fallback{m}"));
        assert!(reply.starts_with("250"), "{reply}; log:\n{}", q.log());
    }
    smtp.command("QUIT");
    assert!(wait_for(Duration::from_secs(60), || q.delivered("carol").len() == 2), "log:\n{}", q.log());
    let log = q.log();
    assert_eq!(
        log.matches("quill-smtpd: warning: unable to reach quill-queued").count(),
        1,
        "one warning per session:\n{log}"
    );
    let pids: Vec<_> = q.delivered("carol").iter().map(|m| queue_pid(m)).collect();
    assert!(pids[0].is_some() && pids[0] != pids[1], "a quill-queue run for each message: {pids:?}");
}

/// Confined (no_new_privs), quill-smtpd cannot run the setuid quill-queue: without the writer
/// it answers 451 and says why, and the message stays with the client.
#[test]
fn a_confined_smtpd_without_the_writer_answers_451() {
    let q = Instance::start("queued-confined");
    std::fs::remove_dir_all(q.home().join("queue/writer")).expect("remove writer/");
    for pid in q.pids("quill-queued") {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    let mut smtp = Smtp::open(q.port);
    assert!(smtp.command("MAIL FROM:<sender@example.org>").starts_with("250"));
    assert!(smtp.command("RCPT TO:<carol@localhost>").starts_with("250"));
    let reply = smtp.command("DATA");
    smtp.command("QUIT");
    let log = q.log();
    if log.contains("quill-smtpd: warning: unable to set no_new_privs") {
        return common::skip("no_new_privs is not available");
    }
    assert!(
        reply.starts_with("451"),
        "{reply}; log:
{log}"
    );
    assert!(
        log.contains("not running quill-queue: this process is confined")
            && log.contains("quill-queue cannot run under confinement"),
        "log:
{log}"
    );
    assert!(files(&q.home().join("queue/todo")).is_empty() && q.delivered("carol").is_empty());
}

#[test]
fn killing_the_writer_mid_message_queues_nothing_and_it_comes_back() {
    let q = Instance::start("queued-kill");
    let mut smtp = Smtp::open(q.port);
    smtp.begin("dave@localhost");
    // More than one frame, so that the writer has the message's first bytes when it dies.
    let half = format!("Subject: killed\r\nX-Test-Id: killed\r\n\r\n{}\r\n", "a".repeat(200_000));
    smtp.writer.write_all(half.as_bytes()).expect("write");
    std::thread::sleep(Duration::from_millis(300));
    for pid in q.pids("quill-queued") {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    let reply = smtp.command("the end\r\n.");
    assert!(reply.starts_with("451"), "a temporary failure: {reply}; log:\n{}", q.log());
    // The same session goes on: the next message reaches the new writer (confined, quill-smtpd
    // does not fall back to quill-queue, so wait for quill-start to bring the writer back).
    let back =
        || q.pids("quill-queued").len() == 1 && UnixStream::connect(q.home().join("queue/writer/socket")).is_ok();
    assert!(
        wait_for(Duration::from_secs(30), back),
        "log:
{}",
        q.log()
    );
    let reply = smtp.send("dave@localhost", "after");
    assert!(reply.starts_with("250"), "{reply}; log:\n{}", q.log());
    smtp.command("QUIT");
    assert!(wait_for(Duration::from_secs(60), || q.delivered("dave").len() == 1), "log:\n{}", q.log());
    assert!(q.delivered("dave")[0].contains("X-Test-Id: after"), "only the finished message");
    assert!(files(&q.home().join("queue/tmp")).is_empty(), "nothing half-queued in tmp/");
    // quill-start starts the writer again, and new sessions use it.
    assert!(wait_for(Duration::from_secs(30), || q.pids("quill-queued").len() == 1), "log:\n{}", q.log());
    let writer = q.pids("quill-queued")[0];
    assert!(wait_for(Duration::from_secs(10), || UnixStream::connect(q.home().join("queue/writer/socket")).is_ok()));
    let mut smtp = Smtp::open(q.port);
    assert!(smtp.send("erin@localhost", "again").starts_with("250"));
    smtp.command("QUIT");
    assert!(wait_for(Duration::from_secs(60), || q.delivered("erin").len() == 1), "log:\n{}", q.log());
    assert_eq!(queue_pid(&q.delivered("erin")[0]), Some(writer));
    assert!(q.log().contains("quill-queued exited"), "quill-start said so");
}

// ---- as root: an installation's users ----

fn ensure_group(name: &str) {
    if nix::unistd::Group::from_name(name).ok().flatten().is_none() {
        let _ = Command::new("groupadd").args(["-r", name]).status();
    }
}

fn ensure_user(name: &str, group: &str) -> nix::unistd::User {
    if nix::unistd::User::from_name(name).ok().flatten().is_none() {
        let status = Command::new("useradd")
            .args(["-r", "-g", group, "-d", "/nonexistent", "-s", "/bin/sh", name])
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {name}");
    }
    nix::unistd::User::from_name(name).ok().flatten().expect("user")
}

fn real_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// The installation's path: quill-smtpd as quilld (not in group quill) reaches the socket
/// through queue/ (0751) and queue/writer/ (0711); quill-queued runs as quillq and queues the
/// message as mail "from network", in a file of quillq's.
#[test]
fn as_root_quilld_hands_messages_to_the_writer_running_as_quillq() {
    if !common::is_root() {
        common::skip("as_root_quilld_hands_messages_to_the_writer_running_as_quillq needs root");
        return;
    }
    if common::skip_without("/usr/sbin/useradd") {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    ensure_group("quill");
    ensure_group("nofiles");
    let quillq = ensure_user("quillq", "quill");
    let quills = ensure_user("quills", "quill");
    let quilld = ensure_user("quilld", "nofiles");
    let group = nix::unistd::Group::from_name("quill").ok().flatten().expect("group quill");
    let dir = TempDir::new("queued-root");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let home = dir.path().join("quill");
    std::fs::create_dir_all(&home).expect("mkdir");
    let owners = quill::mail::queuefile::Owners {
        quillq: quillq.uid.as_raw(),
        quills: quills.uid.as_raw(),
        quill_group: group.gid.as_raw(),
    };
    quill::mail::queuefile::create_tree(&home, Some(owners)).expect("queue tree");
    // root@localhost must be deliverable whatever the machine's /etc/aliases says (a fresh
    // one has no `root:` line, and quill-smtpd refuses an address nobody receives).
    for (name, value) in [
        ("me", "localhost"),
        ("rcpthosts", "localhost"),
        ("locals", "localhost"),
        ("aliases", "control/aliases.test"),
        ("aliases.test", "root: postmaster"),
    ] {
        std::fs::write(home.join("control").join(name), format!("{value}\n")).expect("control");
    }
    let log = dir.path().join("log");
    let logfile = || std::fs::File::options().create(true).append(true).open(&log).expect("log");
    let mut writer = common::Daemon(
        Command::new(bin("quill-queued"))
            .env("QUILL_HOME", &home)
            .uid(quillq.uid.as_raw())
            .gid(group.gid.as_raw())
            .stdin(Stdio::null())
            .stdout(logfile())
            .stderr(logfile())
            .spawn()
            .expect("quill-queued"),
    );
    let mut server = common::Daemon(
        Command::new(bin("quill-tcpserver"))
            .args(["-1", "-u", &quilld.uid.to_string(), "-g", &quilld.gid.to_string(), "127.0.0.1", "0"])
            .arg(bin("quill-smtpd"))
            .env("QUILL_HOME", &home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(logfile())
            .spawn()
            .expect("quill-tcpserver"),
    );
    let mut port = String::new();
    let _ = BufReader::new(server.0.stdout.take().expect("stdout")).read_line(&mut port);
    let listening = wait_for(Duration::from_secs(20), || home.join("queue/writer/socket").exists());
    let reply = port.trim().parse::<u16>().ok().filter(|_| listening).map(|port| {
        let mut smtp = Smtp::open(port);
        let reply = smtp.send("root@localhost", "installed");
        smtp.command("QUIT");
        reply
    });
    let writer_uid = real_uid(writer.id());
    writer.stop();
    server.stop();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let reply = reply.unwrap_or_default();
    assert!(reply.starts_with("250") && reply.contains(&format!("qp {}", writer.id())), "{reply}; log:\n{log}");
    assert_eq!(writer_uid, Some(quillq.uid.as_raw()), "quill-queued runs as quillq");
    assert!(!log.contains("unable to reach quill-queued"), "no fallback; log:\n{log}");
    let todo = files(&home.join("queue/todo"));
    assert_eq!(todo.len(), 1, "log:\n{log}");
    let meta = std::fs::metadata(&todo[0]).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (quillq.uid.as_raw(), group.gid.as_raw()), "quillq's file, group quill");
    let text = String::from_utf8_lossy(&std::fs::read(&todo[0]).expect("read")).into_owned();
    assert!(text.contains(&format!("u{}\0", quilld.uid.as_raw())), "the header's uid is quilld's");
    assert!(text.contains(&format!("Received: (quill {} invoked from network)", writer.id())), "{text}");
}
