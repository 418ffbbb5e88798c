//! AES-256-GCM, as the envelope calls it, against Project Wycheproof's test vectors (every
//! vector with a 256-bit key, a 96-bit nonce and a 128-bit tag).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ::wycheproof::TestResult;
use ::wycheproof::aead::{TestName, TestSet};

use super::*;

#[test]
fn aes_256_gcm_passes_the_wycheproof_vectors() {
    let set = TestSet::load(TestName::AesGcm).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for group in &set.test_groups {
        if group.key_size != KEY_LEN * 8
            || group.nonce_size != NONCE_LEN * 8
            || group.tag_size != TAG_LEN * 8
        {
            continue;
        }
        for test in &group.tests {
            let id = test.tc_id;
            let key: [u8; KEY_LEN] = test.key.as_slice().try_into().unwrap();
            let mut sealed = Vec::with_capacity(NONCE_LEN + test.ct.len() + TAG_LEN);
            sealed.extend_from_slice(&test.nonce);
            sealed.extend_from_slice(&test.ct);
            sealed.extend_from_slice(&test.tag);
            // `open` is what `Dek::open` and `Keyring::unwrap` call with the stored bytes.
            let opened = open(&key, &sealed, &test.aad);
            match test.result {
                TestResult::Valid | TestResult::Acceptable => {
                    valid += 1;
                    let plain = opened.unwrap_or_else(|err| panic!("vector {id}: {err}"));
                    assert_eq!(plain.as_slice(), test.pt.as_slice(), "vector {id}");

                    // The calls `seal` makes, with the vector's nonce in place of a random one.
                    let cipher = Aes256Gcm::new((&key).into());
                    let mut buffer = test.pt.to_vec();
                    let tag = cipher
                        .encrypt_in_place_detached(
                            Nonce::from_slice(&test.nonce),
                            &test.aad,
                            &mut buffer,
                        )
                        .unwrap();
                    assert_eq!(buffer.as_slice(), test.ct.as_slice(), "vector {id}");
                    assert_eq!(tag.as_slice(), test.tag.as_slice(), "vector {id}");
                }
                TestResult::Invalid => {
                    invalid += 1;
                    assert_eq!(opened.err(), Some(CryptoError::Decrypt), "vector {id}");
                }
            }
        }
    }
    // The pinned crate version has 39 valid and 27 invalid such vectors; fewer means the
    // filter above stopped matching.
    assert!(
        valid >= 30 && invalid >= 20,
        "{valid} valid, {invalid} invalid vectors"
    );
}
