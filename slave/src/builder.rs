//! One build: a fresh directory under the build root, the pinned source downloaded into it and
//! checked ([`crate::source`]), the configured build command (by default `pip wheel` of that
//! file) run under the launcher
//! ([`crate::launcher`]) in its own process group, with a wall-clock limit, a memory limit
//! and a parent-death signal; its log kept in a file whose tail becomes the result's output;
//! its wheels inspected; and its measurements (exit status, wall time, CPU time, peak memory)
//! reported as a [`BuildResult`].
//!
//! [`Builder::build`] has the builder's resident launcher fork a build launcher and waits for
//! it on the calling thread (the caller runs each build on a thread of its own). The resident
//! is started at the first build and kept; one found dead, or that fails before a build has
//! started, is replaced and the build goes on; one that fails during a build makes that build
//! the builder's failure and is replaced at the next.
//!
//! Stopping a build (its timeout, or the caller's stop request) has the resident send SIGTERM to
//! the build launcher, which kills every process of the build and reports what it measured; a
//! build launcher that has not finished [`KILL_GRACE`] later is killed with its whole process
//! group (SIGKILL). Once the build launcher has ended, and before it is reaped (so its process
//! group id cannot be reused), whatever is left in its process group is killed too.
//!
//! The build directory, `piw-build-*` under the build root, holds `wheels/` (the command's
//! wheel directory), `tmp/` (its TMPDIR), `build.log` (its standard output and error), `usage`
//! (the launcher's report) and `lock`, which the slave keeps locked (`flock`) while the
//! directory is in use. It stays until the [`Build`] is cleaned up or dropped, so that its
//! wheels can be uploaded. The directory of a slave that died without cleaning up has an
//! unlocked lock file: [`Builder::remove_stale`] removes it, and leaves alone the builds of
//! other slaves sharing the build root.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use piwheels_common::config::HumanDuration;
use piwheels_common::protocols::{BuildResult, FailureKind, SourceFile, WheelFile};

use crate::apt::AptIndex;
use crate::launcher::{Ended, FromLauncher, Launch, Report, Resident, ToLauncher};
use crate::source::SourceClient;

/// The default build command: pip builds the release from its pinned source file, without
/// dependencies or cache; its build dependencies (wheels preferred) come from the index the
/// master names.
pub const DEFAULT_COMMAND: &str = "{python} -m pip wheel {source} --wheel-dir={wheel_dir} --no-deps --no-cache-dir \
     --prefer-binary --exists-action=w --disable-pip-version-check --progress-bar=off --index-url={index_url}";

/// How long a stopped build's launcher has to kill the build and report before its whole
/// process group is killed.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

/// Every build's `SOURCE_DATE_EPOCH`: 1980-01-01, the earliest time a zip member can carry.
/// Wheel builders stamp the members with it instead of the time of the build, so that a build
/// that is otherwise deterministic makes the same bytes every time.
const SOURCE_DATE_EPOCH: &str = "315532800";

/// How often the builder looks at the clock and the caller's stop request while a build runs
/// (its end is noticed at once: the launcher says so).
const POLL: Duration = Duration::from_millis(100);

/// How long the resident launcher may take to answer a start (it forks and answers at once).
const LAUNCHER_ANSWER: Duration = Duration::from_secs(10);

/// The prefix of build directories' names.
const DIRECTORY_PREFIX: &str = "piw-build-";

/// The lock file in each build directory.
const LOCK_FILE: &str = "lock";

/// The placeholders a build command may use.
const PLACEHOLDERS: &[&str] = &["python", "package", "version", "source", "index_url", "wheel_dir"];

/// A build command with `{placeholder}`s, split into words at white space (no shell and no
/// quoting: a word is one argument, placeholders are replaced inside words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTemplate {
    words: Vec<String>,
}

/// Why a build command template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid build command {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: String,
}

impl FromStr for CommandTemplate {
    type Err = TemplateError;

    fn from_str(template: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| TemplateError { template: template.to_string(), reason };
        let words: Vec<String> = template.split_whitespace().map(str::to_string).collect();
        if words.is_empty() {
            return Err(bad("it is empty".into()));
        }
        for word in &words {
            let mut rest = word.as_str();
            while let Some(open) = rest.find(['{', '}']) {
                if rest[open..].starts_with('}') {
                    return Err(bad(format!("a '}}' without '{{' in {word:?}")));
                }
                let Some(close) = rest[open..].find('}') else {
                    return Err(bad(format!("a '{{' without '}}' in {word:?}")));
                };
                let name = &rest[open + 1..open + close];
                if !PLACEHOLDERS.contains(&name) {
                    return Err(bad(format!("unknown placeholder {{{name}}} (known: {})", placeholder_list())));
                }
                rest = &rest[open + close + 1..];
            }
        }
        if !words.iter().any(|word| word.contains("{source}")) {
            return Err(bad("it does not name {source}: a build must be made from the pinned, checked source file".into()));
        }
        Ok(CommandTemplate { words })
    }
}

fn placeholder_list() -> String {
    PLACEHOLDERS.iter().map(|name| format!("{{{name}}}")).collect::<Vec<_>>().join(" ")
}

impl fmt::Display for CommandTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.words.join(" "))
    }
}

impl Default for CommandTemplate {
    fn default() -> Self {
        DEFAULT_COMMAND.parse().unwrap_or_else(|_| CommandTemplate { words: vec!["false".into()] })
    }
}

impl CommandTemplate {
    /// The command's words with the placeholders replaced. A word holding a placeholder
    /// whose value is empty is left out: a master that names no index leaves out
    /// `--index-url={index_url}`, and pip uses its own configuration.
    pub fn render(&self, values: &[(&str, &str)]) -> Vec<String> {
        self.words
            .iter()
            .filter_map(|word| {
                let mut out = word.clone();
                for (name, value) in values {
                    let placeholder = format!("{{{name}}}");
                    if out.contains(&placeholder) && value.is_empty() {
                        return None;
                    }
                    out = out.replace(&placeholder, value);
                }
                Some(out)
            })
            .collect()
    }
}

/// How every build of a slave's run is made.
#[derive(Debug, Clone)]
pub struct BuilderOptions {
    /// The `piw-slave` binary, started once as the resident launcher (`piw-slave launcher`).
    pub launcher: PathBuf,
    /// Where build directories are made.
    pub build_root: PathBuf,
    /// The Python interpreter (`{python}`).
    pub python: String,
    /// The build command.
    pub command: CommandTemplate,
    /// Wall-clock limit of one build.
    pub timeout: Duration,
    /// Address-space limit of each build (`RLIMIT_AS`), bytes; 0 = none.
    pub memory_limit: u64,
    /// The most of the build log kept in the result, bytes (the end of the log).
    pub log_limit: u64,
}

impl BuilderOptions {
    /// The defaults (this very binary as the launcher, `python3`, [`DEFAULT_COMMAND`], 3 h,
    /// no memory limit, 1 MiB of log) with builds under `build_root`.
    pub fn new(build_root: &Path) -> io::Result<BuilderOptions> {
        Ok(BuilderOptions {
            launcher: std::env::current_exe()?,
            build_root: build_root.to_path_buf(),
            python: "python3".into(),
            command: CommandTemplate::default(),
            timeout: Duration::from_secs(3 * 3600),
            memory_limit: 0,
            log_limit: 1 << 20,
        })
    }
}

/// The release to build and where from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildJob {
    /// Package name, as the master gave it.
    pub package: String,
    /// Version.
    pub version: String,
    /// The pinned source, downloaded and checked before the build command runs (`{source}`
    /// is its path).
    pub source: SourceFile,
    /// The index build dependencies come from (`{index_url}`).
    pub index_url: String,
}

/// Runs builds.
#[derive(Debug)]
pub struct Builder {
    options: BuilderOptions,
    apt: Option<Arc<AptIndex>>,
    sources: SourceClient,
    /// The resident launcher, once the first build has started it.
    resident: Mutex<Option<Resident>>,
}

/// A finished build: its result, and its directory with the wheels until it is cleaned up.
#[derive(Debug)]
pub struct Build {
    /// What the build did.
    pub result: BuildResult,
    /// The process group the build ran in (the launcher's pid), for diagnostics and tests.
    pub process_group: Option<i32>,
    directory: Option<PathBuf>,
    /// The directory's lock file, locked while the directory is in use.
    lock: Option<File>,
    wheels: BTreeMap<String, PathBuf>,
}

impl Build {
    /// The path of one of the build's wheels.
    pub fn wheel(&self, filename: &str) -> Option<&Path> {
        self.wheels.get(filename).map(PathBuf::as_path)
    }

    /// The build's directory, until it is cleaned up.
    pub fn directory(&self) -> Option<&Path> {
        self.directory.as_deref()
    }

    /// Removes the build's directory and its wheels.
    pub fn clean_up(mut self) -> io::Result<()> {
        let removed = match self.directory.take() {
            Some(dir) => remove_tree(&dir),
            None => Ok(()),
        };
        self.lock = None;
        removed
    }

    fn failed(kind: FailureKind, output: String) -> Build {
        Build {
            result: BuildResult {
                success: false,
                failure: Some(kind),
                exit_status: None,
                duration: Duration::ZERO,
                cpu_time: Duration::ZERO,
                peak_memory: 0,
                output,
                files: Vec::new(),
            },
            process_group: None,
            directory: None,
            lock: None,
            wheels: BTreeMap::new(),
        }
    }
}

impl Drop for Build {
    fn drop(&mut self) {
        if let Some(dir) = self.directory.take()
            && let Err(e) = remove_tree(&dir)
        {
            tracing::warn!("cannot remove the build directory {}: {e}", dir.display());
        }
    }
}

/// Why the builder stopped a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    Timeout,
    Abandoned,
}

impl Builder {
    /// A builder; `apt` maps shared libraries to Debian packages for wheel inspection. Fails
    /// only when no HTTP client can be made for the sources.
    pub fn new(options: BuilderOptions, apt: Option<Arc<AptIndex>>) -> anyhow::Result<Builder> {
        let sources = SourceClient::new()?;
        Ok(Builder { options, apt, sources, resident: Mutex::new(None) })
    }

    /// The builder's options.
    pub fn options(&self) -> &BuilderOptions {
        &self.options
    }

    /// Runs one build and waits for it, on the calling thread (see the module
    /// documentation). `stop` is asked a few times a second; once it says true the build is
    /// killed and reported as failed.
    pub fn build(&self, job: &BuildJob, stop: &dyn Fn() -> bool) -> Build {
        let (dir, lock) = match self.make_directory() {
            Ok(made) => made,
            Err(e) => {
                let kind = if e.raw_os_error() == Some(Errno::ENOSPC as i32) { FailureKind::NoSpace } else { FailureKind::Builder };
                let note = format!("[piw-slave] cannot make a build directory under {}: {e}\n", self.options.build_root.display());
                return Build::failed(kind, note);
            }
        };
        let mut build = Build::failed(FailureKind::Builder, String::new());
        build.directory = Some(dir.clone());
        build.lock = Some(lock);
        let wheel_dir = dir.join("wheels");
        let log_path = dir.join("build.log");
        let report_path = dir.join("usage");
        // The download has a limit of its own, so that a slow index never eats into the
        // command's time (a command past its time is the package's failure).
        let started = Instant::now();
        let source = match self.sources.fetch(&job.source, &dir.join("source"), started + SourceFile::DOWNLOAD_LIMIT, stop) {
            Ok(path) => path,
            Err(e) => {
                build.result.failure = Some(e.kind);
                build.result.duration = started.elapsed();
                build.result.output = format!("[piw-slave] {e}\n");
                tracing::warn!("build of {} {} failed before it started: {e}", job.package, job.version);
                return build;
            }
        };
        let argv = self.options.command.render(&[
            ("python", &self.options.python),
            ("package", &job.package),
            ("version", &job.version),
            ("source", &source.to_string_lossy()),
            ("index_url", &job.index_url),
            ("wheel_dir", &wheel_dir.to_string_lossy()),
        ]);
        tracing::info!("building {} {}: {}", job.package, job.version, argv.join(" "));
        let command = format!("[piw-slave] $ {}\n", shorten_paths(&argv.join(" "), &dir));

        let run = self.run(&dir, &argv, &log_path, &report_path, Instant::now() + self.options.timeout, stop);
        build.result.duration = started.elapsed();
        let mut notes = String::new();
        let mut launcher_failed = false;
        let (report, stopped) = match run {
            Ok(run) => {
                build.process_group = run.process_group;
                if let Some(why) = &run.failed {
                    notes.push_str(&format!("[piw-slave] the build's launcher failed: {why}\n"));
                    launcher_failed = true;
                }
                if run.hard_killed {
                    notes.push_str(&format!(
                        "[piw-slave] the build did not stop within {} of being told to; its process group was killed\n",
                        HumanDuration(KILL_GRACE)
                    ));
                }
                (run.report, run.stopped)
            }
            Err(e) => {
                notes.push_str(&format!("[piw-slave] the build's launcher failed: {e}\n"));
                (None, None)
            }
        };
        if let Some(report) = &report {
            build.result.cpu_time = report.cpu_time;
            build.result.peak_memory = report.peak_memory;
            if let Ended::Exited(code) = report.ended {
                build.result.exit_status = Some(code);
            }
        }
        let log = match read_tail(&log_path, self.options.log_limit) {
            Ok(log) => shorten_paths(&log, &dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => format!("[piw-slave] cannot read the build log {}: {e}\n", log_path.display()),
        };

        let failure = match (stopped, &report) {
            // A build past its time is the package's, even if its launcher then failed too.
            (Some(Stopped::Timeout), _) => {
                notes.push_str(&format!("[piw-slave] the build was killed after {} (the build timeout)\n", HumanDuration(self.options.timeout)));
                Some(FailureKind::Timeout)
            }
            (Some(Stopped::Abandoned), _) => {
                notes.push_str("[piw-slave] the build was abandoned and killed\n");
                Some(FailureKind::Builder)
            }
            // Whatever the report says, the build may have been stopped by the launcher's end.
            (None, _) if launcher_failed => Some(FailureKind::Builder),
            (None, None) => Some(FailureKind::Builder),
            (None, Some(report)) => match &report.ended {
                Ended::NotStarted(reason) => {
                    notes.push_str(&format!("[piw-slave] {reason}\n"));
                    Some(FailureKind::Builder)
                }
                Ended::Exited(0) => self.collect_wheels(&wheel_dir, &mut build, &mut notes),
                Ended::Exited(code) => {
                    notes.push_str(&format!("[piw-slave] the build command exited with status {code}\n"));
                    Some(classify(&log, None))
                }
                Ended::Signalled(signal) => {
                    let name = Signal::try_from(*signal).map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_string());
                    notes.push_str(&format!("[piw-slave] the build command was killed by {name}\n"));
                    Some(classify(&log, Some(*signal)))
                }
            },
        };
        build.result.success = failure.is_none();
        build.result.failure = failure;
        if !build.result.success {
            build.result.files.clear();
            build.wheels.clear();
        }
        let log = if notes.is_empty() { log } else if log.is_empty() || log.ends_with('\n') { log + &notes } else { log + "\n" + &notes };
        // The command first, which the failure's class was not read from.
        build.result.output = command + &log;
        match build.result.failure {
            None => tracing::info!("built {} {} in {}: {} wheel(s)", job.package, job.version, HumanDuration(round(build.result.duration)), build.result.files.len()),
            Some(kind) => tracing::info!("build of {} {} failed ({kind:?}) after {}", job.package, job.version, HumanDuration(round(build.result.duration))),
        }
        build
    }

    /// Makes a build directory and locks it.
    fn make_directory(&self) -> io::Result<(PathBuf, File)> {
        let dir = tempfile::Builder::new().prefix(DIRECTORY_PREFIX).tempdir_in(&self.options.build_root)?.keep();
        let made = (|| {
            let lock = File::create(dir.join(LOCK_FILE))?;
            lock.try_lock().map_err(io::Error::from)?;
            fs::create_dir(dir.join("wheels"))?;
            fs::create_dir(dir.join("tmp"))?;
            fs::create_dir(dir.join("source"))?;
            Ok(lock)
        })();
        match made {
            Ok(lock) => Ok((dir, lock)),
            Err(e) => {
                let _ = remove_tree(&dir);
                Err(e)
            }
        }
    }

    /// Removes the build directories under the build root that no live slave holds (left by
    /// a slave that died); returns them.
    pub fn remove_stale(&self) -> Vec<PathBuf> {
        remove_stale(&self.options.build_root)
    }

    /// Runs the build under a launcher forked by the resident launcher (started at the first
    /// build, and again after one has failed or ended) and waits for it.
    fn run(&self, dir: &Path, argv: &[String], log_path: &Path, report_path: &Path, deadline: Instant, stop: &dyn Fn() -> bool) -> io::Result<Run> {
        File::create(log_path)?;
        let launch = Launch {
            command: argv.to_vec(),
            directory: dir.to_path_buf(),
            log: log_path.to_path_buf(),
            report: report_path.to_path_buf(),
            // Temporary files go with the build directory, and are removed with it.
            env: vec![("TMPDIR".into(), dir.join("tmp").to_string_lossy().into_owned())],
            memory_limit: self.options.memory_limit,
        };
        // A thread that panicked holding the lock may have left the resident out of step.
        let mut resident = self.resident.lock().unwrap_or_else(|poisoned| {
            self.resident.clear_poison();
            let mut resident = poisoned.into_inner();
            *resident = None;
            resident
        });
        if resident.as_mut().is_some_and(|launcher| !launcher.is_running()) {
            tracing::warn!("the resident launcher ended between builds; starting another");
            *resident = None;
        }
        // A resident whose input is closed (it died a moment ago) has certainly not started
        // the build: it is replaced once, and the build is not to blame. Any later failure
        // may have come after a fork, so the build is not started twice.
        let pid = match self.start_build(&mut resident, &launch) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                tracing::warn!("the resident launcher is gone ({e}); starting another");
                *resident = None;
                self.start_build(&mut resident, &launch)
            }
            started => started,
        };
        let pid = match pid {
            Ok(Ok(pid)) => pid,
            Ok(Err(reason)) => {
                // The resident could not fork.
                let report = Report { ended: Ended::NotStarted(reason), stopped_by: None, cpu_time: Duration::ZERO, peak_memory: 0 };
                return Ok(Run { process_group: None, report: Some(report), stopped: None, hard_killed: false, failed: None });
            }
            Err(e) => {
                *resident = None;
                return Err(e);
            }
        };
        let Some(launcher) = resident.as_mut() else { unreachable!("started above") };
        let mut run = wait_for_build(launcher, pid, report_path, deadline, stop);
        if run.failed.is_some() {
            // Dropping it ends it, and what it still runs.
            *resident = None;
            // A build launcher that lost its resident still kills its build and reports; the
            // build's directory is not removed under it.
            let gone_by = Instant::now() + KILL_GRACE;
            while killpg(Pid::from_raw(pid), None).is_ok() && Instant::now() < gone_by {
                std::thread::sleep(Duration::from_millis(10));
            }
            run.report = fs::read_to_string(report_path).ok().and_then(|text| Report::parse(&text));
        }
        Ok(run)
    }

    /// Has the resident (started if there is none) fork a build launcher for `launch`: its
    /// pid, or why the resident could not fork.
    fn start_build(&self, resident: &mut Option<Resident>, launch: &Launch) -> io::Result<Result<i32, String>> {
        let launcher = match resident {
            Some(launcher) => launcher,
            None => resident.insert(Resident::start(&self.options.launcher, &build_environment())?),
        };
        launcher.send(&ToLauncher::Start(launch.clone()))?;
        match launcher.answer(LAUNCHER_ANSWER)? {
            Some(FromLauncher::Started { pid }) => Ok(Ok(pid)),
            Some(FromLauncher::NotStarted { reason }) => Ok(Err(reason)),
            Some(other) => Err(io::Error::other(format!("the launcher answered a start with {other:?}"))),
            None => Err(io::Error::other(format!("the launcher did not answer within {}", HumanDuration(LAUNCHER_ANSWER)))),
        }
    }

    /// Inspects the wheels of a build whose command succeeded; returns the failure, if any.
    fn collect_wheels(&self, wheel_dir: &Path, build: &mut Build, notes: &mut String) -> Option<FailureKind> {
        let mut paths = match fs::read_dir(wheel_dir) {
            Ok(entries) => entries.filter_map(Result::ok).map(|entry| entry.path()).filter(|path| path.extension().is_some_and(|ext| ext == "whl")).collect::<Vec<_>>(),
            Err(e) => {
                notes.push_str(&format!("[piw-slave] cannot list the wheel directory {}: {e}\n", wheel_dir.display()));
                return Some(FailureKind::Builder);
            }
        };
        paths.sort();
        if paths.is_empty() {
            notes.push_str(&format!("[piw-slave] the build command exited 0 but left no wheel in {}\n", wheel_dir.display()));
            return Some(FailureKind::Build);
        }
        for path in paths {
            match inspect(&path, self.apt.as_deref()) {
                Ok(file) => {
                    build.wheels.insert(file.filename.clone(), path);
                    build.result.files.push(file);
                }
                Err(e) => {
                    notes.push_str(&format!("[piw-slave] cannot inspect the wheel {}: {e}\n", path.display()));
                    return Some(FailureKind::Builder);
                }
            }
        }
        None
    }
}

/// Waits for the build launcher `pid` to end, stopping it at the deadline or when `stop`
/// says so, and killing its process group if it does not stop within [`KILL_GRACE`]. A
/// launcher that fails meanwhile ends the wait with what is known.
fn wait_for_build(launcher: &mut Resident, pid: i32, report_path: &Path, deadline: Instant, stop: &dyn Fn() -> bool) -> Run {
    let mut stopped = None;
    let mut told_at: Option<Instant> = None;
    let mut killed_at: Option<Instant> = None;
    // The launcher says when the build has ended; between its answers the builder looks at
    // the clock and the caller's stop request.
    let failed = loop {
        match launcher.answer(POLL) {
            Ok(Some(FromLauncher::Ended)) => break None,
            Ok(Some(other)) => break Some(format!("it answered {other:?} during a build")),
            Ok(None) => {}
            Err(e) => break Some(e.to_string()),
        }
        let now = Instant::now();
        let sent = match (told_at, killed_at) {
            (None, _) => {
                if stop() {
                    stopped = Some(Stopped::Abandoned);
                } else if now >= deadline {
                    stopped = Some(Stopped::Timeout);
                }
                match stopped {
                    Some(why) => {
                        let why = match why {
                            Stopped::Timeout => "it ran past its timeout",
                            Stopped::Abandoned => "it was abandoned",
                        };
                        tracing::info!("stopping the build: {why}");
                        told_at = Some(now);
                        launcher.send(&ToLauncher::Stop)
                    }
                    None => Ok(()),
                }
            }
            (Some(told), None) if now.duration_since(told) >= KILL_GRACE => {
                tracing::warn!("the build did not stop within {}: killing its process group", HumanDuration(KILL_GRACE));
                killed_at = Some(now);
                launcher.send(&ToLauncher::Kill)
            }
            (Some(_), Some(killed)) if now.duration_since(killed) >= KILL_GRACE => {
                break Some(format!("the build did not end within {} of its process group being killed", HumanDuration(KILL_GRACE)));
            }
            _ => Ok(()),
        };
        if let Err(e) = sent {
            break Some(e.to_string());
        }
    };
    let report = fs::read_to_string(report_path).ok().and_then(|text| Report::parse(&text));
    Run { process_group: Some(pid), report, stopped, hard_killed: killed_at.is_some(), failed }
}

/// The outcome of running the launcher.
struct Run {
    process_group: Option<i32>,
    /// Why the launcher failed during the build, if it did (it is then replaced).
    failed: Option<String>,
    report: Option<Report>,
    stopped: Option<Stopped>,
    hard_killed: bool,
}

/// Inspects one wheel (wheel inspection lives in [`crate::inspect`]).
fn inspect(path: &Path, apt: Option<&AptIndex>) -> Result<WheelFile, String> {
    crate::inspect::inspect_wheel(path, apt).map_err(|e| e.to_string())
}

/// Why a build command failed, from the end of its log: out of disk, out of memory (an
/// allocation or a library mapping refused under the memory limit, or a SIGKILL nobody here
/// sent, which is what the kernel's out-of-memory killer does), the source not downloaded
/// (see [`source_unavailable`]), else a real failure of the build.
fn classify(log: &str, signal: Option<i32>) -> FailureKind {
    let log = log.to_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|needle| log.contains(needle));
    if any(&["no space left on device", "disk quota exceeded"]) {
        FailureKind::NoSpace
    } else if signal == Some(Signal::SIGKILL as i32)
        || any(&["memoryerror", "cannot allocate memory", "out of memory", "std::bad_alloc", "virtual memory exhausted", "failed to map segment"])
    {
        FailureKind::OutOfMemory
    } else if source_unavailable(&log) {
        FailureKind::Source
    } else {
        FailureKind::Build
    }
}

/// Whether pip gave up because it could not get the release from the index: its last words
/// (the log's last few lines, where a build's own output does not come after them) say it
/// found no such release or could not fetch it, and the log says the index failed or did not
/// answer. A package's build that fails on a network error of its own ends otherwise.
fn source_unavailable(log: &str) -> bool {
    let last_words: Vec<&str> = log.lines().rev().filter(|line| !line.trim().is_empty()).take(3).collect();
    let gave_up = last_words.iter().any(|line| {
        ["could not find a version that satisfies the requirement", "no matching distribution found for", "could not install requirement"]
            .iter()
            .any(|words| line.contains(words))
    });
    // pip's words when the index answers with an error or not at all.
    let unreachable = ["could not fetch url", "max retries exceeded", "connection broken by", "read timed out", "http error 5"]
        .iter()
        .any(|words| log.contains(words));
    gave_up && unreachable
}

/// `text` with the build directory's path written `$BUILD`: a builder's own paths tell a
/// reader of the log nothing, and differ from build to build. Only that path, whose last part
/// is the build's own random name, is replaced: the build root's (`/tmp`, say) could be part of
/// any other path or word.
fn shorten_paths(text: &str, dir: &Path) -> String {
    match dir.to_str() {
        Some(path) if path.contains(DIRECTORY_PREFIX) => text.replace(path, "$BUILD"),
        _ => text.to_string(),
    }
}


/// The last `limit` bytes of the log at `path` as text, starting at a line, with a note when
/// the beginning was left out.
fn read_tail(path: &Path, limit: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut bytes = Vec::new();
    if size <= limit {
        file.read_to_end(&mut bytes)?;
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    file.seek(SeekFrom::Start(size - limit))?;
    file.take(limit).read_to_end(&mut bytes)?;
    // Start at the first whole line, unless the lines are very long.
    let start = bytes.iter().take(4096).position(|&b| b == b'\n').map_or(0, |at| at + 1);
    let left_out = size - (bytes.len() - start) as u64;
    Ok(format!("[piw-slave] the first {left_out} bytes of the log are left out\n{}", String::from_utf8_lossy(&bytes[start..])))
}

/// PATH with `$HOME/.cargo/bin` in front, for builds of Rust extensions, when that directory
/// exists and PATH lacks it; None to leave PATH alone.
/// The environment of every build, set on the resident launcher (each build's `TMPDIR` is its
/// own).
fn build_environment() -> Vec<(&'static str, OsString)> {
    let mut env = vec![
        ("PIWHEELS_BUILD", "1".into()),
        // Build scripts may not clone repositories over the network.
        ("GIT_ALLOW_PROTOCOL", "file".into()),
        ("PIP_NO_INPUT", "1".into()),
        ("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH.into()),
    ];
    if let Some(path) = path_with_cargo() {
        env.push(("PATH", path));
    }
    env
}

fn path_with_cargo() -> Option<OsString> {
    let cargo = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin");
    if !cargo.is_dir() {
        return None;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| dir == cargo) {
        return None;
    }
    std::env::join_paths(std::iter::once(cargo).chain(std::env::split_paths(&path))).ok()
}

/// Removes a build directory, even one whose build left directories without write
/// permission.
fn remove_tree(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(dir);
            fs::remove_dir_all(dir)
        }
    }
}

fn make_writable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else { return };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(meta.permissions().mode() | 0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            make_writable(&entry.path());
        }
    }
}

/// A duration to the millisecond, for messages.
fn round(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// Removes the build directories under `build_root` that no live builder holds (left by one
/// that died); returns them. A directory without a lock file (one a builder is making at this
/// very moment, or anything else) is left alone.
pub fn remove_stale(build_root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(build_root) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let dir = entry.path();
        let is_build = entry.file_name().to_str().is_some_and(|name| name.starts_with(DIRECTORY_PREFIX));
        if !is_build || !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let Ok(lock) = File::open(dir.join(LOCK_FILE)) else { continue };
        if lock.try_lock().is_err() {
            continue;
        }
        match remove_tree(&dir) {
            Ok(()) => removed.push(dir),
            Err(e) => tracing::warn!("cannot remove the stale build directory {}: {e}", dir.display()),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_command_parses_and_renders() {
        let template = CommandTemplate::default();
        assert_eq!(template.to_string(), DEFAULT_COMMAND.split_whitespace().collect::<Vec<_>>().join(" "));
        let values = |index_url| {
            [("python", "python3"), ("package", "foo"), ("version", "1.0"), ("source", "/b/source/foo-1.0.tar.gz"), ("index_url", index_url), ("wheel_dir", "/b/w")]
        };
        let argv = template.render(&values("http://m/simple"));
        // pip builds the checked file, not whatever the index names foo 1.0 now.
        assert_eq!(&argv[..5], ["python3", "-m", "pip", "wheel", "/b/source/foo-1.0.tar.gz"]);
        assert!(argv.contains(&"--wheel-dir=/b/w".to_string()), "{argv:?}");
        assert!(argv.contains(&"--index-url=http://m/simple".to_string()), "{argv:?}");
        assert!(argv.contains(&"--no-deps".to_string()) && argv.contains(&"--no-cache-dir".to_string()), "{argv:?}");
        assert!(!argv.iter().any(|word| word.contains('{')), "{argv:?}");
        // No index named by the master: pip's own configuration decides.
        let argv = template.render(&values(""));
        assert!(!argv.iter().any(|word| word.starts_with("--index-url")), "{argv:?}");
    }

    #[test]
    fn bad_templates_are_refused() {
        for (template, detail) in [
            ("", "empty"),
            ("   ", "empty"),
            ("pip {source} {pakage}", "unknown placeholder {pakage}"),
            ("pip {source} {package", "without"),
            ("pip {source} package}", "without"),
            ("pip wheel {package}=={version}", "does not name {source}"),
        ] {
            let error = template.parse::<CommandTemplate>().expect_err(template);
            assert!(error.to_string().contains(detail), "{template:?}: {error}");
        }
    }

    #[test]
    fn failures_are_classified_from_the_log() {
        assert_eq!(classify("OSError: [Errno 28] No space left on device", None), FailureKind::NoSpace);
        assert_eq!(classify("MemoryError", None), FailureKind::OutOfMemory);
        assert_eq!(classify("cc1: out of memory allocating 65536 bytes", None), FailureKind::OutOfMemory);
        assert_eq!(classify("ImportError: array.so: failed to map segment from shared object", None), FailureKind::OutOfMemory);
        assert_eq!(classify("error: command 'gcc' failed", Some(Signal::SIGKILL as i32)), FailureKind::OutOfMemory);
        assert_eq!(classify("error: command 'gcc' failed", None), FailureKind::Build);
        let unreachable = "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by \
             'ReadTimeoutError(\"HTTPConnectionPool(host='127.0.0.1', port=8000): Read timed out. (read timeout=15)\")': /simple/foo/\n\
             ERROR: Could not find a version that satisfies the requirement foo==1.0 (from versions: none)\n\
             ERROR: No matching distribution found for foo==1.0\n";
        assert_eq!(classify(unreachable, None), FailureKind::Source);
        let failing = "WARNING: Could not fetch URL http://127.0.0.1:8000/simple/foo/: connection error: HTTPConnectionPool(host='127.0.0.1', \
             port=8000): Max retries exceeded with url: /simple/foo/ (Caused by ResponseError('too many 503 error responses')) - skipping\n\
             ERROR: Could not find a version that satisfies the requirement foo==1.0 (from versions: none)";
        assert_eq!(classify(failing, None), FailureKind::Source);
        // A release that is not there, with the index answering, is not the index's fault.
        assert_eq!(classify("ERROR: Could not find a version that satisfies the requirement foo==1.0 (from versions: 0.9)", None), FailureKind::Build);
        // Nor is a build that fails on a download of its own, whatever pip said on the way.
        let own = "WARNING: Retrying (Retry(total=4)) after connection broken by 'ReadTimeoutError': /simple/foo/\n\
             running build_ext\nurllib.error.URLError: <urlopen error [Errno 111] Connection refused>\n\
             error: command 'setup.py' failed: could not fetch url http://example.invalid/lib.tar.gz";
        assert_eq!(classify(own, None), FailureKind::Build);
        // An out-of-memory kill stays one, whatever pip said about the index before.
        assert_eq!(classify(unreachable, Some(Signal::SIGKILL as i32)), FailureKind::OutOfMemory);
        assert_eq!(classify("Segmentation fault", Some(Signal::SIGSEGV as i32)), FailureKind::Build);
    }

    #[test]
    fn the_tail_of_a_long_log_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        fs::write(&path, &text).unwrap();
        assert_eq!(read_tail(&path, 1 << 20).unwrap(), text);
        let tail = read_tail(&path, 100).unwrap();
        let (note, kept) = tail.split_once('\n').unwrap();
        assert!(note.contains("left out"), "{note}");
        assert!(kept.starts_with("line ") && kept.ends_with("line 999\n"), "{kept:?}");
        assert!(kept.len() <= 100);
        assert!(note.contains(&(text.len() - kept.len()).to_string()), "{note}");
    }

    #[test]
    fn a_tree_without_write_permission_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("build");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/file"), "x").unwrap();
        fs::set_permissions(tree.join("a/b"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(tree.join("a"), fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        remove_tree(&tree).unwrap();
    }
}
