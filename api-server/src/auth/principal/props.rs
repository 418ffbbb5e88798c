//! Property tests of reading the bearer token: any `Authorization` header gives a token or a
//! 401, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;

use super::*;

fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (
            proptest::sample::select(
                &[
                    "Bearer ", "bearer ", "BEARER ", "Bearer", "Basic ", "Bearer  ", " Bearer ", ""
                ][..]
            ),
            proptest::collection::vec(
                prop_oneof![
                    3 => proptest::sample::select(&b"ab09._-~+/= \t"[..]),
                    1 => any::<u8>(),
                ],
                0..40
            ),
        )
            .prop_map(|(prefix, rest)| [prefix.as_bytes(), &rest].concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_authorization_header_gives_a_token_or_a_401(bytes in header_bytes()) {
        // Bytes that may not stand in a header (control characters) never reach the server.
        let Ok(value) = HeaderValue::from_bytes(&bytes) else {
            return Ok(());
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value);
        match bearer_header(&headers) {
            Ok(token) => {
                let text = std::str::from_utf8(&bytes).unwrap();
                let rest = text
                    .strip_prefix("Bearer ")
                    .or_else(|| text.strip_prefix("bearer "))
                    .unwrap();
                prop_assert!(!token.is_empty());
                prop_assert_eq!(token, rest.trim());
            }
            Err(err) => prop_assert_eq!(err.status(), StatusCode::UNAUTHORIZED),
        }
    }

    #[test]
    fn a_missing_header_is_a_401(other in "[a-z-]{1,20}", value in "[ -~]{0,20}") {
        prop_assume!(other != "authorization");
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::HeaderName::from_bytes(other.as_bytes()).unwrap(),
            HeaderValue::from_str(&value).unwrap(),
        );
        let err = bearer_header(&headers).unwrap_err();
        prop_assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    }
}
