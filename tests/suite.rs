//! The test suite's own rules (audit item 15): every SKIP line reaches the skip log that
//! `make test` counts, a tool that is installed but cannot do what a test asks gives a SKIP line,
//! and the summary line counts skips apart.
#![forbid(unsafe_code)]

mod common;

use std::path::Path;
use std::process::Command;

use common::TempDir;

const CHILD: &str = "QUILL_SUITE_CHILD";

/// Runs only as the child of `skips_are_logged_with_the_test_name` (which sets QUILL_SKIP_LOG
/// to a file of its own); elsewhere it does nothing, so the real skip log stays honest.
#[test]
fn child_that_skips() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    // Installed but unable: the probe's text is missing.
    assert!(common::skip_unless_can("sh", &["-c", "echo plain swaks"], "TLS supported", "do STARTTLS"));
    // Installed and able.
    assert!(!common::skip_unless_can("sh", &["-c", "echo '=== TLS supported'"], "TLS supported", "do STARTTLS"));
    // Not installed.
    assert!(common::skip_without("quill-no-such-program"));
    assert!(common::skip_without_python(&["quill_no_such_module"]) || common::skip_without("python3"));
}

#[test]
fn skips_are_logged_with_the_test_name() {
    let dir = TempDir::new("suite");
    let log = dir.path().join("skips");
    let out = Command::new(std::env::current_exe().expect("test executable"))
        .args(["--exact", "child_that_skips", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("QUILL_SKIP_LOG", &log)
        .output()
        .expect("run the child test");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&log).expect("the skip log");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines.iter().all(|l| l.starts_with("child_that_skips: ")), "{text}");
    assert!(lines[0].contains("sh cannot do STARTTLS"), "{text}");
    assert!(lines[1].contains("quill-no-such-program is not installed"), "{text}");
    assert!(lines[2].contains("quill_no_such_module") || lines[2].contains("python3"), "{text}");
    // The same lines on stderr, as before.
    assert_eq!(String::from_utf8_lossy(&out.stderr).matches("SKIP: ").count(), 3);
}

/// A SKIP printed any other way would not be counted.
#[test]
fn every_skip_goes_through_common_skip() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut offenders = Vec::new();
    for file in common::files(&tests).into_iter().filter(|f| f.extension().is_some_and(|e| e == "rs")) {
        let text = std::fs::read_to_string(&file).expect("read test source");
        for (n, line) in text.lines().enumerate() {
            if line.contains(concat!("print", "ln!(\"SKIP")) || line.contains(concat!("print", "!(\"SKIP")) {
                offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "use common::skip for these SKIP lines:\n{}", offenders.join("\n"));
}

/// The last line of `make test`.
#[test]
fn summary_counts_skips_apart() {
    let dir = TempDir::new("summary");
    let log = dir.path().join("test.log");
    let skips = dir.path().join("skips");
    std::fs::write(
        &log,
        "test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.00s\n\
         test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\n",
    )
    .expect("write log");
    std::fs::write(&skips, "a: swaks cannot do STARTTLS\nb: dnsmasq is not installed\n").expect("write skips");
    let summary = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/summary");
    let out = Command::new(&summary).arg(&log).arg(&skips).output().expect("run tests/summary");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().last(), Some("tests: 7 passed, 1 failed, 2 skipped"), "{text}");
    assert!(text.contains("  a: swaks cannot do STARTTLS\n"), "{text}");
    let out = Command::new(&summary).arg(&log).arg(dir.path().join("none")).output().expect("run tests/summary");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tests: 7 passed, 1 failed, 0 skipped\n");
}
