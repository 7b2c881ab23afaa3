//! The schema's versions and how piw-initdb moves a database to the current one.
//!
//! Each file in `migrations/` takes the schema from one version to the next; its number is the
//! version it creates. A database records its version in `configuration.schema_version`.
//! Upgrading applies the missing steps in order, each in its own transaction; a database newer
//! than this software is refused; a current one is left alone.

use sqlx::{Connection, Executor, PgConnection, Row};

/// One step of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version this step creates.
    pub version: i32,
    /// What it does.
    pub name: &'static str,
    /// Its SQL.
    pub sql: &'static str,
}

/// Every step, in order. A test checks that each file in `migrations/` is listed here.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "initial schema", sql: include_str!("../../../migrations/0001_initial.sql") },
    Migration {
        version: 2,
        name: "pending rewrites name the transaction that asked",
        sql: include_str!("../../../migrations/0002_rewrite_requests.sql"),
    },
    Migration { version: 3, name: "build logs kept with their builds", sql: include_str!("../../../migrations/0003_build_output.sql") },
    Migration { version: 4, name: "releases pinned to their source's hash", sql: include_str!("../../../migrations/0004_pinned_sources.sql") },
    Migration { version: 5, name: "file names keep their bytes, builds their provenance", sql: include_str!("../../../migrations/0005_verifiable_wheels.sql") },
    Migration { version: 6, name: "reproducibility cross-checks", sql: include_str!("../../../migrations/0006_cross_checks.sql") },
    Migration { version: 7, name: "Debian packages every image has", sql: include_str!("../../../migrations/0007_preinstalled_baseline.sql") },
    Migration { version: 8, name: "failed builds triaged by cause", sql: include_str!("../../../migrations/0008_failure_triage.sql") },
    Migration { version: 9, name: "running totals for the home page and search", sql: include_str!("../../../migrations/0009_running_totals.sql") },
    Migration { version: 10, name: "the build queue remembers what each release waits on", sql: include_str!("../../../migrations/0010_queue_hint.sql") },
];

/// The schema version this software works with.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The group role holding the master's privileges.
pub const APP_GROUP_ROLE: &str = "piwheels_app";

/// Why the database cannot be initialised or upgraded.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database's schema is newer than this software.
    #[error("the database's schema is version {found}, newer than this software knows (version {known}); upgrade the software first")]
    Newer {
        /// Its version.
        found: i32,
        /// Ours.
        known: i32,
    },
    /// The database holds tables but no piwheels schema.
    #[error("the database is not empty but has no piwheels schema (found table {0}); use an empty database")]
    Foreign(String),
    /// The application role is unusable.
    #[error("{0}")]
    Role(String),
    /// A statement failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: String,
        /// The error.
        source: sqlx::Error,
    },
}

fn sql_err(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> MigrateError {
    let context = context.into();
    move |source| MigrateError::Sql { context, source }
}

/// What [`upgrade`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The version found (None for an empty database).
    pub from: Option<i32>,
    /// The version now.
    pub to: i32,
    /// The steps applied, in order.
    pub applied: Vec<(i32, &'static str)>,
    /// Whether the application role was newly made a member of the group role.
    pub granted: bool,
}

/// The schema version of the database, None when it has no piwheels schema.
pub async fn schema_version(conn: &mut PgConnection) -> Result<Option<i32>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('public.configuration') IS NOT NULL").fetch_one(&mut *conn).await?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT schema_version FROM configuration").fetch_optional(&mut *conn).await
}

/// Brings the database to [`SCHEMA_VERSION`] and grants `app_role` the master's privileges.
/// `conn` must be the database owner's (or a superuser's) connection; `app_role` must exist
/// and must not be a superuser.
pub async fn upgrade(conn: &mut PgConnection, app_role: &str) -> Result<Report, MigrateError> {
    check_app_role(conn, app_role).await?;
    // Two piw-initdb runs at once must not both apply the same step.
    conn.execute("SELECT pg_advisory_lock(7361626)").await.map_err(sql_err("cannot lock the schema"))?;
    let result = upgrade_locked(conn, app_role).await;
    let _ = conn.execute("SELECT pg_advisory_unlock(7361626)").await;
    result
}

async fn upgrade_locked(conn: &mut PgConnection, app_role: &str) -> Result<Report, MigrateError> {
    let from = schema_version(conn).await.map_err(sql_err("cannot read the schema version"))?;
    if from.is_none()
        && let Some(table) = sqlx::query_scalar::<_, String>("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(sql_err("cannot list tables"))?
    {
        return Err(MigrateError::Foreign(table));
    }
    let current = from.unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(MigrateError::Newer { found: current, known: SCHEMA_VERSION });
    }
    let mut applied = Vec::new();
    for step in MIGRATIONS.iter().filter(|m| m.version > current) {
        let mut tx = conn.begin().await.map_err(sql_err("cannot start a transaction"))?;
        tx.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(step.sql)))
            .await
            .map_err(sql_err(format!("step {} ({}) failed", step.version, step.name)))?;
        sqlx::query("UPDATE configuration SET schema_version = $1")
            .bind(step.version)
            .execute(&mut *tx)
            .await
            .map_err(sql_err("cannot record the schema version"))?;
        tx.commit().await.map_err(sql_err(format!("step {} ({}) failed to commit", step.version, step.name)))?;
        applied.push((step.version, step.name));
    }
    let granted = grant_app_role(conn, app_role).await?;
    grant_temporary(conn).await?;
    Ok(Report { from, to: SCHEMA_VERSION, applied, granted })
}

/// Lets [`APP_GROUP_ROLE`] create temporary objects in this database, as the master's
/// connections do (see `Database::connect`), even where the privilege was revoked from
/// `PUBLIC`. Granting it again changes nothing.
async fn grant_temporary(conn: &mut PgConnection) -> Result<(), MigrateError> {
    let database: String =
        sqlx::query_scalar("SELECT current_database()::text").fetch_one(&mut *conn).await.map_err(sql_err("cannot name the database"))?;
    let ident = quote_ident(&database);
    conn.execute(sqlx::AssertSqlSafe(format!("GRANT TEMPORARY ON DATABASE {ident} TO {APP_GROUP_ROLE}")))
        .await
        .map_err(sql_err(format!("cannot grant TEMPORARY on {database} to {APP_GROUP_ROLE}")))?;
    Ok(())
}

async fn check_app_role(conn: &mut PgConnection, app_role: &str) -> Result<(), MigrateError> {
    let row = sqlx::query("SELECT rolsuper, rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(app_role)
        .fetch_optional(&mut *conn)
        .await
        .map_err(sql_err("cannot look up roles"))?;
    match row {
        None => Err(MigrateError::Role(format!("role {app_role} does not exist; create it first (e.g. createuser {app_role})"))),
        Some(row) if row.get::<bool, _>("rolsuper") => Err(MigrateError::Role(format!(
            "role {app_role} is a superuser; the master must connect as an ordinary role"
        ))),
        Some(_) => Ok(()),
    }
}

/// [`upgrade`] from synchronous code: connects to `owner_url` and brings that database to the
/// current schema (tests and benchmarks set up their databases with it).
pub fn upgrade_blocking(owner_url: &str, app_role: &str) -> Result<Report, MigrateError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| MigrateError::Role(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        let mut conn = super::connect_to(owner_url).await.map_err(sql_err(format!("cannot connect to {owner_url}")))?;
        upgrade(&mut conn, app_role).await
    })
}

/// Makes `app_role` a member of [`APP_GROUP_ROLE`]; true if it was not already.
async fn grant_app_role(conn: &mut PgConnection, app_role: &str) -> Result<bool, MigrateError> {
    let member: bool = sqlx::query_scalar("SELECT pg_has_role($1, $2, 'MEMBER')")
        .bind(app_role)
        .bind(APP_GROUP_ROLE)
        .fetch_one(&mut *conn)
        .await
        .map_err(sql_err("cannot check role membership"))?;
    if member {
        return Ok(false);
    }
    let ident = quote_ident(app_role);
    conn.execute(sqlx::AssertSqlSafe(format!("GRANT {APP_GROUP_ROLE} TO {ident}")))
        .await
        .map_err(sql_err(format!("cannot grant {APP_GROUP_ROLE} to {app_role}")))?;
    Ok(true)
}

/// Quotes an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
