//! `quill status`: which of Quill's long-running programs are alive (from /proc), and what the
//! queue holds.
#![forbid(unsafe_code)]

use crate::mail::proto::views;
use std::path::{Path, PathBuf};

/// The long-running programs `status` looks for, in the order it shows them.
pub const STAGES: [&str; 7] =
    ["quill-start", "quill-send", "quill-lspawn", "quill-rspawn", "quill-clean", "quill-tcpserver", "quill-smtpd"];

/// One running program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Program name (the base name of argv\[0\]).
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Effective uid.
    pub euid: u32,
    /// Its QUILL_HOME (the compiled-in default when it has none), None when its environment
    /// cannot be read (another user's process, seen by a non-root caller).
    pub home: Option<PathBuf>,
}

fn status_field(status: &str, field: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|rest| rest.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

fn environ_home(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    bytes
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"QUILL_HOME="))
        .filter(|v| !v.is_empty())
        .map(|v| PathBuf::from(std::ffi::OsStr::from_bytes(v)))
        .unwrap_or_else(|| PathBuf::from(crate::mail::control::DEFAULT_HOME))
}

/// Read one /proc/PID; None if it is gone or not one of `names`.
pub fn process(proc_dir: &Path, names: &[&str]) -> Option<Process> {
    let pid: u32 = proc_dir.file_name()?.to_str()?.parse().ok()?;
    let cmdline = std::fs::read(proc_dir.join("cmdline")).ok()?;
    let argv0 = cmdline.split(|&b| b == 0).next()?;
    let base = argv0.rsplit(|&b| b == b'/').next()?;
    let name = std::str::from_utf8(base).ok()?;
    if !names.contains(&name) {
        return None;
    }
    let status = std::fs::read_to_string(proc_dir.join("status")).ok()?;
    let uids = status_field(&status, "Uid:");
    let ppid = status_field(&status, "PPid:").first().copied().unwrap_or(0);
    let home = std::fs::read(proc_dir.join("environ")).ok().filter(|e| !e.is_empty()).map(|e| environ_home(&e));
    Some(Process {
        name: name.to_string(),
        pid,
        ppid,
        uid: uids.first().copied().unwrap_or(u32::MAX),
        euid: uids.get(1).copied().unwrap_or(u32::MAX),
        home,
    })
}

/// Every running Quill stage; with `home`, only those whose QUILL_HOME is that home (or whose
/// environment cannot be read). Sorted by stage, then pid.
pub fn processes(home: Option<&Path>) -> Vec<Process> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let want = home.map(|h| h.canonicalize().unwrap_or_else(|_| h.to_path_buf()));
    let mut list: Vec<Process> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| process(&e.path(), &STAGES))
        .filter(|p| match (&want, &p.home) {
            (None, _) | (_, None) => true,
            (Some(w), Some(h)) => h.canonicalize().unwrap_or_else(|_| h.clone()) == *w,
        })
        .collect();
    list.sort_by_key(|p| (STAGES.iter().position(|s| *s == p.name).unwrap_or(STAGES.len()), p.pid));
    list
}

/// Files in a directory, or the error.
/// Queue entries in a directory: names that are queue ids (info/ also holds quill-send's
/// `destinations` and `errors` files).
fn count(dir: &Path) -> Result<usize, std::io::Error> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| dir.ends_with("tmp") || crate::mail::queuefile::valid_id(e.file_name().as_encoded_bytes()))
        .count())
}

/// The status report as text.
pub fn report(home: &Path, filter_home: bool) -> String {
    let mut out = String::new();
    let running = processes(if filter_home { Some(home) } else { None });
    out.push_str(&format!("home: {}\n\nstages:\n", home.display()));
    for stage in STAGES {
        let mine: Vec<&Process> = running.iter().filter(|p| p.name == stage).collect();
        if mine.is_empty() {
            let note = match stage {
                "quill-smtpd" => "  (started per connection)",
                "quill-tcpserver" => "  (no SMTP listener)",
                _ => "",
            };
            out.push_str(&format!("  {stage:<16} not running{note}\n"));
            continue;
        }
        // quill-smtpd runs once per connection: show a count rather than every process.
        if stage == "quill-smtpd" && mine.len() > 3 {
            out.push_str(&format!("  {stage:<16} {} connections\n", mine.len()));
            continue;
        }
        for p in mine {
            let uid = if p.uid == p.euid {
                super::user_name(p.uid)
            } else {
                format!("{} (effective {})", super::user_name(p.uid), super::user_name(p.euid))
            };
            let home = match &p.home {
                Some(h) if !filter_home => format!("  home {}", h.display()),
                _ => String::new(),
            };
            out.push_str(&format!("  {stage:<16} pid {:<7} user {uid}{home}\n", p.pid));
        }
    }
    let layout = crate::mail::queuefile::Layout::new(home);
    out.push_str("\nqueue:\n");
    for (label, dir) in [
        ("todo", layout.todo()),
        ("mess", layout.mess()),
        ("hold", layout.hold()),
        ("info", layout.info()),
        ("tmp", layout.tmp()),
    ] {
        let what = match label {
            "todo" => "queued, not yet picked up",
            "mess" => "picked up: being delivered or waiting (quill queue why says which)",
            "hold" => "held",
            "info" => "with retry state (tried at least once)",
            _ => "being written, or debris of failed submissions",
        };
        match count(&dir) {
            Ok(n) => out.push_str(&format!("  {label:<5} {n:>7}  {what}\n")),
            Err(e) => out.push_str(&format!("  {label:<5}       ?  unable to read {}: {e}\n", dir.display())),
        }
    }
    let (entries, errors) = super::queue::entries(home);
    let now = crate::base::date::now();
    let buckets: [(&str, u64); 5] =
        [("< 5 minutes", 300), ("< 1 hour", 3600), ("< 1 day", 86_400), ("< 1 week", 604_800), (">= 1 week", u64::MAX)];
    let mut counts = [0usize; 5];
    for entry in &entries {
        let age = now.saturating_sub(entry.header.time);
        let slot = buckets.iter().position(|(_, limit)| age < *limit).unwrap_or(4);
        counts[slot] += 1;
    }
    out.push_str(&format!("\nmessages by age ({} in all):\n", entries.len()));
    for ((label, _), n) in buckets.iter().zip(counts) {
        out.push_str(&format!("  {label:<12} {n:>7}\n"));
    }
    if let Some(error) = errors.first() {
        out.push_str(&format!("  ({error})\n"));
    }
    // Written by quill-send: destinations in back-off and the last deferrals and failures.
    let table = destination_table(&layout.info());
    out.push_str("\ndestinations in back-off or at their limit:\n");
    if table.is_empty() {
        out.push_str("  none\n");
    }
    for (domain, d) in &table {
        let domain = crate::base::log::safe(domain.as_bytes());
        if d.failures == 0 {
            out.push_str(&format!(
                "  {domain}: at its concurrency limit, {} running, {} deliveries waiting\n",
                d.running, d.parked
            ));
            continue;
        }
        let left = d.until.saturating_sub(now);
        out.push_str(&format!(
            "  {}: {} failures, next try in {}, {} deliveries waiting: {}\n",
            crate::base::log::safe(domain.as_bytes()),
            d.failures,
            super::age(left),
            d.parked,
            crate::base::log::safe(d.error.as_bytes())
        ));
    }
    let last: Vec<views::LastError> = views::read(&layout.info());
    out.push_str("\nlast errors:\n");
    if last.is_empty() {
        out.push_str("  none\n");
    }
    for e in last.iter().rev() {
        let ago = now.saturating_sub(e.time);
        out.push_str(&format!("  {} ago: {}\n", super::age(ago), crate::base::log::safe(e.text.as_bytes())));
    }
    out
}

/// quill-send's `info/destinations`, by domain (lower case), sorted.
fn destination_table(info: &Path) -> Vec<(String, views::Destination)> {
    let mut table: Vec<_> = super::why::destinations_by_domain(views::read(info)).into_iter().collect();
    table.sort_by(|a, b| a.0.cmp(&b.0));
    table
}

/// The status as one JSON object on one line (the fields are listed in quill(8)).
pub fn report_json(home: &Path, filter_home: bool) -> String {
    use super::json::Object;
    let running = processes(if filter_home { Some(home) } else { None });
    let stages = running
        .iter()
        .map(|p| {
            Object::new()
                .string("name", p.name.as_bytes())
                .number("pid", u64::from(p.pid))
                .number("uid", u64::from(p.uid))
                .string("user", super::user_name(p.uid).as_bytes())
                .optional_string("home", p.home.as_ref().map(|h| h.as_os_str().as_encoded_bytes()))
        })
        .collect();
    let layout = crate::mail::queuefile::Layout::new(home);
    let mut queue = Object::new();
    for (label, dir) in [
        ("todo", layout.todo()),
        ("mess", layout.mess()),
        ("hold", layout.hold()),
        ("info", layout.info()),
        ("tmp", layout.tmp()),
    ] {
        queue = queue.optional(label, count(&dir).ok().map(|n| n as u64));
    }
    let now = crate::base::date::now();
    let (entries, _) = super::queue::entries(home);
    let ages: Vec<u64> = entries.iter().map(|e| now.saturating_sub(e.header.time)).collect();
    let table = destination_table(&layout.info());
    let destinations = table
        .iter()
        .map(|(domain, d)| {
            Object::new()
                .string("domain", domain.as_bytes())
                .number("failures", u64::from(d.failures))
                .optional("next_probe", Some(d.until).filter(|_| d.failures > 0))
                .number("parked", d.parked)
                .number("running", d.running)
                .string("last_error", d.error.as_bytes())
        })
        .collect();
    let last: Vec<views::LastError> = views::read(&layout.info());
    let errors =
        last.iter().rev().map(|e| Object::new().number("time", e.time).string("text", e.text.as_bytes())).collect();
    Object::new()
        .string("home", home.as_os_str().as_encoded_bytes())
        .number("time", now)
        .objects("stages", stages)
        .object("queue", queue)
        .number("messages", entries.len() as u64)
        .optional("oldest_age", ages.iter().max().copied())
        .objects("destinations", destinations)
        .objects("last_errors", errors)
        .finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_environment() {
        let status = "Name:\tquill-send\nPPid:\t12\nUid:\t998\t998\t998\t998\n";
        assert_eq!(status_field(status, "Uid:"), vec![998, 998, 998, 998]);
        assert_eq!(status_field(status, "PPid:"), vec![12]);
        assert_eq!(environ_home(b"PATH=/bin\0QUILL_HOME=/tmp/q\0"), PathBuf::from("/tmp/q"));
        assert_eq!(environ_home(b"PATH=/bin\0"), PathBuf::from(crate::mail::control::DEFAULT_HOME));
    }

    #[test]
    fn finds_itself() {
        let me = process(Path::new(&format!("/proc/{}", std::process::id())), &["never-a-program-name"]);
        assert_eq!(me, None);
    }
}
