//! Database benchmarks, printing figures (run with `cargo bench -p piwheels-master --bench
//! database`; needs the PostgreSQL that `scripts/test.sh` sets up):
//!
//! 1. requests per second through the load balancer with 1, 3 and 8 oracles, 8 client
//!    threads asking a trivial question (does a package exist);
//! 2. the build-queue query per ABI on a synthetic farm: `BENCH_PACKAGES` packages (default
//!    500,000) with `BENCH_VERSIONS` versions each (default 6, so 3,000,000 versions) and 4
//!    ABIs, 90% of versions built (60% of packages pure Python, built once; 40% built on every
//!    ABI, with some failures), the rest waiting.
//!
//! 3. on the same farm, with `BENCH_DOWNLOADS` downloads (default 1,000,000, spread over two
//!    years) logged, the home page's queries: `Statistics` (the figures) and `SearchIndex`
//!    (every project with its download count).
//!
//! `BENCH_SECONDS` sets how long each throughput run lasts (default 3). `BENCH_SKIP_QUEUE=1`
//! skips the synthetic farm, which takes a few minutes and a few GB to build. PyPI's size
//! (about 700,000 projects, 8 million releases): `BENCH_PACKAGES=700000 BENCH_VERSIONS=11`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use piwheels_common::clock::SystemClock;
use piwheels_master::calls::db::{BuildQueue, DbReply, PackageExists, SearchIndex, Statistics};
use piwheels_common::task::{self, Runtime, Supervisor};
use piwheels_master::db::{Database, migrate};
use piwheels_master::db_client::DbClient;
use piwheels_master::oracle::{self, Oracle};
use piwheels_master::seraph::{self, Seraph};
use piwheels_master::wiring;
use piwheels_testsupport::db::{APP_ROLE, TestDb};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn migrate(db: &TestDb) {
    migrate::upgrade_blocking(&db.owner_url(), APP_ROLE).unwrap();
}

fn throughput(oracles: usize, clients: usize, seconds: u64) -> f64 {
    let db = TestDb::new();
    migrate(&db);
    db.execute("INSERT INTO packages (package) VALUES ('numpy')");
    let zmq = zmq::Context::new();
    let _status = piwheels_common::transport::Receiver::<piwheels_common::protocols::StatusEvent>::pull(&zmq, "inproc://status", None).unwrap();
    let rt = Runtime { poll_cap: Duration::from_millis(100), ..Runtime::new(zmq.clone(), Arc::new(SystemClock), "inproc://status") };
    let mut tasks = Supervisor::new();
    tasks.add(task::spawn(&rt, "seraph", seraph::Sockets::open, |_| Ok(Seraph)).unwrap());
    for n in 0..oracles {
        let url = db.app_url();
        tasks.add(task::spawn(&rt, &format!("oracle_{n}"), oracle::Sockets::open, move |s| Oracle::start(s, &url, Duration::from_secs(10))).unwrap());
    }
    // Warm up: every oracle connects.
    let warm = DbClient::connect(&zmq, wiring::DB.address(), Duration::from_secs(10)).unwrap();
    for _ in 0..oracles * 4 {
        warm.call(PackageExists { package: "numpy".into() }).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..clients {
            let client = DbClient::connect(&zmq, wiring::DB.address(), Duration::from_secs(10)).unwrap();
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    assert!(client.call(PackageExists { package: "numpy".into() }).unwrap());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    tasks.shutdown(Duration::from_secs(5));
    rate
}

/// Fills the database with a synthetic farm (see the module documentation), server-side.
fn synthetic_farm(db: &TestDb, packages: u64, versions: u64) {
    let builds_per_version = 4;
    // Each release came out on a day of the last ten years, and was built the day after.
    let released = "timestamptz '2015-01-01 00:00:00+00' + ((p * 7 + v * 13) % 3650) * interval '1 day'";
    let built_at = format!("{released} + interval '1 day'");
    db.execute(
        "INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp39', 309), ('cp311', 311), ('cp312', 312), ('cp313', 313)",
    );
    db.execute(&format!("INSERT INTO packages (package) SELECT 'pkg' || p FROM generate_series(1, {packages}) p"));
    db.execute(&format!(
        "INSERT INTO versions (package, version, released, source_filename, source_url, source_sha256) \
         SELECT 'pkg' || p, v || '.0', {released}, \
                'pkg' || p || '-' || v || '.0.tar.gz', 'http://index.invalid/pkg' || p || '-' || v || '.0.tar.gz', repeat('0', 64) \
         FROM generate_series(1, {packages}) p, generate_series(1, {versions}) v"
    ));
    // Built versions: (p + v) % 10 <> 0. Pure packages: p % 10 < 6, one build on cp39 with a
    // none wheel. The others: a build per ABI, each with a wheel, except that every seventh
    // version failed on cp39 (no file).
    db.execute(&format!(
        "INSERT INTO builds (build_id, package, version, built_by, abi_tag, status, duration, built_at) \
         SELECT (p - 1) * {versions} + v, 'pkg' || p, v || '.0', 1, 'cp39', true, interval '1 minute', {built_at} \
         FROM generate_series(1, {packages}) p, generate_series(1, {versions}) v \
         WHERE (p + v) % 10 <> 0 AND p % 10 < 6"
    ));
    db.execute(&format!(
        "INSERT INTO files (filename, build_id, filesize, filehash, package_tag, package_version_tag, py_version_tag, abi_tag, platform_tag) \
         SELECT 'pkg' || p || '-' || v || '.0-py3-none-any.whl', (p - 1) * {versions} + v, 1000, repeat('0', 64), 'pkg' || p, v || '.0', 'py3', 'none', 'any' \
         FROM generate_series(1, {packages}) p, generate_series(1, {versions}) v \
         WHERE (p + v) % 10 <> 0 AND p % 10 < 6"
    ));
    let base = packages * versions;
    db.execute(&format!(
        "INSERT INTO builds (build_id, package, version, built_by, abi_tag, status, duration, built_at) \
         SELECT {base} + ((p - 1) * {versions} + v - 1) * {builds_per_version} + k, 'pkg' || p, v || '.0', 1, a.abi_tag, \
                NOT (k = 1 AND v % 7 = 0), interval '5 minutes', {built_at} \
         FROM generate_series(1, {packages}) p, generate_series(1, {versions}) v, \
              (VALUES (1, 'cp39'), (2, 'cp311'), (3, 'cp312'), (4, 'cp313')) a(k, abi_tag) \
         WHERE (p + v) % 10 <> 0 AND p % 10 >= 6"
    ));
    db.execute(&format!(
        "INSERT INTO files (filename, build_id, filesize, filehash, package_tag, package_version_tag, py_version_tag, abi_tag, platform_tag) \
         SELECT 'pkg' || p || '-' || v || '.0-' || a.abi_tag || '-' || a.abi_tag || '-linux_armv7l.whl', \
                {base} + ((p - 1) * {versions} + v - 1) * {builds_per_version} + k, 100000, repeat('0', 64), \
                'pkg' || p, v || '.0', a.abi_tag, a.abi_tag, 'linux_armv7l' \
         FROM generate_series(1, {packages}) p, generate_series(1, {versions}) v, \
              (VALUES (1, 'cp39'), (2, 'cp311'), (3, 'cp312'), (4, 'cp313')) a(k, abi_tag) \
         WHERE (p + v) % 10 <> 0 AND p % 10 >= 6 AND NOT (k = 1 AND v % 7 = 0)"
    ));
    db.execute("SELECT setval('builds_build_id_seq', (SELECT max(build_id) FROM builds))");
    // Downloads of the pure packages' wheels, spread over two years before now.
    let downloads = env_number("BENCH_DOWNLOADS", 1_000_000);
    let pure_packages = (packages * 6 / 10).max(1);
    db.execute(&format!(
        "INSERT INTO downloads (filename, accessed_by, accessed_at, arch, py_name, py_version, installer_name)          SELECT 'pkg' || (d % {pure_packages} / 6 * 10 + d % 6) || '-1.0-py3-none-any.whl', '192.0.2.1',                 now() - (d % 730) * interval '1 day' - (d % 86400) * interval '1 second', 'armv7l', 'CPython', '3.11', 'pip'          FROM generate_series(1, {downloads}) d"
    ));
    db.execute("VACUUM ANALYZE");
}

fn build_queue(packages: u64, versions: u64) {
    let db = TestDb::new();
    migrate(&db);
    let started = Instant::now();
    synthetic_farm(&db, packages, versions);
    let counts = db.column(
        "SELECT (SELECT count(*) FROM packages) || ' packages, ' || (SELECT count(*) FROM versions) || ' versions, ' \
         || (SELECT count(*) FROM builds) || ' builds, ' || (SELECT count(*) FROM files) || ' files'",
    );
    println!("synthetic farm: {} (built in {:.0} s)", counts[0].clone().unwrap_or_default(), started.elapsed().as_secs_f64());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut database = Database::connect(&db.app_url(), Duration::from_secs(600)).await.unwrap();
        // Nothing is worked out yet, as after the ABIs change: the computations work the
        // versions out a minute at a time, newest first, until none is left.
        let started = Instant::now();
        let mut computations = 0;
        loop {
            computations += 1;
            let reply = database.handle(BuildQueue { limit: 1000 }.into()).await.unwrap();
            let DbReply::BuildQueue(queues) = reply else { panic!("unexpected reply {reply:?}") };
            if computations == 1 {
                println!("first computation: {:.1} s", started.elapsed().as_secs_f64());
            }
            if !queues.unexamined {
                break;
            }
        }
        println!("every version worked out: {:.1} s in {computations} computations", started.elapsed().as_secs_f64());
        println!("\n| limit per ABI | run | seconds | seconds per ABI | queued (per ABI) |");
        println!("|---:|---:|---:|---:|---|");
        for limit in [1000u32, 100_000] {
            for run in 1..=3 {
                let started = Instant::now();
                let reply = database.handle(BuildQueue { limit }.into()).await.unwrap();
                let secs = started.elapsed().as_secs_f64();
                let DbReply::BuildQueue(queues) = reply else { panic!("unexpected reply {reply:?}") };
                assert!(!queues.unexamined);
                let sizes: Vec<String> = queues.queues.iter().map(|(abi, q)| format!("{abi} {}", q.len())).collect();
                println!("| {limit} | {run} | {secs:.3} | {:.3} | {} |", secs / queues.queues.len().max(1) as f64, sizes.join(", "));
            }
        }
        println!("\n## The home page's queries on the same farm\n");
        println!("| request | run | seconds | answer |");
        println!("|---|---:|---:|---|");
        for run in 1..=3 {
            let started = Instant::now();
            let reply = database.handle(Statistics {}.into()).await.unwrap();
            let secs = started.elapsed().as_secs_f64();
            let DbReply::Statistics(stats) = reply else { panic!("unexpected reply {reply:?}") };
            println!("| Statistics | {run} | {secs:.2} | {} packages built, {} files, {} downloads |", stats.packages_built, stats.files_count, stats.downloads_all);
        }
        for run in 1..=3 {
            let started = Instant::now();
            let reply = database.handle(SearchIndex {}.into()).await.unwrap();
            let secs = started.elapsed().as_secs_f64();
            let DbReply::SearchIndex(entries) = reply else { panic!("unexpected reply {reply:?}") };
            println!("| SearchIndex | {run} | {secs:.2} | {} projects |", entries.len());
        }
    });
}

fn main() {
    let seconds = env_number("BENCH_SECONDS", 3);
    println!("## Requests per second through the load balancer (8 client threads, PackageExists)\n");
    println!("| oracles | requests/s |");
    println!("|---:|---:|");
    for oracles in [1, 3, 8] {
        println!("| {oracles} | {:.0} |", throughput(oracles, 8, seconds));
    }
    if std::env::var("BENCH_SKIP_QUEUE").is_ok_and(|v| v == "1") {
        return;
    }
    println!("\n## Build queue on a synthetic farm\n");
    build_queue(env_number("BENCH_PACKAGES", 500_000), env_number("BENCH_VERSIONS", 6));
}
