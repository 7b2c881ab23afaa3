//! TheArchitect, the build-queue producer: computes the queue of every ABI in the database
//! (see `db/queue.rs` for the rules) and hands it to the slave driver — on a timer, and within
//! a short debounce of being told that something changed (new releases, a finished build),
//! with the cross-checks waiting for a builder.
//!
//! Sockets: binds [`wiring::ARCHITECT`] (PULL, [`ArchitectTrigger`]); connects to
//! [`wiring::BUILDS`] (PUSH, [`BuildQueueUpdate`]) and to the oracles ([`DbClient`]).

use std::time::Duration;

use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::{Receiver, Sender};

use crate::calls::db::{BuildQueue, BuildQueues, CheckQueue};
use crate::calls::tasks::{ArchitectTrigger, BuildQueueUpdate};
use crate::db::queue::BUILD_QUEUE_TIMEOUT;
use crate::db_client::DbClient;
use crate::wiring::{self, TaskName};


/// When and how much to queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Recompute at least this often.
    pub interval: Duration,
    /// Recompute this soon after a trigger (triggers in between are folded into one).
    pub debounce: Duration,
    /// Releases per ABI in each queue.
    pub limit: u32,
}

/// The architect's sockets.
#[derive(Debug)]
pub struct Sockets {
    triggers: Receiver<ArchitectTrigger>,
    queues: Sender<BuildQueueUpdate>,
    db: DbClient,
}

impl Sockets {
    /// Binds the trigger socket and connects to the slave driver and the oracles.
    pub fn open(ctx: &zmq::Context) -> anyhow::Result<Sockets> {
        Ok(Sockets {
            triggers: wiring::ARCHITECT.pull(ctx, TaskName::Architect)?,
            queues: wiring::BUILDS.push(ctx, TaskName::Architect)?,
            // The queue works releases out for at most a minute per computation; its statements
            // have the same limit as this call.
            db: wiring::DB.caller(ctx, TaskName::Architect, BUILD_QUEUE_TIMEOUT)?,
        })
    }
}

/// What the architect reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Something changed.
    Trigger,
    /// Time to recompute.
    Refresh,
}

/// The build-queue producer.
#[derive(Debug)]
pub struct Architect {
    config: QueueConfig,
}

impl Architect {
    /// An architect with this configuration.
    pub fn new(config: QueueConfig) -> Architect {
        Architect { config }
    }
}

impl Task for Architect {
    type Sockets = Sockets;
    type Event = Event;
    const PAUSE: PauseMode = PauseMode::Timers;

    fn poll_sockets<'s>(&self, sockets: &'s Sockets) -> Vec<(Event, &'s zmq::Socket)> {
        vec![(Event::Trigger, sockets.triggers.socket())]
    }

    fn timers(&self) -> Vec<(Event, Duration)> {
        vec![(Event::Refresh, self.config.interval)]
    }

    fn handle(&mut self, event: Event, sockets: &mut Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        match event {
            Event::Trigger => {
                let ArchitectTrigger::Refresh { reason } = sockets.triggers.recv()?;
                tracing::debug!("queue refresh requested: {reason}");
                ctx.schedule(Event::Refresh, self.config.debounce);
            }
            Event::Refresh => {
                let BuildQueues { queues, unexamined } = sockets.db.call(BuildQueue { limit: self.config.limit })?;
                let checks = sockets.db.call(CheckQueue { limit: self.config.limit })?;
                let sizes: Vec<String> = queues.iter().map(|(abi, q)| format!("{abi} {}", q.len())).collect();
                let waiting: usize = checks.values().map(Vec::len).sum();
                if unexamined {
                    // After the ABIs change: carry on working the releases out at once.
                    tracing::info!("build queue: {}; cross-checks waiting: {waiting}; releases remain to be looked at", sizes.join(", "));
                    ctx.schedule(Event::Refresh, Duration::ZERO);
                } else {
                    tracing::info!("build queue: {}; cross-checks waiting: {waiting}", sizes.join(", "));
                }
                sockets.queues.send(&BuildQueueUpdate { queues, checks }, Duration::from_secs(1))?;
            }
        }
        Ok(())
    }
}
