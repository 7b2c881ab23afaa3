//! BigBrother feeding the index: it reads the database's figures, folds them into what it
//! publishes to monitors, and keeps the home page and the search index fresh, on its timers
//! and at once when asked to refresh.

mod index_support;
mod support;

use std::time::Duration;

use index_support::{Farm, text_of};
use piwheels_common::protocols::{StatusEvent, TaskControl};
use piwheels_master::calls::tasks::StatsUpdate;
use piwheels_common::task::{self, TaskExit};
use piwheels_common::transport::Sender;
use piwheels_master::big_brother::{self, BigBrother, StatsConfig};
use piwheels_master::wiring;

#[test]
fn the_home_page_and_search_index_follow_the_database() {
    let mut farm = Farm::started();
    farm.package("numpy", "numpy", "", &[("1.0", 1)]);
    let wheels = [farm.wheel("numpy-1.0-cp39-cp39-linux_armv7l.whl", None), farm.wheel("numpy-1.0-cp311-cp311-linux_armv7l.whl", None)];
    farm.build("numpy", "1.0", "cp39", &wheels[..1]);
    farm.build("numpy", "1.0", "cp311", &wheels[1..]);
    // Its pages, as a recorded build asks for them: the search index lists the projects with a
    // simple page, with the download counts BigBrother sends.
    farm.rewrite("numpy");

    // Its own status socket, so that the test sees what monitors would.
    let status_endpoint = "inproc://index-stats-status";
    let status = piwheels_common::transport::Receiver::<StatusEvent>::pull(&farm.pool.rt.zmq, status_endpoint, None).unwrap();
    let config = StatsConfig {
        home_interval: Duration::from_secs(3600),
        search_interval: Duration::from_secs(3600),
        ..StatsConfig::new(farm.root(), Duration::from_millis(100))
    };
    let mut bb = task::spawn(
        &farm.pool.rt,
        "big_brother",
        move |ctx| big_brother::Sockets::open_feeding(ctx, status_endpoint, Duration::from_secs(10)),
        move |_| Ok(BigBrother::with_config(config.clone())),
    )
    .unwrap();

    // At start: the database's figures on the home page, the package in the search index.
    farm.wait("the home page", |f| f.path("index.html").is_file() && f.path("packages.json").is_file() && f.read("packages.json").contains("numpy"));
    let html = farm.read("index.html");
    assert_eq!(text_of(&html, "packages-built"), "1");
    assert_eq!(text_of(&html, "files-count"), "2");
    assert!(html.contains(r#"<tr data-abi="cp39"><td>cp39</td><td>1</td><td>0</td></tr>"#), "{html}");
    assert_eq!(farm.json("packages.json"), serde_json::json!([["numpy", 0, 0]]));
    // Monitors get the same figures.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(std::time::Instant::now() < deadline, "no stats with the database's figures");
        if let Some(StatusEvent::Stats(stats)) = status.recv_timeout(Duration::from_secs(1)).unwrap()
            && stats.files_count == 2
        {
            assert_eq!(stats.packages_built, 1);
            assert_eq!(stats.builds_last_hour.get("cp311"), Some(&1));
            break;
        }
    }

    // A new package is on both at once when a refresh is asked for (the hour-long timers would
    // not get there in this test).
    farm.package("scipy", "scipy", "", &[("1.0", 1)]);
    let wheel = farm.wheel("scipy-1.0-py3-none-any.whl", None);
    farm.build("scipy", "1.0", "cp39", &[wheel]);
    farm.rewrite("scipy");
    let queues = [("cp39".to_string(), 7)].into();
    let stats = Sender::<StatsUpdate>::push(&farm.pool.rt.zmq, wiring::STATS.address()).unwrap();
    stats.send(&StatsUpdate::Queues { lengths: queues }, Duration::from_secs(1)).unwrap();
    stats.send(&StatsUpdate::RefreshHome, Duration::from_secs(1)).unwrap();
    farm.wait("the refreshed home page", |f| text_of(&f.read("index.html"), "packages-built") == "2");
    farm.wait("the refreshed search index", |f| f.json("packages.json").as_array().unwrap().len() == 2);
    assert!(farm.read("index.html").contains(r#"<tr data-abi="cp39"><td>cp39</td><td>2</td><td>7</td></tr>"#));

    bb.control(TaskControl::Quit).unwrap();
    assert_eq!(bb.join(Duration::from_secs(10)), Some(TaskExit::Quit));
    assert_eq!(bb.errors(), 0);
}
