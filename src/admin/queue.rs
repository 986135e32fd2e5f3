//! `quill queue list` and `quill queue show`: the messages waiting in `todo/`, `mess/` and
//! `hold/`, read from their message-file headers. Read-only: changing the queue is
//! quill-send's business (flush, hold, release, delete and bounce go through it).
#![forbid(unsafe_code)]

use crate::mail::queuefile::Header;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The listing itself is shared with `mailq` (inject), so it lives in the mail tier.
pub use crate::mail::queuelist::{entries, find, list_line, Entry, LIST_TITLE, STATES};

/// What `quill queue list` selects. Every criterion given must match.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Part of the sender address (case-insensitive).
    pub sender: Option<String>,
    /// Part of any recipient address (case-insensitive).
    pub recipient: Option<String>,
    /// Only messages queued at least this many seconds ago.
    pub older_than: Option<u64>,
    /// A recipient domain (exact, case-insensitive).
    pub domain: Option<String>,
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    let haystack = haystack.to_ascii_lowercase();
    let needle = needle.to_ascii_lowercase();
    memchr::memmem::find(&haystack, needle.as_bytes()).is_some()
}

impl Filter {
    /// True when `entry` passes every criterion, at time `now`.
    pub fn matches(&self, entry: &Entry, now: u64) -> bool {
        let envelope = &entry.header.envelope;
        if let Some(s) = &self.sender {
            if !contains(&envelope.sender, s) {
                return false;
            }
        }
        if let Some(r) = &self.recipient {
            if !envelope.recipients.iter().any(|rcpt| contains(rcpt, r)) {
                return false;
            }
        }
        if let Some(d) = &self.domain {
            let want = crate::mail::address::normal_domain(d.as_bytes());
            if !envelope
                .recipients
                .iter()
                .any(|rcpt| crate::mail::address::normal_domain(crate::mail::address::split(rcpt).1) == want)
            {
                return false;
            }
        }
        if let Some(age) = self.older_than {
            if now.saturating_sub(entry.header.time) < age {
                return false;
            }
        }
        true
    }
}

/// The most of a message's header section `show` prints.
pub const MAX_SHOWN_HEADER: usize = 64 * 1024;

/// `quill queue show`: the envelope, the queueing facts, each recipient explained
/// (`super::why`), and the message's header section (all of the message with `body`).
pub fn show(entry: &Entry, recipients: &[super::why::Recipient], now: u64, body: bool) -> String {
    let h = &entry.header;
    let mut out = String::new();
    out.push_str(&format!("id:         {}\n", entry.id));
    out.push_str(&format!("state:      {}\n", super::why::summary(entry, recipients)));
    out.push_str(&format!(
        "queued:     {} ({} ago)\n",
        crate::base::date::rfc5322(h.time),
        super::age(now.saturating_sub(h.time))
    ));
    out.push_str(&format!("queued by:  uid {} ({}), quill-queue pid {}\n", h.uid, super::user_name(h.uid), h.pid));
    out.push_str(&format!("size:       {} bytes\n", entry.size));
    out.push_str(&format!("file:       {}\n", entry.path.display()));
    let sender = &h.envelope.sender;
    out.push_str(&format!("sender:     <{}>\n", crate::base::log::safe(sender)));
    out.push_str("recipients:\n");
    for r in recipients {
        out.push_str(&super::why::recipient_text(r, now));
    }
    out.push('\n');
    let mut message = Vec::new();
    if let Ok(mut file) = File::open(&entry.path) {
        let mut all = Vec::new();
        let limit =
            if body { u64::MAX } else { (MAX_SHOWN_HEADER as u64) + (crate::mail::queuefile::MAX_HEADER as u64) };
        let _ = (&mut file).take(limit).read_to_end(&mut all);
        if let Ok((_, offset)) = Header::decode(&all) {
            message = all[offset..].to_vec();
        }
    }
    if !body {
        if let Some(end) = memchr::memmem::find(&message, b"\n\n") {
            message.truncate(end + 1);
        }
        message.truncate(MAX_SHOWN_HEADER);
    }
    out.push_str(&crate::base::log::safe_text(&message));
    out
}

/// Send `action` (`flush`, `hold`, …) for each of `ids` (or for every message, without ids)
/// to quill-send through `queue/lock/control` (`mail::proto::control`); `requeue` first asks
/// for a `reread`, to route with the control files as they are now. Ids are checked here
/// too, so a typo is reported at once rather than only in the log. The lines go in writes of
/// at most `PIPE_BUF` bytes that end at a line's end, so that they reach quill-send whole
/// even when two administrators write at once; a full FIFO is waited for (a minute at most:
/// quill-send reads it in every turn of its loop).
pub fn request(home: &Path, action: &str, ids: &[String]) -> crate::base::fail::Result<()> {
    use crate::base::fail::Error;
    use crate::mail::proto::control::{self, Verb};
    use std::io::Write;
    let verb = Verb::from_word(action).ok_or_else(|| Error::permanent(format!("unknown request {action:?}")))?;
    let mut requests = Vec::new();
    if verb == Verb::Requeue {
        requests.push(control::Request { verb: Verb::Reread, id: None });
    }
    if ids.is_empty() {
        requests.push(control::Request { verb, id: None });
    }
    for id in ids {
        let Some(id) = control::parse_id(id) else {
            return Err(Error::permanent(format!("{id:?} is not a queue id (see quill queue list)")));
        };
        requests.push(control::Request { verb, id: Some(id) });
    }
    let lines: Vec<String> = requests.iter().map(control::Request::encode).collect();
    let path = crate::mail::queuefile::Layout::new(home).control();
    let mut fifo = crate::mail::queuefile::open_fifo(&path, false).map_err(|e| match e.raw_os_error() {
        Some(libc::ENXIO) => Error::temporary("unable to reach quill-send: it is not running"),
        Some(libc::EACCES) => {
            Error::temporary(format!("unable to open {}: permission denied (run as root)", path.display()))
        }
        _ => Error::io(format_args!("open {}", path.display()), &e),
    })?;
    let mut batches: Vec<String> = Vec::new();
    for line in &lines {
        match batches.last_mut() {
            Some(batch) if batch.len() + line.len() <= libc::PIPE_BUF => batch.push_str(line),
            _ => batches.push(line.clone()),
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for batch in &batches {
        loop {
            match fifo.write(batch.as_bytes()) {
                Ok(n) if n == batch.len() => break,
                Ok(_) => return Err(Error::temporary(format!("unable to write to {}: short write", path.display()))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(Error::io(format_args!("write to {}", path.display()), &e)),
            }
        }
    }
    let shown: Vec<&str> = lines.iter().map(|l| l.trim_end()).collect();
    if shown.len() > 6 {
        println!("sent to quill-send: {}; … ({} requests)", shown[..5].join("; "), shown.len());
    } else {
        println!("sent to quill-send: {}", shown.join("; "));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::mail::envelope::Envelope;
    use std::path::PathBuf;

    fn entry(sender: &[u8], rcpts: &[&[u8]], time: u64) -> Entry {
        Entry {
            id: "42".into(),
            state: "todo",
            path: PathBuf::from("/nonexistent"),
            header: Header {
                uid: 0,
                pid: 1,
                time,
                nanos: 0,
                envelope: Envelope { sender: sender.to_vec(), recipients: rcpts.iter().map(|r| r.to_vec()).collect() },
                dsn: Default::default(),
            },
            size: 10,
            retrying: false,
            info: None,
        }
    }

    #[test]
    fn filters() {
        let e = entry(b"Alice@Example.org", &[b"bob@example.com", b"carol@Other.NET"], 1000);
        let all = Filter::default();
        assert!(all.matches(&e, 1000));
        assert!(Filter { sender: Some("alice@example".into()), ..all.clone() }.matches(&e, 1000));
        assert!(!Filter { sender: Some("bob".into()), ..all.clone() }.matches(&e, 1000));
        assert!(Filter { recipient: Some("CAROL".into()), ..all.clone() }.matches(&e, 1000));
        assert!(Filter { domain: Some("other.net".into()), ..all.clone() }.matches(&e, 1000));
        assert!(!Filter { domain: Some("net".into()), ..all.clone() }.matches(&e, 1000));
        assert!(Filter { older_than: Some(60), ..all.clone() }.matches(&e, 1060));
        assert!(!Filter { older_than: Some(60), ..all }.matches(&e, 1059));
    }

    #[test]
    fn list_line_shows_the_envelope() {
        let e = entry(b"", &[b"a@b", b"c@d", b"e@f", b"g@h"], 0);
        let line = list_line(&e, 7200);
        assert!(line.starts_with("42 "), "{line}");
        assert!(line.contains("<> -> a@b c@d e@f (+1 more)"), "{line}");
    }
}
