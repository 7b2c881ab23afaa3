//! The fake PyPI over real HTTP, checked with hand-written requests and with Python's own
//! `xmlrpc.client`, `urllib` and pip as independent clients.

use tempfile::TempDir;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use piwheels_testsupport::pypi::{Clock, FakePypi, Failure, canonicalize, sdist};

/// One request over a fresh connection; returns status, raw header block and body.
fn http(pypi: &FakePypi, method: &str, path: &str, body: &str) -> (u16, String, Vec<u8>) {
    let addr = pypi.url().trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8(raw[..split].to_vec()).expect("ascii headers");
    let body = raw[split + 4..].to_vec();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().expect("length")))
        .expect("Content-Length header");
    assert_eq!(length, body.len(), "Content-Length matches the body");
    (status, head, body)
}

fn text(body: &[u8]) -> String {
    String::from_utf8(body.to_vec()).expect("utf-8 body")
}

fn python(script: &str, args: &[&str]) -> Output {
    Command::new("python3").arg("-c").arg(script).args(args).output().expect("run python3")
}

fn python_ok(script: &str, args: &[&str]) -> String {
    let out = python(script, args);
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

/// Calls `changelog_since_serial(n)` with Python's xmlrpc.client and prints the rows as JSON.
const SINCE: &str = "import json, sys, xmlrpc.client\n\
p = xmlrpc.client.ServerProxy(sys.argv[1])\n\
print(json.dumps(p.changelog_since_serial(int(sys.argv[2]))))";

fn since(pypi: &FakePypi, serial: i64) -> String {
    python_ok(SINCE, &[&pypi.xmlrpc_url(), &serial.to_string()])
}

#[test]
fn changelog_serials_and_rows_through_python_xmlrpc() {
    let pypi = FakePypi::start();
    assert_eq!(python_ok("import sys, xmlrpc.client; print(xmlrpc.client.ServerProxy(sys.argv[1]).changelog_last_serial())", &[&pypi.xmlrpc_url()]), "0");
    assert_eq!(since(&pypi, 0), "[]");

    assert_eq!(pypi.create_package("Foo_Bar", Some("A foo")), 1);
    assert_eq!(pypi.add_source("Foo_Bar", "1.0", sdist::pure("Foo_Bar", "1.0")), 2);
    assert_eq!(pypi.add_binary("foo-bar", "1.0", "Foo_Bar-1.0-py2.py3-none-any.whl"), 3);
    assert_eq!(pypi.yank("foo-bar", "1.0"), 4);
    assert_eq!(pypi.unyank("foo-bar", "1.0"), 5);
    assert_eq!(pypi.remove_version("foo-bar", "1.0"), 6);
    assert_eq!(pypi.raw_event("Foo_Bar", Some("2.0"), "new release"), 7);
    assert_eq!(pypi.remove_package("foo.bar"), 8);
    assert_eq!(pypi.last_serial(), 8);

    let b = piwheels_testsupport::pypi::DEFAULT_TIME_BASE;
    let expected = format!(
        "[[\"Foo_Bar\", null, {}, \"create\", 1], \
         [\"Foo_Bar\", \"1.0\", {}, \"add source file Foo_Bar-1.0.tar.gz\", 2], \
         [\"Foo_Bar\", \"1.0\", {}, \"add py2.py3 file Foo_Bar-1.0-py2.py3-none-any.whl\", 3], \
         [\"Foo_Bar\", \"1.0\", {}, \"yank release\", 4], \
         [\"Foo_Bar\", \"1.0\", {}, \"unyank release\", 5], \
         [\"Foo_Bar\", \"1.0\", {}, \"remove release\", 6], \
         [\"Foo_Bar\", \"2.0\", {}, \"new release\", 7], \
         [\"Foo_Bar\", null, {}, \"remove project\", 8]]",
        b + 1,
        b + 2,
        b + 3,
        b + 4,
        b + 5,
        b + 6,
        b + 7,
        b + 8
    );
    assert_eq!(since(&pypi, 0), expected);
    assert_eq!(pypi.changelog().len(), 8);
    assert_eq!(pypi.changelog()[0].version, None);
    assert_eq!(python_ok("import sys, xmlrpc.client; print(xmlrpc.client.ServerProxy(sys.argv[1]).changelog_last_serial())", &[&pypi.xmlrpc_url()]), "8");
}

#[test]
fn since_serial_filters_and_pages() {
    let pypi = FakePypi::start();
    pypi.set_last_serial(700_000);
    pypi.set_time(Clock::Fixed(1_234));
    for i in 0..5 {
        assert_eq!(pypi.create_package(&format!("p{i}"), None), 700_001 + i);
    }
    let rows = since(&pypi, 700_003);
    assert_eq!(rows, "[[\"p3\", null, 1234, \"create\", 700004], [\"p4\", null, 1234, \"create\", 700005]]");
    assert_eq!(since(&pypi, 700_005), "[]");
    assert_eq!(since(&pypi, 9_999_999), "[]");

    pypi.set_page_limit(2);
    let rows = since(&pypi, 0);
    assert!(rows.contains("700001") && rows.contains("700002") && !rows.contains("700003"), "{rows}");

    pypi.set_time(Clock::Real);
    pypi.create_package("late", None);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let ts = pypi.changelog().last().expect("event").timestamp;
    assert!((now - ts).abs() < 5, "{now} vs {ts}");

    let calls = pypi.xmlrpc_calls();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[0].method, "changelog_since_serial");
    assert_eq!(calls[0].params, vec!["700003".to_string()]);
    assert_eq!(pypi.requests("/pypi"), 4);
}

#[test]
fn rename_is_remove_then_create() {
    let pypi = FakePypi::start();
    pypi.create_package("old", Some("s"));
    pypi.add_source("old", "1.0", sdist::pure("old", "1.0"));
    assert_eq!(pypi.rename("old", "New"), 4);
    let log = pypi.changelog();
    assert_eq!((log[2].name.as_str(), log[2].action.as_str(), log[2].version.as_deref()), ("old", "remove project", None));
    assert_eq!((log[3].name.as_str(), log[3].action.as_str()), ("New", "create"));
    assert_eq!(http(&pypi, "GET", "/pypi/old/json", "").0, 404);
    let (status, _, body) = http(&pypi, "GET", "/pypi/new/json", "");
    assert_eq!(status, 200);
    assert!(text(&body).contains("\"old-1.0.tar.gz\""));
}

#[test]
fn raw_xmlrpc_requests_and_errors() {
    let pypi = FakePypi::start();
    pypi.create_package("a", None);
    let call = |body: &str| {
        let (status, head, body) = http(&pypi, "POST", "/pypi", body);
        assert!(head.contains("Content-Type: text/xml"), "{head}");
        (status, text(&body))
    };
    let (status, body) = call("<?xml version=\"1.0\"?><methodCall><methodName>changelog_since_serial</methodName><params><param><value><i4>0</i4></value></param></params></methodCall>");
    assert_eq!(status, 200);
    assert!(body.contains("<value><nil/></value>") && body.contains("<string>create</string>"), "{body}");
    let (_, body) = call("<methodCall><methodName>changelog_last_serial</methodName></methodCall>");
    assert!(body.contains("<int>1</int>"), "{body}");
    let (_, body) = call("<methodCall><methodName>list_packages</methodName><params></params></methodCall>");
    assert!(body.contains("<fault>") && body.contains("-32601"), "{body}");
    let (_, body) = call("<methodCall><methodName>changelog_since_serial</methodName><params><param><value><int>x</int></value></param></params></methodCall>");
    assert!(body.contains("<fault>") && body.contains("-32602"), "{body}");
    let (_, body) = call("<methodCall><methodName>changelog_since_serial</methodName>");
    assert!(body.contains("<fault>") && body.contains("-32700"), "{body}");
    assert_eq!(http(&pypi, "GET", "/pypi", "").0, 405);
    assert_eq!(http(&pypi, "GET", "/nowhere", "").0, 404);

    // Python's client sees unknown methods as faults.
    let out = python_ok(
        "import sys, xmlrpc.client\ntry:\n    xmlrpc.client.ServerProxy(sys.argv[1]).nope(1)\nexcept xmlrpc.client.Fault as f:\n    print(f.faultCode)",
        &[&pypi.xmlrpc_url()],
    );
    assert_eq!(out, "-32601");
}

#[test]
fn json_api() {
    let pypi = FakePypi::start();
    pypi.create_package("Described", Some("Says \"what\" it is"));
    pypi.create_package("silent", None);
    pypi.add_source("Described", "1.0", sdist::pure("Described", "1.0"));
    pypi.add_source("Described", "2.0", sdist::pure("Described", "2.0"));
    pypi.yank("Described", "1.0");

    let script = "import json, sys, urllib.request, urllib.error\n\
try:\n    d = json.load(urllib.request.urlopen(sys.argv[1]))\n    \
print(json.dumps([d['info']['name'], d['info']['summary'], d['info']['version'], sorted(d['releases']), d['releases'].get('1.0', [{}])[0].get('yanked')]))\n\
except urllib.error.HTTPError as e:\n    print(e.code)";
    let get = |pkg: &str| python_ok(script, &[&format!("{}/{pkg}/json", pypi.json_url())]);
    assert_eq!(get("described"), "[\"Described\", \"Says \\\"what\\\" it is\", \"2.0\", [\"1.0\", \"2.0\"], true]");
    assert_eq!(get("silent"), "[\"silent\", null, null, [], null]");
    assert_eq!(get("missing"), "404");

    pypi.set_summary("silent", Some("now described"));
    assert!(get("silent").contains("now described"));
    let (_, head, _) = http(&pypi, "GET", "/pypi/silent/json", "");
    assert!(head.contains("Content-Type: application/json"), "{head}");
    assert_eq!(pypi.requests("/pypi/silent/json"), 3);
}

#[test]
fn simple_index_links_carry_sha256() {
    let pypi = FakePypi::start();
    pypi.create_package("My.Pkg", Some("x"));
    let data = sdist::pure("My.Pkg", "0.1");
    let expected_hash = piwheels_common::inspect::sha256_hex(&data);
    pypi.add_source("My.Pkg", "0.1", data.clone());
    pypi.add_binary("My.Pkg", "0.1", "my_pkg-0.1-cp311-cp311-linux_armv7l.whl");
    pypi.yank("My.Pkg", "0.1");

    let (status, head, body) = http(&pypi, "GET", "/simple/", "");
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: text/html; charset=utf-8"));
    assert!(text(&body).contains("<a href=\"my-pkg/\">my-pkg</a>"), "{}", text(&body));

    let (status, _, body) = http(&pypi, "GET", &format!("/simple/{}/", canonicalize("My.Pkg")), "");
    assert_eq!(status, 200);
    let page = text(&body);
    let link = format!("<a href=\"../../packages/My.Pkg-0.1.tar.gz#sha256={expected_hash}\" data-yanked=\"\">My.Pkg-0.1.tar.gz</a>");
    assert!(page.contains(&link), "{page}");
    assert!(page.contains("my_pkg-0.1-cp311-cp311-linux_armv7l.whl</a>"), "{page}");

    assert_eq!(http(&pypi, "GET", "/simple/unknown/", "").0, 404);
    let (status, head, _) = http(&pypi, "GET", "/simple/my-pkg", "");
    assert_eq!(status, 301);
    assert!(head.contains("Location: /simple/my-pkg/"));

    let (status, _, served) = http(&pypi, "GET", "/packages/My.Pkg-0.1.tar.gz", "");
    assert_eq!(status, 200);
    assert_eq!(served, data);
    assert_eq!(http(&pypi, "GET", "/packages/nothing.tar.gz", "").0, 404);

    // pip's own index client follows the link, checks the hash and downloads the file.
    let dir = temp_dir("simple");
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "--no-cache-dir", "--index-url"])
        .arg(pypi.simple_url())
        .arg("--dest")
        .arg(dir.path())
        .arg("my-pkg==0.1")
        .output()
        .expect("run pip");
    // pip ignores yanked files unless pinned exactly, as here. It checks the link's hash while
    // downloading, before it prepares the sdist's metadata (which needs setuptools' wheel
    // support), so the download itself is the proof.
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!log.contains("HASHES"), "hash mismatch: {log}");
    assert_eq!(pypi.requests("/simple/my-pkg/"), 2, "{log}");
    assert_eq!(pypi.requests("/packages/My.Pkg-0.1.tar.gz"), 2, "{log}");
    if wheel_support_missing().is_none() {
        assert!(out.status.success(), "{log}");
        assert_eq!(std::fs::read(dir.path().join("My.Pkg-0.1.tar.gz")).expect("downloaded"), data, "{log}");
    }
}

#[test]
fn failure_modes() {
    let pypi = FakePypi::start();
    pypi.create_package("a", Some("s"));
    let script = "import json, socket, sys, xmlrpc.client\n\
socket.setdefaulttimeout(float(sys.argv[2]))\n\
try:\n    r = xmlrpc.client.ServerProxy(sys.argv[1]).changelog_since_serial(0)\n    print('ok', len(r))\n\
except xmlrpc.client.ProtocolError as e:\n    print('protocol', e.errcode)\n\
except xmlrpc.client.Fault as e:\n    print('fault', e.faultCode)\n\
except socket.timeout:\n    print('timeout')\n\
except (ConnectionError, xmlrpc.client.http.client.RemoteDisconnected) as e:\n    print('disconnected')\n\
except Exception as e:\n    print('other', type(e).__name__)";
    let call = |timeout: &str| python_ok(script, &[&pypi.xmlrpc_url(), timeout]);

    pypi.fail_next(2, Failure::Status(500));
    pypi.fail_next(1, Failure::Status(429));
    pypi.fail_next(1, Failure::Status(404));
    pypi.fail_next(1, Failure::Fault(-32500));
    pypi.fail_next(1, Failure::Garbage);
    // xmlrpc.client retries once after a dropped connection, so drop two.
    pypi.fail_next(2, Failure::Disconnect);
    assert_eq!(call("10"), "protocol 500");
    assert_eq!(call("10"), "protocol 500");
    assert_eq!(call("10"), "protocol 429");
    assert_eq!(call("10"), "protocol 404");
    assert_eq!(call("10"), "fault -32500");
    assert_eq!(call("10"), "other ExpatError");
    assert_eq!(call("10"), "disconnected");
    assert_eq!(call("10"), "ok 1");
    assert_eq!(pypi.requests("/pypi"), 9);
    assert_eq!(pypi.xmlrpc_calls().len(), 9);

    // The client gave up ("timeout"), not the server ("disconnected", below).
    pypi.fail_next(1, Failure::Timeout(Duration::from_secs(3)));
    assert_eq!(call("0.5"), "timeout");
    assert_eq!(call("10"), "ok 1");

    // Without a client timeout the held connection is closed unanswered after the duration.
    pypi.fail_next(2, Failure::Timeout(Duration::from_millis(500)));
    let started = Instant::now();
    assert_eq!(call("10"), "disconnected");
    assert!(started.elapsed() >= Duration::from_secs(1));

    // Rules limited to a path leave other paths alone.
    pypi.fail_next_on("/pypi/a/json", 1, Failure::Status(503));
    assert_eq!(call("10"), "ok 1");
    assert_eq!(http(&pypi, "GET", "/pypi/a/json", "").0, 503);
    assert_eq!(http(&pypi, "GET", "/pypi/a/json", "").0, 200);
    pypi.fail_next(5, Failure::Status(418));
    pypi.clear_failures();
    assert_eq!(http(&pypi, "GET", "/simple/", "").0, 200);
    assert_eq!(pypi.requests("/pypi/a/json"), 2);
    assert_eq!(pypi.total_requests(), pypi.requests("/pypi") + 3);
}

#[test]
fn sdists_are_well_formed_and_deterministic() {
    assert_eq!(sdist::pure("x", "1"), sdist::pure("x", "1"));
    assert_eq!(sdist::module_name("foo-bar.baz"), "foo_bar_baz_mod");
    let dir = temp_dir("sdist");
    let path = dir.path().join("a.tar.gz");
    std::fs::write(&path, sdist::sleeping("slow-pkg", "1.0", 3)).expect("write");
    let names = python_ok("import sys, tarfile; print(' '.join(sorted(tarfile.open(sys.argv[1]).getnames())))", &[path.to_str().expect("utf-8")]);
    assert_eq!(
        names,
        "slow-pkg-1.0 slow-pkg-1.0/PKG-INFO slow-pkg-1.0/pyproject.toml slow-pkg-1.0/setup.py slow-pkg-1.0/slow_pkg_mod.py"
    );
    // A file larger than one deflate stored block (64 KiB) survives the round trip.
    let big = "x".repeat(70_000);
    let long = sdist::pure(&big[..40], &"1".repeat(30));
    std::fs::write(&path, &long).expect("write");
    python_ok("import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])", &[path.to_str().expect("utf-8"), dir.path().to_str().expect("utf-8")]);
}

// --- building the sdists with pip ----------------------------------------------------------

/// Why setuptools cannot build wheels here, if it cannot.
fn wheel_support_missing() -> Option<String> {
    let out = python("import setuptools\ntry:\n    import setuptools.command.bdist_wheel\nexcept ImportError:\n    import wheel.bdist_wheel", &[]);
    (!out.status.success()).then(|| {
        format!(
            "setuptools cannot build wheels (setuptools < 70.1 needs the `wheel` package: pip install wheel): {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        )
    })
}

fn c_toolchain_missing() -> Option<String> {
    let includes = Command::new("python3-config").arg("--includes").output();
    let Some(includes) = includes.ok().filter(|o| o.status.success()) else { return Some("python3-config is missing (install python3-dev)".into()) };
    let dir = String::from_utf8_lossy(&includes.stdout).split_whitespace().next().unwrap_or("").trim_start_matches("-I").to_string();
    if !Path::new(&dir).join("Python.h").exists() {
        return Some(format!("Python.h is missing from {dir:?} (install python3-dev)"));
    }
    let cc = Command::new("cc").arg("--version").output();
    if !cc.is_ok_and(|o| o.status.success()) {
        return Some("no C compiler `cc` (install gcc)".into());
    }
    None
}

fn pip_wheel(sdist_bytes: &[u8], filename: &str, env: &[(&str, &str)]) -> (bool, String, TempDir, Duration) {
    let dir = temp_dir("pip");
    let sdist_path = dir.path().join(filename);
    std::fs::write(&sdist_path, sdist_bytes).expect("write sdist");
    let out_dir = dir.path().join("out");
    let started = Instant::now();
    let out = Command::new("python3")
        .args(["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check", "--no-cache-dir", "-w"])
        .arg(&out_dir)
        .arg(&sdist_path)
        .envs(env.iter().copied())
        .output()
        .expect("run pip");
    let elapsed = started.elapsed();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), log, dir, elapsed)
}

fn wheels(dir: &TempDir) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.path().join("out"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "whl")).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// Imports `module` from a wheel (wheels are zip files, importable as such for pure code;
/// extension modules need unpacking) and prints the expression.
fn run_from_wheel(wheel: &Path, module: &str, expr: &str) -> String {
    let script = "import sys, tempfile, zipfile\nd = tempfile.mkdtemp()\nzipfile.ZipFile(sys.argv[1]).extractall(d)\nsys.path.insert(0, d)\n\
import importlib\nm = importlib.import_module(sys.argv[2])\nprint(eval(sys.argv[3], {'m': m}))";
    python_ok(script, &[wheel.to_str().expect("utf-8"), module, expr])
}

#[test]
fn pip_builds_the_pure_sdist() {
    if let Some(why) = wheel_support_missing() {
        panic!("{why}; scripts/test.sh sets up what these tests need");
    }
    let (ok, log, dir, _) = pip_wheel(&sdist::pure("pure-pkg", "1.2.3"), "pure-pkg-1.2.3.tar.gz", &[]);
    assert!(ok, "{log}");
    let built = wheels(&dir);
    assert_eq!(built.len(), 1, "{log}");
    assert!(built[0].file_name().is_some_and(|n| n.to_string_lossy().ends_with("-py3-none-any.whl")), "{built:?}");
    assert_eq!(run_from_wheel(&built[0], "pure_pkg_mod", "m.VALUE"), "1.2.3");
}

#[test]
fn pip_builds_the_c_extension_sdist() {
    if let Some(why) = wheel_support_missing().or_else(c_toolchain_missing) {
        panic!("{why}; scripts/test.sh sets up what these tests need");
    }
    let (ok, log, dir, _) = pip_wheel(&sdist::c_extension("cext", "0.1"), "cext-0.1.tar.gz", &[]);
    assert!(ok, "{log}");
    let built = wheels(&dir);
    assert_eq!(built.len(), 1, "{log}");
    assert!(!built[0].to_string_lossy().ends_with("-none-any.whl"), "a platform wheel: {built:?}");
    assert_eq!(run_from_wheel(&built[0], "cext_mod", "m.answer()"), "42");
}

#[test]
fn pip_fails_on_the_failing_sdist_with_its_message() {
    if let Some(why) = wheel_support_missing() {
        panic!("{why}; scripts/test.sh sets up what these tests need");
    }
    let (ok, log, dir, _) = pip_wheel(&sdist::failing("bad", "6.6"), "bad-6.6.tar.gz", &[]);
    assert!(!ok, "{log}");
    assert!(log.contains(&format!("{} of bad 6.6", sdist::FAILURE_MESSAGE)), "{log}");
    assert!(wheels(&dir).is_empty());
}

#[test]
fn pip_build_of_the_sleeping_sdist_sleeps_and_spawns_a_child() {
    if let Some(why) = wheel_support_missing() {
        panic!("{why}; scripts/test.sh sets up what these tests need");
    }
    let pids = temp_dir("pids");
    let pid_file = pids.path().join("pids");
    let pid_file_str = pid_file.to_str().expect("utf-8").to_string();
    let (ok, log, dir, elapsed) =
        pip_wheel(&sdist::sleeping("sleepy", "1.0", 2), "sleepy-1.0.tar.gz", &[(sdist::PID_FILE_ENV, &pid_file_str)]);
    assert!(ok, "{log}");
    assert_eq!(wheels(&dir).len(), 1);
    assert!(elapsed >= Duration::from_secs(2), "built in {elapsed:?}");
    let pids: Vec<u32> = std::fs::read_to_string(&pid_file).expect("pid file").lines().map(|l| l.parse().expect("pid")).collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert_ne!(pids[0], pids[1]);
}

/// A temporary directory, removed when dropped.
fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("piw-fake-pypi-{tag}-")).tempdir().expect("create temp dir")
}
