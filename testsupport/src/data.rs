//! Test data.

use std::time::Duration;

use piwheels_common::protocols::{HostInfo, SlaveHello, SourceFile, Versions, WheelFile};
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

/// What a slave labelled `label` says at hello: a cp311 builder on armv7l with a 1 h build
/// timeout and a 10 min busy timeout.
pub fn slave_hello(label: &str) -> SlaveHello {
    SlaveHello {
        versions: Versions::current(),
        build_timeout: Duration::from_secs(3600),
        busy_timeout: Duration::from_secs(600),
        py_version: "311".into(),
        abi: "cp311".into(),
        platform: "linux_armv7l".into(),
        memory_limit: 0,
        host: HostInfo { label: label.into(), ..HostInfo::default() },
        environment: [("python".to_string(), "3.11.2".to_string())].into(),
    }
}

/// A source pin for `package` `version` that no index serves: for tests that hand out builds
/// without downloading them.
pub fn source_file(package: &str, version: &str) -> SourceFile {
    let filename = format!("{package}-{version}.tar.gz");
    SourceFile { url: format!("http://index.invalid/packages/{filename}"), sha256: piwheels_common::inspect::sha256_hex(filename.as_bytes()), filename }
}

/// SQL adding the release `package` `version` (its package must exist) pinned to
/// [`source_file`], so that it can be queued.
pub fn insert_pinned_version(package: &str, version: &str) -> String {
    let source = source_file(package, version);
    format!(
        "INSERT INTO versions (package, version, source_filename, source_url, source_sha256) VALUES ('{package}', '{version}', '{}', '{}', '{}')",
        source.filename, source.url, source.sha256
    )
}

/// The description of the wheel `filename` holding `bytes`, as a builder would make it: size
/// and SHA-256 from the bytes, tags from the name, and METADATA naming the project and version.
/// Panics on a name that is not a wheel's (a test's own mistake).
pub fn wheel_file(filename: &str, bytes: &[u8]) -> WheelFile {
    let name = WheelName::parse(filename).unwrap_or_else(|e| panic!("{e}"));
    let metadata = metadata_of(&name);
    WheelFile {
        size: bytes.len() as u64,
        sha256: piwheels_common::inspect::sha256_hex(bytes),
        metadata: metadata.into_bytes().into(),
        ..WheelFile::named(filename, name)
    }
}

/// The METADATA of the wheels [`wheel_bytes`] makes and [`wheel_file`] describes.
fn metadata_of(name: &WheelName) -> String {
    format!("Metadata-Version: 2.1\nName: {}\nVersion: {}\n", name.name, name.version)
}

/// A wheel named `filename` that the master accepts: METADATA naming the project and version
/// of the name (the METADATA [`wheel_file`] describes), WHEEL, RECORD, and `payload` as a data
/// file, so that a test chooses the wheel's size and bytes.
pub fn wheel_bytes(filename: &str, payload: &[u8]) -> Vec<u8> {
    let name = WheelName::parse(filename).unwrap_or_else(|e| panic!("{e}"));
    wheel_with_metadata(filename, &metadata_of(&name), payload)
}

/// [`wheel_bytes`] with the METADATA given (a forged one, say).
pub fn wheel_with_metadata(filename: &str, metadata: &str, payload: &[u8]) -> Vec<u8> {
    let name = WheelName::parse(filename).unwrap_or_else(|e| panic!("{e}"));
    let dist_info = format!("{}-{}.dist-info", name.name, name.version);
    let tag = format!("Tag: {}-{}-{}\n", name.python, name.abi, name.platform);
    let mut entries: Vec<(String, Vec<u8>)> = vec![
        (format!("{}/payload.bin", name.name), payload.to_vec()),
        (format!("{dist_info}/METADATA"), metadata.as_bytes().to_vec()),
        (format!("{dist_info}/WHEEL"), format!("Wheel-Version: 1.0\nGenerator: piwheels-rs-tests\nRoot-Is-Purelib: false\n{tag}").into_bytes()),
    ];
    let mut record: String = entries.iter().map(|(name, data)| format!("{name},{},{}\n", record_hash(data), data.len())).collect();
    record.push_str(&format!("{dist_info}/RECORD,,\n"));
    entries.push((format!("{dist_info}/RECORD"), record.into_bytes()));
    stored_zip(&entries)
}

/// A pure-Python wheel of `distribution` (the file name's form of the project name, e.g.
/// `foo_bar`) `version` whose package `module` holds `source` as its `__init__.py`, with
/// METADATA (`metadata`, which the caller also publishes as the `.metadata` file), WHEEL and a
/// RECORD that matches them: what real installers accept.
pub fn pure_wheel(distribution: &str, module: &str, version: &str, metadata: &str, source: &str) -> Vec<u8> {
    let dist_info = format!("{distribution}-{version}.dist-info");
    let mut entries: Vec<(String, Vec<u8>)> = vec![
        (format!("{module}/__init__.py"), source.as_bytes().to_vec()),
        (format!("{dist_info}/METADATA"), metadata.as_bytes().to_vec()),
        (
            format!("{dist_info}/WHEEL"),
            b"Wheel-Version: 1.0\nGenerator: piwheels-rs-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
        ),
    ];
    let mut record: String =
        entries.iter().map(|(name, data)| format!("{name},{},{}\n", record_hash(data), data.len())).collect();
    record.push_str(&format!("{dist_info}/RECORD,,\n"));
    entries.push((format!("{dist_info}/RECORD"), record.into_bytes()));
    stored_zip(&entries)
}

/// RECORD's hash form: unpadded URL-safe base64 of the SHA-256.
pub fn record_hash(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let digest = Sha256::digest(bytes);
    let mut out = String::new();
    for chunk in digest.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    format!("sha256={out}")
}

/// A zip archive of `entries`, stored without compression.
pub fn stored_zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    const DOS_TIME: u16 = 0;
    const DOS_DATE: u16 = ((2020 - 1980) << 9) | (1 << 5) | 1;
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let crc = crc.sum();
        let size = u32::try_from(data.len()).unwrap();
        let name_len = u16::try_from(name.len()).unwrap();
        let offset = u32::try_from(out.len()).unwrap();
        // Local file header.
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        for field in [20u16, 0, 0, DOS_TIME, DOS_DATE] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        for field in [crc, size, size] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        // Its central directory entry.
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        for field in [0x031e_u16, 20, 0, 0, DOS_TIME, DOS_DATE] {
            central.extend_from_slice(&field.to_le_bytes());
        }
        for field in [crc, size, size] {
            central.extend_from_slice(&field.to_le_bytes());
        }
        for field in [name_len, 0, 0, 0, 0] {
            central.extend_from_slice(&field.to_le_bytes());
        }
        central.extend_from_slice(&(0o100_644u32 << 16).to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let central_offset = u32::try_from(out.len()).unwrap();
    let central_size = u32::try_from(central.len()).unwrap();
    let count = u16::try_from(entries.len()).unwrap();
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    for field in [0u16, 0, count, count] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    out.extend_from_slice(&central_size.to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// The names in `dir`, sorted: what a test compares a directory's contents with.
pub fn dir_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}
