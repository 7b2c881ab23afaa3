//! BigBrother, the stats task: gathers the figures other tasks send it (queue lengths,
//! downloads), samples the master host's memory, load, temperature and output disk, and asks
//! the database for the farm's figures (packages built, builds per ABI in the last hour, files,
//! downloads). It publishes them to monitors as [`StatusEvent::Stats`], and keeps the index's
//! home page and search index fresh by sending them to the index writer.
//!
//! Sockets: binds [`wiring::STATS`] (PULL, [`StatsUpdate`]); connects to the master's
//! internal status socket (PUSH, [`StatusEvent`]); when feeding the index
//! ([`Sockets::open_feeding`]), to the oracles ([`DbClient`]) and to the index writer
//! ([`wiring::WEB`], REQ, [`WebRequest`]).

use std::path::PathBuf;
use std::time::Duration;

use piwheels_common::hostinfo;
use piwheels_common::protocols::{MasterStats, StatusEvent, WireError};
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::{Client, Receiver, Sender};

use crate::calls::db::{DbStats, SearchIndex, Statistics};
use crate::calls::tasks::{CheckCounts, StatsUpdate, WebReply, WebRequest};
use crate::db_client::DbClient;
use crate::wiring::{self, TaskName};


/// When BigBrother does what; [`StatsConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct StatsConfig {
    /// Whose disk to report: the output tree's.
    pub output_path: PathBuf,
    /// How often the host is sampled and the figures published to monitors.
    pub sample_interval: Duration,
    /// How often the database's figures are read and the home page written (default 1 min).
    pub home_interval: Duration,
    /// How often the search index is written (default 10 min).
    pub search_interval: Duration,
}

impl StatsConfig {
    /// The defaults, sampling every `sample_interval`.
    pub fn new(output_path: impl Into<PathBuf>, sample_interval: Duration) -> StatsConfig {
        StatsConfig {
            output_path: output_path.into(),
            sample_interval,
            home_interval: Duration::from_secs(60),
            search_interval: Duration::from_secs(600),
        }
    }
}

/// What feeding the index needs.
#[derive(Debug)]
struct Feed {
    db: DbClient,
    web: Client<WebRequest, WebReply>,
    timeout: Duration,
}

/// The task's sockets.
#[derive(Debug)]
pub struct Sockets {
    stats: Receiver<StatsUpdate>,
    status: Sender<StatusEvent>,
    feed: Option<Feed>,
}

impl Sockets {
    /// Binds the stats socket and connects to the status socket; the database's figures,
    /// the home page and the search index are left alone.
    pub fn open(ctx: &zmq::Context, status_endpoint: &str) -> anyhow::Result<Sockets> {
        Ok(Sockets { stats: wiring::STATS.pull(ctx, TaskName::BigBrother)?, status: Sender::push(ctx, status_endpoint)?, feed: None })
    }

    /// As [`Sockets::open`], and connects to the oracles and the index writer, to read the
    /// database's figures and feed the home page and search index. Each request waits at
    /// most `timeout` for its answer.
    pub fn open_feeding(ctx: &zmq::Context, status_endpoint: &str, timeout: Duration) -> anyhow::Result<Sockets> {
        let mut sockets = Self::open(ctx, status_endpoint)?;
        let db = wiring::DB.caller(ctx, TaskName::BigBrother, timeout)?;
        sockets.feed = Some(Feed { db, web: wiring::WEB.client(ctx, TaskName::BigBrother)?, timeout });
        Ok(sockets)
    }
}

/// The stats task.
#[derive(Debug)]
pub struct BigBrother {
    config: StatsConfig,
    stats: MasterStats,
    /// The builders' environment drifts, as the slave driver last told.
    drifts: Vec<String>,
}

/// What BigBrother reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A [`StatsUpdate`] arrived.
    Update,
    /// Time to sample the host and publish.
    Sample,
    /// Time to read the database's figures and write the home page.
    Home,
    /// Time to write the search index.
    Search,
}

impl BigBrother {
    /// A stats task sampling every `interval`, reporting the disk of `output_path`, with the
    /// default home page and search index intervals.
    pub fn new(output_path: PathBuf, interval: Duration) -> Self {
        Self::with_config(StatsConfig::new(output_path, interval))
    }

    /// A stats task with these settings.
    pub fn with_config(config: StatsConfig) -> Self {
        BigBrother { config, stats: MasterStats::default(), drifts: Vec::new() }
    }

    /// Folds the database's figures into the current ones.
    fn fold(&mut self, db: DbStats) {
        let s = &mut self.stats;
        s.packages_built = db.packages_built;
        s.builds_last_hour = db.builds_last_hour;
        s.builds_time = db.builds_time;
        s.builds_size = db.builds_size;
        s.files_count = db.files_count;
        s.new_last_hour = db.new_last_hour;
        s.downloads_last_hour = db.downloads_last_hour;
        s.downloads_last_month = db.downloads_last_month;
        // The database counts every download stored so far, including those reported since.
        s.downloads_all = db.downloads_all;
    }

    fn home(&mut self, feed: &Feed, ctx: &Context<'_, Event>) -> anyhow::Result<()> {
        let figures = feed.db.call(Statistics {})?;
        let checks = CheckCounts { reproduced: figures.reproduced, not_reproduced: figures.not_reproduced };
        self.fold(figures);
        self.stats.at = ctx.utc();
        self.stats.host = hostinfo::host_stats(&self.config.output_path, self.stats.at);
        send(feed, &WebRequest::Home { stats: Box::new(self.stats.clone()), checks, drifts: self.drifts.clone() })
    }

    fn search(feed: &Feed) -> anyhow::Result<()> {
        let entries = feed.db.call(SearchIndex {})?;
        send(feed, &WebRequest::Search { entries })
    }
}

fn send(feed: &Feed, request: &WebRequest) -> anyhow::Result<()> {
    match feed.web.request(request, feed.timeout)? {
        WebReply::Done => Ok(()),
        WebReply::Error(WireError { message, .. }) => anyhow::bail!("the index writer failed: {message}"),
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
        vec![
            (Event::Sample, self.config.sample_interval),
            (Event::Home, self.config.home_interval),
            (Event::Search, self.config.search_interval),
        ]
    }

    fn handle(&mut self, event: Event, sockets: &mut Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        match event {
            Event::Update => match sockets.stats.recv()? {
                StatsUpdate::Queues { lengths } => self.stats.builds_pending = lengths,
                StatsUpdate::Downloads { count } => self.stats.downloads_all += count,
                StatsUpdate::Drifts { notices } => {
                    self.drifts = notices;
                    ctx.schedule(Event::Home, Duration::ZERO);
                }
                StatsUpdate::RefreshHome => {
                    ctx.schedule(Event::Sample, Duration::ZERO);
                    ctx.schedule(Event::Home, Duration::ZERO);
                    ctx.schedule(Event::Search, Duration::ZERO);
                }
            },
            Event::Sample => {
                self.stats.at = ctx.utc();
                self.stats.host = hostinfo::host_stats(&self.config.output_path, self.stats.at);
                sockets.status.send(&StatusEvent::Stats(self.stats.clone()), Duration::from_secs(1))?;
            }
            Event::Home => {
                if let Some(feed) = &sockets.feed {
                    self.home(feed, ctx)?;
                }
            }
            Event::Search => {
                if let Some(feed) = &sockets.feed {
                    Self::search(feed)?;
                }
            }
        }
        Ok(())
    }
}
