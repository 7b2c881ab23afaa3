//! The master's CPU for comparing a cross-check's wheel with the published one
//! ([`cross_check::compare`]: both archives read, every member hashed), for a small pure-Python
//! wheel and a large compiled one. The rest of a cross-check is one more build on a builder
//! and one more transfer, which the share of builds checked (`--cross-check-share`) sets.
//!
//! Run with `cargo bench -p piwheels-master --bench cross_check`; `CHECK_ITERS` (default 200)
//! comparisons of each wheel are measured as the process's CPU time.

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};
use piwheels_master::cross_check;
use piwheels_testsupport::data::random_bytes;
use zip::write::SimpleFileOptions;

fn cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let time = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    time(usage.user_time()) + time(usage.system_time())
}

/// A deflated wheel named `name` in `dir` with `members` members of `size` bytes each (half
/// of each random, half zeros: compressible as code is), and its METADATA.
fn wheel(dir: &Path, name: &str, members: usize, size: usize) -> PathBuf {
    let path = dir.join(name);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).expect("create"));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for n in 0..members {
        zip.start_file(format!("demo/module_{n}.py"), options).expect("member");
        let mut bytes = random_bytes(size / 2, n as u64 + 1);
        bytes.resize(size, 0);
        zip.write_all(&bytes).expect("write");
    }
    zip.start_file("demo-1.0.dist-info/METADATA", options).expect("member");
    zip.write_all(b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n").expect("write");
    zip.finish().expect("finish");
    path
}

fn main() {
    let iterations: u32 = std::env::var("CHECK_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let name = "demo-1.0-cp311-cp311-linux_armv7l.whl";
    for (what, members, size) in [("pure-Python, 200 members of 4 KiB", 200, 4 << 10), ("compiled, 8 members of 2 MiB", 8, 2 << 20)] {
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for sub in [&a, &b] {
            std::fs::create_dir_all(sub).expect("dir");
        }
        let (first, second) = (wheel(&a, name, members, size), wheel(&b, name, members, size));
        let archive = std::fs::metadata(&first).expect("size").len();
        let before = cpu();
        for _ in 0..iterations {
            let differences = cross_check::compare((&first, name), (&second, name)).expect("compared");
            assert!(black_box(differences).is_empty());
        }
        let spent = cpu() - before;
        let each = spent / iterations;
        let unpacked = (members * size) as f64 * 2.0;
        println!(
            "{what}: {:.2} ms of CPU per comparison ({} KiB archive, {:.0} MiB/s of members read from both), {iterations} comparisons",
            each.as_secs_f64() * 1000.0,
            archive >> 10,
            unpacked / each.as_secs_f64() / f64::from(1 << 20)
        );
        std::fs::remove_dir_all(&a).expect("clean");
        std::fs::remove_dir_all(&b).expect("clean");
    }
}
