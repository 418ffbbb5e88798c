//! Password hashing (argon2id) off the async runtime, under a concurrency limit, and the
//! password policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::error::ApiError;

pub const MIN_PASSWORD_CHARS: usize = 10;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub matches: bool,
    /// The hash was made with other parameters than the current ones: store a new hash.
    pub needs_rehash: bool,
}

/// Hashes and verifies passwords. Each hash needs `memory_kib` of memory, so at most `permits`
/// run at once; callers beyond `max_waiting` get 503 instead of queueing without bound.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    concurrency: usize,
    /// Hashes and checks refused (queue full, or no worker in time).
    refused: prometheus_client::metrics::counter::Counter,
    /// A hash of a random password with the current parameters, verified when an account is
    /// unknown so that the answer takes as long as for a wrong password.
    dummy_hash: Arc<String>,
    /// The parameters (m, t, p) of every hash argon2 verified, for the tests to see the work done.
    #[cfg(test)]
    verified_with: Arc<std::sync::Mutex<Vec<(u32, u32, u32)>>>,
}

impl PasswordHasher {
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        concurrency: usize,
    ) -> Result<Self, argon2::password_hash::Error> {
        let params = Params::new(memory_kib, iterations, 1, None)?;
        let concurrency = concurrency.max(1);
        let mut random = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let dummy = hash_with(&params, &hex::encode(random))?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(concurrency)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: concurrency * 64,
            concurrency,
            refused: prometheus_client::metrics::counter::Counter::default(),
            dummy_hash: Arc::new(dummy),
            #[cfg(test)]
            verified_with: Arc::default(),
        })
    }

    /// At most `n` callers wait for a permit; more get 503 at once.
    /// Hashes and checks running now, and waiting for a worker.
    pub fn queue(&self) -> (usize, usize) {
        let running = self
            .concurrency
            .saturating_sub(self.permits.available_permits());
        (running, self.waiting.load(Ordering::SeqCst))
    }

    /// The counter of hashes and checks refused (for the metrics).
    pub fn refusals(&self) -> prometheus_client::metrics::counter::Counter {
        self.refused.clone()
    }

    pub fn with_max_waiting(mut self, n: usize) -> Self {
        self.max_waiting = n;
        self
    }

    /// Runs `work` on the blocking pool once a permit is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        let permit = if queued >= self.max_waiting {
            Err(())
        } else {
            tokio::time::timeout(
                Duration::from_secs(20),
                self.permits.clone().acquire_owned(),
            )
            .await
            .map_err(|_| ())
            .and_then(|p| p.map_err(|_| ()))
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        if permit.is_err() {
            self.refused.inc();
        }
        let permit = permit.map_err(|()| ApiError::Unavailable {
            message: "the server is busy verifying passwords; try again shortly".into(),
            retry_after: Some(Duration::from_secs(2)),
        })?;
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(ApiError::internal)
    }

    /// A PHC-format argon2id hash of `password` with a fresh random salt.
    pub async fn hash(&self, password: &SecretString) -> Result<String, ApiError> {
        let params = self.params.clone();
        let password = password.clone();
        self.run(move || hash_with(&params, password.expose_secret()))
            .await?
            .map_err(|e| ApiError::internal(anyhow::anyhow!("password hashing failed: {e}")))
    }

    /// Checks `password` against `stored`; with `None` (or a stored hash that cannot be read)
    /// checks against a dummy hash made with the current parameters, and fails: every answer
    /// costs one argon2 verification, so unknown accounts cannot be told apart by time.
    pub async fn verify(
        &self,
        password: &SecretString,
        stored: Option<&str>,
    ) -> Result<Verified, ApiError> {
        let stored = stored.map(ToOwned::to_owned);
        let dummy = Arc::clone(&self.dummy_hash);
        let params = self.params.clone();
        let password = password.clone();
        #[cfg(test)]
        let verified_with = Arc::clone(&self.verified_with);
        self.run(move || {
            let stored = stored.as_deref().and_then(|s| PasswordHash::new(s).ok());
            let known = stored.is_some();
            let Some(hash) = stored.or_else(|| PasswordHash::new(&dummy).ok()) else {
                return Verified {
                    matches: false,
                    needs_rehash: false,
                };
            };
            #[cfg(test)]
            if let Ok(p) = Params::try_from(&hash) {
                verified_with
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((p.m_cost(), p.t_cost(), p.p_cost()));
            }
            // Always verify, then combine: `known && verify(…)` would skip the work.
            let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
            let correct = argon
                .verify_password(password.expose_secret().as_bytes(), &hash)
                .is_ok();
            let matches = known && correct;
            let needs_rehash = matches && !uses_params(&hash, &params);
            Verified {
                matches,
                needs_rehash,
            }
        })
        .await
    }
}

fn hash_with(params: &Params, password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    Ok(argon.hash_password(password.as_bytes(), &salt)?.to_string())
}

fn uses_params(hash: &PasswordHash<'_>, params: &Params) -> bool {
    let algorithm_ok =
        hash.algorithm == argon2::ARGON2ID_IDENT && hash.version == Some(Version::V0x13.into());
    let Ok(stored) = Params::try_from(hash) else {
        return false;
    };
    algorithm_ok
        && stored.m_cost() == params.m_cost()
        && stored.t_cost() == params.t_cost()
        && stored.p_cost() == params.p_cost()
}

/// The password policy: 10 to 128 characters and not guessable (zxcvbn score 3 or more,
/// counting the user's email and name as known words).
pub fn check_password_policy(password: &SecretString, context: &[&str]) -> Result<(), ApiError> {
    let password = password.expose_secret();
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(ApiError::validation(
            "weak_password",
            format!("password must have at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(ApiError::validation(
            "password_too_long",
            format!("password must have at most {MAX_PASSWORD_CHARS} characters"),
        ));
    }
    let estimate = zxcvbn::zxcvbn(password, context);
    if estimate.score() < zxcvbn::Score::Three {
        let hint = estimate
            .feedback()
            .and_then(|f| f.warning())
            .map(|w| format!(": {w}"))
            .unwrap_or_default();
        return Err(ApiError::validation(
            "weak_password",
            format!(
                "password is too easy to guess{hint}; use a longer passphrase or a password manager"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hasher = PasswordHasher::new(19_456, 2, 2).unwrap();
        let pw = SecretString::from("correct horse battery staple");
        let hash = hasher.hash(&pw).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(
            hasher.verify(&pw, Some(&hash)).await.unwrap(),
            Verified {
                matches: true,
                needs_rehash: false
            }
        );
        let wrong = SecretString::from("correct horse battery stapler");
        assert!(!hasher.verify(&wrong, Some(&hash)).await.unwrap().matches);
        assert!(!hasher.verify(&pw, None).await.unwrap().matches);
    }

    #[tokio::test]
    async fn unknown_accounts_and_unreadable_hashes_cost_one_verification_with_the_current_parameters()
     {
        let hasher = PasswordHasher::new(19_456, 3, 1).unwrap();
        let pw = SecretString::from("correct horse battery staple");
        let hash = hasher.hash(&pw).await.unwrap();
        assert!(hasher.verify(&pw, Some(&hash)).await.unwrap().matches);
        assert!(!hasher.verify(&pw, None).await.unwrap().matches);
        assert!(
            !hasher
                .verify(&pw, Some("not a PHC string"))
                .await
                .unwrap()
                .matches
        );
        let known = SecretString::from("the dummy's password is never known");
        assert!(!hasher.verify(&known, None).await.unwrap().matches);
        assert_eq!(
            *hasher.verified_with.lock().unwrap(),
            vec![(19_456, 3, 1); 4],
            "every check ran argon2 once, with the parameters of a real hash"
        );
    }

    #[tokio::test]
    async fn a_hash_made_with_weaker_parameters_asks_for_a_rehash() {
        let old = PasswordHasher::new(19_456, 2, 1).unwrap();
        let new = PasswordHasher::new(19_456, 3, 1).unwrap();
        let pw = SecretString::from("correct horse battery staple");
        let hash = old.hash(&pw).await.unwrap();
        assert_eq!(
            new.verify(&pw, Some(&hash)).await.unwrap(),
            Verified {
                matches: true,
                needs_rehash: true
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_beyond_the_queue_is_turned_away_with_503_not_queued_without_bound() {
        let hasher = PasswordHasher::new(19_456, 2, 1)
            .unwrap()
            .with_max_waiting(2);
        let pw = SecretString::from("correct horse battery staple");
        let hash = hasher.hash(&pw).await.unwrap();
        let attempts = (0..12).map(|_| {
            let (hasher, pw, hash) = (hasher.clone(), pw.clone(), hash.clone());
            tokio::spawn(async move { hasher.verify(&pw, Some(&hash)).await })
        });
        let results = futures::future::join_all(attempts).await;
        let busy = results
            .iter()
            .filter(|r| matches!(r, Ok(Err(ApiError::Unavailable { .. }))))
            .count();
        let verified = results
            .iter()
            .filter(|r| matches!(r, Ok(Ok(v)) if v.matches))
            .count();
        assert!(busy >= 1, "nobody was turned away");
        assert!(verified >= 1, "nobody was served");
        assert_eq!(busy + verified, 12);
    }

    #[test]
    fn the_policy_refuses_short_long_and_guessable_passwords() {
        let check =
            |p: &str| check_password_policy(&SecretString::from(p), &["ann@example.com", "Ann"]);
        assert!(check("short").is_err());
        assert!(check(&"x".repeat(129)).is_err());
        assert!(check("password123").is_err());
        assert!(check("ann@example.com1").is_err());
        assert!(check("correct horse battery staple").is_ok());
    }
}
