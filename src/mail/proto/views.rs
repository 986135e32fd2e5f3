//! quill-send's views in `queue/info/`: what it shows of its work for `quill status` and `quill
//! queue why`/`show` to read (doc/quill-send.8). Text, one record a line, written whole under
//! `NAME.new` and renamed (not fsynced: views, not state). A line a reader cannot decode (a
//! torn or damaged file) is skipped.
//!
//! ```text
//! destinations  DOMAIN FAILURES UNTIL PARKED RUNNING LAST-ERROR   sorted; a destination backed
//!               off (FAILURES > 0) or with deliveries parked at its concurrency limit
//! channels      CHANNEL RUNNING LIMIT QUEUED   a channel full with deliveries queued (no file
//!               when none is)
//! flight        ID PLACE...   sorted; a delivery in flight, PLACE a recipient's place in the
//!               message header (no file when none is)
//! errors        TIME msg ID to RCPT: KIND: TEXT   the last deferrals and failures, oldest first
//! ```
//!
//! quill-send reads `destinations` and `errors` back at start, so that a restart keeps them.
#![forbid(unsafe_code)]

use std::path::Path;

/// A file of records, one a line.
pub trait Record: Sized {
    /// Its name in `queue/info/`.
    const FILE: &'static str;
    /// One line, with its newline.
    fn encode(&self) -> String;
    /// One line (without its newline); None when it is damaged.
    fn decode(line: &str) -> Option<Self>;
}

/// The records of a file's text, damaged lines skipped.
pub fn decode_all<R: Record>(text: &str) -> Vec<R> {
    text.lines().filter_map(R::decode).collect()
}

/// The records of `info/R::FILE`; none when it is missing or unreadable.
pub fn read<R: Record>(info: &Path) -> Vec<R> {
    decode_all(&std::fs::read_to_string(info.join(R::FILE)).unwrap_or_default())
}

/// Replace `info/FILE` (a [`Record::FILE`]) with `text` (written under `FILE.new`, then
/// renamed).
pub fn write(info: &Path, file: &str, text: &str) -> std::io::Result<()> {
    let tmp = info.join(format!("{file}.new"));
    std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, info.join(file)))
}

/// The lines of `records`, sorted (the order of `destinations` and `flight`).
pub fn encode_sorted<'a, R: Record + 'a>(records: impl IntoIterator<Item = &'a R>) -> String {
    let mut lines: Vec<String> = records.into_iter().map(R::encode).collect();
    lines.sort();
    lines.concat()
}

/// One line of `destinations`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destination {
    /// The domain (written through `log::safe`).
    pub domain: Vec<u8>,
    /// Failed attempts in a row (0: not backed off, deliveries parked at its concurrency limit).
    pub failures: u32,
    /// When the next probe may go.
    pub until: u64,
    /// Deliveries parked for it.
    pub parked: u64,
    /// Deliveries running to it.
    pub running: u64,
    /// The last error that backed it off (a newline written as a space).
    pub error: String,
}

impl Record for Destination {
    const FILE: &'static str = "destinations";

    fn encode(&self) -> String {
        format!(
            "{} {} {} {} {} {}\n",
            crate::base::log::safe(&self.domain),
            self.failures,
            self.until,
            self.parked,
            self.running,
            self.error.replace('\n', " ")
        )
    }

    fn decode(line: &str) -> Option<Destination> {
        let mut f = line.splitn(6, ' ');
        let domain = f.next().filter(|d| !d.is_empty())?.as_bytes().to_vec();
        let failures = f.next()?.parse().ok()?;
        let mut number = || f.next().and_then(|n| n.parse::<u64>().ok());
        let (until, parked, running) = (number()?, number()?, number()?);
        let error = f.next().unwrap_or("").to_string();
        Some(Destination { domain, failures, until, parked, running, error })
    }
}

/// One line of `channels`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelLoad {
    /// `local` or `remote`.
    pub name: String,
    /// Deliveries running.
    pub running: u64,
    /// `concurrencylocal` or `concurrencyremote`.
    pub limit: u64,
    /// Deliveries queued for a free slot.
    pub queued: u64,
}

impl Record for ChannelLoad {
    const FILE: &'static str = "channels";

    fn encode(&self) -> String {
        format!("{} {} {} {}\n", self.name, self.running, self.limit, self.queued)
    }

    fn decode(line: &str) -> Option<ChannelLoad> {
        let mut f = line.split(' ');
        let name = f.next().filter(|n| !n.is_empty())?.to_string();
        let mut number = || f.next().and_then(|n| n.parse::<u64>().ok());
        let (running, limit, queued) = (number()?, number()?, number()?);
        f.next().is_none().then_some(ChannelLoad { name, running, limit, queued })
    }
}

/// One line of `flight`: a delivery in flight.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// The message.
    pub id: u64,
    /// Its recipients in this delivery, by their place in the message header.
    pub places: Vec<usize>,
}

impl Record for InFlight {
    const FILE: &'static str = "flight";

    fn encode(&self) -> String {
        let places: Vec<String> = self.places.iter().map(usize::to_string).collect();
        format!("{} {}\n", self.id, places.join(" "))
    }

    fn decode(line: &str) -> Option<InFlight> {
        let (id, places) = line.split_once(' ')?;
        let id = id.parse().ok()?;
        let places = if places.is_empty() {
            Vec::new()
        } else {
            places.split(' ').map(|p| p.parse().ok()).collect::<Option<Vec<usize>>>()?
        };
        Some(InFlight { id, places })
    }
}

/// One line of `errors`: a deferral or failure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastError {
    /// When.
    pub time: u64,
    /// `msg ID to RCPT: KIND: TEXT`.
    pub text: String,
}

impl LastError {
    /// The deferral (`kind` "deferral") or failure ("failure") of message `id` to `recipient`.
    pub fn new(time: u64, id: u64, recipient: &[u8], kind: &str, text: &str) -> LastError {
        LastError { time, text: format!("msg {id} to {}: {kind}: {text}", crate::base::log::safe(recipient)) }
    }
}

impl Record for LastError {
    const FILE: &'static str = "errors";

    fn encode(&self) -> String {
        format!("{} {}\n", self.time, self.text.replace('\n', " "))
    }

    fn decode(line: &str) -> Option<LastError> {
        let (time, text) = line.split_once(' ')?;
        Some(LastError { time: time.parse().ok()?, text: text.to_string() })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round_trip<R: Record + PartialEq + std::fmt::Debug>(record: R, line: &str) {
        assert_eq!(record.encode(), line);
        assert_eq!(R::decode(line.strip_suffix('\n').unwrap()), Some(record));
    }

    #[test]
    fn destination_round_trip() {
        let down = Destination {
            domain: b"down.example".to_vec(),
            failures: 3,
            until: 1000,
            parked: 4,
            running: 0,
            error: "Unreachable: refused".into(),
        };
        round_trip(down, "down.example 3 1000 4 0 Unreachable: refused\n");
        let busy = Destination { domain: b"busy.example".to_vec(), parked: 2, running: 10, ..Default::default() };
        round_trip(busy.clone(), "busy.example 0 0 2 10 \n");
        let odd = Destination { domain: b"b\xffd".to_vec(), error: "two\nlines".into(), ..busy };
        assert_eq!(odd.encode(), "b?d 0 0 2 10 two lines\n");
        let older = Destination { domain: b"a.example".to_vec(), ..Default::default() };
        assert_eq!(encode_sorted(&[odd, older]), "a.example 0 0 0 0 \nb?d 0 0 2 10 two lines\n");
    }

    #[test]
    fn channel_round_trip() {
        round_trip(ChannelLoad { name: "remote".into(), running: 20, limit: 20, queued: 1 }, "remote 20 20 1\n");
    }

    #[test]
    fn flight_round_trip() {
        round_trip(InFlight { id: 30, places: vec![2, 0] }, "30 2 0\n");
        round_trip(InFlight { id: 31, places: Vec::new() }, "31 \n");
        let records = [InFlight { id: 30, places: vec![2, 0] }, InFlight { id: 12, places: vec![1] }];
        assert_eq!(encode_sorted(&records), "12 1\n30 2 0\n");
    }

    #[test]
    fn errors_round_trip() {
        let e = LastError::new(99, 42, b"c@d\x1b", "failure", "No such user (#5.1.1)");
        round_trip(e, "99 msg 42 to c@d?: failure: No such user (#5.1.1)\n");
    }

    #[test]
    fn damaged_lines_are_skipped() {
        let destinations = "garbage\n\nx y z\na.example 1 2 3\nb.example 1 2 3 4\na.example 99999999999 1 1 1 e\n";
        let read: Vec<Destination> = decode_all(destinations);
        assert_eq!(read.len(), 1, "{read:?}");
        assert_eq!(read[0].domain, b"b.example");
        let channels: Vec<ChannelLoad> = decode_all("local 10 10 3\nremote 1 2\n\nremote x 1 1\nlocal 1 2 3 4\n");
        assert_eq!(channels, vec![ChannelLoad { name: "local".into(), running: 10, limit: 10, queued: 3 }]);
        let flight: Vec<InFlight> = decode_all("42 0 2\n43\nx 1\n44 1 y\n45 1  2\n");
        assert_eq!(flight, vec![InFlight { id: 42, places: vec![0, 2] }]);
        let errors: Vec<LastError> = decode_all("12 msg 1 to a: deferral: x\n\nnot-a-time msg\n13\n");
        assert_eq!(errors.len(), 1);
        // A file cut in the middle of a line: the whole lines before the cut still read.
        let cut = &"a.example 1 2 3 4 refused\nb.example 1 2 3 4 refused\n"[..30];
        assert_eq!(decode_all::<Destination>(cut).len(), 1);
    }

    #[test]
    fn missing_file_reads_empty_and_write_replaces() {
        let dir = std::env::temp_dir().join(format!("quill-views-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read::<InFlight>(&dir).is_empty());
        write(&dir, InFlight::FILE, "7 1\n").unwrap();
        assert_eq!(read::<InFlight>(&dir), vec![InFlight { id: 7, places: vec![1] }]);
        assert!(!dir.join("flight.new").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
