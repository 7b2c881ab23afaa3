//! Index writer benchmarks, printing figures (run with `cargo bench -p piwheels-master --bench
//! index`; needs the PostgreSQL that `scripts/test.sh` sets up):
//!
//! 1. a full rewrite of the index on a synthetic farm: `BENCH_PACKAGES` packages (default
//!    100,000), each with two releases and three wheels (cp39 and cp311 builds of 1.0, a pure
//!    wheel of 1.1) on disk with their `.metadata` files, dependencies and a display name. The
//!    index writer starts on an output tree holding only the wheels and writes every page
//!    (simple pages in HTML and JSON, project pages and project JSON, the root); then it is
//!    started again over the written tree with another template fingerprint, as after an
//!    upgrade, and rewrites everything again. The figures are the times from its start to the
//!    tree's stamp, in seconds and packages per second;
//!    The `.metadata` files hold a realistic METADATA (a summary, five project links, ten
//!    requirements, two with markers), which the project pages read;
//! 2. the size of the project page of `pkg-big`, a project of 20 releases each built on four
//!    ABIs (one build failed with a long log, three wheels with signed provenance, every
//!    build's log on disk), written by that same rewrite;
//! 3. the latency from a build being recorded (the database's answer to `LogBuild`) to its
//!    wheel being linked from the package's simple page on disk, with the default window, over
//!    `BENCH_SAMPLES` builds (default 20), one at a time, on the same farm.
//!
//! `BENCH_WINDOW_MS` changes the rewrite window (default: the writer's default, 1 s);
//! `BENCH_THREADS` the number of threads writing pages (default: the writer's default);
//! `BENCH_NOSYNC=1` turns off the `syncfs` before a buffered rewrite is cleared. The output
//! tree is made in `TMPDIR` (default `/tmp`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use piwheels_common::clock::SystemClock;
use piwheels_common::protocols::{BuildResult, StatusEvent, TaskControl};
use piwheels_master::atomic_file::Durability;
use piwheels_master::calls::db::{BuildRecord, LogBuild, NewVersion, PackageExists};
use piwheels_master::calls::tasks::{WebReply, WebRequest};
use piwheels_common::task::{self, Runtime, Supervisor};
use piwheels_common::transport::{Client, Receiver};
use piwheels_master::db::migrate;
use piwheels_master::db_client::DbClient;
use piwheels_master::index::{self, IndexConfig, Scribe};
use piwheels_master::oracle::{self, Oracle};
use piwheels_master::seraph::{self, Seraph};
use piwheels_master::wiring;
use piwheels_testsupport::data::wheel_file;
use piwheels_testsupport::db::{APP_ROLE, TestDb};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The synthetic farm in the database, server-side.
fn fill_database(db: &TestDb, n: u64) {
    db.execute("INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp39', 309), ('cp311', 311)");
    db.execute(&format!(
        "INSERT INTO packages (package, description) \
         SELECT 'pkg-' || p, 'Synthetic package number ' || p FROM generate_series(1, {n}) p"
    ));
    db.execute(&format!(
        "INSERT INTO package_names (name, package, seen) \
         SELECT 'Pkg_' || p, 'pkg-' || p, timestamptz '2024-01-01 00:00:00+00' FROM generate_series(1, {n}) p"
    ));
    db.execute(&format!(
        "INSERT INTO versions (package, version, released, complete) \
         SELECT 'pkg-' || p, v, timestamptz '2020-01-01 00:00:00+00' + (p % 1000) * interval '1 day', true \
         FROM generate_series(1, {n}) p, (VALUES ('1.0'), ('1.1')) vs(v)"
    ));
    // Build k of package p has id (p - 1) * 3 + k: 1.0 on cp39, 1.0 on cp311, 1.1 on cp39.
    let kinds = "(VALUES (1, '1.0', 'cp39', 'cp39', 'cp39', 'linux_armv7l'), \
                         (2, '1.0', 'cp311', 'cp311', 'cp311', 'linux_armv7l'), \
                         (3, '1.1', 'cp39', 'py3', 'none', 'any')) k(k, version, abi, py, file_abi, platform)";
    db.execute(&format!(
        "INSERT INTO builds (build_id, package, version, built_by, abi_tag, status, duration) \
         SELECT (p - 1) * 3 + k.k, 'pkg-' || p, k.version, 1, k.abi, true, interval '1 minute' \
         FROM generate_series(1, {n}) p, {kinds}"
    ));
    db.execute(&format!(
        "INSERT INTO files (filename, build_id, filesize, filehash, metadata_hash, package_tag, package_version_tag, \
                            py_version_tag, abi_tag, platform_tag, requires_python, uploaded) \
         SELECT 'pkg_' || p || '-' || k.version || '-' || k.py || '-' || k.file_abi || '-' || k.platform || '.whl', \
                (p - 1) * 3 + k.k, 100000 + p, md5(p || 'a' || k.k) || md5(p || 'b' || k.k), \
                md5(p || 'c' || k.k) || md5(p || 'd' || k.k), 'pkg_' || p, k.version, k.py, k.file_abi, k.platform, \
                '>=3.9', timestamptz '2024-01-01 00:00:00+00' \
         FROM generate_series(1, {n}) p, {kinds}"
    ));
    db.execute(
        "INSERT INTO dependencies (filename, tool, dependency) \
         SELECT filename, 'apt', 'libatlas3-base' FROM files \
         UNION ALL SELECT filename, 'pip', 'numpy' FROM files",
    );
    fill_big_project(db, 3 * n);
    db.execute("SELECT setval('builds_build_id_seq', (SELECT max(build_id) FROM builds))");
    db.execute("VACUUM ANALYZE");
}

/// `pkg-big`: 20 releases, each with a failed build on cp37 (an ABI no longer built) whose
/// log is 40 lines long, and a wheel from each of cp39, cp311 and cp313; build ids from
/// `after + 1`.
fn fill_big_project(db: &TestDb, after: u64) {
    db.execute("INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp313', 313)");
    db.execute(
        "INSERT INTO packages (package, description) VALUES ('pkg-big', 'A project of twenty releases, built on four ABIs');
         INSERT INTO package_names (name, package, seen) VALUES ('Pkg_Big', 'pkg-big', timestamptz '2024-01-01 00:00:00+00');
         INSERT INTO versions (package, version, released, complete)
         SELECT 'pkg-big', r || '.0', timestamptz '2020-01-01 00:00:00+00' + r * interval '30 days', true FROM generate_series(1, 20) r",
    );
    let kinds = "(VALUES (1, 'cp37'), (2, 'cp39'), (3, 'cp311'), (4, 'cp313')) k(k, abi)";
    db.execute(&format!(
        "INSERT INTO builds (build_id, package, version, built_by, builder, abi_tag, status, duration, failure) \
         SELECT {after} + (r - 1) * 4 + k.k, 'pkg-big', r || '.0', 1, 'pi4-builder-07', k.abi, k.k <> 1, interval '3 minutes', \
                CASE WHEN k.k = 1 THEN 'build' END \
         FROM generate_series(1, 20) r, {kinds}"
    ));
    db.execute(&format!(
        "INSERT INTO output (build_id, output) \
         SELECT {after} + (r - 1) * 4 + 1, string_agg('error: line ' || l || ' of a compiler complaining of a missing header file', E'\\n') \
         FROM generate_series(1, 20) r, generate_series(1, 40) l GROUP BY r"
    ));
    db.execute(&format!(
        "INSERT INTO files (filename, build_id, filesize, filehash, metadata_hash, package_tag, package_version_tag, \
                            py_version_tag, abi_tag, platform_tag, requires_python, uploaded) \
         SELECT 'pkg_big-' || r || '.0-' || k.abi || '-' || k.abi || '-linux_armv7l.whl', {after} + (r - 1) * 4 + k.k, \
                2000000 + r, md5(r || 'a' || k.k) || md5(r || 'b' || k.k), md5(r || 'c' || k.k) || md5(r || 'd' || k.k), \
                'pkg_big', r || '.0', k.abi, k.abi, 'linux_armv7l', '>=3.9', timestamptz '2024-01-01 00:00:00+00' \
         FROM generate_series(1, 20) r, {kinds} WHERE k.k > 1"
    ));
}

/// A realistic METADATA for package number `p`.
fn metadata(p: &str) -> String {
    let mut text = format!(
        "Metadata-Version: 2.4\nName: pkg_{p}\nVersion: 1.1\nSummary: Synthetic package {p}, a library of useful things\n\
         Author-email: Someone <someone@example.org>\nLicense-Expression: MIT\nRequires-Python: >=3.9\n"
    );
    for (label, url) in [("Homepage", "https://example.org/"), ("Documentation", "https://docs.example.org/"), ("Source", "https://code.example.org/pkg"), ("Issues", "https://code.example.org/pkg/issues"), ("Changelog", "https://docs.example.org/changes")] {
        text.push_str(&format!("Project-URL: {label}, {url}\n"));
    }
    for dep in ["numpy>=1.21", "attrs>=22.2", "packaging", "typing-extensions>=4.0; python_version < \"3.11\"", "idna>=2.5", "certifi", "urllib3<3,>=1.21.1", "charset-normalizer<4,>=2", "tomli>=1.1; python_version < \"3.11\"", "platformdirs"] {
        text.push_str(&format!("Requires-Dist: {dep}\n"));
    }
    text.push_str("\nA long description that the pages do not read.\n");
    text
}

/// The wheels (empty: the pages take sizes and hashes from the database) and their
/// `.metadata` files on disk, as the file juggler leaves them; `pkg-big`'s with their signed
/// provenance.
fn fill_disk(root: &std::path::Path, n: u64) {
    let work = |from: u64, to: u64| {
        for p in from..to {
            let dir = root.join(format!("simple/pkg-{p}"));
            std::fs::create_dir_all(&dir).unwrap();
            let metadata = metadata(&p.to_string());
            for name in [
                format!("pkg_{p}-1.0-cp39-cp39-linux_armv7l.whl"),
                format!("pkg_{p}-1.0-cp311-cp311-linux_armv7l.whl"),
                format!("pkg_{p}-1.1-py3-none-any.whl"),
            ] {
                std::fs::File::create(dir.join(&name)).unwrap();
                std::fs::write(dir.join(format!("{name}.metadata")), &metadata).unwrap();
            }
        }
    };
    let dir = root.join("simple/pkg-big");
    std::fs::create_dir_all(&dir).unwrap();
    for r in 1..=20 {
        for abi in ["cp39", "cp311", "cp313"] {
            let name = format!("pkg_big-{r}.0-{abi}-{abi}-linux_armv7l.whl");
            std::fs::File::create(dir.join(&name)).unwrap();
            std::fs::write(dir.join(format!("{name}.metadata")), metadata("big")).unwrap();
            std::fs::File::create(dir.join(format!("{name}{}", piwheels_common::provenance::SUFFIX))).unwrap();
        }
    }
    let half = n / 2 + 1;
    let work = &work;
    std::thread::scope(|s| {
        s.spawn(move || work(1, half));
        s.spawn(move || work(half, n + 1));
    });
}

fn record(package: &str, version: &str, filename: &str) -> BuildRecord {
    BuildRecord {
        built_by: 1,
        builder: "bench".into(),
        package: package.into(),
        version: version.into(),
        abi: "cp39".into(),
        started_at: chrono::Utc::now(),
        builder_key: None,
        environment: Default::default(),
        source: None,
        result: BuildResult {
            success: true,
            failure: None,
            exit_status: Some(0),
            duration: Duration::from_secs(60),
            cpu_time: Duration::from_secs(50),
            peak_memory: 0,
            output: String::new(),
            files: vec![wheel_file(filename, filename.as_bytes())],
        },
    }
}

fn main() {
    let n = env_number("BENCH_PACKAGES", 100_000);
    let samples = env_number("BENCH_SAMPLES", 20);
    let db = TestDb::new();
    migrate::upgrade_blocking(&db.owner_url(), APP_ROLE).unwrap();
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    fill_database(&db, n);
    let filled = started.elapsed();
    fill_disk(out.path(), n);
    // pkg-big's builds have their logs, as a farm's builds do: each cell links one.
    for id in 3 * n + 1..=3 * n + 80 {
        let log = out.path().join(piwheels_master::index::layout::log_path(id as i64));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::File::create(log).unwrap();
    }
    // The fill's files on disk before the clock starts, so that their writeback does not
    // count against the writer.
    std::process::Command::new("sync").status().unwrap();
    println!(
        "synthetic farm: {n} packages, {} files (database {:.0} s, disk {:.0} s)",
        3 * n,
        filled.as_secs_f64(),
        (started.elapsed() - filled).as_secs_f64()
    );

    let zmq = zmq::Context::new();
    let _status = Receiver::<StatusEvent>::pull(&zmq, "inproc://status", None).unwrap();
    let rt = Runtime { poll_cap: Duration::from_millis(100), ..Runtime::new(zmq.clone(), Arc::new(SystemClock), "inproc://status") };
    let mut tasks = Supervisor::new();
    tasks.add(task::spawn(&rt, "seraph", seraph::Sockets::open, |_| Ok(Seraph)).unwrap());
    for k in 0..3 {
        let url = db.app_url();
        tasks.add(task::spawn(&rt, &format!("oracle_{k}"), oracle::Sockets::open, move |s| Oracle::start(s, &url, Duration::from_secs(60))).unwrap());
    }
    // Every oracle connected before the clock starts.
    let client = DbClient::connect(&zmq, wiring::DB.address(), Duration::from_secs(60)).unwrap();
    for _ in 0..12 {
        client.call(PackageExists { package: "pkg-1".into() }).unwrap();
    }

    let mut config = IndexConfig::new(out.path(), ed25519_dalek::SigningKey::from_bytes(&[42; 32]));
    if let Some(ms) = std::env::var("BENCH_WINDOW_MS").ok().and_then(|v| v.parse().ok()) {
        config.window = Duration::from_millis(ms);
    }
    config.durable = std::env::var("BENCH_NOSYNC").map_or(true, |v| v != "1");
    if let Some(threads) = std::env::var("BENCH_THREADS").ok().and_then(|v| v.parse().ok()) {
        config.threads = threads;
    }
    let threads = config.threads;
    let window = config.window;
    let durable = config.durable;
    let stamp = out.path().join(".piwheels-index");
    let fingerprint = piwheels_master::index::pages::TEMPLATES_FINGERPRINT.as_str();
    let start = |name: &str, config: &IndexConfig| {
        let config = config.clone();
        task::spawn(&rt, name, |ctx| index::Sockets::open(ctx, Duration::from_secs(60)), move |_| Scribe::start(&config)).unwrap()
    };
    let wait_for_stamp = || {
        while std::fs::read_to_string(&stamp).ok().as_deref() != Some(fingerprint) {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    println!("\n## Full rewrite of the index (batches of {}, {threads} writing threads)\n", config.batch);
    println!("| tree | packages | seconds | packages (project pages) per second | files written per second |");
    println!("|---|---:|---:|---:|---:|");
    let started = Instant::now();
    let mut scribe = start("the_scribe_1", &config);
    wait_for_stamp();
    let secs = started.elapsed().as_secs_f64();
    let listed = std::fs::read_to_string(out.path().join("simple/index.json")).unwrap().matches("\"name\"").count();
    assert_eq!(listed as u64, n + 1, "every package listed in the root");
    let n = n + 1;
    println!("| empty | {n} | {secs:.1} | {:.0} | {:.0} |", n as f64 / secs, (4 * n + 2) as f64 / secs);
    let big = std::fs::read_to_string(out.path().join("project/pkg-big/index.html")).unwrap();
    assert_eq!(big.matches("<tr data-version=").count(), 20, "pkg-big's page lists its 20 releases");
    let big_page = big.len();
    let small_page = std::fs::metadata(out.path().join("project/pkg-1/index.html")).unwrap().len();
    // The same again over the written tree, as after an upgrade that changes the templates.
    scribe.control(TaskControl::Quit).unwrap();
    scribe.join(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&stamp, "other templates").unwrap();
    let started = Instant::now();
    let mut scribe = start("the_scribe_2", &config);
    wait_for_stamp();
    let secs = started.elapsed().as_secs_f64();
    println!("| written | {n} | {secs:.1} | {:.0} | {:.0} |", n as f64 / secs, (4 * n + 2) as f64 / secs);
    // The bound the file system sets, in the same run on the same file system: the same
    // threads writing each package's four pages as the writer lays them out on an empty tree
    // (the simple directory there already, as the fill left it; `project/<p>/` and its `json/`
    // made), of the pages' sizes, each to a temporary name then renamed, then one `syncfs`
    // as the writer's sweep ends with; and nothing else.
    let bound = tempfile::tempdir_in(out.path().parent().unwrap()).unwrap();
    let sizes = [
        std::fs::metadata(out.path().join("simple/pkg-1/index.html")).unwrap().len() as usize,
        std::fs::metadata(out.path().join("simple/pkg-1/index.json")).unwrap().len() as usize,
        small_page as usize,
        std::fs::metadata(out.path().join("project/pkg-1/json/index.json")).unwrap().len() as usize,
    ];
    for p in 1..=n {
        std::fs::create_dir_all(bound.path().join(format!("simple/pkg-{p}"))).unwrap();
    }
    std::process::Command::new("sync").status().unwrap();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads as u64 {
            let (bound, sizes) = (bound.path(), &sizes);
            scope.spawn(move || {
                let write = |path: std::path::PathBuf, size: usize| {
                    piwheels_master::atomic_file::write_atomically(&path, &vec![b'x'; size], Durability::Cached).unwrap();
                };
                for p in (1..=n).filter(|p| p % threads as u64 == t) {
                    let simple = bound.join(format!("simple/pkg-{p}"));
                    write(simple.join("index.html"), sizes[0]);
                    write(simple.join("index.json"), sizes[1]);
                    let project = bound.join(format!("project/pkg-{p}"));
                    std::fs::create_dir_all(project.join("json")).unwrap();
                    write(project.join("index.html"), sizes[2]);
                    write(project.join("json/index.json"), sizes[3]);
                }
            });
        }
    });
    std::process::Command::new("sync").arg("-f").arg(bound.path()).status().unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!("| (the file system alone: the same 4 pages per package, {threads} threads) | {n} | {secs:.1} | {:.0} | {:.0} |", n as f64 / secs, (4 * n) as f64 / secs);
    drop(bound);
    println!("\n## Project page sizes\n");
    println!("| project | bytes |");
    println!("|---|---:|");
    println!("| pkg-big: 20 releases, 4 ABIs, 60 wheels, 20 failed builds | {big_page} |");
    println!("| pkg-1: 2 releases, 3 wheels | {small_page} |");

    // Latency: one build at a time, as the slave driver reports it: recorded, then the log
    // and a rewrite are sent to the index writer.
    let web = Client::<WebRequest, WebReply>::connect(&zmq, wiring::WEB.address(), None).unwrap();
    let mut latencies = Vec::new();
    for i in 0..samples {
        let p = 1 + i * (n / samples.max(1)).max(1);
        let package = format!("pkg-{p}");
        let version = format!("2.0.{i}");
        let filename = format!("pkg_{p}-{version}-py3-none-any.whl");
        client.call(NewVersion { package: package.clone(), version: version.clone(), released: None, skip: String::new() }).unwrap();
        let dir = out.path().join(format!("simple/{package}"));
        std::fs::write(dir.join(&filename), filename.as_bytes()).unwrap();
        std::fs::write(dir.join(format!("{filename}.metadata")), b"Metadata-Version: 2.1\n").unwrap();
        let build = record(&package, &version, &filename);
        let rewrite = build.pending_rewrite(chrono::Utc::now());
        let build_id = client.call(LogBuild { build: Box::new(build), rewrite_at: rewrite.added_at, cross_check: false }).unwrap();
        let recorded = Instant::now();
        let request = WebRequest::Built { build_id, output: "built".into(), rewrite };
        assert_eq!(web.request(&request, Duration::from_secs(10)).unwrap(), WebReply::Done);
        let page = dir.join("index.html");
        while !std::fs::read_to_string(&page).unwrap_or_default().contains(&filename) {
            std::thread::sleep(Duration::from_millis(2));
        }
        latencies.push(recorded.elapsed().as_secs_f64());
    }
    latencies.sort_by(f64::total_cmp);
    if !latencies.is_empty() {
        println!("\n## Latency from a build recorded to its pages on disk (window {window:?}, syncfs: {durable})\n");
        println!("| samples | median s | max s |");
        println!("|---:|---:|---:|");
        println!("| {} | {:.3} | {:.3} |", latencies.len(), latencies[latencies.len() / 2], latencies[latencies.len() - 1]);
    }
    scribe.control(TaskControl::Quit).unwrap();
    scribe.join(Duration::from_secs(30));
    tasks.shutdown(Duration::from_secs(5));
}
