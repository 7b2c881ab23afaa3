//! The file juggler's protocol: the slave driver and the admin endpoint ask it to expect,
//! verify (and publish, or compare), abandon and remove files. Each call's answer says whose fault a refusal is:
//! the file's (`Refused`), its sender's (`Failed`), another file's (`Conflict`); the master's
//! own failures (a full disk, an I/O error) are the protocol's `Error`.

use piwheels_common::protocols::{TransferId, WheelFile, WireError};
use serde::{Deserialize, Serialize};

use super::calls;

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

/// What the file juggler says to [`Expect`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum Expected {
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
    /// The file is not what the build may publish (its name, tags, size): the build's fault.
    Refused {
        /// Why.
        reason: String,
    },
    /// Another file of this name is published with other bytes; a published file is never
    /// overwritten.
    Conflict {
        /// Why.
        reason: String,
    },
}

/// What the file juggler says to [`Verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum Verification {
    /// The file is published. The description is the master's own, read from the bytes
    /// received: record this one, not the sender's.
    Verified {
        /// The file, as the master read it.
        file: Box<WheelFile>,
    },
    /// The bytes received are not the ones announced (size or SHA-256), or the transfer is
    /// unknown or incomplete: the sender's fault. The transfer was rolled back.
    Failed {
        /// Why.
        reason: String,
    },
    /// The archive or its METADATA is not what the build may publish: the build's fault.
    /// Nothing is published.
    Refused {
        /// Why.
        reason: String,
    },
    /// Another file of this name was published meanwhile with other bytes.
    Conflict {
        /// Why.
        reason: String,
    },
    /// A cross-check's file, verified and compared with the published file it was expected
    /// against, then removed.
    Compared {
        /// The file, as the master read it.
        file: Box<WheelFile>,
        /// What differs, member by member (empty: the same contents).
        #[cfg_attr(test, proptest(strategy = "piwheels_common::arbitrary::small_vec()"))]
        differences: Vec<String>,
    },
}

/// What the file juggler says to [`RemoveOrphan`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum Removal {
    /// The file is gone (or was gone already).
    Removed,
    /// The name is not a file of the package.
    Refused {
        /// Why.
        reason: String,
    },
}

calls! {
    /// A call to the file juggler.
    requests FsRequest;
    /// The file juggler's answer to an [`FsRequest`].
    replies FsReply;

    /// Expect this file for this package, checked against the build before any byte moves.
    Expect {
        /// Canonical package name (the file's directory).
        package: String,
        /// The file, as its sender describes it.
        file: Box<WheelFile>,
        /// What it must be.
        expectation: Box<FileExpectation>,
        /// Whether the bytes must be received even when a file of this name and these
        /// contents is published: a builder shows it made a wheel by sending it, not by
        /// naming its hash. Off for imports (an operator's files). Last, and absent from
        /// staging records written before it, which read as off.
        #[serde(default)]
        must_send: bool,
        /// A cross-check's file: received, verified and compared with this published file
        /// of the package, never published ([`Verification::Compared`]). Absent from staging
        /// records written before it, which read as none.
        #[serde(default)]
        compare_with: Option<String>,
    } -> Expected;
    /// Check and publish a finished transfer.
    Verify {
        /// The transfer.
        transfer: TransferId,
    } -> Verification;
    /// Forget a transfer and remove its temporary file.
    Abandon {
        /// The transfer.
        transfer: TransferId,
    } -> ();
    /// Remove a published file that no build records (it blocks a rebuild of its name), with
    /// its `.metadata` file. The caller has checked that no build records it and none is
    /// publishing it.
    RemoveOrphan {
        /// Canonical package name.
        package: String,
        /// The file's name.
        filename: String,
    } -> Removal;
}
