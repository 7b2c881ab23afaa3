//! The PyPI follower against the fake PyPI and a real database through the oracle pool: every
//! kind of event applied, the serial stored and resumed from, and PyPI's failures survived.

mod support;

use std::time::Duration;

use piwheels_common::protocols::TaskControl;
use piwheels_master::calls::db::RewriteScope;
use piwheels_master::calls::tasks::{ArchitectTrigger, ReleaseAck, ReleaseNotice, WebReply, WebRequest};
use piwheels_common::transport::Receiver;
use piwheels_common::task::{self, TaskExit, TaskHandle};
use piwheels_master::cloud_gazer::{self, CloudGazer, FollowerConfig};
use piwheels_master::wiring;
use piwheels_testsupport::pypi::{Failure, FakePypi};
use support::{Pool, eventually, stand_in};

const WAIT: Duration = Duration::from_secs(10);

fn follower(pool: &Pool, pypi: &FakePypi, name: &str) -> TaskHandle {
    let config = FollowerConfig {
        xmlrpc_url: pypi.xmlrpc_url(),
        json_url: Some(pypi.json_url()),
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        skip_new: String::new(),
    };
    task::spawn(&pool.rt, name, |ctx| cloud_gazer::Sockets::open(ctx, Duration::from_secs(10)), move |sockets| CloudGazer::start(sockets, &config))
        .unwrap()
}

fn stop(mut task: TaskHandle) {
    task.control(TaskControl::Quit).unwrap();
    assert_eq!(task.join(WAIT), Some(TaskExit::Quit));
}

/// `package version skip yanked` for every version, sorted.
fn versions(pool: &Pool) -> Vec<String> {
    pool.db
        .column("SELECT package || ' ' || version || ' [' || skip || '] ' || yanked::text FROM versions ORDER BY 1")
        .into_iter()
        .flatten()
        .collect()
}

fn serial(pool: &Pool) -> i64 {
    pool.db.column("SELECT pypi_serial::text FROM configuration")[0].as_deref().unwrap().parse().unwrap()
}

#[test]
fn every_kind_of_event_reaches_the_database_and_the_serial_is_stored() {
    let pool = Pool::start(2);
    let pypi = FakePypi::start();
    pypi.create_package("Foo_Bar", Some("a foo"));
    pypi.add_source("Foo_Bar", "1.0", b"sdist".to_vec());
    pypi.add_binary("Foo_Bar", "2.0", "foo_bar-2.0-cp311-cp311-linux_armv7l.whl");
    let last = pypi.yank("Foo_Bar", "1.0");
    let web_log = stand_in::<WebRequest, WebReply>(&pool.rt.zmq, "inproc://web", WebReply::Done);
    let deletes = stand_in::<ReleaseNotice, ReleaseAck>(&pool.rt.zmq, "inproc://release-notices", ReleaseAck::Done);
    let architect = Receiver::<ArchitectTrigger>::pull(&pool.rt.zmq, wiring::ARCHITECT.address(), None).unwrap();
    let gazer = follower(&pool, &pypi, "gazer_events");
    eventually("the first batch", WAIT, || serial(&pool) == last);
    // The architect is told that the queue may have changed.
    match architect.recv_timeout(WAIT).unwrap() {
        Some(ArchitectTrigger::Refresh { reason }) => assert!(reason.contains(&last.to_string()), "{reason}"),
        None => panic!("the architect was not told"),
    }
    assert_eq!(versions(&pool), ["foo-bar 1.0 [] true", "foo-bar 2.0 [binary only] false"]);
    // The summary comes after the releases, which it never holds back.
    eventually("the summary", WAIT, || pool.db.column("SELECT description FROM packages") == [Some("a foo".into())]);
    assert!(pool.db.column("SELECT name FROM package_names").contains(&Some("Foo_Bar".into())));

    // A source file for the binary-only release makes it buildable; an unyank clears the yank.
    pypi.add_source("Foo_Bar", "2.0", b"sdist".to_vec());
    let last = pypi.unyank("Foo_Bar", "1.0");
    eventually("the second batch", WAIT, || serial(&pool) == last);
    assert_eq!(versions(&pool), ["foo-bar 1.0 [] false", "foo-bar 2.0 [] false"]);

    // Removals: a release, then the project.
    let last = pypi.remove_version("Foo_Bar", "1.0");
    eventually("the release removal", WAIT, || serial(&pool) == last);
    assert_eq!(versions(&pool), ["foo-bar 2.0 [] false"]);
    let last = pypi.remove_package("Foo_Bar");
    eventually("the project removal", WAIT, || serial(&pool) == last);
    assert!(pool.db.column("SELECT package FROM packages").is_empty());
    // The slave driver heard of both removals, and the index writer was asked to remove the
    // files and pages, and before that to rewrite the pages once per batch: new releases and
    // a yank (the simple page too), then a release made buildable and an unyank.
    let (release, project) = (
        ReleaseNotice::Version { package: "foo-bar".into(), version: "1.0".into() },
        ReleaseNotice::Package { package: "foo-bar".into() },
    );
    assert_eq!(*deletes.lock().unwrap(), [release, project]);
    let web = web_log.lock().unwrap().clone();
    let rewrite = |package: &str, scope| WebRequest::Rewrite { package: package.into(), scope };
    let rewrites: Vec<&WebRequest> = web.iter().take_while(|r| matches!(r, WebRequest::Rewrite { .. })).collect();
    assert_eq!(rewrites.first(), Some(&&rewrite("foo-bar", RewriteScope::Both)), "{web:?}");
    assert!(rewrites[1..].contains(&&rewrite("foo-bar", RewriteScope::Both)), "the unyank's rewrite: {web:?}");
    assert!(rewrites.iter().all(|r| matches!(r, WebRequest::Rewrite { package, .. } if package == "foo-bar")), "{web:?}");
    let rest = &web[rewrites.len()..];
    assert!(matches!(rest.first(), Some(WebRequest::DeleteVersion { version, .. }) if version == "1.0"), "{web:?}");
    assert!(matches!(rest.last(), Some(WebRequest::DeletePackage { package, .. }) if package == "foo-bar"), "{web:?}");

    // A rename arrives as the old project's removal and the new one's creation.
    pypi.create_package("Old", None);
    pypi.add_source("Old", "1.0", b"sdist".to_vec());
    let last = pypi.rename("Old", "New");
    eventually("the rename", WAIT, || serial(&pool) == last);
    assert_eq!(pool.db.column("SELECT package FROM packages"), [Some("new".into())]);
    assert!(deletes.lock().unwrap().contains(&ReleaseNotice::Package { package: "old".into() }));
    // A new release alone asks for the project page only.
    assert!(web_log.lock().unwrap().contains(&rewrite("old", RewriteScope::Project)), "{:?}", web_log.lock().unwrap());
    stop(gazer);
}

#[test]
fn pypi_failures_are_waited_out_and_nothing_is_lost() {
    let pool = Pool::start(1);
    let pypi = FakePypi::start();
    pypi.fail_next(3, Failure::Status(500));
    let gazer = follower(&pool, &pypi, "gazer_failures");
    let last = pypi.create_package("patient", None);
    pypi.fail_next(2, Failure::Garbage);
    pypi.fail_next(1, Failure::Fault(-32500));
    eventually("the event after the failures", Duration::from_secs(20), || serial(&pool) == last);
    assert_eq!(pool.db.column("SELECT package FROM packages"), [Some("patient".into())]);
    assert!(!gazer.is_finished(), "the follower stopped");
    assert_eq!(gazer.errors(), 0, "PyPI's failures are not handler errors");
    stop(gazer);
}

#[test]
fn a_batch_the_database_refused_is_applied_whole_when_it_is_read_again() {
    let pool = Pool::start(1);
    let pypi = FakePypi::start();
    // The database refuses new versions for a while, so the batch's run fails whole.
    pool.db.execute(
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER refuse BEFORE INSERT ON versions FOR EACH ROW EXECUTE FUNCTION refuse()",
    );
    // The index writer and the architect, which hear of the new version.
    let _web = stand_in::<WebRequest, WebReply>(&pool.rt.zmq, "inproc://web", WebReply::Done);
    let _architect = Receiver::<ArchitectTrigger>::pull(&pool.rt.zmq, wiring::ARCHITECT.address(), None).unwrap();
    let gazer = follower(&pool, &pypi, "gazer_refused");
    pypi.create_package("refused", None);
    let last = pypi.add_source("refused", "1.0", b"source".to_vec());
    eventually("the follower to fail on the version", WAIT, || gazer.errors() >= 1);
    assert_eq!(serial(&pool), 0, "a serial stored for a batch that was not applied");
    pool.db.execute("DROP TRIGGER refuse ON versions");
    // The batch read again is applied whole: the upload it saw before is not taken as seen.
    eventually("the batch applied", WAIT, || serial(&pool) == last);
    assert_eq!(versions(&pool), ["refused 1.0 [] false"]);
    stop(gazer);
}

#[test]
fn a_restarted_follower_goes_on_from_the_stored_serial() {
    let pool = Pool::start(1);
    let pypi = FakePypi::start();
    let first = pypi.create_package("early", None);
    let gazer = follower(&pool, &pypi, "gazer_first");
    eventually("the first event", WAIT, || serial(&pool) == first);
    stop(gazer);
    let last = pypi.create_package("late", None);
    let gazer = follower(&pool, &pypi, "gazer_second");
    eventually("the later event", WAIT, || serial(&pool) == last);
    let asked: Vec<String> = pypi.xmlrpc_calls().iter().map(|c| format!("{c:?}")).collect();
    assert!(asked.iter().any(|c| c.contains(&first.to_string())), "the restart did not ask from serial {first}: {asked:?}");
    stop(gazer);
}

#[test]
fn a_name_too_long_to_keep_is_passed_over_and_the_rest_of_its_batch_applied() {
    let pool = Pool::start(1);
    let pypi = FakePypi::start();
    let _web = stand_in::<WebRequest, WebReply>(&pool.rt.zmq, "inproc://web", WebReply::Done);
    let _architect = Receiver::<ArchitectTrigger>::pull(&pool.rt.zmq, wiring::ARCHITECT.address(), None).unwrap();
    // Its canonical form (`long-name`) fits; the spelling, kept with it, does not.
    pypi.create_package(&format!("long{}name", "_".repeat(250)), None);
    let last = pypi.create_package("after", None);
    let gazer = follower(&pool, &pypi, "gazer_long_name");
    eventually("the batch applied", WAIT, || serial(&pool) == last);
    assert_eq!(pool.db.column("SELECT package FROM packages"), [Some("after".into())]);
    assert_eq!(gazer.errors(), 0);
    stop(gazer);
}
