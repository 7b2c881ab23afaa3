//! The build launcher: `piw-slave exec-build`, the process every build runs under, and the
//! report it leaves for the builder.
//!
//! The workspace forbids `unsafe`, so the builder cannot change a child between `fork` and
//! `exec` (`pre_exec`). Instead it starts this hidden subcommand of its own binary in a new
//! process group; the launcher prepares itself and then starts the build command, which
//! inherits what it set:
//!
//! 1. the stop signals (SIGTERM, SIGINT, SIGHUP) and SIGCHLD are blocked and read from a
//!    signalfd (the command itself starts with an empty signal mask: std resets it);
//! 2. `PR_SET_PDEATHSIG` = SIGTERM: when the builder's thread ends (the slave died), the
//!    launcher is told to stop, and it then kills the build as below; a parent gone before
//!    the call is noticed by comparing `getppid()` with the pid the builder passed;
//! 3. `PR_SET_CHILD_SUBREAPER`: processes of the build orphaned by their parents (daemons,
//!    double forks, even ones that left the process group with `setsid`) become the
//!    launcher's children, so it can reap and, in the end, kill them;
//! 4. `RLIMIT_AS` = the memory limit, soft and hard, inherited by the whole build and only by
//!    it (the slave is untouched).
//!
//! The launcher waits for the command. When the command exits, or a stop signal arrives (the
//! builder's timeout or abandon, or the parent-death signal), it SIGKILLs every remaining
//! descendant, round after round (an orphan of a killed process is its child at the next
//! round), until it has no child left. Then `getrusage(RUSAGE_CHILDREN)` holds exactly this
//! build: CPU time (user + system) of every process of it, and the peak resident set of its
//! largest process. The launcher writes that and the command's exit status to the report
//! file and exits. This is how the builder measures each build on its own, without `wait4`
//! (not available without `unsafe`) and without sampling /proc.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use clap::Parser;
use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::resource::{Resource, UsageWho, getrusage, setrlimit};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid, getppid};

/// The hidden subcommand of `piw-slave` that runs a build.
pub const SUBCOMMAND: &str = "exec-build";

/// Exit status of a launcher that could not prepare itself.
const LAUNCHER_FAILED: u8 = 125;
/// Exit status of a launcher whose command could not be started.
const COMMAND_NOT_STARTED: u8 = 127;

/// Arguments of `piw-slave exec-build` (internal: the builder writes them).
#[derive(Parser, Debug)]
#[command(name = "piw-slave exec-build", about = "Runs one build for piw-slave (internal)")]
struct LaunchArgs {
    /// Address-space limit of the build in bytes; 0 = none
    #[arg(long, value_name = "BYTES", default_value = "0")]
    memory_limit: u64,
    /// Where to write the report
    #[arg(long, value_name = "FILE")]
    report: PathBuf,
    /// The pid of the slave that started us
    #[arg(long, value_name = "PID")]
    parent_pid: i32,
    /// The build command and its arguments
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// The arguments that make `launcher` run `command` as a build (after [`SUBCOMMAND`]).
pub(crate) fn arguments(memory_limit: u64, report: &Path, parent_pid: u32, command: &[String]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        SUBCOMMAND.into(),
        "--memory-limit".into(),
        memory_limit.to_string().into(),
        "--report".into(),
        report.as_os_str().to_owned(),
        "--parent-pid".into(),
        parent_pid.to_string().into(),
        "--".into(),
    ];
    args.extend(command.iter().map(OsString::from));
    args
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Signalled(i32),
    /// It could not be started (the reason), or the launcher could not prepare.
    NotStarted(String),
}

/// What the launcher reports about one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    /// How the command ended.
    pub(crate) ended: Ended,
    /// The stop signal that made the launcher kill the build, if one did.
    pub(crate) stopped_by: Option<i32>,
    /// CPU time (user + system) of every process of the build.
    pub(crate) cpu_time: Duration,
    /// Peak resident set of the build's largest process, in bytes.
    pub(crate) peak_memory: u64,
}

impl Report {
    /// The report file's text: `key=value` lines.
    fn to_text(&self) -> String {
        let mut text = String::new();
        match &self.ended {
            Ended::Exited(code) => {
                let _ = writeln!(text, "exit={code}");
            }
            Ended::Signalled(signal) => {
                let _ = writeln!(text, "signal={signal}");
            }
            Ended::NotStarted(reason) => {
                let _ = writeln!(text, "error={}", reason.replace('\n', " "));
            }
        }
        if let Some(signal) = self.stopped_by {
            let _ = writeln!(text, "stopped-by={signal}");
        }
        let _ = writeln!(text, "cpu-us={}", self.cpu_time.as_micros());
        let _ = writeln!(text, "peak-rss={}", self.peak_memory);
        text
    }

    /// Reads a report file's text; None when it is incomplete (the launcher was killed).
    pub(crate) fn parse(text: &str) -> Option<Report> {
        let mut ended = None;
        let mut stopped_by = None;
        let mut cpu_time = None;
        let mut peak_memory = None;
        for line in text.lines() {
            let (key, value) = line.split_once('=')?;
            match key {
                "exit" => ended = Some(Ended::Exited(value.parse().ok()?)),
                "signal" => ended = Some(Ended::Signalled(value.parse().ok()?)),
                "error" => ended = Some(Ended::NotStarted(value.to_string())),
                "stopped-by" => stopped_by = Some(value.parse().ok()?),
                "cpu-us" => cpu_time = Some(Duration::from_micros(value.parse().ok()?)),
                "peak-rss" => peak_memory = Some(value.parse().ok()?),
                _ => {}
            }
        }
        Some(Report { ended: ended?, stopped_by, cpu_time: cpu_time?, peak_memory: peak_memory? })
    }
}

/// `piw-slave exec-build ARGS...`: `args` are the arguments after the subcommand's name.
pub fn main(args: &[OsString]) -> ExitCode {
    let program = std::iter::once(OsString::from("piw-slave exec-build"));
    let args = match LaunchArgs::try_parse_from(program.chain(args.iter().cloned())) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    let report = launch(&args);
    let code = match &report.ended {
        Ended::Exited(code) => u8::try_from(*code).unwrap_or(1),
        Ended::Signalled(signal) => u8::try_from(128 + signal).unwrap_or(1),
        Ended::NotStarted(_) => COMMAND_NOT_STARTED,
    };
    if let Err(e) = std::fs::write(&args.report, report.to_text()) {
        eprintln!("piw-slave exec-build: cannot write the build report {}: {e}", args.report.display());
        return ExitCode::from(LAUNCHER_FAILED);
    }
    ExitCode::from(code)
}

/// Prepares, runs the command, kills what is left of the build and measures it.
fn launch(args: &LaunchArgs) -> Report {
    let not_started = |reason: String| Report { ended: Ended::NotStarted(reason), stopped_by: None, cpu_time: Duration::ZERO, peak_memory: 0 };
    let signals = match prepare(args) {
        Ok(signals) => signals,
        Err(reason) => return not_started(reason),
    };
    let program = &args.command[0];
    let child = match Command::new(program).args(&args.command[1..]).stdin(Stdio::null()).spawn() {
        Ok(child) => child,
        Err(e) => return not_started(format!("cannot start {}: {e}", program.to_string_lossy())),
    };
    // The child is reaped below with waitpid(-1), among the orphans; std's handle is dropped
    // (which neither waits nor kills).
    let main = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    drop(child);

    let mut ended = None;
    let mut stopped_by = None;
    while ended.is_none() {
        reap_ready(main, &mut ended);
        if ended.is_some() {
            break;
        }
        match signals.read_signal() {
            Ok(Some(info)) => {
                let signal = i32::try_from(info.ssi_signo).unwrap_or(0);
                if signal != Signal::SIGCHLD as i32 {
                    stopped_by = Some(signal);
                    break;
                }
            }
            Ok(None) => {}
            Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("piw-slave exec-build: cannot read signals: {e}; stopping the build");
                stopped_by = Some(Signal::SIGKILL as i32);
                break;
            }
        }
    }
    kill_descendants(main, &mut ended);

    let (cpu_time, peak_memory) = match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(usage) => {
            let cpu = duration_of(usage.user_time()) + duration_of(usage.system_time());
            // Linux reports the peak resident set in KiB.
            (cpu, u64::try_from(usage.max_rss()).unwrap_or(0).saturating_mul(1024))
        }
        Err(_) => (Duration::ZERO, 0),
    };
    Report {
        ended: ended.unwrap_or_else(|| Ended::NotStarted("the command vanished without an exit status".into())),
        stopped_by,
        cpu_time,
        peak_memory,
    }
}

/// Steps 1 to 4 of the module documentation; returns the signalfd.
fn prepare(args: &LaunchArgs) -> Result<SignalFd, String> {
    let mut mask = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD] {
        mask.add(signal);
    }
    mask.thread_block().map_err(|e| format!("cannot block signals: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(|e| format!("cannot create a signalfd: {e}"))?;
    prctl::set_pdeathsig(Signal::SIGTERM).map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    if getppid().as_raw() != args.parent_pid {
        return Err(format!("the slave (pid {}) is gone", args.parent_pid));
    }
    prctl::set_child_subreaper(true).map_err(|e| format!("cannot become the build's subreaper: {e}"))?;
    if args.memory_limit > 0 {
        setrlimit(Resource::RLIMIT_AS, args.memory_limit, args.memory_limit)
            .map_err(|e| format!("cannot limit the build's memory to {} bytes: {e}", args.memory_limit))?;
    }
    Ok(signals)
}

/// Reaps every child that has ended, noting the command's status.
fn reap_ready(main: Pid, ended: &mut Option<Ended>) {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(status) => note(main, status, ended),
            Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Kills every descendant still alive and reaps them all; returns when no child is left.
fn kill_descendants(main: Pid, ended: &mut Option<Ended>) {
    let me = getpid();
    loop {
        for pid in children_of(me) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        match waitpid(None::<Pid>, None) {
            Ok(status) => note(main, status, ended),
            Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

fn note(main: Pid, status: WaitStatus, ended: &mut Option<Ended>) {
    match status {
        WaitStatus::Exited(pid, code) if pid == main => *ended = Some(Ended::Exited(code)),
        WaitStatus::Signaled(pid, signal, _) if pid == main => *ended = Some(Ended::Signalled(signal as i32)),
        _ => {}
    }
}

/// The processes whose parent is `parent`, from /proc.
fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| parent_in_stat(&stat)) == Some(parent.as_raw()))
        .map(Pid::from_raw)
        .collect()
}

/// The parent pid in a /proc/PID/stat line: the second field after the command name, which
/// is in parentheses and may itself hold spaces and parentheses.
pub(crate) fn parent_in_stat(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn duration_of(time: nix::sys::time::TimeVal) -> Duration {
    let micros = i128::from(time.tv_sec()) * 1_000_000 + i128::from(time.tv_usec());
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_back() {
        let reports = [
            Report { ended: Ended::Exited(0), stopped_by: None, cpu_time: Duration::from_micros(1_234_567), peak_memory: 42 << 20 },
            Report { ended: Ended::Signalled(9), stopped_by: Some(15), cpu_time: Duration::ZERO, peak_memory: 0 },
            Report { ended: Ended::NotStarted("cannot start pip: no such file".into()), stopped_by: None, cpu_time: Duration::ZERO, peak_memory: 0 },
        ];
        for report in reports {
            assert_eq!(Report::parse(&report.to_text()), Some(report));
        }
    }

    #[test]
    fn an_incomplete_report_is_none() {
        assert_eq!(Report::parse(""), None);
        assert_eq!(Report::parse("exit=0\n"), None);
        assert_eq!(Report::parse("exit=0\ncpu-us=5\npeak-rss=x\n"), None);
    }

    #[test]
    fn reads_stat_lines() {
        let stat = "1234 (a (weird) name) S 17 1234 1234 0 -1 4194560 120";
        assert_eq!(parent_in_stat(stat), Some(17));
        assert_eq!(parent_in_stat("garbage"), None);
    }

    #[test]
    fn arguments_end_with_the_command() {
        let args = arguments(5, Path::new("/b/report"), 42, &["pip".into(), "--flag".into()]);
        let parsed = LaunchArgs::try_parse_from(std::iter::once(OsString::from("x")).chain(args.into_iter().skip(1))).expect("parse");
        assert_eq!(parsed.memory_limit, 5);
        assert_eq!(parsed.parent_pid, 42);
        assert_eq!(parsed.report, Path::new("/b/report"));
        assert_eq!(parsed.command, vec![OsString::from("pip"), OsString::from("--flag")]);
    }
}
