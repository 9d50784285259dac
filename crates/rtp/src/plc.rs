//! Packet-loss concealment for 8 kHz speech, in the spirit of G.711
//! Appendix I: a lost frame is replaced by the last pitch period repeated,
//! full level for 10 ms, then fading linearly to silence at 60 ms (longer
//! repetition sounds buzzy and a hard stop clicks). The first good frame
//! after a loss is cross-faded in from the concealment, so neither edge of
//! a gap is a discontinuity.
//!
//! Unlike Appendix I there is no 3.75 ms look-behind delay: the repetition
//! starts at a pitch lag chosen by normalised correlation over the last
//! 20 ms, so the sample after the last good one already continues the
//! waveform (for voiced speech and tones); a noisy frame has no pitch, and
//! there a small step does not stand out.

/// Samples kept: the correlation window plus the longest pitch period.
const HISTORY: usize = 400;
/// 2.5 ms (400 Hz) to 20 ms (50 Hz): a voice's fundamental lies between.
const MIN_PITCH: usize = 20;
const MAX_PITCH: usize = 160;
const CORR_WINDOW: usize = 160;
/// Concealed samples played at full level.
const FULL_LEVEL: usize = 80;
/// Concealed samples after which the output is silence (60 ms).
const SILENT_AFTER: usize = 480;
/// Cross-fade from concealment into the next good frame (5 ms).
const OVERLAP: usize = 40;

#[derive(Debug, Clone)]
pub struct Plc {
    /// What was played most recently, oldest first.
    history: [i16; HISTORY],
    /// The pitch period being repeated, and where in it we are.
    period: [i16; MAX_PITCH],
    pitch: usize,
    phase: usize,
    /// Samples concealed in the current loss; `None` when not concealing.
    lost: Option<usize>,
}

impl Default for Plc {
    fn default() -> Self {
        Self::new()
    }
}

impl Plc {
    pub fn new() -> Self {
        Plc {
            history: [0; HISTORY],
            period: [0; MAX_PITCH],
            pitch: MIN_PITCH,
            phase: 0,
            lost: None,
        }
    }

    /// Whether the last frame was concealed.
    pub fn is_concealing(&self) -> bool {
        self.lost.is_some()
    }

    /// A frame that arrived: cross-faded in place after a loss, and kept as
    /// history for the next one.
    pub fn good(&mut self, frame: &mut [i16]) {
        if self.lost.is_some() {
            let n = OVERLAP.min(frame.len());
            for (i, s) in frame.iter_mut().take(n).enumerate() {
                let w = (i + 1) as f32 / (n + 1) as f32;
                let c = f32::from(self.next_concealed());
                *s = (c * (1.0 - w) + f32::from(*s) * w) as i16;
            }
            self.lost = None;
        }
        self.remember(frame);
    }

    /// Fills `out` in place of a frame that did not arrive.
    pub fn conceal(&mut self, out: &mut [i16]) {
        if self.lost.is_none() {
            self.start_concealing();
        }
        for s in out.iter_mut() {
            *s = self.next_concealed();
        }
        self.remember(out);
    }

    /// Forgets the history (a new stream).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    fn remember(&mut self, frame: &[i16]) {
        let n = frame.len().min(HISTORY);
        self.history.copy_within(n.., 0);
        self.history[HISTORY - n..].copy_from_slice(&frame[frame.len() - n..]);
    }

    fn start_concealing(&mut self) {
        self.pitch = self.find_pitch();
        self.period[..self.pitch].copy_from_slice(&self.history[HISTORY - self.pitch..]);
        self.phase = 0;
        self.lost = Some(0);
    }

    /// The lag in `MIN_PITCH..=MAX_PITCH` whose past best matches the last
    /// `CORR_WINDOW` samples (normalised cross-correlation).
    fn find_pitch(&self) -> usize {
        let h = &self.history;
        let recent = &h[HISTORY - CORR_WINDOW..];
        let mut best = (MIN_PITCH, 0.0f64);
        for lag in MIN_PITCH..=MAX_PITCH {
            let past = &h[HISTORY - CORR_WINDOW - lag..HISTORY - lag];
            let (mut dot, mut energy) = (0.0f64, 0.0f64);
            for (&a, &b) in recent.iter().zip(past) {
                dot += f64::from(a) * f64::from(b);
                energy += f64::from(b) * f64::from(b);
            }
            if dot > 0.0 && energy > 0.0 {
                let score = dot / energy.sqrt();
                if score > best.1 {
                    best = (lag, score);
                }
            }
        }
        best.0
    }

    fn next_concealed(&mut self) -> i16 {
        let lost = self.lost.unwrap_or(0);
        let gain = if lost < FULL_LEVEL {
            1.0
        } else if lost >= SILENT_AFTER {
            0.0
        } else {
            1.0 - (lost - FULL_LEVEL) as f32 / (SILENT_AFTER - FULL_LEVEL) as f32
        };
        let s = f32::from(self.period[self.phase]) * gain;
        self.phase = (self.phase + 1) % self.pitch;
        self.lost = Some((lost + 1).min(SILENT_AFTER));
        s as i16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goertzel::power;

    fn sine(start: usize, n: usize) -> Vec<i16> {
        (start..start + n)
            .map(|i| {
                (10_000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 8000.0).sin()) as i16
            })
            .collect()
    }

    fn max_step(x: &[i16]) -> i32 {
        x.windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap()
    }

    #[test]
    fn conceals_a_tone_fades_out_and_recovers_without_clicks() {
        let mut plc = Plc::new();
        let mut out = Vec::new();
        for f in 0..5 {
            let mut frame = sine(160 * f, 160);
            plc.good(&mut frame);
            out.extend_from_slice(&frame);
        }
        let mut lost = [0i16; 160];
        plc.conceal(&mut lost);
        // The first concealed frame still carries the tone.
        assert!(power(&lost, 440.0, 8000.0) > 0.5 * power(&sine(0, 800), 440.0, 8000.0));
        out.extend_from_slice(&lost);
        for _ in 0..3 {
            plc.conceal(&mut lost);
            out.extend_from_slice(&lost);
        }
        // 80 ms lost: silent after 60 ms.
        assert!(out[800 + 480..800 + 640].iter().all(|&s| s == 0));
        for f in 9..12 {
            let mut frame = sine(160 * f, 160);
            plc.good(&mut frame);
            out.extend_from_slice(&frame);
        }
        // No sample-to-sample step much beyond the tone's own.
        let tone_step = max_step(&sine(0, 800));
        assert!(
            max_step(&out) <= tone_step + tone_step / 2,
            "{} vs {tone_step}",
            max_step(&out)
        );
    }

    #[test]
    fn short_loss_cross_fades_back() {
        let mut plc = Plc::new();
        let mut out = Vec::new();
        for f in 0..4 {
            let mut frame = sine(160 * f, 160);
            plc.good(&mut frame);
            out.extend_from_slice(&frame);
        }
        let mut lost = [0i16; 160];
        plc.conceal(&mut lost);
        out.extend_from_slice(&lost);
        assert!(plc.is_concealing());
        let mut frame = sine(800, 160);
        plc.good(&mut frame);
        out.extend_from_slice(&frame);
        assert!(!plc.is_concealing());
        let tone_step = max_step(&sine(0, 800));
        assert!(max_step(&out) <= tone_step + tone_step / 2);
    }

    #[test]
    fn silence_in_silence_out() {
        let mut plc = Plc::new();
        let mut lost = [1i16; 160];
        plc.conceal(&mut lost);
        assert!(lost.iter().all(|&s| s == 0));
    }
}
