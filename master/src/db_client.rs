//! The database client every master task uses: typed calls through the load balancer to an
//! oracle, each with a deadline, so a stuck database gives the caller an error, not a hang.

use crate::calls::Caller;
use crate::calls::db::{DbReply, DbRequest};

/// A connection to the oracles: `call` any of [`crate::calls::db`]'s calls.
pub type DbClient = Caller<DbRequest, DbReply>;
