//! Real installers against the index the index writer wrote, served by the built-in server:
//! pip and uv install a wheel the farm published, uv takes a yanked release only when it is
//! pinned, and a project with no files answers 404 so that uv falls through to the next index.

mod index_support;
mod support;

use std::path::Path;
use std::time::Duration;

use index_support::Farm;
use piwheels_common::protocols::WheelFile;
use piwheels_master::calls::db::{YankVersion};
use piwheels_master::web_server::WebServer;
use piwheels_testsupport::data::{pure_wheel, wheel_file};
use piwheels_testsupport::installers::{fresh_venv, run, tool};

fn metadata(project: &str, version: &str) -> String {
    format!("Metadata-Version: 2.1\nName: {project}\nVersion: {version}\nSummary: a test\nRequires-Python: >=3.7\n")
}

/// A real wheel of `project` `version` (module `<project>_mod`, whose `VALUE` is the version),
/// written where the file juggler publishes it, and its description.
fn publish(root: &Path, project: &str, version: &str) -> WheelFile {
    let module = format!("{project}_mod");
    let text = metadata(project, version);
    let bytes = pure_wheel(project, &module, version, &text, &format!("VALUE = {version:?}\n"));
    let filename = format!("{project}-{version}-py3-none-any.whl");
    let dir = root.join("simple").join(project);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&filename), &bytes).unwrap();
    std::fs::write(dir.join(format!("{filename}.metadata")), &text).unwrap();
    let mut file = wheel_file(&filename, &bytes);
    file.metadata = text.into_bytes().into();
    file.requires_python = Some(">=3.7".into());
    file
}

fn status(server: &WebServer, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(server.local_addr()).unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or_default().to_string()
}

fn value(python: &Path, work: &Path, module: &str) -> String {
    let out = run(tool(python, work).args(["-c", &format!("import {module}; print({module}.VALUE)")]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn pip_and_uv_install_what_the_farm_published_honouring_yanks_and_falling_through_on_404() {
    let mut farm = Farm::new();
    farm.start(Duration::from_millis(100));
    farm.package("alpha", "alpha", "a test", &[("1.0", 1), ("2.0", 2)]);
    farm.package("empty", "empty", "no files", &[("1.0", 1)]);
    for version in ["1.0", "2.0"] {
        let file = publish(farm.root(), "alpha", version);
        farm.record_build(index_support::record("alpha", version, "cp311", vec![file]));
    }
    farm.db
        .call(YankVersion { package: "alpha".into(), version: "2.0".into(), reason: Some("broken".into()) })
        .unwrap();
    farm.rewrite("alpha");
    farm.rewrite("empty");
    farm.wait("alpha's simple page with both files", |f| {
        std::fs::read_to_string(f.path("simple/alpha/index.html")).is_ok_and(|p| p.contains("alpha-2.0-py3") && p.contains("data-yanked"))
    });
    let server = WebServer::start(farm.root().to_path_buf(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}/simple/", server.local_addr());

    // A project with no files has no page at all.
    assert!(status(&server, "/simple/empty/").contains(" 404"), "{}", status(&server, "/simple/empty/"));

    // pip installs the newest release that is not yanked.
    let work = tempfile::tempdir().unwrap();
    let python = fresh_venv(work.path(), "pip-venv", true);
    run(tool(&python, work.path()).args(["-m", "pip", "install", "--no-cache-dir", "--index-url", &url, "alpha"]));
    assert_eq!(value(&python, work.path(), "alpha_mod"), "1.0");

    // uv likewise, and takes the yanked release only when it is pinned.
    let python = fresh_venv(work.path(), "uv-venv", false);
    let uv = |spec: &str| {
        run(tool("uv", work.path()).args(["pip", "install", "--no-cache", "--python"]).arg(&python).args(["--index-url", &url, spec]));
    };
    uv("alpha");
    assert_eq!(value(&python, work.path(), "alpha_mod"), "1.0");
    uv("alpha==2.0");
    assert_eq!(value(&python, work.path(), "alpha_mod"), "2.0");

    // uv asks the farm first (an extra index comes before the default one), gets 404 for the
    // project without files, and takes it from the next index.
    let other = tempfile::tempdir().unwrap();
    let file = publish(other.path(), "empty", "1.0");
    std::fs::write(
        other.path().join("simple/empty/index.html"),
        format!("<!DOCTYPE html><html><body><a href=\"{0}#sha256={1}\">{0}</a></body></html>\n", file.filename, file.sha256),
    )
    .unwrap();
    let other_server = WebServer::start(other.path().to_path_buf(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let other_url = format!("http://{}/simple/", other_server.local_addr());
    run(tool("uv", work.path())
        .args(["pip", "install", "--no-cache", "--python"])
        .arg(&python)
        .args(["--index-url", &other_url, "--extra-index-url", &url, "empty"]));
    assert_eq!(value(&python, work.path(), "empty_mod"), "1.0");
}
