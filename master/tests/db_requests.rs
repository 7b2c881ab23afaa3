//! Every database request against a real PostgreSQL: each test gets its own database, whose
//! schema is created as the owner, and then talks to it through `Database::handle` connected
//! as the application role, which proves that the role's grants suffice.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use piwheels_common::protocols::{
    AccessRecord, ClientInfo, Dependencies, ErrorKind, FailureClass, FailureKind, PackageVersion, RequeueRequest, SourceFile,
    WheelFile, WireError,
};
use piwheels_common::inspect::sha256_hex;
use piwheels_master::calls::Call;
use piwheels_master::calls::db::*;
use piwheels_master::db::{Database, migrate};
mod support;

use piwheels_testsupport::data::source_file;
use piwheels_testsupport::db::{APP_ROLE, TestDb};

const HOUR: Duration = Duration::from_secs(3600);
use sqlx::{Connection, Executor};

// ------------------------------------------------------------------------------------------
// Fixture
// ------------------------------------------------------------------------------------------

/// A fresh database with the schema, and the master's connection to it as the app role.
struct Fixture {
    // Dropped in this order: the connection, then its runtime, then the database.
    database: Database,
    rt: tokio::runtime::Runtime,
    db: TestDb,
}

impl Fixture {
    fn new() -> Fixture {
        let db = TestDb::new();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let database = rt.block_on(async {
            let mut owner = sqlx::PgConnection::connect(&db.owner_url()).await.expect("connect as owner");
            migrate::upgrade(&mut owner, APP_ROLE).await.expect("create the schema");
            owner.close().await.expect("close");
            Database::connect(&db.app_url(), Duration::from_secs(30)).await.expect("connect as the app role")
        });
        Fixture { database, rt, db }
    }

    /// A fixture with the ABIs cp39, cp311 and cp313, inserted out of order.
    fn with_abis() -> Fixture {
        let fx = Fixture::new();
        fx.sql("INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp313', 313), ('cp311', 311), ('cp39', 309)");
        fx
    }

    fn try_handle(&mut self, request: impl Into<DbRequest>) -> Result<DbReply, sqlx::Error> {
        self.rt.block_on(self.database.handle(request.into()))
    }

    /// Makes the call, which must succeed, and gives its reply.
    fn call<C: Call<Request = DbRequest, Replies = DbReply>>(&mut self, call: C) -> C::Reply {
        let reply = self.try_handle(call).unwrap_or_else(|e| panic!("{}: {e}", C::NAME));
        match C::reply(reply) {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => panic!("{} was refused: {error}", C::NAME),
            Err(other) => panic!("{} got {other:?}", C::NAME),
        }
    }

    /// Makes the call, which must be refused, and gives the refusal's message.
    fn error<C: Call<Request = DbRequest, Replies = DbReply>>(&mut self, call: C) -> String {
        let reply = self.try_handle(call).unwrap_or_else(|e| panic!("{}: {e}", C::NAME));
        match C::reply(reply) {
            Ok(Err(WireError { kind: ErrorKind::Refused, message })) => message,
            other => panic!("{} was not refused: {other:?}", C::NAME),
        }
    }

    fn queue(&mut self, limit: u32) -> BTreeMap<String, Vec<String>> {
        let queues = self.call(BuildQueue { limit });
        assert!(!queues.unexamined, "a test's few releases are all worked out in one computation");
        queues
            .queues
            .into_iter()
            .map(|(abi, list)| (abi, list.into_iter().map(|b| format!("{} {}", b.release.package, b.release.version)).collect()))
            .collect()
    }

    /// Runs SQL as the owner.
    fn sql(&self, sql: &str) {
        self.db.execute(sql);
    }

    /// The first column of a query run as the owner, as text (of any type: cast here, since
    /// `TestDb::column` decodes text only).
    fn column(&self, sql: &str) -> Vec<Option<String>> {
        self.db.column(&format!("SELECT q.x::text FROM ({sql}) AS q(x)"))
    }

    /// The single value of a query run as the owner, as text.
    fn value(&self, sql: &str) -> String {
        let mut rows = self.column(sql);
        assert_eq!(rows.len(), 1, "{sql}");
        rows.remove(0).unwrap_or_else(|| "NULL".into())
    }

    fn package(&mut self, package: &str) {
        self.call(NewPackage { package: package.into(), skip: String::new(), description: String::new() });
    }

    /// A new release whose source is pinned, so that it can be built.
    fn version(&mut self, package: &str, version: &str, released: DateTime<Utc>) {
        self.unpinned_version(package, version, released);
        let pinned =
            self.call(PinSource { package: package.into(), version: version.into(), source: source_file(package, version), uploaded: None });
        assert!(pinned, "{package} {version} was pinned already");
    }

    /// A new release whose source is not pinned yet.
    fn unpinned_version(&mut self, package: &str, version: &str, released: DateTime<Utc>) {
        self.package(package);
        let inserted = self.call(NewVersion {
            package: package.into(),
            version: version.into(),
            released: Some(released),
            skip: String::new(),
        });
        assert!(inserted, "{package} {version} existed already");
    }

    fn log_build(&mut self, record: BuildRecord) -> i64 {
        self.call(log(record))
    }
}

/// The request recording `build`, with its pages' rewrite added now.
fn log(build: BuildRecord) -> LogBuild {
    LogBuild { build: Box::new(build), rewrite_at: Utc::now(), cross_check: false }
}

fn at(y: i32, mo: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, 12, 0, 0).unwrap()
}

fn days_ago(days: i64) -> DateTime<Utc> {
    Utc::now() - TimeDelta::days(days)
}

/// A wheel of `package` `version` with the given tags; its hash derives from its name.
fn wheel(package: &str, version: &str, py: &str, abi: &str, platform: &str) -> WheelFile {
    let filename = format!("{}-{version}-{py}-{abi}-{platform}.whl", package.replace('-', "_"));
    WheelFile {
        sha256: sha256_hex(filename.as_bytes()),
        filename,
        size: 12345,
        package_tag: package.replace('-', "_"),
        version_tag: version.into(),
        build_tag: None,
        py_tag: py.into(),
        abi_tag: abi.into(),
        platform_tag: platform.into(),
        requires_python: Some(">=3.9".into()),
        dependencies: Dependencies::default(),
        metadata: b"Metadata-Version: 2.1\n".to_vec().into(),
    }
}

/// A build on `abi`: successful when it made files, else a build failure.
fn build(package: &str, version: &str, abi: &str, files: Vec<WheelFile>) -> BuildRecord {
    support::build_record(package, version, abi, files)
}

fn pure(package: &str, version: &str) -> WheelFile {
    wheel(package, version, "py3", "none", "any")
}

fn platform(package: &str, version: &str, abi: &str) -> WheelFile {
    wheel(package, version, abi, abi, "linux_armv7l")
}

fn abi3(package: &str, version: &str, py: &str) -> WheelFile {
    wheel(package, version, py, "abi3", "linux_armv7l")
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------
// Packages, versions and names
// ------------------------------------------------------------------------------------------

#[test]
fn all_packages_are_listed_in_byte_order() {
    let mut fx = Fixture::new();
    assert!(fx.call(AllPackages {}).is_empty());
    for p in ["zope", "a-b", "numpy", "a"] {
        fx.package(p);
    }
    assert_eq!(fx.call(AllPackages {}), ["a", "a-b", "numpy", "zope"]);
}

#[test]
fn new_package_reports_whether_it_was_added_and_leaves_an_existing_one_alone() {
    let mut fx = Fixture::new();
    let new = |skip: &str, description: &str| NewPackage {
        package: "foo".into(),
        skip: skip.into(),
        description: description.into(),
    };
    assert!(fx.call(new("", "first")));
    assert!(!fx.call(new("binary only", "second")));
    assert_eq!(fx.value("SELECT skip || '|' || description FROM packages"), "|first");
    assert!(fx.call(PackageExists { package: "foo".into() }));
    assert!(!fx.call(PackageExists { package: "bar".into() }));
}

#[test]
fn new_version_defaults_its_release_time_to_now_and_marks_prereleases() {
    let mut fx = Fixture::new();
    fx.package("foo");
    let new = |version: &str, released: Option<DateTime<Utc>>| NewVersion {
        package: "foo".into(),
        version: version.into(),
        released,
        skip: String::new(),
    };
    assert!(fx.call(new("1.0", Some(at(2020, 5, 17)))));
    assert!(fx.call(new("2.0rc1", None)));
    assert!(!fx.call(new("1.0", Some(at(2021, 1, 1)))), "a second insert is refused");
    assert_eq!(
        fx.column("SELECT version || ' ' || prerelease || ' ' || (released > now() - interval '1 minute') FROM versions ORDER BY version"),
        [Some("1.0 false false".into()), Some("2.0rc1 true true".into())]
    );
    assert_eq!(fx.value("SELECT released FROM versions WHERE version = '1.0'"), "2020-05-17 12:00:00+00");
    assert!(fx.call(VersionExists { package: "foo".into(), version: "1.0".into() }));
    assert!(!fx.call(VersionExists { package: "foo".into(), version: "3.0".into() }));
}

#[test]
fn new_version_of_an_unknown_package_is_a_database_error() {
    let mut fx = Fixture::new();
    let err = fx
        .try_handle(NewVersion {
            package: "nope".into(),
            version: "1.0".into(),
            released: None,
            skip: String::new(),
        })
        .expect_err("foreign key");
    assert_eq!(sqlstate(&err).as_deref(), Some("23503"), "{err}");
    // The connection is still usable.
    assert!(!fx.call(PackageExists { package: "nope".into() }));
}

#[test]
fn package_names_move_to_the_given_package_and_their_time_never_goes_backwards() {
    let mut fx = Fixture::new();
    fx.package("foo-bar");
    fx.package("other");
    let seen = |package: &str, name: &str, seen| NewPackageName {
        package: package.into(),
        name: name.into(),
        seen,
    };
    fx.call(seen("foo-bar", "Foo_Bar", at(2020, 1, 1)));
    fx.call(seen("foo-bar", "Foo_Bar", at(2019, 1, 1)));
    assert_eq!(fx.value("SELECT seen FROM package_names WHERE name = 'Foo_Bar'"), "2020-01-01 12:00:00+00");
    fx.call(seen("foo-bar", "Foo_Bar", at(2021, 1, 1)));
    assert_eq!(fx.value("SELECT seen FROM package_names WHERE name = 'Foo_Bar'"), "2021-01-01 12:00:00+00");
    fx.call(seen("other", "Foo_Bar", at(2020, 6, 1)));
    assert_eq!(
        fx.value("SELECT package || ' ' || seen FROM package_names WHERE name = 'Foo_Bar'"),
        "other 2021-01-01 12:00:00+00"
    );
    let err = fx.try_handle(seen("missing", "Missing", at(2020, 1, 1))).expect_err("foreign key");
    assert_eq!(sqlstate(&err).as_deref(), Some("23503"));
}

#[test]
fn package_aliases_leave_out_the_canonical_name_and_list_the_most_recently_seen_first() {
    let mut fx = Fixture::new();
    fx.package("foo-bar");
    for (name, year) in [("foo-bar", 2024), ("Foo_Bar", 2020), ("FOO.BAR", 2022), ("foo_bar", 2018)] {
        fx.call(NewPackageName { package: "foo-bar".into(), name: name.into(), seen: at(year, 1, 1) });
    }
    assert_eq!(fx.call(PackageAliases { package: "foo-bar".into() }), ["FOO.BAR", "Foo_Bar", "foo_bar"]);
    assert!(fx.call(PackageAliases { package: "unknown".into() }).is_empty());
}

#[test]
fn descriptions_and_skip_reasons_are_cut_to_their_columns_and_missing_rows_are_not_errors() {
    let mut fx = Fixture::new();
    fx.version("foo", "1.0", at(2020, 1, 1));
    let long = "é".repeat(500);
    fx.call(SetDescription { package: "foo".into(), description: long.clone() });
    fx.call(SkipPackage { package: "foo".into(), reason: long.clone() });
    fx.call(SkipVersion { package: "foo".into(), version: "1.0".into(), reason: long.clone() });
    assert_eq!(fx.value("SELECT length(description) || ' ' || length(skip) FROM packages"), "200 100");
    assert_eq!(fx.value("SELECT length(skip) FROM versions"), "100");
    assert_eq!(fx.value("SELECT skip FROM versions"), "é".repeat(100));
    fx.call(SkipVersion { package: "foo".into(), version: "1.0".into(), reason: String::new() });
    assert_eq!(fx.value("SELECT skip FROM versions"), "");
    // Missing rows: nothing happens, no error.
    fx.call(SetDescription { package: "nope".into(), description: "x".into() });
    fx.call(SkipPackage { package: "nope".into(), reason: "x".into() });
    fx.call(SkipVersion { package: "foo".into(), version: "9".into(), reason: "x".into() });
    assert_eq!(fx.value("SELECT count(*) FROM versions"), "1");
}

#[test]
fn yanking_records_the_reason_and_unyanking_clears_it() {
    let mut fx = Fixture::new();
    fx.version("foo", "1.0", at(2020, 1, 1));
    let yank = |reason: Option<&str>| YankVersion {
        package: "foo".into(),
        version: "1.0".into(),
        reason: reason.map(str::to_string),
    };
    fx.call(yank(Some("broken")));
    assert_eq!(fx.value("SELECT yanked || ' ' || yank_reason FROM versions"), "true broken");
    fx.call(yank(None));
    assert_eq!(fx.value("SELECT yanked || ' [' || yank_reason || ']' FROM versions"), "false []");
    fx.call(yank(Some(&"x".repeat(300))));
    assert_eq!(fx.value("SELECT length(yank_reason) FROM versions"), "200");
}

#[test]
fn deleting_a_package_or_a_version_takes_its_builds_files_and_dependencies_along() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", at(2020, 1, 1));
    fx.version("foo", "2.0", at(2021, 1, 1));
    fx.version("bar", "1.0", at(2021, 1, 1));
    fx.call(NewPackageName { package: "foo".into(), name: "Foo".into(), seen: at(2020, 1, 1) });
    let mut with_deps = platform("foo", "1.0", "cp39");
    with_deps.dependencies.apt = vec!["libc6".into()];
    fx.log_build(build("foo", "1.0", "cp39", vec![with_deps]));
    fx.log_build(build("foo", "2.0", "cp39", vec![platform("foo", "2.0", "cp39")]));
    fx.log_build(build("bar", "1.0", "cp39", vec![platform("bar", "1.0", "cp39")]));

    fx.call(DeleteVersion { package: "foo".into(), version: "1.0".into() });
    assert_eq!(fx.value("SELECT count(*) FROM versions WHERE package = 'foo'"), "1");
    assert_eq!(fx.value("SELECT count(*) FROM builds WHERE package = 'foo'"), "1");
    assert_eq!(fx.value("SELECT count(*) FROM files"), "2");
    assert_eq!(fx.value("SELECT count(*) FROM dependencies"), "0");

    fx.call(DeletePackage { package: "foo".into() });
    assert_eq!(fx.call(AllPackages {}), ["bar"]);
    assert_eq!(fx.value("SELECT count(*) FROM package_names"), "0");
    assert_eq!(fx.value("SELECT string_agg(filename, ',') FROM files"), "bar-1.0-cp39-cp39-linux_armv7l.whl");
    // Deleting what is not there is fine.
    fx.call(DeletePackage { package: "foo".into() });
    fx.call(DeleteVersion { package: "bar".into(), version: "9".into() });
}

#[test]
fn renaming_moves_versions_builds_files_and_names_and_keeps_the_old_name_as_an_alias() {
    let mut fx = Fixture::with_abis();
    fx.version("old-name", "1.0", at(2020, 1, 1));
    fx.call(NewPackageName { package: "old-name".into(), name: "Old_Name".into(), seen: at(2020, 1, 1) });
    let build_id = fx.log_build(build("old-name", "1.0", "cp39", vec![pure("old-name", "1.0")]));
    fx.call(RenamePackage { from: "old-name".into(), to: "new-name".into() });
    assert_eq!(fx.call(AllPackages {}), ["new-name"]);
    assert_eq!(fx.value("SELECT package || ' ' || version FROM versions"), "new-name 1.0");
    assert_eq!(fx.value("SELECT package || ' ' || build_id FROM builds"), format!("new-name {build_id}"));
    assert_eq!(fx.call(PackageFiles { package: "new-name".into() }).len(), 1);
    assert_eq!(fx.call(PackageAliases { package: "new-name".into() }), ["Old_Name", "old-name"]);
    assert!(!fx.call(PackageExists { package: "old-name".into() }));
}

#[test]
fn renaming_onto_an_existing_package_or_from_a_missing_one_is_refused() {
    let mut fx = Fixture::new();
    fx.version("a", "1.0", at(2020, 1, 1));
    fx.package("b");
    let message = fx.error(RenamePackage { from: "a".into(), to: "b".into() });
    assert!(message.contains("b exists already"), "{message}");
    let message = fx.error(RenamePackage { from: "missing".into(), to: "c".into() });
    assert!(message.contains("missing does not exist"), "{message}");
    assert_eq!(fx.call(AllPackages {}), ["a", "b"]);
    assert_eq!(fx.value("SELECT package FROM versions"), "a");
}

// ------------------------------------------------------------------------------------------
// Builds and files
// ------------------------------------------------------------------------------------------

#[test]
fn log_build_records_the_build_its_files_hashes_python_floors_and_dependencies() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", at(2020, 1, 1));
    let mut platform_wheel = platform("foo", "1.0", "cp39");
    platform_wheel.build_tag = Some("1".into());
    platform_wheel.dependencies = Dependencies {
        apt: vec!["libc6".into(), "libssl3".into()],
        pip: vec!["numpy".into()],
        unresolved: vec!["libweird.so.1".into()],
    };
    let mut abi3_wheel = abi3("foo", "1.0", "cp38.cp39");
    abi3_wheel.metadata = Vec::new().into();
    let pure_wheel = pure("foo", "1.0");
    let build_id = fx.log_build(build("foo", "1.0", "cp39", vec![platform_wheel.clone(), abi3_wheel, pure_wheel]));
    assert!(build_id > 0);
    assert_eq!(
        fx.value(
            "SELECT concat_ws(' ', package, version, built_by, builder, abi_tag, status, duration, cpu_time, \
             peak_memory, exit_status, coalesce(failure, '-')) FROM builds"
        ),
        "foo 1.0 7 pi4-1 cp39 t 00:01:30 00:01:20.5 314572800 0 -"
    );
    assert_eq!(
        fx.column(
            "SELECT concat_ws(' ', filename, build_id, filesize, coalesce(build_tag, '-'), py_version_tag, abi_tag, \
             platform_tag, coalesce(python_floor::text, '-'), requires_python, coalesce(metadata_hash, '-')) \
             FROM files ORDER BY filename"
        ),
        [
            Some(format!(
                "foo-1.0-cp38.cp39-abi3-linux_armv7l.whl {build_id} 12345 - cp38.cp39 abi3 linux_armv7l 308 >=3.9 -"
            )),
            Some(format!(
                "foo-1.0-cp39-cp39-linux_armv7l.whl {build_id} 12345 1 cp39 cp39 linux_armv7l - >=3.9 {}",
                sha256_hex(b"Metadata-Version: 2.1\n")
            )),
            Some(format!(
                "foo-1.0-py3-none-any.whl {build_id} 12345 - py3 none any - >=3.9 {}",
                sha256_hex(b"Metadata-Version: 2.1\n")
            )),
        ]
    );
    assert_eq!(
        fx.column("SELECT tool || ':' || dependency FROM dependencies ORDER BY 1"),
        [":libweird.so.1", "apt:libc6", "apt:libssl3", "pip:numpy"].map(|s| Some(s.to_string()))
    );
    assert_eq!(
        fx.value("SELECT filehash FROM files WHERE filename = 'foo-1.0-py3-none-any.whl'"),
        pure("foo", "1.0").sha256
    );
}

#[test]
fn log_build_of_a_failure_records_its_class_and_no_files() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", at(2020, 1, 1));
    let mut record = build("foo", "1.0", "cp311", vec![]);
    record.result.failure = Some(FailureKind::OutOfMemory);
    record.result.exit_status = None;
    let build_id = fx.log_build(record);
    assert_eq!(
        fx.value(&format!("SELECT concat_ws(' ', status, failure, coalesce(exit_status::text, '-')) FROM builds WHERE build_id = {build_id}")),
        "f out-of-memory -"
    );
    for (kind, name) in [
        (FailureKind::Build, "build"),
        (FailureKind::Timeout, "timeout"),
        (FailureKind::NoSpace, "no-space"),
        (FailureKind::Builder, "builder"),
    ] {
        let mut record = build("foo", "1.0", "cp311", vec![]);
        record.result.failure = Some(kind);
        let id = fx.log_build(record);
        assert_eq!(fx.value(&format!("SELECT failure FROM builds WHERE build_id = {id}")), name);
    }
    assert_eq!(fx.value("SELECT count(*) FROM files"), "0");
}

#[test]
fn log_build_moves_an_identical_file_to_the_new_build_with_the_new_dependencies() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", at(2020, 1, 1));
    let mut first = abi3("foo", "1.0", "cp39");
    first.dependencies.apt = vec!["libold".into()];
    let first_id = fx.log_build(build("foo", "1.0", "cp39", vec![first.clone()]));
    let mut again = first.clone();
    again.dependencies.apt = vec!["libnew".into()];
    let second_id = fx.log_build(build("foo", "1.0", "cp311", vec![again]));
    assert_ne!(first_id, second_id);
    assert_eq!(fx.value("SELECT build_id FROM files"), second_id.to_string());
    assert_eq!(fx.value("SELECT string_agg(dependency, ',') FROM dependencies"), "libnew");
    assert_eq!(fx.value("SELECT count(*) FROM builds"), "2");
}

#[test]
fn log_build_with_a_file_recorded_already_with_other_contents_is_refused_and_records_nothing() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", at(2020, 1, 1));
    let original = pure("foo", "1.0");
    let first_id = fx.log_build(build("foo", "1.0", "cp39", vec![original.clone()]));
    let mut changed = original.clone();
    changed.sha256 = "f".repeat(64);
    let message =
        fx.error(log(build("foo", "1.0", "cp311", vec![platform("foo", "1.0", "cp311"), changed])));
    // The refusal's own words, not a database error around them.
    assert!(message.starts_with("foo-1.0-py3-none-any.whl is already recorded with other contents"), "{message}");
    assert!(message.contains(&original.sha256), "{message}");
    assert_eq!(fx.value("SELECT count(*) FROM builds"), "1");
    assert_eq!(fx.value("SELECT build_id || ' ' || filehash FROM files"), format!("{first_id} {}", original.sha256));
}

#[test]
fn log_build_listing_a_file_twice_is_refused_and_records_nothing() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", at(2020, 1, 1));
    let file = platform("foo", "1.0", "cp311");
    let message = fx.error(log(build("foo", "1.0", "cp311", vec![file.clone(), pure("foo", "1.0"), file])));
    assert!(message.contains("foo-1.0-cp311-cp311-linux_armv7l.whl is listed twice"), "{message}");
    assert_eq!(fx.value("SELECT count(*) FROM builds"), "0");
    assert_eq!(fx.value("SELECT count(*) FROM files"), "0");
    assert_eq!(fx.value("SELECT count(*) FROM rewrites_pending"), "0");
}

#[test]
fn log_build_records_the_rewrite_of_the_package_pages_in_the_same_transaction() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", at(2020, 1, 1));
    fx.version("bar", "1.0", at(2020, 1, 1));
    fx.call(LogBuild { build: Box::new(build("foo", "1.0", "cp39", vec![pure("foo", "1.0")])), rewrite_at: at(2024, 3, 1), cross_check: false });
    fx.call(LogBuild { build: Box::new(build("bar", "1.0", "cp39", Vec::new())), rewrite_at: at(2024, 3, 2), cross_check: false });
    // A refused build records no rewrite either.
    let mut changed = pure("foo", "1.0");
    changed.sha256 = "e".repeat(64);
    fx.error(LogBuild { build: Box::new(build("foo", "1.0", "cp311", vec![changed])), rewrite_at: at(2024, 2, 1), cross_check: false });
    let pending = fx.call(PendingRewrites {});
    assert_eq!(
        pending,
        [
            PendingRewrite { package: "foo".into(), added_at: at(2024, 3, 1), scope: RewriteScope::Both },
            PendingRewrite { package: "bar".into(), added_at: at(2024, 3, 2), scope: RewriteScope::Project },
        ]
    );
}

#[test]
fn log_build_of_a_version_deleted_meanwhile_is_a_database_error() {
    let mut fx = Fixture::with_abis();
    let err =
        fx.try_handle(log(build("gone", "1.0", "cp39", vec![pure("gone", "1.0")]))).expect_err("fk");
    assert_eq!(sqlstate(&err).as_deref(), Some("23503"), "{err}");
    assert_eq!(fx.value("SELECT count(*) FROM files"), "0");
    // The next request on the same connection works.
    assert!(fx.call(AllPackages {}).is_empty());
}

#[test]
fn delete_builds_removes_one_versions_builds_or_all_of_a_packages() {
    let mut fx = Fixture::with_abis();
    for v in ["1.0", "2.0"] {
        fx.version("foo", v, at(2020, 1, 1));
        fx.log_build(build("foo", v, "cp39", vec![platform("foo", v, "cp39")]));
        fx.log_build(build("foo", v, "cp311", vec![]));
    }
    fx.version("bar", "1.0", at(2020, 1, 1));
    fx.log_build(build("bar", "1.0", "cp39", vec![pure("bar", "1.0")]));
    fx.call(DeleteBuilds { package: "foo".into(), version: Some("1.0".into()) });
    assert_eq!(fx.column("SELECT DISTINCT version FROM builds WHERE package = 'foo'"), [Some("2.0".to_string())]);
    assert_eq!(fx.value("SELECT count(*) FROM files"), "2");
    fx.call(DeleteBuilds { package: "foo".into(), version: None });
    assert_eq!(fx.value("SELECT string_agg(package, ',') FROM builds"), "bar");
    assert_eq!(fx.value("SELECT count(*) FROM versions"), "3", "versions stay");
}

#[test]
fn files_are_listed_per_package_and_per_version_sorted_and_found_by_hash() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", at(2020, 1, 1));
    fx.version("foo", "2.0", at(2021, 1, 1));
    let a = platform("foo", "2.0", "cp39");
    let b = platform("foo", "1.0", "cp311");
    let c = platform("foo", "1.0", "cp39");
    fx.log_build(build("foo", "2.0", "cp39", vec![a.clone()]));
    fx.log_build(build("foo", "1.0", "cp311", vec![b.clone()]));
    fx.log_build(build("foo", "1.0", "cp39", vec![c.clone()]));
    let hash = |f: &WheelFile| FileHash { filename: f.filename.clone(), sha256: f.sha256.clone() };
    assert_eq!(fx.call(PackageFiles { package: "foo".into() }), [hash(&b), hash(&c), hash(&a)]);
    assert_eq!(
        fx.call(VersionFiles { package: "foo".into(), version: "1.0".into() }),
        [hash(&b), hash(&c)]
    );
    assert!(fx.call(PackageFiles { package: "bar".into() }).is_empty());
    assert_eq!(fx.call(FileWithHash { sha256: a.sha256.clone() }), Some(a.filename.clone()));
    assert_eq!(fx.call(FileWithHash { sha256: "0".repeat(64) }), None);
}

// ------------------------------------------------------------------------------------------
// Immutable file names and rebuilds that keep files
// ------------------------------------------------------------------------------------------

/// `file` with other bytes (its hash made from `seed`), under the same name.
fn other_bytes(file: &WheelFile, seed: &str) -> WheelFile {
    WheelFile { sha256: sha256_hex(seed.as_bytes()), ..file.clone() }
}

/// `file` under its name with the build tag `tag`.
fn tagged(file: &WheelFile, tag: &str) -> WheelFile {
    let filename = format!("{}-{}-{tag}-{}-{}-{}.whl", file.package_tag, file.version_tag, file.py_tag, file.abi_tag, file.platform_tag);
    WheelFile { filename, build_tag: Some(tag.into()), ..file.clone() }
}

fn name_for(fx: &mut Fixture, file: &WheelFile) -> String {
    fx.call(NameForFile { package: "foo".into(), filename: file.filename.clone(), sha256: file.sha256.clone() })
}

#[test]
fn a_file_is_named_after_the_bytes_the_index_holds_for_its_wheel() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", at(2020, 1, 1));
    let original = pure("foo", "1.0");
    assert_eq!(name_for(&mut fx, &original), "foo-1.0-py3-none-any.whl", "a new name is the file's own");
    fx.log_build(build("foo", "1.0", "cp39", vec![original.clone()]));
    assert_eq!(name_for(&mut fx, &original), original.filename, "the same bytes: the same file");
    let rebuilt = other_bytes(&original, "rebuilt");
    assert_eq!(name_for(&mut fx, &rebuilt), "foo-1.0-1-py3-none-any.whl", "other bytes: the next build tag");
    fx.log_build(build("foo", "1.0", "cp39", vec![tagged(&rebuilt, "1")]));
    assert_eq!(name_for(&mut fx, &rebuilt), "foo-1.0-1-py3-none-any.whl", "the newest file holds these bytes: nothing new");
    assert_eq!(name_for(&mut fx, &other_bytes(&original, "third")), "foo-1.0-2-py3-none-any.whl");
    // The first bytes again: installers would keep taking the newer tag 1, so they get tag 2.
    assert_eq!(name_for(&mut fx, &original), "foo-1.0-2-py3-none-any.whl", "an older file's bytes go above the newest");
    // The wheel however its name and version are spelled.
    let spelled = WheelFile { filename: "Foo-1.0.0-py3-none-any.whl".into(), package_tag: "Foo".into(), version_tag: "1.0.0".into(), ..other_bytes(&original, "fourth") };
    assert_eq!(name_for(&mut fx, &spelled), "Foo-1.0.0-2-py3-none-any.whl", "another spelling of a wheel that has other bytes");
    // A builder's own tag above every other stays.
    let own_tag = tagged(&other_bytes(&original, "fifth"), "7");
    assert_eq!(name_for(&mut fx, &own_tag), own_tag.filename);
    // Another platform's wheel of the same release is another wheel.
    let other_platform = platform("foo", "1.0", "cp39");
    assert_eq!(name_for(&mut fx, &other_platform), other_platform.filename);
    let message = fx.error(NameForFile { package: "foo".into(), filename: "foo.tar.gz".into(), sha256: "0".repeat(64) });
    assert!(message.contains("foo.tar.gz"), "{message}");
}

#[test]
fn builds_share_their_builders_environment_however_large_it_is() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", at(2020, 1, 1));
    // As large as a hello may make it: 32 entries of 200 bytes each side.
    let large: BTreeMap<String, String> = (0..32).map(|n| (format!("{n:0>200}"), format!("{:x>200}", n))).collect();
    let mut first = build("foo", "1.0", "cp39", vec![]);
    first.environment = large.clone();
    let mut second = build("foo", "1.0", "cp311", vec![]);
    second.environment = large;
    fx.log_build(first);
    fx.log_build(second);
    assert_eq!(fx.value("SELECT count(*) FROM environments"), "1");
    assert_eq!(fx.value("SELECT count(DISTINCT environment_id) FROM builds"), "1");
}

#[test]
fn a_removed_files_name_keeps_its_bytes() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", at(2020, 1, 1));
    let original = pure("foo", "1.0");
    fx.log_build(build("foo", "1.0", "cp39", vec![original.clone()]));
    fx.call(DeleteBuilds { package: "foo".into(), version: Some("1.0".into()) });
    assert_eq!(fx.value("SELECT filename || ' ' || filehash || ' ' || package FROM retired_files"), format!("{} {} foo", original.filename, original.sha256));
    assert_eq!(name_for(&mut fx, &original), original.filename, "the same bytes may come back under the name");
    let rebuilt = other_bytes(&original, "rebuilt");
    assert_eq!(name_for(&mut fx, &rebuilt), "foo-1.0-1-py3-none-any.whl", "other bytes may not");
    // The database itself refuses the name with other bytes, whoever asks.
    let message = fx.error(log(build("foo", "1.0", "cp39", vec![rebuilt])));
    assert!(message.starts_with("foo-1.0-py3-none-any.whl was published before with other contents"), "{message}");
    assert_eq!(fx.value("SELECT count(*) FROM builds"), "0");
    fx.log_build(build("foo", "1.0", "cp39", vec![original.clone()]));
    // A whole package removed: its names stay retired, found by the package's canonical name.
    let spelled = WheelFile { filename: "Foo-1.0-cp39-cp39-linux_armv7l.whl".into(), package_tag: "Foo".into(), ..platform("foo", "1.0", "cp39") };
    fx.log_build(build("foo", "1.0", "cp39", vec![spelled.clone()]));
    fx.call(DeletePackage { package: "foo".into() });
    assert_eq!(fx.column("SELECT package FROM retired_files WHERE filename = 'Foo-1.0-cp39-cp39-linux_armv7l.whl'"), [Some("foo".into())]);
    fx.version("foo", "1.0", at(2020, 1, 1));
    assert_eq!(name_for(&mut fx, &other_bytes(&spelled, "again")), "Foo-1.0-1-cp39-cp39-linux_armv7l.whl");
}

#[test]
fn a_rebuild_request_queues_a_built_release_until_a_build_of_it_is_recorded() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", at(2020, 1, 1));
    fx.version("bar", "1.0", at(2020, 1, 1));
    fx.log_build(build("foo", "1.0", "cp39", vec![platform("foo", "1.0", "cp39")]));
    fx.log_build(build("foo", "1.0", "cp311", vec![platform("foo", "1.0", "cp311")]));
    fx.log_build(build("foo", "1.0", "cp313", vec![]));
    let empty = || BTreeMap::from([("cp39".to_string(), vec![]), ("cp311".to_string(), vec![]), ("cp313".to_string(), vec![])]);
    let mut expected = empty();
    expected.insert("cp39".into(), vec!["bar 1.0".to_string()]);
    assert_eq!(fx.queue(10), expected);
    // Every ABI the release was built on, a failure's included.
    let abis = fx.call(WantRebuild { package: "foo".into(), version: "1.0".into(), abi: None, at: Utc::now() });
    assert_eq!(abis, ["cp311", "cp313", "cp39"]);
    let queued = fx.queue(10);
    assert_eq!(queued["cp39"], ["bar 1.0", "foo 1.0"]);
    assert_eq!((queued["cp311"].as_slice(), queued["cp313"].as_slice()), (&[][..], &[][..]), "a release waits on its lowest pending ABI");
    // A build handed out before the request does not answer it.
    fx.log_build(build("foo", "1.0", "cp39", vec![]));
    assert_eq!(fx.queue(10)["cp39"], ["bar 1.0", "foo 1.0"]);
    let after_request = |mut record: BuildRecord| {
        record.started_at = Utc::now() + TimeDelta::seconds(1);
        record
    };
    fx.log_build(after_request(build("foo", "1.0", "cp39", vec![tagged(&other_bytes(&platform("foo", "1.0", "cp39"), "again"), "1")])));
    assert_eq!(fx.queue(10)["cp311"], ["foo 1.0"], "the cp39 request is answered");
    fx.log_build(after_request(build("foo", "1.0", "cp311", vec![])));
    fx.log_build(after_request(build("foo", "1.0", "cp313", vec![])));
    assert_eq!(fx.queue(10), expected, "every request answered");
    assert_eq!(fx.value("SELECT count(*) FROM files"), "3", "the published files stay");
    assert_eq!(fx.value("SELECT count(*) FROM builds WHERE package = 'foo'"), "7");
    // One ABI, even one it was never built on.
    assert_eq!(fx.call(WantRebuild { package: "bar".into(), version: "1.0".into(), abi: Some("cp313".into()), at: Utc::now() }), ["cp313"]);
    for (request, why) in [
        (WantRebuild { package: "bar".into(), version: "1.0".into(), abi: None, at: Utc::now() }, "has no build"),
        (WantRebuild { package: "foo".into(), version: "2.0".into(), abi: None, at: Utc::now() }, "unknown version foo 2.0"),
        (WantRebuild { package: "foo".into(), version: "1.0".into(), abi: Some("cp27mu".into()), at: Utc::now() }, "does not build ABI cp27mu"),
    ] {
        let message = fx.error(request);
        assert!(message.contains(why), "{message}");
    }
    fx.call(SkipVersion { package: "foo".into(), version: "1.0".into(), reason: "broken".into() });
    let message = fx.error(WantRebuild { package: "foo".into(), version: "1.0".into(), abi: None, at: Utc::now() });
    assert!(message.contains("is skipped (broken)"), "{message}");
}

// ------------------------------------------------------------------------------------------
// Project data
// ------------------------------------------------------------------------------------------

#[test]
fn project_data_for_a_missing_package_is_refused() {
    let mut fx = Fixture::new();
    let message = fx.error(Project { package: "nope".into() });
    assert!(message.contains("nope does not exist"), "{message}");
}

#[test]
fn project_data_of_a_package_without_names_or_versions_uses_the_canonical_name() {
    let mut fx = Fixture::with_abis();
    fx.call(NewPackage { package: "foo".into(), skip: String::new(), description: "A foo".into() });
    let data = fx.call(Project { package: "foo".into() });
    assert_eq!(data.package, "foo");
    assert_eq!(data.display_name, "foo");
    assert_eq!(data.description, "A foo");
    assert!(data.aliases.is_empty());
    assert!(data.releases.is_empty());
}

#[test]
fn project_data_gathers_names_releases_files_dependencies_and_the_state_of_every_abi() {
    let mut fx = Fixture::with_abis();
    fx.sql("INSERT INTO build_abis (abi_tag, python_version, skip) VALUES ('cp37m', 307, 'retired'), ('cp315', 315, 'not yet')");
    // Every ABI has the baseline (libc6 and libssl3 among it); the operator says cp39's images
    // lack libssl3 and cp311's have libzz.
    fx.sql("DELETE FROM preinstalled_apt_packages WHERE abi_tag = 'cp39' AND apt_package = 'libssl3'");
    fx.sql("INSERT INTO preinstalled_apt_packages VALUES ('cp311', 'libzz')");
    // An ABI declared later gets the baseline too.
    let seeded = fx.column("SELECT apt_package FROM preinstalled_apt_packages WHERE abi_tag = 'cp315' AND apt_package IN ('libc6', 'libstdc++6') ORDER BY 1");
    assert_eq!(seeded, [Some("libc6".to_string()), Some("libstdc++6".to_string())]);
    fx.call(NewPackage {
        package: "foo-bar".into(),
        skip: String::new(),
        description: "Foos bars".into(),
    });
    fx.call(NewPackageName { package: "foo-bar".into(), name: "foo_bar".into(), seen: at(2019, 1, 1) });
    fx.call(NewPackageName { package: "foo-bar".into(), name: "Foo.Bar".into(), seen: at(2021, 1, 1) });
    for (v, y) in [("1.0", 2019), ("2.0", 2020), ("3.0", 2021), ("4.0", 2022), ("5.0", 2023)] {
        fx.version("foo-bar", v, at(y, 1, 1));
    }
    // 1.0: built on the retired cp37m (shown), a platform wheel on cp39 with dependencies,
    // a failure on cp311, nothing on cp313 yet.
    let old = fx.log_build(build("foo-bar", "1.0", "cp37m", vec![platform("foo-bar", "1.0", "cp37m")]));
    let mut cp39_wheel = platform("foo-bar", "1.0", "cp39");
    cp39_wheel.dependencies = Dependencies {
        apt: vec!["libc6".into(), "libssl3".into(), "libzz".into()],
        pip: vec!["six".into(), "attrs".into()],
        unresolved: vec!["libx.so".into()],
    };
    let cp39 = fx.log_build(build("foo-bar", "1.0", "cp39", vec![cp39_wheel.clone()]));
    let failed_first = fx.log_build(build("foo-bar", "1.0", "cp311", vec![]));
    let failed_again = fx.log_build(build("foo-bar", "1.0", "cp311", vec![]));
    // 2.0: a pure wheel built on cp39 serves every ABI.
    let pure_build = fx.log_build(build("foo-bar", "2.0", "cp39", vec![pure("foo-bar", "2.0")]));
    // 3.0: an abi3 wheel (floor cp311) built on cp311, and a cp39 build without files.
    let empty = fx.log_build(build("foo-bar", "3.0", "cp39", vec![]));
    let abi3_build = fx.log_build(build("foo-bar", "3.0", "cp311", vec![abi3("foo-bar", "3.0", "cp311")]));
    // 4.0: skipped and yanked without a reason; 5.0 yanked with one.
    fx.call(SkipVersion { package: "foo-bar".into(), version: "4.0".into(), reason: "binary only".into() });
    fx.call(YankVersion { package: "foo-bar".into(), version: "4.0".into(), reason: Some(String::new()) });
    fx.call(YankVersion { package: "foo-bar".into(), version: "5.0".into(), reason: Some("bad".into()) });

    let data = fx.call(Project { package: "foo-bar".into() });
    assert_eq!(data.package, "foo-bar");
    assert_eq!(data.display_name, "Foo.Bar");
    assert_eq!(data.description, "Foos bars");
    assert_eq!(data.aliases, ["Foo.Bar", "foo_bar"]);
    let release = |v: &str| data.releases.iter().find(|r| r.version == v).unwrap_or_else(|| panic!("{v} missing"));
    assert_eq!(data.releases.len(), 5);
    let abis = |v: &str| -> Vec<(String, AbiStatus, Option<i64>)> {
        release(v).abis.iter().map(|(abi, (status, id))| (abi.clone(), *status, *id)).collect()
    };
    use AbiStatus::*;
    let row = |abi: &str, status, id| (abi.to_string(), status, id);

    let r1 = release("1.0");
    assert_eq!(r1.released, at(2019, 1, 1));
    assert_eq!(r1.yanked, None);
    assert_eq!(r1.skip, "");
    assert_eq!(
        abis("1.0"),
        [
            row("cp311", Fail, Some(failed_again)),
            row("cp313", Pending, None),
            row("cp37m", Success, Some(old)),
            row("cp39", Success, Some(cp39)),
        ]
    );
    assert!(failed_first < failed_again);
    let file = r1.files.iter().find(|f| f.filename == cp39_wheel.filename).expect("cp39 wheel");
    assert_eq!(file.size, 12345);
    assert_eq!(file.sha256, cp39_wheel.sha256);
    assert_eq!(file.metadata_sha256.as_deref(), Some(sha256_hex(b"Metadata-Version: 2.1\n").as_str()));
    assert_eq!(file.builder_abi, "cp39");
    assert_eq!(file.abi_tag, "cp39");
    assert_eq!(file.platform_tag, "linux_armv7l");
    assert_eq!(file.requires_python.as_deref(), Some(">=3.9"));
    assert!(file.uploaded > Utc::now() - TimeDelta::minutes(5));
    // libc6 is preinstalled on the builder's ABI (cp39); libssl3 and libzz are not there.
    assert_eq!(file.dependencies.apt, ["libssl3", "libzz"]);
    assert_eq!(file.dependencies.pip, ["attrs", "six"]);
    assert_eq!(file.dependencies.unresolved, ["libx.so"]);
    assert_eq!(r1.files.len(), 2);

    assert_eq!(
        abis("2.0"),
        [
            row("cp311", Success, Some(pure_build)),
            row("cp313", Success, Some(pure_build)),
            row("cp39", Success, Some(pure_build))
        ]
    );
    assert_eq!(
        abis("3.0"),
        [
            row("cp311", Success, Some(abi3_build)),
            row("cp313", Success, Some(abi3_build)),
            row("cp39", Fail, Some(empty))
        ]
    );
    let r4 = release("4.0");
    assert_eq!(r4.yanked, Some(String::new()));
    assert_eq!(r4.skip, "binary only");
    assert_eq!(abis("4.0"), [row("cp311", Skip, None), row("cp313", Skip, None), row("cp39", Skip, None)]);
    let r5 = release("5.0");
    assert_eq!(r5.yanked.as_deref(), Some("bad"));
    assert_eq!(abis("5.0"), [row("cp311", Pending, None), row("cp313", Pending, None), row("cp39", Pending, None)]);

    // A skipped package: its reason shows on releases without their own.
    fx.call(SkipPackage { package: "foo-bar".into(), reason: "too big".into() });
    let data = fx.call(Project { package: "foo-bar".into() });
    let r5 = data.releases.iter().find(|r| r.version == "5.0").unwrap();
    assert_eq!(r5.skip, "too big");
    assert!(r5.abis.values().all(|(status, _)| *status == Skip));
    let r4 = data.releases.iter().find(|r| r.version == "4.0").unwrap();
    assert_eq!(r4.skip, "binary only");
}

// ------------------------------------------------------------------------------------------
// ABIs and the build queue
// ------------------------------------------------------------------------------------------

#[test]
fn build_abis_are_ordered_by_python_version_not_by_tag() {
    let mut fx = Fixture::with_abis();
    fx.sql("INSERT INTO build_abis (abi_tag, python_version, skip) VALUES ('cp37m', 307, 'retired')");
    let abis = fx.call(BuildAbis {});
    let abi = |tag: &str, position, skip: &str| BuildAbi { tag: tag.into(), position, skip: skip.into() };
    assert_eq!(
        abis,
        [abi("cp37m", 307, "retired"), abi("cp39", 309, ""), abi("cp311", 311, ""), abi("cp313", 313, "")]
    );
    // The index writer's batches get the same list with the projects' data, also when none of
    // the projects exists.
    fx.version("foo", "1.0", at(2020, 1, 1));
    let ProjectsSnapshot { abis: with_data, data, .. } = fx.call(Projects { packages: vec!["missing".into(), "foo".into()] });
    assert_eq!((with_data, data.iter().map(|d| d.package.as_str()).collect::<Vec<_>>()), (abis.clone(), vec!["foo"]));
    let ProjectsSnapshot { abis: alone, data, .. } = fx.call(Projects { packages: vec!["missing".into()] });
    assert_eq!((alone, data.len()), (abis, 0));
}

/// What a build in a queue case made.
#[derive(Clone, Copy, Debug)]
enum Made {
    /// Nothing: a failed build.
    Failure,
    /// A pure wheel (ABI none).
    Pure,
    /// A wheel tagged with the builder's ABI.
    Platform,
    /// A wheel tagged with another ABI than the builder's.
    Tagged(&'static str),
    /// An abi3 wheel with this Python tag.
    Abi3(&'static str),
}

/// One build-queue scenario on the ABIs cp39, cp311 and cp313.
struct QueueCase {
    name: &'static str,
    /// Versions as (package, version, released days ago).
    versions: &'static [(&'static str, &'static str, i64)],
    /// Builds as (package, version, builder ABI, what it made).
    builds: &'static [(&'static str, &'static str, &'static str, Made)],
    /// Requests after the builds (skips, deletions).
    after: fn() -> Vec<DbRequest>,
    /// SQL run as the owner after the builds (ABI changes).
    owner_sql: &'static str,
    limit: u32,
    /// The queue expected, every ABI that is not skipped listed.
    expected: &'static [(&'static str, &'static [&'static str])],
}

const CASE: QueueCase =
    QueueCase { name: "", versions: &[], builds: &[], after: Vec::new, owner_sql: "", limit: 100, expected: &[] };

fn run_queue_case(case: &QueueCase) -> BTreeMap<String, Vec<String>> {
    let mut fx = Fixture::with_abis();
    for (package, version, days) in case.versions {
        fx.version(package, version, days_ago(*days));
    }
    for (package, version, abi, made) in case.builds {
        let files = match made {
            Made::Failure => vec![],
            Made::Pure => vec![pure(package, version)],
            Made::Platform => vec![platform(package, version, abi)],
            Made::Tagged(tag) => vec![platform(package, version, tag)],
            Made::Abi3(py) => vec![abi3(package, version, py)],
        };
        fx.log_build(build(package, version, abi, files));
    }
    for request in (case.after)() {
        let reply = fx.try_handle(request).expect("an after request");
        assert!(!matches!(reply, DbReply::Error(_)), "{reply:?}");
    }
    if !case.owner_sql.is_empty() {
        fx.sql(case.owner_sql);
    }
    fx.queue(case.limit)
}

#[test]
fn build_queue_follows_the_rules_case_by_case() {
    let cases = [
        QueueCase {
            name: "a version without builds waits on the lowest ABI (cp39 before cp311: 309 < 311)",
            versions: &[("foo", "1.0", 1)],
            expected: &[("cp311", &[]), ("cp313", &[]), ("cp39", &["foo 1.0"])],
            ..CASE
        },
        QueueCase {
            name: "a pure wheel built on cp39 serves cp311 and cp313 too",
            versions: &[("foo", "1.0", 1)],
            builds: &[("foo", "1.0", "cp39", Made::Pure)],
            expected: &[("cp311", &[]), ("cp313", &[]), ("cp39", &[])],
            ..CASE
        },
        QueueCase {
            name: "a platform wheel built on cp39 moves the version on to cp311",
            versions: &[("foo", "1.0", 1)],
            builds: &[("foo", "1.0", "cp39", Made::Platform)],
            expected: &[("cp311", &["foo 1.0"]), ("cp313", &[]), ("cp39", &[])],
            ..CASE
        },
        QueueCase {
            name: "an abi3 wheel with floor cp39 serves cp311 and cp313",
            versions: &[("foo", "1.0", 1)],
            builds: &[("foo", "1.0", "cp39", Made::Abi3("cp39"))],
            expected: &[("cp311", &[]), ("cp313", &[]), ("cp39", &[])],
            ..CASE
        },
        QueueCase {
            name: "an abi3 wheel with floor cp312 does not serve cp311 (but serves cp313)",
            versions: &[("foo", "1.0", 1)],
            builds: &[("foo", "1.0", "cp39", Made::Abi3("cp312"))],
            expected: &[("cp311", &["foo 1.0"]), ("cp313", &[]), ("cp39", &[])],
            ..CASE
        },
        QueueCase {
            name: "an abi3 wheel with floor cp312 built on cp311 leaves nothing to do",
            versions: &[("foo", "1.0", 1)],
            builds: &[("foo", "1.0", "cp39", Made::Failure), ("foo", "1.0", "cp311", Made::Abi3("cp312"))],
            expected: &[("cp311", &[]), ("cp313", &[]), ("cp39", &[])],
            ..CASE
        },
        QueueCase {
            name: "a failed build on cp39 is not queued again there; the version moves to cp311",
            versions: &[("foo", "1.0", 1)],
            builds: &[("foo", "1.0", "cp39", Made::Failure)],
            expected: &[("cp311", &["foo 1.0"]), ("cp313", &[]), ("cp39", &[])],
            ..CASE
        },
        QueueCase {
            name: "a version tried on every ABI is done",
            versions: &[("foo", "1.0", 1)],
            builds: &[
                ("foo", "1.0", "cp39", Made::Failure),
                ("foo", "1.0", "cp311", Made::Platform),
                ("foo", "1.0", "cp313", Made::Failure),
            ],
            expected: &[("cp311", &[]), ("cp313", &[]), ("cp39", &[])],
            ..CASE
        },
        QueueCase {
            name: "a wheel tagged with another ABI serves that ABI whichever builder made it",
            versions: &[("foo", "1.0", 1)],
            builds: &[("foo", "1.0", "cp39", Made::Platform), ("foo", "1.0", "cp39", Made::Tagged("cp311"))],
            expected: &[("cp311", &[]), ("cp313", &["foo 1.0"]), ("cp39", &[])],
            ..CASE
        },
        QueueCase {
            name: "skipped packages and versions are left out",
            versions: &[("skipped-package", "1.0", 1), ("foo", "1.0", 1), ("foo", "2.0", 2)],
            after: || {
                vec![
                    SkipPackage { package: "skipped-package".into(), reason: "binary only".into() }.into(),
                    SkipVersion { package: "foo".into(), version: "1.0".into(), reason: "deleted".into() }.into(),
                ]
            },
            expected: &[("cp311", &[]), ("cp313", &[]), ("cp39", &["foo 2.0"])],
            ..CASE
        },
        QueueCase {
            name: "a skipped ABI is left out and its versions wait on the next one",
            versions: &[("foo", "1.0", 1)],
            owner_sql: "UPDATE build_abis SET skip = 'retired' WHERE abi_tag = 'cp39'",
            expected: &[("cp311", &["foo 1.0"]), ("cp313", &[])],
            ..CASE
        },
        QueueCase {
            name: "a deleted version is gone",
            versions: &[("foo", "1.0", 1), ("foo", "2.0", 2)],
            after: || vec![DeleteVersion { package: "foo".into(), version: "1.0".into() }.into()],
            expected: &[("cp311", &[]), ("cp313", &[]), ("cp39", &["foo 2.0"])],
            ..CASE
        },
        QueueCase {
            name: "the newest release comes first",
            versions: &[("old", "1.0", 3000), ("newest", "1.0", 0), ("middle", "1.0", 30), ("middle", "1.1", 20)],
            expected: &[
                ("cp311", &[]),
                ("cp313", &[]),
                ("cp39", &["newest 1.0", "middle 1.1", "middle 1.0", "old 1.0"]),
            ],
            ..CASE
        },
        QueueCase {
            name: "the limit holds per ABI, keeping the newest",
            versions: &[("a", "1", 1), ("b", "1", 2), ("c", "1", 3), ("d", "1", 4), ("e", "1", 5), ("f", "1", 6)],
            builds: &[
                ("d", "1", "cp39", Made::Platform),
                ("e", "1", "cp39", Made::Platform),
                ("f", "1", "cp39", Made::Platform),
            ],
            limit: 2,
            expected: &[("cp311", &["d 1", "e 1"]), ("cp313", &[]), ("cp39", &["a 1", "b 1"])],
            ..CASE
        },
        QueueCase {
            name: "deleting the builds of a finished version queues it again",
            versions: &[("foo", "1.0", 1)],
            builds: &[("foo", "1.0", "cp39", Made::Pure)],
            after: || vec![DeleteBuilds { package: "foo".into(), version: Some("1.0".into()) }.into()],
            expected: &[("cp311", &[]), ("cp313", &[]), ("cp39", &["foo 1.0"])],
            ..CASE
        },
        QueueCase {
            name: "a new ABI queues finished versions its wheels do not serve",
            versions: &[("foo", "1.0", 1), ("bar", "1.0", 1)],
            builds: &[
                ("foo", "1.0", "cp39", Made::Platform),
                ("foo", "1.0", "cp311", Made::Platform),
                ("foo", "1.0", "cp313", Made::Platform),
                ("bar", "1.0", "cp39", Made::Pure),
            ],
            owner_sql: "INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp312', 312)",
            expected: &[("cp311", &[]), ("cp312", &["foo 1.0"]), ("cp313", &[]), ("cp39", &[])],
            ..CASE
        },
    ];
    for case in &cases {
        let expected: BTreeMap<String, Vec<String>> = case
            .expected
            .iter()
            .map(|(abi, list)| (abi.to_string(), list.iter().map(|s| s.to_string()).collect()))
            .collect();
        assert_eq!(run_queue_case(case), expected, "case: {}", case.name);
    }
}

#[test]
fn the_build_queue_marks_versions_that_need_nothing_and_looks_past_them_afterwards() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", days_ago(1));
    fx.version("bar", "1.0", days_ago(1));
    // A pure wheel recorded behind the master's back: the version's mark is not refreshed.
    fx.sql(
        "INSERT INTO builds (build_id, package, version, built_by, abi_tag, status, duration) \
         VALUES (100, 'foo', '1.0', 1, 'cp39', true, interval '1 minute'); \
         INSERT INTO files (filename, build_id, filesize, filehash, package_tag, package_version_tag, \
                            py_version_tag, abi_tag, platform_tag) \
         VALUES ('foo-1.0-py3-none-any.whl', 100, 1, repeat('a', 64), 'foo', '1.0', 'py3', 'none', 'any')",
    );
    let complete = |fx: &Fixture| fx.db.column("SELECT package || ' ' || complete::text FROM versions ORDER BY package");
    assert_eq!(complete(&fx), [Some("bar false".into()), Some("foo false".into())]);
    assert_eq!(fx.queue(10)["cp39"], ["bar 1.0"]);
    assert_eq!(complete(&fx), [Some("bar false".into()), Some("foo true".into())]);
    // Recording a build refreshes the mark at once.
    fx.log_build(build("bar", "1.0", "cp39", vec![pure("bar", "1.0")]));
    assert_eq!(complete(&fx), [Some("bar true".into()), Some("foo true".into())]);
    assert!(fx.queue(10).values().all(Vec::is_empty));
}

#[test]
fn the_queue_remembers_what_a_release_waits_on_until_its_builds_or_the_abis_change() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", days_ago(1));
    let hint = |fx: &Fixture| fx.value("SELECT complete || ' ' || COALESCE(waiting_on, '-') FROM versions");
    assert_eq!(hint(&fx), "false -");
    assert_eq!(fx.queue(10)["cp39"], ["foo 1.0"]);
    assert_eq!(hint(&fx), "false cp39");
    // A platform wheel on cp39: it waits on cp311 now.
    let cp39 = build("foo", "1.0", "cp39", vec![platform("foo", "1.0", "cp39")]);
    fx.log_build(cp39.clone());
    assert_eq!(hint(&fx), "false cp311");
    assert_eq!(fx.queue(10)["cp311"], ["foo 1.0"]);
    // Deleting the builds: worked out again, from the lowest ABI.
    fx.call(DeleteBuilds { package: "foo".into(), version: None });
    assert_eq!(hint(&fx), "false -");
    assert_eq!(fx.queue(10)["cp39"], ["foo 1.0"]);
    fx.log_build(cp39);
    assert_eq!(hint(&fx), "false cp311");
    // A rebuild asked for on cp39: worked out again, and waits on cp39.
    fx.call(WantRebuild { package: "foo".into(), version: "1.0".into(), abi: Some("cp39".into()), at: Utc::now() });
    assert_eq!(hint(&fx), "false -");
    assert_eq!(fx.queue(10)["cp39"], ["foo 1.0"]);
    // A new lowest ABI: every release is worked out again and waits on it.
    fx.sql("INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp37m', 307)");
    assert_eq!(hint(&fx), "false -");
    assert_eq!(fx.queue(10)["cp37m"], ["foo 1.0"]);
    assert_eq!(hint(&fx), "false cp37m");
    // Once nothing is wanted, the release is complete.
    fx.sql("UPDATE build_abis SET skip = 'retired' WHERE abi_tag <> 'cp39'");
    fx.sql("DELETE FROM rebuilds_wanted");
    assert!(fx.queue(10).values().all(Vec::is_empty));
    assert_eq!(hint(&fx), "true -");
}

/// Runs the queue while another writer holds the only release's row, changed by `sql` and not
/// committed: the queue reads the release before the other writer commits, then waits for its
/// row, which it finds changed.
fn queue_while_another_writer_changes_the_release(fx: &mut Fixture, sql: &str) -> BuildQueues {
    let mut owner = fx.rt.block_on(sqlx::PgConnection::connect(&fx.db.owner_url())).expect("connect as owner");
    fx.rt.block_on(async {
        owner.execute("BEGIN").await.unwrap();
        owner.execute(sqlx::AssertSqlSafe(sql.to_string())).await.unwrap();
    });
    let url = fx.db.app_url();
    let queue = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut database = Database::connect(&url, Duration::from_secs(30)).await.unwrap();
            database.build_queue(10).await.unwrap()
        })
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fx.value(
        "SELECT count(*) FROM pg_locks WHERE NOT granted \
         AND pid IN (SELECT pid FROM pg_stat_activity WHERE datname = current_database())",
    ) != "1"
    {
        assert!(!queue.is_finished(), "the queue did not wait for the row");
        assert!(std::time::Instant::now() < deadline, "the queue never waited for the row");
        std::thread::sleep(Duration::from_millis(20));
    }
    fx.rt.block_on(owner.execute("COMMIT")).unwrap();
    queue.join().unwrap()
}

#[test]
fn a_release_changed_while_the_queue_works_it_out_keeps_the_other_writers_hint() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", days_ago(1));
    // Another writer (a build being recorded, say) gives the release a new hint.
    let queues = queue_while_another_writer_changes_the_release(&mut fx, "UPDATE versions SET waiting_on = 'cp311' WHERE package = 'foo'");
    // What the queue worked out from its older reading (cp39) did not overwrite the newer hint.
    assert_eq!(fx.value("SELECT waiting_on FROM versions"), "cp311");
    assert!(queues.queues["cp39"].is_empty());
    assert_eq!(queues.queues["cp311"].len(), 1);
}

#[test]
fn a_release_changed_otherwise_while_the_queue_works_it_out_is_worked_out_again_at_once() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", days_ago(2));
    // Another writer changes the release without giving it a hint (its date, as a pin can).
    let queues = queue_while_another_writer_changes_the_release(&mut fx, "UPDATE versions SET released = now() - interval '3 days'");
    assert_eq!(fx.value("SELECT waiting_on FROM versions"), "cp39");
    assert_eq!(queues.queues["cp39"].len(), 1, "{queues:?}");
    assert!(!queues.unexamined);
}

#[test]
fn a_refused_request_leaves_no_lock_behind_on_its_connection() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", days_ago(1));
    // Refused after locking the release's row (nothing to cross-check yet).
    let refused = fx.try_handle(WantCrossCheck { package: "foo".into(), version: "1.0".into(), abi: None }).unwrap();
    assert!(matches!(refused, DbReply::Error(_)), "{refused:?}");
    // Another connection can change the row at once while this one stays idle.
    let url = fx.db.app_url();
    fx.rt.block_on(async {
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        other.execute("SET lock_timeout = '5s'").await.unwrap();
        other.execute("UPDATE versions SET waiting_on = 'cp39' WHERE package = 'foo'").await.expect("the row is not locked");
    });
}

#[test]
fn a_computation_whose_time_runs_out_answers_with_what_it_worked_out_and_says_more_remain() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", days_ago(1));
    // No time at all: one statement's worth is worked out, and the answer says more may remain.
    let first = fx.rt.block_on(fx.database.build_queue_within(10, Duration::ZERO)).unwrap();
    assert!(first.unexamined);
    assert_eq!(first.queues["cp39"].len(), 1);
    // The next computation finds nothing left to work out.
    let second = fx.rt.block_on(fx.database.build_queue_within(10, Duration::ZERO)).unwrap();
    assert!(!second.unexamined);
    assert_eq!(second.queues["cp39"].len(), 1);
}

#[test]
fn build_queue_entries_are_releases_with_their_pinned_sources() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", days_ago(1));
    let queue = fx.call(BuildQueue { limit: 10 }).queues;
    let release = PackageVersion { package: "foo".into(), version: "1.0".into() };
    assert_eq!(queue["cp39"], [QueuedBuild { release, source: source_file("foo", "1.0") }]);
}

#[test]
fn a_release_is_queued_once_its_source_is_pinned_and_a_pin_is_never_replaced() {
    let mut fx = Fixture::with_abis();
    fx.unpinned_version("foo", "1.0", days_ago(2));
    fx.unpinned_version("foo", "2.0", days_ago(1));
    let unpinned = |fx: &mut Fixture| -> Vec<String> {
        fx.call(UnpinnedSources { limit: 10 }).into_iter().map(|r| format!("{} {}", r.package, r.version)).collect()
    };
    // Newest first; neither is queued.
    assert_eq!(unpinned(&mut fx), ["foo 2.0", "foo 1.0"]);
    assert!(fx.queue(10)["cp39"].is_empty());

    let source = source_file("foo", "1.0");
    let released = |fx: &mut Fixture| fx.value("SELECT (released AT TIME ZONE 'UTC')::date::text FROM versions WHERE version = '1.0'");
    // The pin dates the release by its source's upload time.
    let uploaded = Some(days_ago(30));
    assert!(fx.call(PinSource { package: "foo".into(), version: "1.0".into(), source: source.clone(), uploaded }));
    assert_eq!(fx.queue(10)["cp39"], ["foo 1.0"]);
    assert_eq!(released(&mut fx), days_ago(30).date_naive().to_string());
    // Its project page's rewrite is recorded with the pin.
    assert_eq!(fx.value("SELECT string_agg(package || ' ' || scope, ',') FROM rewrites_pending"), "foo project");
    // Another file for the same release does not replace the pin, nor its date.
    let other = SourceFile { sha256: "f".repeat(64), ..source.clone() };
    assert!(!fx.call(PinSource { package: "foo".into(), version: "1.0".into(), source: other, uploaded: Some(days_ago(1)) }));
    assert_eq!(fx.value("SELECT source_sha256 FROM versions WHERE version = '1.0'"), source.sha256);
    assert_eq!(released(&mut fx), days_ago(30).date_naive().to_string());

    // Looked for in vain: asked for again only once its retry is due; a pinned release's
    // retry is not set.
    fx.call(PinLater { package: "foo".into(), version: "2.0".into(), after: HOUR });
    fx.call(PinLater { package: "foo".into(), version: "1.0".into(), after: HOUR });
    assert_eq!(fx.value("SELECT coalesce(source_retry_at::text, 'none') FROM versions WHERE version = '1.0'"), "none");
    assert_eq!(unpinned(&mut fx), Vec::<String>::new());
    fx.sql("UPDATE versions SET source_retry_at = now() - interval '1 second' WHERE version = '2.0'");
    assert_eq!(unpinned(&mut fx), ["foo 2.0"]);
    // Skipped releases and packages are not looked for.
    fx.sql("UPDATE versions SET skip = 'binary only' WHERE version = '2.0'");
    assert_eq!(unpinned(&mut fx), Vec::<String>::new());

    // An upload time later than the release's date does not move it (up the queue).
    fx.unpinned_version("foo", "3.0", days_ago(5));
    let source = source_file("foo", "3.0");
    assert!(fx.call(PinSource { package: "foo".into(), version: "3.0".into(), source, uploaded: Some(days_ago(1)) }));
    let date = fx.value("SELECT (released AT TIME ZONE 'UTC')::date::text FROM versions WHERE version = '3.0'");
    assert_eq!(date, days_ago(5).date_naive().to_string());
}

#[test]
fn a_source_the_schema_cannot_hold_is_refused() {
    let mut fx = Fixture::with_abis();
    fx.unpinned_version("foo", "1.0", days_ago(1));
    let good = source_file("foo", "1.0");
    for (bad, said) in [
        (SourceFile { sha256: "ABC".into(), ..good.clone() }, "SHA-256"),
        (SourceFile { filename: "a/b.tar.gz".into(), ..good.clone() }, "file name"),
        (SourceFile { url: "file:///etc/passwd".into(), ..good.clone() }, "not http"),
        (SourceFile { url: format!("http://i/{}", "x".repeat(2000)), ..good.clone() }, "longer than"),
    ] {
        let message = fx.error(PinSource { package: "foo".into(), version: "1.0".into(), source: bad, uploaded: None });
        assert!(message.contains(said), "{message}");
    }
    assert_eq!(fx.value("SELECT count(*) FROM versions WHERE source_sha256 IS NOT NULL"), "0");
}

// ------------------------------------------------------------------------------------------
// PyPI serial, statistics, search index
// ------------------------------------------------------------------------------------------

#[test]
fn the_pypi_serial_never_goes_backwards() {
    let mut fx = Fixture::new();
    assert_eq!(fx.call(PypiSerial {}), 0);
    fx.call(SetPypiSerial { serial: 50_000 });
    assert_eq!(fx.call(PypiSerial {}), 50_000);
    fx.call(SetPypiSerial { serial: 50_000 });
    let message = fx.error(SetPypiSerial { serial: 49_999 });
    assert!(message.contains("50000") && message.contains("49999"), "{message}");
    assert_eq!(fx.call(PypiSerial {}), 50_000);
    fx.call(SetPypiSerial { serial: 60_000 });
    assert_eq!(fx.call(PypiSerial {}), 60_000);
}

fn download(filename: &str, host: &str, at: DateTime<Utc>) -> AccessRecord {
    AccessRecord::Download { filename: filename.into(), host: host.into(), at, client: ClientInfo::default() }
}

#[test]
fn statistics_count_packages_builds_files_releases_and_downloads() {
    let mut fx = Fixture::with_abis();
    fx.sql("INSERT INTO build_abis (abi_tag, python_version, skip) VALUES ('cp37m', 307, 'retired')");
    let empty = fx.call(Statistics {});
    assert_eq!(empty.packages_built, 0);
    assert_eq!(empty.builds_last_hour.len(), 3);
    assert!(empty.builds_last_hour.values().all(|n| *n == 0));

    fx.version("foo", "1.0", days_ago(10));
    fx.version("foo", "2.0", Utc::now() - TimeDelta::minutes(5));
    fx.version("bar", "1.0", days_ago(10));
    fx.version("baz", "1.0", days_ago(10));
    let a = pure("foo", "1.0");
    fx.log_build(build("foo", "1.0", "cp39", vec![a.clone(), platform("foo", "1.0", "cp39")]));
    fx.log_build(build("bar", "1.0", "cp311", vec![platform("bar", "1.0", "cp311")]));
    fx.log_build(build("baz", "1.0", "cp311", vec![]));
    // An old build, and one whose duration is garbage (over a week): neither counts in time.
    fx.sql("UPDATE builds SET built_at = now() - interval '2 hours' WHERE package = 'bar'");
    fx.sql("UPDATE builds SET duration = interval '8 days' WHERE package = 'baz'");
    let records = vec![
        download(&a.filename, "192.0.2.1", Utc::now()),
        download(&a.filename, "192.0.2.1", days_ago(2)),
        download(&a.filename, "192.0.2.1", days_ago(40)),
    ];
    assert_eq!(fx.call(LogAccess { records }), 3);

    let stats = fx.call(Statistics {});
    assert_eq!(stats.packages_built, 2);
    assert_eq!(stats.builds_last_hour, BTreeMap::from([("cp39".into(), 1), ("cp311".into(), 1), ("cp313".into(), 0)]));
    assert_eq!(stats.builds_time, Duration::from_secs(180));
    assert_eq!(stats.builds_size, 3 * 12345);
    assert_eq!(stats.files_count, 3);
    assert_eq!(stats.new_last_hour, 1);
    assert_eq!(stats.downloads_last_hour, 1);
    assert_eq!(stats.downloads_last_month, 2);
    assert_eq!(stats.downloads_all, 3);
}

#[test]
fn the_search_index_lists_built_packages_with_their_recent_and_total_downloads() {
    let mut fx = Fixture::with_abis();
    for p in ["zeta", "alpha", "unbuilt", "failed"] {
        fx.version(p, "1.0", days_ago(10));
    }
    let z = pure("zeta", "1.0");
    let a = pure("alpha", "1.0");
    fx.log_build(build("zeta", "1.0", "cp39", vec![z.clone()]));
    fx.log_build(build("alpha", "1.0", "cp39", vec![a.clone()]));
    fx.log_build(build("failed", "1.0", "cp39", vec![]));
    let records = vec![
        download(&z.filename, "192.0.2.1", days_ago(1)),
        download(&z.filename, "192.0.2.1", days_ago(100)),
        download(&z.filename, "2001:db8::1", days_ago(2)),
        download("unknown-1.0-py3-none-any.whl", "192.0.2.1", days_ago(1)),
    ];
    assert_eq!(fx.call(LogAccess { records }), 4);
    let entries = fx.call(SearchIndex {});
    let entry = |package: &str, recent, all| SearchEntry {
        package: package.into(),
        downloads_recent: recent,
        downloads_all: all,
    };
    assert_eq!(entries, [entry("alpha", 0, 0), entry("zeta", 2, 3)]);
}

/// Each package's files, their bytes and its builds' time (microseconds), as the running
/// totals hold them and as counted from the builds and files themselves.
fn totals_kept_and_counted(fx: &Fixture) -> (Vec<Option<String>>, Vec<Option<String>>) {
    let kept = fx.column(
        "SELECT p.package || ' ' || COALESCE(t.files, 0) || ' ' || COALESCE(t.files_size, 0) || ' ' \
                || COALESCE(EXTRACT(EPOCH FROM t.build_time) * 1000000, 0)::bigint \
         FROM packages p LEFT JOIN package_totals t ON t.package = p.package ORDER BY p.package",
    );
    let counted = fx.column(
        "SELECT p.package || ' ' \
                || (SELECT count(*) FROM builds b JOIN files f ON f.build_id = b.build_id WHERE b.package = p.package) || ' ' \
                || (SELECT COALESCE(sum(f.filesize), 0) FROM builds b JOIN files f ON f.build_id = b.build_id \
                     WHERE b.package = p.package) || ' ' \
                || (SELECT COALESCE(EXTRACT(EPOCH FROM sum(b.duration)) * 1000000, 0)::bigint FROM builds b \
                     WHERE b.package = p.package AND b.duration < interval '1 week') \
         FROM packages p ORDER BY p.package",
    );
    (kept, counted)
}

#[track_caller]
fn assert_totals_match(fx: &Fixture, step: &str) {
    let (kept, counted) = totals_kept_and_counted(fx);
    assert_eq!(kept, counted, "after {step}");
}

#[test]
fn running_totals_match_a_count_from_scratch_through_builds_moves_updates_deletions_and_renames() {
    let mut fx = Fixture::with_abis();
    for (package, version) in [("foo", "1.0"), ("foo", "2.0"), ("bar", "1.0"), ("baz", "1.0")] {
        fx.version(package, version, days_ago(10));
    }
    let foo = pure("foo", "1.0");
    fx.log_build(build("foo", "1.0", "cp39", vec![foo.clone()]));
    fx.log_build(build("foo", "1.0", "cp311", vec![platform("foo", "1.0", "cp311")]));
    fx.log_build(build("foo", "2.0", "cp39", vec![platform("foo", "2.0", "cp39")]));
    fx.log_build(build("bar", "1.0", "cp311", vec![platform("bar", "1.0", "cp311")]));
    fx.log_build(build("baz", "1.0", "cp39", vec![]));
    assert_totals_match(&fx, "logging builds");
    // The figures are not all zero: the comparison has something to compare.
    assert_eq!(fx.value("SELECT files || ' ' || files_size FROM package_totals WHERE package = 'foo'"), "3 37035");

    // An identical file moves to the new build (an update of files, not an insert), beside a
    // new file of the same build.
    fx.log_build(build("foo", "1.0", "cp313", vec![foo.clone(), platform("foo", "1.0", "cp313")]));
    assert_eq!(fx.value("SELECT count(*) FROM builds WHERE package = 'foo'"), "4");
    assert_eq!(fx.value("SELECT files FROM package_totals WHERE package = 'foo'"), "4");
    assert_totals_match(&fx, "moving a file to a new build");
    fx.sql("UPDATE files SET build_id = (SELECT build_id FROM builds WHERE package = 'bar') WHERE filename LIKE 'foo-2.0-%'");
    fx.sql("UPDATE files SET filesize = 999 WHERE filename LIKE 'bar-%'");
    assert_totals_match(&fx, "moving a file to another package's build and changing a size by hand");

    fx.sql("UPDATE builds SET duration = interval '8 days' WHERE package = 'baz'");
    fx.sql("UPDATE builds SET duration = interval '3 minutes' WHERE package = 'bar'");
    assert_totals_match(&fx, "changing durations");

    fx.call(DeleteBuilds { package: "foo".into(), version: Some("2.0".into()) });
    assert_totals_match(&fx, "deleting a version's builds");
    fx.call(RenamePackage { from: "bar".into(), to: "qux".into() });
    assert_totals_match(&fx, "a rename");
    // bar's own file and the one moved to its build.
    assert_eq!(fx.value("SELECT files FROM package_totals WHERE package = 'qux'"), "2");
    fx.sql("DELETE FROM files WHERE filename LIKE 'foo-1.0-cp311%'");
    assert_totals_match(&fx, "deleting a file by hand");
    fx.call(DeleteVersion { package: "foo".into(), version: "1.0".into() });
    assert_totals_match(&fx, "deleting a version");
    fx.call(DeletePackage { package: "baz".into() });
    assert_totals_match(&fx, "deleting a package");
    assert_eq!(fx.value("SELECT count(*) FROM package_totals WHERE package = 'baz'"), "0");
    fx.call(DeleteBuilds { package: "qux".into(), version: None });
    assert_totals_match(&fx, "deleting a package's builds");
    assert_eq!(fx.value("SELECT sum(files) FROM package_totals"), "0");
}

#[test]
fn downloads_are_counted_per_package_ever_and_per_day_for_the_last_30_days() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", days_ago(10));
    fx.version("bar", "1.0", days_ago(10));
    let foo = pure("foo", "1.0");
    let bar = pure("bar", "1.0");
    fx.log_build(build("foo", "1.0", "cp39", vec![foo.clone()]));
    fx.log_build(build("bar", "1.0", "cp39", vec![bar.clone()]));
    // A day that left the window long ago, as a farm that was idle for a month would hold it.
    fx.sql("INSERT INTO package_downloads_recent (package, day, downloads) VALUES ('bar', current_date - 60, 7)");
    // (28 and 31 days ago: on either side of the window even when midnight, UTC, passes
    // during the test.)
    let records = vec![
        download(&foo.filename, "192.0.2.1", Utc::now()),
        download(&foo.filename, "192.0.2.1", days_ago(28)),
        download(&foo.filename, "192.0.2.1", days_ago(31)),
        download(&foo.filename, "192.0.2.1", days_ago(400)),
        download(&bar.filename, "192.0.2.1", days_ago(3)),
        download("unknown-1.0-py3-none-any.whl", "192.0.2.1", Utc::now()),
    ];
    assert_eq!(fx.call(LogAccess { records }), 6);
    let recent = "SELECT package || ' ' || sum(downloads) FROM package_downloads_recent GROUP BY package ORDER BY package";
    assert_eq!(fx.column(recent), [Some("bar 1".into()), Some("foo 2".into())]);
    assert_eq!(fx.column("SELECT package || ' ' || downloads FROM package_totals ORDER BY package"), [Some("bar 1".into()), Some("foo 4".into())]);
    let stats = fx.call(Statistics {});
    assert_eq!((stats.downloads_last_month, stats.downloads_all), (3, 5));

    // Deleting the builds leaves the downloads counted: they happened.
    fx.call(DeleteBuilds { package: "foo".into(), version: None });
    assert_eq!(fx.value("SELECT downloads FROM package_totals WHERE package = 'foo'"), "4");
    // A package's downloads go with it.
    fx.call(DeletePackage { package: "foo".into() });
    assert_eq!(fx.column(recent), [Some("bar 1".into())]);
    let stats = fx.call(Statistics {});
    assert_eq!((stats.downloads_last_month, stats.downloads_all), (1, 1));
}

// ------------------------------------------------------------------------------------------
// Access logs
// ------------------------------------------------------------------------------------------

#[test]
fn log_access_stores_every_kind_drops_bad_hosts_and_counts_what_it_stored() {
    let mut fx = Fixture::new();
    let when = at(2024, 3, 1);
    let client = ClientInfo {
        arch: Some("armv7l".into()),
        distro_name: Some("Raspbian GNU/Linux".into()),
        distro_version: Some("12".into()),
        os_name: Some("Linux".into()),
        os_version: Some("6.1.21".into()),
        py_name: Some("CPython".into()),
        py_version: Some("3.11.2".into()),
        installer_name: Some("pip".into()),
        installer_version: Some("23.0.1".into()),
        setuptools_version: Some("66.1.1".into()),
    };
    let records = vec![
        AccessRecord::Download {
            filename: "foo-1.0-py3-none-any.whl".into(),
            host: "192.0.2.1".into(),
            at: when,
            client: client.clone(),
        },
        AccessRecord::Search {
            package: "foo".into(),
            host: "2001:db8::2".into(),
            at: when,
            client: ClientInfo::default(),
        },
        AccessRecord::ProjectPage {
            package: "foo".into(),
            host: "198.51.100.3".into(),
            at: when,
            user_agent: "Mozilla/5.0".into(),
        },
        AccessRecord::ProjectJson {
            package: "foo".into(),
            host: "198.51.100.4".into(),
            at: when,
            user_agent: "curl/8".into(),
        },
        AccessRecord::Page { page: "faq".into(), host: "::1".into(), at: when, user_agent: "Mozilla/5.0".into() },
        AccessRecord::Page { page: "faq".into(), host: "not-an-address".into(), at: when, user_agent: String::new() },
        AccessRecord::Download { filename: "x.whl".into(), host: "".into(), at: when, client: ClientInfo::default() },
        AccessRecord::Search {
            package: "foo".into(),
            host: "192.0.2.300".into(),
            at: when,
            client: ClientInfo::default(),
        },
    ];
    assert_eq!(fx.call(LogAccess { records }), 5);
    assert_eq!(
        fx.value(
            "SELECT concat_ws('|', filename, accessed_by, accessed_at, arch, distro_name, distro_version, os_name, \
             os_version, py_name, py_version, installer_name, installer_version, setuptools_version) FROM downloads"
        ),
        "foo-1.0-py3-none-any.whl|192.0.2.1|2024-03-01 12:00:00+00|armv7l|Raspbian GNU/Linux|12|Linux|6.1.21|CPython|3.11.2|pip|23.0.1|66.1.1"
    );
    assert_eq!(
        fx.value("SELECT concat_ws('|', package, accessed_by, coalesce(arch, 'null')) FROM searches"),
        "foo|2001:db8::2|null"
    );
    assert_eq!(
        fx.value("SELECT concat_ws('|', package, accessed_by, user_agent) FROM project_page_hits"),
        "foo|198.51.100.3|Mozilla/5.0"
    );
    assert_eq!(
        fx.value("SELECT concat_ws('|', package, accessed_by, user_agent) FROM project_json_downloads"),
        "foo|198.51.100.4|curl/8"
    );
    assert_eq!(
        fx.value("SELECT concat_ws('|', page, accessed_by, user_agent) FROM web_page_hits"),
        "faq|::1|Mozilla/5.0"
    );
    assert_eq!(fx.call(LogAccess { records: vec![] }), 0);
}

#[test]
fn log_access_cuts_oversized_text_and_replaces_control_characters() {
    let mut fx = Fixture::new();
    let when = at(2024, 3, 1);
    let agent = format!("Evil\u{0}\u{1b}[31m\tAgent\r\n{}", "ü".repeat(1000));
    let records = vec![
        AccessRecord::ProjectPage {
            package: "p".repeat(500),
            host: "192.0.2.1".into(),
            at: when,
            user_agent: agent.clone(),
        },
        AccessRecord::Page {
            page: "a-very-long-page-name-that-does-not-fit".into(),
            host: "192.0.2.1".into(),
            at: when,
            user_agent: agent,
        },
        AccessRecord::Download {
            filename: format!("{}.whl", "f".repeat(400)),
            host: "192.0.2.1".into(),
            at: when,
            client: ClientInfo {
                installer_name: Some("i".repeat(50)),
                arch: Some("a\u{7f}".repeat(80)),
                ..ClientInfo::default()
            },
        },
    ];
    assert_eq!(fx.call(LogAccess { records }), 3);
    assert_eq!(fx.value("SELECT length(package) || ' ' || length(user_agent) FROM project_page_hits"), "200 200");
    assert_eq!(fx.value("SELECT left(user_agent, 20) FROM project_page_hits"), "Evil\u{fffd}\u{fffd}[31m\tAgent\r\nüü");
    assert_eq!(fx.value("SELECT page FROM web_page_hits"), "a-very-long-page-name-that-doe");
    assert_eq!(
        fx.value("SELECT length(filename) || ' ' || length(installer_name) || ' ' || length(arch) FROM downloads"),
        "255 20 100"
    );
    assert_eq!(fx.value("SELECT left(arch, 4) FROM downloads"), "a\u{fffd}a\u{fffd}");
}

// ------------------------------------------------------------------------------------------
// Page rewrites and the audit log
// ------------------------------------------------------------------------------------------

#[test]
fn pending_rewrites_keep_the_latest_time_and_widest_scope_and_clear_only_when_the_snapshot_saw_them() {
    let mut fx = Fixture::new();
    let rewrite = |package: &str, added_at, scope| {
        AddRewrite { rewrite: PendingRewrite { package: package.into(), added_at, scope } }
    };
    fx.call(rewrite("foo", at(2024, 1, 2), RewriteScope::Project));
    fx.call(rewrite("bar", at(2024, 1, 3), RewriteScope::Both));
    fx.call(rewrite("foo", at(2024, 1, 1), RewriteScope::Project));
    fx.call(rewrite("foo", at(2024, 1, 5), RewriteScope::Both));
    fx.call(rewrite("baz", at(2024, 1, 2), RewriteScope::Project));
    let pending = fx.call(PendingRewrites {});
    let entry = |package: &str, added_at, scope| PendingRewrite { package: package.into(), added_at, scope };
    assert_eq!(
        pending,
        [
            entry("baz", at(2024, 1, 2), RewriteScope::Project),
            entry("bar", at(2024, 1, 3), RewriteScope::Both),
            entry("foo", at(2024, 1, 5), RewriteScope::Both),
        ]
    );

    // A transaction still running when the pages' data was read (a build being recorded)...
    let mut other = fx.rt.block_on(sqlx::PgConnection::connect(&fx.db.app_url())).expect("a second connection");
    fx.rt.block_on(async {
        sqlx::query("BEGIN").execute(&mut other).await?;
        sqlx::query("INSERT INTO rewrites_pending (package, added_at, scope) VALUES ('qux', now(), 'both')")
            .execute(&mut other)
            .await
    })
    .expect("a rewrite in an open transaction");
    let snapshot = |fx: &mut Fixture| fx.call(Projects { packages: Vec::new() }).snapshot;
    let first = snapshot(&mut fx);
    fx.rt.block_on(sqlx::query("COMMIT").execute(&mut other)).expect("commit");
    // ...and a request after it: neither is done by pages written from that data.
    fx.call(rewrite("bar", at(2024, 1, 4), RewriteScope::Project));
    let written = |package: &str, snapshot: &str| RewriteWritten { package: package.into(), snapshot: snapshot.into() };
    fx.call(ClearRewrites {
        written: vec![written("bar", &first), written("foo", &first), written("qux", &first), written("missing", &first)],
    });
    fx.call(ClearRewrites { written: Vec::new() });
    let pending = fx.call(PendingRewrites {});
    let names: Vec<&str> = pending.iter().map(|p| p.package.as_str()).collect();
    assert_eq!(names, ["baz", "bar", "qux"]);
    assert_eq!(pending[1], entry("bar", at(2024, 1, 4), RewriteScope::Both));
    // Pages written from a later snapshot are.
    let second = snapshot(&mut fx);
    fx.call(ClearRewrites { written: vec![written("bar", &second), written("qux", &second)] });
    let pending = fx.call(PendingRewrites {});
    assert_eq!(pending, [entry("baz", at(2024, 1, 2), RewriteScope::Project)]);
}

#[test]
fn audit_entries_are_appended_with_actor_and_action_cut_to_fit() {
    let mut fx = Fixture::new();
    fx.call(Audit {
        actor: "dave@pi (piw-remove)".into(),
        action: "remove".into(),
        detail: "foo 1.0".into(),
    });
    fx.call(Audit { actor: "a".repeat(300), action: "b".repeat(80), detail: "c".repeat(5000) });
    assert_eq!(
        fx.column("SELECT concat_ws(' ', length(actor), length(action), length(detail), at > now() - interval '1 minute') FROM audit_log ORDER BY audit_id"),
        [Some("20 6 7 t".into()), Some("200 50 5000 t".into())]
    );
}

// ------------------------------------------------------------------------------------------
// Privileges
// ------------------------------------------------------------------------------------------

#[test]
fn the_application_role_cannot_change_abis_or_the_schema_or_erase_history() {
    let fx = Fixture::with_abis();
    fx.sql("INSERT INTO audit_log (actor, action, detail) VALUES ('me', 'test', 'x')");
    fx.rt.block_on(async {
        let mut app = sqlx::PgConnection::connect(&fx.db.app_url()).await.expect("connect as the app role");
        for sql in [
            "INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp314', 314)",
            "UPDATE build_abis SET skip = 'x'",
            "DELETE FROM audit_log",
            "UPDATE audit_log SET actor = 'someone else'",
            "DELETE FROM downloads",
            "UPDATE configuration SET schema_version = 99",
            "CREATE TABLE intruder (x int)",
        ] {
            let err = app.execute(sql).await.expect_err(sql);
            assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{sql}: {err}");
        }
    });
    assert_eq!(fx.value("SELECT count(*) FROM audit_log"), "1");
    assert_eq!(fx.value("SELECT count(*) FROM build_abis"), "3");
}

#[test]
fn a_role_without_the_temporary_privilege_is_refused_at_connect_until_initdb_grants_it() {
    let fx = Fixture::new();
    let database = fx.db.name().to_string();
    fx.sql(&format!("REVOKE TEMPORARY ON DATABASE \"{database}\" FROM PUBLIC, {}", migrate::APP_GROUP_ROLE));
    let refused = fx.rt.block_on(Database::connect(&fx.db.app_url(), Duration::from_secs(30)));
    let message = refused.expect_err("connected without TEMPORARY").to_string();
    assert!(message.contains("needs the TEMPORARY privilege on the database (piw-initdb grants it)"), "{message}");
    // piw-initdb, run again on the current schema, grants it back.
    fx.rt.block_on(async {
        let mut owner = sqlx::PgConnection::connect(&fx.db.owner_url()).await.expect("connect as owner");
        migrate::upgrade(&mut owner, APP_ROLE).await.expect("piw-initdb again");
    });
    fx.rt.block_on(Database::connect(&fx.db.app_url(), Duration::from_secs(30))).expect("connect after piw-initdb");
}

#[test]
fn log_build_makes_its_session_function_again_when_the_session_lost_it() {
    let mut fx = Fixture::with_abis();
    fx.version("foo", "1.0", at(2020, 1, 1));
    // What `DISCARD TEMP` on the master's connection would do, done from outside.
    let schema = fx.value("SELECT n.nspname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.proname = 'log_build'");
    assert!(schema.starts_with("pg_temp_"), "{schema}");
    // Another session's temporary objects are a superuser's to touch.
    fx.db.execute_as_superuser(&format!("DROP FUNCTION {schema}.log_build"));
    let build_id = fx.log_build(build("foo", "1.0", "cp39", vec![pure("foo", "1.0")]));
    assert_eq!(fx.value("SELECT build_id::text FROM files"), build_id.to_string());
}

// ------------------------------------------------------------------------------------------
// Failure triage
// ------------------------------------------------------------------------------------------

/// A failed build of `package` 1.0 on `abi` whose log ends with `log`.
fn failed_with(package: &str, abi: &str, log: &str) -> BuildRecord {
    let mut record = build(package, "1.0", abi, vec![]);
    record.result.output = log.into();
    record
}

const NO_ZLIB: &str = "x.c:1:10: fatal error: zlib.h: No such file or directory\n";
const NO_RUSTC: &str = "error: can't find Rust compiler\n";

#[test]
fn failures_are_triaged_once_newest_first_and_counted_on_their_latest_build() {
    let mut fx = Fixture::with_abis();
    for package in ["zlib-a", "zlib-b", "rusty", "fixed", "skipped"] {
        fx.version(package, "1.0", days_ago(3));
    }
    let first = fx.log_build(failed_with("zlib-a", "cp311", NO_ZLIB));
    fx.log_build(failed_with("zlib-b", "cp311", NO_ZLIB));
    fx.log_build(failed_with("zlib-b", "cp313", NO_ZLIB));
    fx.log_build(failed_with("rusty", "cp311", NO_RUSTC));
    // A failure its later success replaced, and a skipped package's, are not counted.
    fx.log_build(failed_with("fixed", "cp311", NO_ZLIB));
    fx.log_build(build("fixed", "1.0", "cp311", vec![platform("fixed", "1.0", "cp311")]));
    fx.log_build(failed_with("skipped", "cp311", NO_ZLIB));
    fx.call(SkipPackage { package: "skipped".into(), reason: "broken".into() });

    // Newest first, a batch at a time, each once.
    let batch = fx.call(TriageFailures { limit: 3 });
    assert_eq!(batch.iter().map(|b| b.release.package.as_str()).collect::<Vec<_>>(), ["skipped", "fixed", "rusty"]);
    assert_eq!((batch[2].class, batch[2].detail.as_str()), (FailureClass::MissingTool, "rustc"));
    let rest = fx.call(TriageFailures { limit: 10 });
    assert_eq!(rest.len(), 3);
    assert_eq!(rest.last().map(|b| b.build_id), Some(first));
    assert!(fx.call(TriageFailures { limit: 10 }).is_empty());

    // Looked up once per Contents identity; a cause found nowhere is asked again of new files.
    let causes = fx.call(UnresolvedCauses { contents: "a:1:1".into(), limit: 10 });
    assert_eq!(causes, [(FailureClass::MissingHeader, "zlib.h".to_string()), (FailureClass::MissingTool, "rustc".to_string())]);
    let found = vec![(FailureClass::MissingHeader, "zlib.h".to_string(), Some("zlib1g-dev".to_string())), (FailureClass::MissingTool, "rustc".to_string(), None)];
    let projects = fx.call(RecordLookups { contents: "a:1:1".into(), found });
    // Not fixed: its page shows its latest build, a success.
    assert_eq!(projects, ["skipped", "zlib-a", "zlib-b"]);
    assert!(fx.call(UnresolvedCauses { contents: "a:1:1".into(), limit: 10 }).is_empty());
    assert_eq!(fx.call(UnresolvedCauses { contents: "a:2:2".into(), limit: 10 }), [(FailureClass::MissingTool, "rustc".to_string())]);
    let refused = fx.error(RecordLookups { contents: "a:1:1".into(), found: vec![(FailureClass::Network, String::new(), None)] });
    assert!(refused.contains("Debian packages"), "{refused}");

    // Releases, not builds: zlib-b failed on two ABIs and counts once.
    let report = fx.call(Triage { abi: None });
    assert_eq!(report.classes, [(FailureClass::MissingHeader, 2), (FailureClass::MissingTool, 1)]);
    assert_eq!(report.debian_packages, [("zlib1g-dev".to_string(), 2)]);
    assert_eq!(report.causes[0], (FailureClass::MissingHeader, "zlib.h".to_string(), Some("zlib1g-dev".to_string()), 2));
    assert_eq!(report.untriaged, 0);
    assert_eq!(fx.call(Triage { abi: Some("cp313".into()) }).classes, [(FailureClass::MissingHeader, 1)]);
}

#[test]
fn a_requeue_queues_exactly_the_releases_of_its_cause_once() {
    let mut fx = Fixture::with_abis();
    // Without builds there, cp39 would queue every release.
    fx.sql("UPDATE build_abis SET skip = 'retired' WHERE abi_tag = 'cp39'");
    for (package, log) in [("zlib-a", NO_ZLIB), ("zlib-b", NO_ZLIB), ("rusty", NO_RUSTC)] {
        fx.version(package, "1.0", days_ago(3));
        for abi in ["cp311", "cp313"] {
            fx.log_build(failed_with(package, abi, log));
        }
    }
    fx.call(TriageFailures { limit: 10 });
    fx.call(RecordLookups { contents: "c".into(), found: vec![(FailureClass::MissingHeader, "zlib.h".into(), Some("zlib1g-dev".into()))] });
    assert!(fx.queue(10).values().all(Vec::is_empty), "{:?}", fx.queue(10));
    let request = |class, debian_package: Option<&str>, abi: Option<&str>, dry_run| Requeue {
        request: RequeueRequest { class, detail: None, debian_package: debian_package.map(str::to_string), abi: abi.map(str::to_string), dry_run },
        at: Utc::now(),
    };
    let named = |rows: Vec<(PackageVersion, String)>| rows.into_iter().map(|(r, abi)| format!("{} {abi}", r.package)).collect::<Vec<_>>();

    // A dry run queues nothing.
    let all_zlib = ["zlib-a cp311", "zlib-a cp313", "zlib-b cp311", "zlib-b cp313"];
    assert_eq!(named(fx.call(request(None, Some("zlib1g-dev"), None, true))), all_zlib);
    assert_eq!(fx.value("SELECT count(*) FROM rebuilds_wanted"), "0");
    // One ABI's, then the rest; each once.
    assert_eq!(named(fx.call(request(Some(FailureClass::MissingHeader), None, Some("cp313"), false))), ["zlib-a cp313", "zlib-b cp313"]);
    assert_eq!(named(fx.call(request(None, Some("zlib1g-dev"), None, false))), ["zlib-a cp311", "zlib-b cp311"]);
    assert!(fx.call(request(None, Some("zlib1g-dev"), None, false)).is_empty());
    // Each waits on its lowest ABI first, newest release first, as ever.
    assert_eq!(fx.queue(10)["cp311"], ["zlib-b 1.0", "zlib-a 1.0"]);
    let wanted = fx.column("SELECT package || ' ' || abi_tag FROM rebuilds_wanted ORDER BY 1");
    assert_eq!(wanted, all_zlib.map(|row| Some(row.to_string())));

    // Refused: no cause, a detail without its class, an ABI the farm does not build.
    assert!(fx.error(request(None, None, None, true)).contains("name a failure class"));
    let detail_only = Requeue {
        request: RequeueRequest { class: None, detail: Some("zlib.h".into()), debian_package: Some("zlib1g-dev".into()), abi: None, dry_run: true },
        at: Utc::now(),
    };
    assert!(fx.error(detail_only).contains("needs its failure class"));
    assert!(fx.error(request(Some(FailureClass::Other), None, Some("cp27"), true)).contains("does not build ABI cp27"));
}

#[test]
fn a_requeued_release_that_waited_on_a_higher_abi_waits_on_the_requeued_one() {
    let mut fx = Fixture::with_abis();
    fx.sql("UPDATE build_abis SET skip = 'retired' WHERE abi_tag = 'cp39'");
    fx.version("zlib-a", "1.0", days_ago(3));
    fx.log_build(failed_with("zlib-a", "cp311", NO_ZLIB));
    fx.call(TriageFailures { limit: 10 });
    assert_eq!(fx.queue(10)["cp313"], ["zlib-a 1.0"]);
    let request = RequeueRequest { class: Some(FailureClass::MissingHeader), detail: None, debian_package: None, abi: None, dry_run: false };
    assert_eq!(fx.call(Requeue { request, at: Utc::now() }).len(), 1);
    assert_eq!(fx.queue(10)["cp311"], ["zlib-a 1.0"]);
}

// ------------------------------------------------------------------------------------------
// PyPI's changelog, a run at a time
// ------------------------------------------------------------------------------------------

fn feed(package: &str, name: &str, version: Option<&str>, kind: FeedKind, seen: DateTime<Utc>) -> FeedEvent {
    FeedEvent { package: package.into(), name: name.into(), version: version.map(str::to_string), kind, seen }
}

#[test]
fn a_run_of_the_changelog_is_applied_set_by_set_and_twice_changes_nothing() {
    let mut fx = Fixture::new();
    fx.package("old");
    fx.unpinned_version("old", "1.0", at(2024, 1, 1));
    fx.call(SkipVersion { package: "old".into(), version: "1.0".into(), reason: "binary only".into() });
    let run = vec![
        feed("foo-bar", "Foo_Bar", None, FeedKind::Create, at(2024, 2, 1)),
        feed("foo-bar", "Foo_Bar", Some("1.0"), FeedKind::Binary, at(2024, 2, 2)),
        feed("foo-bar", "Foo_Bar", Some("1.0"), FeedKind::Source, at(2024, 2, 3)),
        feed("foo-bar", "foo.bar", Some("2.0b1"), FeedKind::Binary, at(2024, 2, 4)),
        feed("foo-bar", "Foo_Bar", Some("1.0"), FeedKind::Yank, at(2024, 2, 5)),
        feed("foo-bar", "Foo_Bar", Some("1.0"), FeedKind::Unyank, at(2024, 2, 6)),
        feed("foo-bar", "Foo_Bar", Some("1.0"), FeedKind::Yank, at(2024, 2, 7)),
        feed("old", "old", Some("1.0"), FeedKind::Source, at(2024, 2, 8)),
    ];
    let applied = fx.call(ApplyFeed { events: run.clone(), skip_new: String::new() });
    let release = |p: &str, v: &str| PackageVersion { package: p.into(), version: v.into() };
    assert_eq!(applied.new_packages, ["foo-bar"]);
    let mut new_versions = applied.new_versions.clone();
    new_versions.sort();
    assert_eq!(new_versions, [release("foo-bar", "1.0"), release("foo-bar", "2.0b1")]);
    assert_eq!(applied.buildable, [release("old", "1.0")]);
    assert_eq!(applied.yanks, [release("foo-bar", "1.0")]);
    // A release is dated by its first upload, built once a source came, yanked by the last word.
    let rows = fx.column(
        "SELECT concat_ws(' ', package, version, released::date, '[' || skip || ']', yanked, prerelease) FROM versions ORDER BY 1",
    );
    assert_eq!(
        rows.into_iter().flatten().collect::<Vec<_>>(),
        ["foo-bar 1.0 2024-02-02 [] t f", "foo-bar 2.0b1 2024-02-04 [binary only] f t", "old 1.0 2024-01-01 [] f f"]
    );
    assert_eq!(fx.column("SELECT name FROM package_names WHERE package = 'foo-bar' ORDER BY 1"), [Some("Foo_Bar".into()), Some("foo.bar".into())]);
    // Read again (a batch the follower could not finish), it changes nothing.
    assert_eq!(fx.call(ApplyFeed { events: run, skip_new: String::new() }), FeedApplied::default());
    // Summaries, cut to their column; an unknown package is left out.
    let long = "s".repeat(300);
    let descriptions = vec![("foo-bar".to_string(), long), ("nobody".to_string(), "x".to_string())];
    assert_eq!(fx.call(SetDescriptions { descriptions: descriptions.clone() }), ["foo-bar"]);
    assert_eq!(fx.value("SELECT length(description) FROM packages WHERE package = 'foo-bar'"), "200");
    // The same summary again changes nothing, and no page needs writing.
    assert!(fx.call(SetDescriptions { descriptions }).is_empty());
}
