//! Secrets at rest: AES-256-GCM under the key in `NETCRON_SECRET_KEY`.
//!
//! A sealed secret is `version (1 byte) || nonce (12 bytes) || ciphertext+tag`. The version byte
//! leaves room for key rotation. The associated data binds a ciphertext to the row and field it
//! was written for, so a ciphertext copied into another credential does not decrypt.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore as _;
use zeroize::{Zeroize, ZeroizeOnDrop};

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;

/// A string that must never be printed: its `Debug` and `Display` redact it and its memory is
/// wiped on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plaintext. Call sites are the only places a secret is visible; keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "NETCRON_SECRET_KEY must be the base64 encoding of exactly 32 random bytes; \
         generate one with `netcron keygen` or `openssl rand -base64 32`"
    )]
    BadKey,
    #[error("a stored secret could not be decrypted (wrong NETCRON_SECRET_KEY or corrupted data)")]
    Decrypt,
}

/// The AES-256-GCM key every role that touches secrets shares.
#[derive(Clone)]
pub struct SecretKey(Aes256Gcm);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Parses the base64 text of a 32-byte key.
    ///
    /// # Errors
    /// [`CryptoError::BadKey`] when the text is not base64 or not 32 bytes long.
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let mut bytes = B64.decode(text.trim()).map_err(|_| CryptoError::BadKey)?;
        if bytes.len() != 32 {
            bytes.zeroize();
            return Err(CryptoError::BadKey);
        }
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey);
        bytes.zeroize();
        cipher.map(Self)
    }

    /// A fresh random key, base64-encoded, for `netcron keygen`.
    pub fn generate_base64() -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let text = B64.encode(bytes);
        bytes.zeroize();
        text
    }

    /// Encrypts `plaintext`, binding it to `context` (for example `credential:<id>:secret`).
    pub fn seal(&self, plaintext: &str, context: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: context.as_bytes(),
        };
        // Encryption with a valid key and a 12-byte nonce cannot fail for inputs below
        // AES-GCM's 64 GiB limit, which the API's body limit keeps us far from.
        let ciphertext = self
            .0
            .encrypt(Nonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Decrypts what [`SecretKey::seal`] produced under the same `context`.
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] when the key, the context or the bytes do not match.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<SecretString, CryptoError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != FORMAT_V1 {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: context.as_bytes(),
        };
        let plain = self
            .0
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(plain).map(SecretString).map_err(|e| {
            let mut bytes = e.into_bytes();
            bytes.zeroize();
            CryptoError::Decrypt
        })
    }

    /// [`SecretKey::seal`] as base64, for a sealed value kept in JSON.
    pub fn seal_base64(&self, plaintext: &str, context: &str) -> String {
        B64.encode(self.seal(plaintext, context))
    }

    /// Opens what [`SecretKey::seal_base64`] produced under the same `context`.
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] when the text is not base64, or as [`SecretKey::open`].
    pub fn open_base64(&self, sealed: &str, context: &str) -> Result<SecretString, CryptoError> {
        let bytes = B64.decode(sealed).map_err(|_| CryptoError::Decrypt)?;
        self.open(&bytes, context)
    }
}

/// The associated-data contexts secrets are sealed under: binding a ciphertext to the row and
/// field it belongs to, so a sealed value copied to another row or field does not open.
/// Whoever seals (the api) and whoever opens (the executor, ingest) name them here, once.
pub mod context {
    use uuid::Uuid;

    /// A credential's `field` (`secret`, `passphrase` or `enable_secret`).
    pub fn credential(id: Uuid, field: &str) -> String {
        format!("credential:{id}:{field}")
    }

    /// A webhook's signing secret.
    pub fn webhook(id: Uuid) -> String {
        format!("webhook:{id}:secret")
    }

    /// A secret template variable `name` of a device or job (`owner`).
    pub fn variable(owner: Uuid, name: &str) -> String {
        format!("vars:{owner}:{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_base64(&SecretKey::generate_base64()).expect("generated key parses")
    }

    #[test]
    fn sealed_secret_opens_only_with_same_key_and_context() {
        let k = key();
        let sealed = k.seal("hunter2", "credential:1:secret");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            k.open(&sealed, "credential:1:secret")
                .expect("opens")
                .expose(),
            "hunter2"
        );
        assert!(k.open(&sealed, "credential:2:secret").is_err());
        assert!(key().open(&sealed, "credential:1:secret").is_err());
    }

    #[test]
    fn malformed_keys_are_rejected() {
        assert!(SecretKey::from_base64("not base64!").is_err());
        assert!(SecretKey::from_base64("c2hvcnQ=").is_err());
    }

    #[test]
    fn debug_redacts() {
        assert_eq!(
            format!("{:?}", SecretString::new("pw")),
            "SecretString(<redacted>)"
        );
    }
}
