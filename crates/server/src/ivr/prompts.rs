//! IVR audio: text rendered to speech with espeak-ng and prompt files, both
//! as 8 kHz mono samples ready for the phone.
//!
//! Rendering is cached twice: on disk (`<cache>/<sha256>.wav`, keyed by the
//! voice and the text, so a restart does not render again) and in memory
//! behind a once-cell per prompt, so two hundred callers reaching the same
//! menu at once cause one espeak-ng run, not two hundred.

use continuum_rtp::resample::Resampler;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::OnceCell;

/// What the phone hears: 8 kHz, 16-bit, mono.
pub type Audio = Arc<[i16]>;

pub const RATE: u32 = 8_000;
/// Longest text rendered at once (a menu is a few hundred characters).
const MAX_TEXT: usize = 4_000;
/// Longest prompt file or rendering kept (5 minutes).
const MAX_SAMPLES: usize = RATE as usize * 300;
/// Prompts kept in memory; beyond this the least recently added go (they
/// are still on disk).
const MEMORY_PROMPTS: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error(
        "espeak-ng is not installed, so text cannot be spoken: install it (Debian: apt-get install espeak-ng) or use recorded prompt files"
    )]
    NoSpeech,
    #[error("espeak-ng failed: {0}")]
    Speech(String),
    #[error("prompt file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("the text is {0} characters; at most {MAX_TEXT}")]
    TooLong(usize),
}

pub struct Prompts {
    cache_dir: PathBuf,
    files_dir: PathBuf,
    espeak: Option<PathBuf>,
    memory: parking_lot::Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    cells: HashMap<String, Arc<OnceCell<Audio>>>,
    order: std::collections::VecDeque<String>,
}

impl Prompts {
    /// `cache_dir` keeps renderings; `files_dir` is where `play:` file names
    /// are looked up.
    pub fn new(cache_dir: PathBuf, files_dir: PathBuf) -> Prompts {
        Prompts {
            cache_dir,
            files_dir,
            espeak: find_espeak(),
            memory: Default::default(),
        }
    }

    pub fn can_speak(&self) -> bool {
        self.espeak.is_some()
    }

    /// `text` spoken in `language` (an espeak-ng voice: `en`, `es`, `en-us`…).
    pub async fn say(&self, text: &str, language: &str) -> Result<Audio, PromptError> {
        if text.chars().count() > MAX_TEXT {
            return Err(PromptError::TooLong(text.chars().count()));
        }
        let voice = voice_name(language);
        let key = hex::encode(Sha256::digest(format!("espeak-ng\0{voice}\0{text}")));
        let cell = self.cell(&key);
        cell.get_or_try_init(|| self.render(&key, text, &voice))
            .await
            .cloned()
    }

    /// A prompt file by name, under the prompt directory (no `..`, no
    /// absolute paths): WAV, 16-bit PCM or G.711, any 20 ms-framed rate.
    pub async fn file(&self, name: &str) -> Result<Audio, PromptError> {
        let bad = |reason: &str| PromptError::File {
            path: name.to_owned(),
            reason: reason.to_owned(),
        };
        let rel = Path::new(name);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(bad("must be a name under the prompt directory"));
        }
        let key = format!("file\0{name}");
        let cell = self.cell(&key);
        let path = self.files_dir.join(rel);
        cell.get_or_try_init(|| async move {
            let bytes = tokio::fs::read(&path).await.map_err(|e| {
                bad(&format!(
                    "cannot be read ({e}) in {}",
                    self.files_dir.display()
                ))
            })?;
            decode_wav(&bytes).map_err(|r| bad(&r))
        })
        .await
        .cloned()
    }

    fn cell(&self, key: &str) -> Arc<OnceCell<Audio>> {
        let mut m = self.memory.lock();
        if let Some(c) = m.cells.get(key) {
            return c.clone();
        }
        while m.order.len() >= MEMORY_PROMPTS {
            if let Some(old) = m.order.pop_front() {
                m.cells.remove(&old);
            }
        }
        let c = Arc::new(OnceCell::new());
        m.cells.insert(key.to_owned(), c.clone());
        m.order.push_back(key.to_owned());
        c
    }

    async fn render(&self, key: &str, text: &str, voice: &str) -> Result<Audio, PromptError> {
        let cached = self.cache_dir.join(format!("{key}.wav"));
        if let Ok(bytes) = tokio::fs::read(&cached).await
            && let Ok(audio) = decode_wav(&bytes)
        {
            return Ok(audio);
        }
        let espeak = self.espeak.as_ref().ok_or(PromptError::NoSpeech)?;
        let _ = tokio::fs::create_dir_all(&self.cache_dir).await;
        let raw = tempfile::Builder::new()
            .suffix(".wav")
            .tempfile_in(&self.cache_dir)
            .map_err(|e| {
                PromptError::Speech(format!(
                    "no temporary file in {}: {e}",
                    self.cache_dir.display()
                ))
            })?
            .into_temp_path();
        // The text goes in on stdin: a prompt that starts with `-` is never
        // taken for an option.
        let mut child = tokio::process::Command::new(espeak)
            .arg("-v")
            .arg(voice)
            .arg("-w")
            .arg(&*raw)
            .arg("--stdin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| PromptError::Speech(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|e| PromptError::Speech(e.to_string()))?;
        }
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
                .await
                .map_err(|_| PromptError::Speech("took over 30 s".into()))?
                .map_err(|e| PromptError::Speech(e.to_string()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(PromptError::Speech(format!(
                "voice `{voice}`: {}",
                err.trim().chars().take(200).collect::<String>()
            )));
        }
        let bytes = tokio::fs::read(&*raw)
            .await
            .map_err(|e| PromptError::Speech(e.to_string()))?;
        let audio = decode_wav(&bytes).map_err(PromptError::Speech)?;
        // Written under a temporary name and renamed: a crash never leaves
        // a half prompt for the next start to play.
        if let Ok(mut tmp) = tempfile::Builder::new()
            .suffix(".wav")
            .tempfile_in(&self.cache_dir)
            && write_wav(tmp.as_file_mut(), &audio).is_ok()
        {
            let _ = tmp.persist(&cached);
        }
        Ok(audio)
    }
}

/// espeak-ng's voice for a language tag (`en-US` → `en-us`), with anything
/// odd replaced by `en`: the voice name goes on a command line.
fn voice_name(language: &str) -> String {
    let l = language.trim().to_ascii_lowercase();
    if !l.is_empty() && l.len() <= 16 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        l
    } else {
        "en".into()
    }
}

fn find_espeak() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("espeak-ng"))
        .find(|p| p.is_file())
}

/// A WAV file as 8 kHz mono: 16-bit PCM or G.711 (μ-law, A-law), mono or
/// the first channel of several, any rate with whole 20 ms frames.
pub fn decode_wav(bytes: &[u8]) -> Result<Audio, String> {
    let mut reader = hound::WavReader::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a WAV file ({e})"))?;
    let spec = reader.spec();
    let channels = spec.channels.max(1) as usize;
    let limit = MAX_SAMPLES * channels * (spec.sample_rate as usize / RATE as usize).max(1);
    let samples: Vec<i16> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 16) => reader
            .samples::<i16>()
            .take(limit)
            .step_by(channels)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("broken audio data ({e})"))?,
        _ => {
            return Err(format!(
                "{}-bit {:?} audio; use 16-bit PCM WAV",
                spec.bits_per_sample, spec.sample_format
            ));
        }
    };
    let samples = if spec.sample_rate == RATE {
        samples
    } else {
        Resampler::between(spec.sample_rate, RATE)
            .ok_or_else(|| format!("{} Hz cannot be converted; use 8000 Hz", spec.sample_rate))?
            .convert(&samples)
    };
    if samples.is_empty() {
        return Err("no audio in it".into());
    }
    Ok(samples.into())
}

pub fn write_wav(out: &mut std::fs::File, audio: &[i16]) -> Result<(), hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::new(std::io::BufWriter::new(out), spec)?;
    for s in audio {
        w.write_sample(*s)?;
    }
    w.finalize()
}

/// A WAV file of 8 kHz samples, in memory (a voicemail for the blob store).
pub fn wav_bytes(audio: &[i16]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::with_capacity(44 + audio.len() * 2));
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    if let Ok(mut w) = hound::WavWriter::new(&mut out, spec) {
        for s in audio {
            let _ = w.write_sample(*s);
        }
        let _ = w.finalize();
    }
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn text_is_spoken_once_and_cached_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let prompts = Prompts::new(dir.path().join("cache"), dir.path().join("files"));
        if !prompts.can_speak() {
            eprintln!("espeak-ng is not installed: skipped (scripts/test installs it)");
            return;
        }
        let a = prompts
            .say("-- press one for the nurse", "en")
            .await
            .unwrap();
        assert!(a.len() > RATE as usize / 2, "{} samples", a.len());
        assert!(a.iter().any(|s| s.unsigned_abs() > 1_000), "silent speech");
        let files = std::fs::read_dir(dir.path().join("cache")).unwrap().count();
        assert_eq!(files, 1);
        let again = Prompts::new(dir.path().join("cache"), dir.path().join("files"));
        let b = again.say("-- press one for the nurse", "en").await.unwrap();
        assert_eq!(a.len(), b.len());
    }

    #[tokio::test]
    async fn prompt_files_stay_in_their_directory_and_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("beep.wav"), wav_bytes(&[1_000; 1_600])).unwrap();
        std::fs::write(files.join("junk.wav"), b"not audio").unwrap();
        let prompts = Prompts::new(dir.path().join("cache"), files);
        assert_eq!(prompts.file("beep.wav").await.unwrap().len(), 1_600);
        let e = prompts.file("../secret.wav").await.unwrap_err().to_string();
        assert!(e.contains("under the prompt directory"), "{e}");
        let e = prompts.file("junk.wav").await.unwrap_err().to_string();
        assert!(e.contains("not a WAV file"), "{e}");
        let e = prompts.file("missing.wav").await.unwrap_err().to_string();
        assert!(e.contains("cannot be read"), "{e}");
    }
}
