//! The PyPI follower catching up (issue 21): a fake PyPI whose changelog holds `FOLLOW_PACKAGES`
//! (default 2,000) projects, each created, given a source file and a wheel (three rows each,
//! 6,000 events), and a follower started against a fresh database with three oracles, as the
//! master runs them. It prints the time until every release is in the database, until the
//! serial is stored, and until every summary it queued is fetched, and the rate of events
//! applied.
//!
//! Run with `cargo bench -p piwheels-master --bench follower`. The page rows per changelog
//! answer are PyPI's (50,000) unless `FOLLOW_PAGE` says otherwise.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use piwheels_common::task;
use piwheels_master::calls::tasks::{ArchitectTrigger, ReleaseAck, ReleaseNotice, WebReply, WebRequest};
use piwheels_master::cloud_gazer::{self, CloudGazer, FollowerConfig};
use piwheels_master::wiring;
use piwheels_testsupport::pypi::FakePypi;
use support::{Pool, stand_in};

fn main() {
    let packages: usize = std::env::var("FOLLOW_PACKAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let pypi = FakePypi::start();
    if let Some(page) = std::env::var("FOLLOW_PAGE").ok().and_then(|v| v.parse().ok()) {
        pypi.set_page_limit(page);
    }
    let mut last = 0;
    for n in 0..packages {
        let name = format!("bench-pkg-{n}");
        pypi.create_package(&name, Some("a package of the bench"));
        pypi.add_source(&name, "1.0", b"source".to_vec());
        last = pypi.add_binary(&name, "1.0", &format!("bench_pkg_{n}-1.0-py3-none-any.whl"));
    }
    let events = packages * 3;
    let pool = Pool::start(3);
    let _web = stand_in::<WebRequest, WebReply>(&pool.rt.zmq, "inproc://web", WebReply::Done);
    let _notices = stand_in::<ReleaseNotice, ReleaseAck>(&pool.rt.zmq, "inproc://release-notices", ReleaseAck::Done);
    let _architect = piwheels_common::transport::Receiver::<ArchitectTrigger>::pull(&pool.rt.zmq, wiring::ARCHITECT.address(), None).unwrap();
    let config = FollowerConfig {
        xmlrpc_url: pypi.xmlrpc_url(),
        json_url: Some(pypi.json_url()),
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(30),
        skip_new: String::new(),
    };
    let count = |sql: &str| -> usize { pool.db.column(sql)[0].as_deref().unwrap_or("0").parse().unwrap_or(0) };
    let started = Instant::now();
    let _gazer = task::spawn(&pool.rt, "bench_gazer", |ctx| cloud_gazer::Sockets::open(ctx, Duration::from_secs(60)), move |sockets| {
        CloudGazer::start(sockets, &config)
    })
    .unwrap();
    let (mut releases_in, mut serial_in, mut summaries_in) = (None, None, None);
    let deadline = started + Duration::from_secs(600);
    while summaries_in.is_none() && Instant::now() < deadline {
        if releases_in.is_none() && count("SELECT count(*)::text FROM versions WHERE skip = ''") == packages {
            releases_in = Some(started.elapsed());
        }
        if serial_in.is_none() && count("SELECT pypi_serial::text FROM configuration") as i64 == last {
            serial_in = Some(started.elapsed());
        }
        // Summaries beyond the follower's queue wait for the projects' next uploads.
        let fetched = packages.min(cloud_gazer::MAX_UNDESCRIBED);
        if serial_in.is_some() && count("SELECT count(*)::text FROM packages WHERE description <> ''") >= fetched {
            summaries_in = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let shown = |t: Option<Duration>| t.map_or("not within 10 minutes".to_string(), |t| format!("{:.2} s", t.as_secs_f64()));
    println!("follower: {packages} projects, {events} changelog events");
    println!("  every release in the database   {}", shown(releases_in));
    println!("  the serial stored                {}", shown(serial_in));
    println!("  every summary queued fetched     {} ({} queued at most)", shown(summaries_in), cloud_gazer::MAX_UNDESCRIBED);
    if let Some(t) = serial_in {
        println!("  events applied per second        {:.0}", events as f64 / t.as_secs_f64());
    }
}
