//! The index's JSON API, as [`super::resolve`] reads it: a project's releases
//! (`{json}/{name}/json`) and a release's requirements (`{json}/{name}/{version}/json`), each
//! document read once, within its size bound, and counted against the documents a resolution
//! may read.

use std::collections::HashMap;
use std::io::Read as _;
use std::rc::Rc;
use std::str::FromStr;
use std::time::Duration;

use pep440_rs::{Version, VersionSpecifiers};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use piwheels_common::names::canonicalize;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ResolveError, shown};

/// Largest project document read (`{json}/{name}/json` lists every file of every release).
pub const MAX_PROJECT_DOCUMENT: u64 = 64 << 20;
/// Largest release document read (`{json}/{name}/{version}/json`, long descriptions included).
pub const MAX_RELEASE_DOCUMENT: u64 = 8 << 20;
/// Most releases a project's document may list.
pub const MAX_VERSIONS: usize = 20_000;
/// Longest name or version the farm records (the master's bound).
const MAX_NAME: usize = 200;
/// How long the index may take to answer each request.
const INDEX_TIMEOUT: Duration = Duration::from_secs(60);

/// Why one document of the index could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// The index does not know it (HTTP 404).
    #[error("the index does not know it")]
    NotFound,
    /// The index answered with another failure.
    #[error("the index answered HTTP {0}")]
    Status(u16),
    /// The index could not be reached, or the answer was cut short.
    #[error("{0}")]
    Transport(String),
    /// The document is larger than the bound.
    #[error("the document is larger than {} MiB", .0 >> 20)]
    TooLarge(u64),
    /// The document is not what the JSON API gives, or holds more than a bound allows.
    #[error("{0}")]
    Malformed(String),
}

/// A release of a project as the project's document lists it.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub(super) version: Version,
    /// As the index spells it: what is registered.
    pub(super) text: String,
    /// Every file of it is yanked.
    pub(super) yanked: bool,
    /// None when its files say nothing (or nothing PEP 440 can read: installers admit it then).
    pub(super) requires_python: Option<VersionSpecifiers>,
}

/// A project's releases, newest first.
#[derive(Debug)]
pub(super) struct Project {
    /// The name as the index displays it (or the canonical one).
    pub(super) name: String,
    pub(super) candidates: Vec<Candidate>,
}

/// What a release's document says of its needs.
#[derive(Debug)]
pub(super) struct ReleaseNeeds {
    pub(super) requires_dist: Vec<String>,
    pub(super) requires_python: Option<String>,
}

#[derive(Deserialize)]
struct ProjectDocument {
    info: ProjectInfo,
    releases: Option<HashMap<String, Vec<FileDocument>>>,
}

#[derive(Deserialize)]
struct ProjectInfo {
    name: Option<String>,
}

#[derive(Deserialize)]
struct FileDocument {
    #[serde(default)]
    yanked: bool,
    requires_python: Option<String>,
}

#[derive(Deserialize)]
struct ReleaseDocument {
    info: ReleaseInfo,
}

#[derive(Deserialize)]
struct ReleaseInfo {
    requires_dist: Option<Vec<String>>,
    requires_python: Option<String>,
}

/// A path segment, percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The index's JSON API: each document read once, within its bound, and counted.
#[derive(Debug)]
pub struct JsonIndex {
    http: reqwest::blocking::Client,
    root: String,
    read: usize,
    max_documents: usize,
    projects: HashMap<String, Result<Rc<Project>, DocumentError>>,
    releases: HashMap<(String, String), Result<Rc<ReleaseNeeds>, DocumentError>>,
}

impl JsonIndex {
    /// The JSON API rooted at `root` (`{root}/{name}/json`), reading at most `max_documents`.
    pub fn new(root: &str, max_documents: usize) -> Result<JsonIndex, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::blocking::Client::builder()
            .timeout(INDEX_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("piw-add/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let root = root.trim_end_matches('/').to_string();
        Ok(JsonIndex { http, root, read: 0, max_documents, projects: HashMap::new(), releases: HashMap::new() })
    }

    /// The root the documents are read from.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// A document, within `limit` bytes; counted against the documents allowed.
    fn document<T: DeserializeOwned>(&mut self, url: &str, limit: u64) -> Result<Result<T, DocumentError>, ResolveError> {
        if self.read >= self.max_documents {
            return Err(ResolveError::TooManyDocuments { limit: self.max_documents });
        }
        self.read += 1;
        tracing::debug!("reading {url}");
        Ok(self.fetch(url, limit).and_then(|body| serde_json::from_slice(&body).map_err(|e| DocumentError::Malformed(format!("not the JSON API's document: {}", shown(&e.to_string(), 200))))))
    }

    fn fetch(&self, url: &str, limit: u64) -> Result<Vec<u8>, DocumentError> {
        let response = self.http.get(url).send().map_err(|e| DocumentError::Transport(format!("cannot read {url}: {}", shown(&e.to_string(), 300))))?;
        match response.status() {
            status if status.is_success() => {}
            reqwest::StatusCode::NOT_FOUND => return Err(DocumentError::NotFound),
            status => return Err(DocumentError::Status(status.as_u16())),
        }
        if response.content_length().is_some_and(|length| length > limit) {
            return Err(DocumentError::TooLarge(limit));
        }
        let mut body = Vec::new();
        response.take(limit + 1).read_to_end(&mut body).map_err(|e| DocumentError::Transport(format!("cannot read {url}: {e}")))?;
        if body.len() as u64 > limit {
            return Err(DocumentError::TooLarge(limit));
        }
        Ok(body)
    }

    /// The releases of the project `name` (canonical).
    pub(super) fn project(&mut self, name: &str) -> Result<Result<Rc<Project>, DocumentError>, ResolveError> {
        if let Some(known) = self.projects.get(name) {
            return Ok(known.clone());
        }
        let url = format!("{}/{}/json", self.root, utf8_percent_encode(name, SEGMENT));
        let project = self.document::<ProjectDocument>(&url, MAX_PROJECT_DOCUMENT)?.and_then(|document| read_project(name, document)).map(Rc::new);
        self.projects.insert(name.to_string(), project.clone());
        Ok(project)
    }

    /// What the release `name` (canonical) `version` requires.
    pub(super) fn release(&mut self, name: &str, version: &str) -> Result<Result<Rc<ReleaseNeeds>, DocumentError>, ResolveError> {
        let key = (name.to_string(), version.to_string());
        if let Some(known) = self.releases.get(&key) {
            return Ok(known.clone());
        }
        let url = format!("{}/{}/{}/json", self.root, utf8_percent_encode(name, SEGMENT), utf8_percent_encode(version, SEGMENT));
        let needs = self.document::<ReleaseDocument>(&url, MAX_RELEASE_DOCUMENT)?.map(|document| {
            Rc::new(ReleaseNeeds {
                requires_dist: document.info.requires_dist.unwrap_or_default(),
                requires_python: document.info.requires_python.filter(|text| !text.trim().is_empty()),
            })
        });
        self.releases.insert(key, needs.clone());
        Ok(needs)
    }
}

/// A project's document as candidates: releases with files and a PEP 440 version the farm can
/// record, newest first.
fn read_project(name: &str, document: ProjectDocument) -> Result<Project, DocumentError> {
    let releases = document.releases.ok_or_else(|| DocumentError::Malformed("the project's document lists no releases".into()))?;
    if releases.len() > MAX_VERSIONS {
        return Err(DocumentError::Malformed(format!("the project's document lists {} releases, more than {MAX_VERSIONS}", releases.len())));
    }
    let mut candidates: Vec<Candidate> = releases
        .into_iter()
        .filter(|(text, files)| !files.is_empty() && fits_the_farm(text, |c| matches!(c, '.' | '_' | '-' | '+' | '!')))
        .filter_map(|(text, files)| {
            let version = Version::from_str(&text).ok()?;
            let yanked = files.iter().all(|file| file.yanked);
            let requires_python = files
                .iter()
                .filter_map(|file| file.requires_python.as_deref())
                .find(|text| !text.trim().is_empty())
                .and_then(|text| VersionSpecifiers::from_str(text).ok());
            Some(Candidate { version, text, yanked, requires_python })
        })
        .collect();
    candidates.sort_by(|a, b| b.version.cmp(&a.version));
    let display = document.info.name.filter(|shown| canonicalize(shown) == name && fits_the_farm(shown, |c| matches!(c, '.' | '_' | '-')));
    Ok(Project { name: display.unwrap_or_else(|| name.to_string()), candidates })
}

/// Whether the master records this name or version: ASCII letters and digits and the
/// characters `also` allows, starting and ending with a letter or digit, at most
/// [`MAX_NAME`] long.
fn fits_the_farm(text: &str, also: impl Fn(char) -> bool) -> bool {
    !text.is_empty()
        && text.len() <= MAX_NAME
        && text.chars().all(|c| c.is_ascii_alphanumeric() || also(c))
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
}
