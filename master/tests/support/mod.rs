//! Set-up shared by the master's integration tests (each test file that needs it says
//! `mod support;`).
#![allow(dead_code, unreachable_pub)]

pub mod farm;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use piwheels_common::clock::SystemClock;
use piwheels_common::task::{self, Runtime, Supervisor};
use piwheels_common::protocols::{BuildResult, FailureKind, WheelFile};
use piwheels_master::calls::db::BuildRecord;
use piwheels_master::db::migrate;
use piwheels_master::db_client::DbClient;
use piwheels_master::file_juggler::{self, FileJuggler, JugglerConfig};
use piwheels_master::oracle::{self, Oracle};
use piwheels_master::seraph::{self, Seraph};
use piwheels_master::wiring;
use piwheels_testsupport::db::{APP_ROLE, TestDb};
use piwheels_testsupport::free_port;

/// A migrated database with a load balancer and its oracles running, stopped when dropped.
pub struct Pool {
    pub rt: Runtime,
    pub tasks: Supervisor,
    pub db: TestDb,
    /// The tasks' status reports (bound here, since every task connects to it).
    pub status: piwheels_common::transport::Receiver<piwheels_common::protocols::StatusEvent>,
}

impl Pool {
    /// A migrated database and a balancer with `oracles` workers connected as the app role.
    pub fn start(oracles: usize) -> Pool {
        let db = TestDb::new();
        migrate::upgrade_blocking(&db.owner_url(), APP_ROLE).unwrap();
        let zmq = zmq::Context::new();
        let status = piwheels_common::transport::Receiver::pull(&zmq, "inproc://status", None).unwrap();
        let rt = Runtime { poll_cap: Duration::from_millis(100), ..Runtime::new(zmq, Arc::new(SystemClock), "inproc://status") };
        let mut tasks = Supervisor::new();
        tasks.add(task::spawn(&rt, "seraph", seraph::Sockets::open, |_| Ok(Seraph)).unwrap());
        for n in 0..oracles {
            let url = db.app_url();
            tasks.add(
                task::spawn(&rt, &format!("oracle_{n}"), oracle::Sockets::open, move |s| Oracle::start(s, &url, Duration::from_secs(10)))
                    .unwrap(),
            );
        }
        Pool { rt, tasks, db, status }
    }

    /// A pool with two oracles whose database builds for cp311 and holds `releases`
    /// (package, version).
    pub fn with_releases(releases: &[(&str, &str)]) -> Pool {
        let pool = Pool::start(2);
        pool.db.execute("INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp311', 311)");
        for (package, version) in releases {
            pool.db.execute(&format!(
                "INSERT INTO packages (package) VALUES ('{package}') ON CONFLICT DO NOTHING; {}",
                piwheels_testsupport::data::insert_pinned_version(package, version)
            ));
        }
        pool
    }

    /// Starts a file juggler publishing to `<dir>/www` (staging in `<dir>/staging`) on a tcp
    /// port of its own; returns its endpoint.
    pub fn start_file_juggler(&mut self, dir: &Path) -> String {
        self.start_file_juggler_with(dir, |_| {})
    }

    /// [`Pool::start_file_juggler`] with its configuration changed by `configure`.
    pub fn start_file_juggler_with(&mut self, dir: &Path, configure: impl FnOnce(&mut JugglerConfig)) -> String {
        std::fs::create_dir_all(dir.join("www")).unwrap();
        let mut juggler = JugglerConfig::new(dir.join("www"), dir.join("staging"));
        configure(&mut juggler);
        juggler.check().unwrap();
        let endpoint = format!("tcp://127.0.0.1:{}", free_port());
        let (open_endpoint, open_config, clock) = (endpoint.clone(), juggler.clone(), self.rt.clock.clone());
        self.tasks.add(
            task::spawn(
                &self.rt,
                "file_juggler",
                move |ctx| file_juggler::Sockets::open(ctx, &open_endpoint, &open_config),
                move |_| FileJuggler::start(&juggler, &clock),
            )
            .unwrap(),
        );
        endpoint
    }

    /// A database client.
    pub fn client(&self, timeout: Duration) -> DbClient {
        DbClient::connect(&self.rt.zmq, wiring::DB.address(), timeout).unwrap()
    }

    /// Whether every task still runs.
    pub fn all_running(&self) -> bool {
        self.tasks.tasks().iter().all(|t| !t.is_finished())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tasks.shutdown(Duration::from_secs(5));
    }
}


/// Waits up to `timeout` for `cond`, failing the test with `what` if it never holds.
pub fn eventually(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Serves `endpoint` from a thread, answering every request with `answer` and keeping the
/// requests for the test to look at: a stand-in for a task the code under test talks to.
pub fn stand_in<Req, Rep>(ctx: &zmq::Context, endpoint: &str, answer: Rep) -> Arc<Mutex<Vec<Req>>>
where
    Req: piwheels_common::protocols::Message + Send + 'static,
    Rep: piwheels_common::protocols::Message + Send + 'static,
{
    let server = piwheels_common::transport::Server::<Req, Rep>::bind(ctx, endpoint, None).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        while let Ok((peer, Ok(request))) = server.recv() {
            kept.lock().unwrap().push(request);
            if server.send(&peer, &answer).is_err() {
                break;
            }
        }
    });
    seen
}

/// A build record of `package` `version` on `abi` by slave 7 (`pi4-1`), 90 s long with
/// 80.5 s of CPU and 300 MiB at its peak: successful when it made files, else a build failure.
pub fn build_record(package: &str, version: &str, abi: &str, files: Vec<WheelFile>) -> BuildRecord {
    let success = !files.is_empty();
    BuildRecord {
        built_by: 7,
        builder: "pi4-1".into(),
        package: package.into(),
        version: version.into(),
        abi: abi.into(),
        started_at: chrono::Utc::now() - chrono::Duration::seconds(90),
        builder_key: None,
        environment: [("python".to_string(), "3.11.2".to_string())].into(),
        source: Some(piwheels_testsupport::data::source_file(package, version)),
        result: BuildResult {
            success,
            failure: (!success).then_some(FailureKind::Build),
            exit_status: Some(if success { 0 } else { 1 }),
            duration: Duration::from_secs(90),
            cpu_time: Duration::from_millis(80_500),
            peak_memory: 300 << 20,
            output: "log".into(),
            files,
        },
    }
}
