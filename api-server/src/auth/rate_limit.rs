//! Rate limits on the unauthenticated auth endpoints: attempts per client IP and account, and
//! failed password checks per account.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Config;

/// How many times the per-account-and-IP failure limit one account may fail from all
/// addresses together. Above 1 so that failures from one address never lock the owner out
/// from another: one address is held to the per-account-and-IP rate, a tenth of this.
pub const ACCOUNT_FAILURES_FACTOR: u32 = 10;

/// Which limit a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Login attempts from one address.
    LoginPerIp,
    /// Failed password checks (login, password change) of one account from one address.
    LoginFailuresPerAccountIp,
    /// Failed password checks of one account from all addresses.
    LoginFailuresPerAccount,
    RegisterPerIp,
    RegisterPerAccount,
    RefreshPerIp,
    RefreshPerAccount,
    /// Password-reset redemptions from one address (at the login rate): a reset token is a
    /// credential.
    PasswordResetPerIp,
    /// Connection checks of dynamic secrets (each one a login attempt on a database) by one
    /// organization: enough to set some up, too few to guess a database's password through
    /// coffer-server.
    DynamicChecksPerOrg,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoginPerIp => "login_per_ip",
            Self::LoginFailuresPerAccountIp => "login_failures_per_account_ip",
            Self::LoginFailuresPerAccount => "login_failures_per_account",
            Self::RegisterPerIp => "register_per_ip",
            Self::RegisterPerAccount => "register_per_account",
            Self::RefreshPerIp => "refresh_per_ip",
            Self::RefreshPerAccount => "refresh_per_account",
            Self::PasswordResetPerIp => "password_reset_per_ip",
            Self::DynamicChecksPerOrg => "dynamic_checks_per_org",
        }
    }
}

/// Keyed token buckets of `burst` tokens refilled at one per `interval`, from which a token
/// can be taken ahead and given back: failures are counted by taking a token before the
/// password is checked and giving it back when it was right, so that concurrent guesses
/// cannot all pass a check made before any of them failed.
#[derive(Debug)]
struct Buckets {
    interval: Duration,
    burst: u32,
    /// Per key, when its bucket is full again (GCRA's theoretical arrival time); keys whose
    /// bucket is full are absent.
    full_at: Mutex<HashMap<String, Instant>>,
}

impl Buckets {
    fn per_minute(n: u32) -> Self {
        let n = n.max(1);
        Self {
            interval: Duration::from_secs(60) / n,
            burst: n,
            full_at: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.full_at.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a token from `key`'s bucket; `Err(wait)` when it is empty.
    fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut map = self.lock();
        let full_at = map.get(key).copied().filter(|t| *t > now).unwrap_or(now);
        let next = full_at + self.interval;
        let limit = now + self.interval * self.burst;
        if next > limit {
            return Err(next - limit);
        }
        map.insert(key.to_owned(), next);
        Ok(())
    }

    /// Returns a token taken from `key`'s bucket.
    fn give_back(&self, key: &str, now: Instant) {
        let mut map = self.lock();
        if let Some(full_at) = map.get_mut(key) {
            match full_at.checked_sub(self.interval) {
                Some(earlier) if earlier > now => *full_at = earlier,
                _ => {
                    map.remove(key);
                }
            }
        }
    }

    /// Forgets the buckets that are full again.
    fn prune(&self, now: Instant) {
        let mut map = self.lock();
        map.retain(|_, full_at| *full_at > now);
        map.shrink_to_fit();
    }
}

/// A refusal: which limit, for which key, and how long until it would pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub limit: Limit,
    pub key: String,
    pub retry_after: Duration,
}

/// A password check's share of the failure limits, taken before the check. Dropped, it is
/// given back (the password was right, or was never checked); [`FailureReservation::failed`]
/// keeps it spent.
#[derive(Debug)]
#[must_use = "dropping the reservation gives the tokens back at once"]
pub struct FailureReservation<'a> {
    limits: &'a RateLimits,
    account_ip: String,
    account: String,
}

impl FailureReservation<'_> {
    /// The password was wrong: the failure counts.
    pub fn failed(self) {
        std::mem::forget(self);
    }
}

impl Drop for FailureReservation<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        self.limits
            .failures_account_ip
            .give_back(&self.account_ip, now);
        self.limits.failures_account.give_back(&self.account, now);
    }
}

/// Keyed limits, one per [`Limit`].
#[derive(Debug)]
pub struct RateLimits {
    login_ip: DefaultKeyedRateLimiter<String>,
    failures_account_ip: Buckets,
    failures_account: Buckets,
    register_ip: DefaultKeyedRateLimiter<String>,
    register_account: DefaultKeyedRateLimiter<String>,
    refresh_ip: DefaultKeyedRateLimiter<String>,
    refresh_account: DefaultKeyedRateLimiter<String>,
    password_reset_ip: DefaultKeyedRateLimiter<String>,
    dynamic_checks: DefaultKeyedRateLimiter<String>,
    /// Keys refused recently, so that a refusal is audited once per window, not per request.
    refusals: moka::sync::Cache<(Limit, String), ()>,
}

fn per_minute(n: u32) -> DefaultKeyedRateLimiter<String> {
    RateLimiter::keyed(Quota::per_minute(
        NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN),
    ))
}

impl RateLimits {
    pub fn new(config: &Config) -> Self {
        let per_account = config.login_rate_per_account;
        Self {
            login_ip: per_minute(config.login_rate_per_ip),
            failures_account_ip: Buckets::per_minute(per_account),
            failures_account: Buckets::per_minute(
                per_account.saturating_mul(ACCOUNT_FAILURES_FACTOR),
            ),
            register_ip: per_minute(config.register_rate_per_ip),
            register_account: per_minute(per_account),
            refresh_ip: per_minute(config.refresh_rate_per_ip),
            refresh_account: per_minute((config.refresh_rate_per_ip / 5).max(5)),
            password_reset_ip: per_minute(config.login_rate_per_ip),
            dynamic_checks: per_minute(config.dynamic_checks_per_minute),
            refusals: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    /// Counts one request against `limit` for `key`; `Err(wait)` when over the limit. On a
    /// failure limit this counts one failure, given no chance to be taken back (see
    /// [`RateLimits::reserve_failure`]).
    pub fn check(&self, limit: Limit, key: &str) -> Result<(), Duration> {
        let limiter = match limit {
            Limit::LoginPerIp => &self.login_ip,
            Limit::RegisterPerIp => &self.register_ip,
            Limit::RegisterPerAccount => &self.register_account,
            Limit::RefreshPerIp => &self.refresh_ip,
            Limit::RefreshPerAccount => &self.refresh_account,
            Limit::PasswordResetPerIp => &self.password_reset_ip,
            Limit::DynamicChecksPerOrg => &self.dynamic_checks,
            Limit::LoginFailuresPerAccountIp => {
                return self.failures_account_ip.take(key, Instant::now());
            }
            Limit::LoginFailuresPerAccount => {
                return self.failures_account.take(key, Instant::now());
            }
        };
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Takes one failure of `account` from `ip` ahead of a password check, from the
    /// account-and-address bucket and the account's bucket; refused when either is empty.
    pub fn reserve_failure(
        &self,
        account: &str,
        ip: &str,
    ) -> Result<FailureReservation<'_>, Refused> {
        self.reserve_failure_at(account, ip, Instant::now())
    }

    fn reserve_failure_at(
        &self,
        account: &str,
        ip: &str,
        now: Instant,
    ) -> Result<FailureReservation<'_>, Refused> {
        // Emails hold no spaces, so the pair cannot collide with another.
        let account_ip = format!("{account} {ip}");
        self.failures_account_ip
            .take(&account_ip, now)
            .map_err(|retry_after| Refused {
                limit: Limit::LoginFailuresPerAccountIp,
                key: account_ip.clone(),
                retry_after,
            })?;
        if let Err(retry_after) = self.failures_account.take(account, now) {
            self.failures_account_ip.give_back(&account_ip, now);
            return Err(Refused {
                limit: Limit::LoginFailuresPerAccount,
                key: account.to_owned(),
                retry_after,
            });
        }
        Ok(FailureReservation {
            limits: self,
            account_ip,
            account: account.to_owned(),
        })
    }

    /// True for the first refusal of `key` under `limit` within a minute.
    pub fn first_refusal(&self, limit: Limit, key: &str) -> bool {
        self.refusals
            .entry((limit, key.to_owned()))
            .or_insert(())
            .is_fresh()
    }

    /// Forgets buckets that are full again, bounding memory under many distinct keys.
    pub fn prune(&self) {
        for l in [
            &self.login_ip,
            &self.register_ip,
            &self.register_account,
            &self.refresh_ip,
            &self.refresh_account,
            &self.password_reset_ip,
        ] {
            l.retain_recent();
            l.shrink_to_fit();
        }
        let now = Instant::now();
        self.failures_account_ip.prune(now);
        self.failures_account.prune(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_account: u32) -> RateLimits {
        let mut config = Config::defaults();
        config.login_rate_per_account = per_account;
        RateLimits::new(&config)
    }

    #[test]
    fn the_sixth_registration_of_an_email_within_a_minute_is_refused() {
        let limits = RateLimits::new(&Config::defaults());
        for _ in 0..5 {
            assert!(
                limits
                    .check(Limit::RegisterPerAccount, "a@example.com")
                    .is_ok()
            );
        }
        let wait = limits
            .check(Limit::RegisterPerAccount, "a@example.com")
            .err();
        assert!(wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(12)));
        assert!(
            limits
                .check(Limit::RegisterPerAccount, "b@example.com")
                .is_ok()
        );
    }

    #[test]
    fn a_bucket_refills_one_token_per_interval() {
        let b = Buckets::per_minute(5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(b.take("k", t0), Ok(()));
        }
        assert_eq!(b.take("k", t0), Err(Duration::from_secs(12)));
        assert_eq!(
            b.take("k", t0 + Duration::from_secs(5)),
            Err(Duration::from_secs(7))
        );
        assert_eq!(b.take("k", t0 + Duration::from_secs(12)), Ok(()));
        assert!(b.take("k", t0 + Duration::from_secs(12)).is_err());
        assert_eq!(b.take("other", t0), Ok(()));
        b.prune(t0 + Duration::from_secs(61));
        assert_eq!(b.take("k", t0 + Duration::from_secs(61)), Ok(()));
    }

    #[test]
    fn a_token_given_back_can_be_taken_again_and_a_full_bucket_is_forgotten() {
        let b = Buckets::per_minute(2);
        let t0 = Instant::now();
        b.take("k", t0).ok();
        b.take("k", t0).ok();
        assert!(b.take("k", t0).is_err());
        b.give_back("k", t0);
        assert_eq!(b.take("k", t0), Ok(()));
        b.give_back("k", t0);
        b.give_back("k", t0);
        b.give_back("k", t0);
        assert!(b.lock().is_empty(), "a full bucket holds no memory");
    }

    #[test]
    fn a_right_password_spends_nothing_and_a_wrong_one_counts() {
        let limits = limits(2);
        let t0 = Instant::now();
        for _ in 0..10 {
            let ok = limits.reserve_failure_at("a@example.com", "192.0.2.1", t0);
            assert!(ok.is_ok(), "a right password is never refused");
        }
        for _ in 0..2 {
            limits
                .reserve_failure_at("a@example.com", "192.0.2.1", t0)
                .map(FailureReservation::failed)
                .unwrap_or_else(|r| panic!("{r:?}"));
        }
        let refused = limits
            .reserve_failure_at("a@example.com", "192.0.2.1", t0)
            .err();
        assert_eq!(
            refused.map(|r| (r.limit, r.key)),
            Some((
                Limit::LoginFailuresPerAccountIp,
                "a@example.com 192.0.2.1".to_owned()
            ))
        );
        // The same account from another address, and another account from this one, go on.
        assert!(
            limits
                .reserve_failure_at("a@example.com", "192.0.2.2", t0)
                .is_ok()
        );
        assert!(
            limits
                .reserve_failure_at("b@example.com", "192.0.2.1", t0)
                .is_ok()
        );
    }

    #[test]
    fn failures_from_many_addresses_lock_the_account_at_ten_times_the_rate() {
        let limits = limits(1);
        let t0 = Instant::now();
        for i in 0..10 {
            limits
                .reserve_failure_at("a@example.com", &format!("192.0.2.{i}"), t0)
                .map(FailureReservation::failed)
                .unwrap_or_else(|r| panic!("{r:?}"));
        }
        let refused = limits
            .reserve_failure_at("a@example.com", "198.51.100.1", t0)
            .err();
        assert_eq!(
            refused.map(|r| r.limit),
            Some(Limit::LoginFailuresPerAccount)
        );
        // The refusal took nothing from the new address's own bucket.
        assert!(
            limits
                .failures_account_ip
                .lock()
                .get("a@example.com 198.51.100.1")
                .is_none()
        );
    }

    #[test]
    fn concurrent_checks_cannot_all_pass_before_any_of_them_fails() {
        let limits = limits(3);
        let t0 = Instant::now();
        let held: Vec<_> = (0..3)
            .map(|_| limits.reserve_failure_at("a@example.com", "192.0.2.1", t0))
            .collect();
        assert!(held.iter().all(Result::is_ok));
        assert!(
            limits
                .reserve_failure_at("a@example.com", "192.0.2.1", t0)
                .is_err()
        );
        drop(held);
    }
}
