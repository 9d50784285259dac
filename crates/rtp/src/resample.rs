//! 8 kHz ↔ 48 kHz for 20 ms frames (160 ↔ 960 samples), between the phone
//! leg (G.711) and the room (Opus runs at 48 kHz).
//!
//! Built on rubato's synchronous FFT resampler: the ratio is a fixed 1:6, so
//! every call takes exactly one 20 ms frame and gives exactly one back. Its
//! FFT block is split in sub-chunks of 10 ms: the delay is half a block
//! (5 ms each way) instead of the 10 ms a whole-frame block would add, and
//! the anti-aliasing cutoff stays far above the 3.4 kHz telephone band.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _, WindowFunction};

/// Samples in 20 ms at 8 kHz.
pub const NARROW_FRAME: usize = 160;
/// Samples in 20 ms at 48 kHz.
pub const WIDE_FRAME: usize = 960;

/// One direction of the conversion, with its filter state: a stream keeps
/// its own instance, and frames must be fed in order.
pub struct Resampler {
    inner: Fft<f32>,
    input: Vec<f32>,
    output: Vec<f32>,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("in", &self.input.len())
            .field("out", &self.output.len())
            .finish()
    }
}

impl Resampler {
    /// 8 kHz → 48 kHz: `process` takes 160 samples and gives 960.
    pub fn upsampler() -> Self {
        Self::new(8_000, 48_000, NARROW_FRAME, WIDE_FRAME)
    }

    /// 48 kHz → 8 kHz: `process` takes 960 samples and gives 160.
    pub fn downsampler() -> Self {
        Self::new(48_000, 8_000, WIDE_FRAME, NARROW_FRAME)
    }

    /// Between any two rates with whole 20 ms frames (multiples of 50 Hz,
    /// e.g. 22,050 Hz speech from espeak-ng → 8 kHz): `None` otherwise.
    pub fn between(rate_in: u32, rate_out: u32) -> Option<Self> {
        if !rate_in.is_multiple_of(50)
            || !rate_out.is_multiple_of(50)
            || rate_in == 0
            || rate_out == 0
        {
            return None;
        }
        let (rate_in, rate_out) = (rate_in as usize, rate_out as usize);
        let (frame_in, frame_out) = (rate_in / 50, rate_out / 50);
        let inner = Fft::<f32>::new_custom(
            rate_in,
            rate_out,
            frame_in,
            2,
            1,
            WindowFunction::BlackmanHarris2,
            FixedSync::Input,
        )
        .ok()?;
        (inner.input_frames_next() == frame_in && inner.output_frames_next() == frame_out).then(
            || Resampler {
                inner,
                input: vec![0.0; frame_in],
                output: vec![0.0; frame_out],
            },
        )
    }

    /// A whole clip at once (a prompt file): the tail is padded to a frame
    /// and the filter's delay taken off the front.
    pub fn convert(&mut self, input: &[i16]) -> Vec<i16> {
        let (n_in, n_out) = self.frame_sizes();
        let delay = self.delay();
        let want = (input.len() as u64 * n_out as u64).div_ceil(n_in as u64) as usize;
        let mut out = Vec::with_capacity(want + delay + n_out);
        let mut frame_in = vec![0i16; n_in];
        let mut frame_out = vec![0i16; n_out];
        let mut chunks = input.chunks(n_in);
        while out.len() < want + delay {
            frame_in.fill(0);
            if let Some(c) = chunks.next() {
                frame_in[..c.len()].copy_from_slice(c);
            }
            self.process(&frame_in, &mut frame_out);
            out.extend_from_slice(&frame_out);
        }
        out.drain(..delay.min(out.len()));
        out.truncate(want);
        out
    }

    fn new(rate_in: usize, rate_out: usize, frame_in: usize, frame_out: usize) -> Self {
        // Two sub-chunks of 10 ms; fixed rates and sizes, so construction
        // cannot fail.
        let inner = Fft::<f32>::new_custom(
            rate_in,
            rate_out,
            frame_in,
            2,
            1,
            WindowFunction::BlackmanHarris2,
            FixedSync::Input,
        )
        .expect("valid fixed resampler parameters");
        debug_assert_eq!(inner.input_frames_next(), frame_in);
        debug_assert_eq!(inner.output_frames_next(), frame_out);
        Resampler {
            inner,
            input: vec![0.0; frame_in],
            output: vec![0.0; frame_out],
        }
    }

    /// Frames this instance takes and gives per call.
    pub fn frame_sizes(&self) -> (usize, usize) {
        (self.input.len(), self.output.len())
    }

    /// The delay the filter adds, in output samples.
    pub fn delay(&self) -> usize {
        self.inner.output_delay()
    }

    /// Converts one 20 ms frame. `input` and `output` must have the sizes
    /// of [`Resampler::frame_sizes`] (panics otherwise: a caller bug).
    pub fn process(&mut self, input: &[i16], output: &mut [i16]) {
        assert_eq!(input.len(), self.input.len(), "resampler input size");
        assert_eq!(output.len(), self.output.len(), "resampler output size");
        for (f, &s) in self.input.iter_mut().zip(input) {
            *f = f32::from(s) / 32768.0;
        }
        let n_in = self.input.len();
        let n_out = self.output.len();
        let src = InterleavedSlice::new(&self.input[..], 1, n_in).expect("sized input");
        let mut dst = InterleavedSlice::new_mut(&mut self.output[..], 1, n_out).expect("sized");
        let (used, written) = self
            .inner
            .process_into_buffer(&src, &mut dst, None)
            .expect("buffers sized for the fixed chunk");
        debug_assert_eq!((used, written), (n_in, n_out));
        for (s, &f) in output.iter_mut().zip(&self.output) {
            // `as` saturates, which is the clipping we want at full scale.
            *s = (f * 32768.0).round() as i16;
        }
    }

    /// Forgets the filter state (a new stream).
    pub fn reset(&mut self) {
        self.inner.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goertzel::power;

    #[test]
    fn speech_rate_clips_come_down_to_8_khz_with_their_tone() {
        let mut r = Resampler::between(22_050, 8_000).expect("22,050 Hz has 20 ms frames");
        let tone: Vec<i16> = (0..22_050)
            .map(|i| {
                ((i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 22_050.0).sin() * 8_000.0) as i16
            })
            .collect();
        let out = r.convert(&tone);
        assert_eq!(out.len(), 8_000);
        let mid = &out[2_000..2_160];
        assert!(power(mid, 440.0, 8_000.0) > 10.0 * power(mid, 1_000.0, 8_000.0));
        assert!(Resampler::between(11_025, 8_000).is_none());
    }

    fn sine(freq: f64, rate: f64, n: usize, start: usize, amp: f64) -> Vec<i16> {
        (start..start + n)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate).sin()) as i16)
            .collect()
    }

    #[test]
    fn fixed_sizes_every_call() {
        let mut up = Resampler::upsampler();
        let mut down = Resampler::downsampler();
        assert_eq!(up.frame_sizes(), (160, 960));
        assert_eq!(down.frame_sizes(), (960, 160));
        let mut wide = [0i16; 960];
        let mut narrow = [0i16; 160];
        for _ in 0..20 {
            up.process(&[1000; 160], &mut wide);
            down.process(&wide, &mut narrow);
        }
        // A DC level survives both ways (after the filters settle).
        assert!((narrow[80] - 1000).abs() < 30, "{}", narrow[80]);
        assert!(up.delay() <= 240, "{}", up.delay());
    }

    #[test]
    fn tone_survives_up_then_down() {
        let mut up = Resampler::upsampler();
        let mut down = Resampler::downsampler();
        let mut wide_all = Vec::new();
        let mut narrow_all = Vec::new();
        for f in 0..25 {
            let input = sine(1000.0, 8000.0, 160, f * 160, 10_000.0);
            let mut wide = [0i16; 960];
            up.process(&input, &mut wide);
            wide_all.extend_from_slice(&wide);
            let mut narrow = [0i16; 160];
            down.process(&wide, &mut narrow);
            narrow_all.extend_from_slice(&narrow);
        }
        // At 48 kHz the tone is at 1 kHz and nothing is imaged at 7 kHz.
        let tail = &wide_all[wide_all.len() - 4800..];
        let tone = power(tail, 1000.0, 48_000.0);
        let image = power(tail, 7000.0, 48_000.0);
        assert!(tone > 1000.0 * image, "tone {tone} image {image}");
        let tail = &narrow_all[narrow_all.len() - 800..];
        let rms = (tail.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / 800.0).sqrt();
        assert!((rms - 10_000.0 / 2f64.sqrt()).abs() < 300.0, "rms {rms}");
    }

    #[test]
    fn downsampling_rejects_out_of_band() {
        // A 10 kHz tone at 48 kHz cannot exist at 8 kHz: it must not alias
        // to 2 kHz.
        let mut down = Resampler::downsampler();
        let mut out = Vec::new();
        for f in 0..10 {
            let input = sine(10_000.0, 48_000.0, 960, f * 960, 10_000.0);
            let mut narrow = [0i16; 160];
            down.process(&input, &mut narrow);
            out.extend_from_slice(&narrow);
        }
        let peak = out[800..].iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak < 100, "peak {peak}");
    }
}
