//! quill-up: a complete, self-contained Quill instance in one directory, as the current user.
//!
//! Job: create DIR (control files, queue, users map, a self-signed certificate) if needed, then
//! run the queue system (quill-start) and, with `-l`, the SMTP listener (quill-tcpserver +
//! quill-smtpd) in the foreground, restarting any of them that dies after a short pause, as
//! daemontools would. SIGINT or SIGTERM stops everything cleanly.
//! Runs as: the caller. Never needs root. Exit: 0 after a clean stop, 111 on a setup failure.
//! Man page: doc/quill-up.1.

use quill::base::children;
use quill::base::fail::exit;
use quill::mail::control::program;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

/// Concurrent SMTP sessions without `-c`: in total, and from one client address.
const DEFAULT_SESSIONS: u32 = 100;
const DEFAULT_PER_CLIENT: u32 = 20;

struct Options {
    dir: PathBuf,
    listen: Option<(String, String)>,
    domains: Vec<String>,
    relay: Vec<String>,
    /// Concurrent SMTP sessions: in total, and from one client address.
    sessions: Option<(String, String)>,
}

fn usage() -> ExitCode {
    eprintln!("usage: quill-up -d DIR [-l HOST:PORT] [-c MAX[:PERCLIENT]] [-D DOMAIN]... [-r ADDRESS-OR-PREFIX]...");
    ExitCode::from(exit::USAGE)
}

fn split_listen(text: &str) -> Option<(String, String)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host.to_string(), port.to_string()));
    }
    let (host, port) = text.rsplit_once(':')?;
    Some((host.to_string(), port.to_string()))
}

fn parse_options() -> Option<Options> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = getopts::Options::new();
    opts.optopt("d", "", "directory of the instance", "DIR");
    opts.optopt("l", "", "SMTP listen address", "HOST:PORT");
    opts.optmulti("D", "", "another local domain", "DOMAIN");
    opts.optmulti("r", "", "let SMTP clients from this address or prefix relay", "ADDRESS");
    opts.optopt("c", "", "concurrent SMTP sessions, in total and per client", "MAX[:PERCLIENT]");
    let m = opts.parse(&args).ok()?;
    let sessions = match m.opt_str("c") {
        None => None,
        Some(text) => {
            let (max, per) = text.split_once(':').unwrap_or((&text, &text));
            if max.parse::<u32>().ok()? == 0 || per.parse::<u32>().ok()? == 0 {
                return None;
            }
            Some((max.to_string(), per.to_string()))
        }
    };
    let dir = PathBuf::from(m.opt_str("d")?);
    let listen = match m.opt_str("l") {
        Some(l) => Some(split_listen(&l)?),
        None => None,
    };
    Some(Options { dir, listen, domains: m.opt_strs("D"), relay: m.opt_strs("r"), sessions })
}

/// Write a file only if it does not exist yet: starting again keeps the administrator's edits.
fn write_new(path: &Path, contents: &str) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    std::fs::write(path, contents)
}

fn setup(o: &Options) -> Result<(), String> {
    let dir = &o.dir;
    let err = |what: &str, e: std::io::Error| format!("unable to {what}: {e}");
    std::fs::create_dir_all(dir).map_err(|e| err(&format!("create {}", dir.display()), e))?;
    quill::mail::queuefile::create_tree(dir, None).map_err(|e| err("create the queue", e))?;
    for sub in ["users", "alias", "maildir"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| err(&format!("create {sub}/"), e))?;
    }
    let control = dir.join("control");
    let mut locals = vec!["localhost".to_string()];
    locals.extend(o.domains.iter().map(|d| d.to_ascii_lowercase()));
    let list = locals.join("\n") + "\n";
    write_new(&control.join("me"), "localhost\n").map_err(|e| err("write control/me", e))?;
    write_new(&control.join("databytes"), &format!("{}\n", quill::mail::control::DEFAULT_DATABYTES))
        .map_err(|e| err("write control/databytes", e))?;
    // locals and rcpthosts follow -D on every start, so adding a domain is one restart away.
    std::fs::write(control.join("locals"), &list).map_err(|e| err("write control/locals", e))?;
    std::fs::write(control.join("rcpthosts"), &list).map_err(|e| err("write control/rcpthosts", e))?;
    // The host's /etc/aliases is not this instance's business.
    write_new(&dir.join("alias/aliases"), "# aliases for this instance (sendmail syntax)\n")
        .map_err(|e| err("write alias/aliases", e))?;
    write_new(&control.join("aliases"), &format!("{}\n", dir.join("alias/aliases").display()))
        .map_err(|e| err("write control/aliases", e))?;
    // Every local part at a local domain belongs to the current user: a catch-all assignment
    // whose extension is the whole local part, and a default dot file that files each address
    // into its own Maildir.
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "quill".to_string());
    let (uid, gid) = (quill::base::sys::uids().0, quill::base::sys::gid());
    let assign = format!("+:{user}:{uid}:{gid}:{}:-::\n.\n", dir.display());
    std::fs::write(dir.join("users/assign"), assign).map_err(|e| err("write users/assign", e))?;
    let status =
        Command::new(program("quill-newu")).env("QUILL_HOME", dir).status().map_err(|e| err("run quill-newu", e))?;
    if !status.success() {
        return Err("unable to compile users/assign: quill-newu failed".into());
    }
    write_new(&dir.join(".qmail-default"), "./maildir/${DEFAULT}/\n").map_err(|e| err("write .qmail-default", e))?;
    let mut rules = String::from("# quill-tcpserver rules for this instance: who may connect, who may relay\n");
    for r in &o.relay {
        rules.push_str(&format!("{r}:allow,RELAYCLIENT=\"\"\n"));
    }
    rules.push_str(":allow\n");
    std::fs::write(dir.join("control/tcprules"), rules).map_err(|e| err("write control/tcprules", e))?;
    make_certificate(&control);
    Ok(())
}

/// A self-signed certificate for STARTTLS, made with openssl if it is installed.
fn make_certificate(control: &Path) {
    let (cert, key) = (control.join("tlscert.pem"), control.join("tlskey.pem"));
    if cert.exists() && key.exists() {
        return;
    }
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if made {
        let _ = std::fs::write(control.join("tlscert"), format!("{}\n", cert.display()));
        let _ = std::fs::write(control.join("tlskey"), format!("{}\n", key.display()));
    } else {
        quill::base::log::warning("unable to make a TLS certificate: openssl is not installed; STARTTLS is off");
    }
}

/// A private instance never runs as root: started by root (a test, a container), it gives the
/// directory to its owner if that is not root, else to `nobody`, and becomes that user. Every
/// stage then runs as that one user, as DESIGN §6 says.
///
/// The owner can change everything in the directory while root works on it, so the directory
/// is opened without following a link in any component of its path, its owner is read from
/// that descriptor, and the tree is given away by descriptor ([`quill::base::tree::give_tree`]):
/// no link is followed and nothing is changed by path after a check.
fn become_owner(dir: &Path) -> Result<(), String> {
    use nix::unistd::{Uid, User};
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let root = quill::base::tree::Dir::open_without_links(dir).map_err(|e| e.to_string())?;
    let meta = root.stat().map_err(|e| e.to_string())?;
    let (uid, gid) = if meta.st_uid != 0 {
        (meta.st_uid, meta.st_gid)
    } else {
        let nobody = User::from_name("nobody")
            .ok()
            .flatten()
            .ok_or("unable to run as root and there is no user nobody to run as")?;
        (nobody.uid.as_raw(), nobody.gid.as_raw())
    };
    quill::base::tree::give_tree(&root, uid, gid).map_err(|e| e.to_string())?;
    quill::base::privilege::drop_to(&quill::base::privilege::Credentials::only(uid, gid))
        .map_err(|e| format!("unable to become uid {uid} gid {gid}: {e}"))?;
    quill::base::log::line(&format!("started as root: running as uid {uid}"));
    Ok(())
}

/// One supervised program: how to start it, and its current process.
struct Service {
    name: &'static str,
    argv: Vec<OsString>,
    child: Option<Child>,
    started: Instant,
}

impl Service {
    fn start(&mut self, dir: &Path) {
        let mut command = Command::new(&self.argv[0]);
        command.args(&self.argv[1..]).env("QUILL_HOME", dir).current_dir(dir);
        quill::base::sys::die_with_parent(&mut command);
        match command.spawn() {
            Ok(child) => self.child = Some(child),
            Err(e) => quill::base::log::warning(&format!("unable to start {}: {e}", self.name)),
        }
        self.started = Instant::now();
    }
}

fn main() -> ExitCode {
    quill::base::log::init("quill-up");
    let Some(mut o) = parse_options() else { return usage() };
    // Root follows no link in DIR's path and makes what is missing by descriptor: whoever
    // owns a part of the path could otherwise lead it to a directory of root's (/etc), which
    // would then be given to nobody.
    if nix::unistd::Uid::effective().is_root() {
        let made = std::path::absolute(&o.dir)
            .map_err(|e| format!("unable to find {}: {e}", o.dir.display()))
            .and_then(|dir| quill::base::tree::Dir::create_without_links(&dir, 0o755).map_err(|e| e.to_string()));
        if let Err(e) = made {
            return quill::base::log::fatal_exit(&e);
        }
    } else if let Err(e) = std::fs::create_dir_all(&o.dir) {
        return quill::base::log::fatal_exit(&format!("unable to create {}: {e}", o.dir.display()));
    }
    // Every path written into the instance's files is absolute, so that it means the same
    // to every program whatever its working directory.
    o.dir = match o.dir.canonicalize() {
        Ok(d) => d,
        Err(e) => {
            return quill::base::log::fatal_exit(&format!("unable to find {}: {e}", o.dir.display()));
        }
    };
    if let Err(e) = become_owner(&o.dir) {
        return quill::base::log::fatal_exit(&e);
    }
    if let Err(e) = setup(&o) {
        return quill::base::log::fatal_exit(&e);
    }
    let dir = o.dir.clone();
    let signals = match quill::base::sys::signal_pipe(&[libc::SIGINT, libc::SIGTERM, libc::SIGCHLD]) {
        Ok(fd) => fd,
        Err(e) => {
            return quill::base::log::fatal_exit(&format!("unable to catch signals: {e}"));
        }
    };
    let mut services = vec![Service {
        name: "quill-start",
        argv: vec![program("quill-start").into(), "./Maildir/".into()],
        child: None,
        started: Instant::now(),
    }];
    if let Some((host, port)) = &o.listen {
        let mut argv: Vec<OsString> = vec![program("quill-tcpserver").into()];
        argv.extend(["-x".into(), dir.join("control/tcprules").into_os_string()]);
        // Without -c: 100 sessions, as Postfix's default process limit, 20 from one client, so
        // that it takes five addresses to fill the table (and quill-tcpserver then makes room).
        let (max, per) = o.sessions.clone().unwrap_or((DEFAULT_SESSIONS.to_string(), DEFAULT_PER_CLIENT.to_string()));
        argv.extend(["-c".into(), max.into(), "-C".into(), per.into()]);
        argv.extend([host.into(), port.into(), program("quill-smtpd").into()]);
        services.push(Service { name: "quill-smtpd", argv, child: None, started: Instant::now() });
        quill::base::log::line(&format!("instance {} with SMTP on {host}:{port}", dir.display()));
    } else {
        quill::base::log::line(&format!("instance {} (no SMTP listener)", dir.display()));
    }
    for s in services.iter_mut() {
        s.start(&dir);
    }
    supervise(&dir, &mut services, &signals);
    ExitCode::SUCCESS
}

/// Restart what dies (after at least a second since its last start), until a stop signal.
fn supervise(dir: &Path, services: &mut [Service], signals: &std::os::fd::OwnedFd) {
    loop {
        if children::caught(signals, Duration::from_millis(500)).into_iter().any(children::is_stop) {
            stop(services);
            return;
        }
        for s in services.iter_mut() {
            let dead = match s.child.as_mut() {
                Some(c) => !children::running(c),
                None => true,
            };
            if dead && s.started.elapsed() >= Duration::from_secs(1) {
                if s.child.is_some() {
                    quill::base::log::warning(&format!("{} exited; restarting it", s.name));
                }
                s.start(dir);
            }
        }
    }
}

/// SIGTERM to each service, in reverse order of start (the listener first, so no new mail
/// arrives while the queue system winds down), then wait for them, bounded.
fn stop(services: &mut [Service]) {
    for s in services.iter_mut().rev() {
        if let Some(c) = s.child.as_mut() {
            children::ask_to_stop(c, Instant::now() + Duration::from_secs(70));
            children::kill(c);
        }
    }
    quill::base::log::line("stopped");
}
