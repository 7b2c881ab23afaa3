//! Library part of the slave crate; filled in as its programs are implemented.
