//! At-rest encryption. The server master key (config or a 0600 file in the data
//! dir) wraps one random data key per tenant; PHI is sealed with the tenant key
//! using XChaCha20-Poly1305 (random 192-bit nonces are safe at any volume, unlike
//! 96-bit AES-GCM nonces). The associated data binds each ciphertext to its row,
//! so a ciphertext copied into another row fails to open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "ciphertext failed authentication (tampered, truncated or sealed under another key or row)"
    )]
    Open,
    #[error("master key must be 32 bytes encoded as 64 hex characters or standard base64")]
    BadMasterKey,
}

/// 32 secret bytes, wiped on drop.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        SecretKey(k)
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = b.try_into().map_err(|_| CryptoError::BadMasterKey)?;
        Ok(SecretKey(Zeroizing::new(arr)))
    }

    /// Parses 64 hex characters or base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        use base64::Engine;
        let text = text.trim();
        if let Ok(bytes) = hex::decode(text) {
            return Self::from_bytes(&bytes);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| CryptoError::BadMasterKey)?;
        Self::from_bytes(&bytes)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_ref())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Derives an independent key for `purpose` (HKDF-SHA256).
    pub fn derive(&self, purpose: &str) -> SecretKey {
        let hk = Hkdf::<Sha256>::new(Some(b"continuum-v1"), self.0.as_ref());
        let mut out = Zeroizing::new([0u8; 32]);
        hk.expand(purpose.as_bytes(), out.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        SecretKey(out)
    }

    /// `version || nonce || ciphertext+tag`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(self.0.as_ref().into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != VERSION {
            return Err(CryptoError::Open);
        }
        let cipher = XChaCha20Poly1305::new(self.0.as_ref().into());
        cipher
            .decrypt(
                XNonce::from_slice(&sealed[1..1 + NONCE_LEN]),
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad,
                },
            )
            .map_err(|_| CryptoError::Open)
    }

    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref())
            .expect("HMAC takes any key length");
        for p in parts {
            // Length-prefix every part so ("ab","c") and ("a","bc") differ.
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// A tenant's unwrapped keys, cached in memory.
#[derive(Clone, Debug)]
pub struct TenantKeys {
    /// Seals PHI.
    pub data: SecretKey,
    /// Keys the blind index that lets us look up a phone number without storing it in clear.
    pub lookup: SecretKey,
}

impl TenantKeys {
    pub fn from_data_key(data: SecretKey) -> Self {
        let lookup = data.derive("blind-index");
        TenantKeys { data, lookup }
    }

    pub fn blind_index(&self, kind: &str, value: &str) -> Vec<u8> {
        self.lookup
            .mac(&[kind.as_bytes(), value.as_bytes()])
            .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sealed_data_only_opens_with_its_key_and_row() {
        let k = SecretKey::generate();
        let sealed = k.seal(b"chest pain since 2am", b"row-1");
        assert_eq!(k.open(&sealed, b"row-1").unwrap(), b"chest pain since 2am");
        assert!(k.open(&sealed, b"row-2").is_err());
        assert!(SecretKey::generate().open(&sealed, b"row-1").is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(k.open(&flipped, b"row-1").is_err());
        assert!(k.open(&sealed[..10], b"row-1").is_err());
    }

    #[test]
    fn master_keys_parse_from_hex_and_base64() {
        let k = SecretKey::generate();
        let again = SecretKey::parse(&k.to_hex()).unwrap();
        assert_eq!(k.as_bytes(), again.as_bytes());
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(k.as_bytes());
        assert_eq!(SecretKey::parse(&b64).unwrap().as_bytes(), k.as_bytes());
        assert!(SecretKey::parse("too short").is_err());
    }

    proptest! {
        #[test]
        fn seal_open_round_trips(msg in proptest::collection::vec(any::<u8>(), 0..2048), aad in proptest::collection::vec(any::<u8>(), 0..64)) {
            let k = SecretKey::generate();
            prop_assert_eq!(k.open(&k.seal(&msg, &aad), &aad).unwrap(), msg);
        }

        #[test]
        fn open_never_panics_on_garbage(garbage in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = SecretKey::generate().open(&garbage, b"");
        }
    }
}
