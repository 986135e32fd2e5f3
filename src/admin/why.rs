//! "Why is this message still here?": for every recipient of a queued message, where it
//! stands, its last attempt and error, its next attempt, and what it waits for. Read from
//! the message's header, quill-send's state (`info/ID`) and its views (`info/destinations`,
//! `info/channels`); nothing here asks quill-send anything, so it also works when it is
//! stopped (and says so).
#![forbid(unsafe_code)]

use super::json::Object;
use super::queue::Entry;
use crate::mail::proto::info::Progress;
use crate::mail::proto::views::{self, ChannelLoad, Destination, InFlight};
use std::collections::HashMap;
use std::path::Path;

/// What quill-send last wrote about its destinations and channels, and whether it runs.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// By domain (lower case).
    pub destinations: HashMap<String, Destination>,
    /// By channel name (`local`, `remote`).
    pub channels: HashMap<String, ChannelLoad>,
    /// Deliveries in flight: message id → the places of its recipients in flight.
    pub flight: HashMap<String, Vec<usize>>,
    /// True when a quill-send runs for this home.
    pub running: bool,
}

/// `info/destinations` by domain (lower case).
pub fn destinations_by_domain(lines: Vec<Destination>) -> HashMap<String, Destination> {
    lines.into_iter().map(|d| (String::from_utf8_lossy(&d.domain).to_ascii_lowercase(), d)).collect()
}

/// `info/flight` by message id: the places of its recipients in flight.
fn flight_by_id(lines: Vec<InFlight>) -> HashMap<String, Vec<usize>> {
    let mut map: HashMap<String, Vec<usize>> = HashMap::new();
    for line in lines {
        map.entry(line.id.to_string()).or_default().extend(line.places);
    }
    map
}

fn channels_by_name(lines: Vec<ChannelLoad>) -> HashMap<String, ChannelLoad> {
    lines.into_iter().map(|c| (c.name.clone(), c)).collect()
}

impl View {
    /// Read the views of the quill-send of `home`.
    pub fn read(home: &Path) -> View {
        let info = crate::mail::queuefile::Layout::new(home).info();
        View {
            destinations: destinations_by_domain(views::read(&info)),
            channels: channels_by_name(views::read(&info)),
            flight: flight_by_id(views::read(&info)),
            running: super::status::processes(Some(home)).iter().any(|p| p.name == "quill-send"),
        }
    }
}

/// What a waiting recipient waits for. The names are the `wait` field of the JSON output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Delivered or failed: waits for nothing.
    None,
    /// The message is in `hold/`.
    Hold,
    /// The message is in `todo/`: quill-send has not picked it up yet.
    Pickup,
    /// quill-send does not run.
    Stopped,
    /// The next attempt on the retry schedule.
    Retry,
    /// Its destination is backed off after failed attempts.
    Backoff,
    /// A free delivery slot (the channel's or the destination's concurrency limit).
    Concurrency,
    /// Nothing: it is being delivered (or about to be).
    Delivering,
}

impl Wait {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Wait::None => "none",
            Wait::Hold => "hold",
            Wait::Pickup => "pickup",
            Wait::Stopped => "stopped",
            Wait::Retry => "retry",
            Wait::Backoff => "backoff",
            Wait::Concurrency => "concurrency",
            Wait::Delivering => "delivering",
        }
    }
}

/// One recipient, explained.
#[derive(Clone, Debug)]
pub struct Recipient {
    /// As the sender gave it.
    pub address: Vec<u8>,
    /// After rewriting (locals, virtualdomains), once quill-send has recorded it.
    pub delivered_to: Option<Vec<u8>>,
    /// `local` or `remote`, once known.
    pub channel: Option<&'static str>,
    /// `waiting`, `delivered` or `failed`.
    pub state: &'static str,
    /// The last deferral's time.
    pub last_attempt: Option<u64>,
    /// The last deferral's (or the failure's) text.
    pub last_error: Option<Vec<u8>>,
    /// The next attempt on the retry schedule, when one is planned.
    pub next_attempt: Option<u64>,
    /// What it waits for.
    pub wait: Wait,
    /// The same in words, with the numbers.
    pub reason: String,
}

fn domain_of(address: &[u8]) -> String {
    String::from_utf8_lossy(&crate::mail::address::normal_domain(crate::mail::address::split(address).1)).into_owned()
}

fn at(time: u64, now: u64) -> String {
    if time > now {
        format!("{} (in {})", crate::base::date::rfc5322(time), super::age(time - now))
    } else {
        format!("{} ({} ago)", crate::base::date::rfc5322(time), super::age(now - time))
    }
}

/// Why a recipient that is not in flight and not due later waits: its destination's
/// back-off, a concurrency limit, or nothing (it is being delivered).
fn waiting_now(view: &View, channel: &str, domain: &str, now: u64) -> (Wait, String) {
    if channel != "local" {
        if let Some(d) = view.destinations.get(domain) {
            if d.failures > 0 && d.until > now {
                return (
                    Wait::Backoff,
                    format!(
                        "destination {} backed off after {} failed attempts; next probe {}: {}",
                        crate::base::log::safe(domain.as_bytes()),
                        d.failures,
                        at(d.until, now),
                        crate::base::log::safe(d.error.as_bytes())
                    ),
                );
            }
            if d.failures > 0 {
                return (
                    Wait::Backoff,
                    format!(
                        "destination {} is being probed after {} failed attempts; {} deliveries wait for the probe",
                        crate::base::log::safe(domain.as_bytes()),
                        d.failures,
                        d.parked
                    ),
                );
            }
            if d.parked > 0 {
                return (
                    Wait::Concurrency,
                    format!(
                        "destination {} is at its concurrency limit (concurrencydestination): {} running, {} parked",
                        crate::base::log::safe(domain.as_bytes()),
                        d.running,
                        d.parked
                    ),
                );
            }
        }
    }
    if let Some(c) = view.channels.get(channel) {
        if c.queued > 0 && c.running >= c.limit {
            return (
                Wait::Concurrency,
                format!(
                    "the {channel} channel is full (concurrency{channel} {}): {} running, {} queued",
                    c.limit, c.running, c.queued
                ),
            );
        }
    }
    (Wait::Delivering, "about to be delivered (queued for a delivery slot)".to_string())
}

/// Every recipient of `entry`, explained at time `now`.
pub fn explain(entry: &Entry, view: &View, now: u64) -> Vec<Recipient> {
    let originals = &entry.header.envelope.recipients;
    let mut out = Vec::with_capacity(originals.len());
    for (n, original) in originals.iter().enumerate() {
        let recorded = entry.info.as_ref().and_then(|i| i.entries.get(n));
        let (state, last_error) = match recorded.map(|r| &r.progress) {
            Some(Progress::Delivered) => ("delivered", None),
            Some(Progress::Failed(text)) => ("failed", Some(text.clone())),
            _ => ("waiting", recorded.and_then(|r| r.last.as_ref()).map(|(_, text)| text.clone())),
        };
        let channel = recorded.filter(|_| state == "waiting").map(|r| r.channel.name());
        let delivered_to = recorded.map(|r| r.address.clone());
        let last_attempt = recorded.and_then(|r| r.last.as_ref()).map(|(time, _)| *time).filter(|_| state == "waiting");
        let due = match (entry.info.as_ref(), recorded) {
            (Some(info), Some(r)) if state == "waiting" => Some(info.due[r.channel as usize]).filter(|&t| t > 0),
            _ => None,
        };
        let domain = domain_of(delivered_to.as_deref().unwrap_or(original));
        let (wait, reason) = if state != "waiting" {
            (Wait::None, String::new())
        } else if entry.state == "hold" {
            (Wait::Hold, format!("held by the administrator (quill queue release {})", entry.id))
        } else if entry.state == "todo" {
            (Wait::Pickup, "queued; quill-send has not picked it up yet".to_string())
        } else if !view.running {
            (Wait::Stopped, "quill-send is not running for this home".to_string())
        } else if let Some(next) = due.filter(|&t| t > now) {
            let mut reason = format!("the retry schedule: next attempt {}", at(next, now));
            if let Some(d) = view.destinations.get(&domain).filter(|d| d.failures > 0 && channel != Some("local")) {
                reason.push_str(&format!(
                    "; destination {} is backed off until {}",
                    crate::base::log::safe(domain.as_bytes()),
                    at(d.until, now)
                ));
            }
            (Wait::Retry, reason)
        } else if view.flight.get(&entry.id).is_some_and(|places| places.contains(&n)) {
            // After the info file (written at once after every result): the views may lag
            // a second behind.
            (Wait::Delivering, "being delivered now".to_string())
        } else {
            // Without an info file quill-send has not recorded the channel yet: a domain in
            // its destination table is remote.
            let channel = channel.unwrap_or(if view.destinations.contains_key(&domain) { "remote" } else { "" });
            waiting_now(view, channel, &domain, now)
        };
        out.push(Recipient {
            address: original.clone(),
            delivered_to: delivered_to.filter(|d| d != original),
            channel,
            state,
            last_attempt,
            last_error,
            next_attempt: due,
            wait,
            reason,
        });
    }
    out
}

/// The message's state in words, from its recipients (for `show`'s `state:` line).
pub fn summary(entry: &Entry, recipients: &[Recipient]) -> String {
    let mut counts: Vec<(Wait, usize)> = Vec::new();
    for r in recipients.iter().filter(|r| r.state == "waiting") {
        match counts.iter_mut().find(|(w, _)| *w == r.wait) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.wait, 1)),
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(wait, n)| {
            let what = match wait {
                Wait::Hold => "held by the administrator",
                Wait::Pickup => "not yet picked up by quill-send",
                Wait::Stopped => "waiting: quill-send is not running",
                Wait::Retry => "waiting for the retry schedule",
                Wait::Backoff => "waiting for a backed-off destination",
                Wait::Concurrency => "waiting for a free delivery slot",
                Wait::Delivering | Wait::None => "being delivered",
            };
            format!("{n} {what}")
        })
        .collect();
    format!("{} ({})", entry.state, if parts.is_empty() { "finishing".to_string() } else { parts.join(", ") })
}

/// `show`'s lines for one recipient.
pub fn recipient_text(r: &Recipient, now: u64) -> String {
    let mut out = format!("  <{}>  {}", crate::base::log::safe(&r.address), r.state);
    if let Some(channel) = r.channel {
        out.push_str(&format!(" ({channel})"));
    }
    out.push('\n');
    if let Some(to) = &r.delivered_to {
        out.push_str(&format!("      delivered to: <{}>\n", crate::base::log::safe(to)));
    }
    if r.state == "failed" {
        if let Some(e) = &r.last_error {
            out.push_str(&format!("      failure:      {}\n", crate::base::log::safe(e)));
        }
        return out;
    }
    if r.state != "waiting" {
        return out;
    }
    match (r.last_attempt, &r.last_error) {
        (Some(t), Some(e)) => {
            out.push_str(&format!("      last attempt: {}: {}\n", at(t, now), crate::base::log::safe(e)));
        }
        _ => out.push_str("      last attempt: none recorded\n"),
    }
    if let Some(next) = r.next_attempt {
        out.push_str(&format!("      next attempt: {}\n", at(next, now)));
    }
    out.push_str(&format!("      waits for:    {} ({})\n", r.reason, r.wait.name()));
    out
}

/// `quill queue why`'s line for one waiting recipient.
pub fn why_line(entry: &Entry, r: &Recipient, now: u64) -> String {
    let mut line = format!("{} <{}>: {}: {}", entry.id, crate::base::log::safe(&r.address), r.wait.name(), r.reason);
    if let (Some(t), Some(e)) = (r.last_attempt, &r.last_error) {
        line.push_str(&format!(
            "; last error {} ago: {}",
            super::age(now.saturating_sub(t)),
            crate::base::log::safe(e)
        ));
    }
    line
}

/// One message as a JSON object (the fields are listed in quill(8)).
pub fn json(entry: &Entry, recipients: &[Recipient]) -> String {
    let h = &entry.header;
    let list = recipients
        .iter()
        .map(|r| {
            Object::new()
                .string("address", &r.address)
                .optional_string("delivered_to", r.delivered_to.as_deref())
                .optional_string("channel", r.channel.map(str::as_bytes))
                .string("state", r.state.as_bytes())
                .optional("last_attempt", r.last_attempt)
                .optional_string("last_error", r.last_error.as_deref())
                .optional("next_attempt", r.next_attempt)
                .string("wait", r.wait.name().as_bytes())
                .string("reason", r.reason.as_bytes())
        })
        .collect();
    Object::new()
        .string("queue_id", entry.id.as_bytes())
        .string("queue_name", entry.state.as_bytes())
        .number("arrival_time", h.time)
        .number("message_size", entry.size)
        .string("sender", &h.envelope.sender)
        .number("uid", u64::from(h.uid))
        .objects("recipients", list)
        .finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flight_table() {
        let map = flight_by_id(views::decode_all("42 0 2\n43 1\n42 5\n"));
        assert_eq!(map["42"], vec![0, 2, 5]);
        assert_eq!(map["43"], vec![1]);
    }

    #[test]
    fn destination_table() {
        let map = destinations_by_domain(views::decode_all(
            "Down.Example 3 1000 4 0 Unreachable: refused\nbusy.example 0 0 2 10 \nbad\n",
        ));
        assert_eq!(map.len(), 2);
        let d = &map["down.example"];
        assert_eq!((d.failures, d.until, d.parked, d.running), (3, 1000, 4, 0));
        assert_eq!(d.error, "Unreachable: refused");
        let view = View { destinations: map, running: true, ..Default::default() };
        assert_eq!(waiting_now(&view, "remote", "down.example", 900).0, Wait::Backoff);
        assert_eq!(waiting_now(&view, "remote", "busy.example", 900).0, Wait::Concurrency);
        assert_eq!(waiting_now(&view, "local", "down.example", 900).0, Wait::Delivering);
        let full = View {
            channels: channels_by_name(views::decode_all("local 10 10 3\nremote 0 20 0\n")),
            ..Default::default()
        };
        assert_eq!(waiting_now(&full, "local", "x", 0).0, Wait::Concurrency);
        assert_eq!(waiting_now(&full, "remote", "x", 0).0, Wait::Delivering);
    }
}
