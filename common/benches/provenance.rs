//! Signing provenance: the master's CPU for one recorded file's statement (made from the
//! build's facts, serialized, signed, wrapped in its envelope), and a verification's, as
//! piw-verify does it. The aim (issue 18) is under 0.1 ms of master CPU per build.
//!
//! Run with `cargo bench -p piwheels-common --bench provenance`; `PROVENANCE_ITERS` (default
//! 20000) statements are signed, written to a temporary directory (a temporary file renamed
//! into place, as the index writer does) and verified, each measured as the process's CPU time.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use nix::sys::resource::{UsageWho, getrusage};
use piwheels_common::protocols::SourceFile;
use piwheels_common::provenance::{self, BuildFacts};

fn cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let time = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    time(usage.user_time()) + time(usage.system_time())
}

fn main() {
    let iterations: u32 = std::env::var("PROVENANCE_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let key = SigningKey::from_bytes(&[7; 32]);
    let facts = |n: u32| BuildFacts {
        filename: format!("numpy-1.26.{n}-cp311-cp311-linux_armv7l.whl"),
        sha256: format!("{n:064x}"),
        package: "numpy".into(),
        version: format!("1.26.{n}"),
        abi: "cp311".into(),
        imported: false,
        source: Some(SourceFile {
            filename: format!("numpy-1.26.{n}.tar.gz"),
            url: format!("https://files.example.org/packages/ab/cd/numpy-1.26.{n}.tar.gz"),
            sha256: format!("{:064x}", n + 1),
        }),
        key: Some("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7".into()),
        label: "pi4-builder-07".into(),
        environment: BTreeMap::new(),
        build_id: i64::from(n),
        started: chrono::Utc::now(),
        finished: chrono::Utc::now(),
    };
    let before = cpu();
    let mut envelopes = Vec::with_capacity(iterations as usize);
    for n in 0..iterations {
        envelopes.push(provenance::sign(black_box(&facts(n).statement()), &key));
    }
    let signing = cpu() - before;
    // Written as the index writer writes it: a temporary file renamed into place.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let before = cpu();
    for (n, envelope) in envelopes.iter().enumerate() {
        let (tmp, path) = (dir.path().join(format!(".{n}.tmp")), dir.path().join(format!("{n}.whl.intoto.jsonl")));
        std::fs::write(&tmp, envelope).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }
    let writing = cpu() - before;
    let verifying_key = key.verifying_key();
    let before = cpu();
    for envelope in &envelopes {
        black_box(provenance::verify(envelope, &verifying_key).expect("verifies"));
    }
    let verifying = cpu() - before;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(iterations);
    println!("provenance: {iterations} statements of {} bytes each", envelopes[0].len());
    println!("  sign (facts to envelope line): {:.1} µs of CPU per statement", per(signing));
    println!("  write (temporary file, rename): {:.1} µs of CPU per statement", per(writing));
    println!("  sign and write: {:.1} µs of CPU per statement", per(signing + writing));
    println!("  verify (envelope to statement): {:.1} µs of CPU per statement", per(verifying));
}
