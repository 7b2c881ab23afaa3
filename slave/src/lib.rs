//! piw-slave
