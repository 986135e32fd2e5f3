//! quill-tcpserver: a UCSPI-TCP server, interchangeable with ucspi-tcp's tcpserver.
//!
//! Job: bind HOST:PORT, drop privileges, then for each connection run PROGRAM in a child with
//! the socket on fd 0 and fd 1 and the UCSPI-TCP variables (PROTO, TCPLOCALIP, TCPREMOTEIP, …)
//! in its environment; enforce the total (`-c`) and per-client (`-C`) limits and the rules file
//! (`-x`, doc/tcprules.5); above 80 % of `-c` start new sessions with QUILL_STRESS=1, and when
//! the table is full end the idlest session (SIGTERM) to let a new client in; reap the
//! children; reload the rules on SIGHUP; stop on SIGTERM.
//! Runs as: root (to bind a port below 1024) and then `-u`/`-g` (quilld), or any user.
//! Fds: 0 unused, 1 the bound port with `-1`, 2 the log. Children: socket on 0 and 1, log on 2.
//! Exit: 0 after SIGTERM, 100 on a usage error, 111 when it cannot start (bind, ids, rules).
//! Linked quill-smtpd: when PROGRAM is the quill-smtpd installed beside this program (and
//! `-e` is not given), each connection's child is a fork that runs quill-smtpd's code, linked
//! in here (`quill::smtpd::entry::serve`), without exec (`quill::tcpserver::linked`). Any other
//! PROGRAM is run with fork and exec, as by any tcpserver.
//! Man page: doc/quill-tcpserver.8. The options and the loop: `quill::tcpserver::server`.

use quill::base::fail::exit;
use quill::base::log;
use quill::tcpserver::linked::{self, Linked};
use quill::tcpserver::listener;
use quill::tcpserver::server::{self, Server, LOOKUP, USAGE};
use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

/// The `TCPLOCALHOST` value when `-l` is not given: `control/me` of the Quill home named by
/// `QUILL_HOME`, else None (the local IP of each connection is used).
fn default_local_name() -> Option<String> {
    std::env::var_os("QUILL_HOME")?;
    let me = quill::mail::control::Control::from_env().line("me").ok()??;
    Some(String::from_utf8_lossy(&me).into_owned())
}

/// quill-smtpd's code, to run in each connection's forked child, when PROGRAM names the
/// quill-smtpd beside this program (the same file, so the same code) and `-e` is not given.
fn linked_smtpd(config: &server::Config) -> Option<Linked> {
    let beside = quill::mail::control::program("quill-smtpd");
    if config.always_exec || !linked::names(&config.program[0], &beside) {
        return None;
    }
    // Without the bounds a child keeps quill-tcpserver's name in ps: worth a warning, no more.
    let title = quill::base::sys::ProcessTitle::find()
        .map_err(|e| log::warning(&format!("unable to find the process title: {e}")))
        .ok();
    Some(Linked { name: "quill-smtpd", program: quill::smtpd::entry::serve, title })
}

/// Confine this server once for all its linked quill-smtpd sessions (doc/quill-tcpserver.8,
/// SECURITY): its own filter, which every session inherits, and each session's Landlock
/// ruleset, built once. Where the sessions must be able to run a program (AUTH's
/// checkpassword, a QMAILQUEUE filter, also when a rule sets it), each session confines
/// itself, as an exec'd quill-smtpd does. Whether it is confined so.
fn confine_for_linked(config: &server::Config, rules: &quill::tcpserver::tcprules::Rules) -> bool {
    use quill::base::confine;
    if confine::switched_off() {
        // Each session says so in its log.
        return false;
    }
    let why = match quill::smtpd::config::linked_policy(&config.program[1..]) {
        // The shape before this one, kept for comparison (doc/PERFORMANCE.md) and debugging.
        _ if std::env::var_os("QUILL_CONFINE").is_some_and(|v| v == "session") => "QUILL_CONFINE=session".to_string(),
        Ok(_) if rules.sets("QMAILQUEUE") => "a rule sets QMAILQUEUE".to_string(),
        Ok((smtpd, dnsbl)) => {
            let server = quill::mail::jail::tcpserver_linked(&smtpd, dnsbl || config.lookup);
            return confine::serve(&server, &smtpd).seccomp;
        }
        Err(why) => why,
    };
    if config.verbosity >= server::Verbosity::Verbose {
        log::line(&format!("each session confines itself: {why}"));
    }
    false
}

fn main() -> ExitCode {
    log::init("quill-tcpserver");
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == LOOKUP) {
        return server::lookup_and_exec(&args[1..]);
    }
    let Some(args) = args.into_iter().map(|a| a.into_string().ok()).collect::<Option<Vec<String>>>() else {
        return log::fatal_permanent("arguments must be UTF-8");
    };
    let mut config = match server::parse_options(&args) {
        Ok(config) => config,
        Err(e) => {
            log::fatal(&e.message);
            eprintln!("{USAGE}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let listener = match listener::bind(config.address, config.backlog, config.any) {
        Ok(listener) => listener,
        Err(e) => return log::fatal_exit(&format!("unable to bind {}: {e}", config.address)),
    };
    if config.print_port {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{port}").and_then(|_| out.flush()).is_err() {
            return log::fatal_exit("unable to print the port");
        }
    }
    if config.uid.is_some() && config.gid.is_none() && nix::unistd::geteuid().is_root() {
        log::warning("-u without -g keeps the group of root; give -g too");
    }
    if let Err(e) = listener::drop_privileges(config.uid, config.gid) {
        return log::fatal_exit(&format!(
            "unable to drop privileges to uid {:?} gid {:?}: {e}",
            config.uid, config.gid
        ));
    }
    // Only now, without privileges: the rules file, our own program for -h, the signals.
    let rules = match server::load_rules(&config) {
        Ok(rules) => rules,
        Err(e) => return log::fatal_exit(&e.message),
    };
    let self_exe = std::env::current_exe().ok();
    if config.lookup && self_exe.is_none() {
        return log::fatal_exit("unable to find my own program for -h lookups");
    }
    let signals = match quill::base::sys::signal_pipe(&[libc::SIGCHLD, libc::SIGHUP, libc::SIGTERM]) {
        Ok(fd) => fd,
        Err(e) => return log::fatal_exit(&format!("unable to set up signals: {e}")),
    };
    if config.local_name.is_none() {
        config.local_name = default_local_name();
    }
    let linked = linked_smtpd(&config);
    // Last, once nothing is left to set up: a confined server cannot exec.
    let confined = linked.is_some() && confine_for_linked(&config, &rules);
    let mut server = Server::new(config, rules, self_exe, linked);
    server.confined = confined;
    server.status();
    server::run(&mut server, listener, signals);
    ExitCode::SUCCESS
}
