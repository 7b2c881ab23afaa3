//! Real installers against the built-in web server: a tiny wheel made here and a hand-written
//! PEP 503/691 tree for it, served on a free port; pip and uv install it into fresh virtual
//! environments and the package imports; `pip download --require-hashes` checks its hash.
//!
//! Needs python3 (with venv) and uv on PATH: `scripts/test.sh` puts them there; by hand,
//! `. scripts/setup-lib.sh && ensure_test_python` does. Nothing leaves the machine: the index
//! is the only one the installers are given, and their configuration files and environment
//! variables are shut out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use piwheels_master::web_server::{Access, WebServer};
use sha2::{Digest, Sha256};
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

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// RECORD's hash form: unpadded URL-safe base64 of the SHA-256.
fn record_hash(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let digest = Sha256::digest(bytes);
    let mut out = String::new();
    for chunk in digest.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    format!("sha256={out}")
}

fn metadata_text() -> String {
    format!("Metadata-Version: 2.1\nName: {PROJECT}\nVersion: {VERSION}\nSummary: A wheel made by a test\nRequires-Python: >=3.7\n")
}

/// A pure-Python wheel: a module, METADATA, WHEEL and a RECORD that matches them.
fn build_wheel() -> Vec<u8> {
    let dist_info = format!("{MODULE}-{VERSION}.dist-info");
    let mut entries: Vec<(String, Vec<u8>)> = vec![
        (format!("{MODULE}/__init__.py"), format!("VALUE = {GREETING:?}\n").into_bytes()),
        (format!("{dist_info}/METADATA"), metadata_text().into_bytes()),
        (
            format!("{dist_info}/WHEEL"),
            b"Wheel-Version: 1.0\nGenerator: piwheels-rs-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
        ),
    ];
    let mut record: String =
        entries.iter().map(|(name, data)| format!("{name},{},{}\n", record_hash(data), data.len())).collect();
    record.push_str(&format!("{dist_info}/RECORD,,\n"));
    entries.push((format!("{dist_info}/RECORD"), record.into_bytes()));
    stored_zip(&entries)
}

/// A zip archive of `entries`, stored without compression.
fn stored_zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    const DOS_TIME: u16 = 0;
    const DOS_DATE: u16 = ((2020 - 1980) << 9) | (1 << 5) | 1;
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let crc = crc.sum();
        let size = u32::try_from(data.len()).unwrap();
        let name_len = u16::try_from(name.len()).unwrap();
        let offset = u32::try_from(out.len()).unwrap();
        // Local file header.
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        for field in [20u16, 0, 0, DOS_TIME, DOS_DATE] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        for field in [crc, size, size] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        // Its central directory entry.
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        for field in [0x031e_u16, 20, 0, 0, DOS_TIME, DOS_DATE] {
            central.extend_from_slice(&field.to_le_bytes());
        }
        for field in [crc, size, size] {
            central.extend_from_slice(&field.to_le_bytes());
        }
        for field in [name_len, 0, 0, 0, 0] {
            central.extend_from_slice(&field.to_le_bytes());
        }
        central.extend_from_slice(&(0o100_644u32 << 16).to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let central_offset = u32::try_from(out.len()).unwrap();
    let central_size = u32::try_from(central.len()).unwrap();
    let count = u16::try_from(entries.len()).unwrap();
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    for field in [0u16, 0, count, count] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    out.extend_from_slice(&central_size.to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// PATH with the tests' Python environment (made by `ensure_test_python`) first, if it exists,
/// so that the tests also run from a shell that has not sourced the set-up.
fn search_path() -> std::ffi::OsString {
    let venv_bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-python/bin");
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if venv_bin.is_dir() {
        dirs.insert(0, venv_bin);
    }
    std::env::join_paths(dirs).unwrap()
}

/// `program` with a clean environment: no pip or uv configuration, no proxy for the local
/// index, no other index or wheel directory.
fn tool(program: impl AsRef<std::ffi::OsStr>, work: &Path) -> Command {
    let path = search_path();
    let program = program.as_ref();
    let program = std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| !Path::new(program).is_absolute() && candidate.is_file())
        .map_or_else(|| program.to_os_string(), PathBuf::into_os_string);
    let mut command = Command::new(program);
    command.env("PATH", &path);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let lower = name.to_ascii_lowercase();
        if name.starts_with("PIP_") || name.starts_with("UV_") || lower.ends_with("_proxy") || name == "VIRTUAL_ENV" {
            command.env_remove(&*name);
        }
    }
    command
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1")
        .env("UV_NO_CONFIG", "1")
        .env("UV_PYTHON_DOWNLOADS", "never")
        .env("UV_CACHE_DIR", work.join("uv-cache"))
        .env("HOME", work)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .current_dir(work);
    command
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}{}", SETUP_HINT));
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed:\n{log}");
    output
}

const SETUP_HINT: &str = "\n(these tests need python3 with venv, and uv, on PATH: \
                          run scripts/test.sh, or `. scripts/setup-lib.sh && ensure_test_python`)";

/// A fresh virtual environment in `work`; returns its python.
fn fresh_venv(work: &Path, name: &str, with_pip: bool) -> PathBuf {
    let venv = work.join(name);
    let mut command = tool("python3", work);
    command.args(["-m", "venv"]);
    if !with_pip {
        command.arg("--without-pip");
    }
    run(command.arg(&venv));
    venv.join("bin/python")
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
