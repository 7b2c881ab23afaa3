//! TheOracle: one of the database workers behind [`crate::seraph`]. Each owns one PostgreSQL
//! connection, driven by its own single-threaded tokio runtime, and answers one
//! [`DbRequest`] at a time with a [`DbReply`].
//!
//! Sockets: connects a [`Worker`] to [`crate::seraph::ORACLE_ENDPOINT`].
//!
//! A failing query is answered with [`DbReply::Error`] and the oracle goes on. A lost
//! connection fails the request in flight the same way; the next request connects again.

use std::time::Duration;

use piwheels_common::protocols::{DbReply, DbRequest};
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::Worker;

use crate::db::Database;
use crate::seraph::ORACLE_ENDPOINT;

/// How long an oracle waits to hand a reply or a ready signal to the balancer.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// An oracle's socket.
#[derive(Debug)]
pub struct Sockets {
    worker: Worker<DbRequest, DbReply>,
}

impl Sockets {
    /// Connects to the balancer.
    pub fn open(ctx: &zmq::Context) -> anyhow::Result<Sockets> {
        Ok(Sockets { worker: Worker::connect(ctx, ORACLE_ENDPOINT)? })
    }
}

/// A database worker.
#[derive(Debug)]
pub struct Oracle {
    url: String,
    statement_timeout: Duration,
    runtime: tokio::runtime::Runtime,
    db: Option<Database>,
}

/// What an oracle reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The balancer handed over a request.
    Request,
}

impl Oracle {
    /// An oracle for the database at `url` that tells the balancer it is ready. It connects
    /// when the first request arrives.
    pub fn start(sockets: &mut Sockets, url: &str, statement_timeout: Duration) -> anyhow::Result<Oracle> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        sockets.worker.ready(SEND_TIMEOUT)?;
        Ok(Oracle { url: url.to_string(), statement_timeout, runtime, db: None })
    }

    fn answer(&mut self, request: DbRequest) -> DbReply {
        if self.db.is_none() {
            match self.runtime.block_on(Database::connect(&self.url, self.statement_timeout)) {
                Ok(db) => self.db = Some(db),
                Err(e) => return DbReply::Error { message: e.to_string() },
            }
        }
        let Some(db) = self.db.as_mut() else { unreachable!("connected above") };
        match self.runtime.block_on(db.handle(request)) {
            Ok(reply) => reply,
            Err(e) => {
                if Database::is_connection_lost(&e) {
                    tracing::warn!("database connection lost ({e}); reconnecting at the next request");
                    self.db = None;
                } else {
                    tracing::warn!("database request failed: {e}");
                }
                DbReply::Error { message: e.to_string() }
            }
        }
    }
}

impl Task for Oracle {
    type Sockets = Sockets;
    type Event = Event;
    const PAUSE: PauseMode = PauseMode::NonStop;

    fn poll_sockets<'s>(&self, sockets: &'s Sockets) -> Vec<(Event, &'s zmq::Socket)> {
        vec![(Event::Request, sockets.worker.socket())]
    }

    fn handle(&mut self, _event: Event, sockets: &mut Sockets, _ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        let (peer, request) = match sockets.worker.recv() {
            Ok(incoming) => incoming,
            Err(e) => {
                // Nobody to answer; stay in the balancer's pool all the same.
                sockets.worker.ready(SEND_TIMEOUT)?;
                return Err(e.into());
            }
        };
        let reply = match request {
            Ok(request) => self.answer(request),
            Err(e) => {
                tracing::warn!("undecodable database request from {peer}: {e}");
                DbReply::Error { message: e.to_string() }
            }
        };
        sockets.worker.send(&peer, &reply, SEND_TIMEOUT)?;
        Ok(())
    }
}
