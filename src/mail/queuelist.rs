//! The queue listing: the messages waiting in `todo/`, `mess/` and `hold/`, read from their
//! message-file headers and quill-send's `info/` files, and the one line per message that
//! `mailq` (`sendmail -bp`, inject) and `quill queue list` (admin) both print. Read-only.
#![forbid(unsafe_code)]

use crate::base::fail::Error;
use crate::mail::queuefile::{read_header, valid_id, Header, Layout};
use std::fs::File;
use std::path::{Path, PathBuf};

/// One message in the queue.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The queue id (decimal inode number).
    pub id: String,
    /// `todo` (not picked up yet), `mess` (being delivered) or `hold`.
    pub state: &'static str,
    /// The message file.
    pub path: PathBuf,
    /// Its header: who queued it, when, the envelope.
    pub header: Header,
    /// Size of the message itself (without the header).
    pub size: u64,
    /// True when quill-send keeps retry state for it (`info/ID`).
    pub retrying: bool,
    /// That retry state, when it can be read and belongs to this message.
    pub info: Option<crate::mail::proto::info::Info>,
}

/// The directories a message can be in, in the order they are listed.
pub const STATES: [&str; 3] = ["todo", "mess", "hold"];

fn state_dir(layout: &Layout, state: &str) -> PathBuf {
    match state {
        "todo" => layout.todo(),
        "mess" => layout.mess(),
        _ => layout.hold(),
    }
}

fn load(layout: &Layout, state: &'static str, id: &str) -> Result<Entry, Error> {
    let path = state_dir(layout, state).join(id);
    let mut file = File::open(&path).map_err(|e| Error::io(format_args!("open {}", path.display()), &e))?;
    let (header, offset) = read_header(&mut file)
        .map_err(|e| Error { message: format!("unable to read {}: {}", path.display(), e.message), ..e })?;
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let info = id
        .parse::<u64>()
        .ok()
        .and_then(|n| crate::mail::proto::info::read(&layout.info(), n).ok().flatten())
        .filter(|i| i.belongs_to(&header));
    Ok(Entry {
        id: id.to_string(),
        state,
        retrying: layout.info().join(id).exists(),
        path,
        header,
        size: length.saturating_sub(offset),
        info,
    })
}

/// Every message in the queue, oldest first, and a line for each file that could not be read
/// (a directory the caller may not search says so once).
pub fn entries(home: &Path) -> (Vec<Entry>, Vec<String>) {
    let layout = Layout::new(home);
    let (mut list, mut errors) = (Vec::new(), Vec::new());
    for state in STATES {
        let dir = state_dir(&layout, state);
        let names = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()),
            Err(e) => {
                errors.push(format!("unable to read {}: {e}{}", dir.display(), hint(&e)));
                continue;
            }
        };
        for name in names.filter(|n| valid_id(n.as_bytes())) {
            match load(&layout, state, &name) {
                Ok(entry) => list.push(entry),
                // A message that left between readdir and open is not an error.
                Err(_) if !dir.join(&name).exists() => {}
                Err(e) => errors.push(e.message),
            }
        }
    }
    list.sort_by_key(|e| (e.header.time, e.id.parse::<u64>().unwrap_or(0)));
    (list, errors)
}

fn hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (the queue belongs to quillq: run as root or as a member of group quill)"
    } else {
        ""
    }
}

/// One line per message: id, state, age, size, sender, then the recipients.
pub fn list_line(entry: &Entry, now: u64) -> String {
    let envelope = &entry.header.envelope;
    let sender = if envelope.sender.is_empty() { "<>".to_string() } else { crate::base::log::safe(&envelope.sender) };
    let mut recipients: Vec<String> = envelope.recipients.iter().take(3).map(|r| crate::base::log::safe(r)).collect();
    if envelope.recipients.len() > 3 {
        recipients.push(format!("(+{} more)", envelope.recipients.len() - 3));
    }
    format!(
        "{:<10} {:<4}{} {:>5} {:>8}  {} -> {}",
        entry.id,
        entry.state,
        if entry.retrying { "+" } else { " " },
        age(now.saturating_sub(entry.header.time)),
        entry.size,
        sender,
        recipients.join(" ")
    )
}

/// The header line of `quill queue list`.
pub const LIST_TITLE: &str = "ID         STATE   AGE     SIZE  SENDER -> RECIPIENTS";

/// The message with this id, wherever it is.
pub fn find(home: &Path, id: &str) -> Result<Entry, Error> {
    if !valid_id(id.as_bytes()) {
        return Err(Error::permanent(format!(
            "unable to find message {id:?}: a queue id is a number (see quill queue list)"
        )));
    }
    let layout = Layout::new(home);
    let mut last_error = None;
    for state in STATES {
        if std::fs::symlink_metadata(state_dir(&layout, state).join(id)).is_ok() {
            match load(&layout, state, id) {
                Ok(entry) => return Ok(entry),
                Err(e) => last_error = Some(e),
            }
        } else if let Err(e) = std::fs::read_dir(state_dir(&layout, state)) {
            last_error = Some(Error::temporary(format!(
                "unable to read {}: {e}{}",
                state_dir(&layout, state).display(),
                hint(&e)
            )));
        }
    }
    Err(last_error.unwrap_or_else(|| {
        Error::permanent(format!("unable to find message {id} in the queue: it was delivered or removed"))
    }))
}

/// Age in a short human form: `42s`, `17m`, `5h`, `3d`.
pub fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
