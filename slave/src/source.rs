//! The source a build starts from: the file the master pinned, downloaded into the build
//! directory and checked against the pinned SHA-256 before anything runs. Other bytes are
//! refused, whoever served them, so a build is made from what the index published when the
//! master first saw the release.
//!
//! Every failure here is the index's or the network's, never the package's: the build is
//! reported as [`FailureKind::Source`] (or [`FailureKind::NoSpace`] for a full disk), which
//! the master does not record and retries later.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use piwheels_common::protocols::{FailureKind, SourceFile};
use sha2::{Digest, Sha256};

/// The largest source accepted. PyPI's own limit is far below it; a larger file is a broken
/// or hostile index.
pub const MAX_SOURCE: u64 = 2 << 30;
/// How long connecting to the index, or any one read of the file, may take.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the source could not be had.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// How the master is to take it.
    pub kind: FailureKind,
    /// What happened, for the build log.
    pub message: String,
}

impl SourceError {
    fn source(message: String) -> SourceError {
        SourceError { kind: FailureKind::Source, message }
    }

    fn write(path: &Path, e: &io::Error) -> SourceError {
        let kind = if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) { FailureKind::NoSpace } else { FailureKind::Builder };
        SourceError { kind, message: format!("cannot write {}: {e}", path.display()) }
    }
}

/// Downloads sources.
#[derive(Debug, Clone)]
pub struct SourceClient {
    http: reqwest::blocking::Client,
}

impl SourceClient {
    /// A client whose downloads give up when the index stalls for [`STALL_TIMEOUT`].
    pub fn new() -> anyhow::Result<SourceClient> {
        // ring as the TLS provider, as the master has it; an error only says a provider is
        // installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The blocking client's timeout bounds each operation (the request, each read), not
        // the whole download: that is the caller's deadline.
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(STALL_TIMEOUT)
            .timeout(STALL_TIMEOUT)
            .user_agent(concat!("piwheels-rs/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(SourceClient { http })
    }

    /// Downloads `source` into `dir` under its own name and checks its size and SHA-256, by
    /// `deadline`; `stop` is asked between reads. The file's path, or why there
    /// is none (a partial or wrong file is removed).
    pub fn fetch(&self, source: &SourceFile, dir: &Path, deadline: Instant, stop: &dyn Fn() -> bool) -> Result<PathBuf, SourceError> {
        source.check().map_err(|e| SourceError::source(format!("the master's source pin is unusable: {e}")))?;
        let path = dir.join(&source.filename);
        let fetched = self.download(source, &path, deadline, stop);
        if fetched.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        fetched.map(|()| path)
    }

    fn download(&self, source: &SourceFile, path: &Path, deadline: Instant, stop: &dyn Fn() -> bool) -> Result<(), SourceError> {
        let started = Instant::now();
        let mut response = self
            .http
            .get(&source.url)
            .send()
            .map_err(|e| SourceError::source(format!("cannot download the source {}: {e}", source.url)))?;
        if !response.status().is_success() {
            return Err(SourceError::source(format!("cannot download the source {}: HTTP {}", source.url, response.status())));
        }
        let mut file = File::create_new(path).map_err(|e| SourceError::write(path, &e))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            if stop() {
                return Err(SourceError { kind: FailureKind::Builder, message: "the download of the source was abandoned".into() });
            }
            if Instant::now() > deadline {
                let limit = piwheels_common::config::HumanDuration(SourceFile::DOWNLOAD_LIMIT);
                let message = format!("the download of {} was still going after {limit}, after {size} bytes", source.url);
                return Err(SourceError { kind: FailureKind::Source, message });
            }
            let read = match response.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SourceError::source(format!("the download of {} broke off after {size} bytes: {e}", source.url))),
            };
            size += read as u64;
            if size > MAX_SOURCE {
                return Err(SourceError::source(format!("the source {} is larger than {MAX_SOURCE} bytes", source.url)));
            }
            hasher.update(&buffer[..read]);
            file.write_all(&buffer[..read]).map_err(|e| SourceError::write(path, &e))?;
        }
        let sha256 = format!("{:x}", hasher.finalize());
        if sha256 != source.sha256 {
            return Err(SourceError::source(format!(
                "the source {} is not the pinned file: its SHA-256 is {sha256}, the index published {} for {}; \
                 refusing to build from it",
                source.url, source.sha256, source.filename
            )));
        }
        tracing::info!("downloaded {} ({size} bytes, SHA-256 checked) in {:.1?}", source.filename, started.elapsed());
        Ok(())
    }
}
