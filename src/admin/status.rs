//! `quill status`: which of Quill's long-running programs are alive (from /proc), whether the
//! kernel confines each (no_new_privs and seccomp, from /proc/PID/status), and what the queue
//! holds.
#![forbid(unsafe_code)]

use crate::mail::proto::views;
use std::path::{Path, PathBuf};

/// The long-running programs `status` looks for, in the order it shows them.
pub const STAGES: [&str; 8] = [
    "quill-start",
    "quill-send",
    "quill-lspawn",
    "quill-rspawn",
    "quill-clean",
    "quill-queued",
    "quill-tcpserver",
    "quill-smtpd",
];

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
    /// What /proc/PID/status shows of its confinement; None on a kernel that shows neither
    /// field.
    pub confinement: Option<Confinement>,
    /// A quill-smtpd whose parent is a quill-smtpd: the session's AUTH broker (a fork, so it
    /// has the same name), unconfined by design (it may run a setuid checkpassword).
    pub auth_broker: bool,
}

/// A process's kernel confinement as /proc/PID/status shows it. Landlock is not shown there
/// (the kernel exposes no per-process Landlock state): each stage logs its own at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// `NoNewPrivs: 1`: no exec can give the process a privilege.
    pub no_new_privs: bool,
    /// `Seccomp:`: 0 none, 1 strict, 2 a filter.
    pub seccomp: u32,
    /// `Seccomp_filters:` (kernels since 5.9): how many filters are stacked.
    pub seccomp_filters: Option<u32>,
}

impl Confinement {
    /// From the text of /proc/PID/status; None when it has neither field.
    pub fn from_status(status: &str) -> Option<Confinement> {
        let no_new_privs = status_field(status, "NoNewPrivs:").first().copied();
        let seccomp = status_field(status, "Seccomp:").first().copied();
        if no_new_privs.is_none() && seccomp.is_none() {
            return None;
        }
        Some(Confinement {
            no_new_privs: no_new_privs == Some(1),
            seccomp: seccomp.unwrap_or(0),
            seccomp_filters: status_field(status, "Seccomp_filters:").first().copied(),
        })
    }

    /// Both of what the kernel can show: no_new_privs and a seccomp filter.
    pub fn confined(&self) -> bool {
        self.no_new_privs && self.seccomp == 2
    }

    /// The seccomp mode's name, as the JSON shows it.
    pub fn seccomp_mode(&self) -> &'static str {
        match self.seccomp {
            0 => "none",
            1 => "strict",
            2 => "filter",
            _ => "unknown",
        }
    }

    /// For the text report: `no_new_privs, seccomp filter (2)`, `no_new_privs only`, `none`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.no_new_privs {
            parts.push("no_new_privs".to_string());
        }
        match (self.seccomp, self.seccomp_filters) {
            (0, _) => {}
            (2, Some(n)) => parts.push(format!("seccomp filter ({n})")),
            _ => parts.push(format!("seccomp {}", self.seccomp_mode())),
        }
        match parts.len() {
            0 => "none".to_string(),
            1 if self.no_new_privs => "no_new_privs only".to_string(),
            _ => parts.join(", "),
        }
    }
}

/// How a process's confinement reads in the text reports (`?` when not shown).
pub fn describe_confinement(confinement: Option<&Confinement>) -> String {
    confinement.map(Confinement::describe).unwrap_or_else(|| "?".to_string())
}

/// The note under the stages in `quill status` and `quill check`.
pub const LANDLOCK_NOTE: &str =
    "confinement is what /proc/PID/status shows (NoNewPrivs, Seccomp); Landlock is not visible there: see each stage's log";

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
        confinement: Confinement::from_status(&status),
        auth_broker: false,
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
    let sessions: Vec<u32> = list.iter().filter(|p| p.name == "quill-smtpd").map(|p| p.pid).collect();
    for p in list.iter_mut().filter(|p| p.name == "quill-smtpd") {
        p.auth_broker = sessions.contains(&p.ppid);
    }
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
        let mine: Vec<&Process> = running.iter().filter(|p| p.name == stage && !p.auth_broker).collect();
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
            let confined = mine.iter().filter(|p| p.confinement.is_some_and(|c| c.confined())).count();
            out.push_str(&format!(
                "  {stage:<16} {} connections, {confined} confined (no_new_privs and seccomp)\n",
                mine.len()
            ));
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
            let confinement = describe_confinement(p.confinement.as_ref());
            out.push_str(&format!("  {stage:<16} pid {:<7} user {uid}  confinement: {confinement}{home}\n", p.pid));
            for broker in running.iter().filter(|b| b.auth_broker && b.ppid == p.pid) {
                out.push_str(&format!(
                    "  {:<16} pid {:<7} its AUTH broker  confinement: {} (by design: it runs checkpassword)\n",
                    "",
                    broker.pid,
                    describe_confinement(broker.confinement.as_ref())
                ));
            }
        }
    }
    if !running.is_empty() {
        out.push_str(&format!("  ({LANDLOCK_NOTE})\n"));
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
                .boolean("auth_broker", p.auth_broker)
                .boolean("confined", p.confinement.is_some_and(|c| c.confined()))
                .optional_boolean("no_new_privs", p.confinement.map(|c| c.no_new_privs))
                .optional_string("seccomp", p.confinement.map(|c| c.seccomp_mode().as_bytes()))
                .optional("seccomp_filters", p.confinement.and_then(|c| c.seccomp_filters).map(u64::from))
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
    fn confinement_from_status() {
        let none = "Name:\tquill-send\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n";
        let c = Confinement::from_status(none).unwrap();
        assert!(!c.confined());
        assert_eq!(c.describe(), "none");
        let nnp = "NoNewPrivs:\t1\nSeccomp:\t0\n";
        assert_eq!(Confinement::from_status(nnp).unwrap().describe(), "no_new_privs only");
        let full = "NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        let c = Confinement::from_status(full).unwrap();
        assert!(c.confined());
        assert_eq!(c.describe(), "no_new_privs, seccomp filter (1)");
        assert_eq!(c.seccomp_mode(), "filter");
        assert_eq!(Confinement::from_status("Name:\tx\n"), None);
        assert_eq!(describe_confinement(None), "?");
    }

    #[test]
    fn finds_itself() {
        let me = process(Path::new(&format!("/proc/{}", std::process::id())), &["never-a-program-name"]);
        assert_eq!(me, None);
    }
}
