//! `quill queue shape`: the shape of the queue, as Postfix's qshape draws it: waiting
//! recipients per domain (or per sender domain) by the age of their message, in buckets that
//! double from 5 minutes.
#![forbid(unsafe_code)]

use super::queue::Entry;
use std::collections::HashMap;

/// The upper bounds of the age buckets, in minutes; the last bucket is everything older.
pub const BUCKETS: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// The most domains shown (the rest are summed into one line).
pub const MAX_ROWS: usize = 50;

/// Counts for one row: the total, then one per bucket (the last: older than all).
type Row = [u64; BUCKETS.len() + 2];

fn bucket(age_seconds: u64) -> usize {
    let minutes = age_seconds / 60;
    BUCKETS.iter().position(|&limit| minutes < limit).unwrap_or(BUCKETS.len())
}

fn domain(address: &[u8]) -> String {
    if address.is_empty() {
        return "<>".to_string();
    }
    crate::base::log::safe(&crate::mail::address::normal_domain(crate::mail::address::split(address).1))
}

/// The table: one row per domain of the waiting recipients (`by_sender`: of the senders of
/// messages with waiting recipients), busiest first, with a TOTAL row at the top.
pub fn shape(entries: &[Entry], now: u64, by_sender: bool) -> String {
    let mut rows: HashMap<String, Row> = HashMap::new();
    let mut total: Row = [0; BUCKETS.len() + 2];
    for entry in entries {
        let slot = 1 + bucket(now.saturating_sub(entry.header.time));
        let recipients = &entry.header.envelope.recipients;
        for (n, rcpt) in recipients.iter().enumerate() {
            let waiting = entry
                .info
                .as_ref()
                .and_then(|i| i.entries.get(n))
                .is_none_or(|r| r.progress == crate::mail::proto::info::Progress::Waiting);
            if !waiting {
                continue;
            }
            let key = if by_sender { domain(&entry.header.envelope.sender) } else { domain(rcpt) };
            let row = rows.entry(key).or_insert([0; BUCKETS.len() + 2]);
            row[0] += 1;
            row[slot] += 1;
            total[0] += 1;
            total[slot] += 1;
        }
    }
    let mut sorted: Vec<(String, Row)> = rows.into_iter().collect();
    sorted.sort_by(|a, b| b.1[0].cmp(&a.1[0]).then_with(|| a.0.cmp(&b.0)));
    if sorted.len() > MAX_ROWS {
        let mut rest: Row = [0; BUCKETS.len() + 2];
        let others = sorted.split_off(MAX_ROWS - 1);
        for (_, row) in &others {
            for (sum, n) in rest.iter_mut().zip(row) {
                *sum += n;
            }
        }
        sorted.push((format!("({} more domains)", others.len()), rest));
    }
    let width = sorted.iter().map(|(d, _)| d.len()).chain([5]).max().unwrap_or(5).min(60);
    let mut out = format!("{:>width$} {:>6}", "", "T");
    for limit in BUCKETS {
        out.push_str(&format!(" {limit:>5}"));
    }
    out.push_str(&format!(" {:>5}\n", format!("{}+", BUCKETS[BUCKETS.len() - 1])));
    for (name, row) in std::iter::once(("TOTAL".to_string(), total)).chain(sorted) {
        out.push_str(&format!("{name:>width$} {:>6}", row[0]));
        for n in &row[1..] {
            out.push_str(&format!(" {n:>5}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(299), 0);
        assert_eq!(bucket(300), 1);
        assert_eq!(bucket(1279 * 60), 8);
        assert_eq!(bucket(1280 * 60), 9);
    }
}
