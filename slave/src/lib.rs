//! piw-slave's parts: its configuration, the build runner, wheel inspection, the Debian
//! package lookup for shared libraries, and the conversation with the master.

pub mod apt;
pub mod builder;
pub mod inspect;
