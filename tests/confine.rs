//! Issue 11: every policy of `quill::mail::jail` proven to deny what it should, from inside a
//! confined process (this test binary run again as a child that applies the policy, then
//! tries: a file outside its set, a write, `/bin/sh`, a TCP connection or bind), and the real
//! stages of a running instance shown confined by /proc/PID/status (`NoNewPrivs: 1`,
//! `Seccomp: 2`). The counting of what confinement costs quill-smtpd per connection is here
//! too (`cost_per_connection`, printed, never asserted).

mod common;

use common::{bin, wait_for, TempDir};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The probes a confined child makes, each printed as `probe NAME: ok` or `probe NAME: ERROR`.
fn probes(home: &Path, outside: &Path, port: u16, mut status_file: std::fs::File) {
    let say = |name: &str, result: std::io::Result<()>| match result {
        Ok(()) => println!("probe {name}: ok"),
        Err(e) => println!("probe {name}: {e}"),
    };
    say("read-outside", std::fs::read(outside).map(drop));
    say("read-control", std::fs::read(home.join("control/me")).map(drop));
    say("write-control", std::fs::write(home.join("control/planted"), b"x"));
    say(
        "write-queue",
        std::fs::write(home.join("queue/tmp/planted"), b"x")
            .and_then(|()| std::fs::remove_file(home.join("queue/tmp/planted"))),
    );
    say("exec-sh", Command::new("/bin/sh").args(["-c", "exit 0"]).status().map(drop));
    say("connect", TcpStream::connect(("127.0.0.1", port)).map(drop));
    say("bind", TcpListener::bind("127.0.0.1:0").map(drop));
    say("udp", std::net::UdpSocket::bind("127.0.0.1:0").map(drop));
    // Opened before the confinement (/proc is outside every policy); read now, it says now.
    // The thread's own (libtest runs the test in a thread of its own, and only that thread
    // is confined).
    let mut status = String::new();
    let _ = status_file.read_to_string(&mut status);
    for line in status.lines().filter(|l| l.starts_with("NoNewPrivs:") || l.starts_with("Seccomp:")) {
        println!("status {line}");
    }
}

/// The child's side: only when this binary is run again by [`confined`].
#[test]
fn child_applies_a_policy_and_probes() {
    let (Some(which), Some(home), Some(outside), Some(port)) = (
        std::env::var_os("QUILL_TEST_POLICY"),
        std::env::var_os("QUILL_TEST_HOME"),
        std::env::var_os("QUILL_TEST_OUTSIDE"),
        std::env::var("QUILL_TEST_PORT").ok().and_then(|p| p.parse().ok()),
    ) else {
        return;
    };
    let home = PathBuf::from(home);
    let status = std::fs::File::open("/proc/thread-self/status").expect("open /proc/thread-self/status");
    let done = if which == "linked-smtpd" {
        // As quill-tcpserver and its linked quill-smtpd child do: the server's filter and the
        // session's ruleset made once, then the session's policy entered.
        let smtpd = quill::mail::jail::smtpd(&home, Path::new("/etc/aliases"), &[]);
        let server = quill::base::confine::serve(&quill::mail::jail::tcpserver_linked(&smtpd, false), &smtpd);
        println!("server {server:?}");
        quill::base::confine::apply(&smtpd)
    } else {
        let policies = quill::mail::jail::all(&home);
        let policy = policies.iter().find(|p| p.program == which).expect("a policy of that name");
        quill::base::confine::apply(policy)
    };
    println!("applied {done:?}");
    probes(&home, Path::new(&outside), port, status);
}

/// What a child confined by `program`'s policy could and could not do: the probe lines, by
/// name, and the status lines.
struct Probed {
    output: String,
}

impl Probed {
    fn probe(&self, name: &str) -> &str {
        let prefix = format!("probe {name}: ");
        self.output.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or("missing")
    }
    fn denied(&self, name: &str) {
        let got = self.probe(name);
        assert!(
            got.contains("Permission denied") || got.contains("Operation not permitted"),
            "{name} should fail with EACCES or EPERM, got {got:?}:\n{}",
            self.output
        );
    }
    fn allowed(&self, name: &str) {
        assert_eq!(self.probe(name), "ok", "{name}:\n{}", self.output);
    }
}

/// A home (control/me, the queue tree), a file outside it, a listener to connect to.
struct World {
    home: TempDir,
    outside: TempDir,
    listener: TcpListener,
}

impl World {
    fn new() -> World {
        let home = common::home("confine", &[("me", "test.example\n")]);
        let outside = TempDir::new("confine-outside");
        std::fs::write(outside.path().join("secret"), b"secret").expect("write");
        World { home, outside, listener: TcpListener::bind("127.0.0.1:0").expect("bind") }
    }
}

/// Run the child for `program`'s policy; None (after a SKIP) when the kernel lacks Landlock
/// or seccomp, so that nothing can be proven.
fn confined(world: &World, program: &str) -> Option<Probed> {
    let port = world.listener.local_addr().expect("addr").port();
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_applies_a_policy_and_probes", "--nocapture", "--test-threads=1"])
        .env("QUILL_TEST_POLICY", program)
        .env("QUILL_TEST_HOME", world.home.path())
        .env("QUILL_TEST_OUTSIDE", world.outside.path().join("secret"))
        .env("QUILL_TEST_PORT", port.to_string())
        .env_remove("QUILL_CONFINE")
        .output()
        .expect("run the child");
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !output.contains("landlock: Some(") || !output.contains("seccomp: true") {
        common::skip(&format!("the kernel does not offer Landlock and seccomp: {output}"));
        return None;
    }
    assert!(output.contains("status NoNewPrivs:\t1") && output.contains("status Seccomp:\t2"), "{output}");
    Some(Probed { output })
}

#[test]
fn smtpd_reads_its_controls_only_writes_nothing_execs_nothing_asks_dns_only() {
    let world = World::new();
    let Some(p) = confined(&world, "quill-smtpd") else { return };
    p.allowed("read-control");
    // UDP for SPF's DNS lookups (mail::spf), asked after the confinement.
    p.allowed("udp");
    for name in ["read-outside", "write-control", "write-queue", "exec-sh", "connect", "bind"] {
        p.denied(name);
    }
}

/// quill-tcpserver's one filter for itself and its linked sessions, with the session's ruleset
/// entered: the session is denied what a session confined on its own is.
#[test]
fn a_linked_smtpd_session_under_its_servers_filter_is_denied_the_same() {
    let world = World::new();
    let Some(p) = confined(&world, "linked-smtpd") else { return };
    assert!(
        p.output.contains("server Confinement { no_new_privs: true, landlock: None, seccomp: true }"),
        "{}",
        p.output
    );
    p.allowed("read-control");
    // UDP for the DNS lookups of SPF, DKIM and DMARC, as a session confined on its own.
    p.allowed("udp");
    for name in ["read-outside", "write-control", "write-queue", "exec-sh", "connect", "bind"] {
        p.denied(name);
    }
}

#[test]
fn remote_connects_out_but_reads_writes_and_execs_nothing_else() {
    let world = World::new();
    let Some(p) = confined(&world, "quill-remote") else { return };
    p.allowed("read-control");
    p.allowed("connect");
    p.allowed("udp");
    for name in ["read-outside", "write-control", "write-queue", "exec-sh", "bind"] {
        p.denied(name);
    }
}

#[test]
fn rspawn_execs_quill_remote_only() {
    let world = World::new();
    let Some(p) = confined(&world, "quill-rspawn") else { return };
    p.allowed("read-control");
    for name in ["read-outside", "write-control", "write-queue", "exec-sh", "bind"] {
        p.denied(name);
    }
}

#[test]
fn clean_and_queued_write_the_queue_only() {
    let world = World::new();
    for program in ["quill-clean", "quill-queued"] {
        let Some(p) = confined(&world, program) else { return };
        p.allowed("write-queue");
        // quill-queued reads control/ for the DKIM keys it signs with (control/dkim).
        if program == "quill-queued" {
            p.allowed("read-control");
        } else {
            p.denied("read-control");
        }
        for name in ["read-outside", "write-control", "exec-sh", "connect", "bind", "udp"] {
            p.denied(name);
        }
    }
}

#[test]
fn send_reads_the_home_writes_the_queue_and_runs_nothing() {
    let world = World::new();
    let Some(p) = confined(&world, "quill-send") else { return };
    p.allowed("read-control");
    p.allowed("write-queue");
    for name in ["read-outside", "write-control", "exec-sh", "connect", "bind", "udp"] {
        p.denied(name);
    }
}

/// The `NoNewPrivs` and `Seccomp` lines of a process.
fn status(pid: i32) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap_or("").to_string();
    (field("NoNewPrivs:"), field("Seccomp:"))
}

/// quill-up with an SMTP listener, stopped when dropped.
struct Instance {
    dir: TempDir,
    child: Child,
    port: u16,
}

impl Instance {
    fn start(tag: &str, env: &[(&str, &str)]) -> Instance {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.path().join("q")).expect("mkdir");
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = Command::new(bin("quill-up"))
            .arg("-d")
            .arg(dir.path().join("q"))
            .arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start quill-up");
        let instance = Instance { dir, child, port };
        let up = wait_for(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && common::instance_pids(&instance.home(), "quill-queued").len() == 1
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
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM);
        let _ = wait_for(Duration::from_secs(30), || !matches!(self.child.try_wait(), Ok(None)));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Landlock and seccomp both work here (else a SKIP): the running stages' status can only be
/// checked where the kernel has both.
fn kernel_can_confine() -> bool {
    let able = quill::base::sys::landlock_abi().is_ok()
        && std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.contains("Seccomp:"));
    if !able {
        common::skip("the kernel does not offer Landlock and seccomp");
    }
    able
}

/// Start a session and return the quill-smtpd serving it, with the stream still open.
fn smtpd_session(q: &Instance) -> (TcpStream, i32) {
    let mut stream = TcpStream::connect(("127.0.0.1", q.port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut greeting = String::new();
    BufReader::new(stream.try_clone().expect("clone")).read_line(&mut greeting).expect("greeting");
    assert!(greeting.starts_with("220"), "{greeting}");
    let mut found = Vec::new();
    assert!(wait_for(Duration::from_secs(10), || {
        found = common::instance_pids(&q.home(), "quill-smtpd");
        found.len() == 1
    }));
    stream.write_all(b"NOOP\r\n").expect("write");
    (stream, found[0])
}

#[test]
fn every_running_stage_shows_no_new_privs_and_a_filter() {
    if !kernel_can_confine() {
        return;
    }
    let q = Instance::start("confine-stages", &[]);
    for program in ["quill-send", "quill-clean", "quill-rspawn", "quill-queued"] {
        let mut found = Vec::new();
        assert!(
            wait_for(Duration::from_secs(10), || {
                found = common::instance_pids(&q.home(), program);
                found.len() == 1
            }),
            "{program} is not running: {found:?}; log:\n{}",
            q.log()
        );
        // A stage confines itself once its setup is done: give it a moment to get there.
        let confined = || status(found[0]) == ("NoNewPrivs:\t1".to_string(), "Seccomp:\t2".to_string());
        assert!(wait_for(Duration::from_secs(10), confined), "{program}: {:?}; log:\n{}", status(found[0]), q.log());
    }
    let (mut stream, pid) = smtpd_session(&q);
    let (nnp, seccomp) = status(pid);
    assert_eq!((nnp.as_str(), seccomp.as_str()), ("NoNewPrivs:\t1", "Seccomp:\t2"), "quill-smtpd");
    // Not confined by design: the root spawner whose children become users (quill-lspawn).
    let lspawn = common::instance_pids(&q.home(), "quill-lspawn");
    assert_eq!(status(lspawn[0]).0, "NoNewPrivs:\t0", "quill-lspawn");
    let _ = stream.write_all(b"QUIT\r\n");
    let _ = stream.read(&mut [0u8; 64]);
    assert!(!q.log().contains("running without confinement"), "{}", q.log());
}

#[test]
fn quill_confine_0_turns_it_off_with_one_line() {
    if !kernel_can_confine() {
        return;
    }
    let q = Instance::start("confine-off", &[("QUILL_CONFINE", "0")]);
    let (mut stream, pid) = smtpd_session(&q);
    assert_eq!(status(pid).0, "NoNewPrivs:\t0");
    let _ = stream.write_all(b"QUIT\r\n");
    let _ = stream.read(&mut [0u8; 64]);
    let log = q.log();
    assert!(
        wait_for(Duration::from_secs(10), || q
            .log()
            .contains("quill-smtpd: warning: not confined: QUILL_CONFINE=0; running without confinement")),
        "{log}"
    );
}

/// quill-remote, confined, in the middle of a delivery: a server that greets and then says
/// nothing holds it while its status is read.
#[test]
fn quill_remote_is_confined_while_it_delivers() {
    if !kernel_can_confine() {
        return;
    }
    let server = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = server.local_addr().expect("addr").port();
    let home = common::home(
        "confine-remote",
        &[("me", "test.example\n"), ("smtproutes", &format!("remote.example:127.0.0.1:{port}\n"))],
    );
    let mut child = Command::new(bin("quill-remote"))
        .args(["remote.example", "a@test.example", "b@remote.example"])
        .env("QUILL_HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quill-remote");
    let _ = child.stdin.take().map(|mut s| s.write_all(b"Subject: x\n\nhello\n"));
    let (mut peer, _) = server.accept().expect("accept");
    let (nnp, seccomp) = status(child.id() as i32);
    let _ = peer.write_all(b"421 bye\r\n");
    drop(peer);
    let out = child.wait_with_output().expect("wait");
    assert_eq!((nnp.as_str(), seccomp.as_str()), ("NoNewPrivs:\t1", "Seccomp:\t2"), "{out:?}");
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// quill-tcpserver on `home` running the linked quill-smtpd with `args` after its name, `-v`,
/// its log in `log`: the server, its port, and a session that has greeted (the stream, the
/// session's pid).
fn linked_session(home: &Path, args: &[&str], log: &Path) -> (common::Daemon, TcpStream, i32) {
    let mut command = Command::new(bin("quill-tcpserver"));
    if common::is_root() {
        command.args(["-u", "65534", "-g", "65534"]);
    }
    let mut server = common::Daemon(
        command
            .args(["-v", "-1", "127.0.0.1", "0"])
            .arg(bin("quill-smtpd"))
            .args(args)
            .env("QUILL_HOME", home)
            .env_remove("QUILL_CONFINE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("run quill-tcpserver"),
    );
    let mut port = String::new();
    BufReader::new(server.0.stdout.take().expect("stdout")).read_line(&mut port).expect("the port");
    let stream = TcpStream::connect(("127.0.0.1", port.trim().parse::<u16>().expect("a port"))).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut greeting = String::new();
    BufReader::new(stream.try_clone().expect("clone")).read_line(&mut greeting).expect("greeting");
    assert!(greeting.starts_with("220"), "{greeting}");
    let pid = server.id();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let child = children.split_whitespace().next().and_then(|c| c.parse().ok()).expect("a session");
    (server, stream, child)
}

/// The `Seccomp_filters` line of a process: how many filters it runs under.
fn filters(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines().find(|l| l.starts_with("Seccomp_filters:")).unwrap_or("").to_string()
}

/// quill-tcpserver with the linked quill-smtpd confines itself, once: the server shows
/// `NoNewPrivs: 1` and `Seccomp: 2`, and a session runs under that one filter (it installed
/// none of its own) and is confined all the same.
#[test]
fn a_linked_session_inherits_the_servers_one_filter() {
    if !kernel_can_confine() {
        return;
    }
    let world = World::new();
    let log = world.outside.path().join("log");
    let (mut server, mut stream, session) = linked_session(world.home.path(), &[], &log);
    let confined = ("NoNewPrivs:\t1".to_string(), "Seccomp:\t2".to_string());
    assert_eq!(status(server.id() as i32), confined, "quill-tcpserver");
    assert_eq!(status(session), confined, "quill-smtpd");
    assert_eq!(filters(session), "Seccomp_filters:\t1", "the server's filter only");
    let _ = stream.write_all(b"QUIT\r\n");
    let _ = stream.read(&mut [0u8; 64]);
    server.stop();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.contains("confine") && !log.contains("not permitted"), "{log}");
}

/// With AUTH (a checkpassword program after quill-smtpd's name) the server stays unconfined,
/// so that the session's broker, forked before the session confines itself, can still run a
/// setuid checkpassword; the session confines itself with its own filter.
#[test]
fn with_auth_each_session_confines_itself() {
    if !kernel_can_confine() {
        return;
    }
    let world = World::new();
    let log = world.outside.path().join("log");
    let (mut server, mut stream, session) = linked_session(world.home.path(), &["/bin/true"], &log);
    assert_eq!(status(server.id() as i32).0, "NoNewPrivs:\t0", "quill-tcpserver");
    let confined = ("NoNewPrivs:\t1".to_string(), "Seccomp:\t2".to_string());
    assert!(wait_for(Duration::from_secs(10), || status(session) == confined), "quill-smtpd: {:?}", status(session));
    let _ = stream.write_all(b"QUIT\r\n");
    let _ = stream.read(&mut [0u8; 64]);
    server.stop();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("each session confines itself: AUTH runs a checkpassword program"), "{log}");
}

/// What confinement costs a connection, counted: quill-tcpserver running the linked
/// quill-smtpd, a run of it serving CONNECTIONS sessions (greeting, QUIT) one after the other
/// then stopped; the CPU time of the server and its reaped children (getrusage of our
/// children, in a process of its own) per connection, for ROUNDS runs of each mode, the modes
/// in turn (so that the machine's other load falls on each alike); the median of the runs.
/// Printed for doc/PERFORMANCE.md; timings are never asserted. A measurement, not a check:
/// `make soak`.
#[test]
#[ignore]
fn cost_per_connection() {
    if !kernel_can_confine() {
        return;
    }
    let world = World::new();
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_runs_tcpserver", "--nocapture", "--test-threads=1"])
        .env("QUILL_TEST_HOME", world.home.path())
        .output()
        .expect("run the child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("median"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let policy = quill::mail::jail::smtpd(world.home.path(), Path::new("/etc/aliases"), &[]);
    let filter = quill::base::confine::filter(&policy).expect("filter");
    eprintln!(
        "confinement cost per connection (CPU of quill-tcpserver and its children):\n{}filter {} instructions for {} calls",
        text.lines().filter(|l| l.starts_with("mode ")).map(|l| format!("{l}\n")).collect::<String>(),
        filter.len(),
        quill::base::confine::names(&policy).len()
    );
}

/// The measuring side of [`cost_per_connection`], in a process of its own so that its
/// children's CPU time is theirs alone.
#[test]
fn child_runs_tcpserver() {
    const ROUNDS: usize = 15;
    const CONNECTIONS: u32 = 300;
    let Some(home) = std::env::var_os("QUILL_TEST_HOME") else { return };
    let modes: [(&str, &[(&str, &str)]); 3] = [
        ("unconfined", &[("QUILL_CONFINE", "0")]),
        ("each-session", &[("QUILL_CONFINE", "session")]),
        ("server-once", &[]),
    ];
    let mut figures: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..ROUNDS {
        for (mode, (_, env)) in modes.iter().enumerate() {
            let before = quill::base::sys::cpu_time().expect("getrusage").1;
            serve_connections(Path::new(&home), env, CONNECTIONS);
            let spent = quill::base::sys::cpu_time().expect("getrusage").1 - before;
            figures[mode].push(spent.as_secs_f64() * 1e6 / f64::from(CONNECTIONS));
        }
    }
    // On a line of its own: libtest's "test … " line is still open.
    println!();
    for (mode, (name, _)) in modes.iter().enumerate() {
        let mut runs = figures[mode].clone();
        runs.sort_by(f64::total_cmp);
        let runs_text: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
        println!("mode {name}: median {:.1} us per connection; runs {}", runs[runs.len() / 2], runs_text.join(" "));
    }
}

/// Start quill-tcpserver on `home` running the linked quill-smtpd, serve `connections`
/// sessions one after another, wait until it has reaped every child, stop it and reap it.
fn serve_connections(home: &Path, env: &[(&str, &str)], connections: u32) {
    let mut command = Command::new(bin("quill-tcpserver"));
    if common::is_root() {
        // A session running as root is not confined: nobody stands in for quilld.
        command.args(["-u", "65534", "-g", "65534"]);
    }
    let mut server = common::Daemon(
        command
            .args(["-1", "-c", "4", "127.0.0.1", "0"])
            .arg(bin("quill-smtpd"))
            .env("QUILL_HOME", home)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run quill-tcpserver"),
    );
    let mut port = String::new();
    BufReader::new(server.0.stdout.take().expect("stdout")).read_line(&mut port).expect("the port");
    let port: u16 = port.trim().parse().expect("a port");
    for _ in 0..connections {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut greeting = [0u8; 512];
        let n = stream.read(&mut greeting).expect("greeting");
        assert!(greeting[..n].starts_with(b"220"), "{}", String::from_utf8_lossy(&greeting[..n]));
        stream.write_all(b"QUIT\r\n").expect("QUIT");
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
    let pid = server.id();
    let children = format!("/proc/{pid}/task/{pid}/children");
    let reaped =
        wait_for(Duration::from_secs(30), || std::fs::read_to_string(&children).is_ok_and(|c| c.trim().is_empty()));
    assert!(reaped, "quill-tcpserver still has children");
    server.stop();
}

/// STARTTLS still works in a confined session: the certificate and key are read when the
/// client asks, after the confinement, from paths the policy allows.
#[test]
fn starttls_works_in_a_confined_session() {
    if !kernel_can_confine() || common::skip_without_python(&["smtplib", "ssl"]) {
        return;
    }
    let q = Instance::start("confine-tls", &[]);
    let script = format!(
        "import smtplib, ssl\nc = ssl.create_default_context()\nc.check_hostname = False\nc.verify_mode = ssl.CERT_NONE\ns = smtplib.SMTP('127.0.0.1', {})\ns.starttls(context=c)\ns.sendmail('a@example.org', ['tls@localhost'], 'Subject: tls\\r\\n\\r\\nhi\\r\\n')\ns.quit()\n",
        q.port
    );
    let out = Command::new("python3").arg("-c").arg(script).output().expect("python3");
    assert!(out.status.success(), "smtplib: {}; log:\n{}", String::from_utf8_lossy(&out.stderr), q.log());
    let maildir = q.home().join("maildir/tls");
    let delivered = wait_for(Duration::from_secs(30), || !common::files(&maildir.join("new")).is_empty());
    assert!(delivered, "log:\n{}", q.log());
    let message = std::fs::read_to_string(&common::files(&maildir.join("new"))[0]).expect("read");
    assert!(message.contains("TLS"), "the Received line names TLS:\n{message}");
    assert!(!q.log().contains("Operation not permitted") && !q.log().contains("Permission denied"), "{}", q.log());
}

/// Issue 10: a kept quill-remote (quill-rspawn's `-k` child, waiting on its socket for the
/// next job of a backlogged destination) is confined exactly like a single-shot run: the
/// request comes from this test as quill-send would send it, the sink greets, takes the
/// message, and the kept process then idles with its connection open.
#[test]
fn a_kept_quill_remote_is_confined_between_jobs() {
    if !kernel_can_confine() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else { return };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut writer = stream.try_clone().expect("clone");
        let mut reader = BufReader::new(stream);
        let _ = writer.write_all(b"220 sink.test ESMTP\r\n");
        let mut line = String::new();
        // Bounded: one session of a few commands, then the sink lets the connection idle.
        for _ in 0..64 {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let reply: &[u8] = match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                "EHLO" => b"250-sink.test\r\n250 PIPELINING\r\n",
                "DATA" => b"354 go\r\n",
                "QUIT" => b"221 bye\r\n",
                _ if line == ".\r\n" => b"250 2.0.0 taken\r\n",
                _ if line.starts_with("MAIL") || line.starts_with("RCPT") || line.starts_with("RSET") => b"250 ok\r\n",
                _ => continue,
            };
            let _ = writer.write_all(reply);
        }
    });
    let home = common::home(
        "confine-kept",
        &[
            ("me", "quill.test"),
            ("smtproutes", &format!("sink.test:[127.0.0.1]:{port}\n")),
            ("dnsservers", "127.0.0.1:9\n"),
            ("timeoutremoteidle", "30"),
        ],
    );
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
    bytes.extend_from_slice(b"Subject: kept\n\nbody\n");
    std::fs::write(home.path().join("queue/mess/1"), bytes).expect("queue a message");
    let log = home.path().join("rspawn.log");
    let mut rspawn = common::Daemon(
        Command::new(bin("quill-rspawn"))
            .env("QUILL_HOME", home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("run quill-rspawn"),
    );
    let request = quill::mail::proto::spawn::Request {
        slot: 1,
        id: b"1".to_vec(),
        sender: b"s@quill.test".to_vec(),
        recipients: vec![b"a@sink.test".to_vec()],
        retry: false,
        backlog: true,
    };
    let mut input = rspawn.0.stdin.take().expect("stdin");
    input.write_all(&request.encode()).expect("write the request");
    let mut output = rspawn.0.stdout.take().expect("stdout");
    let mut reader = quill::mail::proto::spawn::Reader::default();
    let mut buffer = [0u8; 4096];
    let report = loop {
        if let Some(fields) = reader.next_frame() {
            break quill::mail::proto::spawn::Report::decode(&fields).expect("a report");
        }
        let n = output.read(&mut buffer).expect("read the report");
        assert!(n > 0, "quill-rspawn ended without a report");
        reader.push(&buffer[..n]);
    };
    assert_eq!(report.results[0].outcome.letter(), b'K', "{report:?}");
    // The kept process stays for the idle time: it is quill-rspawn's only quill-remote.
    let mut kept = Vec::new();
    assert!(wait_for(Duration::from_secs(10), || {
        kept = common::instance_pids(home.path(), "quill-remote");
        !kept.is_empty()
    }));
    for pid in kept {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(text.contains("-k"), "a kept quill-remote: {text:?}");
        assert_eq!(status(pid), ("NoNewPrivs:\t1".to_string(), "Seccomp:\t2".to_string()), "kept quill-remote {pid}");
        // Its own filter on top of quill-rspawn's: quill-remote narrowed itself further.
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(text.lines().any(|l| l == "Seccomp_filters:\t2"), "two filters in quill-remote {pid}:\n{text}");
    }
    drop(input);
    rspawn.stop();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.contains("confined only in part"), "quill-remote confines itself under quill-rspawn:\n{log}");
}
