//! One diagnostic format everywhere: `quill-PROG: fatal: unable to VERB OBJECT: REASON`, one
//! line on stderr, no timestamp (the supervisor's logger adds it).
#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::OnceLock;

static PROGRAM: OnceLock<&'static str> = OnceLock::new();

/// Name the program once, at the top of main.
pub fn init(program: &'static str) {
    let _ = PROGRAM.set(program);
}

/// The program's name as set by [`init`].
pub fn program() -> &'static str {
    PROGRAM.get().copied().unwrap_or("quill")
}

/// Write one log line to stderr: "PROGRAM: TEXT". Newlines inside `text` are replaced so that
/// one event stays one line.
pub fn line(text: &str) {
    let mut out = String::with_capacity(text.len() + 32);
    out.push_str(program());
    out.push_str(": ");
    for c in text.chars() {
        out.push(if c == '\n' || c == '\r' { '/' } else { c });
    }
    out.push('\n');
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

/// A line without the program prefix (qmail-send's own formats: "new msg 123", "status: …").
pub fn raw(text: &str) {
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        out.push(if c == '\n' || c == '\r' { '/' } else { c });
    }
    out.push('\n');
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

/// "PROGRAM: warning: TEXT".
pub fn warning(text: &str) {
    line(&format!("warning: {text}"));
}

/// "PROGRAM: fatal: TEXT".
pub fn fatal(text: &str) {
    line(&format!("fatal: {text}"));
}

/// Render bytes from the outside world for a log line: printable ASCII kept, the rest as `?`.
pub fn safe(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '?' }).collect()
}
