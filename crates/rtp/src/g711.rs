//! G.711 μ-law (PCMU, payload type 0) and A-law (PCMA, 8), ITU-T G.711.
//!
//! Both directions are table lookups: the tables are built at compile time
//! from the reference bit-twiddling (the widely used Sun `g711.c`), so the
//! per-sample cost is one load and the code that defines them stays readable.
//! Encoding indexes by the top 14 (μ-law) or 13 (A-law) bits of the sample,
//! which are all the law looks at.

/// The two laws, as negotiated in SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Law {
    /// PCMU, static payload type 0.
    Mu,
    /// PCMA, static payload type 8.
    A,
}

impl Law {
    /// The static RTP payload type (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            Law::Mu => 0,
            Law::A => 8,
        }
    }

    pub fn encode(self, pcm: &[i16], out: &mut [u8]) {
        match self {
            Law::Mu => pcm.iter().zip(out).for_each(|(&s, o)| *o = ulaw_encode(s)),
            Law::A => pcm.iter().zip(out).for_each(|(&s, o)| *o = alaw_encode(s)),
        }
    }

    pub fn decode(self, coded: &[u8], out: &mut [i16]) {
        match self {
            Law::Mu => coded
                .iter()
                .zip(out)
                .for_each(|(&b, o)| *o = ulaw_decode(b)),
            Law::A => coded
                .iter()
                .zip(out)
                .for_each(|(&b, o)| *o = alaw_decode(b)),
        }
    }

    /// The code for silence (digital zero).
    pub fn silence(self) -> u8 {
        match self {
            Law::Mu => 0xff,
            Law::A => 0xd5,
        }
    }
}

#[inline]
pub fn ulaw_encode(sample: i16) -> u8 {
    ULAW_ENCODE[((sample >> 2) as u16 & 0x3fff) as usize]
}

#[inline]
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_DECODE[code as usize]
}

#[inline]
pub fn alaw_encode(sample: i16) -> u8 {
    ALAW_ENCODE[((sample >> 3) as u16 & 0x1fff) as usize]
}

#[inline]
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_DECODE[code as usize]
}

static ULAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_to_linear(i as u8);
        i += 1;
    }
    t
};

static ALAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_to_linear(i as u8);
        i += 1;
    }
    t
};

/// Indexed by the 14-bit two's complement value `sample >> 2`.
static ULAW_ENCODE: [u8; 16384] = {
    let mut t = [0u8; 16384];
    let mut i = 0;
    while i < 16384 {
        // Sign-extend the 14-bit index back to the sample it stands for.
        let v = ((i as i32) << 18 >> 18) as i16;
        t[i] = linear_to_ulaw(v << 2);
        i += 1;
    }
    t
};

/// Indexed by the 13-bit two's complement value `sample >> 3`.
static ALAW_ENCODE: [u8; 8192] = {
    let mut t = [0u8; 8192];
    let mut i = 0;
    while i < 8192 {
        let v = ((i as i32) << 19 >> 19) as i16;
        t[i] = linear_to_alaw(v << 3);
        i += 1;
    }
    t
};

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 8159;

/// The segment (exponent) of `value`: the first end it does not exceed.
const fn segment(value: i32, ends: &[i32; 8]) -> usize {
    let mut i = 0;
    while i < 8 {
        if value <= ends[i] {
            return i;
        }
        i += 1;
    }
    8
}

const fn linear_to_ulaw(sample: i16) -> u8 {
    const ENDS: [i32; 8] = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];
    let mut pcm = (sample >> 2) as i32;
    let mask: i32 = if pcm < 0 {
        pcm = -pcm;
        0x7f
    } else {
        0xff
    };
    if pcm > ULAW_CLIP {
        pcm = ULAW_CLIP;
    }
    pcm += ULAW_BIAS >> 2;
    let seg = segment(pcm, &ENDS);
    if seg >= 8 {
        return (0x7f ^ mask) as u8;
    }
    let code = ((seg as i32) << 4) | ((pcm >> (seg + 1)) & 0xf);
    (code ^ mask) as u8
}

const fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code as i32;
    let mut t = ((u & 0x0f) << 3) + ULAW_BIAS;
    t <<= (u & 0x70) >> 4;
    (if u & 0x80 != 0 {
        ULAW_BIAS - t
    } else {
        t - ULAW_BIAS
    }) as i16
}

const fn linear_to_alaw(sample: i16) -> u8 {
    const ENDS: [i32; 8] = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];
    let mut pcm = (sample >> 3) as i32;
    let mask: i32 = if pcm >= 0 {
        0xd5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let seg = segment(pcm, &ENDS);
    if seg >= 8 {
        return (0x7f ^ mask) as u8;
    }
    let mut code = (seg as i32) << 4;
    code |= if seg < 2 {
        (pcm >> 1) & 0xf
    } else {
        (pcm >> seg) & 0xf
    };
    (code ^ mask) as u8
}

const fn alaw_to_linear(code: u8) -> i16 {
    let a = (code ^ 0x55) as i32;
    let mut t = (a & 0x0f) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        // From the G.711 tables: code → decoded value (16-bit scale).
        assert_eq!(ulaw_decode(0xff), 0);
        assert_eq!(ulaw_decode(0x7f), 0);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0xfe), 8);
        assert_eq!(ulaw_decode(0x7e), -8);
        assert_eq!(alaw_decode(0xd5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xaa), 32256);
        assert_eq!(alaw_decode(0x2a), -32256);
        // Encoding.
        assert_eq!(ulaw_encode(0), 0xff);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_encode(0), 0xd5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xaa);
        assert_eq!(alaw_encode(i16::MIN), 0x2a);
        assert_eq!(Law::Mu.silence(), ulaw_encode(0));
        assert_eq!(Law::A.silence(), alaw_encode(0));
    }

    #[test]
    fn every_code_survives_a_round_trip() {
        for code in 0..=255u8 {
            // μ-law has two zeros (0xff, 0x7f); the encoder picks 0xff.
            let expect = if code == 0x7f { 0xff } else { code };
            assert_eq!(ulaw_encode(ulaw_decode(code)), expect, "ulaw {code:#x}");
            assert_eq!(alaw_encode(alaw_decode(code)), code, "alaw {code:#x}");
        }
    }

    #[test]
    fn tables_match_the_reference_for_every_sample() {
        for s in i16::MIN..=i16::MAX {
            assert_eq!(ulaw_encode(s), linear_to_ulaw(s));
            assert_eq!(alaw_encode(s), linear_to_alaw(s));
        }
    }

    #[test]
    fn encoding_is_monotonic() {
        let mut last = i16::MIN;
        for s in i16::MIN..=i16::MAX {
            let d = ulaw_decode(ulaw_encode(s));
            assert!(d >= last, "ulaw at {s}");
            last = d;
        }
        let mut last = i16::MIN;
        for s in i16::MIN..=i16::MAX {
            let d = alaw_decode(alaw_encode(s));
            assert!(d >= last, "alaw at {s}");
            last = d;
        }
    }

    proptest! {
        #[test]
        fn round_trip_error_is_within_a_quantisation_step(s in any::<i16>()) {
            // Logarithmic laws: the step grows with the magnitude, ~1/16 of
            // it in the top segments (1/32 in the middle of a step), plus the
            // fixed linear step near zero; samples beyond the law's range
            // clip to its largest value.
            let x = i32::from(s);
            for (decoded, max) in [
                (i32::from(ulaw_decode(ulaw_encode(s))), 32124),
                (i32::from(alaw_decode(alaw_encode(s))), 32256),
            ] {
                let target = x.clamp(-max, max);
                let err = (decoded - target).abs();
                prop_assert!(err <= target.abs() / 16 + 16, "{} -> {}", s, decoded);
            }
        }

        #[test]
        fn slices_match_samples(pcm in proptest::collection::vec(any::<i16>(), 160)) {
            for law in [Law::Mu, Law::A] {
                let mut coded = [0u8; 160];
                law.encode(&pcm, &mut coded);
                let mut back = [0i16; 160];
                law.decode(&coded, &mut back);
                let mut again = [0u8; 160];
                law.encode(&back, &mut again);
                prop_assert_eq!(coded, again);
            }
        }
    }
}
