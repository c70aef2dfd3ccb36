//! Token buckets per key (a partner): a burst, refilled at a steady rate.
//! Per process; replicas each allow their own share.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use sovra_runtime::clock::Millis;

#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_ms: f64,
    buckets: Mutex<HashMap<String, (f64, Millis)>>,
}

impl RateLimiter {
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: burst as f64,
            per_ms: per_minute as f64 / 60_000.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt for `key` at `now`, or says how long until one is free.
    pub fn take(&self, key: &str, now: Millis) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Full buckets carry no information; drop them rather than grow.
            let (burst, per_ms) = (self.burst, self.per_ms);
            buckets.retain(|_, (t, at)| *t + (now - *at) as f64 * per_ms < burst);
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        let refilled = (*tokens + (now - *at).max(0) as f64 * self.per_ms).min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            let wait_ms = ((1.0 - refilled) / self.per_ms).ceil() as u64;
            Err(Duration::from_millis(wait_ms.max(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let l = RateLimiter::new(3, 60);
        for _ in 0..3 {
            assert!(l.take("p", 0).is_ok());
        }
        let wait = l.take("p", 0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(1000));
        assert!(l.take("other", 0).is_ok(), "keys are independent");
        assert!(l.take("p", 1000).is_ok());
        assert!(l.take("p", 1000).is_err());
    }
}
