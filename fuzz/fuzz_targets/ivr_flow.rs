//! Flow files come from admins' uploads: loading one must never panic,
//! whatever the bytes, and every refusal names a line.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let src = String::from_utf8_lossy(data);
    let report = continuum_ivr::check(&src);
    for d in &report.errors {
        assert!(d.line >= 1, "an error without a line: {}", d.message);
    }
});
