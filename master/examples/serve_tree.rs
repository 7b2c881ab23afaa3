//! Serves a directory with the built-in web server until killed, for benchmarks
//! (`scripts/bench-web.sh`) and for looking at a tree by hand:
//!
//! ```text
//! cargo run --release -p piwheels-master --example serve_tree -- DIR [ADDRESS]
//! ```
//!
//! ADDRESS defaults to 127.0.0.1:8080 (port 0 picks a free one). It prints the address it
//! listens on, then serves until it is killed.

use std::net::SocketAddr;
use std::path::PathBuf;

use piwheels_master::web_server::WebServer;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("usage: serve_tree DIR [ADDRESS]"))?);
    let listen: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:8080").parse()?;
    let server = WebServer::start(root.clone(), listen)?;
    eprintln!("serving {} on http://{}/", root.display(), server.local_addr());
    // The server runs on its own threads; this one waits to be killed.
    loop {
        std::thread::park();
    }
}
