//! piw-rebuild: rewrites index pages. Not implemented in this version yet.

fn main() -> std::process::ExitCode {
    eprintln!("piw-rebuild: not implemented in this version yet");
    std::process::ExitCode::from(2)
}
