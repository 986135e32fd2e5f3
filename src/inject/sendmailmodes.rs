//! The sendmail modes that are not submission: `-bs` (SMTP on stdin/stdout), `-bp`/`mailq`
//! (list the queue), `-bi`/`newaliases` (check the aliases file), `-bv` (verify addresses),
//! `-q` (flush the queue).
#![forbid(unsafe_code)]

use crate::mail::aliases::{aliases_path, Aliases};
use crate::mail::control::Control;
use crate::mail::queuefile::Layout;
use crate::mail::recipient::{Checker, Verdict, MAX_LOCAL_PART};
use crate::mail::rewrite::{Channel, Rewriting};
use crate::mail::users::Resolution;

/// sysexits: EX_OK, EX_NOUSER, EX_SOFTWARE, EX_OSERR, EX_NOPERM, EX_CONFIG, EX_TEMPFAIL.
const EX_USAGE: u8 = 64;
const EX_NOUSER: u8 = 67;
const EX_SOFTWARE: u8 = 70;
const EX_OSERR: u8 = 71;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;
const EX_TEMPFAIL: u8 = 75;

/// `-bs`: become quill-smtpd on standard input and output, for a local user, who may send
/// anywhere (RELAYCLIENT) as with any local submission. Returns only if the exec failed.
pub fn smtp() -> u8 {
    use std::os::unix::process::CommandExt;
    let program = crate::mail::control::program("quill-smtpd");
    let error = std::process::Command::new(&program)
        .env("RELAYCLIENT", "")
        .env("PROTO", "PIPE")
        .env("TCPREMOTEIP", "127.0.0.1")
        .env("TCPREMOTEHOST", "localhost")
        .env_remove("AUTH_REQUIRED")
        .exec();
    crate::base::log::fatal(&format!("unable to run {}: {error}", program.display()));
    EX_OSERR
}

/// `-bp` / `mailq`: one line per queued message, oldest first.
pub fn list(control: &Control) -> u8 {
    let (mut entries, problems) = crate::mail::queuelist::entries(&control.home);
    if entries.is_empty() && !problems.is_empty() {
        for p in &problems {
            crate::base::log::fatal(p);
        }
        crate::base::log::raw("mailq: the queue is readable by root and group quill only");
        return EX_NOPERM;
    }
    entries.sort_by_key(|e| e.header.time);
    let now = crate::base::date::now();
    if entries.is_empty() {
        println!("Mail queue is empty");
    }
    for e in &entries {
        println!("{}", crate::mail::queuelist::list_line(e, now));
    }
    if !entries.is_empty() {
        println!("-- {} message{} in the queue", entries.len(), if entries.len() == 1 { "" } else { "s" });
    }
    for p in &problems {
        crate::base::log::warning(p);
    }
    0
}

/// `-bi` / `newaliases`: quill-lspawn rereads the aliases file by itself when it changes, so
/// there is nothing to compile; this checks the file and says how many aliases it holds.
pub fn aliases(control: &Control) -> u8 {
    let path = aliases_path(control);
    match Aliases::load(&path) {
        Ok(a) => {
            for w in a.warnings() {
                crate::base::log::warning(w);
            }
            println!("{}: {} aliases", path.display(), a.len());
            0
        }
        Err(e) => {
            crate::base::log::fatal(&format!("{}: {e}", path.display()));
            if e.outcome == crate::base::fail::Outcome::Permanent {
                EX_CONFIG
            } else {
                EX_TEMPFAIL
            }
        }
    }
}

/// `-q`: ask quill-send to try every queued message now, by writing `F` into its trigger;
/// `-qR TEXT`: only the messages with a recipient containing TEXT, by writing `R TEXT` and a
/// newline (quill-send(8)).
pub fn flush(control: &Control, matching: Option<&[u8]>) -> u8 {
    use crate::mail::proto::control::Trigger;
    use std::io::Write;
    let trigger = match matching {
        None => Trigger::FlushAll,
        Some(text) => Trigger::FlushMatching(text.to_vec()),
    };
    let Some(request) = trigger.encode() else {
        crate::base::log::fatal(&format!(
            "unable to flush {}: give a domain or part of an address, without spaces",
            crate::base::log::safe(matching.unwrap_or_default())
        ));
        return EX_USAGE;
    };
    let trigger = Layout::new(&control.home).trigger();
    match crate::mail::queuefile::open_fifo(&trigger, false) {
        Ok(mut fifo) => match fifo.write(&request) {
            Ok(_) => 0,
            Err(e) => {
                crate::base::log::fatal(&format!("unable to write to {}: {e}", trigger.display()));
                EX_SOFTWARE
            }
        },
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            crate::base::log::fatal("unable to flush the queue: quill-send is not running");
            EX_TEMPFAIL
        }
        Err(e) => {
            crate::base::log::fatal(&format!("unable to open {}: {e}", trigger.display()));
            EX_SOFTWARE
        }
    }
}

/// `-bv`: for each address (qualified with `defaulthost` as a submission would be), one line
/// saying how it would be delivered, as quill-send and quill-lspawn would decide, and whether
/// somebody receives it (quill-smtpd's RCPT check). Nothing is queued or sent. Exit 0 when
/// every address is deliverable, 67 (EX_NOUSER) when one is not, 75 when one cannot be told
/// now (a lookup failed, or a home this user may not look into decides).
pub fn verify(control: &Control, qualify: impl Fn(&[u8]) -> Vec<u8>, recipients: &[Vec<u8>]) -> u8 {
    use crate::base::log::safe;
    if recipients.is_empty() {
        crate::base::log::fatal("-bv needs an address to verify");
        return EX_USAGE;
    }
    let tables = Rewriting::load(control).and_then(|r| Ok((r, Checker::load(control)?)));
    let (rewriting, checker) = match tables {
        Ok(pair) => pair,
        Err(e) => {
            crate::base::log::fatal(&format!("unable to verify addresses: {e}"));
            return if e.outcome == crate::base::fail::Outcome::Permanent { EX_CONFIG } else { EX_TEMPFAIL };
        }
    };
    let mut exit = 0;
    for given in recipients {
        let address = qualify(given);
        let (verdict, how) = judge(&rewriting, &checker, &address);
        let line = match verdict.reply() {
            None => format!("deliverable: {how}"),
            Some((code, text)) if code >= 500 => {
                exit = EX_NOUSER;
                format!("undeliverable: {text}")
            }
            Some((_, _)) => {
                if exit == 0 {
                    exit = EX_TEMPFAIL;
                }
                match &verdict {
                    Verdict::Unsure(why) | Verdict::Unseen(why) => format!("cannot tell now: {why}"),
                    _ => "cannot tell now".to_string(),
                }
            }
        };
        println!("{}... {line}", safe(&address));
    }
    exit
}

/// The verdict for one qualified address, and how it would be delivered.
fn judge(rewriting: &Rewriting, checker: &Checker, address: &[u8]) -> (Verdict, String) {
    use crate::base::log::safe;
    if !crate::mail::address::is_clean(address) || address.len() > crate::mail::address::MAX_ADDRESS {
        return (Verdict::Unknown, String::new());
    }
    let (channel, rewritten) = rewriting.rewrite(address);
    let (local, domain) = crate::mail::address::split(&rewritten);
    if channel == Channel::Remote {
        return (Verdict::Known, format!("remote, to {}", safe(domain)));
    }
    if local.len() > MAX_LOCAL_PART {
        return (Verdict::TooLong, String::new());
    }
    let via =
        if rewritten.eq_ignore_ascii_case(address) { String::new() } else { format!(" (as {})", safe(&rewritten)) };
    let who = match checker.resolution(local) {
        Resolution::Alias { target } => format!("alias to {}", safe(&target)),
        Resolution::User(a) if a.dash.is_empty() => format!("user {}", safe(&a.user)),
        Resolution::User(a) => format!("user {}, extension {}", safe(&a.user), safe(&a.ext)),
        Resolution::AliasUser(a) => {
            format!("alias user {}, {}/.qmail-{}", safe(&a.user), a.home.display(), safe(&a.ext))
        }
        Resolution::Temporary(_) => String::new(),
    };
    (checker.check(local), format!("local{via}, {who}"))
}
