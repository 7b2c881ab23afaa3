//! TheArchitect with the oracle pool and a real database: the queue at start-up, a debounced
//! refresh after triggers, and the queue reaching the slave driver's socket.

mod support;

use std::time::Duration;

use piwheels_common::protocols::{PackageVersion, TaskControl};
use piwheels_master::calls::tasks::{ArchitectTrigger, BuildQueueUpdate};
use piwheels_common::task::{self, TaskExit};
use piwheels_common::transport::{Receiver, Sender};
use piwheels_master::architect::{self, Architect, QueueConfig};
use piwheels_master::wiring;
use piwheels_testsupport::data::{insert_pinned_version, source_file};
use support::Pool;

#[test]
fn the_queue_is_sent_at_start_and_again_shortly_after_triggers() {
    let pool = Pool::start(2);
    pool.db.execute("INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp311', 311), ('cp39', 309)");
    // The slave driver's end.
    let builds = Receiver::<BuildQueueUpdate>::pull(&pool.rt.zmq, wiring::BUILDS.address(), None).unwrap();
    let config = QueueConfig { interval: Duration::from_secs(3600), debounce: Duration::from_millis(200), limit: 10 };
    let mut architect = task::spawn(&pool.rt, "architect", architect::Sockets::open, move |_| Ok(Architect::new(config))).unwrap();

    let first = builds.recv_timeout(Duration::from_secs(10)).unwrap().expect("a queue at start-up");
    assert_eq!(first.queues.keys().cloned().collect::<Vec<_>>(), ["cp311", "cp39"]);
    assert!(first.queues.values().all(Vec::is_empty));

    pool.db.execute(&format!("INSERT INTO packages (package) VALUES ('foo'); {}", insert_pinned_version("foo", "1.0")));
    let triggers = Sender::<ArchitectTrigger>::push(&pool.rt.zmq, wiring::ARCHITECT.address()).unwrap();
    for n in 0..5 {
        triggers.send(&ArchitectTrigger::Refresh { reason: format!("test {n}") }, Duration::from_secs(1)).unwrap();
    }
    let update = builds.recv_timeout(Duration::from_secs(10)).unwrap().expect("a queue after the triggers");
    let queued: Vec<&PackageVersion> = update.queues["cp39"].iter().map(|b| &b.release).collect();
    assert_eq!(queued, [&PackageVersion { package: "foo".into(), version: "1.0".into() }]);
    assert_eq!(update.queues["cp39"][0].source, source_file("foo", "1.0"));
    assert!(update.queues["cp311"].is_empty());
    // That the five triggers fold into one refresh is the timers' scheduling, tested in
    // common's task module with a clock of its own.

    architect.control(TaskControl::Quit).unwrap();
    assert_eq!(architect.join(Duration::from_secs(10)), Some(TaskExit::Quit));
}
