//! Shared helpers for the integration tests: fresh homes in temporary directories, the real
//! binaries, bounded waits. Every test builds its own world and tears it down.
#![allow(dead_code)]

pub mod dnsmasq;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of one of the project's programs, as cargo built it for this test run.
pub fn bin(name: &str) -> PathBuf {
    PathBuf::from(match name {
        "quill-clean" => env!("CARGO_BIN_EXE_quill-clean"),
        "quill-inject" => env!("CARGO_BIN_EXE_quill-inject"),
        "quill-local" => env!("CARGO_BIN_EXE_quill-local"),
        "quill-lspawn" => env!("CARGO_BIN_EXE_quill-lspawn"),
        "quill-newu" => env!("CARGO_BIN_EXE_quill-newu"),
        "quill-queue" => env!("CARGO_BIN_EXE_quill-queue"),
        "quill-queued" => env!("CARGO_BIN_EXE_quill-queued"),
        "quill-remote" => env!("CARGO_BIN_EXE_quill-remote"),
        "quill-rspawn" => env!("CARGO_BIN_EXE_quill-rspawn"),
        "quill-send" => env!("CARGO_BIN_EXE_quill-send"),
        "quill-smtpd" => env!("CARGO_BIN_EXE_quill-smtpd"),
        "quill-start" => env!("CARGO_BIN_EXE_quill-start"),
        "quill-tcpserver" => env!("CARGO_BIN_EXE_quill-tcpserver"),
        "quill-up" => env!("CARGO_BIN_EXE_quill-up"),
        "quill" => env!("CARGO_BIN_EXE_quill"),
        "sendmail" => env!("CARGO_BIN_EXE_sendmail"),
        _ => panic!("no program called {name} in src/bin/"),
    })
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("quill-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("QUILL_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A Quill home with a queue tree and the given control files (name, contents).
pub fn home(tag: &str, controls: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new(tag);
    quill::mail::queuefile::create_tree(dir.path(), None).expect("create queue tree");
    for (name, contents) in controls {
        std::fs::write(dir.path().join("control").join(name), contents).expect("write control file");
    }
    dir
}

/// Run a program with QUILL_HOME set, feeding `stdin`; returns its output.
pub fn run(home: &Path, program: &str, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(bin(program))
        .args(args)
        .env("QUILL_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    out
}

/// Wait until `check` is true, polling every 20 ms, for at most `limit`. Returns whether it
/// became true (tests assert on that; they never assert a duration).
pub fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// Files in a directory (empty if it does not exist).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// Say that (part of) a test did not run, and why: a `SKIP: reason` line on stderr, and the
/// same line with the test's name appended to the file `QUILL_SKIP_LOG` names (`make test`
/// sets it, then counts and lists the lines: cargo test hides the output of passing tests).
/// Every SKIP goes through here; tests/suite.rs checks that.
pub fn skip(reason: &str) {
    eprintln!("SKIP: {reason}");
    if let Some(log) = std::env::var_os("QUILL_SKIP_LOG") {
        use std::io::Write;
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let line = format!("{test}: {}\n", reason.replace('\n', " "));
        // One write of one short line with O_APPEND: lines of tests running in parallel (in
        // this process or another test binary) do not mix.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("warning: unable to append to QUILL_SKIP_LOG {}: {e}", Path::new(&log).display());
        }
    }
}

/// True after a SKIP line if `program` is not installed (a name looked up in PATH, or a path).
pub fn skip_without(program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
        .unwrap_or(false)
        || Path::new(program).is_file();
    if !found {
        skip(&format!("{program} is not installed"));
    }
    !found
}

/// True after a SKIP line unless `program args` runs and prints `expect` (on stdout or stderr;
/// the exit status is not looked at: `git send-email -h` exits 1): a check that an installed tool can do what the test asks of it. `what` says
/// what the test needs, for the SKIP line.
pub fn skip_unless_can(program: &str, args: &[&str], expect: &str, what: &str) -> bool {
    if skip_without(program) {
        return true;
    }
    let able = Command::new(program).args(args).stdin(Stdio::null()).output().is_ok_and(|out| {
        String::from_utf8_lossy(&out.stdout).contains(expect) || String::from_utf8_lossy(&out.stderr).contains(expect)
    });
    if !able {
        skip(&format!("{program} cannot {what} (`{program} {}` does not say {expect:?})", args.join(" ")));
    }
    !able
}

/// swaks, able to speak TLS if `tls` (Perl's Net::SSLeay and IO::Socket::SSL, which Debian
/// only recommends) and SMTP AUTH.
pub fn skip_without_swaks(tls: bool) -> bool {
    if tls {
        skip_unless_can(
            "swaks",
            &["--support"],
            "TLS supported",
            "do STARTTLS (install libnet-ssleay-perl and libio-socket-ssl-perl)",
        ) || skip_unless_can("swaks", &["--support"], "Basic AUTH supported", "do SMTP AUTH")
    } else {
        skip_without("swaks")
    }
}

/// python3 with these modules (smtplib, ssl, …).
pub fn skip_without_python(modules: &[&str]) -> bool {
    let script = format!("import {}\nprint('modules ok')", modules.join(", "));
    skip_unless_can("python3", &["-c", &script], "modules ok", &format!("import {}", modules.join(", ")))
}

/// True when the tests run as root (CI): then they also check real uids.
pub fn is_root() -> bool {
    quill::base::sys::uids().1 == 0
}

/// `quill setup` makes the built quill-queue setuid quillq, and a setuid quill-queue ignores
/// QUILL_HOME: the other test programs, which run it on temporary homes, would then write to
/// the compiled-in home. This puts the owner and mode back when the test ends.
pub struct RestoreQueueProgram {
    path: std::path::PathBuf,
    saved: Option<(u32, u32, u32)>,
}

impl RestoreQueueProgram {
    pub fn new() -> RestoreQueueProgram {
        let path = bin("quill-queue");
        let saved = quill::admin::owner_mode(&path);
        RestoreQueueProgram { path, saved }
    }
}

impl Drop for RestoreQueueProgram {
    fn drop(&mut self) {
        if let Some((uid, gid, mode)) = self.saved {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::os::unix::fs::chown(&self.path, Some(uid), Some(gid));
            let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode));
        }
    }
}

/// Pids of the processes running `program` (by the end of argv[0]) whose environment has
/// QUILL_HOME=`home`: the stages of one instance among others on the machine.
pub fn instance_pids(home: &std::path::Path, program: &str) -> Vec<i32> {
    let want = format!("QUILL_HOME={}", home.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if !cmdline.split(|&b| b == 0).next().unwrap_or(&[]).ends_with(program.as_bytes()) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// A spawned daemon that is stopped when the test ends, even by a panic: SIGTERM, up to 10 s
/// to go, then SIGKILL. Without it a failed assertion leaves the daemon running, holding the
/// test's stdout, and `make test`'s `tee` waits for it forever.
pub struct Daemon(pub std::process::Child);

impl Daemon {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Stops it now (what Drop does) and says how it ended.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        let _ = wait_for(Duration::from_secs(10), || !matches!(self.0.try_wait(), Ok(None)));
        let _ = self.0.kill();
        self.0.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// Write an executable script (mode 0755). Another process (install(1)) writes the file
/// itself: a descriptor this test process held open for writing would be inherited by any
/// child another test thread forks meanwhile, and until that child execs, running the script
/// fails with ETXTBSY ("Text file busy").
pub fn write_script(path: &Path, text: impl AsRef<[u8]>) {
    let mut source = path.as_os_str().to_owned();
    source.push(".source");
    let source = PathBuf::from(source);
    std::fs::write(&source, text).expect("write script source");
    let status = Command::new("install").arg("-m").arg("0755").arg(&source).arg(path).status().expect("run install");
    assert!(status.success(), "install {}", path.display());
    let _ = std::fs::remove_file(&source);
}
