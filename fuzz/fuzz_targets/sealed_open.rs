//! Stored ciphertexts come back from disk: opening garbage must fail cleanly.
#![no_main]
use continuum_store::SecretKey;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static KEY: OnceLock<SecretKey> = OnceLock::new();
    let key = KEY.get_or_init(|| SecretKey::from_bytes(&[7u8; 32]).unwrap());
    let (aad, sealed) = data.split_at(data.len().min(8));
    assert!(key.open(sealed, aad).is_err() || sealed.len() >= 41);
    let _ = SecretKey::parse(&String::from_utf8_lossy(data));
});
