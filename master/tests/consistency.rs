//! piw-check against a real database and tree: what it reports, what `--repair` removes (only
//! what is old enough, never records, never a mass of files without `--force`), and that a
//! consistent farm gets a clean bill and exit status 0.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output};

use piwheels_master::db::migrate;
use piwheels_testsupport::db::{APP_ROLE, TestDb};

/// A farm's database and tree: foo 1.0 recorded and published, bar 1.0 recorded but its file
/// lost, a wheel of foo 1.1 and its side file published but never recorded, foo's simple page
/// linking a file that is gone, and a transfer left in staging.
struct Farm {
    dir: tempfile::TempDir,
    db: TestDb,
}

const FOO: &str = "foo-1.0-py3-none-any.whl";
const BAR: &str = "bar-1.0-py3-none-any.whl";
const STRAY: &str = "foo-1.1-py3-none-any.whl";

impl Farm {
    fn new() -> Farm {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new();
        migrate::upgrade_blocking(&db.owner_url(), APP_ROLE).unwrap();
        let farm = Farm { dir, db };
        farm.record("foo", FOO);
        farm.record("bar", BAR);
        farm.publish("foo", FOO);
        farm.publish("foo", STRAY);
        farm.publish("foo", &format!("{STRAY}.metadata"));
        std::fs::write(farm.www().join("simple/foo/index.html"), format!("<a href=\"{FOO}#sha256=00\">{FOO}</a><a href=\"foo-0.9-py3-none-any.whl#sha256=00\">x</a>")).unwrap();
        std::fs::create_dir_all(farm.staging()).unwrap();
        std::fs::write(farm.staging().join("42.part"), b"half a wheel").unwrap();
        farm
    }

    fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    fn staging(&self) -> PathBuf {
        self.dir.path().join("state/staging")
    }

    fn record(&self, package: &str, filename: &str) {
        self.db.execute(&format!(
            "INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp311', 311) ON CONFLICT DO NOTHING;
             INSERT INTO packages (package) VALUES ('{package}');
             INSERT INTO versions (package, version) VALUES ('{package}', '1.0');
             WITH b AS (INSERT INTO builds (package, version, built_by, abi_tag, status, duration)
                        VALUES ('{package}', '1.0', 1, 'cp311', true, '1 minute') RETURNING build_id)
             , f AS (INSERT INTO files (filename, build_id, filesize, filehash, package_tag, package_version_tag, py_version_tag, abi_tag, platform_tag)
                     SELECT '{filename}', build_id, 10, repeat('0', 64), '{package}', '1.0', 'py3', 'none', 'any' FROM b)
             INSERT INTO output (build_id, output) SELECT build_id, 'the log of {package}' FROM b"
        ));
    }

    fn publish(&self, package: &str, filename: &str) {
        let dir = self.www().join("simple").join(package);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(filename), b"bytes").unwrap();
    }

    /// Runs piw-check with `args`.
    fn check(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_piw-check"))
            .args(["--config", "/dev/null", "--dsn", &self.db.app_url(), "--abandon-after", "1ms"])
            .arg("--output-path")
            .arg(self.www())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(args)
            .env_remove("PIW_LOG")
            .output()
            .unwrap()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn piw_check_reports_every_disagreement_and_repairs_only_the_safe_and_old_enough() {
    let farm = Farm::new();
    let foo = farm.www().join("simple/foo");

    // Report only.
    let out = farm.check(&[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "2 files in the tree that no build records:".to_string(),
        format!("{}", foo.join(STRAY).display()),
        format!("{}", foo.join(format!("{STRAY}.metadata")).display()),
        "1 recorded files missing from the tree (piw-remove --builds has their release built again):".into(),
        format!("{}", farm.www().join("simple/bar").join(BAR).display()),
        "1 links on simple pages to missing files:".into(),
        "foo: foo-0.9-py3-none-any.whl".into(),
        "2 build logs missing from the tree (the database keeps them):".into(),
        "1 staging entries older than the abandon time:".into(),
        format!("{}", farm.staging().join("42.part").display()),
    ] {
        assert!(text.contains(&line), "{line:?} not in:\n{text}");
    }
    assert!(!text.contains("repairs"), "{text}");
    assert!(foo.join(STRAY).exists() && farm.staging().join("42.part").exists());

    // Repair, but nothing is six hours old: the logs are written again from the database and
    // the pages asked for again, nothing is removed.
    let out = farm.check(&["--repair"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("3 repairs:\n  wrote the log of build 1 again from the database\n  wrote the log of build 2 again from the database\n  asked for the pages of foo to be written again"), "{text}");
    assert!(foo.join(STRAY).exists() && farm.staging().join("42.part").exists());
    assert_eq!(farm.db.column("SELECT package FROM rewrites_pending ORDER BY package"), [Some("bar".to_string()), Some("foo".to_string())]);
    let mut log = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(farm.www().join("logs/0000/0000/0001.txt.gz")).unwrap()).read_to_string(&mut log).unwrap();
    assert_eq!(log, "the log of foo");

    // Old enough for anything: the stray wheel, its side file and the staging entry go; the
    // record without its file stays, for an operator to judge.
    let out = farm.check(&["--repair", "--min-age", "0s"]);
    let text = stdout(&out);
    assert!(text.contains(&format!("removed {}", foo.join(STRAY).display())), "{text}");
    assert!(!foo.join(STRAY).exists() && !foo.join(format!("{STRAY}.metadata")).exists() && !farm.staging().join("42.part").exists());
    assert!(foo.join(FOO).exists());
    assert_eq!(farm.db.column("SELECT count(*)::text FROM files"), [Some("2".to_string())]);

    // Once the operator has dealt with bar and foo's page is right, all is well.
    farm.db.execute("DELETE FROM packages WHERE package = 'bar'");
    std::fs::write(foo.join("index.html"), format!("<a href=\"{FOO}#sha256=00\">{FOO}</a>")).unwrap();
    let out = farm.check(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("consistent: 1 files in the tree"), "{}", stdout(&out));
}

#[test]
fn a_tree_that_the_database_does_not_know_at_all_is_not_emptied_without_force() {
    let farm = Farm::new();
    for n in 0..150 {
        farm.publish("stranger", &format!("stranger-{n}.0-py3-none-any.whl"));
    }
    let out = farm.check(&["--repair", "--min-age", "0s"]);
    let text = stdout(&out);
    assert!(text.contains("repairs withheld: 152 of the 153 files in the tree would go") && text.contains("--force"), "{text}");
    assert_eq!(std::fs::read_dir(farm.www().join("simple/stranger")).unwrap().count(), 150);

    let out = farm.check(&["--repair", "--min-age", "0s", "--force"]);
    assert!(stdout(&out).contains("removed"), "{}", stdout(&out));
    assert_eq!(std::fs::read_dir(farm.www().join("simple/stranger")).unwrap().count(), 0);
    assert!(farm.www().join("simple/foo").join(FOO).exists());
}

/// A recorded file whose build has provenance but whose statement is missing is reported, and
/// the repair writes it again from the records, signed by the master's key; a statement
/// without its wheel is a side file like any other.
#[test]
fn a_missing_provenance_statement_is_written_again_from_the_records() {
    let farm = Farm::new();
    let foo = farm.www().join("simple/foo");
    farm.db.execute("UPDATE builds SET started_at = now() - interval '1 minute', builder = 'pi-1' WHERE package = 'foo'");
    let (key, _) = piwheels_master::signing::load_or_create(&farm.dir.path().join("state")).unwrap();
    farm.publish("foo", &format!("{STRAY}.intoto.jsonl"));
    let statement = foo.join(format!("{FOO}.intoto.jsonl"));

    let text = stdout(&farm.check(&[]));
    assert!(text.contains(&format!("1 provenance statements missing from the tree (made from the records):\n  {}", statement.display())), "{text}");
    assert!(text.contains(&format!("{}", foo.join(format!("{STRAY}.intoto.jsonl")).display())), "the stray statement is unrecorded: {text}");

    let text = stdout(&farm.check(&["--repair", "--min-age", "0s"]));
    assert!(text.contains("wrote 1 provenance statements again from the database"), "{text}");
    let written = piwheels_common::provenance::verify(&std::fs::read(&statement).unwrap(), &key.verifying_key()).unwrap();
    assert_eq!(written.subject[0].name, FOO);
    assert_eq!(written.subject[0].digest["sha256"], "0".repeat(64));
    assert_eq!(written.predicate.build_definition.internal_parameters.label, "pi-1");
    assert!(!foo.join(format!("{STRAY}.intoto.jsonl")).exists());
    // Nothing missing now.
    let text = stdout(&farm.check(&[]));
    assert!(!text.contains("provenance statements missing"), "{text}");
}

/// The check reads the database a slice of packages at a time (1,000): a farm of several
/// slices, with each kind of disagreement in a different one, is judged as a whole.
#[test]
fn a_farm_larger_than_a_slice_is_checked_whole() {
    let farm = Farm::new();
    // 2,500 more packages, each with a published, recorded wheel (pkg0001 ... pkg2500).
    farm.db.execute(
        "INSERT INTO packages (package) SELECT 'pkg' || lpad(p::text, 4, '0') FROM generate_series(1, 2500) p;
         INSERT INTO versions (package, version) SELECT 'pkg' || lpad(p::text, 4, '0'), '1.0' FROM generate_series(1, 2500) p;
         INSERT INTO builds (build_id, package, version, built_by, abi_tag, status, duration)
         SELECT 1000 + p, 'pkg' || lpad(p::text, 4, '0'), '1.0', 1, 'cp311', true, '1 minute' FROM generate_series(1, 2500) p;
         INSERT INTO files (filename, build_id, filesize, filehash, package_tag, package_version_tag, py_version_tag, abi_tag, platform_tag)
         SELECT 'pkg' || lpad(p::text, 4, '0') || '-1.0-py3-none-any.whl', 1000 + p, 10, repeat('0', 64),
                'pkg' || lpad(p::text, 4, '0'), '1.0', 'py3', 'none', 'any' FROM generate_series(1, 2500) p",
    );
    for p in 1..=2500 {
        let package = format!("pkg{p:04}");
        // 1,200 lost, more than the check keeps by name (1,000).
        if !(1001..=2200).contains(&p) {
            farm.publish(&package, &format!("{package}-1.0-py3-none-any.whl"));
        }
    }
    // pkg0100's wheel also sits in pkg2400's directory, as when a rename is half done: not a
    // stray. pkg2450 has one no build records; a directory the database does not know has one.
    farm.publish("pkg2400", "pkg0100-1.0-py3-none-any.whl");
    farm.publish("pkg2450", "pkg2450-2.0-py3-none-any.whl");
    farm.publish("zzz-unknown", "zzz_unknown-1.0-py3-none-any.whl");

    let text = stdout(&farm.check(&[]));
    let www = farm.www();
    let shown = |path: &str| format!("  {}\n", www.join(path).display());
    // Foo's stray and its side file, pkg2450's and the unknown directory's.
    assert!(text.contains("4 files in the tree that no build records:"), "{text}");
    assert!(text.contains(&shown("simple/pkg2450/pkg2450-2.0-py3-none-any.whl")), "{text}");
    assert!(text.contains(&shown("simple/zzz-unknown/zzz_unknown-1.0-py3-none-any.whl")), "{text}");
    assert!(!text.contains("simple/pkg2400/pkg0100"), "{text}");
    // Bar's and 1,200 others, of which the first 20 are listed.
    assert!(text.contains("1201 recorded files missing from the tree"), "{text}");
    assert!(text.contains(&shown("simple/bar/bar-1.0-py3-none-any.whl")), "{text}");
    assert!(text.contains("  ... and 1181 more\n"), "{text}");
}
