//! piw-logger: reads access logs (files, gzipped files or standard input), sends what they
//! record to the master's log ingester in batches, and sums up what it did.
//!
//! A reader thread splits the input into lines ([`Lines`]), parses and checks each
//! ([`parse_line`], [`validate`]) and hands the results to the sending thread, which sends a
//! batch when it is full or when its first record has waited `--flush-interval` (so that a
//! `tail -F` pipe is not held back). Every batch waits at most `--timeout` for the master's
//! answer; the hello at start at most `--connect-timeout`, so a master that is not running is
//! reported within seconds. A batch the master did not take ends the run: the summary says
//! how far it got.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use chrono::Utc;
use flate2::read::MultiGzDecoder;
use piwheels_common::codec;
use piwheels_common::config::{ByteSize, ConfigArg, HumanDuration};
use piwheels_common::keys::{ClientAuthArgs, Role};
use piwheels_common::logging::LogArgs;
use piwheels_common::protocols::{AccessRecord, ErrorKind, LogReply, LogRequest, Versions, WireError};
use piwheels_common::transport::{Client, Security, TransportError};

use super::{Kind, Line, Lines, Problem, parse_line, validate};
use crate::lumberjack::{self, MAX_BATCH, MAX_MESSAGE};

/// Results queued between the reader and the sender.
const QUEUE: usize = 4096;

/// Sends web-server access logs (combined format) to the piwheels master: wheel downloads,
/// installers' index lookups, project pages, project JSON and other pages.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "piw-logger", version)]
pub struct LoggerConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: ConfigArg,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub auth: ClientAuthArgs,

    /// Access logs to read, in order; - is standard input, and names ending in .gz are
    /// decompressed
    #[arg(value_name = "FILE", default_value = "-")]
    pub files: Vec<PathBuf>,

    /// The master's log ingester (piw-master's --logger-queue): ipc://PATH or tcp://HOST:PORT
    #[arg(long, env = "PIW_LOGGER_QUEUE", value_name = "ADDR", default_value = lumberjack::DEFAULT_ENDPOINT)]
    pub logger_queue: String,

    /// Records sent in one message (a batch that would exceed the master's message size
    /// limit is split)
    #[arg(long, env = "PIW_LOGGER_BATCH_SIZE", value_name = "N", default_value = "500",
          value_parser = clap::value_parser!(u16).range(1..=MAX_BATCH as i64))]
    pub batch_size: u16,

    /// Send a batch that is not full once its first record has waited this long (keeps a
    /// tail -F pipe current)
    #[arg(long, env = "PIW_LOGGER_FLUSH_INTERVAL", value_name = "DURATION", default_value = "5s")]
    pub flush_interval: HumanDuration,

    /// How long to wait for the master to answer the hello at start: a master that is not
    /// running is reported after this long
    #[arg(long, env = "PIW_LOGGER_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "5s")]
    pub connect_timeout: HumanDuration,

    /// How long to wait for the master to store a batch
    #[arg(long, env = "PIW_LOGGER_TIMEOUT", value_name = "DURATION", default_value = "30s")]
    pub timeout: HumanDuration,

    /// Longest line read; longer lines are skipped (real ones stay far below it)
    #[arg(long, env = "PIW_LOGGER_MAX_LINE", value_name = "SIZE", default_value = "32KiB")]
    pub max_line: ByteSize,
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Lines read (including skipped ones).
    pub lines: u64,
    /// Inputs read, or tried.
    pub inputs: u64,
    /// Inputs that could not be read (or not to the end), with why.
    pub input_errors: Vec<String>,
    /// Records sent, by kind (in [`Kind::ALL`] order).
    pub sent: [u64; 5],
    /// Records the master stored.
    pub stored: u64,
    /// Records the master refused.
    pub rejected: u64,
    /// Records read but never delivered (the run stopped).
    pub unsent: u64,
    /// Well-formed lines that record nothing (other pages, statuses, methods).
    pub other: u64,
    /// Lines skipped, by problem (in [`Problem::ALL`] order).
    pub skipped: [u64; 8],
}

impl Summary {
    /// Records sent.
    pub fn sent_total(&self) -> u64 {
        self.sent.iter().sum()
    }

    /// Lines skipped.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.iter().sum()
    }

    /// Records sent of one kind.
    pub fn sent_of(&self, kind: Kind) -> u64 {
        self.sent[Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)]
    }

    /// Lines skipped for one problem.
    pub fn skipped_for(&self, problem: Problem) -> u64 {
        self.skipped[Problem::ALL.iter().position(|p| *p == problem).unwrap_or(0)]
    }

    fn count(&mut self, item: &Item) {
        match item {
            Item::Record(record) => {
                self.lines += 1;
                self.sent[Kind::ALL.iter().position(|k| *k == Kind::of(record)).unwrap_or(0)] += 1;
            }
            Item::Other => {
                self.lines += 1;
                self.other += 1;
            }
            Item::Skipped(problem) => {
                self.lines += 1;
                self.skipped[Problem::ALL.iter().position(|p| p == problem).unwrap_or(0)] += 1;
            }
            Item::Input => self.inputs += 1,
            Item::InputError(e) => self.input_errors.push(e.clone()),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "lines read: {} from {} input(s)", self.lines, self.inputs)?;
        let kinds: Vec<String> = Kind::ALL.iter().zip(self.sent).map(|(kind, n)| format!("{n} {}", kind.plural())).collect();
        writeln!(f, "records sent: {} ({})", self.sent_total(), kinds.join(", "))?;
        writeln!(f, "records stored by the master: {}, rejected by it: {}", self.stored, self.rejected)?;
        if self.unsent > 0 {
            writeln!(f, "records not delivered: {}", self.unsent)?;
        }
        writeln!(f, "other requests (not recorded): {}", self.other)?;
        writeln!(f, "lines skipped: {}", self.skipped_total())?;
        for (problem, n) in Problem::ALL.iter().zip(self.skipped) {
            if n > 0 {
                writeln!(f, "  {n}: {problem}")?;
            }
        }
        for error in &self.input_errors {
            writeln!(f, "input error: {error}")?;
        }
        Ok(())
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    /// What it did.
    pub summary: Summary,
    /// Why it stopped before the end of its input, or which input failed; None when all went
    /// well (skipped lines are not failures).
    pub failure: Option<String>,
}

/// What the reader hands the sender.
#[derive(Debug)]
enum Item {
    Record(Box<AccessRecord>),
    Other,
    Skipped(Problem),
    /// An input was opened.
    Input,
    InputError(String),
}

/// The master could not be reached or refused us.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No answer in time.
    #[error(
        "the master did not answer at {endpoint} within {timeout:?}: is piw-master running, and is this its --logger-queue?"
    )]
    NoAnswer {
        /// Where we tried.
        endpoint: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The master refused the hello or a batch.
    #[error("the master refused: {0}")]
    Refused(String),
    /// The master could not store a batch (its database failed): worth sending again later.
    #[error("the master failed: {0}")]
    Failed(String),
    /// Something else went wrong with the socket.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The master answered with a message that makes no sense here.
    #[error("the master answered {0:?}")]
    Unexpected(LogReply),
}

impl SendError {
    /// The master's error, by its kind.
    fn of(error: WireError) -> SendError {
        match error.kind {
            ErrorKind::Refused => SendError::Refused(error.message),
            ErrorKind::Unavailable => SendError::Failed(error.message),
        }
    }
}

/// A connection to the master's log ingester.
pub struct Shipper {
    ctx: zmq::Context,
    security: Security,
    /// Replaced by a fresh connection when the ingester stops answering.
    client: std::cell::RefCell<Client<LogRequest, LogReply>>,
    endpoint: String,
    connect_timeout: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper").field("endpoint", &self.endpoint).field("timeout", &self.timeout).finish()
    }
}

impl Shipper {
    /// Connects to the ingester at `endpoint` and says hello, waiting at most
    /// `connect_timeout` for the welcome; batches wait at most `timeout`.
    pub fn connect(ctx: &zmq::Context, endpoint: &str, security: &Security, connect_timeout: Duration, timeout: Duration) -> Result<Shipper, SendError> {
        let client = std::cell::RefCell::new(Client::connect_secured(ctx, endpoint, Some(MAX_MESSAGE), security)?);
        let shipper = Shipper { ctx: ctx.clone(), security: security.clone(), client, endpoint: endpoint.to_string(), connect_timeout, timeout };
        shipper.hello()?;
        Ok(shipper)
    }

    fn hello(&self) -> Result<(), SendError> {
        match self.ask(&LogRequest::Hello { versions: Versions::current() }, self.connect_timeout)? {
            LogReply::Welcome => Ok(()),
            LogReply::Error(error) => Err(SendError::of(error)),
            reply => Err(SendError::Unexpected(reply)),
        }
    }

    fn ask(&self, request: &LogRequest, timeout: Duration) -> Result<LogReply, SendError> {
        self.client.borrow().request(request, timeout).map_err(|e| match e {
            TransportError::Timeout { .. } | TransportError::Busy { .. } => {
                SendError::NoAnswer { endpoint: self.endpoint.clone(), timeout }
            }
            e => SendError::Transport(e),
        })
    }

    /// Sends records, in as many messages as the size limit needs; returns how many the
    /// master stored and how many it rejected. A master that restarted has forgotten our
    /// hello: we say it again and send the batch once more.
    pub fn send(&self, records: Vec<AccessRecord>) -> Result<(u64, u64), SendError> {
        if records.is_empty() {
            return Ok((0, 0));
        }
        let request = LogRequest::Records { records };
        let size = codec::encode(&request).map_err(TransportError::from)?.len();
        let LogRequest::Records { mut records } = request else { unreachable!("built above") };
        if size > MAX_MESSAGE && records.len() > 1 {
            let second = records.split_off(records.len() / 2);
            let (a, b) = self.send(records)?;
            let (c, d) = self.send(second)?;
            return Ok((a + c, b + d));
        }
        let request = LogRequest::Records { records };
        let mut retried = false;
        loop {
            let reply = match self.ask(&request, self.timeout) {
                Ok(reply) => reply,
                // A master that restarted just as the batch left may have lost it with the old
                // connection: greet the new one and send the batch once more. (Were the old
                // master merely slow, the batch would be counted twice; a lost batch is worse.)
                Err(SendError::NoAnswer { .. }) if !retried => {
                    tracing::debug!("no answer to a batch; connecting and saying hello again");
                    retried = true;
                    *self.client.borrow_mut() = Client::connect_secured(&self.ctx, &self.endpoint, Some(MAX_MESSAGE), &self.security)?;
                    self.hello()?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match reply {
                LogReply::Accepted { stored, rejected } => return Ok((stored, rejected)),
                // A refusal may mean the master forgot this connection (it restarted).
                LogReply::Error(error) if error.kind == ErrorKind::Refused && !retried => {
                    tracing::debug!("batch refused ({}); saying hello again", error.message);
                    retried = true;
                    self.hello()?;
                }
                LogReply::Error(error) => return Err(SendError::of(error)),
                reply => return Err(SendError::Unexpected(reply)),
            }
        }
    }
}

/// Reads the inputs of `cfg` and sends their records to the master. An error means the master
/// could not be reached at all; later failures are in the [`Outcome`].
pub fn run(cfg: &LoggerConfig) -> Result<Outcome, SendError> {
    let ctx = zmq::Context::new();
    let security = cfg.auth.security(&cfg.logger_queue, Role::Logger).map_err(|e| SendError::Refused(e.to_string()))?;
    let shipper = Shipper::connect(&ctx, &cfg.logger_queue, &security, cfg.connect_timeout.0, cfg.timeout.0)?;
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let (files, max_line) = (cfg.files.clone(), usize::try_from(cfg.max_line.0).unwrap_or(usize::MAX));
    // The reader is left behind if sending fails; it ends with the process.
    let _reader = std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || read_inputs(&files, max_line, &tx))
        .map_err(|e| SendError::Transport(TransportError::Ipc { endpoint: "-".into(), reason: format!("cannot start the reader: {e}") }))?;
    Ok(ship(&shipper, &rx, usize::from(cfg.batch_size), cfg.flush_interval.0))
}

/// Sends what the reader finds, batch by batch, until the input ends or a batch fails.
fn ship(shipper: &Shipper, rx: &Receiver<Item>, batch_size: usize, flush_interval: Duration) -> Outcome {
    let mut summary = Summary::default();
    let mut batch: Vec<AccessRecord> = Vec::with_capacity(batch_size);
    let mut first_at = Instant::now();
    let flush = |batch: &mut Vec<AccessRecord>, summary: &mut Summary| -> Result<(), SendError> {
        let records = std::mem::take(batch);
        let n = records.len() as u64;
        match shipper.send(records) {
            Ok((stored, rejected)) => {
                summary.stored += stored;
                summary.rejected += rejected;
                Ok(())
            }
            Err(e) => {
                summary.unsent += n;
                Err(e)
            }
        }
    };
    loop {
        let wait = if batch.is_empty() { flush_interval } else { flush_interval.saturating_sub(first_at.elapsed()) };
        let item = match rx.recv_timeout(wait) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = flush(&mut batch, &mut summary) {
                    return stopped(summary, &e);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        summary.count(&item);
        if let Item::Record(record) = item {
            if batch.is_empty() {
                first_at = Instant::now();
            }
            batch.push(*record);
        }
        let due = !batch.is_empty() && (batch.len() >= batch_size || first_at.elapsed() >= flush_interval);
        if due && let Err(e) = flush(&mut batch, &mut summary) {
            return stopped(summary, &e);
        }
    }
    if let Err(e) = flush(&mut batch, &mut summary) {
        return stopped(summary, &e);
    }
    let failure = (!summary.input_errors.is_empty()).then(|| format!("{} input(s) could not be read", summary.input_errors.len()));
    Outcome { summary, failure }
}

fn stopped(summary: Summary, error: &SendError) -> Outcome {
    Outcome { summary, failure: Some(format!("stopped: {error}")) }
}

/// Reads every input in turn, handing each line's result to the sender; stops when the
/// sender has gone.
fn read_inputs(files: &[PathBuf], max_line: usize, tx: &SyncSender<Item>) {
    for file in files {
        if tx.send(Item::Input).is_err() {
            return;
        }
        let name = file.display().to_string();
        let reader: Box<dyn BufRead> = match open(file) {
            Ok(reader) => reader,
            Err(e) => {
                if tx.send(Item::InputError(format!("{name}: {e}"))).is_err() {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = read_lines(reader, max_line, tx)
            && tx.send(Item::InputError(format!("{name}: {e}"))).is_err()
        {
            return;
        }
    }
}

/// Standard input for `-`, a gzip stream for names ending in `.gz`, else the file.
fn open(path: &Path) -> io::Result<Box<dyn BufRead>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(BufReader::with_capacity(64 << 10, io::stdin())));
    }
    let file = File::open(path)?;
    let inner: Box<dyn Read> =
        if path.extension().is_some_and(|e| e == "gz") { Box::new(MultiGzDecoder::new(file)) } else { Box::new(file) };
    Ok(Box::new(BufReader::with_capacity(64 << 10, inner)))
}

/// Hands the result of every line of `reader` to the sender. Err is a read error; a gone
/// sender ends the reading quietly.
fn read_lines(reader: Box<dyn BufRead>, max_line: usize, tx: &SyncSender<Item>) -> io::Result<()> {
    let mut lines = Lines::new(reader, max_line);
    while let Some(line) = lines.next_line()? {
        let item = match line {
            Line::TooLong => Item::Skipped(Problem::TooLong),
            Line::Text(text) => match parse_line(text).and_then(|r| r.map(|r| validate(r, Utc::now())).transpose()) {
                Ok(Some(record)) => Item::Record(Box::new(record)),
                Ok(None) => Item::Other,
                Err(problem) => Item::Skipped(problem),
            },
        };
        if tx.send(item).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Operators read defaults in `--help`: every option must show one.
    #[test]
    fn every_option_shows_its_default_in_help() {
        assert_eq!(piwheels_common::config::options_without_default(LoggerConfig::command()), Vec::<String>::new());
    }

    #[test]
    fn the_logger_section_of_the_configuration_file_sets_defaults_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("piwheels.toml");
        std::fs::write(&file, "[logger]\nlogger-queue = \"ipc:///tmp/x/logger\"\nbatch-size = 50\ntimeout = \"1m\"\n").unwrap();
        let cfg: LoggerConfig = piwheels_common::config::parse_from(
            "logger",
            ["piw-logger", "-c", file.to_str().unwrap(), "--batch-size", "20", "a.log", "b.log.gz"],
            None,
        )
        .unwrap();
        assert_eq!(cfg.logger_queue, "ipc:///tmp/x/logger");
        assert_eq!(cfg.batch_size, 20);
        assert_eq!(cfg.timeout.0, Duration::from_secs(60));
        assert_eq!(cfg.files, [PathBuf::from("a.log"), PathBuf::from("b.log.gz")]);
        assert_eq!(cfg.connect_timeout.0, Duration::from_secs(5));
    }

    #[test]
    fn a_batch_larger_than_the_master_takes_is_refused_by_the_option_parser() {
        let too_many = (MAX_BATCH + 1).to_string();
        let parsed =
            piwheels_common::config::parse_from::<LoggerConfig, _, _>("logger", ["piw-logger", "--batch-size", &too_many], None);
        assert!(parsed.is_err());
    }

    #[test]
    fn plain_and_gzipped_files_are_read_in_order_and_a_missing_one_is_reported() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let line = "192.0.2.1 - - [01/Mar/2025:10:00:00 +0000] \"GET / HTTP/1.1\" 200 5 \"-\" \"curl/8.0\"\n";
        let plain = dir.path().join("access.log");
        std::fs::write(&plain, format!("{line}not a line\n")).unwrap();
        let gzipped = dir.path().join("access.log.2.gz");
        let mut encoder = flate2::write::GzEncoder::new(File::create(&gzipped).unwrap(), flate2::Compression::default());
        encoder.write_all(line.replace("GET /", "GET /faq.html").as_bytes()).unwrap();
        encoder.finish().unwrap();
        let missing = dir.path().join("gone.log");
        let (tx, rx) = mpsc::sync_channel(100);
        read_inputs(&[plain, missing, gzipped], 1024, &tx);
        drop(tx);
        let mut summary = Summary::default();
        let mut pages = Vec::new();
        for item in rx {
            summary.count(&item);
            if let Item::Record(record) = item
                && let AccessRecord::Page { page, .. } = *record
            {
                pages.push(page);
            }
        }
        assert_eq!(pages, ["home", "faq"]);
        assert_eq!((summary.inputs, summary.lines, summary.skipped_for(Problem::Malformed)), (3, 3, 1));
        assert_eq!(summary.input_errors.len(), 1);
        assert!(summary.input_errors[0].contains("gone.log"), "{:?}", summary.input_errors);
    }

    #[test]
    fn the_summary_names_every_figure() {
        let mut summary = Summary { inputs: 1, ..Summary::default() };
        summary.count(&Item::Skipped(Problem::BadPath));
        summary.count(&Item::Other);
        let text = summary.to_string();
        assert!(text.contains("lines read: 2 from 1 input(s)"), "{text}");
        assert!(text.contains("lines skipped: 1\n  1: malformed or hostile path"), "{text}");
        assert!(text.contains("other requests (not recorded): 1"), "{text}");
    }
}
