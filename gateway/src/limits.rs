//! What one client may take: call rates (token buckets) and things held at once
//! (calls in flight, connections).
//!
//! Both are keyed maps kept in memory, so each has a bound of its own: an idle bucket
//! is full, and a full bucket is the same as none, so buckets are dropped as soon as
//! they refill and memory pressure asks; a holder's entry goes with its last guard.
//! A refusal is immediate and says when to retry: nothing here ever waits.
//!
//! These limits are per gateway replica. They protect the services behind it from one
//! client; the limits that must hold exactly across replicas (failed logins, quotas)
//! live with the services' data.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tonic::Status;

/// At most this many clients are tracked per bucket set. Past it, buckets that have
/// refilled are dropped; if every one is still in use, new clients are refused (an
/// attacker with more addresses than this must not make the gateway forget the limits
/// of the ones it already has).
const MAX_TRACKED_CLIENTS: usize = 100_000;

/// A rate with a burst, as configured: `30/m,burst=30` (30 a minute, up to 30 at
/// once), units `s`, `m`, `h`; or `off`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateLimit {
    Off,
    Every {
        /// Tokens added per second.
        per_second: f64,
        /// Bucket size: calls allowed back to back after a quiet period.
        burst: u32,
    },
}

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid rate {0:?}: expected `<count>/<s|m|h>[,burst=<n>]` (e.g. `30/m,burst=30`) or `off`"
)]
pub struct BadRateLimit(String);

impl FromStr for RateLimit {
    type Err = BadRateLimit;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadRateLimit(text.to_owned());
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        let (rate, burst) = match text.split_once(',') {
            Some((rate, burst)) => (rate, Some(burst.trim())),
            None => (text, None),
        };
        let (count, unit) = rate.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let seconds = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        let burst = match burst {
            Some(burst) => burst
                .strip_prefix("burst=")
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(bad)?,
            None => count,
        };
        if count == 0 || burst == 0 {
            return Err(bad());
        }
        Ok(Self::Every {
            per_second: f64::from(count) / seconds,
            burst,
        })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Every { per_second, burst } => {
                write!(f, "{per_second:.3}/s,burst={burst}")
            }
        }
    }
}

/// Why a call was refused, and when the client may try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub retry_after: Duration,
}

impl Refusal {
    fn new(message: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            message: message.into(),
            retry_after,
        }
    }

    /// Whole seconds, rounded up and at least one: what `retry-after` says.
    pub fn retry_after_seconds(&self) -> u64 {
        let whole = self.retry_after.as_secs();
        let seconds = if self.retry_after.subsec_nanos() > 0 {
            whole + 1
        } else {
            whole
        };
        seconds.max(1)
    }

    /// RESOURCE_EXHAUSTED with `retry-after` metadata.
    pub fn into_status(self) -> Status {
        let seconds = self.retry_after_seconds();
        let mut status =
            Status::resource_exhausted(format!("{}; try again in {seconds} s", self.message));
        if let Ok(value) = seconds.to_string().parse() {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }
}

/// One token bucket per key.
pub struct TokenBuckets<K> {
    limit: RateLimit,
    /// What is being limited, for the refusal's message ("logins from this address").
    what: &'static str,
    buckets: Mutex<HashMap<K, Bucket>>,
    max_keys: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, per_second: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.updated = now;
    }
}

impl<K: Hash + Eq + Clone> TokenBuckets<K> {
    pub fn new(limit: RateLimit, what: &'static str) -> Self {
        Self::with_capacity(limit, what, MAX_TRACKED_CLIENTS)
    }

    fn with_capacity(limit: RateLimit, what: &'static str, max_keys: usize) -> Self {
        Self {
            limit,
            what,
            buckets: Mutex::new(HashMap::new()),
            max_keys,
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until there is one.
    pub fn take(&self, key: &K) -> Result<(), Refusal> {
        self.take_at(key, Instant::now())
    }

    fn take_at(&self, key: &K, now: Instant) -> Result<(), Refusal> {
        let RateLimit::Every { per_second, burst } = self.limit else {
            return Ok(());
        };
        let burst = f64::from(burst);
        let mut buckets = lock(&self.buckets);
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            buckets.retain(|_, bucket| {
                bucket.refill(now, per_second, burst);
                bucket.tokens < burst
            });
            if buckets.len() >= self.max_keys {
                tracing::warn!(what = self.what, "rate limiter full; refusing new clients");
                refused(self.what);
                return Err(Refusal::new(
                    format!("too many clients are making {} right now", self.what),
                    Duration::from_secs(1),
                ));
            }
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        bucket.refill(now, per_second, burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / per_second);
        refused(self.what);
        Err(Refusal::new(format!("too many {}", self.what), wait))
    }
}

/// Counts a refusal by the gateway's limits, by what was limited.
pub fn refused(what: &'static str) {
    metrics::counter!(
        "strongbox_rate_limited_total",
        "component" => "gateway",
        "reason" => what,
    )
    .increment(1);
}

/// Counts what each key holds at once (calls in flight, open connections); a guard
/// gives its unit back when dropped.
pub struct Holdings<K: Hash + Eq> {
    limit: usize,
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq + Clone> Holdings<K> {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// One more for `key`, unless it already holds the limit.
    pub fn try_hold(&self, key: &K) -> Option<Held<K>> {
        let mut counts = lock(&self.counts);
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Held {
            key: key.clone(),
            counts: self.counts.clone(),
        })
    }

    /// How many keys hold anything (for tests: entries must not outlive their guards).
    pub fn keys(&self) -> usize {
        lock(&self.counts).len()
    }
}

/// One unit held by a key; dropping it gives the unit back.
pub struct Held<K: Hash + Eq> {
    key: K,
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq> Drop for Held<K> {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The maps are only ever updated whole under the lock, so a panic elsewhere cannot
/// leave one half-written: a poisoned lock is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(per_second: f64, burst: u32) -> RateLimit {
        RateLimit::Every { per_second, burst }
    }

    #[test]
    fn rates_parse_with_and_without_a_burst() {
        assert_eq!("off".parse::<RateLimit>().unwrap(), RateLimit::Off);
        assert_eq!("30/m".parse::<RateLimit>().unwrap(), every(0.5, 30));
        assert_eq!(
            "60/h,burst=30".parse::<RateLimit>().unwrap(),
            every(60.0 / 3600.0, 30)
        );
        assert_eq!(
            " 100/s , burst=500 ".parse::<RateLimit>().unwrap(),
            every(100.0, 500)
        );
        for bad in ["", "30", "30/d", "0/s", "x/s", "10/s,burst=0", "10/s,30"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_one_call_per_interval() {
        let buckets = TokenBuckets::new(every(2.0, 3), "calls");
        let start = Instant::now();
        for _ in 0..3 {
            buckets.take_at(&"a", start).unwrap();
        }
        let refusal = buckets.take_at(&"a", start).unwrap_err();
        assert_eq!(refusal.retry_after, Duration::from_millis(500));
        assert_eq!(refusal.retry_after_seconds(), 1);
        // Another key has its own bucket.
        buckets.take_at(&"b", start).unwrap();
        // Half a second later one token is back, and only one.
        let later = start + Duration::from_millis(500);
        buckets.take_at(&"a", later).unwrap();
        assert!(buckets.take_at(&"a", later).is_err());
    }

    #[test]
    fn a_full_tracker_forgets_refilled_buckets_before_refusing_anyone() {
        let buckets = TokenBuckets::with_capacity(every(1.0, 1), "calls", 2);
        let start = Instant::now();
        buckets.take_at(&1, start).unwrap();
        buckets.take_at(&2, start).unwrap();
        // Both buckets are empty and tracked: a third client is refused, not forgotten.
        assert!(buckets.take_at(&3, start).is_err());
        // Once they have refilled they are dropped, and the newcomer gets a bucket.
        let later = start + Duration::from_secs(2);
        buckets.take_at(&3, later).unwrap();
        assert_eq!(lock(&buckets.buckets).len(), 1);
    }

    #[test]
    fn holdings_are_capped_per_key_and_given_back_on_drop() {
        let holdings = Holdings::new(2);
        let first = holdings.try_hold(&"a").unwrap();
        let _second = holdings.try_hold(&"a").unwrap();
        assert!(holdings.try_hold(&"a").is_none());
        assert!(holdings.try_hold(&"b").is_some());
        drop(first);
        let _third = holdings.try_hold(&"a").unwrap();
        drop(_second);
        drop(_third);
        assert_eq!(holdings.keys(), 0, "no entry outlives its guards");
    }

    #[test]
    fn a_refusal_is_resource_exhausted_with_retry_after() {
        let status = Refusal::new("too many logins", Duration::from_millis(1500)).into_status();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "2");
        assert!(status.message().contains("try again in 2 s"));
    }
}
