//! A fake PyPI for tests: the XML-RPC changelog (`changelog_last_serial`,
//! `changelog_since_serial`), the JSON API (a project's document with its releases' files, and
//! a release's document with its requirements, [`FakePypi::set_requirements`]), a PEP 503
//! simple index and the files it links to, served over real HTTP on `127.0.0.1` from threads of its own, with failures that
//! tests can inject.
//!
//! Every change a test makes adds exactly one changelog event (except [`FakePypi::rename`],
//! which adds two, and the `set_*` methods, which add none) and returns its serial. Uploads
//! ([`FakePypi::add_source`], [`FakePypi::add_binary`]) need the package to exist: call
//! [`FakePypi::create_package`] first, as PyPI's own changelog shows `create` before any file.
//! PyPI's `new release` events are not emitted by the upload methods; add them (or any other
//! action text) with [`FakePypi::raw_event`].
//!
//! [`sdist`] makes small source distributions (pure Python, C extension, failing, sleeping) to
//! serve or to build.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use piwheels_common::inspect::sha256_hex;
use piwheels_common::protocols::SourceFile;

/// The timestamp base of the default clock, [`Clock::BasePlusSerial`]: 2020-09-13T12:26:40Z.
pub const DEFAULT_TIME_BASE: i64 = 1_600_000_000;

/// The most rows one `changelog_since_serial` answer holds unless [`FakePypi::set_page_limit`]
/// says otherwise (PyPI's own limit is about this).
pub const DEFAULT_PAGE_LIMIT: usize = 50_000;

/// How the timestamps of new changelog events are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The wall clock, in whole seconds since the epoch.
    Real,
    /// The base plus the event's serial: distinct, increasing, predictable (the default, with
    /// [`DEFAULT_TIME_BASE`]).
    BasePlusSerial(i64),
    /// This exact timestamp for every event until the clock is set again.
    Fixed(i64),
}

/// A failure to answer a request with, instead of the normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An empty-bodied answer with this HTTP status (e.g. 500, 429, 404, 408, 418).
    Status(u16),
    /// Hold the connection open without answering for this long, then close it unanswered.
    Timeout(Duration),
    /// Status 200 with a `text/xml` body that is not well-formed XML.
    Garbage,
    /// Status 200 with an XML-RPC fault of this code (PyPI's rate limit is -32500).
    Fault(i32),
    /// Close the connection at once without answering.
    Disconnect,
}

/// One row of PyPI's changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogEntry {
    /// The project's name as displayed (not canonicalised).
    pub name: String,
    /// The version, or None (XML-RPC `<nil/>`) for package-level events.
    pub version: Option<String>,
    /// Seconds since the epoch.
    pub timestamp: i64,
    /// PyPI's action text, e.g. `create`, `add source file foo-1.0.tar.gz`, `remove project`.
    pub action: String,
    /// The event's serial: strictly increasing.
    pub serial: i64,
}

/// An XML-RPC call the server received (recorded whether or not a failure was injected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlRpcCall {
    /// The method name.
    pub method: String,
    /// The parameters' text values (an `<int>5</int>` parameter is `"5"`).
    pub params: Vec<String>,
}

#[derive(Debug, Clone)]
struct DistFile {
    filename: String,
    data: Arc<Vec<u8>>,
    sha256: String,
    packagetype: &'static str,
    /// When it was uploaded: its event's timestamp.
    uploaded: i64,
    /// Other bytes served in place of `data` under the same name and published hash (see
    /// [`FakePypi::tamper`]).
    tampered: Option<Arc<Vec<u8>>>,
}

#[derive(Debug, Clone)]
struct Release {
    version: String,
    yanked: bool,
    files: Vec<DistFile>,
    /// Its core metadata's `Requires-Dist` (None: the JSON API says `null`).
    requires_dist: Option<Vec<String>>,
    /// Its core metadata's `Requires-Python`, also given with each of its files.
    requires_python: Option<String>,
}

#[derive(Debug, Clone)]
struct Package {
    name: String,
    summary: Option<String>,
    /// In the order they were first added; the last is "latest".
    releases: Vec<Release>,
}

#[derive(Debug)]
struct FailureRule {
    path_prefix: String,
    remaining: usize,
    failure: Failure,
}

#[derive(Debug)]
struct State {
    /// Keyed by canonical name.
    packages: BTreeMap<String, Package>,
    events: Vec<ChangelogEntry>,
    last_serial: i64,
    clock: Clock,
    page_limit: usize,
    failures: Vec<FailureRule>,
    requests: HashMap<String, usize>,
    calls: Vec<XmlRpcCall>,
    /// Whether simple pages are offered in PEP 691's JSON form too.
    json_pages: bool,
}

/// A fake PyPI serving over HTTP on `127.0.0.1` at an ephemeral port until dropped.
#[derive(Debug)]
pub struct FakePypi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

/// The PEP 503 canonical form of a project name.
pub fn canonicalize(name: &str) -> String {
    name.split(['-', '_', '.']).filter(|s| !s.is_empty()).collect::<Vec<_>>().join("-").to_lowercase()
}

impl FakePypi {
    /// Starts the server on `127.0.0.1` at an ephemeral port, with an empty changelog (the
    /// first event gets serial 1) and the [`Clock::BasePlusSerial`] clock.
    pub fn start() -> FakePypi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake PyPI");
        let addr = listener.local_addr().expect("fake PyPI address");
        let state = Arc::new(Mutex::new(State {
            packages: BTreeMap::new(),
            events: Vec::new(),
            last_serial: 0,
            clock: Clock::BasePlusSerial(DEFAULT_TIME_BASE),
            page_limit: DEFAULT_PAGE_LIMIT,
            failures: Vec::new(),
            requests: HashMap::new(),
            calls: Vec::new(),
            json_pages: true,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("fake-pypi".into())
                .spawn(move || accept_loop(&listener, &state, &stop))
                .expect("spawn the fake PyPI thread")
        };
        FakePypi { addr, state, stop, acceptor: Some(acceptor) }
    }

    /// The base URL, e.g. `http://127.0.0.1:40123` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The XML-RPC endpoint: `<base>/pypi`.
    pub fn xmlrpc_url(&self) -> String {
        format!("{}/pypi", self.url())
    }

    /// The JSON API root: `<base>/pypi`, so a package's document is `<json_url>/<package>/json`.
    pub fn json_url(&self) -> String {
        format!("{}/pypi", self.url())
    }

    /// The simple index: `<base>/simple` (pages are `<simple_url>/` and
    /// `<simple_url>/<canonical name>/`).
    pub fn simple_url(&self) -> String {
        format!("{}/simple", self.url())
    }

    /// Where the files are: `<base>/packages` (a file is `<files_url>/<filename>`).
    pub fn files_url(&self) -> String {
        format!("{}/packages", self.url())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Creates a package (or, if it exists, replaces its summary) and logs `create` with no
    /// version. `None` is a summary PyPI reports as `null`.
    pub fn create_package(&self, name: &str, summary: Option<&str>) -> i64 {
        let mut st = self.lock();
        let canon = canonicalize(name);
        let summary = summary.map(str::to_string);
        st.packages
            .entry(canon)
            .and_modify(|p| p.summary.clone_from(&summary))
            .or_insert_with(|| Package { name: name.to_string(), summary, releases: Vec::new() });
        st.push_event(name, None, "create".into())
    }

    /// Changes a package's summary without logging anything (PyPI logs no event for it).
    pub fn set_summary(&self, name: &str, summary: Option<&str>) {
        let mut st = self.lock();
        let pkg = st.package_mut(name);
        pkg.summary = summary.map(str::to_string);
    }

    /// Uploads a source distribution, served as `NAME-VERSION.tar.gz`, and logs
    /// `add source file NAME-VERSION.tar.gz`. Panics if the package does not exist.
    pub fn add_source(&self, name: &str, version: &str, sdist: Vec<u8>) -> i64 {
        let filename = format!("{name}-{version}.tar.gz");
        self.add_file(name, version, &filename, sdist, "sdist", "source")
    }

    /// The source pin of `name` `version`, as the simple index publishes it: what the master
    /// pins and hands to slaves. Panics if the release has no source file.
    pub fn source_file(&self, name: &str, version: &str) -> SourceFile {
        let st = self.lock();
        let file = st
            .packages
            .get(&canonicalize(name))
            .and_then(|p| p.releases.iter().find(|r| r.version == version))
            .and_then(|r| r.files.iter().find(|f| f.packagetype == "sdist"))
            .unwrap_or_else(|| panic!("no source of {name} {version}"));
        SourceFile { url: format!("{}/{}", self.files_url(), percent_encode(&file.filename)), filename: file.filename.clone(), sha256: file.sha256.clone() }
    }

    /// Whether simple pages are also offered in PEP 691's JSON form (they are at first); an
    /// index without them answers every request with HTML.
    pub fn serve_json_pages(&self, on: bool) {
        self.lock().json_pages = on;
    }

    /// Serves `data` as the file `filename` from now on, while the index still publishes the
    /// original's hash: a compromised mirror or a man in the middle. Panics if there is no
    /// such file.
    pub fn tamper(&self, filename: &str, data: Vec<u8>) {
        let mut st = self.lock();
        let file = st
            .packages
            .values_mut()
            .flat_map(|p| &mut p.releases)
            .flat_map(|r| &mut r.files)
            .find(|f| f.filename == filename)
            .unwrap_or_else(|| panic!("no file {filename}"));
        file.tampered = Some(Arc::new(data));
    }

    /// Uploads a binary file (its content is a placeholder naming it) and logs
    /// `add PYTAG file FILENAME`, PYTAG being the wheel filename's Python tag (`py3`,
    /// `cp311`, `py2.py3`), or `py3` for a filename that is not a wheel's. Panics if the
    /// package does not exist.
    pub fn add_binary(&self, name: &str, version: &str, filename: &str) -> i64 {
        let data = format!("fake binary distribution {filename}\n").into_bytes();
        self.add_binary_bytes(name, version, filename, data)
    }

    /// As [`FakePypi::add_binary`], serving the given bytes as the file.
    pub fn add_binary_bytes(&self, name: &str, version: &str, filename: &str, data: Vec<u8>) -> i64 {
        let tag = wheel_python_tag(filename).unwrap_or("py3").to_string();
        self.add_file(name, version, filename, data, "bdist_wheel", &tag)
    }

    fn add_file(&self, name: &str, version: &str, filename: &str, data: Vec<u8>, packagetype: &'static str, tag: &str) -> i64 {
        let mut st = self.lock();
        let uploaded = st.next_timestamp();
        let file =
            DistFile { filename: filename.to_string(), sha256: sha256_hex(&data), data: Arc::new(data), packagetype, uploaded, tampered: None };
        let pkg = st.package_mut(name);
        let display = pkg.name.clone();
        let release = match pkg.releases.iter().position(|r| r.version == version) {
            Some(i) => &mut pkg.releases[i],
            None => {
                pkg.releases.push(Release { version: version.to_string(), yanked: false, files: Vec::new(), requires_dist: None, requires_python: None });
                pkg.releases.last_mut().expect("just pushed")
            }
        };
        release.files.retain(|f| f.filename != filename);
        release.files.push(file);
        st.push_event(&display, Some(version), format!("add {tag} file {filename}"))
    }

    /// A fake index holding `releases`: (name, version, Requires-Python, Requires-Dist), each
    /// with a source file.
    pub fn holding(releases: &[(&str, &str, Option<&str>, &[&str])]) -> FakePypi {
        let pypi = FakePypi::start();
        for (name, version, requires_python, requires_dist) in releases {
            pypi.create_package(name, None);
            pypi.add_source(name, version, format!("source of {name} {version}").into_bytes());
            pypi.set_requirements(name, version, *requires_python, requires_dist);
        }
        pypi
    }

    /// Sets a release's `Requires-Python` and `Requires-Dist` (PEP 508 requirements, as the
    /// JSON API lists them), as its upload would have; logs nothing. Panics if the release does
    /// not exist: upload a file of it first.
    pub fn set_requirements(&self, name: &str, version: &str, requires_python: Option<&str>, requires_dist: &[&str]) {
        let mut st = self.lock();
        let release = st
            .package_mut(name)
            .releases
            .iter_mut()
            .find(|r| r.version == version)
            .unwrap_or_else(|| panic!("fake PyPI: no release {name} {version}; upload a file of it first"));
        release.requires_python = requires_python.map(str::to_string);
        release.requires_dist = Some(requires_dist.iter().map(|r| r.to_string()).collect());
    }

    /// Removes a release and its files (if present) and logs `remove release`.
    pub fn remove_version(&self, name: &str, version: &str) -> i64 {
        let mut st = self.lock();
        let display = match st.packages.get_mut(&canonicalize(name)) {
            Some(pkg) => {
                pkg.releases.retain(|r| r.version != version);
                pkg.name.clone()
            }
            None => name.to_string(),
        };
        st.push_event(&display, Some(version), "remove release".into())
    }

    /// Removes a package with all its releases and files (if present) and logs
    /// `remove project` with no version.
    pub fn remove_package(&self, name: &str) -> i64 {
        let mut st = self.lock();
        let display = st.packages.remove(&canonicalize(name)).map_or_else(|| name.to_string(), |p| p.name);
        st.push_event(&display, None, "remove project".into())
    }

    /// Marks a release yanked and logs `yank release`.
    pub fn yank(&self, name: &str, version: &str) -> i64 {
        self.set_yanked(name, version, true, "yank release")
    }

    /// Marks a release not yanked and logs `unyank release`.
    pub fn unyank(&self, name: &str, version: &str) -> i64 {
        self.set_yanked(name, version, false, "unyank release")
    }

    fn set_yanked(&self, name: &str, version: &str, yanked: bool, action: &str) -> i64 {
        let mut st = self.lock();
        let display = match st.packages.get_mut(&canonicalize(name)) {
            Some(pkg) => {
                if let Some(r) = pkg.releases.iter_mut().find(|r| r.version == version) {
                    r.yanked = yanked;
                }
                pkg.name.clone()
            }
            None => name.to_string(),
        };
        st.push_event(&display, Some(version), action.into())
    }

    /// Renames a package. PyPI's changelog has no action text for a rename, so this is modelled
    /// as `remove project` of the old name followed by `create` of the new one; the summary,
    /// releases and files move to the new name (files keep their filenames) without further
    /// events. Returns the serial of the `create`. Panics if the old package does not exist.
    pub fn rename(&self, old: &str, new: &str) -> i64 {
        let mut st = self.lock();
        let mut pkg = st.packages.remove(&canonicalize(old)).unwrap_or_else(|| panic!("fake PyPI: no package {old} to rename"));
        let old_display = std::mem::replace(&mut pkg.name, new.to_string());
        st.packages.insert(canonicalize(new), pkg);
        st.push_event(&old_display, None, "remove project".into());
        st.push_event(new, None, "create".into())
    }

    /// Logs an event with any action text (e.g. `new release`, `remove Owner foo`,
    /// `remove` with or without a version) without changing any package.
    pub fn raw_event(&self, name: &str, version: Option<&str>, action: &str) -> i64 {
        self.lock().push_event(name, version, action.to_string())
    }

    /// Chooses how later events are timestamped.
    pub fn set_time(&self, clock: Clock) {
        self.lock().clock = clock;
    }

    /// Makes the next event's serial `serial + 1`, as if PyPI's history had that many events
    /// already. Panics if that would make serials go backwards.
    pub fn set_last_serial(&self, serial: i64) {
        let mut st = self.lock();
        assert!(serial >= st.last_serial, "fake PyPI: serial {serial} is below the last serial {}", st.last_serial);
        st.last_serial = serial;
    }

    /// The most rows one `changelog_since_serial` answer holds.
    pub fn set_page_limit(&self, rows: usize) {
        self.lock().page_limit = rows.max(1);
    }

    /// The serial of the latest event (what `changelog_last_serial` answers).
    pub fn last_serial(&self) -> i64 {
        self.lock().last_serial
    }

    /// The whole changelog, in serial order.
    pub fn changelog(&self) -> Vec<ChangelogEntry> {
        self.lock().events.clone()
    }

    /// Answers the next `n` requests, whatever their path, with `failure` (after any rules
    /// already queued).
    pub fn fail_next(&self, n: usize, failure: Failure) {
        self.fail_next_on("/", n, failure);
    }

    /// Answers the next `n` requests whose path starts with `path_prefix` (e.g. `/pypi` for
    /// XML-RPC and JSON, `/simple/`, `/packages/`) with `failure`. Rules are used in the order
    /// they were queued; a request uses up one count of the first rule that matches it.
    pub fn fail_next_on(&self, path_prefix: &str, n: usize, failure: Failure) {
        if n > 0 {
            self.lock().failures.push(FailureRule { path_prefix: path_prefix.to_string(), remaining: n, failure });
        }
    }

    /// Drops every queued failure.
    pub fn clear_failures(&self) {
        self.lock().failures.clear();
    }

    /// How many requests arrived for this exact path (without query string), failed or not:
    /// `requests("/pypi")` counts XML-RPC calls.
    pub fn requests(&self, path: &str) -> usize {
        self.lock().requests.get(path).copied().unwrap_or(0)
    }

    /// How many requests arrived in all.
    pub fn total_requests(&self) -> usize {
        self.lock().requests.values().sum()
    }

    /// The XML-RPC calls received so far, in order, including those answered with a failure.
    pub fn xmlrpc_calls(&self) -> Vec<XmlRpcCall> {
        self.lock().calls.clone()
    }
}

impl Drop for FakePypi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(handle) = self.acceptor.take() {
            let _ = handle.join();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// The timestamp the next event will have.
    fn next_timestamp(&self) -> i64 {
        match self.clock {
            Clock::Real => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
            Clock::BasePlusSerial(base) => base + self.last_serial + 1,
            Clock::Fixed(ts) => ts,
        }
    }

    fn push_event(&mut self, name: &str, version: Option<&str>, action: String) -> i64 {
        let timestamp = self.next_timestamp();
        self.last_serial += 1;
        let serial = self.last_serial;
        self.events.push(ChangelogEntry { name: name.to_string(), version: version.map(str::to_string), timestamp, action, serial });
        serial
    }

    fn package_mut(&mut self, name: &str) -> &mut Package {
        self.packages
            .get_mut(&canonicalize(name))
            .unwrap_or_else(|| panic!("fake PyPI: no package {name}; call create_package first"))
    }

    fn take_failure(&mut self, path: &str) -> Option<Failure> {
        let rule = self.failures.iter_mut().find(|r| r.remaining > 0 && path.starts_with(&r.path_prefix))?;
        rule.remaining -= 1;
        let failure = rule.failure;
        self.failures.retain(|r| r.remaining > 0);
        Some(failure)
    }
}

/// The Python tag of a wheel filename (`name-ver[-build]-PY-ABI-PLAT.whl`).
fn wheel_python_tag(filename: &str) -> Option<&str> {
    let stem = filename.strip_suffix(".whl")?;
    let parts: Vec<&str> = stem.split('-').collect();
    (parts.len() >= 5).then(|| parts[parts.len() - 3])
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn accept_loop(listener: &TcpListener, state: &Arc<Mutex<State>>, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else { continue };
        let state = Arc::clone(state);
        let _ = std::thread::Builder::new().name("fake-pypi-conn".into()).spawn(move || {
            let _ = handle_connection(stream, &state);
        });
    }
}

#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    /// The Accept header ("" when there is none).
    accept: String,
    body: Vec<u8>,
}

struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, content_type, headers: Vec::new(), body: body.into() }
    }

    fn status(status: u16) -> Response {
        Response::new(status, "text/plain; charset=utf-8", format!("{status} {}\n", reason(status)))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Reads one request: request line, headers, and a body of Content-Length bytes.
fn read_request(reader: &mut BufReader<TcpStream>) -> Result<Option<Request>, String> {
    let mut line = String::new();
    if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("bad request line {line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unsupported protocol {version}"));
    }
    let (method, target) = (method.to_string(), target.to_string());
    let mut content_length = 0usize;
    let mut expect_continue = false;
    let mut accept = String::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed in the headers".into());
        }
        let header = header.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        let Some((key, value)) = header.split_once(':') else { return Err(format!("bad header {header:?}")) };
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
        if key == "content-length" {
            content_length = value.parse().map_err(|_| format!("bad Content-Length {value:?}"))?;
        } else if key == "transfer-encoding" && !value.eq_ignore_ascii_case("identity") {
            return Err("chunked request bodies are not supported".into());
        } else if key == "expect" && value.eq_ignore_ascii_case("100-continue") {
            expect_continue = true;
        } else if key == "accept" {
            accept = value.to_string();
        }
    }
    if expect_continue {
        reader.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n").map_err(|e| e.to_string())?;
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    // Strip any absolute-form scheme and authority, and the query string.
    let path = target.strip_prefix("http://").map_or(target.as_str(), |rest| rest.find('/').map_or("/", |i| &rest[i..]));
    let path = path.split(['?', '#']).next().unwrap_or("/").to_string();
    Ok(Some(Request { method, path, accept, body }))
}

fn write_response(stream: &mut TcpStream, response: &Response, head_only: bool) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nServer: piwheels-fake-pypi\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    for (key, value) in &response.headers {
        out.push_str(&format!("{key}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&response.body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

fn handle_connection(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    let request = match read_request(&mut reader) {
        Ok(Some(request)) => request,
        Ok(None) => return Ok(()),
        Err(e) => return write_response(&mut stream, &Response::new(400, "text/plain; charset=utf-8", format!("{e}\n")), false),
    };
    let head_only = request.method == "HEAD";
    let failure = {
        let mut st = lock(state);
        *st.requests.entry(request.path.clone()).or_insert(0) += 1;
        if request.method == "POST"
            && is_xmlrpc_path(&request.path)
            && let Ok((method, params)) = parse_method_call(&request.body)
        {
            st.calls.push(XmlRpcCall { method, params });
        }
        st.take_failure(&request.path)
    };
    let response = match failure {
        None => route(&request, state),
        Some(Failure::Status(code)) => Response::status(code),
        Some(Failure::Garbage) => Response::new(200, "text/xml", "<?xml version='1.0'?>\n<methodResponse><params><param><value><array><data><value><int>1</"),
        Some(Failure::Fault(code)) => xmlrpc_fault(code, "injected fault"),
        Some(Failure::Timeout(hold)) => {
            std::thread::sleep(hold);
            return Ok(());
        }
        Some(Failure::Disconnect) => return Ok(()),
    };
    write_response(&mut stream, &response, head_only)
}

fn is_xmlrpc_path(path: &str) -> bool {
    matches!(path, "/pypi" | "/pypi/" | "/RPC2")
}

fn route(request: &Request, state: &Mutex<State>) -> Response {
    let path = request.path.as_str();
    let get = matches!(request.method.as_str(), "GET" | "HEAD");
    if is_xmlrpc_path(path) {
        return if request.method == "POST" { xmlrpc(&request.body, state) } else { Response::status(405) };
    }
    if !get {
        return Response::status(405);
    }
    if let Some(rest) = path.strip_prefix("/pypi/") {
        let parts: Option<Vec<&str>> = rest.strip_suffix("/json").map(|rest| rest.split('/').collect());
        return match parts.as_deref() {
            Some([package]) => json_page(&percent_decode(package), state),
            Some([package, version]) => json_release_page(&percent_decode(package), &percent_decode(version), state),
            _ => Response::status(404),
        };
    }
    if path == "/simple" {
        return redirect("/simple/");
    }
    if path == "/simple/" {
        return simple_root(state);
    }
    if let Some(rest) = path.strip_prefix("/simple/") {
        return match rest.strip_suffix('/') {
            Some(package) if !package.contains('/') && request.accept.contains(SIMPLE_JSON) && lock(state).json_pages => {
                simple_json_page(&percent_decode(package), state)
            }
            Some(package) if !package.contains('/') => simple_page(&percent_decode(package), state),
            None if !rest.contains('/') => redirect(&format!("/simple/{rest}/")),
            _ => Response::status(404),
        };
    }
    if let Some(filename) = path.strip_prefix("/packages/") {
        let filename = percent_decode(filename);
        let st = lock(state);
        let file = st.packages.values().flat_map(|p| &p.releases).flat_map(|r| &r.files).find(|f| f.filename == filename);
        return match file {
            Some(f) => Response::new(200, "application/octet-stream", f.tampered.as_ref().unwrap_or(&f.data).as_ref().clone()),
            None => Response::status(404),
        };
    }
    Response::status(404)
}

fn redirect(location: &str) -> Response {
    let mut response = Response::status(301);
    response.headers.push(("Location", location.to_string()));
    response
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Everything but RFC 3986's unreserved characters.
const COMPONENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

// ---------------------------------------------------------------------------------------------
// Simple index and JSON API

fn simple_root(state: &Mutex<State>) -> Response {
    let st = lock(state);
    let mut html = String::from(
        "<!DOCTYPE html>\n<html>\n  <head>\n    <meta name=\"pypi:repository-version\" content=\"1.0\">\n    <title>Simple index</title>\n  </head>\n  <body>\n",
    );
    for canon in st.packages.keys() {
        html.push_str(&format!("    <a href=\"{}/\">{}</a><br>\n", percent_encode(canon), html_escape(canon)));
    }
    html.push_str("  </body>\n</html>\n");
    Response::new(200, "text/html; charset=utf-8", html)
}

fn simple_page(package: &str, state: &Mutex<State>) -> Response {
    let st = lock(state);
    let Some(pkg) = st.packages.get(&canonicalize(package)) else { return Response::status(404) };
    let title = html_escape(&pkg.name);
    let mut html = format!(
        "<!DOCTYPE html>\n<html>\n  <head>\n    <meta name=\"pypi:repository-version\" content=\"1.0\">\n    <title>Links for {title}</title>\n  </head>\n  <body>\n    <h1>Links for {title}</h1>\n"
    );
    for release in &pkg.releases {
        for file in &release.files {
            let yanked = if release.yanked { " data-yanked=\"\"" } else { "" };
            html.push_str(&format!(
                "    <a href=\"../../packages/{}#sha256={}\"{yanked}>{}</a><br>\n",
                percent_encode(&file.filename),
                file.sha256,
                html_escape(&file.filename)
            ));
        }
    }
    html.push_str("  </body>\n</html>\n");
    Response::new(200, "text/html; charset=utf-8", html)
}

/// PEP 691's media type for the JSON form of a simple page.
const SIMPLE_JSON: &str = "application/vnd.pypi.simple.v1+json";

/// A project's simple page in PEP 691's JSON form, with URLs relative to the page.
fn simple_json_page(package: &str, state: &Mutex<State>) -> Response {
    let st = lock(state);
    let Some(pkg) = st.packages.get(&canonicalize(package)) else { return Response::status(404) };
    let files: Vec<serde_json::Value> = pkg
        .releases
        .iter()
        .flat_map(|release| release.files.iter().map(move |file| (release, file)))
        .map(|(release, file)| {
            serde_json::json!({
                "filename": file.filename,
                "url": format!("../../packages/{}", percent_encode(&file.filename)),
                "hashes": {"sha256": file.sha256},
                "yanked": release.yanked,
                "upload-time": chrono::DateTime::from_timestamp(file.uploaded, 0).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                "size": file.data.len(),
            })
        })
        .collect();
    let versions: Vec<&str> = pkg.releases.iter().map(|r| r.version.as_str()).collect();
    let page = serde_json::json!({"meta": {"api-version": "1.1"}, "name": canonicalize(&pkg.name), "versions": versions, "files": files});
    Response::new(200, SIMPLE_JSON, page.to_string())
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), json_string)
}

fn json_page(package: &str, state: &Mutex<State>) -> Response {
    let st = lock(state);
    let Some(pkg) = st.packages.get(&canonicalize(package)) else {
        return Response::new(404, "application/json", "{\"message\": \"Not Found\"}");
    };
    let releases: Vec<String> = pkg
        .releases
        .iter()
        .map(|r| format!("{}: [{}]", json_string(&r.version), r.files.iter().map(|f| file_json(r, f)).collect::<Vec<_>>().join(", ")))
        .collect();
    let latest = pkg.releases.last();
    let urls = latest.map_or_else(String::new, |r| r.files.iter().map(|f| file_json(r, f)).collect::<Vec<_>>().join(", "));
    let body = format!(
        "{{\"info\": {{\"name\": {}, \"summary\": {}, \"version\": {}}}, \"releases\": {{{}}}, \"urls\": [{}]}}",
        json_string(&pkg.name),
        json_opt(pkg.summary.as_deref()),
        json_opt(latest.map(|r| r.version.as_str())),
        releases.join(", "),
        urls
    );
    Response::new(200, "application/json", body)
}

/// A file of a release as the JSON API lists it, its URL relative to the document.
fn file_json(release: &Release, f: &DistFile) -> String {
    format!(
        "{{\"filename\": {}, \"url\": {}, \"digests\": {{\"sha256\": {}}}, \"packagetype\": {}, \"size\": {}, \"yanked\": {}, \"requires_python\": {}}}",
        json_string(&f.filename),
        json_string(&format!("../../../packages/{}", percent_encode(&f.filename))),
        json_string(&f.sha256),
        json_string(f.packagetype),
        f.data.len(),
        release.yanked,
        json_opt(release.requires_python.as_deref())
    )
}

/// A release's document (`<json_url>/<package>/<version>/json`): its metadata, requirements
/// included, and its files.
fn json_release_page(package: &str, version: &str, state: &Mutex<State>) -> Response {
    let st = lock(state);
    let Some((pkg, release)) =
        st.packages.get(&canonicalize(package)).and_then(|p| p.releases.iter().find(|r| r.version == version).map(|r| (p, r)))
    else {
        return Response::new(404, "application/json", "{\"message\": \"Not Found\"}");
    };
    let requires_dist = release
        .requires_dist
        .as_ref()
        .map_or_else(|| "null".to_string(), |list| format!("[{}]", list.iter().map(|r| json_string(r)).collect::<Vec<_>>().join(", ")));
    let body = format!(
        "{{\"info\": {{\"name\": {}, \"summary\": {}, \"version\": {}, \"requires_dist\": {requires_dist}, \"requires_python\": {}, \"yanked\": {}}}, \"urls\": [{}]}}",
        json_string(&pkg.name),
        json_opt(pkg.summary.as_deref()),
        json_string(&release.version),
        json_opt(release.requires_python.as_deref()),
        release.yanked,
        release.files.iter().map(|f| file_json(release, f)).collect::<Vec<_>>().join(", ")
    );
    Response::new(200, "application/json", body)
}

// ---------------------------------------------------------------------------------------------
// XML-RPC

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

/// The text between the first `open` and the following `close`, and what follows `close`.
fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<(&'a str, &'a str)> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some((&s[start..start + len], &s[start + len + close.len()..]))
}

/// Parses a `methodCall` document into its method name and its parameters' scalar text values.
fn parse_method_call(body: &[u8]) -> Result<(String, Vec<String>), String> {
    let text = std::str::from_utf8(body).map_err(|_| "request is not UTF-8")?.trim();
    let text = match text.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").ok_or("unterminated XML declaration")?.1.trim(),
        None => text,
    };
    let inner = text
        .strip_prefix("<methodCall>")
        .and_then(|t| t.strip_suffix("</methodCall>"))
        .ok_or("not a methodCall document")?;
    let (name, rest) = between(inner, "<methodName>", "</methodName>").ok_or("no methodName")?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._:/".contains(c)) {
        return Err(format!("bad method name {name:?}"));
    }
    let mut params = Vec::new();
    let rest = rest.trim();
    if !rest.is_empty() && rest != "<params/>" {
        let (mut list, tail) = between(rest, "<params>", "</params>").ok_or("bad params")?;
        if !tail.trim().is_empty() {
            return Err("text after params".into());
        }
        while let Some((param, after)) = between(list, "<param>", "</param>") {
            let (value, _) = between(param, "<value>", "</value>").ok_or("param without value")?;
            params.push(scalar_text(value.trim())?);
            list = after;
        }
        if !list.trim().is_empty() {
            return Err("unexpected text in params".into());
        }
    }
    Ok((name.to_string(), params))
}

/// The text of a scalar value: `<int>5</int>` → `5`, `plain` → `plain`, `<nil/>` → empty.
fn scalar_text(value: &str) -> Result<String, String> {
    if !value.starts_with('<') {
        return Ok(xml_unescape(value));
    }
    if value.ends_with("/>") {
        return Ok(String::new());
    }
    let end_of_open = value.find('>').ok_or("bad value")?;
    let tag = &value[1..end_of_open];
    let close = format!("</{tag}>");
    let content = value[end_of_open + 1..].strip_suffix(close.as_str()).ok_or_else(|| format!("unclosed <{tag}>"))?;
    if content.contains('<') {
        return Err(format!("only scalar parameters are supported, got <{tag}>"));
    }
    Ok(xml_unescape(content.trim()))
}

fn xmlrpc_response(value: &str) -> Response {
    Response::new(
        200,
        "text/xml",
        format!("<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value>{value}</value>\n</param>\n</params>\n</methodResponse>\n"),
    )
}

fn xmlrpc_fault(code: i32, message: &str) -> Response {
    Response::new(
        200,
        "text/xml",
        format!(
            "<?xml version='1.0'?>\n<methodResponse>\n<fault>\n<value><struct>\n\
             <member><name>faultCode</name><value><int>{code}</int></value></member>\n\
             <member><name>faultString</name><value><string>{}</string></value></member>\n\
             </struct></value>\n</fault>\n</methodResponse>\n",
            xml_escape(message)
        ),
    )
}

fn xmlrpc(body: &[u8], state: &Mutex<State>) -> Response {
    let (method, params) = match parse_method_call(body) {
        Ok(call) => call,
        Err(e) => return xmlrpc_fault(-32700, &format!("parse error: {e}")),
    };
    let st = lock(state);
    match (method.as_str(), params.as_slice()) {
        ("changelog_last_serial", []) => xmlrpc_response(&format!("<int>{}</int>", st.last_serial)),
        ("changelog_since_serial", [since]) => {
            let Ok(since) = since.parse::<i64>() else {
                return xmlrpc_fault(-32602, &format!("changelog_since_serial: not an integer: {since:?}"));
            };
            let mut out = String::from("<array><data>\n");
            for e in st.events.iter().filter(|e| e.serial > since).take(st.page_limit) {
                let version = e.version.as_deref().map_or_else(|| "<nil/>".to_string(), |v| format!("<string>{}</string>", xml_escape(v)));
                out.push_str(&format!(
                    "<value><array><data><value><string>{}</string></value><value>{version}</value><value><int>{}</int></value><value><string>{}</string></value><value><int>{}</int></value></data></array></value>\n",
                    xml_escape(&e.name),
                    e.timestamp,
                    xml_escape(&e.action),
                    e.serial
                ));
            }
            out.push_str("</data></array>");
            xmlrpc_response(&out)
        }
        ("changelog_last_serial" | "changelog_since_serial", _) => {
            xmlrpc_fault(-32602, &format!("{method}: wrong number of parameters ({})", params.len()))
        }
        _ => xmlrpc_fault(-32601, &format!("method not found: {method}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Source distributions

/// Small source distributions (`.tar.gz`) for tests, built with setuptools through
/// `pyproject.toml` (`setuptools.build_meta`) and `setup.py`. Each unpacks to one directory
/// `NAME-VERSION/` holding `PKG-INFO`, `pyproject.toml` and `setup.py`. The module name is
/// [`sdist::module_name`]. The archives are written here (ustar, gzip with stored blocks), so
/// making them needs no Python, and the same arguments always give the same bytes.
pub mod sdist {

    /// The text a [`failing`] sdist's build raises its error with (followed by the name and
    /// version), to look for in the builder's output.
    pub const FAILURE_MESSAGE: &str = "piwheels-testsupport: deliberate build failure";

    /// The environment variable which, when set for the build, makes a [`sleeping`] sdist
    /// append the process id of its build process and then of the child it spawns (one per
    /// line) to the file it names.
    pub const PID_FILE_ENV: &str = "PIWHEELS_TEST_PID_FILE";

    /// The modification time of every archive member (2020-09-13T12:26:40Z).
    const MTIME: u64 = 1_600_000_000;

    /// The Python module a package's sdist provides: the name with every character that is not
    /// a letter or digit replaced by `_`, then `_mod` (`foo-bar` → `foo_bar_mod`).
    pub fn module_name(name: &str) -> String {
        let ident: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        format!("{ident}_mod")
    }

    /// A Python string literal for `s`.
    fn py(s: &str) -> String {
        super::json_string(s)
    }

    const PYPROJECT: &str = "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n";

    fn pkg_info(name: &str, version: &str, summary: &str) -> String {
        format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: {summary}\n")
    }

    /// A pure-Python package: module [`module_name`] defining `VALUE = "<version>"`.
    pub fn pure(name: &str, version: &str) -> Vec<u8> {
        let module = module_name(name);
        let setup = format!(
            "from setuptools import setup\n\nsetup(name={}, version={}, py_modules=[{}])\n",
            py(name),
            py(version),
            py(&module)
        );
        archive(name, version, "A pure Python test package", &setup, &[(format!("{module}.py"), format!("VALUE = {}\n", py(version)))])
    }

    /// A package with a C extension module [`module_name`] whose function `answer()` returns 42.
    /// Building it needs a C compiler and Python's development headers.
    pub fn c_extension(name: &str, version: &str) -> Vec<u8> {
        let module = module_name(name);
        let setup = format!(
            "from setuptools import Extension, setup\n\n\
             setup(name={}, version={}, ext_modules=[Extension({}, sources=[{}])])\n",
            py(name),
            py(version),
            py(&module),
            py(&format!("{module}.c"))
        );
        let c = format!(
            "#define PY_SSIZE_T_CLEAN\n#include <Python.h>\n\n\
             static PyObject *answer(PyObject *self, PyObject *args) {{\n    return PyLong_FromLong(42);\n}}\n\n\
             static PyMethodDef methods[] = {{\n    {{\"answer\", answer, METH_NOARGS, \"Returns 42.\"}},\n    {{NULL, NULL, 0, NULL}}\n}};\n\n\
             static struct PyModuleDef module = {{PyModuleDef_HEAD_INIT, \"{module}\", NULL, -1, methods}};\n\n\
             PyMODINIT_FUNC PyInit_{module}(void) {{\n    return PyModule_Create(&module);\n}}\n"
        );
        archive(name, version, "A C extension test package", &setup, &[(format!("{module}.c"), c)])
    }

    /// A package whose build (its `build_py` step, after metadata preparation succeeded) raises
    /// `RuntimeError("<FAILURE_MESSAGE> of NAME VERSION")`.
    pub fn failing(name: &str, version: &str) -> Vec<u8> {
        let module = module_name(name);
        let message = format!("{FAILURE_MESSAGE} of {name} {version}");
        let setup = format!(
            "from setuptools import setup\nfrom setuptools.command.build_py import build_py\n\n\n\
             class FailingBuild(build_py):\n    def run(self):\n        raise RuntimeError({})\n\n\n\
             setup(name={}, version={}, py_modules=[{}], cmdclass={{\"build_py\": FailingBuild}})\n",
            py(&message),
            py(name),
            py(version),
            py(&module)
        );
        archive(name, version, "A test package that fails to build", &setup, &[(format!("{module}.py"), "VALUE = None\n".into())])
    }

    /// A package with a C extension module [`module_name`] that includes `header` (`<...>`),
    /// which no builder has: its build fails in the compiler, which names the header.
    pub fn missing_header(name: &str, version: &str, header: &str) -> Vec<u8> {
        let module = module_name(name);
        let setup = format!(
            "from setuptools import Extension, setup\n\n\
             setup(name={}, version={}, ext_modules=[Extension({}, sources=[{}])])\n",
            py(name),
            py(version),
            py(&module),
            py(&format!("{module}.c"))
        );
        let c = format!("#include <Python.h>\n#include <{header}>\n");
        archive(name, version, "A test package needing a header no builder has", &setup, &[(format!("{module}.c"), c)])
    }

    /// A package whose build (its `build_py` step) runs `tool --version`, as a build of a Rust
    /// or Fortran extension runs its compiler: on a builder without the tool, Python's
    /// `FileNotFoundError` names it.
    pub fn needs_tool(name: &str, version: &str, tool: &str) -> Vec<u8> {
        let module = module_name(name);
        let setup = format!(
            "import subprocess\n\n\
             from setuptools import setup\nfrom setuptools.command.build_py import build_py\n\n\n\
             class ToolBuild(build_py):\n    def run(self):\n        subprocess.check_call([{}, \"--version\"])\n        super().run()\n\n\n\
             setup(name={}, version={}, py_modules=[{}], cmdclass={{\"build_py\": ToolBuild}})\n",
            py(tool),
            py(name),
            py(version),
            py(&module)
        );
        archive(name, version, "A test package needing a tool", &setup, &[(format!("{module}.py"), "VALUE = None\n".into())])
    }

    /// A pure-Python package that requires a Python no builder has (`Requires-Python:
    /// >=3.99`): pip refuses to build it.
    pub fn future_python(name: &str, version: &str) -> Vec<u8> {
        let module = module_name(name);
        let setup = format!(
            "from setuptools import setup\n\nsetup(name={}, version={}, py_modules=[{}], python_requires=\">=3.99\")\n",
            py(name),
            py(version),
            py(&module)
        );
        archive(name, version, "A test package for a future Python", &setup, &[(format!("{module}.py"), "VALUE = None\n".into())])
    }

    /// A pure-Python package whose every build differs: its `build_py` step writes module
    /// [`module_name`] with `VALUE = "<version>"` and `BUILD`, a random value.
    pub fn random(name: &str, version: &str) -> Vec<u8> {
        let module = module_name(name);
        let setup = format!(
            "import os\nimport uuid\n\n\
             from setuptools import setup\nfrom setuptools.command.build_py import build_py\n\n\n\
             class RandomBuild(build_py):\n    def run(self):\n        super().run()\n        \
             with open(os.path.join(self.build_lib, {module_file}), \"w\") as f:\n            \
             f.write(\"VALUE = %r\\nBUILD = %r\\n\" % ({version}, uuid.uuid4().hex))\n\n\n\
             setup(name={}, version={}, py_modules=[{}], cmdclass={{\"build_py\": RandomBuild}})\n",
            py(name),
            py(version),
            py(&module),
            module_file = py(&format!("{module}.py")),
            version = py(version),
        );
        archive(name, version, "A test package whose builds differ", &setup, &[(format!("{module}.py"), "VALUE = None\n".into())])
    }

    /// A package whose build (its `build_py` step) spawns a child process that sleeps `seconds`,
    /// then sleeps `seconds` itself before building normally; with [`PID_FILE_ENV`] set, both
    /// process ids are written to that file first. The child is left running (not waited
    /// for), so a test can check that killing the build's process group ends it too.
    pub fn sleeping(name: &str, version: &str, seconds: u32) -> Vec<u8> {
        let module = module_name(name);
        let setup = format!(
            "import os\nimport subprocess\nimport sys\nimport time\n\n\
             from setuptools import setup\nfrom setuptools.command.build_py import build_py\n\n\n\
             class SleepingBuild(build_py):\n    def run(self):\n        \
             child = subprocess.Popen([sys.executable, \"-c\", \"import time; time.sleep({seconds})\"])\n        \
             pid_file = os.environ.get({env})\n        \
             if pid_file:\n            with open(pid_file, \"a\") as f:\n                \
             f.write(\"%d\\n%d\\n\" % (os.getpid(), child.pid))\n        \
             time.sleep({seconds})\n        super().run()\n\n\n\
             setup(name={}, version={}, py_modules=[{}], cmdclass={{\"build_py\": SleepingBuild}})\n",
            py(name),
            py(version),
            py(&module),
            env = py(PID_FILE_ENV),
        );
        archive(name, version, "A test package that builds slowly", &setup, &[(format!("{module}.py"), "VALUE = None\n".into())])
    }

    fn archive(name: &str, version: &str, summary: &str, setup: &str, extra: &[(String, String)]) -> Vec<u8> {
        let stem = format!("{name}-{version}");
        let mut members: Vec<(String, Vec<u8>)> = vec![
            (format!("{stem}/PKG-INFO"), pkg_info(name, version, summary).into_bytes()),
            (format!("{stem}/pyproject.toml"), PYPROJECT.as_bytes().to_vec()),
            (format!("{stem}/setup.py"), setup.as_bytes().to_vec()),
        ];
        members.extend(extra.iter().map(|(path, text)| (format!("{stem}/{path}"), text.as_bytes().to_vec())));
        gzip(&tar(&stem, &members))
    }

    fn octal(field: &mut [u8], value: u64) {
        let digits = format!("{value:0width$o}", width = field.len() - 1);
        assert!(digits.len() < field.len(), "tar field overflow");
        field[..digits.len()].copy_from_slice(digits.as_bytes());
        field[digits.len()] = 0;
    }

    fn header(path: &str, size: u64, directory: bool) -> [u8; 512] {
        let mut h = [0u8; 512];
        let (prefix, name) = if path.len() <= 100 {
            ("", path)
        } else {
            let split = path[..path.len().min(156)].rfind('/').expect("tar path too long");
            (&path[..split], &path[split + 1..])
        };
        assert!(name.len() <= 100 && prefix.len() <= 155, "tar path too long: {path}");
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], if directory { 0o755 } else { 0o644 });
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], MTIME);
        h[148..156].copy_from_slice(b"        ");
        h[156] = if directory { b'5' } else { b'0' };
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        let digits = format!("{sum:06o}");
        h[148..154].copy_from_slice(digits.as_bytes());
        h[154] = 0;
        h[155] = b' ';
        h
    }

    fn tar(top: &str, members: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&header(&format!("{top}/"), 0, true));
        for (path, data) in members {
            out.extend_from_slice(&header(path, data.len() as u64, false));
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut table = [0u32; 256];
        for (i, entry) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *entry = c;
        }
        !data.iter().fold(!0u32, |c, &b| table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8))
    }

    /// gzip with deflate "stored" (uncompressed) blocks: valid for every reader, and needs no
    /// compressor.
    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x1f, 0x8b, 8, 0];
        out.extend_from_slice(&(MTIME as u32).to_le_bytes());
        out.extend_from_slice(&[0, 0xff]);
        let mut chunks = data.chunks(0xFFFF).peekable();
        if chunks.peek().is_none() {
            out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        }
        while let Some(chunk) = chunks.next() {
            out.push(u8::from(chunks.peek().is_none()));
            let len = chunk.len() as u16;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(&crc32(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_paths_are_decoded_to_the_end_and_encoded_back() {
        assert_eq!(percent_decode("foo-1.0%2Btag%2B"), "foo-1.0+tag+");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_encode("foo-1.0+tag~x y"), "foo-1.0%2Btag~x%20y");
        assert_eq!(percent_decode(&percent_encode("é+ü")), "é+ü");
    }
}
