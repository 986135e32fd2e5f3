//! `quill queue` (doc/quill.8): its options, the selection of messages, and the listings
//! (`list`, `show`, `shape`, `why`) and actions (requests to quill-send) built on
//! [`super::queue`], [`super::why`] and [`super::shape`].
#![forbid(unsafe_code)]

use crate::admin;
use crate::admin::command::{help, home_of, home_options, parse, usage, HELP_QUEUE};
use crate::base::fail::{exit, Outcome};
use crate::base::log;
use std::process::ExitCode;

/// The options that select messages (list, and the actions).
fn selection_options(opts: &mut getopts::Options) {
    opts.optopt("", "sender", "part of the sender", "TEXT");
    opts.optopt("", "recipient", "part of a recipient", "TEXT");
    opts.optopt("", "domain", "a recipient domain", "DOMAIN");
    opts.optopt("", "older-than", "queued at least this long ago", "SECS");
}

/// The selection given, None when no selecting option is.
fn selection(m: &getopts::Matches) -> Result<Option<admin::queue::Filter>, ExitCode> {
    let older_than = match m.opt_str("older-than").map(|s| s.parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            log::fatal("unable to parse --older-than: give a number of seconds");
            return Err(ExitCode::from(exit::USAGE));
        }
    };
    let filter = admin::queue::Filter {
        sender: m.opt_str("sender"),
        recipient: m.opt_str("recipient"),
        domain: m.opt_str("domain"),
        older_than,
    };
    let any = filter.sender.is_some() || filter.recipient.is_some() || filter.domain.is_some() || older_than.is_some();
    Ok(if any { Some(filter) } else { None })
}

/// Run `quill queue` with these arguments (after `queue`).
pub fn run(args: &[String]) -> ExitCode {
    let Some((action, rest)) = args.split_first() else {
        return usage(HELP_QUEUE);
    };
    let mut opts = home_options();
    let now = crate::base::date::now();
    match action.as_str() {
        "--help" | "-h" | "help" => help(HELP_QUEUE),
        "list" => {
            selection_options(&mut opts);
            opts.optflag("", "json", "one JSON object per message");
            let m = match parse(rest, &opts, HELP_QUEUE) {
                Ok(m) => m,
                Err(code) => return code,
            };
            let filter = match selection(&m) {
                Ok(f) => f.unwrap_or_default(),
                Err(code) => return code,
            };
            let home = home_of(&m);
            let (entries, errors) = admin::queue::entries(&home);
            let selected: Vec<_> = entries.iter().filter(|e| filter.matches(e, now)).collect();
            if m.opt_present("json") {
                let view = admin::why::View::read(&home);
                for e in &selected {
                    println!("{}", admin::why::json(e, &admin::why::explain(e, &view, now)));
                }
            } else {
                println!("{}", admin::queue::LIST_TITLE);
                for e in &selected {
                    println!("{}", admin::queue::list_line(e, now));
                }
                println!("{} of {} messages", selected.len(), entries.len());
            }
            warn_and_exit(&errors)
        }
        "show" => {
            opts.optflag("", "body", "show the whole message");
            opts.optflag("", "json", "one JSON object");
            let m = match parse(rest, &opts, HELP_QUEUE) {
                Ok(m) => m,
                Err(code) => return code,
            };
            let [id] = m.free.as_slice() else {
                return usage(HELP_QUEUE);
            };
            let home = home_of(&m);
            match admin::queue::find(&home, id) {
                Ok(entry) => {
                    let recipients = admin::why::explain(&entry, &admin::why::View::read(&home), now);
                    if m.opt_present("json") {
                        println!("{}", admin::why::json(&entry, &recipients));
                    } else {
                        print!("{}", admin::queue::show(&entry, &recipients, now, m.opt_present("body")));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => log::fatal_exit(&e.message),
            }
        }
        "shape" => {
            opts.optflag("", "sender", "by sender domain");
            opts.optflag("", "hold", "the held messages instead");
            let m = match parse(rest, &opts, HELP_QUEUE) {
                Ok(m) => m,
                Err(code) => return code,
            };
            if !m.free.is_empty() {
                return usage(HELP_QUEUE);
            }
            let (entries, errors) = admin::queue::entries(&home_of(&m));
            let hold = m.opt_present("hold");
            let chosen: Vec<_> = entries.into_iter().filter(|e| (e.state == "hold") == hold).collect();
            print!("{}", admin::shape::shape(&chosen, now, m.opt_present("sender")));
            warn_and_exit(&errors)
        }
        "why" => {
            let m = match parse(rest, &opts, HELP_QUEUE) {
                Ok(m) => m,
                Err(code) => return code,
            };
            let home = home_of(&m);
            let (entries, errors) = if m.free.is_empty() {
                admin::queue::entries(&home)
            } else {
                let mut found = (Vec::new(), Vec::new());
                for id in &m.free {
                    match admin::queue::find(&home, id) {
                        Ok(e) => found.0.push(e),
                        Err(e) => found.1.push(e.message),
                    }
                }
                found
            };
            let view = admin::why::View::read(&home);
            let mut waiting = 0;
            for entry in &entries {
                for r in admin::why::explain(entry, &view, now).iter().filter(|r| r.state == "waiting") {
                    println!("{}", admin::why::why_line(entry, r, now));
                    waiting += 1;
                }
            }
            println!("{waiting} recipients waiting in {} messages", entries.len());
            warn_and_exit(&errors)
        }
        "flush" | "hold" | "release" | "delete" | "bounce" | "requeue" => {
            selection_options(&mut opts);
            let m = match parse(rest, &opts, HELP_QUEUE) {
                Ok(m) => m,
                Err(code) => return code,
            };
            let filter = match selection(&m) {
                Ok(f) => f,
                Err(code) => return code,
            };
            let home = home_of(&m);
            let mut ids: Vec<String> = m.free.clone();
            if let Some(filter) = &filter {
                let (entries, errors) = admin::queue::entries(&home);
                if let Some(e) = errors.first() {
                    return log::fatal_exit(e);
                }
                // Each action applies to the messages it can act on.
                let states: &[&str] = match action.as_str() {
                    "release" => &["hold"],
                    "delete" => &["todo", "mess", "hold"],
                    _ => &["todo", "mess"],
                };
                ids.extend(
                    entries
                        .iter()
                        .filter(|e| states.contains(&e.state) && filter.matches(e, now))
                        .map(|e| e.id.clone()),
                );
                if ids.is_empty() {
                    println!("no message matches: nothing sent to quill-send");
                    return ExitCode::SUCCESS;
                }
            }
            let everything = ids.is_empty();
            if everything && !matches!(action.as_str(), "flush" | "requeue") {
                return usage(HELP_QUEUE);
            }
            match admin::queue::request(&home, action, &ids) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => log::fatal_exit(&e.message),
            }
        }
        _ => usage(HELP_QUEUE),
    }
}

/// The end of a listing: a warning for each queue file that could not be read, and exit 111
/// when there was one (the listing is incomplete), 0 otherwise.
fn warn_and_exit(errors: &[String]) -> ExitCode {
    for e in errors {
        log::warning(e);
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        Outcome::Temporary.exit()
    }
}
