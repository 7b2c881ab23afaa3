//! TheOracle: one of the database workers behind [`crate::seraph`]. Each owns one PostgreSQL
//! connection, driven by its own single-threaded tokio runtime, and answers one
//! [`DbRequest`] at a time with a [`DbReply`].
//!
//! Sockets: connects a [`Worker`] to [`crate::wiring::ORACLES`].
//!
//! A failing query is answered with [`DbReply::Error`] and the oracle goes on. A lost
//! connection fails the request in flight the same way; the next request connects again. A
//! connection idle for [`PING_AFTER_IDLE`] is pinged before it is used, so that one the server
//! ended meanwhile (an administrator's command, a restart) is replaced before a request is
//! sent, rather than failing it.

use std::time::{Duration, Instant};

use piwheels_common::protocols::WireError;
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::Worker;

use crate::calls::db::{DbReply, DbRequest};
use crate::db::Database;
use crate::wiring::{self, TaskName};

/// A connection idle this long is pinged before a request is sent on it.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);
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
        Ok(Sockets { worker: wiring::ORACLES.work(ctx, TaskName::Oracle)? })
    }
}

/// A database worker.
#[derive(Debug)]
pub struct Oracle {
    url: String,
    statement_timeout: Duration,
    runtime: tokio::runtime::Runtime,
    db: Option<Database>,
    /// When the connection last answered a request.
    last_used: Instant,
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
        Ok(Oracle { url: url.to_string(), statement_timeout, runtime, db: None, last_used: Instant::now() })
    }

    fn answer(&mut self, request: DbRequest) -> DbReply {
        let result = self.run(request);
        self.last_used = Instant::now();
        self.reply(result)
    }

    /// Runs `request` on the connection, connecting first if there is none. A connection idle
    /// for a while is pinged first: the server may have ended it meanwhile (an administrator,
    /// a restart), and a new one is made then. The request itself is never sent twice: one
    /// that failed on the way may have been committed.
    fn run(&mut self, request: DbRequest) -> Result<DbReply, Failed> {
        if let Some(db) = self.db.as_mut()
            && self.last_used.elapsed() >= PING_AFTER_IDLE
            && let Err(e) = self.runtime.block_on(db.ping())
        {
            tracing::warn!("database connection gone while idle ({e}); connecting again");
            self.db = None;
        }
        if self.db.is_none() {
            self.db = Some(self.runtime.block_on(Database::connect(&self.url, self.statement_timeout)).map_err(Failed::Connect)?);
        }
        let Some(db) = self.db.as_mut() else { unreachable!("connected above") };
        self.runtime.block_on(db.handle(request)).map_err(Failed::Query)
    }

    /// The answer to a request that ended with `result`; a lost connection is dropped.
    fn reply(&mut self, result: Result<DbReply, Failed>) -> DbReply {
        match result {
            Ok(reply) => reply,
            Err(Failed::Connect(e)) => DbReply::Error(WireError::unavailable(e.to_string())),
            Err(Failed::Query(e)) => {
                if Database::is_connection_lost(&e) {
                    tracing::warn!("database connection lost ({e}); reconnecting at the next request");
                    self.db = None;
                } else {
                    tracing::warn!("database request failed: {e}");
                }
                DbReply::Error(WireError::unavailable(e.to_string()))
            }
        }
    }
}

/// How a request failed.
enum Failed {
    /// No connection could be made.
    Connect(crate::db::DbError),
    /// The query failed.
    Query(sqlx::Error),
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
            Ok(request) => {
                let started = Instant::now();
                let name = request.name();
                let reply = self.answer(request);
                let metrics = crate::metrics::metrics();
                metrics.oracle_seconds.observe(started.elapsed().as_secs_f64());
                metrics.oracle_requests.get_or_create(&crate::metrics::RequestLabel { request: name }).inc();
                reply
            }
            Err(e) => {
                tracing::warn!("undecodable database request from {peer}: {e}");
                DbReply::Error(WireError::refused(e.to_string()))
            }
        };
        sockets.worker.send(&peer, &reply, SEND_TIMEOUT)?;
        Ok(())
    }
}
