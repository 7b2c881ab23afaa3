//! Test data.

use piwheels_common::protocols::WheelFile;
use piwheels_common::wheel::WheelName;
use sha2::{Digest, Sha256};

/// `size` pseudo-random bytes from `seed` (xorshift): the same seed gives the same bytes, and
/// the bytes do not compress, unlike a repeated pattern.
pub fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// The description of the wheel `filename` holding `bytes`, as a builder would make it: size
/// and SHA-256 from the bytes, tags from the name, and METADATA naming the project and version.
/// Panics on a name that is not a wheel's (a test's own mistake).
pub fn wheel_file(filename: &str, bytes: &[u8]) -> WheelFile {
    let name = WheelName::parse(filename).unwrap_or_else(|e| panic!("{e}"));
    let metadata = format!("Metadata-Version: 2.1\nName: {}\nVersion: {}\n", name.name, name.version);
    WheelFile {
        filename: filename.to_string(),
        size: bytes.len() as u64,
        sha256: Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect(),
        package_tag: name.name,
        version_tag: name.version,
        build_tag: name.build,
        py_tag: name.python,
        abi_tag: name.abi,
        platform_tag: name.platform,
        requires_python: None,
        dependencies: Default::default(),
        metadata: metadata.into_bytes().into(),
    }
}
