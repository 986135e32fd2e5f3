//! LMTP delivery (issue 13, item 2; doc/quill-remote.8 "LMTP"): a Quill instance made by
//! quill-up delivers through control/lmtproutes to a private Dovecot (`dovecot -F -c CONF`,
//! its own base_dir, a passwd-file user database and a Maildir store in the test's
//! directory), over its unix socket and over TCP on loopback; the mail is read back with
//! `doveadm fetch` and from the Maildir. Dovecot stopped means a deferral and the message kept,
//! delivered once Dovecot is back. A scripted LMTP server checks the answers after the final
//! dot that Dovecot gives only in rare states (over quota, a lost connection). Every wait is
//! bounded; every Dovecot is stopped when its test ends, even by a panic (`common::Daemon`).

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use common::{bin, wait_for, Daemon, TempDir};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// A private Dovecot that speaks only LMTP: on `DIR/lmtp` and on 127.0.0.1:`port`.
struct Dovecot {
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    port: u16,
    daemon: Option<Daemon>,
}

impl Dovecot {
    /// Write the configuration under `dir` (not started yet). None after a SKIP line when
    /// Dovecot or its LMTP server is not installed.
    fn prepare(dir: &Path) -> Option<Dovecot> {
        if common::skip_without("/usr/sbin/dovecot")
            || common::skip_without("/usr/bin/doveadm")
            || common::skip_without("/usr/lib/dovecot/lmtp")
        {
            return None;
        }
        let dir = dir.join("dovecot");
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        // The mail is written as the mail user: nobody when the test runs as root (Dovecot
        // refuses uid 0 for mail), else the user running the test, who then also runs
        // Dovecot's internal processes.
        let (uid, gid) = if common::is_root() {
            (65534, 65534)
        } else {
            (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw())
        };
        let mail = dir.join("mail");
        std::fs::create_dir_all(&mail).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&mail, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let users = format!("alice:{{PLAIN}}unused:{uid}:{gid}::{}/alice::\n", mail.display());
        std::fs::write(dir.join("passwd"), users).unwrap();
        let port = free_port();
        let socket = dir.join("lmtp");
        let internal = if common::is_root() {
            String::new()
        } else {
            // Dovecot's internal processes run as this user too, and anvil without its chroot
            // (only root may chroot).
            let name = nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name);
            let group = nix::unistd::Group::from_gid(nix::unistd::getgid()).ok().flatten().map(|g| g.name);
            let (Some(name), Some(group)) = (name, group) else {
                common::skip("Dovecot needs a user and group name for this uid and gid");
                return None;
            };
            format!(
                "default_internal_user = {name}\ndefault_login_user = {name}\ndefault_internal_group = {group}\n\
                 service anvil {{\n  chroot =\n}}\n"
            )
        };
        let d = dir.display();
        let config = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\nprotocols = lmtp\n\
             ssl = no\nfirst_valid_uid = 1\nauth_username_format = %Ln\n{internal}\
             mail_location = maildir:{d}/mail/%n/Maildir\n\
             passdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
             service lmtp {{\n  unix_listener {d}/lmtp {{\n    mode = 0666\n  }}\n\
             \x20 inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n"
        );
        let config_path = dir.join("dovecot.conf");
        std::fs::write(&config_path, config).unwrap();
        Some(Dovecot { dir, config: config_path, socket, port, daemon: None })
    }

    /// Start it in the foreground and wait until both listeners answer. False after a SKIP
    /// line when it does not come up (not root, and this Dovecot will not run as this user).
    fn start(&mut self) -> bool {
        assert!(self.daemon.is_none(), "already running");
        let out = std::fs::File::options().create(true).append(true).open(self.dir.join("out.log")).unwrap();
        let child = Command::new("/usr/sbin/dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.daemon = Some(Daemon(child));
        let up = wait_for(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        if !up {
            let why = format!("{}{}", read(&self.dir.join("out.log")), read(&self.dir.join("dovecot.log")));
            self.stop();
            assert!(!common::is_root(), "Dovecot did not come up as root:\n{why}");
            common::skip(&format!("Dovecot does not run as this user: {}", why.trim().replace('\n', " / ")));
        }
        up
    }

    /// Stop it and wait until it is gone (its socket no longer answers).
    fn stop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// The messages in alice's Maildir.
    fn maildir(&self) -> Vec<String> {
        let root = self.dir.join("mail/alice/Maildir");
        let mut found: Vec<String> =
            ["new", "cur"].iter().flat_map(|d| common::files(&root.join(d))).map(|f| read(&f)).collect();
        found.sort();
        found
    }

    /// alice's INBOX as `doveadm fetch` shows it (the mailbox read back through Dovecot).
    fn fetch(&self) -> String {
        let out = Command::new("/usr/bin/doveadm")
            .arg("-c")
            .arg(&self.config)
            .args(["fetch", "-u", "alice", "hdr", "mailbox", "INBOX"])
            .output()
            .unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    fn log(&self) -> String {
        read(&self.dir.join("dovecot.log"))
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Quill instance run by quill-up (no SMTP listener: mail comes in through sendmail), with
/// the given control/lmtproutes.
struct Quill {
    home: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Quill {
    fn start(dir: &Path, lmtproutes: &str) -> Quill {
        let home = dir.join("q");
        std::fs::create_dir_all(home.join("control")).unwrap();
        std::fs::write(home.join("control/lmtproutes"), lmtproutes).unwrap();
        let log = dir.join("quill.log");
        let out = std::fs::File::options().create(true).append(true).open(&log).unwrap();
        let mut command = Command::new(bin("quill-up"));
        command.arg("-d").arg(&home).env_remove("QUILL_HOME");
        command.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
        quill::base::sys::die_with_parent(&mut command);
        let mut quill = Quill { home, log, child: Some(command.spawn().unwrap()) };
        let up = wait_for(Duration::from_secs(30), || common::instance_pids(&quill.home, "quill-send").len() == 1);
        if !up {
            quill.stop();
        }
        assert!(up, "quill-send did not start; log:\n{}", quill.log());
        quill
    }

    fn log(&self) -> String {
        read(&self.log)
    }

    fn sendmail(&self, args: &[&str], message: &str) {
        let out = common::run(&self.home, "sendmail", args, message.as_bytes());
        assert!(out.status.success(), "sendmail {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Messages waiting in the queue.
    fn queued(&self) -> usize {
        common::files(&self.home.join("queue/mess")).len()
    }

    /// The local mailbox of `user` at localhost (where bounces to user@localhost land).
    fn mailbox(&self, user: &str) -> Vec<String> {
        common::files(&self.home.join("maildir").join(user).join("new")).iter().map(|f| read(f)).collect()
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            drop(Daemon(child));
        }
    }
}

impl Drop for Quill {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two recipients at the socket's domain in one message, one Dovecot knows and one it does
/// not: one LMTP transaction, alice's copy in her Maildir (and in `doveadm fetch`), the other
/// bounced with Dovecot's words. Then a message over TCP.
#[test]
fn delivers_to_dovecot_over_a_unix_socket_and_over_tcp() {
    let dir = TempDir::new("lmtp");
    let Some(mut dovecot) = Dovecot::prepare(dir.path()) else { return };
    if !dovecot.start() {
        return;
    }
    let routes = format!("sock.test:{}\ntcp.test:[127.0.0.1]:{}\n", dovecot.socket.display(), dovecot.port);
    let quill = Quill::start(dir.path(), &routes);

    quill.sendmail(
        &["-i", "-f", "bob@localhost", "alice@sock.test", "nobody@sock.test"],
        "From: bob@localhost\nSubject: over the socket, grüße\n\nhello alice\n",
    );
    let done = wait_for(LIMIT, || {
        let log = quill.log();
        log.contains("success: lmtp:") && log.contains("failure: lmtp:")
    });
    assert!(done, "quill log:\n{}\ndovecot log:\n{}", quill.log(), dovecot.log());
    let log = quill.log();
    assert!(log.contains("delivered the message"), "{log}");
    assert!(log.contains("User doesn't exist: nobody@sock.test"), "{log}");
    // Both recipients went in one transaction: Dovecot saw one session on its socket that
    // ended with QUIT (the readiness probes hang up at the greeting).
    assert_eq!(dovecot.log().matches("Disconnect from local: Logged out").count(), 1, "{}", dovecot.log());
    let mail = dovecot.maildir();
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert!(mail[0].contains("Subject: over the socket") && mail[0].contains("hello alice"), "{}", mail[0]);
    assert!(mail[0].contains("Delivered-To: alice@sock.test"), "{}", mail[0]);
    // A UTF-8 header needs no SMTPUTF8 for LMTP, which Dovecot does not announce.
    assert!(mail[0].contains("grüße"), "{}", mail[0]);
    let fetched = dovecot.fetch();
    assert!(fetched.contains("Subject: over the socket"), "doveadm fetch:\n{fetched}");
    // The unknown recipient is bounced to the sender, with Dovecot's answer.
    assert!(wait_for(LIMIT, || !quill.mailbox("bob").is_empty()), "no bounce; log:\n{}", quill.log());
    let bounce = quill.mailbox("bob").concat();
    assert!(bounce.contains("nobody@sock.test") && bounce.contains("550 5.1.1"), "{bounce}");
    assert!(!bounce.contains("Final-Recipient: rfc822;alice@sock.test"), "{bounce}");

    quill.sendmail(&["-i", "-f", "bob@localhost", "alice@tcp.test"], "Subject: over tcp\n\nhello again\n");
    let done = wait_for(LIMIT, || quill.log().contains("success: [127.0.0.1] delivered the message"));
    assert!(done, "quill log:\n{}\ndovecot log:\n{}", quill.log(), dovecot.log());
    assert!(wait_for(LIMIT, || dovecot.maildir().len() == 2), "{:?}", dovecot.maildir());
    assert!(dovecot.maildir().iter().any(|m| m.contains("Subject: over tcp")));
    assert!(dovecot.fetch().contains("Subject: over tcp"));
    assert!(wait_for(LIMIT, || quill.queued() == 0), "the queue is not empty; log:\n{}", quill.log());
}

/// Dovecot down: the message is deferred and stays queued; Dovecot back and the queue
/// flushed: it is delivered.
#[test]
fn dovecot_down_defers_and_the_mail_waits() {
    let dir = TempDir::new("lmtp-down");
    let Some(mut dovecot) = Dovecot::prepare(dir.path()) else { return };
    // Started once, to know it runs here at all, then stopped.
    if !dovecot.start() {
        return;
    }
    dovecot.stop();
    let quill = Quill::start(dir.path(), &format!("sock.test:{}\n", dovecot.socket.display()));
    quill.sendmail(&["-i", "-f", "bob@localhost", "alice@sock.test"], "Subject: waited\n\nstill here\n");
    let deferred = wait_for(LIMIT, || quill.log().contains("deferral: Unreachable:"));
    assert!(deferred, "quill log:\n{}", quill.log());
    assert!(quill.log().contains("unable to connect to lmtp:"), "{}", quill.log());
    assert_eq!(quill.queued(), 1, "the message is kept; log:\n{}", quill.log());
    assert!(quill.mailbox("bob").is_empty(), "no bounce for a deferral");

    assert!(dovecot.start());
    // Bounded: one flush normally does it; a flush that came while a retry was being
    // scheduled is repeated.
    let start = Instant::now();
    let mut delivered = false;
    while !delivered && start.elapsed() < LIMIT {
        let out = common::run(&quill.home, "quill", &["queue", "flush"], b"");
        assert!(out.status.success(), "quill queue flush: {}", String::from_utf8_lossy(&out.stderr));
        delivered = wait_for(Duration::from_secs(10), || quill.log().contains("success: lmtp:"));
    }
    assert!(delivered, "quill log:\n{}\ndovecot log:\n{}", quill.log(), dovecot.log());
    assert!(wait_for(LIMIT, || dovecot.maildir().len() == 1), "{:?}", dovecot.maildir());
    assert!(dovecot.maildir()[0].contains("still here"));
    assert!(wait_for(LIMIT, || quill.queued() == 0), "the queue is not empty; log:\n{}", quill.log());
}

/// A scripted LMTP session on one connection: answers RCPT with 250 for each recipient, then
/// after the final dot gives `after_dot` (one line per recipient, in order; fewer lines and
/// then a hang-up is a connection lost midway). Returns the commands the client sent.
fn converse(mut reader: impl BufRead, mut writer: impl Write, after_dot: &[&str]) -> Vec<String> {
    let mut seen = Vec::new();
    let mut say = |text: &str| {
        let _ = writer.write_all(format!("{text}\r\n").as_bytes());
    };
    say("220 lmtp.test LMTP ready");
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let command = line.trim_end().to_string();
        seen.push(command.clone());
        let verb = command.split([' ', ':']).next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "LHLO" => say("250-lmtp.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES"),
            "MAIL" | "RCPT" => say("250 2.1.0 ok"),
            "DATA" => {
                say("354 go ahead");
                for _ in 0..10_000 {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim_end() == "." {
                        break;
                    }
                }
                for answer in after_dot {
                    say(answer);
                }
                if after_dot.len() < 3 {
                    break;
                }
            }
            "QUIT" => {
                say("221 2.0.0 bye");
                break;
            }
            _ => say("500 5.5.1 what"),
        }
    }
    seen
}

/// [`converse`] on the first connection to a port on loopback: the port, and what was sent.
fn scripted(after_dot: &'static [&'static str]) -> (u16, std::sync::mpsc::Receiver<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tell, told) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else { return };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let reader = BufReader::new(stream.try_clone().unwrap());
        let _ = tell.send(converse(reader, stream, after_dot));
    });
    (port, told)
}

/// quill-remote's report for a message to a, b and c at lmtp.test along the lmtproutes
/// `route`, and its standard error.
fn remote(route: &str) -> (Vec<String>, String) {
    let home = common::home("lmtp-remote", &[("me", "quill.test\n"), ("lmtproutes", &format!("lmtp.test:{route}\n"))]);
    let out = common::run(
        home.path(),
        "quill-remote",
        &["lmtp.test", "sender@quill.test", "a@lmtp.test", "b@lmtp.test", "c@lmtp.test"],
        b"Subject: three\n\nbody\n",
    );
    let report =
        String::from_utf8_lossy(&out.stdout).split('\0').filter(|t| !t.is_empty()).map(str::to_string).collect();
    (report, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn report(port: u16) -> Vec<String> {
    remote(&format!("[127.0.0.1]:{port}")).0
}

/// A confined quill-remote (Landlock and seccomp, doc/SECURITY.md) reaches an LMTP server's
/// unix socket: no right was added for it.
#[test]
fn a_confined_quill_remote_reaches_a_unix_socket() {
    let dir = TempDir::new("lmtp-unix");
    let path = dir.path().join("lmtp");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().ok()?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let reader = BufReader::new(stream.try_clone().ok()?);
        Some(converse(reader, stream, &["250 2.0.0 a saved", "250 2.0.0 b saved", "250 2.0.0 c saved"]))
    });
    let (report, err) = remote(&path.display().to_string());
    assert_eq!(report.len(), 4, "{report:?} {err}");
    assert!(report[..3].iter().all(|r| r.starts_with('r')), "{report:?}");
    assert!(report[3].starts_with('K') && report[3].contains("to 3 of 3 recipients"), "{report:?}");
    let seen = server.join().unwrap().unwrap();
    assert!(seen[0].starts_with("LHLO quill.test"), "{seen:?}");
    if err.contains("confined only in part") || err.contains("not confined") {
        common::skip(&format!("quill-remote was not wholly confined here: {}", err.trim()));
    }
}

/// One answer per recipient after the final dot, each that recipient's result.
#[test]
fn each_recipient_gets_its_own_answer_after_the_message() {
    let (port, told) = scripted(&[
        "250 2.0.0 <a@lmtp.test> saved",
        "452 4.2.2 <b@lmtp.test> over quota",
        "552 5.2.2 <c@lmtp.test> mailbox full for good",
    ]);
    let report = report(port);
    assert_eq!(report.len(), 4, "{report:?}");
    assert!(report[0].starts_with('r') && report[0].contains("250 2.0.0 <a@lmtp.test> saved"), "{report:?}");
    assert!(report[1].starts_with('s') && report[1].contains("452 4.2.2"), "{report:?}");
    assert!(report[2].starts_with('h') && report[2].contains("552 5.2.2"), "{report:?}");
    assert!(report[3].starts_with('K') && report[3].contains("to 1 of 3 recipients"), "{report:?}");
    let seen = told.recv_timeout(LIMIT).unwrap();
    assert!(seen[0].starts_with("LHLO "), "{seen:?}");
    assert_eq!(seen.iter().filter(|c| c.starts_with("RCPT TO:")).count(), 3, "one transaction: {seen:?}");
    assert!(!seen.iter().any(|c| c.starts_with("EHLO") || c.starts_with("STARTTLS")), "{seen:?}");
}

/// The connection lost after the first answer: the first recipient is delivered, the others
/// are deferred (delivered or not is unknown), none bounced.
#[test]
fn a_connection_lost_after_the_message_defers_the_unanswered() {
    let (port, _told) = scripted(&["250 2.0.0 <a@lmtp.test> saved"]);
    let report = report(port);
    assert_eq!(report.len(), 4, "{report:?}");
    assert!(report[0].starts_with('r'), "{report:?}");
    assert!(report[1].starts_with('s') && report[1].contains("died after the end of the message"), "{report:?}");
    assert!(report[2].starts_with('s'), "{report:?}");
    assert!(report[3].starts_with('K'), "{report:?}");
}
