//! What quill-send writes for others to read: the info files (its state, fsynced) and the
//! views `quill status` and `quill queue why` read (`info/destinations`, `info/channels`,
//! `info/flight`: not fsynced).
#![forbid(unsafe_code)]

use crate::base::log;
use crate::mail::proto::info;
use crate::mail::proto::views::{self, Record};
use crate::send::dispatch::Deliveries;
use crate::send::message::Phase;
use crate::send::sendconf::Channel;
use crate::send::sendloop::Sender;

/// The views as last written, so that an unchanged one is not written again.
#[derive(Debug, Default)]
pub struct Views {
    /// The back-off table as last written to `info/destinations`.
    pub(super) destinations: String,
    /// The channel table as last written to `info/channels`.
    pub(super) channels: String,
    /// The deliveries in flight as last written to `info/flight`.
    pub(super) flight: String,
    /// When the views were last written (at most once a second).
    pub(super) written_at: u64,
}

/// `info/channels`: each channel that is full with deliveries queued. Only such a channel
/// explains a wait, so a quiet system writes nothing.
pub(super) fn channels_view(deliveries: &Deliveries, limits: [usize; 2]) -> String {
    Channel::ALL
        .into_iter()
        .filter(|&channel| {
            let c = channel as usize;
            !deliveries.ready[c].is_empty() && deliveries.running[c] >= limits[c]
        })
        .map(|channel| {
            let c = channel as usize;
            views::ChannelLoad {
                name: channel.name().to_string(),
                running: deliveries.running[c] as u64,
                limit: limits[c] as u64,
                queued: deliveries.ready[c].len() as u64,
            }
            .encode()
        })
        .collect()
}

/// `info/flight`: each delivery in flight (the recipients' places in the message header),
/// sorted.
pub(super) fn flight_view(deliveries: &Deliveries) -> String {
    let flight: Vec<views::InFlight> =
        deliveries.in_flight.values().map(|d| views::InFlight { id: d.id, places: d.recipients.clone() }).collect();
    views::encode_sorted(&flight)
}

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
            m.info_on_disk = true;
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
    /// once a second (their formats: [`crate::mail::proto::views`]): `info/destinations` (the
    /// back-off table, and destinations with deliveries parked at their concurrency limit),
    /// `info/channels` (each channel that is full with deliveries queued; no file when none
    /// is) and `info/flight` (each delivery in flight; no file when none is). Not fsynced:
    /// views, not state; the back-off table is read again at start
    /// ([`Sender::restore_destinations`]), and a torn or lost one only costs a probe.
    pub(super) fn write_views(&mut self, now: u64) {
        if now <= self.views.written_at {
            return;
        }
        let limits = [self.config.concurrency(Channel::Local), self.config.concurrency(Channel::Remote)];
        let channels = channels_view(&self.deliveries, limits);
        let flight = flight_view(&self.deliveries);
        let destinations_changed = self.destinations.take_changed();
        if !destinations_changed && channels == self.views.channels && flight == self.views.flight {
            return;
        }
        self.views.written_at = now;
        let info = self.layout.info();
        if destinations_changed {
            self.write_destination_table();
        }
        for (name, text, written) in [
            (views::ChannelLoad::FILE, channels, &mut self.views.channels),
            (views::InFlight::FILE, flight, &mut self.views.flight),
        ] {
            if text == *written {
                continue;
            }
            let done = if text.is_empty() {
                std::fs::remove_file(info.join(name)).is_ok()
            } else {
                views::write(&info, name, &text).is_ok()
            };
            if done {
                *written = text;
            }
        }
    }

    /// Write `info/destinations` now if it changed (after a delivery result, so that a
    /// back-off shows at once).
    pub(super) fn write_destination_table(&mut self) {
        let table = self.destinations.report();
        if table == self.views.destinations {
            return;
        }
        if views::write(&self.layout.info(), views::Destination::FILE, &table).is_ok() {
            self.views.destinations = table;
        }
    }

    /// True when a view waits for [`Sender::write_views`]'s once-a-second limit.
    pub(super) fn views_pending(&self, now: u64) -> bool {
        now <= self.views.written_at
            && (self.destinations.is_changed()
                || !self.views.channels.is_empty()
                || !self.views.flight.is_empty()
                || !self.deliveries.in_flight.is_empty()
                || self.deliveries.ready.iter().any(|q| !q.is_empty()))
    }

    /// Read back the back-off table a previous run left in `info/destinations`.
    pub(super) fn restore_destinations(&mut self) {
        if let Ok(table) = std::fs::read_to_string(self.layout.info().join(views::Destination::FILE)) {
            self.destinations.restore(&table);
            let kept = self.destinations.report();
            if !kept.is_empty() {
                log::raw(&format!("status: {} destinations still backed off", kept.lines().count()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::message::{Delivery, Job};

    #[test]
    fn only_a_full_channel_with_jobs_queued_is_shown() {
        let mut deliveries = Deliveries::default();
        assert_eq!(channels_view(&deliveries, [10, 20]), "");
        deliveries.ready[1].push_back(Job { id: 1, recipients: vec![0], domain: b"x.example".to_vec() });
        deliveries.running = [10, 19];
        assert_eq!(channels_view(&deliveries, [10, 20]), "", "the remote channel has a free slot");
        deliveries.running = [10, 20];
        assert_eq!(channels_view(&deliveries, [10, 20]), "remote 20 20 1\n");
    }

    #[test]
    fn flight_lists_places_sorted() {
        let mut deliveries = Deliveries::default();
        let delivery = |id, recipients: Vec<usize>| Delivery {
            id,
            domain: Vec::new(),
            channel: Channel::Remote,
            numbers: vec![0; recipients.len()],
            recipients,
        };
        deliveries.in_flight.insert(5, delivery(30, vec![2, 0]));
        deliveries.in_flight.insert(4, delivery(12, vec![1]));
        assert_eq!(flight_view(&deliveries), "12 1\n30 2 0\n");
    }
}
