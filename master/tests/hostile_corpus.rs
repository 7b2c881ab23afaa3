//! The hostile-input corpus: a real piw-master with authentication on, one real piw-slave
//! building, and a hostile peer on every socket and tool the master listens to: the slave and
//! file sockets (with an authorized key, since a real builder can be buggy or compromised, and
//! with an unknown one), the admin socket through the real tools, the control and logger
//! sockets, and the built-in web server. Each case asserts the words of the refusal, then that
//! the master still builds a new release for the real slave.

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use piwheels_common::codec;
use piwheels_common::keys::Role;
use piwheels_common::protocols::{
    AccessRecord, BuildResult, ControlReply, ControlRequest, FileReply, FileRequest, HostInfo, LogReply, LogRequest, SlaveAction,
    SlaveHello, SlaveReply, SlaveRequest, SlaveTarget, TaskControl, Versions, WheelFile,
};
use piwheels_common::transport::Client;
use piwheels_common::upload::{UploadOptions, upload};
use piwheels_testsupport::data::{wheel_bytes, wheel_file, wheel_with_metadata};
use piwheels_testsupport::keys::ClientKey;
use support::farm::{Farm, Source};

const WAIT: Duration = Duration::from_secs(20);
/// The ABI the hostile slave claims: one the farm builds for above the real slave's, so that
/// a release reaches it only once the real slave's build failed (a wheel would serve it).
const HOSTILE_ABI: &str = "cp313";

struct Corpus {
    farm: Farm,
    ctx: zmq::Context,
    /// An authorized slave key that a hostile (or broken) builder holds.
    hostile: ClientKey,
    /// A key the master does not know.
    stranger: ClientKey,
    /// The tools' configuration: the admin socket, the file socket and an importer's key.
    tools: PathBuf,
    /// Releases built for the real slave so far.
    rounds: usize,
    /// Where the master's log stood when the case began: a case reads only what follows.
    log_mark: std::cell::Cell<usize>,
}

impl Corpus {
    fn start() -> Corpus {
        let mut farm = Farm::new(&["builder"], |_| None);
        farm.db.execute(&format!("INSERT INTO build_abis (abi_tag, python_version) VALUES ('{HOSTILE_ABI}', 313)"));
        let state = farm.state();
        let hostile = ClientKey::authorized(&state, &farm.path("hostile.key"), Role::Slave, "hostile");
        let stranger = ClientKey::unknown(&state, &farm.path("stranger.key"));
        let importer = ClientKey::authorized(&state, &farm.path("importer.key"), Role::Importer, "corpus-admin");
        let tools = farm.path("tools.toml");
        std::fs::write(
            &tools,
            format!(
                "[import]\nimport-queue = \"{}\"\nfile-queue = \"{}\"\nconnect-timeout = \"5s\"\ntimeout = \"30s\"\nkey = \"{}\"\nmaster-key = \"{}\"\n",
                farm.ipc("import"),
                farm.file_queue(),
                importer.file.display(),
                importer.master
            ),
        )
        .unwrap();
        farm.start_master();
        farm.start_slave(0);
        let mut corpus = Corpus { farm, ctx: zmq::Context::new(), hostile, stranger, tools, rounds: 0, log_mark: Default::default() };
        corpus.builds_for_the_real_slave("the start");
        corpus
    }

    /// A new release is built by the real slave: whatever the case did, the farm works on.
    fn builds_for_the_real_slave(&mut self, case: &str) {
        self.rounds += 1;
        let package = format!("after-{}", self.rounds);
        self.farm.add_release(&package, "1.0", Source::QUICK);
        let outcome = self.farm.wait_for_build(&package, "1.0", Duration::from_secs(60));
        assert_eq!(outcome, ("t".to_string(), "-".to_string()), "after {case}: the real slave's build of {package}");
    }

    /// A REQ socket to `endpoint`, with CurveZMQ as `key` when given.
    fn raw_req(&self, endpoint: &str, key: Option<&ClientKey>) -> zmq::Socket {
        self.raw_socket(zmq::REQ, endpoint, key)
    }

    /// A socket of `kind` connected to `endpoint`, with CurveZMQ as `key` when given.
    fn raw_socket(&self, kind: zmq::SocketType, endpoint: &str, key: Option<&ClientKey>) -> zmq::Socket {
        let socket = self.ctx.socket(kind).unwrap();
        socket.set_linger(0).unwrap();
        socket.set_rcvtimeo(WAIT.as_millis() as i32).unwrap();
        if let Some(key) = key {
            socket.set_curve_serverkey(key.master.bytes()).unwrap();
            socket.set_curve_publickey(key.pair.public.bytes()).unwrap();
            socket.set_curve_secretkey(key.pair.secret.bytes()).unwrap();
        }
        socket.connect(endpoint).unwrap();
        socket
    }

    /// Sends one raw frame and returns the decoded answer, as text.
    fn raw_exchange<Rep: piwheels_common::protocols::Message>(&self, endpoint: &str, key: Option<&ClientKey>, frame: &[u8]) -> String {
        let socket = self.raw_req(endpoint, key);
        socket.send(frame, 0).unwrap();
        let answer = socket.recv_bytes(0).unwrap_or_else(|e| panic!("no answer from {endpoint} to a raw frame: {e}"));
        format!("{:?}", codec::decode::<Rep>(&answer).unwrap())
    }

    fn slave_client(&self, key: &ClientKey) -> Client<SlaveRequest, SlaveReply> {
        Client::connect_secured(&self.ctx, &self.farm.slave_queue(), None, &key.security()).unwrap()
    }

    /// What the master answers a hostile slave that says `requests` in turn (each answer
    /// joined), saying goodbye after.
    fn as_hostile_slave(&self, requests: Vec<SlaveRequest>) -> String {
        let client = self.slave_client(&self.hostile);
        let answers: Vec<String> = requests.into_iter().map(|request| format!("{:?}", client.request(&request, WAIT).unwrap())).collect();
        let _ = client.request(&SlaveRequest::Bye { reason: "the case is over".into() }, Duration::from_millis(200));
        answers.join(" / ")
    }

    /// Says hello as the hostile slave and waits until it is handed a build (of a new release
    /// the real slave failed to build); returns the client and the release.
    fn hostile_build(&self) -> (Client<SlaveRequest, SlaveReply>, String, String) {
        let package = format!("target-{}", self.rounds);
        self.farm.add_release(&package, "1.0", Source { builds: false, ..Source::QUICK });
        support::eventually(&format!("the real slave's build of {package}"), WAIT, || {
            !self.farm.db.column(&format!("SELECT package FROM builds WHERE package = '{package}'")).is_empty()
        });
        let client = self.slave_client(&self.hostile);
        let answer = client.request(&SlaveRequest::Hello(hello()), WAIT).unwrap();
        assert!(matches!(answer, SlaveReply::Ack { .. }), "{answer:?}");
        let deadline = Instant::now() + WAIT;
        loop {
            match client.request(&idle(), WAIT).unwrap() {
                SlaveReply::Build { package, version, .. } => return (client, package, version),
                SlaveReply::Sleep { .. } => {}
                other => panic!("the hostile slave was answered {other:?}"),
            }
            assert!(Instant::now() < deadline, "the hostile slave was handed no build");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Takes a build as the hostile slave and reports it built with the files `make` describes
    /// (given the release), uploading any the master asks for from `bytes`; returns the log the
    /// master recorded for the build.
    fn report_build(&self, make: impl Fn(&str, &str) -> Vec<(WheelFile, Vec<u8>)>) -> String {
        let (client, package, version) = self.hostile_build();
        let files = make(&package, &version);
        let mut result = built(files.iter().map(|(file, _)| file.clone()).collect());
        result.duration = Duration::from_millis(100);
        let mut answer = client.request(&SlaveRequest::Built(result), WAIT).unwrap();
        while let SlaveReply::Send { filename, transfer } = answer {
            let bytes = &files.iter().find(|(file, _)| file.filename == filename).expect("a file the slave listed").1;
            let path = self.farm.path(&filename);
            std::fs::write(&path, bytes).unwrap();
            upload(&self.ctx, &self.farm.file_queue(), &self.hostile.security(), transfer, &path, UploadOptions::default()).unwrap();
            answer = client.request(&SlaveRequest::Sent { filename }, WAIT).unwrap();
        }
        assert_eq!(answer, SlaveReply::Done);
        let _ = client.request(&SlaveRequest::Bye { reason: "the case is over".into() }, Duration::from_millis(200));
        let logs = self.farm.db.column(&format!(
            "SELECT o.output FROM output o JOIN builds b USING (build_id) WHERE b.package = '{package}' AND b.version = '{version}' AND b.abi_tag = '{HOSTILE_ABI}'"
        ));
        logs.into_iter().flatten().next().unwrap_or_else(|| format!("no build of {package} {version} recorded"))
    }

    fn file_client(&self) -> Client<FileRequest, FileReply> {
        Client::connect_secured(&self.ctx, &self.farm.file_queue(), None, &self.hostile.security()).unwrap()
    }

    fn control(&self) -> Client<ControlRequest, ControlReply> {
        Client::connect(&self.ctx, &self.farm.ipc("control"), None).unwrap()
    }

    fn logger(&self) -> Client<LogRequest, LogReply> {
        Client::connect(&self.ctx, &self.farm.ipc("logger"), None).unwrap()
    }

    /// Runs an admin tool with the tools' configuration; returns what it printed.
    fn tool(&self, name: &str, args: &[&str]) -> String {
        let output: Output = Command::new(piwheels_testsupport::programs::program(name))
            .arg("--config")
            .arg(&self.tools)
            .args(args)
            .env_remove("PIW_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{name} {args:?} succeeded");
        String::from_utf8_lossy(&output.stderr).to_string()
    }

    /// A wheel written to the test's directory.
    fn wheel_on_disk(&self, filename: &str, bytes: &[u8]) -> String {
        let path = self.farm.path(filename);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    }

    /// Sends raw bytes to the web server; returns its answer's head and body.
    fn http(&self, request: &[u8]) -> String {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.farm.http_port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(request).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).to_string()
    }

    /// Sends one frame with no envelope from a DEALER, which nobody can answer; returns the
    /// master's log once it says `words` (or after a while).
    fn unenveloped(&self, endpoint: &str, words: &str) -> String {
        let socket = self.raw_socket(zmq::DEALER, endpoint, Some(&self.hostile));
        socket.send(&b"no envelope"[..], 0).unwrap();
        let deadline = Instant::now() + WAIT;
        while !self.master_log().contains(words) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.master_log()
    }

    /// The master's whole log.
    fn whole_log(&self) -> String {
        std::fs::read_to_string(self.farm.path("master.log")).unwrap_or_default()
    }

    /// What the master logged since the case began.
    fn master_log(&self) -> String {
        self.whole_log().get(self.log_mark.get()..).unwrap_or_default().to_string()
    }

    /// Fails the case if the hostile slave's build of `package` was recorded.
    fn assert_not_recorded(&self, package: &str) {
        let rows = self.farm.db.column(&format!("SELECT package FROM builds WHERE package = '{package}' AND abi_tag = '{HOSTILE_ABI}'"));
        assert!(rows.is_empty(), "the hostile slave's build of {package} was recorded");
    }
}

fn hello() -> SlaveHello {
    SlaveHello {
        versions: Versions::current(),
        build_timeout: Duration::from_secs(60),
        busy_timeout: Duration::from_secs(30),
        py_version: "313".into(),
        abi: HOSTILE_ABI.into(),
        platform: "linux_armv7l".into(),
        memory_limit: 0,
        host: HostInfo { label: "hostile".into(), ..HostInfo::default() },
        environment: Default::default(),
    }
}

fn idle() -> SlaveRequest {
    SlaveRequest::Idle { stats: Default::default(), declined: None }
}

fn built(files: Vec<WheelFile>) -> BuildResult {
    BuildResult {
        success: !files.is_empty(),
        failure: None,
        exit_status: Some(0),
        duration: Duration::from_millis(100),
        cpu_time: Duration::from_millis(50),
        peak_memory: 1 << 20,
        output: "a build that made a wheel".into(),
        files,
    }
}

/// A wheel of `package` `version` under `filename`'s other parts, described honestly.
fn honest(filename: &str) -> (WheelFile, Vec<u8>) {
    let bytes = wheel_bytes(filename, b"payload");
    (wheel_file(filename, &bytes), bytes)
}

fn dist(package: &str) -> String {
    package.replace('-', "_")
}

type Case = (&'static str, &'static str, fn(&Corpus) -> String);

/// Each case: its name, the words its refusal must hold, and what it does (returning the
/// refusal as the master gave it).
const CASES: &[Case] = &[
    // The slave socket, from a builder with an authorized key.
    ("slave: undecodable bytes", "protocol error: SlaveRequest: undecodable message", |c| {
        c.raw_exchange::<SlaveReply>(&c.farm.slave_queue(), Some(&c.hostile), b"\xc1\xc1\xc1")
    }),
    ("slave: a message of another protocol", "received a message of protocol", |c| {
        c.raw_exchange::<SlaveReply>(&c.farm.slave_queue(), Some(&c.hostile), &codec::encode(&ControlRequest::Quit).unwrap())
    }),
    ("slave: bytes after the message", "1 bytes after the message", |c| {
        let mut frame = codec::encode(&SlaveRequest::Hello(hello())).unwrap();
        frame.push(0);
        c.raw_exchange::<SlaveReply>(&c.farm.slave_queue(), Some(&c.hostile), &frame)
    }),
    ("slave: a message with no envelope", "unanswerable message on the slave socket", |c| {
        c.unenveloped(&c.farm.slave_queue(), "unanswerable message on the slave socket")
    }),
    ("slave: another protocol version", "version mismatch", |c| {
        let mut hello = hello();
        hello.versions.protocol += 1;
        c.as_hostile_slave(vec![SlaveRequest::Hello(hello)])
    }),
    ("slave: work asked for without a hello", "say Hello again", |c| c.as_hostile_slave(vec![idle()])),
    ("slave: an overlong host field", "hello field os_name is longer than 256 bytes", |c| {
        let mut hello = hello();
        hello.host.os_name = "x".repeat(300);
        c.as_hostile_slave(vec![SlaveRequest::Hello(hello)])
    }),
    ("slave: control characters in a host field", "hello field board_serial", |c| {
        let mut hello = hello();
        hello.host.board_serial = "\u{1b}[2J".into();
        c.as_hostile_slave(vec![SlaveRequest::Hello(hello)])
    }),
    ("slave: an environment of 33 entries", "the environment has 33 entries, more than 32", |c| {
        let mut hello = hello();
        hello.environment = (0..33).map(|n| (format!("tool{n}"), "1.0".to_string())).collect();
        c.as_hostile_slave(vec![SlaveRequest::Hello(hello)])
    }),
    ("slave: an environment entry with control characters", "the environment's entry", |c| {
        let mut hello = hello();
        hello.environment.insert("cc".into(), "gcc\u{1b}[2J".into());
        c.as_hostile_slave(vec![SlaveRequest::Hello(hello)])
    }),
    ("slave: an ABI that is a path", "hello names no usable ABI and platform", |c| {
        let mut hello = hello();
        hello.abi = "cp311/../../x".into();
        c.as_hostile_slave(vec![SlaveRequest::Hello(hello)])
    }),
    ("slave: a zero build timeout", "build and busy timeouts must be more than zero", |c| {
        let mut hello = hello();
        hello.build_timeout = Duration::ZERO;
        c.as_hostile_slave(vec![SlaveRequest::Hello(hello)])
    }),
    ("slave: a build timeout of 2^63 s", "longer than this master allows", |c| {
        let mut hello = hello();
        hello.build_timeout = Duration::from_secs(1 << 63);
        c.as_hostile_slave(vec![SlaveRequest::Hello(hello)])
    }),
    ("slave: a busy timeout of ten years", "--max-busy-timeout", |c| {
        let mut hello = hello();
        hello.busy_timeout = Duration::from_secs(10 * 365 * 86400);
        c.as_hostile_slave(vec![SlaveRequest::Hello(hello)])
    }),
    ("slave: a second hello", "protocol error: Hello when Idle was due", |c| {
        c.as_hostile_slave(vec![SlaveRequest::Hello(hello()), SlaveRequest::Hello(hello())])
    }),
    ("slave: a build reported that was never handed out", "protocol error: Built when Idle was due", |c| {
        c.as_hostile_slave(vec![SlaveRequest::Hello(hello()), SlaveRequest::Built(built(Vec::new()))])
    }),
    ("slave: a file sent that was never asked for", "protocol error: Sent when Idle was due", |c| {
        c.as_hostile_slave(vec![SlaveRequest::Hello(hello()), SlaveRequest::Sent { filename: "x-1.0-py3-none-any.whl".into() }])
    }),
    ("slave: a wheel of another package", "is not a file of package", |c| {
        c.report_build(|_, version| vec![honest(&format!("urllib3-{version}-py3-none-any.whl"))])
    }),
    ("slave: a wheel of another version", "is version 99.0, not", |c| c.report_build(|package, _| vec![honest(&format!("{}-99.0-py3-none-any.whl", dist(package)))])),
    ("slave: a wheel for another ABI", "has ABI tag cp311; a build for cp313", |c| {
        c.report_build(|package, version| vec![honest(&format!("{}-{version}-cp311-cp311-linux_armv7l.whl", dist(package)))])
    }),
    ("slave: a wheel for another platform", "has platform tag linux_x86_64", |c| {
        c.report_build(|package, version| vec![honest(&format!("{}-{version}-cp313-cp313-linux_x86_64.whl", dist(package)))])
    }),
    ("slave: a hash that is not one", "is not a SHA-256 in lower-case hex", |c| {
        c.report_build(|package, version| {
            let (mut file, bytes) = honest(&format!("{}-{version}-py3-none-any.whl", dist(package)));
            file.sha256 = "ABC".into();
            vec![(file, bytes)]
        })
    }),
    ("slave: a forged METADATA naming another project", "its METADATA names project", |c| {
        c.report_build(|package, version| {
            let filename = format!("{}-{version}-py3-none-any.whl", dist(package));
            let bytes = wheel_with_metadata(&filename, &format!("Metadata-Version: 2.1\nName: requests\nVersion: {version}\nRequires-Dist: evil\n"), b"x");
            vec![(wheel_file(&filename, &bytes), bytes)]
        })
    }),
    ("slave: a file listed twice", "twice", |c| {
        let (client, package, version) = c.hostile_build();
        let file = honest(&format!("{}-{version}-py3-none-any.whl", dist(&package))).0;
        let answer = client.request(&SlaveRequest::Built(built(vec![file.clone(), file])), WAIT).unwrap();
        format!("{answer:?}")
    }),
    ("slave: more files than a build makes", "more than the 32 one build may make", |c| {
        let (client, package, version) = c.hostile_build();
        let files = (0..33).map(|n| honest(&format!("{}-{version}-{n}-py3-none-any.whl", dist(&package))).0).collect();
        let answer = client.request(&SlaveRequest::Built(built(files)), WAIT).unwrap();
        format!("{answer:?}")
    }),
    ("slave: a failure with no log", "the slave reports a failure without a build log", |c| {
        let (client, package, _) = c.hostile_build();
        let mut result = built(Vec::new());
        (result.exit_status, result.output) = (Some(1), String::new());
        let answer = client.request(&SlaveRequest::Built(result), WAIT).unwrap();
        assert_eq!(answer, SlaveReply::Done);
        c.assert_not_recorded(&package);
        c.master_log()
    }),
    ("slave: a failure longer than it could be", "after handing it out", |c| {
        let (client, package, _) = c.hostile_build();
        let mut result = built(Vec::new());
        (result.exit_status, result.duration, result.output) = (Some(1), Duration::from_secs(3600), "it failed".into());
        let answer = client.request(&SlaveRequest::Built(result), WAIT).unwrap();
        assert_eq!(answer, SlaveReply::Done);
        c.assert_not_recorded(&package);
        c.master_log()
    }),
    ("slave: a key the master does not know", "refused this client's key", |c| {
        let client = c.slave_client(&c.stranger);
        client.request(&SlaveRequest::Hello(hello()), WAIT).unwrap_err().to_string()
    }),
    // The file socket.
    ("file: a message with no envelope", "unanswerable message on the file socket", |c| {
        c.unenveloped(&c.farm.file_queue(), "unanswerable message on the file socket")
    }),
    ("file: a transfer nobody asked for", "unknown transfer", |c| {
        format!("{:?}", c.file_client().request(&FileRequest::Hello { versions: Versions::current(), transfer: 424242 }, WAIT).unwrap())
    }),
    ("file: another protocol version", "version mismatch", |c| {
        let versions = Versions { protocol: Versions::current().protocol + 1, ..Versions::current() };
        format!("{:?}", c.file_client().request(&FileRequest::Hello { versions, transfer: 1 }, WAIT).unwrap())
    }),
    ("file: a chunk without a hello", "say Hello first", |c| {
        let chunk = FileRequest::Chunk { offset: 0, data: vec![0u8; 16].into() };
        format!("{:?}", c.file_client().request(&chunk, WAIT).unwrap())
    }),
    ("file: undecodable bytes", "bad message: FileRequest: undecodable message", |c| {
        c.raw_exchange::<FileReply>(&c.farm.file_queue(), Some(&c.hostile), b"not a message")
    }),
    ("file: a message of another protocol", "received a message of protocol", |c| {
        c.raw_exchange::<FileReply>(&c.farm.file_queue(), Some(&c.hostile), &codec::encode(&SlaveRequest::Busy { stats: Default::default() }).unwrap())
    }),
    // The admin socket, through the tools and raw.
    ("piw-add: a name that is a path", "is not a valid project name", |c| c.tool("piw-add", &["../etc"])),
    ("piw-add: a version with a space", "is not a valid version", |c| c.tool("piw-add", &["after-1", "2 0"])),
    ("piw-add: a skip reason with control characters", "the skip reason holds control characters", |c| {
        c.tool("piw-add", &["after-1", "9.0", "--skip", "\u{1b}[2J"])
    }),
    ("piw-remove: a package nobody knows", "unknown package", |c| c.tool("piw-remove", &["--yes", "no-such-package"])),
    ("piw-rebuild: a package nobody knows", "unknown package", |c| c.tool("piw-rebuild", &["--yes", "project", "no-such-package"])),
    ("piw-import (refusing before it asks the master): a file that is not a wheel", "not a zip archive", |c| {
        let path = c.wheel_on_disk("after_1-1.0-py3-none-any.whl", b"not a zip");
        c.tool("piw-import", &[&path])
    }),
    ("piw-import: an ABI the farm does not build", "unknown ABI cp36m", |c| {
        let path = c.wheel_on_disk("after_1-1.0-cp36-cp36m-linux_armv7l.whl", &wheel_bytes("after_1-1.0-cp36-cp36m-linux_armv7l.whl", b"x"));
        c.tool("piw-import", &[&path])
    }),
    ("piw-import: a release nobody knows", "unknown package", |c| {
        let path = c.wheel_on_disk("nobody_knows-1.0-py3-none-any.whl", &wheel_bytes("nobody_knows-1.0-py3-none-any.whl", b"x"));
        c.tool("piw-import", &["--abi", "cp311", &path])
    }),
    ("admin: undecodable bytes", "the master could not read that request", |c| {
        c.raw_exchange::<piwheels_common::protocols::AdminReply>(&c.farm.ipc("import"), None, b"\x92\xacAdminRequest\xc1")
    }),
    ("admin: a request before hello", "say Hello (with your versions) first", |c| {
        let client: Client<piwheels_common::protocols::AdminRequest, piwheels_common::protocols::AdminReply> =
            Client::connect(&c.ctx, &c.farm.ipc("import"), None).unwrap();
        let request = piwheels_common::protocols::AdminRequest::RemovePackage { name: "after-1".into(), builds_only: false, skip: None };
        format!("{:?}", client.request(&request, WAIT).unwrap())
    }),
    // The control socket.
    ("control: a message of another protocol", "received a message of protocol", |c| {
        c.raw_exchange::<ControlReply>(&c.farm.ipc("control"), None, b"\x92\xa4junk\xc1")
    }),
    ("control: a command before hello", "say Hello (with your versions) first", |c| {
        format!("{:?}", c.control().request(&ControlRequest::Quit, WAIT).unwrap())
    }),
    ("control: another protocol version", "version mismatch", |c| {
        let versions = Versions { protocol: Versions::current().protocol + 1, ..Versions::current() };
        format!("{:?}", c.control().request(&ControlRequest::Hello { versions, client: "corpus".into() }, WAIT).unwrap())
    }),
    ("control: a slave that does not exist", "no slave has id 99", |c| {
        let control = c.control();
        control.request(&ControlRequest::Hello { versions: Versions::current(), client: "corpus".into() }, WAIT).unwrap();
        format!("{:?}", control.request(&ControlRequest::Slaves { target: SlaveTarget::One(99), action: SlaveAction::Kill }, WAIT).unwrap())
    }),
    // The logger socket.
    ("logger: records before hello", "say Hello (with your versions) first", |c| {
        format!("{:?}", c.logger().request(&LogRequest::Records { records: Vec::<AccessRecord>::new() }, WAIT).unwrap())
    }),
    ("logger: another protocol version", "version mismatch", |c| {
        let versions = Versions { protocol: Versions::current().protocol + 1, ..Versions::current() };
        format!("{:?}", c.logger().request(&LogRequest::Hello { versions }, WAIT).unwrap())
    }),
    ("logger: a message of another protocol", "received a message of protocol", |c| {
        c.raw_exchange::<LogReply>(&c.farm.ipc("logger"), None, &codec::encode(&TaskControl::Quit).unwrap())
    }),
    // A second master on the same state and output.
    ("a second master on the same directories", "another piw-master", |c| {
        let output = Command::new(env!("CARGO_BIN_EXE_piw-master")).args(c.farm.master_args()).env_remove("PIW_LOG").output().unwrap();
        assert!(!output.status.success(), "a second master started");
        String::from_utf8_lossy(&output.stderr).to_string()
    }),
    // The built-in web server.
    ("web: a POST", "only GET and HEAD are served", |c| c.http(b"POST /simple/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")),
    ("web: a path out of the root", "bad path", |c| c.http(b"GET /simple/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")),
    ("web: a head too large", "HTTP/1.1 431", |c| {
        let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "a".repeat(64 << 10));
        c.http(request.as_bytes())
    }),
];

#[test]
fn every_socket_and_tool_refuses_hostile_input_in_words_and_the_farm_builds_on() {
    assert_eq!(CASES.len(), 55, "the corpus's count, which docs/reliability.md gives");
    let mut corpus = Corpus::start();
    for (name, words, case) in CASES {
        corpus.log_mark.set(corpus.whole_log().len());
        let said = case(&corpus);
        assert!(said.contains(words), "{name}: expected {words:?} in: {said}");
        corpus.builds_for_the_real_slave(name);
        assert!(corpus.farm.master_running(), "{name}: the master stopped");
    }
    let log = corpus.whole_log();
    assert!(!log.contains("panicked"), "the master panicked: {log}");
}
