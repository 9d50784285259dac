//! Sealed attachments come back from disk or a bucket: opening garbage, or a
//! real sealed blob with one bit flipped, fails cleanly; an intact one opens.
#![no_main]
use continuum_blob::SealKey;
use continuum_blob::seal::{open_all, seal_all};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let key = SealKey::new([7u8; 32]);
    let _ = open_all(&key, b"tenant/attachment", input);
    if input.len() < 3 {
        return;
    }
    let chunk_len = 1 + input[0] as usize;
    let msg = &input[3..];
    let Ok(sealed) = seal_all(&key, b"tenant/attachment", chunk_len, msg) else {
        return;
    };
    assert_eq!(
        open_all(&key, b"tenant/attachment", &sealed).as_deref(),
        Ok(msg)
    );
    let at = u16::from_le_bytes([input[1], input[2]]) as usize % sealed.len();
    let mut bad = sealed;
    bad[at] ^= 1 << (input[1] % 8);
    assert!(open_all(&key, b"tenant/attachment", &bad).is_err());
});
