//! Lumberjack, the log ingester, with the oracle pool and a real database, and piw-logger
//! against it: batches stored and counted, senders that misbehave (no hello, another
//! version, invalid records, too many records, garbage, oversized messages, floods), a
//! database that does not answer, and the acceptance run: 10,000 lines, hostile ones among
//! them, whose valid records are all in the database afterwards while the ingester runs on.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use piwheels_common::protocols::{AccessRecord, ClientInfo, LogReply, LogRequest, TaskControl, Timestamp, Versions, WireError};
use piwheels_master::calls::tasks::StatsUpdate;
use piwheels_common::task::{self, TaskExit, TaskHandle};
use piwheels_common::transport::{Client, Receiver};
use piwheels_master::access_log::logger::{SendError, Shipper};
use piwheels_master::access_log::{Problem, limits};
use piwheels_master::lumberjack::{self, Lumberjack, MAX_BATCH, MAX_MESSAGE};
use support::{Pool, eventually};
use piwheels_common::transport::Security;
use piwheels_master::gatekeeper::Auth;
use piwheels_master::wiring;

/// The ingester on an ipc socket in a private directory, over a pool of `oracles`, with the
/// stats task's socket bound here to see what it is told.
struct Ingester {
    handle: TaskHandle,
    endpoint: String,
    stats: Receiver<StatsUpdate>,
    pool: Pool,
    _dir: tempfile::TempDir,
}

impl Ingester {
    /// An ingester with one oracle that waits up to 10 s for the database.
    fn new() -> Ingester {
        Ingester::start(1, Duration::from_secs(10))
    }

    fn start(oracles: usize, db_timeout: Duration) -> Ingester {
        let pool = Pool::start(oracles);
        let dir = tempfile::tempdir().unwrap();
        // The socket goes in a directory the transport makes private (mode 700).
        let endpoint = format!("ipc://{}/run/logger", dir.path().display());
        let stats = Receiver::<StatsUpdate>::pull(&pool.rt.zmq, wiring::STATS.address(), None).unwrap();
        let bind = endpoint.clone();
        let handle = task::spawn(
            &pool.rt,
            "lumberjack",
            move |ctx| lumberjack::Sockets::open(ctx, &bind, db_timeout, &Auth::disabled()),
            |_| Ok(Lumberjack::new()),
        )
        .unwrap();
        let mut ingester = Ingester { handle, endpoint, stats, pool, _dir: dir };
        eventually("the logger socket", Duration::from_secs(10), || {
            ingester.handle.is_finished() || std::path::Path::new(&ingester.endpoint["ipc://".len()..]).exists()
        });
        if ingester.handle.is_finished() {
            panic!("the ingester did not start: {:?}", ingester.handle.join(Duration::ZERO));
        }
        ingester
    }

    fn shipper(&self) -> Shipper {
        Shipper::connect(&self.pool.rt.zmq, &self.endpoint, &Security::Plain, Duration::from_secs(5), Duration::from_secs(20)).unwrap()
    }

    /// A bare client that has not said hello.
    fn client(&self) -> Client<LogRequest, LogReply> {
        Client::connect(&self.pool.rt.zmq, &self.endpoint, Some(MAX_MESSAGE)).unwrap()
    }

    fn count(&self, table: &str) -> u64 {
        self.pool.db.column(&format!("SELECT count(*)::text FROM {table}"))[0].as_deref().unwrap().parse().unwrap()
    }

    fn value(&self, sql: &str) -> Option<String> {
        self.pool.db.column(sql).into_iter().next().flatten()
    }

    /// Downloads the stats task has been told of, waiting until they add up to `expected`.
    fn downloads_reported(&self, expected: u64) -> u64 {
        let mut total = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while total < expected && Instant::now() < deadline {
            if let Some(StatsUpdate::Downloads { count }) = self.stats.recv_timeout(Duration::from_millis(100)).unwrap() {
                total += count;
            }
        }
        // Nothing more: the ingester hands its figures on (inproc) before it answers a batch,
        // so whatever else it sent for the batches answered so far is here already.
        while let Some(update) = self.stats.recv_timeout(Duration::ZERO).unwrap() {
            if let StatsUpdate::Downloads { count } = update {
                total += count;
            }
        }
        total
    }

    /// The ingester still runs, never failed a handler and never restarted.
    fn assert_healthy(&self) {
        assert!(!self.handle.is_finished(), "the ingester stopped");
        assert!(self.pool.all_running(), "a database task stopped");
        assert_eq!((self.handle.errors(), self.handle.restarts()), (0, 0));
    }

    /// Checks the ingester stayed healthy, then stops it.
    fn finish(self) {
        self.assert_healthy();
        self.stop();
    }

    fn stop(mut self) {
        self.handle.control(TaskControl::Quit).unwrap();
        assert_eq!(self.handle.join(Duration::from_secs(10)), Some(TaskExit::Quit));
    }
}

fn recent() -> Timestamp {
    Utc::now() - TimeDelta::minutes(5)
}

fn download(filename: &str, host: &str) -> AccessRecord {
    AccessRecord::Download {
        filename: filename.into(),
        host: host.into(),
        at: recent(),
        client: ClientInfo { arch: Some("armv7l".into()), installer_name: Some("pip".into()), ..ClientInfo::default() },
    }
}

fn search(package: &str) -> AccessRecord {
    AccessRecord::Search { package: package.into(), host: "192.0.2.5".into(), at: recent(), client: ClientInfo::default() }
}

fn page(page: &str, host: &str) -> AccessRecord {
    AccessRecord::Page { page: page.into(), host: host.into(), at: recent(), user_agent: "mozilla".into() }
}

const WHEEL: &str = "gpiozero-2.0.1-py3-none-any.whl";

#[test]
fn a_batch_is_stored_and_its_downloads_counted() {
    let ingester = Ingester::start(2, Duration::from_secs(10));
    let shipper = ingester.shipper();
    let at = recent();
    let records = vec![
        download(WHEEL, "192.0.2.1"),
        download("numpy-2.1.3-cp311-cp311-linux_armv7l.whl", "2001:db8::1"),
        search("gpiozero"),
        AccessRecord::ProjectPage { package: "gpiozero".into(), host: "192.0.2.2".into(), at, user_agent: "mozilla".into() },
        AccessRecord::ProjectJson { package: "gpiozero".into(), host: "192.0.2.3".into(), at, user_agent: "curl".into() },
        page("home", "192.0.2.4"),
    ];
    assert_eq!(shipper.send(records).unwrap(), (6, 0));
    assert_eq!(
        [ingester.count("downloads"), ingester.count("searches"), ingester.count("project_page_hits")],
        [2, 1, 1]
    );
    assert_eq!([ingester.count("project_json_downloads"), ingester.count("web_page_hits")], [1, 1]);
    assert_eq!(
        ingester.value(&format!("SELECT accessed_by::text || ' ' || arch || ' ' || installer_name FROM downloads WHERE filename = '{WHEEL}'")),
        Some("192.0.2.1/32 armv7l pip".into())
    );
    assert_eq!(ingester.downloads_reported(2), 2);
    ingester.finish();
}

#[test]
fn records_before_hello_are_refused_and_not_stored() {
    let ingester = Ingester::new();
    let client = ingester.client();
    let reply = client.request(&LogRequest::Records { records: vec![page("home", "192.0.2.1")] }, Duration::from_secs(5)).unwrap();
    assert!(matches!(reply, LogReply::Error(WireError { message: ref reason, .. }) if reason.contains("Hello")), "{reply:?}");
    assert_eq!(ingester.count("web_page_hits"), 0);
    ingester.finish();
}

#[test]
fn a_logger_of_another_version_is_refused_with_both_versions_named() {
    let ingester = Ingester::new();
    let client = ingester.client();
    let versions = Versions { protocol: 999, software: "9.9.9".into() };
    let reply = client.request(&LogRequest::Hello { versions }, Duration::from_secs(5)).unwrap();
    let LogReply::Error(WireError { message: reason, .. }) = reply else { panic!("{reply:?}") };
    assert!(reason.contains("999") && reason.contains(&Versions::current().protocol.to_string()), "{reason}");
    // And it is still not welcome.
    let reply = client.request(&LogRequest::Records { records: vec![page("home", "192.0.2.1")] }, Duration::from_secs(5)).unwrap();
    assert!(matches!(reply, LogReply::Error(_)));
    ingester.stop();
}

#[test]
fn invalid_records_are_rejected_and_the_rest_stored_cut_to_their_columns() {
    let ingester = Ingester::new();
    let shipper = ingester.shipper();
    let long = |n: usize| "y".repeat(n);
    let mut client = ClientInfo::default();
    for field in [
        &mut client.arch,
        &mut client.distro_name,
        &mut client.distro_version,
        &mut client.os_name,
        &mut client.os_version,
        &mut client.py_name,
        &mut client.py_version,
        &mut client.installer_name,
        &mut client.installer_version,
        &mut client.setuptools_version,
    ] {
        *field = Some(format!("\u{1}{}", long(5000)));
    }
    let longest_name = "A".repeat(limits::PACKAGE);
    let records = vec![
        // Stored: cut, cleaned, made canonical.
        AccessRecord::Search { package: longest_name.clone(), host: "192.0.2.1".into(), at: recent(), client },
        AccessRecord::ProjectPage { package: "RPi.GPIO".into(), host: "::ffff:192.0.2.9".into(), at: recent(), user_agent: long(10_000) },
        page(&"p".repeat(limits::PAGE), "192.0.2.1"),
        // Rejected.
        download("../../../etc/passwd", "192.0.2.1"),
        download(WHEEL, "www.example.org"),
        AccessRecord::Page { page: "home".into(), host: "192.0.2.1".into(), at: "1990-01-01T00:00:00Z".parse().unwrap(), user_agent: String::new() },
        AccessRecord::Page { page: "home".into(), host: "192.0.2.1".into(), at: Utc::now() + TimeDelta::days(3), user_agent: String::new() },
        search("not a name"),
        page(&"p".repeat(limits::PAGE + 1), "192.0.2.1"),
        page("../index", "192.0.2.1"),
    ];
    assert_eq!(shipper.send(records).unwrap(), (3, 7));
    let lengths = ingester.value(
        "SELECT concat_ws(' ', length(package), length(arch), length(distro_name), length(os_version), length(py_version), \
         length(installer_name), length(installer_version), length(setuptools_version)) FROM searches",
    );
    assert_eq!(lengths, Some(format!("{} 100 100 100 100 20 100 100", limits::PACKAGE)));
    assert_eq!(ingester.value("SELECT position(chr(1) in arch)::text FROM searches"), Some("0".into()));
    assert_eq!(ingester.value("SELECT package FROM searches"), Some("a".repeat(limits::PACKAGE)));
    assert_eq!(ingester.value("SELECT package || ' ' || length(user_agent) FROM project_page_hits"), Some("rpi-gpio 200".into()));
    assert_eq!(ingester.value("SELECT length(page)::text FROM web_page_hits"), Some(limits::PAGE.to_string()));
    assert_eq!(ingester.count("downloads"), 0);
    assert_eq!(ingester.downloads_reported(0), 0);
    ingester.finish();
}

#[test]
fn records_beyond_the_batch_limit_are_rejected() {
    let ingester = Ingester::new();
    let client = ingester.client();
    assert_eq!(client.request(&LogRequest::Hello { versions: Versions::current() }, Duration::from_secs(5)).unwrap(), LogReply::Welcome);
    let records: Vec<AccessRecord> = (0..MAX_BATCH + 500).map(|_| page("home", "192.0.2.1")).collect();
    let reply = client.request(&LogRequest::Records { records }, Duration::from_secs(20)).unwrap();
    assert_eq!(reply, LogReply::Accepted { stored: MAX_BATCH as u64, rejected: 500 });
    assert_eq!(ingester.count("web_page_hits"), MAX_BATCH as u64);
    ingester.finish();
}

#[test]
fn a_batch_too_large_for_one_message_is_split_by_the_logger() {
    let ingester = Ingester::new();
    let shipper = ingester.shipper();
    // About 4.5 KiB a record: 900 of them need four messages.
    let agent = "é".repeat(limits::USER_AGENT);
    let records: Vec<AccessRecord> = (0..900)
        .map(|n| AccessRecord::ProjectJson { package: format!("p{n}"), host: "192.0.2.1".into(), at: recent(), user_agent: agent.repeat(10) })
        .collect();
    let size = piwheels_common::codec::encode(&LogRequest::Records { records: records.clone() }).unwrap().len();
    assert!(size > MAX_MESSAGE, "{size}");
    assert_eq!(shipper.send(records).unwrap(), (900, 0));
    assert_eq!(ingester.count("project_json_downloads"), 900);
    ingester.stop();
}

/// Sends raw frames from a socket of another process's making (its own context).
fn raw_dealer(endpoint: &str) -> (zmq::Context, zmq::Socket) {
    let ctx = zmq::Context::new();
    let socket = ctx.socket(zmq::DEALER).unwrap();
    socket.set_linger(0).unwrap();
    socket.set_sndtimeo(2000).unwrap();
    socket.connect(endpoint).unwrap();
    (ctx, socket)
}

#[test]
fn garbage_oversized_messages_and_floods_do_not_stop_the_ingester() {
    let ingester = Ingester::new();
    let (_ctx, raw) = raw_dealer(&ingester.endpoint);
    // Undecodable payloads behind a proper envelope are answered.
    for payload in [&b""[..], b"\xc1", b"\x92\xaaLogRequest\xa4Nope", b"\x92\xabTaskControl\xa4Quit", &[0x92, 0xaa][..]] {
        raw.send_multipart([&b""[..], payload], 0).unwrap();
        assert!(raw.poll(zmq::POLLIN, 5000).unwrap() > 0, "no answer to {payload:?}");
        let frames = raw.recv_multipart(0).unwrap();
        let reply: LogReply = piwheels_common::codec::decode(&frames[1]).unwrap();
        assert!(matches!(reply, LogReply::Error(_)), "{reply:?}");
    }
    // Messages without an envelope cannot be answered, only dropped.
    raw.send(&b"no delimiter"[..], 0).unwrap();
    raw.send_multipart([&b"x"[..], b"y", b"z"], 0).unwrap();
    // A message over the limit makes libzmq drop the connection.
    raw.send_multipart([&b""[..], &vec![0x90; MAX_MESSAGE + 1]], 0).unwrap();
    // A flood from a sender that never reads its answers.
    let (_flood_ctx, flood) = raw_dealer(&ingester.endpoint);
    flood.set_sndtimeo(0).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(2) {
        if flood.send_multipart([&b""[..], b"\x92\xaaLogRequest\xc0"], zmq::DONTWAIT).is_ok() {
            sent += 1;
        }
    }
    assert!(sent > 100, "the flood sent {sent} messages");
    // A well-behaved logger is still served (within its own deadline, or send fails).
    let shipper = ingester.shipper();
    assert_eq!(shipper.send(vec![page("home", "192.0.2.1")]).unwrap(), (1, 0));
    ingester.finish();
}

#[test]
fn a_database_that_does_not_answer_gets_the_batch_refused_not_left_waiting() {
    // No oracles: every database request times out.
    let ingester = Ingester::start(0, Duration::from_millis(300));
    let shipper = ingester.shipper();
    let result = shipper.send(vec![page("home", "192.0.2.1")]);
    // The database's failure is the master's, not the batch's; and it is an answer: a batch
    // left unanswered would end in the shipper's own timeout instead.
    assert!(matches!(result, Err(SendError::Failed(ref reason)) if reason.contains("not stored")), "{result:?}");
    assert!(!ingester.handle.is_finished());
    ingester.stop();
}

#[test]
fn records_are_stored_while_the_master_is_paused() {
    let ingester = Ingester::new();
    ingester.handle.control(TaskControl::Pause).unwrap();
    let shipper = ingester.shipper();
    assert_eq!(shipper.send(vec![search("gpiozero")]).unwrap(), (1, 0));
    assert_eq!(ingester.count("searches"), 1);
    ingester.stop();
}

#[test]
fn piw_logger_says_so_when_no_master_answers() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_piw-logger"))
        .args(["-c", "/dev/null", "--logger-queue"])
        .arg(format!("ipc://{}/nobody-home", dir.path().display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("did not answer") && stderr.contains("is piw-master running"), "{stderr}");
}

#[test]
fn a_restarted_ingester_is_greeted_again_and_takes_the_batch() {
    let mut ingester = Ingester::new();
    let shipper = ingester.shipper();
    assert_eq!(shipper.send(vec![page("home", "192.0.2.1")]).unwrap(), (1, 0));
    ingester.handle.control(TaskControl::Quit).unwrap();
    assert_eq!(ingester.handle.join(Duration::from_secs(10)), Some(TaskExit::Quit));
    // libzmq closes the old socket's listener after the task has ended; until then a new bind
    // would find it still listening and refuse the path.
    let socket_file = std::path::PathBuf::from(&ingester.endpoint["ipc://".len()..]);
    eventually("the old socket to stop listening", Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&socket_file).is_err()
    });
    let bind = ingester.endpoint.clone();
    ingester.handle = task::spawn(
        &ingester.pool.rt,
        "lumberjack_again",
        move |ctx| lumberjack::Sockets::open(ctx, &bind, Duration::from_secs(10), &Auth::disabled()),
        |_| Ok(Lumberjack::new()),
    )
    .unwrap();
    // Once the new ingester answers a new logger (its socket is bound and it serves)...
    eventually("the new ingester to answer", Duration::from_secs(20), || {
        Shipper::connect(&ingester.pool.rt.zmq, &ingester.endpoint, &Security::Plain, Duration::from_secs(1), Duration::from_secs(1)).is_ok()
    });
    // ...it does not know the old logger's connection: that logger says hello again.
    assert_eq!(shipper.send(vec![page("home", "192.0.2.2")]).unwrap(), (1, 0));
    assert_eq!(ingester.count("web_page_hits"), 2);
    ingester.stop();
}

#[test]
fn piw_logger_on_a_pipe_sends_within_the_flush_interval_and_stops_when_the_master_goes() {
    let mut ingester = Ingester::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_piw-logger"))
        .args(["-c", "/dev/null", "--flush-interval", "200ms", "--timeout", "1s", "--logger-queue", &ingester.endpoint])
        .env_remove("PIW_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let time = Utc::now().format("%d/%b/%Y:%H:%M:%S +0000");
    let line = format!("192.0.2.1 - - [{time}] \"GET / HTTP/1.1\" 200 5 \"-\" \"curl/8.0\"\n");
    stdin.write_all(line.as_bytes()).unwrap();
    stdin.flush().unwrap();
    // One line is far from a full batch: it goes when it has waited the flush interval.
    eventually("the first line in the database", Duration::from_secs(5), || ingester.count("web_page_hits") == 1);

    ingester.handle.control(TaskControl::Quit).unwrap();
    assert_eq!(ingester.handle.join(Duration::from_secs(10)), Some(TaskExit::Quit));
    stdin.write_all(line.as_bytes()).unwrap();
    stdin.flush().unwrap();
    // The logger gives up on the batch after --timeout and exits, its input still open. (The
    // deadline only ends a hung test.)
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "piw-logger did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success());
    assert!(stderr.contains("stopped: the master did not answer"), "{stderr}");
    assert!(stdout.contains("records stored by the master: 1,") && stdout.contains("records not delivered: 1"), "{stdout}");
    drop(stdin);
}

// ---- acceptance: 10,000 lines ---------------------------------------------------------

const PIP_UA: &str = r#"pip/24.0 {\"ci\":null,\"cpu\":\"aarch64\",\"distro\":{\"id\":\"bookworm\",\"name\":\"Debian GNU/Linux\",\"version\":\"12\"},\"implementation\":{\"name\":\"CPython\",\"version\":\"3.11.2\"},\"installer\":{\"name\":\"pip\",\"version\":\"24.0\"},\"python\":\"3.11.2\",\"setuptools_version\":\"66.1.1\",\"system\":{\"name\":\"Linux\",\"release\":\"6.6.51+rpt-rpi-v8\"}}"#;
const UV_UA: &str = r#"uv/0.5.4 {\"installer\":{\"name\":\"uv\",\"version\":\"0.5.4\"},\"python\":\"3.12.7\",\"cpu\":\"armv7l\",\"system\":{\"name\":\"Linux\",\"release\":\"6.6.51\"}}"#;
const BROWSER: &str = "Mozilla/5.0 (X11; Linux aarch64; rv:128.0) Gecko/20100101 Firefox/128.0";

/// What the lines of the corpus should come to.
#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    downloads: u64,
    searches: u64,
    project_pages: u64,
    project_json: u64,
    pages: u64,
    other: u64,
    skipped: Vec<(Problem, u64)>,
    /// Searches under a name that is not canonical.
    canonicalised: u64,
    /// Downloads by IPv6 clients.
    ipv6: u64,
}

impl Expected {
    fn skip(&mut self, problem: Problem) {
        match self.skipped.iter_mut().find(|(p, _)| *p == problem) {
            Some((_, n)) => *n += 1,
            None => self.skipped.push((problem, 1)),
        }
    }

    fn records(&self) -> u64 {
        self.downloads + self.searches + self.project_pages + self.project_json + self.pages
    }

    fn skipped_total(&self) -> u64 {
        self.skipped.iter().map(|(_, n)| n).sum()
    }
}

/// `lines` lines of a busy index's log, a third of them hostile or broken, and what they
/// should come to.
fn corpus(lines: usize) -> (Vec<u8>, Expected) {
    let when = Utc::now() - TimeDelta::hours(2);
    let time = when.format("%d/%b/%Y:%H:%M:%S +0000").to_string();
    let future = (Utc::now() + TimeDelta::days(2)).format("%d/%b/%Y:%H:%M:%S +0000").to_string();
    let line = |host: &str, time: &str, request: &str, status: u16, agent: &str| {
        format!("{host} - - [{time}] \"{request}\" {status} 1234 \"-\" \"{agent}\"\n").into_bytes()
    };
    let mut out = Vec::new();
    let mut expected = Expected::default();
    for n in 0..lines {
        let host = format!("198.51.100.{}", n % 250 + 1);
        let wheel = format!("/simple/pkg{0}/pkg{0}-1.{1}-py3-none-any.whl", n % 37, n % 5);
        let get = |path: &str, agent: &str| line(&host, &time, &format!("GET {path} HTTP/1.1"), 200, agent);
        let bytes = match n % 27 {
            0 => {
                expected.downloads += 1;
                get(&wheel, PIP_UA)
            }
            1 => {
                expected.downloads += 1;
                get(&wheel, UV_UA)
            }
            2 => {
                expected.downloads += 1;
                get(&wheel, "Wget/1.21.3")
            }
            3 => {
                expected.searches += 1;
                expected.canonicalised += 1;
                get(&format!("/simple/Pkg_{}/", n % 37), PIP_UA)
            }
            4 => {
                expected.searches += 1;
                get(&format!("/simple/pkg{}/index.html", n % 37), UV_UA)
            }
            5 => {
                expected.project_pages += 1;
                get(&format!("/project/pkg{}/", n % 37), BROWSER)
            }
            6 => {
                expected.project_json += 1;
                get(&format!("/project/pkg{}/json/", n % 37), "python-requests/2.32.3")
            }
            7 => {
                expected.pages += 1;
                get("/", "Mythic HTTP Monitor Check")
            }
            8 => {
                expected.pages += 1;
                get("/faq.html", BROWSER)
            }
            9 => {
                expected.other += 1;
                line(&host, &time, &format!("GET {wheel} HTTP/1.1"), 404, PIP_UA)
            }
            10 => {
                expected.other += 1;
                line(&host, &time, &format!("HEAD {wheel} HTTP/1.1"), 200, PIP_UA)
            }
            11 => {
                expected.other += 1;
                get("/styles/piwheels.css", BROWSER)
            }
            12 => {
                expected.other += 1;
                get(&format!("{wheel}.metadata"), PIP_UA)
            }
            13 => {
                expected.other += 1;
                line(&host, &time, &format!("GET {wheel} HTTP/1.1"), 206, PIP_UA)
            }
            14 => {
                expected.skip(Problem::Malformed);
                b"\x16\x03\x01\x02\x00 this is not a log line\n".iter().map(|&b| if b < 0x20 && b != b'\n' { b'?' } else { b }).collect()
            }
            15 => {
                expected.skip(Problem::BadTime);
                line(&host, "31/Feb/2025:99:00:00 +0000", "GET / HTTP/1.1", 200, BROWSER)
            }
            16 => {
                expected.skip(Problem::BadHost);
                line("crawler.example.net", &time, "GET / HTTP/1.1", 200, BROWSER)
            }
            17 => {
                expected.skip(Problem::BadPath);
                get("/simple/pkg1/../../../../etc/shadow", PIP_UA)
            }
            18 => {
                expected.skip(Problem::ControlCharacter);
                get("/", "Bot\u{1b}[2J/1.0")
            }
            19 => {
                expected.skip(Problem::NotUtf8);
                let mut bytes = get("/", BROWSER);
                bytes.splice(0..0, [0xff, 0xfe, 0xfd]);
                bytes
            }
            20 => {
                expected.skip(Problem::TooLong);
                // Mostly just over the limit; some of a megabyte.
                let size = if n % 50 == 20 { 1 << 20 } else { 40 << 10 };
                get(&wheel, &format!("pip/24.0 {{\\\"cpu\\\":\\\"{}\\\"}}", "A".repeat(size)))
            }
            21 => {
                // Oversized fields within the line limit: stored, cut to their columns.
                expected.downloads += 1;
                get(&wheel, &format!("pip/24.0 {{\\\"cpu\\\":\\\"{}\\\",\\\"installer\\\":{{\\\"name\\\":\\\"{}\\\"}}}}", "C".repeat(10_000), "I".repeat(500)))
            }
            22 => {
                expected.skip(Problem::BadName);
                get("/simple/-bad-name-/", PIP_UA)
            }
            23 => {
                expected.downloads += 1;
                expected.ipv6 += 1;
                line(&format!("2001:db8::{:x}", n), &time, &format!("GET {wheel} HTTP/1.1"), 200, PIP_UA)
            }
            24 => {
                expected.skip(Problem::BadTime);
                line(&host, &future, "GET / HTTP/1.1", 200, BROWSER)
            }
            25 => {
                // JSON nested past any sane depth: the installer still names itself.
                expected.downloads += 1;
                get(&wheel, &format!("pip/24.0 {}{}", "{\\\"a\\\":[".repeat(2000), "]}".repeat(2000)))
            }
            _ => {
                expected.skip(Problem::Malformed);
                b"\n".to_vec()
            }
        };
        out.extend(bytes);
    }
    (out, expected)
}

/// Runs piw-logger on `log` against the ingester at `endpoint`; its exit status, output and
/// error output.
fn piw_logger(endpoint: &str, log: &[u8], args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_piw-logger"))
        .args(["-c", "/dev/null", "--logger-queue", endpoint])
        .args(args)
        .env_remove("PIW_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let log = log.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&log));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn ten_thousand_lines_with_hostile_ones_store_exactly_the_valid_records_and_the_ingester_runs_on() {
    let ingester = Ingester::start(2, Duration::from_secs(10));
    let (log, expected) = corpus(10_000);
    assert_eq!(expected.records() + expected.other + expected.skipped_total(), 10_000);
    assert!(expected.skipped_total() > 3000, "{expected:?}");

    // A hostile neighbour floods the same socket while the logger works.
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (endpoint, stop) = (ingester.endpoint.clone(), stop.clone());
        std::thread::spawn(move || {
            let (_ctx, raw) = raw_dealer(&endpoint);
            raw.set_sndtimeo(0).unwrap();
            let big = vec![0xc1; MAX_MESSAGE * 2];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let payload: &[u8] = if n.is_multiple_of(1000) { &big } else { b"\x92\xaaLogRequest\x81\xa7Records\x91\xc0" };
                let _ = raw.send_multipart([&b""[..], payload], zmq::DONTWAIT);
                n += 1;
                if n.is_multiple_of(100) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            n
        })
    };
    let (ok, summary, stderr) = piw_logger(&ingester.endpoint, &log, &["--batch-size", "400"]);
    stop.store(true, Ordering::Relaxed);
    let flood = flooder.join().unwrap();
    assert!(ok, "piw-logger failed: {stderr}\n{summary}");
    println!("piw-logger's summary, while {flood} hostile messages arrived beside its batches:\n{summary}");
    assert!(flood > 100, "the flood sent {flood} messages");

    // The database holds exactly the valid records.
    let stored = [
        ingester.count("downloads"),
        ingester.count("searches"),
        ingester.count("project_page_hits"),
        ingester.count("project_json_downloads"),
        ingester.count("web_page_hits"),
    ];
    assert_eq!(stored, [expected.downloads, expected.searches, expected.project_pages, expected.project_json, expected.pages]);
    assert_eq!(ingester.count("searches WHERE package ~ '[A-Z_]'"), 0, "names are canonical");
    assert_eq!(ingester.count("searches WHERE package LIKE 'pkg-%'"), expected.canonicalised);
    assert_eq!(ingester.value("SELECT max(length(arch))::text FROM downloads"), Some(limits::CLIENT_FIELD.to_string()));
    assert_eq!(ingester.value("SELECT max(length(installer_name))::text FROM downloads"), Some(limits::INSTALLER_NAME.to_string()));
    assert_eq!(ingester.count("downloads WHERE family(accessed_by) = 6"), expected.ipv6);
    assert_eq!(ingester.downloads_reported(expected.downloads), expected.downloads);

    // The summary says the same.
    assert!(summary.contains("lines read: 10000 from 1 input(s)"), "{summary}");
    let records = expected.records();
    assert!(summary.contains(&format!("records sent: {records} (")), "{summary}");
    assert!(summary.contains(&format!("records stored by the master: {records}, rejected by it: 0")), "{summary}");
    assert!(summary.contains(&format!("other requests (not recorded): {}", expected.other)), "{summary}");
    assert!(summary.contains(&format!("lines skipped: {}", expected.skipped_total())), "{summary}");
    for (problem, n) in &expected.skipped {
        assert!(summary.contains(&format!("  {n}: {problem}\n")), "{problem}: {summary}");
    }

    // The ingester runs on and still serves.
    ingester.assert_healthy();
    let shipper = ingester.shipper();
    assert_eq!(shipper.send(vec![page("home", "192.0.2.1")]).unwrap(), (1, 0));
    ingester.stop();
}
