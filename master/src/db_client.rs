//! The database client every master task uses: typed requests through the load balancer to an
//! oracle, each with a deadline, so a stuck database gives the caller an error, not a hang.

use std::time::Duration;

use piwheels_common::protocols::{BuildAbi, BuildRecord, DbReply, DbRequest, PackageVersion, Timestamp};
use piwheels_common::transport::{Client, TransportError};

use crate::seraph::DB_ENDPOINT;

/// A database request failed.
#[derive(Debug, thiserror::Error)]
pub enum DbClientError {
    /// The request did not get an answer (no oracle free in time, or a transport error).
    #[error("database request {request} failed: {source}")]
    Transport {
        /// The request's name.
        request: String,
        /// What went wrong.
        source: TransportError,
    },
    /// The database refused or failed the request.
    #[error("database request {request} failed: {message}")]
    Refused {
        /// The request's name.
        request: String,
        /// The oracle's message.
        message: String,
    },
    /// The oracle answered with a reply of the wrong shape (a bug).
    #[error("database request {request} got an unexpected reply: {reply:?}")]
    Unexpected {
        /// The request's name.
        request: String,
        /// The reply.
        reply: Box<DbReply>,
    },
}

/// A connection to the oracles.
#[derive(Debug)]
pub struct DbClient {
    client: Client<DbRequest, DbReply>,
    timeout: Duration,
}

fn name(request: &DbRequest) -> String {
    let text = format!("{request:?}");
    text.split([' ', '(', '{']).next().unwrap_or_default().to_string()
}

macro_rules! expect {
    ($self:ident, $request:expr, $pattern:pat => $value:expr) => {{
        let request = $request;
        let label = name(&request);
        match $self.request(request)? {
            $pattern => Ok($value),
            reply => Err(DbClientError::Unexpected { request: label, reply: Box::new(reply) }),
        }
    }};
}

impl DbClient {
    /// A client of the oracles in the process `ctx` belongs to; each request waits at most
    /// `timeout` for its answer.
    pub fn connect(ctx: &zmq::Context, timeout: Duration) -> Result<DbClient, TransportError> {
        Self::connect_to(ctx, DB_ENDPOINT, timeout)
    }

    /// A client of the balancer at `endpoint`.
    pub fn connect_to(ctx: &zmq::Context, endpoint: &str, timeout: Duration) -> Result<DbClient, TransportError> {
        Ok(DbClient { client: Client::connect(ctx, endpoint, None)?, timeout })
    }

    /// Sends any request; a [`DbReply::Error`] becomes [`DbClientError::Refused`].
    pub fn request(&self, request: DbRequest) -> Result<DbReply, DbClientError> {
        match self.client.request(&request, self.timeout) {
            Ok(DbReply::Error { message }) => Err(DbClientError::Refused { request: name(&request), message }),
            Ok(reply) => Ok(reply),
            Err(source) => Err(DbClientError::Transport { request: name(&request), source }),
        }
    }

    /// Sends a request whose success reply is `Done`.
    pub fn done(&self, request: DbRequest) -> Result<(), DbClientError> {
        expect!(self, request, DbReply::Done => ())
    }

    /// Sends a request whose success reply is `Bool`.
    pub fn boolean(&self, request: DbRequest) -> Result<bool, DbClientError> {
        expect!(self, request, DbReply::Bool(b) => b)
    }

    /// Sends a request whose success reply is `Text`.
    pub fn text(&self, request: DbRequest) -> Result<Option<String>, DbClientError> {
        expect!(self, request, DbReply::Text(t) => t)
    }

    /// Every package's canonical name.
    pub fn all_packages(&self) -> Result<Vec<String>, DbClientError> {
        expect!(self, DbRequest::AllPackages, DbReply::Names(names) => names)
    }

    /// Adds a package; false when it existed.
    pub fn new_package(&self, package: &str, skip: &str, description: &str) -> Result<bool, DbClientError> {
        let request = DbRequest::NewPackage { package: package.into(), skip: skip.into(), description: description.into() };
        expect!(self, request, DbReply::Bool(added) => added)
    }

    /// Adds a version; false when it existed.
    pub fn new_version(&self, package: &str, version: &str, released: Option<Timestamp>, skip: &str) -> Result<bool, DbClientError> {
        let request = DbRequest::NewVersion { package: package.into(), version: version.into(), released, skip: skip.into() };
        expect!(self, request, DbReply::Bool(added) => added)
    }

    /// Whether the package exists.
    pub fn package_exists(&self, package: &str) -> Result<bool, DbClientError> {
        expect!(self, DbRequest::PackageExists { package: package.into() }, DbReply::Bool(exists) => exists)
    }

    /// Records a build, with a pending rewrite of its package's pages added at `rewrite_at`;
    /// returns its id.
    pub fn log_build(&self, build: BuildRecord, rewrite_at: Timestamp) -> Result<i64, DbClientError> {
        expect!(self, DbRequest::LogBuild { build, rewrite_at }, DbReply::Id(id) => id)
    }

    /// The build ABIs in build order.
    pub fn build_abis(&self) -> Result<Vec<BuildAbi>, DbClientError> {
        expect!(self, DbRequest::BuildAbis, DbReply::Abis(abis) => abis)
    }

    /// The build queue: per ABI, at most `limit` releases.
    pub fn build_queue(&self, limit: u32) -> Result<std::collections::BTreeMap<String, Vec<PackageVersion>>, DbClientError> {
        expect!(self, DbRequest::BuildQueue { limit }, DbReply::Queue(queue) => queue)
    }

    /// The last applied PyPI serial.
    pub fn pypi_serial(&self) -> Result<i64, DbClientError> {
        expect!(self, DbRequest::PypiSerial, DbReply::Id(serial) => serial)
    }

    /// Stores the last applied PyPI serial.
    pub fn set_pypi_serial(&self, serial: i64) -> Result<(), DbClientError> {
        expect!(self, DbRequest::SetPypiSerial { serial }, DbReply::Done => ())
    }
}
