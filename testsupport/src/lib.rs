//! Test helpers shared by the workspace's crates. Nothing here is used outside tests.

pub mod data;
pub mod db;
pub mod installers;
pub mod keys;
pub mod programs;
pub mod pypi;

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server the test starts itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().expect("its address").port()
}
