//! Bearer tokens are attacker-controlled: verification must never panic and
//! never accept a token this server did not sign.
#![no_main]
use continuum_server::auth::TokenIssuer;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static ISSUER: OnceLock<TokenIssuer> = OnceLock::new();
    let issuer = ISSUER.get_or_init(|| TokenIssuer::new(&continuum_store::SecretKey::from_bytes(&[9u8; 32]).unwrap()));
    let token = String::from_utf8_lossy(data);
    assert!(issuer.verify(&token).is_err());
    let _ = TokenIssuer::unverified_tenant(&token);
});
