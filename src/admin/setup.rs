//! `quill setup`: make this host ready to run Quill, as root. Every step looks first and does
//! only what is missing, so running it again is harmless and repairs what was changed.
//!
//! It never rewrites a file the administrator may have edited: control files are written only
//! when absent, `/etc/aliases` only gets lines appended, and a program that stood where
//! `--links` puts a link is kept as `NAME.before-quill`.
#![forbid(unsafe_code)]

use super::{group_id, owner_mode, user_ids, Account, ACCOUNTS, NOFILES_GROUP, QUEUE_GROUP};
use crate::base::fail::Error;
use crate::mail::control::Control;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What `quill setup` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// The Quill home to set up (absolute).
    pub home: PathBuf,
    /// Also put sendmail, mailq and newaliases where other programs look for them.
    pub links: bool,
    /// Where the links go (`/` normally; tests use a scratch root).
    pub link_root: PathBuf,
}

/// The steps taken and the steps that failed, in order. Setup goes on after a failure where
/// the next step does not depend on it, so one run shows every problem.
#[derive(Debug, Default)]
pub struct Report {
    /// "created group quill", …
    pub done: Vec<String>,
    /// "unable to …: reason", …: temporary, as the administrator can fix each and run again.
    pub failed: Vec<Error>,
}

impl Report {
    fn did(&mut self, text: String) {
        self.done.push(text);
    }
    fn fail(&mut self, text: String) {
        self.failed.push(Error::temporary(text));
    }
}

/// The mode of `queue/tmp/` in an installation: 0700 plus set-group-id
/// ([`crate::mail::queuefile::TMP_MODE`]).
pub const TMP_MODE: u32 = crate::mail::queuefile::TMP_MODE;

/// The links `--links` makes: (path under the link root, program in the bin directory).
pub const LINKS: [(&str, &str); 3] =
    [("usr/sbin/sendmail", "sendmail"), ("usr/bin/mailq", "sendmail"), ("usr/sbin/newaliases", "sendmail")];

/// The alias entries every mail host needs, appended to the aliases file if it lacks them.
/// `root` goes to the alias user (whose home is HOME/alias) until the administrator names a
/// person; quill-local never delivers as root.
pub const REQUIRED_ALIASES: [(&str, &str); 3] =
    [("postmaster", "root"), ("MAILER-DAEMON", "postmaster"), ("root", "alias")];

fn nologin_shell() -> &'static str {
    ["/usr/sbin/nologin", "/sbin/nologin"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("/bin/false")
}

/// Run a system tool (groupadd, useradd); the error is its reason only (the first line of
/// what it said), for the caller's "unable to …: REASON".
fn run(command: &mut Command) -> Result<(), Error> {
    let output = command.stdin(Stdio::null()).output().map_err(|e| Error::temporary(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&output.stderr);
        Err(Error::temporary(text.lines().next().unwrap_or("failed").trim()))
    }
}

fn ensure_group(name: &str, report: &mut Report) {
    if group_id(name).is_some() {
        return;
    }
    match run(Command::new("groupadd").arg("--system").arg(name)) {
        Ok(()) => report.did(format!("created group {name}")),
        Err(e) => report.fail(format!("unable to create group {name} with groupadd: {e}")),
    }
}

fn ensure_user(account: &Account, home: &Path, report: &mut Report) {
    if user_ids(account.name).is_some() {
        return;
    }
    let dir = if account.name == "alias" { home.join("alias") } else { home.to_path_buf() };
    let result = run(Command::new("useradd")
        .args(["--system", "--no-create-home", "--gid", account.group, "--shell", nologin_shell(), "--home-dir"])
        .arg(&dir)
        .args(["--comment", &format!("Quill {}", account.role)])
        .arg(account.name));
    match result {
        Ok(()) => {
            report.did(format!("created user {} (group {}, home {})", account.name, account.group, dir.display()))
        }
        Err(e) => report.fail(format!("unable to create user {} with useradd: {e}", account.name)),
    }
}

/// Create HOME if missing and give it to root, mode 0755. The administrator names it and its
/// parents are root's, so it is opened following links; everything below it is walked by
/// descriptor and never follows one ([`queue_tree`]).
fn open_home(home: &Path, report: &mut Report) -> Option<crate::base::tree::Dir> {
    let created = match std::fs::DirBuilder::new().mode(0o755).create(home) {
        Ok(()) => {
            report.did(format!("created {}", home.display()));
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            report.fail(format!("unable to create {}: {e}", home.display()));
            return None;
        }
    };
    let dir = match crate::base::tree::Dir::open(home) {
        Ok(dir) => dir,
        Err(e) => {
            report.fail(e.to_string());
            return None;
        }
    };
    match dir.set_owner_mode(0, 0, 0o755) {
        Ok(crate::base::tree::Done::Changed { .. }) if !created => {
            report.did(format!("set {} to root:root mode 755", home.display()))
        }
        Ok(_) => {}
        Err(e) => report.fail(e.to_string()),
    }
    Some(dir)
}

/// The queue tree, control/, users/ and alias/ with their owners and modes, by descriptor: the
/// queue's directories belong to quillq, who could put a symbolic link where a directory or
/// the trigger belongs, so an entry of the wrong type is refused and reported, never followed.
fn queue_tree(home: &crate::base::tree::Dir, owners: crate::mail::queuefile::Owners, report: &mut Report) {
    use crate::base::tree::{Done, Kind, Spec};
    let mut specs = crate::mail::queuefile::tree_specs(Some(owners));
    specs.push(Spec { path: "users", kind: Kind::Directory, mode: 0o755, owner: Some((0, 0)) });
    match (user_ids("alias"), group_id(NOFILES_GROUP)) {
        (Some((alias, _)), Some(nofiles)) => {
            specs.push(Spec { path: "alias", kind: Kind::Directory, mode: 0o2755, owner: Some((alias, nofiles)) })
        }
        _ => report.fail("unable to create alias/: the alias user or the nofiles group is missing".into()),
    }
    for (spec, path, result) in crate::base::tree::apply(home, &specs) {
        let (uid, gid) = spec.owner.unwrap_or((0, 0));
        let owner = format!("{}:{} mode {:o}", super::user_name(uid), super::group_name(gid), spec.mode);
        match result {
            Ok(Done::Created) => report.did(format!("created {} ({owner})", path.display())),
            Ok(Done::Changed { .. }) => report.did(format!("set {} to {owner}", path.display())),
            Ok(Done::Unchanged) => {}
            Err(e) => report.fail(e.to_string()),
        }
    }
}

/// Write a control file only if it does not exist.
fn write_new(path: &Path, contents: &str, report: &mut Report) {
    if path.exists() {
        return;
    }
    match std::fs::write(path, contents) {
        Ok(()) => report.did(format!("wrote {}", path.display())),
        Err(e) => report.fail(format!("unable to write {}: {e}", path.display())),
    }
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn control_files(home: &Path, report: &mut Report) {
    let control = home.join("control");
    write_new(&control.join("me"), &format!("{}\n", host_name()), report);
    let me = Control::new(home).me().map(|m| String::from_utf8_lossy(&m).into_owned()).unwrap_or_else(|_| host_name());
    let mut domains = vec![me];
    if domains[0] != "localhost" {
        domains.push("localhost".to_string());
    }
    let list = domains.join("\n") + "\n";
    write_new(&control.join("locals"), &list, report);
    write_new(&control.join("rcpthosts"), &list, report);
    write_new(&control.join("tcprules"), DEFAULT_TCPRULES, report);
    // Written out, not only compiled in, so the administrator sees the limit and can change it.
    write_new(&control.join("databytes"), &format!("{}\n", crate::mail::control::DEFAULT_DATABYTES), report);
}

/// The rules the service directories' quill-tcpserver reads (`-x control/tcprules`): this
/// host may relay, everyone else may connect (and send only to rcpthosts).
pub const DEFAULT_TCPRULES: &str = "\
# quill-tcpserver rules (tcprules(5)): who may connect, who may relay
127.0.0.1:allow,RELAYCLIENT=\"\"
::1:allow,RELAYCLIENT=\"\"
:allow
";

/// The certificate and key files a home uses: what `control/tlscert` and `control/tlskey`
/// name (relative names are under `control/`, as quill-smtpd reads them), else `control/tlscert.pem` and `tlskey.pem`.
pub fn tls_files(home: &Path) -> (PathBuf, PathBuf) {
    let control = Control::new(home);
    let name = |file: &str, default: &str| -> PathBuf {
        match control.line(file) {
            Ok(Some(v)) => home.join("control").join(std::ffi::OsStr::from_bytes(&v)),
            _ => home.join("control").join(default),
        }
    };
    (name("tlscert", "tlscert.pem"), name("tlskey", "tlskey.pem"))
}

fn certificate(home: &Path, report: &mut Report) {
    let (cert, key) = tls_files(home);
    if cert.exists() && key.exists() {
        return;
    }
    let me = Control::new(home).me().map(|m| String::from_utf8_lossy(&m).into_owned()).unwrap_or_else(|_| host_name());
    let result = run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj"])
        .arg(format!("/CN={me}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{me}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    if let Err(e) = result {
        return report.fail(format!("unable to make a certificate with openssl (is it installed?): {e}"));
    }
    report.did(format!("made a self-signed certificate for {me} in {}", cert.display()));
    // quill-smtpd reads the key as quilld, after quill-tcpserver dropped root.
    if let Some((uid, _)) = user_ids("quilld") {
        let result = chown(&key, Some(uid), Some(0))
            .and_then(|()| std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)));
        if let Err(e) = result {
            report.fail(format!("unable to give {} to quilld: {e}", key.display()));
        }
    }
    let _ = std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644));
    let control = home.join("control");
    write_new(&control.join("tlscert"), &format!("{}\n", cert.display()), report);
    write_new(&control.join("tlskey"), &format!("{}\n", key.display()), report);
}

/// The lower-cased names an aliases file defines (a light scan: the full parser is
/// `crate::mail::aliases`, which `quill check` runs).
pub fn alias_names(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with([' ', '\t', '#']))
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_ascii_lowercase()))
        .filter(|n| !n.is_empty())
        .collect()
}

/// The lines to append to an aliases file holding `text`, or an empty string.
pub fn missing_aliases(text: &str) -> String {
    let names = alias_names(text);
    let mut add = String::new();
    for (name, target) in REQUIRED_ALIASES {
        if !names.contains(&name.to_ascii_lowercase()) {
            add.push_str(&format!("{name}: {target}\n"));
        }
    }
    add
}

fn aliases(home: &Path, report: &mut Report) {
    use std::io::Write;
    let path = crate::mail::aliases::aliases_path(&Control::new(home));
    let text = match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return report.fail(format!("unable to read {}: {e}", path.display())),
    };
    let add = missing_aliases(&text);
    if add.is_empty() {
        return;
    }
    let mut block = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        block.push('\n');
    }
    block.push_str("# Added by quill setup. Point root at the person who reads the system's mail.\n");
    block.push_str(&add);
    // Root appends only to a regular file of root's with one name, checked on the descriptor
    // it writes to: a file that someone else owns (or a hard link to another file) put where
    // control/aliases points must not get root's lines.
    let result = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| {
        use std::os::unix::fs::MetadataExt;
        let meta = f.metadata()?;
        if !meta.is_file() || meta.uid() != 0 || meta.nlink() != 1 {
            return Err(std::io::Error::other(format!(
                "it is not a regular file of root's with one link (owner uid {}, {} links); add these lines \
                 yourself: {}",
                meta.uid(),
                meta.nlink(),
                add.trim_end().replace('\n', ", ")
            )));
        }
        f.write_all(block.as_bytes()).and_then(|()| f.sync_all())
    });
    match result {
        Ok(()) => report.did(format!("added {} to {}", add.trim_end().replace('\n', ", "), path.display())),
        Err(e) => report.fail(format!("unable to append to {}: {e}", path.display())),
    }
}

fn queue_program(bindir: &Path, report: &mut Report) {
    let path = bindir.join("quill-queue");
    if !path.exists() {
        return report
            .fail(format!("unable to find {}: build Quill (make) or install it (make install) first", path.display()));
    }
    let (Some((uid, _)), Some(gid)) = (user_ids("quillq"), group_id(QUEUE_GROUP)) else {
        return report.fail("unable to make quill-queue setuid quillq: the user or group is missing".into());
    };
    if owner_mode(&path) == Some((uid, gid, 0o4711)) {
        return;
    }
    let result = chown(&path, Some(uid), Some(gid))
        .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o4711)));
    match result {
        Ok(()) => report.did(format!("made {} setuid quillq (mode 4711)", path.display())),
        Err(e) => report.fail(format!("unable to make {} setuid quillq: {e}", path.display())),
    }
}

fn links(bindir: &Path, root: &Path, report: &mut Report) {
    for (place, program) in LINKS {
        let link = root.join(place);
        let target = bindir.join(program);
        if std::fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            continue;
        }
        if std::fs::symlink_metadata(&link).is_ok() {
            let mut kept = link.clone().into_os_string();
            kept.push(".before-quill");
            let kept = PathBuf::from(kept);
            if std::fs::symlink_metadata(&kept).is_ok() {
                // An earlier run kept an original already: two files cannot both be kept.
                report.fail(format!(
                    "unable to link {}: it exists, and so does {}; move one of them away",
                    link.display(),
                    kept.display()
                ));
                continue;
            } else if let Err(e) = std::fs::rename(&link, &kept) {
                report.fail(format!("unable to keep {} as {}: {e}", link.display(), kept.display()));
                continue;
            } else {
                report.did(format!("kept the old {} as {}", link.display(), kept.display()));
            }
        }
        if let Some(parent) = link.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        match std::os::unix::fs::symlink(&target, &link) {
            Ok(()) => report.did(format!("linked {} to {}", link.display(), target.display())),
            Err(e) => report.fail(format!("unable to link {} to {}: {e}", link.display(), target.display())),
        }
    }
}

/// Run every step of the setup for `options.home`, with Quill's programs in `bindir`.
pub fn setup(options: &Options, bindir: &Path) -> Report {
    let mut report = Report::default();
    if crate::base::sys::uids().1 != 0 {
        report.fail("unable to set up Quill: it needs root (run: sudo quill setup)".into());
        return report;
    }
    let home = options.home.as_path();
    for group in [QUEUE_GROUP, NOFILES_GROUP] {
        ensure_group(group, &mut report);
    }
    for account in ACCOUNTS.iter() {
        ensure_user(account, home, &mut report);
    }
    let (Some((quillq, _)), Some((quills, _)), Some(quill_gid)) =
        (user_ids("quillq"), user_ids("quills"), group_id(QUEUE_GROUP))
    else {
        report.fail("unable to create the queue: the quill accounts are missing".into());
        return report;
    };
    let Some(home_dir) = open_home(home, &mut report) else { return report };
    let owners = crate::mail::queuefile::Owners { quillq, quills, quill_group: quill_gid };
    queue_tree(&home_dir, owners, &mut report);
    control_files(home, &mut report);
    certificate(home, &mut report);
    aliases(home, &mut report);
    queue_program(bindir, &mut report);
    if options.links {
        links(bindir, &options.link_root, &mut report);
    }
    report
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_appended_only_when_missing() {
        assert_eq!(missing_aliases(""), "postmaster: root\nMAILER-DAEMON: postmaster\nroot: alias\n");
        let text = "# comment\nPostmaster:    root\n  continued: line\nmailer-daemon: postmaster\n";
        assert_eq!(missing_aliases(text), "root: alias\n");
        assert_eq!(missing_aliases("postmaster: a\nroot: b\nMAILER-DAEMON: c\n"), "");
    }
}
