//! Dispatch: a message's channels made due, their waiting recipients made into jobs (one per
//! local recipient, one per remote domain of at most [`MAX_REMOTE_RECIPIENTS`]), and the jobs
//! sent to the spawners as the concurrency limits allow.
#![forbid(unsafe_code)]

use crate::base::log;
use crate::mail::proto::info::Progress;
use crate::mail::proto::spawn::Request;
use crate::send::destinations::Admission;
use crate::send::message::{Delivery, Job, Phase};
use crate::send::sendconf::Channel;
use crate::send::sendloop::{Sender, MAX_REMOTE_RECIPIENTS};
use std::collections::{HashMap, VecDeque};

/// How many ready remote jobs [`Sender::backlog`] looks at.
const BACKLOG_LOOKAHEAD: usize = 32;

/// The jobs waiting for a free slot and the deliveries in flight, per channel.
pub struct Deliveries {
    /// Jobs ready to go, per channel (index: `Channel as usize`).
    pub(super) ready: [VecDeque<Job>; 2],
    /// Deliveries in flight by the spawner's slot number.
    pub(super) in_flight: HashMap<u32, Delivery>,
    /// Deliveries in flight per channel.
    pub(super) running: [usize; 2],
    /// The number of the next delivery in the log (`starting delivery N`).
    pub(super) next: u64,
}

impl Default for Deliveries {
    fn default() -> Deliveries {
        Deliveries { ready: Default::default(), in_flight: HashMap::new(), running: [0, 0], next: 1 }
    }
}

impl Deliveries {
    /// A slot number no delivery in flight has: the delivery number's low bits, or the next
    /// free one.
    pub(super) fn free_slot(&self) -> u32 {
        let mut slot = self.next as u32;
        while self.in_flight.contains_key(&slot) {
            slot = slot.wrapping_add(1);
        }
        slot
    }

    /// The next delivery number for the log, counted from 1.
    pub(super) fn number(&mut self) -> u64 {
        let number = self.next;
        self.next += 1;
        number
    }
}

/// The remote jobs for a message's picked recipients: one per domain (as normalized), at most
/// [`MAX_REMOTE_RECIPIENTS`] recipients each, in the order the recipients come.
pub(super) fn remote_jobs(id: u64, picked: &[(usize, &[u8])]) -> Vec<Job> {
    let mut domains: Vec<(Vec<u8>, Vec<usize>)> = Vec::new();
    for &(i, address) in picked {
        let domain = crate::mail::address::normal_domain(crate::mail::address::split(address).1);
        match domains.iter_mut().find(|(d, list)| *d == domain && list.len() < MAX_REMOTE_RECIPIENTS) {
            Some((_, list)) => list.push(i),
            None => domains.push((domain, vec![i])),
        }
    }
    domains.into_iter().map(|(domain, recipients)| Job { id, recipients, domain }).collect()
}

impl Sender {
    /// Plan a message's next attempts: each channel with waiting recipients is due now (or
    /// when the info file said). A message with nothing left goes straight to its end.
    pub(super) fn activate(&mut self, id: u64) {
        let now = crate::base::date::now();
        let remote_running = self.rspawn.is_some();
        let Some(m) = self.messages.get_mut(&id) else { return };
        m.phase = Phase::Active;
        if m.done() {
            self.finish(id);
            return;
        }
        for channel in Channel::ALL {
            if !m.waiting(channel) {
                continue;
            }
            if channel == Channel::Remote && !remote_running {
                let n = m.recipients.iter().filter(|r| r.channel == channel && r.progress == Progress::Waiting).count();
                log::raw(&format!("msg {id}: keeping {n} remote recipients: remote channel is not running"));
                continue;
            }
            let at = m.due[channel as usize].unwrap_or(now);
            m.due[channel as usize] = Some(at);
            self.timers.push(at, (id, channel as usize));
        }
    }

    /// A channel of a message came due: queue its waiting recipients for delivery.
    pub(super) fn channel_due(&mut self, id: u64, channel: Channel) {
        let Some(m) = self.messages.get_mut(&id) else { return };
        if m.phase != Phase::Active {
            return;
        }
        let mut picked = Vec::new();
        for (i, r) in m.recipients.iter_mut().enumerate() {
            if r.channel == channel && r.progress == Progress::Waiting && !r.busy {
                r.busy = true;
                picked.push(i);
            }
        }
        m.busy[channel as usize] += picked.len();
        match channel {
            Channel::Local => {
                for i in picked {
                    let key = m.recipients[i].address.to_ascii_lowercase();
                    self.deliveries.ready[0].push_back(Job { id, recipients: vec![i], domain: key });
                }
            }
            Channel::Remote => {
                let picked: Vec<(usize, &[u8])> = picked.iter().map(|&i| (i, &m.recipients[i].address[..])).collect();
                self.deliveries.ready[1].extend(remote_jobs(id, &picked));
            }
        }
    }

    /// Start deliveries on a channel while it has free slots.
    pub(super) fn dispatch(&mut self, channel: Channel) {
        let c = channel as usize;
        while self.deliveries.running[c] < self.config.concurrency(channel) {
            if channel == Channel::Remote && self.rspawn.is_none() {
                return;
            }
            let Some(job) = self.deliveries.ready[c].pop_front() else { return };
            match self.messages.get(&job.id).map(|m| m.pending.is_some()) {
                None => continue,
                Some(true) => {
                    self.unqueue(job);
                    continue;
                }
                Some(false) => {}
            }
            let now = crate::base::date::now();
            let job = if channel == Channel::Remote {
                match self.defer_unattempted(job, now) {
                    Some(job) => job,
                    None => continue,
                }
            } else {
                job
            };
            // A remote destination that is backed off or busy, or a local recipient at its
            // concurrency limit, keeps the job until it may go; the next job goes instead.
            let table = match channel {
                Channel::Remote => &mut self.destinations,
                Channel::Local => &mut self.local_recipients,
            };
            let key = job.domain.clone();
            let job = match table.admit(&key, job, now) {
                (Admission::Go, Some(job)) => job,
                _ => continue,
            };
            let Some(m) = self.messages.get_mut(&job.id) else { continue };
            let retry = job.recipients.iter().any(|&i| m.recipients[i].tried);
            for &i in &job.recipients {
                m.recipients[i].tried = true;
            }
            let backlog = channel == Channel::Remote && self.backlog(&job.domain);
            let Some(m) = self.messages.get(&job.id) else { continue };
            let slot = self.deliveries.free_slot();
            let request = Request {
                slot,
                id: job.id.to_string().into_bytes(),
                sender: m.sender.clone(),
                recipients: job.recipients.iter().map(|&i| m.recipients[i].address.clone()).collect(),
                retry,
                backlog,
            };
            let spawner = match channel {
                Channel::Local => &mut self.lspawn,
                Channel::Remote => match self.rspawn.as_mut() {
                    Some(s) => s,
                    None => return,
                },
            };
            spawner.requests.queue(&request.encode());
            let mut numbers = Vec::with_capacity(job.recipients.len());
            for &i in &job.recipients {
                let number = self.deliveries.number();
                numbers.push(number);
                log::raw(&format!(
                    "starting delivery {number}: msg {} to {} {}",
                    job.id,
                    channel.name(),
                    log::safe(&m.recipients[i].address)
                ));
            }
            self.deliveries.in_flight.insert(
                slot,
                Delivery { id: job.id, domain: job.domain, channel, recipients: job.recipients, numbers },
            );
            self.deliveries.running[c] += 1;
            self.status();
        }
    }

    /// More mail for `domain` waits behind this job: parked at the destination's limit, or
    /// among the next jobs ready to go. Only the first [`BACKLOG_LOOKAHEAD`] ready jobs are
    /// looked at, so that a long ready queue costs nothing per dispatch; a backlog further back
    /// only means its connection is not kept (a new one is made, as without reuse).
    fn backlog(&self, domain: &[u8]) -> bool {
        self.destinations.parked(domain) > 0
            || self.deliveries.ready[1].iter().take(BACKLOG_LOOKAHEAD).any(|j| j.domain == domain)
    }

    /// A job that will not be delivered after all: its recipients are free again.
    pub(super) fn unqueue(&mut self, job: Job) {
        let id = job.id;
        if let Some(m) = self.messages.get_mut(&id) {
            for &i in &job.recipients {
                if m.recipients[i].busy {
                    m.recipients[i].busy = false;
                    let c = m.recipients[i].channel as usize;
                    m.busy[c] = m.busy[c].saturating_sub(1);
                }
            }
        }
        self.apply_when_idle(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_jobs_by_domain_in_order() {
        let addresses: Vec<Vec<u8>> = vec![
            b"a@one.example".to_vec(),
            b"b@two.example".to_vec(),
            b"c@ONE.example".to_vec(),
            b"d@two.example.".to_vec(),
        ];
        let picked: Vec<(usize, &[u8])> = addresses.iter().enumerate().map(|(i, a)| (i, &a[..])).collect();
        let jobs = remote_jobs(7, &picked);
        let shape: Vec<(&[u8], Vec<usize>)> = jobs.iter().map(|j| (&j.domain[..], j.recipients.clone())).collect();
        assert_eq!(shape, vec![(&b"one.example"[..], vec![0, 2]), (&b"two.example"[..], vec![1, 3])]);
        assert!(jobs.iter().all(|j| j.id == 7));
    }

    #[test]
    fn remote_jobs_carry_at_most_the_transaction_limit() {
        let addresses: Vec<Vec<u8>> =
            (0..MAX_REMOTE_RECIPIENTS * 2 + 1).map(|i| format!("u{i}@big.example").into_bytes()).collect();
        let picked: Vec<(usize, &[u8])> = addresses.iter().enumerate().map(|(i, a)| (i, &a[..])).collect();
        let sizes: Vec<usize> = remote_jobs(1, &picked).iter().map(|j| j.recipients.len()).collect();
        assert_eq!(sizes, vec![MAX_REMOTE_RECIPIENTS, MAX_REMOTE_RECIPIENTS, 1]);
    }

    #[test]
    fn slots_and_numbers() {
        let mut deliveries = Deliveries::default();
        assert_eq!(deliveries.free_slot(), 1);
        let delivery =
            |id| Delivery { id, domain: Vec::new(), channel: Channel::Local, recipients: vec![0], numbers: vec![1] };
        deliveries.in_flight.insert(1, delivery(10));
        deliveries.in_flight.insert(2, delivery(11));
        assert_eq!(deliveries.free_slot(), 3, "a slot in use is skipped");
        assert_eq!(deliveries.number(), 1);
        assert_eq!(deliveries.number(), 2);
    }
}
