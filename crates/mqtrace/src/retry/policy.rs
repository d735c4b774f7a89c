//! [`RetryPolicy`]: attempts, backoff and jitter, and the [`Decision`] it makes.

use super::error::{ErrorClass, HandlerError};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// What to do with a message after its handler ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Acknowledge: processing succeeded.
    Ack,
    /// Deliver again after `delay`, as attempt `next_attempt`.
    Retry {
        /// How long to wait before the next attempt.
        delay: Duration,
        /// The attempt number the next delivery will carry.
        next_attempt: u32,
    },
    /// Send to the dead-letter destination, with the reason recorded.
    DeadLetter {
        /// Why, recorded on the span and in the dead-lettered message's headers.
        reason: String,
    },
}

/// Attempts, backoff and jitter.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// let p = mqtrace::retry::RetryPolicy::exponential(5)
///     .with_initial_delay(Duration::from_millis(200))
///     .with_multiplier(2.0)
///     .with_max_delay(Duration::from_secs(1))
///     .with_jitter(0.0);
/// assert_eq!(p.delay_for(1), Duration::from_millis(200));
/// assert_eq!(p.delay_for(2), Duration::from_millis(400));
/// assert_eq!(p.delay_for(4), Duration::from_secs(1)); // capped
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: f64,
}

impl RetryPolicy {
    /// Up to `max_attempts` deliveries in all (1 = no retry), exponential backoff from 1 s,
    /// doubling, capped at 5 minutes, with 20 % jitter.
    ///
    /// ```
    /// assert_eq!(mqtrace::retry::RetryPolicy::exponential(3).max_attempts(), 3);
    /// ```
    pub fn exponential(max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }

    /// The delay before the second attempt.
    ///
    /// ```
    /// let _ = mqtrace::retry::RetryPolicy::exponential(3).with_initial_delay(std::time::Duration::from_millis(50));
    /// ```
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// The longest delay.
    ///
    /// ```
    /// let _ = mqtrace::retry::RetryPolicy::exponential(3).with_max_delay(std::time::Duration::from_secs(10));
    /// ```
    pub fn with_max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How much each delay grows over the one before (at least 1).
    ///
    /// ```
    /// let _ = mqtrace::retry::RetryPolicy::exponential(3).with_multiplier(3.0);
    /// ```
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Randomises each delay by up to this fraction either way (0 = none, clamped to 0..=1),
    /// so retries of a burst do not arrive together.
    ///
    /// ```
    /// let _ = mqtrace::retry::RetryPolicy::exponential(3).with_jitter(0.5);
    /// ```
    pub fn with_jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Deliveries allowed in all.
    ///
    /// ```
    /// assert_eq!(mqtrace::retry::RetryPolicy::exponential(0).max_attempts(), 1);
    /// ```
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay after failed attempt `attempt` (1-based), before jitter is applied by
    /// [`RetryPolicy::decide`].
    ///
    /// ```
    /// let p = mqtrace::retry::RetryPolicy::exponential(3).with_jitter(0.0);
    /// assert_eq!(p.delay_for(1), std::time::Duration::from_secs(1));
    /// ```
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.powi(exp);
        let capped = secs.min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max_delay)
    }

    /// The longest delay this policy ever asks for: the delay before its last attempt with
    /// the most jitter, capped at the maximum delay (zero when it never retries). A copy is
    /// never held longer than this, whatever its `mqtrace-not-before` says.
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = mqtrace::retry::RetryPolicy::exponential(3)
    ///     .with_initial_delay(Duration::from_millis(100))
    ///     .with_jitter(0.0);
    /// assert_eq!(p.longest_delay(), Duration::from_millis(200)); // before attempt 3
    /// assert_eq!(mqtrace::retry::RetryPolicy::exponential(1).longest_delay(), Duration::ZERO);
    /// ```
    pub fn longest_delay(&self) -> Duration {
        if self.max_attempts <= 1 {
            return Duration::ZERO;
        }
        let last = self.delay_for(self.max_attempts - 1);
        let secs = (last.as_secs_f64() * (1.0 + self.jitter)).min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay)
    }

    fn jittered(&self, delay: Duration) -> Duration {
        if self.jitter == 0.0 {
            return delay;
        }
        // A uniform draw in [-1, 1) from the standard library's randomly keyed hasher.
        let mut h = RandomState::new().build_hasher();
        h.write_u64(delay.as_nanos() as u64);
        let unit = (h.finish() >> 11) as f64 / (1_u64 << 53) as f64;
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        let secs = (delay.as_secs_f64() * factor).min(self.max_delay.as_secs_f64());
        Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(delay)
    }

    /// Turns a handler's result for delivery `attempt` into a decision.
    ///
    /// ```
    /// use mqtrace::retry::{Decision, HandlerError, RetryPolicy};
    /// let p = RetryPolicy::exponential(5);
    /// let d = p.decide(2, &Err(HandlerError::permanent("no items")));
    /// assert_eq!(d, Decision::DeadLetter { reason: "permanent failure: no items".into() });
    /// ```
    pub fn decide(&self, attempt: u32, result: &Result<(), HandlerError>) -> Decision {
        match result {
            Ok(()) => Decision::Ack,
            Err(e) if e.class() == ErrorClass::Permanent => Decision::DeadLetter {
                reason: format!("permanent failure: {e}"),
            },
            Err(e) if attempt >= self.max_attempts => Decision::DeadLetter {
                reason: format!(
                    "gave up after {attempt} of {} attempts: {e}",
                    self.max_attempts
                ),
            },
            Err(_) => Decision::Retry {
                delay: self.jittered(self.delay_for(attempt)),
                next_attempt: attempt.saturating_add(1),
            },
        }
    }
}
