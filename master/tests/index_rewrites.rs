//! When pages get written: rewrite requests for one package within the window are folded into
//! one write (with the widest scope), no request waits longer than the window, a pending
//! rewrite survives a stop of the writer and is written by the next one, and a tree not written
//! by this build's templates is rewritten whole at start-up, strays removed.

mod index_support;
mod support;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use index_support::{Farm, config};
use piwheels_master::calls::db::RewriteScope;
use piwheels_master::calls::tasks::WebRequest;

/// A farm with one built package, `foo`, whose pages are not written yet.
fn farm_with_foo(window: Duration) -> Farm {
    let mut farm = Farm::new();
    farm.start(window);
    add_built(&mut farm, "foo");
    farm
}

/// Adds `package` 1.0 with a pure wheel built for cp39 (its pages not asked for).
fn add_built(farm: &mut Farm, package: &str) {
    farm.package(package, package, "", &[("1.0", 1)]);
    let wheel = farm.wheel(&format!("{package}-1.0-py3-none-any.whl"), None);
    farm.build(package, "1.0", "cp39", &[wheel]);
}

fn inode(farm: &Farm, rel: &str) -> Option<u64> {
    std::fs::metadata(farm.path(rel)).ok().map(|m| m.ino())
}

#[test]
fn requests_within_the_window_are_written_once_with_the_widest_scope() {
    let window = Duration::from_millis(700);
    let mut farm = farm_with_foo(window);
    add_built(&mut farm, "bar");
    let first = Instant::now();
    farm.send(WebRequest::Rewrite { package: "foo".into(), scope: RewriteScope::Project });
    for _ in 0..5 {
        farm.send(WebRequest::Rewrite { package: "foo".into(), scope: RewriteScope::Project });
    }
    farm.send(WebRequest::Rewrite { package: "foo".into(), scope: RewriteScope::Both });
    // Recorded before being answered.
    assert_eq!(farm.pending(), ["foo"]);
    assert!(!farm.path("project/foo").exists(), "written before the window passed");
    farm.wait("foo's project page", |f| f.path("project/foo/index.html").is_file());
    let waited = first.elapsed();
    assert!(waited >= window, "written after {waited:?}");
    // The Both that came last widened the one write: the simple page is there too.
    assert!(farm.path("simple/foo/index.html").is_file());
    farm.wait("the pending entry to go", |f| f.pending().is_empty());
    // Written once: the pages (renamed into place at each write) keep their inodes. A request
    // for another package made now is written a window later, by which time a second write of
    // foo, had one been due, would have happened before it.
    let (page, simple) = (inode(&farm, "project/foo/index.html"), inode(&farm, "simple/foo/index.json"));
    farm.send(WebRequest::Rewrite { package: "bar".into(), scope: RewriteScope::Both });
    farm.wait("bar's project page", |f| f.path("project/bar/index.html").is_file());
    assert_eq!((inode(&farm, "project/foo/index.html"), inode(&farm, "simple/foo/index.json")), (page, simple));
}

/// Requests that keep coming do not put the write off: the window runs from the first (the
/// buffer's unit tests pin the due time; here, the writer acts on it).
#[test]
fn a_package_asked_for_again_and_again_is_written_while_the_requests_go_on() {
    let window = Duration::from_millis(500);
    let farm = farm_with_foo(window);
    let first = Instant::now();
    while !farm.path("simple/foo/index.html").is_file() {
        assert!(first.elapsed() < Duration::from_secs(60), "not written while requests kept coming");
        farm.rewrite("foo");
        std::thread::sleep(Duration::from_millis(50));
    }
    let waited = first.elapsed();
    assert!(waited >= window, "written after {waited:?}, before the window passed");
}

#[test]
fn a_pending_rewrite_survives_a_stop_and_is_written_by_the_next_writer() {
    // A window longer than the test: only a restart can write the pages.
    let mut farm = farm_with_foo(Duration::from_secs(3600));
    farm.rewrite("foo");
    assert_eq!(farm.pending(), ["foo"]);
    farm.stop();
    assert!(!farm.path("project/foo").exists());
    // The window is an hour: written at all, the pages were written at the restart.
    farm.start(Duration::from_secs(3600));
    farm.wait("the pending rewrite", |f| f.path("simple/foo/index.html").is_file() && f.path("project/foo/index.html").is_file());
    farm.wait("the pending entry to go", |f| f.pending().is_empty());
}

#[test]
fn a_tree_from_other_templates_is_rewritten_whole_and_strays_removed() {
    let mut farm = farm_with_foo(Duration::from_millis(100));
    farm.package("bar", "bar", "", &[("2.0", 1)]);
    let wheel = farm.wheel("bar-2.0-py3-none-any.whl", None);
    farm.build("bar", "2.0", "cp39", &[wheel]);
    farm.stop();
    // Pages of a package the database does not know (deleted while the master was down),
    // and a stamp from other templates.
    for rel in ["simple/ghost/index.html", "simple/ghost/ghost-1.0-py3-none-any.whl", "project/ghost/index.html", "project/ghost/json/index.json"] {
        std::fs::create_dir_all(farm.path(rel).parent().unwrap()).unwrap();
        std::fs::write(farm.path(rel), "stale").unwrap();
    }
    std::fs::write(farm.path(".piwheels-index"), "other templates").unwrap();
    // One package per batch: the rewrite fetches each batch while writing the one before.
    let mut config = config(farm.root(), Duration::from_secs(3600));
    config.batch = 1;
    farm.start_with(config);
    for rel in ["simple/foo/index.html", "simple/bar/index.json", "project/foo/index.html", "project/bar/json/index.json"] {
        assert!(farm.path(rel).is_file(), "{rel}");
    }
    assert!(!farm.path("simple/ghost").exists());
    assert!(!farm.path("project/ghost").exists());
    let root = farm.json("simple/index.json");
    assert_eq!(root["projects"], serde_json::json!([{"name": "bar"}, {"name": "foo"}]));
    assert_ne!(farm.read(".piwheels-index"), "other templates");
}

#[test]
fn pausing_holds_rewrites_but_still_serves_logs() {
    let window = Duration::from_millis(100);
    let farm = farm_with_foo(window);
    // The pause is read before the requests sent after it (control comes first in the loop).
    farm.scribe().control(piwheels_common::protocols::TaskControl::Pause).unwrap();
    farm.rewrite("foo");
    farm.log("foo", 1, "log");
    assert!(farm.path("logs/0000/0000/0001.txt.gz").is_file());
    // Past foo's window, two more requests answered one after the other: the loop went round,
    // due timers first, and did not write foo's pages.
    std::thread::sleep(3 * window);
    farm.log("foo", 2, "log");
    farm.log("foo", 3, "log");
    assert!(!farm.path("simple/foo").join("index.html").exists());
    farm.scribe().control(piwheels_common::protocols::TaskControl::Resume).unwrap();
    farm.wait("foo's pages after resuming", |f| f.path("simple/foo/index.html").is_file());
}

#[test]
fn written_entries_stay_pending_until_the_next_sync_and_a_stop_clears_them() {
    let mut farm = Farm::new();
    let mut settings = config(farm.root(), Duration::from_millis(50));
    settings.sync_every = Duration::from_secs(3600);
    farm.start_with(settings);
    for package in ["foo", "bar"] {
        add_built(&mut farm, package);
        farm.rewrite(package);
    }
    farm.wait("the pages", |f| f.path("simple/foo/index.html").is_file() && f.path("simple/bar/index.html").is_file());
    // Written, but not cleared before the next sync: a crash now would only write them again.
    // (Shown after a later write, by which time any clearing of the earlier ones was done.)
    add_built(&mut farm, "qux");
    farm.rewrite("qux");
    farm.wait("a later page", |f| f.path("simple/qux/index.html").is_file());
    assert_eq!(farm.pending(), ["bar", "foo", "qux"]);
    // A stop makes them durable and clears them; a rewrite not yet written (held by a pause)
    // stays.
    farm.scribe().control(piwheels_common::protocols::TaskControl::Pause).unwrap();
    farm.rewrite("foo");
    farm.send(WebRequest::Rewrite { package: "baz".into(), scope: RewriteScope::Both });
    farm.stop();
    assert_eq!(farm.pending(), ["baz", "foo"]);
}

#[test]
fn the_root_is_written_at_most_once_per_interval_and_at_a_stop() {
    let mut farm = Farm::new();
    let mut settings = config(farm.root(), Duration::from_millis(50));
    settings.root_every = Duration::from_secs(3600);
    farm.start_with(settings);
    for package in ["foo", "bar"] {
        add_built(&mut farm, package);
    }
    // The first change to the root after the start is written at once, the next waits.
    farm.rewrite("foo");
    farm.wait("foo in the root", |f| f.read("simple/index.json").contains("\"foo\""));
    farm.rewrite("bar");
    farm.wait("bar's pages", |f| f.path("simple/bar/index.html").is_file());
    // A later package's pages: by then the root would have been written with bar, had it been.
    add_built(&mut farm, "qux");
    farm.rewrite("qux");
    farm.wait("a later package's pages", |f| f.path("simple/qux/index.html").is_file());
    assert!(!farm.read("simple/index.json").contains("\"bar\""), "the root was written again within the interval");
    farm.stop();
    let root = farm.json("simple/index.json");
    assert_eq!(root["projects"], serde_json::json!([{"name": "bar"}, {"name": "foo"}, {"name": "qux"}]));
}

#[test]
fn the_root_is_written_again_after_every_start() {
    let mut farm = farm_with_foo(Duration::from_millis(50));
    farm.rewrite("foo");
    farm.wait("foo in the root", |f| f.read("simple/index.json").contains("\"foo\""));
    farm.stop();
    // As a crash would leave it: the root behind the projects' pages.
    std::fs::write(farm.path("simple/index.json"), r#"{"meta":{"api-version":"1.1"},"projects":[]}"#).unwrap();
    farm.start(Duration::from_millis(50));
    farm.wait("the root to list foo again", |f| f.read("simple/index.json").contains("\"foo\""));
}
