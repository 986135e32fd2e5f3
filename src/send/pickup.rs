//! Pick-up: the messages in `todo/` read, logged, their recipients rewritten, and `move`
//! asked of quill-clean; and at start, the state rebuilt from `mess/`, `todo/` and `info/`.
#![forbid(unsafe_code)]

use crate::base::log;
use crate::mail::proto::clean::Verb;
use crate::mail::proto::info::{self, Info};
use crate::mail::queuefile::{self, Header};
use crate::send::message::{Message, Phase};
use crate::send::sendloop::{Sender, MAX_MOVING, PICKUP_BATCH, SCAN_INTERVAL};
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io;

/// The messages waiting in `todo/`, in the order they were found, each once.
#[derive(Debug)]
pub struct Pickup {
    /// In the order found.
    pub(super) queue: VecDeque<u64>,
    /// The same ids, to keep each once.
    pub(super) queued: HashSet<u64>,
    /// Unreadable message files: not tried again until a restart.
    pub(super) bad: HashSet<u64>,
    /// Ids seen in todo/ while a message with the same id was still known (inode reuse):
    /// picked up as soon as the old one ends.
    pub(super) reused: HashSet<u64>,
    /// Messages in todo/ the administrator asked to requeue before they were picked up.
    pub(super) requeue: HashSet<u64>,
    /// A scan of `todo/` is asked for (a trigger, a bounce queued, a release).
    pub(super) scan_wanted: bool,
    /// When `todo/` is scanned without a trigger.
    pub(super) next_scan: u64,
}

impl Default for Pickup {
    fn default() -> Pickup {
        Pickup {
            queue: VecDeque::new(),
            queued: HashSet::new(),
            bad: HashSet::new(),
            reused: HashSet::new(),
            requeue: HashSet::new(),
            scan_wanted: true,
            next_scan: 0,
        }
    }
}

impl Pickup {
    /// Queue `id` for pick-up unless it is queued already.
    pub(super) fn push(&mut self, id: u64) {
        if self.queued.insert(id) {
            self.queue.push_back(id);
        }
    }

    /// The next message to pick up, oldest found first.
    pub(super) fn next(&mut self) -> Option<u64> {
        let id = self.queue.pop_front()?;
        self.queued.remove(&id);
        Some(id)
    }

    /// Not to be picked up (held where it is).
    pub(super) fn withdraw(&mut self, id: u64) {
        self.queue.retain(|&p| p != id);
        self.queued.remove(&id);
    }

    /// An id found in `todo/` by a scan. `known` says a message with this id is still being
    /// handled: a new message can get the inode (the id) of one whose file was just removed
    /// while quill-send still waits for quill-clean's answer; it is picked up when that
    /// message ends ([`Pickup::ended`]).
    pub(super) fn found(&mut self, id: u64, known: bool) {
        if known {
            self.reused.insert(id);
        } else if !self.bad.contains(&id) {
            self.push(id);
        }
    }

    /// The message `id` ended (removed): a new message found with its id goes up now.
    pub(super) fn ended(&mut self, id: u64) {
        self.queued.remove(&id);
        if self.reused.remove(&id) {
            self.push(id);
        }
    }

    /// True when `todo/` is to be scanned now: asked for, or [`SCAN_INTERVAL`] passed, and
    /// nothing found earlier still waits.
    pub(super) fn scan_due(&mut self, now: u64) -> bool {
        if now >= self.next_scan {
            self.scan_wanted = true;
            self.next_scan = now + SCAN_INTERVAL;
        }
        if self.scan_wanted && self.queue.is_empty() {
            self.scan_wanted = false;
            return true;
        }
        false
    }
}

pub(super) fn numeric_entries(dir: &std::path::Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.as_encoded_bytes();
        if queuefile::valid_id(name) {
            if let Some(id) = std::str::from_utf8(name).ok().and_then(|s| s.parse().ok()) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}
impl Sender {
    /// Rebuild the state after a start: messages in `mess/` (with their info files, or from
    /// scratch without), messages in `todo/` to pick up, and stale info files removed.
    /// Messages in `hold/` are left alone.
    pub fn recover(&mut self) -> crate::base::fail::Result<()> {
        let list = |dir: std::path::PathBuf, name: &str| {
            numeric_entries(&dir).map_err(|e| crate::base::fail::Error::io(format!("read {name}/"), &e))
        };
        let mess = list(self.layout.mess(), "mess")?;
        let todo = list(self.layout.todo(), "todo")?;
        let hold: HashSet<u64> = list(self.layout.hold(), "hold")?.into_iter().collect();
        if self.rspawn.is_none() {
            log::warning("remote channel is not running; remote recipients are kept in the queue");
        }
        // Only the names now: each message in mess/ is read a batch per turn of the loop
        // (`dormant`), so that new mail is served while a large backlog is read.
        self.scan_left = mess.len();
        for id in mess {
            self.dormant.put(id, 0);
        }
        if self.scan_left > 0 {
            log::raw(&format!("status: reading {} messages in mess/", self.scan_left));
        }
        for &id in &todo {
            if !self.dormant.contains(id) {
                self.pickup.push(id);
            }
        }
        let todo: HashSet<u64> = todo.into_iter().collect();
        self.restore_destinations();
        self.last_errors.load(&self.layout.info());
        let entries =
            std::fs::read_dir(self.layout.info()).map_err(|e| crate::base::fail::Error::io("read info/", &e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let id = std::str::from_utf8(name.as_encoded_bytes()).ok().and_then(|s| s.parse::<u64>().ok());
            if id.is_some_and(|id| self.dormant.contains(id) || todo.contains(&id) || hold.contains(&id)) {
                continue;
            }
            // The back-off table and the last errors outlive a restart; the other views
            // (flight, channels) describe the previous run only.
            use crate::mail::proto::views::{Destination, LastError, Record};
            if [Destination::FILE, LastError::FILE].iter().any(|kept| name.as_encoded_bytes() == kept.as_bytes()) {
                continue;
            }
            if std::fs::remove_file(entry.path()).is_ok() {
                log::raw(&format!("removed stale info/{}", log::safe(name.as_encoded_bytes())));
            }
        }
        self.pickup.next_scan = crate::base::date::now() + SCAN_INTERVAL;
        self.pickup.scan_wanted = false;
        Ok(())
    }

    /// Build a message from its header and, if it belongs to it, its info file. A stale info
    /// file (another message with the same inode) is removed.
    fn build(&mut self, id: u64, header: Header, offset: u64, info: Option<Info>) -> Message {
        let stale = info.as_ref().is_some_and(|info| !info.belongs_to(&header));
        if stale {
            let _ = info::remove(&self.layout.info(), id);
            log::raw(&format!("removed stale info/{id}"));
        }
        let config = &self.config;
        Message::new(header, offset, info.filter(|_| !stale), |r| config.rewrite(r))
    }

    pub(super) fn read_message(&mut self, dir: &str, id: u64) -> Option<(Header, u64, u64)> {
        let path = self.layout.queue.join(dir).join(id.to_string());
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::warning(&format!("unable to open {dir}/{id}: {e}"));
                return None;
            }
        };
        match queuefile::read_header(&mut file) {
            Ok((header, offset)) => {
                let size = file.metadata().map(|m| m.len().saturating_sub(offset)).unwrap_or(0);
                Some((header, offset, size))
            }
            Err(e) => {
                log::warning(&format!("unable to read {dir}/{id}: {e}; leaving it alone until a restart"));
                self.pickup.bad.insert(id);
                None
            }
        }
    }

    pub(super) fn read_info(&self, id: u64) -> Result<Option<Info>, ()> {
        info::read(&self.layout.info(), id).map_err(|e| log::warning(&format!("{e}")))
    }

    pub(super) fn load_from_mess(&mut self, id: u64) {
        let Some((header, offset, _)) = self.read_message("mess", id) else { return };
        let Ok(info) = self.read_info(id) else { return };
        let mut message = self.build(id, header, offset, info);
        // A message in mess/ was picked up by an earlier quill-send, which may have delivered
        // some of it without recording it.
        for r in &mut message.recipients {
            r.tried = true;
        }
        message.phase = Phase::Active;
        self.messages.insert(id, message);
        self.activate(id);
    }

    /// Scan `todo/` when it is due, then pick up at most [`PICKUP_BATCH`] messages, while
    /// fewer than [`MAX_MOVING`] wait for quill-clean's `move`.
    pub(super) fn pick_up_batch(&mut self, now: u64) {
        if self.pickup.scan_due(now) {
            self.scan_todo();
        }
        let mut picked = 0;
        while picked < PICKUP_BATCH && self.clean.moving < MAX_MOVING && self.messages.len() < self.config.queue_active
        {
            let Some(id) = self.pickup.next() else { break };
            self.pick_up(id);
            picked += 1;
        }
    }

    fn scan_todo(&mut self) {
        match numeric_entries(&self.layout.todo()) {
            Ok(ids) => {
                for id in ids {
                    let known = self.messages.contains_key(&id) || self.dormant.contains(id);
                    self.pickup.found(id, known);
                }
            }
            Err(e) => log::warning(&format!("unable to read todo/: {e}")),
        }
    }

    /// Pick up one message from `todo/`: read it, log it, rewrite its recipients, and ask
    /// quill-clean to move it to `mess/`.
    pub(super) fn pick_up(&mut self, id: u64) {
        if self.messages.contains_key(&id) || self.dormant.contains(id) {
            return;
        }
        let Some((header, offset, size)) = self.read_message("todo", id) else { return };
        let Ok(info) = self.read_info(id) else { return };
        log::raw(&format!("new msg {id}"));
        log::raw(&format!(
            "info msg {id}: bytes {size} from <{}> qp {} uid {}",
            log::safe(&header.envelope.sender),
            header.pid,
            header.uid
        ));
        let message = self.build(id, header, offset, info);
        self.messages.insert(id, message);
        self.ask_clean(Verb::Move, id);
        self.clean.moving += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_up_in_the_order_found_and_once() {
        let mut pickup = Pickup::default();
        for id in [5, 3, 5, 9, 3] {
            pickup.found(id, false);
        }
        pickup.withdraw(9);
        assert_eq!(pickup.next(), Some(5));
        // Taken from the queue, it may be found again (its move may fail).
        pickup.found(5, false);
        assert_eq!(pickup.next(), Some(3));
        assert_eq!(pickup.next(), Some(5));
        assert_eq!(pickup.next(), None);
    }

    #[test]
    fn unreadable_and_reused_ids() {
        let mut pickup = Pickup::default();
        pickup.bad.insert(4);
        pickup.found(4, false);
        assert_eq!(pickup.next(), None);
        // A new message with the id of one still ending waits for that end.
        pickup.found(7, true);
        assert_eq!(pickup.next(), None);
        pickup.ended(7);
        assert_eq!(pickup.next(), Some(7));
        pickup.ended(7);
        assert_eq!(pickup.next(), None);
    }

    #[test]
    fn scans_when_asked_or_when_the_interval_passed() {
        let mut pickup = Pickup::default();
        assert!(pickup.scan_due(1000), "the first turn scans");
        assert!(!pickup.scan_due(1001));
        pickup.scan_wanted = true;
        pickup.push(1);
        assert!(!pickup.scan_due(1002), "not while found messages still wait");
        assert_eq!(pickup.next(), Some(1));
        assert!(pickup.scan_due(1002));
        assert!(!pickup.scan_due(1000 + SCAN_INTERVAL - 1));
        assert!(pickup.scan_due(1000 + SCAN_INTERVAL));
    }
}
