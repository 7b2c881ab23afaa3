//! piw-initdb: creates or upgrades the database schema. Not implemented in this version yet.

fn main() -> std::process::ExitCode {
    eprintln!("piw-initdb: not implemented in this version yet");
    std::process::ExitCode::from(2)
}
