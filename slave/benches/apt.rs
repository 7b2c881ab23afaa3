//! The cost of the apt dependency lookup, printing a table (run with `cargo bench -p
//! piwheels-slave --bench apt`):
//!
//! 1. `AptIndex::load_system()`: reading every dpkg file list, once per slave run; wall time
//!    and this process's CPU time, the first run (whatever the page cache held) and the best
//!    and median of the rest;
//! 2. `AptIndex::dependencies()` for one extension module: a small one compiled here with gcc
//!    (linking zlib and libm), and CPython's own `_ssl` and `_sqlite3` modules when the
//!    system has them; wall time, this process's CPU and the CPU of `ldd` (the children);
//! 3. `inspect_wheel()` end to end for a wheel holding that small extension (hash, archive
//!    checks, METADATA, extraction, `ldd`, lookup).
//!
//! `BENCH_RUNS` (default 10) sets the number of runs of each; figures per run.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;
use piwheels_slave::apt::AptIndex;
use piwheels_slave::inspect::inspect_wheel;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

fn runs() -> usize {
    std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10).max(2)
}

fn duration(t: TimeVal) -> Duration {
    Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
}

/// User + system CPU so far of this process, and of its reaped children.
fn cpu() -> (Duration, Duration) {
    let usage = |who| getrusage(who).map(|u| duration(u.user_time()) + duration(u.system_time())).unwrap_or_default();
    (usage(UsageWho::RUSAGE_SELF), usage(UsageWho::RUSAGE_CHILDREN))
}

/// One measured run: wall, own CPU, children's CPU.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    children: Duration,
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Sample) {
    let (cpu0, children0) = cpu();
    let start = Instant::now();
    let out = f();
    let wall = start.elapsed();
    let (cpu1, children1) = cpu();
    (out, Sample { wall, cpu: cpu1 - cpu0, children: children1 - children0 })
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Prints the first sample, then the best and the median of the others, per field.
fn report(what: &str, samples: &[Sample]) {
    let first = samples[0];
    let rest = &samples[1..];
    let stat = |field: fn(&Sample) -> Duration| {
        let mut v: Vec<Duration> = rest.iter().map(field).collect();
        v.sort();
        (v[0], v[v.len() / 2])
    };
    let (wall_best, wall_median) = stat(|s| s.wall);
    let (cpu_best, cpu_median) = stat(|s| s.cpu);
    let (children_best, children_median) = stat(|s| s.children);
    println!(
        "| {what} | {} | {} / {} | {} / {} | {} / {} |",
        ms(first.wall),
        ms(wall_best),
        ms(wall_median),
        ms(cpu_best),
        ms(cpu_median),
        ms(children_best),
        ms(children_median)
    );
}

fn compile_extension(dir: &Path) -> PathBuf {
    let source = dir.join("demo.c");
    fs::write(
        &source,
        "const char *zlibVersion(void);\ndouble cos(double);\n\
         const char *version(void) { return zlibVersion(); }\ndouble c(double x) { return cos(x); }\n",
    )
    .unwrap();
    let object = dir.join("_demo.cpython-311-x86_64-linux-gnu.so");
    let status = Command::new("gcc").args(["-shared", "-fPIC", "-O2", "-o"]).arg(&object).arg(&source).args(["-l:libz.so.1", "-lm"]).status();
    assert!(status.is_ok_and(|s| s.success()), "gcc is needed to build the example extension");
    object
}

/// CPython's own extension modules named `stem`, if this system has them.
fn cpython_module(stem: &str) -> Option<PathBuf> {
    let dirs = fs::read_dir("/usr/lib").ok()?;
    let mut found: Vec<PathBuf> = dirs
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("python3"))
        .filter_map(|d| fs::read_dir(d.path().join("lib-dynload")).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{stem}.cpython-"))))
        .collect();
    found.sort();
    found.pop()
}

fn main() {
    let runs = runs();
    println!("runs: {runs}\n");
    println!("| step | first run ms | wall ms best / median | own CPU ms best / median | ldd CPU ms best / median |");
    println!("|---|---:|---:|---:|---:|");

    let samples: Vec<Sample> = (0..runs).map(|_| measure(|| AptIndex::load_system().expect("reading dpkg's file lists")).1).collect();
    report("`load_system()`", &samples);
    let apt = AptIndex::load_system().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let demo = compile_extension(dir.path());
    let mut objects = vec![("small extension (zlib, libm)".to_string(), demo.clone())];
    for stem in ["_ssl", "_sqlite3"] {
        if let Some(path) = cpython_module(stem) {
            objects.push((format!("CPython `{stem}`"), path));
        }
    }
    let mut found = Vec::new();
    for (name, object) in &objects {
        let objects = [object.clone()];
        let samples: Vec<Sample> = (0..runs).map(|_| measure(|| apt.dependencies(&objects)).1).collect();
        report(&format!("`dependencies()`, {name}"), &samples);
        found.push((name.clone(), apt.dependencies(&objects)));
    }

    let wheel = dir.path().join("demo_pkg-1.0-cp311-cp311-linux_x86_64.whl");
    let mut zip = ZipWriter::new(fs::File::create(&wheel).unwrap());
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, bytes) in [
        ("demo_pkg/__init__.py", b"from ._demo import *\n".to_vec()),
        ("demo_pkg/_demo.cpython-311-x86_64-linux-gnu.so", fs::read(&demo).unwrap()),
        ("demo_pkg-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: demo_pkg\nVersion: 1.0\nRequires-Dist: numpy\n".to_vec()),
    ] {
        zip.start_file(name, options).unwrap();
        zip.write_all(&bytes).unwrap();
    }
    zip.finish().unwrap();
    let samples: Vec<Sample> = (0..runs).map(|_| measure(|| inspect_wheel(&wheel, Some(&apt)).unwrap()).1).collect();
    report("`inspect_wheel()`, wheel with the small extension", &samples);

    println!("\nindex: {apt:?}");
    for (name, (packages, unresolved)) in found {
        println!("{name}: apt {packages:?}, unresolved {unresolved:?}");
    }
}
