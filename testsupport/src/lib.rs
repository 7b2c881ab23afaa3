//! Test helpers shared by the workspace's crates. Nothing here is used outside tests.

pub mod data;
pub mod db;
pub mod installers;
pub mod keys;
pub mod programs;
pub mod pypi;

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server the test starts itself.
///
/// Chosen at random below the kernel's ephemeral range (32768 and up on Linux), not by binding
/// port 0: tests run as separate processes at once, and the kernel hands a port just released
/// by one to the next that asks, so two tests could be given the same port, and one test's
/// slave could reach another test's master. A random pick from 20,000 ports makes that rare,
/// and a port found taken is passed over.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const FIRST: u16 = 12_000;
    const COUNT: u64 = 20_000;
    loop {
        // A fresh random seed per call (std's hasher keys are random per instance).
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let port = FIRST + (hasher.finish() % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Sends `request` (a whole HTTP/1.1 request, ending `Connection: close`) to `addr` and reads
/// the answer to its end: its head and its body, as text.
pub fn http_exchange(addr: impl std::net::ToSocketAddrs, request: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP server");
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the answer");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.to_string(), body.to_string())
}
