//! The farm's figures for Prometheus. One registry serves the master process ([`metrics`]);
//! each figure is counted where it arises:
//!
//! | figure | counted by |
//! |---|---|
//! | `piwheels_builds_total{abi,outcome}`: builds recorded since the master started | the main loop, from the slave driver's `Finished` events |
//! | `piwheels_builders{abi,state}`: connected builders by what they do | the main loop, from the slaves' events |
//! | `piwheels_build_queue_length{abi}`, `piwheels_downloads{period}`, `piwheels_files`, `piwheels_packages_built`, `piwheels_output_free_bytes` | the main loop, from the stats task's figures |
//! | `piwheels_task_restarts_total{task}` | the main loop, from the tasks' state events |
//! | `piwheels_environment_drifts{abi,entry}`: builders that differ from their ABI's others | the slave driver ([`crate::drift`]) |
//! | `piwheels_received_bytes_total`: wheel bytes the file juggler took in | the file juggler |
//! | `piwheels_page_writes_total{kind}` | the index writer |
//! | `piwheels_failures_triaged_total{abi,class}`: failed builds classified, by class ([`crate::triage`]) | the triage |
//! | `piwheels_oracle_request_duration_seconds`: each database request's time in an oracle | the oracles |
//! | `piwheels_oracle_requests_total{request}`: database requests answered, by request | the oracles |
//!
//! Updating a figure is an atomic add (a lock for a labelled family's lookup); nothing is sent
//! anywhere until Prometheus asks. The tasks count always (it costs next to nothing); the
//! main loop reads the status events for the figures only when `--metrics-listen` is given,
//! and then [`MetricsServer`] answers `GET /metrics` there with the OpenMetrics text of the
//! whole registry.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use piwheels_common::protocols::{SlaveEvent, SlaveId, SlaveReply, StatusEvent, TaskState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::{Semaphore, watch};

/// The master process's figures.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// An ABI.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AbiLabel {
    /// The ABI tag.
    pub abi: String,
}

/// A build's ABI and outcome (`success`, or the failure's class).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The ABI tag.
    pub abi: String,
    /// `success` or the failure's class.
    pub outcome: String,
}

/// A builder's ABI and state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuilderLabels {
    /// The ABI tag.
    pub abi: String,
    /// What it does: `starting`, `idle`, `asleep`, `building`, `sending`, `exiting`.
    pub state: &'static str,
}

/// An entry of builders' environments, in one ABI.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// The ABI tag.
    pub abi: String,
    /// The entry (`setuptools`, `debian-packages`, ...).
    pub entry: String,
}

/// A failed build's ABI and class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriageLabels {
    /// The ABI tag.
    pub abi: String,
    /// The failure's class (`missing-header`, ...).
    pub class: &'static str,
}

/// A kind of thing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: &'static str,
}

/// A database request, by its name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// The request's name.
    pub request: &'static str,
}

/// A task.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    /// The task's name.
    pub task: String,
}

/// A period of downloads.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeriodLabel {
    /// `last_hour`, `last_30_days` or `all`.
    pub period: &'static str,
}

/// The registry and a handle on each figure.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Builds recorded since the start, by ABI and outcome.
    pub builds: Family<BuildLabels, Counter>,
    /// Connected builders, by ABI and state.
    pub builders: Family<BuilderLabels, Gauge>,
    /// Releases waiting, by ABI.
    pub queue: Family<AbiLabel, Gauge>,
    /// Downloads, by period.
    pub downloads: Family<PeriodLabel, Gauge>,
    /// Files in the index.
    pub files: Gauge,
    /// Packages with at least one file.
    pub packages_built: Gauge,
    /// Free space of the output file system.
    pub output_free: Gauge,
    /// Task restarts since the start.
    pub task_restarts: Family<TaskLabel, Counter>,
    /// Builders whose environment differs from their ABI's others, by entry.
    pub drifts: Family<DriftLabels, Gauge>,
    /// Wheel bytes received by the file juggler.
    pub received_bytes: Counter,
    /// Pages and files the index writer wrote, by kind.
    pub page_writes: Family<KindLabel, Counter>,
    /// Time an oracle took over each database request.
    pub oracle_seconds: Histogram,
    /// Database requests the oracles answered, by request.
    pub oracle_requests: Family<RequestLabel, Counter>,
    /// Failed builds the triage classified, by ABI and class.
    pub failures: Family<TriageLabels, Counter>,
    /// Each connected slave's ABI and state, to move it between the `builders` gauges.
    states: Mutex<HashMap<SlaveId, (String, &'static str)>>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("piwheels");
        let metrics = Metrics {
            builds: Family::default(),
            builders: Family::default(),
            queue: Family::default(),
            downloads: Family::default(),
            files: Gauge::default(),
            packages_built: Gauge::default(),
            output_free: Gauge::default(),
            task_restarts: Family::default(),
            drifts: Family::default(),
            received_bytes: Counter::default(),
            page_writes: Family::default(),
            // 0.5 ms to 4 s.
            oracle_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            oracle_requests: Family::default(),
            failures: Family::default(),
            states: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        registry.register("builds", "Builds recorded since the master started, by ABI and outcome (success or the failure's class)", metrics.builds.clone());
        registry.register("builders", "Connected builders by ABI and what they are doing", metrics.builders.clone());
        registry.register("build_queue_length", "Releases waiting to be built, by ABI", metrics.queue.clone());
        registry.register("downloads", "Downloads from the index in the last hour, the last 30 days, and ever", metrics.downloads.clone());
        registry.register("files", "Files in the index", metrics.files.clone());
        registry.register("packages_built", "Packages with at least one file in the index", metrics.packages_built.clone());
        registry.register_with_unit("output_free", "Free space of the file system holding the index", Unit::Bytes, metrics.output_free.clone());
        registry.register("task_restarts", "Restarts of each of the master's tasks since it started", metrics.task_restarts.clone());
        registry.register("environment_drifts", "Builders whose environment entry differs from most of their ABI's builders'", metrics.drifts.clone());
        registry.register_with_unit("received", "Bytes of wheels the file juggler received", Unit::Bytes, metrics.received_bytes.clone());
        registry.register("page_writes", "Pages and files of the index the index writer wrote, by kind", metrics.page_writes.clone());
        registry.register("failures_triaged", "Failed builds the triage classified since the master started, by ABI and class", metrics.failures.clone());
        registry.register_with_unit("oracle_request_duration", "Time an oracle took over each database request", Unit::Seconds, metrics.oracle_seconds.clone());
        registry.register("oracle_requests", "Database requests the oracles answered, by request", metrics.oracle_requests.clone());
        Metrics { registry, ..metrics }
    }

    /// Counts a page (or file) of `kind` the index writer wrote.
    pub fn page_written(&self, kind: &'static str) {
        self.page_writes.get_or_create(&KindLabel { kind }).inc();
    }

    /// The OpenMetrics text of every figure.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts what a status event says (the main loop calls it with every event it relays).
    pub fn observe(&self, event: &StatusEvent) {
        match event {
            StatusEvent::Stats(stats) => {
                self.queue.clear();
                for (abi, pending) in &stats.builds_pending {
                    self.queue.get_or_create(&AbiLabel { abi: abi.clone() }).set(saturating(*pending));
                }
                for (period, count) in [("last_hour", stats.downloads_last_hour), ("last_30_days", stats.downloads_last_month), ("all", stats.downloads_all)] {
                    self.downloads.get_or_create(&PeriodLabel { period }).set(saturating(count));
                }
                self.files.set(saturating(stats.files_count));
                self.packages_built.set(saturating(stats.packages_built));
                self.output_free.set(saturating(stats.host.disk_free));
            }
            StatusEvent::Task { name, state, .. } => {
                // Every task's counter exists from its first event, so that its first restart
                // is an increase.
                let restarts = self.task_restarts.get_or_create(&TaskLabel { task: name.clone() });
                if *state == TaskState::Restarting {
                    restarts.inc();
                }
                drop(restarts);
                // A slave driver that restarts forgets its slaves without a word: they say
                // hello again under new ids.
                if name == "slave_driver" && *state == TaskState::Restarting {
                    self.states.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    self.builders.clear();
                }
            }
            StatusEvent::Slave { slave_id, event, .. } => self.observe_slave(*slave_id, event),
            StatusEvent::Paused(_) | StatusEvent::Notice { .. } => {}
        }
    }

    fn observe_slave(&self, id: SlaveId, event: &SlaveEvent) {
        if let SlaveEvent::Stats(_) = event {
            return;
        }
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            SlaveEvent::Hello(hello) => {
                self.set_state(&mut states, id, Some((hello.abi.clone(), "starting")));
            }
            SlaveEvent::Replied(reply) => {
                let Some(state) = state_after(reply) else { return };
                if let Some(abi) = states.get(&id).map(|(abi, _)| abi.clone()) {
                    self.set_state(&mut states, id, Some((abi, state)));
                }
            }
            SlaveEvent::Gone { .. } => self.set_state(&mut states, id, None),
            SlaveEvent::Finished(build) => {
                let Some((abi, _)) = states.get(&id) else { return };
                let outcome = build.failure.map_or("success", crate::db::requests::failure_name).to_string();
                self.builds.get_or_create(&BuildLabels { abi: abi.clone(), outcome }).inc();
            }
            SlaveEvent::Stats(_) => {}
        }
    }

    /// Moves a slave from its old state's gauge to its new one's.
    fn set_state(&self, states: &mut HashMap<SlaveId, (String, &'static str)>, id: SlaveId, new: Option<(String, &'static str)>) {
        let old = match &new {
            Some(new) => states.insert(id, new.clone()),
            None => states.remove(&id),
        };
        if let Some((abi, state)) = old {
            self.builders.get_or_create(&BuilderLabels { abi, state }).dec();
        }
        if let Some((abi, state)) = new {
            self.builders.get_or_create(&BuilderLabels { abi, state }).inc();
        }
    }
}

/// What a slave is doing after `reply`; None when the reply leaves it as it was.
fn state_after(reply: &SlaveReply) -> Option<&'static str> {
    match reply {
        SlaveReply::Ack { .. } | SlaveReply::Sleep { paused: false } | SlaveReply::Done => Some("idle"),
        SlaveReply::Sleep { paused: true } => Some("asleep"),
        SlaveReply::Build { .. } => Some("building"),
        SlaveReply::Send { .. } => Some("sending"),
        SlaveReply::Die { .. } | SlaveReply::Error(_) => Some("exiting"),
        SlaveReply::Cont | SlaveReply::AddBuilder | SlaveReply::RetireBuilder => None,
    }
}

fn saturating(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Most connections served at once.
const MAX_CONNECTIONS: usize = 8;

/// Longest a scraper may take to send its request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP endpoint Prometheus scrapes.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    shutdown: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `listen` (port 0 picks a free one) and answers `GET /metrics` from a thread of its
    /// own. A binding error is returned.
    pub fn start(listen: SocketAddr) -> anyhow::Result<MetricsServer> {
        let listener = std::net::TcpListener::bind(listen).with_context(|| format!("binding the metrics endpoint to {listen}"))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the metrics endpoint's runtime")?;
        let (shutdown, mut stop) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => return tracing::error!("metrics endpoint: {e}"),
                    };
                    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
                    loop {
                        // A scraper or two; a crowd waits its turn.
                        let permit = tokio::select! {
                            _ = stop.wait_for(|stop| *stop) => return,
                            permit = Arc::clone(&permits).acquire_owned() => permit,
                        };
                        let Ok(permit) = permit else { return };
                        tokio::select! {
                            _ = stop.wait_for(|stop| *stop) => return,
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => {
                                    tokio::spawn(async move {
                                        let _permit = permit;
                                        let mut builder = http1::Builder::new();
                                        builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
                                        let _ = builder.serve_connection(TokioIo::new(stream), service_fn(answer)).await;
                                    });
                                }
                                Err(e) => {
                                    tracing::warn!("metrics endpoint: accepting a connection: {e}");
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            }
                        }
                    }
                });
            })
            .context("starting the metrics endpoint's thread")?;
        tracing::info!("metrics for Prometheus on http://{local_addr}/metrics");
        Ok(MetricsServer { local_addr, shutdown: Some(shutdown), thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics().encode()),
        (&Method::GET | &Method::HEAD, _) => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "the figures are at /metrics\n".to_string()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "GET /metrics\n".to_string()),
    };
    let body = if request.method() == Method::HEAD { Bytes::new() } else { Bytes::from(body) };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use piwheels_common::protocols::{FailureKind, FinishedBuild};

    fn slave(id: SlaveId, event: SlaveEvent) -> StatusEvent {
        StatusEvent::Slave { slave_id: id, at: chrono::Utc::now(), event }
    }

    #[test]
    fn builders_move_between_states_and_builds_count_by_abi_and_outcome() {
        let metrics = Metrics::new();
        let hello = piwheels_testsupport::data::slave_hello("pi");
        let abi = hello.abi.clone();
        metrics.observe(&slave(1, SlaveEvent::Hello(hello.clone())));
        metrics.observe(&slave(2, SlaveEvent::Hello(hello)));
        metrics.observe(&slave(1, SlaveEvent::Replied(SlaveReply::Sleep { paused: false })));
        metrics.observe(&slave(1, SlaveEvent::Replied(SlaveReply::Cont)));
        let state = |state| metrics.builders.get_or_create(&BuilderLabels { abi: abi.clone(), state }).get();
        assert_eq!((state("starting"), state("idle")), (1, 1));
        let finished = FinishedBuild { package: "foo".into(), version: "1.0".into(), failure: Some(FailureKind::Timeout), duration: Duration::from_secs(1), build_id: 3 };
        metrics.observe(&slave(1, SlaveEvent::Finished(finished)));
        metrics.observe(&slave(1, SlaveEvent::Gone { reason: "bye".into() }));
        assert_eq!((state("starting"), state("idle")), (1, 0));
        assert_eq!(metrics.builds.get_or_create(&BuildLabels { abi: abi.clone(), outcome: "timeout".into() }).get(), 1);
        // A restarted slave driver forgets its slaves without a word: they count no more.
        metrics.observe(&StatusEvent::Task { name: "slave_driver".into(), at: chrono::Utc::now(), state: TaskState::Restarting });
        assert_eq!(state("starting"), 0);
        assert_eq!(metrics.task_restarts.get_or_create(&TaskLabel { task: "slave_driver".into() }).get(), 1);
        // A task's counter exists from its first event, at 0.
        metrics.observe(&StatusEvent::Task { name: "seraph".into(), at: chrono::Utc::now(), state: TaskState::Running });
        assert!(metrics.encode().contains("piwheels_task_restarts_total{task=\"seraph\"} 0"));
        let text = metrics.encode();
        assert!(text.contains("# TYPE piwheels_builds counter") && text.contains("piwheels_builds_total{abi=\"cp311\",outcome=\"timeout\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    fn ask(server: &MetricsServer, request: &str) -> (String, String) {
        piwheels_testsupport::http_exchange(server.local_addr(), request)
    }

    #[test]
    fn the_endpoint_answers_get_metrics_only() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap()).expect("start");
        let (head, body) = ask(&server, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200") && head.contains("application/openmetrics-text"), "{head}");
        assert!(body.contains("# TYPE piwheels_files gauge") && body.ends_with("# EOF\n"), "{body}");
        let (head, _) = ask(&server, "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        let (head, _) = ask(&server, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    }
}
