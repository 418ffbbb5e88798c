//! The renew deadline of a leader: a replica that cannot confirm it still holds the lease stops
//! its controllers before the lease it last saw could have expired, so that it never acts while
//! another replica may have taken over (client-go's `RenewDeadline`).
//!
//! The lease manager renews the lease and reports when leadership changes, but while the API
//! server cannot be reached it keeps reporting the last state it knew: a leader cut off from the
//! API server would go on acting after a standby took over. The watchdog reads the lease itself
//! and ends the controllers once the last lease it saw (renewal time plus duration, less a margin
//! for clock skew) runs out unless a newer renewal was seen.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;

/// How often the leader reads its lease.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Taken off the lease's end, for clock skew between replicas (and the time a check takes).
pub const SKEW_MARGIN: Duration = Duration::from_secs(2);

/// What one reading of the lease says about `identity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// `identity` holds it for this much longer, by the lease's own times.
    Held { remaining: Duration },
    /// Someone else holds it, or it has run out.
    NotHeld,
}

/// Reads `lease` for `identity` at wall-clock time `now`.
pub fn read(lease: &Lease, identity: &str, now: Timestamp) -> Reading {
    let Some(spec) = &lease.spec else {
        return Reading::NotHeld;
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return Reading::NotHeld;
    }
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return Reading::NotHeld;
    };
    let Ok(seconds) = u64::try_from(seconds) else {
        return Reading::NotHeld;
    };
    let end = renewed.0 + Duration::from_secs(seconds);
    match Duration::try_from(end.duration_since(now)) {
        Ok(remaining) if !remaining.is_zero() => Reading::Held { remaining },
        _ => Reading::NotHeld,
    }
}

/// When a leader must stop acting, given a reading taken at `at`: the lease's end less the skew
/// margin. `None` when it must stop now.
pub fn act_until(reading: Reading, at: Instant) -> Option<Instant> {
    match reading {
        Reading::Held { remaining } => {
            let left = remaining.checked_sub(SKEW_MARGIN)?;
            (!left.is_zero()).then(|| at + left)
        }
        Reading::NotHeld => None,
    }
}

/// Returns when this replica can no longer be sure it leads: the lease names someone else or
/// has run out, or it could not be read in time to see a renewal before the end of the last
/// lease seen. `until` is the end of the lease known when leadership was won.
pub async fn watch(api: Api<Lease>, name: &str, identity: &str, mut until: Instant) {
    loop {
        let now = Instant::now();
        if now >= until {
            tracing::warn!(
                %identity,
                "the leader lease could not be confirmed before it would run out: \
                 controllers stop"
            );
            return;
        }
        let step = CHECK_EVERY.min(until - now);
        match tokio::time::timeout(step, api.get(name)).await {
            Ok(Ok(lease)) => {
                let reading = read(&lease, identity, Timestamp::now());
                match act_until(reading, now) {
                    Some(next) => until = until.max(next),
                    None => {
                        tracing::warn!(%identity, "the leader lease is no longer held: controllers stop");
                        return;
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reading the leader lease failed");
            }
            // Timed out: the deadline is checked again at once.
            Err(_) => continue,
        }
        tokio::time::sleep_until((now + CHECK_EVERY).min(until).into()).await;
    }
}

/// Waits until a reading of the lease shows `identity` holding it, and returns until when it may
/// act: the lease manager may report leadership it can no longer confirm.
pub async fn confirm(api: &Api<Lease>, name: &str, identity: &str) -> Instant {
    loop {
        let now = Instant::now();
        if let Ok(Ok(lease)) = tokio::time::timeout(CHECK_EVERY, api.get(name)).await
            && let Some(until) = act_until(read(&lease, identity, Timestamp::now()), now)
        {
            return until;
        }
        tokio::time::sleep_until((now + CHECK_EVERY).into()).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;

    fn lease(holder: &str, renewed: Timestamp, seconds: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn a_lease_held_by_this_replica_has_the_rest_of_its_duration_left() {
        assert_eq!(
            read(&lease("a", t(0), 15), "a", t(4)),
            Reading::Held {
                remaining: Duration::from_secs(11)
            }
        );
    }

    #[test]
    fn a_lease_of_another_replica_or_run_out_is_not_held() {
        assert_eq!(read(&lease("b", t(0), 15), "a", t(1)), Reading::NotHeld);
        assert_eq!(read(&lease("a", t(0), 15), "a", t(15)), Reading::NotHeld);
        assert_eq!(read(&lease("a", t(0), 15), "a", t(20)), Reading::NotHeld);
        assert_eq!(read(&Lease::default(), "a", t(0)), Reading::NotHeld);
    }

    #[test]
    fn a_leader_stops_the_skew_margin_before_the_lease_it_saw_ends() {
        let at = Instant::now();
        let held = |s| Reading::Held {
            remaining: Duration::from_secs(s),
        };
        assert_eq!(act_until(held(11), at), Some(at + Duration::from_secs(9)));
        assert_eq!(act_until(held(2), at), None);
        assert_eq!(act_until(held(1), at), None);
        assert_eq!(act_until(Reading::NotHeld, at), None);
    }
}
