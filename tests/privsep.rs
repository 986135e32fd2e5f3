//! As root (CI is root): the stages run under their own uids (DESIGN §2), and a delivery runs
//! as the recipient. Elsewhere this prints a SKIP line.

mod common;

use common::{bin, files, wait_for, TempDir};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn ensure_group(name: &str) {
    if nix::unistd::Group::from_name(name).ok().flatten().is_none() {
        let _ = Command::new("groupadd").args(["-r", name]).status();
    }
}

fn ensure_user(name: &str, group: &str, home: &str) -> nix::unistd::User {
    if let Some(user) = nix::unistd::User::from_name(name).ok().flatten() {
        if user.dir.as_os_str() != home && home != "/nonexistent" {
            // Left by an earlier run with another temp dir: point it at this one.
            let _ = Command::new("usermod").args(["-d", home, name]).status();
        }
    } else {
        let status = Command::new("useradd")
            .args(["-r", "-g", group, "-d", home, "-s", "/bin/sh", name])
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {name}");
    }
    nix::unistd::User::from_name(name).ok().flatten().expect("user exists")
}

/// Real uid of a process, from /proc/PID/status.
fn real_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Pids of `program` whose QUILL_HOME is `home`.
fn pids(program: &str, home: &Path) -> Vec<i32> {
    let want = format!("QUILL_HOME={}", home.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or(&[]);
        if !argv0.ends_with(program.as_bytes()) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn stages_run_under_their_own_uids() {
    if !common::is_root() {
        common::skip("stages_run_under_their_own_uids needs root");
        return;
    }
    if common::skip_without("/usr/sbin/useradd") {
        return;
    }
    let dir = TempDir::new("privsep");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let home = dir.path().join("quill");
    ensure_group("quill");
    ensure_group("nofiles");
    let quillq = ensure_user("quillq", "quill", "/nonexistent");
    let quills = ensure_user("quills", "quill", "/nonexistent");
    let _quillr = ensure_user("quillr", "quill", "/nonexistent");
    let alias = ensure_user("alias", "nofiles", &home.join("alias").display().to_string());
    let group = nix::unistd::Group::from_name("quill").ok().flatten().expect("group quill");
    std::fs::create_dir_all(&home).expect("mkdir home");
    quill::mail::queuefile::create_tree(
        &home,
        Some(quill::mail::queuefile::Owners {
            quillq: quillq.uid.as_raw(),
            quills: quills.uid.as_raw(),
            quill_group: group.gid.as_raw(),
        }),
    )
    .expect("queue tree");
    std::fs::create_dir_all(home.join("alias")).expect("alias dir");
    std::os::unix::fs::chown(home.join("alias"), Some(alias.uid.as_raw()), None).expect("chown alias");
    std::fs::write(home.join("control/me"), "localhost\n").expect("me");
    std::fs::write(home.join("control/aliases"), format!("{}\n", home.join("aliases").display())).expect("aliases");
    std::fs::write(home.join("aliases"), "# none\n").expect("aliases file");

    // The recipient: a real user with a Maildir and a program delivery that records its uid.
    let user_home = dir.path().join("rcpt");
    let rcpt = ensure_user("quillprivsep", "nofiles", &user_home.display().to_string());
    for sub in ["", "Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp"] {
        let p = user_home.join(sub);
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    std::fs::set_permissions(&user_home, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(user_home.join(".qmail"), "./Maildir/\n|id -u > uid.out; sleep 1\n").expect(".qmail");
    for p in ["Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp", ".qmail", ""] {
        std::os::unix::fs::chown(user_home.join(p), Some(rcpt.uid.as_raw()), Some(rcpt.gid.as_raw())).expect("chown");
    }
    // quill-queue is setuid quillq in a real install; here the submission runs as quillq,
    // which is what the setuid bit gives (a setuid copy would ignore QUILL_HOME).
    let mut start = Command::new(bin("quill-start"))
        .arg("./Maildir/")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("QUILL_HOME", &home)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("log")).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("quill-start");
    assert!(wait_for(Duration::from_secs(20), || pids("quill-send", &home).len() == 1), "quill-send runs");

    use std::os::unix::process::CommandExt;
    let mut submit = Command::new(bin("sendmail"));
    submit
        .args(["-i", "quillprivsep@localhost"])
        .env("QUILL_HOME", &home)
        .uid(quillq.uid.as_raw())
        .gid(group.gid.as_raw())
        .stdin(Stdio::piped());
    let mut child = submit.spawn().expect("sendmail");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"Subject: privsep\n\nhello\n").expect("write");
    }
    assert!(child.wait().expect("wait").success(), "sendmail accepted the message");

    let delivered = wait_for(Duration::from_secs(30), || {
        !files(&user_home.join("Maildir/new")).is_empty() && user_home.join("uid.out").exists()
    });
    // While the program delivery sleeps, every stage is alive: check their uids.
    let expect = [
        ("quill-send", quills.uid.as_raw()),
        ("quill-clean", quillq.uid.as_raw()),
        ("quill-queued", quillq.uid.as_raw()),
        ("quill-lspawn", 0),
        ("quill-start", 0),
    ];
    let mut problems = Vec::new();
    for (program, uid) in expect {
        let found = pids(program, &home);
        if found.is_empty() {
            problems.push(format!("{program} is not running"));
        }
        for pid in found {
            if real_uid(pid) != Some(uid) {
                problems.push(format!("{program} runs as {:?}, expected {uid}", real_uid(pid)));
            }
        }
    }
    for pid in pids("quill-local", &home) {
        if real_uid(pid) != Some(rcpt.uid.as_raw()) {
            problems.push(format!("quill-local runs as {:?}", real_uid(pid)));
        }
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(start.id() as i32), nix::sys::signal::SIGTERM);
    let _ = wait_for(Duration::from_secs(30), || !matches!(start.try_wait(), Ok(None)));
    let _ = start.kill();
    let _ = start.wait();

    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(delivered, "the message was delivered; log:\n{log}");
    assert!(problems.is_empty(), "{problems:?}");
    let file = &files(&user_home.join("Maildir/new"))[0];
    assert_eq!(
        std::fs::metadata(file).expect("stat").uid(),
        rcpt.uid.as_raw(),
        "the mailbox file belongs to the recipient"
    );
    let uid_out = std::fs::read_to_string(user_home.join("uid.out")).expect("uid.out");
    assert_eq!(uid_out.trim(), rcpt.uid.as_raw().to_string(), "programs run as the recipient");
    let queued = files(&home.join("queue/todo")).first().cloned();
    assert!(queued.is_none(), "queue empty");
}
