//! piw-monitor: shows and controls a running master. Not implemented in this version yet.

fn main() -> std::process::ExitCode {
    eprintln!("piw-monitor: not implemented in this version yet");
    std::process::ExitCode::from(2)
}
