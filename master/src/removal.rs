//! Removing a package or a version from the farm, the one way every task that does it
//! (the feed follower, the admin endpoint) does it: the files and build ids are looked up
//! first, the rows go, the slave driver drops the release from its queues and abandons builds
//! of it, and the index writer removes the files, logs and pages, so that nothing links a file
//! that is gone and no file is left that nothing links.

use std::time::Duration;

use piwheels_common::transport::Client;
use piwheels_common::protocols::{PackageVersion, WireError};

use crate::calls::db::{BuildIds, DeleteBuilds, DeletePackage, DeleteVersion, PackageFiles, SkipPackage, SkipVersion, VersionFiles};
use crate::calls::tasks::{ReleaseAck, ReleaseNotice, WebReply, WebRequest};
use crate::db_client::DbClient;
use crate::wiring::{self, TaskName};

/// How long the slave driver and the index writer may take to take a deletion.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The sockets a removal needs besides the database.
#[derive(Debug)]
pub struct Remover {
    notices: Client<ReleaseNotice, ReleaseAck>,
    web: Client<WebRequest, WebReply>,
}

impl Remover {
    /// Connects to the slave driver's release notices and to the index writer.
    pub fn connect(ctx: &zmq::Context, task: TaskName) -> anyhow::Result<Remover> {
        Ok(Remover { notices: wiring::RELEASE_NOTICES.client(ctx, task)?, web: wiring::WEB.client(ctx, task)? })
    }

    /// Removes `version` of `package`, or the whole package when `version` is None, and marks
    /// it skipped with `skip` (so a later sighting does not bring it back unasked), or removes
    /// only its builds and files when `builds_only`.
    pub fn remove(&self, db: &DbClient, package: &str, version: Option<&str>, skip: &str, builds_only: bool) -> anyhow::Result<()> {
        let files = match version {
            Some(version) => db.call(VersionFiles { package: package.into(), version: version.into() })?,
            None => db.call(PackageFiles { package: package.into() })?,
        };
        let files: Vec<String> = files.into_iter().map(|f| f.filename).collect();
        let builds = db.call(BuildIds { package: package.into(), version: version.map(Into::into) })?;
        if !skip.is_empty() {
            match version {
                Some(version) => db.call(SkipVersion { package: package.into(), version: version.into(), reason: skip.into() })?,
                None => db.call(SkipPackage { package: package.into(), reason: skip.into() })?,
            }
        }
        match (version, builds_only) {
            (_, true) => db.call(DeleteBuilds { package: package.into(), version: version.map(Into::into) })?,
            (Some(version), false) => db.call(DeleteVersion { package: package.into(), version: version.into() })?,
            (None, false) => db.call(DeletePackage { package: package.into() })?,
        }
        let notice = match version {
            Some(version) => ReleaseNotice::Version { package: package.into(), version: version.into() },
            None => ReleaseNotice::Package { package: package.into() },
        };
        if let Err(e) = self.notices.request(&notice, TIMEOUT) {
            // The rows are gone, so a build in flight cannot be recorded against them; it is
            // only wasted work.
            tracing::warn!("the slave driver did not take the deletion of {package}: {e}");
        }
        let request = match (version, builds_only) {
            (Some(version), _) => WebRequest::DeleteVersion { package: package.into(), version: version.into(), files, builds },
            // Only the builds: the package's pages stay, without the files.
            (None, true) => WebRequest::DeleteVersion { package: package.into(), version: String::new(), files, builds },
            (None, false) => WebRequest::DeletePackage { package: package.into(), files, builds },
        };
        match self.web.request(&request, TIMEOUT) {
            Ok(WebReply::Done) => Ok(()),
            Ok(WebReply::Error(WireError { message, .. })) => anyhow::bail!("the index writer could not remove {package}'s files: {message}"),
            Err(e) => anyhow::bail!("the index writer did not take the removal of {package}'s files: {e}"),
        }
    }

    /// Tells the slave driver, which holds a release back for a while after handing it out,
    /// that `releases` are to be built again now (their rebuilds are in the database).
    pub fn build_again(&self, releases: Vec<PackageVersion>) -> anyhow::Result<()> {
        let count = releases.len();
        let notice = ReleaseNotice::BuildAgain { releases };
        self.notices
            .request(&notice, TIMEOUT)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("the slave driver did not take the rebuild of {count} release(s): {e}"))
    }
}
