//! The source pinner against the fake PyPI's simple index and a real database through the
//! oracle pool: releases pinned to the file and hash the index publishes, releases without a
//! source or whose page failed left for later without holding up others, an index that is
//! down waited for, and the architect told; a pinned release dated by its source's upload time
//! and its project page rewritten.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use piwheels_common::protocols::TaskControl;
use piwheels_common::task::{self, TaskExit, TaskHandle};
use piwheels_common::transport::Receiver;
use piwheels_master::calls::db::{NewPackage, NewVersion, RewriteScope};
use piwheels_master::calls::tasks::{ArchitectTrigger, WebReply, WebRequest};
use piwheels_master::source_pinner::{self, PinnerConfig, SourcePinner};
use piwheels_master::wiring;
use piwheels_testsupport::pypi::{DEFAULT_TIME_BASE, Failure, FakePypi};
use support::{Pool, eventually, stand_in};

const WAIT: Duration = Duration::from_secs(20);

/// A pinner, with a stand-in for the index writer that notes the rewrites asked of it.
fn pinner(pool: &Pool, index_url: String, name: &str) -> (TaskHandle, Arc<Mutex<Vec<WebRequest>>>) {
    let web = stand_in::<WebRequest, WebReply>(&pool.rt.zmq, wiring::WEB.address(), WebReply::Done);
    let config = PinnerConfig { index_url, interval: Duration::from_millis(100), timeout: Duration::from_secs(2) };
    let task = task::spawn(&pool.rt, name, |ctx| source_pinner::Sockets::open(ctx, WAIT), move |_| SourcePinner::new(&config)).unwrap();
    (task, web)
}

fn stop(mut task: TaskHandle) {
    task.control(TaskControl::Quit).unwrap();
    assert_eq!(task.join(WAIT), Some(TaskExit::Quit));
}

/// A release in the database, as the follower or piw-add registers it.
fn register(pool: &Pool, package: &str, version: &str) {
    let db = pool.client(WAIT);
    db.call(NewPackage { package: package.into(), skip: String::new(), description: String::new() }).unwrap();
    assert!(db.call(NewVersion { package: package.into(), version: version.into(), released: None, skip: String::new() }).unwrap());
}

/// `version filename url sha256` of every pinned release of `package`.
fn pins(pool: &Pool, package: &str) -> Vec<String> {
    pool.db
        .column(&format!(
            "SELECT version || ' ' || source_filename || ' ' || source_url || ' ' || source_sha256 FROM versions
             WHERE package = '{package}' AND source_sha256 IS NOT NULL ORDER BY version"
        ))
        .into_iter()
        .flatten()
        .collect()
}

/// Whether the release waits for a retry: the pinner looked for its source and will again.
fn checked(pool: &Pool, package: &str, version: &str) -> bool {
    pool.db.column(&format!("SELECT source_retry_at::text FROM versions WHERE package = '{package}' AND version = '{version}'"))[0].is_some()
}

#[test]
fn releases_are_pinned_to_the_source_the_index_publishes_and_the_architect_is_told() {
    let pool = Pool::start(2);
    let pypi = FakePypi::start();
    pypi.create_package("Foo_Bar", None);
    pypi.add_source("Foo_Bar", "1.0", b"the source of 1.0".to_vec());
    pypi.add_binary("Foo_Bar", "2.0", "foo_bar-2.0-py3-none-any.whl");
    register(&pool, "foo-bar", "1.0");
    register(&pool, "foo-bar", "2.0");
    let architect = Receiver::<ArchitectTrigger>::pull(&pool.rt.zmq, wiring::ARCHITECT.address(), None).unwrap();
    let (task, web) = pinner(&pool, pypi.simple_url(), "pinner_pins");

    let published = pypi.source_file("Foo_Bar", "1.0");
    eventually("foo-bar 1.0 pinned", WAIT, || !pins(&pool, "foo-bar").is_empty());
    assert_eq!(pins(&pool, "foo-bar"), [format!("1.0 Foo_Bar-1.0.tar.gz {} {}", published.url, published.sha256)]);
    match architect.recv_timeout(WAIT).unwrap() {
        Some(ArchitectTrigger::Refresh { reason }) => assert!(reason.contains("1 sources pinned"), "{reason}"),
        None => panic!("the architect was not told"),
    }
    // Dated by the source's upload (the fake index's clock: its base plus the upload's
    // serial, 2), not by when it was registered; its project page is rewritten for that.
    let released = pool.db.column("SELECT extract(epoch FROM released)::bigint::text FROM versions WHERE version = '1.0'");
    assert_eq!(released, [Some((DEFAULT_TIME_BASE + 2).to_string())]);
    eventually("the project page rewritten", WAIT, || {
        web.lock().unwrap().iter().any(|r| matches!(r, WebRequest::Recorded { package, scope: RewriteScope::Project } if package == "foo-bar"))
    });
    // Recorded by the pin itself, so that a crash before the page is written loses nothing.
    assert_eq!(pool.db.column("SELECT scope FROM rewrites_pending WHERE package = 'foo-bar'"), [Some("project".to_string())]);
    // 2.0 has only a wheel: looked for, not pinned, and left for the recheck.
    eventually("foo-bar 2.0 looked for", WAIT, || checked(&pool, "foo-bar", "2.0"));
    assert_eq!(pins(&pool, "foo-bar").len(), 1);

    // A release registered later is pinned at a later round.
    pypi.create_package("other", None);
    pypi.add_source("other", "0.1", b"other".to_vec());
    register(&pool, "other", "0.1");
    eventually("other 0.1 pinned", WAIT, || !pins(&pool, "other").is_empty());
    stop(task);
}

#[test]
fn an_index_that_is_down_is_waited_for_and_a_page_that_fails_alone_holds_up_nothing() {
    let pool = Pool::start(2);
    let pypi = FakePypi::start();
    for package in ["foo", "bar", "baz"] {
        pypi.create_package(package, None);
        pypi.add_source(package, "1.0", format!("the source of {package}").into_bytes());
    }
    // The index is down for the first two rounds: foo keeps its place (a release noted as
    // looked for waits a minute or more, past this test) and is pinned once the index is back.
    register(&pool, "foo", "1.0");
    pypi.fail_next_on("/simple/", 2, Failure::Status(503));
    let (task, _web) = pinner(&pool, pypi.simple_url(), "pinner_down");
    eventually("foo 1.0 pinned once the index is back", WAIT, || !pins(&pool, "foo").is_empty());
    assert!(pypi.requests("/simple/foo/") >= 3, "{} requests", pypi.requests("/simple/foo/"));

    // bar's page fails while baz's does not: bar is noted as looked for and waits its turn,
    // so it cannot hold baz or anything else up.
    pypi.fail_next_on("/simple/bar/", 1, Failure::Status(503));
    // Both in one transaction, so that one round asks for both.
    pool.db.execute(
        "INSERT INTO packages (package) VALUES ('bar'), ('baz');
         INSERT INTO versions (package, version) VALUES ('bar', '1.0'), ('baz', '1.0')",
    );
    eventually("baz 1.0 pinned", WAIT, || !pins(&pool, "baz").is_empty());
    eventually("bar 1.0 noted as looked for", WAIT, || checked(&pool, "bar", "1.0"));
    assert_eq!(pins(&pool, "bar"), Vec::<String>::new());
    // Once its retry is due, it is pinned.
    pool.db.execute("UPDATE versions SET source_retry_at = now() WHERE package = 'bar'");
    eventually("bar 1.0 pinned at its recheck", WAIT, || !pins(&pool, "bar").is_empty());
    stop(task);
}

#[test]
fn an_index_without_json_pages_pins_nothing() {
    let pool = Pool::start(2);
    let pypi = FakePypi::start();
    pypi.create_package("foo", None);
    pypi.add_source("foo", "1.0", b"source".to_vec());
    pypi.serve_json_pages(false);
    register(&pool, "foo", "1.0");
    let (task, _web) = pinner(&pool, pypi.simple_url(), "pinner_html");
    // The HTML page cannot pin: the release is noted as looked for, and not pinned.
    eventually("foo 1.0 looked for", WAIT, || checked(&pool, "foo", "1.0"));
    stop(task);
    assert_eq!(pins(&pool, "foo"), Vec::<String>::new());
}
