//! The failure triage's two costs: classifying a failed build's log
//! ([`classify::classify`], in an oracle, on the last 64 Ki characters of each log) and one
//! pass over Debian Contents files for a batch of causes ([`ContentsIndex::look_up`], in the
//! triage task).
//!
//! Run with `cargo bench -p piwheels-master --bench triage`. `TRIAGE_LOGS` (default 2000) logs
//! are classified: a compile log of 64 Ki characters ending in each of a few real errors, with
//! UTF-8 quotes in it as gcc writes them. The Contents pass reads `TRIAGE_CONTENTS`
//! (comma-separated files; default apt-file's under /var/lib/apt/lists, when there are any)
//! for 500 causes, the triage's batch; without files it is left out, and says so.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use piwheels_common::protocols::FailureClass;
use piwheels_master::triage::classify;
use piwheels_master::triage::contents::ContentsIndex;

fn cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let time = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    time(usage.user_time()) + time(usage.system_time())
}

/// A build log of about 64 Ki characters of compiler chatter ending in `error`.
fn log(error: &str) -> String {
    let line = "x86_64-linux-gnu-gcc -Wsign-compare -DNDEBUG -g -fwrapv -O2 -Wall -fPIC -I/usr/include/python3.11 -c src/module.c -o build/module.o\n\
                src/module.c: In function \u{2018}answer\u{2019}:\nsrc/module.c:12:5: warning: unused variable \u{2018}x\u{2019} [-Wunused-variable]\n";
    let mut text = String::new();
    while text.len() < 64 * 1024 {
        text.push_str(line);
    }
    text.push_str(error);
    text.push_str("error: command '/usr/bin/x86_64-linux-gnu-gcc' failed with exit code 1\n  ERROR: Failed building wheel for demo\n");
    text
}

fn main() {
    let count: u32 = std::env::var("TRIAGE_LOGS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let errors = [
        "src/module.c:1:10: fatal error: libxml/xmlversion.h: No such file or directory\n",
        "/usr/bin/ld: cannot find -lopenblas: No such file or directory\n",
        "error: can't find Rust compiler\n",
        "ERROR: Package 'demo' requires a different Python: 3.11.2 not in '>=3.12'\n",
        "src/module.c:40:1: error: expected \u{2018};\u{2019} before \u{2018}}\u{2019} token\n",
    ];
    let logs: Vec<String> = errors.iter().map(|e| log(e)).collect();
    let before = cpu();
    for n in 0..count {
        black_box(classify::classify(Some("build"), Some(1), &logs[n as usize % logs.len()]));
    }
    let spent = cpu() - before;
    println!(
        "classify: {count} logs of {} KiB: {:.3} ms CPU per log ({:.0} logs/s on one core)",
        logs[0].len() / 1024,
        spent.as_secs_f64() * 1000.0 / f64::from(count),
        f64::from(count) / spent.as_secs_f64()
    );

    let files: Vec<PathBuf> = match std::env::var("TRIAGE_CONTENTS") {
        Ok(list) => list.split(',').filter(|f| !f.is_empty()).map(PathBuf::from).collect(),
        Err(_) => std::fs::read_dir("/var/lib/apt/lists")
            .map(|dir| dir.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().contains("_Contents-")).collect())
            .unwrap_or_default(),
    };
    if files.is_empty() {
        println!("contents: no files (set TRIAGE_CONTENTS, or install apt-file and run apt-file update): left out");
        return;
    }
    let bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    // 500 causes, as a batch holds: a few that exist, the rest that do not.
    let mut causes = vec![
        (FailureClass::MissingHeader, "libxml/xmlversion.h".to_string()),
        (FailureClass::MissingHeader, "portaudio.h".to_string()),
        (FailureClass::MissingLibrary, "libopenblas.so".to_string()),
        (FailureClass::MissingTool, "rustc".to_string()),
    ];
    causes.extend((causes.len()..500).map(|n| (FailureClass::MissingHeader, format!("nowhere/absent_{n}.h"))));
    let index = ContentsIndex::new(files.clone());
    let (wall, before) = (Instant::now(), cpu());
    let found = index.look_up(&causes).expect("the Contents files read");
    let (wall, spent) = (wall.elapsed(), cpu() - before);
    let named = found.iter().flatten().count();
    println!(
        "contents: {} file(s), {:.1} MB compressed, 500 causes ({named} found: {}): {:.2} s wall, {:.2} s CPU",
        files.len(),
        bytes as f64 / 1e6,
        found.iter().take(4).map(|p| p.as_deref().unwrap_or("-")).collect::<Vec<_>>().join(", "),
        wall.as_secs_f64(),
        spent.as_secs_f64()
    );
}
