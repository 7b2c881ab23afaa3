//! piw-import: uploads wheels built elsewhere. Not implemented in this version yet.

fn main() -> std::process::ExitCode {
    eprintln!("piw-import: not implemented in this version yet");
    std::process::ExitCode::from(2)
}
