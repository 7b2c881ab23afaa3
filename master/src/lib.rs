//! The piwheels master: the tasks that follow PyPI, queue and record builds, receive files and
//! write the index, and the process that supervises them. `docs/architecture.md` maps the
//! modules; each task's module says what it owns and which sockets it binds.

pub mod access_log;
pub mod atomic_file;
pub mod architect;
pub mod big_brother;
pub mod calls;
pub mod cloud_gazer;
pub mod consistency;
pub mod cross_check;
pub mod db;
pub mod config;
pub mod db_client;
pub mod drift;
pub mod file_juggler;
pub mod gatekeeper;
pub mod index;
pub mod key_tool;
pub mod lumberjack;
pub mod metrics;
pub mod mr_chase;
pub mod oracle;
pub mod pidlock;
pub mod process;
pub mod removal;
pub mod pypi;
pub mod seraph;
pub mod signing;
pub mod slave_driver;
pub mod slave_state;
pub mod source_pinner;
pub mod triage;
pub mod web_access;
pub mod web_server;
pub mod wiring;

pub use config::MasterConfig;
pub use process::{Stopped, run};
