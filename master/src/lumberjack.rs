//! Lumberjack, the access-log ingester: takes batches of access records from piw-logger,
//! checks every record again (the sender is not trusted), stores them through the oracles and
//! tells the stats task how many wheels were downloaded.
//!
//! Sockets: binds the logger endpoint (ROUTER, external, usually ipc: piw-logger's
//! [`LogRequest`] → [`LogReply`], at most [`MAX_MESSAGE`] bytes a message and
//! [`QUEUE_PER_PEER`] unread messages a connection); connects to [`wiring::STATS`] (PUSH,
//! [`StatsUpdate::Downloads`]) and to the oracles ([`DbClient`]).
//!
//! A logger says `Hello` with its versions first; then each `Records` batch is answered
//! `Accepted { stored, rejected }` once stored, or `Refused` when it cannot be (no hello, or
//! the database failed). Nothing a sender does stops the task: undecodable or oversized
//! messages are refused or dropped (libzmq disconnects a peer that sends more than the
//! limit), records that fail [`validate`] are counted and dropped, at most [`MAX_BATCH`]
//! records of a batch are considered, and warnings about misbehaving senders are limited to
//! [`MAX_WARNINGS`] a minute, the rest summarised. One batch is stored at a time, so the
//! ingester never occupies more than one oracle, however fast records arrive.
//!
//! While the master is paused, records are still stored (access logs cannot wait); only the
//! periodic report stops.

use std::collections::HashMap;
use std::fmt::Display;
use std::time::{Duration, Instant};

use piwheels_common::keys::Endpoint;
use piwheels_common::protocols::{AccessRecord, LogReply, LogRequest, WireError};
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::{Peer, Sender, Server};

use crate::calls::db::LogAccess;
use crate::calls::tasks::StatsUpdate;
use crate::access_log::{Kind, Problem, validate};
use crate::db_client::DbClient;
use crate::gatekeeper::{Auth, Gate};
use crate::wiring::{self, TaskName};

/// piw-master's default `--logger-queue`.
pub const DEFAULT_ENDPOINT: &str = "ipc:///run/piwheels/logger";
/// Largest message accepted on the logger socket. A full batch of the longest records
/// allowed takes about 5 KiB a record; piw-logger splits batches that would exceed this.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Most records of one batch considered; any beyond are rejected.
pub const MAX_BATCH: usize = 1000;
/// Unread messages queued per connection: with [`MAX_MESSAGE`], a flooding peer holds at
/// most 16 MiB of the master's memory.
pub const QUEUE_PER_PEER: i32 = 16;
/// Loggers remembered as having said hello; the one quiet longest is forgotten first.
const MAX_LOGGERS: usize = 1024;
/// How often the ingester logs what it stored and what it refused.
const REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// Warnings about senders logged per report interval; the rest are only counted.
pub const MAX_WARNINGS: u64 = 10;
/// What a logger is told when it sends records before saying hello.
const HELLO_FIRST: &str = "say Hello (with your versions) first";

/// The ingester's sockets.
#[derive(Debug)]
pub struct Sockets {
    logs: Server<LogRequest, LogReply>,
    gate: Gate,
    stats: Sender<StatsUpdate>,
    db: DbClient,
}

impl Sockets {
    /// Binds the logger endpoint (an ipc directory must be private to the master's user, and
    /// is created with mode 700 if missing) and connects to the stats task and the oracles,
    /// whose answers are awaited for at most `db_timeout`; `auth` decides who may connect.
    pub fn open(ctx: &zmq::Context, endpoint: &str, db_timeout: Duration, auth: &Auth) -> anyhow::Result<Sockets> {
        Ok(Sockets {
            logs: Server::bind_external(ctx, endpoint, MAX_MESSAGE, Some(QUEUE_PER_PEER), &auth.security(Endpoint::Logger, endpoint))?,
            gate: auth.gate(Endpoint::Logger, endpoint),
            stats: wiring::STATS.push(ctx, TaskName::Lumberjack)?,
            db: wiring::DB.caller(ctx, TaskName::Lumberjack, db_timeout)?,
        })
    }

    /// The address the logger socket is bound to, with the port filled in when it was bound
    /// to `*`.
    pub fn endpoint(&self) -> String {
        match self.logs.socket().get_last_endpoint() {
            Ok(Ok(endpoint)) => endpoint,
            _ => self.logs.endpoint().to_string(),
        }
    }
}

/// What the ingester reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A logger sent something.
    Request,
    /// Time to report.
    Report,
}

/// What happened since the last report.
#[derive(Debug, Default)]
struct Tally {
    /// Records stored, by kind (in [`Kind::ALL`] order).
    stored: [u64; 5],
    /// Records dropped, by problem (in [`Problem::ALL`] order).
    rejected: [u64; 8],
    /// Records beyond [`MAX_BATCH`] in a batch.
    over_batch: u64,
    /// Messages that were not a `LogRequest`, or had no usable envelope.
    malformed: u64,
    /// Hellos refused and batches sent without one.
    refused: u64,
    /// Batches the database did not store.
    failed: u64,
    /// Replies that could not be sent (the logger left, or does not read).
    unanswered: u64,
}

/// The access-log ingester.
#[derive(Debug, Default)]
pub struct Lumberjack {
    /// Loggers that said hello, by connection identity, with when they last spoke.
    loggers: HashMap<Vec<u8>, Instant>,
    tally: Tally,
    /// Downloads stored but not yet taken by the stats task.
    downloads_unsent: u64,
    /// Warnings logged since the last report.
    warnings: u64,
}

impl Lumberjack {
    /// An ingester that knows no logger yet.
    pub fn new() -> Lumberjack {
        Lumberjack::default()
    }

    /// Logs a warning about a sender, unless too many were logged this minute.
    fn complain(&mut self, what: impl Display) {
        self.warnings += 1;
        if self.warnings <= MAX_WARNINGS {
            tracing::warn!("{what}");
        }
        if self.warnings == MAX_WARNINGS {
            tracing::warn!("more than {MAX_WARNINGS} problems this minute: the rest are counted and reported each minute");
        }
    }

    fn hello(&mut self, peer: &Peer, versions: &piwheels_common::protocols::Versions, now: Instant) -> LogReply {
        if let Err(mismatch) = versions.check() {
            self.tally.refused += 1;
            self.complain(format_args!("logger {peer} refused: {mismatch}"));
            return LogReply::Error(WireError::refused(mismatch.to_string()));
        }
        let identity = peer.identity().to_vec();
        if self.loggers.len() >= MAX_LOGGERS
            && !self.loggers.contains_key(&identity)
            && let Some(oldest) = self.loggers.iter().min_by_key(|(_, seen)| **seen).map(|(id, _)| id.clone())
        {
            self.loggers.remove(&oldest);
        }
        self.loggers.insert(identity, now);
        tracing::debug!("logger {peer} attached");
        LogReply::Welcome
    }

    fn records(&mut self, peer: &Peer, records: Vec<AccessRecord>, sockets: &mut Sockets, ctx: &Context<'_, Event>) -> LogReply {
        match self.loggers.get_mut(peer.identity()) {
            Some(seen) => *seen = ctx.now(),
            None => {
                self.tally.refused += 1;
                self.complain(format_args!("logger {peer} sent records before saying hello"));
                return LogReply::Error(WireError::refused(HELLO_FIRST));
            }
        }
        let received = records.len();
        let now = ctx.utc();
        let mut valid = Vec::with_capacity(received.min(MAX_BATCH));
        let mut rejected = 0u64;
        for record in records.into_iter().take(MAX_BATCH) {
            match validate(record, now) {
                Ok(record) => valid.push(record),
                Err(problem) => {
                    rejected += 1;
                    self.tally.rejected[index(&Problem::ALL, problem)] += 1;
                }
            }
        }
        if received > MAX_BATCH {
            let over = (received - MAX_BATCH) as u64;
            rejected += over;
            self.tally.over_batch += over;
            self.complain(format_args!("logger {peer} sent {received} records in one batch; only {MAX_BATCH} were considered"));
        }
        if valid.is_empty() {
            return LogReply::Accepted { stored: 0, rejected };
        }
        let mut kinds = [0u64; 5];
        for record in &valid {
            kinds[index(&Kind::ALL, Kind::of(record))] += 1;
        }
        let count = valid.len() as u64;
        let stored = match sockets.db.call(LogAccess { records: valid }) {
            Ok(stored) => stored.min(count),
            Err(e) => {
                self.tally.failed += 1;
                tracing::error!("{count} access records not stored: {e}");
                return LogReply::Error(WireError::unavailable(format!("not stored: {e}")));
            }
        };
        // The database drops only records it cannot store, which validation has removed; if
        // it ever drops some, count none of them as downloads rather than too many.
        if stored < count {
            kinds[0] = kinds[0].saturating_sub(count - stored);
            rejected += count - stored;
        }
        for (total, n) in self.tally.stored.iter_mut().zip(kinds) {
            *total += n;
        }
        self.downloads_unsent += kinds[0];
        self.send_downloads(sockets);
        LogReply::Accepted { stored, rejected }
    }

    /// Hands the downloads stored so far to the stats task, without waiting: if it cannot
    /// take them now, they go with the next batch.
    fn send_downloads(&mut self, sockets: &Sockets) {
        if self.downloads_unsent == 0 {
            return;
        }
        match sockets.stats.send(&StatsUpdate::Downloads { count: self.downloads_unsent }, Duration::ZERO) {
            Ok(()) => self.downloads_unsent = 0,
            Err(e) => tracing::debug!("downloads not counted yet: {e}"),
        }
    }

    fn report(&mut self, sockets: &Sockets) {
        self.send_downloads(sockets);
        let tally = std::mem::take(&mut self.tally);
        let stored: Vec<String> =
            Kind::ALL.iter().zip(tally.stored).filter(|(_, n)| *n > 0).map(|(kind, n)| format!("{n} {}", kind.plural())).collect();
        if !stored.is_empty() {
            tracing::info!("logged {} in the last minute", stored.join(", "));
        }
        let mut dropped: Vec<String> =
            Problem::ALL.iter().zip(tally.rejected).filter(|(_, n)| *n > 0).map(|(problem, n)| format!("{n} {problem}")).collect();
        for (n, what) in [
            (tally.over_batch, "beyond the batch limit"),
            (tally.malformed, "undecodable messages"),
            (tally.refused, "refused requests"),
            (tally.failed, "batches the database did not store"),
            (tally.unanswered, "replies not delivered"),
        ] {
            if n > 0 {
                dropped.push(format!("{n} {what}"));
            }
        }
        if !dropped.is_empty() {
            tracing::warn!("in the last minute: {}", dropped.join(", "));
        }
        self.warnings = 0;
    }
}

/// The position of `item` in `all` (every item is in it).
fn index<T: PartialEq>(all: &[T], item: T) -> usize {
    all.iter().position(|x| *x == item).unwrap_or(0)
}

impl Task for Lumberjack {
    type Sockets = Sockets;
    type Event = Event;
    const PAUSE: PauseMode = PauseMode::Timers;

    fn poll_sockets<'s>(&self, sockets: &'s Sockets) -> Vec<(Event, &'s zmq::Socket)> {
        vec![(Event::Request, sockets.logs.socket())]
    }

    fn timers(&self) -> Vec<(Event, Duration)> {
        vec![(Event::Report, REPORT_INTERVAL)]
    }

    fn handle(&mut self, event: Event, sockets: &mut Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        match event {
            Event::Request => {
                let (peer, request) = match sockets.logs.recv() {
                    Ok(received) => received,
                    Err(e) => {
                        // No envelope, so nobody to answer.
                        self.tally.malformed += 1;
                        self.complain(format_args!("unusable message on the logger socket: {e}"));
                        return Ok(());
                    }
                };
                let reply = match (sockets.gate.admit(&peer), request) {
                    // The gate logged it, at most once a minute per key.
                    (Err(refusal), _) => {
                        self.tally.refused += 1;
                        self.loggers.remove(peer.identity());
                        LogReply::Error(WireError::refused(refusal.to_string()))
                    }
                    (Ok(_), Err(e)) => {
                        self.tally.malformed += 1;
                        self.complain(format_args!("logger {peer}: {e}"));
                        LogReply::Error(WireError::refused(e.to_string()))
                    }
                    (Ok(_), Ok(LogRequest::Hello { versions })) => self.hello(&peer, &versions, ctx.now()),
                    (Ok(_), Ok(LogRequest::Records { records })) => self.records(&peer, records, sockets, ctx),
                };
                if let Err(e) = sockets.logs.send(&peer, &reply) {
                    self.tally.unanswered += 1;
                    tracing::debug!("no reply to logger {peer}: {e}");
                }
            }
            Event::Report => self.report(sockets),
        }
        Ok(())
    }
}
