//! piw-slave: builds wheels for its ABI and sends them to the master. Not implemented in this version yet.

fn main() -> std::process::ExitCode {
    eprintln!("piw-slave: not implemented in this version yet");
    std::process::ExitCode::from(2)
}
