//! A project's source files from a simple index in its JSON form (PEP 691), with the SHA-256
//! the index publishes for each and when each was uploaded (PEP 700): what the source pinner
//! pins, and the release date the project pages show. The HTML form is not read: an
//! index that offers only HTML cannot pin sources, and the error says so.

use std::time::Duration;

use piwheels_common::names::{canonicalize, same_version};
use piwheels_common::protocols::{SourceFile, Timestamp};
use serde::Deserialize;

/// PEP 691's media type for the JSON form of a simple page.
const SIMPLE_JSON: &str = "application/vnd.pypi.simple.v1+json";
/// The largest simple page read: the busiest projects' pages are a few MiB.
pub const MAX_PAGE: usize = 64 << 20;
/// The extensions of source distributions, the preferred first (PEP 625's `.tar.gz`).
const SOURCE_EXTENSIONS: [&str; 6] = [".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar.xz", ".tar"];

/// Why a project's page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SimpleError {
    /// The index does not know the project.
    #[error("the index has no project {0}")]
    NotFound(String),
    /// The index failed or could not be reached: try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The index answered with something that is not a PEP 691 page.
    #[error("{0}")]
    Malformed(String),
}

/// The earliest upload time believed: anything before is a mistake (PyPI began in 2003).
const EARLIEST_UPLOAD: i64 = 946_684_800; // 2000-01-01

/// A source file as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSource {
    /// The pin.
    pub file: SourceFile,
    /// When it was uploaded (PEP 700's `upload-time`), when the index says, and the time is
    /// neither in the future nor before 2000: a release's date orders the build queue.
    pub uploaded: Option<Timestamp>,
}

/// A client of a simple index.
#[derive(Debug, Clone)]
pub struct SimpleClient {
    http: reqwest::Client,
    base: url::Url,
}

/// A project's page as PEP 691 gives it: its files are read one by one ([`source_file`]).
#[derive(Debug, Deserialize)]
struct Page {
    files: Vec<serde_json::Value>,
}

impl SimpleClient {
    /// A client of the simple index at `url` (`<url>/<project>/`); each request gives up
    /// after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<SimpleClient> {
        super::install_crypto_provider();
        let base = url::Url::parse(&format!("{}/", url.trim_end_matches('/')))?;
        let http = reqwest::Client::builder().timeout(timeout).user_agent(concat!("piwheels-rs/", env!("CARGO_PKG_VERSION"))).build()?;
        Ok(SimpleClient { http, base })
    }

    /// The source files of `project` (a canonical name), with absolute URLs.
    pub async fn sources(&self, project: &str) -> Result<Vec<ListedSource>, SimpleError> {
        let page_url = self.base.join(&format!("{project}/")).map_err(|e| SimpleError::Malformed(format!("{project}: {e}")))?;
        let mut response = self
            .http
            .get(page_url.clone())
            .header(reqwest::header::ACCEPT, SIMPLE_JSON)
            .send()
            .await
            .map_err(|e| SimpleError::Unavailable(format!("{page_url}: {e}")))?;
        // Relative file URLs are relative to where the page was found, after redirects.
        let final_url = response.url().clone();
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(SimpleError::NotFound(project.to_string()));
        }
        if !status.is_success() {
            return Err(SimpleError::Unavailable(format!("{page_url}: HTTP {status}")));
        }
        let content_type = response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.starts_with(SIMPLE_JSON) {
            return Err(SimpleError::Malformed(format!(
                "{page_url} answered {content_type:?}, not PEP 691 JSON ({SIMPLE_JSON}): sources cannot be pinned from this index"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| SimpleError::Unavailable(format!("{page_url}: {e}")))? {
            if body.len() + chunk.len() > MAX_PAGE {
                return Err(SimpleError::Malformed(format!("{page_url} is larger than {MAX_PAGE} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let page: Page = serde_json::from_slice(&body).map_err(|e| SimpleError::Malformed(format!("{page_url}: {e}")))?;
        let now = chrono::Utc::now();
        Ok(page
            .files
            .iter()
            .filter_map(|file| source_file(&final_url, file).map(|source| ListedSource { file: source, uploaded: upload_time(file, now) }))
            .collect())
    }
}

/// A file's `upload-time` (PEP 700: ISO 8601 in UTC, with or without fractions of a second),
/// when it is believable: neither after `now` nor before 2000.
fn upload_time(file: &serde_json::Value, now: Timestamp) -> Option<Timestamp> {
    let text = file.get("upload-time")?.as_str()?;
    let at = chrono::DateTime::parse_from_rfc3339(text).ok()?.to_utc();
    (at.timestamp() >= EARLIEST_UPLOAD && at <= now).then_some(at)
}

/// The page's file as a source pin: a source distribution whose URL (relative to the page, as
/// PEP 691 allows) and SHA-256 make a usable pin ([`SourceFile::check`]). Anything else on
/// the page is passed over, so one odd entry does not cost the others.
fn source_file(page_url: &url::Url, file: &serde_json::Value) -> Option<SourceFile> {
    let filename = file.get("filename")?.as_str()?;
    if !SOURCE_EXTENSIONS.iter().any(|ext| filename.ends_with(ext)) {
        return None;
    }
    let sha256 = file.get("hashes")?.get("sha256")?.as_str()?.to_ascii_lowercase();
    let mut url = page_url.join(file.get("url")?.as_str()?).ok()?;
    // The hash travels on its own; a fragment is not part of the file's address.
    url.set_fragment(None);
    let source = SourceFile { filename: filename.to_string(), url: url.into(), sha256 };
    source.check().ok().map(|()| source)
}

/// The source file of `project` `version` among `sources`: the one whose name is the
/// project's and the version's, the version written as the release writes it before one that
/// is only the same PEP 440 version (`1.0` and a legacy `1.0.0` may be two releases), and
/// `.tar.gz` before other formats.
pub fn source_of<'s>(sources: &'s [ListedSource], project: &str, version: &str) -> Option<&'s ListedSource> {
    let named = |source: &ListedSource, ext: &str, same: &dyn Fn(&str) -> bool| {
        source.file.filename.strip_suffix(ext).is_some_and(|stem| {
            // Either side of the split may hold dashes in legacy names: try every split.
            stem.match_indices('-').any(|(at, _)| canonicalize(&stem[..at]) == project && same(&stem[at + 1..]))
        })
    };
    let exact = |tag: &str| tag == version || tag == version.replace('-', "_");
    let equal = |tag: &str| same_version(tag, version);
    let matchers: [&dyn Fn(&str) -> bool; 2] = [&exact, &equal];
    matchers
        .iter()
        .find_map(|same| SOURCE_EXTENSIONS.iter().find_map(|ext| sources.iter().find(|file| named(file, ext, *same))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(filename: &str, url: &str, sha256: &str) -> serde_json::Value {
        serde_json::json!({"filename": filename, "url": url, "hashes": {"sha256": sha256}})
    }

    #[test]
    fn sources_have_absolute_urls_and_lower_case_hashes_and_nothing_else_passes() {
        let page = url::Url::parse("https://index.example/simple/foo/").unwrap();
        let hash = "AB".repeat(32);
        let pinned = source_file(&page, &file("foo-1.0.tar.gz", "../../packages/foo-1.0.tar.gz#sha256=x", &hash)).unwrap();
        assert_eq!(pinned.url, "https://index.example/packages/foo-1.0.tar.gz");
        assert_eq!(pinned.sha256, "ab".repeat(32));
        for refused in [
            file("foo-1.0-py3-none-any.whl", "foo.whl", &hash),
            file("foo-1.0.tar.gz", "ftp://elsewhere/foo-1.0.tar.gz", &hash),
            file("foo-1.0.tar.gz", "foo-1.0.tar.gz", "abc"),
            file("../foo-1.0.tar.gz", "foo-1.0.tar.gz", &hash),
            file("foo-1.0.tar.gz", &format!("{}.tar.gz", "x".repeat(2000)), &hash),
            serde_json::json!({"filename": "foo-1.0.tar.gz", "url": "foo-1.0.tar.gz", "hashes": {"md5": "0"}}),
            serde_json::json!({"filename": "foo-1.0.tar.gz", "hashes": {"sha256": hash}}),
            serde_json::json!({"filename": 7, "url": "x", "hashes": {"sha256": hash}}),
        ] {
            assert_eq!(source_file(&page, &refused), None, "{refused}");
        }
    }

    #[test]
    fn upload_times_are_read_with_or_without_fractions_and_only_when_believable() {
        let now = chrono::Utc::now();
        let at = |text: &str| upload_time(&serde_json::json!({"upload-time": text}), now).map(|t| t.timestamp());
        assert_eq!(at("2024-10-18T15:21:26.123456Z"), Some(1_729_264_886));
        assert_eq!(at("2024-10-18T15:21:26Z"), Some(1_729_264_886));
        assert_eq!(at("yesterday"), None);
        assert_eq!(upload_time(&serde_json::json!({}), now), None);
        // Not believed: a time to come (it would put the release first in the queue), or
        // before 2000.
        assert_eq!(at(&(now + chrono::Duration::days(1)).to_rfc3339()), None);
        assert_eq!(at("1999-12-31T23:59:59Z"), None);
    }

    #[test]
    fn the_source_of_a_release_is_found_by_name_and_version() {
        let pin = |filename: &str| ListedSource {
            file: SourceFile { filename: filename.into(), url: format!("http://i/{filename}"), sha256: "0".repeat(64) },
            uploaded: None,
        };
        let sources = [
            pin("python-dateutil-2.8.2.zip"),
            pin("python-dateutil-2.8.2.tar.gz"),
            pin("python_dateutil-2.9.0.post0.tar.gz"),
            pin("Foo.Bar-1.0b1.zip"),
        ];
        let found = |project: &str, version: &str| source_of(&sources, project, version).map(|s| s.file.filename.as_str());
        // .tar.gz is preferred to .zip; a name with dashes splits at the right place.
        assert_eq!(found("python-dateutil", "2.8.2"), Some("python-dateutil-2.8.2.tar.gz"));
        assert_eq!(found("python-dateutil", "2.9.0.post0"), Some("python_dateutil-2.9.0.post0.tar.gz"));
        // The same PEP 440 version written otherwise.
        assert_eq!(found("foo-bar", "1.0-beta1"), Some("Foo.Bar-1.0b1.zip"));
        // The release's own spelling wins over another release's that is only PEP 440-equal,
        // whatever the formats.
        let legacy = [pin("foo-1.0.0.tar.gz"), pin("foo-1.0.zip")];
        assert_eq!(source_of(&legacy, "foo", "1.0").map(|s| s.file.filename.as_str()), Some("foo-1.0.zip"));
        assert_eq!(source_of(&legacy, "foo", "1.0.0").map(|s| s.file.filename.as_str()), Some("foo-1.0.0.tar.gz"));
        assert_eq!(found("python-dateutil", "2.8"), None);
        assert_eq!(found("dateutil", "2.8.2"), None);
    }
}
