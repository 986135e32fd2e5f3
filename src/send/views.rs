//! What quill-send writes for others to read: the info files (its state, fsynced) and the
//! views `quill status` and `quill queue why` read (`info/destinations`, `info/channels`,
//! `info/flight`: not fsynced).
#![forbid(unsafe_code)]

use crate::base::log;
use crate::mail::proto::info;
use crate::send::message::Phase;
use crate::send::sendconf::Channel;
use crate::send::sendloop::Sender;

impl Sender {
    /// Write the info files this turn made necessary, then fsync `info/` once.
    pub(super) fn write_infos(&mut self) {
        if self.info_queue.is_empty() {
            return;
        }
        let info_dir = self.layout.info();
        let mut wrote = false;
        for id in std::mem::take(&mut self.info_queue) {
            let Some(m) = self.messages.get_mut(&id) else { continue };
            if !m.dirty || !matches!(m.phase, Phase::Active | Phase::Bouncing) {
                continue;
            }
            match info::write(&info_dir, id, &m.info()) {
                Ok(()) => {
                    m.dirty = false;
                    wrote = true;
                }
                Err(e) => log::warning(&format!("{e}")),
            }
        }
        if wrote {
            if let Err(e) = info::sync_dir(&info_dir) {
                log::warning(&format!("unable to sync info/: {e}"));
            }
        }
    }

    /// Save every message with unrecorded progress (on the way out).
    pub(super) fn save_all(&mut self) {
        self.info_queue = self.messages.iter().filter(|(_, m)| m.dirty).map(|(&id, _)| id).collect();
        self.write_infos();
    }

    /// Write the views `quill status` and `quill queue why` read when they changed, at most
    /// once a second: `info/destinations` (the back-off table, and destinations with
    /// deliveries parked at their concurrency limit) and `info/channels` (`CHANNEL RUNNING
    /// LIMIT QUEUED` for each channel that is full with deliveries queued; no file when none
    /// is) and `info/flight` (`ID PLACE...` per delivery in flight, PLACE a recipient's place
    /// in the message header; no file when none is). Not fsynced: views, not state; the back-off table
    /// is read again at start ([`Sender::restore_destinations`]), and a torn or lost one only
    /// costs a probe.
    pub(super) fn write_views(&mut self, now: u64) {
        if now <= self.views_written_at {
            return;
        }
        // Only a full channel with deliveries queued explains anything, so the file exists
        // only then (a quiet system writes nothing).
        let mut channels = String::new();
        for channel in Channel::ALL {
            let c = channel as usize;
            if !self.ready[c].is_empty() && self.running[c] >= self.config.concurrency(channel) {
                channels.push_str(&format!(
                    "{} {} {} {}\n",
                    channel.name(),
                    self.running[c],
                    self.config.concurrency(channel),
                    self.ready[c].len()
                ));
            }
        }
        // The deliveries in flight: `ID INDEX...` (the recipients' places in the header).
        let mut flight: Vec<String> = self
            .in_flight
            .values()
            .map(|d| {
                let places: Vec<String> = d.recipients.iter().map(usize::to_string).collect();
                format!("{} {}\n", d.id, places.join(" "))
            })
            .collect();
        flight.sort();
        let flight = flight.concat();
        let destinations_changed = self.destinations.take_changed();
        if !destinations_changed && channels == self.channels_written && flight == self.flight_written {
            return;
        }
        self.views_written_at = now;
        let info = self.layout.info();
        let write = |name: &str, text: &str| {
            let tmp = info.join(format!("{name}.new"));
            std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, info.join(name))).is_ok()
        };
        if destinations_changed {
            self.write_destination_table();
        }
        for (name, text, written) in
            [("channels", channels, &mut self.channels_written), ("flight", flight, &mut self.flight_written)]
        {
            if text == *written {
                continue;
            }
            let done = if text.is_empty() { std::fs::remove_file(info.join(name)).is_ok() } else { write(name, &text) };
            if done {
                *written = text;
            }
        }
    }

    /// Write `info/destinations` now if it changed (after a delivery result, so that a
    /// back-off shows at once).
    pub(super) fn write_destination_table(&mut self) {
        let table = self.destinations.report();
        if table == self.destinations_written {
            return;
        }
        let info = self.layout.info();
        let tmp = info.join("destinations.new");
        if std::fs::write(&tmp, &table).and_then(|_| std::fs::rename(&tmp, info.join("destinations"))).is_ok() {
            self.destinations_written = table;
        }
    }

    /// True when a view waits for [`Sender::write_views`]'s once-a-second limit.
    pub(super) fn views_pending(&self, now: u64) -> bool {
        now <= self.views_written_at
            && (self.destinations.is_changed()
                || !self.channels_written.is_empty()
                || !self.flight_written.is_empty()
                || !self.in_flight.is_empty()
                || self.ready.iter().any(|q| !q.is_empty()))
    }

    /// Read back the back-off table a previous run left in `info/destinations`.
    pub(super) fn restore_destinations(&mut self) {
        if let Ok(table) = std::fs::read_to_string(self.layout.info().join("destinations")) {
            self.destinations.restore(&table);
            let kept = self.destinations.report();
            if !kept.is_empty() {
                log::raw(&format!("status: {} destinations still backed off", kept.lines().count()));
            }
        }
    }
}
