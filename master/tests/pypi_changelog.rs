//! The changelog client against the fake PyPI over real HTTP: the rows PyPI sends (with nil
//! versions), and every kind of failure turned into an error instead of a crash.

use std::time::Duration;

use piwheels_master::pypi::events::{Dedup, EventKind};
use piwheels_master::pypi::xmlrpc::{ChangelogClient, PypiError};
use piwheels_testsupport::pypi::{Failure, FakePypi};

fn client(pypi: &FakePypi, timeout: Duration) -> ChangelogClient {
    ChangelogClient::new(&pypi.xmlrpc_url(), timeout).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn the_changelog_arrives_in_serial_order_with_nil_versions() {
    let pypi = FakePypi::start();
    let created = pypi.create_package("Foo_Bar", Some("a foo"));
    pypi.add_binary("Foo_Bar", "1.0", "foo_bar-1.0-cp311-cp311-linux_armv7l.whl");
    pypi.add_source("Foo_Bar", "1.0", b"not really a tarball".to_vec());
    pypi.yank("Foo_Bar", "1.0");
    let removed = pypi.remove_package("Foo_Bar");
    let rt = runtime();
    let client = client(&pypi, Duration::from_secs(5));
    assert_eq!(rt.block_on(client.last_serial()).unwrap(), removed);
    let events = rt.block_on(client.since_serial(created - 1)).unwrap();
    let rows: Vec<(Option<&str>, &str)> = events.iter().map(|e| (e.version.as_deref(), e.action.as_str())).collect();
    assert_eq!(
        rows,
        [
            (None, "create"),
            (Some("1.0"), "add cp311 file foo_bar-1.0-cp311-cp311-linux_armv7l.whl"),
            (Some("1.0"), "add source file Foo_Bar-1.0.tar.gz"),
            (Some("1.0"), "yank release"),
            (None, "remove project"),
        ]
    );
    assert!(events.windows(2).all(|w| w[0].serial < w[1].serial));
    assert!(events.iter().all(|e| e.name == "Foo_Bar"));
    // Only what is new after a serial.
    assert!(rt.block_on(client.since_serial(removed)).unwrap().is_empty());
    // Classified: create, binary upload, promotion to source, yank, project removal.
    let mut dedup = Dedup::new(100);
    let kinds: Vec<EventKind> = events.iter().filter_map(|e| dedup.event(e)).map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Create, EventKind::Binary, EventKind::Source, EventKind::Yank, EventKind::Remove]);
}

#[test]
fn every_kind_of_failure_is_an_error_not_a_crash() {
    let pypi = FakePypi::start();
    pypi.create_package("foo", None);
    let rt = runtime();
    let client = client(&pypi, Duration::from_millis(500));
    pypi.fail_next(1, Failure::Status(500));
    assert!(matches!(rt.block_on(client.since_serial(0)), Err(PypiError::Status(500))));
    pypi.fail_next(1, Failure::Status(429));
    assert!(matches!(rt.block_on(client.since_serial(0)), Err(PypiError::Status(429))));
    pypi.fail_next(1, Failure::Garbage);
    assert!(matches!(rt.block_on(client.since_serial(0)), Err(PypiError::Malformed(_))));
    pypi.fail_next(1, Failure::Fault(-32500));
    assert!(matches!(rt.block_on(client.since_serial(0)), Err(PypiError::Fault { code: -32500, .. })));
    pypi.fail_next(1, Failure::Timeout(Duration::from_secs(3)));
    assert!(matches!(rt.block_on(client.since_serial(0)), Err(PypiError::Http(_))));
    pypi.fail_next(1, Failure::Disconnect);
    assert!(matches!(rt.block_on(client.since_serial(0)), Err(PypiError::Http(_))));
    // Once the server behaves, the client works again.
    assert_eq!(rt.block_on(client.since_serial(0)).unwrap().len(), 1);
}

#[test]
fn an_unreachable_server_is_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = ChangelogClient::new(&format!("http://127.0.0.1:{port}/pypi"), Duration::from_secs(2)).unwrap();
    assert!(matches!(runtime().block_on(client.last_serial()), Err(PypiError::Http(_))));
}
