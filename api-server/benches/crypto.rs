//! Cost of envelope encryption of a 1 KiB value, as ratios to raw AES-256-GCM measured in the same
//! run: `Dek::seal` against `Aes256Gcm::encrypt` (fixed key, fresh random nonce, no associated
//! data), and `Dek::open` against `Aes256Gcm::decrypt`. The difference is the associated-data
//! encoding and its GHASH, the AES key schedule done per call (the DEK keeps only the 32 key
//! bytes), and for `open` the wiping of the plaintext buffer when it is dropped.
//!
//! `cargo bench -p coffer-server --bench crypto`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead as _, AeadCore as _};
use aes_gcm::{Aes256Gcm, KeyInit as _};
use coffer_server::crypto::envelope::{Dek, Field, ValueAad};
use rand::RngCore as _;
use rand::rngs::OsRng;

const VALUE_LEN: usize = 1024;
const ROUNDS: usize = 21;
const PER_ROUND: usize = 20_000;

/// Median time per operation over `ROUNDS` rounds of `PER_ROUND` operations, after a warm-up round.
fn measure(mut op: impl FnMut()) -> Duration {
    for _ in 0..PER_ROUND {
        op();
    }
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..PER_ROUND {
            op();
        }
        samples.push(start.elapsed() / u32::try_from(PER_ROUND).unwrap());
    }
    samples.sort();
    samples[ROUNDS / 2]
}

fn main() {
    let mut value = vec![0u8; VALUE_LEN];
    OsRng.fill_bytes(&mut value);
    let aad = ValueAad {
        org_id: "0191d7a2-5c4e-7b3a-9f1e-2d6c8a4b0e17".into(),
        project_id: "0191d7a2-5c4e-7b3a-9f1e-2d6c8a4b0e18".into(),
        environment_id: "0191d7a2-5c4e-7b3a-9f1e-2d6c8a4b0e19".into(),
        key: "DATABASE_URL".into(),
        version: 42,
        field: Field::Value,
    };

    let mut raw_key = [0u8; 32];
    OsRng.fill_bytes(&mut raw_key);
    let raw = Aes256Gcm::new(&raw_key.into());
    let dek = Dek::generate();

    let raw_nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let raw_sealed = raw.encrypt(&raw_nonce, value.as_slice()).unwrap();
    let sealed = dek.seal(&value, &aad);
    assert_eq!(
        dek.open(&sealed, &aad).unwrap().as_slice(),
        value.as_slice()
    );

    let raw_encrypt = measure(|| {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        black_box(raw.encrypt(&nonce, black_box(value.as_slice())).unwrap());
    });
    let seal = measure(|| {
        black_box(dek.seal(black_box(&value), black_box(&aad)));
    });
    let raw_decrypt = measure(|| {
        black_box(
            raw.decrypt(&raw_nonce, black_box(raw_sealed.as_slice()))
                .unwrap(),
        );
    });
    let open = measure(|| {
        black_box(dek.open(black_box(&sealed), black_box(&aad)).unwrap());
    });

    let ratio = |d: Duration, base: Duration| d.as_secs_f64() / base.as_secs_f64();
    println!(
        "{:<40} {:>12}   {:>8}",
        "operation (1 KiB value)", "median/op", "ratio"
    );
    println!(
        "{:<40} {:>12.1?}   {:>7.2}x",
        "AES-256-GCM encrypt (baseline)", raw_encrypt, 1.0
    );
    println!(
        "{:<40} {:>12.1?}   {:>7.2}x",
        "Dek::seal",
        seal,
        ratio(seal, raw_encrypt)
    );
    println!(
        "{:<40} {:>12.1?}   {:>7.2}x",
        "AES-256-GCM decrypt (baseline)", raw_decrypt, 1.0
    );
    println!(
        "{:<40} {:>12.1?}   {:>7.2}x",
        "Dek::open",
        open,
        ratio(open, raw_decrypt)
    );
}
