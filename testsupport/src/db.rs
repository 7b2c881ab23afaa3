//! Throwaway PostgreSQL databases: each test gets its own, so tests run in parallel, and the
//! database is dropped when the test ends.
//!
//! The server is the one `DATABASE_URL` names (default
//! `postgres://piw_test@127.0.0.1:5432/postgres`); its role must be able to create databases
//! and roles, and end other roles' connections (`pg_signal_backend`). `scripts/test.sh` makes
//! sure such a server runs, with that role and [`APP_ROLE`], whose passwords are in the file
//! `PGPASSFILE` names: the URLs carry none, so none shows in a process list.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};

/// The login role tests use as the master's application role: not a superuser, and with no
/// privileges until piw-initdb grants it the schema's group role.
pub const APP_ROLE: &str = "piw_test_app";

/// A superuser on the same server, with its password in the same password file, for the few
/// things tests must do that no other role may.
pub const SUPERUSER_ROLE: &str = "piw_test_super";

/// The server URL tests use.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://piw_test@127.0.0.1:5432/postgres".into())
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    server: PgConnectOptions,
    rt: tokio::runtime::Runtime,
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub fn new() -> TestDb {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!("piw_test_{}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos);
        let server = PgConnectOptions::from_str(&server_url()).expect("DATABASE_URL is not a valid PostgreSQL URL");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let db = TestDb { name, server, rt };
        db.admin(&format!("CREATE DATABASE {}", db.name));
        // Roles are cluster-wide: create the application role once, tolerating a race with
        // other tests doing the same.
        db.admin(&format!(
            "DO $$ BEGIN CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ));
        db
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// URL connecting as the server's (owner) role to this database: what piw-initdb uses.
    pub fn owner_url(&self) -> String {
        self.url_for(self.server.get_username())
    }

    /// URL connecting as [`SUPERUSER_ROLE`] to this database.
    pub fn superuser_url(&self) -> String {
        self.url_for(SUPERUSER_ROLE)
    }

    /// URL connecting as [`APP_ROLE`] to this database: what the master uses.
    pub fn app_url(&self) -> String {
        self.url_for(APP_ROLE)
    }

    fn url_for(&self, user: &str) -> String {
        format!("postgres://{user}@{}:{}/{}", self.server.get_host(), self.server.get_port(), self.name)
    }

    /// Runs SQL as the owner in this database (set-up and inspection in tests).
    pub fn execute(&self, sql: &str) {
        self.execute_at(&self.owner_url(), sql);
    }

    /// Runs SQL as [`SUPERUSER_ROLE`] in this database: only for what no other role may do,
    /// such as reaching into another session's temporary objects.
    pub fn execute_as_superuser(&self, sql: &str) {
        self.execute_at(&self.superuser_url(), sql);
    }

    fn execute_at(&self, url: &str, sql: &str) {
        self.rt.block_on(async {
            let mut conn = PgConnection::connect(url).await.expect("connect to the test database");
            conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        });
    }

    /// Runs a query as the owner and returns the first column of every row, which must be of a
    /// text type (cast it in the query: `x::text`).
    pub fn column(&self, sql: &str) -> Vec<Option<String>> {
        let url = self.owner_url();
        self.rt.block_on(async {
            let mut conn = PgConnection::connect(&url).await.expect("connect to the test database");
            let rows: Vec<(Option<String>,)> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string())).fetch_all(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.into_iter().map(|(v,)| v).collect()
        })
    }

    /// Ends every connection to this database except the caller's, as a server restart would.
    pub fn terminate_connections(&self) -> usize {
        let sql = format!("SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()", self.name);
        let rows: Vec<Option<String>> = self.rt.block_on(async {
            let mut conn = PgConnection::connect_with(&self.server).await.expect("connect to the server");
            let rows: Vec<(Option<String>,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&mut conn).await.expect("terminate");
            rows.into_iter().map(|(v,)| v).collect()
        });
        rows.len()
    }

    fn admin(&self, sql: &str) {
        self.rt.block_on(async {
            let mut conn = PgConnection::connect_with(&self.server).await.unwrap_or_else(|e| {
                panic!("cannot reach the test database server at {} (is PostgreSQL running? scripts/test.sh starts it): {e}", server_url())
            });
            conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        });
    }
}

impl Default for TestDb {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let server = self.server.clone();
        let _ = self.rt.block_on(async move {
            let mut conn = PgConnection::connect_with(&server).await?;
            conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql))).await
        });
    }
}
