//! Active-speaker detection from the RFC 6464 audio-level header extension:
//! a smoothed loudness per participant; the loudest above a floor becomes the
//! speaker, with hysteresis so the highlight does not flicker between people.

use crate::participant::ParticipantId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Smoothed loudness (0 = silence .. 127 = full scale) below which nobody speaks.
const FLOOR: f32 = 35.0;
/// A level older than this no longer counts (the participant went quiet or left).
const STALE: Duration = Duration::from_millis(600);
/// The speaker changes at most this often.
const HOLD: Duration = Duration::from_millis(1200);

#[derive(Debug, Default)]
pub struct SpeakerDetector {
    levels: HashMap<ParticipantId, (f32, Instant)>,
    current: Option<ParticipantId>,
    switched_at: Option<Instant>,
}

impl SpeakerDetector {
    /// `level` as carried on the wire: 0 dBov (loudest) down to -127 (silence).
    pub fn observe(&mut self, who: ParticipantId, level: i8, at: Instant) {
        let loudness = (127 - level.unsigned_abs().min(127) as i32) as f32;
        let entry = self.levels.entry(who).or_insert((0.0, at));
        entry.0 = entry.0 * 0.8 + loudness * 0.2;
        entry.1 = at;
    }

    pub fn forget(&mut self, who: ParticipantId) {
        self.levels.remove(&who);
    }

    #[cfg(test)]
    pub fn current(&self) -> Option<ParticipantId> {
        self.current
    }

    /// The new speaker (`Some(None)`: nobody speaks now), if it changed.
    pub fn tick(&mut self, now: Instant) -> Option<Option<ParticipantId>> {
        if self
            .switched_at
            .is_some_and(|t| now.saturating_duration_since(t) < HOLD)
        {
            return None;
        }
        let loudest = self
            .levels
            .iter()
            .filter(|(_, (level, at))| {
                *level >= FLOOR && now.saturating_duration_since(*at) < STALE
            })
            .max_by(|a, b| a.1.0.total_cmp(&b.1.0))
            .map(|(who, _)| *who);
        if loudest == self.current {
            return None;
        }
        self.current = loudest;
        self.switched_at = Some(now);
        Some(loudest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loudest_becomes_speaker_with_hysteresis() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::default();
        let (a, b) = (ParticipantId(1), ParticipantId(2));
        for i in 0..20 {
            let t = t0 + Duration::from_millis(20 * i);
            d.observe(a, -20, t);
            d.observe(b, -90, t);
        }
        let t = t0 + Duration::from_millis(400);
        assert_eq!(d.tick(t), Some(Some(a)));
        // B gets loud, but the speaker holds for a while.
        for i in 0..70 {
            let t = t + Duration::from_millis(20 * i);
            d.observe(a, -100, t);
            d.observe(b, -10, t);
        }
        assert_eq!(d.tick(t + Duration::from_millis(600)), None, "held");
        assert_eq!(d.tick(t + Duration::from_millis(1390)), Some(Some(b)));
    }

    #[test]
    fn silence_means_nobody() {
        let t0 = Instant::now();
        let mut d = SpeakerDetector::default();
        for i in 0..20 {
            d.observe(ParticipantId(1), -127, t0 + Duration::from_millis(20 * i));
        }
        assert_eq!(d.tick(t0 + Duration::from_millis(400)), None);
        assert_eq!(d.current(), None);
    }
}
