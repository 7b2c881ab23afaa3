//! How fast piw-logger's parser reads an access log, printing lines per second (run with
//! `cargo bench -p piwheels-master --bench access_log`):
//!
//! 1. `parse_line` alone over a mix like a busy index's log: 60% wheel downloads by pip and uv
//!    (with their JSON platform descriptions), 10% installers' index lookups, 10% project
//!    pages, JSON and other pages, 15% requests that record nothing (404s, style sheets,
//!    `.metadata`), 5% hostile or broken lines;
//! 2. what piw-logger's reader does per line: split the stream into bounded lines, parse, and
//!    validate the record.
//!
//! `BENCH_LINES` sets the number of lines (default 200,000); every figure is the best of
//! `BENCH_RUNS` runs (default 3).

use std::hint::black_box;
use std::io::BufReader;
use std::time::{Duration, Instant};

use chrono::Utc;
use piwheels_master::access_log::{DEFAULT_MAX_LINE, Line, Lines, parse_line, validate};

const PIP: &str = r#"pip/24.0 {\"ci\":null,\"cpu\":\"aarch64\",\"distro\":{\"id\":\"bookworm\",\"libc\":{\"lib\":\"glibc\",\"version\":\"2.36\"},\"name\":\"Debian GNU/Linux\",\"version\":\"12\"},\"implementation\":{\"name\":\"CPython\",\"version\":\"3.11.2\"},\"installer\":{\"name\":\"pip\",\"version\":\"24.0\"},\"openssl_version\":\"OpenSSL 3.0.15 3 Sep 2024\",\"python\":\"3.11.2\",\"rustc_version\":null,\"setuptools_version\":\"66.1.1\",\"system\":{\"name\":\"Linux\",\"release\":\"6.6.51+rpt-rpi-v8\"}}"#;
const UV: &str = r#"uv/0.5.4 {\"installer\":{\"name\":\"uv\",\"version\":\"0.5.4\"},\"python\":\"3.12.7\",\"implementation\":{\"name\":\"CPython\",\"version\":\"3.12.7\"},\"distro\":{\"name\":\"Raspbian GNU/Linux\",\"version\":\"12\",\"id\":\"bookworm\"},\"system\":{\"name\":\"Linux\",\"release\":\"6.6.51+rpt-rpi-v7\"},\"cpu\":\"armv7l\",\"setuptools_version\":null}"#;
const BROWSER: &str = "Mozilla/5.0 (X11; Linux aarch64; rv:128.0) Gecko/20100101 Firefox/128.0";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `n` lines of the mix described above.
fn corpus(n: usize) -> Vec<u8> {
    let time = (Utc::now() - chrono::TimeDelta::hours(1)).format("%d/%b/%Y:%H:%M:%S +0000").to_string();
    let mut out = Vec::new();
    for i in 0..n {
        let host = format!("198.51.100.{}", i % 250 + 1);
        let wheel = format!("/simple/pkg{0}/pkg{0}-1.{1}-cp311-cp311-linux_armv7l.whl", i % 997, i % 7);
        let (status, path, agent) = match i % 20 {
            0..=9 => (200, wheel, PIP),
            10 | 11 => (200, wheel, UV),
            12 | 13 => (200, format!("/simple/pkg{}/", i % 997), PIP),
            14 => (200, format!("/project/pkg{}/", i % 997), BROWSER),
            15 => (200, if i % 40 < 20 { "/".to_string() } else { format!("/project/pkg{}/json/", i % 997) }, BROWSER),
            16 => (404, format!("/simple/nothing{i}/"), PIP),
            17 => (200, "/styles/piwheels.css".to_string(), BROWSER),
            18 => (200, format!("{wheel}.metadata"), PIP),
            _ => (200, format!("/simple/pkg{}/../../etc/passwd", i % 997), PIP),
        };
        out.extend(format!("{host} - - [{time}] \"GET {path} HTTP/1.1\" {status} 123456 \"-\" \"{agent}\"\n").bytes());
    }
    out
}

fn best(runs: usize, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut found = 0;
    for _ in 0..runs {
        let started = Instant::now();
        found = f();
        best = best.min(started.elapsed());
    }
    (best, found)
}

fn main() {
    let lines = env_number("BENCH_LINES", 200_000);
    let runs = env_number("BENCH_RUNS", 3);
    let log = corpus(lines);
    let mb = log.len() as f64 / 1e6;
    println!("{lines} lines, {mb:.1} MB, best of {runs} runs");

    let (parse, records) = best(runs, || {
        log.split(|&b| b == b'\n').filter(|l| !l.is_empty()).filter(|l| matches!(black_box(parse_line(l)), Ok(Some(_)))).count()
    });
    let now = Utc::now();
    let (full, valid) = best(runs, || {
        let mut reader = Lines::new(BufReader::with_capacity(64 << 10, &log[..]), DEFAULT_MAX_LINE);
        let mut valid = 0;
        while let Some(line) = reader.next_line().unwrap() {
            if let Line::Text(text) = line
                && let Ok(Some(record)) = parse_line(text)
                && black_box(validate(record, now)).is_ok()
            {
                valid += 1;
            }
        }
        valid
    });
    assert_eq!(records, valid);
    for (what, took) in [("parse_line", parse), ("read + parse + validate", full)] {
        let secs = took.as_secs_f64();
        println!("{what:>24}: {:>9.0} lines/s, {:>6.1} MB/s ({records} records in {took:.2?})", lines as f64 / secs, mb / secs);
    }
}
