//! piw-initdb: creates the piwheels schema in an empty database, or upgrades an older one step
//! by step, grants the master's role what it needs, and declares the ABIs the farm builds
//! for. Run it as the database's owner.

use std::process::ExitCode;

use piwheels_common::config::{self, ConfigArg};
use piwheels_common::logging::{self, LogArgs};
use piwheels_master::db::migrate::{self, APP_GROUP_ROLE, SCHEMA_VERSION};

/// Create or upgrade the piwheels database schema. Safe to run again: a current database is
/// left as it is.
#[derive(clap::Parser, Debug)]
#[command(name = "piw-initdb", version)]
struct Args {
    #[command(flatten)]
    config: ConfigArg,

    #[command(flatten)]
    log: LogArgs,

    /// The database, as its owner (a role that may create tables and roles)
    #[arg(long, env = "PIW_INITDB_DSN", value_name = "URL", default_value = "postgres:///piwheels")]
    dsn: String,

    /// The role piw-master connects as; it must exist and must not be a superuser
    #[arg(long, env = "PIW_INITDB_USER", value_name = "ROLE", default_value = "piwheels")]
    user: String,

    /// An ABI the farm builds for, such as cp311 (CPython 3.11); repeat for more. ABIs already
    /// declared are kept; slaves of an undeclared ABI get no work [default: none added]
    #[arg(long = "abi", value_name = "TAG", value_parser = parse_abi)]
    abis: Vec<(String, i32)>,
}

/// `cpXY` or `cpXYZ` → the tag and its Python version (major * 100 + minor).
fn parse_abi(tag: &str) -> Result<(String, i32), String> {
    let digits = tag.strip_prefix("cp").filter(|d| (2..=3).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit()));
    let Some(digits) = digits else { return Err(format!("{tag:?} is not a CPython ABI tag such as cp311")) };
    let (major, minor) = digits.split_at(1);
    Ok((tag.to_string(), major.parse::<i32>().unwrap_or(0) * 100 + minor.parse::<i32>().unwrap_or(0)))
}

fn main() -> ExitCode {
    let args: Args = match config::parse("initdb") {
        Ok(args) => args,
        Err(e) => {
            eprintln!("piw-initdb: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(&args.log);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("piw-initdb: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("piw-initdb: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let mut conn = piwheels_master::db::connect_to(&args.dsn).await.map_err(|e| format!("cannot connect to {}: {e}", args.dsn))?;
    let report = migrate::upgrade(&mut conn, &args.user).await.map_err(|e| e.to_string())?;
    match report.from {
        None => println!("Created the piwheels schema, version {SCHEMA_VERSION}."),
        Some(from) if report.applied.is_empty() => println!("The schema is at version {from}, the current version; nothing to do."),
        Some(from) => println!("Upgraded the schema from version {from} to version {SCHEMA_VERSION}."),
    }
    for (version, name) in &report.applied {
        println!("  applied step {version}: {name}");
    }
    if report.granted {
        println!("Granted {APP_GROUP_ROLE} (the master's privileges) to role {}.", args.user);
    }
    for (tag, python) in &args.abis {
        let added = sqlx::query("INSERT INTO build_abis (abi_tag, python_version) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(tag)
            .bind(python)
            .execute(&mut conn)
            .await
            .map_err(|e| format!("cannot declare ABI {tag}: {e}"))?
            .rows_affected();
        if added > 0 {
            println!("Declared ABI {tag}.");
        } else {
            println!("ABI {tag} was declared already.");
        }
    }
    Ok(())
}
