//! piw-logger: sends web-server access logs to the master. Not implemented in this version yet.

fn main() -> std::process::ExitCode {
    eprintln!("piw-logger: not implemented in this version yet");
    std::process::ExitCode::from(2)
}
