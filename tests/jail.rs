//! conf-examples/jail/make-jail builds a minimal root (Quill's programs, their libraries,
//! passwd/group entries, a home made by `quill setup` inside it), and the whole system runs
//! in it: quill-start in a chroot (with its own /proc, from `unshare --mount-proc`), a
//! message from sendmail inside the root delivered to the alias Maildir, every stage under
//! its own uid. Root only.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Quill's accounts, as `quill setup` makes them, where the host lacks them.
fn ensure_accounts() {
    for group in ["quill", "nofiles"] {
        if nix::unistd::Group::from_name(group).ok().flatten().is_none() {
            let _ = Command::new("groupadd").args(["--system", group]).status();
        }
    }
    for (user, group) in [
        ("quilld", "nofiles"),
        ("quillq", "quill"),
        ("quills", "quill"),
        ("quillr", "quill"),
        ("quilll", "nofiles"),
        ("alias", "nofiles"),
    ] {
        if nix::unistd::User::from_name(user).ok().flatten().is_none() {
            let _ = Command::new("useradd")
                .args(["--system", "--no-create-home", "--gid", group, "--home-dir", "/nonexistent", user])
                .status();
        }
    }
}

fn children(pid: u32) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    text.split_whitespace().filter_map(|n| n.parse().ok()).collect()
}

fn real_uid_and_name(pid: u32) -> (u32, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("").trim().to_string();
    (field("Uid:").split_whitespace().next().and_then(|u| u.parse().ok()).unwrap_or(u32::MAX), field("Name:"))
}

fn uid_of(user: &str) -> u32 {
    nix::unistd::User::from_name(user).ok().flatten().map(|u| u.uid.as_raw()).unwrap_or(u32::MAX)
}

#[test]
fn the_whole_system_runs_in_a_minimal_root() {
    if !common::is_root() {
        common::skip("not root, so no chroot");
        return;
    }
    if common::skip_unless_can("unshare", &["--help"], "--mount-proc", "mount a private /proc") {
        return;
    }
    ensure_accounts();
    let dir = common::TempDir::new("jail");
    let root = dir.path().join("root");
    let bindir: PathBuf = common::bin("quill-start").parent().expect("bindir").to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf-examples/jail/make-jail");
    let made =
        Command::new("sh").arg(&script).args(["-s", "-b"]).arg(&bindir).arg(&root).output().expect("run make-jail");
    let said = format!("{}{}", String::from_utf8_lossy(&made.stdout), String::from_utf8_lossy(&made.stderr));
    assert!(made.status.success(), "make-jail:\n{said}");
    // Nothing but what Quill needs: no shell, no other program.
    assert!(!root.join("bin/sh").exists() && !root.join("usr/bin/sh").exists(), "{said}");
    assert!(root.join("usr/local/bin/quill-queue").is_file() && root.join("var/quill/queue/todo").is_dir(), "{said}");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    assert!(passwd.contains("alias:") && passwd.contains("quillq:"), "{passwd}");

    // Its own /proc and pid namespace: quill-start is pid 1 there, and nothing is mounted on
    // the host's side (the mount dies with the namespace).
    let log = dir.path().join("log");
    let mut system = Command::new("unshare")
        .args(["--mount", "--pid", "--fork"])
        .arg(format!("--mount-proc={}", root.join("proc").display()))
        .arg("chroot")
        .arg(&root)
        .args(["/usr/local/bin/quill-start", "./Maildir/"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::options().append(true).open(&log).expect("log"))
        .spawn()
        .expect("start quill-start in the root");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let up = common::wait_for(Duration::from_secs(30), || read_log().contains("status: local"));
    let token = format!("jail-{}", std::process::id());
    let sent = up
        && Command::new("chroot")
            .arg(&root)
            .args(["/usr/local/bin/sendmail", "-f", "root", "root"])
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(format!("Subject: {token}\n\nin the jail\n").as_bytes())?;
                child.wait()
            })
            .is_ok_and(|status| status.success());
    let mailbox = root.join("var/quill/alias/Maildir/new");
    let delivered = sent
        && common::wait_for(Duration::from_secs(30), || {
            common::files(&mailbox).iter().any(|f| std::fs::read_to_string(f).unwrap_or_default().contains(&token))
        });
    // Every stage under its own uid, seen from the host: unshare → quill-start → the stages.
    let start = children(system.id()).first().copied();
    let stages: Vec<(u32, String)> =
        start.map(children).unwrap_or_default().into_iter().map(real_uid_and_name).collect();
    if let Some(start) = start {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(start as i32), nix::sys::signal::SIGTERM);
    }
    let stopped = common::wait_for(Duration::from_secs(30), || matches!(system.try_wait(), Ok(Some(_))));
    if !stopped {
        let _ = system.kill();
    }
    let _ = system.wait();
    assert!(up, "quill-start did not come up in the root:\n{}", read_log());
    assert!(sent, "sendmail failed in the root:\n{}", read_log());
    assert!(delivered, "not delivered in the root:\n{}", read_log());
    for (name, user) in
        [("quill-send", "quills"), ("quill-clean", "quillq"), ("quill-rspawn", "quillr"), ("quill-lspawn", "root")]
    {
        let uid = stages.iter().find(|(_, n)| n == name).map(|(u, _)| *u);
        assert_eq!(uid, Some(uid_of(user)), "{name} in the root: {stages:?}");
    }
    assert!(stopped, "quill-start did not stop on SIGTERM:\n{}", read_log());
}
