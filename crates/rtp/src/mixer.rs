//! An N-party mix-minus mixer for fixed-size frames (any rate; 20 ms at
//! 48 kHz is 960 samples): each participant hears the sum of everyone else.
//!
//! The sum of all inputs is taken once in i32 and each participant's own
//! input is subtracted from it, so a mix costs O(N · frame) rather than
//! O(N² · frame). The result goes through a soft knee instead of a hard
//! clamp: two loud talkers overlapping then compress instead of clipping
//! into harsh square waves.

use std::collections::HashMap;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MixerError {
    #[error("participant {0} is not in the mix")]
    Unknown(u64),
    #[error("participant {0} is already in the mix")]
    Duplicate(u64),
    #[error("frame of {got} samples, the mixer takes {want}")]
    FrameSize { got: usize, want: usize },
}

/// Level below which a participant is not speaking (dBov, RFC 6464 scale).
const SPEAKING_DBOV: f32 = -45.0;
/// Frames a participant stays "speaking" after the level drops, so word
/// gaps do not flicker the indicator (15 × 20 ms).
const HANGOVER_FRAMES: u32 = 15;
/// Where the soft knee begins (-3 dBFS).
const KNEE: i32 = 23_197;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    /// RMS level of the last frame in dBov (0 = full scale, -127 = silence).
    pub dbov: f32,
    pub speaking: bool,
}

#[derive(Debug, Clone)]
struct Participant {
    input: Vec<i16>,
    /// Whether `input` holds this frame's audio.
    fresh: bool,
    level: Level,
    hangover: u32,
}

#[derive(Debug, Clone)]
pub struct Mixer {
    frame: usize,
    participants: HashMap<u64, Participant>,
    sum: Vec<i32>,
}

impl Mixer {
    /// A mixer for frames of `frame` samples.
    pub fn new(frame: usize) -> Self {
        Mixer {
            frame,
            participants: HashMap::new(),
            sum: vec![0; frame],
        }
    }

    pub fn add(&mut self, id: u64) -> Result<(), MixerError> {
        if self.participants.contains_key(&id) {
            return Err(MixerError::Duplicate(id));
        }
        self.participants.insert(
            id,
            Participant {
                input: vec![0; self.frame],
                fresh: false,
                level: Level {
                    dbov: -127.0,
                    speaking: false,
                },
                hangover: 0,
            },
        );
        Ok(())
    }

    pub fn remove(&mut self, id: u64) -> Result<(), MixerError> {
        self.participants
            .remove(&id)
            .map(|_| ())
            .ok_or(MixerError::Unknown(id))
    }

    pub fn len(&self) -> usize {
        self.participants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }

    /// Gives a participant's audio for this frame. A participant with none
    /// (muted, nothing received) contributes silence.
    pub fn push(&mut self, id: u64, samples: &[i16]) -> Result<(), MixerError> {
        if samples.len() != self.frame {
            return Err(MixerError::FrameSize {
                got: samples.len(),
                want: self.frame,
            });
        }
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(MixerError::Unknown(id))?;
        p.input.copy_from_slice(samples);
        p.fresh = true;
        Ok(())
    }

    /// The level and speaking state from the last [`Mixer::mix`].
    pub fn level(&self, id: u64) -> Option<Level> {
        self.participants.get(&id).map(|p| p.level)
    }

    /// Mixes this frame: calls `out` once per participant with what it
    /// should hear, then clears the inputs for the next frame.
    pub fn mix(&mut self, mut out: impl FnMut(u64, &[i16])) {
        self.sum.iter_mut().for_each(|s| *s = 0);
        for p in self.participants.values_mut() {
            if !p.fresh {
                p.input.iter_mut().for_each(|s| *s = 0);
            }
            for (acc, &s) in self.sum.iter_mut().zip(&p.input) {
                *acc += i32::from(s);
            }
            update_level(p);
        }
        let mut buf = vec![0i16; self.frame];
        for (&id, p) in self.participants.iter_mut() {
            for ((o, &total), &own) in buf.iter_mut().zip(&self.sum).zip(&p.input) {
                *o = soft_clip(total - i32::from(own));
            }
            out(id, &buf);
            p.fresh = false;
        }
    }
}

fn update_level(p: &mut Participant) {
    let dbov = dbov(&p.input);
    let speaking = if dbov > SPEAKING_DBOV {
        p.hangover = HANGOVER_FRAMES;
        true
    } else if p.hangover > 0 {
        p.hangover -= 1;
        true
    } else {
        false
    };
    p.level = Level { dbov, speaking };
}

/// RMS level in dBov, -127 for digital silence (RFC 6464's floor).
pub fn dbov(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return -127.0;
    }
    let energy: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
    let rms = (energy / samples.len() as f64).sqrt();
    if rms < 1e-9 {
        return -127.0;
    }
    (20.0 * (rms / 32768.0).log10()).clamp(-127.0, 0.0) as f32
}

/// Identity below the knee; above it, a rational curve that keeps rising
/// but never reaches full scale (continuous and monotonic).
fn soft_clip(x: i32) -> i16 {
    let mag = x.unsigned_abs() as i64;
    let knee = i64::from(KNEE);
    if mag <= knee {
        return x as i16;
    }
    let room = 32767 - knee;
    let over = mag - knee;
    let y = knee + over * room / (over + room);
    (if x < 0 { -y } else { y }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(m: &mut Mixer) -> HashMap<u64, Vec<i16>> {
        let mut out = HashMap::new();
        m.mix(|id, s| {
            out.insert(id, s.to_vec());
        });
        out
    }

    #[test]
    fn mix_minus_three_parties() {
        let mut m = Mixer::new(960);
        for id in 1..=3 {
            m.add(id).unwrap();
        }
        assert_eq!(m.add(1), Err(MixerError::Duplicate(1)));
        m.push(1, &[100; 960]).unwrap();
        m.push(2, &[20; 960]).unwrap();
        m.push(3, &[3; 960]).unwrap();
        let out = frames(&mut m);
        assert_eq!(out[&1][0], 23);
        assert_eq!(out[&2][0], 103);
        assert_eq!(out[&3][0], 120);
        // Nobody pushed: everyone hears silence (inputs do not linger).
        let out = frames(&mut m);
        assert!(out.values().all(|f| f.iter().all(|&s| s == 0)));
        assert_eq!(m.push(9, &[0; 960]), Err(MixerError::Unknown(9)));
        assert_eq!(
            m.push(1, &[0; 10]),
            Err(MixerError::FrameSize { got: 10, want: 960 })
        );
    }

    #[test]
    fn loud_sums_saturate_softly() {
        let mut m = Mixer::new(4);
        for id in 1..=3 {
            m.add(id).unwrap();
        }
        m.push(1, &[30_000, -30_000, 10_000, i16::MAX]).unwrap();
        m.push(2, &[30_000, -30_000, 10_000, i16::MAX]).unwrap();
        m.push(3, &[0; 4]).unwrap();
        let out = frames(&mut m);
        let f = &out[&3];
        assert!(f[0] > KNEE as i16 && f[0] < i16::MAX);
        assert_eq!(f[1], -f[0]);
        assert_eq!(f[2], 20_000); // below the knee: untouched
        assert!(f[3] >= f[0]);
        // Monotonic across the knee.
        let mut last = i16::MIN;
        for x in (-70_000..70_000).step_by(7) {
            let y = soft_clip(x);
            assert!(y >= last);
            last = y;
        }
    }

    #[test]
    fn levels_and_speaking() {
        let mut m = Mixer::new(960);
        m.add(1).unwrap();
        m.add(2).unwrap();
        let tone: Vec<i16> = (0..960)
            .map(|i| (16384.0 * (i as f64 * 0.1).sin()) as i16)
            .collect();
        m.push(1, &tone).unwrap();
        m.mix(|_, _| {});
        let l = m.level(1).unwrap();
        // A half-scale sine: -6 dB for the amplitude, -3 dB for RMS.
        assert!((l.dbov + 9.0).abs() < 0.5, "{}", l.dbov);
        assert!(l.speaking);
        assert_eq!(m.level(2).unwrap().dbov, -127.0);
        assert!(!m.level(2).unwrap().speaking);
        // Hangover: still speaking for a while after going quiet.
        for _ in 0..HANGOVER_FRAMES {
            m.mix(|_, _| {});
            assert!(m.level(1).unwrap().speaking);
        }
        m.mix(|_, _| {});
        assert!(!m.level(1).unwrap().speaking);
        m.remove(2).unwrap();
        assert_eq!(m.len(), 1);
    }
}
