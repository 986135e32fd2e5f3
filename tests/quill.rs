//! `quill`, the administrator's front end: help texts, stats from a log, queue list/show on
//! message files, check's problems and fixes, and (as root) setup: idempotent, with links.

mod common;

use common::{bin, home, is_root, TempDir};
use std::path::Path;
use std::process::{Command, Output, Stdio};

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
    let out = quill(&["queue", "flush", "123"], Some(home.path()), b"");
    assert_eq!(out.status.code(), Some(100), "flush takes no id");
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
    let header = quill::queuefile::Header {
        uid: 1000,
        pid: 4242,
        time,
        envelope: quill::envelope::Envelope {
            sender: sender.to_vec(),
            recipients: rcpts.iter().map(|r| r.to_vec()).collect(),
        },
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
    let now = quill::date::now();
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
        "state:      mess (being delivered; waiting for a retry",
        "sender:     <alice@example.org>",
        "recipients: <bob@example.com>",
        "            <carol@example.net>",
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
    queue_message(home.path(), "todo", b"a@b", &[b"c@d"], quill::date::now(), "Subject: x\n\ny\n");
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
            ("virtualdomains", "virtual.example:joe\n"),
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
