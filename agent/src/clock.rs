//! The clock the agent's own deadlines run on: monotonic time that stands still while the
//! sandbox is paused.
//!
//! A paused sandbox's monotonic clock keeps counting (gVisor's across a checkpoint and
//! restore, the host's across a freeze), so a command timeout that spent an hour paused
//! would fire the moment the sandbox resumed. The node's `pause` request stops this clock
//! (`pause`), and the `hello` that starts the next session (or a reconnect after a pause)
//! starts it again (`resume`): the time between counts for no deadline. The agent's wait for
//! that next session has no deadline of its own.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Lock;

pub struct Clock {
    state: Mutex<State>,
}

struct State {
    origin: Instant,
    /// Time spent paused, in earlier pauses.
    paused_total: Duration,
    /// When the pause under way began.
    paused_at: Option<Instant>,
}

impl Clock {
    pub fn new() -> Clock {
        Clock { state: Mutex::new(State { origin: Instant::now(), paused_total: Duration::ZERO,
                                          paused_at: None }) }
    }

    /// Time the sandbox has run since the agent started, paused time left out; it does not
    /// move while paused.
    pub fn now(&self) -> Duration {
        let state = self.state.locked();
        let at = state.paused_at.unwrap_or_else(Instant::now);
        at.saturating_duration_since(state.origin).saturating_sub(state.paused_total)
    }

    /// Stop the clock (a second pause before a resume changes nothing).
    pub fn pause(&self) {
        let mut state = self.state.locked();
        if state.paused_at.is_none() {
            state.paused_at = Some(Instant::now());
        }
    }

    /// Start it again; the time since `pause` is left out of `now` from here on.
    pub fn resume(&self) {
        let mut state = self.state.locked();
        if let Some(at) = state.paused_at.take() {
            let gap = Instant::now().saturating_duration_since(at);
            state.paused_total = state.paused_total.saturating_add(gap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paused_time_does_not_count() {
        let clock = Clock::new();
        std::thread::sleep(Duration::from_millis(20));
        clock.pause();
        let at_pause = clock.now();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(clock.now(), at_pause, "the clock moved while paused");
        clock.pause(); // a second pause is nothing
        clock.resume();
        let after = clock.now();
        assert!(after >= at_pause && after < at_pause + Duration::from_millis(30), "{after:?}");
        clock.resume(); // and so is a second resume
        std::thread::sleep(Duration::from_millis(20));
        assert!(clock.now() >= after + Duration::from_millis(20));
    }
}
