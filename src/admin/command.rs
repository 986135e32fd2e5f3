//! The command line of `quill` (doc/quill.8): the usage and help texts, the dispatch to the
//! subcommands, and for each its options and its report; the work is in the subcommand's own
//! module (`setup`, `check`, `status`, `stats`; `queue` is in [`super::queue_command`]).
#![forbid(unsafe_code)]

use crate::admin;
use crate::base::fail::exit;
use crate::base::log;
use std::path::PathBuf;
use std::process::ExitCode;

/// Run `quill` with these arguments (without the program's name).
pub fn run(args: &[String]) -> ExitCode {
    let Some((command, rest)) = args.split_first() else {
        return usage(USAGE);
    };
    match command.as_str() {
        "setup" => setup(rest),
        "check" => check(rest),
        "status" => status(rest),
        "stats" => stats(rest),
        "queue" => admin::queue_command::run(rest),
        "dkim" => dkim(rest),
        "--help" | "-h" | "help" => help(USAGE),
        other => {
            log::fatal(&format!(
                "unknown command {other:?}; the commands are setup, check, status, stats, queue, dkim"
            ));
            usage(USAGE)
        }
    }
}

const USAGE: &str = "\
usage: quill COMMAND [OPTIONS]

commands:
  setup   [--home DIR] [--links]   create users, queue, control files, certificate (root)
  check   [--home DIR]             find problems in the installation, with the fix for each
  status  [--home DIR] [--json]    running stages, queue counts, back-off, last errors
  stats   [LOGFILE...]             deliveries per hour, top domains and failures from the logs
  queue   list|show|why ...        the messages in the queue, and why each one waits
  queue   flush|hold|release|...   act on messages (requests to quill-send)
  dkim    keygen DOMAIN SELECTOR [rsa|ed25519]   make a DKIM key, print its DNS record
  dkim    verify [FILE]            check a message's DKIM signatures and DMARC policy

'quill COMMAND --help' describes one command.";

const HELP_SETUP: &str = "\
usage: quill setup [--home DIR] [--links]

Make this host ready to run Quill. Needs root. Safe to run again: each step does only what
is missing, and no file you edited is rewritten.
  - groups quill and nofiles; users quilld quillq quills quillr quilll alias (system accounts
    without a login shell; alias lives in HOME/alias)
  - the queue tree under HOME (default /var/quill) with its owners and modes, users/, alias/
  - control/me (from the host name), control/locals and control/rcpthosts if missing
  - a self-signed TLS certificate in control/tlscert.pem and control/tlskey.pem if none
  - postmaster, root and MAILER-DAEMON in /etc/aliases if missing (appended)
  - quill-queue owned by quillq, mode 4711 (setuid), in the directory of this program

options:
  --home DIR  the Quill home (default: $QUILL_HOME, else /var/quill)
  --links     also link /usr/sbin/sendmail, /usr/bin/mailq and /usr/sbin/newaliases to
              Quill's sendmail, keeping a file already there as NAME.before-quill";

const HELP_CHECK: &str = "\
usage: quill check [--home DIR]

Check users and groups, the owners and modes of the queue and of quill-queue, the syntax of
the control files, the TLS certificate and key, that every local domain is in rcpthosts,
that users/assign is compiled, the aliases file, and that the stages run under the right
users. Prints one line per problem with the command that fixes it. Exit 0 when all is well,
1 otherwise.

A home owned by a user other than root who also owns its queue is a private instance
(quill-up): one user owns every file and runs every stage, there are no system accounts to
check, and quill-queue must not be setuid. Any other home is judged as a system install
(quill setup). The last line names the kind:
  quill check: /home/me/q (private instance of me): no problems found";

const HELP_STATUS: &str = "\
usage: quill status [--home DIR] [--json]

Show which of quill-start, quill-send, quill-lspawn, quill-rspawn, quill-clean,
quill-tcpserver and quill-smtpd run, under which users; how many files each queue directory
holds; the queued messages by age; the destinations quill-send has backed off or holds at
their concurrency limit; the last deferrals and failures. With --home or QUILL_HOME only the
programs of that home are shown (as root; other users' environments cannot be read).
--json prints the same as one JSON object on one line (fields in quill(8)).";

const HELP_STATS: &str = "\
usage: quill stats [LOGFILE...]

Read quill-send's log (the named files, or standard input) and print deliveries, deferrals,
failures and bounces per hour, the busiest recipient domains and the commonest failure
reasons. Timestamps from multilog, svlogd and s6-log are understood; lines without one are
counted under '(no time)'. Example: quill stats /var/log/quill/current";

pub const HELP_QUEUE: &str = "\
usage: quill queue list [--sender TEXT] [--recipient TEXT] [--domain DOMAIN] [--older-than SECS] [--json]
       quill queue show [--body] [--json] ID
       quill queue why [ID...]
       quill queue shape [--sender] [--hold]

list   one line per message in todo/, mess/ and hold/: id, state (+ = waiting for a retry),
       age, size, sender and recipients; the options select (all must match)
show   the envelope, who queued it and when, every recipient with its state, last attempt
       and error, next attempt and what it waits for, and the message's header (--body: all)
why    one line per waiting recipient (of every message, or of the IDs given): what it waits
       for (hold, pickup, stopped, retry, backoff, concurrency, delivering), the numbers,
       and its last error
shape  as Postfix's qshape: waiting recipients per recipient domain (--sender: per sender
       domain) by the age of their message, in minutes (T: total; buckets double from 5);
       todo/ and mess/, or hold/ with --hold
--json one JSON object per message and line instead (fields in quill(8))

       quill queue flush|requeue [SELECTION] [ID...]
       quill queue hold|release|delete|bounce SELECTION|ID...

flush    try now (as SIGALRM to quill-send): every message, or those selected, forgetting
         the back-off of their destinations
requeue  reread the control files and route the waiting recipients anew (after locals,
         virtualdomains or smtproutes changed), forget their back-off, try them now
hold     stop delivering a message and move it to hold/ (its progress is kept)
release  put a held message back into the queue
delete   remove a message without delivering it further (nobody is told)
bounce   give up on a message's waiting recipients: the sender gets a bounce

SELECTION is list's --sender, --recipient, --domain and --older-than: the action applies to
every message they select (release: in hold/; hold, bounce, flush, requeue: in todo/ and
mess/; delete: anywhere), as well as to the IDs given. These are requests to quill-send
(through queue/lock/control, which only root can write), so they are safe while mail flows:
a message being delivered is held, deleted, bounced or requeued as soon as its deliveries
in flight end. quill-send logs what it did. 'sendmail -qR DOMAIN' flushes one domain.";

/// The usage (or a help text) on stderr, and the usage exit code.
pub fn usage(text: &str) -> ExitCode {
    eprintln!("{text}");
    ExitCode::from(exit::USAGE)
}

/// A help text on stdout: asked for, so a success.
pub fn help(text: &str) -> ExitCode {
    println!("{text}");
    ExitCode::SUCCESS
}

/// Parse a subcommand's options; Err (the exit code) after printing the usage (or the help).
pub fn parse(args: &[String], opts: &getopts::Options, text: &str) -> Result<getopts::Matches, ExitCode> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Err(help(text));
    }
    opts.parse(args).map_err(|e| {
        log::fatal(&format!("{e}"));
        usage(text)
    })
}

/// `--home`, else QUILL_HOME, else /var/quill; made absolute.
pub fn home_of(m: &getopts::Matches) -> PathBuf {
    let home = m.opt_str("home").map(PathBuf::from).unwrap_or_else(crate::mail::control::home);
    if home.is_absolute() {
        return home;
    }
    std::env::current_dir().map(|d| d.join(&home)).unwrap_or(home)
}

/// The options every subcommand has: `--home`.
pub fn home_options() -> getopts::Options {
    let mut opts = getopts::Options::new();
    opts.optopt("", "home", "the Quill home", "DIR");
    opts
}

fn setup(args: &[String]) -> ExitCode {
    let mut opts = home_options();
    opts.optflag("", "links", "link sendmail, mailq, newaliases");
    let m = match parse(args, &opts, HELP_SETUP) {
        Ok(m) => m,
        Err(code) => return code,
    };
    if !m.free.is_empty() {
        return usage(HELP_SETUP);
    }
    let options = admin::setup::Options {
        home: home_of(&m),
        links: m.opt_present("links"),
        link_root: std::env::var_os("QUILL_LINK_ROOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/")),
    };
    let report = admin::setup::setup(&options, &crate::mail::control::bindir());
    for line in &report.done {
        println!("quill setup: {line}");
    }
    for error in &report.failed {
        log::warning(&error.message);
    }
    if report.failed.is_empty() {
        println!("quill setup: {} is ready; run 'quill check' to confirm", options.home.display());
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::PROBLEMS)
    }
}

fn check(args: &[String]) -> ExitCode {
    let m = match parse(args, &home_options(), HELP_CHECK) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let home = home_of(&m);
    let kind = admin::check::Kind::of(&home);
    let problems = admin::check::check(&home, &crate::mail::control::bindir(), kind);
    for p in &problems {
        println!("{p}");
    }
    if admin::check::queue_system_stopped(&home) {
        println!(
            "note: the queue system (quill-start) is not running for {}; start its service \
             (conf-examples/ has daemontools, runit and s6 service directories)",
            home.display()
        );
    }
    if let Some(note) = admin::check::confinement_note(&home) {
        println!("{note}");
    }
    if problems.is_empty() {
        println!("quill check: {} ({}): no problems found", home.display(), kind.describe());
        ExitCode::SUCCESS
    } else {
        println!(
            "quill check: {} ({}): {} problem{}",
            home.display(),
            kind.describe(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        ExitCode::from(exit::PROBLEMS)
    }
}

const HELP_DKIM: &str = "\
usage: quill dkim keygen [--home DIR] DOMAIN SELECTOR [rsa|ed25519]
       quill dkim verify [--home DIR] [FILE]

Make a DKIM signing key in HOME/control/dkim/DOMAIN.SELECTOR (PKCS#8 DER, mode 0400, owned by
quillq when run as root) and print the TXT record to publish at SELECTOR._domainkey.DOMAIN.
rsa (the default, 2048 bits) runs openssl genpkey; ed25519 needs nothing else. An existing
key is never overwritten.

verify checks the DKIM signatures of the message in FILE (standard input without one) and its
DMARC policy (without SPF), asking the DNS servers of control/dnsservers (else
/etc/resolv.conf), and prints one Authentication-Results result per line:
  dkim=pass header.d=example.com header.s=s1 header.i=@example.com header.b=\"AbCd1234\"
  dmarc=pass (p=reject dis=none) header.from=example.com
Exit 0 when a signature passed, 1 when none did (or there was none), 111 on trouble.";

fn dkim(args: &[String]) -> ExitCode {
    let m = match parse(args, &home_options(), HELP_DKIM) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let (domain, selector, kind) = match m.free.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["keygen", domain, selector] => (domain, selector, "rsa"),
        ["keygen", domain, selector, kind] => (domain, selector, kind),
        ["verify"] => return dkim_verify(&home_of(&m), None),
        ["verify", file] => return dkim_verify(&home_of(&m), Some(file)),
        _ => return usage(HELP_DKIM),
    };
    match admin::dkim::keygen(&home_of(&m), domain, selector, kind) {
        Ok((name, record)) => {
            // A zone file's strings hold at most 255 bytes each; the record is their concatenation.
            let strings: Vec<String> =
                record.as_bytes().chunks(250).map(|c| format!("\"{}\"", String::from_utf8_lossy(c))).collect();
            println!("{name}. IN TXT {}", strings.join(" "));
            ExitCode::SUCCESS
        }
        Err(e) => log::fatal_exit(&format!("unable to make the key: {e}")),
    }
}

fn dkim_verify(home: &std::path::Path, file: Option<&str>) -> ExitCode {
    use std::io::Read;
    let mut message = Vec::new();
    let read = match file {
        Some(name) => std::fs::File::open(name).and_then(|mut f| f.read_to_end(&mut message)),
        None => std::io::stdin().lock().read_to_end(&mut message),
    };
    if let Err(e) = read {
        log::fatal(&format!("unable to read {}: {e}", file.unwrap_or("standard input")));
        return ExitCode::from(exit::TEMPORARY);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match admin::dkim::verify(home, &message, now) {
        Ok((lines, passed)) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::from(if passed { exit::SUCCESS } else { exit::PROBLEMS })
        }
        Err(e) => {
            log::fatal(&e);
            ExitCode::from(exit::TEMPORARY)
        }
    }
}

fn status(args: &[String]) -> ExitCode {
    let mut opts = home_options();
    opts.optflag("", "json", "one JSON object");
    let m = match parse(args, &opts, HELP_STATUS) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let filter = m.opt_present("home") || std::env::var_os("QUILL_HOME").is_some();
    if m.opt_present("json") {
        println!("{}", admin::status::report_json(&home_of(&m), filter));
        return ExitCode::SUCCESS;
    }
    print!("{}", admin::status::report(&home_of(&m), filter));
    ExitCode::SUCCESS
}

fn stats(args: &[String]) -> ExitCode {
    let m = match parse(args, &getopts::Options::new(), HELP_STATS) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let mut stats = admin::stats::Stats::default();
    if m.free.is_empty() {
        if let Err(e) = stats.read(std::io::stdin().lock()) {
            return log::fatal_exit(&format!("unable to read standard input: {e}"));
        }
    }
    for name in &m.free {
        let result = std::fs::File::open(name).and_then(|f| stats.read(std::io::BufReader::new(f)));
        if let Err(e) = result {
            return log::fatal_exit(&format!("unable to read {name}: {e}"));
        }
    }
    print!("{}", admin::stats::render(&stats));
    ExitCode::SUCCESS
}
