//! The typed sockets of `piwheels_common::transport` over real ZeroMQ sockets (inproc, ipc and
//! tcp on 127.0.0.1): request/reply, pipelines, publish/subscribe, deadlines, malformed and
//! oversized frames, ipc permissions and replies to departed peers.
//!
//! Every test makes its own context and its own endpoints, and every wait is bounded, so a
//! failing test fails quickly instead of hanging.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use piwheels_common::codec::{self, ProtocolError};
use piwheels_common::protocols::{
    ControlReply, ControlRequest, Message, SlaveAction, SlaveTarget, TaskControl, Versions,
};
use piwheels_common::transport::{Client, DEFAULT_MAX_MESSAGE, Dealer, Peer, Receiver, Security, Sender, Server, TransportError};
use serde::{Deserialize, Serialize};

/// Upper bound for anything that should happen at once; only reached when a test fails, so
/// it is generous: a loaded machine is slow.
const WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// A tcp endpoint on a port that was free a moment ago (the wrappers need a concrete port).
fn tcp_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let port = listener.local_addr().expect("local address").port();
    drop(listener);
    format!("tcp://127.0.0.1:{port}")
}

/// A private (mode 700) directory for ipc sockets inside a fresh temporary directory.
fn private_dir(tmp: &tempfile::TempDir) -> PathBuf {
    let dir = tmp.path().join("run");
    fs::create_dir(&dir).expect("create socket directory");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod 700");
    dir
}

fn ipc_endpoint(dir: &Path, name: &str) -> String {
    format!("ipc://{}/{name}.sock", dir.display())
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// The protocol these tests speak (the transport is generic over its messages).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum TestRequest {
    PackageExists { package: String },
    Audit { actor: String, action: String, detail: String },
}

/// The replies to [`TestRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum TestReply {
    Done,
    Bool(bool),
    Text(Option<String>),
    Error { message: String },
}

piwheels_common::messages!(TestRequest, TestReply);

fn package(name: &str) -> TestRequest {
    TestRequest::PackageExists { package: name.into() }
}

fn text(s: &str) -> TestReply {
    TestReply::Text(Some(s.into()))
}

fn big_audit(detail_len: usize) -> TestRequest {
    TestRequest::Audit { actor: "test".into(), action: "oversize".into(), detail: "x".repeat(detail_len) }
}

/// Receives one request (waiting at most [`WAIT`]), insisting that it is well formed.
fn next_request<Req: Message, Rep: Message>(server: &Server<Req, Rep>) -> (Peer, Req) {
    assert!(server.readable(Some(WAIT)).expect("poll server"), "no request within {WAIT:?}");
    let (peer, req) = server.recv().expect("receive request");
    (peer, req.expect("well-formed request"))
}

/// Answers `count` requests with `answer`; returns the peers they came from.
fn answer_requests<Req: Message, Rep: Message>(
    server: &Server<Req, Rep>,
    count: usize,
    answer: impl Fn(Req) -> Rep,
) -> Vec<Peer> {
    (0..count)
        .map(|_| {
            let (peer, req) = next_request(server);
            server.send(&peer, &answer(req)).expect("send reply");
            peer
        })
        .collect()
}

/// A plain DEALER socket for sending frames the typed wrappers would never produce.
fn raw_dealer(ctx: &zmq::Context, endpoint: &str) -> zmq::Socket {
    let socket = ctx.socket(zmq::DEALER).expect("create raw dealer");
    socket.set_linger(0).expect("linger");
    socket.connect(endpoint).expect("connect raw dealer");
    socket
}

fn raw_recv(socket: &zmq::Socket) -> Vec<Vec<u8>> {
    assert!(socket.poll(zmq::POLLIN, WAIT.as_millis() as i64).expect("poll raw socket") > 0, "nothing within {WAIT:?}");
    socket.recv_multipart(0).expect("receive on raw socket")
}

// ------------------------------------------------------------------------------------------
// Request/reply
// ------------------------------------------------------------------------------------------

/// Three requests from one `Client` to one `Server`, each answered with its own payload.
fn client_and_server_exchange_requests(endpoint: &str) {
    let ctx = zmq::Context::new();
    let server = Server::<TestRequest, TestReply>::bind(&ctx, endpoint, Some(DEFAULT_MAX_MESSAGE)).expect("bind server");
    let client = Client::<TestRequest, TestReply>::connect(&ctx, endpoint, Some(DEFAULT_MAX_MESSAGE)).expect("connect");
    assert_eq!(client.endpoint(), endpoint);
    let names = ["numpy", "scipy", "pandas"];
    let peers = thread::scope(|s| {
        let serving = s.spawn(move || {
            answer_requests(&server, names.len(), |req| match req {
                TestRequest::PackageExists { package } => text(&format!("{package}?")),
                other => panic!("unexpected request {other:?}"),
            })
        });
        for name in names {
            let reply = client.request(&package(name), WAIT).expect("request");
            assert_eq!(reply, text(&format!("{name}?")));
        }
        serving.join().expect("server thread")
    });
    // One connection, but each correlated request travels behind its own request id.
    assert!(peers.iter().all(|p| p.identity() == peers[0].identity()), "{peers:?}");
    assert!(peers.iter().all(|p| p.frames().len() == 2), "REQ correlation frame missing: {peers:?}");
    assert_ne!(peers[0], peers[1]);
    assert_ne!(peers[1], peers[2]);
}

#[test]
fn client_and_server_exchange_requests_over_inproc() {
    client_and_server_exchange_requests("inproc://client-and-server");
}

#[test]
fn client_and_server_exchange_requests_over_ipc() {
    let tmp = tempfile::tempdir().expect("tempdir");
    client_and_server_exchange_requests(&ipc_endpoint(&private_dir(&tmp), "db"));
}

#[test]
fn client_and_server_exchange_requests_over_tcp() {
    client_and_server_exchange_requests(&tcp_endpoint());
}

#[test]
fn dealer_converses_with_server_without_lock_step() {
    let ctx = zmq::Context::new();
    let endpoint = tcp_endpoint();
    let server = Server::<ControlRequest, ControlReply>::bind(&ctx, &endpoint, Some(DEFAULT_MAX_MESSAGE)).expect("bind");
    let dealer = Dealer::<ControlRequest, ControlReply>::connect(&ctx, &endpoint, Some(DEFAULT_MAX_MESSAGE)).expect("connect");
    let requests = [
        ControlRequest::Hello { versions: Versions::current(), client: "test".into() },
        ControlRequest::Pause,
        ControlRequest::Slaves { target: SlaveTarget::All, action: SlaveAction::Sleep },
    ];
    // Three requests go out before any reply comes back.
    for req in &requests {
        dealer.send(req, WAIT).expect("dealer send");
    }
    let received: Vec<_> = (0..requests.len()).map(|_| next_request(&server)).collect();
    assert_eq!(received.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), requests);
    // A DEALER adds no correlation frames: the envelope is its identity alone.
    assert!(received.iter().all(|(p, _)| p.frames().len() == 1 && *p == received[0].0), "{received:?}");
    // Answer in reverse order; the dealer sees the answers in the order they were sent.
    for (peer, req) in received.iter().rev() {
        server.send(peer, &ControlReply::Error(piwheels_common::protocols::WireError::refused(format!("{req:?}")))).expect("reply");
    }
    // Then one more, after which nothing else may come first.
    let end = ControlReply::Error(piwheels_common::protocols::WireError::refused("end"));
    server.send(&received[0].0, &end).expect("reply");
    for (_, req) in received.iter().rev() {
        let reply = dealer.recv_timeout(WAIT).expect("dealer recv").expect("a reply within the wait");
        assert_eq!(reply, ControlReply::Error(piwheels_common::protocols::WireError::refused(format!("{req:?}"))));
    }
    assert_eq!(dealer.recv_timeout(WAIT).expect("dealer recv"), Some(end), "an answer more than was sent");
}

#[test]
fn tagged_requests_get_their_replies_with_their_tags_in_any_order() {
    let ctx = zmq::Context::new();
    let endpoint = "inproc://tagged";
    let server = Server::<TestRequest, TestReply>::bind(&ctx, endpoint, None).expect("bind");
    let dealer = Dealer::<TestRequest, TestReply>::connect(&ctx, endpoint, None).expect("connect");
    for name in ["numpy", "scipy", "pandas"] {
        dealer.send_tagged(name.as_bytes(), &package(name), WAIT).expect("send");
    }
    let received: Vec<_> = (0..3).map(|_| next_request(&server)).collect();
    // The tag travels in the envelope, after the dealer's identity.
    assert!(received.iter().all(|(peer, _)| peer.frames().len() == 2), "{received:?}");
    // Answered last first: each reply comes back with its own request's tag.
    for (peer, request) in received.iter().rev() {
        let TestRequest::PackageExists { package } = request else { panic!("{request:?}") };
        server.send(peer, &text(package)).expect("reply");
    }
    for expected in ["pandas", "scipy", "numpy"] {
        assert!(dealer.readable(Some(WAIT)).expect("poll"), "no reply within {WAIT:?}");
        let (tag, reply) = dealer.recv_tagged().expect("a tagged reply");
        assert_eq!((String::from_utf8(tag).unwrap(), reply), (expected.to_string(), text(expected)));
    }
    assert!(matches!(dealer.send_tagged(b"", &package("x"), WAIT), Err(TransportError::Protocol(_))), "an empty tag is refused");
}

// ------------------------------------------------------------------------------------------
// Pipelines and publish/subscribe
// ------------------------------------------------------------------------------------------

#[test]
fn push_delivers_to_a_bound_pull_in_order() {
    let ctx = zmq::Context::new();
    let endpoint = tcp_endpoint();
    let pull = Receiver::<TaskControl>::pull(&ctx, &endpoint, Some(DEFAULT_MAX_MESSAGE)).expect("bind pull");
    let push = Sender::<TaskControl>::push(&ctx, &endpoint).expect("connect push");
    let messages = [TaskControl::Pause, TaskControl::Resume, TaskControl::Quit];
    // Then a last one, after which nothing else may come first.
    for msg in messages.iter().chain([&TaskControl::Pause]) {
        push.send(msg, WAIT).expect("push");
    }
    for msg in messages.iter().chain([&TaskControl::Pause]) {
        assert_eq!(pull.recv_timeout(WAIT).expect("pull").as_ref(), Some(msg));
    }
}

#[test]
fn bound_push_delivers_to_a_connected_pull() {
    let ctx = zmq::Context::new();
    let endpoint = "inproc://bound-push";
    let push = Sender::<TaskControl>::push_bound(&ctx, endpoint).expect("bind push");
    let pull = Receiver::<TaskControl>::pull_connected(&ctx, endpoint).expect("connect pull");
    push.send(&TaskControl::Quit, WAIT).expect("push");
    assert_eq!(pull.recv_timeout(WAIT).expect("pull"), Some(TaskControl::Quit));
}

#[test]
fn sub_receives_what_pub_sends_once_subscribed() {
    let ctx = zmq::Context::new();
    let endpoint = tcp_endpoint();
    let publisher = Sender::<TaskControl>::publish(&ctx, &endpoint, &Security::Plain).expect("bind pub");
    let subscriber = Receiver::<TaskControl>::subscribe(&ctx, &endpoint, Some(DEFAULT_MAX_MESSAGE)).expect("connect sub");
    // Messages published before the subscription reaches the publisher are lost: keep
    // publishing until one arrives.
    let start = Instant::now();
    let first = loop {
        assert!(start.elapsed() < 10 * WAIT, "subscription did not propagate within {:?}", 10 * WAIT);
        publisher.send(&TaskControl::Pause, WAIT).expect("publish");
        if let Some(msg) = subscriber.recv_timeout(Duration::from_millis(10)).expect("subscribe") {
            break msg;
        }
    };
    assert_eq!(first, TaskControl::Pause);
    // Once subscribed, every message arrives, in order (after any earlier retries).
    publisher.send(&TaskControl::Quit, WAIT).expect("publish");
    let next = loop {
        match subscriber.recv_timeout(WAIT).expect("subscribe") {
            Some(TaskControl::Pause) => continue,
            other => break other,
        }
    };
    assert_eq!(next, Some(TaskControl::Quit));
}

// ------------------------------------------------------------------------------------------
// Deadlines
// ------------------------------------------------------------------------------------------

#[test]
fn client_gets_timeout_then_only_the_new_reply() {
    let ctx = zmq::Context::new();
    let endpoint = "inproc://timeout-then-new-reply";
    let server = Server::<TestRequest, TestReply>::bind(&ctx, endpoint, None).expect("bind");
    let client = Client::<TestRequest, TestReply>::connect(&ctx, endpoint, None).expect("connect");

    let deadline = Duration::from_millis(100);
    let started = Instant::now();
    let err = client.request(&package("first"), deadline).expect_err("nobody answered");
    let waited = started.elapsed();
    assert!(matches!(err, TransportError::Timeout { timeout, .. } if timeout == deadline), "{err:?}");
    assert!(err.to_string().contains(endpoint), "{err}");
    // Not before the deadline (the wrapper polls in whole milliseconds, so it may give up a
    // fraction of one early); how long after depends on the machine's load.
    let slack = Duration::from_millis(2);
    assert!(waited + slack >= deadline, "waited {waited:?}");

    // The server has the first request, still unanswered.
    let (first_peer, first) = next_request(&server);
    assert_eq!(first, package("first"));
    thread::scope(|s| {
        s.spawn(move || {
            let (second_peer, second) = next_request(&server);
            assert_eq!(second, package("second"));
            assert_eq!(first_peer.identity(), second_peer.identity());
            // Answer the stale request first and the new one a little later, so that the stale
            // reply certainly reaches the client before the right one.
            server.send(&first_peer, &text("reply to first")).expect("late reply");
            thread::sleep(Duration::from_millis(50));
            server.send(&second_peer, &text("reply to second")).expect("reply");
        });
        let reply = client.request(&package("second"), WAIT).expect("second request");
        assert_eq!(reply, text("reply to second"));
    });
}

/// Regression test for a bug in `Client::request` (common/src/transport.rs): it polls until
/// the deadline, then receives *blocking*; when the message that woke the poll is a stale
/// reply, the correlating REQ discards it inside that blocking receive and waits, with no
/// deadline, for the right reply. If the right reply never comes, the call never returns.
#[test]
fn client_deadline_holds_when_only_a_stale_reply_arrives() {
    let ctx = zmq::Context::new();
    let endpoint = "inproc://stale-reply-only";
    let server = Server::<TestRequest, TestReply>::bind(&ctx, endpoint, None).expect("bind");
    let client = Client::<TestRequest, TestReply>::connect(&ctx, endpoint, None).expect("connect");
    client.request(&package("first"), Duration::from_millis(50)).expect_err("nobody answered");
    let (first_peer, _) = next_request(&server);

    // The client runs on a thread of its own so that a hang shows up as a failure.
    let (done_tx, done) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(client.request(&package("second"), Duration::from_millis(300)).map_err(|e| e.to_string()));
    });
    let _second = next_request(&server);
    server.send(&first_peer, &text("reply to first")).expect("late reply");
    // The second request is never answered: the client must give up after 300 ms.
    let outcome = done.recv_timeout(WAIT).expect("Client::request did not return within WAIT despite a 300 ms deadline");
    let err = outcome.expect_err("no reply to the second request was sent");
    assert!(err.contains("no reply"), "{err}");
}

// ------------------------------------------------------------------------------------------
// Frames that are not messages of the protocol
// ------------------------------------------------------------------------------------------

#[test]
fn garbage_reaches_the_server_as_malformed_with_a_peer_to_answer() {
    let ctx = zmq::Context::new();
    let endpoint = "inproc://garbage";
    let server = Server::<TestRequest, TestReply>::bind(&ctx, endpoint, None).expect("bind");
    let raw = raw_dealer(&ctx, endpoint);
    raw.send_multipart([&b""[..], b"\xc1 this is not msgpack"], 0).expect("raw send");

    assert!(server.readable(Some(WAIT)).expect("poll"));
    let (peer, req) = server.recv().expect("an envelope to answer");
    let err = req.expect_err("garbage must not decode");
    assert!(matches!(&err, ProtocolError::Malformed { protocol: "TestRequest", .. }), "{err:?}");

    // The "answer with an error" path: the sender of garbage gets a reply.
    server.send(&peer, &TestReply::Error { message: err.to_string() }).expect("reply to the peer");
    let frames = raw_recv(&raw);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(frames[0].is_empty(), "delimiter expected, got {:?}", frames[0]);
    let reply: TestReply = codec::decode(&frames[1]).expect("the reply decodes");
    assert_eq!(reply, TestReply::Error { message: err.to_string() });
}

#[test]
fn message_of_another_protocol_is_refused_naming_both() {
    let ctx = zmq::Context::new();
    let endpoint = "inproc://wrong-protocol";
    let server = Server::<TestRequest, TestReply>::bind(&ctx, endpoint, None).expect("bind");
    // A dealer speaking the control protocol to the database's server.
    let dealer = Dealer::<ControlRequest, ControlReply>::connect(&ctx, endpoint, None).expect("connect");
    dealer.send(&ControlRequest::Quit, WAIT).expect("send");

    assert!(server.readable(Some(WAIT)).expect("poll"));
    let (peer, req) = server.recv().expect("an envelope to answer");
    let err = req.expect_err("another protocol");
    assert_eq!(err, ProtocolError::WrongProtocol { expected: "TestRequest", found: "ControlRequest".into() });
    let shown = err.to_string();
    assert!(shown.contains("TestRequest") && shown.contains("ControlRequest"), "{shown}");

    // The reply is of the server's protocol, which the dealer refuses in turn.
    server.send(&peer, &TestReply::Error { message: shown }).expect("reply");
    assert!(dealer.readable(Some(WAIT)).expect("poll"));
    match dealer.recv() {
        Err(TransportError::Protocol(ProtocolError::WrongProtocol { expected: "ControlReply", found })) => {
            assert_eq!(found, "TestReply");
        }
        other => panic!("expected WrongProtocol, got {other:?}"),
    }
}

#[test]
fn frame_without_envelope_delimiter_is_a_structure_error() {
    let ctx = zmq::Context::new();
    let endpoint = "inproc://no-delimiter";
    let server = Server::<TestRequest, TestReply>::bind(&ctx, endpoint, None).expect("bind");
    let raw = raw_dealer(&ctx, endpoint);
    let frame = codec::encode(&package("numpy")).expect("encode");

    // No delimiter at all, a non-empty frame where the delimiter belongs, and an empty
    // routing frame before the delimiter.
    let bad: [Vec<&[u8]>; 3] = [vec![&frame], vec![b"oops", &frame], vec![b"", b"", &frame]];
    for frames in bad {
        raw.send_multipart(frames.iter().copied(), 0).expect("raw send");
        assert!(server.readable(Some(WAIT)).expect("poll"));
        match server.recv() {
            Err(TransportError::Protocol(ProtocolError::Structure { protocol: "TestRequest", reason })) => {
                assert!(reason.contains("delimiter") || reason.contains("empty routing frame"), "{reason}");
            }
            other => panic!("expected a Structure error for {frames:?}, got {other:?}"),
        }
    }

    // The server carries on: a proper request from the same connection is served.
    raw.send_multipart([&b""[..], &frame], 0).expect("raw send");
    let (peer, req) = next_request(&server);
    assert_eq!(req, package("numpy"));
    server.send(&peer, &TestReply::Bool(true)).expect("reply");
    let frames = raw_recv(&raw);
    assert_eq!(codec::decode::<TestReply>(&frames[1]).expect("decode"), TestReply::Bool(true));
}

// ------------------------------------------------------------------------------------------
// Message size limits
// ------------------------------------------------------------------------------------------

#[test]
fn oversized_frame_over_inproc_is_refused_with_the_peer() {
    let ctx = zmq::Context::new();
    let endpoint = "inproc://oversized";
    let server = Server::<TestRequest, TestReply>::bind(&ctx, endpoint, Some(1024)).expect("bind");
    let raw = raw_dealer(&ctx, endpoint);
    raw.send_multipart([&b""[..], &[0u8; 4096][..]], 0).expect("raw send");

    assert!(server.readable(Some(WAIT)).expect("poll"));
    let (peer, req) = server.recv().expect("an envelope to answer");
    assert_eq!(req, Err(ProtocolError::Oversized { protocol: "TestRequest", size: 4096, limit: 1024 }));
    server.send(&peer, &TestReply::Error { message: "too big".into() }).expect("reply");
    let frames = raw_recv(&raw);
    assert_eq!(codec::decode::<TestReply>(&frames[1]).expect("decode"), TestReply::Error { message: "too big".into() });
}

#[test]
fn oversized_frame_over_tcp_is_dropped_and_the_server_keeps_serving() {
    let ctx = zmq::Context::new();
    let endpoint = tcp_endpoint();
    let server = Server::<TestRequest, TestReply>::bind(&ctx, &endpoint, Some(1024)).expect("bind");
    // A well-formed request, but four times the server's limit, from a dealer without one.
    let disconnects = watch_disconnects(&ctx, server.socket(), "inproc://oversized-tcp-monitor");
    let greedy = Dealer::<TestRequest, TestReply>::connect(&ctx, &endpoint, None).expect("connect");
    greedy.send(&big_audit(4096), WAIT).expect("send");
    // libzmq drops the connection as the frame's size arrives, before anything is queued.
    assert!(disconnects.poll(zmq::POLLIN, 2 * WAIT.as_millis() as i64).expect("poll") > 0, "the connection was not dropped");
    assert!(!server.readable(Some(Duration::ZERO)).expect("poll"), "libzmq delivered an oversized frame over tcp");

    // The server still serves a newcomer, and nothing else.
    let client = Client::<TestRequest, TestReply>::connect(&ctx, &endpoint, Some(1024)).expect("connect");
    thread::scope(|s| {
        s.spawn(move || {
            answer_requests(&server, 1, |request| {
                assert_eq!(request, package("numpy"));
                TestReply::Done
            })
        });
        assert_eq!(client.request(&package("numpy"), WAIT).expect("request"), TestReply::Done);
    });
}

/// A PAIR socket that receives `socket`'s disconnection events.
fn watch_disconnects(ctx: &zmq::Context, socket: &zmq::Socket, address: &str) -> zmq::Socket {
    socket.monitor(address, zmq::SocketEvent::DISCONNECTED as i32).expect("monitor");
    let events = ctx.socket(zmq::PAIR).expect("pair");
    events.connect(address).expect("connect the monitor");
    events
}

#[test]
fn client_and_dealer_refuse_locally_to_send_beyond_their_limit() {
    let ctx = zmq::Context::new();
    let endpoint = "inproc://local-limit";
    let server = Server::<TestRequest, TestReply>::bind(&ctx, endpoint, None).expect("bind");
    let client = Client::<TestRequest, TestReply>::connect(&ctx, endpoint, Some(1024)).expect("connect");
    let dealer = Dealer::<TestRequest, TestReply>::connect(&ctx, endpoint, Some(1024)).expect("connect");
    let oversized = |err: TransportError| match err {
        TransportError::Protocol(ProtocolError::Oversized { protocol: "TestRequest", size, limit: 1024 }) => {
            assert!(size > 4096, "size {size}");
        }
        other => panic!("expected Oversized, got {other:?}"),
    };

    // Refused before sending: a request sent would end in a timeout, not this.
    oversized(client.request(&big_audit(4096), Duration::from_secs(10)).expect_err("refused"));
    oversized(dealer.send(&big_audit(4096), Duration::from_secs(10)).expect_err("refused"));

    // Neither socket is left in a bad state: small messages still go through, and each is
    // the first its socket delivers (a socket delivers in order).
    dealer.send(&package("dealer"), WAIT).expect("dealer send");
    assert_eq!(next_request(&server).1, package("dealer"));
    thread::scope(|s| {
        s.spawn(move || {
            answer_requests(&server, 1, |request| {
                assert_eq!(request, package("client"), "an oversized message was sent");
                TestReply::Bool(false)
            })
        });
        assert_eq!(client.request(&package("client"), WAIT).expect("request"), TestReply::Bool(false));
    });
}

// ------------------------------------------------------------------------------------------
// ipc endpoints
// ------------------------------------------------------------------------------------------

#[test]
fn ipc_bind_refuses_a_directory_other_users_can_enter() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctx = zmq::Context::new();
    for mode in [0o777, 0o750, 0o701] {
        let dir = tmp.path().join(format!("shared-{mode:o}"));
        fs::create_dir(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).expect("chmod");
        let endpoint = ipc_endpoint(&dir, "master");
        match Server::<TestRequest, TestReply>::bind(&ctx, &endpoint, None) {
            Err(TransportError::Ipc { endpoint: e, reason }) => {
                assert_eq!(e, endpoint);
                assert!(reason.contains("accessible to other users"), "{reason}");
            }
            other => panic!("mode {mode:o}: expected an Ipc error, got {other:?}"),
        }
        assert!(matches!(Receiver::<TaskControl>::pull(&ctx, &endpoint, None), Err(TransportError::Ipc { .. })));
        assert!(!dir.join("master.sock").exists(), "a socket was created in a shared directory");
    }
}

/// One request through a fresh server and client on `endpoint`; everything is closed on return.
fn one_request_through(endpoint: &str, check_files: impl FnOnce()) {
    let ctx = zmq::Context::new();
    let server = Server::<TestRequest, TestReply>::bind(&ctx, endpoint, None).expect("bind");
    check_files();
    let client = Client::<TestRequest, TestReply>::connect(&ctx, endpoint, None).expect("connect");
    thread::scope(|s| {
        s.spawn(move || answer_requests(&server, 1, |_| TestReply::Done));
        assert_eq!(client.request(&package("numpy"), WAIT).expect("request"), TestReply::Done);
    });
}

#[test]
fn ipc_bind_makes_a_private_directory_and_socket_and_can_bind_again_after_close() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("missing");
    let socket = dir.join("master.sock");
    let endpoint = format!("ipc://{}", socket.display());
    let check_files = || {
        assert_eq!(mode(&dir), 0o700, "socket directory mode");
        assert!(fs::metadata(&socket).expect("socket file").file_type().is_socket());
        assert_eq!(mode(&socket), 0o600, "socket file mode");
    };
    one_request_through(&endpoint, check_files);
    // libzmq 4.3 does not unlink a named ipc socket's file when the socket closes (only the
    // files of `ipc://*` wildcard endpoints), so the file outlives the context ...
    if socket.exists() {
        eprintln!("note: libzmq left {} behind after close", socket.display());
    }
    // ... but binding again replaces a leftover file, so a restarted master is not locked out.
    one_request_through(&endpoint, check_files);
}

#[test]
fn ipc_bind_refuses_a_path_a_live_socket_answers_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("ipc://{}", tmp.path().join("run/control").display());
    let ctx = zmq::Context::new();
    let first = Server::<TestRequest, TestReply>::bind(&ctx, &endpoint, None).expect("first bind");
    match Server::<TestRequest, TestReply>::bind(&ctx, &endpoint, None) {
        Err(TransportError::Ipc { reason, .. }) => assert!(reason.contains("listening"), "{reason}"),
        other => panic!("a second bind must be refused, got {other:?}"),
    }
    // The first server is untouched.
    let client = Client::<TestRequest, TestReply>::connect(&ctx, &endpoint, None).expect("connect");
    let serve = thread::spawn(move || {
        let (peer, _) = next_request(&first);
        first.send(&peer, &TestReply::Done).expect("reply");
    });
    assert_eq!(client.request(&package("numpy"), WAIT).expect("request"), TestReply::Done);
    serve.join().expect("server thread");
}

// ------------------------------------------------------------------------------------------
// Replies to departed peers
// ------------------------------------------------------------------------------------------

/// Serves one request from a dealer, lets the dealer go, then replies again until the server
/// notices (bounded); returns how many replies went out before the error and the error.
fn reply_after_peer_departs(endpoint: &str) -> (usize, TransportError) {
    let ctx = zmq::Context::new();
    let server = Server::<TestRequest, TestReply>::bind(&ctx, endpoint, None).expect("bind");
    let dealer = Dealer::<TestRequest, TestReply>::connect(&ctx, endpoint, None).expect("connect");
    dealer.send(&package("numpy"), WAIT).expect("send");
    let (peer, _) = next_request(&server);
    server.send(&peer, &TestReply::Done).expect("reply while connected");
    assert_eq!(dealer.recv_timeout(WAIT).expect("recv"), Some(TestReply::Done));
    drop(dealer);

    let start = Instant::now();
    let mut sent = 0;
    loop {
        match server.send(&peer, &TestReply::Done) {
            Ok(()) => sent += 1,
            Err(err) => {
                eprintln!("{endpoint}: {sent} replies to the departed peer accepted before: {err}");
                return (sent, err);
            }
        }
        assert!(start.elapsed() < WAIT, "{sent} replies to a departed peer were accepted over {WAIT:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn assert_unreachable(err: &TransportError) {
    assert!(
        matches!(err, TransportError::Zmq { op: "send to", source: zmq::Error::EHOSTUNREACH, .. }),
        "expected EHOSTUNREACH, got {err:?}"
    );
}

#[test]
fn server_reply_to_a_departed_inproc_peer_is_an_error() {
    let (sent, err) = reply_after_peer_departs("inproc://departed");
    assert_unreachable(&err);
    // ROUTER_MANDATORY only knows of the departure once the ROUTER has processed the pipe's
    // termination, which libzmq does lazily: in practice the first reply after the peer left
    // is accepted (and lost), the next one fails.
    assert!(sent <= 2, "{sent} replies accepted");
}

#[test]
fn server_reply_to_a_departed_tcp_peer_is_an_error() {
    let (_sent, err) = reply_after_peer_departs(&tcp_endpoint());
    assert_unreachable(&err);
}

