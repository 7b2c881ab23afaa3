//! Deleting versions and packages (as the admin endpoint and the PyPI follower do: look up the
//! files and builds, delete the rows, then tell the index writer) leaves no link to a missing
//! file and no orphan: after each step the whole output tree is walked against the database.

mod index_support;
mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use index_support::{Farm, link_targets};
use piwheels_master::calls::db::{DeleteBuilds, DeletePackage, DeleteVersion, NewVersion, RenamePackage, SearchEntry, VersionFiles};
use piwheels_master::calls::tasks::{CheckCounts, WebRequest};
use piwheels_common::wheel::WheelName;
use piwheels_master::index::layout::log_path;

/// foo (1.0 on two ABIs, 2.0 with a failed build too), baz (one version), and new-name
/// (renamed from old-name), all with logs; every page written.
fn farm() -> Farm {
    let mut farm = Farm::started();
    farm.package("foo", "Foo", "", &[("1.0", 1), ("2.0", 2)]);
    let mut builds = Vec::new();
    for (version, abi) in [("1.0", "cp39"), ("1.0", "cp311"), ("2.0", "cp39")] {
        let wheel = farm.wheel(&format!("foo-{version}-{abi}-{abi}-linux_armv7l.whl"), None);
        builds.push(("foo", farm.build("foo", version, abi, &[wheel])));
    }
    builds.push(("foo", farm.fail("foo", "2.0", "cp311")));
    farm.package("baz", "baz", "", &[("0.1", 1)]);
    let wheel = farm.wheel("baz-0.1-py3-none-any.whl", None);
    builds.push(("baz", farm.build("baz", "0.1", "cp39", &[wheel])));
    farm.package("old-name", "old-name", "", &[("3.0", 1)]);
    let wheel = farm.wheel("old_name-3.0-py3-none-any.whl", None);
    builds.push(("new-name", farm.build("old-name", "3.0", "cp39", &[wheel])));
    farm.db.call(RenamePackage { from: "old-name".into(), to: "new-name".into() }).unwrap();
    // The old wheels keep their name, which installers refuse for new-name; a new release
    // gives it something to install.
    let new = NewVersion { package: "new-name".into(), version: "3.1".into(), released: Some(index_support::day(2)), skip: String::new() };
    farm.db.call(new).unwrap();
    let wheel = farm.wheel("new_name-3.1-py3-none-any.whl", None);
    builds.push(("new-name", farm.build("new-name", "3.1", "cp39", &[wheel])));
    // The wheel moves with the package (what a rename must do on disk).
    std::fs::create_dir_all(farm.path("simple/new-name")).unwrap();
    for name in ["old_name-3.0-py3-none-any.whl", "old_name-3.0-py3-none-any.whl.metadata"] {
        std::fs::rename(farm.path(&format!("simple/old-name/{name}")), farm.path(&format!("simple/new-name/{name}"))).unwrap();
    }
    std::fs::remove_dir(farm.path("simple/old-name")).unwrap();
    // The old name's build is new-name's after the rename.
    for (package, build) in builds {
        farm.log(package, build, &format!("build {build}"));
    }
    farm.send(WebRequest::Home { stats: Box::default(), checks: CheckCounts::default(), drifts: Vec::new() });
    farm.send(WebRequest::Search { entries: vec![SearchEntry { package: "foo".into(), downloads_recent: 0, downloads_all: 0 }] });
    for package in ["foo", "baz", "new-name"] {
        farm.rewrite(package);
    }
    farm.wait("every page", |f| {
        ["foo", "baz", "new-name"].iter().all(|p| f.path(&format!("simple/{p}/index.json")).is_file())
            && f.path("project/old-name/index.html").is_file()
            && f.pending().is_empty()
    });
    check_tree(&farm);
    farm
}

/// Deletes a version (or with None the package) the way the admin endpoint does.
fn delete(farm: &Farm, package: &str, version: Option<&str>) {
    let files = match version {
        Some(version) => {
            let files = farm.db.call(VersionFiles { package: package.into(), version: version.into() }).unwrap();
            files.into_iter().map(|f| f.filename).collect()
        }
        None => farm.files_of(package),
    };
    let builds = farm.builds_of(package, version);
    match version {
        Some(version) => {
            farm.db.call(DeleteVersion { package: package.into(), version: version.into() }).unwrap();
            farm.send(WebRequest::DeleteVersion { package: package.into(), version: version.into(), files, builds });
        }
        None => {
            farm.db.call(DeletePackage { package: package.into() }).unwrap();
            farm.send(WebRequest::DeletePackage { package: package.into(), files, builds });
        }
    }
}

/// Every file under `dir`, relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let before = out.len();
            walk(root, &path, out);
            let top = path.parent() == Some(root);
            assert!(top || out.len() > before, "empty directory {}", path.display());
        } else {
            out.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

fn strings(farm: &Farm, sql: &str) -> Vec<String> {
    farm.pool.db.column(sql).into_iter().flatten().collect()
}

/// The tree agrees with the database: no link (HTML or JSON) to anything missing, no file,
/// page or log of anything the database does not hold, no temporary file left behind.
fn check_tree(farm: &Farm) {
    let root = farm.root();
    let packages: HashSet<String> = strings(farm, "SELECT package FROM packages").into_iter().collect();
    let mut files: HashMap<String, HashSet<String>> = HashMap::new();
    for row in strings(farm, "SELECT b.package || '/' || f.filename FROM builds b JOIN files f USING (build_id)") {
        let (package, file) = row.split_once('/').unwrap();
        files.entry(package.to_string()).or_default().insert(file.to_string());
    }
    let builds: HashSet<String> = strings(farm, "SELECT build_id::text FROM builds").into_iter().collect();

    let mut all = Vec::new();
    walk(root, root, &mut all);
    for rel in &all {
        let parts: Vec<&str> = rel.split('/').collect();
        assert!(!parts.iter().any(|p| p.starts_with('.')) || rel == ".piwheels-index", "hidden file {rel}");
        match parts.as_slice() {
            [".piwheels-index" | "index.html" | "packages.json" | "signing-key.pem" | "search.js" | "style.css"] => {}
            ["packages", "index.html"] => {}
            ["simple", "index.html" | "index.json"] => {}
            ["simple", package, name] => {
                let own = files.get(*package).unwrap_or_else(|| panic!("{rel}: {package} has no files in the database"));
                match *name {
                    "index.html" | "index.json" => {}
                    name => {
                        let wheel = name.strip_suffix(".metadata").or_else(|| name.strip_suffix(".intoto.jsonl")).unwrap_or(name);
                        assert!(own.contains(wheel), "orphan file {rel}");
                    }
                }
            }
            ["project", package, "index.html"] => {
                if !packages.contains(*package) {
                    let page = farm.read(rel);
                    let target = page.split("piwheels:alias-of\" content=\"").nth(1).map(|t| &t[..t.find('"').unwrap()]);
                    assert!(target.is_some_and(|t| packages.contains(t)), "orphan page {rel}");
                }
            }
            ["project", package, "json", "index.json"] => assert!(packages.contains(*package), "orphan page {rel}"),
            ["logs", a, b, c] => {
                let id: i64 = format!("{a}{b}{}", c.trim_end_matches(".txt.gz")).parse().unwrap();
                assert!(builds.contains(&id.to_string()), "orphan log {rel}");
            }
            _ => panic!("unexpected file {rel}"),
        }
    }
    // Every package with installable files (named for it) has its simple pages, every
    // package its project pages.
    let installable: BTreeSet<String> = files
        .iter()
        .filter(|(package, names)| names.iter().any(|n| WheelName::parse(n).is_ok_and(|w| w.is_for(package))))
        .map(|(package, _)| package.clone())
        .collect();
    for package in &installable {
        assert!(root.join(format!("simple/{package}/index.html")).is_file(), "{package} has no simple page");
    }
    // The package list and the search index name the installable packages, and no other.
    let list = farm.read("packages/index.html");
    let mut listed: Vec<String> = list.split("<li><a href=\"/project/").skip(1).map(|l| l[..l.find('/').unwrap()].to_string()).collect();
    listed.sort();
    assert_eq!(listed, installable.iter().cloned().collect::<Vec<_>>(), "packages/index.html");
    let searched: Vec<String> = farm.json("packages.json").as_array().unwrap().iter().map(|row| row[0].as_str().unwrap().to_string()).collect();
    assert_eq!(searched, listed, "packages.json");
    for package in &packages {
        assert!(root.join(format!("project/{package}/json/index.json")).is_file(), "{package} has no project page");
    }

    // Links. Links to another project's page (dependencies) are the web's kind of link, not
    // the index's: left out.
    let exists = |target: &str| -> bool {
        let rel = target.trim_start_matches('/');
        let path = root.join(rel);
        if target.ends_with('/') { path.join("index.html").is_file() || path.join("index.json").is_file() } else { path.is_file() }
    };
    for rel in all.iter().filter(|r| r.ends_with(".html")) {
        let page_dir = format!("/{}", &rel[..rel.rfind('/').map_or(0, |i| i + 1)]);
        let own_project = rel.starts_with("project/").then(|| format!("/{}", &rel[..rel.find('/').unwrap() + 1 + rel[8..].find('/').unwrap() + 1]));
        for target in link_targets(&farm.read(rel), &page_dir) {
            let other_project = own_project.as_ref().is_some_and(|own| target.starts_with("/project/") && !target.starts_with(own.as_str()));
            if !other_project {
                assert!(exists(&target), "{rel} links the missing {target}");
            }
        }
    }
    for rel in all.iter().filter(|r| r.starts_with("simple/") && r.ends_with("/index.json") && r.matches('/').count() == 2) {
        let dir = &rel[..rel.rfind('/').unwrap() + 1];
        for file in farm.json(rel)["files"].as_array().unwrap() {
            let target = format!("/{dir}{}", index_support::percent_decode(file["url"].as_str().unwrap()));
            assert!(exists(&target), "{rel} links the missing {target}");
        }
        assert!(farm.json("simple/index.json")["projects"].as_array().unwrap().iter().any(|p| format!("simple/{}/index.json", p["name"].as_str().unwrap()) == *rel));
    }
    for rel in all.iter().filter(|r| r.ends_with("/json/index.json")) {
        for release in farm.json(rel)["releases"].as_object().unwrap().values() {
            for file in release["files"].as_object().unwrap().values() {
                assert!(exists(file["file_url"].as_str().unwrap()), "{rel}: {}", file["file_url"]);
            }
            for build in release["builds"].as_object().unwrap().values() {
                if let Some(log) = build["log_url"].as_str() {
                    assert!(exists(log), "{rel}: {log}");
                }
            }
        }
    }
    // The root lists exactly the packages with files.
    let listed: BTreeSet<String> =
        farm.json("simple/index.json")["projects"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, installable);
}

#[test]
fn deleting_a_version_removes_its_files_logs_and_links() {
    let farm = farm();
    let builds = farm.builds_of("foo", Some("1.0"));
    delete(&farm, "foo", Some("1.0"));
    for name in ["foo-1.0-cp39-cp39-linux_armv7l.whl", "foo-1.0-cp311-cp311-linux_armv7l.whl"] {
        assert!(!farm.path(&format!("simple/foo/{name}")).exists());
        assert!(!farm.path(&format!("simple/foo/{name}.metadata")).exists());
        assert!(!farm.read("simple/foo/index.html").contains(name));
        assert!(!farm.read("project/foo/index.html").contains(name));
    }
    for build in builds {
        assert!(!farm.path(&log_path(build)).exists());
    }
    assert!(farm.read("simple/foo/index.html").contains("foo-2.0-cp39-cp39-linux_armv7l.whl"));
    assert_eq!(farm.json("simple/foo/index.json")["versions"], serde_json::json!(["2.0"]));
    check_tree(&farm);
}

#[test]
fn deleting_the_last_version_with_files_removes_the_simple_page_and_the_root_entry() {
    let farm = farm();
    delete(&farm, "baz", Some("0.1"));
    assert!(!farm.path("simple/baz").exists());
    assert!(!farm.read("simple/index.html").contains("baz"));
    // The package is still known: its project page stays, with nothing to install.
    assert!(farm.path("project/baz/index.html").is_file());
    check_tree(&farm);
}

#[test]
fn deleting_a_package_removes_every_file_page_log_and_former_name() {
    let farm = farm();
    delete(&farm, "foo", None);
    assert!(!farm.path("simple/foo").exists());
    assert!(!farm.path("project/foo").exists());
    check_tree(&farm);
    delete(&farm, "new-name", None);
    assert!(!farm.path("project/old-name").exists());
    assert!(!farm.path("project/new-name").exists());
    check_tree(&farm);
    assert_eq!(farm.json("simple/index.json")["projects"], serde_json::json!([{"name": "baz"}]));
}

#[test]
fn deleting_only_the_builds_of_a_package_keeps_its_project_page() {
    let farm = farm();
    let files = farm.files_of("foo");
    let builds = farm.builds_of("foo", None);
    farm.db.call(DeleteBuilds { package: "foo".into(), version: None }).unwrap();
    farm.send(WebRequest::DeletePackage { package: "foo".into(), files, builds });
    assert!(!farm.path("simple/foo").exists());
    let page = farm.read("project/foo/index.html");
    assert!(page.contains("pending") && !page.contains(".whl"), "{page}");
    check_tree(&farm);
}

#[test]
fn a_rewrite_of_a_package_gone_from_the_database_removes_all_of_it() {
    let farm = farm();
    // Deleted by someone who did not tell the index writer the files.
    farm.db.call(DeletePackage { package: "baz".into() }).unwrap();
    farm.rewrite("baz");
    farm.wait("baz to go", |f| !f.path("simple/baz").exists() && !f.path("project/baz").exists());
    // Its logs are the only thing the writer cannot find without being told.
    for build in 1..=10 {
        let log = farm.path(&log_path(build));
        if log.exists() && !strings(&farm, "SELECT build_id::text FROM builds").contains(&build.to_string()) {
            std::fs::remove_file(&log).unwrap();
            let _ = std::fs::remove_dir(log.parent().unwrap());
            let _ = std::fs::remove_dir(log.parent().unwrap().parent().unwrap());
        }
    }
    check_tree(&farm);
}
