//! Rate limits on the unauthenticated auth endpoints, per client IP and per account.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Config;

/// Which limit a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    LoginPerIp,
    LoginPerAccount,
    RegisterPerIp,
    RegisterPerAccount,
    RefreshPerIp,
    RefreshPerAccount,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoginPerIp => "login_per_ip",
            Self::LoginPerAccount => "login_per_account",
            Self::RegisterPerIp => "register_per_ip",
            Self::RegisterPerAccount => "register_per_account",
            Self::RefreshPerIp => "refresh_per_ip",
            Self::RefreshPerAccount => "refresh_per_account",
        }
    }
}

/// Keyed token buckets, one per [`Limit`].
#[derive(Debug)]
pub struct RateLimits {
    login_ip: DefaultKeyedRateLimiter<String>,
    login_account: DefaultKeyedRateLimiter<String>,
    register_ip: DefaultKeyedRateLimiter<String>,
    register_account: DefaultKeyedRateLimiter<String>,
    refresh_ip: DefaultKeyedRateLimiter<String>,
    refresh_account: DefaultKeyedRateLimiter<String>,
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
        Self {
            login_ip: per_minute(config.login_rate_per_ip),
            login_account: per_minute(config.login_rate_per_account),
            register_ip: per_minute(config.register_rate_per_ip),
            register_account: per_minute(config.login_rate_per_account),
            refresh_ip: per_minute(config.refresh_rate_per_ip),
            refresh_account: per_minute((config.refresh_rate_per_ip / 5).max(5)),
            refusals: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    fn limiter(&self, limit: Limit) -> &DefaultKeyedRateLimiter<String> {
        match limit {
            Limit::LoginPerIp => &self.login_ip,
            Limit::LoginPerAccount => &self.login_account,
            Limit::RegisterPerIp => &self.register_ip,
            Limit::RegisterPerAccount => &self.register_account,
            Limit::RefreshPerIp => &self.refresh_ip,
            Limit::RefreshPerAccount => &self.refresh_account,
        }
    }

    /// Counts one request against `limit` for `key`; `Err(wait)` when over the limit.
    pub fn check(&self, limit: Limit, key: &str) -> Result<(), Duration> {
        self.limiter(limit)
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
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
            &self.login_account,
            &self.register_ip,
            &self.register_account,
            &self.refresh_ip,
            &self.refresh_account,
        ] {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sixth_login_of_an_account_within_a_minute_is_refused() {
        let limits = RateLimits::new(&Config::defaults());
        for _ in 0..5 {
            assert!(
                limits
                    .check(Limit::LoginPerAccount, "a@example.com")
                    .is_ok()
            );
        }
        let wait = limits.check(Limit::LoginPerAccount, "a@example.com").err();
        assert!(wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(12)));
        assert!(
            limits
                .check(Limit::LoginPerAccount, "b@example.com")
                .is_ok()
        );
    }
}
