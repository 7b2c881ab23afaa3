//! The database: its schema migrations ([`migrate`]) and the [`Database`] connection that an
//! oracle owns and answers [`DbRequest`](crate::calls::db::DbRequest)s with
//! ([`requests`]). Only the oracles talk to PostgreSQL while the master runs.

pub mod feed;
pub mod migrate;
pub mod project;
pub mod queue;
pub mod requests;
pub mod sources;
pub mod triage;

use std::time::Duration;

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};

/// PostgreSQL's SQLSTATE for a missing privilege.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// One connection to the farm's database.
#[derive(Debug)]
pub struct Database {
    conn: PgConnection,
}

/// The database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connecting failed.
    #[error("cannot connect to the database: {0}")]
    Connect(sqlx::Error),
    /// The schema is not the one this software knows.
    #[error("the database's schema is version {found}, this software needs version {wanted}; run piw-initdb")]
    SchemaVersion {
        /// The database's version (0 for none).
        found: i32,
        /// Ours.
        wanted: i32,
    },
    /// The session's functions could not be made: the role lacks the TEMPORARY privilege on
    /// the database, which PostgreSQL gives every role by default and piw-initdb grants.
    #[error("cannot create the session's log_build function ({0}); the master's role needs the TEMPORARY privilege on the database (piw-initdb grants it)")]
    SessionFunction(sqlx::Error),
    /// A query failed.
    #[error(transparent)]
    Query(#[from] sqlx::Error),
}

impl DbError {
    /// Whether the server ended the connection (see [`Database::is_connection_ended_by_server`]).
    pub fn is_connection_ended_by_server(&self) -> bool {
        match self {
            DbError::Connect(e) | DbError::SessionFunction(e) | DbError::Query(e) => Database::is_connection_ended_by_server(e),
            DbError::SchemaVersion { .. } => false,
        }
    }
}

/// Opens a connection to the database at `url`. A URL that names no role (`postgres:///piwheels`,
/// the default) connects as the system user's namesake, as psql does: left to itself, sqlx asks
/// a library that answers "anonymous" on Linux. `PGUSER` still decides when it is set.
pub async fn connect_to(url: &str) -> Result<PgConnection, sqlx::Error> {
    let mut options = PgConnectOptions::from_str(url)?;
    if !names_a_role(url)
        && std::env::var_os("PGUSER").is_none()
        && let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::getuid())
    {
        options = options.username(&user.name);
    }
    PgConnection::connect_with(&options).await
}

/// Whether a database URL says which role to connect as (`postgres://role@...`, `?user=`).
fn names_a_role(url: &str) -> bool {
    match url::Url::parse(url) {
        Ok(parsed) => !parsed.username().is_empty() || parsed.query_pairs().any(|(key, _)| key == "user"),
        // Not a URL: sqlx will say what is wrong with it.
        Err(_) => true,
    }
}

impl Database {
    /// Connects to `url`, checks the schema version, and makes every statement give up after
    /// `statement_timeout` so that a stuck query cannot hold an oracle forever.
    pub async fn connect(url: &str, statement_timeout: Duration) -> Result<Database, DbError> {
        let mut conn = connect_to(url).await.map_err(DbError::Connect)?;
        let found = migrate::schema_version(&mut conn).await?.unwrap_or(0);
        if found != migrate::SCHEMA_VERSION {
            return Err(DbError::SchemaVersion { found, wanted: migrate::SCHEMA_VERSION });
        }
        let ms = statement_timeout.as_millis().max(1);
        conn.execute(sqlx::AssertSqlSafe(format!("SET statement_timeout = {ms}"))).await?;
        conn.execute("SET TIME ZONE 'UTC'").await?;
        requests::make_session_functions(&mut conn).await.map_err(|e| match e {
            sqlx::Error::Database(ref db) if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) => DbError::SessionFunction(e),
            other => DbError::Query(other),
        })?;
        Ok(Database { conn })
    }

    /// Whether the connection's role is a superuser (the master must not be one).
    pub async fn is_superuser(&mut self) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetch_one(&mut self.conn).await
    }

    /// Up to `limit` package names after `after`, in the database's order: the consistency
    /// check reads the farm a slice at a time, so that its memory does not grow with the farm.
    pub async fn packages_after(&mut self, after: &str, limit: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT package FROM packages WHERE package > $1 ORDER BY package LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&mut self.conn)
            .await
    }

    /// The recorded files of `packages`, as (package, file name, its build when it has signed
    /// provenance): what the consistency check compares the tree with.
    pub async fn recorded_files(&mut self, packages: &[String]) -> Result<Vec<(String, String, Option<i64>)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT b.package, f.filename, CASE WHEN b.started_at IS NOT NULL THEN b.build_id END \
             FROM builds b JOIN files f USING (build_id) WHERE b.package = ANY($1) ORDER BY b.package, f.filename",
        )
        .bind(packages)
        .fetch_all(&mut self.conn)
        .await
    }

    /// Which of `filenames` are recorded, under any package.
    pub async fn recorded_among(&mut self, filenames: &[String]) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT filename FROM files WHERE filename = ANY($1)").bind(filenames).fetch_all(&mut self.conn).await
    }

    /// Up to `limit` builds after the build `after` whose log the database keeps, as (build
    /// id, package), by id.
    pub async fn logged_builds_after(&mut self, after: i64, limit: i64) -> Result<Vec<(i64, String)>, sqlx::Error> {
        sqlx::query_as("SELECT build_id, b.package FROM output JOIN builds b USING (build_id) WHERE build_id > $1 ORDER BY build_id LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&mut self.conn)
            .await
    }

    /// A build's log, if the database keeps it.
    pub async fn build_output(&mut self, build_id: i64) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT output FROM output WHERE build_id = $1").bind(build_id).fetch_optional(&mut self.conn).await
    }

    /// Whether an error means the connection is gone, so the next request must reconnect.
    pub fn is_connection_lost(err: &sqlx::Error) -> bool {
        match err {
            sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed => true,
            // 08: connection exceptions; 57P: the server is shutting down or killed us.
            sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        }
    }

    /// Whether the server said it ended the connection (an administrator's command, a
    /// shutdown, a restart: SQLSTATE class 57P).
    pub fn is_connection_ended_by_server(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P")))
    }

    /// Checks that the connection still works, with a round trip that changes nothing.
    pub async fn ping(&mut self) -> Result<(), sqlx::Error> {
        sqlx::Connection::ping(&mut self.conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_its_role_by_its_user_or_its_user_parameter() {
        for named in ["postgres://piwheels@db.example/piwheels", "postgres:///piwheels?user=piwheels", "postgres://a:b@/x?host=/run"] {
            assert!(names_a_role(named), "{named}");
        }
        for unnamed in ["postgres:///piwheels", "postgres://db.example:5432/piwheels", "postgres:///piwheels?host=/var/run/postgresql"] {
            assert!(!names_a_role(unnamed), "{unnamed}");
        }
    }
}
