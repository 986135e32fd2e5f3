//! quill-tcpserver's work (doc/quill-tcpserver.8): its options, the accept loop with the
//! connection table and the rules, the per-connection command and environment, and the `-h`
//! helper that looks up the client's name in the connection's own process. Its main binds,
//! drops privileges and calls [`run`].
//!
//! Its children are one per connection, reaped as they end and left running on SIGTERM, so
//! its loop is its own (doc/INTERNALS.md "Supervision"); the signal pipe is read with
//! [`crate::base::children::caught`] and the privilege drop is
//! [`crate::base::privilege::drop_to`] (through [`listener::drop_privileges`]).
#![forbid(unsafe_code)]

use crate::base::children;
use crate::base::fail::{exit, Error};
use crate::base::log;
use crate::tcpserver::linked::{self, Linked};
use crate::tcpserver::listener::{self, ClientKey, Over, Table};
use crate::tcpserver::tcprules::{Rules, Verdict};
use std::ffi::OsString;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The first argument of the internal helper mode used by `-h`: the reverse lookup runs in the
/// connection's own process, which then execs PROGRAM, so a slow resolver never stalls the
/// accept loop.
pub const LOOKUP: &str = "--quill-tcpserver-lookup";

/// A full table makes room only by ending a session whose client has sent nothing for at least
/// this long: longer than any client pauses while it talks (it waits for our replies, which
/// come within a second or two, not for itself), shorter than an attacker's idle hold.
const MINIMUM_IDLE: Duration = Duration::from_secs(5);

pub const USAGE: &str = "usage: quill-tcpserver [ -1UXvqQhHrRPoOdDwe ] [ -c limit ] [ -C per-client ] \
                     [ -x rules ] [ -B banner ] [ -m refusal ] [ -g gid ] [ -u uid ] [ -b backlog ] \
                     [ -l localname ] [ -t timeout ] host port program [ arg ... ]";

/// How much to log: 0 fatal errors only (`-q`), 1 errors, refusals and denials (default,
/// `-Q`), 2 also every connection and the status (`-v`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// The command line, read (doc/quill-tcpserver.8 names each option).
#[derive(Debug)]
pub struct Config {
    /// HOST and PORT.
    pub address: SocketAddr,
    /// HOST was `any`: one socket for both families (`[::]` without IPV6_V6ONLY), or IPv4
    /// alone on a kernel without IPv6 ([`listener::bind`]).
    pub any: bool,
    /// PROGRAM and its arguments.
    pub program: Vec<OsString>,
    /// `-c`: connections at once.
    pub limit: usize,
    /// `-C`: connections at once from one client (an IPv4 address or an IPv6 /64).
    pub per_client: u32,
    /// `-b`: the listen backlog.
    pub backlog: i32,
    /// `-x`: the rules file.
    pub rules: Option<PathBuf>,
    /// `-X`: a missing rules file means no rules.
    pub rules_optional: bool,
    /// `-B`: written to each client before the program runs.
    pub banner: Vec<u8>,
    /// `-m`: the line (with CRLF) a client over a limit gets, or nothing.
    pub refusal: Vec<u8>,
    /// `-w`: a full table stops accepting instead of refusing.
    pub wait: bool,
    /// `-u` (or `-U`'s $UID).
    pub uid: Option<u32>,
    /// `-g` (or `-U`'s $GID).
    pub gid: Option<u32>,
    /// `-1`: print the bound port on fd 1.
    pub print_port: bool,
    /// `-l`: TCPLOCALHOST.
    pub local_name: Option<String>,
    /// `-h`: look up TCPREMOTEHOST (in the connection's process).
    pub lookup: bool,
    /// `-D`: TCP_NODELAY.
    pub nodelay: bool,
    /// `-t`: how long the `-h` name lookup may take before the program runs without it.
    pub lookup_timeout: u32,
    /// `-v`, `-q`, `-Q`.
    pub verbosity: Verbosity,
    /// `-e`: always run PROGRAM with exec, even when it is the quill-smtpd whose code is
    /// linked in (doc/quill-tcpserver.8, "The linked quill-smtpd").
    pub always_exec: bool,
}

fn number<T: std::str::FromStr>(m: &getopts::Matches, name: &str, default: T) -> Result<T, Error> {
    match m.opt_str(name) {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| Error::permanent(format!("-{name} needs a number, not {text:?}"))),
    }
}

fn env_id(name: &str) -> Result<u32, Error> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::permanent(format!("-U needs ${name} set to a number")))
}

/// The options that take a value: in a group (`-c40`, `-vc 40`) the rest is the value.
const WITH_VALUE: &str = "cCxBmgublt";

/// Which of `flags` comes last among the options (before HOST), as getopt reads them one
/// character at a time: getopts gives every flag of a group such as `-hH` the same position,
/// so the order within a group must be read here.
fn last_flag(args: &[String], flags: &str) -> Option<char> {
    let mut last = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let Some(group) = arg.strip_prefix('-').filter(|g| !g.is_empty() && *g != "-") else { break };
        for (at, c) in group.char_indices() {
            if WITH_VALUE.contains(c) {
                if at + c.len_utf8() == group.len() {
                    args.next();
                }
                break;
            }
            if flags.contains(c) {
                last = Some(c);
            }
        }
    }
    last
}

/// Read the command line (without the program's name); an error is a usage error.
pub fn parse_options(args: &[String]) -> Result<Config, Error> {
    let mut opts = getopts::Options::new();
    opts.parsing_style(getopts::ParsingStyle::StopAtFirstFree);
    for flag in ["1", "U", "X", "v", "q", "Q", "h", "H", "r", "R", "P", "o", "O", "d", "D", "w", "p", "e"] {
        opts.optflagmulti(flag, "", "");
    }
    for option in ["c", "C", "x", "B", "m", "g", "u", "b", "l", "t"] {
        opts.optopt(option, "", "", "");
    }
    let m = opts.parse(args).map_err(|e| Error::permanent(e.to_string()))?;
    if m.free.len() < 3 {
        return Err(Error::permanent("need HOST, PORT and PROGRAM"));
    }
    if m.opt_present("p") {
        return Err(Error::permanent("-p (paranoid host names) needs DNS, which quill-tcpserver does not use"));
    }
    let host = listener::parse_host(&m.free[0])?;
    let port = listener::parse_port(&m.free[1])?;
    // Flags that turn the same thing on and off count in the order given, as with tcpserver.
    let verbosity = match last_flag(args, "vqQ") {
        Some('q') => Verbosity::Quiet,
        Some('v') => Verbosity::Verbose,
        _ => Verbosity::Normal,
    };
    let (mut uid, mut gid) = (None, None);
    if m.opt_present("U") {
        uid = Some(env_id("UID")?);
        gid = Some(env_id("GID")?);
    }
    if m.opt_present("u") {
        uid = Some(number(&m, "u", 0)?);
    }
    if m.opt_present("g") {
        gid = Some(number(&m, "g", 0)?);
    }
    let limit: usize = number(&m, "c", 40)?;
    let per_client: u32 = number(&m, "C", 20)?;
    if limit == 0 || per_client == 0 {
        return Err(Error::permanent("-c and -C need at least 1"));
    }
    let lookup_timeout: u32 = number(&m, "t", 26)?;
    Ok(Config {
        address: SocketAddr::new(host, port),
        any: m.free[0] == listener::ANY,
        program: m.free[2..].iter().map(OsString::from).collect(),
        limit,
        per_client,
        backlog: number(&m, "b", 1024)?,
        rules: m.opt_str("x").map(PathBuf::from),
        rules_optional: m.opt_present("X"),
        banner: m.opt_str("B").unwrap_or_default().into_bytes(),
        refusal: match m.opt_str("m") {
            Some(text) if text.is_empty() => Vec::new(),
            Some(text) => format!("{text}\r\n").into_bytes(),
            None => b"421 too many connections, try again later\r\n".to_vec(),
        },
        wait: m.opt_present("w"),
        uid,
        gid,
        print_port: m.opt_present("1"),
        local_name: m.opt_str("l"),
        lookup: last_flag(args, "hH") == Some('h'),
        nodelay: last_flag(args, "dD") == Some('D'),
        lookup_timeout,
        verbosity,
        always_exec: m.opt_present("e"),
    })
}

/// Read the rules named by `-x`; with `-X` a missing file means no rules.
pub fn load_rules(config: &Config) -> Result<Rules, Error> {
    let Some(path) = &config.rules else { return Ok(Rules::empty()) };
    if config.rules_optional && !path.exists() {
        return Ok(Rules::empty());
    }
    let rules = Rules::load(path)?;
    for warning in &rules.warnings {
        log::warning(&format!("{}: {warning}", path.display()));
    }
    Ok(rules)
}

/// The running server: its settings, rules, connections and the program to run.
pub struct Server {
    config: Config,
    rules: Rules,
    table: Table,
    self_exe: Option<PathBuf>,
    /// PROGRAM's code, when it is linked in: each connection's child is then a fork that runs
    /// it, with no exec ([`linked`]).
    linked: Option<Linked>,
    /// This server is confined for its linked sessions (`confine::serve`): its filter has no
    /// exec, so rules that set QMAILQUEUE cannot work until it is restarted.
    pub confined: bool,
}

impl Server {
    /// A server with an empty table; `self_exe` (this program) runs the `-h` lookups of
    /// exec'd programs; `linked`, when given, runs PROGRAM's code in a forked child instead of
    /// exec'ing PROGRAM.
    pub fn new(config: Config, rules: Rules, self_exe: Option<PathBuf>, linked: Option<Linked>) -> Server {
        let table = Table::new(config.limit, config.per_client);
        Server { config, rules, table, self_exe, linked, confined: false }
    }

    fn log(&self, level: Verbosity, text: &str) {
        if self.config.verbosity >= level {
            log::line(text);
        }
    }

    /// The `status: N/LIMIT` line (with `-v`).
    pub fn status(&self) {
        self.log(Verbosity::Verbose, &format!("status: {}/{}", self.table.len(), self.config.limit));
    }

    /// Decide about one accepted connection: deny, refuse, or run the program.
    /// `remote` is the peer as accept(2) gave it, and `bound` the listener's own address when
    /// it names one host address (then every connection's local address is it): no
    /// getpeername or getsockname per connection.
    fn serve(&mut self, stream: TcpStream, remote: SocketAddr, bound: Option<SocketAddr>) {
        let Some(local) = bound.or_else(|| stream.local_addr().ok()) else { return };
        let (remote, local) = (listener::canonical(remote), listener::canonical(local));
        let rule = self.rules.lookup(remote.ip()).cloned();
        if rule.as_ref().is_some_and(|r| r.verdict == Verdict::Deny) {
            let line = rule.as_ref().map_or(0, |r| r.line);
            self.log(Verbosity::Normal, &format!("deny {remote} by the rule on line {line}"));
            return;
        }
        let client = ClientKey::of(remote.ip());
        // Children that ended since the last SIGCHLD was handled (a batch of accepts runs
        // without reaping) still count: collect them before refusing anyone.
        if self.table.check(client).is_err() {
            reap(self);
        }
        if self.table.check(client) == Err(Over::Total) {
            self.make_room(remote);
        }
        if let Err(over) = self.table.check(client) {
            let why = match over {
                Over::Total => format!("too many connections ({}/{})", self.table.len(), self.config.limit),
                Over::PerClient => format!("too many connections from {client} ({})", self.config.per_client),
            };
            self.log(Verbosity::Normal, &format!("refuse {remote}: {why}"));
            listener::refuse(stream, &self.config.refusal);
            return;
        }
        if self.config.nodelay {
            let _ = stream.set_nodelay(true);
        }
        if !self.config.banner.is_empty() {
            // Written without blocking, so a client that never reads cannot stall the loop; a
            // banner fits a new socket's buffer many times over.
            if stream.set_nonblocking(true).is_ok() {
                let _ = (&stream).write(&self.config.banner);
            }
            if stream.set_nonblocking(false).is_err() {
                return;
            }
        }
        let changes = self.environment(local, remote, rule.as_ref().map_or(&[][..], |r| &r.env[..]));
        let socket = OwnedFd::from(stream);
        match self.start(socket, &changes) {
            Ok((pid, watch)) => {
                self.table.add(pid, client, watch);
                self.log(Verbosity::Verbose, &format!("pid {pid} from {remote}"));
                self.log(Verbosity::Verbose, &format!("ok {pid} {local} :{remote}"));
                self.status();
            }
            Err(e) => self.log(
                Verbosity::Normal,
                &format!("warning: unable to run {}: {e}", self.config.program[0].to_string_lossy()),
            ),
        }
    }

    /// Run the program for a connection, with the socket on its fd 0 and 1 and the
    /// environment `changes`: its process id, and our own close-on-exec copy of the socket,
    /// kept to see how long the client has been silent when room must be made (and its FIN
    /// waits for the reap, which follows the child's exit at once).
    fn start(
        &self,
        socket: OwnedFd,
        changes: &[(OsString, Option<OsString>)],
    ) -> std::io::Result<(i32, Option<OwnedFd>)> {
        use std::os::fd::AsRawFd;
        if let Some(linked) = &self.linked {
            // The forked child takes the socket onto its fd 0 and 1; ours stays the copy.
            let plan = linked::Plan {
                args: &self.config.program[1..],
                socket: socket.as_raw_fd(),
                changes,
                lookup: self.config.lookup.then(|| Duration::from_secs(u64::from(self.config.lookup_timeout))),
            };
            let pid = linked::start(linked, &plan)?;
            return Ok((pid, Some(socket)));
        }
        let mut command = self.command();
        listener::apply(&mut command, changes);
        let (input, watch) = (socket.try_clone()?, socket.try_clone().ok());
        command.stdin(Stdio::from(input)).stdout(Stdio::from(socket));
        let child = command.spawn()?;
        Ok((child.id() as i32, watch))
    }

    /// The table is full: end the session whose client has been silent longest (at least
    /// MINIMUM_IDLE), so that `remote` can come in. The child gets SIGTERM (quill-smtpd answers
    /// 421 and closes) and leaves the table at once; it is reaped when it exits.
    fn make_room(&mut self, remote: SocketAddr) {
        use std::os::fd::AsFd;
        let Some(idlest) = self.table.idlest(MINIMUM_IDLE, |socket| crate::base::sys::tcp_silence(socket.as_fd()))
        else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(idlest.pid);
        if nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).is_err() {
            // Already gone: reaping will free its slot.
            return;
        }
        self.table.remove(idlest.pid);
        self.log(
            Verbosity::Normal,
            &format!(
                "drop {} from {}: idle {} s, making room for {remote}",
                idlest.pid,
                idlest.client,
                idlest.silent.as_secs()
            ),
        );
    }

    /// The command that runs PROGRAM with exec: PROGRAM itself, or through the lookup helper
    /// with `-h`.
    fn command(&self) -> Command {
        let program = &self.config.program;
        match (&self.self_exe, self.config.lookup) {
            (Some(exe), true) => {
                let mut c = Command::new(exe);
                c.arg(LOOKUP).arg(self.config.lookup_timeout.to_string()).args(program);
                c
            }
            _ => {
                let mut c = Command::new(&program[0]);
                c.args(&program[1..]);
                c
            }
        }
    }

    /// The changes to our environment for one connection's program, whichever way it runs:
    /// the UCSPI-TCP variables, stale ones removed, then the rule's variables on top.
    /// QUILL_STRESS=1 marks a session started above 80 % of the limit (a rule may override it).
    fn environment(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        rule: &[(String, Vec<u8>)],
    ) -> Vec<(OsString, Option<OsString>)> {
        let stress = self.table.stressed().then(|| OsString::from("1"));
        let local_name = self.config.local_name.clone().unwrap_or_else(|| local.ip().to_string());
        let mut changes = vec![(OsString::from("QUILL_STRESS"), stress)];
        changes.extend(listener::environment(local, remote, &local_name, rule));
        changes
    }
}

/// Collect every child that has ended, without blocking.
fn reap(server: &mut Server) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => {
                if let Some((pid, raw)) = listener::raw_status(status) {
                    if server.table.remove(pid) {
                        server.log(Verbosity::Verbose, &format!("end {pid} status {raw}"));
                        server.status();
                    }
                }
            }
        }
    }
}

/// SIGHUP: read the rules again; a file that does not parse leaves the old rules in force.
fn reload(server: &mut Server) {
    let Some(path) = server.config.rules.clone() else { return };
    match load_rules(&server.config) {
        Ok(rules) => {
            server.log(Verbosity::Verbose, &format!("rules: {} rules from {}", rules.len(), path.display()));
            if server.confined && rules.sets("QMAILQUEUE") {
                server.log(
                    Verbosity::Quiet,
                    "warning: the rules set QMAILQUEUE, which the sessions of this confined server cannot run; restart quill-tcpserver",
                );
            }
            server.rules = rules;
        }
        Err(e) => server.log(Verbosity::Quiet, &format!("warning: {}; keeping the old rules", e.message)),
    }
}

/// The accept loop: signals first (reap, reload, stop), then new connections. Returns on
/// SIGTERM. `signals` is the pipe of [`crate::base::sys::signal_pipe`] for SIGCHLD, SIGHUP
/// and SIGTERM.
pub fn run(server: &mut Server, listener: TcpListener, signals: OwnedFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut pause_until: Option<Instant> = None;
    let bound = listener.local_addr().ok().filter(|address| !address.ip().is_unspecified());
    loop {
        if pause_until.is_some_and(|t| Instant::now() >= t) {
            pause_until = None;
        }
        let accepting = pause_until.is_none() && !(server.config.wait && server.table.full());
        let timeout = match pause_until {
            Some(t) => PollTimeout::try_from(t.saturating_duration_since(Instant::now())).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if accepting {
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        }
        if poll(&mut fds, timeout).is_err() {
            continue;
        }
        let signalled = fds[0].revents().is_some_and(|r| !r.is_empty());
        let connecting = accepting && fds[1].revents().is_some_and(|r| !r.is_empty());
        drop(fds);
        if signalled {
            let caught = children::caught(&signals, Duration::ZERO);
            reap(server);
            if caught.contains(&libc::SIGHUP) {
                reload(server);
            }
            if caught.contains(&libc::SIGTERM) {
                server.log(
                    Verbosity::Verbose,
                    &format!("exit: SIGTERM, {} connections left running", server.table.len()),
                );
                return;
            }
        }
        if !connecting {
            continue;
        }
        // Take what is waiting, a bounded batch at a time so signals are never starved.
        for _ in 0..64 {
            if server.config.wait && server.table.full() {
                break;
            }
            match listener.accept() {
                Ok((stream, remote)) => server.serve(stream, remote, bound),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::Interrupted) => {}
                Err(e) => {
                    // Out of descriptors or memory: the listener stays readable, so pause
                    // instead of spinning.
                    server.log(Verbosity::Quiet, &format!("warning: unable to accept: {e}"));
                    pause_until = Some(Instant::now() + Duration::from_millis(200));
                    break;
                }
            }
        }
    }
}

/// The `-h` helper: look up TCPREMOTEHOST, for at most the `-t` seconds given first, then
/// become PROGRAM.
pub fn lookup_and_exec(args: &[OsString]) -> ExitCode {
    let Some((seconds, program)) = args.split_first() else { return ExitCode::from(exit::USAGE) };
    let seconds: u64 = seconds.to_str().and_then(|s| s.parse().ok()).unwrap_or(26);
    let Some(name) = program.first() else { return ExitCode::from(exit::USAGE) };
    let mut command = Command::new(name);
    command.args(&program[1..]).env_remove("TCPREMOTEHOST");
    let remote: Option<std::net::IpAddr> = std::env::var("TCPREMOTEIP").ok().and_then(|ip| ip.parse().ok());
    if let Some(host) = remote.and_then(|ip| remote_name(ip, Duration::from_secs(seconds))) {
        command.env("TCPREMOTEHOST", host);
    }
    let error = command.exec();
    log::fatal_exit(&format!("unable to run {}: {error}", name.to_string_lossy()))
}

/// The TCPREMOTEHOST for `ip` (`-h`), looked up in the connection's own process (the `-h`
/// helper, or the linked program's child) so that a slow resolver never stalls the accept
/// loop. The lookup runs in a thread, so that a resolver that never answers only costs `wait`
/// (the thread is then left behind, and the name not used); a thread that answers is joined.
/// Whoever controls the address's reverse zone chose the name: only a host name's characters
/// are passed on, lowercase, to a program that may write it into headers and logs.
pub fn remote_name(ip: std::net::IpAddr, wait: Duration) -> Option<String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = sender.send(crate::base::sys::reverse_name(ip));
    });
    let host = receiver.recv_timeout(wait).ok()?;
    let _ = thread.join();
    let host = host?;
    let plain = host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    (plain && !host.is_empty() && host.len() <= 253).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::fail::Outcome;

    fn parse(args: &[&str]) -> Result<Config, Error> {
        parse_options(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_that_turn_the_same_thing_on_and_off_count_in_the_order_given() {
        let config = parse(&["-v", "-q", "-hHh", "-dD", "127.0.0.1", "25", "prog", "-v"]).expect("parses");
        assert_eq!(config.verbosity, Verbosity::Quiet);
        assert!(config.lookup && config.nodelay);
        assert_eq!(config.program, vec![OsString::from("prog"), OsString::from("-v")]);
        assert_eq!((config.limit, config.per_client, config.lookup_timeout), (40, 20, 26));
        assert_eq!(config.refusal, b"421 too many connections, try again later\r\n");
        let config = parse(&["-q", "-v", "-m", "", "-c", "3", "::1", "smtp", "prog"]).expect("parses");
        assert_eq!(config.verbosity, Verbosity::Verbose);
        assert!(config.refusal.is_empty() && config.limit == 3);
        assert_eq!(parse(&["-Q", "0", "1", "prog"]).expect("parses").verbosity, Verbosity::Normal);
        // A value is no flag, in a group or after it: -x's "-h" and -B's "hv" are values.
        let config = parse(&["-Dvc5", "-x", "-h", "-qB", "hv", "0", "1", "prog"]).expect("parses");
        assert!(config.nodelay && !config.lookup && config.verbosity == Verbosity::Quiet);
        assert_eq!((config.rules, config.banner, config.limit), (Some(PathBuf::from("-h")), b"hv".to_vec(), 5));
    }

    #[test]
    fn a_command_line_that_cannot_work_is_a_permanent_error() {
        for args in [
            &["127.0.0.1", "25"][..],
            &["-p", "127.0.0.1", "25", "prog"],
            &["-c", "0", "127.0.0.1", "25", "prog"],
            &["-c", "many", "127.0.0.1", "25", "prog"],
            &["mail.example", "25", "prog"],
            &["127.0.0.1", "70000", "prog"],
        ] {
            let error = parse(args).expect_err("refused");
            assert_eq!(error.outcome, Outcome::Permanent, "{args:?}: {error}");
        }
    }
}
