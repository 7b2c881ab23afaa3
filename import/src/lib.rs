//! Library part of the import crate; filled in as its programs are implemented.
