//! The farm as a monitor sees it: a [`FarmSnapshot`] kept current by applying each
//! [`StatusEvent`]. The master keeps one to hand to monitors that attach; a monitor starts from
//! that snapshot and applies the live events, so both sides run the same code.

use crate::protocols::{FarmSnapshot, SlaveEvent, SlaveSnapshot, StatusEvent};

/// Master statistics kept in a snapshot.
pub const STATS_HISTORY: usize = 100;
/// Host figures kept per slave.
pub const SLAVE_STATS_HISTORY: usize = 100;
/// Notices kept.
pub const NOTICE_HISTORY: usize = 200;

impl FarmSnapshot {
    /// Brings the snapshot up to date with one event.
    pub fn apply(&mut self, event: &StatusEvent) {
        match event {
            StatusEvent::Stats(stats) => push_bounded(&mut self.stats, stats.clone(), STATS_HISTORY),
            StatusEvent::Paused(paused) => self.paused = *paused,
            StatusEvent::Task { name, state, .. } => {
                self.tasks.insert(name.clone(), *state);
            }
            StatusEvent::Notice { at, level, text } => push_bounded(&mut self.notices, (*at, *level, text.clone()), NOTICE_HISTORY),
            StatusEvent::Slave { slave_id, at, event } => match event {
                SlaveEvent::Hello(hello) => {
                    self.slaves.insert(
                        *slave_id,
                        SlaveSnapshot { hello: hello.clone(), first_seen: *at, last_seen: *at, stats: Vec::new(), last_reply: None },
                    );
                }
                SlaveEvent::Gone { .. } => {
                    self.slaves.remove(slave_id);
                }
                SlaveEvent::Stats(stats) => {
                    if let Some(slave) = self.slaves.get_mut(slave_id) {
                        slave.last_seen = *at;
                        push_bounded(&mut slave.stats, stats.clone(), SLAVE_STATS_HISTORY);
                    }
                }
                SlaveEvent::Replied(reply) => {
                    if let Some(slave) = self.slaves.get_mut(slave_id) {
                        slave.last_seen = *at;
                        slave.last_reply = Some(reply.clone());
                    }
                }
            },
        }
    }
}

fn push_bounded<T>(list: &mut Vec<T>, item: T, limit: usize) {
    if list.len() >= limit {
        list.drain(..=list.len() - limit);
    }
    list.push(item);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::*;

    fn at(s: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(s, 0).unwrap()
    }

    fn hello() -> SlaveHello {
        SlaveHello {
            versions: Versions::current(),
            build_timeout: std::time::Duration::from_secs(3 * 3600),
            busy_timeout: std::time::Duration::from_secs(300),
            py_version: "311".into(),
            abi: "cp311".into(),
            platform: "linux_armv7l".into(),
            memory_limit: 0,
            host: HostInfo::default(),
        }
    }

    #[test]
    fn slaves_come_and_go() {
        let mut farm = FarmSnapshot::default();
        farm.apply(&StatusEvent::Slave { slave_id: 3, at: at(10), event: SlaveEvent::Hello(hello()) });
        farm.apply(&StatusEvent::Slave { slave_id: 3, at: at(20), event: SlaveEvent::Replied(SlaveReply::Cont) });
        let slave = &farm.slaves[&3];
        assert_eq!((slave.first_seen, slave.last_seen, slave.last_reply.clone()), (at(10), at(20), Some(SlaveReply::Cont)));
        farm.apply(&StatusEvent::Slave { slave_id: 3, at: at(30), event: SlaveEvent::Gone { reason: "bye".into() } });
        assert!(farm.slaves.is_empty());
        // Events for a slave the snapshot never saw say hello are ignored.
        farm.apply(&StatusEvent::Slave { slave_id: 9, at: at(40), event: SlaveEvent::Stats(HostStats::default()) });
        assert!(farm.slaves.is_empty());
    }

    #[test]
    fn histories_are_bounded() {
        let mut farm = FarmSnapshot::default();
        for i in 0..(STATS_HISTORY as i64 + 5) {
            farm.apply(&StatusEvent::Stats(MasterStats { at: at(i), ..MasterStats::default() }));
        }
        assert_eq!(farm.stats.len(), STATS_HISTORY);
        assert_eq!(farm.stats[0].at, at(5));
    }

    #[test]
    fn task_states_are_tracked() {
        let mut farm = FarmSnapshot::default();
        farm.apply(&StatusEvent::Task { name: "big_brother".into(), at: at(1), state: TaskState::Paused });
        assert_eq!(farm.tasks["big_brother"], TaskState::Paused);
    }
}
