//! piw-remove: removes packages, versions or their builds. Not implemented in this version yet.

fn main() -> std::process::ExitCode {
    eprintln!("piw-remove: not implemented in this version yet");
    std::process::ExitCode::from(2)
}
