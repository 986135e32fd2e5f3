//! `quill stats`: read quill-send's log (qmail-send's line formats, doc/INTERNALS.md) and
//! summarize it: deliveries, deferrals, failures and bounces per hour, the busiest recipient
//! domains, the commonest failure reasons.
//!
//! Lines may carry the supervisor logger's timestamp: multilog, s6-log and `svlogd -t` write
//! TAI64N labels (`@4000…`), `svlogd -tt`/`-ttt` and `s6-log T` write human dates. Lines
//! without a timestamp still count, under "no time". Anything else is ignored, so a whole log
//! directory with other programs' lines can be fed in.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::BufRead;

/// A delivery's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Result3 {
    Success,
    Deferral,
    Failure,
}

/// Counts for one hour or one domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Successful deliveries.
    pub delivered: u64,
    /// Temporary failures.
    pub deferred: u64,
    /// Permanent failures.
    pub failed: u64,
    /// Bounce messages made.
    pub bounces: u64,
}

/// Everything read from the logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Per hour (Unix time / 3600), None for lines without a timestamp.
    pub hours: HashMap<Option<u64>, Counts>,
    /// Per recipient domain.
    pub domains: HashMap<String, Counts>,
    /// Failure and deferral reasons (normalized text) and how often each was seen.
    pub reasons: HashMap<String, u64>,
    /// `new msg` lines.
    pub messages: u64,
    /// Sum of `bytes N` in `info msg` lines.
    pub bytes: u64,
    /// Lines read.
    pub lines: u64,
    /// Deliveries in flight: delivery number → recipient domain.
    pending: HashMap<u64, String>,
}

/// The Unix time of a TAI64N label's seconds part (the 16 hex digits after `@`). The label is
/// 2^62 + 10 + Unix time for daemontools; s6 also counts leap seconds, a difference of under a
/// minute that hourly buckets can bear.
fn tai64_seconds(hex: &str) -> Option<u64> {
    let label = u64::from_str_radix(hex, 16).ok()?;
    label.checked_sub((1u64 << 62) + 10)
}

/// Days since 1970-01-01 of a civil date (inverse of `date::civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD?HH:MM:SS[.frac]` at the start of `text` (separator `_`, `T` or a space), as
/// Unix time, and the rest of the line.
fn human_stamp(text: &str) -> Option<(u64, &str)> {
    let b = text.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'_' | b'T' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<u32>().ok();
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut end = 19;
    if b.get(end) == Some(&b'.') {
        end += 1;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
    }
    // A zone suffix (`Z`, `+00:00`) may follow an ISO 8601 stamp.
    if b.get(end) == Some(&b'Z') {
        end += 1;
    }
    let days = days_from_civil(year as i64, month, day);
    let time = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64;
    Some((u64::try_from(time).ok()?, &text[end..]))
}

/// Split a log line into its timestamp (Unix time, if any) and the event text.
pub fn strip_timestamp(line: &str) -> (Option<u64>, &str) {
    if let Some(rest) = line.strip_prefix('@') {
        if rest.len() >= 24 && rest.as_bytes()[..24].iter().all(u8::is_ascii_hexdigit) {
            return (tai64_seconds(&rest[..16]), rest[24..].trim_start());
        }
    }
    if let Some((time, rest)) = human_stamp(line) {
        return (Some(time), rest.trim_start());
    }
    (None, line)
}

/// The words an event line starts with.
const EVENTS: [&str; 5] = ["new msg ", "info msg ", "starting delivery ", "delivery ", "bounce msg "];

/// The event text with any `PROGRAM: ` prefix (quill-send's own, or splogger's) removed.
fn event(text: &str) -> &str {
    if EVENTS.iter().any(|e| text.starts_with(e)) {
        return text;
    }
    if let Some((prefix, rest)) = text.split_once(": ") {
        if !prefix.contains(' ') && EVENTS.iter().any(|e| rest.starts_with(e)) {
            return rest;
        }
    }
    text
}

/// The part of a failure text worth counting: the first line (qmail-send writes a report's
/// line breaks as `/`), without trailing punctuation, at most 72 characters.
pub fn reason(text: &str) -> String {
    let first = text.split('/').find(|s| !s.trim().is_empty()).unwrap_or(text).trim();
    let first = first.trim_end_matches(['.', ' ', '_']);
    let mut out: String = first.chars().take(72).collect();
    if first.chars().count() > 72 {
        out.push('…');
    }
    out
}

impl Stats {
    /// Account one log line.
    pub fn line(&mut self, line: &str) {
        self.lines += 1;
        let (time, text) = strip_timestamp(line.trim_end());
        let hour = time.map(|t| t / 3600);
        let text = event(text);
        if text.starts_with("new msg ") {
            self.messages += 1;
        } else if let Some(rest) = text.strip_prefix("info msg ") {
            if let Some(n) =
                rest.split_once(" bytes ").and_then(|(_, r)| r.split(' ').next()).and_then(|n| n.parse::<u64>().ok())
            {
                self.bytes += n;
            }
        } else if let Some(rest) = text.strip_prefix("starting delivery ") {
            // "D: msg ID to local|remote RCPT"
            let Some((number, rest)) = rest.split_once(": msg ") else {
                return;
            };
            let Ok(number) = number.parse::<u64>() else {
                return;
            };
            let rcpt = rest.split_once(" to ").map(|(_, r)| r).unwrap_or("");
            let rcpt = rcpt.strip_prefix("local ").or_else(|| rcpt.strip_prefix("remote ")).unwrap_or(rcpt);
            let domain = crate::mail::address::normal_domain(crate::mail::address::split(rcpt.as_bytes()).1);
            let domain = if domain.is_empty() { "(no domain)".to_string() } else { crate::base::log::safe(&domain) };
            // A delivery number is reused after it ends; a bounded map guards against logs
            // whose result lines are missing.
            if self.pending.len() < 100_000 {
                self.pending.insert(number, domain);
            }
        } else if let Some(rest) = text.strip_prefix("delivery ") {
            let Some((number, rest)) = rest.split_once(": ") else {
                return;
            };
            let Ok(number) = number.parse::<u64>() else {
                return;
            };
            let (result, detail) = if let Some(d) = rest.strip_prefix("success:") {
                (Result3::Success, d)
            } else if let Some(d) = rest.strip_prefix("deferral:") {
                (Result3::Deferral, d)
            } else if let Some(d) = rest.strip_prefix("failure:") {
                (Result3::Failure, d)
            } else {
                return;
            };
            let domain = self.pending.remove(&number).unwrap_or_else(|| "(unknown)".to_string());
            let bump = |c: &mut Counts| match result {
                Result3::Success => c.delivered += 1,
                Result3::Deferral => c.deferred += 1,
                Result3::Failure => c.failed += 1,
            };
            bump(self.hours.entry(hour).or_default());
            bump(self.domains.entry(domain).or_default());
            if result != Result3::Success {
                let kind = if result == Result3::Failure { "failure" } else { "deferral" };
                *self.reasons.entry(format!("{kind}: {}", reason(detail))).or_default() += 1;
            }
        } else if text.starts_with("bounce msg ") {
            self.hours.entry(hour).or_default().bounces += 1;
        }
    }

    /// Read every line of `input`; lines that are not UTF-8 are read lossily.
    pub fn read(&mut self, input: impl BufRead) -> std::io::Result<()> {
        let mut input = input;
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            if input.read_until(b'\n', &mut buffer)? == 0 {
                return Ok(());
            }
            self.line(&String::from_utf8_lossy(&buffer));
        }
    }

    /// Totals over every hour.
    pub fn totals(&self) -> Counts {
        self.hours.values().fold(Counts::default(), |a, c| Counts {
            delivered: a.delivered + c.delivered,
            deferred: a.deferred + c.deferred,
            failed: a.failed + c.failed,
            bounces: a.bounces + c.bounces,
        })
    }
}

fn hour_label(hour: Option<u64>) -> String {
    match hour {
        None => "(no time)".to_string(),
        Some(h) => {
            let t = h * 3600;
            let (y, m, d) = crate::base::date::civil((t / 86_400) as i64);
            format!("{y:04}-{m:02}-{d:02} {:02}:00", (t % 86_400) / 3600)
        }
    }
}

/// A bar of at most `width` characters: `#` delivered, `~` deferred, `!` failed, scaled so
/// that `scale` fills the width.
fn bar(c: &Counts, scale: u64, width: u64) -> String {
    if scale == 0 {
        return String::new();
    }
    let cells = |n: u64| -> usize { (if n == 0 { 0 } else { (n * width).div_ceil(scale).max(1) }) as usize };
    let mut out = "#".repeat(cells(c.delivered));
    out.push_str(&"~".repeat(cells(c.deferred)));
    out.push_str(&"!".repeat(cells(c.failed)));
    out
}

/// How many rows the "top" tables show.
pub const TOP: usize = 10;
/// The width of the bars.
pub const BAR_WIDTH: u64 = 40;

/// The report: totals, an hourly table with bars, the top domains and reasons.
pub fn render(stats: &Stats) -> String {
    let t = stats.totals();
    let mut out = format!(
        "{} lines read; {} messages queued ({} bytes); {} delivered, {} deferred, {} failed; {} bounces\n\n",
        stats.lines, stats.messages, stats.bytes, t.delivered, t.deferred, t.failed, t.bounces
    );
    out.push_str("hour (UTC)        delivered deferred  failed bounces  (# delivered ~ deferred ! failed)\n");
    let mut hours: Vec<_> = stats.hours.iter().collect();
    hours.sort_by_key(|(h, _)| h.map_or(0, |h| h + 1));
    let scale = hours.iter().map(|(_, c)| c.delivered + c.deferred + c.failed).max().unwrap_or(0);
    for (hour, c) in &hours {
        out.push_str(&format!(
            "{:<17} {:>9} {:>8} {:>7} {:>7}  {}\n",
            hour_label(**hour),
            c.delivered,
            c.deferred,
            c.failed,
            c.bounces,
            bar(c, scale, BAR_WIDTH)
        ));
    }
    if hours.is_empty() {
        out.push_str("(no deliveries)\n");
    }
    out.push_str("\ntop destinations  delivered deferred  failed\n");
    let mut domains: Vec<_> = stats.domains.iter().collect();
    domains.sort_by(|a, b| {
        let total = |c: &Counts| c.delivered + c.deferred + c.failed;
        total(b.1).cmp(&total(a.1)).then(a.0.cmp(b.0))
    });
    let scale = domains.first().map_or(0, |(_, c)| c.delivered + c.deferred + c.failed);
    for (domain, c) in domains.iter().take(TOP) {
        out.push_str(&format!(
            "{:<17} {:>9} {:>8} {:>7}  {}\n",
            domain,
            c.delivered,
            c.deferred,
            c.failed,
            bar(c, scale, BAR_WIDTH / 2)
        ));
    }
    out.push_str("\ntop failure reasons\n");
    let mut reasons: Vec<_> = stats.reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (text, n) in reasons.iter().take(TOP) {
        out.push_str(&format!("{n:>8}  {text}\n"));
    }
    if reasons.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        // 2026-11-25 14:00:00 UTC = 1795615200.
        let label = format!("@{:016x}{:08x}", (1u64 << 62) + 10 + 1_795_615_200, 0);
        let line = format!("{label} new msg 1");
        assert_eq!(strip_timestamp(&line), (Some(1_795_615_200), "new msg 1"));
        assert_eq!(strip_timestamp("2026-11-25_14:00:00.12345 new msg 1"), (Some(1_795_615_200), "new msg 1"));
        assert_eq!(strip_timestamp("2026-11-25T14:00:00.123456789  new msg 1"), (Some(1_795_615_200), "new msg 1"));
        assert_eq!(strip_timestamp("new msg 1"), (None, "new msg 1"));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(crate::base::date::civil(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn counts_a_log() {
        let log = "\
2026-11-25_14:00:01.1 new msg 100
2026-11-25_14:00:01.2 info msg 100: bytes 1234 from <a@example.org> qp 55 uid 1000
2026-11-25_14:00:01.3 starting delivery 1: msg 100 to remote bob@Example.COM
2026-11-25_14:00:01.4 starting delivery 2: msg 100 to local joe@here.test
2026-11-25_14:00:02.0 delivery 2: success: did_0+0+1/
2026-11-25_14:00:03.0 delivery 1: deferral: Connected_to_192.0.2.1_but_greeting_failed./Remote_host_said:_421/
2026-11-25_15:10:00.0 starting delivery 3: msg 100 to remote bob@example.com
2026-11-25_15:10:01.0 delivery 3: failure: Sorry,_no_mailbox_here_by_that_name./
2026-11-25_15:10:01.1 bounce msg 100 qp 77
2026-11-25_15:10:01.2 end msg 100
garbage line
quill-send: delivery 9: success: unmatched
";
        let mut stats = Stats::default();
        stats.read(log.as_bytes()).unwrap();
        assert_eq!(stats.messages, 1);
        assert_eq!(stats.bytes, 1234);
        let t = stats.totals();
        assert_eq!((t.delivered, t.deferred, t.failed, t.bounces), (2, 1, 1, 1));
        assert_eq!(stats.domains["example.com"], Counts { delivered: 0, deferred: 1, failed: 1, bounces: 0 });
        assert_eq!(stats.domains["here.test"].delivered, 1);
        assert_eq!(stats.domains["(unknown)"].delivered, 1);
        assert_eq!(stats.reasons["failure: Sorry,_no_mailbox_here_by_that_name"], 1);
        assert_eq!(stats.hours[&Some(1_795_615_200 / 3600)].delivered, 1);
        let text = render(&stats);
        assert!(text.contains("2026-11-25 14:00"), "{text}");
        assert!(text.contains("2026-11-25 15:00"), "{text}");
        assert!(text.contains("example.com"), "{text}");
        assert!(text.contains('#') && text.contains('~') && text.contains('!'), "{text}");
    }
}
