//! BigBrother, the stats task: gathers the figures other tasks send it (queue lengths,
//! downloads) and samples the master host's memory, load, temperature and output disk, and
//! publishes them to monitors as [`StatusEvent::Stats`].
//!
//! Sockets: binds [`STATS_ENDPOINT`] (PULL, [`StatsUpdate`]); connects to the master's
//! internal status socket (PUSH, [`StatusEvent`]).

use std::path::PathBuf;
use std::time::Duration;

use piwheels_common::hostinfo;
use piwheels_common::protocols::{MasterStats, StatsUpdate, StatusEvent};
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::{Receiver, Sender};

/// Where other tasks send [`StatsUpdate`]s.
pub const STATS_ENDPOINT: &str = "inproc://stats";

/// The task's sockets.
#[derive(Debug)]
pub struct Sockets {
    stats: Receiver<StatsUpdate>,
    status: Sender<StatusEvent>,
}

impl Sockets {
    /// Binds the stats socket and connects to the status socket.
    pub fn open(ctx: &zmq::Context, status_endpoint: &str) -> anyhow::Result<Sockets> {
        Ok(Sockets { stats: Receiver::pull(ctx, STATS_ENDPOINT, None)?, status: Sender::push(ctx, status_endpoint)? })
    }
}

/// The stats task.
#[derive(Debug)]
pub struct BigBrother {
    output_path: PathBuf,
    interval: Duration,
    stats: MasterStats,
}

/// What BigBrother reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A [`StatsUpdate`] arrived.
    Update,
    /// Time to sample the host and publish.
    Sample,
}

impl BigBrother {
    /// A stats task sampling every `interval`, reporting the disk of `output_path`.
    pub fn new(output_path: PathBuf, interval: Duration) -> Self {
        BigBrother { output_path, interval, stats: MasterStats::default() }
    }
}

impl Task for BigBrother {
    type Sockets = Sockets;
    type Event = Event;
    const PAUSE: PauseMode = PauseMode::Timers;

    fn poll_sockets<'s>(&self, sockets: &'s Sockets) -> Vec<(Event, &'s zmq::Socket)> {
        vec![(Event::Update, sockets.stats.socket())]
    }

    fn timers(&self) -> Vec<(Event, Duration)> {
        vec![(Event::Sample, self.interval)]
    }

    fn handle(&mut self, event: Event, sockets: &mut Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        match event {
            Event::Update => match sockets.stats.recv()? {
                StatsUpdate::Queues { lengths } => self.stats.builds_pending = lengths,
                StatsUpdate::Downloads { count } => self.stats.downloads_all += count,
                StatsUpdate::RefreshHome => ctx.schedule(Event::Sample, Duration::ZERO),
            },
            Event::Sample => {
                self.stats.at = ctx.utc();
                self.stats.host = hostinfo::host_stats(&self.output_path, self.stats.at);
                sockets.status.send(&StatusEvent::Stats(self.stats.clone()), Duration::from_secs(1))?;
            }
        }
        Ok(())
    }
}
