//! The uploader's connection over real tcp sockets, against a scripted file juggler: an
//! `Uploader` greets the juggler with each new transfer on the connection its last transfer
//! ended cleanly on, and starts a new connection after a failure.

use std::thread;
use std::time::Duration;

use piwheels_common::protocols::{ErrorKind, FileReply, FileRequest, TransferId, WireError};
use piwheels_common::transport::{DEFAULT_MAX_MESSAGE, Server};
use piwheels_common::upload::{UploadError, UploadOptions, Uploader};
use piwheels_common::transport::Security;

/// Upper bound for anything that should happen at once; only reached when a test fails.
const WAIT: Duration = Duration::from_secs(5);

/// The transfer the scripted juggler refuses.
const REFUSED: TransferId = 3;

/// What the scripted juggler saw of one transfer.
#[derive(Debug)]
struct Seen {
    transfer: TransferId,
    /// The connection's identity, as the juggler's ROUTER names it.
    connection: Vec<u8>,
    bytes: Vec<u8>,
}

/// Serves `hellos` transfers as the file juggler does (one fetch of the whole file, then
/// `Done`), except that a hello for [`REFUSED`] is refused; the last must not be that one.
fn scripted_juggler(juggler: Server<FileRequest, FileReply>, size: u64, hellos: usize) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    // The last transfer is one that is served to its end.
    let finished = |seen: &[Seen]| seen.len() == hellos && seen.last().is_some_and(|s| s.bytes.len() as u64 == size);
    while !finished(&seen) {
        assert!(juggler.readable(Some(WAIT)).expect("poll"), "the uploader went quiet after {seen:?}");
        let (peer, request) = juggler.recv().expect("receive");
        match request.expect("a file request") {
            FileRequest::Hello { transfer, .. } => {
                seen.push(Seen { transfer, connection: peer.identity().to_vec(), bytes: Vec::new() });
                let reply = if transfer == REFUSED {
                    FileReply::Error(WireError::refused("refused by the script"))
                } else {
                    FileReply::Fetch { offset: 0, length: size }
                };
                juggler.send(&peer, &reply).expect("answer the hello");
            }
            FileRequest::Chunk { offset, data } => {
                let current = seen.last_mut().expect("a chunk after a hello");
                assert_eq!(peer.identity(), current.connection.as_slice(), "a chunk on another connection");
                assert_eq!(offset, current.bytes.len() as u64);
                current.bytes.extend_from_slice(&data);
                if current.bytes.len() as u64 == size {
                    juggler.send(&peer, &FileReply::Done).expect("done");
                }
            }
        }
    }
    seen
}

#[test]
fn an_uploader_keeps_its_connection_after_a_clean_end_and_replaces_it_after_a_failure() {
    let ctx = zmq::Context::new();
    let juggler = Server::<FileRequest, FileReply>::bind(&ctx, "tcp://127.0.0.1:*", Some(DEFAULT_MAX_MESSAGE)).expect("bind");
    let endpoint = juggler.socket().get_last_endpoint().expect("the bound endpoint").expect("as text");
    let contents: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let size = contents.len() as u64;
    let serving = thread::spawn(move || scripted_juggler(juggler, size, 4));

    let tmp = tempfile::tempdir().expect("temporary directory");
    let path = tmp.path().join("demo-1.0-py3-none-any.whl");
    std::fs::write(&path, &contents).expect("write the file");
    let options = || UploadOptions { nudge_after: WAIT, overall_timeout: 2 * WAIT, stop_after_bytes: None };
    let mut uploader = Uploader::new(&ctx, &endpoint, &Security::Plain);
    for transfer in [1, 2] {
        let report = uploader.upload(transfer, &path, options()).expect("a clean upload");
        assert_eq!((report.bytes_sent, report.hellos), (size, 1));
    }
    match uploader.upload(REFUSED, &path, options()) {
        Err(UploadError::Refused { transfer, reason, kind }) => assert_eq!((transfer, reason.as_str(), kind), (REFUSED, "refused by the script", ErrorKind::Refused)),
        other => panic!("transfer {REFUSED} was not refused: {other:?}"),
    }
    uploader.upload(4, &path, options()).expect("an upload after the refusal");

    let seen = serving.join().expect("the scripted juggler");
    let transfers: Vec<TransferId> = seen.iter().map(|s| s.transfer).collect();
    assert_eq!(transfers, [1, 2, REFUSED, 4]);
    for s in seen.iter().filter(|s| s.transfer != REFUSED) {
        assert!(s.bytes == contents, "transfer {} received other bytes", s.transfer);
    }
    assert_eq!(seen[0].connection, seen[1].connection, "the second transfer did not reuse the first one's connection");
    assert_eq!(seen[1].connection, seen[2].connection, "the third transfer did not reuse the connection");
    assert_ne!(seen[2].connection, seen[3].connection, "the transfer after a refusal reused the failed connection");
}
