//! quill-remote and quill-rspawn against real peers on loopback: Postfix's smtp-sink, a
//! dnsmasq answering for made-up `.test` domains, and scripted SMTP servers (plain and
//! STARTTLS with certificates made by openssl for each run). Every wait is bounded; a peer
//! missing from the machine gives a SKIP line.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Running the programs.

/// Run a program with QUILL_HOME, feeding stdin; kill it after 60 s (a hang is a failure).
fn run_bounded(home: &Path, program: &str, args: &[&[u8]], stdin: &[u8]) -> (Vec<u8>, String, Option<i32>) {
    use std::os::unix::ffi::OsStrExt;
    let mut child = Command::new(common::bin(program))
        .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
        .env("QUILL_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    let out = out_reader.join().unwrap_or_default();
    let err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    (out, err, status.code())
}

/// quill-remote's report, split: [(letter, text)] for recipients then the message.
fn remote(home: &Path, domain: &str, sender: &str, rcpts: &[&str], message: &[u8]) -> Vec<(char, String)> {
    let mut args: Vec<&[u8]> = vec![domain.as_bytes(), sender.as_bytes()];
    args.extend(rcpts.iter().map(|r| r.as_bytes()));
    let (out, err, code) = run_bounded(home, "quill-remote", &args, message);
    assert_eq!(code, Some(0), "quill-remote failed: {err}");
    let mut reports: Vec<(char, String)> = out
        .split(|&b| b == 0)
        .filter(|r| !r.is_empty())
        .map(|r| (r[0] as char, String::from_utf8_lossy(&r[1..]).into_owned()))
        .collect();
    assert_eq!(reports.len(), rcpts.len() + 1, "one report per recipient and one for the message: {reports:?} {err}");
    eprintln!("reports: {reports:?}");
    reports.truncate(rcpts.len() + 1);
    reports
}

/// The folded per-recipient result, as quill-rspawn would report it.
fn folded(reports: &[(char, String)]) -> Vec<char> {
    let mut bytes = Vec::new();
    for (letter, text) in reports {
        bytes.push(*letter as u8);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(0);
    }
    quill::mail::proto::remote_report::fold(&bytes, reports.len() - 1)
        .iter()
        .map(|r| r.outcome.letter() as char)
        .collect()
}

/// A home whose DNS is a dead end unless the test gives `dnsservers` (port 9 on loopback:
/// nothing answers, so no packet ever leaves the machine).
fn home(tag: &str, controls: &[(&str, &str)]) -> common::TempDir {
    let mut all: Vec<(&str, &str)> = vec![
        ("me", "quill.test"),
        ("timeoutconnect", "5"),
        ("timeoutremote", "10"),
        ("dnsservers", "127.0.0.1:9\noptions timeout:1 attempts:1\n"),
    ];
    for (name, value) in controls {
        all.retain(|(n, _)| n != name);
        all.push((name, value));
    }
    common::home(tag, &all)
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0)).expect("bind").local_addr().expect("addr").port()
}

/// Kill a process we started when the test is over.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Peers: smtp-sink and dnsmasq.

struct Sink {
    _process: Process,
    dump: common::TempDir,
    port: u16,
}

impl Sink {
    /// smtp-sink on 127.0.0.1 with `options`; None (after a SKIP line) if it is missing.
    fn start(options: &[&str]) -> Option<Sink> {
        let program = ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"].into_iter().find(|p| Path::new(p).exists());
        let Some(program) = program else {
            common::skip("smtp-sink is not installed");
            return None;
        };
        let dump = common::TempDir::new("sink");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dump.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let port = free_port("127.0.0.1");
        let mut command = Command::new(program);
        command.args(options).arg("-d").arg(format!("{}/%M.", dump.path().display()));
        if common::is_root() {
            command.args(["-u", "nobody"]);
        }
        command.arg(format!("127.0.0.1:{port}")).arg("10").stdout(Stdio::null()).stderr(Stdio::null());
        quill::base::sys::die_with_parent(&mut command);
        let process = Process(command.spawn().expect("start smtp-sink"));
        let up = common::wait_for(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "smtp-sink did not start");
        Some(Sink { _process: process, dump, port })
    }

    /// The dumped transactions (envelope records then the message), waiting a little for
    /// `count` of them.
    fn messages(&self, count: usize) -> Vec<String> {
        common::wait_for(Duration::from_secs(5), || common::files(self.dump.path()).len() >= count);
        common::files(self.dump.path())
            .iter()
            .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap_or_default()).into_owned())
            .collect()
    }
}

use common::dnsmasq::Dnsmasq as Dns;

// ---------------------------------------------------------------------------------------
// Scripted SMTP servers.

/// What a scripted server answers. Defaults: a server that takes everything, with
/// PIPELINING, 8BITMIME and SIZE.
#[derive(Clone)]
struct Script {
    greeting: String,
    extensions: Vec<String>,
    ehlo: String,
    helo: String,
    mail: String,
    rcpt: Vec<String>,
    data: String,
    end: String,
    /// Offer STARTTLS with this configuration.
    tls: Option<ServerTls>,
    /// Answer STARTTLS with 220 and then plain-text garbage.
    tls_garbage: bool,
    /// Close the connection, unanswered, when this command arrives.
    close_at: Option<&'static str>,
    /// Stop answering (for a few seconds) when this command arrives.
    silent_at: Option<&'static str>,
    /// Send the greeting one byte a second (a server that holds a client forever while
    /// every single read stays inside its timeout).
    drip: bool,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            greeting: "220 fake.test ESMTP".into(),
            extensions: vec!["PIPELINING".into(), "8BITMIME".into(), "SIZE 10000000".into()],
            ehlo: "250".into(),
            helo: "250 fake.test".into(),
            mail: "250 2.1.0 sender ok".into(),
            rcpt: vec!["250 2.1.5 recipient ok".into()],
            data: "354 go ahead".into(),
            end: "250 2.0.0 queued as 1234".into(),
            tls: None,
            tls_garbage: false,
            close_at: None,
            silent_at: None,
            drip: false,
        }
    }
}

#[cfg(feature = "tls")]
type ServerTls = Arc<rustls::ServerConfig>;
#[cfg(not(feature = "tls"))]
type ServerTls = Arc<()>;

/// What a scripted server saw.
#[derive(Default, Debug)]
struct Seen {
    connections: usize,
    commands: Vec<String>,
    data: Vec<Vec<u8>>,
    /// When MAIL arrived, the DATA command was already in the same read (pipelining).
    pipelined: bool,
    tls_sessions: usize,
}

#[cfg_attr(not(feature = "tls"), allow(dead_code))]
enum Io {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
    Gone,
}

struct Peer {
    io: Io,
    input: Vec<u8>,
}

impl Peer {
    fn say(&mut self, line: &str) -> bool {
        let bytes = format!("{line}\r\n");
        let r = match &mut self.io {
            Io::Plain(s) => s.write_all(bytes.as_bytes()).and_then(|()| s.flush()),
            #[cfg(feature = "tls")]
            Io::Tls(s) => s.write_all(bytes.as_bytes()).and_then(|()| s.flush()),
            Io::Gone => return false,
        };
        r.is_ok()
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = match &mut self.io {
            Io::Plain(s) => s.read(&mut chunk),
            #[cfg(feature = "tls")]
            Io::Tls(s) => s.read(&mut chunk),
            Io::Gone => return false,
        };
        match n {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.input.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = self.input.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.input.drain(..end + 2).collect();
                return Some(line[..end].to_vec());
            }
            if self.input.len() > 100_000 || !self.fill() {
                return None;
            }
        }
    }

    /// The raw DATA bytes up to and including the final ".\r\n".
    fn data(&mut self) -> Option<Vec<u8>> {
        let mut data = Vec::new();
        loop {
            let line = self.line()?;
            data.extend_from_slice(&line);
            data.extend_from_slice(b"\r\n");
            if line == b"." {
                return Some(data);
            }
        }
    }
}

struct Server {
    address: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Server {
    fn start(script: Script) -> Server {
        Server::start_on("127.0.0.1", 0, script)
    }

    /// A scripted server on ip:port (port 0: any). It serves connections one after the
    /// other until dropped, for at most 60 s.
    fn start_on(ip: &str, port: u16, script: Script) -> Server {
        let listener = TcpListener::bind((ip, port)).expect("bind scripted server");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !stop2.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(60) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                        seen2.lock().unwrap().connections += 1;
                        serve(stream, &script, &seen2, &stop2);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Server { address, seen, stop, thread: Some(thread) }
    }

    fn port(&self) -> u16 {
        self.address.port()
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }
}

fn serve(stream: TcpStream, script: &Script, seen: &Arc<Mutex<Seen>>, stop: &Arc<AtomicBool>) {
    if script.drip {
        let mut stream = stream;
        let start = Instant::now();
        for byte in script.greeting.bytes().chain(*b"\r\n") {
            if stop.load(Ordering::SeqCst) || start.elapsed() > Duration::from_secs(40) {
                return;
            }
            if stream.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        return;
    }
    let mut peer = Peer { io: Io::Plain(stream), input: Vec::new() };
    let mut rcpt_index = 0;
    if !peer.say(&script.greeting) || !script.greeting.starts_with('2') {
        let _ = peer.line();
        return;
    }
    let mut in_tls = false;
    while let Some(line) = peer.line() {
        let text = String::from_utf8_lossy(&line).into_owned();
        let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let verb = if verb.starts_with("MAIL") {
            "MAIL".to_string()
        } else if verb.starts_with("RCPT") {
            "RCPT".to_string()
        } else {
            verb
        };
        {
            let mut s = seen.lock().unwrap();
            s.commands.push(text.clone());
            if verb == "MAIL" && peer.input.windows(6).any(|w| w == b"DATA\r\n") {
                s.pipelined = true;
            }
        }
        if script.close_at == Some(leak(&verb)) {
            return;
        }
        if script.silent_at == Some(leak(&verb)) {
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        let ok = match verb.as_str() {
            "EHLO" => {
                if !script.ehlo.starts_with('2') {
                    peer.say(&script.ehlo)
                } else {
                    let mut lines = vec!["fake.test hello".to_string()];
                    lines.extend(script.extensions.iter().cloned());
                    if script.tls.is_some() && !in_tls {
                        lines.push("STARTTLS".into());
                    }
                    let n = lines.len();
                    lines
                        .iter()
                        .enumerate()
                        .all(|(i, l)| peer.say(&format!("250{}{l}", if i + 1 == n { ' ' } else { '-' })))
                }
            }
            "HELO" => peer.say(&script.helo),
            "STARTTLS" => {
                if script.tls_garbage {
                    peer.say("220 ready");
                    peer.say("this is not a TLS server hello");
                    return;
                }
                let Some(config) = script.tls.clone() else { return };
                peer.say("220 2.0.0 ready to start TLS");
                if !start_tls(&mut peer, config) {
                    return;
                }
                in_tls = true;
                seen.lock().unwrap().tls_sessions += 1;
                true
            }
            "MAIL" => peer.say(&script.mail),
            "RCPT" => {
                let reply = script.rcpt[rcpt_index.min(script.rcpt.len() - 1)].clone();
                rcpt_index += 1;
                peer.say(&reply)
            }
            "DATA" => {
                let ok = peer.say(&script.data);
                if script.data.starts_with("354") {
                    let Some(data) = peer.data() else { return };
                    seen.lock().unwrap().data.push(data);
                    if script.close_at == Some("DOT") {
                        return;
                    }
                    if script.silent_at == Some("DOT") {
                        std::thread::sleep(Duration::from_secs(3));
                        return;
                    }
                    peer.say(&script.end)
                } else {
                    ok
                }
            }
            "QUIT" => {
                peer.say("221 bye");
                return;
            }
            "RSET" | "NOOP" => peer.say("250 ok"),
            _ => peer.say("502 5.5.1 unknown command"),
        };
        if !ok {
            return;
        }
    }
}

#[cfg(feature = "tls")]
fn start_tls(peer: &mut Peer, config: ServerTls) -> bool {
    let Io::Plain(tcp) = std::mem::replace(&mut peer.io, Io::Gone) else { return false };
    let Ok(connection) = rustls::ServerConnection::new(config) else { return false };
    peer.io = Io::Tls(Box::new(rustls::StreamOwned::new(connection, tcp)));
    peer.input.clear();
    true
}

#[cfg(not(feature = "tls"))]
fn start_tls(_peer: &mut Peer, _config: ServerTls) -> bool {
    false
}

/// Command names are compared with `&'static str` in scripts.
fn leak(verb: &str) -> &'static str {
    match verb {
        "EHLO" => "EHLO",
        "HELO" => "HELO",
        "MAIL" => "MAIL",
        "RCPT" => "RCPT",
        "DATA" => "DATA",
        "STARTTLS" => "STARTTLS",
        "QUIT" => "QUIT",
        _ => "",
    }
}

fn routed(tag: &str, domain: &str, port: u16, extra: &[(&str, &str)]) -> common::TempDir {
    let route = format!("{domain}:[127.0.0.1]:{port}\n");
    let mut controls: Vec<(&str, &str)> = vec![("smtproutes", route.as_str())];
    controls.extend_from_slice(extra);
    home(tag, &controls)
}

const MESSAGE: &[u8] = b"From: a@quill.test\nSubject: test\n\nhello\n.leading dot\n";

// ---------------------------------------------------------------------------------------
// Against smtp-sink.

#[test]
fn delivers_to_smtp_sink_with_all_recipients_in_one_transaction() {
    let Some(sink) = Sink::start(&[]) else { return };
    let home = routed("sink", "example.test", sink.port, &[]);
    let r = remote(home.path(), "example.test", "a@quill.test", &["x@example.test", "y@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K', 'K']);
    assert_eq!(r[2].0, 'K');
    assert!(r[2].1.contains("accepted message") && r[2].1.contains("Remote host said: 250"), "{r:?}");
    let messages = sink.messages(1);
    assert_eq!(messages.len(), 1, "one transaction for both recipients");
    let m = &messages[0];
    assert!(m.contains("<x@example.test>") && m.contains("<y@example.test>"), "{m}");
    assert!(m.contains("<a@quill.test>"), "{m}");
    assert!(m.contains("\n.leading dot\n"), "dot-stuffing undone by the sink: {m}");
}

#[test]
fn smtp_sink_refusals_map_to_temporary_and_permanent() {
    let Some(soft) = Sink::start(&["-r", "RCPT"]) else { return };
    let home = routed("sinksoft", "example.test", soft.port, &[]);
    let r = remote(home.path(), "example.test", "a@quill.test", &["x@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
    assert!(r[0].1.contains("Remote host said: 450"), "{r:?}");
    let Some(hard) = Sink::start(&["-f", "MAIL"]) else { return };
    let home = routed("sinkhard", "example.test", hard.port, &[]);
    let r = remote(home.path(), "example.test", "a@quill.test", &["x@example.test", "y@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['D', 'D']);
    assert!(r[2].1.contains("does not like the sender") && r[2].1.contains("500"), "{r:?}");
    let Some(drop) = Sink::start(&["-q", "DATA"]) else { return };
    let home = routed("sinkdrop", "example.test", drop.port, &[]);
    let r = remote(home.path(), "example.test", "a@quill.test", &["x@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
    assert!(r[1].1.contains("died"), "{r:?}");
}

// ---------------------------------------------------------------------------------------
// Scripted servers: every stage refusing.

fn scripted(tag: &str, script: Script, rcpts: &[&str], message: &[u8]) -> (Vec<(char, String)>, Server) {
    let server = Server::start(script);
    let home = routed(tag, "example.test", server.port(), &[("timeoutremote", "2")]);
    let r = remote(home.path(), "example.test", "a@quill.test", rcpts, message);
    (r, server)
}

#[test]
fn greeting_refusals() {
    let (r, _) = scripted(
        "greet4",
        Script { greeting: "421 4.3.2 busy".into(), ..Script::default() },
        &["x@example.test"],
        MESSAGE,
    );
    assert_eq!(folded(&r), vec!['Z']);
    assert!(r[1].1.starts_with(quill::mail::proto::remote_report::UNREACHABLE), "a destination-level deferral: {r:?}");
    assert!(r[1].1.contains("greeting failed") && r[1].1.contains("421 4.3.2 busy"), "{r:?}");
    let (r, _) = scripted(
        "greet5",
        Script { greeting: "554 5.7.1 go away".into(), ..Script::default() },
        &["x@example.test"],
        MESSAGE,
    );
    assert_eq!(folded(&r), vec!['D']);
    assert!(r[1].1.contains("554 5.7.1 go away"), "{r:?}");
}

#[test]
fn ehlo_refused_falls_back_to_helo() {
    let (r, server) =
        scripted("helo", Script { ehlo: "502 5.5.2 what".into(), ..Script::default() }, &["x@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K']);
    let seen = server.seen();
    assert!(seen.commands.iter().any(|c| c.starts_with("HELO quill.test")), "{:?}", seen.commands);
    assert!(!seen.pipelined, "no pipelining without EHLO");
    let (r, _) =
        scripted("ehlo4", Script { ehlo: "421 4.7.0 later".into(), ..Script::default() }, &["x@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
}

#[test]
fn mail_refusals_apply_to_every_recipient() {
    let rcpts = ["x@example.test", "y@example.test"];
    let (r, _) = scripted("mail4", Script { mail: "451 4.3.0 try later".into(), ..Script::default() }, &rcpts, MESSAGE);
    assert_eq!(folded(&r), vec!['Z', 'Z']);
    assert!(r[0].1.contains("451 4.3.0 try later"));
    let (r, _) =
        scripted("mail5", Script { mail: "553 5.7.1 sender rejected".into(), ..Script::default() }, &rcpts, MESSAGE);
    assert_eq!(folded(&r), vec!['D', 'D']);
    assert!(r[1].1.contains("Remote host said: 553 5.7.1 sender rejected"), "{r:?}");
    // Refused, then the server hangs up on the pipelined RCPT: the refusal is the answer.
    let script = Script { mail: "550 5.7.1 go away".into(), close_at: Some("RCPT"), ..Script::default() };
    let (r, _) = scripted("mail5close", script, &rcpts, MESSAGE);
    assert_eq!(folded(&r), vec!['D', 'D']);
    assert!(r[2].1.contains("550 5.7.1 go away"), "{r:?}");
}

#[test]
fn rcpt_results_are_per_recipient() {
    let script = Script {
        rcpt: vec!["250 2.1.5 ok".into(), "550 5.1.1 no such user".into(), "451 4.2.1 mailbox busy".into()],
        ..Script::default()
    };
    let (r, server) = scripted("rcpt", script, &["a@example.test", "b@example.test", "c@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K', 'D', 'Z']);
    assert_eq!((r[1].0, r[2].0), ('h', 's'));
    assert!(r[1].1.contains("Remote host said: 550 5.1.1 no such user"), "{r:?}");
    assert!(r[2].1.contains("451 4.2.1 mailbox busy"));
    let seen = server.seen();
    assert!(seen.pipelined, "MAIL, RCPT and DATA in one write: {:?}", seen.commands);
    assert_eq!(seen.data.len(), 1);
    // All refused: no data sent, results per recipient.
    let script = Script { rcpt: vec!["550 5.1.1 no".into(), "450 4.2.0 later".into()], ..Script::default() };
    let (r, server) = scripted("rcptnone", script, &["a@example.test", "b@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['D', 'Z']);
    assert!(server.seen().data.is_empty() || server.seen().data[0] == b".\r\n");
}

#[test]
fn data_and_end_of_data_refusals() {
    let rcpts = ["a@example.test", "b@example.test"];
    let script = Script {
        rcpt: vec!["250 ok".into(), "550 5.1.1 unknown".into()],
        data: "554 5.6.0 no data".into(),
        ..Script::default()
    };
    let (r, _) = scripted("data5", script, &rcpts, MESSAGE);
    assert_eq!(folded(&r), vec!['D', 'D']);
    assert!(r[2].1.contains("failed on DATA") && r[2].1.contains("554 5.6.0"), "{r:?}");
    let (r, _) = scripted("data4", Script { data: "451 4.3.0 no".into(), ..Script::default() }, &rcpts, MESSAGE);
    assert_eq!(folded(&r), vec!['Z', 'Z']);
    let (r, _) = scripted("end5", Script { end: "552 5.3.4 too big".into(), ..Script::default() }, &rcpts, MESSAGE);
    assert_eq!(folded(&r), vec!['D', 'D']);
    assert!(r[2].1.contains("failed after I sent the message") && r[2].1.contains("552 5.3.4 too big"), "{r:?}");
    let (r, _) = scripted("end4", Script { end: "452 4.3.1 full".into(), ..Script::default() }, &rcpts, MESSAGE);
    assert_eq!(folded(&r), vec!['Z', 'Z']);
}

#[test]
fn broken_and_silent_servers_are_temporary() {
    let rcpts = ["a@example.test"];
    for stage in ["MAIL", "RCPT", "DATA", "DOT"] {
        let (r, _) = scripted("close", Script { close_at: Some(stage), ..Script::default() }, &rcpts, MESSAGE);
        assert_eq!(folded(&r), vec!['Z'], "closed at {stage}: {r:?}");
        assert!(r[1].1.contains("died"), "{stage}: {r:?}");
    }
    for stage in ["EHLO", "RCPT", "DOT"] {
        let (r, _) = scripted("silent", Script { silent_at: Some(stage), ..Script::default() }, &rcpts, MESSAGE);
        assert_eq!(folded(&r), vec!['Z'], "silent at {stage}: {r:?}");
        assert!(r[1].1.contains("timed out"), "{stage}: {r:?}");
    }
}

#[test]
fn nothing_listening_is_a_destination_deferral() {
    let port = free_port("127.0.0.1");
    let home = routed("refused", "example.test", port, &[]);
    let r = remote(home.path(), "example.test", "", &["a@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
    assert!(
        r[1].1.starts_with(quill::mail::proto::remote_report::UNREACHABLE) && r[1].1.contains("unable to connect"),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------------------
// What goes on the wire.

#[test]
fn data_is_crlf_and_dot_stuffed_without_bare_cr_or_lf() {
    let message = b"Subject: wire\n\n.one\r\ntwo\rthree\n..four\nlast line without newline".to_vec();
    let (r, server) = scripted("wire", Script::default(), &["a@example.test"], &message);
    assert_eq!(folded(&r), vec!['K']);
    let seen = server.seen();
    let data = &seen.data[0];
    assert_eq!(
        String::from_utf8_lossy(data),
        "Subject: wire\r\n\r\n..one\r\ntwo\r\nthree\r\n...four\r\nlast line without newline\r\n.\r\n"
    );
    let mail = seen.commands.iter().find(|c| c.starts_with("MAIL")).unwrap();
    assert!(mail.starts_with("MAIL FROM:<a@quill.test> SIZE="), "{mail}");
    assert!(!mail.contains("BODY=8BITMIME"), "ASCII message: {mail}");
}

#[test]
fn eight_bit_messages_say_so_when_the_server_understands() {
    let message = "Subject: x\n\ncaf\u{e9}\n".as_bytes().to_vec();
    let (r, server) = scripted("8bit", Script::default(), &["a@example.test"], &message);
    assert_eq!(folded(&r), vec!['K']);
    assert!(server.seen().commands.iter().any(|c| c.starts_with("MAIL") && c.contains(" BODY=8BITMIME")));
    let script = Script { extensions: vec!["PIPELINING".into()], ..Script::default() };
    let (r, server) = scripted("7bit", script, &["a@example.test"], &message);
    assert_eq!(folded(&r), vec!['K']);
    assert!(server.seen().commands.iter().any(|c| c == "MAIL FROM:<a@quill.test>"), "{:?}", server.seen().commands);
}

#[test]
fn smtputf8_needed_but_not_offered_is_permanent() {
    let (r, server) = scripted("utf8no", Script::default(), &["j\u{f6}rg@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['D']);
    assert!(r[1].1.contains("SMTPUTF8") && r[1].1.contains("#5.6.7"), "{r:?}");
    assert!(!server.seen().commands.iter().any(|c| c.starts_with("MAIL")));
    let header = "Subject: gr\u{fc}\u{df}e\n\nbody\n".as_bytes().to_vec();
    let (r, _) = scripted("utf8hdr", Script::default(), &["a@example.test"], &header);
    assert_eq!(folded(&r), vec!['D'], "UTF-8 header needs SMTPUTF8");
    let script =
        Script { extensions: vec!["PIPELINING".into(), "8BITMIME".into(), "SMTPUTF8".into()], ..Script::default() };
    let (r, server) = scripted("utf8yes", script, &["j\u{f6}rg@example.test"], &header);
    assert_eq!(folded(&r), vec!['K']);
    let seen = server.seen();
    let mail = seen.commands.iter().find(|c| c.starts_with("MAIL")).unwrap();
    assert!(mail.ends_with(" BODY=8BITMIME SMTPUTF8"), "{mail}");
}

#[test]
fn message_larger_than_size_fails_before_mail() {
    let script = Script { extensions: vec!["PIPELINING".into(), "SIZE 100".into()], ..Script::default() };
    let big = [MESSAGE, &[b'x'; 500][..], b"\n"].concat();
    let (r, server) = scripted("size", script, &["a@example.test", "b@example.test"], &big);
    assert_eq!(folded(&r), vec!['D', 'D']);
    assert!(r[2].1.contains("#5.3.4") && r[2].1.contains("at most 100 bytes"), "{r:?}");
    assert!(!server.seen().commands.iter().any(|c| c.starts_with("MAIL")));
}

#[test]
fn no_pipelining_means_one_command_at_a_time() {
    let script = Script { extensions: vec!["8BITMIME".into()], ..Script::default() };
    let (r, server) = scripted("nopipe", script, &["a@example.test", "b@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K', 'K']);
    let seen = server.seen();
    assert!(!seen.pipelined);
    let verbs: Vec<&str> = seen.commands.iter().map(|c| &c[..4]).collect();
    assert_eq!(verbs, vec!["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]);
}

#[test]
fn ipv6_literal_route() {
    if TcpListener::bind("[::1]:0").is_err() {
        common::skip("no IPv6 loopback");
        return;
    }
    let server = Server::start_on("::1", 0, Script::default());
    let route = format!("v6.test:[IPv6:::1]:{}\n", server.port());
    let home = home("v6", &[("smtproutes", route.as_str())]);
    let r = remote(home.path(), "v6.test", "a@quill.test", &["a@v6.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K']);
    assert!(r[1].1.contains("[::1]"), "{r:?}");
}

// ---------------------------------------------------------------------------------------
// TLS.

#[cfg(feature = "tls")]
struct Certificates {
    dir: common::TempDir,
}

#[cfg(feature = "tls")]
impl Certificates {
    /// A test CA, a server certificate it signed (mx.tls.test and 127.0.0.1), and a
    /// self-signed certificate nobody trusts. None (after a SKIP line) without openssl.
    fn make() -> Option<Certificates> {
        if common::skip_without("openssl") {
            return None;
        }
        let dir = common::TempDir::new("certs");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(d).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=Quill Test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        openssl(
            &[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=mx.tls.test"]].concat(),
        );
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:mx.tls.test,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext.cnf");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        // A certificate from the CA for another name only.
        std::fs::write(d.join("wrong.cnf"), "subjectAltName=DNS:wrong.tls.test\nbasicConstraints=CA:FALSE\n")
            .expect("write");
        openssl(
            &[&["req"][..], &ec, &["-keyout", "wrong.key", "-out", "wrong.csr", "-subj", "/CN=wrong.tls.test"]]
                .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            "wrong.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "wrong.pem",
            "-days",
            "2",
            "-extfile",
            "wrong.cnf",
        ]);
        // A certificate from the CA for mx.other.test only (a provider's MX).
        std::fs::write(d.join("other.cnf"), "subjectAltName=DNS:mx.other.test\nbasicConstraints=CA:FALSE\n")
            .expect("write");
        openssl(
            &[&["req"][..], &ec, &["-keyout", "other.key", "-out", "other.csr", "-subj", "/CN=mx.other.test"]].concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            "other.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "other.pem",
            "-days",
            "2",
            "-extfile",
            "other.cnf",
        ]);
        // Self-signed, for the right names, from an issuer nobody trusts.
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "self.key",
                    "-out",
                    "self.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=mx.tls.test",
                    "-addext",
                    "subjectAltName=DNS:mx.tls.test,IP:127.0.0.1",
                    "-addext",
                    "basicConstraints=critical,CA:FALSE",
                ],
            ]
            .concat(),
        );
        Some(Certificates { dir })
    }

    fn server(&self, name: &str) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let d = self.dir.path();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(d.join(format!("{name}.pem")))
            .expect("read cert")
            .map(|c| c.expect("parse cert"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(d.join(format!("{name}.key"))).expect("read key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        Arc::new(config)
    }

    fn ca(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.pem")).expect("read ca")
    }
}

#[test]
#[cfg(feature = "tls")]
fn opportunistic_tls_accepts_any_certificate() {
    let Some(certs) = Certificates::make() else { return };
    let script = Script { tls: Some(certs.server("self")), ..Script::default() };
    let (r, server) = scripted("tlsmay", script, &["a@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K']);
    assert!(r[1].1.contains("over TLSv1."), "{r:?}");
    let seen = server.seen();
    assert_eq!(seen.tls_sessions, 1);
    let ehlos = seen.commands.iter().filter(|c| c.starts_with("EHLO")).count();
    assert_eq!(ehlos, 2, "EHLO again after STARTTLS: {:?}", seen.commands);
}

#[test]
#[cfg(feature = "tls")]
fn failed_tls_handshake_retries_in_plain_text() {
    let Some(certs) = Certificates::make() else { return };
    let script = Script { tls: Some(certs.server("self")), tls_garbage: true, ..Script::default() };
    let (r, server) = scripted("tlsfall", script, &["a@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K']);
    assert!(!r[1].1.contains("over TLS"), "{r:?}");
    let seen = server.seen();
    assert_eq!(seen.connections, 2);
    assert_eq!(seen.commands.iter().filter(|c| c.as_str() == "STARTTLS").count(), 1);
    assert_eq!(seen.data.len(), 1);
}

#[test]
#[cfg(feature = "tls")]
fn tls_destinations_require_a_verified_certificate() {
    let Some(certs) = Certificates::make() else { return };
    let ca = certs.ca();
    let extra = [("tlsdestinations", "example.test:verify\n"), ("tlsca", ca.as_str()), ("timeoutremote", "5")];
    // A certificate from the trusted CA for 127.0.0.1: delivered over TLS.
    let server = Server::start(Script { tls: Some(certs.server("server")), ..Script::default() });
    let home = routed("tlsgood", "example.test", server.port(), &extra);
    let r = remote(home.path(), "example.test", "a@quill.test", &["a@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K']);
    assert!(r[1].1.contains("over TLSv1."), "{r:?}");
    // A self-signed certificate: temporary, nothing sent.
    let server = Server::start(Script { tls: Some(certs.server("self")), ..Script::default() });
    let home = routed("tlsbad", "example.test", server.port(), &extra);
    let r = remote(home.path(), "example.test", "a@quill.test", &["a@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
    assert!(
        r[1].1.contains("TLS handshake") && r[1].1.starts_with(quill::mail::proto::remote_report::UNREACHABLE),
        "{r:?}"
    );
    assert!(server.seen().data.is_empty());
    assert!(!server.seen().commands.iter().any(|c| c.starts_with("MAIL")));
    // The trusted CA, but not for this host's name.
    let server = Server::start(Script { tls: Some(certs.server("wrong")), ..Script::default() });
    let home = routed("tlswrong", "example.test", server.port(), &extra);
    let r = remote(home.path(), "example.test", "a@quill.test", &["a@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
    assert!(r[1].1.contains("TLS handshake") && r[1].1.contains("certificate"), "{r:?}");
    assert!(server.seen().data.is_empty());
    // No STARTTLS offered: temporary, no MAIL in plain text.
    let server = Server::start(Script::default());
    let home = routed("tlsnone", "example.test", server.port(), &extra);
    let r = remote(home.path(), "example.test", "a@quill.test", &["a@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
    assert!(r[1].1.contains("does not offer STARTTLS"), "{r:?}");
    assert!(!server.seen().commands.iter().any(|c| c.starts_with("MAIL")));
}

// ---------------------------------------------------------------------------------------
// DNS routing with dnsmasq.

fn records(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn mx_preference_order_and_fallback_to_the_next_mx() {
    let Some(dns) = Dns::start(&records(&[
        "--mx-host=pref.test,mx-a.pref.test,10",
        "--mx-host=pref.test,mx-b.pref.test,20",
        "--host-record=mx-a.pref.test,127.0.0.2",
        "--host-record=mx-b.pref.test,127.0.0.3",
    ])) else {
        return;
    };
    let servers = dns.servers();
    let port = free_port("127.0.0.3");
    let best = Server::start_on("127.0.0.2", port, Script::default());
    let second = Server::start_on("127.0.0.3", port, Script::default());
    let route = format!("pref.test::{port}\n");
    let home = home("pref", &[("dnsservers", servers.as_str()), ("smtproutes", route.as_str())]);
    let r = remote(home.path(), "pref.test", "a@quill.test", &["a@pref.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K']);
    assert!(r[1].1.contains("mx-a.pref.test[127.0.0.2]"), "{r:?}");
    assert_eq!((best.seen().data.len(), second.seen().connections), (1, 0));
    drop(best);
    // The best MX is down: the next one takes it.
    let r = remote(home.path(), "pref.test", "a@quill.test", &["a@pref.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K']);
    assert!(r[1].1.contains("mx-b.pref.test[127.0.0.3]"), "{r:?}");
    assert_eq!(second.seen().data.len(), 1);
}

/// An international domain (issue 13): its MX is asked for as the A-label, and the RCPT
/// carries the A-label, so a server without SMTPUTF8 takes the message; a name UTS #46
/// refuses fails for good.
#[test]
fn international_domains_go_out_as_a_labels() {
    let Some(dns) = Dns::start(&records(&[
        "--mx-host=xn--bcher-kva.test,mx.xn--bcher-kva.test,5",
        "--host-record=mx.xn--bcher-kva.test,127.0.0.2",
    ])) else {
        return;
    };
    let servers = dns.servers();
    let server = Server::start_on("127.0.0.2", 0, Script::default());
    let routes = format!("xn--bcher-kva.test::{}\n", server.port());
    let home = home("idna", &[("dnsservers", servers.as_str()), ("smtproutes", routes.as_str())]);
    let r = remote(home.path(), "bücher.test", "a@quill.test", &["joe@bücher.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K'], "{r:?}");
    assert!(r[1].1.contains("mx.xn--bcher-kva.test[127.0.0.2]"), "{r:?}");
    let seen = server.seen();
    assert!(seen.commands.iter().any(|c| c == "RCPT TO:<joe@xn--bcher-kva.test>"), "{:?}", seen.commands);
    let mail = seen.commands.iter().find(|c| c.starts_with("MAIL FROM:<a@quill.test>")).expect("MAIL");
    assert!(!mail.contains("SMTPUTF8"), "{mail}");
    let r = remote(home.path(), "a\u{202e}b.test", "a@quill.test", &["joe@a\u{202e}b.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['D'], "{r:?}");
    assert!(r[1].1.contains("not a valid international domain name"), "{r:?}");
}

#[test]
fn a_and_aaaa_fallback_and_cname() {
    let Some(dns) = Dns::start(&records(&[
        "--host-record=plain.test,127.0.0.2",
        "--host-record=six.test,::1",
        "--mx-host=real.test,mx.real.test,5",
        "--host-record=mx.real.test,127.0.0.2",
        "--cname=alias.test,real.test",
    ])) else {
        return;
    };
    let servers = dns.servers();
    let server = Server::start_on("127.0.0.2", 0, Script::default());
    let port = server.port();
    let routes = format!("plain.test::{port}\nsix.test::{port}\nalias.test::{port}\n");
    let home = home("afall", &[("dnsservers", servers.as_str()), ("smtproutes", routes.as_str())]);
    // No MX: the domain's own A record.
    let r = remote(home.path(), "plain.test", "a@quill.test", &["a@plain.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K']);
    assert!(r[1].1.contains("plain.test[127.0.0.2]"), "{r:?}");
    // A CNAME to a domain with an MX.
    let r = remote(home.path(), "alias.test", "a@quill.test", &["a@alias.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K']);
    assert!(r[1].1.contains("mx.real.test[127.0.0.2]"), "{r:?}");
    assert_eq!(server.seen().data.len(), 2);
    // AAAA only, to ::1.
    if TcpListener::bind("[::1]:0").is_err() {
        common::skip("no IPv6 loopback");
        return;
    }
    let Ok(listener) = TcpListener::bind(("::1", port)) else {
        common::skip(&format!("port {port} taken on ::1"));
        return;
    };
    drop(listener);
    let six = Server::start_on("::1", port, Script::default());
    let r = remote(home.path(), "six.test", "a@quill.test", &["a@six.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K']);
    assert!(r[1].1.contains("six.test[::1]"), "{r:?}");
    assert_eq!(six.seen().data.len(), 1);
}

#[test]
fn dns_failures_nxdomain_null_mx_and_servfail() {
    let Some(dns) = Dns::start(&records(&["--mx-host=null.test,.,0"])) else { return };
    let servers = dns.servers();
    let home = home("dnsfail", &[("dnsservers", servers.as_str())]);
    let r = remote(home.path(), "nowhere.test", "a@quill.test", &["a@nowhere.test", "b@nowhere.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['D', 'D']);
    assert!(r[2].1.contains("#5.1.2") && r[2].1.contains("nowhere.test"), "{r:?}");
    let r = remote(home.path(), "null.test", "a@quill.test", &["a@null.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['D']);
    assert!(r[1].1.contains("null MX") && r[1].1.contains("#5.1.10"), "{r:?}");
    // dnsmasq refuses names outside .test: a temporary DNS failure.
    let r = remote(home.path(), "elsewhere.example", "a@quill.test", &["a@elsewhere.example"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
    assert!(r[1].1.contains("#4.4.3") && r[1].1.starts_with(quill::mail::proto::remote_report::UNREACHABLE), "{r:?}");
}

#[test]
fn never_deliver_to_ourselves() {
    let Some(dns) = Dns::start(&records(&[
        "--mx-host=loop.test,mx.loop.test,10",
        "--host-record=mx.loop.test,127.0.0.1",
        "--mx-host=self.test,other1.self.test,5",
        "--mx-host=self.test,me.self.test,10",
        "--mx-host=self.test,other2.self.test,20",
        "--host-record=other1.self.test,127.0.0.3",
        "--host-record=me.self.test,127.0.0.4",
        "--host-record=other2.self.test,127.0.0.5",
    ])) else {
        return;
    };
    let servers = dns.servers();
    // An MX on loopback without smtproutes: a loop, refused for good.
    let home1 = home("loop", &[("dnsservers", servers.as_str())]);
    let r = remote(home1.path(), "loop.test", "a@quill.test", &["a@loop.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['D']);
    assert!(r[1].1.contains("MX points back to me: configuration error (#5.4.6)"), "{r:?}");
    // We are MX 10 (control/ipme): MX 20 must not be used, MX 5 is down → temporary.
    let port = free_port("127.0.0.5");
    let worse = Server::start_on("127.0.0.5", port, Script::default());
    let route = format!("self.test::{port}\n");
    let home2 =
        home("self", &[("dnsservers", servers.as_str()), ("smtproutes", route.as_str()), ("ipme", "127.0.0.4\n")]);
    let r = remote(home2.path(), "self.test", "a@quill.test", &["a@self.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
    assert!(r[1].1.contains("127.0.0.3"), "{r:?}");
    assert_eq!(worse.seen().connections, 0, "an MX worse than us is never used");
}

// ---------------------------------------------------------------------------------------
// quill-rspawn.

fn queue_message(home: &Path, id: u64, sender: &str, rcpts: &[&str], dir: &str) {
    let header = quill::mail::queuefile::Header {
        uid: 0,
        pid: 1,
        time: 1_800_000_000,
        nanos: 0,
        envelope: quill::mail::envelope::Envelope {
            sender: sender.as_bytes().to_vec(),
            recipients: rcpts.iter().map(|r| r.as_bytes().to_vec()).collect(),
        },
        dsn: Default::default(),
    };
    let mut bytes = header.encode();
    bytes.extend_from_slice(b"Received: (quill 1 invoked by uid 0); 1 Jan 2027 00:00:00 -0000\n");
    bytes.extend_from_slice(MESSAGE);
    std::fs::write(home.join("queue").join(dir).join(id.to_string()), bytes).expect("write queue file");
}

fn request(slot: u32, id: u64, sender: &str, rcpts: &[&str]) -> Vec<u8> {
    quill::mail::proto::spawn::Request {
        slot,
        id: id.to_string().into_bytes(),
        sender: sender.as_bytes().to_vec(),
        recipients: rcpts.iter().map(|r| r.as_bytes().to_vec()).collect(),
        retry: false,
        backlog: false,
    }
    .encode()
}

#[test]
fn rspawn_runs_deliveries_and_reports_each() {
    let good = Server::start(Script::default());
    let picky =
        Server::start(Script { rcpt: vec!["250 ok".into(), "550 5.1.1 no such user".into()], ..Script::default() });
    let routes = format!("good.test:[127.0.0.1]:{}\npicky.test:[127.0.0.1]:{}\n", good.port(), picky.port());
    let home = home("rspawn", &[("smtproutes", routes.as_str())]);
    queue_message(home.path(), 101, "s@quill.test", &["a@good.test", "x@picky.test", "y@picky.test"], "mess");
    queue_message(home.path(), 102, "s@quill.test", &["b@good.test"], "todo");
    let mut input = Vec::new();
    input.extend(request(1, 101, "s@quill.test", &["x@picky.test", "y@picky.test"]));
    input.extend(request(2, 101, "s@quill.test", &["a@good.test"]));
    input.extend(request(3, 102, "s@quill.test", &["b@good.test"]));
    input.extend(request(4, 999, "s@quill.test", &["c@good.test"]));
    input.extend(request(5, 101, "s@quill.test", &["a@good.test", "b@other.test"]));
    let (out, err, code) = run_bounded(home.path(), "quill-rspawn", &[], &input);
    assert_eq!(code, Some(0), "{err}");
    let mut reader = quill::mail::proto::spawn::Reader::default();
    reader.push(&out);
    let mut reports = std::collections::BTreeMap::new();
    while let Some(fields) = reader.next_frame() {
        let report = quill::mail::proto::spawn::Report::decode(&fields).expect("report");
        reports.insert(report.slot, report.results);
    }
    let letters = |slot: u32| -> String { reports[&slot].iter().map(|r| r.outcome.letter() as char).collect() };
    assert_eq!(reports.len(), 5, "{reports:?} {err}");
    assert_eq!(letters(1), "KD", "{reports:?} {err}");
    assert!(String::from_utf8_lossy(&reports[&1][1].text).contains("550 5.1.1 no such user"));
    assert_eq!(letters(2), "K");
    assert_eq!(letters(3), "K", "todo/ID is a fallback for mess/ID");
    assert_eq!(letters(4), "Z", "a missing message is temporary");
    assert_eq!(letters(5), "ZZ", "mixed domains are refused");
    // The message went out from its start: the queue header is not part of it.
    let seen = good.seen();
    assert_eq!(seen.data.len(), 2);
    assert!(seen.data[0].starts_with(b"Received: (quill 1"), "{}", String::from_utf8_lossy(&seen.data[0]));
}

#[test]
#[cfg(feature = "tls")]
fn verified_tls_checks_the_mx_host_name() {
    let Some(certs) = Certificates::make() else { return };
    let Some(dns) = Dns::start(&records(&[
        "--mx-host=tls.test,mx.tls.test,10",
        "--host-record=mx.tls.test,127.0.0.1",
        "--mx-host=other.test,mx.other.test,10",
        "--host-record=mx.other.test,127.0.0.1",
    ])) else {
        return;
    };
    let (servers, ca) = (dns.servers(), certs.ca());
    let server = Server::start(Script { tls: Some(certs.server("server")), ..Script::default() });
    let routes = format!("tls.test::{0}\nother.test::{0}\n", server.port());
    let home = home(
        "tlsmx",
        &[
            ("dnsservers", servers.as_str()),
            ("smtproutes", routes.as_str()),
            ("tlsdestinations", "tls.test\n.other.test\nother.test:verify\n"),
            ("tlsca", ca.as_str()),
        ],
    );
    let r = remote(home.path(), "tls.test", "a@quill.test", &["a@tls.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K']);
    assert!(r[1].1.contains("mx.tls.test[127.0.0.1] accepted message over TLS"), "{r:?}");
    // The same server as the MX of another domain: its certificate does not name mx.other.test.
    let r = remote(home.path(), "other.test", "a@quill.test", &["a@other.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
    assert!(r[1].1.contains("mx.other.test") && r[1].1.contains("certificate"), "{r:?}");
    assert_eq!(server.seen().data.len(), 1);
}

#[test]
#[cfg(feature = "tls")]
fn verified_tls_matches_the_recipient_domain_not_the_mx_name() {
    // Audit item 12: the MX name comes from unauthenticated DNS, so a certificate that
    // matches only the MX (mx.other.test, the MX of b.test) proves nothing about b.test.
    let Some(certs) = Certificates::make() else { return };
    let Some(dns) = Dns::start(&records(&[
        "--mx-host=b.test,mx.other.test,10",
        "--mx-host=listed.test,mx.other.test,10",
        "--host-record=mx.other.test,127.0.0.1",
        "--host-record=mx.tls.test,127.0.0.1",
    ])) else {
        return;
    };
    let (servers, ca) = (dns.servers(), certs.ca());
    let server = Server::start(Script { tls: Some(certs.server("other")), ..Script::default() });
    let named = Server::start(Script { tls: Some(certs.server("server")), ..Script::default() });
    let routes = format!("b.test::{0}\nlisted.test::{0}\nnamed.test:mx.tls.test:{1}\n", server.port(), named.port());
    let home = home(
        "tlssecure",
        &[
            ("dnsservers", servers.as_str()),
            ("smtproutes", routes.as_str()),
            ("tlsdestinations", "b.test\nlisted.test:verify:mx.other.test\nnamed.test\n"),
            ("tlsca", ca.as_str()),
        ],
    );
    // The MX's own certificate, trusted CA, right MX name: not enough for b.test.
    let r = remote(home.path(), "b.test", "a@quill.test", &["a@b.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
    assert!(r[1].1.contains("TLS handshake") && r[1].1.contains("b.test"), "{r:?}");
    assert!(server.seen().data.is_empty() && !server.seen().commands.iter().any(|c| c.starts_with("MAIL")));
    // The administrator listed the provider's name for this domain: accepted.
    let r = remote(home.path(), "listed.test", "a@quill.test", &["a@listed.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K']);
    assert!(r[1].1.contains("over TLS"), "{r:?}");
    // smtproutes named the relay host: its name is the administrator's word, accepted.
    let r = remote(home.path(), "named.test", "a@quill.test", &["a@named.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K']);
    assert!(r[1].1.contains("mx.tls.test[127.0.0.1] accepted message over TLS"), "{r:?}");
}

// ---------------------------------------------------------------------------------------
// The envelope on the wire (audit item 5).

#[test]
fn envelope_addresses_are_written_as_quoted_paths_or_not_at_all() {
    let server = Server::start(Script::default());
    let home = routed("paths", "example.test", server.port(), &[("timeoutremote", "5")]);
    // The audit's sender: forwarded mail whose sender's quoted local part holds "> RET=…".
    let sender = "x> RET=HDRS ENVID=injected@b.example";
    let rcpts = ["a b@example.test", "bad\r\nRSET@example.test", "ok@example.test", "ctl\x01@example.test"];
    let r = remote(home.path(), "example.test", sender, &rcpts, MESSAGE);
    assert_eq!(folded(&r), vec!['K', 'D', 'K', 'D'], "{r:?}");
    assert!(r[1].1.contains("#5.1.3") && r[1].1.contains("cannot be written"), "{r:?}");
    assert!(r[3].1.contains("#5.1.3"), "{r:?}");
    let seen = server.seen();
    let mail = seen.commands.iter().find(|c| c.starts_with("MAIL")).unwrap().clone();
    assert!(mail.starts_with("MAIL FROM:<\"x> RET=HDRS ENVID=injected\"@b.example> SIZE="), "{mail}");
    let rcpt: Vec<&String> = seen.commands.iter().filter(|c| c.starts_with("RCPT")).collect();
    assert_eq!(rcpt, vec!["RCPT TO:<\"a b\"@example.test>", "RCPT TO:<ok@example.test>"]);
    assert!(!seen.commands.iter().any(|c| c.starts_with("RSET") || c.contains("ctl")), "{:?}", seen.commands);
    drop(seen);
    // What the server read parses back, with quill-smtpd's parser, to the same addresses.
    let path = &mail["MAIL FROM:".len()..];
    let (mailbox, rest) = quill::mail::smtp::parse_path(path.as_bytes(), quill::mail::smtp::PathKind::Reverse).unwrap();
    assert_eq!(mailbox.address(), sender.as_bytes());
    assert!(rest.starts_with(b" SIZE="), "no injected parameter: {}", String::from_utf8_lossy(rest));
    // A sender that cannot be written fails the message for good, before any connection.
    let before = server.seen().connections;
    let r = remote(home.path(), "example.test", "evil\r\nRCPT TO:<x@y>@b.example", &["ok@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['D']);
    assert!(r[1].1.contains("#5.1.7"), "{r:?}");
    assert_eq!(server.seen().connections, before);
}

#[test]
fn a_helo_name_that_is_not_a_host_name_is_never_sent() {
    let server = Server::start(Script::default());
    let home = routed("helo", "example.test", server.port(), &[("helohost", "quill.test\rRSET")]);
    let r = remote(home.path(), "example.test", "a@quill.test", &["a@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
    assert!(r[1].1.contains("helohost"), "{r:?}");
    assert_eq!(server.seen().connections, 0);
}

// ---------------------------------------------------------------------------------------
// Deadlines (audit item 6).

#[test]
fn a_server_that_drips_is_stopped_by_the_run_deadline() {
    // One byte a second never trips timeoutremote (2 s); timeoutremotetotal (3 s) ends it.
    let script = Script { greeting: format!("220 {}", "x".repeat(60)), drip: true, ..Script::default() };
    let server = Server::start(script);
    let extra = [("timeoutremote", "2"), ("timeoutremotetotal", "3")];
    let home = routed("drip", "example.test", server.port(), &extra);
    let r = remote(home.path(), "example.test", "a@quill.test", &["a@example.test", "b@example.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z', 'Z']);
    assert!(r[2].1.contains("timeoutremotetotal") && r[2].1.contains("3 s"), "{r:?}");
    assert_eq!(server.seen().connections, 1, "no second attempt after the deadline");
}

/// Issue 9: quill-rspawn opens the message the way quill-lspawn does (spawn::engine), so a
/// message file swapped for a symbolic link, a FIFO, or a file of another owner is not sent:
/// it is reported temporary, with a warning that names it. (The old quill-rspawn followed the
/// link and sent whatever it pointed to.)
#[test]
fn rspawn_sends_no_message_file_that_is_a_link_a_fifo_or_someone_elses() {
    let server = Server::start(Script::default());
    let routes = format!("good.test:[127.0.0.1]:{}\n", server.port());
    let home = home("rspawnfile", &[("smtproutes", routes.as_str())]);
    let mess = home.path().join("queue/mess");
    // A message file outside the queue, and a link to it where a message should be.
    let outside = common::TempDir::new("rspawnoutside");
    queue_message(home.path(), 301, "s@quill.test", &["a@good.test"], "mess");
    std::fs::rename(mess.join("301"), outside.path().join("301")).expect("move the message out");
    std::os::unix::fs::symlink(outside.path().join("301"), mess.join("301")).expect("symlink");
    // A FIFO: opening it must not hang quill-rspawn.
    assert!(Command::new("mkfifo").arg(mess.join("302")).status().is_ok_and(|s| s.success()), "mkfifo");
    let mut input = request(1, 301, "s@quill.test", &["a@good.test"]);
    input.extend(request(2, 302, "s@quill.test", &["a@good.test"]));
    let mut expected = 2;
    if common::is_root() {
        // A message of another owner than the queue's (root's here): never a message.
        queue_message(home.path(), 303, "s@quill.test", &["a@good.test"], "mess");
        std::os::unix::fs::chown(mess.join("303"), Some(65534), Some(65534)).expect("chown");
        input.extend(request(3, 303, "s@quill.test", &["a@good.test"]));
        expected = 3;
    } else {
        common::skip("a message of another owner needs root to make");
    }
    let (out, err, code) = run_bounded(home.path(), "quill-rspawn", &[], &input);
    assert_eq!(code, Some(0), "{err}");
    let mut reader = quill::mail::proto::spawn::Reader::default();
    reader.push(&out);
    let mut reports = std::collections::BTreeMap::new();
    while let Some(fields) = reader.next_frame() {
        let report = quill::mail::proto::spawn::Report::decode(&fields).expect("report");
        reports.insert(report.slot, report.results);
    }
    assert_eq!(reports.len(), expected, "{reports:?} {err}");
    for (slot, results) in &reports {
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].outcome.letter(), b'Z', "slot {slot}: {results:?}");
        let text = String::from_utf8_lossy(&results[0].text).into_owned();
        assert!(text.ends_with("(#4.3.0)"), "slot {slot}: {text}");
    }
    assert!(String::from_utf8_lossy(&reports[&1][0].text).contains("symbolic link"), "{reports:?}");
    assert!(err.contains("quill-rspawn: warning: unable to use message 301: it is a symbolic link"), "{err}");
    assert!(err.contains("quill-rspawn: warning: unable to use message 302: it is not a regular file"), "{err}");
    if expected == 3 {
        assert!(String::from_utf8_lossy(&reports[&3][0].text).contains("not a regular file owned by the queue"));
        assert!(
            err.contains("unable to use message 303: it is not a regular file owned by the queue's owner"),
            "{err}"
        );
    }
    assert_eq!(server.seen().connections, 0, "nothing was sent");
}

/// Issue 9: SIGTERM stops a spawner as end of input does: it starts nothing more, reports what
/// runs, and exits 0, even while quill-send keeps its end of fd 0 open.
#[test]
fn rspawn_stops_on_sigterm_after_reporting_what_runs() {
    let bin = common::TempDir::new("rspawnterm");
    std::fs::copy(common::bin("quill-rspawn"), bin.path().join("quill-rspawn")).expect("copy quill-rspawn");
    let started = bin.path().join("started");
    // A quill-remote that takes a moment, then delivers every recipient.
    let script = format!("#!/bin/sh\ntouch {}\nsleep 1\nprintf 'rok\\0Kdone\\0'\n", started.display());
    common::write_script(&bin.path().join("quill-remote"), script);
    let home = home("rspawnterm", &[]);
    queue_message(home.path(), 401, "s@quill.test", &["a@term.test"], "mess");
    // The fake quill-remote is a shell script that writes files: confinement (which lets
    // quill-rspawn run only the real quill-remote, and write nothing) is off for this test.
    let mut child = Command::new(bin.path().join("quill-rspawn"))
        .env("QUILL_HOME", home.path())
        .env("QUILL_CONFINE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run quill-rspawn");
    // fd 0 stays open until the end of the test: only SIGTERM can end quill-rspawn.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&request(4, 401, "s@quill.test", &["a@term.test"])).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    assert!(common::wait_for(Duration::from_secs(20), || started.exists()), "quill-remote did not start");
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let done = common::wait_for(Duration::from_secs(20), || matches!(child.try_wait(), Ok(Some(_))));
    if !done {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    drop(stdin);
    let out = reader.join().unwrap();
    assert!(done && status.success(), "quill-rspawn did not end on SIGTERM: {status:?}");
    let mut frames = quill::mail::proto::spawn::Reader::default();
    frames.push(&out);
    let report = quill::mail::proto::spawn::Report::decode(&frames.next_frame().expect("a report")).expect("report");
    assert_eq!((report.slot, report.results[0].outcome.letter()), (4, b'K'), "{report:?}");
}

#[test]
fn rspawn_kills_a_delivery_past_its_deadline() {
    // A quill-remote that ignores every deadline, and starts a child of its own: quill-rspawn
    // runs the quill-remote next to itself, so both go into a directory of their own.
    let bin = common::TempDir::new("rspawnbin");
    std::fs::copy(common::bin("quill-rspawn"), bin.path().join("quill-rspawn")).expect("copy quill-rspawn");
    let pidfile = bin.path().join("child.pid");
    let script = format!("#!/bin/sh\nsleep 300 &\necho $! $$ > {}\nwait\n", pidfile.display());
    common::write_script(&bin.path().join("quill-remote"), script);
    let home = home("rspawnkill", &[("timeoutremotetotal", "1")]);
    queue_message(home.path(), 201, "s@quill.test", &["a@slow.test", "b@slow.test"], "mess");
    let input = request(7, 201, "s@quill.test", &["a@slow.test", "b@slow.test"]);
    // The fake quill-remote is a shell script that writes files: confinement (which lets
    // quill-rspawn run only the real quill-remote, and write nothing) is off for this test.
    let mut child = Command::new(bin.path().join("quill-rspawn"))
        .env("QUILL_HOME", home.path())
        .env("QUILL_CONFINE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quill-rspawn");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&input).unwrap();
    drop(stdin);
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let done = common::wait_for(Duration::from_secs(50), || matches!(child.try_wait(), Ok(Some(_))));
    let pids = std::fs::read_to_string(&pidfile).unwrap_or_default();
    if !done {
        // Clean up what quill-rspawn left running (it holds our stderr pipe).
        let _ = child.kill();
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    let err = err_reader.join().unwrap();
    assert!(done && status.success(), "quill-rspawn did not end: {status:?} {err}");
    let mut frames = quill::mail::proto::spawn::Reader::default();
    frames.push(&out);
    let report = quill::mail::proto::spawn::Report::decode(&frames.next_frame().expect("a report")).expect("report");
    assert_eq!(report.slot, 7);
    let letters: String = report.results.iter().map(|r| r.outcome.letter() as char).collect();
    assert_eq!(letters, "ZZ");
    let text = String::from_utf8_lossy(&report.results[0].text).into_owned();
    assert!(text.contains("deadline") && text.contains("timeoutremotetotal"), "{text}");
    assert!(err.contains("quill-rspawn: warning: unable to wait longer for quill-remote"), "{err}");
    // The fake's own child went with it (the whole process group was killed).
    let pid = pids.split_whitespace().next().unwrap_or_default().to_string();
    let gone = common::wait_for(Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    });
    assert!(!pid.is_empty() && gone, "the child {pid} of the killed job is still running");
}

// ---------------------------------------------------------------------------------------
// smtproutes with addresses (audit item 16).

#[test]
fn smtproutes_addresses_need_no_dns() {
    // The home's DNS is a dead end: a lookup would defer, so K means no lookup was made.
    let server = Server::start(Script::default());
    let port = server.port();
    let routes = format!("bare.test:127.0.0.1:{port}\nbracket.test:[127.0.0.1]:{port}\n");
    let home4 = home("bareip", &[("smtproutes", routes.as_str())]);
    for domain in ["bare.test", "bracket.test"] {
        let r = remote(home4.path(), domain, "a@quill.test", &[&format!("a@{domain}")], MESSAGE);
        assert_eq!(folded(&r), vec!['K'], "{domain}: {r:?}");
        assert!(r[1].1.contains("[127.0.0.1]"), "{r:?}");
    }
    assert_eq!(server.seen().data.len(), 2);
    if TcpListener::bind("[::1]:0").is_err() {
        common::skip("no IPv6 loopback");
        return;
    }
    let six = Server::start_on("::1", 0, Script::default());
    let route = format!("six.test:[::1]:{}\n", six.port());
    let home6 = home("bareip6", &[("smtproutes", route.as_str())]);
    let r = remote(home6.path(), "six.test", "a@quill.test", &["a@six.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['K'], "{r:?}");
    assert_eq!(six.seen().data.len(), 1);
}

// ---------------------------------------------------------------------------------------
// A hostile DNS server (audit item 7).

/// A UDP DNS server on 127.0.0.1 that answers every query with `answer(question name)` (the
/// raw packet, made from the query), counting the queries. It stops when dropped.
struct HostileDns {
    port: u16,
    queries: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostileDns {
    fn start(answer: fn(&quill::mail::dns::Message) -> Vec<u8>) -> HostileDns {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let port = socket.local_addr().expect("addr").port();
        let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (queries2, stop2) = (queries.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut buffer = [0u8; 2048];
            while !stop2.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(60) {
                let Ok((n, from)) = socket.recv_from(&mut buffer) else { continue };
                let Ok(query) = quill::mail::dns::decode(&buffer[..n]) else { continue };
                queries2.fetch_add(1, Ordering::SeqCst);
                let _ = socket.send_to(&answer(&query), from);
            }
        });
        HostileDns { port, queries, stop, thread: Some(thread) }
    }

    fn count(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for HostileDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An answer to `query` with one CNAME record from the question name to `target`.
fn cname_answer(query: &quill::mail::dns::Message, target: &[u8]) -> Vec<u8> {
    use quill::mail::dns::{Data, Record, CLASS_IN, TYPE_CNAME};
    let name = query.questions.first().map(|q| q.0.clone()).unwrap_or_default();
    let record = Record { name, rtype: TYPE_CNAME, class: CLASS_IN, ttl: 60, data: Data::Cname(target.to_vec()) };
    let message = quill::mail::dns::Message {
        id: query.id,
        flags: 0x8180,
        questions: query.questions.clone(),
        answers: vec![record],
        ..Default::default()
    };
    quill::mail::dns::encode_message(&message).expect("encode")
}

#[test]
fn hostile_cname_answers_end_in_a_bounded_deferral() {
    // The audit's packet: a CNAME whose target is one label "test." (a dot inside a label).
    // The encoder cannot write that, so a placeholder label of the same length is patched.
    let dotted = HostileDns::start(|query| {
        let mut packet = cname_answer(query, b"xxxxx");
        let at = packet.windows(7).rposition(|w| w == b"\x05xxxxx\x00").expect("placeholder");
        packet[at + 1..at + 6].copy_from_slice(b"test.");
        packet
    });
    let servers = format!("127.0.0.1:{}\noptions timeout:1 attempts:2\n", dotted.port);
    let home1 = home("dnsdot", &[("dnsservers", servers.as_str())]);
    let r = remote(home1.path(), "victim.test", "a@quill.test", &["a@victim.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
    assert!(r[1].1.contains("#4.4.3") && r[1].1.contains("invalid CNAME target"), "{r:?}");
    let count = dotted.count();
    eprintln!("queries for the dotted CNAME: {count}");
    assert!((1..=2).contains(&count), "{count} queries");
    // An endless chain of valid names: each answer points one label deeper.
    let deeper = HostileDns::start(|query| {
        let name = query.questions.first().map(|q| q.0.clone()).unwrap_or_default();
        cname_answer(query, &[b"a.".as_slice(), &name].concat())
    });
    let servers = format!("127.0.0.1:{}\noptions timeout:1 attempts:2\n", deeper.port);
    let home2 = home("dnschain", &[("dnsservers", servers.as_str())]);
    let r = remote(home2.path(), "victim.test", "a@quill.test", &["a@victim.test"], MESSAGE);
    assert_eq!(folded(&r), vec!['Z']);
    assert!(r[1].1.contains("#4.4.3") && r[1].1.contains("CNAME chain too long"), "{r:?}");
    let count = deeper.count();
    eprintln!("queries for the endless chain: {count}");
    assert!((1..=quill::mail::dns::MAX_QUERIES).contains(&count), "{count} queries");
}
