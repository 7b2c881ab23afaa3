//! The fault campaign: a real piw-master following the fake PyPI and three real piw-slaves
//! building releases that keep arriving, while a seeded random mix of faults hits them: slaves
//! killed mid-build and mid-upload (a builder, which its host replaces, or the whole host), the master
//! killed and restarted, its database connections terminated, its disk full for a while, PyPI
//! failing or stalling, a builder stopped (past the busy timeout, its host replaces it). The
//! builder downloads each source from the fake PyPI (so PyPI's faults reach the builds too),
//! waits as long as the source says and writes a real wheel of the size it says, or fails when
//! the source says the package does not build.
//!
//! At the end every release that can be built is built exactly once and published, every
//! recorded failure is the package's, piw-check finds nothing and no process of the farm is
//! left. The short form (120 faults) runs in the test suite; `PIW_CAMPAIGN_FAULTS=1000` runs
//! the long form and `PIW_CAMPAIGN_SEED=N` replays a run: the seed, the faults and the counts
//! are printed (run with `--no-capture` to see them when the campaign passes).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use piwheels_testsupport::programs::is_root;
use piwheels_testsupport::pypi::Failure;
use support::farm::{BUSY_TIMEOUT, Farm, Mount, Process, Slave, Source, build_processes_ended, processes_naming};

/// Faults of the short form.
const SHORT_FORM: usize = 120;
/// The slaves, each with a key of its own.
const SLAVES: [&str; 3] = ["slave-a", "slave-b", "slave-c"];
/// One release in this many does not build (the package's own failure).
const FAILING_ONE_IN: u64 = 8;
/// Largest wheel a release of the campaign makes: big enough that an upload takes long enough
/// to be cut.
const MAX_WHEEL: u64 = 3_000_000;

/// A small seeded generator (splitmix64): the campaign's choices, replayable from the seed.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A duration between `low` and `high` milliseconds.
    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

/// The faults, with their weights in the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillSlaveMidBuild,
    KillSlaveMidUpload,
    KillMaster,
    TerminateDatabaseConnections,
    FullDisk,
    PypiErrors,
    PypiStall,
    StopSlave,
}

impl Fault {
    const MIX: [(Fault, u64); 8] = [
        (Fault::KillSlaveMidBuild, 4),
        (Fault::KillSlaveMidUpload, 3),
        (Fault::KillMaster, 1),
        (Fault::TerminateDatabaseConnections, 3),
        (Fault::FullDisk, 2),
        (Fault::PypiErrors, 3),
        (Fault::PypiStall, 1),
        (Fault::StopSlave, 2),
    ];

    fn draw(dice: &mut Dice, disk: bool) -> Fault {
        let mix: Vec<(Fault, u64)> = Fault::MIX.into_iter().filter(|(fault, _)| disk || *fault != Fault::FullDisk).collect();
        let mut roll = dice.below(mix.iter().map(|(_, weight)| weight).sum());
        for (fault, weight) in mix {
            if roll < weight {
                return fault;
            }
            roll -= weight;
        }
        unreachable!("the roll is below the total weight")
    }
}

/// Whether slave `index` is building now, and whether its wheel is made (it is then being
/// sent, or about to be).
fn build_state(farm: &Farm, index: usize) -> Option<bool> {
    let root = farm.path(&farm.slaves[index].name).join("builder-1");
    let builds: Vec<PathBuf> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("piw-build-"))
        .map(|entry| entry.path())
        // A build its builder holds: not one a killed builder left behind.
        .filter(|build| locked(&build.join("lock")))
        .collect();
    if builds.is_empty() {
        return None;
    }
    Some(builds.iter().any(|build| has_wheel(build, 3)))
}

/// Whether a process holds a lock on `path`, read from /proc/locks without taking it (taking
/// it, even for a moment, could be the moment the builder tries to).
fn locked(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(inode) = std::fs::metadata(path).map(|m| m.ino()) else { return false };
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    // `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`: the sixth field is MAJOR:MINOR:INODE.
    locks.lines().any(|line| line.split_whitespace().nth(5).and_then(|id| id.rsplit(':').next()).is_some_and(|ino| ino == inode.to_string()))
}

fn has_wheel(dir: &Path, depth: u32) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|entry| {
        let path = entry.path();
        path.extension().is_some_and(|ext| ext == "whl") || (depth > 0 && path.is_dir() && has_wheel(&path, depth - 1))
    })
}

/// SIGKILLs a running slave that is building (`uploading`: whose wheel is made) within 15 s:
/// its builder, which its host starts again after a pause, or (one time in three) the host
/// with its builder, started again shortly; whether one was found.
fn kill_slave_when(farm: &mut Farm, dice: &mut Dice, uploading: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let running = |slave: &Slave| slave.process.is_some() && slave.continue_at.is_none();
        let victim = (0..farm.slaves.len()).find(|&i| running(&farm.slaves[i]) && build_state(farm, i) == Some(uploading));
        if let Some(index) = victim
            && let Some(builder) = farm.slaves[index].process.as_ref().and_then(Process::builder)
        {
            if dice.below(3) == 0 {
                let slave = &mut farm.slaves[index];
                slave.process.take().unwrap().signal(Signal::SIGKILL);
                slave.restart_at = Some(Instant::now() + dice.millis(200, 2000));
            } else {
                let _ = nix::sys::signal::kill(builder, Signal::SIGKILL);
            }
            return true;
        }
        farm.tend_slaves(Instant::now());
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Fills the master's disk, holds it full for `hold`, then frees it.
fn fill_disk(farm: &Farm, hold: Duration) {
    use std::io::Write;
    let ballast = farm.path("disk/ballast");
    let mut file = std::fs::File::create(&ballast).unwrap();
    let block = vec![0xa5u8; 1 << 20];
    loop {
        match file.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // The last partial block too, so that not even a page fits.
    let _ = file.write_all(&block[..4096]);
    std::thread::sleep(hold);
    std::fs::remove_file(&ballast).unwrap();
}

/// A release of the campaign and whether it builds.
struct Release {
    package: String,
    version: String,
    builds: bool,
}

fn add_release(farm: &Farm, dice: &mut Dice, number: usize) -> Release {
    let package = format!("camp-{number:04}");
    let version = format!("1.{}", dice.below(20));
    let builds = dice.below(FAILING_ONE_IN) != 0;
    let source = Source { seconds: dice.millis(300, 1500).as_secs_f64(), size: 100_000 + dice.below(MAX_WHEEL - 100_000), builds };
    farm.add_release(&package, &version, source);
    Release { package, version, builds }
}

#[test]
fn a_farm_under_random_faults_builds_every_release_once_and_loses_nothing() {
    let faults: usize = std::env::var("PIW_CAMPAIGN_FAULTS").ok().and_then(|v| v.parse().ok()).unwrap_or(SHORT_FORM);
    let seed: u64 = std::env::var("PIW_CAMPAIGN_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("fault campaign: seed {seed}, {faults} faults (replay with PIW_CAMPAIGN_SEED={seed} PIW_CAMPAIGN_FAULTS={faults})");
    let started = Instant::now();
    let mut dice = Dice(seed);
    // The master's disk holds every wheel the campaign can make (a release for every two
    // faults), with room to spare, so that it is full only when a fault fills it.
    let disk_size = format!("{}m", (faults as u64 / 2 + 20) * MAX_WHEEL / 1_000_000 + 64);
    let mut farm = Farm::new(&SLAVES, |dir| if is_root() { Mount::tmpfs(dir, &disk_size) } else { None });
    let disk = farm.disk.is_some();
    if !disk {
        eprintln!("fault campaign: no full-disk faults (the master's disk can be a tmpfs only as root)");
    }
    let mut releases: Vec<Release> = (0..10).map(|n| add_release(&farm, &mut dice, n)).collect();
    farm.start_master();
    for index in 0..farm.slaves.len() {
        farm.start_slave(index);
    }

    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut missed = 0;
    let mut master_exits = 0;
    while injected.values().sum::<usize>() < faults {
        farm.tend_slaves(Instant::now());
        if !farm.master_running() {
            // The master stopped on its own: the campaign goes on, but reports it.
            master_exits += 1;
            farm.start_master();
        }
        // Releases keep arriving, so there is always something to build.
        if injected.values().sum::<usize>() % 2 == 0 {
            let number = releases.len();
            releases.push(add_release(&farm, &mut dice, number));
        }
        let fault = Fault::draw(&mut dice, disk);
        let done = match fault {
            Fault::KillSlaveMidBuild => kill_slave_when(&mut farm, &mut dice, false),
            Fault::KillSlaveMidUpload => kill_slave_when(&mut farm, &mut dice, true),
            Fault::KillMaster => {
                farm.master.take().unwrap().signal(Signal::SIGKILL);
                std::thread::sleep(dice.millis(0, 1000));
                farm.start_master();
                true
            }
            Fault::TerminateDatabaseConnections => farm.db.terminate_connections() > 0,
            Fault::FullDisk => {
                fill_disk(&farm, dice.millis(300, 3000));
                true
            }
            Fault::PypiErrors => {
                let failure = [Failure::Status(500), Failure::Status(503), Failure::Status(429), Failure::Disconnect][dice.below(4) as usize];
                farm.pypi.fail_next(1 + dice.below(4) as usize, failure);
                true
            }
            Fault::PypiStall => {
                farm.pypi.fail_next(1, Failure::Timeout(dice.millis(1000, 6000)));
                true
            }
            Fault::StopSlave => {
                let running: Vec<usize> = (0..farm.slaves.len()).filter(|&i| farm.slaves[i].process.is_some() && farm.slaves[i].continue_at.is_none()).collect();
                match running.is_empty() {
                    true => false,
                    false => {
                        let slave = &mut farm.slaves[running[dice.below(running.len() as u64) as usize]];
                        match slave.process.as_ref().and_then(Process::builder) {
                            Some(builder) => {
                                let _ = nix::sys::signal::kill(builder, Signal::SIGSTOP);
                                // Sometimes past the busy timeout, so that the master gives its
                                // build up and the host replaces the builder as hung.
                                slave.stopped = Some(builder);
                                slave.continue_at = Some(Instant::now() + dice.millis(500, 2 * BUSY_TIMEOUT.as_millis() as u64));
                                true
                            }
                            None => false,
                        }
                    }
                }
            }
        };
        match done {
            true => *injected.entry(fault).or_default() += 1,
            false => missed += 1,
        }
        std::thread::sleep(dice.millis(50, 600));
    }
    let faults_took = started.elapsed();

    // The faults end: every slave runs again, and the farm is given time to finish.
    farm.pypi.clear_failures();
    for slave in &mut farm.slaves {
        slave.restart_at = slave.restart_at.map(|_| Instant::now());
        slave.continue_at = slave.continue_at.map(|_| Instant::now());
    }
    farm.tend_slaves(Instant::now());
    let deadline = Instant::now() + Duration::from_secs(300 + faults as u64 / 2);
    loop {
        farm.tend_slaves(Instant::now());
        if !farm.master_running() {
            master_exits += 1;
            farm.start_master();
        }
        let built: HashMap<(String, String), usize> = farm.builds().into_iter().fold(HashMap::new(), |mut seen, (package, version, _, _)| {
            *seen.entry((package, version)).or_default() += 1;
            seen
        });
        let waiting: Vec<String> =
            releases.iter().filter(|r| !built.contains_key(&(r.package.clone(), r.version.clone()))).map(|r| format!("{} {}", r.package, r.version)).collect();
        if waiting.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: {} releases never built: {waiting:?}",
            waiting.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every release is built exactly once, as its source says; every wheel is published and
    // linked from its project's simple page.
    let builds = farm.builds();
    let mut counts: HashMap<(String, String), Vec<(String, String)>> = HashMap::new();
    for (package, version, status, failure) in &builds {
        counts.entry((package.clone(), version.clone())).or_default().push((status.clone(), failure.clone()));
    }
    for release in &releases {
        let recorded = &counts[&(release.package.clone(), release.version.clone())];
        let expected = if release.builds { ("t".to_string(), "-".to_string()) } else { ("f".to_string(), "build".to_string()) };
        assert_eq!(recorded, &vec![expected], "seed {seed}: the builds of {} {}", release.package, release.version);
    }
    assert_eq!(builds.len(), releases.len(), "seed {seed}: builds of releases the campaign never made: {builds:?}");
    let files = farm.db.column("SELECT b.package || ' ' || f.filename FROM files f JOIN builds b USING (build_id)");
    assert_eq!(files.len(), releases.iter().filter(|r| r.builds).count(), "seed {seed}: {files:?}");
    for row in files.iter().flatten() {
        let (package, filename) = row.split_once(' ').unwrap();
        let dir = farm.www().join("simple").join(package);
        support::eventually(&format!("{filename} on its simple page"), Duration::from_secs(30), || {
            std::fs::read_to_string(dir.join("index.html")).is_ok_and(|page| page.contains(filename))
        });
        assert!(dir.join(filename).is_file(), "seed {seed}: {filename} is recorded but not published");
    }

    // The farm stops cleanly and leaves no process behind; the tree and the records agree.
    for slave in &mut farm.slaves {
        if let Some(process) = slave.process.take() {
            assert!(process.terminate(Duration::from_secs(30)), "seed {seed}: {} did not stop on SIGTERM", slave.name);
        }
    }
    let master = farm.master.take().unwrap();
    assert!(master.terminate(Duration::from_secs(30)), "seed {seed}: the master did not stop on SIGTERM");
    support::eventually("every build process to end", Duration::from_secs(10), || build_processes_ended(&farm));
    assert_eq!(processes_naming(farm.dir.path()), Vec::<String>::new(), "seed {seed}: processes left behind");
    let check = Command::new(env!("CARGO_BIN_EXE_piw-check")).args(farm.master_args()).output().unwrap();
    let said = String::from_utf8_lossy(&check.stdout).to_string() + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "seed {seed}: piw-check found something: {said}");

    let log = std::fs::read_to_string(farm.path("master.log")).unwrap_or_default();
    let retried = log.lines().filter(|line| line.contains("not recorded, to be built again")).count();
    let failed = releases.iter().filter(|r| !r.builds).count();
    eprintln!(
        "fault campaign: seed {seed}: {} faults injected in {:.0?} ({missed} draws found no target): {}",
        injected.values().sum::<usize>(),
        faults_took,
        injected.iter().map(|(fault, n)| format!("{fault:?} {n}")).collect::<Vec<_>>().join(", ")
    );
    eprintln!(
        "fault campaign: {} releases: {} built once, {failed} failed once as the package's; {retried} builds given up as infrastructure failures and built again; master exits on its own: {master_exits}; piw-check: {}; {:.0?} in all",
        releases.len(),
        releases.len() - failed,
        said.trim(),
        started.elapsed()
    );
    // The log goes with the farm's directory: its errors go with the failure.
    let errors: Vec<&str> = log.lines().filter(|line| line.contains("ERROR")).collect();
    assert_eq!(master_exits, 0, "seed {seed}: the master stopped on its own; its log's errors:\n{}", errors.join("\n"));
}
