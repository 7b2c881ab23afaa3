//! The output tree's writer: turns project data into pages on disk, writes the home page,
//! the search index and build logs, and removes what deletions leave behind. It holds the one
//! piece of state the pages need beyond the database: which projects have a simple page, the
//! list the root of the simple index is made from.
//!
//! It only touches the file system; the task in [`super`] decides when to call it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;

use askama::Template;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use piwheels_common::protocols::{BuildId, MasterStats, Timestamp};
use piwheels_common::inspect::parse_metadata;
use piwheels_common::provenance;

use crate::atomic_file::{Durability, write_atomically};
use crate::metrics::metrics;

/// Most environment drifts the home page lists.
const MAX_DRIFTS_SHOWN: usize = 20;
use crate::calls::db::{BuildAbi, ProjectData, RewriteScope, SearchEntry};
use crate::calls::tasks::CheckCounts;

use super::layout::{
    self, Layout, is_safe_file_name, is_safe_name, remove_dir_if_empty, remove_file, remove_tree,
    write_if_changed,
};
use super::pages::{
    API_VERSION, AliasPage, HomePage, OnDisk, PackagesPage, ProjectView, RootPage, SEARCH_SCRIPT, STYLESHEET, SimplePage, SimpleProject,
    alias_marker, former_names, root_json, search_json, simple_project_json, sorted_names,
};

/// Settings of the pages' contents.
#[derive(Debug, Clone, Default)]
pub struct PageOptions {
    /// Where the upstream index shows a project, `{project}` standing for its canonical name,
    /// for links from project pages; None for no link.
    pub upstream_project_url: Option<String>,
    /// The site's public address (e.g. `https://www.example.org`), for the configuration
    /// examples on the home page; None shows a placeholder.
    pub site_url: Option<String>,
}

/// What writing one project left of its simple page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// It has a simple page.
    Listed,
    /// It has nothing to install, so no simple page.
    Unlisted,
}

/// Writes the output tree.
#[derive(Debug)]
pub struct IndexWriter {
    layout: Layout,
    options: PageOptions,
    /// Projects that have a simple page.
    listed: BTreeSet<String>,
    /// Whether the root of the simple index is out of date (with the package list, the
    /// search index and the files every page loads, written with it).
    root_dirty: bool,
    /// The signing key's public half (PEM), served beside the pages; written with the root.
    public_key: Option<String>,
    /// Each package's downloads in 30 days and ever, as the stats task last sent them, for
    /// the search index.
    downloads: HashMap<String, (u64, u64)>,
    /// The deflate state every log is compressed with: making a fresh one for each log zeroes
    /// some hundreds of kilobytes, a fifth of the master's user time per build.
    deflate: std::sync::Mutex<Compress>,
    /// The tree's root, open for as long as the writer is (see [`layout::sync_tree`]).
    root_dir: fs::File,
}

/// The download counts of a search index (`[[name, 30 days, ever], ...]`); none when it
/// cannot be read. Its zeros are left out: they may be packages never counted.
fn downloads_in(search_index: &[u8]) -> HashMap<String, (u64, u64)> {
    let entries: Vec<(String, u64, u64)> = serde_json::from_slice(search_index).unwrap_or_default();
    entries.into_iter().filter(|&(_, recent, all)| (recent, all) != (0, 0)).map(|(name, recent, all)| (name, (recent, all))).collect()
}

fn render<T: Template>(page: &T) -> io::Result<String> {
    page.render().map_err(|e| io::Error::other(format!("cannot render a page: {e}")))
}

impl IndexWriter {
    /// Prepares the tree at `layout`: makes its top directories and finds the projects that
    /// have a simple page already (those with `simple/<name>/index.html`).
    pub fn open(layout: Layout, options: PageOptions) -> io::Result<IndexWriter> {
        for dir in [layout.root().to_path_buf(), layout.simple_dir(), layout.project_root(), layout.root().join("logs")] {
            fs::create_dir_all(&dir).map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut listed = BTreeSet::new();
        for name in dir_names(&layout.simple_dir())? {
            if is_safe_name(&name) && layout.simple_package(&name).join("index.html").is_file() {
                listed.insert(name);
            }
        }
        // Written once after every start: a crash may have come while it waited for its turn.
        let root_dirty = true;
        let root_dir = fs::File::open(layout.root())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", layout.root().display())))?;
        // The download counts the search index holds, until the stats task sends new ones:
        // pages written meanwhile keep showing them.
        let downloads = fs::read(layout.root().join("packages.json")).ok().map(|bytes| downloads_in(&bytes)).unwrap_or_default();
        Ok(IndexWriter {
            layout,
            options,
            listed,
            root_dirty,
            public_key: None,
            downloads,
            deflate: std::sync::Mutex::new(Compress::new(Compression::default(), false)),
            root_dir,
        })
    }

    /// The tree's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The projects with a simple page.
    pub fn listed(&self) -> &BTreeSet<String> {
        &self.listed
    }

    /// Whether the root of the simple index needs writing.
    pub fn root_dirty(&self) -> bool {
        self.root_dirty
    }

    /// What is on disk for a project: its simple directory's names, and which of the builds
    /// its releases name have a log.
    fn on_disk(&self, data: &ProjectData) -> io::Result<OnDisk> {
        let files: HashSet<String> = dir_names(&self.layout.simple_package(&data.package))?.into_iter().collect();
        let builds: BTreeSet<BuildId> =
            data.releases.iter().flat_map(|r| r.abis.values().filter_map(|(_, id)| *id)).collect();
        let logs = builds.into_iter().filter(|id| self.layout.log(*id).is_file()).collect();
        Ok(OnDisk { files, logs })
    }

    /// Writes a project's pages: with `Both`, its simple pages too (or removes them when it has
    /// nothing left to install). `abis` are the farm's ABIs in build order; `now` dates the page.
    pub fn write_project(
        &mut self,
        data: &ProjectData,
        abis: &[BuildAbi],
        scope: RewriteScope,
        now: &Timestamp,
    ) -> io::Result<Written> {
        let written = self.write_project_shared(data, abis, scope, now)?;
        self.note(&data.package, written);
        Ok(written)
    }

    /// Records what [`IndexWriter::write_project_shared`] did to a project's simple page.
    pub fn note(&mut self, package: &str, written: Written) {
        let changed = match written {
            Written::Listed => self.listed.insert(package.to_string()),
            Written::Unlisted => self.listed.remove(package),
        };
        self.root_dirty |= changed;
    }

    /// [`IndexWriter::write_project`] without recording the outcome, so that several threads
    /// can write projects at once; the caller passes each outcome to [`IndexWriter::note`].
    pub fn write_project_shared(
        &self,
        data: &ProjectData,
        abis: &[BuildAbi],
        scope: RewriteScope,
        now: &Timestamp,
    ) -> io::Result<Written> {
        let package = data.package.as_str();
        if !is_safe_name(package) {
            return Err(io::Error::other(format!("refusing to write pages for the unsafe name {package:?}")));
        }
        let disk = self.on_disk(data)?;
        let simple = SimpleProject::from_data(data, &disk);
        let has_simple = if scope == RewriteScope::Both {
            let dir = self.layout.simple_package(package);
            if simple.is_empty() {
                remove_file(&dir.join("index.html"))?;
                remove_file(&dir.join("index.json"))?;
                remove_dir_if_empty(&dir)?;
                false
            } else {
                let page = SimplePage { name: package, files: &simple.files, api_version: API_VERSION };
                write_if_changed(&dir.join("index.html"), render(&page)?.as_bytes())?;
                write_if_changed(&dir.join("index.json"), &simple_project_json(package, &simple))?;
                true
            }
        } else {
            self.listed.contains(package)
        };
        let view = ProjectView::new(data, abis, &disk, has_simple);
        let pypi = self.options.upstream_project_url.as_deref();
        // The summary, links and dependencies with their markers, from the published wheel's
        // own METADATA.
        let metadata = view
            .chosen_file()
            .and_then(|file| fs::read(self.layout.simple_package(package).join(format!("{}.metadata", file.filename))).ok())
            .map(|metadata| parse_metadata(&metadata));
        let downloads = self.downloads.get(package).map(|(recent, _)| *recent);
        let mut page = view.page(pypi, now, metadata.as_ref(), downloads);
        // A dependency is linked when it has wheels here, so its page certainly exists (a
        // project the farm does not know has none; one first built later is linked at this
        // page's next rewrite). Asked of memory, not the disk: a page lists up to 100.
        for dependency in &mut page.pip_deps {
            dependency.has_page = dependency.name == package || self.listed.contains(&dependency.name);
        }
        // This replaces a former name's alias page that stood here: the project wins.
        write_if_changed(&self.layout.project_dir(package).join("index.html"), render(&page)?.as_bytes())?;
        write_if_changed(&self.layout.project_json_dir(package).join("index.json"), &view.json(pypi, metadata.as_ref()))?;
        for alias in former_names(data) {
            self.write_alias(&alias, package)?;
        }
        metrics().page_written("project");
        Ok(if has_simple { Written::Listed } else { Written::Unlisted })
    }

    /// Writes the page of a former name, unless a project's own pages are there.
    fn write_alias(&self, alias: &str, target: &str) -> io::Result<()> {
        if !is_safe_name(alias) || self.layout.project_json_dir(alias).exists() {
            return Ok(());
        }
        let page = AliasPage { alias, target };
        write_if_changed(&self.layout.project_dir(alias).join("index.html"), render(&page)?.as_bytes())
    }

    /// Removes everything of a project that no longer exists: its simple directory (pages,
    /// wheels, `.metadata` files), its project pages, and the alias pages of its former names
    /// (found in the project JSON it had).
    pub fn remove_project(&mut self, package: &str) -> io::Result<()> {
        if !is_safe_name(package) {
            return Err(io::Error::other(format!("refusing to remove the unsafe name {package:?}")));
        }
        let project_dir = self.layout.project_dir(package);
        if is_alias_page(&project_dir.join("index.html")) && !self.layout.project_json_dir(package).exists() {
            // Only a former name of another project lives here: that project looks after it.
            return Ok(());
        }
        let json_path = self.layout.project_json_dir(package).join("index.json");
        let aliases = fs::read(&json_path).ok().and_then(|bytes| aliases_in(&bytes)).unwrap_or_default();
        remove_tree(&self.layout.simple_package(package))?;
        remove_tree(&project_dir)?;
        for alias in aliases {
            let dir = self.layout.project_dir(&alias);
            if is_safe_name(&alias) && alias_target(&dir.join("index.html")).as_deref() == Some(package) {
                remove_tree(&dir)?;
            }
        }
        if self.listed.remove(package) {
            self.root_dirty = true;
        }
        Ok(())
    }

    /// Removes published files of a package (with their `.metadata` and provenance side files) and the logs of
    /// builds. Names that are not plain file names are refused (logged, skipped).
    pub fn remove_files(&self, package: &str, files: &[String], builds: &[BuildId]) -> io::Result<()> {
        if !is_safe_name(package) {
            return Err(io::Error::other(format!("refusing to remove files of the unsafe name {package:?}")));
        }
        let dir = self.layout.simple_package(package);
        for file in files {
            if !is_safe_file_name(file) {
                tracing::warn!("not removing {file:?} of {package}: not a plain file name");
                continue;
            }
            remove_file(&dir.join(file))?;
            remove_file(&dir.join(format!("{file}.metadata")))?;
            remove_file(&dir.join(format!("{file}{}", provenance::SUFFIX)))?;
        }
        for &build in builds {
            self.remove_log(build)?;
        }
        Ok(())
    }

    /// Writes the root of the simple index (HTML and JSON) from the listed projects.
    /// Writes the root of the simple index, the package list and the search index: the
    /// projects with a simple page.
    pub fn write_root(&mut self) -> io::Result<()> {
        // The search box's script, the stylesheet and the public key, here rather than at the
        // start: a full disk must not keep the index writer from starting, and the root is
        // written again until it succeeds.
        write_if_changed(&self.layout.root().join("search.js"), SEARCH_SCRIPT.as_bytes())?;
        write_if_changed(&self.layout.root().join("style.css"), STYLESHEET.as_bytes())?;
        if let Some(pem) = &self.public_key {
            write_if_changed(&self.layout.root().join(provenance::PUBLIC_KEY_FILE), pem.as_bytes())?;
        }
        let projects = sorted_names(self.listed.iter());
        let page = RootPage { projects: projects.clone(), api_version: API_VERSION };
        let simple = self.layout.simple_dir();
        write_if_changed(&simple.join("index.html"), render(&page)?.as_bytes())?;
        write_if_changed(&simple.join("index.json"), &root_json(projects.iter().copied()))?;
        let list = self.layout.root().join("packages");
        fs::create_dir_all(&list)?;
        write_if_changed(&list.join("index.html"), render(&PackagesPage { projects: projects.clone() })?.as_bytes())?;
        write_if_changed(&self.layout.root().join("packages.json"), &search_json(&projects, &self.downloads))?;
        self.root_dirty = false;
        metrics().page_written("root");
        Ok(())
    }

    /// Writes the home page.
    pub fn write_home(&self, stats: &MasterStats, checks: CheckCounts, drifts: &[String]) -> io::Result<()> {
        let mut page = HomePage::new(stats, checks, self.options.site_url.as_deref());
        page.drifts = drifts.iter().take(MAX_DRIFTS_SHOWN).cloned().collect();
        write_atomically(&self.layout.root().join("index.html"), render(&page)?.as_bytes(), Durability::Cached)?;
        metrics().page_written("home");
        Ok(())
    }

    /// Takes the packages' download counts and writes the search index with them.
    pub fn write_search(&mut self, entries: &[SearchEntry]) -> io::Result<()> {
        self.downloads = entries.iter().map(|e| (e.package.clone(), (e.downloads_recent, e.downloads_all))).collect();
        let projects = sorted_names(self.listed.iter());
        write_if_changed(&self.layout.root().join("packages.json"), &search_json(&projects, &self.downloads))?;
        metrics().page_written("search");
        Ok(())
    }

    /// Writes the signed provenance of a published file beside it (replacing an earlier one:
    /// a file that moved to a later build is described by that build).
    pub fn write_provenance(&self, package: &str, filename: &str, envelope: &[u8]) -> io::Result<()> {
        if !is_safe_name(package) || !is_safe_file_name(filename) {
            return Err(io::Error::other(format!("refusing to write the provenance of {package:?} {filename:?}")));
        }
        let path = self.layout.simple_package(package).join(format!("{filename}{}", provenance::SUFFIX));
        write_if_changed(&path, envelope)?;
        metrics().page_written("provenance");
        Ok(())
    }

    /// Sets the master's public signing key, written at the root of the tree with the root.
    pub fn set_public_key(&mut self, pem: String) {
        self.public_key = Some(pem);
        self.root_dirty = true;
    }

    /// Writes a build's log, gzipped (replacing any earlier log of the same id).
    pub fn write_log(&self, build_id: BuildId, output: &str) -> io::Result<()> {
        if build_id <= 0 {
            return Err(io::Error::other(format!("no log for build id {build_id}")));
        }
        write_atomically(&self.layout.log(build_id), &self.gzip(output.as_bytes())?, Durability::Cached)?;
        metrics().page_written("log");
        Ok(())
    }

    /// `data` as one gzip member (RFC 1952: header, raw deflate, CRC-32 and length).
    fn gzip(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut deflate = self.deflate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        deflate.reset();
        // Magic, deflate, no flags, no time, no extra flags, unknown OS.
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        out.reserve(data.len() / 4 + 64);
        let mut input = data;
        loop {
            if out.capacity() - out.len() < 4096 {
                out.reserve(out.len().max(4096));
            }
            let before = deflate.total_in();
            let status = deflate.compress_vec(input, &mut out, FlushCompress::Finish).map_err(io::Error::other)?;
            input = &input[usize::try_from(deflate.total_in() - before).unwrap_or(input.len())..];
            if status == Status::StreamEnd {
                break;
            }
        }
        let mut crc = Crc::new();
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE is the length modulo 2^32.
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        Ok(out)
    }

    /// Removes a build's log, and its directories when they become empty.
    fn remove_log(&self, build_id: BuildId) -> io::Result<()> {
        let path = self.layout.log(build_id);
        if remove_file(&path)? {
            let logs = self.layout.root().join("logs");
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| *d != logs) {
                remove_dir_if_empty(d)?;
                dir = d.parent();
            }
        }
        Ok(())
    }

    /// Records that the tree was fully written by these templates.
    pub fn write_stamp(&self, fingerprint: &str) -> io::Result<()> {
        write_atomically(&self.layout.stamp(), fingerprint.as_bytes(), Durability::Cached)
    }

    /// Whether the tree was fully written by these templates.
    pub fn stamp_matches(&self, fingerprint: &str) -> bool {
        fs::read(self.layout.stamp()).is_ok_and(|s| s == fingerprint.as_bytes())
    }

    /// Makes what was written durable (see [`layout::sync_tree`]).
    pub fn sync(&self) -> io::Result<()> {
        layout::sync_tree(&self.root_dir)
    }

    /// Names of projects that have pages or files on disk without being in `known`: the
    /// directories of `simple/` and `project/` (leaving out former names' alias pages whose
    /// project is known). What a full rewrite must remove.
    pub fn strays(&self, known: &HashSet<String>) -> io::Result<BTreeSet<String>> {
        let mut strays = BTreeSet::new();
        for name in dir_names(&self.layout.simple_dir())? {
            if is_safe_name(&name) && !known.contains(&name) && self.layout.simple_package(&name).is_dir() {
                strays.insert(name);
            }
        }
        for name in dir_names(&self.layout.project_root())? {
            if !is_safe_name(&name) || known.contains(&name) || !self.layout.project_dir(&name).is_dir() {
                continue;
            }
            let page = self.layout.project_dir(&name).join("index.html");
            match alias_target(&page) {
                Some(target) if known.contains(&target) => {}
                Some(_) => {
                    // The project this name pointed at is gone.
                    remove_tree(&self.layout.project_dir(&name))?;
                }
                None => {
                    strays.insert(name);
                }
            }
        }
        Ok(strays)
    }
}

/// The names in a directory (none when it is missing).
pub(crate) fn dir_names(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("cannot list {}: {e}", dir.display()))),
    };
    let mut names = Vec::new();
    for entry in entries {
        if let Some(name) = entry?.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// The project a former name's page points at, if `path` is such a page.
fn alias_target(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let start = text.find("<meta name=\"piwheels:alias-of\" content=\"")?;
    let rest = &text[start + "<meta name=\"piwheels:alias-of\" content=\"".len()..];
    let target = &rest[..rest.find('"')?];
    (text.contains(&alias_marker(target)) && is_safe_name(target)).then(|| target.to_string())
}

fn is_alias_page(path: &Path) -> bool {
    alias_target(path).is_some()
}

/// The former names listed in a project JSON document.
fn aliases_in(bytes: &[u8]) -> Option<Vec<String>> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let aliases = doc.get("aliases")?.as_array()?;
    Some(
        aliases
            .iter()
            .filter_map(|a| a.as_str())
            .map(piwheels_common::names::canonicalize)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn logs_are_gzip_members_any_decoder_reads_one_after_another() {
        let dir = tempfile::tempdir().unwrap();
        let writer = IndexWriter::open(Layout::new(dir.path()), PageOptions::default()).unwrap();
        let noisy: String = (0..300_000u32).map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26)).collect();
        for text in [String::new(), "a short log\n".to_string(), "line of a build log\n".repeat(200_000), noisy] {
            let gz = writer.gzip(text.as_bytes()).unwrap();
            let mut back = String::new();
            flate2::read::GzDecoder::new(gz.as_slice()).read_to_string(&mut back).unwrap();
            assert_eq!(back, text);
        }
    }
}
