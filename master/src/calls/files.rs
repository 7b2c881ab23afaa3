//! The file juggler's protocol: the slave driver and the admin endpoint ask it to expect,
//! link, verify, abandon and remove files.

use piwheels_common::protocols::{TransferId, WheelFile, WireError};
use serde::{Deserialize, Serialize};

#[cfg(test)]
use proptest_derive::Arbitrary;

/// What a file must be to be taken for a release: the master checks the wheel's name, tags and
/// METADATA against it, and lets only the key it names send the bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct FileExpectation {
    /// The release's version: the file name's version and METADATA's `Version` must be it.
    pub version: String,
    /// The ABI of the build (the slave's, or the import's): each of the wheel's ABI tags must
    /// be it, `abi3` or `none`.
    pub abi: String,
    /// The builder's platform tag, e.g. `linux_armv7l`: each of the wheel's platform tags must
    /// be it, `any`, or a manylinux or musllinux tag of the same machine. Empty for imports,
    /// whose platform the tool does not know.
    pub platform: String,
    /// The key (Z85 public key) whose connection may send the bytes; None when the file socket
    /// does not authenticate.
    pub uploader: Option<String>,
}

/// A request to the file juggler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum FsRequest {
    /// Expect this file for this package: answered `Expecting { transfer }`, `AlreadyHave`,
    /// `Refused`, `Conflict` or `Error`.
    Expect {
        /// Canonical package name (the file's directory).
        package: String,
        /// The file, as its sender describes it.
        file: Box<WheelFile>,
        /// What it must be.
        expectation: Box<FileExpectation>,
    },
    /// Publish `file` as a link to `existing`, a published file of the same package that the
    /// database holds with the same SHA-256, instead of receiving it: answered `AlreadyHave`,
    /// or `Refused` when `existing` is not there with those contents (then expect the file).
    Link {
        /// Canonical package name (the directory of both files).
        package: String,
        /// The published file with the same contents.
        existing: String,
        /// The file to publish.
        file: Box<WheelFile>,
        /// What it must be.
        expectation: Box<FileExpectation>,
    },
    /// Check and publish a finished transfer: answered `Verified`, `Failed`, `Refused`,
    /// `Conflict` or `Error`.
    Verify {
        /// The transfer.
        transfer: TransferId,
    },
    /// Forget a transfer and remove its temporary file: answered `Done`.
    Abandon {
        /// The transfer.
        transfer: TransferId,
    },
    /// Remove a published file that no build records (it blocks a rebuild of its name),
    /// with its `.metadata` file: answered `Done`. The caller has checked that no build
    /// records it and none is publishing it.
    RemoveOrphan {
        /// Canonical package name.
        package: String,
        /// The file's name.
        filename: String,
    },
}

/// The file juggler's answer to an [`FsRequest`]. Each refusal says whose fault it is: the
/// file's (`Refused`), its sender's (`Failed`), another file's (`Conflict`) or the master's
/// own (`Error`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum FsReply {
    /// The uploader should greet the file socket with this id.
    Expecting {
        /// The transfer id.
        transfer: TransferId,
    },
    /// A file of this name and these contents is published: nothing to send. The description
    /// is the master's own, read from the published wheel.
    AlreadyHave {
        /// The file, as the master read it.
        file: Box<WheelFile>,
    },
    /// The file is published. The description is the master's own, read from the bytes
    /// received: record this one, not the sender's.
    Verified {
        /// The file, as the master read it.
        file: Box<WheelFile>,
    },
    /// The file is not what the build may publish (its name, tags, archive or METADATA): the
    /// build's fault. Nothing is published.
    Refused {
        /// Why.
        reason: String,
    },
    /// The bytes received are not the ones announced (size or SHA-256), or the transfer is
    /// unknown or incomplete: the sender's fault. The transfer was rolled back.
    Failed {
        /// Why.
        reason: String,
    },
    /// Another file of this name is published with other bytes; a published file is never
    /// overwritten.
    Conflict {
        /// Why.
        reason: String,
    },
    /// Request carried out.
    Done,
    /// The master could not carry the request out (a full disk, an I/O error: `Unavailable`,
    /// nobody's fault but the master's, worth trying again later) or could not read it
    /// (`Refused`).
    Error(WireError),
}

piwheels_common::messages!(FsRequest, FsReply);
