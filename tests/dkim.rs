//! DKIM signing, checked by a real verifier: keys made by `quill dkim keygen`, messages signed
//! by the real quill-queue, signatures verified by python3-dkim (`dkim.verify` with the TXT
//! record keygen printed as its DNS answer) and by opendkim-testmsg (the record served by dnsmasq).

mod common;

use common::{files, home};
use quill::mail::queuefile::read_header;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const PYTHON: &str = "/usr/bin/python3";

const MESSAGE: &[u8] = b"From: Alice <alice@example.com>\nTo: bob@example.net\nSubject: a  test\n\tfolded\nDate: Sun, 6 Dec 2026 03:00:00 +0000\nMessage-ID: <1@example.com>\n\nHello  there \n\n\n";

/// python3 with the dkim module (Debian's python3-dkim), or a skip.
fn skip_without_dkimpy() -> bool {
    common::skip_unless_can(PYTHON, &["-c", "import dkim\nprint('dkim ok')"], "dkim ok", "import dkim (python3-dkim)")
}

/// `quill dkim keygen` in `home`: the TXT record's text.
fn keygen(home: &Path, domain: &str, selector: &str, kind: &str) -> String {
    let out = common::run(home, "quill", &["dkim", "keygen", domain, selector, kind], b"");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "keygen: {text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with(&format!("{selector}._domainkey.{domain}. IN TXT \"")), "{text}");
    let record: String = text.trim().split_once(" IN TXT ").map(|(_, r)| r).unwrap_or("").replace("\" \"", "");
    let record = record.trim_matches('"').to_string();
    assert!(record.starts_with(&format!("v=DKIM1; k={kind}; p=")), "{record}");
    let key = home.join("control/dkim").join(format!("{domain}.{selector}"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).expect("key file").permissions().mode() & 0o777, 0o400);
    record
}

/// Queue `message` with quill-queue (asking for a signature when `sign`); the queued bytes
/// (Received line, any DKIM-Signature, the message) and quill-queue's stderr.
fn queue(home: &Path, message: &[u8], sign: bool) -> (Vec<u8>, String) {
    for old in files(&home.join("queue/todo")) {
        std::fs::remove_file(old).expect("remove old message");
    }
    let (envelope_read, envelope_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let mut command = Command::new(common::bin("quill-queue"));
    command.env("QUILL_HOME", home).env_remove("QUILL_DKIMSIGN");
    if sign {
        command.env("QUILL_DKIMSIGN", "1");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::from(envelope_read))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quill-queue");
    child.stdin.take().expect("stdin").write_all(message).expect("write message");
    let mut envelope = std::fs::File::from(envelope_write);
    envelope.write_all(b"Falice@example.com\0Tbob@example.net\0\0").expect("write envelope");
    drop(envelope);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "quill-queue: {}", String::from_utf8_lossy(&out.stderr));
    let todo = files(&home.join("queue/todo"));
    assert_eq!(todo.len(), 1);
    let mut file = std::fs::File::open(&todo[0]).expect("open");
    let (_, offset) = read_header(&mut file).expect("header");
    let bytes = std::fs::read(&todo[0]).expect("read");
    (bytes[offset as usize..].to_vec(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// python3-dkim's verdict on `message` (LF line ends, made CRLF as on the wire) with `record`
/// as the only DNS answer.
fn verify(message: &[u8], record: &str) -> bool {
    let script = format!(
        "import sys, dkim\nrecord = {record:?}.encode()\ndef dns(name, timeout=5):\n    return record if name == b's1._domainkey.example.com.' or name == b's1._domainkey.example.com' else None\nmsg = sys.stdin.buffer.read().replace(b'\\n', b'\\r\\n')\nprint('verified' if dkim.verify(msg, dnsfunc=dns) else 'failed')\n"
    );
    let mut child = Command::new(PYTHON)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().expect("stdin").write_all(message).expect("write");
    let out = child.wait_with_output().expect("wait");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("verified") || said.contains("failed"), "{said} {}", String::from_utf8_lossy(&out.stderr));
    said.trim() == "verified"
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes.windows(from.len()).position(|w| w == from).expect("text to tamper with");
    [&bytes[..at], to, &bytes[at + from.len()..]].concat()
}

fn signed_and_verified(kind: &str, canon: &str) {
    if skip_without_dkimpy() {
        return;
    }
    if kind == "rsa" && common::skip_without("openssl") {
        return;
    }
    let home = home("dkim", &[("dkimsign", &format!("c={canon}\n"))]);
    let record = keygen(home.path(), "example.com", "s1", kind);
    let (queued, stderr) = queue(home.path(), MESSAGE, true);
    assert!(stderr.contains("dkim: signed d=example.com s=s1"), "{stderr}");
    let text = String::from_utf8_lossy(&queued);
    assert!(text.contains(&format!("c={canon};")), "{text}");
    assert!(verify(&queued, &record), "{kind} {canon} not verified:\n{text}");
    // Any change to the body or to a signed header breaks the signature.
    assert!(!verify(&replace(&queued, b"Hello", b"Jello"), &record), "tampered body verified");
    assert!(!verify(&replace(&queued, b"a  test", b"a best"), &record), "tampered Subject verified");
    // A second From: added after signing is caught by the oversigned From.
    let added = replace(&queued, b"From: Alice", b"From: Mallory <m@example.org>\nFrom: Alice");
    assert!(!verify(&added, &record), "added From: verified");
}

#[test]
fn ed25519_relaxed() {
    signed_and_verified("ed25519", "relaxed/relaxed");
}

#[test]
fn ed25519_simple() {
    signed_and_verified("ed25519", "simple/simple");
}

#[test]
fn rsa_relaxed() {
    signed_and_verified("rsa", "relaxed/relaxed");
}

#[test]
fn rsa_simple() {
    signed_and_verified("rsa", "simple/simple");
}

/// Regression: relaxed canonicalization dropped the space after a colon inside a value, so
/// that a signature over "Subject: Re: hello" failed at every other verifier.
#[test]
fn colon_in_a_signed_value_relaxed() {
    if skip_without_dkimpy() {
        return;
    }
    let home = home("dkim-colon", &[]);
    let record = keygen(home.path(), "example.com", "s1", "ed25519");
    let message = replace(MESSAGE, b"Subject: a  test", b"Subject: Re: a  test : x");
    let (queued, stderr) = queue(home.path(), &message, true);
    assert!(stderr.contains("dkim: signed d=example.com s=s1"), "{stderr}");
    assert!(verify(&queued, &record), "not verified:\n{}", String::from_utf8_lossy(&queued));
}

#[test]
fn subdomain_uses_the_parent_key() {
    if skip_without_dkimpy() {
        return;
    }
    let home = home("dkim-parent", &[]);
    keygen(home.path(), "example.com", "s1", "ed25519");
    let message = replace(MESSAGE, b"alice@example.com", b"alice@mail.example.com");
    let (queued, stderr) = queue(home.path(), &message, true);
    assert!(stderr.contains("dkim: signed d=example.com s=s1"), "{stderr}");
    assert!(String::from_utf8_lossy(&queued).contains("DKIM-Signature:"));
}

#[test]
fn not_asked_not_signed() {
    // Local forwarding and bounces (and anything else not asking) are never signed.
    let home = home("dkim-unasked", &[]);
    keygen(home.path(), "example.com", "s1", "ed25519");
    let (queued, stderr) = queue(home.path(), MESSAGE, false);
    assert!(!String::from_utf8_lossy(&queued).contains("DKIM-Signature"));
    assert!(!stderr.contains("dkim"), "{stderr}");
}

#[test]
fn domain_without_key_goes_unsigned_and_is_logged() {
    let home = home("dkim-nokey", &[]);
    keygen(home.path(), "example.org", "s1", "ed25519");
    let (queued, stderr) = queue(home.path(), MESSAGE, true);
    assert!(!String::from_utf8_lossy(&queued).contains("DKIM-Signature"));
    assert!(stderr.contains("dkim: not signed: no key for example.com"), "{stderr}");
}

#[test]
fn keygen_refuses_to_overwrite() {
    let home = home("dkim-twice", &[]);
    keygen(home.path(), "example.com", "s1", "ed25519");
    let out = common::run(home.path(), "quill", &["dkim", "keygen", "example.com", "s1", "ed25519"], b"");
    assert!(!out.status.success());
}

/// The signing cost per message of each algorithm, printed for doc/PERFORMANCE.md (measured,
/// never asserted): a 2 kB message, the default settings, keys from keygen.
#[test]
fn signing_cost_per_message() {
    use quill::mail::dkim::{Canon, Key, DEFAULT_HEADERS};
    let home = home("dkim-cost", &[]);
    let mut kinds = vec!["ed25519"];
    if !common::skip_without("openssl") {
        kinds.push("rsa");
    }
    let mut message = MESSAGE.to_vec();
    message
        .extend(std::iter::repeat_n(b"The quick brown fox jumps over the lazy dog again.\n".as_slice(), 40).flatten());
    for kind in kinds {
        let selector = format!("cost{kind}");
        keygen(home.path(), "example.com", &selector, kind);
        let bytes =
            std::fs::read(home.path().join("control/dkim").join(format!("example.com.{selector}"))).expect("key");
        let key = Key::from_bytes("example.com", &selector, &bytes).expect("key");
        let rounds = 300;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            key.sign(&message, (Canon::Relaxed, Canon::Relaxed), DEFAULT_HEADERS, 0).expect("signed");
        }
        let each = start.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
        eprintln!("dkim {kind}: {each:.3} ms per message ({} bytes)", message.len());
    }
}

/// A running quill-up listening for SMTP on 127.0.0.1, relaying for clients from 127.0.0.2,
/// with a DKIM key for example.com made by `quill dkim keygen` before it starts; stopped
/// (SIGTERM, then waited for) when dropped.
struct Instance {
    dir: common::TempDir,
    child: Option<std::process::Child>,
    port: u16,
}

impl Instance {
    /// The instance and the TXT record keygen printed.
    fn start(tag: &str, kind: &str) -> (Instance, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let dir = common::TempDir::new(tag);
        let home = dir.path().join("q");
        std::fs::create_dir_all(&home).expect("mkdir");
        let record = keygen(&home, "example.com", "s1", kind);
        let log = dir.path().join("log");
        let child = Command::new(common::bin("quill-up"))
            .arg("-d")
            .arg(&home)
            .args(["-l", &format!("127.0.0.1:{port}"), "-r", "127.0.0.2"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::options().append(true).open(&log).expect("log"))
            .spawn()
            .expect("start quill-up");
        let instance = Instance { dir, child: Some(child), port };
        let up = common::wait_for(std::time::Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && common::instance_pids(&instance.home(), "quill-queued").len() == 1
        });
        assert!(up, "the instance did not come up; log:\n{}", instance.log());
        (instance, record)
    }

    fn home(&self) -> std::path::PathBuf {
        self.dir.path().join("q")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Send `message` (LF line ends) over SMTP from the client address `from` to `to`.
    fn send(&self, from: std::net::Ipv4Addr, to: &str, message: &[u8]) {
        use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
        use std::io::{BufRead, BufReader};
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(std::net::SocketAddrV4::new(from, 0)))
            .expect("bind the client address");
        let server = SockaddrIn::from(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, self.port));
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &server).expect("connect");
        let stream = std::net::TcpStream::from(fd);
        stream.set_read_timeout(Some(std::time::Duration::from_secs(60))).expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut writer = stream;
        let mut reply = || {
            for _ in 0..50 {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.as_bytes().get(3) != Some(&b'-') {
                    return line;
                }
            }
            String::new()
        };
        assert!(reply().starts_with("220"));
        let mut data = Vec::new();
        for line in message.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            if line.starts_with(b".") {
                data.push(b'.');
            }
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(b".\r\n");
        for (command, code) in [
            (b"EHLO client.example.com\r\n".to_vec(), "250"),
            (b"MAIL FROM:<alice@example.com>\r\n".to_vec(), "250"),
            (format!("RCPT TO:<{to}>\r\n").into_bytes(), "250"),
            (b"DATA\r\n".to_vec(), "354"),
            (data, "250"),
            (b"QUIT\r\n".to_vec(), "221"),
        ] {
            writer.write_all(&command).expect("write");
            let said = reply();
            assert!(said.starts_with(code), "{}: {said}", String::from_utf8_lossy(&command[..command.len().min(40)]));
        }
    }

    /// The one message delivered to `user`'s Maildir, waited for.
    fn delivered(&self, user: &str) -> Vec<u8> {
        let new = self.home().join("maildir").join(user).join("new");
        let arrived = common::wait_for(std::time::Duration::from_secs(30), || files(&new).len() == 1);
        assert!(arrived, "nothing delivered to {user}; log:\n{}", self.log());
        std::fs::read(&files(&new)[0]).expect("read the message")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::SIGTERM);
            let _ = common::wait_for(std::time::Duration::from_secs(30), || !matches!(c.try_wait(), Ok(None)));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// End to end: a relay client's message is signed by quill-queued and the signature still
/// verifies in the Maildir (after the Received and Delivered-To lines added on the way); the
/// same message from a stranger to the same local user arrives unsigned.
#[test]
fn relay_clients_mail_arrives_signed_and_strangers_unsigned() {
    if skip_without_dkimpy() {
        return;
    }
    let (instance, record) = Instance::start("dkim-e2e", "ed25519");
    instance.send(std::net::Ipv4Addr::new(127, 0, 0, 2), "relayed@localhost", MESSAGE);
    let signed = instance.delivered("relayed");
    let text = String::from_utf8_lossy(&signed);
    assert!(text.contains("DKIM-Signature:") && text.contains("d=example.com"), "{text}");
    assert!(verify(&signed, &record), "not verified:\n{text}");
    instance.send(std::net::Ipv4Addr::LOCALHOST, "stranger@localhost", MESSAGE);
    let unsigned = instance.delivered("stranger");
    assert!(!String::from_utf8_lossy(&unsigned).contains("DKIM-Signature"), "{}", String::from_utf8_lossy(&unsigned));
    // quill-up gave the key to the instance's user, who signs: quill check agrees.
    let home = instance.home();
    let out = common::run(&home, "quill", &["check", "--home", home.to_str().expect("path")], b"");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!report.contains("DKIM key"), "{report}");
}

/// Run in new user, network and mount namespaces (`unshare -r -n -m`), so that nothing of the
/// machine is touched: loopback up, a private resolv.conf bind-mounted over /etc/resolv.conf
/// naming 127.0.0.1, dnsmasq on port 53 there serving the TXT record, then opendkim-testmsg
/// verifying stdin (it has no resolver option: libopendkim asks the system resolver, and
/// resolv.conf cannot name a port). Arguments: dnsmasq, its --txt-record option, the
/// resolv.conf to mount. dnsmasq logs its queries on stderr for the failure message. Exit 97 when the namespace cannot be set up (a SKIP).
const OPENDKIM_SCRIPT: &str = r#"
ip link set lo up || exit 97
mount --bind "$3" /etc/resolv.conf || exit 97
"$1" --no-daemon --conf-file=/dev/null --pid-file= --listen-address=127.0.0.1 --bind-interfaces \
    --no-resolv --no-hosts --user=root --port=53 --log-queries "$2" &
dns=$!
i=0
while [ $i -lt 100 ] && ! grep -q ':0035 ' /proc/net/udp; do sleep 0.1; i=$((i + 1)); done
/usr/sbin/opendkim-testmsg
rc=$?
kill $dns
exit $rc
"#;

/// opendkim-testmsg's verdict on `message`, with `record` served by dnsmasq as the TXT record
/// of s1._domainkey.example.com; None (after a SKIP line) when that cannot be arranged.
fn opendkim_verify(message: &[u8], record: &str) -> Option<(bool, String)> {
    let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].into_iter().find(|p| Path::new(p).exists());
    let Some(dnsmasq) = dnsmasq else {
        common::skip("dnsmasq is not installed");
        return None;
    };
    let dir = common::TempDir::new("opendkim");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n").expect("resolv.conf");
    // A TXT string holds at most 255 bytes: an RSA record is given to dnsmasq in pieces, each
    // taken literally (quotes would become part of the record).
    let pieces: Vec<String> = record.as_bytes().chunks(250).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    let txt = format!("--txt-record=s1._domainkey.example.com,{}", pieces.join(","));
    let mut child = Command::new("unshare")
        .args(["-r", "-n", "-m", "sh", "-c", OPENDKIM_SCRIPT, "opendkim", dnsmasq, &txt])
        .arg(&resolv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    // CRLF line ends, as on the wire (as for python3-dkim in verify()).
    let wire: Vec<u8> = message.iter().flat_map(|&b| if b == b'\n' { vec![b'\r', b'\n'] } else { vec![b] }).collect();
    child.stdin.take().expect("stdin").write_all(&wire).expect("write");
    let out = child.wait_with_output().expect("wait");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(97) {
        common::skip(&format!("no private network and mount namespace for opendkim-testmsg: {said}"));
        return None;
    }
    Some((out.status.success(), said))
}

/// A second, independent verifier: OpenDKIM's library, asking real DNS (dnsmasq on loopback in
/// a private network namespace) for the key.
fn opendkim_verifies(kind: &str) {
    if common::skip_without("/usr/sbin/opendkim-testmsg")
        || common::skip_unless_can(
            "unshare",
            &["-r", "-n", "-m", "echo", "namespaces"],
            "namespaces",
            "make user, network and mount namespaces",
        )
    {
        return;
    }
    if kind == "rsa" && common::skip_without("openssl") {
        return;
    }
    let home = home("dkim-opendkim", &[]);
    let record = keygen(home.path(), "example.com", "s1", kind);
    let (queued, stderr) = queue(home.path(), MESSAGE, true);
    assert!(stderr.contains("dkim: signed d=example.com s=s1"), "{stderr}");
    let Some((good, said)) = opendkim_verify(&queued, &record) else { return };
    assert!(good, "opendkim-testmsg refused {kind}: {said}\n{}", String::from_utf8_lossy(&queued));
    let Some((good, said)) = opendkim_verify(&replace(&queued, b"Hello", b"Jello"), &record) else { return };
    assert!(!good, "opendkim-testmsg accepted a tampered body: {said}");
}

#[test]
fn opendkim_verifies_rsa() {
    opendkim_verifies("rsa");
}

#[test]
fn opendkim_verifies_ed25519() {
    opendkim_verifies("ed25519");
}

/// `quill check` names a DKIM key that group or others can read, or that belongs to someone
/// other than the signer (quillq in a system install), each with its fix; keygen's keys pass.
#[test]
fn check_names_a_key_others_can_read_or_that_the_signer_does_not_own() {
    use std::os::unix::fs::PermissionsExt;
    let home = home("dkim-check", &[]);
    keygen(home.path(), "example.com", "good", "ed25519");
    keygen(home.path(), "example.com", "open", "ed25519");
    let dir = home.path().join("control/dkim");
    std::fs::set_permissions(dir.join("example.com.open"), std::fs::Permissions::from_mode(0o440)).expect("chmod");
    if common::is_root() {
        keygen(home.path(), "example.com", "stolen", "ed25519");
        nix::unistd::chown(&dir.join("example.com.stolen"), Some(nix::unistd::Uid::from_raw(0)), None).expect("chown");
    }
    let out = common::run(home.path(), "quill", &["check", "--home", home.path().to_str().expect("path")], b"");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let open = dir.join("example.com.open").display().to_string();
    assert!(report.contains(&format!("the DKIM key {open} has mode 440: group or others can read it")), "{report}");
    assert!(report.contains(&format!("chmod 400 {open}")), "{report}");
    if common::is_root() {
        let stolen = dir.join("example.com.stolen").display().to_string();
        assert!(
            report.contains(&format!("the DKIM key {stolen} belongs to root, not quillq; fix: chown quillq {stolen}")),
            "{report}"
        );
    }
    assert!(!report.contains("example.com.good"), "keygen's key is fine:\n{report}");
}
