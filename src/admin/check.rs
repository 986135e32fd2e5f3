//! `quill check`: look at a Quill home and the programs the way the mail system will, and
//! for each thing that is wrong say what it is and which command fixes it. Only reads.
#![forbid(unsafe_code)]

use super::{group_id, group_name, owner_mode, shell_quote, user_ids, user_name, ACCOUNTS, NOFILES_GROUP, QUEUE_GROUP};
use crate::mail::control::Control;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One thing that is wrong, and the command that fixes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, in one line.
    pub problem: String,
    /// A command (or an instruction) that fixes it.
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; fix: {}", self.problem, self.fix)
    }
}

fn problem(list: &mut Vec<Problem>, problem: String, fix: impl Into<String>) {
    list.push(Problem { problem, fix: fix.into() });
}

/// Control files that hold one number.
pub const NUMBER_FILES: &[&str] = &[
    "databytes",
    "concurrencydestination",
    "backoffmin",
    "backoffmax",
    "retrylocal",
    "retryremote",
    "retrymin",
    "retrymax",
    "concurrencylocal",
    "concurrencyrecipient",
    "timeoutprogram",
    "concurrencyremote",
    "concurrencyincoming",
    "queuelifetime",
    "delaywarningtime",
    "queueactive",
    "timeoutsmtpd",
    "greetdelay",
    "timeoutsmtpdsession",
    "timeoutsmtpddata",
    "timeoutremote",
    "timeoutremotetotal",
    "timeoutconnect",
    "maxrcpt",
    "bouncemaxbytes",
];

/// Control files that hold one domain name.
pub const DOMAIN_FILES: [&str; 10] = [
    "me",
    "defaultdomain",
    "defaulthost",
    "plusdomain",
    "idhost",
    "helohost",
    "bouncehost",
    "doublebouncehost",
    "envnoathost",
    "localiphost",
];

/// Control files that list domains, one a line (a leading dot means "every subdomain").
pub const DOMAIN_LIST_FILES: [&str; 2] = ["locals", "rcpthosts"];

/// A host name or domain: dot-separated labels of letters, digits and hyphens (and
/// underscores, which some zones use), no empty label, at most 253 bytes. A literal
/// `[1.2.3.4]` also counts.
pub fn looks_like_domain(text: &[u8]) -> bool {
    if text.first() == Some(&b'[') {
        return text.last() == Some(&b']') && text.len() > 2;
    }
    let text = text.strip_suffix(b".").unwrap_or(text);
    !text.is_empty()
        && text.len() <= 253
        && text.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.first() != Some(&b'-')
                && label.last() != Some(&b'-')
                && label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b >= 0x80)
        })
}

/// A domain-list entry: a domain, or `.domain` for its subdomains.
fn looks_like_list_entry(entry: &[u8]) -> bool {
    looks_like_domain(entry.strip_prefix(b".").unwrap_or(entry))
}

/// Check one `smtproutes` line: `domain:relay[:port[:marker]]`, where domain may be empty
/// (every domain) or `.suffix`, relay may be empty (use MX), a host name or `[address]`, and
/// the marker `tls`, `smtps` or `starttls`.
pub fn smtproute_line(line: &[u8]) -> Result<(), &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8")?;
    let (domain, rest) = text.split_once(':').ok_or("no colon: expected domain:relay[:port]")?;
    if !domain.is_empty() && !looks_like_list_entry(domain.as_bytes()) {
        return Err("the domain is not a domain");
    }
    route_rest(rest)
}

/// Check one `senderroutes` line: `user@domain:relay[:port[:marker]]` or `@domain:…`.
pub fn senderroute_line(line: &[u8]) -> Result<(), &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8")?;
    let (address, rest) = match text.find('@') {
        Some(at) => {
            let colon = text[at..].find(':').ok_or("no colon: expected @domain:relay[:port]")? + at;
            (&text[..colon], &text[colon + 1..])
        }
        None => return Err("no @: expected user@domain:relay or @domain:relay"),
    };
    let (_, domain) = address.rsplit_once('@').unwrap_or_default();
    if !looks_like_domain(domain.as_bytes()) {
        return Err("the sender's domain is not a domain");
    }
    route_rest(rest)
}

/// What follows the pattern in a route line: `relay[:port[:marker]]`.
fn route_rest(rest: &str) -> Result<(), &'static str> {
    let (relay, port) = if let Some(inner) = rest.strip_prefix('[') {
        let close = inner.find(']').ok_or("unclosed [ in the relay")?;
        let after = &inner[close + 1..];
        (&rest[..close + 2], after.strip_prefix(':'))
    } else {
        match rest.split_once(':') {
            Some((relay, port)) => (relay, Some(port)),
            None => (rest, None),
        }
    };
    if !relay.is_empty() && !looks_like_domain(relay.as_bytes()) {
        return Err("the relay is not a host name or [address]");
    }
    if let Some(port) = port {
        let (port, marker) = port.split_once(':').unwrap_or((port, ""));
        match port.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => {}
            _ if port.is_empty() && marker.is_empty() => {}
            _ => return Err("the port is not a number from 1 to 65535"),
        }
        if !["", "tls", "smtps", "starttls"].contains(&marker.to_ascii_lowercase().as_str()) {
            return Err("the marker after the port is not tls, smtps or starttls");
        }
    }
    Ok(())
}

/// Check one `virtualdomains` line: `domain:prepend`, `user@domain:prepend`, `.suffix:prepend`
/// or `:prepend` (every domain). Returns the domain part (empty for the catch-all).
pub fn virtualdomain_line(line: &[u8]) -> Result<Vec<u8>, &'static str> {
    let colon = memchr::memchr(b':', line).ok_or("no colon: expected domain:prepend")?;
    let (key, prepend) = (&line[..colon], &line[colon + 1..]);
    if prepend.is_empty() {
        return Err("nothing after the colon");
    }
    if key.is_empty() {
        return Ok(Vec::new());
    }
    let domain = match memchr::memrchr(b'@', key) {
        Some(at) => &key[at + 1..],
        None => key,
    };
    if !looks_like_list_entry(domain) {
        return Err("the domain is not a domain");
    }
    Ok(crate::mail::address::normal_domain(domain))
}

fn check_accounts(list: &mut Vec<Problem>) {
    for group in [QUEUE_GROUP, NOFILES_GROUP] {
        if group_id(group).is_none() {
            problem(list, format!("group {group} does not exist"), "quill setup");
        }
    }
    for account in ACCOUNTS.iter() {
        match (user_ids(account.name), group_id(account.group)) {
            (None, _) => {
                problem(list, format!("user {} ({}) does not exist", account.name, account.role), "quill setup")
            }
            (Some((_, gid)), Some(want)) if gid != want => problem(
                list,
                format!("user {} has primary group {}, not {}", account.name, group_name(gid), account.group),
                format!("usermod -g {} {}", account.group, account.name),
            ),
            _ => {}
        }
    }
}

/// One line, however many files this user may not look at.
fn not_as_this_user(list: &mut Vec<Problem>) {
    let text = "some files cannot be checked as this user".to_string();
    if !list.iter().any(|p| p.problem == text) {
        problem(list, text, "run quill check as root");
    }
}

fn check_owner(
    list: &mut Vec<Problem>,
    path: &Path,
    kind: crate::base::tree::Kind,
    user: &str,
    group: &str,
    mode: u32,
) {
    let (Some((uid, _)), Some(gid)) = (user_ids(user), group_id(group)) else {
        return;
    };
    let shown = shell_quote(&path.display().to_string());
    // The type first: a chown or chmod printed as the fix for a symbolic link would follow it
    // when the administrator runs it (the queue's directories belong to quillq, who can put
    // a link anywhere in them), so a wrong type gets a fix that moves the entry away.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        let found = meta.file_type();
        let (right, name) = match kind {
            crate::base::tree::Kind::Directory => (found.is_dir(), "a directory"),
            crate::base::tree::Kind::File => (found.is_file(), "a regular file"),
            crate::base::tree::Kind::Fifo => (found.is_fifo(), "a named pipe"),
        };
        if !right {
            let what = if found.is_symlink() { "a symbolic link" } else { "of another type" };
            problem(
                list,
                format!("{} is {what}, not {name}", path.display()),
                format!("look at it, then: mv {shown} {shown}.suspect && quill setup"),
            );
            return;
        }
    }
    match owner_mode(path) {
        None => match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                not_as_this_user(list);
            }
            _ => problem(list, format!("{} is missing", path.display()), "quill setup"),
        },
        Some((u, g, m)) => {
            if (u, g) != (uid, gid) {
                problem(
                    list,
                    format!("{} belongs to {}:{}, not {user}:{group}", path.display(), user_name(u), group_name(g)),
                    format!("chown {user}:{group} {shown} && chmod {mode:o} {shown}"),
                );
            } else if m != mode {
                problem(
                    list,
                    format!("{} has mode {m:o}, not {mode:o}", path.display()),
                    format!("chmod {mode:o} {shown}"),
                );
            }
        }
    }
}

/// Which rules a home is judged by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A system install (`quill setup`): the queue belongs to quillq and quills, the stages run
    /// under their own users, quill-queue is setuid quillq.
    System,
    /// A private instance (`quill-up`): one user owns every file and runs every stage, and
    /// quill-queue must not be setuid (a setuid quill-queue ignores QUILL_HOME).
    Private {
        /// The instance's user.
        uid: u32,
    },
}

impl Kind {
    /// A home whose owner is not root and who also owns its queue is a private instance;
    /// anything else is judged as a system install (`quill setup` leaves the home to root and
    /// the queue to quillq).
    pub fn of(home: &Path) -> Kind {
        match (owner_mode(home), owner_mode(&home.join("queue"))) {
            (Some((owner, _, _)), Some((queue, _, _))) if owner != 0 && owner == queue => Kind::Private { uid: owner },
            _ => Kind::System,
        }
    }

    /// How `check` names it.
    pub fn describe(self) -> String {
        match self {
            Kind::System => "system install".to_string(),
            Kind::Private { uid } => format!("private instance of {}", user_name(uid)),
        }
    }
}

/// In a private instance every file is the instance user's, with the modes of a system
/// install.
fn check_private_owner(list: &mut Vec<Problem>, path: &Path, uid: u32, mode: u32) {
    let shown = shell_quote(&path.display().to_string());
    match owner_mode(path) {
        None => problem(list, format!("{} is missing", path.display()), "restart quill-up (it creates the tree)"),
        Some((u, _, _)) if u != uid => problem(
            list,
            format!("{} belongs to {}, not to the instance's user {}", path.display(), user_name(u), user_name(uid)),
            format!("chown {} {shown}", user_name(uid)),
        ),
        Some((_, _, m)) if m != mode => {
            problem(list, format!("{} has mode {m:o}, not {mode:o}", path.display()), format!("chmod {mode:o} {shown}"))
        }
        _ => {}
    }
}

fn check_tree(list: &mut Vec<Problem>, home: &Path, kind: Kind) {
    let layout = crate::mail::queuefile::Layout::new(home);
    if !home.is_dir() {
        problem(
            list,
            format!("the Quill home {} does not exist", home.display()),
            format!("quill setup --home {}", shell_quote(&home.display().to_string())),
        );
        return;
    }
    use crate::base::tree::Kind::{Directory, Fifo, File};
    let entries: [(PathBuf, crate::base::tree::Kind, &str, &str, u32); 14] = [
        (home.join("control"), Directory, "root", "root", 0o755),
        (home.join("users"), Directory, "root", "root", 0o755),
        (home.join("alias"), Directory, "alias", NOFILES_GROUP, 0o2755),
        (layout.queue.clone(), Directory, "quillq", QUEUE_GROUP, crate::mail::queuefile::QUEUE_MODE),
        (layout.tmp(), Directory, "quillq", QUEUE_GROUP, super::setup::TMP_MODE),
        (layout.todo(), Directory, "quillq", QUEUE_GROUP, 0o750),
        (layout.mess(), Directory, "quillq", QUEUE_GROUP, 0o750),
        (layout.hold(), Directory, "quillq", QUEUE_GROUP, 0o750),
        (layout.info(), Directory, "quills", QUEUE_GROUP, 0o700),
        (layout.queue.join("lock"), Directory, "quillq", QUEUE_GROUP, 0o750),
        (layout.queue.join("writer"), Directory, "quillq", QUEUE_GROUP, crate::mail::queuefile::WRITER_MODE),
        (layout.trigger(), Fifo, "quills", QUEUE_GROUP, 0o622),
        (layout.sendmutex(), File, "quills", QUEUE_GROUP, 0o600),
        (layout.control(), Fifo, "quills", QUEUE_GROUP, 0o600),
    ];
    for (path, file_kind, user, group, mode) in entries.iter() {
        match kind {
            Kind::System => check_owner(list, path, *file_kind, user, group, *mode),
            // alias/ is set-group-id only so that alias's files stay in nofiles.
            Kind::Private { uid } if *path == home.join("alias") => check_private_owner(list, path, uid, 0o755),
            Kind::Private { uid } => check_private_owner(list, path, uid, *mode),
        }
    }
    if kind == Kind::System {
        check_message_groups(list, &layout);
    } else {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(layout.trigger()) {
            if !meta.file_type().is_fifo() {
                problem(
                    list,
                    format!("{} is not a named pipe", layout.trigger().display()),
                    format!("rm {} && quill setup", shell_quote(&layout.trigger().display().to_string())),
                );
            }
        }
    }
    check_writer_socket(list, &layout);
}

/// quill-queued's socket, where it exists, must be a socket owned by the writer: anything else
/// there keeps quill-queued from listening (it removes only a stale socket), and quill-smtpd
/// then runs quill-queue for every message.
fn check_writer_socket(list: &mut Vec<Problem>, layout: &crate::mail::queuefile::Layout) {
    use std::os::unix::fs::FileTypeExt;
    let socket = layout.writer_socket();
    if let Ok(meta) = std::fs::symlink_metadata(&socket) {
        if !meta.file_type().is_socket() {
            problem(
                list,
                format!("{} is not a socket: quill-queued cannot listen", socket.display()),
                format!(
                    "rm {} (quill-queued makes its socket when it starts)",
                    shell_quote(&socket.display().to_string())
                ),
            );
        }
    }
}

/// Message files quill-send cannot read: their group is not quill (written before tmp/ had
/// its set-group-id bit).
fn check_message_groups(list: &mut Vec<Problem>, layout: &crate::mail::queuefile::Layout) {
    use std::os::unix::fs::MetadataExt;
    let Some(gid) = group_id(QUEUE_GROUP) else {
        return;
    };
    for dir in [layout.todo(), layout.mess(), layout.hold()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let wrong = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.metadata().map(|m| m.gid() != gid).unwrap_or(false))
            .take(100_000)
            .count();
        if wrong > 0 {
            let shown = shell_quote(&dir.display().to_string());
            problem(
                list,
                format!(
                    "{wrong} message file(s) in {} are not in group quill: quill-send cannot read them",
                    dir.display()
                ),
                format!("chgrp -R quill {shown} && quill setup"),
            );
        }
    }
}

fn check_queue_program(list: &mut Vec<Problem>, bindir: &Path, kind: Kind) {
    let path = bindir.join("quill-queue");
    if !path.exists() {
        problem(list, format!("{} is missing", path.display()), "make install");
        return;
    }
    match kind {
        Kind::System => check_owner(list, &path, crate::base::tree::Kind::File, "quillq", QUEUE_GROUP, 0o4711),
        Kind::Private { .. } => {
            if owner_mode(&path).is_some_and(|(_, _, mode)| mode & 0o4000 != 0) {
                let shown = shell_quote(&path.display().to_string());
                problem(
                    list,
                    format!(
                        "{} is setuid: it ignores QUILL_HOME, so mail submitted to this instance goes to the \
                         system queue",
                        path.display()
                    ),
                    format!("chmod u-s {shown} (or run quill-up from a build that 'quill setup' did not touch)"),
                );
            }
        }
    }
}

fn check_controls(list: &mut Vec<Problem>, home: &Path) {
    let control = Control::new(home);
    let edit = |name: &str| format!("edit {}", control.path(name).display());
    for name in NUMBER_FILES {
        if let Err(e) = control.number(name, 0) {
            problem(
                list,
                format!(
                    "control/{name}: {}",
                    e.message
                        .trim_start_matches("unable to parse control/")
                        .trim_start_matches(name)
                        .trim_start_matches(": ")
                ),
                edit(name),
            );
        }
    }
    for name in DOMAIN_FILES {
        match control.line(name) {
            Ok(Some(v)) if !looks_like_domain(&v) => problem(
                list,
                format!("control/{name}: {:?} is not a domain name", crate::base::log::safe(&v)),
                edit(name),
            ),
            Err(e) => problem(list, e.message, format!("chmod 644 {}", control.path(name).display())),
            _ => {}
        }
    }
    if control.line("me").ok().flatten().is_none() {
        problem(list, "control/me is missing: every host name defaults to it".into(), "quill setup");
    }
    for name in DOMAIN_LIST_FILES {
        for line in control.lines(name).unwrap_or_default() {
            if !looks_like_list_entry(&line) {
                problem(
                    list,
                    format!("control/{name}: {:?} is not a domain name", crate::base::log::safe(&line)),
                    edit(name),
                );
            }
        }
    }
    if let Err(e) =
        control.read(crate::mail::dnsbl::FILE).and_then(|t| crate::mail::dnsbl::parse(&t.unwrap_or_default()))
    {
        problem(list, e.message, edit(crate::mail::dnsbl::FILE));
    }
    if let Err(e) = crate::mail::spf::Policy::load(&control) {
        problem(list, e.message, edit(crate::mail::spf::FILE));
    }
    if let Err(e) = crate::mail::dmarc::Checking::load(&control) {
        problem(list, e.message, edit(crate::mail::dmarc::FILE));
    }
    if let Err(e) = crate::mail::senderlogins::SenderLogins::load(&control) {
        problem(list, e.message, edit(crate::mail::senderlogins::FILE));
    }
    if let Err(e) = crate::mail::users::Delimiters::load(home) {
        problem(list, e.message, edit(crate::mail::users::DELIMITER_FILE));
    }
    for line in control.lines("smtproutes").unwrap_or_default() {
        if let Err(why) = smtproute_line(&line) {
            problem(
                list,
                format!("control/smtproutes: {:?}: {why}", crate::base::log::safe(&line)),
                edit("smtproutes"),
            );
        }
    }
    for line in control.lines("lmtproutes").unwrap_or_default() {
        if crate::mail::routes::parse_lmtp_route(&line).is_none() {
            let shown = format!(
                "control/lmtproutes: {:?}: not `domain:/socket/path` (absolute, at most 107 bytes) or \
                 `domain:relay[:port]` (no TLS marker)",
                crate::base::log::safe(&line)
            );
            problem(list, shown, edit("lmtproutes"));
        }
    }
    for line in control.lines("senderroutes").unwrap_or_default() {
        if let Err(why) = senderroute_line(&line) {
            let shown = format!("control/senderroutes: {:?}: {why}", crate::base::log::safe(&line));
            problem(list, shown, edit("senderroutes"));
        }
    }
    if let Ok(meta) = std::fs::metadata(control.path("smtpauth")) {
        use std::os::unix::fs::MetadataExt;
        if meta.mode() & 0o077 != 0 {
            let shown = format!(
                "control/smtpauth holds passwords but its mode {:o} lets others read it: quill-remote refuses it",
                meta.mode() & 0o7777
            );
            let path = control.path("smtpauth");
            problem(list, shown, format!("chown quillr {0} && chmod 600 {0}", path.display()));
        }
    }
    let mut virtual_domains = Vec::new();
    for line in control.lines("virtualdomains").unwrap_or_default() {
        match virtualdomain_line(&line) {
            Ok(domain) => virtual_domains.push(domain),
            Err(why) => problem(
                list,
                format!("control/virtualdomains: {:?}: {why}", crate::base::log::safe(&line)),
                edit("virtualdomains"),
            ),
        }
    }
    // Mail for a domain this host delivers must be accepted from the network first.
    let rcpthosts: Vec<Vec<u8>> =
        control.lines("rcpthosts").unwrap_or_default().iter().map(|d| crate::mail::address::normal_domain(d)).collect();
    if control.read("rcpthosts").ok().flatten().is_none() {
        problem(list, "control/rcpthosts is missing: quill-smtpd accepts mail for no domain".into(), "quill setup");
        return;
    }
    let locals = control.locals().unwrap_or_default();
    for domain in locals.iter().chain(virtual_domains.iter().filter(|d| !d.is_empty())) {
        let plain = domain.strip_prefix(b".").unwrap_or(domain);
        if !crate::mail::address::domain_listed(plain, &rcpthosts) && !rcpthosts.contains(domain) {
            let name = String::from_utf8_lossy(domain);
            problem(
                list,
                format!("{name} is delivered here but is not in control/rcpthosts, so SMTP clients cannot send to it"),
                format!("echo {} >> {}", shell_quote(&name), control.path("rcpthosts").display()),
            );
        }
    }
    // An LMTP route is for mail quill-send sends out: a domain it delivers itself never gets
    // there, and one missing from rcpthosts never comes in by SMTP.
    let lmtp_routes = control.lines("lmtproutes").unwrap_or_default();
    for route in lmtp_routes.iter().filter_map(|line| crate::mail::routes::parse_lmtp_route(line)) {
        let domain = route.pattern;
        if domain.is_empty() || domain.starts_with(b".") {
            continue;
        }
        let name = String::from_utf8_lossy(&domain).into_owned();
        let (local, file) = if locals.contains(&domain) {
            (true, "locals")
        } else {
            (virtual_domains.contains(&domain), "virtualdomains")
        };
        if local {
            problem(
                list,
                format!("{name} is in control/{file}, so Quill delivers it itself and its control/lmtproutes line is never used"),
                format!("remove {name} from {}", control.path(file).display()),
            );
        } else if !crate::mail::address::domain_listed(&domain, &rcpthosts) && !rcpthosts.contains(&domain) {
            problem(
                list,
                format!("{name} goes to an LMTP server (control/lmtproutes) but is not in control/rcpthosts, so SMTP clients cannot send to it"),
                format!("echo {} >> {}", shell_quote(&name), control.path("rcpthosts").display()),
            );
        }
    }
}

/// The public key of a certificate or private key, as openssl prints it; None if openssl
/// failed (no openssl, unreadable or malformed file).
fn public_key(args: &[&str], file: &Path) -> Option<Vec<u8>> {
    let output =
        Command::new("openssl").args(args).arg(file).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    if output.status.success() && !output.stdout.is_empty() {
        Some(output.stdout)
    } else {
        None
    }
}

fn check_tls(list: &mut Vec<Problem>, home: &Path, kind: Kind) {
    let (cert, key) = super::setup::tls_files(home);
    let fix_new = format!("rm -f {} {} && quill setup", cert.display(), key.display());
    for (what, path) in [("certificate", &cert), ("key", &key)] {
        if !path.exists() {
            problem(list, format!("the TLS {what} {} is missing: STARTTLS is off", path.display()), fix_new.clone());
            return;
        }
    }
    if let Err(e) = std::fs::File::open(&key) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return not_as_this_user(list);
        }
    }
    let cert_key = public_key(&["x509", "-noout", "-pubkey", "-in"], &cert);
    let key_key = public_key(&["pkey", "-pubout", "-in"], &key);
    match (cert_key, key_key) {
        (None, _) => problem(
            list,
            format!("{} is not a readable PEM certificate (or openssl is missing)", cert.display()),
            fix_new,
        ),
        (_, None) => problem(
            list,
            format!("{} is not a readable PEM private key (or openssl is missing)", key.display()),
            fix_new,
        ),
        (Some(a), Some(b)) if a != b => problem(
            list,
            format!("the TLS key {} does not belong to the certificate {}", key.display(), cert.display()),
            fix_new,
        ),
        _ => {}
    }
    if let Some((uid, _, mode)) = owner_mode(&key) {
        // In a private instance quill-smtpd runs as the key's owner.
        let smtpd = match kind {
            Kind::System => user_ids("quilld").map(|(quilld, _)| quilld),
            Kind::Private { uid } => Some(uid),
        };
        if smtpd.is_some_and(|smtpd| uid != smtpd) && mode & 0o044 == 0 {
            problem(
                list,
                format!("quill-smtpd (user quilld) cannot read the TLS key {}", key.display()),
                format!("chown quilld {} && chmod 400 {}", key.display(), key.display()),
            );
        }
        if mode & 0o004 != 0 {
            problem(
                list,
                format!("the TLS key {} is readable by everyone", key.display()),
                format!("chmod 400 {}", key.display()),
            );
        }
    }
}

/// DKIM keys (control/dkim/DOMAIN.SELECTOR): regular files that only the signer can read —
/// quillq in a system install (quill-queue and quill-queued sign as quillq), the instance's
/// user in a private one. A key others can read lets them sign mail as the domain.
fn check_dkim(list: &mut Vec<Problem>, home: &Path, kind: Kind) {
    let dir = home.join("control").join("dkim");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return not_as_this_user(list),
        Err(_) => return,
    };
    let (signer, name) = match kind {
        Kind::System => match user_ids("quillq") {
            Some((uid, _)) => (uid, "quillq".to_string()),
            None => return,
        },
        Kind::Private { uid } => (uid, user_name(uid)),
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
    paths.sort();
    for path in paths {
        let shown = shell_quote(&path.display().to_string());
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.file_type().is_file() {
            problem(
                list,
                format!("the DKIM key {} is not a regular file", path.display()),
                format!("look at it, then: mv {shown} {shown}.suspect"),
            );
            continue;
        }
        use std::os::unix::fs::MetadataExt;
        let fix = format!("chown {name} {shown} && chmod 400 {shown}");
        if meta.uid() != signer {
            let owner = user_name(meta.uid());
            problem(list, format!("the DKIM key {} belongs to {owner}, not {name}", path.display()), fix);
        } else if meta.mode() & 0o077 != 0 {
            problem(
                list,
                format!(
                    "the DKIM key {} has mode {:o}: group or others can read it and sign as its domain",
                    path.display(),
                    meta.mode() & 0o7777
                ),
                fix,
            );
        }
    }
}

fn check_users(list: &mut Vec<Problem>, home: &Path) {
    let (assign, db) = (crate::mail::users::assign_path(home), crate::mail::users::assign_db_path(home));
    let Ok(source) = std::fs::metadata(&assign).and_then(|m| m.modified()) else {
        return;
    };
    let compiled = std::fs::metadata(&db).and_then(|m| m.modified()).ok();
    if compiled.is_none_or(|c| c < source) {
        problem(
            list,
            format!("{} has changed since it was compiled: the change is not in effect", assign.display()),
            format!("QUILL_HOME={} quill-newu", shell_quote(&home.display().to_string())),
        );
    }
}

fn check_aliases(list: &mut Vec<Problem>, home: &Path, kind: Kind) {
    let path = crate::mail::aliases::aliases_path(&Control::new(home));
    match std::fs::read(&path) {
        Err(_) => problem(list, format!("{} is missing: no postmaster", path.display()), "quill setup"),
        Ok(text) => {
            if let Err(e) = crate::mail::aliases::Aliases::parse(&text) {
                problem(list, format!("{}: {}", path.display(), e.message), format!("edit {}", path.display()));
                return;
            }
            // A private instance delivers every local part to maildir/LOCALPART: postmaster
            // and root need no alias there.
            let missing = super::setup::missing_aliases(&String::from_utf8_lossy(&text));
            if !missing.is_empty() && kind == Kind::System {
                problem(
                    list,
                    format!("{} lacks {}", path.display(), missing.trim_end().replace('\n', ", ")),
                    "quill setup",
                );
            }
        }
    }
}

/// The stages quill-start runs, and the user each must run as.
const STAGES: [(&str, &str); 4] =
    [("quill-send", "quills"), ("quill-clean", "quillq"), ("quill-lspawn", "root"), ("quill-rspawn", "quillr")];

/// When quill-start runs for this home, every stage must run beside it under its own user: a
/// missing one is a stage the supervisor's quill-start has lost (it exits and is restarted
/// when a stage dies; one that keeps missing is crash-looping). When nothing runs, that is not
/// a configuration problem (the services may simply not be started yet): the caller prints a
/// note instead.
fn check_stages(list: &mut Vec<Problem>, home: &Path, kind: Kind) {
    let running = super::status::processes(Some(home));
    let restart = "restart the queue service: svc -t /service/quill (daemontools), sv restart quill (runit), \
                   s6-svc -r /run/service/quill (s6), then read its log";
    if !running.iter().any(|p| p.name == "quill-start") {
        return;
    }
    for (stage, user) in STAGES {
        let want = match kind {
            Kind::Private { uid } => Some(uid),
            Kind::System if user == "root" => Some(0),
            Kind::System => user_ids(user).map(|(uid, _)| uid),
        };
        let user = match kind {
            Kind::Private { uid } => user_name(uid),
            Kind::System => user.to_string(),
        };
        let mine: Vec<_> = running.iter().filter(|p| p.name == stage).collect();
        if mine.is_empty() {
            problem(list, format!("quill-start runs but {stage} does not"), restart);
        }
        for p in mine {
            if crate::base::sys::uids().1 == 0 && want.is_some_and(|w| p.uid != w) {
                problem(
                    list,
                    format!("{stage} (pid {}) runs as uid {}, not as {user}", p.pid, p.uid),
                    match kind {
                        Kind::System => "start quill-start as root from the service's run script (conf-examples/)",
                        Kind::Private { .. } => "start the instance with quill-up as its user (or as root)",
                    },
                );
            }
        }
    }
}

/// The kernel confinement of each running stage of this home, for a note: one line, or None
/// when nothing runs. Not a problem: a kernel without seccomp or Landlock runs Quill as
/// before, and nothing in the configuration changes it.
pub fn confinement_note(home: &Path) -> Option<String> {
    let running = super::status::processes(Some(home));
    if running.is_empty() {
        return None;
    }
    let stages: Vec<String> = running
        .iter()
        .map(|p| {
            let name = if p.auth_broker { "quill-smtpd's AUTH broker" } else { p.name.as_str() };
            format!("{name} {}", super::status::describe_confinement(p.confinement.as_ref()))
        })
        .collect();
    Some(format!("note: confinement of the running stages: {} ({})", stages.join("; "), super::status::LANDLOCK_NOTE))
}

/// True when no quill-start runs for this home (for a note, not a problem).
pub fn queue_system_stopped(home: &Path) -> bool {
    !super::status::processes(Some(home)).iter().any(|p| p.name == "quill-start")
}

/// Every problem found in `home` and with the programs in `bindir`, in a stable order, each
/// judged by the rules of the home's kind.
pub fn check(home: &Path, bindir: &Path, kind: Kind) -> Vec<Problem> {
    let mut list = Vec::new();
    if kind == Kind::System {
        check_accounts(&mut list);
    }
    check_tree(&mut list, home, kind);
    check_queue_program(&mut list, bindir, kind);
    check_controls(&mut list, home);
    check_tls(&mut list, home, kind);
    check_dkim(&mut list, home, kind);
    check_users(&mut list, home);
    check_aliases(&mut list, home, kind);
    check_stages(&mut list, home, kind);
    list
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert!(looks_like_domain(b"example.com"));
        assert!(looks_like_domain(b"mail-1.example.com."));
        assert!(looks_like_domain(b"localhost"));
        assert!(looks_like_domain(b"[127.0.0.1]"));
        assert!(!looks_like_domain(b"exa mple.com"));
        assert!(!looks_like_domain(b"a..b"));
        assert!(!looks_like_domain(b"-a.b"));
        assert!(!looks_like_domain(b""));
        assert!(looks_like_list_entry(b".example.com"));
    }

    #[test]
    fn smtproutes() {
        assert!(smtproute_line(b"example.com:relay.example.net").is_ok());
        assert!(smtproute_line(b":smarthost.example.net:587").is_ok());
        assert!(smtproute_line(b".example.com:[192.0.2.1]:2525").is_ok());
        assert!(smtproute_line(b"[::1]example:").is_err());
        assert!(smtproute_line(b"example.com:[2001:db8::1]:25").is_ok());
        assert!(smtproute_line(b"example.com:").is_ok());
        assert!(smtproute_line(b"example.com").is_err());
        assert!(smtproute_line(b"example.com:relay:port").is_err());
        assert!(smtproute_line(b"example.com:relay:70000").is_err());
        assert!(smtproute_line(b"bad domain:relay").is_err());
        assert!(smtproute_line(b":smtp.provider.example:465").is_ok());
        assert!(smtproute_line(b":[192.0.2.1]:2465:tls").is_ok());
        assert!(smtproute_line(b":relay.example:587:STARTTLS").is_ok());
        assert!(smtproute_line(b":relay.example:587:maybe").is_err());
        assert!(senderroute_line(b"@corp.example:relay.example:587").is_ok());
        assert!(senderroute_line(b"boss@corp.example:[192.0.2.7]:465").is_ok());
        assert!(senderroute_line(b"corp.example:relay.example").is_err());
    }

    #[test]
    fn virtualdomains() {
        assert_eq!(virtualdomain_line(b"Example.COM:joe").unwrap(), b"example.com");
        assert_eq!(virtualdomain_line(b"user@example.com:joe-x").unwrap(), b"example.com");
        assert_eq!(virtualdomain_line(b":catchall").unwrap(), b"");
        assert!(virtualdomain_line(b".example.com:sub").is_ok());
        assert!(virtualdomain_line(b"example.com").is_err());
        assert!(virtualdomain_line(b"example.com:").is_err());
    }
}
