//! Property tests of the ciphertext envelope: whatever bytes are handed to `open`, the answer
//! is an error or the plaintext that was sealed for that key and place, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        Just(Field::Value),
        Just(Field::Comment),
        Just(Field::Other("engine.connection")),
        Just(Field::Other("")),
    ]
}

fn value_aad() -> impl Strategy<Value = ValueAad> {
    (
        ".{0,12}",
        ".{0,12}",
        ".{0,12}",
        ".{0,12}",
        any::<i64>(),
        field(),
    )
        .prop_map(
            |(org_id, project_id, environment_id, key, version, field)| ValueAad {
                org_id,
                project_id,
                environment_id,
                key,
                version,
                field,
            },
        )
}

/// The same place with one thing changed.
fn moved(aad: &ValueAad, which: u8) -> ValueAad {
    let mut other = aad.clone();
    match which % 7 {
        0 => other.org_id.push('x'),
        1 => other.project_id.push('x'),
        2 => other.environment_id.push('x'),
        3 => other.key.push('x'),
        4 => other.version = other.version.wrapping_add(1),
        5 => {
            other.field = match other.field {
                Field::Value => Field::Comment,
                Field::Comment | Field::Other(_) => Field::Value,
            }
        }
        // The same bytes split differently between two neighbouring ids.
        _ => {
            other.org_id.push('x');
            other.project_id.insert(0, 'x');
        }
    }
    other
}

fn dek(bytes: [u8; 32]) -> Dek {
    Dek {
        key: Zeroizing::new(bytes),
    }
}

fn context() -> impl Strategy<Value = DekContext> {
    (".{0,8}", ".{0,8}", ".{0,8}").prop_map(|(org_id, project_id, dek_id)| DekContext {
        org_id,
        project_id,
        dek_id,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_fail_to_open(
        key in any::<[u8; 32]>(),
        sealed in proptest::collection::vec(any::<u8>(), 0..96),
        aad in value_aad(),
    ) {
        let result = dek(key).open(&sealed, &aad);
        if sealed.len() < NONCE_LEN + TAG_LEN {
            prop_assert_eq!(result.err(), Some(CryptoError::Malformed));
        } else {
            prop_assert_eq!(result.err(), Some(CryptoError::Decrypt));
        }
    }

    #[test]
    fn sealed_values_open_for_their_place_only(
        key in any::<[u8; 32]>(),
        other_key in any::<[u8; 32]>(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..300),
        aad in value_aad(),
        which in any::<u8>(),
    ) {
        let dek = dek(key);
        let sealed = dek.seal(&plaintext, &aad);
        prop_assert_eq!(sealed.len(), NONCE_LEN + plaintext.len() + TAG_LEN);
        let opened = dek.open(&sealed, &aad).unwrap();
        prop_assert_eq!(opened.as_slice(), plaintext.as_slice());

        let elsewhere = moved(&aad, which);
        prop_assert_ne!(elsewhere.encode(), aad.encode());
        prop_assert_eq!(dek.open(&sealed, &elsewhere).err(), Some(CryptoError::Decrypt));
        if other_key != key {
            prop_assert_eq!(
                self::dek(other_key).open(&sealed, &aad).err(),
                Some(CryptoError::Decrypt)
            );
        }
    }

    #[test]
    fn a_changed_ciphertext_fails_to_open(
        key in any::<[u8; 32]>(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..64),
        aad in value_aad(),
        flip_at in any::<usize>(),
        flip in 1..=255u8,
        cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 1..8),
    ) {
        let dek = dek(key);
        let sealed = dek.seal(&plaintext, &aad);

        let mut flipped = sealed.clone();
        flipped[flip_at % sealed.len()] ^= flip;
        prop_assert_eq!(dek.open(&flipped, &aad).err(), Some(CryptoError::Decrypt));

        let truncated = &sealed[..cut % sealed.len()];
        prop_assert!(dek.open(truncated, &aad).is_err());

        let mut longer = sealed.clone();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(dek.open(&longer, &aad).err(), Some(CryptoError::Decrypt));
    }

    #[test]
    fn wrapped_deks_unwrap_for_their_place_only(
        kek in any::<[u8; 32]>(),
        dek_bytes in any::<[u8; 32]>(),
        ctx in context(),
        other in context(),
        flip_at in 0..WRAPPED_LEN,
        flip in 1..=255u8,
        junk in proptest::collection::vec(any::<u8>(), 0..80),
        kek_id in ".{0,20}",
    ) {
        let keyring = Keyring::new(MasterKey::from_bytes(kek), Vec::new());
        let wrapped = keyring.wrap(&dek(dek_bytes), &ctx);
        prop_assert_eq!(wrapped.ciphertext.len(), WRAPPED_LEN);
        prop_assert_eq!(*keyring.unwrap(&wrapped, &ctx).unwrap().key, dek_bytes);
        if other != ctx {
            prop_assert_eq!(keyring.unwrap(&wrapped, &other).err(), Some(CryptoError::Decrypt));
        }

        let mut flipped = wrapped.clone();
        flipped.ciphertext[flip_at] ^= flip;
        prop_assert_eq!(keyring.unwrap(&flipped, &ctx).err(), Some(CryptoError::Decrypt));

        let forged = WrappedDek { kek_id: wrapped.kek_id.clone(), ciphertext: junk.clone() };
        let expected = if junk.len() == WRAPPED_LEN {
            CryptoError::Decrypt
        } else {
            CryptoError::Malformed
        };
        prop_assert_eq!(keyring.unwrap(&forged, &ctx).err(), Some(expected));

        if kek_id != keyring.active_id() {
            let unknown = WrappedDek { kek_id: kek_id.clone(), ciphertext: wrapped.ciphertext };
            prop_assert_eq!(
                keyring.unwrap(&unknown, &ctx).err(),
                Some(CryptoError::UnknownKek { kek_id })
            );
        }
    }
}
