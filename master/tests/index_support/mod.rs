//! Set-up shared by the index writer's tests (`index_*.rs`): a database with its oracles, an
//! output tree, the index writer running on them, builds recorded and published as the file
//! juggler and the slave driver would, and a small HTML reader for the pages.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use piwheels_common::protocols::{TaskControl, Timestamp, WheelFile};
use piwheels_master::calls::db::{
    BuildIds, BuildRecord, ClearRewrites, LogBuild, NewPackage, NewPackageName, NewVersion, PackageFiles, PendingRewrite, Projects,
    RewriteScope, RewriteWritten,
};
use piwheels_master::calls::tasks::{WebReply, WebRequest};
use piwheels_common::task::{self, TaskExit, TaskHandle};
use piwheels_common::transport::Client;
use piwheels_master::db_client::DbClient;
use piwheels_master::index::{self, IndexConfig, Scribe};
use piwheels_master::wiring;
use piwheels_testsupport::data::{random_bytes, wheel_file};

use crate::support::{Pool, eventually};

/// A farm's database, output tree and index writer.
pub struct Farm {
    pub pool: Pool,
    pub out: tempfile::TempDir,
    pub db: DbClient,
    pub web: Client<WebRequest, WebReply>,
    scribe: Option<TaskHandle>,
    seed: u64,
    starts: u32,
}

/// A time in 2024, `day` days into it.
pub fn day(day: i64) -> Timestamp {
    Utc.with_ymd_and_hms(2024, 1, 1, 12, 0, 0).unwrap() + chrono::Duration::days(day)
}

/// The key the tests' index writers sign with.
pub fn signing_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[42; 32])
}

/// The settings tests use: the given window, no syncfs (tests run in parallel on one disk),
/// written entries cleared after 50 ms, the root written with every batch.
pub fn config(out: &Path, window: Duration) -> IndexConfig {
    let mut config = IndexConfig::new(out, signing_key());
    config.window = window;
    config.retry = Duration::from_millis(500);
    config.durable = false;
    config.sync_every = Duration::from_millis(50);
    config.root_every = Duration::ZERO;
    config
}

impl Farm {
    /// A database (ABIs cp39 and cp311) with two oracles and an empty output tree; the index
    /// writer is not started.
    pub fn new() -> Farm {
        let pool = Pool::start(2);
        pool.db.execute("INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp39', 309), ('cp311', 311)");
        let db = pool.client(Duration::from_secs(10));
        let web = Client::connect(&pool.rt.zmq, wiring::WEB.address(), None).unwrap();
        Farm { pool, out: tempfile::tempdir().unwrap(), db, web, scribe: None, seed: 1, starts: 0 }
    }

    /// A farm whose index writer runs with a 100 ms window.
    pub fn started() -> Farm {
        let mut farm = Farm::new();
        farm.start(Duration::from_millis(100));
        farm
    }

    pub fn root(&self) -> &Path {
        self.out.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.out.path().join(rel)
    }

    /// Starts the index writer with `window`, and waits for its first full rewrite.
    pub fn start(&mut self, window: Duration) {
        self.start_with(config(self.out.path(), window));
    }

    pub fn start_with(&mut self, config: IndexConfig) {
        assert!(self.scribe.is_none());
        // The socket outlives the task's restarts, not the task: a new task binds it again.
        // A name of its own each time: an inproc endpoint is freed a little after its socket
        // closes.
        self.starts += 1;
        let handle = task::spawn(
            &self.pool.rt,
            &format!("the_scribe_{}", self.starts),
            |ctx| index::Sockets::open(ctx, Duration::from_secs(10)),
            move |_| Scribe::start(&config),
        )
        .unwrap();
        self.scribe = Some(handle);
        // A REQ connected to an inproc socket that was bound again does not reconnect.
        self.web = Client::connect(&self.pool.rt.zmq, wiring::WEB.address(), None).unwrap();
        let stamp = self.path(".piwheels-index");
        let fingerprint = index::pages::TEMPLATES_FINGERPRINT.as_bytes();
        eventually("the index writer's first full rewrite", Duration::from_secs(20), || {
            std::fs::read(&stamp).is_ok_and(|s| s == fingerprint)
        });
    }

    /// Stops the index writer (as a master's shutdown does).
    pub fn stop(&mut self) {
        let mut handle = self.scribe.take().expect("running");
        handle.control(TaskControl::Quit).unwrap();
        assert_eq!(handle.join(Duration::from_secs(10)), Some(TaskExit::Quit));
        // Closed sockets free their inproc endpoints a moment later.
        std::thread::sleep(Duration::from_millis(100));
    }

    /// The writer's handle.
    pub fn scribe(&self) -> &TaskHandle {
        self.scribe.as_ref().expect("running")
    }

    /// Sends a request and expects `Done`.
    pub fn send(&self, request: WebRequest) {
        match self.web.request(&request, Duration::from_secs(10)).unwrap() {
            WebReply::Done => {}
            WebReply::Error(piwheels_common::protocols::WireError { message, .. }) => panic!("{request:?}: {message}"),
        }
    }

    /// Asks for a rewrite of both page sets of `package`.
    pub fn rewrite(&self, package: &str) {
        self.send(WebRequest::Rewrite { package: package.into(), scope: RewriteScope::Both });
    }

    /// Adds a package (with a display spelling) and versions released on the given days.
    pub fn package(&self, package: &str, display: &str, description: &str, versions: &[(&str, i64)]) {
        self.db.call(NewPackage { package: package.into(), skip: String::new(), description: description.into() }).unwrap();
        self.db.call(NewPackageName { package: package.into(), name: display.into(), seen: day(0) }).unwrap();
        for (version, released) in versions {
            let new = NewVersion { package: package.into(), version: (*version).into(), released: Some(day(*released)), skip: String::new() };
            self.db.call(new).unwrap();
        }
    }

    /// Records a successful build of `files` on `abi` and publishes them (and their metadata)
    /// as the file juggler does. Returns the build id.
    pub fn build(&mut self, package: &str, version: &str, abi: &str, files: &[WheelFile]) -> i64 {
        for file in files {
            self.publish(package, file);
        }
        self.record_build(record(package, version, abi, files.to_vec()))
    }

    /// Records a failed build.
    pub fn fail(&self, package: &str, version: &str, abi: &str) -> i64 {
        self.record_build(record(package, version, abi, Vec::new()))
    }

    /// Records a build without leaving the pending rewrite `LogBuild` records with it: these
    /// tests ask for pages themselves.
    pub fn record_build(&self, build: BuildRecord) -> i64 {
        let package = build.package.clone();
        let id = self.db.call(LogBuild { build: Box::new(build), rewrite_at: Utc::now(), cross_check: false }).unwrap();
        let snapshot = self.db.call(Projects { packages: Vec::new() }).unwrap().snapshot;
        self.db.call(ClearRewrites { written: vec![RewriteWritten { package, snapshot }] }).unwrap();
        id
    }

    /// Writes the log of build `build_id` of `package`, as the slave driver's `Built` does
    /// (which also asks for the project page).
    pub fn log(&self, package: &str, build_id: i64, output: &str) {
        let rewrite = PendingRewrite { package: package.into(), added_at: Utc::now(), scope: RewriteScope::Project };
        self.send(WebRequest::Built { build_id, output: output.into(), rewrite });
    }

    /// A wheel of `package` `version` with tags, made of random bytes.
    pub fn wheel(&mut self, filename: &str, requires_python: Option<&str>) -> WheelFile {
        self.seed += 1;
        let bytes = random_bytes(1000 + self.seed as usize * 7, self.seed);
        let mut file = wheel_file(filename, &bytes);
        file.requires_python = requires_python.map(str::to_string);
        file.dependencies.apt = vec!["libatlas3-base".into(), "libc6".into()];
        file.dependencies.pip = vec!["numpy".into()];
        // What the pip dependencies come from, with a conditional one beside.
        let mut metadata = String::from_utf8_lossy(&file.metadata).into_owned();
        metadata.push_str("Requires-Dist: numpy\nRequires-Dist: ruamel.yaml.clib>=0.2.7; python_version < \"3.13\"\n");
        file.metadata = metadata.into_bytes().into();
        // Keep the bytes where publish() finds them.
        BYTES.with(|b| b.borrow_mut().insert(file.filename.clone(), bytes));
        file
    }

    /// Puts a file where the file juggler publishes it.
    pub fn publish(&self, package: &str, file: &WheelFile) {
        let dir = self.path(&format!("simple/{package}"));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = BYTES.with(|b| b.borrow().get(&file.filename).cloned()).unwrap_or_default();
        std::fs::write(dir.join(&file.filename), bytes).unwrap();
        std::fs::write(dir.join(format!("{}.metadata", file.filename)), &file.metadata).unwrap();
    }

    /// Every file name the database has for a package.
    pub fn files_of(&self, package: &str) -> Vec<String> {
        self.db.call(PackageFiles { package: package.into() }).unwrap().into_iter().map(|f| f.filename).collect()
    }

    /// Build ids of a package or version.
    pub fn builds_of(&self, package: &str, version: Option<&str>) -> Vec<i64> {
        self.db.call(BuildIds { package: package.into(), version: version.map(str::to_string) }).unwrap()
    }

    /// Reads a file of the tree.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Reads a JSON file of the tree.
    pub fn json(&self, rel: &str) -> serde_json::Value {
        serde_json::from_str(&self.read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Waits until `cond` holds of the tree.
    pub fn wait(&self, what: &str, cond: impl Fn(&Farm) -> bool) {
        eventually(what, Duration::from_secs(10), || cond(self));
    }

    /// The pending rewrites in the database.
    pub fn pending(&self) -> Vec<String> {
        self.pool.db.column("SELECT package::text FROM rewrites_pending ORDER BY package").into_iter().flatten().collect()
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        if let Some(mut handle) = self.scribe.take() {
            let _ = handle.control(TaskControl::Quit);
            handle.join(Duration::from_secs(10));
        }
    }
}

thread_local! {
    static BYTES: std::cell::RefCell<BTreeMap<String, Vec<u8>>> = const { std::cell::RefCell::new(BTreeMap::new()) };
}

/// A build record: successful when it has files.
pub fn record(package: &str, version: &str, abi: &str, files: Vec<WheelFile>) -> BuildRecord {
    crate::support::build_record(package, version, abi, files)
}

// ------------------------------------------------------------------------------------------
// Reading HTML
// ------------------------------------------------------------------------------------------

/// A start tag: its name, its attributes (values unescaped) and the text up to its end tag
/// (inner tags removed; empty for a void element).
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    pub name: String,
    pub attrs: Vec<(String, Option<String>)>,
    pub text: String,
}

impl Tag {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
    }

    pub fn has(&self, name: &str) -> bool {
        self.attrs.iter().any(|(n, _)| n == name)
    }
}

/// Decodes the character references an HTML attribute or text may hold (once).
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').expect("a terminated character reference");
        let entity = &rest[1..end];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            e if e.starts_with("#x") || e.starts_with("#X") => char::from_u32(u32::from_str_radix(&e[2..], 16).unwrap()).unwrap(),
            e if e.starts_with('#') => char::from_u32(e[1..].parse().unwrap()).unwrap(),
            other => panic!("unknown character reference &{other};"),
        };
        out.push(c);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Every start tag named `name` in `html`, in order. Attribute values must be quoted with
/// `"` (the writer's templates always do).
pub fn tags(html: &str, name: &str) -> Vec<Tag> {
    let mut found = Vec::new();
    let open = format!("<{name}");
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        if !after.starts_with([' ', '>', '\n', '/']) {
            rest = after;
            continue;
        }
        let end = after.find('>').expect("a closed tag");
        let mut attrs = Vec::new();
        let mut inside = after[..end].trim().trim_end_matches('/');
        while !inside.is_empty() {
            inside = inside.trim_start();
            let name_end = inside.find(['=', ' ', '\n']).unwrap_or(inside.len());
            let attr = inside[..name_end].to_string();
            assert_eq!(attr, attr.to_ascii_lowercase(), "attribute names are lower case");
            inside = &inside[name_end..];
            if let Some(value) = inside.strip_prefix("=\"") {
                let close = value.find('"').expect("a closed attribute value");
                attrs.push((attr, Some(unescape(&value[..close]))));
                inside = &value[close + 1..];
            } else {
                attrs.push((attr, None));
            }
        }
        let body = &after[end + 1..];
        let text = match body.find(&format!("</{name}>")) {
            Some(close) => strip_tags(&body[..close]),
            None => String::new(),
        };
        found.push(Tag { name: name.to_string(), attrs, text });
        rest = body;
    }
    found
}

/// Text with its tags removed and its character references decoded.
pub fn strip_tags(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    unescape(&text)
}

/// The text of the first element with `id="<id>"` (tags inside it removed, references
/// decoded).
pub fn text_of(html: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no element #{id}"));
    let open_end = start + html[start..].find('>').unwrap() + 1;
    let tag_start = html[..start].rfind('<').unwrap();
    let tag_name: String = html[tag_start + 1..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    let close = open_end + html[open_end..].find(&format!("</{tag_name}>")).unwrap();
    strip_tags(&html[open_end..close])
}

/// The `href` targets of every link in `html`, without fragments, resolved against the page
/// at `page` (a path under the root, ending in `/`).
pub fn link_targets(html: &str, page: &str) -> Vec<String> {
    tags(html, "a")
        .iter()
        .filter_map(|a| a.attr("href").map(str::to_string))
        .map(|href| {
            let href = href.split('#').next().unwrap().to_string();
            let path = if href.starts_with('/') { href } else { format!("{page}{href}") };
            percent_decode(&path)
        })
        .collect()
}

pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8().expect("a link of UTF-8").into_owned()
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_of(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    piwheels_common::inspect::sha256_hex(&bytes)
}
