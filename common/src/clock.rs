//! Time, injected: tasks read the time from a [`Clock`], so that tests can drive timers with a
//! [`FakeClock`] in milliseconds instead of waiting for minutes.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::protocols::Timestamp;

/// A source of monotonic and wall-clock time.
pub trait Clock: Send + Sync + Debug {
    /// Monotonic time, for timers and timeouts.
    fn now(&self) -> Instant;
    /// Wall-clock time, for records and messages.
    fn utc(&self) -> Timestamp;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn utc(&self) -> Timestamp {
        Utc::now()
    }
}

/// A clock that moves only when a test advances it.
#[derive(Debug, Clone)]
pub struct FakeClock {
    inner: Arc<FakeInner>,
}

#[derive(Debug)]
struct FakeInner {
    start: Instant,
    start_utc: Timestamp,
    offset: Mutex<Duration>,
}

impl FakeClock {
    /// A fake clock whose wall-clock time starts at `start_utc`.
    pub fn new(start_utc: Timestamp) -> Self {
        FakeClock { inner: Arc::new(FakeInner { start: Instant::now(), start_utc, offset: Mutex::new(Duration::ZERO) }) }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *self.offset() += by;
    }

    fn offset(&self) -> std::sync::MutexGuard<'_, Duration> {
        // A poisoned lock only means another test thread panicked; the value is still sound.
        self.inner.offset.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.inner.start + *self.offset()
    }

    fn utc(&self) -> Timestamp {
        let offset = chrono::Duration::from_std(*self.offset()).unwrap_or(chrono::Duration::MAX);
        self.inner.start_utc + offset
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_advanced() {
        let start = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let clock = FakeClock::new(start);
        let t0 = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), t0);
        assert_eq!(clock.utc(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - t0, Duration::from_secs(90));
        assert_eq!(clock.utc() - start, chrono::Duration::seconds(90));
    }
}
