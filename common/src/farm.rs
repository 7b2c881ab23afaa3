//! The farm as a monitor sees it: a [`FarmSnapshot`] kept current by applying each
//! [`StatusEvent`]. The master keeps one to hand to monitors that attach; a monitor starts from
//! that snapshot and applies the live events, so both sides run the same code.
//!
//! Applying an event the snapshot already reflects changes nothing. A monitor subscribes to
//! the status socket before it asks for the snapshot, so the first events it reads may be
//! older than the snapshot; it applies them all without duplicating history.

use crate::protocols::{FarmSnapshot, RecentBuild, SlaveEvent, SlaveReply, SlaveSnapshot, StatusEvent};

/// Master statistics kept in a snapshot.
pub const STATS_HISTORY: usize = 100;
/// Host figures kept per slave (monitors show the last).
pub const SLAVE_STATS_HISTORY: usize = 10;
/// Slaves a snapshot holds at most: the slave driver accepts no more, and a snapshot this
/// full still fits in one message to a monitor.
pub const MAX_SLAVES: usize = 1000;
/// Notices kept.
pub const NOTICE_HISTORY: usize = 200;
/// Recorded builds kept, for a monitor that attaches.
pub const BUILD_HISTORY: usize = 100;

impl FarmSnapshot {
    /// Brings the snapshot up to date with one event.
    pub fn apply(&mut self, event: &StatusEvent) {
        match event {
            StatusEvent::Stats(stats) => push_new(&mut self.stats, stats, STATS_HISTORY),
            StatusEvent::Paused(paused) => self.paused = *paused,
            StatusEvent::Task { name, state, .. } => {
                self.tasks.insert(name.clone(), *state);
            }
            StatusEvent::Notice { at, level, text } => push_new(&mut self.notices, &(*at, *level, text.clone()), NOTICE_HISTORY),
            StatusEvent::Slave { slave_id, at, event } => match event {
                SlaveEvent::Hello(hello) => {
                    let known = self.slaves.get(slave_id).is_some_and(|s| s.first_seen == *at && s.hello == *hello);
                    if !known && (self.slaves.len() < MAX_SLAVES || self.slaves.contains_key(slave_id)) {
                        let slave =
                            SlaveSnapshot { hello: hello.clone(), first_seen: *at, last_seen: *at, stats: Vec::new(), last_reply: None, state_since: *at };
                        self.slaves.insert(*slave_id, slave);
                    }
                }
                SlaveEvent::Gone { .. } => {
                    self.slaves.remove(slave_id);
                }
                // Known by its build id: the slave may be gone (and its label with it) when the
                // event is applied again.
                SlaveEvent::Finished(build) if !self.builds.iter().any(|b| b.build.build_id == build.build_id) => {
                    let label = self.slaves.get(slave_id).map(|s| s.hello.host.label.clone()).unwrap_or_default();
                    push_bounded(&mut self.builds, RecentBuild { at: *at, slave_id: *slave_id, label, build: build.clone() }, BUILD_HISTORY);
                }
                SlaveEvent::Finished(_) => {}
                SlaveEvent::Stats(stats) => {
                    if let Some(slave) = self.slaves.get_mut(slave_id) {
                        slave.last_seen = slave.last_seen.max(*at);
                        push_new(&mut slave.stats, stats, SLAVE_STATS_HISTORY);
                    }
                }
                SlaveEvent::Replied(reply) => {
                    if let Some(slave) = self.slaves.get_mut(slave_id) {
                        slave.last_seen = slave.last_seen.max(*at);
                        // `Cont` keeps a build going, a change to the host's builders leaves
                        // this one as it was, and a repeated reply (`Sleep` after every `Idle`)
                        // changes nothing: the state, and when it began, stay.
                        let keeps = matches!(reply, SlaveReply::Cont | SlaveReply::AddBuilder | SlaveReply::RetireBuilder);
                        if !keeps && slave.last_reply.as_ref() != Some(reply) {
                            slave.last_reply = Some(reply.clone());
                            slave.state_since = *at;
                        }
                    }
                }
            },
        }
    }
}

/// Appends `item` unless the list holds it already (an event applied twice), dropping the
/// oldest items beyond `limit`.
fn push_new<T: Clone + PartialEq>(list: &mut Vec<T>, item: &T, limit: usize) {
    if !list.contains(item) {
        push_bounded(list, item.clone(), limit);
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

    fn source(package: &str, version: &str) -> SourceFile {
        let filename = format!("{package}-{version}.tar.gz");
        SourceFile { url: format!("http://index/{filename}"), filename, sha256: "0".repeat(64) }
    }

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
            environment: Default::default(),
        }
    }

    #[test]
    fn slaves_come_and_go() {
        let mut farm = FarmSnapshot::default();
        farm.apply(&StatusEvent::Slave { slave_id: 3, at: at(10), event: SlaveEvent::Hello(hello()) });
        farm.apply(&StatusEvent::Slave { slave_id: 3, at: at(20), event: SlaveEvent::Replied(SlaveReply::Done) });
        let slave = &farm.slaves[&3];
        assert_eq!((slave.first_seen, slave.last_seen, slave.last_reply.clone()), (at(10), at(20), Some(SlaveReply::Done)));
        farm.apply(&StatusEvent::Slave { slave_id: 3, at: at(30), event: SlaveEvent::Gone { reason: "bye".into() } });
        assert!(farm.slaves.is_empty());
        // Events for a slave the snapshot never saw say hello are ignored.
        farm.apply(&StatusEvent::Slave { slave_id: 9, at: at(40), event: SlaveEvent::Stats(HostStats::default()) });
        assert!(farm.slaves.is_empty());
    }

    fn replied(farm: &mut FarmSnapshot, t: i64, reply: SlaveReply) {
        farm.apply(&StatusEvent::Slave { slave_id: 3, at: at(t), event: SlaveEvent::Replied(reply) });
    }

    #[test]
    fn the_state_and_its_start_survive_cont_and_repeated_replies() {
        let mut farm = FarmSnapshot::default();
        farm.apply(&StatusEvent::Slave { slave_id: 3, at: at(10), event: SlaveEvent::Hello(hello()) });
        assert_eq!(farm.slaves[&3].state_since, at(10));
        replied(&mut farm, 20, SlaveReply::Sleep { paused: false });
        replied(&mut farm, 25, SlaveReply::Sleep { paused: false });
        assert_eq!((farm.slaves[&3].state_since, farm.slaves[&3].last_seen), (at(20), at(25)));
        let build = SlaveReply::Build { package: "foo".into(), version: "1.0".into(), source: source("foo", "1.0") };
        replied(&mut farm, 30, build.clone());
        replied(&mut farm, 40, SlaveReply::Cont);
        replied(&mut farm, 50, SlaveReply::Cont);
        replied(&mut farm, 55, SlaveReply::RetireBuilder);
        let slave = &farm.slaves[&3];
        assert_eq!((slave.last_reply.clone(), slave.state_since, slave.last_seen), (Some(build), at(30), at(55)));
        replied(&mut farm, 60, SlaveReply::Sleep { paused: true });
        assert_eq!(farm.slaves[&3].state_since, at(60));
    }

    #[test]
    fn applying_events_again_changes_nothing() {
        let events = [
            StatusEvent::Slave { slave_id: 3, at: at(10), event: SlaveEvent::Hello(hello()) },
            StatusEvent::Slave { slave_id: 3, at: at(11), event: SlaveEvent::Stats(HostStats { at: at(11), ..HostStats::default() }) },
            StatusEvent::Slave { slave_id: 3, at: at(12), event: SlaveEvent::Replied(SlaveReply::Build { package: "foo".into(), version: "1".into(), source: source("foo", "1") }) },
            StatusEvent::Stats(MasterStats { at: at(13), ..MasterStats::default() }),
            StatusEvent::Notice { at: at(14), level: NoticeLevel::Warning, text: "disk low".into() },
            StatusEvent::Slave { slave_id: 3, at: at(15), event: SlaveEvent::Finished(finished("foo", None)) },
        ];
        let mut once = FarmSnapshot::default();
        events.iter().for_each(|e| once.apply(e));
        let mut twice = once.clone();
        events.iter().for_each(|e| twice.apply(e));
        assert_eq!(once, twice);
    }

    #[test]
    fn histories_are_bounded() {
        let mut farm = FarmSnapshot::default();
        for i in 0..(STATS_HISTORY as i64 + 5) {
            farm.apply(&StatusEvent::Stats(MasterStats { at: at(i), ..MasterStats::default() }));
        }
        assert_eq!(farm.stats.len(), STATS_HISTORY);
        assert_eq!(farm.stats[0].at, at(5));
        for i in 0..(BUILD_HISTORY as i64 + 5) {
            let build = FinishedBuild { build_id: i, ..finished("foo", None) };
            farm.apply(&StatusEvent::Slave { slave_id: 3, at: at(i), event: SlaveEvent::Finished(build) });
        }
        assert_eq!(farm.builds.len(), BUILD_HISTORY);
        assert_eq!(farm.builds[0].at, at(5));
    }

    fn finished(package: &str, failure: Option<FailureKind>) -> FinishedBuild {
        FinishedBuild { package: package.into(), version: "1.0".into(), failure, duration: std::time::Duration::from_secs(3), build_id: 7 }
    }

    #[test]
    fn recorded_builds_are_kept_with_their_slave_s_label() {
        let mut farm = FarmSnapshot::default();
        farm.apply(&StatusEvent::Slave { slave_id: 3, at: at(10), event: SlaveEvent::Hello(hello()) });
        farm.apply(&StatusEvent::Slave { slave_id: 3, at: at(20), event: SlaveEvent::Finished(finished("bad", Some(FailureKind::Build))) });
        // The slave leaves; its builds stay in the history.
        farm.apply(&StatusEvent::Slave { slave_id: 3, at: at(30), event: SlaveEvent::Gone { reason: "bye".into() } });
        assert_eq!(farm.builds, [RecentBuild { at: at(20), slave_id: 3, label: hello().host.label, build: finished("bad", Some(FailureKind::Build)) }]);
        // Applied again once the slave is gone (a monitor's first events), it is the same build.
        farm.apply(&StatusEvent::Slave { slave_id: 3, at: at(20), event: SlaveEvent::Finished(finished("bad", Some(FailureKind::Build))) });
        assert_eq!(farm.builds.len(), 1);
    }

    /// The worst a farm of hostile slaves can make of a snapshot (every field as long as the
    /// slave driver lets it be, every history full, more hellos than allowed) still reaches a
    /// monitor in one message.
    #[test]
    fn a_full_snapshot_fits_in_one_message() {
        let mut farm = FarmSnapshot::default();
        let long = "x".repeat(256);
        let host = HostInfo { label: long.clone(), os_name: long.clone(), os_version: long.clone(), board_revision: long.clone(), board_serial: long.clone() };
        let hello = SlaveHello { abi: long.clone(), platform: long.clone(), py_version: long.clone(), host, ..hello() };
        let stats = |t: i64| HostStats { at: at(t), disk_size: u64::MAX, disk_free: u64::MAX, mem_size: u64::MAX, mem_free: u64::MAX, swap_size: u64::MAX, swap_free: u64::MAX, load_average: f64::MAX, cpu_temp: f64::MAX };
        for slave_id in 1..=(MAX_SLAVES as u32 + 50) {
            farm.apply(&StatusEvent::Slave { slave_id, at: at(1), event: SlaveEvent::Hello(hello.clone()) });
            for t in 0..(SLAVE_STATS_HISTORY as i64 + 5) {
                farm.apply(&StatusEvent::Slave { slave_id, at: at(t), event: SlaveEvent::Stats(stats(t)) });
            }
            let reply = SlaveReply::Die { reason: long.repeat(4) };
            farm.apply(&StatusEvent::Slave { slave_id, at: at(2), event: SlaveEvent::Replied(reply) });
        }
        for t in 0..(NOTICE_HISTORY as i64 + 5) {
            farm.apply(&StatusEvent::Notice { at: at(t), level: NoticeLevel::Warning, text: long.repeat(4) });
        }
        // Release names are at most 200 characters each.
        for t in 0..(BUILD_HISTORY as i64 + 5) {
            let build = FinishedBuild { package: "p".repeat(200), version: "v".repeat(200), build_id: t, ..finished("x", Some(FailureKind::Build)) };
            farm.apply(&StatusEvent::Slave { slave_id: 1, at: at(t), event: SlaveEvent::Finished(build) });
        }
        assert_eq!(farm.slaves.len(), MAX_SLAVES);
        let welcome = ControlReply::Welcome { versions: Versions::current(), snapshot: Box::new(farm) };
        let size = crate::codec::encode(&welcome).unwrap().len();
        assert!(size < crate::transport::DEFAULT_MAX_MESSAGE / 2, "a full snapshot takes {size} bytes");
    }

    #[test]
    fn task_states_are_tracked() {
        let mut farm = FarmSnapshot::default();
        farm.apply(&StatusEvent::Task { name: "big_brother".into(), at: at(1), state: TaskState::Paused });
        assert_eq!(farm.tasks["big_brother"], TaskState::Paused);
    }
}
