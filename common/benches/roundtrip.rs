//! Bus round trips: how many request/reply round trips per second a REQ client and a ROUTER
//! server manage over inproc, ipc and tcp (127.0.0.1), with raw 1 KiB frames and with the typed
//! `Client`/`Server` wrappers carrying messages of the same size, plus the cost of encoding and
//! decoding those messages alone.
//!
//! Run with `cargo bench -p piwheels-common --bench roundtrip`. Environment:
//! `ROUNDTRIP_SECS` (default 2): measured seconds per variant and transport;
//! `ROUNDTRIP_ROUNDS` (default 4): the measured time is split into this many alternating raw and
//! typed slices, so that a noisy moment on the machine hits both variants alike;
//! `ROUNDTRIP_CODEC_ITERS` (default 200000): iterations of each codec measurement.
//!
//! Both variants use the same sockets and the same calls to libzmq: a REQ socket (relaxed and
//! correlated, as `Client` sets it) that sends without blocking, polls for the reply and receives
//! it; a ROUTER on its own thread (router-mandatory, as `Server` sets it) that polls, receives
//! the request with its envelope and sends a reply behind the same envelope. The raw variant
//! sends prepared frames of exactly the encoded size of the typed messages, so the only
//! difference is the typed layer: encoding, decoding and its checks.

use std::hint::black_box;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use piwheels_common::codec;
use piwheels_common::protocols::Message;
use piwheels_common::transport::{Client, DEFAULT_MAX_MESSAGE, Server};
use serde::{Deserialize, Serialize};

/// Payload bytes carried by each request and each reply.
const PAYLOAD: usize = 1024;

/// How often an idle server looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Deadline of a single round trip; only reached if something is broken.
const DEADLINE: Duration = Duration::from_secs(5);

const WARM_UP: Duration = Duration::from_millis(250);

/// A request shaped like the master's audit call: three strings, one of them the payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum BenchRequest {
    Audit { actor: String, action: String, detail: String },
}

/// A reply carrying an optional text, like a database text answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum BenchReply {
    Text(Option<String>),
}

piwheels_common::messages!(BenchRequest, BenchReply);

fn request() -> BenchRequest {
    BenchRequest::Audit { actor: "bench".into(), action: "roundtrip".into(), detail: "d".repeat(PAYLOAD) }
}

fn reply() -> BenchReply {
    BenchReply::Text(Some("r".repeat(PAYLOAD)))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value.parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a valid number")),
        Err(_) => default,
    }
}

fn tcp_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let port = listener.local_addr().expect("local address").port();
    drop(listener);
    format!("tcp://127.0.0.1:{port}")
}

/// Something that performs one round trip per call.
trait RoundTrip {
    fn once(&mut self);
}

/// A server thread that runs until told to stop.
struct ServerThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Starts `serve` on a thread and waits until it has bound its socket.
    fn start(serve: impl FnOnce(&AtomicBool, mpsc::Sender<()>) + Send + 'static) -> ServerThread {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = mpsc::channel();
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || serve(&flag, ready_tx));
        ready.recv_timeout(DEADLINE).expect("server did not start");
        ServerThread { stop, handle: Some(handle) }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.join().expect("server thread panicked");
        }
    }
}

// ------------------------------------------------------------------------------------------
// Raw bytes
// ------------------------------------------------------------------------------------------

struct RawClient {
    socket: zmq::Socket,
    request: Vec<u8>,
    reply_len: usize,
    _server: ServerThread,
}

impl RawClient {
    fn new(ctx: &zmq::Context, endpoint: &str, request_len: usize, reply_len: usize) -> RawClient {
        let server = {
            let (ctx, endpoint) = (ctx.clone(), endpoint.to_string());
            ServerThread::start(move |stop, ready| raw_echo(&ctx, &endpoint, reply_len, stop, ready))
        };
        let socket = ctx.socket(zmq::REQ).expect("REQ");
        socket.set_linger(0).expect("linger");
        socket.set_req_relaxed(true).expect("relaxed");
        socket.set_req_correlate(true).expect("correlate");
        socket.set_maxmsgsize(DEFAULT_MAX_MESSAGE as i64).expect("maxmsgsize");
        socket.connect(endpoint).expect("connect REQ");
        RawClient { socket, request: vec![b'd'; request_len], reply_len, _server: server }
    }
}

impl RoundTrip for RawClient {
    fn once(&mut self) {
        self.socket.send_multipart([self.request.as_slice()], zmq::DONTWAIT).expect("send request");
        assert!(self.socket.poll(zmq::POLLIN, DEADLINE.as_millis() as i64).expect("poll") > 0, "no reply");
        let frames = self.socket.recv_multipart(0).expect("receive reply");
        assert!(frames.len() == 1 && frames[0].len() == self.reply_len, "unexpected reply");
        black_box(frames);
    }
}

/// A ROUTER answering every request with `reply_len` bytes behind the request's envelope.
fn raw_echo(ctx: &zmq::Context, endpoint: &str, reply_len: usize, stop: &AtomicBool, ready: mpsc::Sender<()>) {
    let socket = ctx.socket(zmq::ROUTER).expect("ROUTER");
    socket.set_linger(0).expect("linger");
    socket.set_router_mandatory(true).expect("mandatory");
    socket.set_maxmsgsize(DEFAULT_MAX_MESSAGE as i64).expect("maxmsgsize");
    socket.bind(endpoint).expect("bind ROUTER");
    ready.send(()).expect("report readiness");
    let reply = vec![b'r'; reply_len];
    while !stop.load(Ordering::Relaxed) {
        if socket.poll(zmq::POLLIN, POLL.as_millis() as i64).expect("poll") == 0 {
            continue;
        }
        // [identity, request id, "", request] → [identity, request id, "", reply]
        let mut frames = socket.recv_multipart(0).expect("receive request");
        let request = frames.pop().expect("a request frame");
        black_box(request);
        let mut out: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        out.push(&reply);
        socket.send_multipart(out, zmq::DONTWAIT).expect("send reply");
    }
}

// ------------------------------------------------------------------------------------------
// Typed messages
// ------------------------------------------------------------------------------------------

struct TypedClient {
    client: Client<BenchRequest, BenchReply>,
    request: BenchRequest,
    _server: ServerThread,
}

impl TypedClient {
    fn new(ctx: &zmq::Context, endpoint: &str) -> TypedClient {
        let server = {
            let (ctx, endpoint) = (ctx.clone(), endpoint.to_string());
            ServerThread::start(move |stop, ready| typed_server(&ctx, &endpoint, stop, ready))
        };
        let client = Client::connect(ctx, endpoint, Some(DEFAULT_MAX_MESSAGE)).expect("connect Client");
        TypedClient { client, request: request(), _server: server }
    }
}

impl RoundTrip for TypedClient {
    fn once(&mut self) {
        let reply = self.client.request(&self.request, DEADLINE).expect("request");
        assert!(matches!(&reply, BenchReply::Text(Some(text)) if text.len() == PAYLOAD), "unexpected reply");
        black_box(reply);
    }
}

fn typed_server(ctx: &zmq::Context, endpoint: &str, stop: &AtomicBool, ready: mpsc::Sender<()>) {
    let server = Server::<BenchRequest, BenchReply>::bind(ctx, endpoint, Some(DEFAULT_MAX_MESSAGE)).expect("bind Server");
    ready.send(()).expect("report readiness");
    let reply = reply();
    while !stop.load(Ordering::Relaxed) {
        if !server.readable(Some(POLL)).expect("poll") {
            continue;
        }
        let (peer, request) = server.recv().expect("receive request");
        black_box(request.expect("a well-formed request"));
        server.send(&peer, &reply).expect("send reply");
    }
}

// ------------------------------------------------------------------------------------------
// Measurement
// ------------------------------------------------------------------------------------------

/// Round trips completed in `duration`, and the time they actually took.
fn run_for(client: &mut dyn RoundTrip, duration: Duration) -> (u64, Duration) {
    let start = Instant::now();
    let mut count = 0;
    loop {
        client.once();
        count += 1;
        let elapsed = start.elapsed();
        if elapsed >= duration {
            return (count, elapsed);
        }
    }
}

/// Round trips per second, and CPU time per round trip of the whole process (client, server
/// and libzmq's I/O thread): what two hops between threads cost, beyond waiting.
struct Rates {
    raw: f64,
    typed: f64,
    raw_cpu: Duration,
    typed_cpu: Duration,
}

/// User and system CPU time of this process so far.
fn process_cpu() -> Duration {
    let to_duration = |t: nix::sys::time::TimeVal| Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64);
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    to_duration(usage.user_time()) + to_duration(usage.system_time())
}

/// [`run_for`], with the process's CPU time over it.
fn run_for_cpu(client: &mut dyn RoundTrip, duration: Duration) -> (u64, Duration, Duration) {
    let cpu = process_cpu();
    let (count, elapsed) = run_for(client, duration);
    (count, elapsed, process_cpu() - cpu)
}

fn measure(ctx: &zmq::Context, raw_endpoint: &str, typed_endpoint: &str, sizes: (usize, usize), secs: f64, rounds: u32) -> Rates {
    let mut raw = RawClient::new(ctx, raw_endpoint, sizes.0, sizes.1);
    let mut typed = TypedClient::new(ctx, typed_endpoint);
    run_for(&mut raw, WARM_UP);
    run_for(&mut typed, WARM_UP);
    let slice = Duration::from_secs_f64(secs / f64::from(rounds));
    let (mut raw_total, mut typed_total) = ((0, Duration::ZERO, Duration::ZERO), (0, Duration::ZERO, Duration::ZERO));
    let add = |total: &mut (u64, Duration, Duration), (n, t, cpu): (u64, Duration, Duration)| {
        *total = (total.0 + n, total.1 + t, total.2 + cpu);
    };
    for _ in 0..rounds {
        add(&mut raw_total, run_for_cpu(&mut raw, slice));
        add(&mut typed_total, run_for_cpu(&mut typed, slice));
    }
    let rate = |(n, t, _): (u64, Duration, Duration)| n as f64 / t.as_secs_f64();
    let cpu = |(n, _, cpu): (u64, Duration, Duration)| cpu / n.max(1) as u32;
    Rates { raw: rate(raw_total), typed: rate(typed_total), raw_cpu: cpu(raw_total), typed_cpu: cpu(typed_total) }
}

/// Nanoseconds per call of `f`, over `iters` calls.
fn ns_per(iters: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn codec_costs<M: Message>(msg: &M, iters: u32) -> (f64, f64) {
    let frame = codec::encode(msg).expect("encode");
    let encode = ns_per(iters, || {
        black_box(codec::encode(black_box(msg)).expect("encode"));
    });
    let decode = ns_per(iters, || {
        black_box(codec::decode::<M>(black_box(&frame)).expect("decode"));
    });
    (encode, decode)
}

fn main() {
    let secs: f64 = env_or("ROUNDTRIP_SECS", 2.0);
    let rounds: u32 = env_or("ROUNDTRIP_ROUNDS", 4).max(1);
    let iters: u32 = env_or("ROUNDTRIP_CODEC_ITERS", 200_000).max(1);

    let request_len = codec::encode(&request()).expect("encode").len();
    let reply_len = codec::encode(&reply()).expect("encode").len();
    println!("Bus round trips: REQ (relaxed, correlated) → ROUTER on its own thread, one request in flight.");
    println!(
        "typed: Client<BenchRequest, BenchReply> → Server; request BenchRequest::Audit {{ detail: {PAYLOAD} chars }} = {request_len} bytes encoded, \
         reply BenchReply::Text(Some({PAYLOAD} chars)) = {reply_len} bytes encoded"
    );
    println!("raw:   zmq REQ → ROUTER with prepared frames of the same sizes ({request_len} and {reply_len} bytes)");
    println!("{secs} s measured per variant and transport, in {rounds} alternating slices, after {WARM_UP:?} of warm-up each");
    println!();

    let ctx = zmq::Context::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ipc_dir = tmp.path().join("run");
    std::fs::create_dir(&ipc_dir).expect("mkdir");
    std::fs::set_permissions(&ipc_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod 700");
    let ipc = |name: &str| format!("ipc://{}/{name}.sock", ipc_dir.display());

    let transports = [
        ("inproc", "inproc://bench-raw".to_string(), "inproc://bench-typed".to_string()),
        ("ipc", ipc("raw"), ipc("typed")),
        ("tcp", tcp_endpoint(), tcp_endpoint()),
    ];
    println!("| transport | raw rt/s | typed rt/s | overhead | raw µs/rt | typed µs/rt | raw CPU µs/rt | typed CPU µs/rt |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, raw_endpoint, typed_endpoint) in &transports {
        let rates = measure(&ctx, raw_endpoint, typed_endpoint, (request_len, reply_len), secs, rounds);
        let (raw_us, typed_us) = (1e6 / rates.raw, 1e6 / rates.typed);
        println!(
            "| {name} | {:.0} | {:.0} | {:+.1} % | {raw_us:.1} | {typed_us:.1} | {:.1} | {:.1} |",
            rates.raw,
            rates.typed,
            (typed_us / raw_us - 1.0) * 100.0,
            rates.raw_cpu.as_secs_f64() * 1e6,
            rates.typed_cpu.as_secs_f64() * 1e6
        );
    }
    println!();
    println!("overhead: extra time per round trip of typed over raw (typed µs / raw µs − 1)");
    println!("CPU µs/rt: user + system time of the whole process (client, server, libzmq's I/O thread) per round trip");
    println!();

    println!("Codec alone ({iters} iterations each, ns per message):");
    println!();
    println!("| message | encoded bytes | encode ns | decode ns |");
    println!("|---|---:|---:|---:|");
    let (req_enc, req_dec) = codec_costs(&request(), iters);
    let (rep_enc, rep_dec) = codec_costs(&reply(), iters);
    println!("| BenchRequest::Audit (1 KiB detail) | {request_len} | {req_enc:.0} | {req_dec:.0} |");
    println!("| BenchReply::Text (1 KiB) | {reply_len} | {rep_enc:.0} | {rep_dec:.0} |");
    println!();
    println!(
        "codec work per typed round trip (encode + decode of request and reply): {:.2} µs",
        (req_enc + req_dec + rep_enc + rep_dec) / 1000.0
    );
}
