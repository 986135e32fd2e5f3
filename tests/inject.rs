//! quill-inject and sendmail, run for real against a real quill-queue in a temporary home:
//! the fields they add, Bcc, recipients from the header, senders, full names, dots, CRLF,
//! and the exit codes when the queue program fails.

mod common;

use common::{files, TempDir};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const CONTROLS: &[(&str, &str)] =
    &[("me", "mx.example.net"), ("defaulthost", "example.org"), ("idhost", "id.example.org")];

/// Run a submission program with QUILL_HOME and extra environment; NAME and friends are
/// cleared so that the caller's environment cannot leak into the From field.
fn submit(home: &Path, program: &str, args: &[&str], envs: &[(&str, &str)], stdin: &[u8]) -> Output {
    submit_path(home, &common::bin(program), args, envs, stdin)
}

fn submit_path(home: &Path, program: &Path, args: &[&str], envs: &[(&str, &str)], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut command = Command::new(program);
    command.args(args).env("QUILL_HOME", home);
    for name in ["NAME", "MAILNAME", "QMAILNAME", "QMAILQUEUE"] {
        command.env_remove(name);
    }
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    out
}

/// The queued messages: (envelope, message without quill-queue's Received line).
fn queued(home: &Path) -> Vec<(quill::mail::envelope::Envelope, String)> {
    files(&home.join("queue/todo"))
        .iter()
        .map(|path| {
            let mut file = File::open(path).expect("open queued");
            let (header, offset) = quill::mail::queuefile::read_header(&mut file).expect("header");
            let bytes = std::fs::read(path).expect("read queued");
            let rest = &bytes[offset as usize..];
            assert!(rest.starts_with(b"Received: (quill "));
            let start = rest.iter().position(|&b| b == b'\n').expect("Received line") + 1;
            (header.envelope, String::from_utf8_lossy(&rest[start..]).into_owned())
        })
        .collect()
}

fn only(home: &Path) -> (quill::mail::envelope::Envelope, String) {
    let mut all = queued(home);
    assert_eq!(all.len(), 1, "messages in todo/");
    all.remove(0)
}

fn addresses(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|a| a.as_bytes().to_vec()).collect()
}

fn login() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name).expect("passwd entry for the test user")
}

fn ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
}

/// The header part of a message, split into its lines.
fn header_lines(message: &str) -> Vec<&str> {
    message.split("\n\n").next().unwrap_or("").lines().collect()
}

#[test]
fn missing_fields_are_added() {
    for program in ["quill-inject", "sendmail"] {
        let home = common::home("inject-fields", CONTROLS);
        let out = submit(home.path(), program, &["rcpt@dest.example"], &[], b"Subject: hello\n\nbody line\n");
        ok(&out);
        let (envelope, message) = only(home.path());
        let me = format!("{}@example.org", login());
        assert_eq!(envelope.sender, me.as_bytes());
        assert_eq!(envelope.recipients, addresses(&["rcpt@dest.example"]));
        let lines = header_lines(&message);
        assert_eq!(lines[0], "Subject: hello");
        assert!(lines.iter().any(|l| l.starts_with("Date: ") && l.ends_with(" +0000")), "{message}");
        let id = lines.iter().find(|l| l.starts_with("Message-ID: <")).expect("Message-ID");
        assert!(id.ends_with("@id.example.org>"), "{id}");
        assert!(lines.contains(&format!("From: {me}").as_str()), "{message}");
        assert!(message.ends_with("\n\nbody line\n"), "{message}");
    }
}

#[test]
fn existing_fields_are_kept() {
    let home = common::home("inject-keep", CONTROLS);
    let input = b"From: Someone <some@one.example>\nDate: Mon, 1 Jan 2001 00:00:00 +0000\nMessage-Id: <x@y>\nTo: a@b.example\n\nbody\n";
    ok(&submit(home.path(), "quill-inject", &[], &[], input));
    let (envelope, message) = only(home.path());
    assert_eq!(message.as_bytes(), input);
    assert_eq!(envelope.recipients, addresses(&["a@b.example"]));
}

#[test]
fn recipients_from_the_header_and_bcc_removed() {
    let input = b"To: Alice <alice@a.example>, bob\nCc: team: carol@c.example, \"Dan, D\" <dan@d.example>;\n\
                  Bcc: hidden@h.example,\n  (comment) other@h.example\nSubject: s\n\nbody\n";
    for (program, args) in [("quill-inject", vec!["-t"]), ("quill-inject", vec![]), ("sendmail", vec!["-t"])] {
        let home = common::home("inject-t", CONTROLS);
        ok(&submit(home.path(), program, &args, &[], input));
        let (envelope, message) = only(home.path());
        assert_eq!(
            envelope.recipients,
            addresses(&[
                "alice@a.example",
                "bob@example.org",
                "carol@c.example",
                "dan@d.example",
                "hidden@h.example",
                "other@h.example"
            ]),
            "{program} {args:?}"
        );
        assert!(!message.to_ascii_lowercase().contains("bcc"), "{message}");
        assert!(!message.contains("hidden@h.example"), "{message}");
        assert!(message.starts_with("To: Alice <alice@a.example>, bob\nCc: team:"), "{message}");
    }

    // -t with recipients on the command line: both.
    let home = common::home("inject-t-args", CONTROLS);
    ok(&submit(home.path(), "sendmail", &["-t", "extra"], &[], b"To: x@x.example\n\nb\n"));
    assert_eq!(only(home.path()).0.recipients, addresses(&["extra@example.org", "x@x.example"]));

    // Without -t, recipients on the command line win and the header is not read for them,
    // but Bcc still goes.
    let home = common::home("inject-not", CONTROLS);
    ok(&submit(home.path(), "quill-inject", &["only@o.example"], &[], b"To: x@x.example\nBcc: y@y.example\n\nb\n"));
    let (envelope, message) = only(home.path());
    assert_eq!(envelope.recipients, addresses(&["only@o.example"]));
    assert!(!message.contains("y@y.example"));
}

#[test]
fn resent_fields_choose_the_recipients() {
    let home = common::home("inject-resent", CONTROLS);
    let input = b"From: a@a.example\nTo: old@o.example\nDate: d\nMessage-ID: <m@m>\nResent-To: new@n.example\nResent-Bcc: quiet@q.example\n\nb\n";
    ok(&submit(home.path(), "quill-inject", &["-t"], &[], input));
    let (envelope, message) = only(home.path());
    assert_eq!(envelope.recipients, addresses(&["new@n.example", "quiet@q.example"]));
    assert!(!message.contains("quiet@"), "{message}");
    assert!(message.contains("\nResent-From: ") && message.contains("\nResent-Date: "), "{message}");
}

#[test]
fn sender_options() {
    let input = b"Subject: s\n\nb\n";
    for (program, args, sender) in [
        ("quill-inject", vec!["-f", "boss@b.example", "r@x.example"], "boss@b.example"),
        ("sendmail", vec!["-fboss@b.example", "r@x.example"], "boss@b.example"),
        ("sendmail", vec!["-r", "boss", "r@x.example"], "boss@example.org"),
        ("sendmail", vec!["-f", "<>", "r@x.example"], ""),
        ("quill-inject", vec!["-f", "", "r@x.example"], ""),
    ] {
        let home = common::home("inject-f", CONTROLS);
        ok(&submit(home.path(), program, &args, &[], input));
        let (envelope, message) = only(home.path());
        assert_eq!(envelope.sender, sender.as_bytes(), "{program} {args:?}");
        // The From field names the caller, whatever the envelope says.
        assert!(message.contains(&format!("\nFrom: {}@example.org\n", login())), "{message}");
    }
}

#[test]
fn full_names() {
    let me = format!("{}@example.org", login());
    for (program, args, envs, from) in [
        ("quill-inject", vec!["-F", "Joe User"], vec![], format!("From: Joe User <{me}>")),
        ("sendmail", vec!["-FJoe Q. User"], vec![], format!("From: \"Joe Q. User\" <{me}>")),
        ("sendmail", vec![], vec![("NAME", "Env Name")], format!("From: Env Name <{me}>")),
        ("quill-inject", vec![], vec![("NAME", "Low"), ("QMAILNAME", "High")], format!("From: High <{me}>")),
        ("quill-inject", vec!["-F", "Flag"], vec![("NAME", "Env")], format!("From: Flag <{me}>")),
        ("sendmail", vec!["-F", "Evil\nBcc: x@x"], vec![], format!("From: \"Evil Bcc: x@x\" <{me}>")),
    ] {
        let home = common::home("inject-F", CONTROLS);
        let mut all = args.clone();
        all.push("r@x.example");
        ok(&submit(home.path(), program, &all, &envs, b"Subject: s\n\nb\n"));
        let (_, message) = only(home.path());
        assert!(header_lines(&message).contains(&from.as_str()), "{program} {args:?}: {message}");
    }
}

#[test]
fn a_lone_dot_ends_input_unless_i() {
    let input = b"Subject: dots\n\nfirst\n.\nafter the dot\n";
    let cases: &[(&str, &[&str], bool)] = &[
        ("sendmail", &[], true),
        ("sendmail", &["-i"], false),
        ("sendmail", &["-oi"], false),
        ("quill-inject", &[], true),
        ("quill-inject", &["-i"], false),
    ];
    for (program, options, ends) in cases {
        let home = common::home("inject-dot", CONTROLS);
        let mut args = options.to_vec();
        args.push("r@x.example");
        ok(&submit(home.path(), program, &args, &[], input));
        let (_, message) = only(home.path());
        if *ends {
            assert!(message.ends_with("\n\nfirst\n"), "{program} {options:?}: {message}");
        } else {
            assert!(message.ends_with("\n\nfirst\n.\nafter the dot\n"), "{program} {options:?}: {message}");
        }
    }
    // A dot line inside the header ends the whole message there.
    let home = common::home("inject-dot-header", CONTROLS);
    ok(&submit(home.path(), "sendmail", &["r@x.example"], &[], b"Subject: s\r\n.\r\nTo: nobody\r\n"));
    let (_, message) = only(home.path());
    assert!(message.starts_with("Subject: s\n") && !message.contains("nobody"), "{message}");
}

#[test]
fn crlf_becomes_lf() {
    let home = common::home("inject-crlf", CONTROLS);
    ok(&submit(
        home.path(),
        "sendmail",
        &["-t"],
        &[],
        b"To: a@b.example\r\nSubject: s\r\n\r\nline one\r\nlone\rcr\r\nlast",
    ));
    let (envelope, message) = only(home.path());
    assert_eq!(envelope.recipients, addresses(&["a@b.example"]));
    assert!(!message.contains("\r\n"), "{message:?}");
    assert!(message.starts_with("To: a@b.example\nSubject: s\n"), "{message:?}");
    assert!(message.ends_with("\n\nline one\nlone\rcr\nlast\n"), "{message:?}");
}

#[test]
fn mbox_from_line_and_headerless_input() {
    let home = common::home("inject-mbox", CONTROLS);
    ok(&submit(
        home.path(),
        "quill-inject",
        &["r@x.example"],
        &[],
        b"From someone Mon Jan  1 00:00:00 2001\nSubject: s\n\nb\n",
    ));
    let (_, message) = only(home.path());
    assert!(message.starts_with("Subject: s\n"), "{message}");

    let home = common::home("inject-nohead", CONTROLS);
    ok(&submit(home.path(), "quill-inject", &["r@x.example"], &[], b"just a body\nline two\n"));
    let (_, message) = only(home.path());
    assert!(message.ends_with("\n\njust a body\nline two\n"), "{message}");
    assert!(message.starts_with("Date: "), "{message}");
}

#[test]
fn big_message_streams_through() {
    let home = common::home("inject-big", CONTROLS);
    let mut input = b"Subject: big\n\n".to_vec();
    let mut body = Vec::new();
    for i in 0..60_000 {
        body.extend_from_slice(format!("line {i} {}\n", "x".repeat(40)).as_bytes());
    }
    input.extend_from_slice(&body);
    ok(&submit(home.path(), "sendmail", &["-i", "r@x.example"], &[], &input));
    let (_, message) = only(home.path());
    assert!(message.ends_with(&String::from_utf8_lossy(&body).into_owned()));
    assert!(files(&home.path().join("queue/tmp")).is_empty());
}

/// A stand-in queue program that exits with `code` (QMAILQUEUE is honoured by callers that
/// are not setuid).
fn fake_queue(dir: &TempDir, code: u8) -> PathBuf {
    let path = dir.path().join(format!("qq-{code}"));
    common::write_script(&path, format!("#!/bin/sh\nexec >/dev/null\nexit {code}\n"));
    path
}

#[test]
fn queue_failures_map_to_exit_codes() {
    if common::skip_without("/bin/sh") {
        return;
    }
    let scripts = TempDir::new("inject-qq");
    for (code, inject_exit, sendmail_exit, words) in
        [(53u8, 111, 75, "disk full"), (31, 100, 69, "permanently"), (11, 100, 69, "too long"), (81, 111, 75, "bug")]
    {
        let queue = fake_queue(&scripts, code);
        let queue = queue.to_str().expect("utf-8 path");
        for (program, expected) in [("quill-inject", inject_exit), ("sendmail", sendmail_exit)] {
            let home = common::home("inject-fail", CONTROLS);
            let out = submit(home.path(), program, &["r@x.example"], &[("QMAILQUEUE", queue)], b"Subject: s\n\nbody\n");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(expected), "{program} with qq {code}: {stderr}");
            assert!(stderr.starts_with(&format!("{program}: fatal: ")) && stderr.contains(words), "{stderr}");
            assert!(queued(home.path()).is_empty());
        }
    }
}

#[test]
fn refusals_before_the_queue() {
    let home = common::home("inject-refuse", CONTROLS);
    // No recipients anywhere.
    let out = submit(home.path(), "quill-inject", &[], &[], b"Subject: s\n\nb\n");
    assert_eq!(out.status.code(), Some(100));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no recipients"));
    let out = submit(home.path(), "sendmail", &["-t"], &[], b"Subject: s\n\nb\n");
    assert_eq!(out.status.code(), Some(65));
    // A recipient with a newline in it.
    let out = submit(home.path(), "sendmail", &["a\nb@x"], &[], b"b\n");
    assert_eq!(out.status.code(), Some(65));
    // Bad usage.
    let out = submit(home.path(), "quill-inject", &["-X"], &[], b"b\n");
    assert_eq!(out.status.code(), Some(100));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: quill-inject"));
    for bad in [&["-X", "r@x"][..], &["-oQ/tmp", "r@x"], &["-f"], &["-bd"]] {
        let out = submit(home.path(), "sendmail", bad, &[], b"b\n");
        assert_eq!(out.status.code(), Some(64), "{bad:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage: sendmail"), "{bad:?}");
    }
    // -q with no quill-send to wake: a temporary failure that says why (tests/system.rs runs
    // -bs, -bp, -bi and -q against a live instance).
    let out = submit(home.path(), "sendmail", &["-q30m"], &[], b"");
    assert_eq!(out.status.code(), Some(75));
    assert!(String::from_utf8_lossy(&out.stderr).contains("quill-send is not running"));
    assert!(queued(home.path()).is_empty());
}

#[test]
fn harmless_sendmail_options_are_accepted() {
    let home = common::home("inject-harmless", CONTROLS);
    let args =
        ["-oem", "-odi", "-odb", "-om", "-v", "-Nnever", "-B", "8BITMIME", "-bm", "-oee", "-i", "--", "r@x.example"];
    ok(&submit(home.path(), "sendmail", &args, &[], b"Subject: s\n\nb\n"));
    assert_eq!(only(home.path()).0.recipients, addresses(&["r@x.example"]));
}

#[test]
fn mailq_and_newaliases_names() {
    let dir = TempDir::new("inject-names");
    let home = common::home("inject-names-home", CONTROLS);
    std::fs::write(home.path().join("control/aliases"), "control/aliasfile\n").expect("write");
    std::fs::write(home.path().join("control/aliasfile"), "postmaster: root\n").expect("write");
    for (name, says) in [("mailq", "Mail queue is empty"), ("newaliases", "1 aliases")] {
        let link = dir.path().join(name);
        std::os::unix::fs::symlink(common::bin("sendmail"), &link).expect("symlink");
        let out = submit_path(home.path(), &link, &[], &[], b"");
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(says),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn one_spawn_per_message() {
    if common::skip_without("strace") && common::skip_without("/usr/bin/strace") {
        return;
    }
    let home = common::home("inject-spawn", CONTROLS);
    let log = home.path().join("strace.log");
    let mut args: Vec<String> = vec!["-f".into(), "-e".into(), "trace=execve".into(), "-o".into()];
    args.push(log.to_string_lossy().into_owned());
    args.push(common::bin("sendmail").to_string_lossy().into_owned());
    args.push("-t".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let strace = PathBuf::from("strace");
    let out = submit_path(home.path(), &strace, &args, &[], b"To: a@b.example\n\nb\n");
    if out.status.code() != Some(0) {
        common::skip(&format!("strace did not run sendmail: {}", String::from_utf8_lossy(&out.stderr)));
        return;
    }
    let trace = std::fs::read_to_string(&log).expect("strace log");
    let execs: Vec<&str> = trace.lines().filter(|l| l.contains("execve(") && l.contains("= 0")).collect();
    assert_eq!(execs.len(), 2, "sendmail itself and quill-queue only: {trace}");
    assert!(execs[1].contains("quill-queue"), "{trace}");
}

#[test]
fn a_filter_gets_fd_6_for_its_own_reply() {
    if common::skip_without("/bin/sh") {
        return;
    }
    let scripts = TempDir::new("inject-qq82");
    let path = scripts.path().join("qq-82");
    common::write_script(&path, "#!/bin/sh\nexec >/dev/null\nprintf 'Dnot from you' >&6\nexit 82\n");
    let queue = path.to_str().expect("utf-8 path");
    let home = common::home("inject-qq82", CONTROLS);
    let out = submit(home.path(), "quill-inject", &["r@x.example"], &[("QMAILQUEUE", queue)], b"Subject: s\n\nbody\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(100), "{stderr}");
    assert!(stderr.contains("not from you"), "{stderr}");
}
