//! The one retry schedule: a first wait, doubled after each further failure,
//! up to a cap; and, in one place, the schedule of every retry loop.
//!
//! The loops themselves stay where they are: some sleep (blocking or async),
//! others schedule a retry time and go on working, so what is shared is the
//! arithmetic and the constants, not a retry combinator.

use std::time::Duration;

/// A doubling wait: `first`, `2 × first`, `4 × first`, … never above `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl Backoff {
    /// A schedule from `first` up to `cap`.
    pub const fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff { first, cap }
    }

    /// The wait after `doublings` doublings of `first`, at most `cap`.
    /// Callers count failures from 0 or 1 as their loop reads best; the
    /// constants below say which.
    pub fn delay(&self, doublings: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << doublings.min(20))
            .min(self.cap)
    }
}

const fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// The engine's producer resending records without an acknowledgement,
/// by attempt (1, 2, …): 200 ms to 3.2 s.
pub const OUTBOX_RESEND: Backoff = Backoff::new(ms(100), ms(3_200));
/// A source partition that failed to read, by consecutive failures (1, 2, …):
/// 200 ms to 1.6 s (a reader must notice a returning broker soon).
pub const SOURCE_READ: Backoff = Backoff::new(ms(100), ms(1_600));
/// Kafka's producer queue full: polled again after 200 µs to 10 ms while
/// delivery reports free room (by waits so far, from 0).
pub const PRODUCER_QUEUE_FULL: Backoff = Backoff::new(Duration::from_micros(200), ms(10));
/// A ClickHouse write that failed, by consecutive failures (1, 2, …): 200 ms to 5 s.
pub const CLICKHOUSE_WRITE: Backoff = Backoff::new(ms(100), ms(5_000));
/// Connecting to ClickHouse or to the Kafka cluster at start, by
/// consecutive failures (1, 2, …): 500 ms to 5 s.
pub const CONNECT: Backoff = Backoff::new(ms(250), ms(5_000));
/// Reading the alerts topic at start while it cannot be read: every 500 ms.
pub const ALERTS_READ_BACK: Backoff = Backoff::new(ms(500), ms(500));
/// A webhook delivery's retries start at the policy's first backoff and
/// never wait longer than this.
pub const WEBHOOK_CAP: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_first_to_the_cap() {
        let backoff = Backoff::new(ms(100), ms(1_000));
        let waits: Vec<u64> = (0..6)
            .map(|n| backoff.delay(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(backoff.delay(u32::MAX), ms(1_000), "no overflow");
        assert_eq!(ALERTS_READ_BACK.delay(7), ms(500), "a fixed wait");
    }

    #[test]
    fn the_schedules_are_the_ones_documented() {
        assert_eq!(OUTBOX_RESEND.delay(1), ms(200));
        assert_eq!(OUTBOX_RESEND.delay(9), ms(3_200));
        assert_eq!(SOURCE_READ.delay(1), ms(200));
        assert_eq!(SOURCE_READ.delay(9), ms(1_600));
        assert_eq!(CLICKHOUSE_WRITE.delay(1), ms(200));
        assert_eq!(CLICKHOUSE_WRITE.delay(9), ms(5_000));
        assert_eq!(CONNECT.delay(1), ms(500));
        assert_eq!(CONNECT.delay(9), ms(5_000));
        assert_eq!(PRODUCER_QUEUE_FULL.delay(0), Duration::from_micros(200));
        assert_eq!(PRODUCER_QUEUE_FULL.delay(9), ms(10));
    }
}
