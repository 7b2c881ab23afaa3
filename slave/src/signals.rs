//! The signals a process of piw-slave acts on, read on a thread of their own: blocked in the
//! calling thread (and so in every thread it starts later) and read from a signalfd, so that
//! they never interrupt the work.

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::agent::AgentError;

/// Blocks `signals` and starts the thread that hands each one that arrives to `handle`, until
/// `handle` returns false. Call it from the main thread before any other thread exists.
pub fn watch(signals: &[Signal], mut handle: impl FnMut(Signal) -> bool + Send + 'static) -> Result<(), AgentError> {
    let mut mask = SigSet::empty();
    for signal in signals {
        mask.add(*signal);
    }
    mask.thread_block().map_err(|e| AgentError::Setup(format!("cannot block signals: {e}")))?;
    let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(|e| AgentError::Setup(format!("cannot create a signalfd: {e}")))?;
    // Its lines carry the caller's span (a builder's number).
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let _span = span.entered();
            loop {
                match fd.read_signal() {
                    Ok(Some(info)) => {
                        let Ok(signal) = Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) else { continue };
                        if !handle(signal) {
                            return;
                        }
                    }
                    Ok(None) | Err(Errno::EINTR) => {}
                    Err(e) => {
                        tracing::error!("cannot read signals: {e}");
                        return;
                    }
                }
            }
        })
        .map_err(|e| AgentError::Setup(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}
