//! `quill`, the administrator's front end: help texts, stats from a log, queue list/show on
//! message files, check's problems and fixes, and (as root) setup: idempotent, with links.

mod common;

use common::{bin, files, home, is_root, wait_for, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn quill(args: &[&str], env_home: Option<&Path>, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut command = Command::new(bin("quill"));
    command.args(args).env_remove("QUILL_HOME").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(h) = env_home {
        command.env("QUILL_HOME", h);
    }
    let mut child = command.spawn().expect("run quill");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    out
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn every_command_has_help() {
    for command in ["setup", "check", "status", "stats", "queue"] {
        let out = quill(&[command, "--help"], None, b"");
        assert!(out.status.success(), "{command} --help: {}", text(&out));
        assert!(text(&out).contains(&format!("usage: quill {command}")), "{command}: {}", text(&out));
    }
    assert!(text(&quill(&["queue", "--help"], None, b"")).contains("hold     stop delivering"));
    let out = quill(&["frobnicate"], None, b"");
    assert_eq!(out.status.code(), Some(100));
    assert!(text(&out).contains("the commands are setup, check, status, stats, queue"), "{}", text(&out));
    let out = quill(&[], None, b"");
    assert_eq!(out.status.code(), Some(100));
}

/// The queue changes are requests to quill-send (tests/system.rs runs them against a live
/// instance); without a quill-send, or with a bad id, they fail with a clear message.
#[test]
fn queue_changes_need_a_running_quill_send() {
    let home = common::home("quill-nosend", &[]);
    for action in ["hold", "release", "delete", "bounce"] {
        let out = quill(&["queue", action, "123"], Some(home.path()), b"");
        assert_eq!(out.status.code(), Some(111), "{action}: {}", text(&out));
        assert!(text(&out).contains("quill-send: it is not running"), "{action}: {}", text(&out));
        let out = quill(&["queue", action, "12x"], Some(home.path()), b"");
        assert!(text(&out).contains("is not a queue id"), "{action}: {}", text(&out));
    }
    let out = quill(&["queue", "flush", "12x"], Some(home.path()), b"");
    assert!(text(&out).contains("is not a queue id"), "{}", text(&out));
    let out = quill(&["queue", "hold"], Some(home.path()), b"");
    assert_eq!(out.status.code(), Some(100), "hold needs ids or a selection");
    let out = quill(&["queue", "hold", "--domain", "nothing.test"], Some(home.path()), b"");
    assert!(out.status.success() && text(&out).contains("no message matches"), "{}", text(&out));
}

const LOG: &str = "\
@400000006b06f29107096a1c new msg 100
@400000006b06f29107096a1c info msg 100: bytes 1000 from <a@example.org> qp 5 uid 1000
@400000006b06f29107096a1c starting delivery 1: msg 100 to remote bob@example.com
@400000006b06f29107096a1c starting delivery 2: msg 100 to remote carol@example.net
@400000006b06f29207096a1c delivery 1: success: 250_ok/
@400000006b06f29207096a1c delivery 2: failure: Sorry,_no_mailbox_here_by_that_name./
@400000006b06f29207096a1c bounce msg 100 qp 6
@400000006b06f29207096a1c end msg 100
";

#[test]
fn stats_from_stdin_and_files() {
    let out = quill(&["stats"], None, LOG.as_bytes());
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    assert!(report.contains("1 delivered, 0 deferred, 1 failed; 1 bounces"), "{report}");
    assert!(report.contains("example.com") && report.contains("example.net"), "{report}");
    assert!(report.contains("failure: Sorry,_no_mailbox_here_by_that_name"), "{report}");
    assert!(!report.contains("(no time)"), "{report}");

    let dir = TempDir::new("quill-stats");
    let (first, second) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&first, LOG).expect("write log");
    std::fs::write(
        &second,
        "new msg 7\nstarting delivery 3: msg 7 to local joe@here\ndelivery 3: success: did_1+0+0/\n",
    )
    .expect("write log");
    let out = quill(&["stats", first.to_str().expect("path"), second.to_str().expect("path")], None, b"");
    let report = text(&out);
    assert!(report.contains("2 messages queued"), "{report}");
    assert!(report.contains("2 delivered"), "{report}");
    assert!(report.contains("(no time)"), "{report}");

    let out = quill(&["stats", dir.path().join("missing").to_str().expect("path")], None, b"");
    assert_eq!(out.status.code(), Some(111));
    assert!(text(&out).contains("quill: fatal: unable to read"), "{}", text(&out));
}

/// Put a message file into `state/` the way quill-queue would (header, then the message).
fn queue_message(home: &Path, state: &str, sender: &[u8], rcpts: &[&[u8]], time: u64, body: &str) -> String {
    let header = quill::mail::queuefile::Header {
        uid: 1000,
        pid: 4242,
        time,
        nanos: 0,
        envelope: quill::mail::envelope::Envelope {
            sender: sender.to_vec(),
            recipients: rcpts.iter().map(|r| r.to_vec()).collect(),
        },
        dsn: Default::default(),
    };
    let tmp = home.join("queue/tmp/new");
    let mut bytes = header.encode();
    bytes.extend_from_slice(body.as_bytes());
    std::fs::write(&tmp, bytes).expect("write message");
    use std::os::unix::fs::MetadataExt;
    let id = std::fs::metadata(&tmp).expect("stat").ino().to_string();
    std::fs::rename(&tmp, home.join("queue").join(state).join(&id)).expect("rename");
    id
}

#[test]
fn queue_list_and_show() {
    let home = home("quill-queue", &[]);
    let now = quill::base::date::now();
    let old = queue_message(
        home.path(),
        "mess",
        b"alice@example.org",
        &[b"bob@example.com", b"carol@example.net"],
        now - 7200,
        "Subject: old one\nFrom: alice@example.org\n\nthe body\n",
    );
    let new = queue_message(home.path(), "todo", b"", &[b"dave@example.com"], now, "Subject: a bounce\n\nbody two\n");
    let held = queue_message(home.path(), "hold", b"eve@example.org", &[b"x@y.test"], now - 100, "Subject: h\n\nb\n");
    std::fs::write(home.path().join("queue/info").join(&old), b"state").expect("info file");

    let out = quill(&["queue", "list", "--home", home.path().to_str().expect("path")], None, b"");
    let list = text(&out);
    assert!(out.status.success(), "{list}");
    assert!(list.contains("3 of 3 messages"), "{list}");
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines[1].starts_with(&old) && lines[1].contains("mess+"), "oldest first, retrying: {list}");
    assert!(list.contains("<> -> dave@example.com"), "{list}");

    let select = |args: &[&str]| -> String {
        let mut all = vec!["queue", "list"];
        all.extend_from_slice(args);
        text(&quill(&all, Some(home.path()), b""))
    };
    let by_domain = select(&["--domain", "EXAMPLE.com"]);
    assert!(by_domain.contains("2 of 3") && by_domain.contains(&old) && by_domain.contains(&new), "{by_domain}");
    let by_sender = select(&["--sender", "Alice"]);
    assert!(by_sender.contains("1 of 3") && by_sender.contains(&old), "{by_sender}");
    let by_rcpt = select(&["--recipient", "x@y"]);
    assert!(by_rcpt.contains("1 of 3") && by_rcpt.contains(&held), "{by_rcpt}");
    let by_age = select(&["--older-than", "3600"]);
    assert!(by_age.contains("1 of 3") && by_age.contains(&old), "{by_age}");
    let out = quill(&["queue", "list", "--older-than", "soon"], Some(home.path()), b"");
    assert_eq!(out.status.code(), Some(100));

    let out = quill(&["queue", "show", &old], Some(home.path()), b"");
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for want in [
        "state:      mess (2 waiting: quill-send is not running)",
        "sender:     <alice@example.org>",
        "recipients:\n  <bob@example.com>  waiting\n",
        "  <carol@example.net>  waiting\n",
        "waits for:    quill-send is not running for this home (stopped)",
        "quill-queue pid 4242",
        "Subject: old one",
    ] {
        assert!(shown.contains(want), "missing {want:?} in:\n{shown}");
    }
    assert!(!shown.contains("the body"), "{shown}");
    let shown = text(&quill(&["queue", "show", "--body", &old], Some(home.path()), b""));
    assert!(shown.contains("the body"), "{shown}");
    let shown = text(&quill(&["queue", "show", &held], Some(home.path()), b""));
    assert!(shown.contains("held by the administrator"), "{shown}");

    let out = quill(&["queue", "show", "999999999999"], Some(home.path()), b"");
    assert_eq!(out.status.code(), Some(111));
    assert!(text(&out).contains("delivered or removed"), "{}", text(&out));
    let out = quill(&["queue", "show", "../etc"], Some(home.path()), b"");
    assert!(text(&out).contains("a queue id is a number"), "{}", text(&out));
}

#[test]
fn status_of_a_quiet_home() {
    let home = home("quill-status", &[]);
    queue_message(home.path(), "todo", b"a@b", &[b"c@d"], quill::base::date::now(), "Subject: x\n\ny\n");
    let out = quill(&["status"], Some(home.path()), b"");
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("quill-send       not running"), "{report}");
    assert!(report.contains("todo        1"), "{report}");
    assert!(report.contains("messages by age (1 in all)"), "{report}");
}

#[test]
fn check_names_each_problem_and_its_fix() {
    let home = home(
        "quill-check",
        &[
            ("me", "mail.example.org\n"),
            ("locals", "example.org\nlocalhost\n"),
            ("rcpthosts", "example.org\n"),
            ("databytes", "ten megabytes\n"),
            ("helohost", "not a host\n"),
            ("smtproutes", "example.com:relay.example.net:25\nbroken line\n"),
            ("lmtproutes", "dovecot.example:/run/dovecot/lmtp\nexample.org:[127.0.0.1]\nbad.example:run/lmtp\n"),
            ("virtualdomains", "virtual.example:joe\n"),
            ("recipientdelimiter", "+@\n"),
            ("dnsbl", "zen.example.org 554\nbl.example.net 550\n"),
        ],
    );
    std::fs::create_dir_all(home.path().join("users")).expect("users/");
    std::fs::write(home.path().join("users/assign"), "=joe:joe:1000:1000:/home/joe:::\n.\n").expect("assign");
    let out = quill(&["check", "--home", home.path().to_str().expect("path")], None, b"");
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let control = home.path().join("control");
    for want in [
        format!("control/databytes: not a number; fix: edit {}", control.join("databytes").display()),
        "control/helohost: \"not a host\" is not a domain name".to_string(),
        "control/smtproutes: \"broken line\": no colon".to_string(),
        "control/lmtproutes: \"bad.example:run/lmtp\": not `domain:/socket/path`".to_string(),
        "example.org is in control/locals, so Quill delivers it itself and its control/lmtproutes line is never used".to_string(),
        "dovecot.example goes to an LMTP server (control/lmtproutes) but is not in control/rcpthosts".to_string(),
        "control/recipientdelimiter: '@' cannot be a recipient delimiter".to_string(),
        "control/dnsbl line 2: the action must be 451, 554 or allow".to_string(),
        format!("localhost is delivered here but is not in control/rcpthosts, so SMTP clients cannot send to it; fix: echo localhost >> {}", control.join("rcpthosts").display()),
        "virtual.example is delivered here but is not in control/rcpthosts".to_string(),
        "users/assign has changed since it was compiled".to_string(),
        "quill-newu".to_string(),
        "STARTTLS is off".to_string(),
    ] {
        assert!(report.contains(&want), "missing {want:?} in:\n{report}");
    }
    assert!(!report.contains("example.com:relay"), "a good smtproutes line is fine:\n{report}");
    // Every problem line carries its fix.
    for line in report.lines().filter(|l| !l.starts_with("quill check:") && !l.starts_with("note: ")) {
        assert!(line.contains("; fix: "), "no fix in {line:?}");
    }
}

#[test]
fn setup_as_root_is_idempotent_and_check_agrees() {
    if !is_root() {
        common::skip("quill setup needs root");
        return;
    }
    let _one_at_a_time = QUEUE_PROGRAM.write().unwrap_or_else(|e| e.into_inner());
    let _restore = common::RestoreQueueProgram::new();
    let dir = TempDir::new("quill-setup");
    let home = dir.path().join("home");
    let links = dir.path().join("root");
    std::fs::create_dir_all(links.join("usr/sbin")).expect("link root");
    std::fs::write(links.join("usr/sbin/sendmail"), "#!/bin/sh\n# the old MTA\n").expect("old sendmail");
    // Keep the host's aliases file out of it: the home names its own.
    std::fs::create_dir_all(home.join("control")).expect("control/");
    let aliases = dir.path().join("aliases");
    std::fs::write(&aliases, "# the admin's own\npostmaster: admin\n").expect("aliases");
    std::fs::write(home.join("control/aliases"), format!("{}\n", aliases.display())).expect("control/aliases");

    let run_setup = || {
        Command::new(bin("quill"))
            .args(["setup", "--links", "--home"])
            .arg(&home)
            .env("QUILL_LINK_ROOT", &links)
            .output()
            .expect("run quill setup")
    };
    let first = run_setup();
    assert!(first.status.success() || !bin("quill-queue").exists(), "setup:\n{}", text(&first));
    let sendmail = bin("sendmail");
    assert_eq!(
        std::fs::read_link(links.join("usr/sbin/sendmail")).ok(),
        Some(bin("sendmail").canonicalize().unwrap_or(sendmail))
    );
    assert!(std::fs::read_to_string(links.join("usr/sbin/sendmail.before-quill"))
        .expect("kept")
        .contains("the old MTA"));
    assert!(links.join("usr/bin/mailq").is_symlink() && links.join("usr/sbin/newaliases").is_symlink());
    let text_aliases = std::fs::read_to_string(&aliases).expect("aliases");
    assert!(text_aliases.starts_with("# the admin's own\npostmaster: admin\n"), "{text_aliases}");
    assert!(text_aliases.contains("MAILER-DAEMON: postmaster\nroot: alias\n"), "{text_aliases}");
    assert!(!text_aliases.contains("postmaster: root"), "{text_aliases}");
    for file in ["me", "locals", "rcpthosts", "tcprules", "tlscert", "tlskey", "tlscert.pem", "tlskey.pem"] {
        assert!(home.join("control").join(file).exists(), "control/{file}");
    }
    use std::os::unix::fs::MetadataExt;
    let tmp = std::fs::metadata(home.join("queue/tmp")).expect("tmp/");
    assert_eq!(tmp.mode() & 0o7777, 0o2700);
    assert_eq!(tmp.uid(), quill::admin::user_ids("quillq").expect("quillq").0);
    if bin("quill-queue").exists() {
        let queue = std::fs::metadata(bin("quill-queue")).expect("quill-queue");
        assert_eq!(queue.mode() & 0o7777, 0o4711);
        let check = Command::new(bin("quill")).args(["check", "--home"]).arg(&home).output().expect("check");
        assert!(check.status.success(), "check after setup:\n{}", text(&check));
    }

    // Again: nothing to do.
    let second = run_setup();
    let again = String::from_utf8_lossy(&second.stdout);
    assert_eq!(again.lines().count(), 1, "a second setup did something:\n{}", text(&second));
    assert_eq!(std::fs::read_to_string(&aliases).expect("aliases"), text_aliases);

    // A broken mode is found, and the printed fix fixes it.
    std::fs::set_permissions(home.join("queue/todo"), std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let check = Command::new(bin("quill")).args(["check", "--home"]).arg(&home).output().expect("check");
    let report = text(&check);
    let line = report.lines().find(|l| l.contains("queue/todo has mode 777")).unwrap_or_else(|| panic!("{report}"));
    let fix = line.split("; fix: ").nth(1).expect("fix");
    assert!(Command::new("sh").arg("-c").arg(fix).status().expect("sh").success());
    let check = Command::new(bin("quill")).args(["check", "--home"]).arg(&home).output().expect("check");
    assert!(!text(&check).contains("queue/todo"), "{}", text(&check));
}

/// Audit item 1: whoever runs as quillq owns the queue's directories and can put a symbolic
/// link (or a hard link) where a directory or FIFO belongs. A later `quill setup` (root) must
/// refuse such an entry and say so, and never give what it names to quillq or quills.
#[test]
fn setup_refuses_links_in_the_queue() {
    if !is_root() {
        common::skip("quill setup needs root");
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _one_at_a_time = QUEUE_PROGRAM.write().unwrap_or_else(|e| e.into_inner());
    let _restore = common::RestoreQueueProgram::new();
    let dir = TempDir::new("quill-setup-links");
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("control")).expect("control/");
    let aliases = dir.path().join("aliases");
    std::fs::write(&aliases, "postmaster: admin\n").expect("aliases");
    std::fs::write(home.join("control/aliases"), format!("{}\n", aliases.display())).expect("control/aliases");
    let run_setup = || Command::new(bin("quill")).args(["setup", "--home"]).arg(&home).output().expect("quill setup");
    let first = run_setup();
    assert!(first.status.success() || !bin("quill-queue").exists(), "setup:\n{}", text(&first));
    let quillq = quill::admin::user_ids("quillq").expect("quillq").0;

    // Root's files, each named by an entry quillq put in the queue.
    let victims: Vec<PathBuf> = ["hold-target", "trigger-target", "mutex-target"]
        .iter()
        .map(|name| {
            let path = dir.path().join(name);
            std::fs::write(&path, "root's own\n").expect("victim");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            path
        })
        .collect();
    let hold = home.join("queue/hold");
    std::fs::remove_dir(&hold).expect("rmdir hold");
    std::os::unix::fs::symlink(&victims[0], &hold).expect("symlink hold");
    let trigger = home.join("queue/lock/trigger");
    std::fs::remove_file(&trigger).expect("rm trigger");
    std::os::unix::fs::symlink(&victims[1], &trigger).expect("symlink trigger");
    for link in [&hold, &trigger] {
        std::os::unix::fs::lchown(link, Some(quillq), None).expect("lchown");
    }
    // A hard link: quillq can make one to a file it may read and write (fs.protected_hardlinks),
    // or to any file where that protection is off; the test, as root, makes it directly.
    let mutex = home.join("queue/lock/sendmutex");
    std::fs::remove_file(&mutex).expect("rm sendmutex");
    std::fs::hard_link(&victims[2], &mutex).expect("hard link");

    let second = run_setup();
    let report = text(&second);
    assert_eq!(second.status.code(), Some(1), "setup must fail:\n{report}");
    for (entry, what) in [
        ("queue/hold", "it is a symbolic link where a directory belongs"),
        ("queue/lock/trigger", "it is a symbolic link where a FIFO belongs"),
        ("queue/lock/sendmutex", "it has 2 hard links"),
    ] {
        let line = report
            .lines()
            .find(|l| l.contains(&format!("{}:", home.join(entry).display())))
            .unwrap_or_else(|| panic!("no line about {entry}:\n{report}"));
        assert!(line.starts_with("quill: warning: unable to use "), "{line}");
        assert!(line.contains(what), "{line}");
        assert!(line.contains("nothing was changed there"), "{line}");
    }
    for victim in &victims {
        let meta = std::fs::metadata(victim).expect("victim");
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (0, 0, 0o600), "{} changed", victim.display());
        assert_eq!(std::fs::read_to_string(victim).expect("victim"), "root's own\n");
    }
    // The rest of the tree was still put right: one bad entry does not stop the others.
    std::fs::set_permissions(home.join("queue/todo"), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let third = run_setup();
    assert_eq!(std::fs::metadata(home.join("queue/todo")).expect("todo").mode() & 0o7777, 0o750, "{}", text(&third));

    // quill check names the link and prints a fix that moves it away: a chown or chmod of the
    // path would follow it.
    let check = Command::new(bin("quill")).args(["check", "--home"]).arg(&home).output().expect("check");
    let report = text(&check);
    let line = report
        .lines()
        .find(|l| l.contains(&format!("{} is a symbolic link, not a directory", hold.display())))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(line.contains("mv ") && !line.contains("chown") && !line.contains("chmod"), "{line}");

    // Moved away, the next setup repairs the tree.
    for entry in [&hold, &trigger, &mutex] {
        std::fs::remove_file(entry).expect("rm");
    }
    let fourth = run_setup();
    assert!(fourth.status.success() || !bin("quill-queue").exists(), "{}", text(&fourth));
    assert!(std::fs::symlink_metadata(&hold).expect("hold").is_dir());
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &std::fs::symlink_metadata(&trigger).expect("trigger").file_type()
    ));
    assert_eq!(std::fs::symlink_metadata(&mutex).expect("mutex").nlink(), 1);

    // The aliases file control/aliases names gets root's lines only if it is root's own.
    let theirs = dir.path().join("their-aliases");
    std::fs::write(&theirs, "# someone else's\n").expect("aliases");
    std::os::unix::fs::chown(&theirs, Some(quillq), None).expect("chown");
    std::fs::write(home.join("control/aliases"), format!("{}\n", theirs.display())).expect("control/aliases");
    let fifth = run_setup();
    assert_eq!(fifth.status.code(), Some(1), "{}", text(&fifth));
    assert!(text(&fifth).contains("add these lines yourself"), "{}", text(&fifth));
    assert_eq!(std::fs::read_to_string(&theirs).expect("aliases"), "# someone else's\n");
}

/// Audit item 4: `quill queue` runs as root and writes into queue/lock/control, in quillq's
/// directory. A link or a plain file put there must not receive the request.
#[test]
fn queue_requests_never_write_through_a_link() {
    let home = common::home("quill-control-link", &[]);
    let victim = home.path().join("victim");
    std::fs::write(&victim, "precious\n").expect("victim");
    let control = home.path().join("queue/lock/control");
    std::fs::remove_file(&control).expect("rm control");
    std::os::unix::fs::symlink(&victim, &control).expect("symlink");
    let out = quill(&["queue", "hold", "123"], Some(home.path()), b"");
    assert_eq!(out.status.code(), Some(111), "{}", text(&out));
    assert!(text(&out).contains("it is a symbolic link, not a named pipe"), "{}", text(&out));
    // A hard link or plain file where the FIFO belongs: opened, found not a FIFO, not written.
    std::fs::remove_file(&control).expect("rm link");
    std::fs::hard_link(&victim, &control).expect("hard link");
    let out = quill(&["queue", "delete", "123"], Some(home.path()), b"");
    assert_eq!(out.status.code(), Some(111), "{}", text(&out));
    assert!(text(&out).contains("it is not a named pipe"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious\n");

    // sendmail -q writes into queue/lock/trigger: the same.
    let trigger = home.path().join("queue/lock/trigger");
    std::fs::remove_file(&trigger).expect("rm trigger");
    std::os::unix::fs::symlink(&victim, &trigger).expect("symlink");
    let out = common::run(home.path(), "sendmail", &["-q"], b"");
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious\n");
}

/// A running quill-up with an SMTP listener on a free loopback port, stopped (SIGTERM, then
/// waited for) when dropped.
struct Instance {
    dir: TempDir,
    child: Option<Child>,
    port: u16,
    /// Keeps `setup_as_root_is_idempotent_and_check_agrees` from making quill-queue setuid
    /// while the instance runs (a setuid quill-queue ignores QUILL_HOME).
    _queue_program: std::sync::RwLockReadGuard<'static, ()>,
}

/// Held for reading by every running instance, for writing while the setup test has made
/// quill-queue setuid.
static QUEUE_PROGRAM: std::sync::RwLock<()> = std::sync::RwLock::new(());

impl Instance {
    fn start(tag: &str, prepare: impl FnOnce(&Path)) -> Instance {
        let dir = TempDir::new(tag);
        let home = dir.path().join("q");
        std::fs::create_dir_all(home.join("control")).expect("mkdir");
        prepare(&home);
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let guard = QUEUE_PROGRAM.read().unwrap_or_else(|e| e.into_inner());
        let mut instance = Instance { dir, child: None, port, _queue_program: guard };
        instance.spawn();
        instance
    }

    /// Start quill-up (again) on this home and wait until it listens and quill-send runs.
    fn spawn(&mut self) {
        let log = self.dir.path().join("log");
        let child = Command::new(bin("quill-up"))
            .arg("-d")
            .arg(self.home())
            .arg("-l")
            .arg(format!("127.0.0.1:{}", self.port))
            .env_remove("QUILL_HOME")
            .stdin(Stdio::null())
            .stdout(std::fs::File::options().create(true).append(true).open(&log).expect("log"))
            .stderr(std::fs::File::options().append(true).open(&log).expect("log"))
            .spawn()
            .expect("start quill-up");
        self.child = Some(child);
        let up = wait_for(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && quill::admin::status::processes(Some(&self.home())).iter().any(|p| p.name == "quill-send")
        });
        assert!(up, "the instance did not come up; log:\n{}", self.log());
    }

    /// Stop it cleanly (SIGTERM, as a system shutdown would) and start it again.
    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::SIGTERM);
            let _ = wait_for(Duration::from_secs(30), || !matches!(c.try_wait(), Ok(None)));
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("q")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn sendmail(&self, args: &[&str], message: &str) {
        let out = common::run(&self.home(), "sendmail", args, message.as_bytes());
        assert!(out.status.success(), "sendmail: {}", text(&out));
    }

    fn quill(&self, args: &[&str]) -> Output {
        quill(args, Some(&self.home()), b"")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mail to local mailboxes in the instance, delivered: mail is flowing.
fn mail_flows(q: &Instance) {
    q.sendmail(&["-i", "-f", "owner@localhost", "first@localhost"], "Subject: flowing\n\nx\n");
    let mailbox = q.home().join("maildir/first/new");
    assert!(wait_for(Duration::from_secs(30), || !files(&mailbox).is_empty()), "{}", q.log());
}

/// Issue 14 part 1: a clean quill-up instance is judged by a private instance's rules (one
/// user, no system accounts, quill-queue not setuid): no problems, exit 0. The old check
/// reported the missing system accounts and owners as problems.
#[test]
fn check_a_clean_private_instance() {
    let q = Instance::start("check-private", |_| {});
    mail_flows(&q);
    let out = q.quill(&["check"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report.contains("(private instance of ") && report.contains("no problems found"), "{report}");
    assert!(!report.contains("fix:"), "{report}");
    // A real problem in a private instance is still found, with its fix.
    let todo = q.home().join("queue/todo");
    std::fs::set_permissions(&todo, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
    let out = q.quill(&["check"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("queue/todo has mode 777, not 750; fix: chmod 750"), "{report}");
    assert!(report.contains(": 1 problem"), "only the real problem:\n{report}");
    std::fs::set_permissions(&todo, std::os::unix::fs::PermissionsExt::from_mode(0o750)).expect("chmod");
}

/// Each line of `text` parsed by Python's json module (an independent parser) and printed
/// back as canonical JSON, or None when python3 is missing.
fn parse_json_lines(text: &str) -> Option<Vec<String>> {
    if common::skip_without("python3") {
        return None;
    }
    let script = "import json,sys\nfor line in sys.stdin:\n    print(json.dumps(json.loads(line), sort_keys=True))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("python3");
    assert!(out.status.success(), "not JSON:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
}

/// An instance whose remote destination `nowhere.test` refuses connections, with two
/// messages for it: the first tried and deferred, the second parked behind the back-off.
/// Returns the instance and the two ids.
fn instance_with_a_dead_destination(tag: &str) -> (Instance, String, String) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let q = Instance::start(tag, |home| {
        std::fs::write(home.join("control/smtproutes"), format!("nowhere.test:[127.0.0.1]:{closed}\n")).expect("write");
    });
    mail_flows(&q);
    let ids = |q: &Instance| -> Vec<String> {
        let out = q.quill(&["queue", "list"]);
        text(&out)
            .lines()
            .skip(1)
            .filter(|l| l.contains("nowhere.test"))
            .filter_map(|l| l.split(' ').next())
            .map(String::from)
            .collect()
    };
    q.sendmail(&["-i", "-f", "owner@localhost", "far@nowhere.test", "near@localhost"], "Subject: one\n\nx\n");
    assert!(wait_for(Duration::from_secs(30), || q.log().contains("deferral: Unreachable")), "{}", q.log());
    let first = ids(&q).first().cloned().expect("first id");
    let show = |q: &Instance| text(&q.quill(&["queue", "show", &first]));
    assert!(wait_for(Duration::from_secs(30), || show(&q).contains("<near@localhost>  delivered")), "{}", show(&q));
    q.sendmail(&["-i", "-f", "owner@localhost", "far@nowhere.test"], "Subject: two\n\nx\n");
    assert!(wait_for(Duration::from_secs(30), || ids(&q).len() == 2), "{}", q.log());
    let second = ids(&q).into_iter().find(|id| *id != first).expect("second id");
    (q, first, second)
}

/// Issue 14 part 2: every waiting recipient says why it waits. The deferred one: its last
/// error, when, its next attempt on the retry schedule. The parked one: its destination's
/// back-off, not "being delivered"; and the back-off line counts it (it said 0 deliveries
/// waiting, the table being rewritten only after a delivery result).
#[test]
fn queue_show_and_why_explain_each_waiting_recipient() {
    let (q, first, second) = instance_with_a_dead_destination("why");
    let shown = text(&q.quill(&["queue", "show", &first]));
    for want in [
        "state:      mess (1 waiting for the retry schedule)",
        "<far@nowhere.test>  waiting (remote)",
        "last attempt: ",
        "Unreachable",
        "next attempt: ",
        "waits for:    the retry schedule",
        "<near@localhost>  delivered",
    ] {
        assert!(shown.contains(want), "missing {want:?} in:\n{shown}");
    }
    let parked = |q: &Instance| text(&q.quill(&["queue", "show", &second]));
    assert!(
        wait_for(Duration::from_secs(30), || parked(&q).contains("1 waiting for a backed-off destination")),
        "{}",
        parked(&q)
    );
    let shown = parked(&q);
    assert!(!shown.contains("being delivered"), "{shown}");
    assert!(shown.contains("waits for:    destination nowhere.test backed off after 1 failed attempts"), "{shown}");
    let status = |q: &Instance| text(&q.quill(&["status"]));
    assert!(
        wait_for(Duration::from_secs(30), || status(&q).contains("nowhere.test: 1 failures, next try in")
            && status(&q).contains("1 deliveries waiting")),
        "{}",
        status(&q)
    );
    let why = text(&q.quill(&["queue", "why"]));
    assert!(why.contains(&format!("{first} <far@nowhere.test>: retry: the retry schedule")), "{why}");
    assert!(why.contains(&format!("{second} <far@nowhere.test>: backoff: destination nowhere.test")), "{why}");
    assert!(why.contains("2 recipients waiting in 2 messages"), "{why}");
    let why = text(&q.quill(&["queue", "why", &first]));
    assert!(why.contains("1 recipients waiting in 1 messages") && why.contains("last error"), "{why}");
}

/// Issue 14 part 3: `--json` for queue list, queue show and status: one object per line,
/// with the documented fields, parsed by an independent parser.
#[test]
fn json_output_parses_with_documented_fields() {
    let (q, first, _second) = instance_with_a_dead_destination("json");
    let out = q.quill(&["queue", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(list.lines().count(), 2, "one object per message:\n{list}");
    let Some(parsed) = parse_json_lines(&list) else { return };
    let one = parsed.iter().find(|l| l.contains(&format!("\"queue_id\": \"{first}\""))).expect("first in the list");
    for field in [
        "\"queue_name\": \"mess\"",
        "\"arrival_time\": ",
        "\"message_size\": ",
        "\"sender\": \"owner@localhost\"",
        "\"address\": \"far@nowhere.test\"",
        "\"channel\": \"remote\"",
        "\"state\": \"waiting\"",
        "\"wait\": \"retry\"",
        "\"state\": \"delivered\"",
        "\"last_attempt\": 1",
        "\"next_attempt\": 1",
        "\"last_error\": \"Unreachable",
    ] {
        assert!(one.contains(field), "missing {field} in {one}");
    }
    let shown = String::from_utf8_lossy(&q.quill(&["queue", "show", "--json", &first]).stdout).into_owned();
    assert_eq!(shown.lines().count(), 1);
    let shown = parse_json_lines(&shown).expect("python3");
    // The same object as the list's (the reason's words may have moved on with the clock).
    let without_reason = |o: &str| o.split("\"reason\"").next().map(str::to_string);
    assert_eq!(without_reason(&shown[0]), without_reason(one), "show --json is the list's object");
    let json_status = |q: &Instance| String::from_utf8_lossy(&q.quill(&["status", "--json"]).stdout).into_owned();
    // quill-send writes its views at most once a second.
    assert!(wait_for(Duration::from_secs(30), || json_status(&q).contains("nowhere.test")), "{}", json_status(&q));
    let status = json_status(&q);
    assert_eq!(status.lines().count(), 1, "{status}");
    let status = &parse_json_lines(&status).expect("python3")[0];
    for field in [
        "\"stages\": [",
        "\"name\": \"quill-send\"",
        "\"queue\": {",
        "\"mess\": 2",
        "\"messages\": 2",
        "\"domain\": \"nowhere.test\"",
        "\"failures\": 1",
        "\"last_errors\": [",
        "\"oldest_age\": ",
    ] {
        assert!(status.contains(field), "missing {field} in {status}");
    }
}

/// Issue 14 part 8: the docs match the program. Every command in `quill --help` has its own
/// help; every option and queue action a help text names is in quill(8), and every queue
/// action quill(8)'s synopsis names is one the program accepts.
#[test]
fn help_and_man_page_agree() {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("doc/quill.8")).expect("quill.8");
    let page = page.replace("\\-", "-").replace("\\fB", "").replace("\\fR", "");
    let top = text(&quill(&["--help"], None, b""));
    for command in ["setup", "check", "status", "stats", "queue"] {
        assert!(top.contains(&format!("\n  {command} ")), "quill --help lacks {command}:\n{top}");
        let help = text(&quill(&[command, "--help"], None, b""));
        for word in help.split(|c: char| c.is_whitespace() || "[]|,():".contains(c)) {
            if word.starts_with("--") && word.len() > 2 {
                assert!(page.contains(word), "quill {command} --help names {word}, quill.8 does not");
            }
        }
    }
    let queue = text(&quill(&["queue", "--help"], None, b""));
    let mut actions: Vec<&str> = Vec::new();
    for line in queue.lines() {
        let line = line.trim_start().trim_start_matches("usage: ");
        if let Some(rest) = line.strip_prefix("quill queue ") {
            let first = rest.split_whitespace().next().unwrap_or("");
            actions.extend(first.split('|'));
        }
    }
    assert!(actions.len() >= 8, "{actions:?}");
    for action in &actions {
        assert!(page.contains(action), "quill queue {action} is not in quill.8");
    }
    let synopsis = page.split(".SH DESCRIPTION").next().unwrap_or("");
    for line in synopsis.lines().filter(|l| l.starts_with(".B quill queue ")) {
        let action = line.trim_start_matches(".B quill queue ").split_whitespace().next().unwrap_or("");
        assert!(actions.contains(&action), "quill.8 names quill queue {action}, quill queue --help does not");
    }
    assert!(!page.contains("not implemented"), "quill.8 still says something is not implemented");
}

/// Issue 14 part 5: hold, release, flush, requeue and bounce by destination or sender while
/// mail flows, and `sendmail -qR` for one domain.
#[test]
fn act_on_part_of_the_queue() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let q = Instance::start("select", |home| {
        let routes = format!("nowhere.test:[127.0.0.1]:{closed}\nother.test:[127.0.0.1]:{closed}\n");
        std::fs::write(home.join("control/smtproutes"), routes).expect("write");
    });
    mail_flows(&q);
    q.sendmail(&["-i", "-f", "alice@localhost", "far@nowhere.test"], "Subject: a\n\nx\n");
    q.sendmail(&["-i", "-f", "bob@localhost", "far@other.test"], "Subject: b\n\nx\n");
    assert!(wait_for(Duration::from_secs(30), || q.log().matches("deferral: Unreachable").count() >= 2), "{}", q.log());
    let id_of = |q: &Instance, domain: &str| -> String {
        let list = text(&q.quill(&["queue", "list", "--domain", domain]));
        list.lines().nth(1).and_then(|l| l.split(' ').next()).unwrap_or_default().to_string()
    };
    let (a, b) = (id_of(&q, "nowhere.test"), id_of(&q, "other.test"));
    assert!(!a.is_empty() && !b.is_empty() && a != b, "{a} {b}");
    let ok = |q: &Instance, args: &[&str]| {
        let out = q.quill(args);
        assert!(out.status.success(), "quill {args:?}: {}", text(&out));
        text(&out)
    };

    let sent = ok(&q, &["queue", "hold", "--domain", "nowhere.test"]);
    assert!(sent.contains(&format!("hold {a}")) && !sent.contains(&b), "{sent}");
    let held = q.home().join("queue/hold").join(&a);
    assert!(wait_for(Duration::from_secs(30), || held.exists()), "{}", q.log());
    assert!(q.home().join("queue/mess").join(&b).exists(), "the other destination's message is not held");
    // Ids are inode numbers and come back: count the pick-ups from here.
    let picked = |q: &Instance| q.log().matches(&format!("new msg {a}\n")).count();
    let before = picked(&q);
    ok(&q, &["queue", "release", "--sender", "ALICE@localhost"]);
    assert!(wait_for(Duration::from_secs(30), || !held.exists() && picked(&q) > before), "{}", q.log());

    // sendmail -qR: only the messages for that domain are flushed.
    let out = common::run(&q.home(), "sendmail", &["-qR", "other.test"], b"");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        wait_for(Duration::from_secs(30), || q.log().contains("status: flush requested for other.test (1 messages)")),
        "{}",
        q.log()
    );
    assert!(q.log().contains(&format!("flush msg {b}: requested by the administrator")), "{}", q.log());
    assert!(!q.log().contains(&format!("flush msg {a}:")), "{}", q.log());

    // The route changes: nowhere.test is delivered here now. requeue routes it anew.
    std::fs::write(q.home().join("control/locals"), "localhost\nnowhere.test\n").expect("locals");
    ok(&q, &["queue", "requeue", "--domain", "nowhere.test"]);
    let mailbox = q.home().join("maildir/far/new");
    assert!(wait_for(Duration::from_secs(30), || !files(&mailbox).is_empty()), "{}", q.log());
    assert!(q.log().contains(&format!("requeue msg {a}: 1 recipients routed anew")), "{}", q.log());
    assert!(q.log().contains("reread control files"), "{}", q.log());

    ok(&q, &["queue", "bounce", "--sender", "bob@"]);
    let bounces = q.home().join("maildir/bob/new");
    assert!(wait_for(Duration::from_secs(30), || !files(&bounces).is_empty()), "{}", q.log());
    assert!(wait_for(Duration::from_secs(30), || text(&q.quill(&["queue", "list"])).contains("0 of 0 messages")));
}

/// Issue 14 part 6: the retry schedule is the administrator's (here: at most 2 seconds
/// between attempts, where qmail's grid waits 400 for the first remote retry).
#[test]
fn retry_schedule_is_tunable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let q = Instance::start("retry", |home| {
        std::fs::write(home.join("control/smtproutes"), format!("nowhere.test:[127.0.0.1]:{closed}\n")).expect("write");
        for (name, value) in [("retrymax", "2"), ("backoffmin", "1"), ("backoffmax", "1")] {
            std::fs::write(home.join("control").join(name), format!("{value}\n")).expect("write");
        }
    });
    q.sendmail(&["-i", "-f", "owner@localhost", "far@nowhere.test"], "Subject: soon\n\nx\n");
    assert!(
        wait_for(Duration::from_secs(30), || q.log().matches("deferral: Unreachable").count() >= 3),
        "not retried within seconds:\n{}",
        q.log()
    );
    let json = String::from_utf8_lossy(&q.quill(&["queue", "list", "--json"]).stdout).into_owned();
    let number = |field: &str| -> u64 {
        let start = json.find(&format!("\"{field}\":")).map(|i| i + field.len() + 3).unwrap_or(0);
        json[start..].split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let (last, next) = (number("last_attempt"), number("next_attempt"));
    assert!(last > 0 && next > last && next - last <= 2, "{json}");
    let out = q.quill(&["check"]);
    assert!(out.status.success(), "the retry files are valid numbers: {}", text(&out));
}

/// Issue 14 part 6: a destination's back-off survives a restart of the queue system, so the
/// restart does not probe hosts known to be down (it used to start with every destination
/// reachable again).
#[test]
fn backoff_survives_a_restart() {
    let (mut q, first, _second) = instance_with_a_dead_destination("restart");
    let status = |q: &Instance| text(&q.quill(&["status"]));
    assert!(wait_for(Duration::from_secs(30), || status(&q).contains("nowhere.test: 1 failures")), "{}", status(&q));
    q.restart();
    assert!(
        wait_for(Duration::from_secs(30), || q.log().contains("status: 1 destinations still backed off")),
        "{}",
        q.log()
    );
    assert!(wait_for(Duration::from_secs(30), || status(&q).contains("nowhere.test: 1 failures")), "{}", status(&q));
    let last = status(&q);
    let last = last.split("last errors:").nth(1).unwrap_or_default();
    assert!(last.contains(&format!("msg {first} to far@nowhere.test: deferral: Unreachable")), "{last}");
    let why = text(&q.quill(&["queue", "why"]));
    assert!(why.contains(&format!("{first} <far@nowhere.test>: retry")), "{why}");
    assert!(why.contains(": backoff: destination nowhere.test backed off"), "{why}");
    assert_eq!(q.log().matches("deferral: Unreachable").count(), 1, "no burst of probes:\n{}", q.log());
}

/// Issue 14 part 6: bouncemaxbytes (validated by check, read by nothing) caps what a bounce
/// carries of the original message.
#[test]
fn bouncemaxbytes_is_honoured() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let q = Instance::start("bouncemax", |home| {
        std::fs::write(home.join("control/smtproutes"), format!("nowhere.test:[127.0.0.1]:{closed}\n")).expect("write");
        std::fs::write(home.join("control/bouncemaxbytes"), "400\n").expect("write");
    });
    let mut message = String::from("Subject: big header\n");
    for n in 1..=40 {
        message.push_str(&format!("X-Filler-{n}: {}\n", "x".repeat(40)));
    }
    message.push_str("\nbody\n");
    q.sendmail(&["-i", "-f", "owner@localhost", "far@nowhere.test"], &message);
    assert!(wait_for(Duration::from_secs(30), || q.log().contains("deferral: Unreachable")), "{}", q.log());
    let out = q.quill(&["queue", "bounce", "--domain", "nowhere.test"]);
    assert!(out.status.success(), "{}", text(&out));
    let bounces = q.home().join("maildir/owner/new");
    assert!(wait_for(Duration::from_secs(30), || !files(&bounces).is_empty()), "{}", q.log());
    let bounce = std::fs::read_to_string(&files(&bounces)[0]).expect("bounce");
    let part = bounce.split("text/rfc822-headers").nth(1).unwrap_or_else(|| panic!("{bounce}"));
    assert!(part.contains("X-Filler-1:"), "{bounce}");
    assert!(!part.contains("X-Filler-40:"), "more than bouncemaxbytes carried:\n{bounce}");
}

/// Issue 14 part 4: the shape of the queue, as qshape draws it: waiting recipients per
/// domain by age (the delivered local recipient is not counted).
#[test]
fn queue_shape_counts_waiting_recipients_by_domain_and_age() {
    let (q, _first, _second) = instance_with_a_dead_destination("shape");
    let out = q.quill(&["queue", "shape"]);
    let shape = text(&out);
    assert!(out.status.success(), "{shape}");
    let lines: Vec<&str> = shape.lines().collect();
    assert!(lines[0].trim_start().starts_with("T     5    10    20"), "{shape}");
    let row = |name: &str| -> Vec<String> {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().skip(1).map(String::from).collect())
            .unwrap_or_else(|| panic!("no {name} row:\n{shape}"))
    };
    assert_eq!(row("TOTAL")[..2], ["2", "2"], "{shape}");
    assert_eq!(row("nowhere.test")[..2], ["2", "2"], "{shape}");
    assert!(!shape.contains("localhost"), "{shape}");
    let by_sender = text(&q.quill(&["queue", "shape", "--sender"]));
    assert!(by_sender.lines().any(|l| l.split_whitespace().take(2).eq(["localhost", "2"])), "{by_sender}");
    let held = text(&q.quill(&["queue", "shape", "--hold"]));
    assert!(held.lines().any(|l| l.split_whitespace().take(2).eq(["TOTAL", "0"])), "{held}");
}

/// Issue 14 part 7: the systemd units run what the daemontools services run, under the same
/// users, and `systemd-analyze verify` finds nothing wrong with them (with the programs of
/// this build in place of /usr/local/bin).
#[test]
fn systemd_units_verify() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf-examples");
    let units = ["quill.service", "quill-smtpd.service", "quill-submission.service", "quill-smtps.service"];
    for (unit, service) in units.iter().zip(["quill", "quill-smtpd", "quill-submission", "quill-smtps"]) {
        let text = std::fs::read_to_string(examples.join("systemd").join(unit)).expect("unit");
        let run = std::fs::read_to_string(examples.join("daemontools").join(service).join("run")).expect("run");
        assert!(!text.contains("\nUser="), "{unit}: the stages drop privileges themselves, as under daemontools");
        assert!(text.contains("QUILL_HOME=/var/quill") && text.contains("StandardError=journal"), "{unit}");
        if service == "quill" {
            assert!(text.contains("quill-start ./Maildir/") && run.contains("quill-start ./Maildir/"));
            assert!(text.contains("KillMode=mixed"), "only quill-start is told to stop");
            continue;
        }
        let port = run.split(" any ").nth(1).and_then(|r| r.split(' ').next()).expect("port in run");
        assert!(text.contains(&format!(" any {port} /usr/local/bin/quill-smtpd")), "{unit}: port {port}");
        assert!(text.contains("-u \"$$(id -u quilld)\" -g \"$$(id -g quilld)\""), "{unit}: quilld, as {service}");
        assert_eq!(text.contains("quill-smtpd -s "), run.contains("quill-smtpd -s "), "{unit}: implicit TLS");
        assert_eq!(text.contains("AUTH_REQUIRED=1"), run.contains("AUTH_REQUIRED=1"), "{unit}");
    }
    if common::skip_without("systemd-analyze") {
        return;
    }
    let dir = TempDir::new("systemd");
    let bindir = format!("{}/", bin("quill").parent().expect("bin dir").display());
    for unit in units {
        let text = std::fs::read_to_string(examples.join("systemd").join(unit)).expect("unit");
        std::fs::write(dir.path().join(unit), text.replace("/usr/local/bin/", &bindir)).expect("write unit");
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(units.iter().map(|u| dir.path().join(u)))
        .output()
        .expect("systemd-analyze");
    let report = text(&out);
    assert!(out.status.success(), "systemd-analyze verify:\n{report}");
    assert!(!units.iter().any(|u| report.contains(u)), "warnings about the units:\n{report}");
}

/// A loopback SMTP "server" that accepts connections and never answers (a slow destination),
/// until dropped; then it closes them, so deliveries in flight end at once.
struct SilentServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentServer {
    fn start() -> SilentServer {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                if let Ok((stream, _)) = listener.accept() {
                    held.push(stream);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        SilentServer { port, stop, thread: Some(thread) }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Issue 14 part 2: a recipient that waits for a free slot at its destination's concurrency
/// limit says so (and `quill status` counts it), while the one in flight is "delivering".
#[test]
fn why_names_the_concurrency_limit() {
    let server = SilentServer::start();
    let q = Instance::start("concurrency", |home| {
        std::fs::write(home.join("control/smtproutes"), format!("slow.test:[127.0.0.1]:{}\n", server.port))
            .expect("write");
        std::fs::write(home.join("control/concurrencydestination"), "1\n").expect("write");
    });
    q.sendmail(&["-i", "-f", "owner@localhost", "a@slow.test"], "Subject: one\n\nx\n");
    q.sendmail(&["-i", "-f", "owner@localhost", "b@slow.test"], "Subject: two\n\nx\n");
    let why = |q: &Instance| text(&q.quill(&["queue", "why"]));
    let limit = "concurrency: destination slow.test is at its concurrency limit (concurrencydestination): 1 \
                 running, 1 parked";
    assert!(wait_for(Duration::from_secs(30), || why(&q).contains(limit)), "{}\n{}", why(&q), q.log());
    assert!(why(&q).contains(": delivering: being delivered now"), "{}", why(&q));
    let status = text(&q.quill(&["status"]));
    assert!(status.contains("slow.test: at its concurrency limit, 1 running, 1 deliveries waiting"), "{status}");
    drop(server);
}

/// Issue 11: `quill status` and `quill check` show each running stage's confinement as the
/// kernel shows it in /proc/PID/status (quill-smtpd sets no_new_privs at its start).
#[test]
fn status_and_check_show_each_stage_confinement() {
    let q = Instance::start("confinement", |_| {});
    let mut session = std::net::TcpStream::connect(("127.0.0.1", q.port)).expect("connect");
    session.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut greeting = [0u8; 64];
    use std::io::Read;
    assert!(session.read(&mut greeting).is_ok_and(|n| n > 0), "no greeting");
    let report = text(&q.quill(&["status"]));
    let nnp = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.lines().any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1'))
    };
    let mut stages = 0;
    for line in report.lines().filter(|l| l.contains(" pid ") && l.contains("confinement: ")) {
        let pid: u32 =
            line.split_whitespace().skip_while(|w| *w != "pid").nth(1).and_then(|p| p.parse().ok()).expect("pid");
        let shown = line.split("confinement: ").nth(1).unwrap_or_default();
        assert_eq!(shown.starts_with("no_new_privs"), nnp(pid), "{line}");
        stages += 1;
    }
    assert!(stages >= 5, "{report}");
    assert!(report.contains("Landlock is not visible there"), "{report}");
    let smtpd = report.lines().find(|l| l.trim_start().starts_with("quill-smtpd ")).expect("a session");
    assert!(smtpd.contains("confinement: no_new_privs"), "{report}");
    let json = String::from_utf8_lossy(&q.quill(&["status", "--json"]).stdout).into_owned();
    if let Some(parsed) = parse_json_lines(&json) {
        for field in [
            "\"no_new_privs\": true",
            "\"no_new_privs\": ",
            "\"seccomp\": \"",
            "\"confined\": ",
            "\"auth_broker\": false",
        ] {
            assert!(parsed[0].contains(field), "missing {field} in {}", parsed[0]);
        }
    }
    let check = text(&q.quill(&["check"]));
    assert!(check.contains("note: confinement of the running stages: quill-start "), "{check}");
    assert!(check.contains("quill-smtpd no_new_privs"), "{check}");
    drop(session);
}
