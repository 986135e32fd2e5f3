//! quill-lspawn and quill-newu, driven through their real interfaces: spawn-protocol frames (mail::proto::spawn) on
//! lspawn's pipes, real queue files, and a fake quill-local (a shell script that prints its
//! argv, ids, working directory and first line of input, then exits as the test asks).
//!
//! Without root, and for most tests even as root, lspawn runs the way a private instance
//! does: as one unprivileged user (the test's own, or `nobody` when the test runs as root)
//! that owns the whole home. As root, one test also runs it as root with scratch users made
//! by useradd, and checks the credentials the fake really got.

#![allow(clippy::unwrap_used)]

mod common;

use quill::mail::proto::spawn::{Reader, Report, Request};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// The fake quill-local. DIR/mode picks a behaviour; DIR/code is the exit code.
const FAKE: &str = r#"#!/bin/sh
dir='@DIR@'
mode=$(cat "$dir/mode" 2>/dev/null)
case "$mode" in
  kill) kill -9 $$ ;;
  silent-*) exit "${mode#silent-}" ;;
esac
printf 'argv:'
for a in "$@"; do printf ' [%s]' "$a"; done
printf '\n'
printf 'ids: %s %s [%s]\n' "$(id -u)" "$(id -g)" "$(id -G)"
printf 'cwd: %s\n' "$(pwd)"
printf 'env: %s\n' "$(env | grep -v -e '^PWD=' -e '^SHLVL=' -e '^_=' | sort | tr '\n' ' ')"
IFS= read -r line || true
printf 'stdin: %s\n' "$line"
case "$mode" in
  big) i=0; while [ $i -lt 500 ]; do echo 0123456789012345678901234567890123456789; i=$((i+1)); done ;;
  wait) : > "$dir/started.$$"; n=0
        while [ ! -e "$dir/release" ] && [ $n -lt 2000 ]; do sleep 0.01; n=$((n+1)); done ;;
esac
code=$(cat "$dir/code" 2>/dev/null)
exit "${code:-0}"
"#;

/// The identity lspawn runs under in the "private instance" tests, and who owns the home.
fn runner() -> (u32, u32) {
    if common::is_root() {
        let nobody = nix::unistd::User::from_name("nobody").ok().flatten().expect("user nobody");
        (nobody.uid.as_raw(), nobody.gid.as_raw())
    } else {
        (quill::base::sys::uids().0, quill::base::sys::gid())
    }
}

/// A Quill home for lspawn, a fake quill-local, and helpers to write files into them.
struct World {
    home: common::TempDir,
    owner: Option<(u32, u32)>,
}

impl World {
    /// A home owned by `owner` (when the test is root) or by the test's user.
    fn new(tag: &str, owner: Option<(u32, u32)>) -> World {
        let home = common::home(tag, &[("me", "example.com\n")]);
        let world = World { home, owner };
        for dir in ["users", "alias", "homes", "fake"] {
            std::fs::create_dir_all(world.path().join(dir)).expect("mkdir");
        }
        let fake = FAKE.replace("@DIR@", &world.path().join("fake").display().to_string());
        common::write_script(&world.fake(), fake.as_bytes());
        let aliases = world.path().join("aliases");
        world.write("control/aliases", format!("{}\n", aliases.display()).as_bytes());
        world.chown_all();
        world
    }

    /// The usual world: lspawn runs as [`runner`].
    fn private(tag: &str) -> World {
        World::new(tag, if common::is_root() { Some(runner()) } else { None })
    }

    fn path(&self) -> &Path {
        self.home.path()
    }

    fn fake(&self) -> PathBuf {
        self.path().join("fake/quill-local")
    }

    fn chown(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("chown");
        }
    }

    fn chown_all(&self) {
        if let Some((uid, gid)) = self.owner {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(self.path())
                .status()
                .expect("chown -R");
            assert!(status.success());
        }
    }

    /// Write a file under the home (replacing it in place), owned by the home's owner, with
    /// a modification time that surely differs from the last one.
    fn write(&self, name: &str, contents: &[u8]) {
        static TICK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let path = self.path().join(name);
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path).expect("open");
        file.write_all(contents).expect("write");
        let tick = TICK.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let time = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + tick);
        file.set_modified(time).expect("set mtime");
        drop(file);
        self.chown(&path);
    }

    /// A home directory for an assign entry.
    fn user_home(&self, name: &str) -> PathBuf {
        let dir = self.path().join("homes").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir home");
        self.chown(&dir);
        dir
    }

    fn mode(&self, mode: &str) {
        self.write("fake/mode", mode.as_bytes());
    }

    fn code(&self, code: &str) {
        self.write("fake/code", code.as_bytes());
    }

    /// Put a message into queue/mess (or another queue directory); returns its id.
    fn message(&self, dir: &str, subject: &str) -> String {
        let header = quill::mail::queuefile::Header {
            uid: 0,
            pid: 1,
            time: 1_700_000_000,
            nanos: 0,
            envelope: quill::mail::envelope::Envelope {
                sender: b"from@example.org".to_vec(),
                recipients: vec![b"x@example.com".to_vec()],
            },
            dsn: Default::default(),
        };
        let mut bytes = header.encode();
        bytes.extend_from_slice(format!("Subject: {subject}\nFrom: from@example.org\n\nbody\n").as_bytes());
        let tmp = self.path().join("queue/tmp/new");
        std::fs::write(&tmp, &bytes).expect("write message");
        let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&tmp).expect("stat")).to_string();
        let path = self.path().join("queue").join(dir).join(&id);
        std::fs::rename(&tmp, &path).expect("rename");
        self.chown(&path);
        id
    }

    /// Compile users/assign with quill-newu.
    fn assign(&self, text: &str) {
        self.write("users/assign", text.as_bytes());
        let out = common::run(self.path(), "quill-newu", &[], b"");
        assert!(out.status.success(), "quill-newu: {}", String::from_utf8_lossy(&out.stderr));
        self.chown(&self.path().join("users/assign.db"));
    }

    /// Start lspawn, as `user` or as the test's own identity.
    fn lspawn(&self, user: Option<(u32, u32)>) -> Lspawn {
        let mut command = Command::new(common::bin("quill-lspawn"));
        command.arg("-l").arg(self.fake()).arg("./Maildir/").env("QUILL_HOME", self.path());
        if let Some((uid, gid)) = user {
            command.uid(uid).gid(gid);
        }
        Lspawn::start(command)
    }

    fn lspawn_private(&self) -> Lspawn {
        self.lspawn(self.owner)
    }

    /// Start lspawn the way quill-start does, without `-l`: each delivery is a forked child
    /// running quill-local's linked code. Its environment carries a marker that no delivery
    /// may see.
    fn lspawn_linked(&self, user: Option<(u32, u32)>) -> Lspawn {
        Lspawn::start(self.linked_command(user))
    }

    fn linked_command(&self, user: Option<(u32, u32)>) -> Command {
        let mut command = Command::new(common::bin("quill-lspawn"));
        command.arg("./Maildir/").env("QUILL_HOME", self.path()).env("QUILL_TEST_MARKER", "lspawn-only");
        if let Some((uid, gid)) = user {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// A world for linked deliveries: as root, a home of root's (lspawn runs as root and the
    /// child becomes [`runner`]); otherwise the private one.
    fn linked(tag: &str) -> World {
        World::new(tag, None)
    }

    /// A home for `name` with a Maildir and a `.qmail` that runs [`PROBE`] first, all owned
    /// by `owner` (or the home's owner).
    fn probe_home(&self, name: &str, owner: Option<(u32, u32)>) -> PathBuf {
        let home = self.user_home(name);
        for sub in ["Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp"] {
            std::fs::create_dir_all(home.join(sub)).expect("mkdir");
        }
        std::fs::write(home.join("probe"), PROBE).expect("probe");
        std::fs::write(home.join(".qmail"), "|exec /bin/sh ./probe\n./Maildir/\n").expect(".qmail");
        if let Some((uid, gid)) = owner.or(self.owner) {
            for p in ["", "Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp", "probe", ".qmail"] {
                std::os::unix::fs::chown(home.join(p), Some(uid), Some(gid)).expect("chown");
            }
        }
        home
    }
}

/// A dot-file program that records what it runs as and what it got, then waits (bounded)
/// for the test to look at its parent, the delivery process, in /proc.
const PROBE: &str = r#"echo "$PPID" > probe.ppid
env | sort > probe.env
grep -E '^(Uid|Gid|Groups|CapEff):' /proc/self/status > probe.status
if cat /proc/$PPID/environ > /dev/null 2>&1; then echo readable; else echo unreadable; fi > probe.parent
: > probe.started
n=0
while [ ! -e release ] && [ $n -lt 3000 ]; do sleep 0.01; n=$((n+1)); done
exit 0
"#;

/// The targets of a process's descriptors (`pipe:[N]`, paths), by number.
fn fd_targets(pid: i32) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read fd dir").flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Ok(target) = std::fs::read_link(entry.path()) {
            found.push((fd, target.display().to_string()));
        }
    }
    found.sort();
    found
}

/// One line of /proc/PID/status, its values only.
fn status_values(status: &str, name: &str) -> Vec<u64> {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .split_whitespace()
        .skip(1)
        .filter_map(|v| u64::from_str_radix(v, if name == "CapEff:" { 16 } else { 10 }).ok())
        .collect()
}

/// What the tests of the forked child see while its program runs.
struct Probed {
    report: (char, String),
    /// The delivery process: /proc/PID/exe, comm, cmdline's argv0, environ entries, status.
    exe: PathBuf,
    comm: String,
    argv0: Vec<u8>,
    environ: Vec<String>,
    status: String,
    /// Its descriptors, and those of quill-lspawn, both read while it ran.
    child_fds: Vec<(i32, String)>,
    lspawn_fds: Vec<(i32, String)>,
    /// What the program wrote: its environment, its status lines, and whether it could read
    /// its parent's /proc/PID/environ.
    program_env: String,
    program_status: String,
    parent_readable: String,
}

/// Deliver to `recipient`, whose home runs [`PROBE`], and look at the delivery process while
/// the program waits.
fn probe_delivery(lspawn: &mut Lspawn, id: &str, recipient: &str, home: &Path) -> Probed {
    lspawn.send(7, id, &[recipient.as_bytes()]);
    let started = common::wait_for(LIMIT, || home.join("probe.started").exists());
    assert!(started, "the program ran; lspawn said {:?}", lspawn.reports.try_recv());
    let read = |name: &str| std::fs::read_to_string(home.join(name)).unwrap_or_default();
    let pid: i32 = read("probe.ppid").trim().parse().expect("ppid");
    let proc_file = |name: &str| std::fs::read(format!("/proc/{pid}/{name}")).unwrap_or_default();
    let probed = Probed {
        report: ('?', String::new()),
        exe: std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe"),
        comm: String::from_utf8_lossy(&proc_file("comm")).trim().to_string(),
        argv0: proc_file("cmdline").split(|&b| b == 0).next().unwrap_or(&[]).to_vec(),
        environ: proc_file("environ")
            .split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect(),
        status: String::from_utf8_lossy(&proc_file("status")).into_owned(),
        child_fds: fd_targets(pid),
        lspawn_fds: fd_targets(lspawn.child.id() as i32),
        program_env: read("probe.env"),
        program_status: read("probe.status"),
        parent_readable: read("probe.parent").trim().to_string(),
    };
    std::fs::write(home.join("release"), b"").expect("release");
    let report = lspawn.report();
    let result = &report.results[0];
    let report = (result.outcome.letter() as char, String::from_utf8_lossy(&result.text).into_owned());
    Probed { report, ..probed }
}

/// Checks that hold for every forked delivery child: no exec (its executable is quill-lspawn's
/// own), named quill-local, the environment quill-local gets and nothing else, none of
/// quill-lspawn's descriptors but the report pipe, and a program that gets quill-local's
/// documented environment.
fn check_forked(probed: &Probed, world: &World, home: &Path, recipient: &str) {
    assert_eq!(probed.report.0, 'K', "{:?}", probed.report);
    assert!(probed.report.1.starts_with("did 1+0+1"), "{:?}", probed.report);
    let lspawn = std::fs::canonicalize(common::bin("quill-lspawn")).expect("lspawn path");
    assert_eq!(probed.exe, lspawn, "the delivery process was not exec'd: it runs quill-lspawn's image");
    assert_eq!(probed.comm, "quill-local");
    assert_eq!(probed.argv0, b"quill-local".to_vec());
    let mut environ = probed.environ.clone();
    environ.sort();
    let quill_home = format!("QUILL_HOME={}", world.path().display());
    assert_eq!(environ, vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string(), quill_home.clone()]);
    // fd 1 and 2 are the report pipe, whose read end quill-lspawn holds; nothing else of its
    // (requests, reports, its log, its self-pipe) may be open in the child.
    let report_pipe = probed.child_fds.iter().find(|(fd, _)| *fd == 1).map(|(_, t)| t.clone()).expect("fd 1");
    assert_eq!(probed.child_fds.iter().find(|(fd, _)| *fd == 2).map(|(_, t)| t.clone()), Some(report_pipe.clone()));
    assert!(report_pipe.starts_with("pipe:"), "{report_pipe}");
    let zero = &probed.child_fds.iter().find(|(fd, _)| *fd == 0).expect("fd 0").1;
    assert!(zero.contains("/queue/mess/"), "fd 0 is the message: {zero}");
    for (fd, target) in &probed.child_fds {
        if *target == report_pipe {
            continue;
        }
        assert!(
            !probed.lspawn_fds.iter().any(|(_, t)| t == target),
            "the child's fd {fd} ({target}) is one of quill-lspawn's: {:?} / {:?}",
            probed.child_fds,
            probed.lspawn_fds
        );
    }
    let env = &probed.program_env;
    for want in [
        format!("RECIPIENT={recipient}"),
        format!("LOCAL={}", recipient.split('@').next().unwrap_or("")),
        "HOST=example.com".to_string(),
        "SENDER=from@example.org".to_string(),
        format!("HOME={}", home.display()),
        format!("DTLINE=Delivered-To: {recipient}"),
        "RPLINE=Return-Path: <from@example.org>".to_string(),
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        quill_home,
    ] {
        assert!(env.lines().any(|l| l == want), "the program's environment lacks {want}: {env}");
    }
    for name in ["USER=", "NEWSENDER=", "UFLINE=From from@example.org ", "EXT=", "HOST2="] {
        assert!(env.lines().any(|l| l.starts_with(name)), "the program's environment lacks {name}: {env}");
    }
    assert!(!env.contains("QUILL_TEST_MARKER"), "lspawn's environment leaked: {env}");
    assert_eq!(common::files(&home.join("Maildir/new")).len(), 1, "delivered to the Maildir too");
}

/// A running quill-lspawn with a thread collecting its reports.
struct Lspawn {
    child: Child,
    stdin: Option<ChildStdin>,
    reports: Receiver<Report>,
    stderr: Receiver<Vec<u8>>,
}

impl Lspawn {
    fn start(mut command: Command) -> Lspawn {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run quill-lspawn");
        let mut stdout = child.stdout.take().expect("stdout");
        let (send, reports) = channel();
        std::thread::spawn(move || {
            let mut reader = Reader::default();
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                reader.push(&buffer[..n]);
                while let Some(fields) = reader.next_frame() {
                    let _ = send.send(Report::decode(&fields).expect("report frame"));
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let (send_err, stderr_rx) = channel();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = stderr.read_to_end(&mut all);
            let _ = send_err.send(all);
        });
        Lspawn { stdin: child.stdin.take(), child, reports, stderr: stderr_rx }
    }

    fn send(&mut self, slot: u32, id: &str, recipients: &[&[u8]]) {
        let request = Request {
            slot,
            id: id.as_bytes().to_vec(),
            sender: b"from@example.org".to_vec(),
            recipients: recipients.iter().map(|r| r.to_vec()).collect(),
            retry: false,
            backlog: false,
        };
        self.stdin.as_mut().expect("stdin open").write_all(&request.encode()).expect("write request");
    }

    fn report(&self) -> Report {
        self.reports.recv_timeout(LIMIT).expect("a report from quill-lspawn")
    }

    /// Deliver one recipient and return (letter, text).
    fn deliver(&mut self, id: &str, recipient: &str) -> (char, String) {
        self.send(99, id, &[recipient.as_bytes()]);
        let report = self.report();
        assert_eq!(report.slot, 99);
        assert_eq!(report.results.len(), 1);
        let result = &report.results[0];
        (result.outcome.letter() as char, String::from_utf8_lossy(&result.text).into_owned())
    }

    /// Close fd 0 and wait (bounded) for a clean exit; returns lspawn's stderr.
    fn finish(mut self) -> String {
        self.stdin = None;
        let mut status = None;
        assert!(common::wait_for(LIMIT, || {
            status = self.child.try_wait().expect("wait");
            status.is_some()
        }));
        let stderr = String::from_utf8_lossy(&self.stderr.recv_timeout(LIMIT).unwrap_or_default()).into_owned();
        assert!(status.unwrap().success(), "quill-lspawn failed: {stderr}");
        stderr
    }
}

impl Drop for Lspawn {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process's user + system CPU time in clock ticks, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} line in {text:?}"))
}

/// The argv line without the message's identity (`-i ID`, always there) and the retry mark
/// (`-r`); the tests of those two look at the whole line.
fn argv_of(text: &str) -> String {
    let raw = line(text, "argv:");
    let Some(start) = raw.find("[-i] [") else { return raw.to_string() };
    let end = raw[start + 6..].find("] ").map(|e| start + 6 + e + 2).unwrap_or(raw.len());
    format!("{}{}", &raw[..start], &raw[end..]).replacen("[-r] ", "", 1)
}

#[test]
fn argv_for_each_kind_of_recipient() {
    let world = World::private("argv");
    let (uid, gid) = runner();
    let joe = world.user_home("joe");
    let lister = world.user_home("lister");
    world.assign(&format!(
        "=joe:joe:{uid}:{gid}:{}:::\n+list-:lister:{uid}:{gid}:{}:-:x:\n=Root:joe:{uid}:{gid}:{}:::\n.\n",
        joe.display(),
        lister.display(),
        joe.display()
    ));
    world.write("aliases", b"# test aliases\npostmaster: joe,\n  \"|/bin/prog arg\"\nroot: joe\n");
    let alias_home = world.path().join("alias");
    let id = world.message("mess", "first line");
    let mut lspawn = world.lspawn_private();

    let (letter, text) = lspawn.deliver(&id, "Joe@Example.COM");
    assert_eq!(letter, 'K', "{text}");
    assert!(line(&text, "argv:").starts_with(&format!("argv: [-i] [{id}.1700000000.0.1] [--] [")), "{text}");
    assert_eq!(
        argv_of(&text),
        format!("argv: [--] [joe] [{}] [Joe] [] [] [Example.COM] [from@example.org] [./Maildir/]", joe.display())
    );
    assert_eq!(line(&text, "ids:").split(' ').nth(1), Some(uid.to_string().as_str()));
    assert_eq!(line(&text, "cwd:"), format!("cwd: {}", joe.display()));
    assert_eq!(
        line(&text, "env:"),
        format!("env: PATH=/usr/local/bin:/usr/bin:/bin QUILL_HOME={} ", world.home.path().display())
    );
    assert_eq!(line(&text, "stdin:"), "stdin: Subject: first line");

    let (_, text) = lspawn.deliver(&id, "LIST-Owner@example.com");
    assert_eq!(
        argv_of(&text),
        format!(
            "argv: [--] [lister] [{}] [LIST-Owner] [-] [xowner] [example.com] [from@example.org] [./Maildir/]",
            lister.display()
        )
    );
    assert_eq!(line(&text, "cwd:"), format!("cwd: {}", lister.display()));

    // Aliases come before assign.db (root is in both).
    for local in ["postmaster", "ROOT"] {
        let (letter, text) = lspawn.deliver(&id, &format!("{local}@example.com"));
        assert_eq!(letter, 'K', "{text}");
        let target = if local == "ROOT" { "joe" } else { "joe, \"|/bin/prog arg\"" };
        let argv = argv_of(&text);
        assert!(argv.starts_with("argv: [-A] [--] ["), "{argv}");
        assert!(
            argv.ends_with(&format!(
                "] [{}] [{local}] [] [] [example.com] [from@example.org] [{target}]",
                alias_home.display()
            )),
            "{argv}"
        );
        assert_eq!(line(&text, "cwd:"), format!("cwd: {}", alias_home.display()));
    }

    // Nobody claims it: the alias user with the local part (in lower case) as extension.
    let (letter, text) = lspawn.deliver(&id, "No.Such-User@example.com");
    assert_eq!(letter, 'K', "{text}");
    let argv = argv_of(&text);
    assert!(
        argv.ends_with(&format!(
            "] [{}] [No.Such-User] [-] [no.such-user] [example.com] [from@example.org] [./Maildir/]",
            alias_home.display()
        )),
        "{argv}"
    );
    // The message is found in todo/ as well, and a bounce's empty sender travels as "".
    let todo = world.message("todo", "from todo");
    let bounce = Request {
        slot: 5,
        id: todo.clone().into_bytes(),
        sender: vec![],
        recipients: vec![b"joe@example.com".to_vec()],
        retry: true,
        backlog: false,
    };
    lspawn.stdin.as_mut().expect("stdin").write_all(&bounce.encode()).expect("write");
    let report = lspawn.report();
    let text = String::from_utf8_lossy(&report.results[0].text).into_owned();
    assert_eq!(line(&text, "stdin:"), "stdin: Subject: from todo");
    // The message's identity (queue id, header time, nanoseconds, pid) and the retry mark
    // that make Maildir delivery happen once (audit item 14).
    assert!(line(&text, "argv:").starts_with(&format!("argv: [-i] [{todo}.1700000000.0.1] [-r] [--] [")), "{text}");
    assert!(
        argv_of(&text).ends_with("[Example.com] [] [./Maildir/]")
            || argv_of(&text).ends_with("[example.com] [] [./Maildir/]"),
        "{text}"
    );
    lspawn.finish();
}

#[test]
fn root_and_unknown_go_to_the_alias_user_without_aliases() {
    let world = World::private("rootalias");
    let id = world.message("mess", "x");
    let mut lspawn = world.lspawn_private();
    let (letter, text) = lspawn.deliver(&id, "root@example.com");
    assert_eq!(letter, 'K', "{text}");
    let argv = argv_of(&text);
    assert!(
        argv.ends_with(&format!(
            "] [{}] [root] [-] [root] [example.com] [from@example.org] [./Maildir/]",
            world.path().join("alias").display()
        )),
        "{argv}"
    );
    assert_eq!(line(&text, "ids:").split(' ').nth(1), Some(runner().0.to_string().as_str()));
    lspawn.finish();
}

#[test]
fn exit_codes_map_to_results() {
    let world = World::private("codes");
    let id = world.message("mess", "x");
    let mut lspawn = world.lspawn_private();
    for (code, letter) in [("0", 'K'), ("100", 'D'), ("111", 'Z'), ("75", 'Z'), ("1", 'Z')] {
        world.mode("");
        world.code(code);
        let (got, text) = lspawn.deliver(&id, "someone@example.com");
        assert_eq!(got, letter, "exit {code}: {text}");
        assert!(text.starts_with("argv:"), "the output is the report: {text}");
        world.mode(&format!("silent-{code}"));
        let (got, text) = lspawn.deliver(&id, "someone@example.com");
        assert_eq!(got, letter, "silent exit {code}: {text}");
        assert!(!text.trim().is_empty(), "a fixed text replaces empty output");
    }
    world.mode("kill");
    let (got, text) = lspawn.deliver(&id, "someone@example.com");
    assert_eq!(got, 'Z');
    assert!(text.contains("signal 9"), "{text}");
    lspawn.finish();
}

#[test]
fn many_deliveries_in_flight_at_once() {
    let world = World::private("many");
    world.mode("wait");
    let id = world.message("mess", "x");
    let mut lspawn = world.lspawn_private();
    const N: u32 = 20;
    for slot in 0..N {
        lspawn.send(slot, &id, &[format!("user{slot}@example.com").as_bytes()]);
    }
    let started = || {
        common::files(&world.path().join("fake")).iter().filter(|p| p.to_string_lossy().contains("started.")).count()
    };
    assert!(common::wait_for(LIMIT, || started() == N as usize), "only {} started", started());
    assert!(lspawn.reports.try_recv().is_err(), "no delivery may finish before the release");
    world.write("fake/release", b"");
    let mut slots: Vec<u32> = (0..N)
        .map(|_| {
            let r = lspawn.report();
            assert_eq!(r.results[0].outcome.letter(), b'K');
            r.slot
        })
        .collect();
    slots.sort();
    assert_eq!(slots, (0..N).collect::<Vec<_>>());
    lspawn.finish();
}

#[test]
fn output_is_truncated() {
    let world = World::private("big");
    world.mode("big");
    let id = world.message("mess", "x");
    let mut lspawn = world.lspawn_private();
    let (letter, text) = lspawn.deliver(&id, "a@example.com");
    assert_eq!(letter, 'K');
    assert!(text.starts_with("argv:"));
    assert!(text.len() <= quill::mail::proto::spawn::MAX_TEXT && text.len() > 2900, "{} bytes", text.len());
    lspawn.finish();
}

#[test]
fn bad_requests_are_refused_not_fatal() {
    let world = World::private("bad");
    let id = world.message("mess", "x");
    let mut lspawn = world.lspawn_private();
    for (bad_id, recipient, letter, words) in [
        ("999999999", "a@example.com", 'Z', "unable to open message"),
        ("12a", "a@example.com", 'Z', "bad queue id"),
        ("../../etc/passwd", "a@example.com", 'Z', "bad queue id"),
        ("", "a@example.com", 'Z', "bad queue id"),
        (id.as_str(), "no-domain", 'D', "no domain"),
        (id.as_str(), "a\nb@example.com", 'D', "bad recipient"),
        (id.as_str(), "@example.com", 'D', "empty local part"),
    ] {
        let (got, text) = lspawn.deliver(bad_id, recipient);
        assert_eq!(got, letter, "{bad_id:?} {recipient:?}: {text}");
        assert!(text.contains(words), "{bad_id:?} {recipient:?}: {text}");
    }
    // Not a message file: a symbolic link in mess/ is not followed.
    let link = world.path().join("queue/mess/424242");
    std::os::unix::fs::symlink(world.path().join("queue/mess").join(&id), &link).expect("symlink");
    let (got, text) = lspawn.deliver("424242", "a@example.com");
    assert_eq!(got, 'Z');
    assert!(text.contains("symbolic link") && text.ends_with("(#4.3.0)"), "{text}");
    // Nor a FIFO: opening one must not hang every delivery (issue 9; the old open blocked).
    let fifo = world.path().join("queue/mess/434343");
    assert!(Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()), "mkfifo");
    let (got, text) = lspawn.deliver("434343", "a@example.com");
    assert_eq!(got, 'Z', "{text}");
    assert!(text.contains("not a regular file owned by the queue"), "{text}");
    // Two recipients in one request: one temporary result each.
    lspawn.send(7, &id, &[b"a@example.com", b"b@example.com"]);
    let report = lspawn.report();
    assert_eq!((report.slot, report.results.len()), (7, 2));
    assert!(report.results.iter().all(|r| r.outcome.letter() == b'Z'));
    // A malformed frame with a slot gets a temporary result.
    lspawn.stdin.as_mut().unwrap().write_all(&quill::mail::proto::spawn::encode(&[b"8", b"1"])).unwrap();
    let report = lspawn.report();
    assert_eq!((report.slot, report.results[0].outcome.letter()), (8, b'Z'));
    // And it still delivers.
    let (got, text) = lspawn.deliver(&id, "a@example.com");
    assert_eq!(got, 'K', "{text}");
    let log = lspawn.finish();
    assert!(log.contains("quill-lspawn: warning: unable to use message 424242: it is a symbolic link"), "{log}");
    assert!(log.contains("quill-lspawn: warning: unable to use message 434343: it is not a regular file"), "{log}");
}

#[test]
fn end_of_input_waits_for_running_deliveries() {
    let world = World::private("eof");
    world.mode("wait");
    let id = world.message("mess", "x");
    let mut lspawn = world.lspawn_private();
    for slot in 0..3 {
        lspawn.send(slot, &id, &[b"a@example.com"]);
    }
    let started = || {
        common::files(&world.path().join("fake")).iter().filter(|p| p.to_string_lossy().contains("started.")).count()
    };
    assert!(common::wait_for(LIMIT, || started() == 3));
    lspawn.stdin = None;
    let busy = cpu_ticks(lspawn.child.id());
    std::thread::sleep(Duration::from_millis(500));
    assert!(lspawn.child.try_wait().expect("try_wait").is_none(), "lspawn left before its children finished");
    // Regression: the closed input must not make poll spin while children run.
    let spent = cpu_ticks(lspawn.child.id()) - busy;
    assert!(spent < 10, "quill-lspawn used {spent} ticks of CPU while idle");
    world.write("fake/release", b"");
    for _ in 0..3 {
        assert_eq!(lspawn.report().results[0].outcome.letter(), b'K');
    }
    lspawn.finish();
}

#[test]
fn aliases_and_assign_are_reloaded_when_changed() {
    let world = World::private("reload");
    let (uid, gid) = runner();
    let ginny = world.user_home("ginny");
    let id = world.message("mess", "x");
    let mut lspawn = world.lspawn_private();
    let user_of = |text: &str| argv_of(text).split(' ').nth(2).unwrap_or("").to_string();
    let who = |lspawn: &mut Lspawn, rcpt: &str| {
        let (letter, text) = lspawn.deliver(&id, rcpt);
        (letter, text)
    };
    let (_, text) = who(&mut lspawn, "fred@example.com");
    assert!(argv_of(&text).contains("[fred] [-] [fred]"), "{text}");

    world.write("aliases", b"fred: ginny\n");
    let (_, text) = who(&mut lspawn, "fred@example.com");
    assert!(argv_of(&text).starts_with("argv: [-A]"), "{text}");

    world.assign(&format!("=ginny:ginny:{uid}:{gid}:{}:::\n.\n", ginny.display()));
    let (_, text) = who(&mut lspawn, "ginny@example.com");
    assert_eq!(user_of(&text), "[ginny]", "{text}");

    // A broken aliases file defers everything (naming the line) until it is fixed.
    world.write("aliases", b"fred: ginny\nbroken line\n");
    let (letter, text) = who(&mut lspawn, "ginny@example.com");
    assert_eq!(letter, 'Z');
    assert!(text.contains("line 2"), "{text}");
    world.write("aliases", b"fred: ginny\nFRED: someone else\n");
    let (letter, text) = who(&mut lspawn, "ginny@example.com");
    assert_eq!(letter, 'K', "{text}");

    // A corrupt assign.db defers too; removing it falls back to the password file.
    world.write("users/assign.db", b"not a database");
    let (letter, text) = who(&mut lspawn, "ginny@example.com");
    assert_eq!(letter, 'Z');
    assert!(text.contains("assign.db"), "{text}");
    std::fs::remove_file(world.path().join("users/assign.db")).expect("rm");
    let (letter, text) = who(&mut lspawn, "ginny@example.com");
    assert_eq!(letter, 'K', "{text}");
    assert!(argv_of(&text).contains("[ginny] [-] [ginny]"), "{text}");
    let log = lspawn.finish();
    assert!(log.contains("warning: aliases line 2: duplicate name fred"), "{log}");
}

#[test]
fn refuses_other_uids_and_root_when_unprivileged() {
    let world = World::private("refuse");
    let (uid, gid) = runner();
    let other = world.user_home("other");
    world.assign(&format!(
        "=other:other:{}:{gid}:{}:::\n=zero:root:0:0:{}:::\n=me:me:{uid}:{gid}:/nonexistent/home:::\n.\n",
        uid + 1,
        other.display(),
        other.display()
    ));
    let id = world.message("mess", "x");
    let mut lspawn = world.lspawn_private();
    let (letter, text) = lspawn.deliver(&id, "other@example.com");
    assert_eq!((letter, text.as_str()), ('Z', "quill-lspawn is not running as root (#4.3.0)"));
    let (letter, text) = lspawn.deliver(&id, "zero@example.com");
    assert_eq!((letter, text.as_str()), ('Z', "not allowed to deliver as root (#4.3.0)"));
    let (letter, text) = lspawn.deliver(&id, "me@example.com");
    assert_eq!(letter, 'Z');
    assert!(text.contains("/nonexistent/home"), "{text}");
    lspawn.finish();
}

#[test]
fn newu_reports_bad_lines_and_keeps_the_old_database() {
    let world = World::private("newu");
    let missing = common::run(world.path(), "quill-newu", &[], b"");
    assert_eq!(missing.status.code(), Some(111));
    world.assign("=a:a:1:1:/a:::\n.\n");
    let db = world.path().join("users/assign.db");
    let good = std::fs::read(&db).expect("assign.db");
    for (text, words) in [
        ("=a:a:1:1:/a:::\n=b:b:1:1:/b:::\n+c:c:x:1:/c:::\n.\n", "line 3"),
        ("=a:a:1:1:/a:::\n", "dot"),
        ("=a:a:1:1:/a::\n.\n", "line 1"),
    ] {
        world.write("users/assign", text.as_bytes());
        let out = common::run(world.path(), "quill-newu", &[], b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(111), "{text:?}");
        assert!(stderr.starts_with("quill-newu: fatal: ") && stderr.contains(words), "{stderr}");
        assert_eq!(std::fs::read(&db).expect("old db"), good, "the old database must stay");
    }
    assert!(!world.path().join("users/assign.db.tmp").exists());
    let usage = common::run(world.path(), "quill-newu", &["extra"], b"");
    assert_eq!(usage.status.code(), Some(100));
}

/// The delivery process is forked from quill-lspawn and runs quill-local's code without an
/// exec, with exactly what the quill-local program got: as root it drops to the user (here
/// `nobody`), otherwise lspawn's own user.
#[test]
fn linked_deliveries_are_forked_without_exec() {
    let world = World::linked("linked");
    let (uid, gid) = runner();
    let home = world.probe_home("joe", Some((uid, gid)));
    let home_shown = home.display();
    world.assign(&format!("=joe:joe:{uid}:{gid}:{home_shown}:::\n+joe-:joe:{uid}:{gid}:{home_shown}:-::\n.\n"));
    let id = world.message("mess", "x");
    // As root lspawn stays root and becomes the user in the child; else it is the user.
    let mut lspawn = world.lspawn_linked(None);
    let probed = probe_delivery(&mut lspawn, &id, "joe@example.com", &home);
    check_forked(&probed, &world, &home, "joe@example.com");
    // What makes its fork sound (src/base/sys.rs): quill-lspawn has one thread.
    let status = std::fs::read_to_string(format!("/proc/{}/status", lspawn.child.id())).expect("status");
    assert_eq!(status_values(&status, "Threads:"), vec![1], "{status}");
    assert_eq!(status_values(&probed.status, "Uid:"), vec![uid as u64; 4], "{}", probed.status);
    assert_eq!(status_values(&probed.status, "Gid:"), vec![gid as u64; 4], "{}", probed.status);
    if common::is_root() {
        assert_eq!(status_values(&probed.status, "CapEff:"), vec![0], "{}", probed.status);
        // The setuid made the child not dumpable: the user cannot read what it holds of
        // quill-lspawn's memory (here its environ; the same rule guards /proc/PID/mem).
        assert_eq!(probed.parent_readable, "unreadable");
    }
    // Failures still come back as quill-local's words and exit codes, through the same pipe.
    let (letter, text) = lspawn.deliver(&id, "joe-nothing@example.com");
    assert_eq!((letter, text.trim_end()), ('D', "Sorry, no mailbox here by that name. (#5.1.1)"));
    // The identity (-i) reaches the linked code: the same message again is not a second copy.
    let (letter, text) = lspawn.deliver(&id, "joe@example.com");
    assert_eq!(letter, 'K', "{text}");
    assert_eq!(common::files(&home.join("Maildir/new")).len(), 1, "delivered once");
    // control/timeoutprogram (-t, read again when it changes) reaches it too: the program is
    // killed after a second.
    world.write("control/timeoutprogram", b"1\n");
    std::fs::write(home.join(".qmail-slow"), "|exec sleep 20\n").expect(".qmail-slow");
    std::os::unix::fs::chown(home.join(".qmail-slow"), Some(uid), Some(gid)).expect("chown");
    let (letter, text) = lspawn.deliver(&id, "joe-slow@example.com");
    assert_eq!(letter, 'Z', "{text}");
    assert!(text.contains("Program ran longer than 1 seconds"), "{text}");
    let stderr = lspawn.finish();
    assert!(!stderr.contains("fatal"), "{stderr}");
}

/// Counted with strace when it is there: a delivery by a forked child makes no execve (the only
/// one is quill-lspawn's own start), where the exec path makes one per delivery.
#[test]
fn linked_deliveries_make_no_execve() {
    if common::skip_without("strace") {
        return;
    }
    let world = World::linked("noexec");
    let (uid, gid) = runner();
    let home = world.probe_home("joe", Some((uid, gid)));
    std::fs::remove_file(home.join(".qmail")).expect("no program: the default delivery");
    world.assign(&format!("=joe:joe:{uid}:{gid}:{}:::\n.\n", home.display()));
    let trace = world.path().join("fake/trace");
    let linked = world.linked_command(None);
    let mut command = Command::new("strace");
    command.arg("-f").arg("-qq").arg("-e").arg("trace=execve").arg("-o").arg(&trace);
    command.arg(linked.get_program()).args(linked.get_args());
    command.env("QUILL_HOME", world.path());
    let mut lspawn = Lspawn::start(command);
    for n in 0..3 {
        let id = world.message("mess", &format!("m{n}"));
        let (letter, text) = lspawn.deliver(&id, "joe@example.com");
        assert_eq!(letter, 'K', "{text}");
    }
    lspawn.finish();
    let traced = std::fs::read_to_string(&trace).expect("trace");
    let execs = traced.lines().filter(|l| l.contains("execve(") && !l.contains("resumed")).count();
    assert_eq!(execs, 1, "only quill-lspawn itself is exec'd:\n{traced}");
    assert_eq!(common::files(&home.join("Maildir/new")).len(), 3);
}

/// Scratch users and groups made with useradd, removed when dropped.
struct Scratch {
    users: Vec<String>,
    groups: Vec<String>,
}

impl Scratch {
    fn run(args: &[&str]) -> bool {
        Command::new(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for user in &self.users {
            Scratch::run(&["userdel", user]);
        }
        for group in &self.groups {
            Scratch::run(&["groupdel", group]);
        }
    }
}

fn ids_of(name: &str) -> (u32, u32) {
    let user = nix::unistd::User::from_name(name).ok().flatten().unwrap_or_else(|| panic!("user {name}"));
    (user.uid.as_raw(), user.gid.as_raw())
}

#[test]
fn as_root_deliveries_run_with_the_users_credentials() {
    if !common::is_root() {
        common::skip("not root, so real credentials are not checked");
        return;
    }
    if common::skip_without("useradd") && common::skip_without("/usr/sbin/useradd") {
        return;
    }
    let world = World::new("root", None);
    let tag = std::process::id() % 100_000;
    let (user, group) = (format!("qlsp{tag}u"), format!("qlsp{tag}g"));
    let mut scratch = Scratch { users: vec![], groups: vec![] };
    let home = world.path().join("homes").join(&user);
    assert!(Scratch::run(&["groupadd", &group]), "groupadd");
    scratch.groups.push(group.clone());
    assert!(
        Scratch::run(&[
            "useradd",
            "-M",
            "-U",
            "-G",
            &group,
            "-d",
            &home.display().to_string(),
            "-s",
            "/bin/false",
            &user
        ]),
        "useradd"
    );
    scratch.users.push(user.clone());
    scratch.groups.push(user.clone());
    let (uid, gid) = ids_of(&user);
    let extra = nix::unistd::Group::from_name(&group).ok().flatten().expect("group").gid.as_raw();
    std::fs::create_dir_all(&home).expect("home");
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).expect("chown home");
    if nix::unistd::User::from_name("alias").ok().flatten().is_none() {
        assert!(
            Scratch::run(&["useradd", "-M", "-U", "-d", "/nonexistent", "-s", "/bin/false", "alias"]),
            "useradd alias"
        );
        scratch.users.push("alias".into());
        scratch.groups.push("alias".into());
    }
    let (alias_uid, alias_gid) = ids_of("alias");
    world.assign(&format!("=zero:root:0:0:{}:::\n.\n", home.display()));
    world.write("aliases", format!("listed: {user}\n").as_bytes());
    let id = world.message("mess", "x");
    let mut lspawn = world.lspawn(None);

    // The password rule, with an extension; the user's uid, gid and supplementary group.
    let (letter, text) = lspawn.deliver(&id, &format!("{}-Ext@example.com", user.to_uppercase()));
    assert_eq!(letter, 'K', "{text}");
    assert!(argv_of(&text).starts_with(&format!("argv: [--] [{user}] [{}] [", home.display())), "{text}");
    assert!(argv_of(&text).contains("] [-] [ext] [example.com]"), "{text}");
    let ids = line(&text, "ids:");
    assert!(ids.starts_with(&format!("ids: {uid} {gid} [")), "{ids}");
    let groups: Vec<u32> = ids.split(['[', ']', ' ']).filter_map(|g| g.parse().ok()).skip(2).collect();
    let mut groups_sorted = groups.clone();
    groups_sorted.sort();
    let mut expected = vec![gid, extra];
    expected.sort();
    assert_eq!(groups_sorted, expected, "{ids}");
    assert_eq!(line(&text, "cwd:"), format!("cwd: {}", home.display()));

    // root is never delivered as root: it goes to the alias user; uid 0 in assign is refused.
    let (letter, text) = lspawn.deliver(&id, "root@example.com");
    assert_eq!(letter, 'K', "{text}");
    assert!(line(&text, "ids:").starts_with(&format!("ids: {alias_uid} {alias_gid} ")), "{text}");
    assert!(argv_of(&text).contains("] [root] [-] [root] ["), "{text}");
    let (letter, text) = lspawn.deliver(&id, "zero@example.com");
    assert_eq!((letter, text.as_str()), ('Z', "not allowed to deliver as root (#4.3.0)"));

    // An alias runs as the alias user.
    let (letter, text) = lspawn.deliver(&id, "listed@example.com");
    assert_eq!(letter, 'K', "{text}");
    assert!(line(&text, "ids:").starts_with(&format!("ids: {alias_uid} {alias_gid} ")), "{text}");
    assert!(argv_of(&text).ends_with(&format!("[{user}]")), "{text}");
    lspawn.finish();

    // The same user through a forked child (no -l): uid, gid and every group as above, seen
    // both in the child's own /proc status and by its program.
    let probe = world.probe_home(&user, Some((uid, gid)));
    assert_eq!(probe, home);
    let mut lspawn = world.lspawn_linked(None);
    let recipient = format!("{user}@example.com");
    let probed = probe_delivery(&mut lspawn, &id, &recipient, &home);
    check_forked(&probed, &world, &home, &recipient);
    for status in [&probed.status, &probed.program_status] {
        assert_eq!(status_values(status, "Uid:"), vec![uid as u64; 4], "{status}");
        assert_eq!(status_values(status, "Gid:"), vec![gid as u64; 4], "{status}");
        let mut groups = status_values(status, "Groups:");
        groups.sort();
        let mut expected = vec![gid as u64, extra as u64];
        expected.sort();
        assert_eq!(groups, expected, "{status}");
        assert_eq!(status_values(status, "CapEff:"), vec![0], "{status}");
    }
    assert_eq!(probed.parent_readable, "unreadable");
    lspawn.finish();
    drop(scratch);
}

/// Not a check: measures what quill-lspawn itself costs per delivery (its own CPU time, read
/// from /proc, and the wall time for a stream of deliveries kept 20 deep) with /bin/true as
/// quill-local. Run with `cargo test --release --test lspawn -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_per_delivery_overhead() {
    let modes: Vec<bool> = if common::is_root() { vec![false, true] } else { vec![false] };
    for as_root in modes {
        let world = if as_root { World::new("bench", None) } else { World::private("bench") };
        let (uid, gid) = if as_root { ids_of("nobody") } else { runner() };
        let home = world.user_home("bench");
        if as_root {
            std::os::unix::fs::chown(&home, Some(uid), Some(gid)).expect("chown");
        }
        world.assign(&format!("+:bench:{uid}:{gid}:{}:-::\n.\n", home.display()));
        let id = world.message("mess", "x");
        let mut command = Command::new(common::bin("quill-lspawn"));
        command.arg("-l").arg("/bin/true").arg("./Maildir/").env("QUILL_HOME", world.path());
        if !as_root {
            if let Some((u, g)) = world.owner {
                command.uid(u).gid(g);
            }
        }
        let mut lspawn = Lspawn::start(command);
        const TOTAL: u32 = 3000;
        const DEPTH: u32 = 20;
        let start = std::time::Instant::now();
        for slot in 0..DEPTH {
            lspawn.send(slot, &id, &[format!("u{slot}@example.com").as_bytes()]);
        }
        for n in DEPTH..TOTAL + DEPTH {
            let report = lspawn.report();
            assert_eq!(report.results[0].outcome.letter(), b'K', "{:?}", report);
            if n < TOTAL {
                lspawn.send(n, &id, &[format!("u{n}@example.com").as_bytes()]);
            }
        }
        let wall = start.elapsed();
        let ticks = cpu_ticks(lspawn.child.id());
        let hz = 100.0;
        eprintln!(
            "quill-lspawn ({}): {TOTAL} deliveries in {:.3} s = {:.0}/s; lspawn's own CPU {:.1} µs per delivery",
            if as_root { "root, fork + setuid" } else { "unprivileged, posix_spawn" },
            wall.as_secs_f64(),
            TOTAL as f64 / wall.as_secs_f64(),
            ticks as f64 / hz * 1e6 / TOTAL as f64
        );
        lspawn.finish();
    }
}

/// Audit item 4: quill-lspawn runs as root and reads message files in directories that the
/// queue's owner can change. With `queue/mess` swapped for a link to a directory of root's,
/// root's files there must not pass for messages and reach a user on fd 0.
#[test]
fn as_root_a_mess_directory_swapped_for_a_link_gives_no_file_of_roots() {
    if !common::is_root() {
        common::skip("quill-lspawn only reads the queue as root when it runs as root");
        return;
    }
    let (uid, gid) = runner();
    // The home and queue belong to `nobody`, standing for quillq.
    let world = World::new("mess-link", Some((uid, gid)));
    let id = world.message("mess", "root's secret");
    let outside = common::TempDir::new("lspawn-outside");
    std::fs::copy(world.path().join("queue/mess").join(&id), outside.path().join(&id)).expect("copy");
    let mess = world.path().join("queue/mess");
    std::fs::rename(&mess, world.path().join("queue/mess.real")).expect("rename");
    std::os::unix::fs::symlink(outside.path(), &mess).expect("symlink");
    world.chown(&mess);
    let home = world.user_home("someone");
    world.assign(&format!("=someone:nobody:{uid}:{gid}:{}:::\n.\n", home.display()));
    let mut lspawn = world.lspawn(None);
    let (letter, text) = lspawn.deliver(&id, "someone@example.com");
    assert_eq!(letter, 'Z', "{text}");
    assert!(text.contains("not a regular file owned by the queue"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    lspawn.finish();
}

#[test]
fn program_limit_and_untrusted_aliases_reach_quill_local() {
    let world = World::private("trust");
    world.write("aliases", b"fred: \"|/bin/prog\", ginny\n");
    let id = world.message("mess", "x");
    // No control/timeoutprogram: quill-local keeps its own default; a trusted aliases file.
    let mut lspawn = world.lspawn_private();
    let (letter, text) = lspawn.deliver(&id, "fred@example.com");
    assert_eq!(letter, 'K', "{text}");
    assert!(argv_of(&text).starts_with("argv: [-A] [--]"), "{text}");
    drop(lspawn);

    world.write("control/timeoutprogram", b"7\n");
    let mut lspawn = world.lspawn_private();
    let (_, text) = lspawn.deliver(&id, "joe@example.com");
    assert!(argv_of(&text).starts_with("argv: [-t] [7] [--]"), "{text}");
    drop(lspawn);

    if !common::is_root() {
        common::skip("not root, so the aliases file cannot belong to someone else");
        return;
    }
    // An aliases file that belongs to neither root, the alias user nor lspawn's own uid: its
    // programs must not run as the alias user (-F: addresses only).
    std::os::unix::fs::chown(world.path().join("aliases"), Some(54321), None).expect("chown");
    let mut lspawn = world.lspawn_private();
    let (_, text) = lspawn.deliver(&id, "fred@example.com");
    assert!(argv_of(&text).starts_with("argv: [-t] [7] [-F] [-A] [--]"), "{text}");
    let (_, text) = lspawn.deliver(&id, "joe@example.com");
    assert!(!argv_of(&text).contains("[-F]"), "{text}");
    drop(lspawn);

    // users/assign.db says which uid runs each delivery: someone else's is not used.
    let (uid, gid) = runner();
    let joe = world.user_home("joe");
    world.assign(&format!("=joe:joe:{uid}:{gid}:{}:::\n.\n", joe.display()));
    std::os::unix::fs::chown(world.path().join("users/assign.db"), Some(54321), None).expect("chown");
    let mut lspawn = world.lspawn_private();
    let (letter, text) = lspawn.deliver(&id, "joe@example.com");
    assert_eq!(letter, 'Z', "{text}");
    assert!(text.contains("unable to trust") && text.contains("belongs to uid 54321"), "{text}");
}
