//! Per-source throttles: how often a source address gets a log line, and how fast it may guess
//! passwords. Logic only; the caller passes the time.
//!
//! ## Job
//! - [`LogThrottle`]: a stranger opening thousands of garbage connections a second must not turn
//!   into thousands of WARN lines a second. Each source gets one line per kind of event per
//!   interval; the next line says how many were left out meanwhile. (Per kind, so that a flood of
//!   garbage does not hide the one certificate of another CA that an admin must see.)
//! - [`AuthThrottle`]: a wrong password from a source makes every later `AUTH` from that source
//!   wait, longer after each failure (100 ms doubling to 5 s), one attempt at a time across all of
//!   the source's connections; once the queue is [`MAX_AUTH_QUEUE`] deep, attempts are refused
//!   without checking the password. A source forgiven after [`AUTH_FORGET_AFTER`] without a
//!   failure starts afresh. That bounds online guessing to about one password per 5 s per
//!   source address, as `fail2ban` would, without locking out other addresses.
//!
//! ## Invariants
//! - Both tables hold at most [`MAX_SOURCES`] addresses and one shared entry: when full, entries
//!   older than their interval go, and if none has, further sources share that one entry (the
//!   unspecified address), so a flood from many addresses is throttled as one rather than growing
//!   the table.
//! - Nothing here sleeps or reads the clock; the connection waits for the instant it is given.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One log line per source per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Most addresses a throttle remembers.
pub const MAX_SOURCES: usize = 4096;
/// Wait before the next `AUTH` after the first wrong password; it doubles with each failure.
pub const AUTH_FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait added by one failure.
pub const AUTH_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A source whose attempts are queued this far ahead is refused at once.
pub const MAX_AUTH_QUEUE: Duration = Duration::from_secs(10);
/// A source without a failure for this long is forgotten.
pub const AUTH_FORGET_AFTER: Duration = Duration::from_secs(60);

/// The key shared by sources that do not fit a table.
trait Overflow {
    const OVERFLOW: Self;
}

impl Overflow for IpAddr {
    const OVERFLOW: Self = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
}

impl Overflow for (IpAddr, u64) {
    const OVERFLOW: Self = (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters only: a panicked holder leaves nothing half-done that matters.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The address a source is counted under: itself, or for IPv6 its /64, which one host usually
/// has whole (so it could otherwise take 2^64 fresh entries).
pub fn source_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// The entry of `source`, making room as the module docs say.
fn entry<K: Eq + std::hash::Hash + Copy + Overflow, T>(
    table: &mut HashMap<K, T>,
    source: K,
    stale: impl Fn(&T) -> bool,
    fresh: impl FnOnce() -> T,
) -> &mut T {
    let key = if table.contains_key(&source) || table.len() < MAX_SOURCES {
        source
    } else {
        table.retain(|_, value| !stale(value));
        if table.len() < MAX_SOURCES {
            source
        } else {
            K::OVERFLOW
        }
    };
    table.entry(key).or_insert_with(fresh)
}

#[derive(Debug)]
struct Logged {
    last: Instant,
    suppressed: u64,
}

/// One log line per source per [`LOG_INTERVAL`].
#[derive(Debug, Default)]
pub struct LogThrottle {
    sources: Mutex<HashMap<(IpAddr, u64), Logged>>,
}

impl LogThrottle {
    /// Whether an event of `kind` from `source` at `now` is logged: `Some(n)` with the number of
    /// such events left out since its last line, or `None` to leave this one out. `kind` should
    /// not hold what changes from one connection to the next (ports, offsets).
    pub fn admit(&self, source: IpAddr, kind: &str, now: Instant) -> Option<u64> {
        let source = (source_key(source), xxhash_rust::xxh3::xxh3_64(kind.as_bytes()));
        let mut sources = lock(&self.sources);
        let stale = |logged: &Logged| now.duration_since(logged.last) >= LOG_INTERVAL;
        let mut fresh = false;
        let logged = entry(&mut sources, source, stale, || {
            fresh = true;
            Logged { last: now, suppressed: 0 }
        });
        if fresh {
            return Some(0);
        }
        if now.duration_since(logged.last) >= LOG_INTERVAL {
            let suppressed = std::mem::take(&mut logged.suppressed);
            logged.last = now;
            Some(suppressed)
        } else {
            logged.suppressed += 1;
            None
        }
    }
}

#[derive(Debug)]
struct Failures {
    count: u32,
    last_failure: Instant,
    /// When the next attempt may be checked.
    next_attempt: Instant,
}

/// What a source's `AUTH` attempt must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Check the password now.
    Now,
    /// Wait until then, then check it.
    At(Instant),
    /// Too many attempts queued: refuse without checking; the source may retry after this long.
    Refuse(Duration),
}

/// Backoff of `AUTH` per source after wrong passwords (see the module docs).
#[derive(Debug, Default)]
pub struct AuthThrottle {
    sources: Mutex<HashMap<IpAddr, Failures>>,
}

impl AuthThrottle {
    /// Takes a turn for an attempt from `source` at `now`.
    pub fn attempt(&self, source: IpAddr, now: Instant) -> AuthVerdict {
        let source = source_key(source);
        let mut sources = lock(&self.sources);
        let forgotten = match sources.get(&source) {
            None => return AuthVerdict::Now,
            Some(failures) => now.duration_since(failures.last_failure) >= AUTH_FORGET_AFTER,
        };
        if forgotten {
            sources.remove(&source);
            return AuthVerdict::Now;
        }
        let Some(failures) = sources.get_mut(&source) else { return AuthVerdict::Now };
        let start = failures.next_attempt.max(now);
        if start.duration_since(now) > MAX_AUTH_QUEUE {
            return AuthVerdict::Refuse(start.duration_since(now));
        }
        failures.next_attempt = start + backoff(failures.count);
        if start <= now {
            AuthVerdict::Now
        } else {
            AuthVerdict::At(start)
        }
    }

    /// Records a wrong password from `source` at `now`.
    pub fn failed(&self, source: IpAddr, now: Instant) {
        let source = source_key(source);
        let mut sources = lock(&self.sources);
        let stale = |failures: &Failures| now.duration_since(failures.last_failure) >= AUTH_FORGET_AFTER;
        let failures =
            entry(&mut sources, source, stale, || Failures { count: 0, last_failure: now, next_attempt: now });
        failures.count = failures.count.saturating_add(1);
        failures.last_failure = now;
        failures.next_attempt = failures.next_attempt.max(now + backoff(failures.count));
    }
}

/// The wait added after `failures` wrong passwords.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    AUTH_FIRST_BACKOFF.saturating_mul(1 << doublings).min(AUTH_MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn one_log_line_per_source_per_interval_with_the_count_left_out() {
        let throttle = LogThrottle::default();
        let start = Instant::now();
        assert_eq!(throttle.admit(ip(1), "garbage", start), Some(0));
        for i in 1..=500 {
            assert_eq!(throttle.admit(ip(1), "garbage", start + Duration::from_millis(i)), None);
        }
        assert_eq!(throttle.admit(ip(2), "garbage", start), Some(0), "another source has its own line");
        assert_eq!(throttle.admit(ip(1), "unknown CA", start), Some(0), "another kind has its own line");
        assert_eq!(throttle.admit(ip(1), "garbage", start + LOG_INTERVAL), Some(500));
        assert_eq!(throttle.admit(ip(1), "garbage", start + LOG_INTERVAL), None);
    }

    #[test]
    fn a_flood_of_sources_does_not_grow_the_table() {
        let throttle = LogThrottle::default();
        let now = Instant::now();
        let mut logged = 0;
        for i in 0..(MAX_SOURCES as u32 + 1000) {
            let source = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            logged += usize::from(throttle.admit(source, "garbage", now).is_some());
        }
        assert_eq!(throttle.sources.lock().unwrap().len(), MAX_SOURCES + 1);
        assert_eq!(logged, MAX_SOURCES + 1, "the overflow shares one line");
    }

    #[test]
    fn wrong_passwords_slow_the_source_down_and_only_it() {
        let throttle = AuthThrottle::default();
        let start = Instant::now();
        assert_eq!(throttle.attempt(ip(1), start), AuthVerdict::Now);
        throttle.failed(ip(1), start);
        // The next attempt waits; so does one queued behind it on another connection.
        assert_eq!(throttle.attempt(ip(1), start), AuthVerdict::At(start + AUTH_FIRST_BACKOFF));
        assert_eq!(throttle.attempt(ip(1), start), AuthVerdict::At(start + AUTH_FIRST_BACKOFF * 2));
        assert_eq!(throttle.attempt(ip(2), start), AuthVerdict::Now);
        for _ in 0..10 {
            throttle.failed(ip(1), start);
        }
        let mut refused = false;
        for _ in 0..10 {
            refused |= matches!(throttle.attempt(ip(1), start), AuthVerdict::Refuse(_));
        }
        assert!(refused, "a deep queue is refused without checking");
        // Forgiven after a quiet minute.
        assert_eq!(throttle.attempt(ip(1), start + AUTH_FORGET_AFTER), AuthVerdict::Now);
        assert_eq!(backoff(1), AUTH_FIRST_BACKOFF);
        let v6 = |text: &str| source_key(text.parse().unwrap());
        assert_eq!(v6("2001:db8:1:2:3:4:5:6"), v6("2001:db8:1:2:ffff::1"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(v6("::ffff:10.0.0.1"), ip(1));
        assert_eq!(backoff(40), AUTH_MAX_BACKOFF);
    }
}
