//! quill-smtpd over real loopback sockets: a tiny listener runs the real binary per connection
//! with the socket on fd 0/1 and the UCSPI-TCP environment, QMAILQUEUE points at a script that
//! records the message (fd 0) and envelope (fd 1). Behaviours are scripted dialogues in
//! tests/data/*.smtp; what a script cannot say (sizes, timing, TLS, real clients) is below.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FAKE_QUEUE: &str = r#"#!/bin/sh
# Records one submission: fd 0 is the message, fd 1 the envelope.
d="$QQ_DIR/$(date +%s%N).$$"
mkdir -p "$d"
cat > "$d/message"
cat <&1 > "$d/envelope"
echo "${QUILL_DKIMSIGN:-}" > "$d/sign"
code=0
[ -f "$QQ_DIR/../exitcode" ] && code=$(cat "$QQ_DIR/../exitcode")
[ "$code" = 82 ] && cat "$QQ_DIR/../reply" >&6
echo "$code" > "$d/code"
exit "$code"
"#;

const CHECKPASSWORD: &str = r#"#!/bin/sh
# A checkpassword program: alice/secret is good, user tempfail fails temporarily.
tr '\0' '\n' <&3 > "$CHECKPW_LOG.$$"
echo "$@" > "$CHECKPW_LOG.$$.args"
user=$(sed -n 1p "$CHECKPW_LOG.$$")
pass=$(sed -n 2p "$CHECKPW_LOG.$$")
[ "$user" = tempfail ] && exit 111
[ "$user" = alice ] && [ "$pass" = secret ] && exec "$@"
exit 1
"#;

/// What a test server is set up with.
#[derive(Default, Clone)]
struct Setup {
    controls: Vec<(String, String)>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    queue_exit: Option<String>,
    queue_reply: Option<String>,
    tls: bool,
    /// Run quill-smtpd as this uid and gid (as quilld runs it), not as the test's user.
    user: Option<(u32, u32)>,
    /// No QMAILQUEUE filter: messages would go to quill-queued (absent here, so DATA gets 451),
    /// and the session is confined as a real one is (a session with a filter is not).
    no_filter: bool,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            controls: vec![
                ("me".into(), "mx.example.com".into()),
                ("rcpthosts".into(), "example.com\n.sub.example.org\n".into()),
            ],
            ..Setup::default()
        }
    }
    fn control(mut self, name: &str, value: &str) -> Setup {
        self.controls.retain(|(n, _)| n != name);
        self.controls.push((name.into(), value.into()));
        self
    }
    fn env(mut self, name: &str, value: &str) -> Setup {
        self.env.push((name.into(), value.into()));
        self
    }
    fn auth(mut self) -> Setup {
        self.args = vec!["$CHECKPW".into()];
        self
    }
}

struct Server {
    home: common::TempDir,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    children: Arc<Mutex<Vec<Child>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Make a self-signed certificate with openssl; None (and a SKIP line) without openssl.
fn make_certificate(dir: &Path) -> Option<()> {
    if common::skip_without("openssl") {
        return None;
    }
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    status.success().then_some(())
}

impl Server {
    /// None when the setup needs TLS and openssl is missing.
    fn start(setup: &Setup) -> Option<Server> {
        let controls: Vec<(&str, &str)> = setup.controls.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let home = common::home("smtpd", &controls);
        let dir = home.path().to_path_buf();
        std::fs::create_dir_all(dir.join("qq")).expect("qq dir");
        for (name, text) in [("fakeqq", FAKE_QUEUE), ("checkpw", CHECKPASSWORD)] {
            common::write_script(&dir.join(name), text);
        }
        if let Some(code) = &setup.queue_exit {
            std::fs::write(dir.join("exitcode"), code).expect("exit code");
        }
        if let Some(reply) = &setup.queue_reply {
            std::fs::write(dir.join("reply"), reply).expect("reply");
        }
        if setup.tls {
            make_certificate(&dir.join("control"))?;
            std::fs::write(dir.join("control/tlscert"), "cert.pem\n").expect("tlscert");
            std::fs::write(dir.join("control/tlskey"), dir.join("control/key.pem").to_string_lossy().as_bytes())
                .expect("tlskey");
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let children = Arc::new(Mutex::new(Vec::new()));
        let (stop2, children2, setup2, dir2) = (stop.clone(), children.clone(), setup.clone(), dir.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: the test drops the server within minutes; the loop checks `stop`.
            for _ in 0..200_000 {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nonblocking(false);
                        let child = spawn_smtpd(&dir2, &setup2, stream, peer, addr);
                        children2.lock().expect("lock").push(child);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Some(Server { home, addr, stop, children, thread: Some(thread) })
    }

    fn dir(&self) -> &Path {
        self.home.path()
    }

    fn connect(&self) -> Client {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        Client { stream: Box::new(stream.try_clone().expect("clone")), tcp: stream, buf: Vec::new() }
    }

    /// Messages the fake queue accepted: complete envelope and exit 0, oldest first.
    fn queued(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in common::files(&self.dir().join("qq")) {
            let code = std::fs::read_to_string(entry.join("code")).unwrap_or_default();
            let envelope = std::fs::read(entry.join("envelope")).unwrap_or_default();
            if code.trim() == "0" && envelope.ends_with(b"\0\0") {
                out.push((std::fs::read(entry.join("message")).unwrap_or_default(), envelope));
            }
        }
        out
    }

    /// Pids of the quill-smtpd processes started so far.
    fn pids(&self) -> Vec<u32> {
        self.children.lock().expect("lock").iter().map(Child::id).collect()
    }

    /// Wait (bounded) for every session to end, then return the log.
    fn log(&self) -> String {
        let children = self.children.clone();
        common::wait_for(Duration::from_secs(20), || {
            children.lock().expect("lock").iter_mut().all(|c| matches!(c.try_wait(), Ok(Some(_))))
        });
        std::fs::read_to_string(self.dir().join("log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for child in self.children.lock().expect("lock").iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_smtpd(dir: &Path, setup: &Setup, stream: TcpStream, peer: SocketAddr, local: SocketAddr) -> Child {
    let input = OwnedFd::from(stream.try_clone().expect("clone"));
    let output = OwnedFd::from(stream);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("log")).expect("log");
    let args: Vec<String> =
        setup.args.iter().map(|a| a.replace("$CHECKPW", &dir.join("checkpw").to_string_lossy())).collect();
    let mut command = Command::new(common::bin("quill-smtpd"));
    command
        .args(&args)
        .env("QUILL_HOME", dir)
        .env("PROTO", "TCP")
        .env("TCPREMOTEIP", peer.ip().to_string())
        .env("TCPREMOTEPORT", peer.port().to_string())
        .env("TCPLOCALIP", local.ip().to_string())
        .env("TCPLOCALPORT", local.port().to_string())
        .env("QMAILQUEUE", dir.join("fakeqq"))
        .env("QQ_DIR", dir.join("qq"))
        .env("CHECKPW_LOG", dir.join("checkpw.log"))
        .env_remove("RELAYCLIENT")
        .env_remove("DATABYTES")
        .env_remove("SMTPS")
        .env_remove("AUTH_INSECURE")
        .env_remove("AUTH_REQUIRED")
        .stdin(Stdio::from(input))
        .stdout(Stdio::from(output))
        .stderr(Stdio::from(log));
    for (name, value) in &setup.env {
        command.env(name, value);
    }
    if setup.no_filter {
        command.env_remove("QMAILQUEUE").env_remove("QUILL_CONFINE");
    }
    if let Some((uid, gid)) = setup.user {
        use std::os::unix::process::CommandExt;
        command.uid(uid).gid(gid);
    }
    command.spawn().expect("spawn quill-smtpd")
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

struct Client {
    stream: Box<dyn Stream>,
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
        self.stream.flush().expect("flush");
    }

    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                return Some(self.buf.drain(..=i).collect());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// One whole reply (all its lines), or None at the end of the connection.
    fn reply(&mut self) -> Option<String> {
        let mut text = String::new();
        loop {
            let line = self.line()?;
            text.push_str(&String::from_utf8_lossy(&line));
            if line.len() < 4 || line[3] != b'-' {
                return Some(text);
            }
        }
    }

    fn expect(&mut self, prefix: &str) -> String {
        let reply = self.reply().unwrap_or_else(|| panic!("connection closed, expected {prefix}"));
        assert!(reply.starts_with(prefix), "expected {prefix:?}, got {reply:?}");
        reply
    }

    fn command(&mut self, line: &str, prefix: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.expect(prefix)
    }

    fn closed(&mut self) -> bool {
        self.reply().is_none()
    }

    #[cfg(feature = "tls")]
    /// Switch to TLS (after `220` to STARTTLS, or at once for implicit TLS).
    fn start_tls(&mut self) {
        assert!(self.buf.is_empty(), "unread plaintext before TLS");
        let tcp = self.tcp.try_clone().expect("clone");
        self.stream = Box::new(tls_client::connect(tcp));
    }
}

#[cfg(feature = "tls")]
mod tls_client {
    //! A rustls client that accepts any certificate: the tests check the server's TLS, not
    //! its certificate.
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use std::net::TcpStream;
    use std::sync::Arc;

    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub fn connect(tcp: TcpStream) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("name");
        let mut connection = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut tcp = tcp;
        while connection.is_handshaking() {
            connection.complete_io(&mut tcp).expect("TLS handshake");
        }
        rustls::StreamOwned::new(connection, tcp)
    }
}

// ---------------------------------------------------------------------------------------------
// Scripted dialogues

/// Decode `\r \n \t \0 \\ \xHH` escapes.
fn unescape(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            i += 1;
            match bytes[i] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'0' => out.push(0),
                b'x' if i + 2 < bytes.len() => {
                    out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).expect("hex escape"));
                    i += 2;
                }
                other => out.push(other),
            }
        } else {
            out.push(bytes[i]);
        }
        i += 1;
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Run one dialogue file. Header lines (before the first step): `@control NAME VALUE`,
/// `@env NAME=VALUE`, `@auth` (checkpassword on the command line), `@queue-exit N`,
/// `@queue-reply TEXT`. Steps: `C: text` sends text+CRLF (consecutive C/R lines go out in one
/// write: a pipelined batch), `C*N: text` sends it N times, `R: text` sends raw bytes,
/// `S: prefix` reads one reply and checks its start, `S: closed` expects the end of the
/// connection, `H: text` / `X: text` the last reply does / does not contain text, `Q: N`
/// messages queued so far, `M: text` the last queued message contains text, `E: text` its
/// envelope is exactly text, `L: text` the log contains text (checked at the end).
/// Escapes as in [`unescape`].
fn run_dialogue(path: &Path) -> Result<(), String> {
    let script = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut setup = Setup::new();
    let mut steps = Vec::new();
    for (number, line) in script.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('@') {
            let (word, value) = rest.split_once(' ').unwrap_or((rest, ""));
            match word {
                "control" => {
                    let (name, value) = value.split_once(' ').unwrap_or((value, ""));
                    if value == "-" {
                        setup.controls.retain(|(n, _)| n != name);
                    } else {
                        setup = setup.control(name, &String::from_utf8_lossy(&unescape(value)));
                    }
                }
                "env" => {
                    let (name, value) = value.split_once('=').unwrap_or((value, ""));
                    setup = setup.env(name, &String::from_utf8_lossy(&unescape(value)));
                }
                "auth" => setup = setup.auth(),
                "tls" => setup.tls = true,
                "queue-exit" => setup.queue_exit = Some(value.to_string()),
                "queue-reply" => setup.queue_reply = Some(value.to_string()),
                other => return Err(format!("line {}: unknown directive @{other}", number + 1)),
            }
            continue;
        }
        let (tag, text) = line.split_once(": ").unwrap_or((line.trim_end_matches(':'), ""));
        steps.push((number + 1, tag.to_string(), text.to_string()));
    }
    let server = match Server::start(&setup) {
        Some(s) => s,
        None => return Ok(()),
    };
    let mut client = server.connect();
    let mut batch = Vec::new();
    let mut last = String::new();
    let mut log_checks = Vec::new();
    for (number, tag, text) in steps {
        let fail = |what: String| format!("line {number}: {what}");
        if tag != "C" && tag != "R" && !tag.starts_with("C*") && !batch.is_empty() {
            client.send(&batch);
            batch.clear();
        }
        match tag.as_str() {
            "C" => {
                batch.extend_from_slice(&unescape(&text));
                batch.extend_from_slice(b"\r\n");
            }
            "R" => batch.extend_from_slice(&unescape(&text)),
            t if t.starts_with("C*") => {
                let count: usize = t[2..].parse().map_err(|_| fail("bad repeat".into()))?;
                for _ in 0..count {
                    batch.extend_from_slice(&unescape(&text));
                    batch.extend_from_slice(b"\r\n");
                }
            }
            "S" if text == "closed" => {
                if let Some(reply) = client.reply() {
                    return Err(fail(format!("expected the end of the connection, got {reply:?}")));
                }
            }
            "S" => {
                last = client.reply().ok_or_else(|| fail(format!("connection closed, expected {text:?}")))?;
                if !last.starts_with(&text) {
                    return Err(fail(format!("expected {text:?}, got {last:?}")));
                }
            }
            "H" if !contains(last.as_bytes(), &unescape(&text)) => {
                return Err(fail(format!("{last:?} lacks {text:?}")))
            }
            "X" if contains(last.as_bytes(), &unescape(&text)) => return Err(fail(format!("{last:?} has {text:?}"))),
            "H" | "X" => {}
            "Q" => {
                let want: usize = text.parse().map_err(|_| fail("bad count".into()))?;
                let got = server.queued().len();
                if got != want {
                    return Err(fail(format!("{got} messages queued, expected {want}")));
                }
            }
            "M" | "E" => {
                let queued = server.queued();
                let Some((message, envelope)) = queued.last() else {
                    return Err(fail("nothing queued".into()));
                };
                let want = unescape(&text);
                if tag == "M" && !contains(message, &want) {
                    return Err(fail(format!("message {:?} lacks {text:?}", String::from_utf8_lossy(message))));
                }
                if tag == "E" && *envelope != want {
                    return Err(fail(format!("envelope {:?}, expected {text:?}", String::from_utf8_lossy(envelope))));
                }
            }
            "L" => log_checks.push((number, text)),
            other => return Err(fail(format!("unknown step {other}"))),
        }
    }
    if !batch.is_empty() {
        client.send(&batch);
    }
    drop(client);
    if !log_checks.is_empty() {
        let log = server.log();
        for (number, text) in log_checks {
            if !log.contains(&text) {
                return Err(format!("line {number}: log lacks {text:?}:\n{log}"));
            }
        }
    }
    Ok(())
}

#[test]
fn dialogues() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut files: Vec<PathBuf> =
        common::files(&dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "smtp")).collect();
    files.sort();
    assert!(!files.is_empty(), "no dialogues in {}", dir.display());
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match run_dialogue(file) {
            Ok(()) => eprintln!("dialogue {name}: ok"),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} dialogues failed:\n{}", failures.len(), files.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// What a script cannot say

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn five_megabyte_line_is_skipped_in_bounded_memory() {
    let server = Server::start(&Setup::new()).expect("server");
    let mut client = server.connect();
    client.expect("220");
    let mut big = b"NOOP ".to_vec();
    big.resize(5 << 20, b'A');
    big.extend_from_slice(b"\r\nNOOP\r\n");
    client.send(&big);
    client.expect("500 5.5.2");
    client.expect("250 2.0.0");
    // The same in a message: a 5 MB line without a newline is streamed, not held.
    client.command("EHLO test", "250");
    client.command("MAIL FROM:<a@b.example>", "250");
    client.command("RCPT TO:<u@example.com>", "250");
    client.command("DATA", "354");
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    body.resize(5 << 20, b'B');
    body.extend_from_slice(b"\r\n.\r\n");
    client.send(&body);
    client.expect("250 2.0.0");
    let pid = server.pids()[0];
    let peak = status_kb(pid, "VmHWM:").expect("VmHWM");
    eprintln!("quill-smtpd peak RSS after a 5 MB command line and a 5 MB message line: {peak} kB");
    assert!(peak < 48 * 1024, "peak RSS {peak} kB");
    client.command("QUIT", "221");
    let queued = server.queued();
    assert_eq!(queued.len(), 1);
    assert!(queued[0].0.len() > 5 << 20);
}

#[test]
fn disconnect_during_data_queues_nothing() {
    let server = Server::start(&Setup::new()).expect("server");
    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    client.command("MAIL FROM:<a@b.example>", "250");
    client.command("RCPT TO:<u@example.com>", "250");
    client.command("DATA", "354");
    client.send(b"Subject: cut short\r\n\r\nbody\r\n");
    drop(client);
    let log = server.log();
    assert!(log.contains("messages=0 eof"), "{log}");
    assert!(server.queued().is_empty());
    // The queue program was started and saw the message, but no envelope. It may still be
    // finishing: quill-smtpd does not wait for a queue program it abandoned.
    let qq = server.dir().join("qq");
    assert!(common::wait_for(Duration::from_secs(20), || {
        common::files(&qq).first().is_some_and(|run| run.join("code").exists())
    }));
    let runs = common::files(&qq);
    assert_eq!(runs.len(), 1);
    assert_eq!(std::fs::read(runs[0].join("envelope")).unwrap_or_default(), b"");
}

#[test]
fn idle_session_memory() {
    let server = Server::start(&Setup::new()).expect("server");
    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    let pid = server.pids()[0];
    let rss = status_kb(pid, "VmRSS:").expect("VmRSS");
    eprintln!("quill-smtpd idle session RSS: {rss} kB");
    assert!(rss < 32 * 1024, "idle RSS {rss} kB");
    client.command("QUIT", "221");
}

#[test]
fn slow_client_times_out() {
    let server = Server::start(&Setup::new().control("timeoutsmtpd", "1")).expect("server");
    let mut client = server.connect();
    client.expect("220");
    client.send(b"EHLO slow");
    client.expect("421 4.4.2");
    assert!(client.closed());
    assert!(server.log().contains("timeout"));
}

#[test]
fn too_many_commands_closes_session() {
    let server = Server::start(&Setup::new()).expect("server");
    let mut client = server.connect();
    client.expect("220");
    let mut batch = Vec::new();
    for _ in 0..10_001 {
        batch.extend_from_slice(b"NOOP\r\n");
    }
    let writer = {
        let mut tcp = client.tcp.try_clone().expect("clone");
        std::thread::spawn(move || {
            let _ = tcp.write_all(&batch);
        })
    };
    for _ in 0..10_000 {
        client.expect("250 2.0.0");
    }
    client.expect("421 4.7.0");
    assert!(client.closed());
    let _ = writer.join();
    assert!(server.log().contains("too many commands"));
}

#[test]
fn session_byte_limit() {
    // databytes 1000 makes the session limit 64 MiB.
    let server = Server::start(&Setup::new().control("databytes", "1000")).expect("server");
    let mut client = server.connect();
    client.expect("220");
    client.command("HELO test", "250");
    client.command("MAIL FROM:<a@b.example>", "250");
    client.command("RCPT TO:<u@example.com>", "250");
    client.command("DATA", "354");
    let line = [b'x'; 998].iter().copied().chain(*b"\r\n").collect::<Vec<u8>>();
    let mut tcp = client.tcp.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        for _ in 0..70_000 {
            if tcp.write_all(&line).is_err() {
                return;
            }
        }
    });
    client.expect("421 4.7.0");
    assert!(client.closed());
    let _ = writer.join();
    assert!(server.queued().is_empty());
    assert!(server.log().contains("too much data"));
}

#[test]
fn checkpassword_gets_credentials_on_fd3() {
    let server = Server::start(&Setup::new().auth().env("AUTH_INSECURE", "1")).expect("server");
    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    client.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "235 2.7.0");
    client.command("QUIT", "221");
    let logs: Vec<PathBuf> = common::files(server.dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("checkpw.log.") && !p.to_string_lossy().ends_with(".args"))
        .collect();
    assert_eq!(logs.len(), 1);
    let fd3 = std::fs::read_to_string(&logs[0]).expect("fd 3 record");
    let fields: Vec<&str> = fd3.split('\n').collect();
    assert_eq!(&fields[..2], &["alice", "secret"]);
    assert!(fields[2].starts_with('<') && fields[2].ends_with("@mx.example.com>"), "timestamp {:?}", fields[2]);
    let args = std::fs::read_to_string(format!("{}.args", logs[0].display())).expect("args");
    assert_eq!(args.trim(), "/bin/true");
    assert!(server.log().contains("auth 127.0.0.1 user=alice ok"));
}

#[cfg(feature = "tls")]
fn tls_setup() -> Setup {
    let mut setup = Setup::new().auth();
    setup.tls = true;
    setup
}

#[cfg(feature = "tls")]
#[test]
fn starttls_then_auth_and_mail() {
    let Some(server) = Server::start(&tls_setup()) else { return };
    let mut client = server.connect();
    client.expect("220");
    let ehlo = client.command("EHLO test", "250");
    assert!(ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"), "{ehlo}");
    client.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "538 5.7.11");
    client.command("STARTTLS", "220 2.0.0");
    client.start_tls();
    client.command("MAIL FROM:<a@b.example>", "503 5.5.1");
    let ehlo = client.command("EHLO test", "250");
    assert!(!ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    client.command("STARTTLS", "503");
    client.command("AUTH LOGIN", "334 VXNlcm5hbWU6");
    client.command("YWxpY2U=", "334 UGFzc3dvcmQ6");
    client.command("c2VjcmV0", "235 2.7.0");
    client.command("MAIL FROM:<alice@example.com>", "250");
    client.command("RCPT TO:<someone@elsewhere.example>", "250");
    client.command("DATA", "354");
    client.send(b"Subject: over TLS\r\n\r\nhello\r\n.\r\n");
    client.expect("250 2.0.0");
    client.command("QUIT", "221");
    let queued = server.queued();
    assert_eq!(queued.len(), 1);
    let message = String::from_utf8_lossy(&queued[0].0).into_owned();
    assert!(
        message
            .starts_with("Received: from test ([127.0.0.1])\n\tby mx.example.com (quill) with ESMTPSA (TLSv1.3 TLS13_"),
        "{message}"
    );
    assert!(message.contains("authenticated as alice)"), "{message}");
    let log = server.log();
    assert!(log.contains("tls=TLSv1.3:") && log.contains("auth=alice"), "{log}");
}

#[cfg(feature = "tls")]
#[test]
fn starttls_discards_pipelined_plaintext() {
    let Some(server) = Server::start(&tls_setup()) else { return };
    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    client.command("MAIL FROM:<a@b.example>", "250");
    // The injected commands travel in the same packet as STARTTLS: if the server kept them,
    // they would run inside the TLS session.
    client.send(b"STARTTLS\r\nRSET\r\nEHLO injected\r\nMAIL FROM:<evil@evil.example>\r\n");
    client.expect("220 2.0.0");
    client.start_tls();
    // The first reply inside TLS answers our NOOP, not an injected command.
    client.command("NOOP", "250 2.0.0 ok");
    client.command("RCPT TO:<u@example.com>", "503 5.5.1");
    client.command("MAIL FROM:<a@b.example>", "503 5.5.1");
    client.command("QUIT", "221");
    assert!(server.log().contains("discarded"));
}

#[cfg(feature = "tls")]
#[test]
fn implicit_tls() {
    let Some(server) = Server::start(&tls_setup().env("SMTPS", "1")) else { return };
    let mut client = server.connect();
    client.start_tls();
    client.expect("220 mx.example.com ESMTP");
    let ehlo = client.command("EHLO test", "250");
    let rss = status_kb(server.pids()[0], "VmRSS:").expect("VmRSS");
    eprintln!("quill-smtpd idle TLS session RSS: {rss} kB");
    assert!(!ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    client.command("QUIT", "221");
}

/// A key file that no TLS library can parse, written over the test server's key.
#[cfg(feature = "tls")]
fn break_key(server: &Server) -> Vec<u8> {
    let key = server.dir().join("control/key.pem");
    let good = std::fs::read(&key).expect("key");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n").expect("break key");
    good
}

#[cfg(feature = "tls")]
#[test]
fn the_key_is_read_only_when_starttls_comes() {
    let Some(server) = Server::start(&tls_setup()) else { return };
    let good = break_key(&server);
    // A session that never asks for TLS never reads the key: offered (the files are there)
    // and unparseable, it does not matter.
    let mut client = server.connect();
    client.expect("220");
    let ehlo = client.command("EHLO test", "250");
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    client.command("MAIL FROM:<a@b.example>", "250");
    client.command("RCPT TO:<u@example.com>", "250");
    client.command("DATA", "354");
    client.send(b"Subject: in the clear\r\n\r\nhello\r\n.\r\n");
    client.expect("250 2.0.0");
    client.command("QUIT", "221");
    assert_eq!(server.queued().len(), 1);
    assert!(!server.log().contains("warning"), "{}", server.log());
    // STARTTLS reads it: broken, a 454 and a log line, and the session goes on in the clear.
    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    client.command("STARTTLS", "454 4.7.0");
    client.command("NOOP", "250");
    // Mended while the session runs: the next STARTTLS reads the new file, no restart needed.
    std::fs::write(server.dir().join("control/key.pem"), &good).expect("mend key");
    client.command("STARTTLS", "220 2.0.0");
    client.start_tls();
    let ehlo = client.command("EHLO test", "250");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    client.command("QUIT", "221");
    let log = server.log();
    assert!(
        log.contains("quill-smtpd: warning: unable to ") && log.contains("; STARTTLS refused to 127.0.0.1"),
        "{log}"
    );
    assert!(log.contains("tls=TLSv1."), "{log}");
}

#[cfg(feature = "tls")]
#[test]
fn implicit_tls_with_a_broken_key_closes_with_a_log_line() {
    let Some(server) = Server::start(&tls_setup().env("SMTPS", "1")) else { return };
    break_key(&server);
    let mut client = server.connect();
    assert!(client.closed(), "no greeting, no TLS, only the end of the connection");
    let log = server.log();
    assert!(log.contains("quill-smtpd: warning: unable to ") && log.contains("; implicit TLS refused"), "{log}");
}

#[test]
fn broken_certificate_means_no_starttls() {
    let server = Server::start(&Setup::new().control("tlscert", "/nonexistent/cert.pem")).expect("server");
    let mut client = server.connect();
    client.expect("220");
    let ehlo = client.command("EHLO test", "250");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    client.command("STARTTLS", "454 4.7.0");
    client.command("QUIT", "221");
    assert!(server.log().contains("STARTTLS is not offered"));
}

// ---------------------------------------------------------------------------------------------
// Real clients

#[cfg(feature = "tls")]
fn swaks(server: &Server, extra: &[&str]) -> std::process::Output {
    Command::new("swaks")
        .args(["--server", &server.addr.to_string(), "--from", "sender@b.example", "--to", "u@example.com"])
        .args(["--helo", "swaks.test", "--timeout", "20"])
        .args(extra)
        .output()
        .expect("run swaks")
}

#[cfg(feature = "tls")]
#[test]
fn swaks_client() {
    if common::skip_without_swaks(true) {
        return;
    }
    let Some(server) = Server::start(&tls_setup()) else { return };
    let runs: [&[&str]; 4] = [
        &[],
        &["--pipeline"],
        &["--tls"],
        &[
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "secret",
            "--to",
            "x@elsewhere.example",
        ],
    ];
    for (n, extra) in runs.iter().enumerate() {
        let out = swaks(&server, extra);
        assert!(out.status.success(), "swaks {extra:?}: {}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(server.queued().len(), n + 1, "swaks {extra:?}");
    }
    let out = swaks(&server, &["--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wrong"]);
    assert!(!out.status.success());
    let out = swaks(&server, &["--to", "x@elsewhere.example"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("550 5.7.1"));
    assert_eq!(server.queued().len(), 4);
}

#[cfg(feature = "tls")]
#[test]
fn python_smtplib_client() {
    if common::skip_without_python(&["smtplib", "ssl"]) {
        return;
    }
    let Some(server) = Server::start(&tls_setup()) else { return };
    let script = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
s = smtplib.SMTP('127.0.0.1', port, timeout=20)
s.ehlo('py.test')
assert s.has_extn('starttls') and s.has_extn('pipelining') and s.has_extn('smtputf8')
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
s.ehlo('py.test')
s.login('alice', 'secret')
refused = s.sendmail('a@b.example', ['u@example.com', 'v@elsewhere.example'], 'Subject: py\r\n\r\n.leading dot\r\nbody\r\n')
assert refused == {}, refused
s.quit()
s = smtplib.SMTP('127.0.0.1', port, timeout=20)
try:
    s.sendmail('a@b.example', ['v@elsewhere.example'], 'Subject: no\r\n\r\nx\r\n')
    sys.exit('relayed without auth')
except smtplib.SMTPRecipientsRefused as e:
    assert e.recipients['v@elsewhere.example'][0] == 550
s.quit()
print('ok')
"#;
    let out =
        Command::new("python3").arg("-c").arg(script).arg(server.addr.port().to_string()).output().expect("python3");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let queued = server.queued();
    assert_eq!(queued.len(), 1);
    assert!(String::from_utf8_lossy(&queued[0].0).contains("\n.leading dot\nbody\n"));
    assert_eq!(queued[0].1, b"Fa@b.example\0Tu@example.com\0Tv@elsewhere.example\0\0");
}

/// Unknown local recipients are refused at RCPT time (no backscatter): the same lookup as
/// quill-lspawn (aliases, users/assign.db, passwd) and the dot files quill-local would read.
#[test]
fn unknown_local_recipients_are_refused_at_rcpt() {
    let setup = Setup::new()
        .control("locals", "example.com\n")
        .control("aliases", "control/aliasfile")
        .control("aliasfile", "known: someone@elsewhere.example\n");
    let server = Server::start(&setup).expect("server");
    let home = server.home.path();
    let mailbox = home.join("box");
    std::fs::create_dir_all(&mailbox).expect("mkdir");
    std::fs::write(mailbox.join(".qmail-list"), "./Maildir/\n").expect("write");
    std::fs::write(mailbox.join(".qmail-list-sub-default"), "./Maildir/\n").expect("write");
    let (uid, gid) = (quill::base::sys::uids().0, quill::base::sys::gid());
    let assign = format!("=list:u:{uid}:{gid}:{0}:-:list:\n+list-:u:{uid}:{gid}:{0}:-:list-:\n.\n", mailbox.display());
    std::fs::create_dir_all(home.join("users")).expect("mkdir");
    let db = quill::mail::users::compile_assign(assign.as_bytes()).expect("compile assign");
    std::fs::write(home.join("users/assign.db"), db).expect("write assign.db");

    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    client.command("MAIL FROM:<a@b.example>", "250");
    client.command("RCPT TO:<known@example.com>", "250 2.1.5");
    client.command("RCPT TO:<list@example.com>", "250 2.1.5");
    client.command("RCPT TO:<LIST-sub-anything@example.com>", "250 2.1.5");
    client.command("RCPT TO:<list-nope@example.com>", "550 5.1.1");
    client.command("RCPT TO:<\"list-../x\"@example.com>", "550 5.1.1");
    // A domain we are only a backup MX for (in rcpthosts, not local) is not ours to judge.
    client.command("RCPT TO:<whoever@a.sub.example.org>", "250 2.1.5");
    client.command("QUIT", "221");
}

/// quill-smtpd judges a virtual domain's recipient after the rewriting quill-send applies
/// (mail::rewrite), and reads only the control files of that rewriting: a malformed file that
/// only quill-send reads (here queuelifetime) no longer turns every local RCPT into 451 (before,
/// quill-smtpd loaded quill-send's whole configuration to rewrite one address).
#[test]
fn rcpt_check_uses_the_shared_rewriting_only() {
    let setup = Setup::new()
        .control("rcpthosts", "example.com\nvirt.example\nother.example\n")
        .control("locals", "example.com\n")
        .control("virtualdomains", "virt.example:list-sub\nother.example:list\n")
        .control("queuelifetime", "soon\n");
    let server = Server::start(&setup).expect("server");
    let home = server.home.path();
    let mailbox = home.join("box");
    std::fs::create_dir_all(&mailbox).expect("mkdir");
    std::fs::write(mailbox.join(".qmail-list-sub-default"), "./Maildir/\n").expect("write");
    let (uid, gid) = (quill::base::sys::uids().0, quill::base::sys::gid());
    let assign = format!("+list-:u:{uid}:{gid}:{0}:-:list-:\n.\n", mailbox.display());
    std::fs::create_dir_all(home.join("users")).expect("mkdir");
    let db = quill::mail::users::compile_assign(assign.as_bytes()).expect("compile assign");
    std::fs::write(home.join("users/assign.db"), db).expect("write assign.db");

    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    client.command("MAIL FROM:<a@b.example>", "250");
    // virt.example → list-sub-anyone@virt.example: .qmail-list-sub-default takes it.
    client.command("RCPT TO:<anyone@virt.example>", "250 2.1.5");
    // other.example → list-anyone@other.example: no dot file for it.
    client.command("RCPT TO:<anyone@other.example>", "550 5.1.1");
    client.command("RCPT TO:<nobody@example.com>", "550 5.1.1");
    client.command("QUIT", "221");
}

// ---------------------------------------------------------------------------------------------
// Deadlines that hold under attack (audit item 11b, 11d)

/// Send `line` every `pause` until the server answers something other than `keep` (bounded:
/// at most `rounds` commands); returns that answer.
fn drip_until_refused(client: &mut Client, line: &str, keep: &str, pause: Duration, rounds: usize) -> String {
    for _ in 0..rounds {
        client.send(format!("{line}\r\n").as_bytes());
        let Some(reply) = client.reply() else { return String::new() };
        if !reply.starts_with(keep) {
            return reply;
        }
        std::thread::sleep(pause);
    }
    panic!("still served after {rounds} rounds of {line}");
}

/// A client that keeps each read short but never leaves (a NOOP at a time) meets the session
/// deadline (before: only the per-read timeout existed, and this client stayed for ever).
#[test]
fn session_deadline_ends_a_dripping_client() {
    let server = Server::start(&Setup::new().control("timeoutsmtpdsession", "2")).expect("server");
    let mut client = server.connect();
    client.expect("220");
    let reply = drip_until_refused(&mut client, "NOOP", "250", Duration::from_millis(200), 200);
    assert!(reply.starts_with("421 4.4.2") && reply.contains("session time limit"), "{reply}");
    assert!(client.closed());
    assert!(server.log().contains("deadline: the session lasted too long"));
}

/// Message data dripped a line at a time meets the DATA deadline; nothing is queued.
#[test]
fn data_deadline_ends_a_dripping_message() {
    let server = Server::start(&Setup::new().control("timeoutsmtpddata", "2")).expect("server");
    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    client.command("MAIL FROM:<a@b.example>", "250");
    client.command("RCPT TO:<u@example.com>", "250");
    client.command("DATA", "354");
    let mut tcp = client.tcp.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        for _ in 0..200 {
            if tcp.write_all(b"a line\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let reply = client.reply().unwrap_or_default();
    assert!(reply.starts_with("421 4.4.2") && reply.contains("data time limit"), "{reply}");
    let _ = writer.join();
    assert!(server.queued().is_empty());
    let log = server.log();
    assert!(log.contains("deadline: the message data took too long"), "{log}");
}

/// Under stress (QUILL_STRESS=1 from quill-tcpserver) a session that does not start a mail
/// transaction soon is closed, even if it keeps talking.
#[test]
fn stress_closes_a_session_without_mail() {
    let server = Server::start(&Setup::new().env("QUILL_STRESS", "1")).expect("server");
    let mut client = server.connect();
    client.expect("220");
    let reply = drip_until_refused(&mut client, "NOOP", "250", Duration::from_millis(500), 200);
    assert!(reply.starts_with("421 4.4.2") && reply.contains("no MAIL in time"), "{reply}");
    assert!(server.log().contains("deadline: no MAIL in time while the server is busy"));
}

/// SIGTERM (quill-tcpserver making room) ends an idle session with a 421, not a reset.
#[test]
fn sigterm_ends_a_session_with_421() {
    let server = Server::start(&Setup::new()).expect("server");
    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    let pid = nix::unistd::Pid::from_raw(server.pids()[0] as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).expect("kill");
    client.expect("421 4.3.2");
    assert!(client.closed());
    assert!(server.log().contains("messages=0 terminated"));
}

#[test]
fn local_parts_over_64_octets_are_refused_at_rcpt() {
    // RFC 5321 4.5.3.1.1: a local part longer than 64 octets at a local domain can never be
    // delivered (its dot file and Maildir names are too long): 553 5.1.3 at RCPT, not a week
    // of deferrals and a bounce to a sender who may be forged.
    let setup = Setup::new().control("locals", "example.com\n");
    let server = Server::start(&setup).expect("server");
    let home = server.home.path();
    let mailbox = home.join("box");
    std::fs::create_dir_all(&mailbox).expect("mkdir");
    std::fs::write(mailbox.join(".qmail-default"), "./Maildir/\n").expect("write");
    let (uid, gid) = (quill::base::sys::uids().0, quill::base::sys::gid());
    let assign = format!("+:u:{uid}:{gid}:{}:-::\n.\n", mailbox.display());
    std::fs::create_dir_all(home.join("users")).expect("mkdir");
    let db = quill::mail::users::compile_assign(assign.as_bytes()).expect("compile assign");
    std::fs::write(home.join("users/assign.db"), db).expect("write assign.db");

    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    client.command("MAIL FROM:<a@b.example>", "250");
    client.command(&format!("RCPT TO:<{}@example.com>", "a".repeat(64)), "250 2.1.5");
    let reply = client.command(&format!("RCPT TO:<{}@example.com>", "a".repeat(65)), "553 5.1.3");
    assert!(reply.contains("64"), "the reply says why: {reply}");
    client.command(&format!("RCPT TO:<{}@example.com>", "b".repeat(300)), "553 5.1.3");
    // Not ours to judge: a domain we relay for (backup MX) keeps what the next hop accepts.
    client.command(&format!("RCPT TO:<{}@a.sub.example.org>", "c".repeat(100)), "250 2.1.5");
    client.command("QUIT", "221");
}

/// A scratch user made with useradd, removed (with its group) when dropped.
struct ScratchUser(String);

impl Drop for ScratchUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = Command::new("groupdel").arg(&self.0).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

#[test]
fn extension_of_a_user_with_a_closed_home_is_deferred_not_accepted() {
    if !common::is_root() {
        common::skip("not root, so no test user with a 0700 home can be made");
        return;
    }
    if !std::path::Path::new("/usr/sbin/useradd").exists() && common::skip_without("useradd") {
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        common::skip("no user nobody to run quill-smtpd as");
        return;
    };
    let mut setup = Setup::new().control("locals", "example.com\n");
    setup.user = Some((nobody.uid.as_raw(), nobody.gid.as_raw()));
    let server = Server::start(&setup).expect("server");
    let name = format!("qsm{}", std::process::id() % 100_000);
    let home = server.home.path().join("homes").join(&name);
    let made = Command::new("useradd")
        .args(["-M", "-U", "-s", "/bin/false", "-d"])
        .arg(&home)
        .arg(&name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(made, "useradd {name}");
    let _user = ScratchUser(name.clone());
    let user = nix::unistd::User::from_name(&name).ok().flatten().expect("the new user");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::write(home.join(".qmail-list"), "./Maildir/\n").expect("write");
    for path in [home.clone(), home.join(".qmail-list")] {
        std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw())).expect("chown");
    }
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");

    // Debian's 0700 home: the user is known, its extensions cannot be seen.
    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    client.command("MAIL FROM:<a@b.example>", "250");
    client.command(&format!("RCPT TO:<{name}@example.com>"), "250 2.1.5");
    client.command(&format!("RCPT TO:<{name}-list@example.com>"), "451 4.3.0");
    client.command(&format!("RCPT TO:<{name}-nope@example.com>"), "451 4.3.0");
    client.command("QUIT", "221");
    let log = server.log();
    assert!(log.contains("quill-smtpd: warning: unable to check rcpt <") && log.contains("chmod 711"), "{log}");

    // The documented fix: a home others may search (0711) but not list.
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    client.command("MAIL FROM:<a@b.example>", "250");
    client.command(&format!("RCPT TO:<{name}-list@example.com>"), "250 2.1.5");
    client.command(&format!("RCPT TO:<{name}-nope@example.com>"), "550 5.1.1");
    client.command(&format!("RCPT TO:<{name}-@example.com>"), "550 5.1.1");
    client.command("QUIT", "221");
}

/// A checkpassword in C that says yes only when it runs as root: it must read a root-only
/// password file (`user:password`), as a real one reads /etc/shadow. Installed setuid root.
const SETUID_CHECKPASSWORD: &str = r#"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char request[1024];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof request && (r = read(3, request + n, sizeof request - n)) > 0) n += r;
    if (n == 0 || request[n - 1] != 0) return 2;
    const char *user = request;
    const char *password = user + strlen(user) + 1;
    FILE *file = fopen(PASSWORDS, "r");
    if (file == NULL || geteuid() != 0) return 1;
    char line[512], want[1100];
    if (fgets(line, sizeof line, file) == NULL) return 111;
    line[strcspn(line, "\n")] = 0;
    snprintf(want, sizeof want, "%s:%s", user, password);
    if (strcmp(line, want) != 0) return 1;
    if (argc > 1) execv(argv[1], argv + 1);
    return 111;
}
"#;

/// The pids of the children of `pid` (/proc/PID/task/PID/children).
fn child_pids(pid: u32) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    text.split_whitespace().filter_map(|n| n.parse().ok()).collect()
}

fn status_line(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// quill-smtpd runs with no_new_privs, so a setuid checkpassword it ran itself would not get
/// root; the AUTH broker, forked before the flag was set, runs it as root. A good password is
/// accepted, a wrong one refused, and the broker ends with the session.
#[test]
fn auth_with_a_setuid_checkpassword_under_no_new_privs() {
    if !common::is_root() {
        common::skip("not root, so no setuid-root checkpassword can be installed");
        return;
    }
    let compiler =
        ["cc", "gcc"].into_iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
    let Some(compiler) = compiler else {
        common::skip("no C compiler (cc) to build the setuid checkpassword");
        return;
    };
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        common::skip("no user nobody to run quill-smtpd as");
        return;
    };
    let mut setup = Setup::new().env("AUTH_INSECURE", "1");
    setup.user = Some((nobody.uid.as_raw(), nobody.gid.as_raw()));
    setup.no_filter = true;
    let tools = common::TempDir::new("setuid-checkpw");
    let passwords = tools.path().join("passwords");
    std::fs::write(&passwords, "alice:secret\n").expect("passwords");
    std::fs::set_permissions(&passwords, std::fs::Permissions::from_mode(0o600)).expect("chmod passwords");
    std::fs::write(tools.path().join("checkpw.c"), SETUID_CHECKPASSWORD).expect("source");
    let program = tools.path().join("checkpw");
    let built = Command::new(compiler)
        .arg(format!("-DPASSWORDS=\"{}\"", passwords.display()))
        .arg("-o")
        .arg(&program)
        .arg(tools.path().join("checkpw.c"))
        .status()
        .expect("run cc");
    assert!(built.success(), "cc failed");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o4755)).expect("setuid");
    std::fs::set_permissions(tools.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    // The program is what it should be: under no_new_privs, run as nobody, it refuses.
    let mut direct = Command::new("setpriv");
    direct.args(["--no-new-privs", "--reuid", &nobody.uid.to_string(), "--regid", &nobody.gid.to_string()]);
    direct.args(["--clear-groups", "sh", "-c", "printf 'alice\\0secret\\0<1@x>\\0' | \"$0\" /bin/true 3<&0"]);
    let direct = direct.arg(&program).status();
    if let Ok(status) = direct {
        assert_eq!(status.code(), Some(1), "setuid under no_new_privs gave root");
    }
    setup.args = vec![program.to_string_lossy().into_owned()];
    let server = Server::start(&setup).expect("server");
    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    let smtpd = *server.pids().first().expect("a session");
    assert_eq!(status_line(smtpd, "NoNewPrivs:"), "NoNewPrivs: 1");
    assert_eq!(status_line(smtpd, "Uid:").split(' ').nth(1), Some(nobody.uid.to_string().as_str()));
    let broker = child_pids(smtpd);
    assert_eq!(broker.len(), 1, "one AUTH broker per session: {broker:?}");
    assert_eq!(status_line(broker[0], "NoNewPrivs:"), "NoNewPrivs: 0");
    client.command("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8");
    client.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "235 2.7.0");
    client.command("QUIT", "221");
    let log = server.log();
    assert!(log.contains("auth 127.0.0.1 user=alice failed"), "{log}");
    assert!(log.contains("auth 127.0.0.1 user=alice ok"), "{log}");
    assert!(
        common::wait_for(Duration::from_secs(20), || !Path::new(&format!("/proc/{}", broker[0])).exists()
            || status_line(broker[0], "State:").contains("zombie")),
        "the broker outlived its session"
    );
}

/// Without a checkpassword program no broker is forked: a session has no child of its own.
#[test]
fn no_auth_broker_without_checkpassword() {
    let mut setup = Setup::new();
    setup.no_filter = true;
    if common::is_root() {
        // Root's sessions are not confined (their messages go to quill-queue): run as nobody.
        let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
            common::skip("no user nobody to run quill-smtpd as");
            return;
        };
        setup.user = Some((nobody.uid.as_raw(), nobody.gid.as_raw()));
    }
    let server = Server::start(&setup).expect("server");
    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    let smtpd = *server.pids().first().expect("a session");
    assert_eq!(child_pids(smtpd), Vec::<u32>::new());
    assert_eq!(status_line(smtpd, "NoNewPrivs:"), "NoNewPrivs: 1");
    client.command("QUIT", "221");
}

/// control/greetdelay (here GREETDELAY, as tcprules would set it): a client that talks before
/// the greeting gets 554 and the session ends, logged with what it sent; one that waits gets
/// the 220 after the delay; a RELAYCLIENT client is not delayed at all.
#[test]
fn pregreet_talkers_are_refused() {
    let server = Server::start(&Setup::new().env("GREETDELAY", "1")).expect("server");
    let mut early = server.connect();
    early.send(b"EHLO spam.example\r\n");
    early.expect("554 5.5.1");
    assert_eq!(early.line(), None, "the session ends after the 554");
    let mut patient = server.connect();
    patient.expect("220 ");
    patient.command("QUIT", "221");
    let log = server.log();
    assert!(log.contains("pregreet 127.0.0.1 talked before the greeting: EHLO spam.example"), "{log}");
    assert!(log.contains("pregreet: talked before the greeting"), "{log}");

    let server = Server::start(&Setup::new().env("GREETDELAY", "30").env("RELAYCLIENT", "")).expect("server");
    let mut trusted = server.connect();
    trusted.send(b"EHLO friend.example\r\n");
    trusted.expect("220 ");
    trusted.expect("250");
    trusted.command("QUIT", "221");
    assert!(!server.log().contains("pregreet"));
}

/// control/dnsbl against dnsmasq on loopback: a client a blocklist names is greeted, then its
/// MAIL gets the zone's code and the list's TXT words; an allowlist, AUTH and RELAYCLIENT
/// exempt it; an error answer (127.255.255.254) and an unlisted client pass.
#[test]
fn dnsbl_zones_refuse_listed_clients_at_mail() {
    let records = [
        "--host-record=2.0.0.127.bl.test,127.0.0.2",
        "--txt-record=2.0.0.127.bl.test,Listed for spam: see http://bl.test/127.0.0.2",
        "--host-record=3.0.0.127.soft.test,127.0.0.3",
        "--host-record=4.0.0.127.bl.test,127.0.0.4",
        "--host-record=4.0.0.127.wl.test,127.0.0.2",
        "--host-record=5.0.0.127.bl.test,127.255.255.254",
    ]
    .map(String::from);
    let Some(dns) = common::dnsmasq::Dnsmasq::start(&records) else { return };
    let setup = Setup::new()
        .control("dnsservers", &dns.servers())
        .control("dnsbl", "# test lists\nwl.test allow\nbl.test 554\nsoft.test 451\n");
    let session = |ip: &str, extra: &[(&str, &str)]| {
        let mut setup = setup.clone().env("TCPREMOTEIP", ip).env("AUTH_INSECURE", "1").auth();
        for (name, value) in extra {
            setup = setup.env(name, value);
        }
        Server::start(&setup).expect("server")
    };
    let mail = |server: &Server, auth: bool| {
        let mut client = server.connect();
        client.expect("220");
        client.command("EHLO test", "250");
        if auth {
            client.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "235");
        }
        let reply = client.command("MAIL FROM:<a@example.com>", "");
        client.command("QUIT", "221");
        reply
    };
    let listed = session("127.0.0.2", &[]);
    let reply = mail(&listed, false);
    assert!(reply.starts_with("554 5.7.1 Listed for spam: see http://bl.test/127.0.0.2"), "{reply}\n{}", listed.log());
    assert!(mail(&listed, true).starts_with("250"), "AUTH exempts");
    let log = listed.log();
    assert!(log.contains("dnsbl 127.0.0.2 listed by bl.test: Listed for spam"), "{log}");
    assert!(log.contains("dnsbl 127.0.0.2 refused MAIL: listed by bl.test"), "{log}");
    let soft = session("127.0.0.3", &[]);
    assert!(mail(&soft, false).starts_with("451 4.7.1 127.0.0.3 is listed by soft.test"));
    for (ip, why) in [("127.0.0.4", "allowlisted"), ("127.0.0.5", "an error answer"), ("127.0.0.6", "unlisted")] {
        let server = session(ip, &[]);
        let reply = mail(&server, false);
        assert!(reply.starts_with("250"), "{ip} ({why}): {reply}");
    }
    let relay = session("127.0.0.2", &[("RELAYCLIENT", "")]);
    assert!(mail(&relay, false).starts_with("250"), "RELAYCLIENT exempts");
}

/// control/senderlogins: an authenticated user may use only the senders an entry gives them
/// (the address's own entry first, then its domain's); the null sender is anyone's; a client
/// that did not authenticate is not checked.
#[test]
fn authenticated_senders_only_as_their_addresses() {
    let setup = Setup::new()
        .auth()
        .env("AUTH_INSECURE", "1")
        .control("senderlogins", "alice@example.com: alice\n@example.org: alice, bob\nboss@example.org: boss\n");
    let server = Server::start(&setup).expect("server");
    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    client.command("MAIL FROM:<anyone@example.net>", "250");
    client.command("RSET", "250");
    client.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "235");
    for (sender, want) in [
        ("alice@example.com", "250"),
        ("Alice@EXAMPLE.com", "250"),
        ("sales@example.org", "250"),
        ("", "250"),
        ("bob@example.com", "553 5.7.1 <bob@example.com>: sender address not owned by user alice"),
        ("boss@example.org", "553 5.7.1"),
    ] {
        client.command(&format!("MAIL FROM:<{sender}>"), want);
        client.command("RSET", "250");
    }
    client.command("QUIT", "221");
    let log = server.log();
    assert!(log.contains("sender 127.0.0.1 user=alice may not send as <bob@example.com>"), "{log}");
}

/// A message from an authenticated sender without Date and Message-ID gets them at the end
/// of its header (over DATA and BDAT, and a message that is all header); one that has them
/// keeps its own; a stranger's message is left as it came.
#[test]
fn authenticated_messages_get_date_and_message_id() {
    let server = Server::start(&Setup::new().auth().env("AUTH_INSECURE", "1")).expect("server");
    let send = |auth: bool, message: &str, bdat: bool| {
        let mut client = server.connect();
        client.expect("220");
        client.command("EHLO test", "250");
        if auth {
            client.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "235");
        }
        client.command("MAIL FROM:<alice@example.com>", "250");
        client.command("RCPT TO:<bob@example.com>", "250");
        if bdat {
            client.send(format!("BDAT {} LAST\r\n", message.len()).as_bytes());
            client.send(message.as_bytes());
            client.expect("250");
        } else {
            client.command("DATA", "354");
            client.command(&format!("{message}."), "250");
        }
        client.command("QUIT", "221");
    };
    send(true, "Subject: bare\r\nTo: bob@example.com\r\n\r\nbody line\r\n", false);
    send(true, "Subject: dated\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\nbody\r\n", true);
    send(true, "Subject: all header\r\n", false);
    send(false, "Subject: stranger\r\n\r\nbody\r\n", false);
    let queued = server.queued();
    assert_eq!(queued.len(), 4);
    let text: Vec<String> = queued.iter().map(|(m, _)| String::from_utf8_lossy(m).into_owned()).collect();
    let (header, body) = text[0].split_once("\n\n").expect("header and body");
    assert!(header.contains("\nSubject: bare\nTo: bob@example.com\nDate: "), "{header}");
    assert!(header.contains("\nMessage-ID: <") && header.ends_with("@mx.example.com>"), "{header}");
    assert_eq!(body, "body line\n");
    assert_eq!(text[1].matches("Date: ").count(), 1, "{}", text[1]);
    assert!(text[1].contains("Date: Thu, 1 Jan 2026") && text[1].contains("Message-ID: <"), "{}", text[1]);
    assert!(text[2].contains("Subject: all header\nDate: ") && text[2].contains("\nMessage-ID: <"), "{}", text[2]);
    assert!(!text[3].contains("Date: ") && !text[3].contains("Message-ID:"), "{}", text[3]);
}

/// International addresses (issue 13): a UTF-8 domain, sent with SMTPUTF8, is queued as its
/// A-label (and matches rcpthosts written either way); the UTF-8 local part is kept, and shown
/// as it is in the log; a domain UTS #46 refuses gets 553 5.1.2.
#[test]
fn international_domains_are_queued_as_a_labels() {
    let setup = Setup::new().control("rcpthosts", "bücher.example\nxn--r8jz45g.example\n");
    let server = Server::start(&setup).expect("server");
    let mut client = server.connect();
    client.expect("220");
    client.command("EHLO test", "250");
    client.command("MAIL FROM:<änna@straße.example> SMTPUTF8", "250");
    client.command("RCPT TO:<jörg@BÜCHER.example>", "250");
    client.command("RCPT TO:<x@例え.example>", "250");
    client.command("RCPT TO:<x@a\u{202e}b.example>", "553 5.1.2");
    client.command("DATA", "354");
    client.command("Subject: grüße\r\n\r\nhallo\r\n.", "250");
    client.command("MAIL FROM:<a@example.net>", "250");
    client.command("RCPT TO:<x@bücher.example>", "553 5.6.7");
    client.command("QUIT", "221");
    let queued = server.queued();
    let envelope = String::from_utf8_lossy(&queued[0].1).into_owned();
    assert!(envelope.contains("Fänna@xn--strae-oqa.example\0"), "{envelope:?}");
    assert!(envelope.contains("Tjörg@xn--bcher-kva.example\0"), "{envelope:?}");
    assert!(envelope.contains("Tx@xn--r8jz45g.example\0"), "{envelope:?}");
    let log = server.log();
    assert!(log.contains("from=<änna@xn--strae-oqa.example>"), "{log}");
}

/// A DKIM signature is asked for (QUILL_DKIMSIGN=1 to the queue program) for a RELAYCLIENT
/// client's message, never for a stranger's (issue 12; the signing itself: tests/dkim.rs).
#[test]
fn dkim_signature_asked_for_local_senders_only() {
    for (relay, expect) in [(false, ""), (true, "1")] {
        let setup = if relay { Setup::new().env("RELAYCLIENT", "") } else { Setup::new() };
        let server = Server::start(&setup).expect("server");
        let mut client = server.connect();
        client.expect("220");
        client.command("EHLO test", "250");
        client.command("MAIL FROM:<a@example.com>", "250");
        client.command("RCPT TO:<u@example.com>", "250");
        client.command("DATA", "354");
        client.send(b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n.\r\n");
        client.expect("250 2.0.0");
        client.command("QUIT", "221");
        let asked: Vec<String> = common::files(&server.dir().join("qq"))
            .iter()
            .map(|d| std::fs::read_to_string(d.join("sign")).unwrap_or_default().trim().to_string())
            .collect();
        assert_eq!(asked, vec![expect.to_string()], "relay {relay}");
    }
}

/// SPF at MAIL (mail::spf) with dnsmasq serving the records: the result in the
/// Authentication-Results field at the top of the message, for MAIL FROM's domain and, for
/// the null sender, the HELO name; forged fields claiming our authserv-id (control/me) are
/// removed with their continuation lines, others kept; control/spfpolicy `reject` refuses
/// fail with 550 5.7.23; RELAYCLIENT is not checked.
#[test]
fn spf_results_in_authentication_results_and_reject_policy() {
    let records = [
        "--txt-record=pass.test,v=spf1 ip4:192.0.2.0/24 -all",
        "--txt-record=fail.test,v=spf1 ip4:198.51.100.1 -all",
        "--txt-record=soft.test,v=spf1 mx ~all",
        "--txt-record=helo.test,v=spf1 a -all",
        "--host-record=helo.test,192.0.2.7",
    ]
    .map(String::from);
    let Some(dns) = common::dnsmasq::Dnsmasq::start(&records) else { return };
    let setup = Setup::new().control("dnsservers", &dns.servers()).env("TCPREMOTEIP", "192.0.2.7");
    let send = |server: &Server, helo: &str, sender: &str, header: &str| -> String {
        let mut client = server.connect();
        client.expect("220");
        client.command(&format!("EHLO {helo}"), "250");
        let reply = client.command(&format!("MAIL FROM:<{sender}>"), "");
        if reply.starts_with("250") {
            client.command("RCPT TO:<user@example.com>", "250");
            client.command("DATA", "354");
            client.send(format!("{header}Subject: spf\r\n\r\nbody\r\n.\r\n").as_bytes());
            client.expect("250");
        }
        client.command("QUIT", "221");
        reply
    };
    let server = Server::start(&setup).expect("server");
    let forged = "Authentication-Results: mx.example.com; spf=pass\r\n\tsmtp.mailfrom=forged@pass.test\r\n\
                  Authentication-Results: other.example; spf=pass smtp.mailfrom=kept@pass.test\r\n\
                  authentication-results: (c) MX.EXAMPLE.COM.; dkim=pass\r\n";
    for (helo, sender, header) in [
        ("client.test", "a@pass.test", forged),
        ("client.test", "b@fail.test", ""),
        ("client.test", "c@soft.test", ""),
        ("client.test", "d@none.test", ""),
        ("helo.test", "", ""),
    ] {
        assert!(send(&server, helo, sender, header).starts_with("250"), "{sender}");
    }
    let messages: Vec<String> = server.queued().iter().map(|(m, _)| String::from_utf8_lossy(m).into_owned()).collect();
    assert_eq!(messages.len(), 5, "{}", server.log());
    let want = [
        "spf=pass (192.0.2.7 is the client) smtp.mailfrom=a@pass.test",
        "spf=fail (192.0.2.7 is the client) smtp.mailfrom=b@fail.test",
        "spf=softfail (192.0.2.7 is the client) smtp.mailfrom=c@soft.test",
        "spf=none (192.0.2.7 is the client) smtp.mailfrom=d@none.test",
        "spf=pass (192.0.2.7 is the client) smtp.helo=helo.test",
    ];
    for want in want {
        let field = format!("Authentication-Results: mx.example.com;\n\t{want}\n");
        let message = messages.iter().find(|m| m.contains(&field));
        let message = message.unwrap_or_else(|| panic!("no {field:?} in {messages:#?}"));
        // At the top, right after our Received line.
        let received_end = message.find("\n\tid ").and_then(|i| message[i + 1..].find('\n').map(|j| i + j + 2));
        assert_eq!(message.find(&field), received_end, "{message}");
    }
    let first = messages.iter().find(|m| m.contains("a@pass.test")).expect("the first message");
    assert!(!first.contains("forged@pass.test") && !first.contains("dkim=pass"), "{first}");
    assert!(
        first.contains("Authentication-Results: other.example; spf=pass smtp.mailfrom=kept@pass.test\n"),
        "{first}"
    );
    assert_eq!(first.matches("Authentication-Results: mx.example.com").count(), 1, "{first}");
    let log = server.log();
    assert!(log.contains("spf 192.0.2.7 result=fail mailfrom=<b@fail.test>"), "{log}");
    assert!(log.contains(" spf=pass dkim=none dmarc=none forged-auth-results=2 result=250"), "{log}");

    let reject = Server::start(&setup.clone().control("spfpolicy", "reject\n")).expect("server");
    let reply = send(&reject, "client.test", "b@fail.test", "");
    assert!(reply.starts_with("550 5.7.23 "), "{reply}");
    assert!(send(&reject, "client.test", "a@pass.test", "").starts_with("250"));
    assert!(send(&reject, "client.test", "c@soft.test", "").starts_with("250"), "softfail is only recorded");
    let relay = Server::start(&setup.clone().control("spfpolicy", "reject\n").env("RELAYCLIENT", "")).expect("server");
    assert!(send(&relay, "client.test", "b@fail.test", "").starts_with("250"), "RELAYCLIENT is not checked");
    let relayed = relay.queued();
    assert!(!String::from_utf8_lossy(&relayed[0].0).contains("Authentication-Results"), "no check, no field");
    let off = Server::start(&setup.clone().control("spfpolicy", "off\n")).expect("server");
    assert!(send(&off, "client.test", "b@fail.test", "").starts_with("250"));
    assert!(!String::from_utf8_lossy(&off.queued()[0].0).contains("Authentication-Results"));

    // No answer from the resolver: temperror, 451 4.7.24 under reject.
    let dead = setup
        .clone()
        .control("spfpolicy", "reject\n")
        .control("dnsservers", "127.0.0.1:9\noptions timeout:1 attempts:1\n");
    let dead = Server::start(&dead).expect("server");
    let reply = send(&dead, "client.test", "a@pass.test", "");
    assert!(reply.starts_with("451 4.7.24 "), "{reply}\n{}", dead.log());

    // A confined session (no QMAILQUEUE filter; as nobody when the tests run as root, whose
    // sessions are not confined) still asks DNS: UDP is in its policy.
    let mut confined = setup.clone().control("spfpolicy", "reject\n");
    confined.no_filter = true;
    if common::is_root() {
        let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
            common::skip("no user nobody to run quill-smtpd as");
            return;
        };
        confined.user = Some((nobody.uid.as_raw(), nobody.gid.as_raw()));
    }
    let confined = Server::start(&confined).expect("server");
    let mut client = confined.connect();
    client.expect("220");
    client.command("EHLO client.test", "250");
    client.command("MAIL FROM:<b@fail.test>", "550 5.7.23 ");
    client.command("MAIL FROM:<a@pass.test>", "250");
    client.command("QUIT", "221");
    let log = confined.log();
    assert!(log.contains("spf 192.0.2.7 result=pass mailfrom=<a@pass.test>"), "{log}");
}

/// python3 with dkimpy (python3-dkim), or a skip.
fn skip_without_dkimpy() -> bool {
    common::skip_unless_can(
        "/usr/bin/python3",
        &["-c", "import dkim\nprint('dkim ok')"],
        "dkim ok",
        "import dkim (python3-dkim)",
    )
}

/// An Ed25519 key for example.test from `quill dkim keygen` in `home`: the TXT record and the
/// base64 seed dkimpy signs with.
fn dkim_key(home: &Path, selector: &str) -> (String, String) {
    let out = common::run(home, "quill", &["dkim", "keygen", "example.test", selector, "ed25519"], b"");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "keygen: {text}");
    let record = text.trim().split_once(" IN TXT ").map(|(_, r)| r).unwrap_or("").replace("\" \"", "");
    let der = std::fs::read(home.join("control/dkim").join(format!("example.test.{selector}"))).expect("key");
    // ring's PKCS#8 v2 for Ed25519: the seed is the OCTET STRING at bytes 16..48.
    (record.trim_matches('"').to_string(), quill::mail::dkim::base64(&der[16..48]))
}

/// `message` (CRLF) signed by dkimpy with `seed`, relaxed/relaxed.
fn dkimpy_sign(message: &[u8], selector: &str, seed: &str) -> Vec<u8> {
    let script = format!(
        "import sys, dkim\nmsg = sys.stdin.buffer.read()\nsig = dkim.sign(msg, b'{selector}', b'example.test', {seed:?}.encode(), canonicalize=(b'relaxed', b'relaxed'), signature_algorithm=b'ed25519-sha256', include_headers=[b'from', b'to', b'subject'])\nsys.stdout.buffer.write(sig + msg)\n"
    );
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().expect("stdin").write_all(message).expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "dkim.sign: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Issue 12 item 2: DKIM and DMARC at the end of the data. Through a QMAILQUEUE filter (the
/// qmail-queue protocol has no way to add a field at the end) the Authentication-Results field
/// carries SPF only and DKIM and DMARC are logged; control/dmarcpolicy reject refuses a DMARC
/// fail with p=reject; RELAYCLIENT clients are not checked.
#[test]
fn dkim_and_dmarc_results_and_reject_policy() {
    if skip_without_dkimpy() {
        return;
    }
    let keys = common::home("smtpd-dkimkeys", &[]);
    let (record, seed) = dkim_key(keys.path(), "s1");
    let records = [
        format!("--txt-record=s1._domainkey.example.test,{record}"),
        "--txt-record=_dmarc.example.test,v=DMARC1; p=reject".to_string(),
        "--txt-record=example.test,v=spf1 -all".to_string(),
    ];
    let Some(dns) = common::dnsmasq::Dnsmasq::start(&records) else { return };
    let setup = Setup::new().control("dnsservers", &dns.servers()).env("TCPREMOTEIP", "192.0.2.7");
    let message = b"From: Alice <alice@example.test>\r\nTo: user@example.com\r\nSubject: signed\r\n\r\nHello there\r\n";
    let signed = dkimpy_sign(message, "s1", &seed);
    let forged = b"Authentication-Results: mx.example.com; dkim=pass header.d=example.test\r\n";
    let signed = [&forged[..], &signed].concat();
    let tampered = String::from_utf8_lossy(&signed).replace("Hello there", "Hello thief").into_bytes();
    let send = |server: &Server, message: &[u8]| -> String {
        let mut client = server.connect();
        client.expect("220");
        client.command("EHLO client.test", "250");
        client.command("MAIL FROM:<bounces@other.test>", "250");
        client.command("RCPT TO:<user@example.com>", "250");
        client.command("DATA", "354");
        client.send(&[message, b".\r\n"].concat());
        let reply = String::from_utf8_lossy(&client.line().unwrap_or_default()).into_owned();
        client.command("QUIT", "221");
        reply
    };
    let server = Server::start(&setup).expect("server");
    assert!(send(&server, &signed).starts_with("250"));
    assert!(send(&server, &tampered).starts_with("250"), "record: only recorded");
    let queued = server.queued();
    assert_eq!(queued.len(), 2);
    for (message, _) in &queued {
        let text = String::from_utf8_lossy(message);
        // Only SPF's field, right after our Received line; the forged one is gone.
        assert_eq!(text.matches("Authentication-Results:").count(), 1, "{text}");
        assert!(text.contains("Authentication-Results: mx.example.com;\n\tspf=none"), "{text}");
        assert!(!text.contains("dkim=pass header.d=example.test\n"), "{text}");
    }
    let log = server.log();
    assert!(log.contains(" spf=none dkim=pass dmarc=pass forged-auth-results=1 result=250"), "{log}");
    assert!(log.contains(" spf=none dkim=fail dmarc=fail forged-auth-results=1 result=250"), "{log}");

    let reject = Server::start(&setup.clone().control("dmarcpolicy", "reject\n")).expect("server");
    let reply = send(&reject, &tampered);
    assert!(reply.starts_with("550 5.7.1 ") && reply.contains("example.test"), "{reply}");
    assert!(send(&reject, &signed).starts_with("250"));
    assert_eq!(reject.queued().len(), 1, "the refused message is not queued");
    let log = reject.log();
    assert!(log.contains("dkim=fail dmarc=fail forged-auth-results=1 result=550 5.7.1"), "{log}");

    let relay =
        Server::start(&setup.clone().control("dmarcpolicy", "reject\n").env("RELAYCLIENT", "")).expect("server");
    assert!(send(&relay, &tampered).starts_with("250"), "RELAYCLIENT is not checked");
    assert!(!relay.log().contains("dmarc="), "{}", relay.log());
    let off = Server::start(&setup.clone().control("dmarcpolicy", "off\n")).expect("server");
    assert!(send(&off, &tampered).starts_with("250"));
    assert!(!off.log().contains("dmarc="), "{}", off.log());
    let bad = Server::start(&setup.clone().control("dmarcpolicy", "sometimes\n")).expect("server");
    bad.connect().expect("421 4.3.0");
    let said = common::run(bad.dir(), "quill", &["check"], b"");
    let said = String::from_utf8_lossy(&said.stdout).into_owned() + &String::from_utf8_lossy(&said.stderr);
    assert!(said.contains("control/dmarcpolicy: sometimes is not off, record or reject"), "{said}");
}

/// The same through quill-queued: one Authentication-Results field with spf, dkim and dmarc,
/// sent in the H frame and put at the top of the message; a DMARC reject is abandoned.
#[test]
fn dkim_and_dmarc_in_one_field_through_quill_queued() {
    if skip_without_dkimpy() {
        return;
    }
    let keys = common::home("smtpd-dkimkeys-w", &[]);
    let (record, seed) = dkim_key(keys.path(), "s1");
    let records = [
        format!("--txt-record=s1._domainkey.example.test,{record}"),
        "--txt-record=_dmarc.example.test,v=DMARC1; p=reject".to_string(),
    ];
    let Some(dns) = common::dnsmasq::Dnsmasq::start(&records) else { return };
    let mut setup = Setup::new()
        .control("dnsservers", &dns.servers())
        .control("dmarcpolicy", "reject\n")
        .env("TCPREMOTEIP", "192.0.2.7");
    setup.no_filter = true;
    let server = Server::start(&setup).expect("server");
    let queued_log = std::fs::File::create(server.dir().join("queued.log")).expect("log");
    let _queued = common::Daemon(
        Command::new(common::bin("quill-queued"))
            .env("QUILL_HOME", server.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(queued_log))
            .spawn()
            .expect("start quill-queued"),
    );
    let socket = server.dir().join("queue/writer/socket");
    assert!(common::wait_for(Duration::from_secs(20), || socket.exists()), "quill-queued did not listen");
    let message = b"From: Alice <alice@example.test>\r\nTo: user@example.com\r\nSubject: signed\r\n\r\nHello there\r\n";
    let forged = b"Authentication-Results: mx.example.com; dkim=pass header.d=forged.test\r\n";
    let signed = [&forged[..], &dkimpy_sign(message, "s1", &seed)].concat();
    let tampered = String::from_utf8_lossy(&signed).replace("Hello there", "Hello thief").into_bytes();
    let send = |message: &[u8]| -> String {
        let mut client = server.connect();
        client.expect("220");
        client.command("EHLO client.test", "250");
        client.command("MAIL FROM:<alice@example.test>", "250");
        client.command("RCPT TO:<user@example.com>", "250");
        client.command("DATA", "354");
        client.send(&[message, b".\r\n"].concat());
        let reply = String::from_utf8_lossy(&client.line().unwrap_or_default()).into_owned();
        client.command("QUIT", "221");
        reply
    };
    let reply = send(&tampered);
    assert!(reply.starts_with("550 5.7.1 "), "{reply}\n{}", server.log());
    let reply = send(&signed);
    assert!(reply.starts_with("250"), "{reply}\n{}", server.log());
    let todo = common::files(&server.dir().join("queue/todo"));
    assert_eq!(todo.len(), 1, "only the signed message is queued\n{}", server.log());
    let mut file = std::fs::File::open(&todo[0]).expect("open");
    let (_, offset) = quill::mail::queuefile::read_header(&mut file).expect("header");
    let bytes = std::fs::read(&todo[0]).expect("read");
    let text = String::from_utf8_lossy(&bytes[offset as usize..]).into_owned();
    assert_eq!(text.matches("Authentication-Results:").count(), 1, "{text}");
    let start = text.find("Authentication-Results: mx.example.com;\n\tspf=none").expect("our field");
    let field = &text[start..start + text[start..].find("\nReceived:").expect("a Received line after it")];
    assert!(field.contains(";\n\tdkim=pass header.d=example.test header.s=s1"), "{text}");
    assert!(field.contains(";\n\tdmarc=pass (p=reject dis=none) header.from=example.test"), "{text}");
    assert!(!text.contains("forged.test"), "{text}");
    // Above our Received line (RFC 8601 §5), under quill-queued's.
    assert!(start < text.find("Received: from client.test").expect("our Received"), "{text}");
    let log = server.log();
    assert!(log.contains(" dkim=pass dmarc=pass forged-auth-results=1 result=250"), "{log}");

    // The same with BDAT: the tampered message refused at BDAT LAST, the signed one queued
    // with its field.
    let bdat = |message: &[u8]| -> String {
        let mut client = server.connect();
        client.expect("220");
        client.command("EHLO client.test", "250");
        client.command("MAIL FROM:<alice@example.test>", "250");
        client.command("RCPT TO:<user@example.com>", "250");
        client.send(&[format!("BDAT {} LAST\r\n", message.len()).as_bytes(), message].concat());
        let reply = String::from_utf8_lossy(&client.line().unwrap_or_default()).into_owned();
        client.command("QUIT", "221");
        reply
    };
    let reply = bdat(&tampered);
    assert!(reply.starts_with("550 5.7.1 "), "{reply}\n{}", server.log());
    let reply = bdat(&signed);
    assert!(reply.starts_with("250"), "{reply}\n{}", server.log());
    let todo = common::files(&server.dir().join("queue/todo"));
    assert_eq!(todo.len(), 2, "{}", server.log());
    for path in todo {
        let bytes = std::fs::read(&path).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("Authentication-Results:").count(), 1, "{text}");
        assert!(text.contains(";\n\tdkim=pass header.d=example.test header.s=s1"), "{text}");
    }
    assert!(server.log().contains(" chunks=1 spf=none dkim=fail dmarc=fail forged-auth-results=1 result=550 5.7.1"));
}
