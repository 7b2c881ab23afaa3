//! piw-initdb against a real PostgreSQL: creating, upgrading, refusing, and doing nothing the
//! second time.

use std::process::{Command, Output};

use piwheels_master::db::migrate::{MIGRATIONS, SCHEMA_VERSION};
use piwheels_testsupport::db::{APP_ROLE, TestDb};

fn initdb(db: &TestDb, user: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("piwheels.toml");
    std::fs::write(&config, "").unwrap();
    Command::new(env!("CARGO_BIN_EXE_piw-initdb"))
        .arg("--config")
        .arg(&config)
        .arg("--dsn")
        .arg(db.owner_url())
        .arg("--user")
        .arg(user)
        .env_remove("PIW_LOG")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Everything about the schema that a migration could change: columns, constraints, indexes
/// and privileges.
fn catalog(db: &TestDb) -> Vec<Option<String>> {
    let mut rows = db.column(
        "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || coalesce(character_maximum_length::text, '') \
         || ' ' || is_nullable || ' ' || coalesce(column_default, '') \
         FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1",
    );
    rows.extend(db.column(
        "SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE connamespace = 'public'::regnamespace ORDER BY 1",
    ));
    rows.extend(db.column("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"));
    rows.extend(db.column(
        "SELECT grantee || ' ' || table_name || ' ' || privilege_type FROM information_schema.role_table_grants \
         WHERE table_schema = 'public' AND grantee = 'piwheels_app' ORDER BY 1",
    ));
    rows.extend(db.column(
        "SELECT tgrelid::regclass::text || ' ' || pg_get_triggerdef(oid) FROM pg_trigger \
         WHERE NOT tgisinternal ORDER BY 1",
    ));
    rows.extend(db.column(
        "SELECT proname || '(' || pg_get_function_identity_arguments(oid) || ') ' || md5(prosrc) FROM pg_proc \
         WHERE pronamespace = 'public'::regnamespace ORDER BY 1",
    ));
    rows
}

#[test]
fn initdb_creates_the_schema_in_an_empty_database_and_grants_the_app_role() {
    let db = TestDb::new();
    let out = initdb(&db, APP_ROLE);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("Created the piwheels schema, version {SCHEMA_VERSION}")), "{said}");
    assert!(said.contains("applied step 1: initial schema"), "{said}");
    assert_eq!(db.column("SELECT schema_version::text FROM configuration"), [Some(SCHEMA_VERSION.to_string())]);
    assert_eq!(db.column(&format!("SELECT pg_has_role('{APP_ROLE}', 'piwheels_app', 'MEMBER')::text")), [Some("true".into())]);
}

#[test]
fn initdb_twice_changes_nothing() {
    let db = TestDb::new();
    assert!(initdb(&db, APP_ROLE).status.success());
    let before = catalog(&db);
    let out = initdb(&db, APP_ROLE);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("nothing to do"), "{said}");
    assert!(!said.contains("applied step"), "{said}");
    assert_eq!(catalog(&db), before);
}

#[test]
fn every_older_version_upgrades_to_the_same_schema_as_a_fresh_one() {
    let fresh = TestDb::new();
    assert!(initdb(&fresh, APP_ROLE).status.success());
    let expected = catalog(&fresh);
    // Start from each older version: apply its steps by hand, as an older piw-initdb did.
    for older in 1..MIGRATIONS.len() {
        let db = TestDb::new();
        for step in &MIGRATIONS[..older] {
            db.execute(step.sql);
            db.execute(&format!("UPDATE configuration SET schema_version = {}", step.version));
        }
        let out = initdb(&db, APP_ROLE);
        let said = text(&out);
        assert!(out.status.success(), "{said}");
        assert!(said.contains(&format!("Upgraded the schema from version {} to version {SCHEMA_VERSION}", MIGRATIONS[older - 1].version)), "{said}");
        assert_eq!(catalog(&db), expected, "upgrading from version {}", MIGRATIONS[older - 1].version);
    }
}

#[test]
fn upgrading_to_running_totals_counts_the_farm_as_it_is() {
    let db = TestDb::new();
    for step in MIGRATIONS.iter().take_while(|step| step.version < 9) {
        db.execute(step.sql);
        db.execute(&format!("UPDATE configuration SET schema_version = {}", step.version));
    }
    // Two packages with builds (one failed, one over a week long), files and downloads: some
    // today, one 40 days ago, one of a file the farm does not have.
    db.execute(
        "INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp311', 311); \
         INSERT INTO packages (package) VALUES ('foo'), ('bar'), ('idle'); \
         INSERT INTO versions (package, version) VALUES ('foo', '1.0'), ('foo', '2.0'), ('bar', '1.0'); \
         INSERT INTO builds (build_id, package, version, built_by, abi_tag, status, duration) VALUES \
             (1, 'foo', '1.0', 1, 'cp311', true, '1 minute'), (2, 'foo', '2.0', 1, 'cp311', true, '2 minutes'), \
             (3, 'foo', '2.0', 1, 'cp311', false, '8 days'), (4, 'bar', '1.0', 1, 'cp311', true, '3 minutes'); \
         INSERT INTO files (filename, build_id, filesize, filehash, package_tag, package_version_tag, py_version_tag, abi_tag, platform_tag) VALUES \
             ('foo-1.0-py3-none-any.whl', 1, 100, repeat('0', 64), 'foo', '1.0', 'py3', 'none', 'any'), \
             ('foo-2.0-cp311-cp311-linux_armv7l.whl', 2, 200, repeat('1', 64), 'foo', '2.0', 'cp311', 'cp311', 'linux_armv7l'), \
             ('foo-2.0-py3-none-any.whl', 2, 300, repeat('2', 64), 'foo', '2.0', 'py3', 'none', 'any'), \
             ('bar-1.0-py3-none-any.whl', 4, 400, repeat('3', 64), 'bar', '1.0', 'py3', 'none', 'any'); \
         INSERT INTO downloads (filename, accessed_by, accessed_at) VALUES \
             ('foo-1.0-py3-none-any.whl', '192.0.2.1', now()), ('foo-2.0-py3-none-any.whl', '192.0.2.1', now()), \
             ('foo-1.0-py3-none-any.whl', '192.0.2.1', now() - interval '40 days'), \
             ('bar-1.0-py3-none-any.whl', '192.0.2.1', now()), ('gone-1.0-py3-none-any.whl', '192.0.2.1', now())",
    );
    let out = initdb(&db, APP_ROLE);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        db.column(
            "SELECT package || ' ' || files || ' ' || files_size || ' ' || build_time || ' ' || downloads \
             FROM package_totals ORDER BY package"
        ),
        [Some("bar 1 400 00:03:00 1".into()), Some("foo 3 600 00:03:00 3".into())]
    );
    assert_eq!(
        db.column("SELECT package || ' ' || downloads FROM package_downloads_recent ORDER BY package"),
        [Some("bar 1".into()), Some("foo 2".into())]
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let db = TestDb::new();
    assert!(initdb(&db, APP_ROLE).status.success());
    db.execute(&format!("UPDATE configuration SET schema_version = {}", SCHEMA_VERSION + 1));
    let out = initdb(&db, APP_ROLE);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("version {}", SCHEMA_VERSION + 1)) && said.contains("newer than this software"), "{said}");
}

#[test]
fn a_database_with_other_tables_is_refused() {
    let db = TestDb::new();
    db.execute("CREATE TABLE customers (id INTEGER)");
    let out = initdb(&db, APP_ROLE);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("customers") && said.contains("not empty"), "{said}");
}

#[test]
fn a_missing_or_superuser_app_role_is_refused() {
    let db = TestDb::new();
    let out = initdb(&db, "no_such_role_here");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("no_such_role_here does not exist"), "{said}");
    let out = initdb(&db, "postgres");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("superuser"), "{said}");
    // Nothing was created by the refused runs.
    assert!(db.column("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'").is_empty());
}

#[test]
fn every_migration_file_is_listed_in_order() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files.len(), MIGRATIONS.len(), "{files:?}");
    for (file, step) in files.iter().zip(MIGRATIONS) {
        assert!(file.starts_with(&format!("{:04}_", step.version)), "{file} is not step {}", step.version);
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(text, step.sql, "{file} differs from the embedded step");
    }
}

#[test]
fn initdb_declares_abis_once_and_refuses_tags_that_are_not_abis() {
    let db = TestDb::new();
    let run = |abis: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_piw-initdb"));
        command.args(["--config", "/dev/null", "--dsn", &db.owner_url(), "--user", APP_ROLE]).env_remove("PIW_LOG");
        for abi in abis {
            command.args(["--abi", abi]);
        }
        command.output().unwrap()
    };
    let out = run(&["cp311", "cp39"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Declared ABI cp311."), "{}", text(&out));
    let out = run(&["cp311"]);
    assert!(out.status.success() && text(&out).contains("ABI cp311 was declared already."), "{}", text(&out));
    let abis = db.column("SELECT abi_tag || ' ' || python_version FROM build_abis ORDER BY python_version");
    assert_eq!(abis, [Some("cp39 309".into()), Some("cp311 311".into())]);
    for bad in ["abi3", "none", "cp3", "py311", "cp3110"] {
        let out = run(&[bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(text(&out).contains("not a CPython ABI tag"), "{bad}: {}", text(&out));
    }
}
