//! Delivery status notifications (RFC 3461, RFC 3464; issue 13 item 3) on a whole private
//! instance: quill-up with quill-smtpd, quill-queued and quill-send. Messages come in over SMTP
//! with DSN parameters; the reports land in the sender's Maildir and are read back, their MIME
//! structure checked with Python's email module where Python is installed.

mod common;

use common::{bin, files, wait_for, TempDir};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running quill-up with an SMTP listener, stopped when dropped. Local parts `fail` and
/// `fail2` fail for good (their dot files exit 100), `later` and `later2` fail for now (exit
/// 111); every other one is delivered to maildir/LOCALPART/.
struct Instance {
    dir: TempDir,
    child: Option<Child>,
    port: u16,
}

impl Instance {
    fn start(tag: &str) -> Instance {
        Instance::start_with(tag, &[])
    }

    /// An instance with these control files written before its first start.
    fn start_with(tag: &str, controls: &[(&str, &str)]) -> Instance {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let dir = TempDir::new(tag);
        let home = dir.path().join("q");
        std::fs::create_dir_all(home.join("control")).expect("mkdir");
        for (name, value) in controls {
            std::fs::write(home.join("control").join(name), value).expect("control file");
        }
        for name in ["fail", "fail2"] {
            std::fs::write(home.join(format!(".qmail-{name}")), "|echo no such mailbox here; exit 100\n")
                .expect("dot file");
        }
        for name in ["later", "later2"] {
            std::fs::write(home.join(format!(".qmail-{name}")), "|echo mailbox busy, try later; exit 111\n")
                .expect("dot file");
        }
        let mut instance = Instance { dir, child: None, port };
        instance.up();
        instance
    }

    /// Start quill-up (again) and wait for it to listen.
    fn up(&mut self) {
        let log = self.dir.path().join("log");
        let child = Command::new(bin("quill-up"))
            .arg("-d")
            .arg(self.home())
            .arg("-l")
            .arg(format!("127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(std::fs::File::options().create(true).append(true).open(&log).expect("log"))
            .stderr(std::fs::File::options().append(true).open(&log).expect("log"))
            .spawn()
            .expect("start quill-up");
        self.child = Some(child);
        let up = wait_for(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && common::instance_pids(&self.home(), "quill-queued").len() == 1
        });
        assert!(up, "the instance did not come up; log:\n{}", self.log());
    }

    /// Stop quill-up and everything under it.
    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::SIGTERM);
            let _ = wait_for(Duration::from_secs(30), || !matches!(c.try_wait(), Ok(None)));
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Ask for a retry of every waiting message (`quill queue flush`).
    fn flush(&self) {
        let out = common::run(&self.home(), "quill", &["queue", "flush"], b"");
        assert!(out.status.success(), "quill queue flush: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("q")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Delivered messages of one local part.
    fn delivered(&self, user: &str) -> Vec<String> {
        let mailbox = self.home().join("maildir").join(user);
        let mut all = files(&mailbox.join("new"));
        all.extend(files(&mailbox.join("cur")));
        all.iter().map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap_or_default()).into_owned()).collect()
    }

    /// Send one message; the replies to MAIL and each RCPT must be 250.
    fn send(&self, mail: &str, rcpts: &[&str], body: &str) -> String {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut writer = stream;
        let mut reply = || -> String {
            let mut all = String::new();
            for _ in 0..50 {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                all.push_str(&line);
                if line.as_bytes().get(3) != Some(&b'-') {
                    break;
                }
            }
            all
        };
        assert!(reply().starts_with("220"));
        let mut say = |line: &str, want: &str| {
            writer.write_all(format!("{line}\r\n").as_bytes()).expect("send");
            let got = reply();
            assert!(got.starts_with(want), "{line}: {got}");
            got
        };
        let ehlo = say("EHLO test", "250");
        assert!(ehlo.contains("250-DSN\r\n"), "{ehlo}");
        say(&format!("MAIL FROM:{mail}"), "250");
        for rcpt in rcpts {
            say(&format!("RCPT TO:{rcpt}"), "250");
        }
        say("DATA", "354");
        let done = say(&format!("{}\r\n.", body.replace('\n', "\r\n")), "250");
        say("QUIT", "221");
        done
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.down();
    }
}

/// Parse a report with Python's email module and describe its structure: the content types
/// of the parts, then `field: value` for each per-message and per-recipient field of the
/// delivery-status part. None (with a SKIP) without Python.
fn python_structure(report: &str) -> Option<String> {
    if common::skip_without_python(&["email"]) {
        return None;
    }
    let script = r#"
import email, sys
m = email.message_from_bytes(sys.stdin.buffer.read())
print("type", m.get_content_type(), m.get_param("report-type"))
for part in m.get_payload():
    print("part", part.get_content_type())
    if part.get_content_type() == "message/delivery-status":
        for block in part.get_payload():
            print("block")
            for k, v in block.items():
                print(k + ":", v)
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload()[0]
        print("returned-body", inner.get_payload().strip())
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().expect("stdin").write_all(report.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("python3");
    assert!(out.status.success());
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_failure_report_honours_notify_ret_orcpt_and_envid() {
    let q = Instance::start("dsn-failure");
    q.send(
        "<owner@localhost> RET=HDRS ENVID=QQ+2B1",
        &["<fail@localhost> NOTIFY=FAILURE ORCPT=rfc822;orig+40example.com", "<fail2@localhost> NOTIFY=NEVER"],
        "Subject: dsn one\n\nthe secret body\n",
    );
    assert!(wait_for(Duration::from_secs(60), || q.delivered("owner").len() == 1), "no report; log:\n{}", q.log());
    let report = &q.delivered("owner")[0];
    assert!(report.contains("Original-Envelope-Id: QQ+1\n"), "{report}");
    assert!(
        report.contains(
            "Original-Recipient: rfc822;orig@example.com\nFinal-Recipient: rfc822; fail@localhost\nAction: failed\n"
        ),
        "{report}"
    );
    assert!(!report.contains("fail2@localhost"), "NOTIFY=NEVER is left out:\n{report}");
    assert!(report.contains("Subject: dsn one"), "{report}");
    assert!(!report.contains("the secret body"), "RET=HDRS returns no body:\n{report}");
    if let Some(structure) = python_structure(report) {
        assert!(structure.starts_with("type multipart/report delivery-status\n"), "{structure}");
        assert!(structure.contains("part message/delivery-status\n"), "{structure}");
        assert!(structure.contains("part text/rfc822-headers\n"), "{structure}");
        assert!(structure.contains("Original-Envelope-Id: QQ+1\n"), "{structure}");
        assert!(structure.contains("Original-Recipient: rfc822;orig@example.com\n"), "{structure}");
        assert!(structure.contains("Status: 5.0.0\n") || structure.contains("Status: 5."), "{structure}");
        assert_eq!(structure.matches("Final-Recipient:").count(), 1, "{structure}");
    }
}

#[test]
fn ret_full_returns_the_message_and_never_sends_nothing() {
    let q = Instance::start("dsn-full");
    q.send("<owner@localhost> RET=FULL", &["<fail@localhost>"], "Subject: dsn two\n\nthe whole body\n");
    assert!(wait_for(Duration::from_secs(60), || q.delivered("owner").len() == 1), "no report; log:\n{}", q.log());
    let report = &q.delivered("owner")[0];
    assert!(report.contains("Content-Type: message/rfc822\n"), "{report}");
    assert!(report.contains("the whole body"), "{report}");
    if let Some(structure) = python_structure(report) {
        assert!(structure.contains("part message/rfc822\n"), "{structure}");
        assert!(structure.contains("returned-body the whole body\n"), "{structure}");
    }
    // Every recipient NOTIFY=NEVER: the failure ends the message with no report at all.
    q.send("<owner@localhost>", &["<fail@localhost> NOTIFY=NEVER"], "Subject: dsn three\n\nx\n");
    assert!(wait_for(Duration::from_secs(60), || q.log().matches("end msg").count() >= 3), "log:\n{}", q.log());
    assert_eq!(q.delivered("owner").len(), 1, "no second report; log:\n{}", q.log());
    assert_eq!(q.log().matches("bounce msg").count(), 1, "log:\n{}", q.log());
}

#[test]
fn notify_success_gives_a_delivery_notice_for_a_local_delivery() {
    let q = Instance::start("dsn-success");
    q.send(
        "<owner@localhost> ENVID=env2",
        &["<bob@localhost> NOTIFY=SUCCESS ORCPT=rfc822;bob@localhost", "<ann@localhost>"],
        "Subject: dsn four\n\nhello\n",
    );
    assert!(wait_for(Duration::from_secs(60), || q.delivered("owner").len() == 1), "no notice; log:\n{}", q.log());
    assert_eq!(q.delivered("bob").len(), 1);
    assert_eq!(q.delivered("ann").len(), 1);
    let notice = &q.delivered("owner")[0];
    assert!(notice.contains("Subject: delivery notice\n"), "{notice}");
    assert!(notice.contains("Final-Recipient: rfc822; bob@localhost\nAction: delivered\nStatus: 2.0.0\n"), "{notice}");
    assert!(!notice.contains("ann@localhost"), "no NOTIFY: no success notice:\n{notice}");
    if let Some(structure) = python_structure(notice) {
        assert!(structure.starts_with("type multipart/report delivery-status\n"), "{structure}");
        assert!(structure.contains("Original-Envelope-Id: env2\n"), "{structure}");
        assert!(structure.contains("Action: delivered\n"), "{structure}");
    }
}

#[test]
fn one_delay_warning_per_message_for_the_recipients_that_want_it() {
    let mut q = Instance::start_with("dsn-delay", &[("delaywarningtime", "1\n")]);
    // Message one: `later` has no NOTIFY (the server decides: warned), `later2` asked for
    // failures only. Message two: its one recipient asked for failures only: no warning.
    q.send(
        "<owner@localhost> ENVID=slow1",
        &["<later@localhost>", "<later2@localhost> NOTIFY=FAILURE"],
        "Subject: dsn five\n\nthe body\n",
    );
    q.send("<owner@localhost>", &["<later@localhost> NOTIFY=FAILURE"], "Subject: dsn six\n\nx\n");
    // Retried until the warning comes (a deferral after the message is a second old).
    let mut warned = false;
    for _ in 0..30 {
        if wait_for(Duration::from_secs(2), || !q.delivered("owner").is_empty()) {
            warned = true;
            break;
        }
        q.flush();
    }
    assert!(warned, "no delay warning; log:\n{}", q.log());
    let warning = q.delivered("owner")[0].clone();
    assert!(warning.contains("Subject: delay warning"), "{warning}");
    assert!(warning.contains("no action needed"), "{warning}");
    assert!(warning.contains("Subject: dsn five"), "{warning}");
    assert!(!warning.contains("the body"), "a warning carries the headers only:\n{warning}");
    assert!(warning.contains("Final-Recipient: rfc822; later@localhost\nAction: delayed\nStatus: 4."), "{warning}");
    assert!(warning.contains("Diagnostic-Code: x-quill; mailbox busy, try later"), "{warning}");
    assert!(!warning.contains("later2@localhost"), "NOTIFY=FAILURE is left out:\n{warning}");
    if let Some(structure) = python_structure(&warning) {
        assert!(structure.starts_with("type multipart/report delivery-status\n"), "{structure}");
        assert!(structure.contains("part text/rfc822-headers\n"), "{structure}");
        assert!(structure.contains("Original-Envelope-Id: slow1\n"), "{structure}");
        assert!(structure.contains("Action: delayed\n"), "{structure}");
        assert_eq!(structure.matches("Final-Recipient:").count(), 1, "{structure}");
    }

    // More retries, and a restart of the whole instance: still one warning.
    let deferrals = |q: &Instance| q.log().matches("deferral").count();
    for round in 0..2 {
        let before = deferrals(&q);
        q.flush();
        assert!(
            wait_for(Duration::from_secs(30), || deferrals(&q) >= before + 3),
            "round {round}: no retry; log:\n{}",
            q.log()
        );
        if round == 0 {
            q.down();
            q.up();
        }
    }
    assert_eq!(q.delivered("owner").len(), 1, "one warning only; log:\n{}", q.log());
    assert_eq!(q.log().matches("delay warning msg").count(), 1, "log:\n{}", q.log());
}
