//! Tone power at one frequency (Goertzel's algorithm): what this crate's,
//! the gateway's and the end-to-end tests check audio with.

/// Power of `freq` in `samples`, normalised by the length (a full-scale
/// sine gives about `(32768 / 2)^2`).
pub fn power(samples: &[i16], freq: f64, rate: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let p = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    p / (samples.len() as f64).powi(2)
}
