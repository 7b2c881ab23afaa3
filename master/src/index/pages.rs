//! What each page says: the models the templates in `templates/` render (askama), and the
//! JSON documents (serde, so that they are always well-formed and escaped once).
//!
//! Everything here is a pure function of the database's [`ProjectData`] and of what is on
//! disk ([`OnDisk`]): a file is linked only when it is there, its `.metadata` advertised only
//! when that is there, and a build log linked only when it was written. So no page links a
//! missing file, whatever order things happened in.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use askama::Template;
use chrono::SecondsFormat;
use piwheels_common::config::{HumanDuration, human_size};
use piwheels_common::inspect::{CoreMetadata, split_requirement};
use piwheels_common::names::{canonicalize, is_prerelease, parse_version};
use piwheels_common::protocols::{BuildId, MasterStats, Timestamp};
use piwheels_common::provenance;

use crate::calls::db::{AbiStatus, BuildAbi, BuildSummary, ProjectData, ProjectFile, ReleaseData, Reproducibility, Verdict};
use crate::calls::tasks::CheckCounts;
use piwheels_common::wheel::WheelName;
use serde::Serialize;
use serde::ser::SerializeMap;
use sha2::{Digest, Sha256};

use super::layout::log_path;

/// The simple API version the pages claim (PEP 629): 1.1, since every JSON file entry has a
/// `size` and every JSON project page a `versions` list (PEP 700).
pub const API_VERSION: &str = "1.1";

/// Bumped when the pages change in a way the templates' text does not show (the models or
/// the JSON documents), so that the next start rewrites every page.
const PAGES_REVISION: u32 = 4;

/// Most dependencies a project page lists (a wheel's METADATA may name thousands).
const MAX_SHOWN_REQUIREMENTS: usize = 100;
/// Longest versions-and-marker text shown beside a dependency, in characters.
const MAX_REQUIREMENT_TEXT: usize = 200;
/// Most of the project's own links a page shows, the longest label and the longest address.
const MAX_LINKS: usize = 10;
const MAX_LINK_LABEL: usize = 40;
const MAX_LINK_URL: usize = 500;
/// Longest summary shown (PyPI's is cut to this length too: `packages.description`).
const MAX_SUMMARY: usize = 200;

/// The search box's script, served at `/search.js` (see `templates/search.js`).
pub const SEARCH_SCRIPT: &str = include_str!("../../../templates/search.js");
/// The stylesheet, served at `/style.css` (see `templates/style.css`).
pub const STYLESHEET: &str = include_str!("../../../templates/style.css");

/// Identifies the page templates and models this build writes: a SHA-256 of every template's
/// text and [`PAGES_REVISION`] (not of `search.js` and `style.css`, which pages only link to
/// and the writer copies at every start). The tree records the one that wrote it; a master whose
/// fingerprint differs rewrites every page when it starts.
pub static TEMPLATES_FINGERPRINT: LazyLock<String> = LazyLock::new(|| {
    let mut hash = Sha256::new();
    hash.update(PAGES_REVISION.to_le_bytes());
    for text in [
        include_str!("../../../templates/base.html"),
        include_str!("../../../templates/home.html"),
        include_str!("../../../templates/project.html"),
        include_str!("../../../templates/alias.html"),
        include_str!("../../../templates/simple/index.html"),
        include_str!("../../../templates/simple/project.html"),
        include_str!("../../../templates/packages.html"),
    ] {
        hash.update((text.len() as u64).to_le_bytes());
        hash.update(text.as_bytes());
    }
    hex::encode(hash.finalize())
});

/// The pages' HTML escaper (configured in `master/askama.toml`): `&`, `<`, `>`, `"` and `'`
/// become `&amp;`, `&lt;`, `&gt;`, `&quot;` and `&#39;`, once.
#[derive(Debug, Clone, Copy)]
pub struct Html;

impl askama::filters::Escaper for Html {
    fn write_escaped_str<W: std::fmt::Write>(&self, mut dest: W, string: &str) -> std::fmt::Result {
        let mut last = 0;
        for (i, b) in string.bytes().enumerate() {
            let entity = match b {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                b'\'' => "&#39;",
                _ => continue,
            };
            dest.write_str(&string[last..i])?;
            dest.write_str(entity)?;
            last = i + 1;
        }
        dest.write_str(&string[last..])
    }
}

/// What is on disk for one project: the names in `simple/<package>/` and which build logs
/// exist.
#[derive(Debug, Default)]
pub struct OnDisk {
    /// File names in the project's simple directory (wheels and `.metadata` files).
    pub files: HashSet<String>,
    /// Builds whose log is written.
    pub logs: HashSet<BuildId>,
}

impl OnDisk {
    fn has(&self, name: &str) -> bool {
        self.files.contains(name)
    }

    fn has_metadata(&self, filename: &str) -> bool {
        self.files.contains(&format!("{filename}.metadata"))
    }

    fn has_provenance(&self, filename: &str) -> bool {
        self.files.contains(&format!("{filename}{}", provenance::SUFFIX))
    }
}

/// The releases' indexes, newest first: PEP 440 versions in PEP 440 order, then every
/// legacy (unparsable) version, by its text. Also gives each release's normalized PEP 440
/// text (None for a legacy version).
fn release_order(releases: &[ReleaseData]) -> (Vec<usize>, Vec<Option<String>>) {
    let parsed: Vec<_> = releases.iter().map(|r| parse_version(&r.version)).collect();
    let mut order: Vec<usize> = (0..releases.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| (parsed[i].is_some(), parsed[i].clone(), releases[i].version.clone());
        key(b).cmp(&key(a))
    });
    let normalized = parsed.iter().map(|v| v.as_ref().map(ToString::to_string)).collect();
    (order, normalized)
}

/// What a file name keeps unencoded in an `href`: ASCII letters, digits and `-._~`.
const FILE_NAME: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes a file name for an `href`: everything but ASCII letters, digits and
/// `-._~` (so a local version's `+` becomes `%2B`). The link text stays the plain name.
pub fn url_encode(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, FILE_NAME).to_string()
}

/// An upload time as PEP 700 wants it: UTC, microseconds, `Z`.
fn upload_time(at: &Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}


/// A count for people: 1,234,567.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ------------------------------------------------------------------------------------------
// The simple index (PEP 503, 592, 629, 658/714, 691, 700)
// ------------------------------------------------------------------------------------------

/// One file on a project's simple page.
#[derive(Debug, Clone)]
pub struct SimpleFile {
    /// The file's name (the link text, and the JSON `filename`).
    pub filename: String,
    /// Its URL relative to the page: the name, percent-encoded.
    pub url: String,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// `Requires-Python`, when the wheel says.
    pub requires_python: Option<String>,
    /// Yank reason (possibly empty) when the release is yanked.
    pub yanked: Option<String>,
    /// SHA-256 of the `.metadata` side file, when it is published.
    pub metadata_sha256: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// When it was published, PEP 700's format.
    pub upload_time: String,
}

/// What a project's simple pages list: the installable files and their versions.
#[derive(Debug, Clone, Default)]
pub struct SimpleProject {
    /// Files, newest release first, then by name.
    pub files: Vec<SimpleFile>,
    /// Normalized PEP 440 versions that have files, ascending.
    pub versions: Vec<String>,
}

impl SimpleProject {
    /// The installable files of a project: wheels of its own name, of releases with a PEP 440
    /// version (installers ignore the rest), that are on disk. Empty means the project gets no
    /// simple page.
    pub fn from_data(data: &ProjectData, disk: &OnDisk) -> SimpleProject {
        let (order, normalized) = release_order(&data.releases);
        let mut files = Vec::new();
        let mut versions = Vec::new();
        for &i in &order {
            let release = &data.releases[i];
            let Some(version) = &normalized[i] else { continue };
            let listed: Vec<&ProjectFile> = release
                .files
                .iter()
                .filter(|f| disk.has(&f.filename))
                .filter(|f| WheelName::parse(&f.filename).is_ok_and(|w| w.is_for(&data.package)))
                .collect();
            if !listed.is_empty() {
                versions.push(version.clone());
            }
            let mut entries: Vec<SimpleFile> = listed
                .into_iter()
                .map(|f| SimpleFile {
                    filename: f.filename.clone(),
                    url: url_encode(&f.filename),
                    sha256: f.sha256.to_ascii_lowercase(),
                    requires_python: f.requires_python.as_ref().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
                    yanked: release.yanked.clone(),
                    metadata_sha256: f
                        .metadata_sha256
                        .as_ref()
                        .filter(|_| disk.has_metadata(&f.filename))
                        .map(|h| h.trim().to_ascii_lowercase()),
                    size: f.size,
                    upload_time: upload_time(&f.uploaded),
                })
                .collect();
            entries.sort_by(|a, b| a.filename.cmp(&b.filename));
            files.extend(entries);
        }
        // Ascending, each once (two spellings of one version normalize alike).
        versions.reverse();
        versions.dedup();
        SimpleProject { files, versions }
    }

    /// Whether there is anything to list.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// `simple/<package>/index.html`.
#[derive(Debug, Template)]
#[template(path = "simple/project.html")]
pub struct SimplePage<'a> {
    /// The canonical name.
    pub name: &'a str,
    /// The files.
    pub files: &'a [SimpleFile],
    /// [`API_VERSION`].
    pub api_version: &'static str,
}

/// `simple/index.html`.
#[derive(Debug, Template)]
#[template(path = "simple/index.html")]
pub struct RootPage<'a> {
    /// Canonical names of the projects with a simple page, sorted.
    pub projects: Vec<&'a str>,
    /// [`API_VERSION`].
    pub api_version: &'static str,
}

#[derive(Serialize)]
struct JsonMeta {
    #[serde(rename = "api-version")]
    api_version: &'static str,
}

const META: JsonMeta = JsonMeta { api_version: API_VERSION };

#[derive(Serialize)]
struct JsonHashes<'a> {
    sha256: &'a str,
}

/// A file entry of a PEP 691 project page.
#[derive(Serialize)]
struct JsonFile<'a> {
    filename: &'a str,
    url: &'a str,
    hashes: JsonHashes<'a>,
    #[serde(rename = "requires-python", skip_serializing_if = "Option::is_none")]
    requires_python: Option<&'a str>,
    // PEP 714: only the new name in JSON (the old one crashes some pip releases).
    #[serde(rename = "core-metadata", skip_serializing_if = "Option::is_none")]
    core_metadata: Option<JsonHashes<'a>>,
    size: u64,
    #[serde(rename = "upload-time")]
    upload_time: &'a str,
    yanked: serde_json::Value,
}

#[derive(Serialize)]
struct JsonProject<'a> {
    meta: JsonMeta,
    name: &'a str,
    versions: &'a [String],
    files: Vec<JsonFile<'a>>,
}

/// `simple/<package>/index.json` (PEP 691 with PEP 700's additions).
pub fn simple_project_json(name: &str, project: &SimpleProject) -> Vec<u8> {
    let files = project
        .files
        .iter()
        .map(|f| JsonFile {
            filename: &f.filename,
            url: &f.url,
            hashes: JsonHashes { sha256: &f.sha256 },
            requires_python: f.requires_python.as_deref(),
            core_metadata: f.metadata_sha256.as_deref().map(|sha256| JsonHashes { sha256 }),
            size: f.size,
            upload_time: &f.upload_time,
            // PEP 592 in JSON: a non-empty reason, or true; an empty string would read as
            // "not yanked" to pip.
            yanked: match f.yanked.as_deref() {
                None => serde_json::Value::Bool(false),
                Some("") => serde_json::Value::Bool(true),
                Some(reason) => serde_json::Value::String(reason.to_string()),
            },
        })
        .collect();
    to_json(&JsonProject { meta: META, name, versions: &project.versions, files })
}

#[derive(Serialize)]
struct JsonRootEntry<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct JsonRoot<'a> {
    meta: JsonMeta,
    projects: Vec<JsonRootEntry<'a>>,
}

/// `simple/index.json`.
pub fn root_json<'a>(projects: impl Iterator<Item = &'a str>) -> Vec<u8> {
    to_json(&JsonRoot { meta: META, projects: projects.map(|name| JsonRootEntry { name }).collect() })
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs of strings and numbers into memory cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

// ------------------------------------------------------------------------------------------
// Project pages and project JSON
// ------------------------------------------------------------------------------------------

/// A column of the releases table.
#[derive(Debug, Clone)]
pub struct AbiColumn {
    /// The ABI tag.
    pub tag: String,
    /// Its tooltip.
    pub title: String,
}

/// A build-state cell.
#[derive(Debug, Clone)]
pub struct Cell {
    /// `success`, `fail`, `skip` or `pending` (also the cell's CSS class).
    pub status: &'static str,
    /// The build's id.
    pub build_id: Option<BuildId>,
    /// The build log's URL, when the log is written.
    pub log_url: Option<String>,
    /// What cross-checks of the build found, when it had any.
    pub check: Option<CheckNote>,
    /// When, where and how long the build ran, for its tooltip (empty without a build).
    pub detail: String,
    /// The last lines of a failed build's log.
    pub last_lines: String,
    /// Why a failed build failed, as the triage read it ("missing header zlib.h"; empty
    /// before it has, and for other builds).
    pub cause: String,
    /// The Debian package that ships what the failed build missed, when one is known.
    pub debian_package: Option<String>,
}

impl Cell {
    fn of(status: AbiStatus, build: Option<&BuildSummary>) -> (String, String) {
        let Some(build) = build else { return (String::new(), String::new()) };
        let when = build.built_at.format("%Y-%m-%d %H:%M UTC");
        let took = HumanDuration(Duration::from_secs(build.duration.as_secs()));
        match status {
            AbiStatus::Fail => (format!("failed {when} on {} after {took}", build.builder), build.last_lines.join("\n")),
            _ => (format!("built {when} by {} in {took}", build.builder), String::new()),
        }
    }
}

/// What the cross-checks of a build found, for people.
#[derive(Debug, Clone)]
pub struct CheckNote {
    /// `reproduced`, `not-reproduced` or `waiting` (also its CSS class).
    pub class: &'static str,
    /// A few words: "reproduced on 2 builders".
    pub text: String,
    /// What differs, a line each, or why the second build failed (empty when reproduced).
    pub detail: String,
}

impl CheckNote {
    fn of(found: &Reproducibility) -> CheckNote {
        match &found.latest {
            None => CheckNote { class: "waiting", text: "cross-check waiting".into(), detail: String::new() },
            Some(Verdict::Reproduced) => {
                CheckNote { class: "reproduced", text: format!("reproduced on {} builders", found.builders), detail: String::new() }
            }
            Some(Verdict::Differs { differences }) => {
                CheckNote { class: "not-reproduced", text: "not reproduced".into(), detail: differences.join("\n") }
            }
            Some(Verdict::Failed { reason }) => {
                CheckNote { class: "not-reproduced", text: "not reproduced: the second build failed".into(), detail: reason.clone() }
            }
        }
    }
}

/// A file link on a project page.
#[derive(Debug, Clone)]
pub struct FileLink {
    /// What tells it from the release's other files: its tags (`cp311-cp311-linux_armv7l`),
    /// or its name when that is not a wheel's.
    pub tags: String,
    /// Absolute path of the file.
    pub url: String,
    /// Size for people.
    pub size: String,
    /// Absolute path of its signed provenance, when it has one.
    pub provenance_url: Option<String>,
}

/// A row of the releases table.
#[derive(Debug, Clone)]
pub struct ReleaseRow {
    /// The version as PyPI published it.
    pub version: String,
    /// Whether it is a pre-release.
    pub prerelease: bool,
    /// Yank reason, when yanked.
    pub yanked: Option<String>,
    /// Why it is not built, empty when it is.
    pub skip: String,
    /// Release day, `YYYY-MM-DD`.
    pub released_day: String,
    /// One cell per column (None where the release has no state for that ABI).
    pub cells: Vec<Option<Cell>>,
    /// The release's published files.
    pub files: Vec<FileLink>,
}

/// A Python dependency on a project page.
#[derive(Debug, Clone)]
pub struct Dependency {
    /// The project's canonical name.
    pub name: String,
    /// The rest of the requirement: its extras, versions and environment marker, when it has
    /// them.
    pub rest: String,
    /// Whether to link to its page here (the writer decides).
    pub has_page: bool,
}

/// One of the project's own links.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectLink {
    /// What it is ("Homepage", "Source"): the METADATA's label.
    pub label: String,
    /// Its address, http or https.
    pub url: String,
}

/// The links a page may show from a wheel's `Home-page` and `Project-URL` headers: the wheel's
/// builder wrote them, so only http and https addresses of a sane length pass (no
/// `javascript:`), each once, at most [`MAX_LINKS`], labels cut short.
fn project_links(urls: &[(String, String)]) -> Vec<ProjectLink> {
    let mut links: Vec<ProjectLink> = Vec::new();
    for (label, url) in urls {
        let Ok(parsed) = url::Url::parse(url) else { continue };
        let normal = parsed.as_str();
        if !matches!(parsed.scheme(), "http" | "https") || normal.len() > MAX_LINK_URL || links.iter().any(|l| l.url == normal) {
            continue;
        }
        let label = crate::access_log::clean(label, MAX_LINK_LABEL);
        let label = if label.is_empty() { parsed.host_str().unwrap_or("link").to_string() } else { label };
        links.push(ProjectLink { label, url: parsed.into() });
        if links.len() == MAX_LINKS {
            break;
        }
    }
    links
}

/// How a project page names a file under its release: a wheel by what tells it from the
/// release's other files, its name less its project and version (`[build-]python-abi-platform`),
/// anything else by its name.
fn file_label(filename: &str) -> &str {
    WheelName::parse(filename).ok().and_then(|_| filename.strip_suffix(".whl")?.splitn(3, '-').nth(2)).unwrap_or(filename)
}

/// The summary a project's pages show: PyPI's, else the one in its wheel's METADATA.
fn summary(data: &ProjectData, metadata: Option<&CoreMetadata>) -> String {
    // Old setuptools wrote `UNKNOWN` for a summary it was not given, and PyPI keeps it.
    let given = |s: &&str| !s.trim().is_empty() && !s.trim().eq_ignore_ascii_case("UNKNOWN");
    if given(&data.description.as_str()) {
        return data.description.clone();
    }
    metadata.and_then(|m| m.summary.as_deref()).filter(given).map(|s| crate::access_log::clean(s, MAX_SUMMARY)).unwrap_or_default()
}

/// `project/<package>/index.html`.
#[derive(Debug, Template)]
#[template(path = "project.html")]
pub struct ProjectPage<'a> {
    /// Canonical name.
    pub package: &'a str,
    /// Display name.
    pub display_name: &'a str,
    /// Summary: PyPI's, else the wheel's own.
    pub description: String,
    /// The project's page on PyPI, when its address is configured.
    pub pypi_url: Option<String>,
    /// The project's own links (home page, source, documentation), from the wheel.
    pub links: Vec<ProjectLink>,
    /// Downloads from this index in the last 30 days, when the stats task has counted them.
    pub downloads_month: Option<String>,
    /// Whether the project has a simple page (something to install).
    pub has_simple: bool,
    /// Debian packages to install first (from the newest stable release with files).
    pub install_apt: Vec<String>,
    /// Its Python dependencies.
    pub pip_deps: Vec<Dependency>,
    /// The Pythons it installs on (`Requires-Python`, from the same file), when it says.
    pub requires_python: Option<String>,
    /// Table columns.
    pub abis: Vec<AbiColumn>,
    /// Table rows, newest release first.
    pub releases: Vec<ReleaseRow>,
    /// Published files in all.
    pub files_count: usize,
    /// Columns of the table (for the files rows' colspan).
    pub columns: usize,
    /// When the page was written.
    pub updated: String,
}

/// The ABI columns of a project's table: the farm's ABIs in build order, then any other ABI
/// the project's releases have a state for, by name.
fn abi_columns(data: &ProjectData, abis: &[BuildAbi]) -> Vec<AbiColumn> {
    let mut columns: Vec<AbiColumn> = Vec::new();
    let used: BTreeSet<&str> = data.releases.iter().flat_map(|r| r.abis.keys().map(String::as_str)).collect();
    for abi in abis {
        if used.contains(abi.tag.as_str()) {
            let title = if abi.position > 0 {
                format!("Python {}.{}", abi.position / 100, abi.position % 100)
            } else {
                abi.tag.clone()
            };
            columns.push(AbiColumn { tag: abi.tag.clone(), title });
        }
    }
    for tag in used {
        if !abis.iter().any(|a| a.tag == tag) {
            columns.push(AbiColumn { tag: tag.to_string(), title: format!("{tag} (no longer built)") });
        }
    }
    columns
}

fn status_name(status: AbiStatus) -> &'static str {
    match status {
        AbiStatus::Success => "success",
        AbiStatus::Fail => "fail",
        AbiStatus::Skip => "skip",
        AbiStatus::Pending => "pending",
    }
}

/// Everything both project documents need, worked out once.
#[derive(Debug)]
pub struct ProjectView<'a> {
    data: &'a ProjectData,
    order: Vec<usize>,
    columns: Vec<AbiColumn>,
    disk: &'a OnDisk,
    has_simple: bool,
}

impl<'a> ProjectView<'a> {
    /// A view of `data` as it stands on `disk`; `has_simple` says whether the project has a
    /// simple page.
    pub fn new(data: &'a ProjectData, abis: &[BuildAbi], disk: &'a OnDisk, has_simple: bool) -> ProjectView<'a> {
        let (order, _) = release_order(&data.releases);
        ProjectView { data, order, columns: abi_columns(data, abis), disk, has_simple }
    }

    fn releases(&self) -> impl Iterator<Item = &'a ReleaseData> + '_ {
        self.order.iter().map(|&i| &self.data.releases[i])
    }

    fn published<'r>(&self, release: &'r ReleaseData) -> impl Iterator<Item = &'r ProjectFile> + use<'r, '_> {
        release.files.iter().filter(|f| self.disk.has(&f.filename))
    }

    /// The absolute path of a published file, and of its signed provenance when it has one.
    fn file_urls(&self, filename: &str) -> (String, Option<String>) {
        let url = format!("/simple/{}/{}", self.data.package, url_encode(filename));
        let provenance = self.disk.has_provenance(filename).then(|| format!("{url}{}", provenance::SUFFIX));
        (url, provenance)
    }

    fn log_url(&self, build_id: Option<BuildId>) -> Option<String> {
        build_id.filter(|id| self.disk.logs.contains(id)).map(|id| format!("/{}", log_path(id)))
    }

    /// The first published file of the newest release that is neither a pre-release nor
    /// yanked: its dependencies are the ones the install instructions give.
    pub fn chosen_file(&self) -> Option<&'a ProjectFile> {
        self.releases()
            .filter(|r| r.yanked.is_none() && !is_prerelease(&r.version))
            .find_map(|r| self.published(r).next())
    }

    /// The project page; `metadata` is the METADATA of the file the install command is for
    /// ([`ProjectView::chosen_file`]), when it can be read: its summary, links and
    /// dependencies with their markers (without it, only the unconditional dependencies the
    /// database has); `downloads_month` the project's downloads in 30 days, when counted.
    pub fn page(
        &self,
        upstream_project_url: Option<&str>,
        now: &Timestamp,
        metadata: Option<&CoreMetadata>,
        downloads_month: Option<u64>,
    ) -> ProjectPage<'a> {
        let data = self.data;
        let chosen = self.chosen_file();
        // Each ABI's newest failure shows its last lines; older ones their log only, which
        // keeps a long history's page small.
        let mut failure_shown: HashSet<&str> = HashSet::new();
        let releases: Vec<ReleaseRow> = self
            .releases()
            .map(|r| ReleaseRow {
                version: r.version.clone(),
                prerelease: is_prerelease(&r.version),
                yanked: r.yanked.clone(),
                skip: r.skip.clone(),
                released_day: r.released.format("%Y-%m-%d").to_string(),
                cells: self
                    .columns
                    .iter()
                    .map(|column| {
                        r.abis.get(&column.tag).map(|(status, build_id)| {
                            let build = build_id.and_then(|id| self.data.builds.get(&id));
                            let (detail, mut last_lines) = Cell::of(*status, build);
                            let cause = build.and_then(|b| b.cause.as_ref()).filter(|_| *status == AbiStatus::Fail);
                            if *status == AbiStatus::Fail && !failure_shown.insert(column.tag.as_str()) {
                                last_lines.clear();
                            }
                            Cell {
                                status: status_name(*status),
                                build_id: *build_id,
                                log_url: self.log_url(*build_id),
                                check: r.reproducibility.get(&column.tag).map(CheckNote::of),
                                detail,
                                last_lines,
                                cause: cause.map(|c| c.class.describe(&c.detail)).unwrap_or_default(),
                                debian_package: cause.and_then(|c| c.debian_package.clone()),
                            }
                        })
                    })
                    .collect(),
                files: self
                    .published(r)
                    .map(|f| {
                        let (url, provenance_url) = self.file_urls(&f.filename);
                        FileLink { tags: file_label(&f.filename).to_string(), url, size: human_size(f.size), provenance_url }
                    })
                    .collect(),
            })
            .collect();
        ProjectPage {
            package: &data.package,
            display_name: &data.display_name,
            description: summary(data, metadata),
            pypi_url: upstream_url(upstream_project_url, &data.package),
            links: metadata.map(|m| project_links(&m.urls)).unwrap_or_default(),
            downloads_month: downloads_month.map(thousands),
            has_simple: self.has_simple,
            install_apt: chosen.map(|f| f.dependencies.apt.clone()).unwrap_or_default(),
            pip_deps: match metadata {
                // The wheel's builder wrote them: a page shows a bounded number, each cut short.
                Some(metadata) => metadata
                    .requires_dist
                    .iter()
                    .filter_map(|r| split_requirement(r))
                    .take(MAX_SHOWN_REQUIREMENTS)
                    .map(|(name, rest)| Dependency { name, rest: crate::access_log::clean(rest, MAX_REQUIREMENT_TEXT), has_page: false })
                    .collect(),
                None => chosen
                    .map(|f| f.dependencies.pip.iter().map(|name| Dependency { name: name.clone(), rest: String::new(), has_page: false }).collect())
                    .unwrap_or_default(),
            },
            requires_python: chosen.and_then(|f| f.requires_python.clone()).filter(|r| !r.trim().is_empty()),
            files_count: releases.iter().map(|r| r.files.len()).sum(),
            columns: 2 + self.columns.len(),
            abis: self.columns.clone(),
            releases,
            updated: now.to_rfc3339_opts(SecondsFormat::Secs, true),
        }
    }

    /// The project JSON (`project/<package>/json/index.json`); `metadata` as for
    /// [`ProjectView::page`].
    pub fn json(&self, upstream_project_url: Option<&str>, metadata: Option<&CoreMetadata>) -> Vec<u8> {
        let data = self.data;
        let releases: Vec<(String, JsonRelease)> = self
            .releases()
            .map(|r| {
                let files = self
                    .published(r)
                    .map(|f| {
                        let (file_url, provenance_url) = self.file_urls(&f.filename);
                        let file = JsonProjectFile {
                            file_url,
                            provenance_url,
                            filehash: f.sha256.clone(),
                            filesize: f.size,
                            builder_abi: f.builder_abi.clone(),
                            file_abi_tag: f.abi_tag.clone(),
                            platform: f.platform_tag.clone(),
                            requires_python: f.requires_python.clone(),
                            uploaded: upload_time(&f.uploaded),
                            apt_dependencies: f.dependencies.apt.clone(),
                            pip_dependencies: f.dependencies.pip.clone(),
                        };
                        (f.filename.clone(), file)
                    })
                    .collect();
                let builds = r
                    .abis
                    .iter()
                    .map(|(abi, (status, build_id))| {
                        let cause = build_id
                            .and_then(|id| self.data.builds.get(&id))
                            .and_then(|b| b.cause.as_ref())
                            .filter(|_| *status == AbiStatus::Fail);
                        let build = JsonBuild {
                            status: status_name(*status),
                            build_id: *build_id,
                            log_url: self.log_url(*build_id),
                            cross_check: r.reproducibility.get(abi).map(JsonCheck::of),
                            failure: cause.map(|c| JsonFailure {
                                class: c.class.name(),
                                detail: c.detail.clone(),
                                debian_package: c.debian_package.clone(),
                            }),
                        };
                        (abi.clone(), build)
                    })
                    .collect();
                let release = JsonRelease {
                    released: r.released.format("%Y-%m-%d %H:%M:%S").to_string(),
                    prerelease: is_prerelease(&r.version),
                    yanked: r.yanked.is_some(),
                    yank_reason: r.yanked.clone(),
                    skip_reason: r.skip.clone(),
                    files: Ordered(files),
                    builds,
                };
                (r.version.clone(), release)
            })
            .collect();
        let doc = JsonProjectDoc {
            package: &data.package,
            display_name: &data.display_name,
            summary: summary(data, metadata),
            project_urls: metadata.map(|m| project_links(&m.urls)).unwrap_or_default(),
            aliases: &data.aliases,
            project_url: format!("/project/{}/", data.package),
            simple_url: self.has_simple.then(|| format!("/simple/{}/", data.package)),
            pypi_url: upstream_url(upstream_project_url, &data.package),
            releases: Ordered(releases),
        };
        to_json(&doc)
    }
}

/// A JSON object whose keys keep the order given.
#[derive(Debug)]
struct Ordered<T>(Vec<(String, T)>);

impl<T: Serialize> Serialize for Ordered<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct JsonProjectDoc<'a> {
    package: &'a str,
    display_name: &'a str,
    summary: String,
    project_urls: Vec<ProjectLink>,
    aliases: &'a [String],
    project_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    simple_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pypi_url: Option<String>,
    releases: Ordered<JsonRelease>,
}

#[derive(Serialize)]
struct JsonRelease {
    released: String,
    prerelease: bool,
    yanked: bool,
    yank_reason: Option<String>,
    skip_reason: String,
    files: Ordered<JsonProjectFile>,
    builds: BTreeMap<String, JsonBuild>,
}

#[derive(Serialize)]
struct JsonProjectFile {
    file_url: String,
    /// The signed provenance (a DSSE envelope of an in-toto statement), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    provenance_url: Option<String>,
    filehash: String,
    filesize: u64,
    builder_abi: String,
    file_abi_tag: String,
    platform: String,
    requires_python: Option<String>,
    uploaded: String,
    apt_dependencies: Vec<String>,
    pip_dependencies: Vec<String>,
}

#[derive(Serialize)]
struct JsonBuild {
    status: &'static str,
    build_id: Option<BuildId>,
    log_url: Option<String>,
    /// What cross-checks of the build found, when it had any.
    #[serde(skip_serializing_if = "Option::is_none")]
    cross_check: Option<JsonCheck>,
    /// Why a failed build failed, once the triage has read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<JsonFailure>,
}

/// A failed build's cause in the project JSON: `{"class": "missing-header", "detail":
/// "zlib.h", "debian_package": "zlib1g-dev"}`.
#[derive(Serialize)]
struct JsonFailure {
    class: &'static str,
    detail: String,
    debian_package: Option<String>,
}

/// A build's cross-checks in the project JSON: `{"verdict": "reproduced", "builders": 2}`,
/// `{"verdict": "differs", "differences": [...]}`, `{"verdict": "failed", "reason": ...}` or
/// `{"verdict": "waiting"}`.
#[derive(Serialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
enum JsonCheck {
    Waiting,
    Reproduced { builders: u32 },
    Differs { differences: Vec<String> },
    Failed { reason: String },
}

impl JsonCheck {
    fn of(found: &Reproducibility) -> JsonCheck {
        match &found.latest {
            None => JsonCheck::Waiting,
            Some(Verdict::Reproduced) => JsonCheck::Reproduced { builders: found.builders },
            Some(Verdict::Differs { differences }) => JsonCheck::Differs { differences: differences.clone() },
            Some(Verdict::Failed { reason }) => JsonCheck::Failed { reason: reason.clone() },
        }
    }
}

/// The page of a former name of a project (a PyPI rename), at `project/<alias>/index.html`,
/// sending people on to the project's page. The `piwheels:alias-of` meta tag marks it, so the
/// writer can tell it from a project's own page.
#[derive(Debug, Template)]
#[template(path = "alias.html")]
pub struct AliasPage<'a> {
    /// The former name, canonical.
    pub alias: &'a str,
    /// The project.
    pub target: &'a str,
}

/// The marker an alias page carries, with the project it points at.
pub fn alias_marker(target: &str) -> String {
    format!("<meta name=\"piwheels:alias-of\" content=\"{target}\">")
}

/// The former names of a project that need an alias page: spellings whose canonical form is
/// another name (spellings of the same canonical name need nothing: the web server redirects
/// them to the canonical URL).
pub fn former_names(data: &ProjectData) -> Vec<String> {
    let names: BTreeSet<String> =
        data.aliases.iter().map(|a| canonicalize(a)).filter(|c| *c != data.package).collect();
    names.into_iter().collect()
}

// ------------------------------------------------------------------------------------------
// Home page and search index
// ------------------------------------------------------------------------------------------

/// A row of the home page's build table.
#[derive(Debug, Clone)]
pub struct AbiFigures {
    /// The ABI.
    pub tag: String,
    /// Builds in the last hour.
    pub built: String,
    /// Builds waiting.
    pub pending: String,
}

/// The upstream index's page of `package`, from the `{project}` pattern, when there is one.
fn upstream_url(pattern: Option<&str>, package: &str) -> Option<String> {
    pattern.map(|pattern| pattern.replace("{project}", package))
}

/// `index.html`.
#[derive(Debug, Template)]
#[template(path = "home.html")]
pub struct HomePage {
    /// Packages with files.
    pub packages_built: String,
    /// Files.
    pub files_count: String,
    /// Their size.
    pub builds_size: String,
    /// Downloads ever.
    pub downloads_all: String,
    /// Downloads in 30 days.
    pub downloads_month: String,
    /// Downloads in the last hour.
    pub downloads_hour: String,
    /// Releases in the last hour.
    pub new_last_hour: String,
    /// Cross-checks that reproduced their builds.
    pub reproduced: String,
    /// Cross-checks that did not.
    pub not_reproduced: String,
    /// Free space on the output disk.
    pub disk_free: String,
    /// Its size.
    pub disk_size: String,
    /// Per ABI.
    pub abis: Vec<AbiFigures>,
    /// Environment drifts among the builders, one sentence each.
    pub drifts: Vec<String>,
    /// The index's URL for the configuration examples.
    pub index_url: String,
    /// When the figures were taken (RFC 3339).
    pub updated: String,
    /// The same for people.
    pub updated_text: String,
}

impl HomePage {
    /// The home page for these figures; `site_url` is the site's public address, when known.
    pub fn new(stats: &MasterStats, checks: CheckCounts, site_url: Option<&str>) -> HomePage {
        let tags: BTreeSet<&String> = stats.builds_last_hour.keys().chain(stats.builds_pending.keys()).collect();
        HomePage {
            packages_built: thousands(stats.packages_built),
            files_count: thousands(stats.files_count),
            builds_size: human_size(stats.builds_size),
            downloads_all: thousands(stats.downloads_all),
            downloads_month: thousands(stats.downloads_last_month),
            downloads_hour: thousands(stats.downloads_last_hour),
            new_last_hour: thousands(stats.new_last_hour),
            reproduced: thousands(checks.reproduced),
            not_reproduced: thousands(checks.not_reproduced),
            disk_free: human_size(stats.host.disk_free),
            disk_size: human_size(stats.host.disk_size),
            abis: tags
                .into_iter()
                .map(|tag| AbiFigures {
                    tag: tag.clone(),
                    built: thousands(stats.builds_last_hour.get(tag).copied().unwrap_or(0)),
                    pending: thousands(stats.builds_pending.get(tag).copied().unwrap_or(0)),
                })
                .collect(),
            drifts: Vec::new(),
            index_url: match site_url {
                Some(url) => format!("{}/simple", url.trim_end_matches('/')),
                None => "https://THIS-SITE/simple".to_string(),
            },
            updated: stats.at.to_rfc3339_opts(SecondsFormat::Secs, true),
            updated_text: stats.at.format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

/// `packages/index.html`: every package with files, linked to its project page; the search
/// box's target without JavaScript.
#[derive(Debug, Template)]
#[template(path = "packages.html")]
pub struct PackagesPage<'a> {
    /// Canonical names, sorted.
    pub projects: Vec<&'a str>,
}

/// `packages.json`: `[[name, downloads in 30 days, downloads ever], ...]` for every one of
/// `names` (sorted, without repeats), for the search box; the counts from `downloads`, 0 for a
/// name it lacks.
pub fn search_json(names: &[&str], downloads: &HashMap<String, (u64, u64)>) -> Vec<u8> {
    let rows: Vec<(&str, u64, u64)> = names
        .iter()
        .map(|name| {
            let (recent, all) = downloads.get(*name).copied().unwrap_or_default();
            (*name, recent, all)
        })
        .collect();
    to_json(&rows)
}

/// Sorts names for listing (byte order) without duplicates.
pub fn sorted_names<'a>(names: impl Iterator<Item = &'a String>) -> Vec<&'a str> {
    let mut names: Vec<&str> = names.map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Newest first, for tests and callers that only need the order of version strings.
pub fn newest_first(versions: &[&str]) -> Vec<String> {
    let parsed: Vec<_> = versions.iter().map(|v| parse_version(v)).collect();
    let mut order: Vec<usize> = (0..versions.len()).collect();
    order.sort_by_key(|&i| Reverse((parsed[i].is_some(), parsed[i].clone(), versions[i])));
    order.into_iter().map(|i| versions[i].to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_by_pep_440_with_legacy_versions_last() {
        assert_eq!(
            newest_first(&["1.0", "1.0rc1", "1.0.post1", "0.9", "1.0.dev0", "banana", "10.0", "2.0a1"]),
            ["10.0", "2.0a1", "1.0.post1", "1.0", "1.0rc1", "1.0.dev0", "0.9", "banana"]
        );
    }

    #[test]
    fn the_summary_is_pypi_s_else_the_wheel_s_and_unknown_is_none() {
        let data = |description: &str| ProjectData {
            package: "foo".into(),
            display_name: "foo".into(),
            description: description.into(),
            aliases: Vec::new(),
            releases: Vec::new(),
            builds: BTreeMap::new(),
        };
        let wheel = |summary: &str| CoreMetadata { summary: Some(summary.into()), ..CoreMetadata::default() };
        assert_eq!(summary(&data("From PyPI"), Some(&wheel("From the wheel"))), "From PyPI");
        assert_eq!(summary(&data(" "), Some(&wheel("From the wheel"))), "From the wheel");
        assert_eq!(summary(&data("UNKNOWN"), Some(&wheel("From the wheel"))), "From the wheel");
        assert_eq!(summary(&data(""), Some(&wheel("UNKNOWN"))), "");
        assert_eq!(summary(&data(""), None), "");
        assert_eq!(summary(&data(""), Some(&wheel(&"x".repeat(500)))).chars().count(), MAX_SUMMARY);
    }

    #[test]
    fn a_wheel_s_links_are_bounded_and_only_http() {
        let mut urls: Vec<(String, String)> = vec![
            ("".into(), "https://example.org/".into()),
            ("x".repeat(100), "http://example.org/a".into()),
            ("Script".into(), "javascript:alert(1)".into()),
            ("Long".into(), format!("https://example.org/{}", "a".repeat(600))),
            ("Again".into(), "https://example.org/".into()),
        ];
        urls.extend((0..20).map(|n| (format!("L{n}"), format!("https://example.org/{n}"))));
        let links = project_links(&urls);
        assert_eq!(links.len(), MAX_LINKS);
        assert_eq!((links[0].label.as_str(), links[0].url.as_str()), ("example.org", "https://example.org/"));
        assert_eq!(links[1].label.chars().count(), MAX_LINK_LABEL);
        assert_eq!(links[2].label, "L0");
        assert!(links.iter().all(|l| l.url.starts_with("http") && l.url.len() <= MAX_LINK_URL));
    }

    #[test]
    fn files_are_labelled_by_their_tags_and_build_tag() {
        assert_eq!(file_label("numpy-1.0-cp311-cp311-linux_armv7l.whl"), "cp311-cp311-linux_armv7l");
        assert_eq!(file_label("numpy-1.0-1-cp311-cp311-linux_armv7l.whl"), "1-cp311-cp311-linux_armv7l");
        assert_eq!(file_label("numpy-1.0.tar.gz"), "numpy-1.0.tar.gz");
    }

    #[test]
    fn file_urls_are_percent_encoded() {
        assert_eq!(url_encode("foo-1.0+local-py3-none-any.whl"), "foo-1.0%2Blocal-py3-none-any.whl");
        assert_eq!(url_encode("a b"), "a%20b");
    }

    #[test]
    fn figures_for_people() {
        // Binary units are named as such: 574 KiB is not "574 KB".
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(574 << 10), "574.0 KiB");
        assert_eq!(human_size(5 << 20), "5.0 MiB");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
