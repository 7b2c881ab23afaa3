//! piw-verify: checks a wheel against the signed provenance the index publishes beside it
//! (`<wheel>.intoto.jsonl`, see docs/provenance.md) and says what it was built from, where
//! and when. Exit status 0 when everything matches, 1 on a mismatch (named), 2 when it
//! cannot tell (a usage error, an index that does not answer).

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use piwheels_common::inspect::sha256_hex;
use piwheels_common::names::canonicalize;
use piwheels_common::provenance::{self, Statement, Unverified};
use piwheels_common::wheel::WheelName;
use serde::Deserialize;

/// How long the index may take to answer each request.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Largest statement or key read: both are a few kilobytes.
const MAX_SMALL: u64 = 1 << 20;
/// Largest wheel downloaded: the master's default limit on the files it accepts.
const MAX_WHEEL: u64 = 2 << 30;

/// piw-verify's command line.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "piw-verify",
    version,
    about = "Checks wheels against the signed provenance a piwheels index publishes beside them",
    after_help = "Examples:\n  \
      piw-verify --index https://example.org/simple/ numpy-1.26.4-cp311-cp311-linux_armv7l.whl\n  \
      piw-verify --index https://example.org/ --key signing-key.pem numpy 1.26.4\n\n\
      Exit status: 0 when every wheel matches its statement, 1 on a mismatch (named), 2 when \
      it cannot be told (bad arguments, an index that does not answer)."
)]
pub struct VerifyConfig {
    /// The index: its site (`https://example.org/`) or its simple index (`…/simple/`)
    #[arg(long, value_name = "URL")]
    pub index: String,

    /// The master's public key (PEM), pinned [default: fetched from the index, which proves
    /// only that the statement and the key come from the same server]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// A statement file to check the wheel against, instead of the index's (one wheel only)
    /// [default: fetched from the index]
    #[arg(long, value_name = "FILE")]
    pub statement: Option<PathBuf>,

    /// A wheel file; or a project's name and a version, whose every wheel on the index is
    /// downloaded and checked
    #[arg(value_name = "WHEEL | PACKAGE VERSION", num_args = 1..=2, required = true)]
    pub what: Vec<String>,
}

/// Why a verification did not pass.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The wheel and its statement disagree, or the statement is not the key's: status 1.
    #[error("{0}")]
    Mismatch(String),
    /// It cannot be told: status 2.
    #[error("{0}")]
    Undecided(String),
}

impl VerifyError {
    /// The exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            VerifyError::Mismatch(_) => 1,
            VerifyError::Undecided(_) => 2,
        }
    }
}

fn undecided(message: impl Into<String>) -> VerifyError {
    VerifyError::Undecided(message.into())
}

/// A wheel to check: its name and bytes.
struct Wheel {
    filename: String,
    bytes: Vec<u8>,
}

/// Runs piw-verify: prints what each wheel was built from, or fails naming the first mismatch.
pub fn run(cfg: &VerifyConfig) -> Result<(), VerifyError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::blocking::Client::builder()
        .timeout(TIMEOUT)
        .user_agent(concat!("piw-verify/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| undecided(format!("cannot make an HTTP client: {e}")))?;
    let base = site_url(&cfg.index);
    let key = match &cfg.key {
        Some(path) => std::fs::read_to_string(path).map_err(|e| undecided(format!("cannot read {}: {e}", path.display())))?,
        None => {
            let url = format!("{base}/{}", provenance::PUBLIC_KEY_FILE);
            eprintln!("piw-verify: the key comes from {url}, the server the statements come from; pin it with --key");
            String::from_utf8_lossy(&get(&http, &url, MAX_SMALL)?).into_owned()
        }
    };
    let key = provenance::parse_public_key(&key).map_err(undecided)?;
    let wheels = match cfg.what.as_slice() {
        [path] => {
            let path = PathBuf::from(path);
            let filename = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| undecided(format!("{} is not a file name", path.display())))?;
            let bytes = std::fs::read(&path).map_err(|e| undecided(format!("cannot read {}: {e}", path.display())))?;
            vec![Wheel { filename: filename.to_string(), bytes }]
        }
        [package, version] => {
            if cfg.statement.is_some() {
                return Err(undecided("--statement checks one wheel file, not a release"));
            }
            release_wheels(&http, &base, package, version)?
        }
        _ => return Err(undecided("give a wheel file, or a PACKAGE and a VERSION")),
    };
    for wheel in wheels {
        let name = WheelName::parse(&wheel.filename).map_err(|e| undecided(e.to_string()))?;
        let envelope = match &cfg.statement {
            Some(path) => std::fs::read(path).map_err(|e| undecided(format!("cannot read {}: {e}", path.display())))?,
            None => {
                let url = format!("{base}/simple/{}/{}{}", canonicalize(&name.name), encode(&wheel.filename), provenance::SUFFIX);
                get_if_found(&http, &url, MAX_SMALL)?.ok_or_else(|| {
                    VerifyError::Mismatch(format!(
                        "{}: the index has no signed statement for it ({url}: not found); wheels recorded before \
                         the index kept provenance have none",
                        wheel.filename
                    ))
                })?
            }
        };
        let statement = check(&wheel, &envelope, &key).map_err(|e| VerifyError::Mismatch(format!("{}: {e}", wheel.filename)))?;
        print!("{}", describe(&wheel, &statement, &key));
    }
    Ok(())
}

/// The statement in `envelope`, when it is signed by `key` and describes exactly `wheel`.
fn check(wheel: &Wheel, envelope: &[u8], key: &VerifyingKey) -> Result<Statement, String> {
    let statement = provenance::verify(envelope, key).map_err(|e| match e {
        Unverified::OtherKey(id) => format!("the statement is not signed by the key {id}"),
        Unverified::Malformed(why) => format!("the statement is unusable: {why}"),
    })?;
    let [subject] = statement.subject.as_slice() else {
        return Err(format!("the statement names {} files, not one", statement.subject.len()));
    };
    let sha256 = sha256_hex(&wheel.bytes);
    let stated = subject.digest.get("sha256").map(String::as_str).unwrap_or("none");
    if subject.name != wheel.filename {
        return Err(format!("the statement is for another file: {} (SHA-256 {stated})", subject.name));
    }
    if stated != sha256 {
        return Err(format!("the file's SHA-256 is {sha256}, the statement's is {stated}: the file was changed"));
    }
    Ok(statement)
}

/// What a verified statement says, for people.
fn describe(wheel: &Wheel, statement: &Statement, key: &VerifyingKey) -> String {
    let definition = &statement.predicate.build_definition;
    let run = &statement.predicate.run_details;
    let params = &definition.external_parameters;
    let who = &definition.internal_parameters;
    let mut out = format!("{}: verified\n", wheel.filename);
    out += &format!("  SHA-256      {}\n", sha256_hex(&wheel.bytes));
    out += &format!("  signed by    key {}\n", provenance::key_id(key));
    out += &format!("  release      {} {} for {}\n", params.package, params.version, params.abi);
    for source in &definition.resolved_dependencies {
        let sha = source.digest.get("sha256").map(String::as_str).unwrap_or("?");
        out += &format!("  built from   {} (SHA-256 {sha})\n               {}\n", source.name, source.uri);
    }
    let role = if definition.build_type == provenance::IMPORT_TYPE { "imported by " } else { "built by    " };
    let key_text = who.fingerprint.as_deref().map(|f| format!(", key {f}")).unwrap_or_else(|| ", no key".into());
    out += &format!("  {role} {}{key_text} ({})\n", who.label, run.builder.id);
    out += &format!(
        "  when         {} to {} (build {})\n",
        run.metadata.started_on.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        run.metadata.finished_on.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        run.metadata.invocation_id
    );
    for (what, version) in &who.environment {
        out += &format!("  with         {what} {version}\n");
    }
    out
}

/// The site's address from what the user gave: the site or its simple index.
fn site_url(index: &str) -> String {
    let trimmed = index.trim_end_matches('/');
    trimmed.strip_suffix("/simple").unwrap_or(trimmed).to_string()
}

/// What a file name keeps of itself in a URL path: RFC 3986's unreserved characters.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'-').remove(b'_').remove(b'~');

/// A file name as a URL path segment.
fn encode(name: &str) -> String {
    utf8_percent_encode(name, PATH_SEGMENT).to_string()
}

/// The body at `url`, at most `limit` bytes.
fn get(http: &reqwest::blocking::Client, url: &str, limit: u64) -> Result<Vec<u8>, VerifyError> {
    get_if_found(http, url, limit)?.ok_or_else(|| undecided(format!("cannot fetch {url}: HTTP 404 Not Found")))
}

/// The body at `url`, at most `limit` bytes; None when the server says there is none (404).
fn get_if_found(http: &reqwest::blocking::Client, url: &str, limit: u64) -> Result<Option<Vec<u8>>, VerifyError> {
    let response = http.get(url).send().map_err(|e| undecided(format!("cannot fetch {url}: {e}")))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(undecided(format!("cannot fetch {url}: HTTP {}", response.status())));
    }
    let mut body = Vec::new();
    response.take(limit + 1).read_to_end(&mut body).map_err(|e| undecided(format!("cannot read {url}: {e}")))?;
    if body.len() as u64 > limit {
        return Err(undecided(format!("{url} is larger than {limit} bytes")));
    }
    Ok(Some(body))
}

/// The project's simple page in PEP 691 JSON: its files.
#[derive(Deserialize)]
struct SimpleProject {
    files: Vec<SimpleFile>,
}

#[derive(Deserialize)]
struct SimpleFile {
    filename: String,
    url: String,
}

/// Every wheel of `package` `version` on the index, downloaded.
fn release_wheels(http: &reqwest::blocking::Client, base: &str, package: &str, version: &str) -> Result<Vec<Wheel>, VerifyError> {
    let package = canonicalize(package);
    let url = format!("{base}/simple/{package}/");
    let response = http
        .get(&url)
        .header(reqwest::header::ACCEPT, "application/vnd.pypi.simple.v1+json")
        .send()
        .map_err(|e| undecided(format!("cannot fetch {url}: {e}")))?;
    if !response.status().is_success() {
        return Err(undecided(format!("cannot fetch {url}: HTTP {}", response.status())));
    }
    let page: SimpleProject = response.json().map_err(|e| undecided(format!("{url} is not a PEP 691 project page: {e}")))?;
    let mut wheels = Vec::new();
    for file in page.files {
        let matches = WheelName::parse(&file.filename).is_ok_and(|name| piwheels_common::names::same_version(&name.version, version));
        if !matches {
            continue;
        }
        let file_url = reqwest::Url::parse(&url).and_then(|u| u.join(&file.url)).map_err(|e| undecided(format!("{url} links {}: {e}", file.url)))?;
        let bytes = get(http, file_url.as_str(), MAX_WHEEL)?;
        wheels.push(Wheel { filename: file.filename, bytes });
    }
    if wheels.is_empty() {
        return Err(undecided(format!("the index has no wheel of {package} {version}")));
    }
    Ok(wheels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_is_found_from_either_address() {
        for given in ["https://example.org", "https://example.org/", "https://example.org/simple", "https://example.org/simple/"] {
            assert_eq!(site_url(given), "https://example.org", "{given}");
        }
        assert_eq!(encode("foo-1.0+local-py3-none-any.whl"), "foo-1.0%2Blocal-py3-none-any.whl");
    }
}
