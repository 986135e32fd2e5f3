//! One diagnostic format everywhere: `quill-PROG: fatal: unable to VERB OBJECT: REASON`, one
//! line on stderr, no timestamp (the supervisor's logger adds it).
#![forbid(unsafe_code)]

use crate::base::fail::{Error, Outcome};
use std::cell::RefCell;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;

static PROGRAM: Mutex<Option<&'static str>> = Mutex::new(None);

/// A held log buffer holds at most this much before it is written anyway.
const HELD_LIMIT: usize = 16 * 1024;

thread_local! {
    /// Lines held by a busy event loop ([`hold`]) until it next sleeps ([`flush`]).
    static HELD: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// From now on this thread's log lines are held and written together by [`flush`], in one
/// write: an event loop (quill-send) logs several lines per message, and each write wakes
/// the supervisor's logger. The loop must call [`flush`] before it sleeps, so a line waits
/// only while the loop is busy; a fatal line writes everything held first.
pub fn hold() {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        if h.is_none() {
            *h = Some(Vec::with_capacity(HELD_LIMIT));
        }
    });
}

/// Write the held lines, if any, in one write.
pub fn flush() {
    HELD.with(|h| {
        if let Some(buffer) = h.borrow_mut().as_mut() {
            if !buffer.is_empty() {
                let _ = std::io::stderr().lock().write_all(buffer);
                buffer.clear();
            }
        }
    });
}

/// Writes the held lines when dropped: a loop that holds its lines keeps one of these so that
/// every way out of it (a return, a panic unwinding) writes what is held.
pub struct HeldLines;

impl Drop for HeldLines {
    fn drop(&mut self) {
        flush();
    }
}

/// Write one finished line: into the held buffer when holding, else straight to stderr.
fn emit(line: &[u8]) {
    let held = HELD.with(|h| match h.borrow_mut().as_mut() {
        Some(buffer) => {
            buffer.extend_from_slice(line);
            Some(buffer.len() >= HELD_LIMIT)
        }
        None => None,
    });
    match held {
        Some(true) => flush(),
        Some(false) => {}
        None => {
            let _ = std::io::stderr().lock().write_all(line);
        }
    }
}

/// Name the program once, at the top of main.
pub fn init(program: &'static str) {
    if let Ok(mut name) = PROGRAM.lock() {
        name.get_or_insert(program);
    }
}

/// Name the process anew: quill-lspawn's forked delivery child speaks as quill-local, which
/// is the code it runs (a fork keeps the parent's name, an exec would have set its own).
pub fn rename(program: &'static str) {
    if let Ok(mut name) = PROGRAM.lock() {
        *name = Some(program);
    }
}

/// The program's name as set by [`init`] (or [`rename`]).
pub fn program() -> &'static str {
    PROGRAM.lock().ok().and_then(|name| *name).unwrap_or("quill")
}

/// How a character of a log line is written: line ends as `/` so that one event stays one
/// line, other controls (ESC above all: logs are read on terminals) as `?`. This is the net
/// under every caller; bytes from outside still go through [`safe`] first.
fn shown(c: char) -> char {
    match c {
        '\n' | '\r' => '/',
        '\t' => c,
        c if c.is_control() => '?',
        c => c,
    }
}

/// Write one log line to stderr: "PROGRAM: TEXT". Newlines inside `text` are replaced so that
/// one event stays one line, and other controls too.
pub fn line(text: &str) {
    let mut out = String::with_capacity(text.len() + 32);
    out.push_str(program());
    out.push_str(": ");
    for c in text.chars() {
        out.push(shown(c));
    }
    out.push('\n');
    emit(out.as_bytes());
}

/// A line without the program prefix (qmail-send's own formats: "new msg 123", "status: …").
pub fn raw(text: &str) {
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        out.push(shown(c));
    }
    out.push('\n');
    emit(out.as_bytes());
}

/// "PROGRAM: warning: TEXT".
pub fn warning(text: &str) {
    line(&format!("warning: {text}"));
}

/// "PROGRAM: fatal: TEXT".
pub fn fatal(text: &str) {
    line(&format!("fatal: {text}"));
    flush();
}

/// "PROGRAM: fatal: TEXT", and the temporary exit code (111) for main to return: the one way
/// a program gives up when a retry may work (and when unsure).
pub fn fatal_exit(text: &str) -> ExitCode {
    fatal(text);
    Outcome::Temporary.exit()
}

/// "PROGRAM: fatal: TEXT", and the permanent exit code (100): for a command line that cannot
/// work as it is, or a failure no retry can fix.
pub fn fatal_permanent(text: &str) -> ExitCode {
    fatal(text);
    Outcome::Permanent.exit()
}

/// "PROGRAM: fatal: " and the error's words, and the error's own exit code.
pub fn fatal_error(error: &Error) -> ExitCode {
    fatal(&error.message);
    ExitCode::from(error)
}

/// Render bytes from the outside world for a log line: printable ASCII and printable UTF-8
/// characters kept (an international address stays readable); controls, white space other
/// than the space, bidi overrides and bytes that are not UTF-8 become `?`, so a line stays one
/// line of fields.
pub fn safe(bytes: &[u8]) -> String {
    if bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        return bytes.iter().map(|&b| b as char).collect();
    }
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let keep = c == ' ' || (!is_dangerous(c) && !c.is_whitespace());
            out.push(if keep { c } else { '?' });
        }
        out.extend(chunk.invalid().iter().map(|_| '?'));
    }
    out
}

/// Whether a character must not reach a terminal as it is: C0 and C1 controls, DEL, and the
/// bidirectional overrides and isolates that make text read in another order than it is.
fn is_dangerous(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// Render text from outside (a message's header, say) for a person's terminal, keeping its
/// lines: newlines, tabs, printable ASCII and UTF-8 characters are kept; every other byte (ESC,
/// CR, other controls, bytes that are not UTF-8) and every bidi override appears as `\xHH` or
/// `\u{HHHH}`, and a backslash as `\\`, so that nothing is lost and no escape sequence reaches
/// the terminal.
pub fn safe_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' | '\t' => out.push(c),
                '\\' => out.push_str("\\\\"),
                c if is_dangerous(c) && (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if is_dangerous(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_text_escapes_what_a_terminal_would_act_on() {
        assert_eq!(safe_text(b"Subject: hi\n\tthere\n"), "Subject: hi\n\tthere\n");
        assert_eq!(safe_text(b"Subject: \x1b[2J\x1b]0;owned\x07\r\n"), "Subject: \\x1b[2J\\x1b]0;owned\\x07\\x0d\n");
        assert_eq!(safe_text("caf\u{e9} \u{202e}txt.exe\u{9b}1m".as_bytes()), "caf\u{e9} \\u{202e}txt.exe\\u{009b}1m");
        assert_eq!(safe_text(b"a\\x1b \xff\xfe"), "a\\\\x1b \\xff\\xfe");
        assert_eq!(safe(b"\x1b[31mred"), "?[31mred");
        let line: String = "a\x1b[2J\r\nb\u{9b}\tc".chars().map(shown).collect();
        assert_eq!(line, "a?[2J//b?\tc");
    }
}
