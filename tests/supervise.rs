//! The service directories of conf-examples/ under the real supervisors: daemontools
//! (svscan + supervise + svc), runit (runsv + sv) and s6 (s6-svscan + s6-supervise +
//! s6-svc). Each test copies the directories, points them at the built programs and a free
//! loopback port, starts the supervisor, checks that every stage runs under its own uid,
//! delivers a message submitted by a normal user with sendmail, restarts the queue system with
//! the supervisor's own command, reads the log with `quill stats`, and stops everything.
//!
//! Root only (users, setuid quill-queue, port binding as root): otherwise SKIP lines.
//!
//! The home is the compiled-in one (/var/quill), not a temporary directory: quill-queue is
//! setuid and so ignores QUILL_HOME (DESIGN §2); mail a normal user submits can only reach the
//! compiled-in home. The tests use it only when it does not exist or was made by them (a
//! marker file); a real installation there makes them SKIP. They run one at a time.

mod common;

use common::{bin, is_root, wait_for, TempDir};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// One test at a time: they share the home, the users and the stages' names.
static SERIAL: Mutex<()> = Mutex::new(());

/// Left in the home by these tests; without it the home belongs to someone else.
const MARKER: &str = ".made-by-quill-tests";

/// The user that submits mail and receives it.
const TEST_USER: &str = "quillsvtest";

/// Bounds on every wait.
const START_WAIT: Duration = Duration::from_secs(30);
const DELIVERY_WAIT: Duration = Duration::from_secs(60);
const STOP_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Daemontools,
    Runit,
    S6,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Daemontools => "daemontools",
            Kind::Runit => "runit",
            Kind::S6 => "s6",
        }
    }
    fn tools(self) -> &'static [&'static str] {
        match self {
            Kind::Daemontools => &["svscan", "supervise", "svc", "svok", "multilog", "setuidgid"],
            Kind::Runit => &["runsv", "sv", "svlogd", "chpst"],
            Kind::S6 => &["s6-svscan", "s6-supervise", "s6-svc", "s6-svscanctl", "s6-log", "s6-setuidgid"],
        }
    }
}

fn home() -> PathBuf {
    PathBuf::from(quill::mail::control::DEFAULT_HOME)
}

fn bindir() -> PathBuf {
    bin("quill").parent().expect("bin dir").to_path_buf()
}

fn built(program: &str) -> bool {
    bin(program).is_file()
}

fn uid_of(name: &str) -> u32 {
    quill::admin::user_ids(name).unwrap_or_else(|| panic!("user {name} missing after quill setup")).0
}

/// The quill-start of our home and its direct children (the stages), by name.
fn stages() -> Option<(quill::admin::status::Process, Vec<quill::admin::status::Process>)> {
    let all = quill::admin::status::processes(Some(&home()));
    let start = all.iter().find(|p| p.name == "quill-start")?.clone();
    let children = all.into_iter().filter(|p| p.ppid == start.pid).collect();
    Some((start, children))
}

/// True when quill-start and its stages all run, each under its own uid. With `not_start`,
/// only a quill-start other than that pid counts (after a restart).
fn stages_ok(not_start: Option<u32>) -> Result<u32, String> {
    let (start, children) = stages().ok_or("quill-start is not running")?;
    if Some(start.pid) == not_start {
        return Err("quill-start has not been restarted".into());
    }
    if start.uid != 0 {
        return Err(format!("quill-start runs as uid {}", start.uid));
    }
    let mut want = vec![("quill-send", uid_of("quills")), ("quill-lspawn", 0), ("quill-clean", uid_of("quillq"))];
    if built("quill-rspawn") {
        want.push(("quill-rspawn", uid_of("quillr")));
    }
    for (name, uid) in want {
        let found: Vec<_> = children.iter().filter(|p| p.name == name).collect();
        match found.as_slice() {
            [p] if p.uid == uid && p.euid == uid => {}
            [p] => return Err(format!("{name} runs as uid {}/{}, not {uid}", p.uid, p.euid)),
            [] => return Err(format!("{name} is not running")),
            _ => return Err(format!("{name} runs {} times", found.len())),
        }
    }
    Ok(start.pid)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create service dir");
    for entry in std::fs::read_dir(from).expect("read conf-examples") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy service file");
        }
    }
}

/// Replace `from` by `to` in a run script; the replacement must happen (a changed script is
/// a changed test).
fn rewrite(path: &Path, pairs: &[(&str, &str)]) {
    let mut text = std::fs::read_to_string(path).expect("read run script");
    for (from, to) in pairs {
        assert!(text.contains(from), "{} no longer contains {from:?}", path.display());
        text = text.replace(from, to);
    }
    std::fs::write(path, text).expect("write run script");
}

/// A port nobody listens on, and never one handed out before in this run: a port picked by
/// binding port 0 is free again at once, so two picks could give the same port to two services
/// (the port-25 service would then share its port with submission, which wants AUTH).
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no new free port in 100 tries");
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// The user that submits and receives, with a Maildir in its home.
fn test_user() -> (u32, u32, PathBuf) {
    if quill::admin::user_ids(TEST_USER).is_none() {
        let home = format!("/home/{TEST_USER}");
        let out = run("useradd", &["--create-home", "--home-dir", &home, "--shell", "/usr/sbin/nologin", TEST_USER]);
        assert!(out.status.success(), "useradd {TEST_USER}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (uid, gid) = quill::admin::user_ids(TEST_USER).expect("test user");
    let home = quill::admin::user_home(TEST_USER).expect("test user's home");
    for sub in ["", "Maildir", "Maildir/tmp", "Maildir/new", "Maildir/cur"] {
        let dir = home.join(sub);
        std::fs::create_dir_all(&dir).expect("create Maildir");
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown Maildir");
    }
    (uid, gid, home)
}

/// A running supervisor and what it was started on.
struct World {
    kind: Kind,
    scan: TempDir,
    supervisors: Vec<Child>,
    smtp_port: Option<u16>,
    /// Ports of the submission (587, AUTH required) and smtps (465, implicit TLS) services.
    auth_ports: Option<(u16, u16)>,
    stopped: bool,
    /// Dropped after everything above: the stages are gone before quill-queue changes back.
    _restore: common::RestoreQueueProgram,
}

impl World {
    fn services(&self) -> Vec<PathBuf> {
        let mut list = vec![self.scan.path().join("quill")];
        if self.smtp_port.is_some() {
            list.push(self.scan.path().join("quill-smtpd"));
        }
        if self.auth_ports.is_some() {
            list.push(self.scan.path().join("quill-submission"));
            list.push(self.scan.path().join("quill-smtps"));
        }
        list
    }

    fn start(&mut self) {
        let scan = self.scan.path().to_path_buf();
        let jobs: Vec<(&str, PathBuf)> = match self.kind {
            Kind::Daemontools => vec![("svscan", scan.clone())],
            Kind::S6 => vec![("s6-svscan", scan.clone())],
            Kind::Runit => self.services().into_iter().map(|s| ("runsv", s)).collect(),
        };
        for (program, arg) in jobs {
            let mut command = Command::new(program);
            command.arg(arg).current_dir(&scan).stdin(Stdio::null()).stdout(Stdio::null());
            quill::base::sys::new_session(&mut command);
            self.supervisors.push(command.spawn().unwrap_or_else(|e| panic!("start {program}: {e}")));
        }
    }

    fn restart_queue(&self) {
        let service = self.scan.path().join("quill");
        let service = service.to_str().expect("path");
        let out = match self.kind {
            Kind::Daemontools => run("svc", &["-t", service]),
            Kind::Runit => run("sv", &["-w", "60", "restart", service]),
            Kind::S6 => run("s6-svc", &["-r", service]),
        };
        assert!(out.status.success(), "restart: {}", String::from_utf8_lossy(&out.stdout));
    }

    /// Stop with the supervisor's own commands; true when every supervisor exited in time.
    fn stop(&mut self) -> bool {
        let mut dirs = Vec::new();
        for service in self.services() {
            dirs.push(service.to_string_lossy().into_owned());
            dirs.push(service.join("log").to_string_lossy().into_owned());
        }
        let dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
        match self.kind {
            Kind::Daemontools => {
                // svscan would start a supervise that exits again: stop the scanner first.
                for child in self.supervisors.iter_mut() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(child.id() as i32),
                        nix::sys::signal::SIGTERM,
                    );
                    let _ = child.wait();
                }
                let mut args = vec!["-dx"];
                args.extend(&dirs);
                run("svc", &args);
                let ok = wait_for(STOP_WAIT, || dirs.iter().all(|d| !run("svok", &[d]).status.success()));
                self.stopped = ok;
                return ok;
            }
            Kind::Runit => {
                for service in self.services() {
                    let service = service.to_string_lossy().into_owned();
                    run("sv", &["-w", "60", "down", &service]);
                    run("sv", &["exit", &service]);
                }
            }
            Kind::S6 => {
                run("s6-svscanctl", &["-t", self.scan.path().to_str().expect("path")]);
            }
        }
        let ok = wait_for(STOP_WAIT, || self.supervisors.iter_mut().all(|c| matches!(c.try_wait(), Ok(Some(_)))));
        self.stopped = ok;
        ok
    }
}

impl Drop for World {
    /// After a failed test: end what the supervisors started, by pid, so that the next test
    /// (and the next run) find a quiet machine.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        use nix::sys::signal::{kill, SIGKILL, SIGTERM};
        use nix::unistd::Pid;
        for child in self.supervisors.iter_mut() {
            let _ = kill(Pid::from_raw(child.id() as i32), SIGTERM);
        }
        let scan = self.scan.path().to_string_lossy().into_owned();
        for signal in [SIGTERM, SIGKILL] {
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
                if cwd.starts_with(&scan) || String::from_utf8_lossy(&cmdline).contains(&scan) {
                    let _ = kill(Pid::from_raw(pid), signal);
                }
            }
            for p in quill::admin::status::processes(Some(&home())) {
                let _ = kill(Pid::from_raw(p.pid as i32), signal);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        for child in self.supervisors.iter_mut() {
            let _ = child.try_wait();
        }
    }
}

/// Everything up to a running supervisor, or None after a SKIP line.
fn prepare(kind: Kind) -> Option<World> {
    let label = kind.dir();
    if !is_root() {
        common::skip(&format!("{label}: the supervisor tests need root"));
        return None;
    }
    if kind.tools().iter().any(|t| common::skip_without(t)) {
        common::skip(&format!("{label}: supervisor not installed"));
        return None;
    }
    for program in ["quill", "quill-start", "quill-send", "quill-lspawn", "quill-clean"] {
        if !built(program) {
            common::skip(&format!("{label}: {program} is not built in this tree"));
            return None;
        }
    }
    let home = home();
    if home.exists() && !home.join(MARKER).exists() {
        common::skip(&format!("{label}: {} is a real installation (no {MARKER})", home.display()));
        return None;
    }
    std::fs::create_dir_all(&home).expect("create home");
    std::fs::write(home.join(MARKER), "made by tests/supervise.rs; safe to remove\n").expect("marker");
    // Mail left over from an earlier, failed run would be delivered again: start empty.
    let layout = quill::mail::queuefile::Layout::new(&home);
    for dir in [layout.tmp(), layout.todo(), layout.mess(), layout.hold(), layout.info()] {
        for file in common::files(&dir) {
            let _ = std::fs::remove_file(file);
        }
    }
    let restore = common::RestoreQueueProgram::new();
    let out = Command::new(bin("quill")).args(["setup", "--home"]).arg(&home).output().expect("run quill setup");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if built("quill-queue") {
        assert!(out.status.success(), "quill setup failed:\n{text}");
        let check = Command::new(bin("quill")).args(["check", "--home"]).arg(&home).output().expect("run quill check");
        assert!(check.status.success(), "quill check after setup:\n{}", String::from_utf8_lossy(&check.stdout));
    }

    let scan = TempDir::new(&format!("supervise-{label}"));
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf-examples").join(label);
    let bindir = bindir();
    let path_from = "PATH=\"/usr/local/bin:/usr/bin:/bin\"";
    let path_to = format!("PATH=\"{}:/usr/bin:/bin\"", bindir.display());
    let home_text = home.display().to_string();
    copy_tree(&examples.join("quill"), &scan.path().join("quill"));
    rewrite(&scan.path().join("quill/run"), &[(path_from, &path_to), ("/var/quill", &home_text)]);
    let smtp_port = if built("quill-smtpd") && built("quill-tcpserver") {
        let port = free_port();
        copy_tree(&examples.join("quill-smtpd"), &scan.path().join("quill-smtpd"));
        rewrite(
            &scan.path().join("quill-smtpd/run"),
            &[(path_from, &path_to), ("/var/quill", &home_text), ("any 25 ", &format!("127.0.0.1 {port} "))],
        );
        Some(port)
    } else {
        common::skip(&format!("{label}: quill-smtpd is not built in this tree; only the queue service is tested"));
        None
    };
    // Submission and smtps, with a checkpassword stand-in (Debian packages none): it accepts
    // tester/secret and runs the rest of its command line, as the interface says.
    let auth_ports = if smtp_port.is_some() && !common::skip_without_python(&["smtplib", "ssl"]) {
        let checker = scan.path().join("checkpassword");
        common::write_script(
            &checker,
            "#!/bin/sh\n# checkpassword interface: user NUL password NUL timestamp NUL on fd 3\n\
             creds=$(tr '\\000' '\\n' <&3 | head -2 | tr '\\n' ' ')\n\
             [ \"$creds\" = \"tester secret \" ] || exit 1\nexec \"$@\"\n",
        );
        let (submission, smtps) = (free_port(), free_port());
        for (service, port, listen) in
            [("quill-submission", submission, "any 587 "), ("quill-smtps", smtps, "any 465 ")]
        {
            copy_tree(&examples.join(service), &scan.path().join(service));
            rewrite(
                &scan.path().join(service).join("run"),
                &[
                    (path_from, &path_to),
                    ("/var/quill", &home_text),
                    (listen, &format!("127.0.0.1 {port} ")),
                    ("/usr/local/bin/checkpassword", &checker.display().to_string()),
                ],
            );
        }
        Some((submission, smtps))
    } else {
        None
    };
    let mut world =
        World { kind, scan, supervisors: Vec::new(), smtp_port, auth_ports, stopped: false, _restore: restore };
    world.start();
    Some(world)
}

/// Connect to the SMTP service, check the uid of the quill-smtpd serving us, send one message
/// to the test user; returns the token in its subject.
fn smtp_check(port: u16) -> Result<String, String> {
    let connected = wait_for(START_WAIT, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    if !connected {
        return Err(format!("nothing listens on 127.0.0.1:{port}"));
    }
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).map_err(|e| format!("read greeting: {e}"))?;
    if !greeting.starts_with("220") {
        return Err(format!("greeting {greeting:?}"));
    }
    let all = quill::admin::status::processes(Some(&home()));
    // Several listeners run (ports 25, 587, 465): ours is the one with a child, since ours is
    // the only connection open.
    let servers: Vec<u32> = all.iter().filter(|p| p.name == "quill-tcpserver").map(|p| p.pid).collect();
    if servers.is_empty() {
        return Err("quill-tcpserver is not running".into());
    }
    let quilld = uid_of("quilld");
    let children: Vec<_> = all.iter().filter(|p| servers.contains(&p.ppid)).collect();
    if children.is_empty() {
        return Err("quill-tcpserver has no child for our connection".into());
    }
    for child in children {
        if child.uid != quilld || child.euid != quilld {
            return Err(format!("{} (pid {}) runs as uid {}, not quilld", child.name, child.pid, child.uid));
        }
    }
    let mut writer = stream;
    // One message for the test user, without pipelining: each command and its reply.
    let token = format!("smtp-{}-{}", std::process::id(), quill::base::date::now_micros().1);
    let data = format!("Subject: {token}\r\n\r\nThrough the SMTP service.\r\n.\r\n");
    let rcpt = format!("RCPT TO:<{TEST_USER}@localhost>\r\n");
    let dialogue: [(&str, &str); 6] = [
        ("EHLO test.example\r\n", "250 "),
        ("MAIL FROM:<someone@test.example>\r\n", "250"),
        (&rcpt, "250"),
        ("DATA\r\n", "354"),
        (&data, "250"),
        ("QUIT\r\n", "221"),
    ];
    for (command, want) in dialogue {
        writer.write_all(command.as_bytes()).map_err(|e| e.to_string())?;
        // Multi-line replies ("250-…") end at the line whose code is followed by a space.
        let mut reply = String::new();
        for _ in 0..50 {
            reply.clear();
            reader.read_line(&mut reply).map_err(|e| format!("read reply to {command:?}: {e}"))?;
            if reply.len() < 4 || reply.as_bytes()[3] != b'-' {
                break;
            }
        }
        if !reply.starts_with(want.trim_end()) {
            return Err(format!("{command:?} answered {reply:?}"));
        }
    }
    Ok(token)
}

/// Wait until a message holding `token` is in the test user's Maildir.
fn delivered(token: &str) -> bool {
    let (_, _, user_home) = test_user();
    let new = user_home.join("Maildir/new");
    wait_for(DELIVERY_WAIT, || {
        common::files(&new).iter().any(|f| std::fs::read_to_string(f).map(|t| t.contains(token)).unwrap_or(false))
    })
}

/// Submit one message with sendmail as the test user; wait for it in the user's Maildir.
fn deliver(label: &str) -> Result<bool, String> {
    for program in ["quill-queue", "sendmail", "quill-local"] {
        if !built(program) {
            common::skip(&format!("{label}: {program} is not built in this tree; no delivery test"));
            return Ok(false);
        }
    }
    let (uid, gid, user_home) = test_user();
    let token = format!("supervise-{label}-{}-{}", std::process::id(), quill::base::date::now_micros().1);
    let mut child = Command::new(bin("sendmail"))
        .arg(format!("{TEST_USER}@localhost"))
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("QUILL_HOME", home())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run sendmail: {e}"))?;
    let message = format!("Subject: {token}\n\nA message through the {label} services.\n");
    child.stdin.take().ok_or("stdin")?.write_all(message.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("sendmail as {TEST_USER} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    if delivered(&token) {
        Ok(true)
    } else {
        Err(format!("the message {token} did not reach {}", user_home.join("Maildir/new").display()))
    }
}

/// The log the supervisor's logger wrote, read with `quill stats`.
fn stats_of_log(world: &World, delivered: bool) -> Result<(), String> {
    let current = world.scan.path().join("quill/log/main/current");
    if !delivered {
        return Ok(());
    }
    let has_delivery = || {
        std::fs::read_to_string(&current).map(|t| t.contains("delivery 1: success")).unwrap_or(false)
            || std::fs::read_to_string(&current).map(|t| t.contains(": success:")).unwrap_or(false)
    };
    if !wait_for(START_WAIT, has_delivery) {
        return Err(format!("no successful delivery in {}", current.display()));
    }
    let out = Command::new(bin("quill")).arg("stats").arg(&current).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("(no time)") || text.contains(" 0 delivered") {
        return Err(format!("quill stats on {}:\n{text}", current.display()));
    }
    Ok(())
}

fn supervised(kind: Kind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut world) = prepare(kind) else {
        return;
    };
    let label = kind.dir();

    let mut last = String::new();
    let up = wait_for(START_WAIT, || match stages_ok(None) {
        Ok(_) => true,
        Err(e) => {
            last = e;
            false
        }
    });
    assert!(up, "{label}: the queue system did not come up: {last}");

    // With every stage up, quill check finds nothing wrong with them (and no "not running").
    let check = Command::new(bin("quill")).args(["check", "--home"]).arg(home()).output().expect("quill check");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && !report.contains("not running"), "{label}: quill check:\n{report}");
    let status = Command::new(bin("quill")).args(["status", "--home"]).arg(home()).output().expect("quill status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("quill-send") && status.contains("user quills"), "{label}: quill status:\n{status}");

    if let Some(port) = world.smtp_port {
        test_user();
        let token = smtp_check(port).unwrap_or_else(|e| panic!("{label}: SMTP service: {e}"));
        assert!(delivered(&token), "{label}: the message sent by SMTP ({token}) was not delivered");
    }

    if let Some((submission, smtps)) = world.auth_ports {
        test_user();
        auth_services(label, submission, smtps);
    }

    let delivered = deliver(label).unwrap_or_else(|e| panic!("{label}: {e}"));

    let before = stages_ok(None).unwrap_or_else(|e| panic!("{label}: before restart: {e}"));
    world.restart_queue();
    let mut last = String::new();
    let back = wait_for(START_WAIT + STOP_WAIT, || match stages_ok(Some(before)) {
        Ok(_) => true,
        Err(e) => {
            last = e;
            false
        }
    });
    assert!(back, "{label}: the queue system did not come back after a restart: {last}");
    if delivered {
        deliver(label).unwrap_or_else(|e| panic!("{label}: after the restart: {e}"));
    }

    stats_of_log(&world, delivered).unwrap_or_else(|e| panic!("{label}: {e}"));

    assert!(world.stop(), "{label}: the supervisor did not stop in time");
    let quiet = wait_for(STOP_WAIT, || quill::admin::status::processes(Some(&home())).is_empty());
    let left = quill::admin::status::processes(Some(&home()));
    if !quiet {
        world.stopped = false;
    }
    assert!(quiet, "{label}: still running after the stop: {left:?}");
}

#[test]
fn daemontools() {
    supervised(Kind::Daemontools);
}

#[test]
fn runit() {
    supervised(Kind::Runit);
}

#[test]
fn s6() {
    supervised(Kind::S6);
}

/// Port 587: MAIL without AUTH is refused, STARTTLS then AUTH then mail is delivered; a wrong
/// password is refused. Port 465: TLS from the first byte, then AUTH and mail.
fn auth_services(label: &str, submission: u16, smtps: u16) {
    for port in [submission, smtps] {
        assert!(
            wait_for(START_WAIT, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "{label}: nothing listens on {port}"
        );
    }
    let (_, _, _) = test_user();
    let token = format!("auth-{}-{}", std::process::id(), quill::base::date::now_micros().1);
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', {submission}, timeout=30)
s.ehlo()
code, _ = s.mail('someone@test.example')
assert code == 530, ('MAIL before AUTH', code)
s.rset()
s.starttls(context=ctx); s.ehlo()
try:
    s.login('tester', 'wrong'); raise SystemExit('a wrong password was accepted')
except smtplib.SMTPAuthenticationError:
    pass
s.login('tester', 'secret')
s.sendmail('tester@test.example', ['{user}@localhost'], 'Subject: {token}-587\r\n\r\nover submission\r\n')
s.quit()
t = smtplib.SMTP_SSL('127.0.0.1', {smtps}, context=ctx, timeout=30)
t.login('tester', 'secret')
t.sendmail('tester@test.example', ['{user}@localhost'], 'Subject: {token}-465\r\n\r\nover smtps\r\n')
t.quit()
"#,
        user = TEST_USER
    );
    let out = Command::new("python3").arg("-c").arg(&script).output().expect("python3");
    assert!(out.status.success(), "{label}: submission/smtps: {}", String::from_utf8_lossy(&out.stderr));
    assert!(delivered(&format!("{token}-587")), "{label}: the message sent on port 587 was not delivered");
    assert!(delivered(&format!("{token}-465")), "{label}: the message sent on port 465 was not delivered");
}
