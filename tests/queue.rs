//! quill-queue, run for real: the qmail-queue protocol, what lands in the queue, what a
//! refusal leaves behind (nothing), crashes, the trigger, and setuid behaviour.

mod common;

use common::{files, home, TempDir};
use quill::mail::queuefile::read_header;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Start quill-queue with the message pipe on fd 0 and the envelope pipe on fd 1.
fn start(command: &mut Command) -> (Child, std::process::ChildStdin, File) {
    let (envelope_read, envelope_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::from(envelope_read))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quill-queue");
    let stdin = child.stdin.take().expect("stdin");
    (child, stdin, File::from(envelope_write))
}

struct Run {
    code: Option<i32>,
    pid: u32,
    stderr: String,
}

/// Run `command` (quill-queue or a wrapper around it): write the message, close it, write
/// the envelope, close it, wait. Write errors (the program exited early) are ignored.
fn feed(command: &mut Command, message: &[u8], envelope: &[u8]) -> Run {
    let (mut child, mut stdin, mut fd1) = start(command);
    let pid = child.id();
    let message = message.to_vec();
    let envelope = envelope.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&message);
        drop(stdin);
        let _ = fd1.write_all(&envelope);
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut status = None;
    let exited = common::wait_for(Duration::from_secs(60), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("quill-queue did not finish within 60 s");
    }
    let _ = writer.join();
    let stderr = reader.join().unwrap_or_default();
    Run { code: status.and_then(|s| s.code()), pid, stderr }
}

fn queue_command(home: &Path) -> Command {
    let mut c = Command::new(common::bin("quill-queue"));
    c.env("QUILL_HOME", home);
    c
}

fn run_queue(home: &Path, message: &[u8], envelope: &[u8]) -> Run {
    feed(&mut queue_command(home), message, envelope)
}

fn assert_empty(home: &Path) {
    assert!(files(&home.join("queue/tmp")).is_empty(), "tmp/ not empty: {:?}", files(&home.join("queue/tmp")));
    assert!(files(&home.join("queue/todo")).is_empty(), "todo/ not empty: {:?}", files(&home.join("queue/todo")));
}

/// The single message in todo/: its header and the bytes after it.
fn only_message(home: &Path) -> (quill::mail::queuefile::Header, Vec<u8>, std::fs::Metadata, String) {
    let todo = files(&home.join("queue/todo"));
    assert_eq!(todo.len(), 1, "todo/: {todo:?}");
    let mut file = File::open(&todo[0]).expect("open queued file");
    let (header, offset) = read_header(&mut file).expect("decode header");
    let bytes = std::fs::read(&todo[0]).expect("read queued file");
    let name = todo[0].file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    (header, bytes[offset as usize..].to_vec(), file.metadata().expect("stat"), name)
}

fn envelope(sender: &str, recipients: &[&str]) -> Vec<u8> {
    quill::mail::envelope::Envelope {
        sender: sender.as_bytes().to_vec(),
        recipients: recipients.iter().map(|r| r.as_bytes().to_vec()).collect(),
    }
    .encode()
}

#[test]
fn good_message_is_queued_and_pulls_the_trigger() {
    let home = home("queue-good", &[]);
    let mut trigger = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(home.path().join("queue/lock/trigger"))
        .expect("open trigger");
    let message = b"Subject: hello\n\nbody\n";
    let run = run_queue(home.path(), message, &envelope("a@b.example", &["c@d.example", "e@f.example"]));
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);

    let (header, rest, meta, name) = only_message(home.path());
    assert_eq!(header.envelope.sender, b"a@b.example");
    assert_eq!(header.envelope.recipients, vec![b"c@d.example".to_vec(), b"e@f.example".to_vec()]);
    assert_eq!(header.uid, quill::base::sys::uids().0);
    assert_eq!(header.pid, run.pid);
    assert_eq!(name, meta.ino().to_string(), "the queue id is the inode number");
    assert_eq!(meta.mode() & 0o777, 0o640);
    let received = format!("Received: (quill {} invoked by uid {}); ", run.pid, header.uid);
    assert!(rest.starts_with(received.as_bytes()), "{}", String::from_utf8_lossy(&rest));
    let line_end = rest.iter().position(|&b| b == b'\n').expect("Received line ends") + 1;
    assert_eq!(&rest[line_end..], message);
    assert!(files(&home.path().join("queue/tmp")).is_empty());

    let mut byte = [0u8; 16];
    assert_eq!(trigger.read(&mut byte).expect("read trigger"), 1, "one byte in the trigger");
}

#[test]
fn empty_sender_and_message() {
    let home = home("queue-empty", &[]);
    let run = run_queue(home.path(), b"", &envelope("", &["x@y"]));
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let (header, rest, _, _) = only_message(home.path());
    assert!(header.envelope.sender.is_empty());
    assert!(rest.starts_with(b"Received: "));
}

#[test]
fn malformed_envelopes_leave_nothing() {
    let long = format!("F{}\0Tx@y\0\0", "a".repeat(1004));
    let long_rcpt = format!("Fa@b\0T{}@y\0\0", "r".repeat(1002));
    let mut many = b"Fa@b\0".to_vec();
    for i in 0..=quill::mail::envelope::MAX_RECIPIENTS {
        many.extend_from_slice(format!("Tr{i}@x\0").as_bytes());
    }
    many.push(0);
    let cases: Vec<(&str, Vec<u8>, i32)> = vec![
        ("missing F", b"Tx@y\0\0".to_vec(), 91),
        ("other record", b"Fa@b\0Xx@y\0\0".to_vec(), 91),
        ("unterminated", b"Fa@b\0Tx@y\0".to_vec(), 54),
        ("cut in an address", b"Fa@b\0Tx@".to_vec(), 54),
        ("empty", Vec::new(), 54),
        ("long sender", long.into_bytes(), 11),
        ("long recipient", long_rcpt.into_bytes(), 11),
        ("CR in address", b"Fa@b\0Tx\r@y\0\0".to_vec(), 91),
        ("LF in address", b"Fa\n@b\0Tx@y\0\0".to_vec(), 91),
        ("too many recipients", many, 91),
    ];
    for (what, bytes, code) in cases {
        let home = home("queue-bad", &[]);
        let run = run_queue(home.path(), b"Subject: x\n\nbody\n", &bytes);
        assert_eq!(run.code, Some(code), "{what}: stderr {}", run.stderr);
        if what == "empty" {
            // Closed before its first byte: the caller abandoned the message and says why.
            assert_eq!(run.stderr, "", "{what}");
        } else {
            assert!(run.stderr.starts_with("quill-queue: fatal: "), "{what}: {}", run.stderr);
        }
        assert_empty(home.path());
    }
}

#[test]
fn unreadable_message_is_54() {
    let home = home("queue-unreadable", &[]);
    // A directory as fd 0: read(2) fails with EISDIR.
    let (envelope_read, envelope_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let child = queue_command(home.path())
        .stdin(File::open(home.path()).expect("open dir"))
        .stdout(Stdio::from(envelope_read))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut fd1 = File::from(envelope_write);
    let _ = fd1.write_all(&envelope("a@b", &["c@d"]));
    drop(fd1);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(54));
    assert_empty(home.path());
}

#[test]
fn missing_directories_give_their_codes() {
    let env = envelope("a@b", &["c@d"]);
    let nowhere = TempDir::new("queue-nohome");
    let run = run_queue(&nowhere.path().join("absent"), b"x\n", &env);
    assert_eq!(run.code, Some(61), "{}", run.stderr);

    for (dir, code) in [("queue", 62), ("queue/tmp", 63), ("queue/todo", 66)] {
        let home = home("queue-missing", &[]);
        std::fs::remove_dir_all(home.path().join(dir)).expect("remove dir");
        let run = run_queue(home.path(), b"Subject: x\n\nbody\n", &env);
        assert_eq!(run.code, Some(code), "without {dir}: {}", run.stderr);
        if dir != "queue" {
            assert_empty(home.path());
        }
    }
}

#[test]
fn write_errors_are_53_and_leave_nothing() {
    if common::skip_without("/bin/sh") {
        return;
    }
    // A file size limit makes every write past it fail (EFBIG; quill-queue ignores SIGXFSZ).
    // 10 kB stays in memory and fails on the queue file; 3 MiB fails on the spill file.
    for size in [10_000usize, 3 << 20] {
        let home = home("queue-fsize", &[]);
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg("ulimit -f 4 && exec \"$0\"")
            .arg(common::bin("quill-queue"))
            .env("QUILL_HOME", home.path());
        let message = vec![b'x'; size];
        let run = feed(&mut command, &message, &envelope("a@b", &["c@d"]));
        assert_eq!(run.code, Some(53), "size {size}: {}", run.stderr);
        assert_empty(home.path());
    }
}

#[test]
fn big_message_round_trips_through_the_spill_file() {
    let home = home("queue-big", &[]);
    let message: Vec<u8> = (0..(3usize << 20) + 4321).map(|i| (i * 7 % 256) as u8).collect();
    let run = run_queue(home.path(), &message, &envelope("a@b", &["c@d"]));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (_, rest, _, _) = only_message(home.path());
    let line_end = rest.iter().position(|&b| b == b'\n').expect("Received line") + 1;
    assert!(rest[line_end..] == message[..], "message differs");
    assert!(files(&home.path().join("queue/tmp")).is_empty());
}

#[test]
fn killed_mid_message_leaves_nothing_in_todo() {
    for size in [1000usize, 2 << 20] {
        let home = home("queue-kill", &[]);
        let (mut child, mut stdin, fd1) = start(&mut queue_command(home.path()));
        // Once write_all returns, all but one pipe buffer has been read (and, for the large
        // message, spilled); fd 0 stays open.
        stdin.write_all(&vec![b'y'; size]).expect("write message");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL)
            .expect("kill");
        assert!(common::wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten().is_some()));
        drop(stdin);
        drop(fd1);
        assert_empty(home.path());
    }
}

#[test]
fn exactly_two_fsyncs() {
    if common::skip_without("strace") && common::skip_without("/usr/bin/strace") {
        return;
    }
    let home = home("queue-strace", &[]);
    let log = home.path().join("strace.log");
    let mut command = Command::new("strace");
    command
        .arg("-f")
        .arg("-e")
        .arg("trace=fsync,fdatasync,sync_file_range,syncfs,sync")
        .arg("-o")
        .arg(&log)
        .arg(common::bin("quill-queue"))
        .env("QUILL_HOME", home.path());
    let run = feed(&mut command, b"Subject: x\n\nbody\n", &envelope("a@b", &["c@d"]));
    if run.code != Some(0) {
        // strace may be forbidden (no ptrace in this container): not our failure.
        common::skip(&format!("strace did not run quill-queue: {}", run.stderr));
        return;
    }
    let trace = std::fs::read_to_string(&log).expect("read strace log");
    let syncs = trace.lines().filter(|l| l.contains("sync")).count();
    assert_eq!(syncs, 2, "{trace}");
}

/// A scratch user for the uid tests (root only); None when it cannot be had.
fn scratch_user() -> Option<nix::unistd::User> {
    let name = "quilltest";
    if let Ok(Some(user)) = nix::unistd::User::from_name(name) {
        return Some(user);
    }
    let made = Command::new("useradd")
        .args(["-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", name])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !made {
        // Another test may have created it at the same moment.
        return nix::unistd::User::from_name(name).ok().flatten();
    }
    nix::unistd::User::from_name(name).ok().flatten()
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir").flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

#[test]
fn real_uid_of_the_caller_is_recorded() {
    if !common::is_root() {
        common::skip("not root, cannot run quill-queue under another uid");
        return;
    }
    let Some(user) = scratch_user() else {
        common::skip("no scratch user (useradd failed)");
        return;
    };
    let home = home("queue-uid", &[]);
    chown_tree(home.path(), user.uid.as_raw(), user.gid.as_raw());
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut command = queue_command(home.path());
    use std::os::unix::process::CommandExt;
    command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    let run = feed(&mut command, b"x\n", &envelope("a@b", &["c@d"]));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (header, rest, _, _) = only_message(home.path());
    assert_eq!(header.uid, user.uid.as_raw());
    let received = format!("Received: (quill {} invoked by uid {}); ", run.pid, user.uid.as_raw());
    assert!(rest.starts_with(received.as_bytes()));
}

#[test]
fn setuid_copy_ignores_quill_home() {
    if !common::is_root() {
        common::skip("not root, cannot make a setuid copy");
        return;
    }
    if Path::new(quill::mail::control::DEFAULT_HOME).exists() {
        common::skip(&format!("{} exists; a setuid run would write into it", quill::mail::control::DEFAULT_HOME));
        return;
    }
    let Some(user) = scratch_user() else {
        common::skip("no scratch user (useradd failed)");
        return;
    };
    let home = home("queue-setuid", &[]);
    let bin = TempDir::new("queue-setuid-bin");
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let copy = bin.path().join("quill-queue");
    std::fs::copy(common::bin("quill-queue"), &copy).expect("copy binary");
    std::os::unix::fs::chown(&copy, Some(user.uid.as_raw()), Some(user.gid.as_raw())).expect("chown");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).expect("chmod 4755");
    let mount = nix::sys::statvfs::statvfs(bin.path()).expect("statvfs");
    if mount.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID) {
        common::skip(&format!("{} is mounted nosuid", bin.path().display()));
        return;
    }
    let mut command = Command::new(&copy);
    command.env("QUILL_HOME", home.path()).env("QMAILQUEUE", "/bin/false");
    let run = feed(&mut command, b"Subject: x\n\nbody\n", &envelope("a@b", &["c@d"]));
    // The compiled-in home does not exist here: trouble with the home directory.
    assert_eq!(run.code, Some(61), "{}", run.stderr);
    assert!(run.stderr.contains(quill::mail::control::DEFAULT_HOME), "{}", run.stderr);
    assert_empty(home.path());
}

/// Audit item 4: root submitting into a queue that belongs to someone else acts as that owner,
/// who could have swapped `tmp/` and `todo/` for links to directories of root's. Root must
/// not create or move a file there; the owner, who may not, gets a temporary failure.
#[test]
fn root_submitting_into_anothers_queue_acts_as_its_owner() {
    if !common::is_root() {
        common::skip("not root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").ok().flatten().expect("user nobody");
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let home = home("queue-owner", &[]);
    chown_tree(home.path(), uid, gid);
    // As the owner's own: the file is the owner's, root's group does not leak into it.
    let run = run_queue(home.path(), b"Subject: x\n\nbody\n", &envelope("a@b", &["c@d"]));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (header, _, meta, _) = only_message(home.path());
    assert_eq!((header.uid, meta.uid(), meta.gid()), (0, uid, gid));

    let outside = TempDir::new("queue-owner-outside");
    for (entry, target) in [("tmp", "tmp-target"), ("todo", "todo-target")] {
        let link = home.path().join("queue").join(entry);
        std::fs::rename(&link, home.path().join("queue").join(format!("{entry}.real"))).expect("rename");
        std::fs::create_dir(outside.path().join(target)).expect("mkdir");
        std::os::unix::fs::symlink(outside.path().join(target), &link).expect("symlink");
        std::os::unix::fs::lchown(&link, Some(uid), Some(gid)).expect("lchown");
    }
    let run = run_queue(home.path(), b"Subject: y\n\nbody\n", &envelope("a@b", &["c@d"]));
    assert_eq!(run.code, Some(63), "{}", run.stderr);
    for target in ["tmp-target", "todo-target"] {
        assert!(files(&outside.path().join(target)).is_empty(), "root wrote into {target}");
    }
}
