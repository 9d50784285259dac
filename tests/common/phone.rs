//! A real SIP phone for end-to-end tests: baresip (Debian package) playing
//! a tone file and recording what it hears, plus the tone helpers.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A mono 16-bit WAV of a sine at `hz` (sox).
pub fn tone(path: &Path, hz: u32, rate: u32, secs: u32) {
    let ok = Command::new("sox")
        .args([
            "-n",
            "-r",
            &rate.to_string(),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
        ])
        .arg(path)
        .args([
            "synth",
            &secs.to_string(),
            "sine",
            &hz.to_string(),
            "vol",
            "0.5",
        ])
        .status()
        .expect("sox runs (Debian package sox)")
        .success();
    assert!(ok, "sox made {}", path.display());
}

/// baresip answering calls for `user` on `port`, playing `wav`, recording
/// into `rec` (`*-dec.wav`: what it heard). `mediaenc`: the account's media
/// encryption (`srtp-mand`: SDES-SRTP required, RTP/SAVP), else plain RTP.
/// Its configuration and log live in `dir`.
pub fn baresip(
    dir: &Path,
    port: u16,
    user: &str,
    wav: &Path,
    rec: &Path,
    mediaenc: Option<&str>,
) -> Child {
    let conf = dir.join("baresip");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(rec).unwrap();
    std::fs::write(
        conf.join("config"),
        format!(
            "sip_listen 127.0.0.1:{port}\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\nmodule sndfile.so\nmodule srtp.so\nmodule account.so\nmodule menu.so\naudio_source aufile,{}\naudio_player aufile,/dev/null\naudio_alert aufile,/dev/null\nsnd_path {}\n",
            wav.display(),
            rec.display()
        ),
    )
    .unwrap();
    let enc = mediaenc
        .map(|m| format!(";mediaenc={m}"))
        .unwrap_or_default();
    std::fs::write(
        conf.join("accounts"),
        format!("<sip:{user}@127.0.0.1>;regint=0;answermode=auto{enc}\n"),
    )
    .unwrap();
    std::fs::write(conf.join("contacts"), "").unwrap();
    Command::new("baresip")
        .arg("-f")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("baresip.log")).unwrap(),
        ))
        .stderr(Stdio::null())
        .spawn()
        .expect("baresip runs (Debian package baresip)")
}

/// 16-bit PCM samples of a WAV file (the `data` chunk; a file still being
/// written, whose header does not know its length yet, to its end).
pub fn wav_samples(path: &Path) -> (u32, Vec<i16>) {
    let bytes = std::fs::read(path).unwrap_or_default();
    if bytes.len() < 28 {
        return (8000, Vec::new());
    }
    let rate = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    let mut i = 12;
    while i + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[i + 4..i + 8].try_into().unwrap()) as usize;
        if &bytes[i..i + 4] == b"data" {
            let start = i + 8;
            let end = if len == 0 || start + len > bytes.len() {
                bytes.len()
            } else {
                start + len
            };
            let data = &bytes[start..end];
            return (
                rate,
                data.chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            );
        }
        i += 8 + len + (len & 1);
    }
    (rate, Vec::new())
}

/// The recording of what a baresip heard (`*-dec.wav` in `rec`), if any.
pub fn heard_file(rec: &Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(rec)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
}

/// Power at `hz` relative to the signal's total power (Goertzel), 0..=1.
pub fn tone_share(rate: u32, samples: &[i16], hz: f64) -> f64 {
    let n = samples.len() as f64;
    let k = (0.5 + n * hz / rate as f64).floor();
    let w = 2.0 * std::f64::consts::PI * k / n;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s = x as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let total: f64 = samples
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        * n
        / 2.0;
    if total == 0.0 { 0.0 } else { power / total }
}

/// The share of `hz` in the last `secs` seconds a baresip heard, and the
/// RMS level there (0 before anything was recorded).
pub fn heard_tone(rec: &Path, hz: f64, secs: u32) -> (f64, f64) {
    let Some(file) = heard_file(rec) else {
        return (0.0, 0.0);
    };
    let (rate, samples) = wav_samples(&file);
    let want = (rate * secs) as usize;
    if samples.len() < want {
        return (0.0, 0.0);
    }
    let tail = &samples[samples.len() - want..];
    let rms = (tail.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
    (tone_share(rate, tail, hz), rms)
}

/// A phone process, stopped when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// baresip calling `target` (a `sip:` URI) as `user` at once, playing `wav`
/// and recording what it hears into `rec`; it hangs up when the far end does.
pub fn baresip_dial(dir: &Path, user: &str, wav: &Path, rec: &Path, target: &str) -> Running {
    let conf = dir.join("baresip-dial");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(rec).unwrap();
    let port = super::sipp::free_udp_port();
    std::fs::write(
        conf.join("config"),
        format!(
            "sip_listen 127.0.0.1:{port}\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\nmodule sndfile.so\nmodule account.so\nmodule menu.so\naudio_source aufile,{}\naudio_player aufile,/dev/null\naudio_alert aufile,/dev/null\nsnd_path {}\n",
            wav.display(),
            rec.display()
        ),
    )
    .unwrap();
    std::fs::write(
        conf.join("accounts"),
        format!("<sip:{user}@127.0.0.1>;regint=0\n"),
    )
    .unwrap();
    std::fs::write(conf.join("contacts"), "").unwrap();
    Command::new("baresip")
        .arg("-f")
        .arg(&conf)
        .arg("-e")
        .arg(format!("/dial {target}"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("baresip-dial.log")).unwrap(),
        ))
        .stderr(Stdio::null())
        .spawn()
        .map(Running)
        .expect("baresip runs (Debian package baresip)")
}
