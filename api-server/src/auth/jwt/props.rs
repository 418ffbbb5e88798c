//! Property tests of access-token verification: any string is refused (`None`) unless it is a
//! token this key signed, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn keys() -> JwtKeys {
    JwtKeys::new(
        &SecretString::from(SECRET.to_owned()),
        Duration::from_secs(900),
    )
}

/// Text shaped like a JWT: three or so dot-separated runs of base64url-ish characters.
fn token_like() -> impl Strategy<Value = String> {
    proptest::collection::vec("[A-Za-z0-9_=+/-]{0,40}", 0..5).prop_map(|parts| parts.join("."))
}

/// A JSON object encoded as a JWT segment.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#"{"alg":"HS256","typ":"JWT"}"#.to_owned()),
        Just(r#"{"alg":"none"}"#.to_owned()),
        Just(r#"{"alg":"HS512","typ":"JWT"}"#.to_owned()),
        Just(r#"{"alg":"RS256","typ":"JWT"}"#.to_owned()),
        Just(r#"{"sub":"x","exp":99999999999,"iss":"coffer","aud":"coffer-api"}"#.to_owned()),
        any::<String>(),
    ]
    .prop_map(|json| URL_SAFE_NO_PAD.encode(json))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_string_is_refused(token in prop_oneof![any::<String>(), token_like()]) {
        prop_assert!(keys().verify(&token).is_none());
    }

    #[test]
    fn assembled_tokens_are_refused(
        header in segment(),
        payload in segment(),
        signature in prop_oneof![Just(String::new()), "[A-Za-z0-9_-]{0,64}"],
    ) {
        let token = format!("{header}.{payload}.{signature}");
        prop_assert!(keys().verify(&token).is_none());
    }

    /// A changed token is refused, unless the change left the decoded bytes as they were (the
    /// unused low bits of a segment's last base64 character).
    #[test]
    fn a_changed_token_is_refused(
        at in any::<usize>(),
        with in proptest::sample::select(
            &b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "[..]
        ),
        cut in any::<bool>(),
    ) {
        let keys = keys();
        let (user, session) = (UserId::new(), SessionId::new());
        let token = keys.issue(user, session, Timestamp::now()).unwrap();
        let token = token.expose_secret();
        let at = at % token.len();
        let mut changed = token.as_bytes().to_vec();
        if cut {
            changed.truncate(at);
        } else {
            prop_assume!(changed[at] != with);
            changed[at] = with;
        }
        let changed = String::from_utf8(changed).unwrap();
        if let Some(claims) = keys.verify(&changed) {
            let same = |a: &str, b: &str| {
                a.split('.')
                    .map(|s| URL_SAFE_NO_PAD.decode(s).ok())
                    .eq(b.split('.').map(|s| URL_SAFE_NO_PAD.decode(s).ok()))
            };
            prop_assert!(same(&changed, token), "a changed token verified: {changed}");
            prop_assert_eq!((claims.sub, claims.sid), (user, session));
        }
    }
}
