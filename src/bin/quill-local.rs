//! quill-local: deliver one message to one local address.
//!
//! Job: follow the recipient's delivery instructions (`~/.qmail…`, `~/.forward`, the
//! default delivery, or with `-A` an /etc/aliases right-hand side): Maildir, mbox, program,
//! forward. The logic lives in `quill::local::delivery`.
//! Runs as: the recipient (quill-lspawn sets uid, gid and groups), in the home directory.
//! Arguments: `quill-local [-n] [-A] [-F] [-t seconds] [-i identity] [-r] -- user home local dash
//! ext domain sender defaultdelivery`; `-i` names the message (its Maildir deliveries then happen
//! once), `-r` says an earlier attempt may have delivered it.
//! fd 0: the queue file, positioned at the first byte of the message.
//! fd 1 and 2: the report text for quill-send's log and bounces (one line).
//! Exit: 0 delivered, 100 permanent failure, 111 temporary failure.
//! Manual: doc/quill-local.8.

use quill::base::fail::Outcome;
use quill::local::delivery::Args;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;

const USAGE: &str =
    "usage: quill-local [-n] [-A] [-F] [-t seconds] [-i identity] [-r] -- user home local dash ext domain sender defaultdelivery";

fn parse(mut words: Vec<Vec<u8>>) -> Option<Args> {
    let mut args = Args::default();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        if word == b"--" {
            i += 1;
            break;
        }
        if word.len() < 2 || word[0] != b'-' {
            break;
        }
        let mut j = 1;
        while j < word.len() {
            match word[j] {
                b'n' => args.dry_run = true,
                b'A' => args.aliases = true,
                b'F' => args.forwards_only = true,
                b'r' => args.retry = true,
                b'i' | b't' => {
                    // The value is the rest of the word, or the next word.
                    let value = if j + 1 < word.len() {
                        &word[j + 1..]
                    } else {
                        i += 1;
                        words.get(i)?.as_slice()
                    };
                    if word[j] == b'i' {
                        args.identity = Some(quill::mail::queuefile::Identity::decode(value)?);
                    } else {
                        let seconds: u64 = std::str::from_utf8(value).ok()?.parse().ok()?;
                        args.program_time_limit = Some(std::time::Duration::from_secs(seconds.max(1)));
                    }
                    break;
                }
                _ => return None,
            }
            j += 1;
        }
        i += 1;
    }
    let rest: Vec<Vec<u8>> = words.drain(i..).collect();
    let [user, home, local, dash, ext, domain, sender, default_delivery]: [Vec<u8>; 8] = rest.try_into().ok()?;
    args.user = user;
    args.home = home;
    args.local = local;
    args.dash = dash;
    args.ext = ext;
    args.domain = domain;
    args.sender = sender;
    args.default_delivery = default_delivery;
    Some(args)
}

fn main() -> ExitCode {
    quill::base::log::init("quill-local");
    let words: Vec<Vec<u8>> = std::env::args_os().skip(1).map(|a| a.into_vec()).collect();
    let Some(args) = parse(words) else {
        return quill::base::log::fatal_exit(USAGE);
    };
    // The edge: the report or the status, rendered once, is what quill-lspawn reads.
    let (text, outcome) = match quill::local::delivery::run(&args) {
        Ok(report) => (report, Outcome::Success),
        Err(status) => (status.to_string(), status.outcome),
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    outcome.exit()
}
