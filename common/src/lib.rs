//! Everything the piwheels programs share: the protocols of every socket, the codec that
//! puts them on the wire, typed ZeroMQ sockets, the task runtime of the master, the clock,
//! configuration loading and logging set-up.

#[cfg(any(test, feature = "arbitrary"))]
pub mod arbitrary;
pub mod clock;
pub mod codec;
pub mod config;
pub mod farm;
pub mod hostinfo;
pub mod inspect;
pub mod keys;
pub mod logging;
pub mod names;
pub mod protocols;
pub mod provenance;
pub mod systemd;
pub mod task;
pub mod transport;
pub mod upload;
pub mod wheel;

/// Version of the wire protocols in [`protocols`]. Bump it on any change to a message that
/// crosses a process boundary (the golden-frame tests in `common/src/protocols/golden_frames.rs` fail
/// until it is bumped); a client and a master whose protocol versions differ refuse each other.
pub const PROTOCOL_VERSION: u32 = 7;

/// Version of this software, carried in every external client's first message: logged and
/// shown, never required to match.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
