//! What the screen says about the farm, derived from the snapshot: a slave's activity from
//! the last reply it was sent, the health of a host from its figures, and the compact
//! formats of times and sizes. Nothing here draws; `ui` turns these into widgets.

use piwheels_common::config::human_size;
use chrono::TimeDelta;
use piwheels_common::protocols::{HostStats, SlaveReply, SlaveSnapshot, Timestamp};

/// What a slave is doing, as the master last told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity<'a> {
    /// Said hello; has not asked for work yet.
    Starting,
    /// Asked for work and got none.
    Idle,
    /// Told to sleep because the master or this slave is paused.
    Asleep,
    /// Building a release.
    Building {
        /// The package.
        package: &'a str,
        /// Its version.
        version: &'a str,
    },
    /// Sending a wheel to the master.
    Sending {
        /// The wheel's file name.
        filename: &'a str,
    },
    /// Its build is finished with (recorded or abandoned); it will ask for work next.
    Finishing,
    /// Told to exit.
    Exiting {
        /// Why.
        reason: &'a str,
    },
    /// Its last request was refused; it will say hello again.
    Refused {
        /// Why.
        reason: &'a str,
    },
}

impl Activity<'_> {
    /// One word for the state column.
    pub fn label(&self) -> &'static str {
        match self {
            Activity::Starting => "starting",
            Activity::Idle => "idle",
            Activity::Asleep => "asleep",
            Activity::Building { .. } => "building",
            Activity::Sending { .. } => "sending",
            Activity::Finishing => "finishing",
            Activity::Exiting { .. } => "exiting",
            Activity::Refused { .. } => "refused",
        }
    }

    /// What it works on, for the task column: the release, the file, or why it stopped.
    pub fn detail(&self) -> String {
        match self {
            Activity::Building { package, version } => format!("{package} {version}"),
            Activity::Sending { filename } => (*filename).to_string(),
            Activity::Exiting { reason } | Activity::Refused { reason } => (*reason).to_string(),
            Activity::Starting | Activity::Idle | Activity::Asleep | Activity::Finishing => String::new(),
        }
    }
}

/// The slave's activity, from the last reply that changed it.
pub fn activity(slave: &SlaveSnapshot) -> Activity<'_> {
    match &slave.last_reply {
        None | Some(SlaveReply::Ack { .. }) => Activity::Starting,
        Some(SlaveReply::Sleep { paused: false }) => Activity::Idle,
        Some(SlaveReply::Sleep { paused: true }) => Activity::Asleep,
        Some(SlaveReply::Build { package, version, .. }) => Activity::Building { package, version },
        // The snapshot never keeps `Cont`, but it can only mean a build goes on.
        Some(SlaveReply::Cont) => Activity::Building { package: "?", version: "" },
        // Nor does it keep these: they leave the slave doing what it did.
        Some(SlaveReply::AddBuilder | SlaveReply::RetireBuilder) => Activity::Idle,
        Some(SlaveReply::Send { filename, .. }) => Activity::Sending { filename },
        Some(SlaveReply::Done) => Activity::Finishing,
        Some(SlaveReply::Die { reason }) => Activity::Exiting { reason },
        Some(SlaveReply::Error(error)) => Activity::Refused { reason: &error.message },
    }
}

/// How worried an operator should be about a figure or a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Nothing to see.
    Good,
    /// Worth a look: low disk or memory, high load or temperature, quiet for a while.
    Alert,
    /// Silent longer than its busy timeout: the master is about to drop it, or has.
    Dead,
}

/// A slave silent for more than half its busy timeout is worth a look; past the whole of it
/// the master drops it.
pub fn silence(slave: &SlaveSnapshot, now: Timestamp) -> Health {
    let quiet = (now - slave.last_seen).to_std().unwrap_or_default();
    if quiet > slave.hello.busy_timeout {
        Health::Dead
    } else if quiet > slave.hello.busy_timeout / 2 {
        Health::Alert
    } else {
        Health::Good
    }
}

/// Thresholds over which a host's figures are flagged.
pub mod limits {
    /// Free disk below this fraction.
    pub const DISK_FREE: f64 = 0.10;
    /// Available memory below this fraction.
    pub const MEM_FREE: f64 = 0.10;
    /// One-minute load average above this (a Pi has four cores).
    pub const LOAD: f64 = 4.0;
    /// CPU temperature above this, °C (a Pi throttles at 80 °C).
    pub const TEMPERATURE: f64 = 78.0;
}

/// Health of a free/size pair: free below `fraction` of size is an alert.
pub fn free_health(free: u64, size: u64, fraction: f64) -> Health {
    if size > 0 && (free as f64) < (size as f64) * fraction { Health::Alert } else { Health::Good }
}

/// Health of a measured figure against its upper limit.
pub fn over(value: f64, limit: f64) -> Health {
    if value > limit { Health::Alert } else { Health::Good }
}

/// The worst of a host's figures.
pub fn host_health(stats: &HostStats) -> Health {
    [
        free_health(stats.disk_free, stats.disk_size, limits::DISK_FREE),
        free_health(stats.mem_free, stats.mem_size, limits::MEM_FREE),
        over(stats.load_average, limits::LOAD),
        over(stats.cpu_temp, limits::TEMPERATURE),
    ]
    .into_iter()
    .max()
    .unwrap_or(Health::Good)
}

/// A span of time in at most two units: `42s`, `3m05s`, `2h13m`, `3d04h`. Negative spans (a
/// clock ahead of ours) count as none.
pub fn duration(span: TimeDelta) -> String {
    let secs = span.num_seconds().max(0);
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if secs < 60 {
        format!("{s}s")
    } else if secs < 3600 {
        format!("{m}m{s:02}s")
    } else if secs < 86_400 {
        format!("{h}h{m:02}m")
    } else {
        format!("{d}d{h:02}h")
    }
}


/// `free` as a whole percentage of `size` (0 for an unknown size).
pub fn percent(free: u64, size: u64) -> u64 {
    if size == 0 { 0 } else { ((free as f64 / size as f64) * 100.0).round() as u64 }
}

/// Free space and its share: `12.3 GiB (45%)`, or `-` when the host reported no size.
pub fn free_of(free: u64, size: u64) -> String {
    if size == 0 { "-".into() } else { format!("{} ({}%)", human_size(free), percent(free, size)) }
}

/// A temperature, or `-` for a host without a sensor (it reports 0).
pub fn temperature(celsius: f64) -> String {
    if celsius <= 0.0 { "-".into() } else { format!("{celsius:.0}°C") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_two_units_at_most() {
        let cases = [(0, "0s"), (42, "42s"), (185, "3m05s"), (7980, "2h13m"), (273_600, "3d04h"), (-5, "0s")];
        for (secs, text) in cases {
            assert_eq!(duration(TimeDelta::seconds(secs)), text, "{secs}s");
        }
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(human_size(13_207_024_435), "12.3 GiB");
        assert_eq!(free_of(25, 100), "25 B (25%)");
        assert_eq!(free_of(0, 0), "-");
    }

    #[test]
    fn figures_past_their_limits_are_alerts() {
        let good = HostStats { disk_size: 100, disk_free: 50, mem_size: 100, mem_free: 50, load_average: 1.0, cpu_temp: 50.0, ..HostStats::default() };
        assert_eq!(host_health(&good), Health::Good);
        assert_eq!(host_health(&HostStats { disk_free: 5, ..good.clone() }), Health::Alert);
        assert_eq!(host_health(&HostStats { cpu_temp: 80.0, ..good.clone() }), Health::Alert);
        assert_eq!(host_health(&HostStats { load_average: 4.5, ..good }), Health::Alert);
        // A host that reports no sizes is not short of anything.
        assert_eq!(host_health(&HostStats::default()), Health::Good);
    }
}
