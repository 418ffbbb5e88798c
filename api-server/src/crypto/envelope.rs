//! Envelope encryption: values are sealed with a per-project data-encryption key (DEK), and DEKs
//! are stored only wrapped by a key-encryption key (KEK, the master key).
//!
//! Both layers use AES-256-GCM with a random 96-bit nonce, laid out as `nonce ‖ ciphertext ‖ tag`.
//! The associated data binds every ciphertext to its place (organization, project, environment,
//! key, version, column for values; KEK id, organization, project, DEK id for wrapped DEKs), so a
//! ciphertext copied to another row fails to decrypt instead of silently revealing a value there.
//!
//! The associated-data encodings are part of the storage format: changing them makes existing
//! data undecryptable. They start with a format version byte so a new layout can be introduced
//! beside the old one.

use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::AeadInPlace as _;
use aes_gcm::{Aes256Gcm, KeyInit as _, Nonce, Tag};
use rand::RngCore as _;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::keys::MasterKey;

/// Encryptions one DEK may perform with random 96-bit nonces: NIST SP 800-38D §8.3 bounds the
/// invocations of GCM with random IVs per key to 2^32, which keeps the probability of a nonce
/// collision (fatal for GCM: it reveals the XOR of plaintexts and allows forgeries) below 2^-32.
pub const DEK_MAX_ENCRYPTIONS: u64 = 1 << 32;

/// Encryptions after which the storage layer rotates a DEK. The storage layer counts encryptions
/// per DEK (values, comments, everything sealed with it) and switches to a fresh DEK at this
/// point, half of [`DEK_MAX_ENCRYPTIONS`], so counting races and in-flight writes never get near
/// the bound.
pub const DEK_ROTATE_AFTER: u64 = 1 << 31;

const _: () = assert!(DEK_ROTATE_AFTER < DEK_MAX_ENCRYPTIONS);

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;
/// The AES-GCM plaintext limit (2^39 - 256 bits), as enforced by `aes-gcm`.
const MAX_PLAINTEXT_LEN: u64 = 1 << 36;

const AAD_FORMAT_V1: u8 = 1;
const VALUE_DOMAIN: &[u8] = b"coffer.value";
const DEK_DOMAIN: &[u8] = b"coffer.dek";

/// Why a ciphertext could not be decrypted. Messages carry no key material and no plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The DEK was wrapped by a KEK that is not loaded (retired too early, or a wrong key file).
    #[error("the data key is wrapped by key-encryption key {kek_id}, which is not loaded")]
    UnknownKek { kek_id: String },
    /// Authentication failed: wrong key, modified ciphertext, or a ciphertext moved to a place
    /// (row, column, project…) other than the one it was sealed for.
    #[error("decryption failed: wrong key, or the ciphertext was modified or moved")]
    Decrypt,
    /// The ciphertext is too short (or, for a wrapped DEK, not of the expected length).
    #[error("the ciphertext is malformed")]
    Malformed,
}

/// A 256-bit data-encryption key. The bytes are zeroized when it is dropped.
///
/// Not `Clone`: a DEK is shared as `Arc<Dek>` (see [`DekCache`]) so there is exactly one copy of
/// the key bytes in memory per unwrapped DEK, and it is zeroized when the last `Arc` goes.
pub struct Dek {
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for Dek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dek([redacted])")
    }
}

impl Dek {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(key.as_mut());
        Self { key }
    }

    /// Encrypts `plaintext` for the place described by `aad`: `nonce ‖ ciphertext ‖ tag`.
    ///
    /// Each call uses one of the DEK's [`DEK_MAX_ENCRYPTIONS`]; the caller counts them.
    ///
    /// # Panics
    ///
    /// If `plaintext` is longer than 64 GiB, the AES-GCM limit (request bodies are bounded far
    /// below that).
    pub fn seal(&self, plaintext: &[u8], aad: &ValueAad) -> Vec<u8> {
        seal(&self.key, plaintext, &aad.encode())
    }

    /// Decrypts what [`Dek::seal`] produced for the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &ValueAad) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        open(&self.key, sealed, &aad.encode())
    }
}

/// Which column of a secret version a ciphertext belongs to, so that one cannot be swapped for
/// another (a value copied into the comment column would be shown wherever comments are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// The secret's value.
    Value,
    /// The secret's optional comment.
    Comment,
    /// Material sealed by another subsystem under the same DEK, named by a constant (for
    /// example a dynamic-secret engine's admin connection: `Field::Other("engine.connection")`).
    /// The name is `&'static str` so it is fixed in code and never taken from a request.
    Other(&'static str),
}

/// The place a value is sealed for; its canonical encoding is the AES-GCM associated data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValueAad {
    pub org_id: String,
    pub project_id: String,
    pub environment_id: String,
    pub key: String,
    pub version: i64,
    pub field: Field,
}

impl ValueAad {
    /// Format 1: `0x01 ‖ lp("coffer.value") ‖ lp(org_id) ‖ lp(project_id) ‖ lp(environment_id)
    /// ‖ lp(key) ‖ version (i64, big-endian) ‖ field`, where `lp(x)` is the length of `x` as a
    /// big-endian u64 followed by its bytes, and `field` is `0x01` (value), `0x02` (comment) or
    /// `0x03 ‖ lp(name)` (other). Length prefixes make the encoding injective: no two places
    /// share an encoding, whatever bytes the ids and key contain.
    pub fn encode(&self) -> Vec<u8> {
        let field_len = match self.field {
            Field::Value | Field::Comment => 1,
            Field::Other(name) => 1 + 8 + name.len(),
        };
        let mut out = Vec::with_capacity(
            1 + 8 * 5
                + VALUE_DOMAIN.len()
                + self.org_id.len()
                + self.project_id.len()
                + self.environment_id.len()
                + self.key.len()
                + 8
                + field_len,
        );
        out.push(AAD_FORMAT_V1);
        put(&mut out, VALUE_DOMAIN);
        put(&mut out, self.org_id.as_bytes());
        put(&mut out, self.project_id.as_bytes());
        put(&mut out, self.environment_id.as_bytes());
        put(&mut out, self.key.as_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        match self.field {
            Field::Value => out.push(1),
            Field::Comment => out.push(2),
            Field::Other(name) => {
                out.push(3);
                put(&mut out, name.as_bytes());
            }
        }
        out
    }
}

/// Where a wrapped DEK belongs; with the KEK id, its encoding is the associated data of the
/// wrapping, so a wrapped DEK copied to another project's row fails to unwrap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DekContext {
    pub org_id: String,
    pub project_id: String,
    pub dek_id: String,
}

impl DekContext {
    /// Format 1: `0x01 ‖ lp("coffer.dek") ‖ lp(kek_id) ‖ lp(org_id) ‖ lp(project_id) ‖
    /// lp(dek_id)`, with `lp` as in [`ValueAad::encode`]. The domain label differs from the
    /// value encoding's, so the two can never coincide.
    pub fn encode(&self, kek_id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            1 + 8 * 5
                + DEK_DOMAIN.len()
                + kek_id.len()
                + self.org_id.len()
                + self.project_id.len()
                + self.dek_id.len(),
        );
        out.push(AAD_FORMAT_V1);
        put(&mut out, DEK_DOMAIN);
        put(&mut out, kek_id.as_bytes());
        put(&mut out, self.org_id.as_bytes());
        put(&mut out, self.project_id.as_bytes());
        put(&mut out, self.dek_id.as_bytes());
        out
    }
}

/// A DEK encrypted under the KEK `kek_id`: `nonce ‖ AES-256-GCM(dek) ‖ tag`, 60 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedDek {
    pub kek_id: String,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for WrappedDek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedDek")
            .field("kek_id", &self.kek_id)
            .field(
                "ciphertext",
                &format_args!("[{} bytes]", self.ciphertext.len()),
            )
            .finish()
    }
}

/// The loaded key-encryption keys: the active one wraps new DEKs; previous ones only unwrap, while
/// a rotation moves their DEKs to the active key ([`Keyring::rewrap`]). A previous key can be
/// dropped from configuration once no wrapped DEK names it.
///
/// A KEK performs one encryption per DEK wrapped, far below [`DEK_MAX_ENCRYPTIONS`].
pub struct Keyring {
    active: MasterKey,
    previous: Vec<MasterKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let previous: Vec<&str> = self.previous.iter().map(MasterKey::id).collect();
        f.debug_struct("Keyring")
            .field("active", &self.active.id())
            .field("previous", &previous)
            .finish()
    }
}

impl Keyring {
    /// Previous keys with the active key's id, or repeating an earlier one, are dropped: the id
    /// is derived from the key bytes, so they are the same key loaded twice.
    pub fn new(active: MasterKey, mut previous: Vec<MasterKey>) -> Self {
        let mut seen = vec![active.id().to_owned()];
        previous.retain(|key| {
            let new = !seen.iter().any(|id| id == key.id());
            if new {
                seen.push(key.id().to_owned());
            }
            new
        });
        Self { active, previous }
    }

    /// The id of the key that wraps new DEKs.
    pub fn active_id(&self) -> &str {
        self.active.id()
    }

    /// Whether a DEK wrapped by key `id` can be unwrapped.
    pub fn contains(&self, id: &str) -> bool {
        self.find(id).is_some()
    }

    /// The ids of all loaded keys, the active one first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.active)
            .chain(&self.previous)
            .map(MasterKey::id)
    }

    /// Encrypts `dek` under the active key for the place `context`.
    pub fn wrap(&self, dek: &Dek, context: &DekContext) -> WrappedDek {
        let kek_id = self.active.id();
        WrappedDek {
            kek_id: kek_id.to_owned(),
            ciphertext: seal(
                self.active.bytes(),
                dek.key.as_ref(),
                &context.encode(kek_id),
            ),
        }
    }

    /// Decrypts a DEK wrapped by any loaded key for the same `context`.
    pub fn unwrap(&self, wrapped: &WrappedDek, context: &DekContext) -> Result<Dek, CryptoError> {
        let kek = self
            .find(&wrapped.kek_id)
            .ok_or_else(|| CryptoError::UnknownKek {
                kek_id: wrapped.kek_id.clone(),
            })?;
        if wrapped.ciphertext.len() != WRAPPED_LEN {
            return Err(CryptoError::Malformed);
        }
        let plain = open(kek.bytes(), &wrapped.ciphertext, &context.encode(kek.id()))?;
        // WRAPPED_LEN leaves exactly KEY_LEN bytes of plaintext.
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&plain);
        Ok(Dek { key })
    }

    /// Unwraps with whichever loaded key wrapped the DEK and wraps it again with the active key.
    /// The DEK itself is unchanged, so values sealed with it still open. Rewrapping a DEK that
    /// is already under the active key is harmless (a fresh nonce); callers may skip those rows.
    pub fn rewrap(
        &self,
        wrapped: &WrappedDek,
        context: &DekContext,
    ) -> Result<WrappedDek, CryptoError> {
        let dek = self.unwrap(wrapped, context)?;
        Ok(self.wrap(&dek, context))
    }

    fn find(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.active)
            .chain(&self.previous)
            .find(|key| key.id() == id)
    }
}

/// Unwrapped DEKs kept in memory for at most `ttl`, so reads do not unwrap on every request.
///
/// Entries are `Arc<Dek>`: when an entry expires, is invalidated or evicted for size, the cache
/// drops its `Arc`, and once requests holding a clone finish, the last `Arc` drops the `Dek`,
/// whose `Zeroizing` buffer overwrites the key bytes. Removal is lazy: an expired entry is never
/// returned, but it leaves memory only through maintenance, which runs during cache activity or
/// when [`DekCache::run_pending_tasks`] is called, and moka frees removed entries by epoch-based
/// reclamation, so the drop can trail the removal by a pass or two. The server should call
/// `run_pending_tasks` periodically (every few seconds) so idle DEKs do not outlive the TTL.
pub struct DekCache {
    inner: moka::sync::Cache<String, Arc<Dek>>,
}

impl std::fmt::Debug for DekCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DekCache")
            .field("entries", &self.inner.entry_count())
            .finish_non_exhaustive()
    }
}

impl DekCache {
    /// Entries live at most `ttl` from insertion; at most about `max_entries` are kept.
    pub fn new(ttl: Duration, max_entries: u64) -> Self {
        Self {
            inner: moka::sync::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(max_entries)
                .build(),
        }
    }

    pub fn get(&self, dek_id: &str) -> Option<Arc<Dek>> {
        self.inner.get(dek_id)
    }

    pub fn insert(&self, dek_id: String, dek: Arc<Dek>) {
        self.inner.insert(dek_id, dek);
    }

    /// Forgets one DEK (after it is rotated out or its project is deleted).
    pub fn invalidate(&self, dek_id: &str) {
        self.inner.invalidate(dek_id);
    }

    /// Forgets every DEK (after a KEK is retired, or at shutdown) and runs maintenance, so they
    /// are released now or within the next pass or two (see the type's documentation).
    pub fn clear(&self) {
        self.inner.invalidate_all();
        self.inner.run_pending_tasks();
    }

    /// Removes expired and invalidated entries now, dropping the cache's hold on their keys.
    pub fn run_pending_tasks(&self) {
        self.inner.run_pending_tasks();
    }

    /// Approximate number of cached DEKs (exact after [`DekCache::run_pending_tasks`]).
    pub fn len(&self) -> u64 {
        self.inner.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends `bytes` with a big-endian u64 length prefix.
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn seal(key: &[u8; KEY_LEN], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    assert!(
        plaintext.len() as u64 <= MAX_PLAINTEXT_LEN,
        "plaintext exceeds the AES-GCM length limit"
    );
    // The key schedule is redone per call rather than kept in `Dek`: long-lived memory then
    // holds only the 32 key bytes, which `Zeroizing` wipes (see the benchmark for the cost).
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    // Sized exactly, so the plaintext copied in (and encrypted in place) is never left behind
    // in a reallocated buffer.
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut out[NONCE_LEN..])
        .unwrap_or_else(|_| unreachable!("the length was checked above"));
    out.extend_from_slice(&tag);
    out
}

fn open(key: &[u8; KEY_LEN], sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Malformed);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let cipher = Aes256Gcm::new(key.into());
    // The tag is verified before anything is decrypted; on failure the buffer holds only
    // ciphertext, and it is zeroized on drop either way.
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            aad,
            buffer.as_mut_slice(),
            Tag::from_slice(tag),
        )
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(buffer)
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod wycheproof;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::{Arc, Weak};

    use super::*;

    const KEK_A: [u8; 32] = [0xA1; 32];
    const KEK_B: [u8; 32] = [0xB2; 32];

    fn aad() -> ValueAad {
        ValueAad {
            org_id: "org-1".into(),
            project_id: "project-1".into(),
            environment_id: "env-production".into(),
            key: "DATABASE_URL".into(),
            version: 3,
            field: Field::Value,
        }
    }

    fn context() -> DekContext {
        DekContext {
            org_id: "org-1".into(),
            project_id: "project-1".into(),
            dek_id: "dek-1".into(),
        }
    }

    fn keyring(active: [u8; 32], previous: &[[u8; 32]]) -> Keyring {
        Keyring::new(
            MasterKey::from_bytes(active),
            previous.iter().map(|k| MasterKey::from_bytes(*k)).collect(),
        )
    }

    #[test]
    fn sealing_and_opening_round_trips_empty_one_byte_and_64_kib_values() {
        let dek = Dek::generate();
        let large: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        for plaintext in [&b""[..], &b"x"[..], &large[..]] {
            let sealed = dek.seal(plaintext, &aad());
            assert_eq!(sealed.len(), NONCE_LEN + plaintext.len() + TAG_LEN);
            assert_eq!(dek.open(&sealed, &aad()).unwrap().as_slice(), plaintext);
        }
    }

    #[test]
    fn opening_with_any_part_of_the_aad_changed_fails_with_decrypt() {
        let dek = Dek::generate();
        let sealed = dek.seal(b"postgres://user:pw@db/app", &aad());
        let base = aad();
        let moved = [
            (
                "org",
                ValueAad {
                    org_id: "org-2".into(),
                    ..aad()
                },
            ),
            (
                "project",
                ValueAad {
                    project_id: "project-2".into(),
                    ..aad()
                },
            ),
            (
                "environment",
                ValueAad {
                    environment_id: "env-staging".into(),
                    ..aad()
                },
            ),
            (
                "key",
                ValueAad {
                    key: "DATABASE_URL2".into(),
                    ..aad()
                },
            ),
            (
                "version",
                ValueAad {
                    version: base.version + 1,
                    ..aad()
                },
            ),
            (
                "field: comment",
                ValueAad {
                    field: Field::Comment,
                    ..aad()
                },
            ),
            (
                "field: other",
                ValueAad {
                    field: Field::Other("value"),
                    ..aad()
                },
            ),
            (
                "boundary between project and environment",
                ValueAad {
                    project_id: "project-1env".into(),
                    environment_id: "-production".into(),
                    ..aad()
                },
            ),
        ];
        for (what, moved) in moved {
            assert_eq!(
                dek.open(&sealed, &moved),
                Err(CryptoError::Decrypt),
                "{what}"
            );
        }
    }

    #[test]
    fn a_comment_ciphertext_does_not_open_as_the_value() {
        let dek = Dek::generate();
        let comment = ValueAad {
            field: Field::Comment,
            ..aad()
        };
        let sealed = dek.seal(b"rotated by ops", &comment);
        assert_eq!(dek.open(&sealed, &aad()), Err(CryptoError::Decrypt));
        assert_eq!(
            dek.open(&sealed, &comment).unwrap().as_slice(),
            b"rotated by ops"
        );
    }

    #[test]
    fn flipping_any_bit_of_nonce_ciphertext_or_tag_fails_with_decrypt() {
        let dek = Dek::generate();
        let sealed = dek.seal(b"secret", &aad());
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut tampered = sealed.clone();
                tampered[i] ^= 1 << bit;
                assert_eq!(dek.open(&tampered, &aad()), Err(CryptoError::Decrypt));
            }
        }
    }

    #[test]
    fn a_ciphertext_shorter_than_nonce_and_tag_is_malformed() {
        let dek = Dek::generate();
        let sealed = dek.seal(b"", &aad());
        for len in 0..sealed.len() {
            assert_eq!(
                dek.open(&sealed[..len], &aad()),
                Err(CryptoError::Malformed)
            );
        }
        let sealed = dek.seal(b"secret", &aad());
        assert_eq!(
            dek.open(&sealed[..sealed.len() - 1], &aad()),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn sealing_the_same_plaintext_twice_gives_different_ciphertexts() {
        let dek = Dek::generate();
        let first = dek.seal(b"same", &aad());
        let second = dek.seal(b"same", &aad());
        assert_ne!(first[..NONCE_LEN], second[..NONCE_LEN]);
        assert_ne!(first, second);
    }

    #[test]
    fn a_value_does_not_open_with_another_dek() {
        let sealed = Dek::generate().seal(b"secret", &aad());
        assert_eq!(
            Dek::generate().open(&sealed, &aad()),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn a_wrapped_dek_unwraps_to_the_same_key() {
        let keyring = keyring(KEK_A, &[]);
        let dek = Dek::generate();
        let wrapped = keyring.wrap(&dek, &context());
        assert_eq!(wrapped.kek_id, keyring.active_id());
        assert_eq!(wrapped.ciphertext.len(), WRAPPED_LEN);
        let unwrapped = keyring.unwrap(&wrapped, &context()).unwrap();
        assert_eq!(*unwrapped.key, *dek.key);
        let sealed = dek.seal(b"secret", &aad());
        assert_eq!(
            unwrapped.open(&sealed, &aad()).unwrap().as_slice(),
            b"secret"
        );
    }

    #[test]
    fn a_wrapped_dek_copied_to_another_project_org_or_dek_id_fails_to_unwrap() {
        let keyring = keyring(KEK_A, &[]);
        let wrapped = keyring.wrap(&Dek::generate(), &context());
        let elsewhere = [
            DekContext {
                project_id: "project-2".into(),
                ..context()
            },
            DekContext {
                org_id: "org-2".into(),
                ..context()
            },
            DekContext {
                dek_id: "dek-2".into(),
                ..context()
            },
        ];
        for other in elsewhere {
            assert_eq!(
                keyring.unwrap(&wrapped, &other).unwrap_err(),
                CryptoError::Decrypt
            );
        }
    }

    #[test]
    fn unwrapping_with_a_kek_id_that_is_not_loaded_fails_with_unknown_kek() {
        let wrapped = keyring(KEK_A, &[]).wrap(&Dek::generate(), &context());
        let err = keyring(KEK_B, &[])
            .unwrap(&wrapped, &context())
            .unwrap_err();
        assert_eq!(
            err,
            CryptoError::UnknownKek {
                kek_id: wrapped.kek_id.clone()
            }
        );
    }

    #[test]
    fn a_wrapped_dek_relabelled_with_another_loaded_kek_id_fails_to_unwrap() {
        let keyring = keyring(KEK_A, &[KEK_B]);
        let mut wrapped = keyring.wrap(&Dek::generate(), &context());
        wrapped.kek_id = MasterKey::from_bytes(KEK_B).id().to_owned();
        assert_eq!(
            keyring.unwrap(&wrapped, &context()).unwrap_err(),
            CryptoError::Decrypt
        );
    }

    #[test]
    fn a_wrapped_dek_of_the_wrong_length_is_malformed() {
        let keyring = keyring(KEK_A, &[]);
        let mut wrapped = keyring.wrap(&Dek::generate(), &context());
        wrapped.ciphertext.push(0);
        assert_eq!(
            keyring.unwrap(&wrapped, &context()).unwrap_err(),
            CryptoError::Malformed
        );
        wrapped.ciphertext.truncate(NONCE_LEN + TAG_LEN);
        assert_eq!(
            keyring.unwrap(&wrapped, &context()).unwrap_err(),
            CryptoError::Malformed
        );
    }

    #[test]
    fn rewrap_moves_a_dek_from_a_previous_key_to_the_active_one_and_old_values_still_open() {
        let old = keyring(KEK_A, &[]);
        let dek = Dek::generate();
        let wrapped_old = old.wrap(&dek, &context());
        let sealed = dek.seal(b"sealed before the rotation", &aad());

        let rotated = keyring(KEK_B, &[KEK_A]);
        let wrapped_new = rotated.rewrap(&wrapped_old, &context()).unwrap();
        assert_eq!(wrapped_new.kek_id, rotated.active_id());
        assert_ne!(wrapped_new.kek_id, wrapped_old.kek_id);
        let unwrapped = rotated.unwrap(&wrapped_new, &context()).unwrap();
        assert_eq!(
            unwrapped.open(&sealed, &aad()).unwrap().as_slice(),
            b"sealed before the rotation"
        );
    }

    #[test]
    fn after_rewrap_a_keyring_without_the_previous_key_still_unwraps() {
        let wrapped_old = keyring(KEK_A, &[]).wrap(&Dek::generate(), &context());
        let wrapped_new = keyring(KEK_B, &[KEK_A])
            .rewrap(&wrapped_old, &context())
            .unwrap();

        let retired = keyring(KEK_B, &[]);
        assert!(!retired.contains(&wrapped_old.kek_id));
        assert!(retired.unwrap(&wrapped_new, &context()).is_ok());
        assert!(matches!(
            retired.unwrap(&wrapped_old, &context()),
            Err(CryptoError::UnknownKek { .. })
        ));
    }

    #[test]
    fn a_keyring_lists_the_active_key_first_and_loads_each_key_once() {
        let keyring = keyring(KEK_B, &[KEK_A, KEK_B, KEK_A]);
        let a = MasterKey::from_bytes(KEK_A).id().to_owned();
        let b = MasterKey::from_bytes(KEK_B).id().to_owned();
        assert_eq!(keyring.ids().collect::<Vec<_>>(), [b.as_str(), a.as_str()]);
        assert_eq!(keyring.active_id(), b);
        assert!(keyring.contains(&a));
        assert!(!keyring.contains("0000000000000000"));
    }

    #[test]
    fn debug_output_of_dek_keyring_and_wrapped_dek_shows_no_key_bytes() {
        let dek = Dek {
            key: Zeroizing::new([0x41; 32]),
        };
        let keyring = keyring(KEK_A, &[KEK_B]);
        let wrapped = keyring.wrap(&dek, &context());
        let output = format!(
            "{dek:?} {keyring:?} {wrapped:?} {:#?}",
            (&dek, &keyring, &wrapped)
        );
        for byte in [0x41u8, 0xA1, 0xB2] {
            assert!(!output.contains(&format!("{byte}, {byte}")), "{output}");
            assert!(!output.contains(&hex::encode([byte; 4])), "{output}");
        }
        assert!(
            !output.contains(&hex::encode(&wrapped.ciphertext[..8])),
            "{output}"
        );
        assert!(output.contains("[redacted]") && output.contains(keyring.active_id()));
    }

    // The encodings are the storage format: a change here makes existing data undecryptable.
    #[test]
    fn the_associated_data_encodings_are_stable() {
        let value = ValueAad {
            org_id: "o".into(),
            project_id: "p".into(),
            environment_id: "e".into(),
            key: "K".into(),
            version: 258,
            field: Field::Other("x"),
        };
        assert_eq!(
            hex::encode(value.encode()),
            concat!(
                "01",
                "000000000000000c",
                "636f666665722e76616c7565",
                "00000000000000016f",
                "000000000000000170",
                "000000000000000165",
                "00000000000000014b",
                "0000000000000102",
                "03",
                "000000000000000178",
            )
        );
        let context = DekContext {
            org_id: "o".into(),
            project_id: "p".into(),
            dek_id: "d".into(),
        };
        assert_eq!(
            hex::encode(context.encode("k")),
            concat!(
                "01",
                "000000000000000a",
                "636f666665722e64656b",
                "00000000000000016b",
                "00000000000000016f",
                "000000000000000170",
                "000000000000000164",
            )
        );
    }

    /// Whether every DEK is dropped within a few maintenance passes (moka frees removed entries
    /// through epoch-based reclamation, so the drop can trail the removal by a pass or two).
    fn released(cache: &DekCache, weaks: &[Weak<Dek>]) -> bool {
        for _ in 0..200 {
            if weaks.iter().all(|w| w.upgrade().is_none()) {
                return true;
            }
            cache.run_pending_tasks();
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn dek_cache_returns_a_dek_until_it_is_invalidated() {
        let cache = DekCache::new(Duration::from_secs(60), 100);
        let dek = Arc::new(Dek::generate());
        cache.insert("dek-1".into(), Arc::clone(&dek));
        assert!(Arc::ptr_eq(&cache.get("dek-1").unwrap(), &dek));
        assert!(cache.get("dek-2").is_none());
        cache.invalidate("dek-1");
        assert!(cache.get("dek-1").is_none());
    }

    #[test]
    fn dek_cache_drops_its_dek_after_the_ttl_so_the_key_is_zeroized() {
        let cache = DekCache::new(Duration::from_millis(50), 100);
        let dek = Arc::new(Dek::generate());
        let weak = Arc::downgrade(&dek);
        cache.insert("dek-1".into(), dek);
        cache.run_pending_tasks();
        assert!(cache.get("dek-1").is_some());
        assert_eq!(cache.len(), 1);

        std::thread::sleep(Duration::from_millis(120));
        assert!(cache.get("dek-1").is_none());
        cache.run_pending_tasks();
        assert!(cache.is_empty());
        // Nothing holds the DEK any more: it was dropped, and Zeroizing wiped its bytes.
        assert!(released(&cache, &[weak]));
    }

    #[test]
    fn clearing_the_dek_cache_drops_every_dek() {
        let cache = DekCache::new(Duration::from_secs(60), 100);
        let weaks: Vec<_> = (0..5)
            .map(|i| {
                let dek = Arc::new(Dek::generate());
                let weak = Arc::downgrade(&dek);
                cache.insert(format!("dek-{i}"), dek);
                weak
            })
            .collect();
        cache.clear();
        assert!(cache.get("dek-0").is_none());
        assert!(released(&cache, &weaks));
    }

    #[test]
    fn dek_cache_keeps_at_most_max_entries() {
        let cache = DekCache::new(Duration::from_secs(60), 3);
        for i in 0..20 {
            cache.insert(format!("dek-{i}"), Arc::new(Dek::generate()));
            cache.run_pending_tasks();
        }
        assert!(cache.len() <= 3, "{}", cache.len());
    }
}
