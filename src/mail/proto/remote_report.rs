//! quill-remote's report to quill-rspawn (doc/quill-remote.8, "Output"), writer and reader side
//! by side; and the time one run may take, which both programs compute.
//!
//! The report is one NUL-terminated text per recipient, in order, each after its letter (`r`
//! accepted, `s` temporary, `h` permanent at RCPT), then the message's (`K` delivered, `Z`
//! temporary, `D` permanent). A temporary failure of the destination itself (no host of its
//! route could be reached, or no route found for a temporary reason) is marked by its text's
//! first words [`UNREACHABLE`]: [`fold`] turns that mark into the `unreachable` field of the
//! spawn protocol's result, the only thing quill-send looks at.
#![forbid(unsafe_code)]

use crate::base::fail::{Enhanced, Outcome, Status};
use crate::mail::control::Control;
use crate::mail::proto::spawn::{self as spawnproto, MAX_TEXT};
use std::time::Duration;

/// The first words of a result text for a failure that is about the destination, not the
/// message (doc/quill-remote.8). They stay in the text, for logs and bounces; on the pipes
/// they are how a result says it is `unreachable`.
pub const UNREACHABLE: &str = "Unreachable: ";

/// `timeoutremotetotal`'s default: one run of quill-remote, every host and address it tries
/// included, takes at most this long plus a second per [`BYTES_PER_SECOND`] of the message.
pub const DEFAULT_TOTAL_SECONDS: u64 = 1800;
/// The slowest transfer a deadline allows for: one second per this many bytes of the message
/// (10 kB/s; a 25 MB message adds 42 minutes to the default half hour).
pub const BYTES_PER_SECOND: u64 = 10_000;
/// How long quill-rspawn waits past a run's deadline before it kills it: quill-remote itself
/// stops at the deadline, then spends at most its QUIT timeout on QUIT and the TLS goodbye;
/// this must stay above that.
pub const KILL_MARGIN: Duration = Duration::from_secs(10);

/// The time one quill-remote run may take for a message of `stored_size` bytes (as stored in
/// the queue, from the message start), with `timeoutremotetotal` = `total_seconds`. quill-remote
/// stops by then; quill-rspawn kills it [`KILL_MARGIN`] later. Both compute it here.
pub fn total_time(total_seconds: u64, stored_size: u64) -> Duration {
    Duration::from_secs(total_seconds.max(1).saturating_add(stored_size / BYTES_PER_SECOND))
}

/// `control/timeoutremotetotal`, default [`DEFAULT_TOTAL_SECONDS`].
pub fn total_seconds(control: &Control) -> crate::base::fail::Result<u64> {
    control.number("timeoutremotetotal", DEFAULT_TOTAL_SECONDS)
}

/// What quill-remote prints: per recipient its RCPT result, then the message's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Per recipient, in order: letter (`r`, `s`, `h`) and text.
    pub recipients: Vec<(u8, String)>,
    /// The message: letter (`K`, `Z`, `D`) and text.
    pub message: (u8, String),
}

/// A recipient's letter for an outcome.
pub fn recipient_letter(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Success => b'r',
        Outcome::Temporary => b's',
        Outcome::Permanent => b'h',
    }
}

impl Report {
    /// Every recipient and the message failed the same way (before any RCPT).
    pub fn all(count: usize, outcome: Outcome, text: String) -> Report {
        Report { recipients: vec![(recipient_letter(outcome), text.clone()); count], message: (outcome.letter(), text) }
    }

    /// The destination could not be reached: every recipient temporary, and marked so.
    pub fn unreachable(count: usize, text: &str) -> Report {
        Report::all(count, Outcome::Temporary, format!("{UNREACHABLE}{text}"))
    }

    /// Put the report for the recipients that were sent (in order) together with the
    /// permanent failures of the ones that could not be (`refused`: index and text).
    pub fn merge(sent: Report, refused: Vec<(usize, String)>) -> Report {
        let total = sent.recipients.len() + refused.len();
        let mut sent_results = sent.recipients.into_iter();
        let mut refused = refused.into_iter().peekable();
        let mut recipients = Vec::with_capacity(total);
        for i in 0..total {
            match refused.next_if(|(at, _)| *at == i) {
                Some((_, text)) => recipients.push((b'h', text)),
                None => recipients.extend(sent_results.next()),
            }
        }
        Report { recipients, message: sent.message }
    }

    /// The bytes quill-remote prints: each text after its letter, NUL-terminated, recipients
    /// first. NUL bytes inside a text become `?`; a text is cut at the spawn protocol's
    /// limit here, so that a long text can never push the message report out of reach.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (letter, text) in self.recipients.iter().chain(std::iter::once(&self.message)) {
            out.push(*letter);
            let text = text.as_bytes();
            out.extend(text[..text.len().min(MAX_TEXT)].iter().map(|&b| if b == 0 { b'?' } else { b }));
            out.push(0);
        }
        out
    }
}

/// quill-remote `-k` (a kept connection, doc/quill-remote.8 "Kept connections"): the jobs
/// quill-rspawn hands it on the unix socket that is its fd 0 and fd 1, each a text0 frame
/// `Fsender\0 Trcpt\0 … \0` with the message's descriptor attached (SCM_RIGHTS), and the
/// report of each, which is [`Report::encode`] followed by one NUL (an empty text, which no
/// report text is: each starts with its letter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptJob {
    pub sender: Vec<u8>,
    pub recipients: Vec<Vec<u8>>,
}

impl KeptJob {
    /// The frame, in the spawn protocol's text0 encoding.
    pub fn encode(&self) -> Vec<u8> {
        let sender = [b"F".as_slice(), &self.sender].concat();
        let recipients: Vec<Vec<u8>> = self.recipients.iter().map(|r| [b"T".as_slice(), r].concat()).collect();
        let mut fields: Vec<&[u8]> = vec![&sender];
        fields.extend(recipients.iter().map(Vec::as_slice));
        spawnproto::encode(&fields)
    }

    /// A frame's fields (from `spawn::Reader`); None if malformed (no recipient, a field
    /// without its tag).
    pub fn decode(fields: &[Vec<u8>]) -> Option<KeptJob> {
        let (sender, recipients) = fields.split_first()?;
        if recipients.is_empty() {
            return None;
        }
        let sender = sender.strip_prefix(b"F")?.to_vec();
        let recipients =
            recipients.iter().map(|r| r.strip_prefix(b"T").map(<[u8]>::to_vec)).collect::<Option<Vec<_>>>()?;
        Some(KeptJob { sender, recipients })
    }
}

/// The end of the first whole report in what a kept quill-remote wrote: the length of the
/// report with its closing NUL, or None while it is incomplete. [`fold`] takes the report
/// without that NUL.
pub fn kept_report_end(output: &[u8]) -> Option<usize> {
    // Every text starts with its letter, so two NULs in a row only end a report.
    output.windows(2).position(|w| w == b"\0\0").map(|at| at + 2)
}

/// Fold quill-remote's output into one result per recipient, as quill-rspawn reports them:
/// `h` → D, `s` → Z, `r` → the message's letter with the message's text. Whatever is missing
/// (a crash, a cut-off output) is temporary: a retry never loses mail. A temporary text that
/// starts with [`UNREACHABLE`] gives an `unreachable` result.
pub fn fold(output: &[u8], count: usize) -> Vec<spawnproto::Result> {
    use spawnproto::Result as Line;
    let mut reports: Vec<&[u8]> = output.split(|&b| b == 0).collect();
    // The piece after the last NUL is unterminated: not a report.
    reports.pop();
    let message = reports.last().and_then(|r| match r.first() {
        Some(&letter @ (b'K' | b'Z' | b'D')) => Some((Outcome::from_letter(letter), r[1..].to_vec())),
        _ => None,
    });
    let missing = || match &message {
        // qmail-remote's shape: a failure before any RCPT gives only the message report.
        Some((outcome @ (Outcome::Temporary | Outcome::Permanent), text)) => Line::new(*outcome, text.clone()),
        _ => Line::from(&Status::temporary(
            Enhanced::MAIL_SYSTEM,
            "quill-remote gave no result for this recipient (crashed?).",
        )),
    };
    (0..count)
        .map(|i| match reports.get(i).and_then(|r| Some((*r.first()?, &r[1..]))) {
            Some((b'h', text)) => Line::new(Outcome::Permanent, text.to_vec()),
            Some((b's', text)) => Line::new(Outcome::Temporary, text.to_vec()),
            Some((b'r', _)) => match &message {
                Some((outcome, text)) => Line::new(*outcome, text.clone()),
                None => missing(),
            },
            _ => missing(),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that cannot unwrap has failed
mod tests {
    use super::*;

    #[test]
    fn deadlines_grow_with_the_message() {
        assert_eq!(total_time(1800, 0), Duration::from_secs(1800));
        assert_eq!(total_time(1800, 25_000_000), Duration::from_secs(1800 + 2500));
        assert_eq!(total_time(0, 0), Duration::from_secs(1));
    }

    #[test]
    fn report_round_trip() {
        let report = Report {
            recipients: vec![(b'r', "ok".into()), (b'h', "no such user".into()), (b's', "later".into())],
            message: (b'K', "accepted".into()),
        };
        let results = fold(&report.encode(), 3);
        let got: Vec<(Outcome, Vec<u8>, bool)> =
            results.into_iter().map(|r| (r.outcome, r.text, r.unreachable)).collect();
        assert_eq!(
            got,
            vec![
                (Outcome::Success, b"accepted".to_vec(), false),
                (Outcome::Permanent, b"no such user".to_vec(), false),
                (Outcome::Temporary, b"later".to_vec(), false)
            ]
        );
        // Cut off before the message report: the accepted recipient is temporary.
        let results = fold(b"rok\0hbad\0", 2);
        assert_eq!(results[0].outcome, Outcome::Temporary);
        assert_eq!(results[1].outcome, Outcome::Permanent);
        // Nothing at all.
        assert!(fold(b"", 2).iter().all(|r| r.outcome == Outcome::Temporary && !r.unreachable));
        // qmail-remote's shape: only a message report.
        let results = fold(b"Zconnection refused\0", 1);
        assert_eq!(results[0].outcome, Outcome::Temporary);
    }

    #[test]
    fn kept_jobs_and_reports_round_trip() {
        let job = KeptJob { sender: Vec::new(), recipients: vec![b"a@b.example".to_vec(), b"c@b.example".to_vec()] };
        let mut reader = spawnproto::Reader::default();
        reader.push(&job.encode());
        assert_eq!(KeptJob::decode(&reader.next_frame().unwrap()), Some(job));
        assert_eq!(KeptJob::decode(&[b"F".to_vec()]), None, "a job without a recipient");
        let report = Report::all(2, Outcome::Success, "ok".to_string());
        let mut bytes = report.encode();
        assert_eq!(kept_report_end(&bytes), None);
        bytes.push(0);
        let end = bytes.len();
        bytes.extend_from_slice(b"rnext");
        assert_eq!(kept_report_end(&bytes), Some(end));
        // Without its closing NUL, the report folds as a single run's output does.
        let folded = fold(&bytes[..end - 1], 2);
        assert!(folded.iter().all(|r| r.outcome == Outcome::Success), "{folded:?}");
    }

    #[test]
    fn refused_recipients_merge_in_order() {
        let sent = Report { recipients: vec![(b'r', "a".into()), (b's', "c".into())], message: (b'K', "m".into()) };
        let merged = Report::merge(sent, vec![(1, "bad".into())]);
        assert_eq!(merged.recipients, vec![(b'r', "a".into()), (b'h', "bad".into()), (b's', "c".into())]);
    }

    #[test]
    fn unreachable_round_trip() {
        let report = Report::unreachable(2, "no host for this destination took the message: refused (#4.4.1)");
        assert!(report.encode().starts_with(b"sUnreachable: no host"));
        let results = fold(&report.encode(), 2);
        assert!(results.iter().all(|r| r.unreachable && r.outcome == Outcome::Temporary), "{results:?}");
        // The text stays as logs and bounces show it.
        assert_eq!(results[0].text, b"Unreachable: no host for this destination took the message: refused (#4.4.1)");
        // The mark counts only on a temporary result.
        let results = fold(b"hUnreachable: odd\0DUnreachable: odd\0", 1);
        assert!(!results[0].unreachable);
        // A temporary result without the mark is about the message, not the destination.
        assert!(!fold(b"sbusy\0Zbusy\0", 1)[0].unreachable);
    }
}
