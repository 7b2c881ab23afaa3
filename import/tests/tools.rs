//! The administrators' tools as programs, against a real piw-master process and a real
//! database: adding, importing, removing and rebuilding, with the failure paths an operator
//! meets (a bad wheel, an unknown package, another version, no master at all).
//!
//! piw-master is another crate's binary: build it first (`cargo build -p piwheels-master`, or
//! run the whole workspace's tests); the tests that need it say so clearly when it is missing.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use piwheels_common::protocols::{AdminReply, AdminRequest, ControlReply, ControlRequest, Versions};
use piwheels_common::transport::{Client, Server};
use piwheels_master::db::migrate;
use piwheels_testsupport::db::{APP_ROLE, TestDb};
use piwheels_testsupport::free_port;
use piwheels_common::keys::Role;
use piwheels_testsupport::keys::ClientKey;
use piwheels_testsupport::pypi::FakePypi;

const WAIT: Duration = Duration::from_secs(20);

/// piw-master, found beside this test's own directory (target/debug/deps/.. is
/// target/debug).
fn master_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe.parent().and_then(Path::parent).expect("the test runs from target/<profile>/deps");
    let master = dir.join("piw-master");
    assert!(
        master.is_file(),
        "{} is missing: build it first with `cargo build -p piwheels-master --bin piw-master` (these tests run it as a process)",
        master.display()
    );
    master
}


/// A piw-master running in a temporary directory against its own database, killed when
/// dropped; its log is kept in `master.log` and shown when a test fails.
struct Master {
    child: Child,
    dir: tempfile::TempDir,
    db: TestDb,
}

impl Master {
    fn start() -> Master {
        let binary = master_binary();
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new();
        migrate::upgrade_blocking(&db.owner_url(), APP_ROLE).unwrap();
        db.execute("INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp311', 311)");
        let root = dir.path();
        let file_port = free_port();
        // piw-import uploads over tcp, so the tools have an importer's key.
        let key = ClientKey::authorized(&root.join("state"), &root.join("tools.key"), Role::Importer, "admin");
        std::fs::write(root.join("master.toml"), "[master]\noracles = 2\nstats-interval = \"1s\"\n").unwrap();
        // The tools read the shared [import] table.
        std::fs::write(
            root.join("tools.toml"),
            format!(
                "[import]\nimport-queue = \"ipc://{}/run/import\"\nfile-queue = \"tcp://127.0.0.1:{file_port}\"\nconnect-timeout = \"3s\"\ntimeout = \"1m\"\nkey = \"{}\"\nmaster-key = \"{}\"\n",
                root.display(),
                key.file.display(),
                key.master
            ),
        )
        .unwrap();
        let log = File::create(root.join("master.log")).unwrap();
        let child = Command::new(binary)
            .arg("--config")
            .arg(root.join("master.toml"))
            .args(["--dsn", &db.app_url()])
            .arg("--file-queue")
            .arg(format!("tcp://127.0.0.1:{file_port}"))
            .arg("--slave-queue")
            .arg(format!("tcp://127.0.0.1:{}", free_port()))
            .arg("--output-path")
            .arg(root.join("www"))
            .arg("--state-dir")
            .arg(root.join("state"))
            .arg("--control-queue")
            .arg(format!("ipc://{}/run/control", root.display()))
            .arg("--status-queue")
            .arg(format!("ipc://{}/run/status", root.display()))
            .arg("--import-queue")
            .arg(format!("ipc://{}/run/import", root.display()))
            .arg("--logger-queue")
            .arg(format!("ipc://{}/run/logger", root.display()))
            .env_remove("PIW_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let master = Master { child, dir, db };
        master.wait_until_up();
        master
    }

    /// Waits until the master answers on its control socket and its admin socket exists.
    fn wait_until_up(&self) {
        let ctx = zmq::Context::new();
        let deadline = Instant::now() + WAIT;
        let control = format!("ipc://{}/run/control", self.dir.path().display());
        loop {
            let client = Client::<ControlRequest, ControlReply>::connect(&ctx, &control, None).unwrap();
            let hello = ControlRequest::Hello { versions: Versions::current(), client: "test".into() };
            if client.request(&hello, Duration::from_millis(300)).is_ok() && self.dir.path().join("run/import").exists() {
                let _ = client.socket().set_linger(0);
                return;
            }
            let _ = client.socket().set_linger(0);
            assert!(Instant::now() < deadline, "the master did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("master.log")).unwrap_or_default()
    }

    fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// Runs a tool with the shared configuration file.
    fn tool(&self, name: &str, args: &[&str]) -> Run {
        run_tool(name, &self.dir.path().join("tools.toml"), args)
    }

    fn query(&self, sql: &str) -> Vec<String> {
        self.db.column(sql).into_iter().map(Option::unwrap_or_default).collect()
    }

    /// A wheel of `name` `version` in the test's directory.
    fn wheel(&self, name: &str, version: &str) -> PathBuf {
        make_wheel(self.dir.path(), name, version)
    }

    /// Waits for `cond`, failing with `what` and the master's log.
    fn eventually(&self, what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; master log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Checks the output tree against the database: every wheel on disk is a file the
    /// database knows, in its package's directory, with its .metadata; every file the
    /// database knows is on disk; every build log is a build's; every link of a page to a
    /// wheel, a log or a package's page leads somewhere. Returns the problems found.
    fn tree_problems(&self) -> Vec<String> {
        let www = self.www();
        let known: Vec<(String, String)> = self
            .db
            .column("SELECT b.package || ' ' || f.filename FROM files f JOIN builds b USING (build_id)")
            .into_iter()
            .flatten()
            .map(|row| {
                let (package, file) = row.split_once(' ').unwrap();
                (package.to_string(), file.to_string())
            })
            .collect();
        let builds: Vec<i64> = self.db.column("SELECT build_id::text FROM builds").into_iter().flatten().map(|id| id.parse().unwrap()).collect();
        let mut problems = Vec::new();
        for (package, file) in &known {
            let path = www.join("simple").join(package).join(file);
            if !path.is_file() {
                problems.push(format!("{file} is in the database but not at {}", path.display()));
            }
        }
        for path in walk(&www) {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_symlink() && !path.exists() {
                problems.push(format!("dangling symbolic link {}", path.display()));
            }
            if let Some(wheel) = name.strip_suffix(".metadata") {
                if !path.with_file_name(wheel).is_file() {
                    problems.push(format!("{} has no wheel beside it", path.display()));
                }
            } else if let Some(stem) = name.strip_suffix(".txt.gz") {
                // logs/AAAA/BBBB/CCCC.txt.gz is the log of build AAAABBBBCCCC.
                let relative = path.strip_prefix(www.join("logs")).map(|p| p.with_file_name(stem)).unwrap_or_default();
                let digits: String = relative.to_string_lossy().chars().filter(char::is_ascii_digit).collect();
                if !builds.contains(&digits.parse::<i64>().unwrap_or(-1)) {
                    problems.push(format!("orphan build log {}", path.display()));
                }
            } else if name.ends_with(".whl") {
                let package = path.parent().and_then(Path::file_name).unwrap().to_string_lossy().to_string();
                if !known.contains(&(package, name.clone())) {
                    problems.push(format!("orphan file {}", path.display()));
                }
            } else if name.ends_with(".html") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for target in links(&text) {
                    let resolved = match target.strip_prefix('/') {
                        Some(rooted) => www.join(rooted),
                        None => path.parent().unwrap().join(&target),
                    };
                    let inside = ["simple", "project", "logs"].iter().any(|dir| resolved.starts_with(www.join(dir)));
                    let checked = [".whl", ".metadata", ".gz", "/"].iter().any(|end| target.ends_with(end));
                    if inside && checked && !resolved.exists() {
                        problems.push(format!("{} links {target}, which does not exist", path.display()));
                    }
                }
            }
        }
        problems
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- master log ---\n{}", self.log());
        }
    }
}

/// Every file and symbolic link under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// The `href` targets of a page, without fragments or queries, leaving out other sites.
fn links(html: &str) -> Vec<String> {
    html.split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|target| target.split(['#', '?']).next().unwrap_or_default().to_string())
        .filter(|target| !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:"))
        .collect()
}

/// A finished tool run.
struct Run {
    output: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).to_string()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).to_string()
    }

    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    #[track_caller]
    fn succeeded(&self) -> String {
        assert!(self.output.status.success(), "exit {:?}\nstdout: {}\nstderr: {}", self.code(), self.stdout(), self.stderr());
        self.stdout()
    }

    /// The one line the tool printed on stderr for a failure with `code`.
    #[track_caller]
    fn failed(&self, code: i32) -> String {
        assert_eq!(self.code(), Some(code), "stdout: {}\nstderr: {}", self.stdout(), self.stderr());
        let stderr = self.stderr();
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line of reason expected: {stderr}");
        lines[0].to_string()
    }
}

/// Runs one of this crate's tools with `config` as its configuration file; standard input is
/// empty (not a terminal).
fn run_tool(name: &str, config: &Path, args: &[&str]) -> Run {
    let binary = match name {
        "piw-import" => env!("CARGO_BIN_EXE_piw-import"),
        "piw-add" => env!("CARGO_BIN_EXE_piw-add"),
        "piw-remove" => env!("CARGO_BIN_EXE_piw-remove"),
        "piw-rebuild" => env!("CARGO_BIN_EXE_piw-rebuild"),
        other => panic!("no tool {other}"),
    };
    let output = Command::new(binary)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("PIW_LOG")
        .env_remove("PIW_IMPORT_QUEUE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run { output }
}

/// A small but real wheel of `name` `version` for cp311 on armv7l: a module, METADATA and WHEEL.
fn make_wheel(dir: &Path, name: &str, version: &str) -> PathBuf {
    let module = name.replace('-', "_").to_lowercase();
    let path = dir.join(format!("{module}-{version}-cp311-cp311-linux_armv7l.whl"));
    let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let dist_info = format!("{module}-{version}.dist-info");
    let members = [
        (format!("{module}/__init__.py"), "VALUE = 42\n".to_string()),
        (format!("{dist_info}/METADATA"), format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Python: >=3.9\n")),
        (format!("{dist_info}/WHEEL"), "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp311-cp311-linux_armv7l\n".to_string()),
    ];
    for (member, text) in members {
        zip.start_file(member, options).unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.finish().unwrap();
    path
}

// ------------------------------------------------------------------------------------------
// Against a real master
// ------------------------------------------------------------------------------------------

#[test]
fn add_import_and_remove_keep_the_tree_and_the_database_in_step() {
    let master = Master::start();
    let out = master.tool("piw-add", &["Foo_Bar", "-d", "A test package", "-a", "foo.bar"]).succeeded();
    assert!(out.contains("added package foo-bar"), "{out}");
    let out = master.tool("piw-add", &["foo-bar", "1.0", "--released", "2024-01-31"]).succeeded();
    assert!(out.contains("added version foo-bar 1.0"), "{out}");
    assert_eq!(master.query("SELECT package || ' ' || description FROM packages"), ["foo-bar A test package"]);

    let wheel = master.wheel("Foo_Bar", "1.0");
    let filename = wheel.file_name().unwrap().to_string_lossy().to_string();
    let out = master.tool("piw-import", &[wheel.to_str().unwrap(), "--duration", "1m"]).succeeded();
    assert!(out.contains(&format!("sent {filename}")), "{out}");
    assert!(out.contains("imported foo-bar 1.0 for cp311 as build"), "{out}");
    assert!(master.www().join("simple/foo-bar").join(&filename).is_file());
    assert_eq!(master.query("SELECT filename FROM files"), std::slice::from_ref(&filename));
    assert_eq!(master.query("SELECT built_by::text || ' ' || abi_tag FROM builds"), ["0 cp311"]);
    // The index writer publishes the package's simple page, linking the file.
    master.eventually("the simple page to link the wheel", || {
        std::fs::read_to_string(master.www().join("simple/foo-bar/index.html")).is_ok_and(|page| page.contains(&filename))
    });
    assert_eq!(master.tree_problems(), Vec::<String>::new());
    let audit = master.query("SELECT action FROM audit_log ORDER BY audit_id");
    // piw-add with a version sends the package too (a no-op for a known one), then the version.
    assert_eq!(audit, ["add-package", "add-package", "add-version", "import"]);

    // Removing the version removes its file and every link to it.
    let out = master.tool("piw-remove", &["foo-bar", "1.0", "--yes"]).succeeded();
    assert!(out.contains("removed version foo-bar 1.0"), "{out}");
    assert!(master.query("SELECT filename FROM files").is_empty());
    master.eventually("the wheel to go", || !master.www().join("simple/foo-bar").join(&filename).exists());
    master.eventually("a tree without orphans or dangling links", || master.tree_problems().is_empty());

    // Import again, then remove the whole package.
    master.tool("piw-add", &["foo-bar", "1.0"]).succeeded();
    master.tool("piw-import", &[wheel.to_str().unwrap()]).succeeded();
    let out = master.tool("piw-remove", &["foo-bar", "--yes"]).succeeded();
    assert!(out.contains("removed package foo-bar"), "{out}");
    assert!(master.query("SELECT package FROM packages").is_empty());
    master.eventually("the package's files and pages to go", || {
        !master.www().join("simple/foo-bar").join(&filename).exists() && master.tree_problems().is_empty()
    });
}

#[test]
fn removing_only_builds_or_skipping_leaves_no_orphans() {
    let master = Master::start();
    master.tool("piw-add", &["foo"]).succeeded();
    for version in ["1.0", "2.0"] {
        master.tool("piw-add", &["foo", version]).succeeded();
        let wheel = master.wheel("foo", version);
        master.tool("piw-import", &[wheel.to_str().unwrap(), "--delete"]).succeeded();
        assert!(!wheel.exists(), "--delete removes the imported file");
    }
    assert_eq!(master.query("SELECT count(*)::text FROM files"), ["2"]);
    let out = master.tool("piw-remove", &["foo", "1.0", "--builds", "--yes"]).succeeded();
    assert!(out.contains("removed the builds and files of version foo 1.0"), "{out}");
    let out = master.tool("piw-remove", &["foo", "2.0", "--skip", "broken", "--yes"]).succeeded();
    assert!(out.contains("skipped it: broken"), "{out}");
    assert_eq!(master.query("SELECT version || ':' || skip FROM versions ORDER BY version"), ["1.0:", "2.0:broken"]);
    assert!(master.query("SELECT filename FROM files").is_empty());
    // A yank carries its reason, which the index gives installers (PEP 592).
    let out = master.tool("piw-remove", &["foo", "1.0", "--yank", "--yank-reason", "crashes on armv6", "--yes"]).succeeded();
    assert!(out.contains("yanked version foo 1.0: crashes on armv6"), "{out}");
    assert_eq!(master.query("SELECT yank_reason FROM versions WHERE yanked"), ["crashes on armv6"]);
    master.eventually("a tree without orphans or dangling links", || {
        master.tree_problems().is_empty() && walk(&master.www()).iter().all(|p| !p.to_string_lossy().ends_with(".whl"))
    });
    // The check itself sees a stray file.
    let stray = master.www().join("simple/foo/foo-3.0-cp311-cp311-linux_armv7l.whl");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"stray").unwrap();
    assert!(master.tree_problems().iter().any(|p| p.starts_with("orphan file")), "{:?}", master.tree_problems());
}

#[test]
fn piw_import_refuses_bad_wheels_and_unknown_releases_with_one_line() {
    let master = Master::start();
    // Not a zip archive.
    let bad = master.dir.path().join("foo-1.0-cp311-cp311-linux_armv7l.whl");
    std::fs::write(&bad, b"this is not a zip archive").unwrap();
    let line = master.tool("piw-import", &[bad.to_str().unwrap()]).failed(1);
    assert!(line.starts_with("piw-import: ") && line.contains("not a zip archive"), "{line}");
    // Not a wheel's name.
    let odd = master.dir.path().join("foo.zip");
    std::fs::write(&odd, b"x").unwrap();
    let line = master.tool("piw-import", &[odd.to_str().unwrap()]).failed(1);
    assert!(line.contains("invalid wheel file name"), "{line}");
    // A package the master does not know.
    let wheel = master.wheel("foo", "1.0");
    let line = master.tool("piw-import", &[wheel.to_str().unwrap()]).failed(1);
    assert!(line.contains("unknown package foo") && line.contains("--register"), "{line}");
    // An ABI the farm does not build.
    let line = master.tool("piw-import", &[wheel.to_str().unwrap(), "--register", "--abi", "cp27mu"]).failed(1);
    assert!(line.contains("unknown ABI cp27mu"), "{line}");
    assert!(master.query("SELECT filename FROM files").is_empty());
    // Registered on the way, it goes in.
    let out = master.tool("piw-import", &[wheel.to_str().unwrap(), "--register"]).succeeded();
    assert!(out.contains("imported foo 1.0"), "{out}");
    assert_eq!(master.query("SELECT package || ' ' || version FROM versions"), ["foo 1.0"]);
    assert!(master.tree_problems().is_empty(), "{:?}", master.tree_problems());
}

#[test]
fn piw_import_says_so_when_the_file_socket_does_not_answer() {
    let master = Master::start();
    let config = master.dir.path().join("wrong-files.toml");
    let text = std::fs::read_to_string(master.dir.path().join("tools.toml")).unwrap();
    let wrong = text.lines().map(|l| if l.starts_with("file-queue") { format!("file-queue = \"tcp://127.0.0.1:{}\"", free_port()) } else { l.to_string() });
    std::fs::write(&config, wrong.collect::<Vec<_>>().join("\n")).unwrap();
    let wheel = master.wheel("foo", "1.0");
    let run = run_tool("piw-import", &config, &[wheel.to_str().unwrap(), "--register"]);
    let line = run.failed(1);
    assert!(line.contains("did not answer") && line.contains("--file-queue"), "{line}");
    assert!(master.query("SELECT filename FROM files").is_empty());
}

#[test]
fn piw_remove_and_piw_rebuild_ask_first_and_tell_unknown_packages() {
    let master = Master::start();
    master.tool("piw-add", &["foo"]).succeeded();
    // Standard input is not a terminal: nobody to ask, nothing done.
    let line = master.tool("piw-remove", &["foo"]).failed(2);
    assert!(line.contains("--yes"), "{line}");
    assert_eq!(master.query("SELECT package FROM packages"), ["foo"]);
    let line = master.tool("piw-remove", &["nope", "--yes"]).failed(1);
    assert!(line.contains("unknown package nope"), "{line}");
    let line = master.tool("piw-remove", &["foo", "9.9", "--yes"]).failed(1);
    assert!(line.contains("unknown version foo 9.9"), "{line}");

    for args in [&["home"][..], &["search"], &["project", "foo", "--no-wait"]] {
        let out = master.tool("piw-rebuild", args).succeeded();
        assert!(!out.trim().is_empty(), "{args:?}");
    }
    // Pages are waited for until they are written, and the tool says so.
    for args in [&["index", "foo"][..], &["index", "--yes"]] {
        let out = master.tool("piw-rebuild", args).succeeded();
        assert!(out.contains("every page asked for is written"), "{args:?}: {out}");
        assert!(master.query("SELECT package FROM rewrites_pending").is_empty(), "{args:?}");
    }
    assert!(master.tool("piw-rebuild", &["project"]).failed(2).contains("--yes"));
    let line = master.tool("piw-rebuild", &["project", "nope"]).failed(1);
    assert!(line.contains("unknown package nope"), "{line}");
    let line = master.tool("piw-rebuild", &["home", "foo"]).failed(2);
    assert!(line.contains("only project, index, build and cross-check take a package"), "{line}");

    // A new build of a release: the tool checks its words, the master the release.
    for (args, why) in [
        (&["build", "foo"][..], "build needs a PACKAGE and a VERSION"),
        (&["cross-check", "foo"], "cross-check needs a PACKAGE and a VERSION"),
        (&["project", "foo", "1.0"], "only build and cross-check take a version"),
        (&["home", "--abi", "cp311"], "only build and cross-check take an ABI"),
    ] {
        let line = master.tool("piw-rebuild", args).failed(2);
        assert!(line.contains(why), "{args:?}: {line}");
    }
    let line = master.tool("piw-rebuild", &["build", "foo", "9.9"]).failed(1);
    assert!(line.contains("unknown version foo 9.9"), "{line}");
    master.tool("piw-add", &["foo", "1.0"]).succeeded();
    let line = master.tool("piw-rebuild", &["build", "foo", "1.0"]).failed(1);
    assert!(line.contains("foo 1.0 has no build on an ABI the farm builds"), "{line}");
    let abi = master.query("SELECT abi_tag FROM build_abis LIMIT 1").remove(0);
    let line = master.tool("piw-rebuild", &["build", "foo", "1.0", "--abi", &abi]).succeeded();
    assert!(line.contains(&format!("foo 1.0 is to be built again on {abi}")), "{line}");
    assert_eq!(master.query("SELECT package || ' ' || version || ' ' || abi_tag FROM rebuilds_wanted"), [format!("foo 1.0 {abi}")]);
    // A cross-check needs a successful build to repeat.
    let line = master.tool("piw-rebuild", &["cross-check", "foo", "9.9"]).failed(1);
    assert!(line.contains("unknown version foo 9.9"), "{line}");
    let line = master.tool("piw-rebuild", &["cross-check", "foo", "1.0"]).failed(1);
    assert!(line.contains("foo 1.0 has no successful build to cross-check"), "{line}");
}

// ------------------------------------------------------------------------------------------
// Without a master
// ------------------------------------------------------------------------------------------

#[test]
fn every_tool_says_clearly_when_no_master_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = make_wheel(dir.path(), "foo", "1.0");
    let port = free_port();
    // The tools are set up as for a real farm, with a key, but no master runs.
    let key = ClientKey::unknown(&dir.path().join("state"), &dir.path().join("tools.key"));
    let key = format!("key = \"{}\"\nmaster-key = \"{}\"\n", key.file.display(), key.master);
    let configs = [
        // No socket file at all: told at once.
        ("ipc", format!("[import]\nimport-queue = \"ipc://{}/run/import\"\n{key}", dir.path().display()), "does not exist"),
        // Nobody listening on a tcp port: told after the connect timeout.
        ("tcp", format!("[import]\nimport-queue = \"tcp://127.0.0.1:{port}\"\nconnect-timeout = \"2s\"\n{key}"), "no answer from the master"),
    ];
    for (kind, text, expected) in configs {
        let config = dir.path().join(format!("{kind}.toml"));
        std::fs::write(&config, text).unwrap();
        let runs = [
            ("piw-import", vec![wheel.to_str().unwrap()]),
            ("piw-add", vec!["foo"]),
            ("piw-remove", vec!["foo", "--yes"]),
            ("piw-rebuild", vec!["home"]),
        ];
        for (tool, args) in runs {
            let run = run_tool(tool, &config, &args);
            let line = run.failed(1);
            assert!(line.starts_with(&format!("{tool}: ")) && line.contains(expected), "{kind} {tool}: {line}");
            assert!(line.contains("piw-master running"), "{kind} {tool}: {line}");
        }
    }
}

#[test]
fn a_master_of_another_version_is_refused_with_its_reason_shown() {
    // An admin endpoint that refuses every hello as a master of another version would.
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("ipc://{}/run/import", dir.path().display());
    let ctx = zmq::Context::new();
    let server = Server::<AdminRequest, AdminReply>::bind(&ctx, &endpoint, None).unwrap();
    let reason = "version mismatch: this side runs protocol 99 (software 9.9.9), the peer runs protocol 1 (software 0.1.0)";
    let thread = std::thread::spawn(move || {
        for _ in 0..2 {
            let (peer, request) = server.recv().unwrap();
            assert!(matches!(request, Ok(AdminRequest::Hello { .. })));
            server.send(&peer, &AdminReply::Error(piwheels_common::protocols::WireError::refused(reason))).unwrap();
        }
    });
    let config = dir.path().join("tools.toml");
    std::fs::write(&config, format!("[import]\nimport-queue = \"{endpoint}\"\n")).unwrap();
    for (tool, args) in [("piw-add", &["foo"][..]), ("piw-rebuild", &["home"])] {
        let line = run_tool(tool, &config, args).failed(1);
        assert!(line.contains("refused us") && line.contains(reason), "{tool}: {line}");
    }
    thread.join().unwrap();
}

#[test]
fn the_masters_own_failure_is_exit_status_75_and_a_refusal_1() {
    // An admin endpoint that welcomes every tool, then fails its request: first as the master's
    // own failure, then as a refusal.
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("ipc://{}/run/import", dir.path().display());
    let ctx = zmq::Context::new();
    let server = Server::<AdminRequest, AdminReply>::bind(&ctx, &endpoint, None).unwrap();
    let answers = [
        piwheels_common::protocols::WireError::unavailable("the master is paused: try again once it is resumed"),
        piwheels_common::protocols::WireError::refused("unknown package foo"),
    ];
    let thread = std::thread::spawn(move || {
        for answer in answers {
            let (peer, request) = server.recv().unwrap();
            assert!(matches!(request, Ok(AdminRequest::Hello { .. })));
            server.send(&peer, &AdminReply::Welcome { abis: vec!["cp311".into()] }).unwrap();
            let (peer, request) = server.recv().unwrap();
            assert!(matches!(request, Ok(AdminRequest::RemovePackage { .. })), "{request:?}");
            server.send(&peer, &AdminReply::Error(answer)).unwrap();
        }
    });
    let config = dir.path().join("tools.toml");
    std::fs::write(&config, format!("[import]\nimport-queue = \"{endpoint}\"\n")).unwrap();
    let line = run_tool("piw-remove", &config, &["--yes", "foo"]).failed(75);
    assert_eq!(line, "piw-remove: the master is paused: try again once it is resumed");
    let line = run_tool("piw-remove", &config, &["--yes", "foo"]).failed(1);
    assert_eq!(line, "piw-remove: unknown package foo");
    thread.join().unwrap();
}

/// piw-rebuild follows the count of pages left to write until it is 0, and stops waiting,
/// with exit status 1, when it has not moved for `--give-up-after`: against a stand-in master
/// whose count goes 3, 2, 0, then one whose count stays at 3.
#[test]
fn piw_rebuild_waits_for_the_pages_and_gives_up_when_none_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("ipc://{}/run/import", dir.path().display());
    let ctx = zmq::Context::new();
    let server = Server::<AdminRequest, AdminReply>::bind(&ctx, &endpoint, None).unwrap();
    let thread = std::thread::spawn(move || {
        for counts in [vec![3, 2, 0], vec![3; 1000]] {
            let mut counts = counts.into_iter();
            loop {
                let (peer, request) = server.recv().unwrap();
                let answer = match request.unwrap() {
                    AdminRequest::Hello { .. } => AdminReply::Welcome { abis: vec!["cp311".into()] },
                    AdminRequest::Rebuild(_) => AdminReply::Done { message: "the rewrite of foo is queued".into() },
                    AdminRequest::RewritesPending => match counts.next() {
                        Some(packages) => AdminReply::Pending { packages },
                        None => break,
                    },
                    other => panic!("unexpected {other:?}"),
                };
                let last = matches!(answer, AdminReply::Pending { packages: 0 });
                server.send(&peer, &answer).unwrap();
                if last {
                    break;
                }
            }
        }
    });
    let config = dir.path().join("tools.toml");
    std::fs::write(&config, format!("[import]\nimport-queue = \"{endpoint}\"\n")).unwrap();
    let out = run_tool("piw-rebuild", &config, &["index", "foo"]).succeeded();
    assert!(out.contains("the rewrite of foo is queued") && out.contains("every page asked for is written (3 package(s))"), "{out}");
    let line = run_tool("piw-rebuild", &config, &["index", "foo", "--give-up-after", "2s"]).failed(1);
    assert!(line.contains("3 package(s)' pages have not been written for 2s"), "{line}");
    drop(thread);
}

#[test]
fn piw_add_with_a_version_registers_a_new_package_too() {
    let master = Master::start();
    let out = master.tool("piw-add", &["Brand.New", "2.0"]).succeeded();
    assert!(out.contains("added package brand-new") && out.contains("added version brand-new 2.0"), "{out}");
    assert_eq!(master.query("SELECT package || ' ' || version FROM versions"), ["brand-new 2.0"]);
    // Again: the package line says nothing, the version line says nothing changed.
    let out = master.tool("piw-add", &["brand-new", "2.0"]).succeeded();
    assert_eq!(out.trim(), "version brand-new 2.0 exists already; nothing changed");
}

// ------------------------------------------------------------------------------------------
// piw-add --with-deps, against a fake PyPI
// ------------------------------------------------------------------------------------------


#[test]
fn piw_add_with_deps_registers_what_the_requirements_resolve_to_on_each_abi() {
    let master = Master::start();
    // Two ABIs the farm builds, and one it skips, which the master leaves out of its welcome.
    master.db.execute("INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp39', 309)");
    master.db.execute("INSERT INTO build_abis (abi_tag, python_version, skip) VALUES ('cp37m', 307, 'retired')");
    let pypi = FakePypi::holding(&[
        ("App", "1.0", Some(">=3.8"), &["lib>=1.0", "modern; python_version >= \"3.10\"", "FastLib[speedups]>=1", "missing>=1"]),
        // A newer App than the one asked for: the cycle through lib leads back to 1.0.
        ("App", "2.0", Some(">=3.8"), &[]),
        // lib 2.0 needs Python 3.10 (so cp39 gets 1.0); 2.1 is yanked.
        ("lib", "1.0", Some(">=3.8"), &["app"]),
        ("lib", "2.0", Some(">=3.10"), &["app>=0.5"]),
        ("lib", "2.1", None, &[]),
        // A cycle among dependencies; helper's newest is a pre-release.
        ("modern", "1.0", None, &["helper"]),
        ("helper", "1.0", None, &["modern>=1"]),
        ("helper", "2.0b1", None, &[]),
        // Only the extra asked for is followed.
        ("FastLib", "1.0", None, &["speedlib; extra == \"speedups\"", "unused; extra == \"docs\""]),
        ("speedlib", "1.0", None, &[]),
        ("unused", "1.0", None, &[]),
    ]);
    pypi.yank("lib", "2.1");

    let out = master.tool("piw-add", &["App", "1.0", "--with-deps", "--pypi-json", &pypi.json_url()]).succeeded();
    let releases = master.query("SELECT package || ' ' || version FROM versions ORDER BY package, version");
    assert_eq!(releases, ["app 1.0", "fastlib 1.0", "helper 1.0", "lib 1.0", "lib 2.0", "modern 1.0", "speedlib 1.0"], "{out}");
    // The operator is told what was added and why, for which ABIs, and what was not resolved.
    for line in [
        "resolving the dependencies of App 1.0 for cp39, cp311 from ",
        "App 1.0: asked for\n  added package app\n  added version app 1.0\n",
        "lib 1.0: required by App 1.0 (lib>=1.0) for cp39\n  added package lib\n  added version lib 1.0\n",
        "lib 2.0: required by App 1.0 (lib>=1.0) for cp311\n  added version lib 2.0\n",
        "modern 1.0: required by App 1.0 (modern; python_version >= \"3.10\") for cp311; required by helper 1.0 (modern>=1) for cp311\n",
        "helper 1.0: required by modern 1.0 (helper) for cp311\n",
        "FastLib 1.0: required by App 1.0 (FastLib[speedups]>=1) for cp39, cp311\n  added package fastlib\n",
        "speedlib 1.0: required by FastLib 1.0 (speedlib; extra == \"speedups\") for cp39, cp311\n",
        "not resolved:\n  missing>=1 (required by App 1.0), for cp39, cp311: cannot read the releases of missing: the index does not know it\n",
        "7 release(s) registered; 1 not resolved (listed above)",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
    // Every registration went through the admin endpoint, to the audit log.
    assert_eq!(master.query("SELECT count(*)::text FROM audit_log WHERE action = 'add-version'"), ["7"]);

    // Again: everything exists already, and nothing changes.
    let out = master.tool("piw-add", &["App", "1.0", "--with-deps", "--pypi-json", &pypi.json_url()]).succeeded();
    assert!(out.contains("  version lib 2.0 exists already; nothing changed"), "{out}");
    assert_eq!(master.query("SELECT count(*)::text FROM versions"), ["7"]);
}

#[test]
fn piw_add_with_deps_stops_at_a_bound_and_adds_nothing() {
    let master = Master::start();
    let pypi = FakePypi::holding(&[("a", "1.0", None, &["b"]), ("b", "1.0", None, &["c"]), ("c", "1.0", None, &["d"]), ("d", "1.0", None, &[])]);
    let line = master.tool("piw-add", &["a", "1.0", "--with-deps", "--max-releases", "3", "--pypi-json", &pypi.json_url()]).failed(1);
    assert_eq!(
        line,
        "piw-add: the dependencies need more than 3 releases (d 1.0, required by c 1.0 (d) would be one more); nothing was added: \
         raise --max-releases, or add the releases one by one"
    );
    let line = master.tool("piw-add", &["a", "1.0", "--with-deps", "--max-depth", "2", "--pypi-json", &pypi.json_url()]).failed(1);
    assert!(line.contains("deeper than 2 levels (a 1.0 → b 1.0 → c 1.0 → d 1.0)") && line.contains("--max-depth"), "{line}");
    // A release the index does not know, and an index not given at all.
    let line = master.tool("piw-add", &["a", "9.9", "--with-deps", "--pypi-json", &pypi.json_url()]).failed(1);
    assert_eq!(line, "piw-add: cannot read a 9.9 from the index: the index does not know it; nothing was added");
    let line = master.tool("piw-add", &["a", "1.0", "--with-deps"]).failed(2);
    assert!(line.contains("--pypi-json"), "{line}");
    assert!(master.query("SELECT package FROM packages").is_empty());
    assert!(master.query("SELECT action FROM audit_log").is_empty());
}
