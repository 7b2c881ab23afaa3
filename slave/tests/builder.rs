//! The builder against real processes: real pip building sdists served by a fake PyPI, build
//! commands that fail, sleep, fork and eat memory, and /proc to check that nothing of a killed
//! build survives.
//!
//! pip builds without build isolation here (the fake index serves no setuptools), so the
//! Python on PATH must have setuptools and wheel: run `source scripts/setup-lib.sh &&
//! ensure_test_python` first, as `scripts/test.sh` does.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use piwheels_common::protocols::FailureKind;
use piwheels_slave::apt::AptIndex;
use piwheels_slave::builder::{Build, BuildJob, Builder, BuilderOptions, DEFAULT_COMMAND};
use piwheels_testsupport::pypi::{FakePypi, sdist};
use sha2::{Digest, Sha256};

/// The default build command, without build isolation.
fn pip_command() -> String {
    format!("{DEFAULT_COMMAND} --no-build-isolation")
}

/// Checks the Python on PATH can build without isolation.
fn require_build_python() {
    let ok = Command::new("python3").args(["-c", "import setuptools, wheel"]).status().is_ok_and(|status| status.success());
    assert!(ok, "python3 on PATH lacks setuptools or wheel: run `source scripts/setup-lib.sh && ensure_test_python` first");
}

/// A builder with its builds under `root`, this crate's piw-slave as the launcher.
fn builder(root: &Path, command: &str, adjust: impl FnOnce(&mut BuilderOptions)) -> Builder {
    let mut options = BuilderOptions::new(root).expect("options");
    options.launcher = PathBuf::from(env!("CARGO_BIN_EXE_piw-slave"));
    options.command = command.parse().expect("build command");
    options.timeout = Duration::from_secs(600);
    adjust(&mut options);
    Builder::new(options, None).expect("builder")
}

/// The build of `package` `version` from the source `pypi` serves, as the master pins it.
fn job(pypi: &FakePypi, package: &str, version: &str) -> BuildJob {
    BuildJob { package: package.into(), version: version.into(), source: pypi.source_file(package, version), index_url: pypi.simple_url() }
}

/// A build whose build command ignores its source: the fake PyPI that serves the source, and
/// the job.
fn any_job(package: &str) -> (FakePypi, BuildJob) {
    let pypi = serve(package, "1", format!("the source of {package}\n").into_bytes());
    let job = job(&pypi, package, "1");
    (pypi, job)
}

fn never() -> bool {
    false
}

/// A fake PyPI serving one sdist.
fn serve(name: &str, version: &str, sdist: Vec<u8>) -> FakePypi {
    let pypi = FakePypi::start();
    pypi.create_package(name, None);
    pypi.add_source(name, version, sdist);
    pypi
}

/// Writes an executable script.
fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).expect("write script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod script");
    path
}

/// The pids in a pid file (one a line).
fn pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path).unwrap_or_default().lines().filter_map(|line| line.trim().parse().ok()).collect()
}

/// Whether a process exists (a zombie counts: it has not been reaped).
fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The processes in process group `group`.
fn group_members(group: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        if stat[close + 1..].split_whitespace().nth(2).and_then(|field| field.parse::<i32>().ok()) == Some(group) {
            members.push(pid);
        }
    }
    members
}

/// The build's directory is gone once it is cleaned up, and nothing is left in the root.
fn check_cleaned_up(build: Build, root: &Path) {
    let dir = build.directory().expect("a build directory").to_path_buf();
    assert!(dir.starts_with(root), "{} is not under {}", dir.display(), root.display());
    build.clean_up().expect("clean up");
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert_eq!(fs::read_dir(root).expect("read root").count(), 0, "the build root is not empty");
}

#[test]
fn builds_a_pure_python_sdist_into_an_inspected_wheel() {
    require_build_python();
    let pypi = serve("tiny-pkg", "1.0", sdist::pure("tiny-pkg", "1.0"));
    let root = tempfile::tempdir().expect("root");
    let builder = builder(root.path(), &pip_command(), |_| {});
    let build = builder.build(&job(&pypi, "tiny-pkg", "1.0"), &never);
    let result = &build.result;
    assert!(result.success, "build failed: {:?}\n{}", result.failure, result.output);
    assert_eq!(result.failure, None);
    assert_eq!(result.exit_status, Some(0));
    assert!(result.output.contains("Successfully built tiny-pkg"), "{}", result.output);
    // pip's own mentions of the build directory are shortened too.
    assert!(result.output.contains("$BUILD/"), "{}", result.output);
    assert!(!result.output.contains("piw-build-"), "{}", result.output);
    assert!(result.duration > Duration::ZERO && result.cpu_time > Duration::ZERO, "{result:?}");
    assert!(result.peak_memory > 1 << 20, "peak memory {}", result.peak_memory);
    assert_eq!(result.files.len(), 1, "{:?}", result.files);
    let file = &result.files[0];
    assert_eq!(file.filename, "tiny_pkg-1.0-py3-none-any.whl");
    let path = build.wheel(&file.filename).expect("the wheel's path");
    let bytes = fs::read(path).expect("read the wheel");
    assert_eq!(file.size, bytes.len() as u64);
    assert_eq!(file.sha256, format!("{:x}", Sha256::digest(&bytes)));
    assert!(String::from_utf8_lossy(&file.metadata).contains("Name: tiny-pkg"));
    // The slave downloaded the pinned file once; pip built from it without asking the index.
    assert_eq!(pypi.requests("/packages/tiny-pkg-1.0.tar.gz"), 1);
    assert_eq!(pypi.requests("/simple/tiny-pkg/"), 0);
    check_cleaned_up(build, root.path());
}

/// The files in the build's `source/` directory.
fn source_dir_files(build: &Build) -> Vec<String> {
    piwheels_testsupport::data::dir_names(&build.directory().expect("a build directory").join("source"))
}

#[test]
fn a_source_that_is_not_the_pinned_file_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().expect("scripts");
    let ran = dir.path().join("ran");
    let root = tempfile::tempdir().expect("root");
    let builder = builder(root.path(), &format!("touch {} {{source}}", ran.display()), |_| {});
    let pypi = serve("foo", "1.0", b"the source the index published".to_vec());
    let job = job(&pypi, "foo", "1.0");
    // The index (a mirror, or someone between) now serves other bytes under the same name.
    pypi.tamper("foo-1.0.tar.gz", b"the source the index published, changed".to_vec());
    let build = builder.build(&job, &never);
    let result = &build.result;
    assert_eq!(result.failure, Some(FailureKind::Source), "{}", result.output);
    assert!(result.output.contains("is not the pinned file") && result.output.contains(&job.source.sha256), "{}", result.output);
    assert!(!ran.exists(), "the build command ran");
    assert_eq!(source_dir_files(&build), Vec::<String>::new(), "the wrong file was kept");
    check_cleaned_up(build, root.path());
}

#[test]
fn a_source_that_cannot_be_had_fails_the_build_as_the_indexs_fault() {
    let dir = tempfile::tempdir().expect("scripts");
    let ran = dir.path().join("ran");
    let root = tempfile::tempdir().expect("root");
    let builder = builder(root.path(), &format!("touch {} {{source}}", ran.display()), |_| {});
    let pypi = serve("foo", "1.0", b"source".to_vec());
    let good = job(&pypi, "foo", "1.0");
    let with = |change: &dyn Fn(&mut BuildJob)| {
        let mut job = good.clone();
        change(&mut job);
        job
    };
    for (job, said) in [
        (with(&|j| j.source.url = format!("{}/nowhere.tar.gz", pypi.files_url())), "HTTP 404"),
        (with(&|j| j.source.url = "http://127.0.0.1:9/foo-1.0.tar.gz".into()), "cannot download the source"),
        (with(&|j| j.source.filename = "../foo-1.0.tar.gz".into()), "source pin is unusable"),
        (with(&|j| j.source.url = "file:///etc/passwd".into()), "source pin is unusable"),
        (with(&|j| j.source.sha256 = "ABC".into()), "source pin is unusable"),
    ] {
        let build = builder.build(&job, &never);
        assert_eq!(build.result.failure, Some(FailureKind::Source), "{job:?}: {}", build.result.output);
        assert!(build.result.output.contains(said), "{job:?}: {}", build.result.output);
        assert_eq!(source_dir_files(&build), Vec::<String>::new());
        check_cleaned_up(build, root.path());
    }
    assert!(!ran.exists(), "a build command ran");
    // And the pin as published builds.
    let build = builder.build(&good, &never);
    assert!(ran.exists(), "{}", build.result.output);
    assert_eq!(source_dir_files(&build), ["foo-1.0.tar.gz"]);
    check_cleaned_up(build, root.path());
}

/// The wheel of a C extension carries exactly the tags the slave announces for its Python.
#[test]
fn a_c_extension_is_tagged_for_the_interpreter_the_slave_announces() {
    require_build_python();
    let platform = piwheels_slave::python::probe("python3").expect("probe python3");
    let pypi = serve("c-ext", "2.0", sdist::c_extension("c-ext", "2.0"));
    let root = tempfile::tempdir().expect("root");
    let mut options = BuilderOptions::new(root.path()).expect("options");
    options.launcher = PathBuf::from(env!("CARGO_BIN_EXE_piw-slave"));
    options.command = pip_command().parse().expect("command");
    // With the system's package index, as the slave runs (the test extension links nothing,
    // so it has no apt dependencies to find).
    let builder = Builder::new(options, AptIndex::load_system().ok().map(Arc::new)).expect("builder");
    let build = builder.build(&job(&pypi, "c-ext", "2.0"), &never);
    assert!(build.result.success, "build failed: {:?}\n{}", build.result.failure, build.result.output);
    let file = &build.result.files[0];
    assert_eq!(file.abi_tag, platform.abi, "{}", file.filename);
    assert_eq!(file.platform_tag, platform.platform, "{}", file.filename);
    assert_eq!(file.py_tag, format!("cp{}", platform.py_version), "{}", file.filename);
    check_cleaned_up(build, root.path());
}

#[test]
fn a_failing_build_reports_its_log() {
    require_build_python();
    let pypi = serve("broken", "0.1", sdist::failing("broken", "0.1"));
    let root = tempfile::tempdir().expect("root");
    let builder = builder(root.path(), &pip_command(), |_| {});
    let build = builder.build(&job(&pypi, "broken", "0.1"), &never);
    let result = &build.result;
    assert!(!result.success);
    assert_eq!(result.failure, Some(FailureKind::Build), "{}", result.output);
    assert!(matches!(result.exit_status, Some(code) if code != 0), "{:?}", result.exit_status);
    assert!(result.output.contains(&format!("{} of broken 0.1", sdist::FAILURE_MESSAGE)), "{}", result.output);
    assert!(result.output.contains("[piw-slave] the build command exited with status"), "{}", result.output);
    assert!(result.files.is_empty());
    check_cleaned_up(build, root.path());
}

/// The command sleeps far past the build's timeout, with a child in its process group and one
/// that left it (setsid): the timeout kills all three, and the log written before survives.
#[test]
fn a_build_past_its_timeout_is_killed_with_its_whole_process_group() {
    let dir = tempfile::tempdir().expect("scripts");
    let pid_file = dir.path().join("pids");
    let sleeper = script(
        dir.path(),
        "sleeper.sh",
        "#!/bin/sh\nsleep 600 &\necho $! >> \"$1\"\nsetsid sleep 600 &\necho $! >> \"$1\"\necho $$ >> \"$1\"\necho started sleeping\nexec sleep 600\n",
    );
    let root = tempfile::tempdir().expect("root");
    let builder = builder(root.path(), &format!("{} {} {{source}}", sleeper.display(), pid_file.display()), |options| {
        options.timeout = Duration::from_secs(5);
    });
    let (_pypi, job) = any_job("sleepy");
    let build = builder.build(&job, &never);
    let result = &build.result;
    assert!(!result.success);
    assert_eq!(result.failure, Some(FailureKind::Timeout), "{}", result.output);
    assert_eq!(result.exit_status, None, "a signal ended it");
    assert!(result.output.contains("started sleeping"), "the log before the kill is lost: {}", result.output);
    assert!(result.output.contains("[piw-slave] the build was killed after 5s (the build timeout)"), "{}", result.output);
    let group = build.process_group.expect("the build's process group");
    assert_eq!(group_members(group), Vec::<i32>::new(), "processes of the build's group survived");
    let sleepers = pids(&pid_file);
    assert_eq!(sleepers.len(), 3, "the script did not start within the timeout: {sleepers:?}");
    for pid in sleepers {
        assert!(!alive(pid), "process {pid} of the build survived");
    }
    check_cleaned_up(build, root.path());
}

/// A pip build abandoned mid-way (its build step sleeps, with a child process) is killed
/// with everything it started.
#[test]
fn an_abandoned_pip_build_is_killed_with_everything_it_started() {
    require_build_python();
    let pypi = serve("slow", "1.0", sdist::sleeping("slow", "1.0", 600));
    let dir = tempfile::tempdir().expect("pid dir");
    let pid_file = dir.path().join("pids");
    let root = tempfile::tempdir().expect("root");
    let command = format!("env {}={} {}", sdist::PID_FILE_ENV, pid_file.display(), pip_command());
    let builder = builder(root.path(), &command, |_| {});
    // Stop once both processes of the build step have written their pids.
    let asked = AtomicBool::new(false);
    let stop = || {
        let ready = pids(&pid_file).len() >= 2;
        if ready {
            asked.store(true, Ordering::SeqCst);
        }
        ready
    };
    let build = builder.build(&job(&pypi, "slow", "1.0"), &stop);
    assert!(asked.load(Ordering::SeqCst), "the build ended before it was stopped: {}", build.result.output);
    assert_eq!(build.result.failure, Some(FailureKind::Builder), "{}", build.result.output);
    assert!(build.result.output.contains("[piw-slave] the build was abandoned and killed"), "{}", build.result.output);
    let group = build.process_group.expect("process group");
    assert_eq!(group_members(group), Vec::<i32>::new(), "processes of the build's group survived");
    for pid in pids(&pid_file) {
        assert!(!alive(pid), "process {pid} of the build survived");
    }
    check_cleaned_up(build, root.path());
}

/// Makes an sdist whose build step allocates (and touches) `mib` MiB, with the `tar` tool.
fn hungry_sdist(name: &str, version: &str, mib: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("sdist dir");
    let stem = format!("{name}-{version}");
    let top = dir.path().join(&stem);
    fs::create_dir(&top).expect("sdist top");
    let module = sdist::module_name(name);
    fs::write(top.join("PKG-INFO"), format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")).expect("PKG-INFO");
    fs::write(top.join("pyproject.toml"), "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n").expect("pyproject");
    fs::write(top.join(format!("{module}.py")), "VALUE = 1\n").expect("module");
    fs::write(
        top.join("setup.py"),
        format!(
            "from setuptools import setup\nfrom setuptools.command.build_py import build_py\n\n\n\
             class Hungry(build_py):\n    def run(self):\n        hog = b\"x\" * ({mib} * 1024 * 1024)\n        super().run()\n\n\n\
             setup(name={name:?}, version={version:?}, py_modules=[{module:?}], cmdclass={{\"build_py\": Hungry}})\n"
        ),
    )
    .expect("setup.py");
    let archive = dir.path().join(format!("{stem}.tar.gz"));
    let status = Command::new("tar").arg("-czf").arg(&archive).arg("-C").arg(dir.path()).arg(&stem).status().expect("run tar");
    assert!(status.success(), "tar failed");
    fs::read(archive).expect("read sdist")
}

/// The memory limit binds the build (which fails, as out of memory) and not the slave.
#[test]
fn a_build_over_its_memory_limit_fails_as_out_of_memory() {
    require_build_python();
    let pypi = serve("hungry", "1.0", hungry_sdist("hungry", "1.0", 1024));
    let root = tempfile::tempdir().expect("root");
    let limit = 512u64 << 20;
    let builder = builder(root.path(), &pip_command(), |options| options.memory_limit = limit);
    let build = builder.build(&job(&pypi, "hungry", "1.0"), &never);
    let result = &build.result;
    assert!(!result.success, "the build fit in {limit} bytes: {}", result.output);
    assert_eq!(result.failure, Some(FailureKind::OutOfMemory), "{}", result.output);
    assert!(result.output.contains("MemoryError"), "{}", result.output);
    assert!(result.peak_memory < limit, "peak {} over the limit", result.peak_memory);
    // This process, the builder's, is not limited.
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_AS).expect("getrlimit");
    assert_eq!((soft, hard), (nix::sys::resource::RLIM_INFINITY, nix::sys::resource::RLIM_INFINITY));
    check_cleaned_up(build, root.path());
}

/// CPU time and peak memory are the build's own, its children's included, and a small build
/// after a big one reports its own small figures.
#[test]
fn usage_is_measured_per_build_children_included() {
    let dir = tempfile::tempdir().expect("scripts");
    let hog = script(
        dir.path(),
        "hog.py",
        "import subprocess, sys\n\
         mib = int(sys.argv[1])\n\
         if mib:\n    subprocess.run([sys.executable, '-c', 'hog = b\"x\" * (%d * 1024 * 1024); sum(range(2000000))' % mib], check=True)\n",
    );
    let root = tempfile::tempdir().expect("root");
    let big = builder(root.path(), &format!("{{python}} {} 300 {{source}}", hog.display()), |_| {});
    let (_pypi, job) = any_job("hog");
    let build = big.build(&job, &never);
    assert_eq!(build.result.exit_status, Some(0), "{}", build.result.output);
    // The script leaves no wheel: a failed build, measured all the same.
    assert_eq!(build.result.failure, Some(FailureKind::Build));
    assert!(build.result.output.contains("left no wheel"), "{}", build.result.output);
    assert!(build.result.peak_memory >= 300 << 20, "the child's 300 MiB are not counted: {}", build.result.peak_memory);
    assert!(build.result.cpu_time > Duration::ZERO);
    let big_peak = build.result.peak_memory;
    check_cleaned_up(build, root.path());

    let small = builder(root.path(), &format!("{{python}} {} 0 {{source}}", hog.display()), |_| {});
    let (_pypi, job) = any_job("hog");
    let build = small.build(&job, &never);
    assert_eq!(build.result.exit_status, Some(0), "{}", build.result.output);
    assert!(build.result.peak_memory > 0 && build.result.peak_memory < 100 << 20, "small build's peak {} (big: {big_peak})", build.result.peak_memory);
    check_cleaned_up(build, root.path());
}

#[test]
fn a_command_that_cannot_start_is_the_builders_failure() {
    let root = tempfile::tempdir().expect("root");
    let builder = builder(root.path(), "/nonexistent/pip wheel {source}", |_| {});
    let (_pypi, job) = any_job("x");
    let build = builder.build(&job, &never);
    assert_eq!(build.result.failure, Some(FailureKind::Builder));
    assert!(build.result.output.contains("cannot start /nonexistent/pip"), "{}", build.result.output);
    check_cleaned_up(build, root.path());
}

#[test]
fn a_long_log_is_cut_to_its_tail() {
    let dir = tempfile::tempdir().expect("scripts");
    let chatty = script(dir.path(), "chatty.sh", "#!/bin/sh\ni=0\nwhile [ $i -lt 20000 ]; do echo \"line $i of the log\"; i=$((i+1)); done\nexit 3\n");
    let root = tempfile::tempdir().expect("root");
    let builder = builder(root.path(), &format!("{} {{source}}", chatty.display()), |options| options.log_limit = 4096);
    let (_pypi, job) = any_job("x");
    let build = builder.build(&job, &never);
    let output = &build.result.output;
    assert_eq!(build.result.exit_status, Some(3));
    // The command first, with the builder's paths shortened, then the log's tail.
    let (command, rest) = output.split_once('\n').unwrap();
    assert!(command.starts_with("[piw-slave] $ ") && command.contains(" $BUILD/source/"), "{command}");
    assert!(!command.contains("piw-build-"), "{command}");
    assert!(rest.starts_with("[piw-slave] the first "), "{output}");
    assert!(output.contains("line 19999 of the log\n"), "{output}");
    assert!(!output.contains("line 0 of the log"), "{output}");
    assert!(output.len() < 4096 + 200, "{} bytes", output.len());
    check_cleaned_up(build, root.path());
}

/// A build directory whose lock nobody holds was left by a slave that died: it goes. One a
/// live slave holds, and anything that is not a build directory, stay.
#[test]
fn stale_build_directories_are_removed_and_live_ones_kept() {
    let root = tempfile::tempdir().expect("root");
    let stale = root.path().join("piw-build-dead");
    fs::create_dir_all(stale.join("wheels")).expect("mkdir");
    fs::write(stale.join("wheels/x-1-py3-none-any.whl"), "wheel").expect("write");
    fs::write(stale.join("lock"), "").expect("lock file");
    let live = root.path().join("piw-build-live");
    fs::create_dir(&live).expect("mkdir");
    let held = fs::File::create(live.join("lock")).expect("lock file");
    held.lock().expect("hold the lock");
    let unlocked_other = root.path().join("piw-build-making");
    fs::create_dir(&unlocked_other).expect("mkdir");
    let unrelated = root.path().join("not-a-build");
    fs::create_dir(&unrelated).expect("mkdir");
    fs::write(unrelated.join("lock"), "").expect("lock file");

    let builder = builder(root.path(), "true {source}", |_| {});
    assert_eq!(builder.remove_stale(), vec![stale.clone()]);
    assert!(!stale.exists());
    for kept in [&live, &unlocked_other, &unrelated] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
    // A build of this builder is live while it exists.
    let (_pypi, job) = any_job("x");
    let build = builder.build(&job, &never);
    assert_eq!(builder.remove_stale(), Vec::<PathBuf>::new());
    assert!(build.directory().expect("directory").exists());
    build.clean_up().expect("clean up");
}

/// Waits up to 10 s for `pid` to have died (a zombie or gone).
fn eventually_dead(pid: i32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rfind(')').and_then(|close| stat[close + 1..].split_whitespace().next());
        if state.is_none_or(|state| state == "Z") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "process {pid} did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to 10 s for every one of `pids` to be gone; the ones still there.
fn survivors_after_a_while(pids: &[i32]) -> Vec<i32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&pid| alive(pid)).collect();
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A build script (arguments: a pid file, `{source}`) that writes the pid of its launcher's
/// parent, the resident launcher, to `PIDFILE.resident`; then, unless its source says `quick`
/// (it exits 3 at once), starts a daemon outside its process group, writes its pid and its own
/// to the pid file and its launcher's to `PIDFILE.launcher`, and sleeps.
const DAEMON_SCRIPT: &str = "#!/bin/sh\nawk '{print $4}' /proc/$PPID/stat > \"$1.resident\"\nif [ \"$(cat \"$2\")\" = quick ]; then exit 3; fi\n\
     setsid sleep 600 &\necho $! >> \"$1\"\necho $$ >> \"$1\"\necho $PPID > \"$1.launcher\"\nexec sleep 600\n";

/// A builder running [`DAEMON_SCRIPT`], and where the script writes its pids.
struct Daemons {
    dir: tempfile::TempDir,
    root: tempfile::TempDir,
    builder: Builder,
    quick: FakePypi,
}

impl Daemons {
    fn new() -> Daemons {
        let dir = tempfile::tempdir().expect("scripts");
        let daemon = script(dir.path(), "daemon.sh", DAEMON_SCRIPT);
        let root = tempfile::tempdir().expect("root");
        let builder = builder(root.path(), &format!("{} {} {{source}}", daemon.display(), dir.path().join("pids").display()), |_| {});
        Daemons { dir, root, builder, quick: serve("quick", "1", b"quick".to_vec()) }
    }

    /// The pids the script wrote: `""` the daemon's and its own, `"launcher"`, `"resident"`.
    fn pids(&self, which: &str) -> Vec<i32> {
        let name = if which.is_empty() { "pids".to_string() } else { format!("pids.{which}") };
        pids(&self.dir.path().join(name))
    }

    /// A build of its own package that sleeps, during which the process whose pid the script
    /// wrote to `which` is SIGKILLed once the daemon runs.
    fn build_killing(&self, which: &str) -> Build {
        let killed = AtomicBool::new(false);
        let kill = || {
            if !killed.load(Ordering::SeqCst) && self.pids("").len() == 2 && !self.pids(which).is_empty() {
                Command::new("kill").args(["-KILL", &self.pids(which)[0].to_string()]).status().expect("kill");
                killed.store(true, Ordering::SeqCst);
            }
            false
        };
        let (_pypi, job) = any_job("daemonic");
        let build = self.builder.build(&job, &kill);
        assert!(killed.load(Ordering::SeqCst), "the {which} was not killed mid-build: {}", build.result.output);
        assert_eq!(build.result.failure, Some(FailureKind::Builder), "{}", build.result.output);
        assert_eq!(self.pids("").len(), 2, "the daemon and the script");
        build
    }

    /// A build that exits 3 at once; the resident launcher that ran it.
    fn quick_build(&self) -> Vec<i32> {
        let build = self.builder.build(&job(&self.quick, "quick", "1"), &never);
        assert_eq!(build.result.exit_status, Some(3), "{}", build.result.output);
        check_cleaned_up(build, self.root.path());
        let resident = self.pids("resident");
        assert_eq!(resident.len(), 1);
        resident
    }
}

/// A build whose launcher is killed from outside: the resident launcher kills the build's
/// process group and the daemon that left it, the build is the builder's failure, and the
/// same resident runs the next build.
#[test]
fn a_killed_build_launcher_leaves_nothing_behind_and_the_resident_runs_the_next_build() {
    let daemons = Daemons::new();
    let build = daemons.build_killing("launcher");
    let group = build.process_group.expect("the build's process group");
    assert_eq!(group_members(group), Vec::<i32>::new(), "processes of the build's group survived");
    for pid in daemons.pids("") {
        assert!(!alive(pid), "process {pid} of the build survived (the daemon had left the group)");
    }
    let resident = daemons.pids("resident");
    check_cleaned_up(build, daemons.root.path());
    assert_eq!(daemons.quick_build(), resident, "the next build ran under another resident launcher");
}

/// A resident launcher killed mid-build takes the build with it (the build launcher's
/// parent-death signal); the build is the builder's failure, and the next build starts a new
/// resident launcher.
#[test]
fn a_killed_resident_launcher_takes_its_build_with_it_and_is_replaced() {
    let daemons = Daemons::new();
    let build = daemons.build_killing("resident");
    assert!(build.result.output.contains("[piw-slave] the build's launcher failed"), "{}", build.result.output);
    // The build launcher kills the build when told its parent died, which the builder, not its
    // parent, does not wait for.
    assert_eq!(survivors_after_a_while(&daemons.pids("")), Vec::<i32>::new(), "processes of the build survived");
    let first = daemons.pids("resident");
    check_cleaned_up(build, daemons.root.path());
    assert_ne!(daemons.quick_build(), first, "the killed resident launcher ran the next build");
}

/// A resident launcher that died between builds (an operator's kill, the out-of-memory killer)
/// is replaced at the next build, which is not failed for it.
#[test]
fn a_resident_launcher_that_died_between_builds_costs_the_next_build_nothing() {
    let daemons = Daemons::new();
    let first = daemons.quick_build();
    Command::new("kill").args(["-KILL", &first[0].to_string()]).status().expect("kill");
    // Dead (a zombie of this process, the builder's) before the next build asks it.
    eventually_dead(first[0]);
    assert_ne!(daemons.quick_build(), first, "the dead resident launcher ran the build");
}
