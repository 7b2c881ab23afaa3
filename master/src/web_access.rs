//! Download statistics for the built-in index server: its access hook turns each answered
//! request into an access record, as piw-logger does for a log line, and a thread sends them
//! in batches to the access-log ingester over its usual socket. Records that cannot be sent
//! (the ingester is busy or gone) are counted and dropped: statistics never slow a download.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use piwheels_common::protocols::{AccessRecord, LogReply, LogRequest, Versions};
use piwheels_common::transport::{Client, Security};

use crate::access_log::{record_request, validate};
use crate::web_server::Access;

/// Records waiting for the sender; more are dropped.
const QUEUE: usize = 10_000;
/// Records per batch.
const BATCH: usize = 500;
/// Longest a partial batch waits.
const FLUSH: Duration = Duration::from_secs(5);
/// How long the ingester may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The built-in server's side of the feed: the hook to give the server, and the sending thread.
#[derive(Debug)]
pub struct AccessFeed {
    sender: Option<SyncSender<AccessRecord>>,
    thread: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

impl AccessFeed {
    /// Starts the thread that sends records to the ingester at `endpoint`, connecting with
    /// `security` (the master's own key, when the logger socket is authenticated tcp).
    pub fn start(ctx: zmq::Context, endpoint: String, security: Security) -> AccessFeed {
        let (sender, records) = mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("web_access".into())
            .spawn(move || send_batches(&ctx, &endpoint, &security, &records))
            .ok();
        AccessFeed { sender: Some(sender), thread, dropped }
    }

    /// The server's access hook: quick, never blocking.
    pub fn hook(&self) -> impl Fn(&Access) + Send + Sync + 'static {
        let sender = self.sender.clone();
        let dropped = Arc::clone(&self.dropped);
        move |access: &Access| {
            let host = access.peer.ip().to_string();
            let agent = access.user_agent.as_deref().unwrap_or("");
            let record = record_request(&host, access.time, access.method.as_bytes(), access.path.as_bytes(), access.status, agent);
            let Ok(Some(record)) = record else { return };
            let Ok(record) = validate(record, chrono::Utc::now()) else { return };
            if let Some(sender) = &sender
                && let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sender.try_send(record)
            {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends what is queued and stops the thread.
    pub fn stop(mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!("{dropped} access records of the built-in server were dropped (the ingester was busy or gone)");
        }
    }
}

fn send_batches(ctx: &zmq::Context, endpoint: &str, security: &Security, records: &Receiver<AccessRecord>) {
    let mut client: Option<Client<LogRequest, LogReply>> = None;
    let mut batch = Vec::new();
    let mut oldest = Instant::now();
    loop {
        let wait = FLUSH.saturating_sub(oldest.elapsed());
        let closed = match records.recv_timeout(if batch.is_empty() { FLUSH } else { wait }) {
            Ok(record) => {
                if batch.is_empty() {
                    oldest = Instant::now();
                }
                batch.push(record);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if !batch.is_empty() && (closed || batch.len() >= BATCH || oldest.elapsed() >= FLUSH) {
            let records = std::mem::take(&mut batch);
            let count = records.len();
            if let Err(e) = send(ctx, endpoint, security, &mut client, records) {
                tracing::warn!("{count} access records of the built-in server not stored: {e}");
                client = None;
            }
        }
        if closed {
            return;
        }
    }
}

fn send(ctx: &zmq::Context, endpoint: &str, security: &Security, client: &mut Option<Client<LogRequest, LogReply>>, records: Vec<AccessRecord>) -> anyhow::Result<()> {
    if client.is_none() {
        let fresh = Client::connect_secured(ctx, endpoint, None, security)?;
        match fresh.request(&LogRequest::Hello { versions: Versions::current() }, TIMEOUT)? {
            LogReply::Welcome => *client = Some(fresh),
            other => anyhow::bail!("the ingester refused the built-in server: {other:?}"),
        }
    }
    let Some(connected) = client.as_ref() else { anyhow::bail!("no connection") };
    match connected.request(&LogRequest::Records { records }, TIMEOUT)? {
        LogReply::Accepted { .. } => Ok(()),
        other => anyhow::bail!("the ingester answered {other:?}"),
    }
}
