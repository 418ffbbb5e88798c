//! `Retry-After` (RFC 9110 § 10.2.3): either a number of seconds or an HTTP date.

use std::time::{Duration, SystemTime};

/// How long `Retry-After: value` asks to wait, as of `now`: `120` is two minutes; an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, or one of the two obsolete forms) is the time until then,
/// zero when it has passed. Anything else is `None`, as if there were no header.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `Wed, 21 Oct 2015 07:28:00 GMT`.
    fn reference_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480)
    }

    #[test]
    fn delta_seconds_are_read_as_they_are() {
        let now = reference_time();
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn an_http_date_is_the_time_until_then_in_each_of_its_three_forms() {
        let now = reference_time() - Duration::from_secs(30);
        for form in [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Wednesday, 21-Oct-15 07:28:00 GMT",
            "Wed Oct 21 07:28:00 2015",
        ] {
            assert_eq!(
                parse_retry_after(form, now),
                Some(Duration::from_secs(30)),
                "{form}"
            );
        }
    }

    #[test]
    fn a_date_in_the_past_means_at_once() {
        let now = reference_time() + Duration::from_secs(3600);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn anything_else_is_no_advice() {
        for bad in [
            "",
            "  ",
            "-5",
            "1.5",
            "soon",
            "Wed, 32 Oct 2015 07:28:00 GMT",
            "120s",
        ] {
            assert_eq!(parse_retry_after(bad, reference_time()), None, "{bad:?}");
        }
    }
}
