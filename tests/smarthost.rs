//! Relaying through a provider (issue 13): quill-remote with SMTP AUTH against a real
//! submission server on loopback, Quill's own quill-smtpd with AUTH through a checkpassword
//! script, STARTTLS or implicit TLS, and a certificate made by openssl for each run that
//! control/tlsca trusts; and against a private Postfix with Dovecot SASL (AUTH PLAIN and
//! LOGIN, right and wrong credentials). Every wait is bounded; only loopback is used.
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The password the relay accepts; no log may ever show it.
const PASSWORD: &str = "Tr0ub4dor-s3cret";

const FAKE_QUEUE: &str = r#"#!/bin/sh
# Records one submission: fd 0 is the message, fd 1 the envelope.
d="$QQ_DIR/$(date +%s%N).$$"
mkdir -p "$d"
cat > "$d/message"
cat <&1 > "$d/envelope"
echo 0 > "$d/code"
"#;

/// alice with PASSWORD is good; every checked pair is counted in $CHECKPW_LOG.
const CHECKPASSWORD: &str = r#"#!/bin/sh
user=$(tr '\0' '\n' <&3 | sed -n 1,2p | tr '\n' ' ')
echo checked >> "$CHECKPW_LOG"
[ "$user" = "alice Tr0ub4dor-s3cret " ] && exec "$@"
exit 1
"#;

/// How the relay is set up.
#[derive(Clone, Copy, PartialEq)]
enum Relay {
    /// STARTTLS, then AUTH PLAIN LOGIN.
    Submission,
    /// TLS from the first byte (SMTPS), then AUTH.
    Smtps,
    /// STARTTLS, but no AUTH at all.
    NoAuth,
    /// No TLS; AUTH offered in clear text (AUTH_INSECURE).
    ClearText,
}

/// quill-smtpd run per connection on a loopback port, as a provider's submission service.
struct Server {
    home: common::TempDir,
    port: u16,
    stop: Arc<AtomicBool>,
    children: Arc<Mutex<Vec<Child>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A self-signed certificate for 127.0.0.1 (not a CA, so it can stand as its own root).
fn make_certificate(dir: &Path) -> Option<PathBuf> {
    if common::skip_without("openssl") {
        return None;
    }
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=relay.test", "-addext", "subjectAltName=IP:127.0.0.1,DNS:relay.test"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    status.success().then(|| dir.join("cert.pem"))
}

impl Server {
    fn start(kind: Relay) -> Option<Server> {
        let home = common::home("relay", &[("me", "relay.test"), ("rcpthosts", "relay.test\n")]);
        let dir = home.path().to_path_buf();
        std::fs::create_dir_all(dir.join("qq")).expect("qq dir");
        for (name, text) in [("fakeqq", FAKE_QUEUE), ("checkpw", CHECKPASSWORD)] {
            common::write_script(&dir.join(name), text);
        }
        if kind != Relay::ClearText {
            make_certificate(&dir.join("control"))?;
            std::fs::write(dir.join("control/tlscert"), "cert.pem\n").expect("tlscert");
            std::fs::write(dir.join("control/tlskey"), "key.pem\n").expect("tlskey");
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let children = Arc::new(Mutex::new(Vec::new()));
        let (stop2, children2, dir2) = (stop.clone(), children.clone(), dir.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: the test drops the server within a minute; the loop checks `stop`.
            for _ in 0..100_000 {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        children2.lock().expect("lock").push(spawn_smtpd(&dir2, kind, stream, port));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Some(Server { home, port, stop, children, thread: Some(thread) })
    }

    fn dir(&self) -> &Path {
        self.home.path()
    }

    fn connections(&self) -> usize {
        self.children.lock().expect("lock").len()
    }

    /// The envelopes the relay queued.
    fn queued(&self) -> Vec<String> {
        common::files(&self.dir().join("qq"))
            .iter()
            .map(|d| String::from_utf8_lossy(&std::fs::read(d.join("envelope")).unwrap_or_default()).into_owned())
            .collect()
    }

    /// Wait (bounded) for every session to end, then return the relay's log.
    fn log(&self) -> String {
        let children = self.children.clone();
        common::wait_for(Duration::from_secs(20), || {
            children.lock().expect("lock").iter_mut().all(|c| matches!(c.try_wait(), Ok(Some(_))))
        });
        std::fs::read_to_string(self.dir().join("log")).unwrap_or_default()
    }

    /// How many user/password pairs checkpassword was asked about.
    fn checked(&self) -> usize {
        std::fs::read_to_string(self.dir().join("checkpw.log")).unwrap_or_default().lines().count()
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

fn spawn_smtpd(dir: &Path, kind: Relay, stream: TcpStream, port: u16) -> Child {
    let input = OwnedFd::from(stream.try_clone().expect("clone"));
    let peer = stream.peer_addr().expect("peer");
    let output = OwnedFd::from(stream);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("log")).expect("log");
    let mut command = Command::new(common::bin("quill-smtpd"));
    if kind != Relay::NoAuth {
        command.arg(dir.join("checkpw")).arg("/bin/true");
    }
    command
        .env("QUILL_HOME", dir)
        .env("PROTO", "TCP")
        .env("TCPREMOTEIP", peer.ip().to_string())
        .env("TCPREMOTEPORT", peer.port().to_string())
        .env("TCPLOCALIP", "127.0.0.1")
        .env("TCPLOCALPORT", port.to_string())
        .env("QMAILQUEUE", dir.join("fakeqq"))
        .env("QQ_DIR", dir.join("qq"))
        .env("CHECKPW_LOG", dir.join("checkpw.log"))
        .env_remove("RELAYCLIENT")
        .env_remove("SMTPS")
        .env_remove("AUTH_INSECURE")
        .env_remove("AUTH_REQUIRED")
        .stdin(Stdio::from(input))
        .stdout(Stdio::from(output))
        .stderr(Stdio::from(log));
    match kind {
        Relay::Smtps => {
            command.env("SMTPS", "1");
        }
        Relay::ClearText => {
            command.env("AUTH_INSECURE", "1");
        }
        Relay::Submission | Relay::NoAuth => {}
    }
    command.spawn().expect("spawn quill-smtpd")
}

/// quill-remote's home: DNS a dead end (nothing answers on port 9), the relay's certificate
/// trusted, and the given control files; control/smtpauth is written with `mode`.
fn home(cert: &Path, controls: &[(&str, &str)], smtpauth: Option<(&str, u32)>) -> common::TempDir {
    let mut all: Vec<(&str, &str)> = vec![
        ("me", "quill.test"),
        ("timeoutconnect", "5"),
        ("timeoutremote", "10"),
        ("dnsservers", "127.0.0.1:9\noptions timeout:1 attempts:1\n"),
    ];
    all.extend_from_slice(controls);
    let home = common::home("smarthost", &all);
    std::fs::copy(cert, home.path().join("control/tlsca")).expect("tlsca");
    if let Some((text, mode)) = smtpauth {
        let path = home.path().join("control/smtpauth");
        std::fs::write(&path, text).expect("smtpauth");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod smtpauth");
    }
    home
}

/// Run quill-remote (killed after 60 s: a hang is a failure); its report as (letter, text)
/// pairs, and its standard error.
fn remote(home: &Path, domain: &str, sender: &str, rcpts: &[&str]) -> (Vec<(char, String)>, String) {
    let mut child = Command::new(common::bin("quill-remote"))
        .arg(domain)
        .arg(sender)
        .args(rcpts)
        .env("QUILL_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quill-remote");
    let mut input = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(b"Subject: through the provider\n\nhello\n");
    });
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = String::new();
        let _ = stderr.read_to_string(&mut v);
        v
    });
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = child.wait().expect("wait");
    let _ = writer.join();
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    assert_eq!(status.code(), Some(0), "quill-remote failed: {err}");
    let reports: Vec<(char, String)> = out
        .split(|&b| b == 0)
        .filter(|r| !r.is_empty())
        .map(|r| (r[0] as char, String::from_utf8_lossy(&r[1..]).into_owned()))
        .collect();
    eprintln!("reports: {reports:?}\nstderr: {err}");
    assert_eq!(reports.len(), rcpts.len() + 1, "{reports:?} {err}");
    (reports, err)
}

/// Nothing a log, a report or the relay's log holds shows the password, plain or in base64.
fn assert_secret_kept(texts: &[&str]) {
    let plain_b64 =
        String::from_utf8(quill::mail::smtp::base64_encode(format!("\0alice\0{PASSWORD}").as_bytes())).expect("ascii");
    let password_b64 = String::from_utf8(quill::mail::smtp::base64_encode(PASSWORD.as_bytes())).expect("ascii");
    for text in texts {
        assert!(!text.contains(PASSWORD), "the password leaked: {text}");
        assert!(!text.contains(&plain_b64) && !text.contains(&password_b64), "the password leaked: {text}");
    }
}

fn smtpauth(port_free_relay: &str, password: &str) -> String {
    format!("# the provider\n{port_free_relay} alice {password}\n")
}

fn message_letter(reports: &[(char, String)]) -> char {
    reports.last().expect("a message report").0
}

#[cfg(feature = "tls")]
#[test]
fn right_credentials_deliver_over_starttls() {
    let Some(server) = Server::start(Relay::Submission) else { return };
    let routes = format!(":[127.0.0.1]:{}\n", server.port);
    let auth = smtpauth("[127.0.0.1]", PASSWORD);
    let home = home(&server.dir().join("control/cert.pem"), &[("smtproutes", &routes)], Some((&auth, 0o600)));
    let (reports, err) = remote(home.path(), "elsewhere.example", "joe@quill.test", &["bob@elsewhere.example"]);
    assert_eq!(message_letter(&reports), 'K', "{reports:?}");
    let text = &reports[1].1;
    assert!(text.contains("over TLS") && text.contains("after AUTH PLAIN as alice"), "{text}");
    let queued = server.queued();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert!(queued[0].contains("Fjoe@quill.test\0Tbob@elsewhere.example\0"), "{queued:?}");
    let log = server.log();
    assert!(log.contains("user=alice ok"), "{log}");
    assert_secret_kept(&[text, &err, &log]);
}

#[cfg(feature = "tls")]
#[test]
fn implicit_tls_on_a_route_marked_tls() {
    let Some(server) = Server::start(Relay::Smtps) else { return };
    let routes = format!(":127.0.0.1:{}:tls\n", server.port);
    let auth = smtpauth("127.0.0.1", PASSWORD);
    let home = home(&server.dir().join("control/cert.pem"), &[("smtproutes", &routes)], Some((&auth, 0o600)));
    let (reports, err) = remote(home.path(), "elsewhere.example", "joe@quill.test", &["bob@elsewhere.example"]);
    assert_eq!(message_letter(&reports), 'K', "{reports:?}");
    assert!(reports[1].1.contains("after AUTH PLAIN as alice"), "{reports:?}");
    assert_eq!(server.queued().len(), 1);
    assert_secret_kept(&[&reports[1].1, &err, &server.log()]);
}

#[cfg(feature = "tls")]
#[test]
fn wrong_credentials_defer_naming_the_relay() {
    let Some(server) = Server::start(Relay::Submission) else { return };
    let routes = format!(":127.0.0.1:{}\n", server.port);
    let auth = smtpauth("127.0.0.1", "not-the-password");
    let home = home(&server.dir().join("control/cert.pem"), &[("smtproutes", &routes)], Some((&auth, 0o600)));
    let (reports, err) =
        remote(home.path(), "elsewhere.example", "joe@quill.test", &["bob@elsewhere.example", "eve@elsewhere.example"]);
    // A deferral for every recipient, never a bounce.
    assert!(reports.iter().all(|(letter, _)| matches!(letter, 's' | 'Z')), "{reports:?}");
    assert_eq!(message_letter(&reports), 'Z', "{reports:?}");
    let text = &reports[2].1;
    assert!(text.contains("the relay [127.0.0.1] refused AUTH PLAIN as alice") && text.contains("535"), "{text}");
    assert!(server.queued().is_empty());
    assert_eq!(server.checked(), 1);
    assert_secret_kept(&[text, &err, &server.log()]);
    assert!(!text.contains("not-the-password") && !err.contains("not-the-password"), "{text} {err}");
}

#[cfg(feature = "tls")]
#[test]
fn a_secrets_file_others_can_read_is_refused() {
    let Some(server) = Server::start(Relay::Submission) else { return };
    let routes = format!(":127.0.0.1:{}\n", server.port);
    let auth = smtpauth("127.0.0.1", PASSWORD);
    for mode in [0o644, 0o640] {
        let home = home(&server.dir().join("control/cert.pem"), &[("smtproutes", &routes)], Some((&auth, mode)));
        let (reports, err) = remote(home.path(), "elsewhere.example", "joe@quill.test", &["bob@elsewhere.example"]);
        assert_eq!(message_letter(&reports), 'Z', "{reports:?}");
        let shown = format!("its mode {mode:o} lets others read it");
        assert!(err.contains("control/smtpauth") && err.contains(&shown), "{err}");
        assert!(reports[1].1.contains(&shown), "{reports:?}");
        assert_secret_kept(&[&reports[1].1, &err]);
    }
    // Nothing was sent anywhere.
    assert_eq!(server.connections(), 0);
}

#[cfg(feature = "tls")]
#[test]
fn sender_routes_pick_the_relay_and_recipient_routes_win() {
    let Some(server) = Server::start(Relay::Submission) else { return };
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let senders = format!("@corp.example:127.0.0.1:{}\n", server.port);
    let routes = format!(":127.0.0.1:{closed}\nspecial.example:127.0.0.1:{closed}\n");
    let auth = smtpauth("127.0.0.1", PASSWORD);
    let controls = [("smtproutes", routes.as_str()), ("senderroutes", senders.as_str())];
    let home = home(&server.dir().join("control/cert.pem"), &controls, Some((&auth, 0o600)));
    // The sender's route beats the default route.
    let (reports, _) = remote(home.path(), "elsewhere.example", "joe@Corp.Example", &["bob@elsewhere.example"]);
    assert_eq!(message_letter(&reports), 'K', "{reports:?}");
    assert_eq!(server.queued().len(), 1);
    // Another sender takes the default route (nothing listens there).
    let (reports, _) = remote(home.path(), "elsewhere.example", "joe@other.example", &["bob@elsewhere.example"]);
    assert_eq!(message_letter(&reports), 'Z', "{reports:?}");
    assert!(reports[1].1.contains(&format!("port {closed}")), "{reports:?}");
    // A recipient route for the domain beats the sender's.
    let (reports, _) = remote(home.path(), "special.example", "joe@corp.example", &["bob@special.example"]);
    assert_eq!(message_letter(&reports), 'Z', "{reports:?}");
    assert!(reports[1].1.contains(&format!("port {closed}")), "{reports:?}");
    assert_eq!(server.queued().len(), 1);
}

#[test]
fn no_auth_in_clear_text_to_a_server_without_tls() {
    // No certificate is needed on either side: the relay offers AUTH but no STARTTLS.
    let Some(server) = Server::start(Relay::ClearText) else { return };
    let routes = format!(":127.0.0.1:{}\n", server.port);
    let auth = smtpauth("127.0.0.1", PASSWORD);
    let home = common::home(
        "smarthost",
        &[("me", "quill.test"), ("timeoutremote", "10"), ("smtproutes", &routes), ("dnsservers", "127.0.0.1:9\n")],
    );
    let path = home.path().join("control/smtpauth");
    std::fs::write(&path, &auth).expect("smtpauth");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (reports, err) = remote(home.path(), "elsewhere.example", "joe@quill.test", &["bob@elsewhere.example"]);
    assert_eq!(message_letter(&reports), 'Z', "{reports:?}");
    let text = &reports[1].1;
    assert!(text.contains("does not offer STARTTLS") && text.contains("no AUTH is ever sent in clear text"), "{text}");
    let log = server.log();
    assert_eq!(server.checked(), 0, "AUTH reached the server: {log}");
    assert!(server.queued().is_empty());
    assert_secret_kept(&[text, &err, &log]);
}

#[cfg(feature = "tls")]
#[test]
fn a_relay_without_auth_after_tls_defers() {
    let Some(server) = Server::start(Relay::NoAuth) else { return };
    let routes = format!(":127.0.0.1:{}\n", server.port);
    let auth = smtpauth("127.0.0.1", PASSWORD);
    let home = home(&server.dir().join("control/cert.pem"), &[("smtproutes", &routes)], Some((&auth, 0o600)));
    let (reports, _) = remote(home.path(), "elsewhere.example", "joe@quill.test", &["bob@elsewhere.example"]);
    assert_eq!(message_letter(&reports), 'Z', "{reports:?}");
    assert!(reports[1].1.contains("the relay [127.0.0.1] offers no AUTH after TLS"), "{reports:?}");
    assert!(server.queued().is_empty());
}

/// Message `id` in queue/mess/ of `home`, from `sender` to bob@elsewhere.example.
fn queue_message(home: &Path, id: u64, sender: &str) {
    let header = quill::mail::queuefile::Header {
        uid: 0,
        pid: 1,
        time: 1_800_000_000,
        nanos: 0,
        envelope: quill::mail::envelope::Envelope {
            sender: sender.as_bytes().to_vec(),
            recipients: vec![b"bob@elsewhere.example".to_vec()],
        },
        dsn: Default::default(),
    };
    let mut bytes = header.encode();
    bytes.extend_from_slice(format!("Subject: m{id}\n\nbody\n").as_bytes());
    std::fs::write(home.join("queue/mess").join(id.to_string()), bytes).expect("queue a message");
}

/// quill-rspawn driven as quill-send drives it: message i+1 from `senders[i]`, each with the
/// backlog mark but the last, so one kept quill-remote takes them in turn. Each message's
/// result (letter, text), in order.
fn kept_run(home: &Path, senders: &[&str]) -> Vec<(char, String)> {
    use quill::mail::proto::spawn::{Reader, Report, Request};
    let mut child = Command::new(common::bin("quill-rspawn"))
        .env("QUILL_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run quill-rspawn");
    let mut input = child.stdin.take().expect("stdin");
    let mut output = child.stdout.take().expect("stdout");
    let (send, reports) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = Reader::default();
        let mut buffer = [0u8; 4096];
        while let Ok(n) = output.read(&mut buffer) {
            if n == 0 {
                return;
            }
            reader.push(&buffer[..n]);
            while let Some(fields) = reader.next_frame() {
                let _ = send.send(Report::decode(&fields));
            }
        }
    });
    let mut results = Vec::new();
    for (i, sender) in senders.iter().enumerate() {
        let id = i as u64 + 1;
        queue_message(home, id, sender);
        let request = Request {
            slot: id as u32,
            id: id.to_string().into_bytes(),
            sender: sender.as_bytes().to_vec(),
            recipients: vec![b"bob@elsewhere.example".to_vec()],
            retry: false,
            backlog: i + 1 < senders.len(),
        };
        input.write_all(&request.encode()).expect("write a request");
        let report = reports.recv_timeout(Duration::from_secs(60)).expect("a report in time").expect("a report");
        assert_eq!(report.slot, id as u32);
        let result = &report.results[0];
        results.push((result.outcome.letter() as char, String::from_utf8_lossy(&result.text).into_owned()));
    }
    drop(input);
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("quill-rspawn did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("results: {results:?}");
    results
}

#[cfg(feature = "tls")]
#[test]
fn a_backlog_rides_one_kept_connection_authenticated_once() {
    let Some(server) = Server::start(Relay::Submission) else { return };
    let routes = format!(":[127.0.0.1]:{}:starttls\n", server.port);
    let auth = smtpauth("[127.0.0.1]", PASSWORD);
    let controls = [("smtproutes", routes.as_str()), ("timeoutremoteidle", "1")];
    let home = home(&server.dir().join("control/cert.pem"), &controls, Some((&auth, 0o600)));
    let results = kept_run(home.path(), &["joe@quill.test"; 4]);
    for (letter, text) in &results {
        assert_eq!(*letter, 'K', "{results:?}");
        assert!(text.contains("over TLS") && text.contains("after AUTH PLAIN as alice"), "{text}");
    }
    assert_eq!(server.queued().len(), 4);
    assert_eq!(server.connections(), 1, "one kept connection for the backlog");
    let log = server.log();
    assert_eq!(server.checked(), 1, "AUTH once per connection: {log}");
    assert_secret_kept(&[&log]);
}

#[cfg(feature = "tls")]
#[test]
fn a_kept_connection_carries_only_messages_of_its_route() {
    let Some(server) = Server::start(Relay::Submission) else { return };
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let senders = format!("@corp.example:127.0.0.1:{}\n", server.port);
    let routes = format!(":127.0.0.1:{closed}\n");
    let auth = smtpauth("127.0.0.1", PASSWORD);
    let controls = [("smtproutes", routes.as_str()), ("senderroutes", senders.as_str()), ("timeoutremoteidle", "1")];
    let home = home(&server.dir().join("control/cert.pem"), &controls, Some((&auth, 0o600)));
    let results = kept_run(home.path(), &["a@corp.example", "b@corp.example", "c@other.example", "d@corp.example"]);
    let letters: String = results.iter().map(|(letter, _)| *letter).collect();
    // The other sender's message takes the default route (nothing listens there), never the
    // connection kept to the corp relay.
    assert_eq!(letters, "KKZK", "{results:?}");
    assert!(results[2].1.contains(&format!("port {closed}")), "{results:?}");
    for i in [0, 1, 3] {
        assert!(results[i].1.contains("after AUTH PLAIN as alice"), "{results:?}");
    }
    let queued = server.queued();
    assert_eq!(queued.len(), 3, "{queued:?}");
    assert!(queued.iter().all(|q| !q.contains("Fc@other.example")), "{queued:?}");
    // The first connection carried a and b, then was closed for c's route; d took a new one.
    assert_eq!(server.connections(), 2);
    assert_eq!(server.checked(), 2);
}

// ---------------------------------------------------------------------------------------
// Postfix as the provider's submission server, with Dovecot SASL (issue 13, item 1): a
// private Dovecot that only authenticates (a passwd-file with alice and PASSWORD) on a unix
// socket in the test's directory, and a private Postfix whose smtpd on a loopback port offers
// STARTTLS with a certificate made for the run, AUTH only after it
// (`smtpd_tls_auth_only`), through that socket (`smtpd_sasl_type = dovecot`), and takes mail
// only from authenticated clients. What it takes it delivers into its own Maildir.

#[cfg(feature = "tls")]
/// uid and gid of a system user (Postfix's own), from /etc/passwd.
fn owner_of(user: &str) -> Option<(u32, u32)> {
    std::fs::read_to_string("/etc/passwd").unwrap_or_default().lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| (f[2].parse().ok(), f[3].parse().ok())).and_then(|(u, g)| Some((u?, g?)))
    })
}

#[cfg(feature = "tls")]
fn read_text(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

#[cfg(feature = "tls")]
/// The private Dovecot (SASL only) and Postfix, stopped when dropped (`common::Daemon`).
struct PostfixRelay {
    dir: common::TempDir,
    port: u16,
    _dovecot: common::Daemon,
    _master: common::Daemon,
}

#[cfg(feature = "tls")]
impl PostfixRelay {
    /// `mechanisms`: what Dovecot offers (`plain login`, or `login` alone to see LOGIN used).
    /// None after a SKIP line without Postfix, Dovecot, openssl or root.
    fn start(mechanisms: &str) -> Option<PostfixRelay> {
        if common::skip_without("/usr/sbin/postfix")
            || common::skip_without("/usr/sbin/postconf")
            || common::skip_without("/usr/sbin/dovecot")
        {
            return None;
        }
        if !common::is_root() {
            common::skip("a private Postfix needs root");
            return None;
        }
        let Some((postfix_uid, postfix_gid)) = owner_of("postfix") else {
            common::skip("Postfix is installed but there is no postfix user");
            return None;
        };
        let dir = common::TempDir::new("postfix-sasl");
        let base = dir.path().to_path_buf();
        for sub in ["conf", "queue", "data", "mail", "dovecot/run", "dovecot/state", "tls"] {
            std::fs::create_dir_all(base.join(sub)).expect("mkdir");
        }
        make_certificate(&base.join("tls"))?;
        // Dovecot: authentication only, its client socket open to Postfix's smtpd.
        let d = base.join("dovecot");
        std::fs::write(d.join("users"), format!("alice:{{PLAIN}}{PASSWORD}\n")).expect("users");
        let conf = format!(
            "base_dir = {dd}/run\nstate_dir = {dd}/state\nlog_path = {dd}/dovecot.log\nprotocols = none\nssl = no\n\
             disable_plaintext_auth = no\nauth_mechanisms = {mechanisms}\n\
             passdb {{\n  driver = passwd-file\n  args = {dd}/users\n}}\n\
             userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home=/nonexistent\n}}\n\
             service auth {{\n  unix_listener {dd}/auth {{\n    mode = 0666\n  }}\n}}\n",
            dd = d.display()
        );
        std::fs::write(d.join("dovecot.conf"), conf).expect("dovecot.conf");
        let out = std::fs::File::create(d.join("out.log")).expect("out.log");
        let dovecot = Command::new("/usr/sbin/dovecot")
            .arg("-F")
            .arg("-c")
            .arg(d.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("out"))
            .stderr(out)
            .spawn()
            .expect("start dovecot");
        let dovecot = common::Daemon(dovecot);
        let up = common::wait_for(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(d.join("auth")).is_ok()
        });
        assert!(up, "Dovecot's auth socket did not come up: {}", read_text(&d.join("out.log")));
        // Postfix: the submission service on a loopback port, mail for relayed.test kept.
        let _ = nix::unistd::chown(&base.join("data"), Some(postfix_uid.into()), Some(postfix_gid.into()));
        let _ = nix::unistd::chown(&base.join("mail"), Some(65534.into()), Some(65534.into()));
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let b = base.display();
        let main = format!(
            "compatibility_level = 3.6\nqueue_directory = {b}/queue\ndata_directory = {b}/data\n\
             maillog_file = {b}/maillog\nmaillog_file_prefixes = {b}\nmyhostname = relay.test\n\
             mydomain = relay.test\nmyorigin = relay.test\nmydestination =\ninet_interfaces = loopback-only\n\
             inet_protocols = ipv4\nmynetworks =\nsmtp_dns_support_level = disabled\n\
             smtpd_peername_lookup = no\nalias_maps =\nalias_database =\nlocal_recipient_maps =\nbiff = no\n\
             virtual_mailbox_base = {b}/mail\nvirtual_mailbox_maps = static:box/\n\
             virtual_uid_maps = static:65534\nvirtual_gid_maps = static:65534\n\
             virtual_mailbox_domains = relayed.test\n\
             smtpd_tls_cert_file = {b}/tls/cert.pem\nsmtpd_tls_key_file = {b}/tls/key.pem\n\
             smtpd_tls_security_level = encrypt\nsmtpd_tls_auth_only = yes\n\
             smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = dovecot\nsmtpd_sasl_path = {b}/dovecot/auth\n\
             smtpd_client_restrictions = permit_sasl_authenticated, reject\n\
             smtpd_relay_restrictions = permit_sasl_authenticated, reject\n"
        );
        std::fs::write(base.join("conf/main.cf"), main).expect("main.cf");
        let mut master = format!("127.0.0.1:{port} inet n - n - - smtpd\n");
        for line in [
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "local unix - n n - - local",
            "virtual unix - n n - - virtual",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "tlsmgr unix - - n 1000? 1 tlsmgr",
            "postlog unix-dgram n - n - 1 postlogd",
        ] {
            master.push_str(line);
            master.push('\n');
        }
        std::fs::write(base.join("conf/master.cf"), master).expect("master.cf");
        let conf = base.join("conf");
        let out = Command::new("/usr/sbin/postfix").arg("-c").arg(&conf).arg("check").output().expect("postfix check");
        assert!(
            out.status.success(),
            "postfix check: {}{}",
            String::from_utf8_lossy(&out.stderr),
            read_text(&base.join("maillog"))
        );
        let daemons = Command::new("/usr/sbin/postconf")
            .arg("-c")
            .arg(&conf)
            .args(["-h", "daemon_directory"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/usr/lib/postfix/sbin".to_string());
        let out = std::fs::File::create(base.join("master.out")).expect("master.out");
        let mut command = Command::new(Path::new(&daemons).join("master"));
        command.arg("-c").arg(&conf).arg("-d").stdin(Stdio::null()).stdout(out.try_clone().expect("out")).stderr(out);
        quill::base::sys::die_with_parent(&mut command);
        let master = common::Daemon(command.spawn().expect("start Postfix master"));
        let relay = PostfixRelay { dir, port, _dovecot: dovecot, _master: master };
        let up = common::wait_for(Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "Postfix did not start: {}\n{}", relay.maillog(), read_text(&base.join("master.out")));
        Some(relay)
    }

    fn maillog(&self) -> String {
        read_text(&self.dir.path().join("maillog"))
    }

    fn dovecot_log(&self) -> String {
        read_text(&self.dir.path().join("dovecot/dovecot.log"))
    }

    fn delivered(&self) -> Vec<String> {
        common::files(&self.dir.path().join("mail/box/new")).iter().map(|f| read_text(f)).collect()
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls/cert.pem")
    }
}

/// Right credentials deliver through Postfix with Dovecot SASL, over STARTTLS with the
/// certificate verified; wrong ones defer with a text that names the relay, and nothing is
/// delivered. `mechanisms` is what Dovecot offers, `expected` what quill-remote must use.
#[cfg(feature = "tls")]
fn through_postfix_with_dovecot_sasl(mechanisms: &str, expected: &str) {
    let Some(relay) = PostfixRelay::start(mechanisms) else { return };
    let routes = format!(":127.0.0.1:{}\n", relay.port);
    let auth = smtpauth("127.0.0.1", PASSWORD);
    let right = home(&relay.cert(), &[("smtproutes", &routes)], Some((&auth, 0o600)));
    let (reports, err) = remote(right.path(), "relayed.test", "joe@quill.test", &["bob@relayed.test"]);
    assert_eq!(message_letter(&reports), 'K', "{reports:?}\n{}", relay.maillog());
    let text = &reports[1].1;
    assert!(text.contains("over TLS") && text.contains(&format!("after AUTH {expected} as alice")), "{text}");
    let delivered = common::wait_for(Duration::from_secs(30), || relay.delivered().len() == 1);
    assert!(delivered, "Postfix did not deliver: {}", relay.maillog());
    assert!(relay.delivered()[0].contains("Subject: through the provider"));
    let log = relay.maillog();
    assert!(log.contains(&format!("sasl_method={expected}, sasl_username=alice")), "{log}");

    let bad_auth = smtpauth("127.0.0.1", "not-the-password");
    let wrong = home(&relay.cert(), &[("smtproutes", &routes)], Some((&bad_auth, 0o600)));
    let (reports, wrong_err) =
        remote(wrong.path(), "relayed.test", "joe@quill.test", &["bob@relayed.test", "eve@relayed.test"]);
    assert_eq!(message_letter(&reports), 'Z', "{reports:?}");
    for (letter, text) in &reports[..2] {
        assert_eq!(*letter, 's', "deferred, never bounced: {reports:?}");
        assert!(
            text.contains(&format!("the relay [127.0.0.1] refused AUTH {expected} as alice"))
                && text.contains("control/smtpauth")
                && text.contains("535"),
            "{text}"
        );
    }
    assert_eq!(relay.delivered().len(), 1, "nothing more delivered");
    assert_secret_kept(&[text, &err, &wrong_err, &reports[0].1, &relay.maillog(), &relay.dovecot_log()]);
}

#[cfg(feature = "tls")]
#[test]
fn postfix_with_dovecot_sasl_plain() {
    through_postfix_with_dovecot_sasl("plain login", "PLAIN");
}

#[cfg(feature = "tls")]
#[test]
fn postfix_with_dovecot_sasl_login() {
    through_postfix_with_dovecot_sasl("login", "LOGIN");
}
