//! The admin endpoint with the file juggler, real oracles and a real database; the index
//! writer, the slave driver's deletion socket, the stats task and the architect are played by
//! the test. Tools are played by the test too, over a real ipc socket: hello and versions,
//! imports and their failures, registrations, removals, rebuilds, pauses and bad input.

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use piwheels_common::protocols::{AdminReply, AdminRequest, FailureClass, ImportRequest, RebuildTarget, RequeueRequest, TaskControl, Versions, WheelFile, WireError};
use piwheels_master::calls::db::RewriteScope;
use piwheels_master::calls::tasks::{ArchitectTrigger, ReleaseAck, ReleaseNotice, StatsUpdate, WebReply, WebRequest};
use piwheels_common::task::{self, TaskHandle};
use piwheels_common::transport::{Client, Receiver};
use piwheels_common::upload::{UploadOptions, upload};
use piwheels_master::mr_chase::{self, ChaseConfig, MrChase};
use piwheels_testsupport::data::{wheel_bytes, wheel_file};
use support::{Pool, eventually, stand_in};
use piwheels_common::transport::Security;
use piwheels_master::gatekeeper::Auth;
use piwheels_master::wiring;

const WAIT: Duration = Duration::from_secs(10);

/// The tasks an administrator's tool meets, over a real database.
struct Farm {
    pool: Pool,
    dir: tempfile::TempDir,
    file_endpoint: String,
    import_endpoint: String,
    chase: TaskHandle,
    web: Arc<Mutex<Vec<WebRequest>>>,
    deletes: Arc<Mutex<Vec<ReleaseNotice>>>,
    stats: Receiver<StatsUpdate>,
    triggers: Receiver<ArchitectTrigger>,
}


impl Farm {
    /// A farm building for cp311 whose database holds `releases` (package, version).
    fn start(releases: &[(&str, &str)]) -> Farm {
        Farm::start_with(releases, WAIT)
    }

    /// [`Farm::start`] with the admin endpoint waiting at most `db_timeout` for the database.
    fn start_with(releases: &[(&str, &str)], db_timeout: Duration) -> Farm {
        let mut pool = Pool::with_releases(releases);
        let dir = tempfile::tempdir().unwrap();
        let file_endpoint = pool.start_file_juggler(dir.path());
        let web = stand_in(&pool.rt.zmq, "inproc://web", WebReply::Done);
        let deletes = stand_in(&pool.rt.zmq, "inproc://release-notices", ReleaseAck::Done);
        let stats = Receiver::pull(&pool.rt.zmq, wiring::STATS.address(), None).unwrap();
        let triggers = Receiver::pull(&pool.rt.zmq, wiring::ARCHITECT.address(), None).unwrap();
        let import_endpoint = format!("ipc://{}/run/import", dir.path().display());
        let config = ChaseConfig { import_queue: import_endpoint.clone(), db_timeout, auth: Auth::disabled(), debian_contents: false };
        let (open_config, status) = (config.clone(), pool.rt.status_endpoint.clone());
        let chase = task::spawn(
            &pool.rt,
            "mr_chase",
            move |ctx| mr_chase::Sockets::open(ctx, &open_config, &status),
            move |_| Ok(MrChase::new(config.clone())),
        )
        .unwrap();
        Farm { pool, dir, file_endpoint, import_endpoint, chase, web, deletes, stats, triggers }
    }

    /// A tool that has said hello as `actor`.
    fn tool(&self, actor: &str) -> Tool {
        let tool = self.stranger();
        // The farm of [`Farm::start`] builds for cp311 only.
        assert_eq!(tool.ask(AdminRequest::Hello { versions: Versions::current(), actor: actor.into() }), AdminReply::Welcome { abis: vec!["cp311".into()] });
        tool
    }

    /// A tool that has not said hello.
    fn stranger(&self) -> Tool {
        Tool {
            ctx: self.pool.rt.zmq.clone(),
            client: Client::connect(&self.pool.rt.zmq, &self.import_endpoint, None).unwrap(),
            file_endpoint: self.file_endpoint.clone(),
        }
    }

    fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    fn web_requests(&self) -> Vec<WebRequest> {
        self.web.lock().unwrap().clone()
    }

    fn query(&self, sql: &str) -> Vec<String> {
        self.pool.db.column(sql).into_iter().map(|v| v.unwrap_or_default()).collect()
    }

    fn builds(&self) -> Vec<String> {
        self.query("SELECT concat_ws(' ', package, version, built_by, abi_tag, status) FROM builds ORDER BY build_id")
    }

    fn files(&self) -> Vec<String> {
        self.query("SELECT filename FROM files ORDER BY filename")
    }

    fn audit(&self) -> Vec<String> {
        self.query("SELECT concat_ws(' | ', actor, action, detail) FROM audit_log ORDER BY audit_id")
    }

    /// Wheel files on disk for `package` `version`, one per platform tag, each holding
    /// `package platform` as its payload.
    fn wheels(&self, package: &str, version: &str, platforms: &[&str]) -> Vec<(PathBuf, WheelFile)> {
        platforms
            .iter()
            .map(|platform| {
                let filename = format!("{package}-{version}-cp311-cp311-{platform}.whl");
                let bytes = wheel_bytes(&filename, format!("{package} {platform}").as_bytes());
                let path = self.dir.path().join(&filename);
                std::fs::write(&path, &bytes).unwrap();
                (path, wheel_file(&filename, &bytes))
            })
            .collect()
    }

    fn drain_triggers(&self) -> usize {
        let mut n = 0;
        while let Ok(Some(_)) = self.triggers.recv_timeout(Duration::from_millis(100)) {
            n += 1;
        }
        n
    }
}

/// A tool played by the test.
struct Tool {
    ctx: zmq::Context,
    client: Client<AdminRequest, AdminReply>,
    file_endpoint: String,
}

fn import_request(package: &str, version: &str, files: &[(PathBuf, WheelFile)]) -> ImportRequest {
    ImportRequest {
        package: package.into(),
        version: version.into(),
        abi: "cp311".into(),
        duration: Duration::from_secs(42),
        output: "built by hand".into(),
        files: files.iter().map(|(_, f)| f.clone()).collect(),
    }
}

impl Tool {
    fn ask(&self, request: AdminRequest) -> AdminReply {
        self.client.request(&request, WAIT).unwrap()
    }

    /// Sends an import and every file asked for (from `files`, by name) until the answer is
    /// not `Send`; returns that answer and the names asked for, in order.
    fn import(&self, request: ImportRequest, files: &[(PathBuf, WheelFile)]) -> (AdminReply, Vec<String>) {
        let mut asked = Vec::new();
        let mut reply = self.ask(AdminRequest::Import(request));
        while let AdminReply::Send { filename, transfer } = reply {
            let path = path_of(files, &filename);
            upload(&self.ctx, &self.file_endpoint, &Security::Plain, transfer, path, UploadOptions::default()).unwrap();
            asked.push(filename.clone());
            reply = self.ask(AdminRequest::Sent { filename });
        }
        (reply, asked)
    }
}

fn path_of<'a>(files: &'a [(PathBuf, WheelFile)], filename: &str) -> &'a Path {
    &files.iter().find(|(_, f)| f.filename == filename).unwrap_or_else(|| panic!("asked for {filename}, which was not offered")).0
}

#[track_caller]
fn done(reply: AdminReply) -> String {
    match reply {
        AdminReply::Done { message } => message,
        other => panic!("expected done, got {other:?}"),
    }
}

#[track_caller]
fn error(reply: AdminReply) -> String {
    match reply {
        AdminReply::Error(WireError { message, .. }) => message,
        other => panic!("expected an error, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// Hello and bad input
// ------------------------------------------------------------------------------------------

#[test]
fn requests_before_hello_and_other_versions_are_refused_and_garbage_is_answered() {
    let farm = Farm::start(&[("foo", "1.0")]);
    let stranger = farm.stranger();
    let add = AdminRequest::AddPackage { name: "bar".into(), description: None, skip: None, unskip: false, aliases: vec![] };
    match stranger.ask(add.clone()) {
        AdminReply::Error(WireError { message: reason, .. }) => assert!(reason.contains("Hello"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let old = Versions { protocol: 0, software: "0.0.1".into() };
    match stranger.ask(AdminRequest::Hello { versions: old, actor: "old@host piw-add".into() }) {
        AdminReply::Error(WireError { message: reason, .. }) => {
            assert!(reason.contains("protocol 0") && reason.contains("0.0.1"), "{reason}");
            assert!(reason.contains(&format!("protocol {}", piwheels_common::PROTOCOL_VERSION)), "{reason}");
            assert!(reason.contains(piwheels_common::SOFTWARE_VERSION), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Refused, it is still a stranger; nothing was added.
    assert!(matches!(stranger.ask(add), AdminReply::Error(_)));
    assert_eq!(farm.query("SELECT package FROM packages ORDER BY package"), ["foo"]);
    // An actor with control characters is refused too.
    let odd = AdminRequest::Hello { versions: Versions::current(), actor: "x\u{1b}[2J".into() };
    assert!(matches!(stranger.ask(odd), AdminReply::Error(_)));

    // Garbage gets an error reply, not silence.
    let raw = farm.pool.rt.zmq.socket(zmq::REQ).unwrap();
    raw.set_rcvtimeo(10_000).unwrap();
    raw.connect(&farm.import_endpoint).unwrap();
    raw.send(&b"\x92\xacAdminRequest\xc1"[..], 0).unwrap();
    let reply: AdminReply = piwheels_common::codec::decode(&raw.recv_bytes(0).unwrap()).unwrap();
    assert!(matches!(reply, AdminReply::Error(_)), "{reply:?}");
    // A Sent with no import in progress is an error.
    let tool = farm.tool("dave@host test");
    let message = error(tool.ask(AdminRequest::Sent { filename: "foo-1.0-py3-none-any.whl".into() }));
    assert!(message.contains("without an import"), "{message}");
    // And the endpoint still works.
    assert!(!farm.chase.is_finished());
    done(tool.ask(AdminRequest::Rebuild(RebuildTarget::Project(Some("foo".into())))));
}

// ------------------------------------------------------------------------------------------
// Imports
// ------------------------------------------------------------------------------------------

#[test]
fn an_import_publishes_every_file_before_recording_the_build() {
    let farm = Farm::start(&[("foo", "1.0")]);
    let tool = farm.tool("dave@host piw-import");
    let files = farm.wheels("foo", "1.0", &["linux_armv7l", "linux_armv6l"]);
    let mut reply = tool.ask(AdminRequest::Import(import_request("Foo", "1.0", &files)));
    let mut asked = Vec::new();
    while let AdminReply::Send { filename, transfer } = reply {
        // Nothing is recorded while files are still on their way.
        assert!(farm.builds().is_empty());
        upload(&tool.ctx, &tool.file_endpoint, &Security::Plain, transfer, path_of(&files, &filename), UploadOptions::default()).unwrap();
        asked.push(filename.clone());
        reply = tool.ask(AdminRequest::Sent { filename });
    }
    let message = done(reply);
    assert!(message.contains("imported foo 1.0 for cp311 as build") && message.contains("2 sent"), "{message}");
    assert_eq!(asked.len(), 2);
    for (_, file) in &files {
        let published = farm.www().join("simple/foo").join(&file.filename);
        assert!(published.is_file(), "{} was not published", file.filename);
        assert!(farm.www().join("simple/foo").join(format!("{}.metadata", file.filename)).is_file());
    }
    assert_eq!(farm.builds(), ["foo 1.0 0 cp311 t"]);
    let mut names: Vec<String> = files.iter().map(|(_, f)| f.filename.clone()).collect();
    names.sort();
    assert_eq!(farm.files(), names);
    assert_eq!(farm.query("SELECT builder || ' ' || duration::text || ' ' || (exit_status IS NULL)::text FROM builds"), [
        "import by dave@host piw-import 00:00:42 true"
    ]);
    let web = farm.web_requests();
    assert!(
        web.iter().any(|r| matches!(r, WebRequest::Built { output, rewrite, .. }
            if output == "built by hand" && rewrite.package == "foo" && rewrite.scope == RewriteScope::Both)),
        "{web:?}"
    );
    assert_eq!(farm.query("SELECT package || ' ' || scope FROM rewrites_pending"), ["foo both"]);
    assert!(farm.drain_triggers() >= 1);
    let audit = farm.audit();
    assert!(audit.iter().any(|a| a.starts_with("dave@host piw-import | import | imported foo 1.0")), "{audit:?}");

    // Importing the same files again sends nothing: the juggler holds them.
    let (reply, asked) = tool.import(import_request("foo", "1.0", &files), &files);
    assert!(done(reply).contains("0 sent, 2 already held"));
    assert!(asked.is_empty());
}

#[test]
fn an_import_is_refused_whole_before_any_file_moves() {
    let farm = Farm::start(&[("foo", "1.0"), ("bar", "1.0")]);
    farm.pool.db.execute("INSERT INTO packages (package) VALUES ('empty')");
    let tool = farm.tool("dave@host piw-import");
    let files = farm.wheels("foo", "1.0", &["linux_armv7l"]);
    let cases: Vec<(ImportRequest, &str)> = vec![
        (ImportRequest { abi: "cp36m".into(), ..import_request("foo", "1.0", &files) }, "unknown ABI cp36m: the farm builds for cp311"),
        (import_request("empty", "1.0", &files), "not a wheel of empty"),
        (ImportRequest { files: vec![], ..import_request("foo", "1.0", &files) }, "no files listed for import"),
        (import_request("bar", "1.0", &files), "is not a wheel of bar"),
        (import_request("foo", "2.0", &files), "is not a wheel of version 2.0"),
        (import_request("foo", "1.0", &[files[0].clone(), files[0].clone()]), "listed twice"),
        (import_request("../x", "1.0", &files), "not a valid project name"),
    ];
    for (request, expected) in cases {
        let message = error(tool.ask(AdminRequest::Import(request)));
        assert!(message.contains(expected), "{message} should say {expected}");
    }
    let nope = farm.wheels("nope", "1.0", &["linux_armv7l"]);
    let message = error(tool.ask(AdminRequest::Import(import_request("nope", "1.0", &nope))));
    assert!(message.contains("unknown package nope") && message.contains("piw-add"), "{message}");
    let empty = farm.wheels("empty", "1.0", &["linux_armv7l"]);
    let message = error(tool.ask(AdminRequest::Import(import_request("empty", "1.0", &empty))));
    assert!(message.contains("unknown version empty 1.0") && message.contains("piw-add"), "{message}");
    // A file already published with other bytes is refused by the file juggler, up front.
    let clash = farm.wheels("bar", "1.0", &["linux_armv7l"]);
    std::fs::create_dir_all(farm.www().join("simple/bar")).unwrap();
    std::fs::write(farm.www().join("simple/bar").join(&clash[0].1.filename), b"other bytes").unwrap();
    let message = error(tool.ask(AdminRequest::Import(import_request("bar", "1.0", &clash))));
    assert!(message.contains("different contents"), "{message}");
    // A name the index once published with other bytes (its record since removed, its file
    // gone) is refused before anything is published under it.
    std::fs::remove_file(farm.www().join("simple/bar").join(&clash[0].1.filename)).unwrap();
    farm.pool.db.execute(&format!(
        "INSERT INTO retired_files (filename, filehash, package) VALUES ('{}', repeat('0', 64), 'bar')",
        clash[0].1.filename
    ));
    let message = error(tool.ask(AdminRequest::Import(import_request("bar", "1.0", &clash))));
    assert!(message.contains("cannot be imported under its name") && message.contains("bar-1.0-1-cp311-cp311-linux_armv7l.whl"), "{message}");
    assert!(!farm.www().join("simple/bar").join(&clash[0].1.filename).exists());

    assert!(farm.builds().is_empty());
    assert!(!farm.www().join("simple/foo").exists());
    // Every refusal is in the audit log, and the session is free for a good import.
    assert_eq!(farm.audit().iter().filter(|a| a.contains("| import | ") && a.contains("refused")).count(), 11);
    let (reply, _) = tool.import(import_request("foo", "1.0", &files), &files);
    done(reply);
}

#[test]
fn a_file_failing_verification_is_asked_for_again_and_a_failed_import_leaves_nothing() {
    let farm = Farm::start(&[("foo", "1.0")]);
    let tool = farm.tool("dave@host piw-import");
    let mut files = farm.wheels("foo", "1.0", &["linux_armv7l", "linux_armv6l"]);
    // The second file is announced with a hash its bytes do not have.
    files[1].1.sha256 = "0".repeat(64);
    let (reply, asked) = tool.import(import_request("foo", "1.0", &files), &files);
    let message = error(reply);
    assert!(message.contains("failed verification 3 times"), "{message}");
    assert!(message.contains("1 file(s) it had published were removed again"), "{message}");
    let good = files[0].1.filename.clone();
    let bad = files[1].1.filename.clone();
    assert_eq!(asked, [good.clone(), bad.clone(), bad.clone(), bad]);
    // Nothing recorded; the file that did arrive is handed to the index writer for removal.
    assert!(farm.builds().is_empty() && farm.files().is_empty());
    let web = farm.web_requests();
    let removal = WebRequest::DeleteVersion { package: "foo".into(), version: "1.0".into(), files: vec![good], builds: vec![] };
    assert!(web.contains(&removal), "{web:?}");
    assert!(!web.iter().any(|r| matches!(r, WebRequest::Built { .. })), "{web:?}");
}

/// The database does not answer the admin endpoint in time (a lock holds the build up): the
/// import's files stay, since the build may yet be recorded, and once the lock is gone it is,
/// with them. Removing them would have left a record without its files.
#[test]
fn an_import_whose_recording_goes_unanswered_keeps_its_files_for_the_record_that_follows() {
    let farm = Farm::start_with(&[("foo", "1.0")], Duration::from_secs(2));
    let tool = farm.tool("erin@host piw-import");
    let files = farm.wheels("foo", "1.0", &["linux_armv7l"]);
    let mut locker = std::process::Command::new("psql")
        .args(["-X", "-q", &farm.pool.db.owner_url()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    let mut sql = locker.stdin.take().unwrap();
    // The build's log table: only the recording writes to it, so the import's other questions
    // (the names its files take) are answered.
    writeln!(sql, "BEGIN; LOCK TABLE output IN ACCESS EXCLUSIVE MODE;").unwrap();
    let locked = "SELECT count(*)::text FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                  WHERE c.relname = 'output' AND l.mode = 'AccessExclusiveLock' AND l.granted";
    eventually("the lock on output", WAIT, || farm.query(locked) == ["1"]);

    let (reply, _) = tool.import(import_request("foo", "1.0", &files), &files);
    let message = error(reply);
    assert!(message.contains("did not answer whether it recorded the build") && message.contains("stay"), "{message}");
    let published = farm.www().join("simple/foo").join(&files[0].1.filename);
    assert!(published.is_file(), "the file was removed under a build that may be recorded");
    // Its pages are asked for, in case the build was recorded.
    let rewrite = WebRequest::Rewrite { package: "foo".into(), scope: RewriteScope::Both };
    assert!(farm.web_requests().contains(&rewrite), "{:?}", farm.web_requests());

    writeln!(sql, "COMMIT;").unwrap();
    drop(sql);
    assert!(locker.wait().unwrap().success());
    eventually("the build recorded", WAIT, || !farm.builds().is_empty());
    assert_eq!(farm.files(), [files[0].1.filename.clone()]);
    assert!(published.is_file());
}

#[test]
fn an_undone_import_keeps_a_file_another_import_recorded_meanwhile() {
    let farm = Farm::start(&[("foo", "1.0")]);
    let (a, b) = (farm.tool("alice@host piw-import"), farm.tool("bob@host piw-import"));
    let mut files = farm.wheels("foo", "1.0", &["linux_armv7l", "linux_armv6l"]);
    files[1].1.sha256 = "0".repeat(64);
    // Alice's first file arrives and is published; her second is still to come.
    let AdminReply::Send { filename, transfer } = a.ask(AdminRequest::Import(import_request("foo", "1.0", &files))) else {
        panic!("expected a send")
    };
    upload(&a.ctx, &a.file_endpoint, &Security::Plain, transfer, path_of(&files, &filename), UploadOptions::default()).unwrap();
    let mut reply = a.ask(AdminRequest::Sent { filename: filename.clone() });
    // Bob imports just that file: published already, it is recorded at once.
    let first = vec![files[0].clone()];
    assert!(done(b.ask(AdminRequest::Import(import_request("foo", "1.0", &first)))).contains("1 already held"));
    // Alice's second file never verifies: her import is undone, but Bob's file stays.
    while let AdminReply::Send { filename, transfer } = reply {
        upload(&a.ctx, &a.file_endpoint, &Security::Plain, transfer, path_of(&files, &filename), UploadOptions::default()).unwrap();
        reply = a.ask(AdminRequest::Sent { filename });
    }
    let message = error(reply);
    assert!(!message.contains("removed again"), "{message}");
    assert!(!farm.web_requests().iter().any(|r| matches!(r, WebRequest::DeleteVersion { .. })), "{:?}", farm.web_requests());
    assert_eq!(farm.files(), [files[0].1.filename.clone()]);
}

#[test]
fn a_sent_naming_another_file_ends_the_import() {
    let farm = Farm::start(&[("foo", "1.0")]);
    let tool = farm.tool("dave@host piw-import");
    let files = farm.wheels("foo", "1.0", &["linux_armv7l"]);
    let AdminReply::Send { .. } = tool.ask(AdminRequest::Import(import_request("foo", "1.0", &files))) else { panic!("expected a send") };
    // A second import on the same connection waits for the first.
    let message = error(tool.ask(AdminRequest::Import(import_request("foo", "1.0", &files))));
    assert!(message.contains("already in progress"), "{message}");
    let message = error(tool.ask(AdminRequest::Sent { filename: "foo-1.0-cp311-cp311-other.whl".into() }));
    assert!(message.contains("was asked for"), "{message}");
    // The import is over: the connection may start another.
    let (reply, _) = tool.import(import_request("foo", "1.0", &files), &files);
    done(reply);
}

#[test]
fn two_tools_import_at_once_each_in_its_own_session() {
    let farm = Farm::start(&[("foo", "1.0"), ("bar", "2.0")]);
    let (a, b) = (farm.tool("alice@host piw-import"), farm.tool("bob@host piw-import"));
    let foo = farm.wheels("foo", "1.0", &["linux_armv7l"]);
    let bar = farm.wheels("bar", "2.0", &["linux_armv7l"]);
    let AdminReply::Send { filename: fa, transfer: ta } = a.ask(AdminRequest::Import(import_request("foo", "1.0", &foo))) else {
        panic!("expected a send")
    };
    let AdminReply::Send { filename: fb, transfer: tb } = b.ask(AdminRequest::Import(import_request("bar", "2.0", &bar))) else {
        panic!("expected a send")
    };
    upload(&b.ctx, &b.file_endpoint, &Security::Plain, tb, &bar[0].0, UploadOptions::default()).unwrap();
    upload(&a.ctx, &a.file_endpoint, &Security::Plain, ta, &foo[0].0, UploadOptions::default()).unwrap();
    assert!(done(b.ask(AdminRequest::Sent { filename: fb })).contains("bar 2.0"));
    assert!(done(a.ask(AdminRequest::Sent { filename: fa })).contains("foo 1.0"));
    let mut builds = farm.builds();
    builds.sort();
    assert_eq!(builds, ["bar 2.0 0 cp311 t", "foo 1.0 0 cp311 t"]);
    let audit = farm.audit();
    assert!(audit.iter().any(|a| a.starts_with("alice@host piw-import | import | imported foo")), "{audit:?}");
    assert!(audit.iter().any(|a| a.starts_with("bob@host piw-import | import | imported bar")), "{audit:?}");
}

// ------------------------------------------------------------------------------------------
// Packages and versions
// ------------------------------------------------------------------------------------------

/// The fields of `AdminRequest::AddPackage`, so that tests can change one of them.
#[derive(Clone, Default)]
struct AddPackage {
    name: String,
    description: Option<String>,
    skip: Option<String>,
    unskip: bool,
    aliases: Vec<String>,
}

impl AddPackage {
    fn req(self) -> AdminRequest {
        let AddPackage { name, description, skip, unskip, aliases } = self;
        AdminRequest::AddPackage { name, description, skip, unskip, aliases }
    }
}

fn package(name: &str) -> AddPackage {
    AddPackage { name: name.into(), ..AddPackage::default() }
}

fn add_package(name: &str) -> AdminRequest {
    package(name).req()
}

/// The fields of `AdminRequest::AddVersion`.
#[derive(Clone, Default)]
struct AddVersion {
    name: String,
    version: String,
    released: Option<piwheels_common::protocols::Timestamp>,
    skip: Option<String>,
    unskip: bool,
    yank: bool,
    unyank: bool,
}

impl AddVersion {
    fn req(self) -> AdminRequest {
        let AddVersion { name, version, released, skip, unskip, yank, unyank } = self;
        AdminRequest::AddVersion { name, version, released, skip, unskip, yank, unyank }
    }
}

fn version(name: &str, version: &str) -> AddVersion {
    AddVersion { name: name.into(), version: version.into(), ..AddVersion::default() }
}

fn add_version(name: &str, v: &str) -> AdminRequest {
    version(name, v).req()
}

#[test]
fn packages_are_added_with_aliases_and_updated() {
    let farm = Farm::start(&[]);
    let tool = farm.tool("dave@host piw-add");
    let request = AdminRequest::AddPackage {
        name: "My.Package".into(),
        description: Some("Does things".into()),
        skip: None,
        unskip: false,
        aliases: vec!["my_package".into(), "MY-PACKAGE".into()],
    };
    assert_eq!(done(tool.ask(request)), "added package my-package");
    assert_eq!(farm.query("SELECT package || ' ' || description || ' ' || skip FROM packages"), ["my-package Does things "]);
    // The name as typed is the most recent spelling: the display name.
    assert_eq!(farm.query("SELECT name FROM package_names ORDER BY seen DESC, name"), [
        "My.Package",
        "MY-PACKAGE",
        "my_package",
        "my-package"
    ]);
    assert!(farm.web_requests().contains(&WebRequest::Rewrite { package: "my-package".into(), scope: RewriteScope::Both }));

    // An alias of another project is refused.
    let bad = AddPackage { aliases: vec!["other".into()], ..package("my-package") }.req();
    assert!(error(tool.ask(bad)).contains("alias \"other\" does not match"));
    // A known package cannot be skipped here (piw-remove does it, with the files).
    let skip = AddPackage { skip: Some("broken".into()), ..package("my-package") }.req();
    assert!(error(tool.ask(skip)).contains("piw-remove --skip"));
    // Nothing to change is said so.
    assert!(done(tool.ask(add_package("my-package"))).contains("nothing changed"));
    // Unskip and a new description.
    farm.pool.db.execute("UPDATE packages SET skip = 'manual'");
    let update = AddPackage { unskip: true, description: Some("Does more".into()), ..package("my-package") }.req();
    assert_eq!(done(tool.ask(update)), "updated package my-package: unskipped, description set");
    assert_eq!(farm.query("SELECT description || '|' || skip FROM packages"), ["Does more|"]);
    assert!(farm.drain_triggers() >= 1);
    // A new package can be added skipped.
    let skipped = AddPackage { skip: Some("binary only".into()), ..package("other") }.req();
    assert_eq!(done(tool.ask(skipped)), "added package other, skipped: binary only");
    let audit = farm.audit();
    assert_eq!(audit.len(), 6, "{audit:?}");
    assert!(audit[0].starts_with("dave@host piw-add | add-package | added package my-package"), "{audit:?}");
    assert!(audit[1].contains("refused: alias"), "{audit:?}");
}

#[test]
fn versions_are_added_yanked_unyanked_and_unskipped() {
    let farm = Farm::start(&[]);
    let tool = farm.tool("dave@host piw-add");
    let message = error(tool.ask(add_version("foo", "1.0")));
    assert!(message.contains("unknown package foo") && message.contains("piw-add foo"), "{message}");
    done(tool.ask(add_package("foo")));

    let released = "2020-01-02T03:04:05Z".parse().unwrap();
    let new = AddVersion { released: Some(released), yank: true, ..version("Foo", "1.0") }.req();
    assert_eq!(done(tool.ask(new)), "added version foo 1.0, yanked");
    let row = "SELECT concat_ws(' ', version, released AT TIME ZONE 'UTC', yanked, skip) FROM versions ORDER BY version";
    assert_eq!(farm.query(row), ["1.0 2020-01-02 03:04:05 t "]);
    assert!(farm.drain_triggers() >= 1);
    // Yanking a known version is piw-remove's job; unyanking is here.
    assert!(error(tool.ask(AddVersion { yank: true, ..version("foo", "1.0") }.req())).contains("piw-remove --yank"));
    assert_eq!(done(tool.ask(AddVersion { unyank: true, ..version("foo", "1.0") }.req())), "updated version foo 1.0: unyanked");
    farm.pool.db.execute("UPDATE versions SET skip = 'broken'");
    assert!(error(tool.ask(AddVersion { skip: Some("x".into()), ..version("foo", "1.0") }.req())).contains("piw-remove"));
    assert_eq!(done(tool.ask(AddVersion { unskip: true, ..version("foo", "1.0") }.req())), "updated version foo 1.0: unskipped");
    assert_eq!(farm.query("SELECT concat_ws(' ', yanked, skip) FROM versions"), ["f "]);
    // Contradictions and bad versions are refused.
    assert!(error(tool.ask(AddVersion { yank: true, unyank: true, ..version("foo", "2.0") }.req())).contains("both"));
    assert!(error(tool.ask(add_version("foo", "2 0"))).contains("not a valid version"));
    let skipped = AddVersion { skip: Some("too big".into()), ..version("foo", "2.0") }.req();
    assert_eq!(done(tool.ask(skipped)), "added version foo 2.0, skipped: too big");
    assert_eq!(farm.query("SELECT concat_ws(' ', yanked, skip) FROM versions WHERE version = '2.0'"), ["f too big"]);
}

// ------------------------------------------------------------------------------------------
// Removals
// ------------------------------------------------------------------------------------------

/// A farm where `foo` 1.0 and 2.0 have each been imported with one file.
fn farm_with_imports() -> (Farm, Tool) {
    let farm = Farm::start(&[("foo", "1.0"), ("foo", "2.0")]);
    let tool = farm.tool("dave@host piw-remove");
    for version in ["1.0", "2.0"] {
        let files = farm.wheels("foo", version, &["linux_armv7l"]);
        let (reply, _) = tool.import(import_request("foo", version, &files), &files);
        done(reply);
    }
    farm.web.lock().unwrap().clear();
    (farm, tool)
}

/// The fields of `AdminRequest::RemoveVersion` (of package foo).
#[derive(Clone, Default)]
struct RemoveVersion {
    version: String,
    builds_only: bool,
    skip: Option<String>,
    yank: Option<String>,
}

impl RemoveVersion {
    fn req(self) -> AdminRequest {
        let RemoveVersion { version, builds_only, skip, yank } = self;
        AdminRequest::RemoveVersion { name: "foo".into(), version, builds_only, skip, yank }
    }
}

fn remove(version: &str) -> RemoveVersion {
    RemoveVersion { version: version.into(), ..RemoveVersion::default() }
}

fn remove_version(version: &str) -> AdminRequest {
    remove(version).req()
}

#[test]
fn a_version_is_removed_with_its_files_through_the_index_writer() {
    let (farm, tool) = farm_with_imports();
    let build = farm.query("SELECT build_id::text FROM builds WHERE version = '1.0'")[0].parse::<i64>().unwrap();
    assert_eq!(done(tool.ask(remove_version("1.0"))), "removed version foo 1.0 with its builds and files");
    assert_eq!(farm.query("SELECT version FROM versions"), ["2.0"]);
    assert_eq!(farm.files(), ["foo-2.0-cp311-cp311-linux_armv7l.whl"]);
    assert_eq!(farm.web_requests(), [WebRequest::DeleteVersion {
        package: "foo".into(),
        version: "1.0".into(),
        files: vec!["foo-1.0-cp311-cp311-linux_armv7l.whl".into()],
        builds: vec![build],
    }]);
    assert_eq!(farm.deletes.lock().unwrap().clone(), [ReleaseNotice::Version { package: "foo".into(), version: "1.0".into() }]);
    assert!(error(tool.ask(remove_version("1.0"))).contains("unknown version foo 1.0"));
    assert!(farm.audit().last().unwrap().contains("remove-version | refused: unknown version"));
}

#[test]
fn removing_only_builds_or_skipping_keeps_the_rows() {
    let (farm, tool) = farm_with_imports();
    let builds_only = RemoveVersion { builds_only: true, ..remove("1.0") }.req();
    assert_eq!(done(tool.ask(builds_only)), "removed the builds and files of version foo 1.0; it will be built again");
    assert_eq!(farm.query("SELECT version FROM versions ORDER BY version"), ["1.0", "2.0"]);
    assert_eq!(farm.builds(), ["foo 2.0 0 cp311 t"]);
    let skip = RemoveVersion { skip: Some("broken upstream".into()), ..remove("2.0") }.req();
    assert_eq!(done(tool.ask(skip)), "removed the builds and files of version foo 2.0 and skipped it: broken upstream");
    assert_eq!(farm.query("SELECT version || ':' || skip FROM versions ORDER BY version"), ["1.0:", "2.0:broken upstream"]);
    assert!(farm.builds().is_empty() && farm.files().is_empty());
    let web = farm.web_requests();
    assert_eq!(web.len(), 2);
    assert!(web.iter().all(|r| matches!(r, WebRequest::DeleteVersion { files, .. } if files.len() == 1)), "{web:?}");
    // An empty skip reason is refused.
    assert!(error(tool.ask(RemoveVersion { skip: Some(String::new()), ..remove("2.0") }.req())).contains("empty"));
}

#[test]
fn a_version_is_yanked_instead_of_removed_when_asked() {
    let (farm, tool) = farm_with_imports();
    assert_eq!(done(tool.ask(RemoveVersion { yank: Some(String::new()), ..remove("1.0") }.req())), "yanked version foo 1.0");
    assert_eq!(farm.query("SELECT version || ' [' || yank_reason || ']' FROM versions WHERE yanked"), ["1.0 []"]);
    assert_eq!(farm.files().len(), 2);
    assert_eq!(farm.web_requests(), [WebRequest::Rewrite { package: "foo".into(), scope: RewriteScope::Both }]);
    let mixed = RemoveVersion { yank: Some(String::new()), builds_only: true, ..remove("2.0") }.req();
    assert!(error(tool.ask(mixed)).contains("cannot be combined"));
    // With a reason, which the index then carries (PEP 592).
    let reasoned = RemoveVersion { yank: Some("crashes on import on armv6".into()), ..remove("2.0") }.req();
    assert_eq!(done(tool.ask(reasoned)), "yanked version foo 2.0: crashes on import on armv6");
    assert_eq!(farm.query("SELECT yank_reason FROM versions WHERE version = '2.0'"), ["crashes on import on armv6"]);
    let control = RemoveVersion { yank: Some("bad\u{1b}[31m".into()), ..remove("2.0") }.req();
    assert!(error(tool.ask(control)).contains("yank reason"));
    let long = RemoveVersion { yank: Some("x".repeat(201)), ..remove("2.0") }.req();
    assert!(error(tool.ask(long)).contains("yank reason"));
    assert_eq!(farm.query("SELECT yank_reason FROM versions WHERE version = '2.0'"), ["crashes on import on armv6"]);
}

#[test]
fn a_package_is_removed_whole_or_only_its_builds() {
    let (farm, tool) = farm_with_imports();
    let builds_only = AdminRequest::RemovePackage { name: "Foo".into(), builds_only: true, skip: None };
    assert_eq!(done(tool.ask(builds_only)), "removed the builds and files of package foo; it will be built again");
    assert_eq!(farm.query("SELECT count(*)::text FROM versions"), ["2"]);
    assert!(farm.builds().is_empty());
    let web = farm.web_requests();
    assert!(matches!(&web[..], [WebRequest::DeleteVersion { files, builds, .. }] if files.len() == 2 && builds.len() == 2), "{web:?}");

    let whole = AdminRequest::RemovePackage { name: "foo".into(), builds_only: false, skip: None };
    assert_eq!(done(tool.ask(whole.clone())), "removed package foo with its builds and files");
    assert!(farm.query("SELECT package FROM packages").is_empty());
    assert!(matches!(farm.web_requests().last(), Some(WebRequest::DeletePackage { package, .. }) if package == "foo"));
    assert_eq!(farm.deletes.lock().unwrap().last(), Some(&ReleaseNotice::Package { package: "foo".into() }));
    assert!(error(tool.ask(whole)).contains("unknown package foo"));
}

// ------------------------------------------------------------------------------------------
// Rebuilds, pauses
// ------------------------------------------------------------------------------------------

#[test]
fn rebuilds_reach_the_stats_task_and_the_index_writer() {
    let farm = Farm::start(&[("foo", "1.0"), ("bar", "1.0"), ("baz", "1.0")]);
    let tool = farm.tool("dave@host piw-rebuild");
    let files = farm.wheels("foo", "1.0", &["linux_armv7l"]);
    done(tool.import(import_request("foo", "1.0", &files), &files).0);
    done(tool.ask(AdminRequest::Rebuild(RebuildTarget::Home)));
    assert_eq!(farm.stats.recv_timeout(WAIT).unwrap(), Some(StatsUpdate::RefreshHome));
    assert!(done(tool.ask(AdminRequest::Rebuild(RebuildTarget::Search))).contains("1 package(s) with files"));
    assert!(matches!(farm.web_requests().last(), Some(WebRequest::Search { entries }) if entries.len() == 1 && entries[0].package == "foo"));
    done(tool.ask(AdminRequest::Rebuild(RebuildTarget::Project(Some("FOO".into())))));
    assert_eq!(farm.web_requests().last(), Some(&WebRequest::Rewrite { package: "foo".into(), scope: RewriteScope::Project }));
    assert!(error(tool.ask(AdminRequest::Rebuild(RebuildTarget::Both(Some("nope".into()))))).contains("unknown package nope"));

    farm.web.lock().unwrap().clear();
    assert!(done(tool.ask(AdminRequest::Rebuild(RebuildTarget::Both(None)))).contains("all 3 packages"));
    eventually("every package's rewrite", WAIT, || farm.web_requests().len() == 3);
    let mut asked: Vec<String> = farm
        .web_requests()
        .into_iter()
        .map(|r| match r {
            WebRequest::Rewrite { package, scope: RewriteScope::Both } => package,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    asked.sort();
    assert_eq!(asked, ["bar", "baz", "foo"]);
}

#[test]
fn a_paused_master_refuses_new_work_with_a_reason() {
    let farm = Farm::start(&[("foo", "1.0")]);
    let tool = farm.tool("dave@host piw-add");
    farm.chase.control(TaskControl::Pause).unwrap();
    eventually("the pause", WAIT, || matches!(tool.ask(add_package("bar")), AdminReply::Error(WireError { message, .. }) if message.contains("paused")));
    // Hello still works while paused, and so does the question piw-rebuild asks while it waits.
    farm.tool("eve@host piw-add");
    assert_eq!(tool.ask(AdminRequest::RewritesPending), AdminReply::Pending { packages: 0 });
    farm.chase.control(TaskControl::Resume).unwrap();
    eventually("the resume", WAIT, || matches!(tool.ask(add_package("bar")), AdminReply::Done { .. }));
    assert_eq!(farm.query("SELECT package FROM packages ORDER BY package"), ["bar", "foo"]);
}

// ------------------------------------------------------------------------------------------
// Failure triage
// ------------------------------------------------------------------------------------------

#[test]
fn a_requeue_refuses_fields_longer_than_their_columns_and_the_report_answers() {
    let farm = Farm::start(&[("foo", "1.0")]);
    let tool = farm.tool("dave@host piw-triage");
    let requeue = |detail: Option<String>, debian_package: Option<String>, abi: Option<String>| {
        AdminRequest::Requeue(RequeueRequest { class: Some(FailureClass::MissingHeader), detail, debian_package, abi, dry_run: false })
    };
    assert!(error(tool.ask(requeue(Some("h".repeat(201)), None, None))).contains("the detail is longer than 200 bytes"));
    assert!(error(tool.ask(requeue(None, Some("p".repeat(256)), None))).contains("longer than 255 bytes"));
    assert!(error(tool.ask(requeue(None, None, Some("a".repeat(101))))).contains("the ABI is longer than 100 bytes"));
    // Within bounds, with nothing failed, nothing is queued.
    assert!(done(tool.ask(requeue(Some("zlib.h".into()), None, None))).contains("no failed release waits"), "nothing to queue");
    match tool.ask(AdminRequest::Triage { abi: None }) {
        AdminReply::Triage(report) => assert!(report.classes.is_empty() && report.untriaged == 0 && !report.contents, "{report:?}"),
        other => panic!("{other:?}"),
    }
}
