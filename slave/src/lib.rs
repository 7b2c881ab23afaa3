//! piw-slave's parts: its configuration, the host that runs its builders, the build runner and its launcher, the target
//! interpreter's tags, wheel inspection, the Debian package lookup for shared libraries, and
//! the conversation with the master.

pub mod agent;
pub mod apt;
pub mod bounded;
pub mod builder;
pub mod config;
pub mod environment;
pub mod host;
pub mod inspect;
pub mod launcher;
pub mod python;
pub mod signals;
pub mod source;

pub use agent::{AgentError, Outcome, refuse_root, run};
pub use config::SlaveConfig;
