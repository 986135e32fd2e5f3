//! quill-local, run for real as the current user: fd 0 is a real queue file (header written
//! with `quill::mail::queuefile::Header`) positioned at the first byte of the message, exactly as
//! quill-lspawn hands it over.

mod common;

use common::{bin, files, wait_for, TempDir};
use quill::mail::envelope::Envelope;
use quill::mail::queuefile::{read_header, Header};
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An address of another recipient in the same queue file: it must never show up anywhere.
const OTHER: &str = "secret-other@elsewhere.example";
const SENDER: &str = "sender@origin.example";
const DOMAIN: &str = "example.com";

const MESSAGE: &[u8] = b"Received: (quill-queue 1 invoked by uid 0); 25 Nov 2026 13:59:01 +0000\n\
Subject: test\n\
\n\
From the start of a line\n\
>From an already quoted line\n\
body\n";

/// A test world: a temporary directory with a home (mode 0755) and a queue file.
struct World {
    dir: TempDir,
}

impl World {
    fn new(tag: &str) -> World {
        let dir = TempDir::new(&format!("local-{tag}"));
        let world = World { dir };
        fs::create_dir(world.home()).expect("home");
        fs::set_permissions(world.home(), fs::Permissions::from_mode(0o755)).expect("chmod home");
        world
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write a file in the home directory with the given mode.
    fn write(&self, name: &str, contents: &[u8], mode: u32) {
        let path = self.home().join(name);
        fs::write(&path, contents).expect("write file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn maildir(&self, name: &str) -> PathBuf {
        let dir = self.home().join(name);
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(dir.join(sub)).expect("maildir");
        }
        dir
    }

    /// A queue file holding `message` for two recipients, opened and positioned at the first
    /// byte of the message by reading its header, as quill-lspawn does.
    fn queue_file(&self, sender: &str, message: &[u8]) -> File {
        let header = Header {
            uid: 0,
            pid: 1,
            time: 1_795_615_141,
            nanos: 0,
            envelope: Envelope {
                sender: sender.as_bytes().to_vec(),
                recipients: vec![b"joe@example.com".to_vec(), OTHER.as_bytes().to_vec()],
            },
            dsn: Default::default(),
        };
        let path = self.path("queue-file");
        let mut bytes = header.encode();
        bytes.extend_from_slice(message);
        fs::write(&path, &bytes).expect("write queue file");
        let mut file = File::open(&path).expect("open queue file");
        let (_, offset) = read_header(&mut file).expect("read header");
        file.seek(SeekFrom::Start(offset)).expect("seek");
        file
    }

    /// Start quill-local: `flags`, then `--` and the eight arguments.
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &self,
        flags: &[&str],
        user: &str,
        local: &str,
        dash: &str,
        ext: &str,
        sender: &str,
        default: &str,
        env: &[(&str, &str)],
        message: &[u8],
    ) -> Child {
        let home = self.home();
        let mut command = Command::new(bin("quill-local"));
        command
            .args(flags)
            .arg("--")
            .args([user, home.to_str().expect("utf-8 home"), local, dash, ext, DOMAIN, sender, default])
            .current_dir(&home)
            .env_remove("QMAILQUEUE")
            .env_remove("DEFAULT")
            .stdin(Stdio::from(self.queue_file(sender, message)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        command.spawn().expect("run quill-local")
    }

    /// Run quill-local for `local@example.com`; returns the exit code and the report.
    fn run(
        &self,
        flags: &[&str],
        local: &str,
        dash: &str,
        ext: &str,
        default: &str,
        env: &[(&str, &str)],
    ) -> (i32, String) {
        self.run_message(flags, local, dash, ext, SENDER, default, env, MESSAGE)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_message(
        &self,
        flags: &[&str],
        local: &str,
        dash: &str,
        ext: &str,
        sender: &str,
        default: &str,
        env: &[(&str, &str)],
        message: &[u8],
    ) -> (i32, String) {
        let child = self.spawn(flags, "joe", local, dash, ext, sender, default, env, message);
        let out = child.wait_with_output().expect("wait");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// A QMAILQUEUE stand-in that records the message (fd 0) and the envelope (fd 1) and
    /// counts its runs; exits with `code`.
    fn fake_queue(&self, code: i32) -> String {
        let script = self.path("fake-queue");
        let d = self.dir.path().display();
        let text = format!(
            "#!/bin/sh\ncat > {d}/qq-message\ncat <&1 > {d}/qq-envelope\necho run >> {d}/qq-runs\nexit {code}\n"
        );
        common::write_script(&script, text);
        script.to_str().expect("utf-8").to_string()
    }
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The one file in `dir`/new, after checking that tmp/ is empty.
fn only_message(dir: &Path) -> Vec<u8> {
    assert!(files(&dir.join("tmp")).is_empty(), "tmp/ must be empty after a delivery");
    let new = files(&dir.join("new"));
    assert_eq!(new.len(), 1, "exactly one message in {}/new", dir.display());
    read(&new[0])
}

#[test]
fn maildir_delivery() {
    let w = World::new("maildir");
    let maildir = w.maildir("Maildir");
    let (code, report) = w.run(&[], "joe", "", "", "./Maildir/", &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report.trim(), "did 1+0+0");
    let mail = only_message(&maildir);
    let mut want = format!("Return-Path: <{SENDER}>\nDelivered-To: joe@{DOMAIN}\n").into_bytes();
    want.extend_from_slice(MESSAGE);
    assert_eq!(mail, want, "prefix lines, then the message exactly, no queue header");
    assert!(!contains(&mail, OTHER.as_bytes()) && !contains(&mail, b"\0"));
    let name = files(&maildir.join("new"))[0].file_name().expect("name").to_string_lossy().into_owned();
    assert!(name.contains(".M") && name.contains('P'), "unique name {name}");
    let mode = fs::metadata(&files(&maildir.join("new"))[0]).expect("stat").permissions().mode();
    assert_eq!(mode & 0o077, 0, "a mail file is private");
}

#[test]
fn large_message_maildir_and_program() {
    let w = World::new("large");
    let maildir = w.maildir("Maildir");
    let mut message = b"Subject: big\n\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\n";
    while message.len() < 3 * 1024 * 1024 {
        message.extend_from_slice(line);
    }
    w.write(".qmail", b"./Maildir/\n|cat > ../program-copy\n./mbox\n", 0o644);
    let (code, report) = w.run_message(&[], "joe", "", "", SENDER, "", &[], &message);
    assert_eq!(code, 0, "{report}");
    let mail = only_message(&maildir);
    let mut want = format!("Return-Path: <{SENDER}>\nDelivered-To: joe@{DOMAIN}\n").into_bytes();
    want.extend_from_slice(&message);
    assert!(mail == want, "the whole message, once");
    assert_eq!(read(&w.path("program-copy")), message);
    let mbox = read(&w.home().join("mbox"));
    let mut tail = format!("Return-Path: <{SENDER}>\nDelivered-To: joe@{DOMAIN}\n").into_bytes();
    tail.extend_from_slice(&message);
    tail.push(b'\n');
    assert!(mbox.starts_with(b"From ") && mbox.ends_with(&tail), "the whole message in the mbox");
    assert_eq!(mbox.iter().position(|&b| b == b'\n').map(|n| n + 1 + tail.len()), Some(mbox.len()));
}

#[test]
fn mbox_delivery_appends_and_quotes() {
    let w = World::new("mbox");
    let (code, report) = w.run(&[], "joe", "", "", "./mbox", &[]);
    assert_eq!((code, report.trim()), (0, "did 1+0+0"), "{report}");
    let (code, report) =
        w.run_message(&[], "joe", "", "", "", "./mbox", &[], b"Subject: second\n\nFrom x\nno newline at the end");
    assert_eq!(code, 0, "{report}");
    let mbox = read(&w.home().join("mbox"));
    let text = String::from_utf8_lossy(&mbox);
    let messages: Vec<&str> = text.split("\n\nFrom ").collect();
    assert_eq!(messages.len(), 2, "two messages separated by a blank line: {text}");
    assert!(text.starts_with(&format!("From {SENDER} ")));
    assert!(text.contains(&format!("Return-Path: <{SENDER}>\nDelivered-To: joe@{DOMAIN}\nReceived: ")));
    assert!(text.contains("\n>From the start of a line\n>>From an already quoted line\nbody\n\n"));
    assert!(messages[1].starts_with("MAILER-DAEMON "), "empty sender: {}", messages[1]);
    assert!(text.contains("Return-Path: <>\n"));
    assert!(text.ends_with("\n>From x\nno newline at the end\n\n"));
    assert!(!text.contains(OTHER));
    assert!(!w.home().join("mbox.lock").exists(), "the dot-lock is removed");
    let mode = fs::metadata(w.home().join("mbox")).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn mbox_waits_for_fcntl_lock() {
    let w = World::new("mboxlock");
    let path = w.home().join("mbox");
    fs::write(&path, b"").expect("create mbox");
    let mut holder = fs::OpenOptions::new().append(true).open(&path).expect("open mbox");
    let lock =
        libc::flock { l_type: libc::F_WRLCK as i16, l_whence: libc::SEEK_SET as i16, l_start: 0, l_len: 0, l_pid: 0 };
    nix::fcntl::fcntl(std::os::fd::AsRawFd::as_raw_fd(&holder), nix::fcntl::FcntlArg::F_SETLK(&lock)).expect("lock");
    let child = w.spawn(&[], "joe", "joe", "", "", SENDER, "./mbox", &[], MESSAGE);
    // quill-local takes the dot-lock first, then waits for the fcntl lock we hold.
    assert!(wait_for(Duration::from_secs(20), || w.home().join("mbox.lock").exists()), "quill-local took the dot-lock");
    std::thread::sleep(Duration::from_millis(300));
    holder.write_all(b"written by the lock holder\n").expect("write");
    drop(holder); // releases the fcntl lock
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let text = String::from_utf8_lossy(&read(&path)).into_owned();
    assert!(
        text.starts_with("written by the lock holder\nFrom sender@origin.example "),
        "delivered after the lock was released: {text}"
    );
}

#[test]
fn stale_dotlock_is_removed_fresh_one_waited_for() {
    let w = World::new("dotlock");
    let lock = w.home().join("mbox.lock");
    fs::write(&lock, b"").expect("lock");
    let old = std::time::SystemTime::now() - Duration::from_secs(600);
    File::options().write(true).open(&lock).expect("open").set_modified(old).expect("age the lock");
    let (code, report) = w.run(&[], "joe", "", "", "./mbox", &[]);
    assert_eq!(code, 0, "{report}");
    assert!(!lock.exists());
    // A fresh dot-lock makes quill-local wait; removing it lets the delivery through.
    fs::write(&lock, b"").expect("lock");
    let child = w.spawn(&[], "joe", "joe", "", "", SENDER, "./mbox", &[], MESSAGE);
    std::thread::sleep(Duration::from_millis(300));
    let before = read(&w.home().join("mbox"));
    fs::remove_file(&lock).expect("unlock");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(before.len() * 2, read(&w.home().join("mbox")).len(), "nothing written while the dot-lock was held");
}

#[test]
fn program_environment_and_input() {
    let w = World::new("program");
    w.write(".qmail-list-default", b"|env > ../env; pwd > ../cwd; cat > ../stdin\n", 0o644);
    let (code, report) = w.run(&[], "joe-list-Foo-bar", "-", "list-Foo-bar", "./Maildir/", &[]);
    assert_eq!((code, report.trim()), (0, "did 0+0+1"), "{report}");
    assert_eq!(read(&w.path("stdin")), MESSAGE, "the program reads exactly the message");
    let env = String::from_utf8_lossy(&read(&w.path("env"))).into_owned();
    let home = w.home().display().to_string();
    for want in [
        "USER=joe".to_string(),
        format!("HOME={home}"),
        "LOCAL=joe-list-Foo-bar".to_string(),
        "HOST=example.com".to_string(),
        "HOST2=example".to_string(),
        "HOST3=example".to_string(),
        "RECIPIENT=joe-list-Foo-bar@example.com".to_string(),
        format!("SENDER={SENDER}"),
        format!("NEWSENDER={SENDER}"),
        "EXT=list-Foo-bar".to_string(),
        "EXT2=Foo-bar".to_string(),
        "EXT3=bar".to_string(),
        "EXT4=".to_string(),
        "DEFAULT=Foo-bar".to_string(),
        "DTLINE=Delivered-To: joe-list-Foo-bar@example.com\n".to_string(),
        format!("RPLINE=Return-Path: <{SENDER}>\n"),
        format!("UFLINE=From {SENDER} "),
    ] {
        assert!(env.contains(want.as_str()), "missing {want:?} in\n{env}");
    }
    assert_eq!(read(&w.path("cwd")), format!("{home}\n").into_bytes(), "runs in the home directory");
}

#[test]
fn program_exit_codes() {
    let w = World::new("exits");
    let maildir = w.maildir("Maildir");
    let cases: [(&str, i32, usize); 7] = [
        ("|exit 0\n./Maildir/\n", 0, 1),
        ("|exit 99\n./Maildir/\n", 0, 0),
        ("|exit 100\n./Maildir/\n", 100, 0),
        ("|exit 64\n", 100, 0),
        ("|exit 111\n./Maildir/\n", 111, 0),
        ("|exit 1\n", 111, 0),
        ("|kill -9 $$\n", 111, 0),
    ];
    for (dotfile, want, delivered) in cases {
        for f in files(&maildir.join("new")) {
            fs::remove_file(f).expect("clean");
        }
        w.write(".qmail", dotfile.as_bytes(), 0o644);
        let (code, report) = w.run(&[], "joe", "", "", "", &[]);
        assert_eq!(code, want, "{dotfile:?}: {report}");
        assert_eq!(files(&maildir.join("new")).len(), delivered, "{dotfile:?}");
        if code != 0 {
            assert!(report.contains("(#"), "a failure report ends with a status code: {report}");
        }
    }
    // Exit 99 stops the lines after it but forwards collected before it still go out.
    let queue = w.fake_queue(0);
    w.write(".qmail", b"&early@x.example\n|exit 99\n&late@x.example\n", 0o644);
    let (code, report) = w.run(&[], "joe", "", "", "", &[("QMAILQUEUE", &queue)]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(read(&w.path("qq-envelope")), format!("F{SENDER}\0Tearly@x.example\0\0").into_bytes());
}

#[test]
fn forwarding_makes_one_injection() {
    let w = World::new("forward");
    let queue = w.fake_queue(0);
    w.write(".qmail", b"# forwards\n&alice@a.example\nbob\n&carol@c.example\n", 0o644);
    let (code, report) = w.run(&[], "joe", "", "", "", &[("QMAILQUEUE", &queue)]);
    assert_eq!(code, 0, "{report}");
    assert!(report.starts_with("did 0+3+0 qp "), "{report}");
    assert_eq!(read(&w.path("qq-runs")), b"run\n", "one injection for all targets");
    let envelope = read(&w.path("qq-envelope"));
    assert_eq!(envelope, format!("F{SENDER}\0Talice@a.example\0Tbob@{DOMAIN}\0Tcarol@c.example\0\0").into_bytes());
    let mut want = format!("Delivered-To: joe@{DOMAIN}\n").into_bytes();
    want.extend_from_slice(MESSAGE);
    assert_eq!(read(&w.path("qq-message")), want);

    // A bounce keeps its empty sender.
    let (code, report) = w.run_message(&[], "joe", "", "", "", "", &[("QMAILQUEUE", &queue)], MESSAGE);
    assert_eq!(code, 0, "{report}");
    assert!(read(&w.path("qq-envelope")).starts_with(b"F\0Talice"));

    // .qmail-owner makes the list owner the sender of forwards.
    w.write(".qmail-owner", b"&owner@x.example\n", 0o644);
    let (code, _) = w.run(&[], "joe", "", "", "", &[("QMAILQUEUE", &queue)]);
    assert_eq!(code, 0);
    assert!(read(&w.path("qq-envelope")).starts_with(format!("Fjoe-owner@{DOMAIN}\0").as_bytes()));
    fs::remove_file(w.home().join(".qmail-owner")).expect("rm");

    // The queue's answer decides the outcome.
    for (qq, want) in [(31, 100), (71, 111), (53, 111)] {
        let queue = w.fake_queue(qq);
        let (code, report) = w.run(&[], "joe", "", "", "", &[("QMAILQUEUE", &queue)]);
        assert_eq!(code, want, "qq exit {qq}: {report}");
        assert!(report.contains("(#"), "{report}");
    }
}

#[test]
fn extension_files_and_default() {
    let w = World::new("ext");
    let exact = w.maildir("exact");
    w.write(".qmail-foo:bar", b"./exact/\n", 0o644);
    let (code, report) = w.run(&[], "joe-Foo.Bar", "-", "Foo.Bar", "", &[]);
    assert_eq!(code, 0, "{report}");
    only_message(&exact);

    w.write(".qmail-a-default", b"|echo \"$DEFAULT\" > ../default-a\n", 0o644);
    w.write(".qmail-default", b"|echo \"$DEFAULT\" > ../default-all\n", 0o644);
    let (code, report) = w.run(&[], "joe-a-b-c", "-", "a-b-c", "", &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(read(&w.path("default-a")), b"b-c\n", "the most specific -default file wins");
    assert!(!w.path("default-all").exists());
    let (code, _) = w.run(&[], "joe-zz", "-", "zz", "", &[]);
    assert_eq!(code, 0);
    assert_eq!(read(&w.path("default-all")), b"zz\n");

    // An empty extension file means the default delivery.
    let default = w.maildir("Maildir");
    w.write(".qmail-empty", b"", 0o644);
    let (code, report) = w.run(&[], "joe-empty", "-", "empty", "./Maildir/", &[]);
    assert_eq!(code, 0, "{report}");
    only_message(&default);
}

#[test]
fn unknown_extension_is_permanent() {
    let w = World::new("unknown");
    w.write(".qmail-known", b"./Maildir/\n", 0o644);
    let (code, report) = w.run(&[], "joe-unknown", "-", "unknown", "./Maildir/", &[]);
    assert_eq!(code, 100);
    assert_eq!(report.trim(), "Sorry, no mailbox here by that name. (#5.1.1)");
}

#[test]
fn per_address_maildir_is_created() {
    let w = World::new("perbox");
    fs::create_dir(w.home().join("maildir")).expect("maildir parent");
    w.write(".qmail-default", b"./maildir/${DEFAULT}/\n", 0o644);
    for local in ["Xavier", "yolanda", "xavier"] {
        let (code, report) = w.run(&[], local, "-", local, "", &[]);
        assert_eq!(code, 0, "{local}: {report}");
    }
    let x = w.home().join("maildir/xavier");
    assert_eq!(files(&x.join("new")).len(), 2, "both spellings land in the lower-case box");
    assert_eq!(files(&w.home().join("maildir/yolanda/new")).len(), 1);
    for dir in [x.clone(), x.join("tmp"), x.join("new"), x.join("cur")] {
        assert_eq!(fs::metadata(&dir).expect("stat").permissions().mode() & 0o777, 0o700, "{}", dir.display());
    }
    let first = b"Return-Path: <sender@origin.example>\nDelivered-To: Xavier@example.com\n";
    assert!(files(&x.join("new")).iter().any(|f| read(f).starts_with(first)));

    // ${LOCAL} and ${EXT} work the same way.
    w.write(".qmail-box-default", b"./maildir/${EXT}/\n", 0o644);
    let (code, report) = w.run(&[], "box-Z", "-", "box-Z", "", &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(files(&w.home().join("maildir/box-z/new")).len(), 1);

    // A value that would leave the directory or is empty is refused for good.
    let (code, report) = w.run(&[], "box-", "-", "box-", "", &[]);
    assert_eq!(code, 0, "{report}"); // ${EXT} is "box-", fine
    w.write(".qmail-e-default", b"./maildir/${DEFAULT}/\n", 0o644);
    let (code, report) = w.run(&[], "e-", "-", "e-", "", &[]);
    assert_eq!(code, 100, "empty DEFAULT: {report}");
    let entries = files(&w.home().join("maildir")).len();
    assert_eq!(entries, 4, "xavier yolanda box-z box-: nothing else created");
}

#[test]
fn unsafe_extensions_are_refused() {
    let w = World::new("unsafe");
    fs::create_dir(w.home().join("maildir")).expect("maildir parent");
    w.write(".qmail-default", b"./maildir/${DEFAULT}/\n", 0o644);
    for ext in ["../x", "a/b", ".hidden", "a..b", ".."] {
        let (code, report) = w.run(&[], ext, "-", ext, "./Maildir/", &[]);
        assert_eq!(code, 100, "{ext}: {report}");
        assert!(report.contains("#5.1.1"), "{report}");
    }
    assert!(files(&w.home().join("maildir")).is_empty());
    assert!(!w.path("x").exists());
}

#[test]
fn forward_file_with_own_mailbox() {
    let w = World::new("dotforward");
    let maildir = w.maildir("Maildir");
    let queue = w.fake_queue(0);
    w.write(".qmail", b"", 0o644); // an empty .qmail does not hide .forward
    w.write(
        ".forward",
        b"# keep a copy and tell a friend\n\\joe, friend@f.example,\n\"|cat > ../from-forward\"\n",
        0o644,
    );
    let (code, report) = w.run(&[], "joe", "", "", "./Maildir/", &[("QMAILQUEUE", &queue)]);
    assert_eq!(code, 0, "{report}");
    assert!(report.starts_with("did 1+1+1 qp "), "{report}");
    only_message(&maildir);
    assert_eq!(read(&w.path("from-forward")), MESSAGE);
    assert_eq!(read(&w.path("qq-envelope")), format!("F{SENDER}\0Tfriend@f.example\0\0").into_bytes());

    // A non-empty .qmail wins over .forward.
    w.write(".qmail", b"|echo dotqmail > ../which\n", 0o644);
    let (code, _) = w.run(&[], "joe", "", "", "./Maildir/", &[("QMAILQUEUE", &queue)]);
    assert_eq!(code, 0);
    assert_eq!(read(&w.path("which")), b"dotqmail\n");
}

#[test]
fn aliases_with_include() {
    let w = World::new("aliases");
    let queue = w.fake_queue(0);
    // Dot files are not consulted with -A.
    w.write(".qmail", b"|exit 100\n", 0o644);
    w.write(".qmail-postmaster", b"|exit 100\n", 0o644);
    let inner = w.path("inner-list");
    fs::write(&inner, b"deep@d.example\n").expect("inner");
    let list = w.path("list");
    let boxdir = w.path("listbox/");
    fs::write(
        &list,
        format!("# members\nmember@m.example, localname\n{}\n:include:{}\n", boxdir.display(), inner.display()),
    )
    .expect("list");
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(boxdir.join(sub)).expect("maildir");
    }
    let mbox = w.path("alias-mbox");
    let rhs =
        format!("{}, \"|cat > {}/alias-program\", :include:{}", mbox.display(), w.dir.path().display(), list.display());
    let (code, report) = w.run(&["-A"], "postmaster", "-", "postmaster", &rhs, &[("QMAILQUEUE", &queue)]);
    assert_eq!(code, 0, "{report}");
    assert!(report.starts_with("did 2+3+1 qp "), "{report}");
    assert!(contains(&read(&mbox), b"Delivered-To: postmaster@example.com\n"));
    assert_eq!(read(&w.path("alias-program")), MESSAGE);
    only_message(&boxdir);
    assert_eq!(
        read(&w.path("qq-envelope")),
        format!("F{SENDER}\0Tmember@m.example\0Tlocalname@{DOMAIN}\0Tdeep@d.example\0\0").into_bytes()
    );

    // Includes that include themselves stop at a bound instead of running forever.
    let selfish = w.path("selfish");
    fs::write(&selfish, format!(":include:{}\n", selfish.display())).expect("selfish");
    let (code, report) =
        w.run(&["-A"], "postmaster", "-", "postmaster", &format!(":include:{}", selfish.display()), &[]);
    assert_eq!(code, 111, "{report}");
    // A world-writable include file is not trusted.
    fs::set_permissions(&inner, fs::Permissions::from_mode(0o666)).expect("chmod");
    let (code, report) = w.run(
        &["-A"],
        "postmaster",
        "-",
        "postmaster",
        &format!(":include:{}", inner.display()),
        &[("QMAILQUEUE", &queue)],
    );
    assert_eq!(code, 111, "{report}");
}

#[test]
fn loops_are_detected() {
    let w = World::new("loop");
    let maildir = w.maildir("Maildir");
    let looping = b"Received: by a\nDelivered-To: JOE@example.com\nSubject: loop\n\nbody\n";
    let (code, report) = w.run_message(&[], "joe", "", "", SENDER, "./Maildir/", &[], looping);
    assert_eq!(code, 100);
    assert_eq!(report.trim(), "This message is looping: it already has my Delivered-To line. (#5.4.6)");
    let mut many = b"Received: by a\n".repeat(101);
    many.extend_from_slice(b"\nbody\n");
    let (code, report) = w.run_message(&[], "joe", "", "", SENDER, "./Maildir/", &[], &many);
    assert_eq!(code, 100);
    assert!(report.contains("#5.4.6"));
    assert!(files(&maildir.join("new")).is_empty());
    // Our line in the body, or another Delivered-To in the header, is no loop.
    let fine = b"Delivered-To: other@example.com\n\nDelivered-To: joe@example.com\n";
    let (code, report) = w.run_message(&[], "joe", "", "", SENDER, "./Maildir/", &[], fine);
    assert_eq!(code, 0, "{report}");
}

#[test]
fn unsafe_permissions_defer() {
    let w = World::new("perms");
    let maildir = w.maildir("Maildir");
    let home = w.home();
    let chmod = |path: &Path, mode: u32| fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    let cases: [(&str, u32, &str); 2] = [("world-writable home", 0o777, "writable"), ("sticky home", 0o1755, "sticky")];
    for (what, mode, word) in cases {
        chmod(&home, mode);
        let (code, report) = w.run(&[], "joe", "", "", "./Maildir/", &[]);
        assert_eq!(code, 111, "{what}: {report}");
        assert!(report.contains(word), "{what}: {report}");
    }
    chmod(&home, 0o755);
    for (file, mode) in [(".qmail", 0o664), (".qmail", 0o646), (".forward", 0o620)] {
        let _ = fs::remove_file(home.join(".qmail"));
        let _ = fs::remove_file(home.join(".forward"));
        w.write(file, b"./Maildir/\n", mode);
        let (code, report) = w.run(&[], "joe", "", "", "./Maildir/", &[]);
        assert_eq!(code, 111, "{file} {mode:o}: {report}");
        assert!(report.contains(file) && report.contains("writable"), "{report}");
    }
    let _ = fs::remove_file(home.join(".forward"));
    // Owner-execute: forwards only.
    w.write(".qmail", b"./Maildir/\n", 0o744);
    let (code, report) = w.run(&[], "joe", "", "", "", &[]);
    assert_eq!(code, 111, "{report}");
    // A blank first line.
    w.write(".qmail", b"\n./Maildir/\n", 0o644);
    let (code, _) = w.run(&[], "joe", "", "", "", &[]);
    assert_eq!(code, 111);
    assert!(files(&maildir.join("new")).is_empty(), "nothing delivered by a deferred attempt");
    w.write(".qmail", b"./Maildir/\n", 0o600);
    let (code, _) = w.run(&[], "joe", "", "", "", &[]);
    assert_eq!(code, 0);
}

#[test]
fn dry_run_delivers_nothing() {
    let w = World::new("dryrun");
    let maildir = w.maildir("Maildir");
    w.write(".qmail-default", b"./Maildir/\n./mbox\n|touch ../ran\n&friend\n./boxes/${DEFAULT}/\n", 0o644);
    let (code, report) = w.run(&["-n"], "joe-x", "-", "X", "", &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report.trim(),
        "maildir ./Maildir/\nmbox ./mbox\nprogram touch ../ran\nforward friend@example.com\nmaildir ./boxes/x/"
    );
    assert!(files(&maildir.join("new")).is_empty());
    assert!(!w.home().join("mbox").exists() && !w.path("ran").exists() && !w.home().join("boxes").exists());
}

#[test]
fn bad_usage_is_temporary() {
    let out = Command::new(bin("quill-local")).args(["--", "too", "few"]).stdin(Stdio::null()).output().expect("run");
    assert_eq!(out.status.code(), Some(111));
}

#[test]
fn background_process_holding_the_pipe_does_not_block() {
    let w = World::new("background");
    let maildir = w.maildir("Maildir");
    // The program leaves a process behind that keeps the message pipe open without reading;
    // the message is larger than a pipe buffer, so feeding it can never finish.
    w.write(".qmail", b"|exec 3<&0; (sleep 120 <&3 >/dev/null 2>&1 & echo $! > ../bgpid); exit 0\n./Maildir/\n", 0o644);
    let message =
        b"Subject: big\n\n".iter().copied().chain(std::iter::repeat_n(b'x', 1024 * 1024)).collect::<Vec<u8>>();
    let mut child = w.spawn(&[], "joe", "joe", "", "", SENDER, "", &[], &message);
    let finished = wait_for(Duration::from_secs(60), || matches!(child.try_wait(), Ok(Some(_))));
    if let Ok(pid) = fs::read_to_string(w.path("bgpid")) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    if !finished {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait");
    assert!(finished, "quill-local waited for the background process");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "did 1+0+1");
    only_message(&maildir);
}

#[test]
fn failed_writes_leave_no_partial_mail() {
    // A file-size limit of 1 block (512 bytes) makes every write past it fail (EFBIG; the
    // signal is ignored), like a full disk: the delivery defers, the partial Maildir file is
    // removed and the mbox is cut back to its old length.
    let w = World::new("writefail");
    let maildir = w.maildir("Maildir");
    let before = b"From old@x Thu Jan  1 00:00:00 1970\nSubject: old\n\nold\n\n".to_vec();
    fs::write(w.home().join("mbox"), &before).expect("mbox");
    let mut message = b"Subject: big\n\n".to_vec();
    message.extend(std::iter::repeat_n(b'x', 8192));
    for line in ["./Maildir/", "./mbox"] {
        let home = w.home();
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg("trap '' XFSZ; ulimit -f 1; exec \"$@\"")
            .arg("sh")
            .arg(bin("quill-local"))
            .args(["--", "joe", home.to_str().expect("utf-8"), "joe", "", "", DOMAIN, SENDER, line])
            .current_dir(&home)
            .stdin(Stdio::from(w.queue_file(SENDER, &message)))
            .output()
            .expect("run");
        let report = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(111), "{line}: {report}");
        assert!(report.contains("(#4."), "{report}");
    }
    assert!(files(&maildir.join("tmp")).is_empty(), "partial file removed");
    assert!(files(&maildir.join("new")).is_empty());
    assert!(read(&w.home().join("mbox")) == before, "mbox cut back");
    assert!(!w.home().join("mbox.lock").exists());
}

/// Give `path` (not what a symbolic link points at) to `uid`.
fn give(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).expect("lchown");
}

#[test]
fn include_files_of_others_give_only_their_addresses() {
    if !common::is_root() {
        common::skip("not root, so no file can belong to another user");
        return;
    }
    let w = World::new("untrusted-include");
    let queue = w.fake_queue(0);
    let d = w.dir.path().display().to_string();
    // A list file another user owns (uid 65534), naming a program, a mailbox and an address,
    // and including a root-owned file whose program must not run through it either.
    let inner = w.path("inner");
    fs::write(&inner, format!("|touch {d}/inner-ran\ndeep@d.example\n")).expect("inner");
    let list = w.path("list");
    fs::write(
        &list,
        format!(
            "member@m.example\n|touch {d}/list-ran\n{d}/list-mbox\n{d}/list-maildir/\n:include:{}\n",
            inner.display()
        ),
    )
    .expect("list");
    give(&list, 65534);
    let rhs = format!(":include:{}", list.display());
    let (code, report) = w.run(&["-A"], "postmaster", "-", "postmaster", &rhs, &[("QMAILQUEUE", &queue)]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("did 0+2+0 qp "), "{report}");
    for ran in ["list-ran", "inner-ran", "list-mbox", "list-maildir"] {
        assert!(!w.path(ran).exists(), "{ran} from an untrusted include file: {report}");
    }
    assert_eq!(read(&w.path("qq-envelope")), format!("F{SENDER}\0Tmember@m.example\0Tdeep@d.example\0\0").into_bytes());
    assert!(report.contains("quill-local: warning: unable to run |touch "), "{report}");
    assert!(report.contains("belongs to uid 65534, not to root or uid 0; only its addresses are used"), "{report}");

    // The same list as root's: everything in it is used.
    give(&list, 0);
    let (code, report) = w.run(&["-A"], "postmaster", "-", "postmaster", &rhs, &[("QMAILQUEUE", &queue)]);
    assert_eq!(code, 111, "the mbox line is used (and fails on its missing Maildir): {report}");
    fs::create_dir_all(w.path("list-maildir")).expect("mkdir");
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(w.path("list-maildir").join(sub)).expect("maildir");
    }
    let (code, report) = w.run(&["-A"], "postmaster", "-", "postmaster", &rhs, &[("QMAILQUEUE", &queue)]);
    assert_eq!(code, 0, "{report}");
    assert!(w.path("list-ran").exists() && w.path("inner-ran").exists() && w.path("list-mbox").exists(), "{report}");
    fs::remove_file(w.path("list-ran")).expect("rm");

    // Reached through a symbolic link another user made: only addresses again.
    let link = w.path("link");
    std::os::unix::fs::symlink(&list, &link).expect("symlink");
    give(&link, 65534);
    let rhs = format!(":include:{}", link.display());
    let (code, report) = w.run(&["-A"], "postmaster", "-", "postmaster", &rhs, &[("QMAILQUEUE", &queue)]);
    assert_eq!(code, 0, "{report}");
    assert!(!w.path("list-ran").exists(), "{report}");
    assert!(report.contains("the symbolic link to it belongs to uid 65534"), "{report}");

    // A group-writable list: its group may write it, so only its addresses count.
    fs::set_permissions(&list, fs::Permissions::from_mode(0o664)).expect("chmod");
    let rhs = format!(":include:{}", list.display());
    let (code, report) = w.run(&["-A"], "postmaster", "-", "postmaster", &rhs, &[("QMAILQUEUE", &queue)]);
    assert_eq!(code, 0, "{report}");
    assert!(!w.path("list-ran").exists() && report.contains("mode 664"), "{report}");

    // -F (quill-lspawn found the aliases file someone else's): the right-hand side's own
    // program and file lines are left out too.
    let rhs = format!("x@y.example, \"|touch {d}/rhs-ran\", {d}/rhs-mbox");
    let (code, report) = w.run(&["-A", "-F"], "postmaster", "-", "postmaster", &rhs, &[("QMAILQUEUE", &queue)]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("did 0+1+0 qp "), "{report}");
    assert!(!w.path("rhs-ran").exists() && !w.path("rhs-mbox").exists(), "{report}");
}

#[test]
fn dot_files_of_another_owner_are_not_used() {
    if !common::is_root() {
        common::skip("not root, so no file can belong to another user");
        return;
    }
    let w = World::new("foreign-dot");
    let d = w.dir.path().display().to_string();
    w.write(".qmail-x", format!("|touch {d}/ran\n").as_bytes(), 0o644);
    give(&w.home().join(".qmail-x"), 65534);
    let (code, report) = w.run(&[], "joe-x", "-", "x", "./Maildir/", &[]);
    assert_eq!(code, 111, "{report}");
    assert!(report.contains("Uh-oh: .qmail-x is not the user's: it belongs to uid 65534"), "{report}");
    assert!(!w.path("ran").exists());
    // A symbolic link another user made, to a file of the user's.
    w.write(".qmail-real", format!("|touch {d}/ran\n").as_bytes(), 0o644);
    std::os::unix::fs::symlink(".qmail-real", w.home().join(".qmail-y")).expect("symlink");
    give(&w.home().join(".qmail-y"), 65534);
    let (code, report) = w.run(&[], "joe-y", "-", "y", "./Maildir/", &[]);
    assert_eq!(code, 111, "{report}");
    assert!(!w.path("ran").exists(), "{report}");
    w.write(".forward", format!("\"|touch {d}/ran\"\n").as_bytes(), 0o644);
    give(&w.home().join(".forward"), 65534);
    let (code, report) = w.run(&[], "joe", "", "", "./Maildir/", &[]);
    assert_eq!(code, 111, "{report}");
    assert!(report.contains(".forward is not the user's"), "{report}");
    assert!(!w.path("ran").exists());
}

#[test]
fn extensions_too_long_for_a_file_name_are_no_such_address() {
    let w = World::new("long-ext");
    let ext = "e".repeat(300);
    let local = format!("joe-{ext}");
    // No dot file can have that name: "no such address", not a week of deferrals.
    let (code, report) = w.run(&[], &local, "-", &ext, "./Maildir/", &[]);
    assert_eq!(code, 100, "{report}");
    assert!(report.contains("#5.1.1"), "{report}");
    // A -default file that files each address into its own Maildir (quill-up's): the name
    // is too long for a directory, and that is permanent too.
    w.write(".qmail-default", b"./maildir/${DEFAULT}/\n", 0o644);
    let (code, report) = w.run(&[], &local, "-", &ext, "./Maildir/", &[]);
    assert_eq!(code, 100, "{report}");
    assert!(report.contains("too long"), "{report}");
    // A name that fits is delivered as before.
    let (code, report) = w.run(&[], "joe-short", "-", "short", "./Maildir/", &[]);
    assert_eq!(code, 0, "{report}");
    only_message(&w.home().join("maildir/short"));
}

#[test]
fn program_time_limit_kills_the_whole_process_group() {
    let w = World::new("program-limit");
    // The program leaves a child in its process group that would outlive it.
    w.write(".qmail", b"|sleep 120 & echo $! > ../childpid; wait\n", 0o644);
    let mut child = w.spawn(&["-t", "1"], "joe", "joe", "", "", SENDER, "", &[], MESSAGE);
    let finished = wait_for(Duration::from_secs(60), || matches!(child.try_wait(), Ok(Some(_))));
    if !finished {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(finished, "quill-local did not stop the program");
    assert_eq!(out.status.code(), Some(111), "a program killed at its limit defers: {report}");
    assert!(report.contains("longer than 1 seconds and was killed with its process group"), "{report}");
    let pid: i32 = fs::read_to_string(w.path("childpid")).expect("child pid").trim().parse().expect("pid");
    // Gone, or a zombie waiting for init to reap it: either way no longer running.
    let stopped = wait_for(Duration::from_secs(10), || match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    });
    if !stopped {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    assert!(stopped, "the program's child survived the limit");
}

/// Audit item 14: given the message's identity (`-i`, from quill-lspawn), a Maildir delivery
/// happens once however often it is attempted. A second run finds its file in new/; after a
/// reader moved it to cur/, a retry (`-r`) finds it there; a program line in the same .qmail
/// runs every time (at least once, not exactly once); another recipient gets its own copy; a
/// write that fails half-way leaves nothing, and the next attempt delivers the whole message.
#[test]
fn maildir_delivery_happens_once_per_message_and_recipient() {
    let w = World::new("exact");
    let maildir = w.maildir("Maildir");
    w.write(".qmail", b"|echo ran >> ../ran\n./Maildir/\n", 0o644);
    let identity = "77.1795615141.5.1";
    for _ in 0..2 {
        let (code, report) = w.run(&["-i", identity], "joe", "", "", "", &[]);
        assert_eq!((code, report.trim()), (0, "did 1+0+1"));
    }
    let new = files(&maildir.join("new"));
    assert_eq!(new.len(), 1, "one copy after two attempts");
    let name = new[0].file_name().expect("name").to_string_lossy().into_owned();
    assert!(name.starts_with("1795615141.Q77P1N5R"), "{name}");
    assert!(files(&maildir.join("tmp")).is_empty(), "nothing left in tmp/");
    let mut want = format!("Return-Path: <{SENDER}>\nDelivered-To: joe@{DOMAIN}\n").into_bytes();
    want.extend_from_slice(MESSAGE);
    assert_eq!(read(&new[0]), want);

    fs::rename(&new[0], maildir.join("cur").join(format!("{name}:2,S"))).expect("move to cur");
    let (code, _) = w.run(&["-ri", identity], "joe", "", "", "", &[]);
    assert_eq!(code, 0);
    assert!(files(&maildir.join("new")).is_empty(), "the retry found its file in cur/");
    assert_eq!(files(&maildir.join("cur")).len(), 1);
    assert_eq!(fs::read_to_string(w.path("ran")).expect("ran").lines().count(), 3, "programs run each time");

    let (code, _) = w.run(&["-i", identity], "ann", "", "", "", &[]);
    assert_eq!(code, 0);
    assert_eq!(files(&maildir.join("new")).len(), 1, "another recipient, another copy");
    let (code, _) = w.run(&["-i", "78.1795615141.5.1"], "joe", "", "", "", &[]);
    assert_eq!(code, 0);
    assert_eq!(files(&maildir.join("new")).len(), 2, "another message with the same time and pid");

    // A write that fails half-way (a file size limit, like a full disk) leaves no file
    // anywhere; the next attempt delivers the whole message once.
    let big = w.maildir("Big");
    fs::remove_file(w.home().join(".qmail")).expect("rm .qmail");
    let mut message = b"Subject: big\n\n".to_vec();
    message.extend(std::iter::repeat_n(b'x', 8192));
    let home = w.home();
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 1; exec \"$@\"")
        .arg("sh")
        .arg(bin("quill-local"))
        .args(["-i", identity, "--", "joe", home.to_str().expect("utf-8"), "joe", "", "", DOMAIN, SENDER, "./Big/"])
        .current_dir(&home)
        .stdin(Stdio::from(w.queue_file(SENDER, &message)))
        .output()
        .expect("run");
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(111), "{report}");
    assert!(report.contains("Unable to write maildir"), "{report}");
    assert!(files(&big.join("tmp")).is_empty() && files(&big.join("new")).is_empty(), "no partial file");
    for _ in 0..2 {
        let (code, report) = w.run_message(&["-ri", identity], "joe", "", "", SENDER, "./Big/\n", &[], &message);
        assert_eq!(code, 0, "{report}");
    }
    let delivered = only_message(&big);
    assert!(delivered.ends_with(&message), "the whole message");

    // An identity that is not four numbers is a usage error (temporary).
    let (code, _) = w.run(&["-i", "77.x.5.1"], "joe", "", "", "", &[]);
    assert_eq!(code, 111);
}
