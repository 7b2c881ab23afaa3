//! Real installers against the built-in web server: a tiny wheel made here and a hand-written
//! PEP 503/691 tree for it, served on a free port; pip and uv install it into fresh virtual
//! environments and the package imports; `pip download --require-hashes` checks its hash.
//!
//! Needs python3 (with venv) and uv on PATH: `scripts/test.sh` puts them there; by hand,
//! `. scripts/setup-lib.sh && ensure_test_python` does. Nothing leaves the machine: the index
//! is the only one the installers are given, and their configuration files and environment
//! variables are shut out.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use piwheels_master::web_server::{Access, WebServer};
use piwheels_testsupport::data::pure_wheel;
use piwheels_testsupport::installers::{SETUP_HINT, fresh_venv, run, tool};
use piwheels_common::inspect::sha256_hex;
use tempfile::TempDir;

const PROJECT: &str = "webtest-pkg";
const MODULE: &str = "webtest_pkg";
const VERSION: &str = "1.0";
const WHEEL: &str = "webtest_pkg-1.0-py3-none-any.whl";
const GREETING: &str = "served by piwheels-rs";

/// Which forms of the project's simple page the tree has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forms {
    /// Both: pip and uv ask for JSON first and get it.
    HtmlAndJson,
    /// HTML only: the server offers only HTML, so the installers parse it.
    HtmlOnly,
}

/// The served tree and the server.
struct Index {
    _dir: TempDir,
    server: WebServer,
    wheel_sha256: String,
    /// Every request the server answered.
    log: Arc<Mutex<Vec<Access>>>,
}

impl Index {
    fn start(forms: Forms) -> Index {
        let dir = tempfile::tempdir().unwrap();
        let wheel = build_wheel();
        let metadata = metadata_text();
        let wheel_sha256 = sha256_hex(&wheel);
        let metadata_sha256 = sha256_hex(metadata.as_bytes());
        let root = dir.path();
        let project = root.join("simple").join(PROJECT);
        std::fs::create_dir_all(&project).unwrap();
        std::fs::write(project.join(WHEEL), &wheel).unwrap();
        std::fs::write(project.join(format!("{WHEEL}.metadata")), &metadata).unwrap();

        let root_html = format!(
            "<!DOCTYPE html>\n<html>\n  <head>\n    <meta name=\"pypi:repository-version\" content=\"1.1\">\n    \
             <title>Simple index</title>\n  </head>\n  <body>\n    <a href=\"{PROJECT}/\">{PROJECT}</a><br>\n  </body>\n</html>\n"
        );
        let project_html = format!(
            "<!DOCTYPE html>\n<html>\n  <head>\n    <meta name=\"pypi:repository-version\" content=\"1.1\">\n    \
             <title>Links for {PROJECT}</title>\n  </head>\n  <body>\n    <h1>Links for {PROJECT}</h1>\n    \
             <a href=\"{WHEEL}#sha256={wheel_sha256}\" data-requires-python=\"&gt;=3.7\" \
             data-core-metadata=\"sha256={metadata_sha256}\" data-dist-info-metadata=\"sha256={metadata_sha256}\">{WHEEL}</a><br>\n  \
             </body>\n</html>\n"
        );
        std::fs::write(root.join("simple/index.html"), root_html).unwrap();
        std::fs::write(project.join("index.html"), project_html).unwrap();
        if forms == Forms::HtmlAndJson {
            let root_json = serde_json::json!({"meta": {"api-version": "1.1"}, "projects": [{"name": PROJECT}]});
            let project_json = serde_json::json!({
                "meta": {"api-version": "1.1"},
                "name": PROJECT,
                "versions": [VERSION],
                "files": [{
                    "filename": WHEEL,
                    "url": WHEEL,
                    "hashes": {"sha256": wheel_sha256},
                    "requires-python": ">=3.7",
                    "core-metadata": {"sha256": metadata_sha256},
                    "size": wheel.len(),
                    "upload-time": "2025-03-17T08:15:02.123456Z",
                    "yanked": false,
                }],
            });
            std::fs::write(root.join("simple/index.json"), root_json.to_string()).unwrap();
            std::fs::write(project.join("index.json"), project_json.to_string()).unwrap();
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&log);
        let server = WebServer::start_with_access_log(root.to_path_buf(), "127.0.0.1:0".parse().unwrap(), move |access| {
            record.lock().unwrap().push(access.clone());
        })
        .unwrap();
        Index { _dir: dir, server, wheel_sha256, log }
    }

    /// The content type `path` was last served with, successfully, if it was.
    fn served(&self, path: &str) -> Option<String> {
        let log = self.log.lock().unwrap();
        log.iter().rev().find(|a| a.path == path && a.status == 200).map(|a| a.content_type.clone().unwrap_or_default())
    }

    /// Checks what the installer fetched: the project page in the form `forms` leads to, the
    /// metadata file it advertises (when the client reads the advertisement: pip before 23.2
    /// reads only `dist-info-metadata` from JSON, which the index rightly leaves out), and the
    /// wheel.
    fn check_fetched(&self, forms: Forms, who: &str) {
        let log = format!("{:#?}", self.log.lock().unwrap());
        let page = self.served(&format!("/simple/{PROJECT}/")).unwrap_or_else(|| panic!("{who} never got the page: {log}"));
        match forms {
            Forms::HtmlAndJson => assert_eq!(page, "application/vnd.pypi.simple.v1+json", "{who}: {log}"),
            Forms::HtmlOnly => assert!(page.contains("html"), "{who}: {page}: {log}"),
        }
        if who == "uv" || forms == Forms::HtmlOnly {
            assert!(self.served(&format!("/simple/{PROJECT}/{WHEEL}.metadata")).is_some(), "{who} skipped the metadata: {log}");
        }
        assert_eq!(self.served(&format!("/simple/{PROJECT}/{WHEEL}")).as_deref(), Some("application/octet-stream"), "{who}: {log}");
    }

    /// The index URL as users give it, without the trailing slash.
    fn url(&self) -> String {
        format!("http://{}/simple", self.server.local_addr())
    }
}

fn metadata_text() -> String {
    format!("Metadata-Version: 2.1\nName: {PROJECT}\nVersion: {VERSION}\nSummary: A wheel made by a test\nRequires-Python: >=3.7\n")
}

/// A pure-Python wheel: a module, METADATA, WHEEL and a RECORD that matches them.
fn build_wheel() -> Vec<u8> {
    pure_wheel(MODULE, MODULE, VERSION, &metadata_text(), &format!("VALUE = {GREETING:?}\n"))
}

/// Imports the package with `python` and returns what it says.
fn import(python: &Path, work: &Path) -> String {
    let output = run(tool(python, work).args(["-c", &format!("import {MODULE}; print({MODULE}.VALUE)")]));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn pip_installs_and_the_package_imports(forms: Forms) {
    let index = Index::start(forms);
    let work = tempfile::tempdir().unwrap();
    let python = fresh_venv(work.path(), "venv", true);
    run(tool(&python, work.path())
        .args(["-m", "pip", "install", "--no-cache-dir", "--index-url"])
        .arg(index.url())
        .arg(PROJECT));
    assert_eq!(import(&python, work.path()), GREETING);
    index.check_fetched(forms, "pip");
}

fn uv_installs_and_the_package_imports(forms: Forms) {
    let index = Index::start(forms);
    let work = tempfile::tempdir().unwrap();
    let python = fresh_venv(work.path(), "venv", false);
    run(tool("uv", work.path())
        .args(["pip", "install", "--no-cache", "--python"])
        .arg(&python)
        .arg("--index-url")
        .arg(index.url())
        .arg(PROJECT));
    assert_eq!(import(&python, work.path()), GREETING);
    index.check_fetched(forms, "uv");
}

#[test]
fn pip_installs_from_the_json_form_and_the_package_imports() {
    pip_installs_and_the_package_imports(Forms::HtmlAndJson);
}

#[test]
fn pip_installs_from_the_html_form_and_the_package_imports() {
    pip_installs_and_the_package_imports(Forms::HtmlOnly);
}

#[test]
fn uv_installs_from_the_json_form_and_the_package_imports() {
    uv_installs_and_the_package_imports(Forms::HtmlAndJson);
}

#[test]
fn uv_installs_from_the_html_form_and_the_package_imports() {
    uv_installs_and_the_package_imports(Forms::HtmlOnly);
}

#[test]
fn pip_download_with_required_hashes_checks_the_served_wheel() {
    let index = Index::start(Forms::HtmlAndJson);
    let work = tempfile::tempdir().unwrap();
    let python = fresh_venv(work.path(), "venv", true);
    let download = |requirement: &str| {
        let requirements = work.path().join("requirements.txt");
        let mut file = std::fs::File::create(&requirements).unwrap();
        writeln!(file, "{requirement}").unwrap();
        let dest = work.path().join("downloads");
        let output = tool(&python, work.path())
            .args(["-m", "pip", "download", "--no-cache-dir", "--no-deps", "--require-hashes", "--dest"])
            .arg(&dest)
            .arg("--index-url")
            .arg(index.url())
            .arg("-r")
            .arg(&requirements)
            .output()
            .unwrap_or_else(|e| panic!("running pip: {e}{SETUP_HINT}"));
        let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), log, dest.join(WHEEL))
    };

    let (ok, log, wheel) = download(&format!("{PROJECT}=={VERSION} --hash=sha256:{}", index.wheel_sha256));
    assert!(ok, "{log}");
    assert_eq!(sha256_hex(&std::fs::read(&wheel).unwrap()), index.wheel_sha256);
    std::fs::remove_file(&wheel).unwrap();

    // The check is real: another hash is refused.
    let (ok, log, wheel) = download(&format!("{PROJECT}=={VERSION} --hash=sha256:{}", "0".repeat(64)));
    assert!(!ok, "{log}");
    assert!(log.contains("HASHES"), "{log}");
    assert!(!wheel.exists());
}
