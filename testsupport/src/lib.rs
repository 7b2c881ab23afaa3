//! Test helpers shared by the workspace's crates. Nothing here is used outside tests.

pub mod data;
pub mod db;
pub mod installers;
pub mod programs;
pub mod pypi;
