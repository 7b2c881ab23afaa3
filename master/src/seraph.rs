//! Seraph, the database load balancer: hands each request from a task to an idle oracle and
//! each reply back to the task that asked.
//!
//! Sockets: binds [`wiring::DB`] (ROUTER, the front: tasks' [`crate::db_client::DbClient`]s
//! connect here) and [`wiring::ORACLES`] (ROUTER, the back: oracles' workers connect here).
//! Frames pass through undecoded: a request arrives at the front as
//! `[client envelope..., "", request]` and leaves the back as
//! `[oracle, "", client envelope..., "", request]`; a reply makes the reverse trip. An oracle
//! that sends `["", READY]` or a reply is idle again.
//!
//! The front is polled only while an oracle is idle, so requests wait in ZeroMQ's queue (and
//! their clients' deadlines run) instead of the balancer spinning.

use std::collections::VecDeque;

use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::READY;
use crate::wiring::{self, TaskName};


/// The balancer's sockets, and the oracles waiting for work. The idle list lives with the
/// sockets because a restarted balancer must not forget oracles that already said they were
/// ready: they will not say it again until they get a request.
pub struct Sockets {
    front: zmq::Socket,
    back: zmq::Socket,
    idle: VecDeque<Vec<u8>>,
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockets").field("idle", &self.idle.len()).finish()
    }
}

impl Sockets {
    /// Binds both sides.
    pub fn open(ctx: &zmq::Context) -> anyhow::Result<Sockets> {
        let router = |endpoint: &str| -> anyhow::Result<zmq::Socket> {
            let socket = ctx.socket(zmq::ROUTER)?;
            socket.set_linger(0)?;
            socket.set_router_mandatory(true)?;
            socket.bind(endpoint).map_err(|e| anyhow::anyhow!("cannot bind {endpoint}: {e}"))?;
            Ok(socket)
        };
        let front = wiring::DB.bind_address(TaskName::Seraph)?;
        let back = wiring::ORACLES.bind_address(TaskName::Seraph)?;
        Ok(Sockets { front: router(front)?, back: router(back)?, idle: VecDeque::new() })
    }
}

/// The load balancer task (it has no state beyond its sockets).
#[derive(Debug, Default)]
pub struct Seraph;

/// What Seraph reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A task sent a request.
    Request,
    /// An oracle said it is ready, or replied.
    Oracle,
}

impl Task for Seraph {
    type Sockets = Sockets;
    type Event = Event;
    const PAUSE: PauseMode = PauseMode::NonStop;

    fn poll_sockets<'s>(&self, sockets: &'s Sockets) -> Vec<(Event, &'s zmq::Socket)> {
        let mut polled = vec![(Event::Oracle, &sockets.back)];
        if !sockets.idle.is_empty() {
            polled.push((Event::Request, &sockets.front));
        }
        polled
    }

    fn handle(&mut self, event: Event, sockets: &mut Sockets, _ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        match event {
            Event::Request => {
                let Some(oracle) = sockets.idle.pop_front() else { return Ok(()) };
                let request = sockets.front.recv_multipart(0)?;
                let mut frames: Vec<&[u8]> = Vec::with_capacity(request.len() + 2);
                frames.push(&oracle);
                frames.push(b"");
                frames.extend(request.iter().map(Vec::as_slice));
                if let Err(e) = sockets.back.send_multipart(frames, zmq::DONTWAIT) {
                    // The oracle went away; the client's deadline will tell it.
                    anyhow::bail!("cannot hand a request to an oracle: {e}");
                }
            }
            Event::Oracle => {
                let mut frames = sockets.back.recv_multipart(0)?;
                if frames.len() < 2 || !frames[1].is_empty() {
                    anyhow::bail!("malformed message from an oracle ({} frames)", frames.len());
                }
                let oracle = frames.remove(0);
                frames.remove(0);
                if !sockets.idle.contains(&oracle) {
                    sockets.idle.push_back(oracle);
                }
                if frames.as_slice() != [READY] && !frames.is_empty() {
                    // A reply: [client envelope..., "", reply]. A client that has gone is no
                    // reason to stop.
                    if let Err(e) = sockets.front.send_multipart(frames, zmq::DONTWAIT) {
                        tracing::debug!("reply to a departed client dropped: {e}");
                    }
                }
            }
        }
        Ok(())
    }
}
