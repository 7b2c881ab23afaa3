//! piw-add: registers packages and versions. Not implemented in this version yet.

fn main() -> std::process::ExitCode {
    eprintln!("piw-add: not implemented in this version yet");
    std::process::ExitCode::from(2)
}
