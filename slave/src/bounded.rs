//! Running a helper program (`ldd`, the compiler's `--version`, the interpreter) with a
//! deadline and a cap on what is read of its output: a hung or chatty tool must not hold the
//! slave up.

use std::io::{self, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `command` with standard input from `/dev/null` and its errors dropped: its standard
/// output (at most `max_output` bytes) when it exits 0, None when it exits otherwise, an error
/// when it cannot run or does not finish within `timeout` (it is killed then).
pub fn output(command: &mut Command, max_output: u64, timeout: Duration) -> io::Result<Option<String>> {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut stdout = child.stdout.take().ok_or_else(|| io::Error::other("the output is not a pipe"))?;
    let (done, output) = mpsc::channel();
    let reader = std::thread::Builder::new().name("helper-output".into()).spawn(move || {
        let mut bytes = Vec::new();
        let result = stdout.by_ref().take(max_output).read_to_end(&mut bytes).map(|_| bytes);
        let _ = done.send(result);
    });
    if let Err(e) = reader {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    match output.recv_timeout(timeout) {
        Ok(read) => {
            let status = child.wait()?;
            let bytes = read?;
            Ok(status.success().then(|| String::from_utf8_lossy(&bytes).into_owned()))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {} s", timeout.as_secs())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_read_capped_and_a_hung_program_killed() {
        assert_eq!(output(Command::new("echo").arg("hello"), 100, Duration::from_secs(30)).unwrap(), Some("hello\n".into()));
        assert_eq!(output(Command::new("echo").arg("hello"), 3, Duration::from_secs(30)).unwrap(), Some("hel".into()));
        assert_eq!(output(&mut Command::new("false"), 100, Duration::from_secs(30)).unwrap(), None);
        let hung = output(Command::new("sleep").arg("600"), 100, Duration::from_millis(200)).unwrap_err();
        assert_eq!(hung.kind(), io::ErrorKind::TimedOut);
    }
}
