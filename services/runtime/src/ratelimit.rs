//! Token buckets per key (a partner): a burst, refilled at a steady rate.
//! Per process; replicas each allow their own share.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use crate::{clock::Millis, config::LimitSettings, ids::TenantId, Error};

/// The limits on mutating calls: one bucket per partner, and one per
/// partner and customer, so one busy customer can't use up its partner's
/// whole allowance and one partner can't crowd out the others.
#[derive(Debug)]
pub struct MutationLimits {
    partner: RateLimiter,
    customer: RateLimiter,
}

impl MutationLimits {
    pub fn new(s: &LimitSettings) -> Self {
        Self {
            partner: RateLimiter::new(s.partner_burst, s.partner_per_minute),
            customer: RateLimiter::new(s.customer_burst, s.customer_per_minute),
        }
    }

    /// [`MutationLimits::take`] on the wall clock (limits run on real time,
    /// whatever clock the business rules use).
    pub fn check(&self, partner: &TenantId, customer: Option<&TenantId>) -> Result<(), Error> {
        use crate::clock::Clock;
        self.take(
            partner.as_str(),
            customer.map(TenantId::as_str),
            crate::clock::SystemClock.now_ms(),
        )
    }

    /// Takes one mutating call for `partner` (and `customer`, when the call
    /// acts on one), or RESOURCE_EXHAUSTED with how long to wait.
    pub fn take(&self, partner: &str, customer: Option<&str>, now: Millis) -> Result<(), Error> {
        if let Some(c) = customer {
            self.customer
                .take(&format!("{partner}/{c}"), now)
                .map_err(|wait| {
                    Error::resource_exhausted(
                        "CUSTOMER_RATE_LIMITED",
                        format!(
                            "too many changes by partner `{partner}` on customer `{c}`; retry in {} ms",
                            wait.as_millis()
                        ),
                        wait,
                    )
                })?;
        }
        self.partner.take(partner, now).map_err(|wait| {
            Error::resource_exhausted(
                "PARTNER_RATE_LIMITED",
                format!(
                    "too many changes by partner `{partner}`; retry in {} ms",
                    wait.as_millis()
                ),
                wait,
            )
        })
    }
}

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
    fn a_customer_bucket_runs_out_before_its_partners() {
        let l = MutationLimits::new(&LimitSettings {
            partner_burst: 3,
            partner_per_minute: 60,
            customer_burst: 2,
            customer_per_minute: 60,
        });
        assert!(l.take("p", Some("c1"), 0).is_ok());
        assert!(l.take("p", Some("c1"), 0).is_ok());
        let e = l.take("p", Some("c1"), 0).unwrap_err();
        assert_eq!(e.reason, "CUSTOMER_RATE_LIMITED");
        assert!(e.retry_after.is_some());
        assert!(
            l.take("p", Some("c2"), 0).is_ok(),
            "another customer has its own bucket"
        );
        let e = l.take("p", None, 0).unwrap_err();
        assert_eq!(e.reason, "PARTNER_RATE_LIMITED");
        assert!(
            l.take("q", None, 0).is_ok(),
            "another partner has its own bucket"
        );
    }

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
