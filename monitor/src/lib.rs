//! Library part of the monitor crate; filled in as its programs are implemented.
