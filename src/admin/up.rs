//! quill-up's work (doc/quill-up.1): a complete, self-contained instance in one directory,
//! as the current user. [`prepare`] makes the directory (control files, queue, users map, a
//! self-signed certificate) and, when started by root, gives it away and becomes its owner by
//! [`crate::base::privilege::drop_to`]; [`supervise`] keeps the services running with
//! [`crate::base::children`], restarting each one that dies, until SIGINT or SIGTERM.
#![forbid(unsafe_code)]

use crate::base::children;
use crate::base::fail::Error;
use crate::base::log;
use crate::mail::control::program;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Concurrent SMTP sessions without `-c`: in total, and from one client address.
const DEFAULT_SESSIONS: u32 = 100;
const DEFAULT_PER_CLIENT: u32 = 20;

/// The command line, read.
#[derive(Clone, Debug)]
pub struct Options {
    /// `-d`: the instance's directory (absolute after [`prepare`]).
    pub dir: PathBuf,
    /// `-l`: where the SMTP listener listens, as HOST and PORT.
    pub listen: Option<(String, String)>,
    /// `-D`: more local domains.
    pub domains: Vec<String>,
    /// `-r`: clients that may relay.
    pub relay: Vec<String>,
    /// Concurrent SMTP sessions: in total, and from one client address.
    pub sessions: Option<(String, String)>,
}

/// What quill-up prints for a command line it cannot use.
pub const USAGE: &str =
    "usage: quill-up -d DIR [-l HOST:PORT] [-c MAX[:PERCLIENT]] [-D DOMAIN]... [-r ADDRESS-OR-PREFIX]...";

fn split_listen(text: &str) -> Option<(String, String)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host.to_string(), port.to_string()));
    }
    let (host, port) = text.rsplit_once(':')?;
    Some((host.to_string(), port.to_string()))
}

/// Read the command line (without the program's name); None if it cannot be used.
pub fn parse_options(args: &[String]) -> Option<Options> {
    let mut opts = getopts::Options::new();
    opts.optopt("d", "", "directory of the instance", "DIR");
    opts.optopt("l", "", "SMTP listen address", "HOST:PORT");
    opts.optmulti("D", "", "another local domain", "DOMAIN");
    opts.optmulti("r", "", "let SMTP clients from this address or prefix relay", "ADDRESS");
    opts.optopt("c", "", "concurrent SMTP sessions, in total and per client", "MAX[:PERCLIENT]");
    let m = opts.parse(args).ok()?;
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

/// Write what the instance needs and does not have yet (and locals, rcpthosts, users/assign and
/// the rules, which follow the command line on every start).
fn make_instance(o: &Options) -> Result<(), Error> {
    let dir = &o.dir;
    let err = |what: &str, e: std::io::Error| Error::io(what, &e);
    std::fs::create_dir_all(dir).map_err(|e| err(&format!("create {}", dir.display()), e))?;
    crate::mail::queuefile::create_tree(dir, None).map_err(|e| err("create the queue", e))?;
    for sub in ["users", "alias", "maildir"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| err(&format!("create {sub}/"), e))?;
    }
    let control = dir.join("control");
    let mut locals = vec!["localhost".to_string()];
    locals.extend(o.domains.iter().map(|d| d.to_ascii_lowercase()));
    let list = locals.join("\n") + "\n";
    write_new(&control.join("me"), "localhost\n").map_err(|e| err("write control/me", e))?;
    write_new(&control.join("databytes"), &format!("{}\n", crate::mail::control::DEFAULT_DATABYTES))
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
    let (uid, gid) = (crate::base::sys::uids().0, crate::base::sys::gid());
    let assign = format!("+:{user}:{uid}:{gid}:{}:-::\n.\n", dir.display());
    std::fs::write(dir.join("users/assign"), assign).map_err(|e| err("write users/assign", e))?;
    let status =
        Command::new(program("quill-newu")).env("QUILL_HOME", dir).status().map_err(|e| err("run quill-newu", e))?;
    if !status.success() {
        return Err(Error::temporary("unable to compile users/assign: quill-newu failed"));
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
        log::warning("unable to make a TLS certificate: openssl is not installed; STARTTLS is off");
    }
}

/// A private instance never runs as root: started by root (a test, a container), it gives the
/// directory to its owner if that is not root, else to `nobody`, and becomes that user. Every
/// stage then runs as that one user, as DESIGN §6 says.
///
/// The owner can change everything in the directory while root works on it, so the directory
/// is opened without following a link in any component of its path, its owner is read from
/// that descriptor, and the tree is given away by descriptor ([`crate::base::tree::give_tree`]):
/// no link is followed and nothing is changed by path after a check.
fn become_owner(dir: &Path) -> Result<(), Error> {
    use nix::unistd::{Uid, User};
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let root = crate::base::tree::Dir::open_without_links(dir).map_err(|e| Error::temporary(e.to_string()))?;
    let meta = root.stat().map_err(|e| Error::temporary(e.to_string()))?;
    let (uid, gid) = if meta.st_uid != 0 {
        (meta.st_uid, meta.st_gid)
    } else {
        let nobody = User::from_name("nobody")
            .ok()
            .flatten()
            .ok_or_else(|| Error::temporary("unable to run as root and there is no user nobody to run as"))?;
        (nobody.uid.as_raw(), nobody.gid.as_raw())
    };
    crate::base::tree::give_tree(&root, uid, gid).map_err(|e| Error::temporary(e.to_string()))?;
    crate::base::privilege::drop_to(&crate::base::privilege::Credentials::only(uid, gid))
        .map_err(|e| Error::io(format_args!("become uid {uid} gid {gid}"), &e))?;
    log::line(&format!("started as root: running as uid {uid}"));
    Ok(())
}

/// Make the instance ready: its directory (as root, made without following a link in its
/// path), the absolute path in `o.dir`, its owner become (as root), its files written.
pub fn prepare(o: &mut Options) -> Result<(), Error> {
    // Root follows no link in DIR's path and makes what is missing by descriptor: whoever
    // owns a part of the path could otherwise lead it to a directory of root's (/etc), which
    // would then be given to nobody.
    if nix::unistd::Uid::effective().is_root() {
        let dir = std::path::absolute(&o.dir).map_err(|e| Error::io(format_args!("find {}", o.dir.display()), &e))?;
        crate::base::tree::Dir::create_without_links(&dir, 0o755).map_err(|e| Error::temporary(e.to_string()))?;
    } else {
        std::fs::create_dir_all(&o.dir).map_err(|e| Error::io(format_args!("create {}", o.dir.display()), &e))?;
    }
    // Every path written into the instance's files is absolute, so that it means the same
    // to every program whatever its working directory.
    o.dir = o.dir.canonicalize().map_err(|e| Error::io(format_args!("find {}", o.dir.display()), &e))?;
    become_owner(&o.dir)?;
    make_instance(o)
}

/// The services of the instance: the queue system, and with `-l` the SMTP listener.
pub fn services(o: &Options) -> Vec<Service> {
    let dir = &o.dir;
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
        log::line(&format!("instance {} with SMTP on {host}:{port}", dir.display()));
    } else {
        log::line(&format!("instance {} (no SMTP listener)", dir.display()));
    }
    services
}

/// One supervised program: how to start it, and its current process.
pub struct Service {
    name: &'static str,
    argv: Vec<OsString>,
    child: Option<Child>,
    started: Instant,
}

impl Service {
    fn start(&mut self, dir: &Path) {
        let mut command = Command::new(&self.argv[0]);
        command.args(&self.argv[1..]).env("QUILL_HOME", dir).current_dir(dir);
        crate::base::sys::die_with_parent(&mut command);
        match command.spawn() {
            Ok(child) => self.child = Some(child),
            Err(e) => log::warning(&format!("unable to start {}: {e}", self.name)),
        }
        self.started = Instant::now();
    }
}

/// Start every service, then restart what dies (after at least a second since its last
/// start), until a stop signal on `signals` (the pipe of [`crate::base::sys::signal_pipe`]
/// for SIGINT, SIGTERM and SIGCHLD).
pub fn supervise(dir: &Path, services: &mut [Service], signals: &OwnedFd) {
    for s in services.iter_mut() {
        s.start(dir);
    }
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
                    log::warning(&format!("{} exited; restarting it", s.name));
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
    log::line("stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Option<Options> {
        parse_options(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_command_line_is_read_and_a_bad_one_refused() {
        let o = parse(&["-d", "q", "-l", "[::1]:2525", "-c", "50", "-D", "Example.ORG", "-r", "10."]).expect("parses");
        assert_eq!(o.dir, PathBuf::from("q"));
        assert_eq!(o.listen, Some(("::1".to_string(), "2525".to_string())));
        assert_eq!(o.sessions, Some(("50".to_string(), "50".to_string())));
        assert_eq!((o.domains, o.relay), (vec!["Example.ORG".to_string()], vec!["10.".to_string()]));
        let o = parse(&["-d", "q", "-l", "127.0.0.1:25", "-c", "9:3"]).expect("parses");
        assert_eq!(o.listen, Some(("127.0.0.1".to_string(), "25".to_string())));
        assert_eq!(o.sessions, Some(("9".to_string(), "3".to_string())));
        for bad in [
            &["-l", "127.0.0.1:25"][..],
            &["-d", "q", "-l", "nocolon"],
            &["-d", "q", "-c", "0"],
            &["-d", "q", "-c", "5:x"],
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
