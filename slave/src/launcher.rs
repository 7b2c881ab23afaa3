//! The build launcher: `piw-slave launcher`, a process each builder starts once and keeps, and
//! the per-build process it forks for every build, which runs the build command and leaves a
//! report for the builder.
//!
//! **The resident launcher** is started by the builder with pipes for its standard input and
//! output and talks over them in lines of JSON ([`ToLauncher`], [`FromLauncher`]). It
//! 1. blocks the stop signals (SIGTERM, SIGINT, SIGHUP) and SIGCHLD and reads them from a
//!    signalfd;
//! 2. sets `PR_SET_CHILD_SUBREAPER`, so that a process of a build whose own launcher was
//!    killed becomes its child, and is killed once that build has ended;
//! 3. for each `Start`, forks a **build launcher** ([`fork`]: the only `unsafe` in the
//!    workspace), puts it in a process group of its own (both sides call `setpgid`, so the
//!    group exists before `Started` is sent) and answers `Started` with its pid;
//! 4. on `Stop` sends the build launcher SIGTERM, on `Kill` SIGKILLs its process group;
//! 5. when the build launcher has ended, kills what is left in its process group before it
//!    reaps it (so that the group id cannot have been reused); if the build launcher was killed
//!    rather than exiting (it then could not kill its build), waits until nothing of the group
//!    runs and kills every child it has then, round after round (processes of the build that
//!    left the group, orphaned to it); then answers `Ended`;
//! 6. ends when its standard input closes (the builder exited or was killed: the kernel closes
//!    the pipe) or a stop signal arrives, after stopping the build in progress as in 4 (its
//!    process group is killed if it has not ended [`SHUTDOWN_GRACE`] later).
//!
//! **The build launcher**, the forked child, drops the resident's pipes and prepares itself,
//! then starts the build command, which runs under what it set (the command inherits the
//! process group, its standard streams and the memory limit; the parent-death signal and the
//! subreaper flag are the build launcher's own):
//! 1. its standard input is /dev/null, its standard output and error the build's log;
//! 2. `PR_SET_PDEATHSIG` = SIGTERM: when the resident launcher ends, the build launcher is
//!    told to stop; a resident gone before the call is noticed by comparing `getppid()` with
//!    the resident's pid, taken before the fork;
//! 3. `PR_SET_CHILD_SUBREAPER`: processes of the build orphaned by their parents (daemons,
//!    double forks, even ones that left the process group with `setsid`) become its children,
//!    so it can reap and, in the end, kill them;
//! 4. `RLIMIT_AS` = the memory limit, soft and hard, inherited by the whole build and only by
//!    it.
//!
//! The build launcher waits for the command. When the command exits, or a stop signal arrives
//! (`Stop`, or the parent-death signal), it SIGKILLs every remaining descendant, round after
//! round (an orphan of a killed process is its child at the next round), until it has no child
//! left. Then `getrusage(RUSAGE_CHILDREN)` holds exactly this build (a forked process starts
//! with none): CPU time (user + system) of every process of it, and the peak resident set of
//! its largest process. It writes that and the command's exit status to the report file and
//! exits.
//!
//! Forking the resident costs a fraction of a millisecond; executing a new `piw-slave` for each
//! build, as the launcher did before, cost the slave 4–5 ms of CPU per build (the dynamic
//! loader and the binary's start).

mod fork;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::prctl;
use nix::sys::resource::{Resource, UsageWho, getrusage, setrlimit};
use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{Pid, getpid, getppid, setpgid};
use serde::{Deserialize, Serialize};

/// The hidden subcommand of `piw-slave` that is the resident launcher.
pub const SUBCOMMAND: &str = "launcher";

/// Exit status of a build launcher that could not write its report.
const REPORT_FAILED: i32 = 125;

/// How long a resident told to end gives the build in progress to stop before it kills its
/// process group.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the builder asks of its resident launcher, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToLauncher {
    /// Run a build (refused while one runs).
    Start(Launch),
    /// Stop the build in progress: SIGTERM to its launcher, which kills the build and reports.
    Stop,
    /// SIGKILL the build's whole process group (its launcher did not stop in time).
    Kill,
}

/// One build to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Launch {
    /// The command and its arguments.
    pub(crate) command: Vec<String>,
    /// Its working directory.
    pub(crate) directory: PathBuf,
    /// Its standard output and error (created by the builder).
    pub(crate) log: PathBuf,
    /// Where the build launcher writes its report.
    pub(crate) report: PathBuf,
    /// Environment variables of this build alone (those of every build are the resident's).
    pub(crate) env: Vec<(String, String)>,
    /// Address-space limit of the build in bytes; 0 = none.
    pub(crate) memory_limit: u64,
}

/// What the resident launcher answers, one JSON line each.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FromLauncher {
    /// The build launcher runs, with this pid, which is also its process group's id.
    Started { pid: i32 },
    /// No build launcher could be made.
    NotStarted { reason: String },
    /// A build is still running: the builder and the resident are out of step.
    Busy,
    /// The build launcher has ended and nothing of its build is left; the report is written
    /// (unless the launcher was killed).
    Ended,
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

/// What the build launcher reports about one build.
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

/// `piw-slave launcher`: `args` are the arguments after the subcommand's name (none).
pub fn main(args: &[OsString]) -> ExitCode {
    if !args.is_empty() {
        eprintln!("piw-slave {SUBCOMMAND}: takes no arguments (it is started by piw-slave's builders)");
        return ExitCode::from(2);
    }
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("piw-slave {SUBCOMMAND}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The resident launcher's loop (steps 1 to 6 of the module documentation).
fn serve() -> io::Result<()> {
    // Non-blocking: it is read until empty whenever poll says it is ready.
    let signals = block_signals(SfdFlags::SFD_NONBLOCK).map_err(io::Error::other)?;
    prctl::set_child_subreaper(true).map_err(|e| io::Error::other(format!("cannot become a subreaper: {e}")))?;
    // Requests are read through a buffer of our own (std's stdin has one of its own, which
    // poll cannot see), and answers written straight to the pipe, unbuffered: a forked child
    // must not inherit unwritten answers.
    let mut requests = BufReader::new(File::from(io::stdin().as_fd().try_clone_to_owned()?));
    let mut answers = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let mut build: Option<Pid> = None;
    let mut line = String::new();
    // Any failure here still goes through the shutdown below, which stops the build.
    let outcome = 'serve: loop {
        // A line may already be buffered; otherwise wait for input or a signal.
        if requests.buffer().is_empty() {
            let (input, signalled) = {
                let mut fds = [PollFd::new(requests.get_ref().as_fd(), PollFlags::POLLIN), PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => break 'serve Err(io::Error::other(format!("cannot wait for requests: {e}"))),
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|events| !events.is_empty());
                (ready(&fds[0]), ready(&fds[1]))
            };
            if signalled {
                let mut stop = false;
                while let Ok(Some(info)) = signals.read_signal() {
                    stop |= info.ssi_signo != Signal::SIGCHLD as u32;
                }
                if let Err(e) = reap(&mut build, &mut answers) {
                    break 'serve Err(e);
                }
                if stop {
                    break 'serve Ok(());
                }
            }
            if !input {
                continue;
            }
        }
        line.clear();
        match requests.read_line(&mut line) {
            Ok(0) => break 'serve Ok(()),
            Ok(_) => {}
            Err(e) => break 'serve Err(e),
        }
        let request: ToLauncher = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(e) => break 'serve Err(io::Error::other(format!("an unreadable request {line:?}: {e}"))),
        };
        match request {
            ToLauncher::Start(launch) => {
                let answer = match build {
                    Some(_) => FromLauncher::Busy,
                    None => match start(&launch) {
                        Ok(Started::Child { resident }) => {
                            // The build launcher keeps none of the resident's pipes: the
                            // builder must see the end of its input when the resident ends.
                            drop(requests);
                            drop(answers);
                            drop(signals);
                            let code = std::panic::catch_unwind(|| run_build(&launch, resident)).unwrap_or(REPORT_FAILED);
                            std::process::exit(code)
                        }
                        Ok(Started::Parent(pid)) => {
                            build = Some(pid);
                            FromLauncher::Started { pid: pid.as_raw() }
                        }
                        Err(reason) => FromLauncher::NotStarted { reason },
                    },
                };
                if let Err(e) = answer_with(&mut answers, &answer) {
                    break 'serve Err(e);
                }
            }
            ToLauncher::Stop => {
                if let Some(pid) = build {
                    let _ = kill(pid, Signal::SIGTERM);
                }
            }
            ToLauncher::Kill => {
                if let Some(pid) = build {
                    let _ = killpg(pid, Signal::SIGKILL);
                }
            }
        }
    };
    // Told to end: the build in progress is stopped (killed with its group if its launcher
    // takes too long), and everything left is killed.
    if let Some(pid) = build {
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let status = loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT) {
                Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {
                    let _ = killpg(pid, Signal::SIGKILL);
                    break waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT).unwrap_or(WaitStatus::StillAlive);
                }
                Ok(status) => break status,
                Err(_) => break WaitStatus::StillAlive,
            }
        };
        finish(pid, status);
    }
    kill_descendants(None, &mut None);
    outcome
}

fn answer_with(answers: &mut File, answer: &FromLauncher) -> io::Result<()> {
    let mut line = serde_json::to_string(answer).map_err(io::Error::other)?;
    line.push('\n');
    answers.write_all(line.as_bytes())
}

/// Which side of a build launcher's fork this is.
enum Started {
    /// The resident, with the build launcher's pid.
    Parent(Pid),
    /// The build launcher, with the resident's pid.
    Child { resident: Pid },
}

/// Forks a build launcher for `launch`.
fn start(launch: &Launch) -> Result<Started, String> {
    if launch.command.is_empty() {
        return Err("an empty command".into());
    }
    // Taken before the fork: the child compares it with its parent once it has its
    // parent-death signal, and so notices a resident that died in between.
    let resident = getpid();
    match fork::fork_single_threaded() {
        Ok(fork::Forked::Child) => Ok(Started::Child { resident }),
        Ok(fork::Forked::Parent(pid)) => {
            // Also done by the child: whichever runs first, the group exists before the
            // builder hears of it (ESRCH: the child has already ended, and is reaped as any
            // other).
            let _ = setpgid(pid, pid);
            Ok(Started::Parent(pid))
        }
        Err(e) => Err(format!("cannot fork a build launcher: {e}")),
    }
}

/// Reaps what has ended. When the build launcher has, whatever is left of its process group
/// and every other child (the build's orphans) is killed first, and the builder is told.
fn reap(build: &mut Option<Pid>, answers: &mut File) -> io::Result<()> {
    loop {
        // WNOWAIT: a build launcher stays a zombie until its group is killed.
        let status = match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
            Ok(status) => status,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::other(format!("cannot wait for builds: {e}"))),
        };
        let Some(pid) = status.pid() else { return Ok(()) };
        if Some(pid) == *build {
            finish(pid, status);
            *build = None;
            answer_with(answers, &FromLauncher::Ended)?;
        } else {
            let _ = waitpid(pid, None);
        }
    }
}

/// Kills what is left of an ended build launcher's build, and reaps it. A build launcher that
/// exited has killed its build itself; one that was killed leaves its process group, and
/// processes that left the group, which become this process's children once their parents in
/// the group are gone: the group is killed, and once none of it runs, every child too.
fn finish(pid: Pid, status: WaitStatus) {
    // The launcher is a zombie until reaped below, so its group id cannot have been reused.
    let _ = killpg(pid, Signal::SIGKILL);
    if !matches!(status, WaitStatus::Exited(..)) {
        let deadline = Instant::now() + GROUP_GONE;
        while group_runs(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = waitpid(pid, None);
    kill_descendants(None, &mut None);
}

/// How long a killed build's process group may take to die before its orphans are killed.
const GROUP_GONE: Duration = Duration::from_secs(5);

/// Whether a process of process group `group` is still running (not a zombie).
fn group_runs(group: Pid) -> bool {
    processes().any(|stat| stat.group == group.as_raw() && stat.state != "Z")
}

/// The build launcher, in the forked child: prepares, runs the command, kills what is left of
/// the build, measures it and writes the report; its exit status.
fn run_build(launch: &Launch, resident: Pid) -> i32 {
    let report = launch_build(launch, resident);
    let code = match &report.ended {
        Ended::Exited(code) => *code,
        Ended::Signalled(signal) => 128 + signal,
        Ended::NotStarted(_) => 127,
    };
    match std::fs::write(&launch.report, report.to_text()) {
        Ok(()) => code,
        Err(e) => {
            // To the build's log; a log that cannot be written either is no reason to panic.
            let _ = writeln!(io::stderr(), "piw-slave launcher: cannot write the build report {}: {e}", launch.report.display());
            REPORT_FAILED
        }
    }
}

fn launch_build(launch: &Launch, resident: Pid) -> Report {
    let not_started = |reason: String| Report { ended: Ended::NotStarted(reason), stopped_by: None, cpu_time: Duration::ZERO, peak_memory: 0 };
    let signals = match prepare(launch, resident) {
        Ok(signals) => signals,
        Err(reason) => return not_started(reason),
    };
    let program = &launch.command[0];
    let mut command = Command::new(program);
    command.args(&launch.command[1..]).current_dir(&launch.directory).stdin(Stdio::null());
    for (name, value) in &launch.env {
        command.env(name, value);
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return not_started(format!("cannot start {program}: {e}")),
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
                let _ = writeln!(io::stderr(), "piw-slave launcher: cannot read signals: {e}; stopping the build");
                stopped_by = Some(Signal::SIGKILL as i32);
                break;
            }
        }
    }
    kill_descendants(Some(main), &mut ended);

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

/// The stop signals and SIGCHLD, blocked and read from a signalfd.
fn block_signals(flags: SfdFlags) -> Result<SignalFd, String> {
    let mut mask = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGCHLD] {
        mask.add(signal);
    }
    mask.thread_block().map_err(|e| format!("cannot block signals: {e}"))?;
    SignalFd::with_flags(&mask, flags | SfdFlags::SFD_CLOEXEC).map_err(|e| format!("cannot create a signalfd: {e}"))
}

/// Steps 1 to 4 of the build launcher (module documentation); returns its signalfd.
fn prepare(launch: &Launch, resident: Pid) -> Result<SignalFd, String> {
    setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(|e| format!("cannot make the build's process group: {e}"))?;
    // A signalfd of its own (the mask is inherited, already blocked).
    let signals = block_signals(SfdFlags::empty())?;
    let log = File::options().append(true).open(&launch.log).map_err(|e| format!("cannot open the build log {}: {e}", launch.log.display()))?;
    let nothing = File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&nothing).map_err(|e| format!("cannot read from /dev/null: {e}"))?;
    nix::unistd::dup2_stdout(&log).map_err(|e| format!("cannot send output to the build log: {e}"))?;
    nix::unistd::dup2_stderr(&log).map_err(|e| format!("cannot send errors to the build log: {e}"))?;
    drop(log);
    prctl::set_pdeathsig(Signal::SIGTERM).map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    if getppid() != resident {
        return Err("the launcher is gone".into());
    }
    prctl::set_child_subreaper(true).map_err(|e| format!("cannot become the build's subreaper: {e}"))?;
    if launch.memory_limit > 0 {
        setrlimit(Resource::RLIMIT_AS, launch.memory_limit, launch.memory_limit)
            .map_err(|e| format!("cannot limit the build's memory to {} bytes: {e}", launch.memory_limit))?;
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

/// Kills every child still alive, round after round, and reaps them all; returns when no
/// child is left. `main`'s status, if it comes, goes to `ended`.
fn kill_descendants(main: Option<Pid>, ended: &mut Option<Ended>) {
    let me = getpid();
    loop {
        // Usually the command has ended and left nothing: no need to look for children.
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => return,
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
            Ok(status) => {
                if let Some(main) = main {
                    note(main, status, ended);
                }
                continue;
            }
            Err(_) => return,
        }
        for pid in children_of(me) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        match waitpid(None::<Pid>, None) {
            Ok(status) => {
                if let Some(main) = main {
                    note(main, status, ended);
                }
            }
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

/// The processes whose parent is `parent` (a process of one thread: this one), from
/// `/proc/PID/task/PID/children`, or from every `/proc/PID/stat` where the kernel lacks that
/// file.
fn children_of(parent: Pid) -> Vec<Pid> {
    if let Ok(list) = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")) {
        return list.split_whitespace().filter_map(|pid| pid.parse().ok()).map(Pid::from_raw).collect();
    }
    processes().filter(|stat| stat.parent == parent.as_raw()).map(|stat| Pid::from_raw(stat.pid)).collect()
}

/// What this module reads of a process's `/proc/PID/stat`.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    pid: i32,
    state: String,
    parent: i32,
    group: i32,
}

impl Stat {
    /// Reads a /proc/PID/stat line: the pid, then the command name in parentheses (which may
    /// itself hold spaces and parentheses), then the state, the parent and the process group.
    fn parse(line: &str) -> Option<Stat> {
        let pid = line.split_whitespace().next()?.parse().ok()?;
        let mut fields = line[line.rfind(')')? + 1..].split_whitespace();
        let state = fields.next()?.to_string();
        let parent = fields.next()?.parse().ok()?;
        let group = fields.next()?.parse().ok()?;
        Some(Stat { pid, state, parent, group })
    }
}

/// Every process's stat, from /proc.
fn processes() -> impl Iterator<Item = Stat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| Stat::parse(&std::fs::read_to_string(entry.path().join("stat")).ok()?))
}

fn duration_of(time: nix::sys::time::TimeVal) -> Duration {
    let micros = i128::from(time.tv_sec()) * 1_000_000 + i128::from(time.tv_usec());
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// The builder's side: a resident launcher, started once and kept.
#[derive(Debug)]
pub(crate) struct Resident {
    process: std::process::Child,
    /// Its input; closed first when it is dropped.
    requests: Option<std::process::ChildStdin>,
    answers: BufReader<std::process::ChildStdout>,
}

/// How long a resident launcher being dropped has to end before it is killed: it gives a build
/// in progress [`SHUTDOWN_GRACE`], and a killed one's group [`GROUP_GONE`].
const RESIDENT_GRACE: Duration = Duration::from_secs(SHUTDOWN_GRACE.as_secs() + GROUP_GONE.as_secs() + 2);

impl Resident {
    /// Starts `program launcher` with `env` for every build.
    pub(crate) fn start(program: &Path, env: &[(&str, OsString)]) -> io::Result<Resident> {
        let mut command = Command::new(program);
        // A process group of its own, as each build has: a signal to the builder's group (a
        // terminal's Ctrl-C) reaches the builder, which stops the build in order.
        command.arg(SUBCOMMAND).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).process_group(0);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut process = command.spawn().map_err(|e| io::Error::new(e.kind(), format!("cannot run the launcher {}: {e}", program.display())))?;
        let (Some(requests), Some(answers)) = (process.stdin.take(), process.stdout.take()) else {
            return Err(io::Error::other("the launcher has no pipes"));
        };
        Ok(Resident { process, requests: Some(requests), answers: BufReader::new(answers) })
    }

    /// Whether it is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(None))
    }

    /// Sends a request.
    pub(crate) fn send(&mut self, request: &ToLauncher) -> io::Result<()> {
        let mut line = serde_json::to_string(request).map_err(io::Error::other)?;
        line.push('\n');
        match self.requests.as_mut() {
            Some(requests) => requests.write_all(line.as_bytes()),
            None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "the launcher's input is closed")),
        }
    }

    /// The next answer, waiting at most `timeout`; None when none came in time. An error when
    /// the launcher has ended.
    pub(crate) fn answer(&mut self, timeout: Duration) -> io::Result<Option<FromLauncher>> {
        let deadline = Instant::now() + timeout;
        while self.answers.buffer().is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.answers.get_ref().as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(0) => return Ok(None),
                Ok(_) => break,
                // A signal: wait for the time that is left.
                Err(Errno::EINTR) => {}
                Err(e) => return Err(io::Error::other(format!("cannot wait for the launcher: {e}"))),
            }
        }
        let mut line = String::new();
        if self.answers.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the launcher has ended"));
        }
        serde_json::from_str(&line).map(Some).map_err(|e| io::Error::other(format!("the launcher answered {line:?}: {e}")))
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        // The end of its input, or SIGTERM, ends it; it then stops any build it still runs. No
        // signal to one already reaped: its pid may be another process's now.
        self.requests = None;
        if matches!(self.process.try_wait(), Ok(None)) {
            let _ = kill(Pid::from_raw(self.process.id().cast_signed()), Signal::SIGTERM);
        }
        let deadline = Instant::now() + RESIDENT_GRACE;
        while matches!(self.process.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = self.process.kill();
                let _ = self.process.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
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
        assert_eq!(Stat::parse(stat), Some(Stat { pid: 1234, state: "S".into(), parent: 17, group: 1234 }));
        assert_eq!(Stat::parse("garbage"), None);
    }
}
