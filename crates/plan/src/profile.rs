//! The workload profile: a TOML file (see `examples/plan/profile.toml`) and,
//! optionally, a measured hourly arrival series as CSV. Everything is
//! validated here, and every error names the field it is about.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Session channels (sessions that hold media for minutes) and message
/// channels (counted per message). `[channels.X]` must be one of these.
pub const CHANNELS: [&str; 5] = ["video", "group_video", "voice", "sms", "whatsapp"];

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Read(#[from] crate::ReadError),
    #[error("{path}: {message}")]
    Toml { path: String, message: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("unknown channel `channels.{name}` (known: {})", CHANNELS.join(", "))]
    UnknownChannel { name: String },
    #[error("{path} line {line}: {reason}")]
    Csv {
        path: String,
        line: usize,
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ProfileError {
    ProfileError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A typical clinic day (relative weights per local hour, 00–23): quiet
/// nights, a morning peak at 10–11, a lunch dip and a smaller afternoon peak.
pub const DEFAULT_HOURLY: [f64; 24] = [
    0.2, 0.1, 0.1, 0.1, 0.2, 0.4, 1.0, 2.5, 5.0, 7.5, 8.0, 7.5, 6.0, 6.5, 7.0, 6.5, 5.5, 4.5, 3.5,
    3.0, 2.5, 1.8, 1.0, 0.5,
];
/// Monday .. Sunday: Monday morning is the weekly peak.
pub const DEFAULT_WEEKDAY: [f64; 7] = [1.35, 1.1, 1.0, 1.0, 0.95, 0.4, 0.25];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Sessions (visits and calls, all session channels) on an average day.
    pub visits_per_day: Option<f64>,
    /// A measured hourly arrival series instead (CSV, relative to the profile).
    pub arrivals_csv: Option<PathBuf>,
    #[serde(default = "days_per_month")]
    pub days_per_month: f64,
}

fn days_per_month() -> f64 {
    365.25 / 12.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shape {
    /// Relative weights of the 24 local hours (normalised to sum 1).
    pub hourly: Vec<f64>,
    /// Monday .. Sunday multipliers (normalised to mean 1).
    pub weekday: Vec<f64>,
    /// January .. December multipliers (normalised to mean 1): flu season.
    pub monthly: Vec<f64>,
    /// Extra multiplier on the peak only (a pandemic week, an outage of a
    /// neighbouring service): sizes for it without inflating monthly cost.
    pub burst: f64,
    /// Peak-to-mean arrival rate inside an hour (appointments booked on the
    /// hour and half hour): 1 = smooth Poisson within the hour.
    pub intra_hour_peak: f64,
    pub intra_hour_period_minutes: f64,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            hourly: DEFAULT_HOURLY.to_vec(),
            weekday: DEFAULT_WEEKDAY.to_vec(),
            monthly: vec![1.0; 12],
            burst: 1.0,
            intra_hour_peak: 1.0,
            intra_hour_period_minutes: 30.0,
        }
    }
}

/// A session channel: `video` (1:1 visits), `group_video`, `voice`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionChannel {
    /// Share of sessions on this channel (the session channels sum to 1).
    pub share: f64,
    pub mean_minutes: f64,
    /// Share of these sessions that queue for an agent (on-demand visits,
    /// inbound calls to a nurse line) rather than being scheduled.
    #[serde(default)]
    pub agent_share: f64,
    /// group_video only: participants per room (default 4).
    pub participants: Option<u32>,
    /// voice only: share over the PSTN (SIP trunk); the rest are app calls
    /// through the SFU (default 1).
    pub pstn_share: Option<f64>,
    /// voice only: share of PSTN calls that are inbound (default 0.7).
    pub inbound_share: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sms {
    /// Segments (160 GSM-7 / 70 UCS-2 characters each) per average day, both directions.
    pub segments_per_day: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsApp {
    /// Business-initiated template messages (reminders) per average day.
    pub templates_per_day: f64,
    /// Messages inside open service windows per average day.
    #[serde(default)]
    pub session_messages_per_day: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Video {
    /// Simulcast layers each camera publishes, kbit/s, low to high.
    pub layers_kbps: Vec<f64>,
    pub fps: f64,
    /// Opus payload bitrate per microphone.
    pub audio_kbps: f64,
    /// Layer (index into layers_kbps) a 1:1 subscriber receives.
    pub one_to_one_layer: usize,
    /// Layer a group subscriber receives per other participant.
    pub group_layer: usize,
}

impl Default for Video {
    fn default() -> Self {
        // As `continuum bench sfu` publishes (crates/sfu/src/sim.rs).
        Video {
            layers_kbps: vec![150.0, 500.0, 1500.0],
            fps: 30.0,
            audio_kbps: 32.0,
            one_to_one_layer: 2,
            group_layer: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Turn {
    /// Share of WebRTC participants relayed by TURN (15% typical, 30% for
    /// hospital networks that block UDP).
    pub relay_share: f64,
}

impl Default for Turn {
    fn default() -> Self {
        Turn { relay_share: 0.15 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Agents {
    /// Talk plus wrap-up time per handled session.
    pub handle_minutes: f64,
    /// Service level: `service_level` of arrivals answered within
    /// `answer_within_secs`.
    pub service_level: f64,
    pub answer_within_secs: f64,
    pub max_occupancy: f64,
    /// Share of paid time not on the queue (breaks, training, absence).
    pub shrinkage: f64,
}

impl Default for Agents {
    fn default() -> Self {
        Agents {
            handle_minutes: 6.0,
            service_level: 0.8,
            answer_within_secs: 20.0,
            max_occupancy: 0.85,
            shrinkage: 0.3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Targets {
    /// Erlang B blocking for SIP trunk channels.
    pub trunk_blocking: f64,
    /// Erlang B blocking for session slots (SFU admission).
    pub session_blocking: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            trunk_blocking: 0.01,
            session_blocking: 0.001,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Redundancy {
    /// Spare nodes per service beyond what the peak needs (N+1).
    pub spare_nodes: u32,
    /// Availability zones the nodes are spread over.
    pub zones: u32,
    /// Size so the peak still fits with one whole zone lost.
    pub survive_zone_loss: bool,
}

impl Default for Redundancy {
    fn default() -> Self {
        Redundancy {
            spare_nodes: 1,
            zones: 2,
            survive_zone_loss: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: Option<String>,
    volume: Volume,
    #[serde(default)]
    shape: Shape,
    channels: BTreeMap<String, toml::Value>,
    #[serde(default)]
    video: Video,
    #[serde(default)]
    turn: Turn,
    agents: Option<Agents>,
    #[serde(default)]
    targets: Targets,
    #[serde(default)]
    redundancy: Redundancy,
    /// Region → share of the traffic (sums to 1).
    #[serde(default)]
    regions: BTreeMap<String, f64>,
}

/// Where arrivals come from.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Arrivals {
    /// visits_per_day × hourly shape × weekday × monthly.
    Shape {
        visits_per_day: f64,
        hourly: Box<[f64; 24]>,
        weekday: [f64; 7],
        monthly: [f64; 12],
    },
    /// A measured series: arrivals in each consecutive hour.
    Series {
        source: PathBuf,
        #[serde(skip)]
        hourly: Vec<f64>,
        hours: usize,
    },
}

/// A validated profile.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub name: String,
    pub arrivals: Arrivals,
    pub days_per_month: f64,
    pub burst: f64,
    pub intra_hour_peak: f64,
    pub intra_hour_period_minutes: f64,
    pub video: Option<SessionChannel>,
    pub group_video: Option<SessionChannel>,
    pub voice: Option<SessionChannel>,
    pub sms: Option<Sms>,
    pub whatsapp: Option<WhatsApp>,
    pub media: Video,
    pub relay_share: f64,
    pub agents: Option<Agents>,
    pub targets: Targets,
    pub redundancy: Redundancy,
    pub regions: Vec<(String, f64)>,
}

fn toml_err(path: &str, e: impl std::fmt::Display) -> ProfileError {
    ProfileError::Toml {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    }
}

impl Profile {
    /// Reads a profile file; `volume.arrivals_csv` is relative to its folder.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = crate::read_input(path)?;
        Self::parse(&text, &path.display().to_string(), path.parent())
    }

    /// Parses profile TOML; `label` names it in errors, `base` resolves
    /// a relative `arrivals_csv`.
    pub fn parse(text: &str, label: &str, base: Option<&Path>) -> Result<Profile, ProfileError> {
        let f: ProfileFile = toml::from_str(text).map_err(|e| toml_err(label, e))?;
        let mut channels: BTreeMap<&str, toml::Value> = BTreeMap::new();
        for (name, v) in f.channels {
            let Some(known) = CHANNELS.iter().find(|c| **c == name) else {
                return Err(ProfileError::UnknownChannel { name });
            };
            channels.insert(known, v);
        }
        fn take<T: serde::de::DeserializeOwned>(
            channels: &mut BTreeMap<&str, toml::Value>,
            name: &str,
        ) -> Result<Option<T>, ProfileError> {
            channels
                .remove(name)
                .map(|v| {
                    v.try_into()
                        .map_err(|e| toml_err(&format!("channels.{name}"), e))
                })
                .transpose()
        }
        let arrivals = match (&f.volume.visits_per_day, &f.volume.arrivals_csv) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "volume",
                    "give either visits_per_day or arrivals_csv, not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "volume.visits_per_day",
                    "missing (or give volume.arrivals_csv)",
                ));
            }
            (Some(v), None) => {
                let v = *v;
                finite_nonneg("volume.visits_per_day", v)?;
                Arrivals::Shape {
                    visits_per_day: v,
                    hourly: Box::new(normalised("shape.hourly", &f.shape.hourly, 24, 1.0)?),
                    weekday: normalised("shape.weekday", &f.shape.weekday, 7, 7.0)?,
                    monthly: normalised("shape.monthly", &f.shape.monthly, 12, 12.0)?,
                }
            }
            (None, Some(csv)) => {
                let path = match base {
                    Some(b) if csv.is_relative() => b.join(csv),
                    _ => csv.clone(),
                };
                let text = crate::read_input(&path)?;
                let hourly = parse_arrivals_csv(&text, &path.display().to_string())?;
                Arrivals::Series {
                    source: path,
                    hours: hourly.len(),
                    hourly,
                }
            }
        };
        let p = Profile {
            name: f.name.unwrap_or_else(|| label.to_owned()),
            arrivals,
            days_per_month: f.volume.days_per_month,
            burst: f.shape.burst,
            intra_hour_peak: f.shape.intra_hour_peak,
            intra_hour_period_minutes: f.shape.intra_hour_period_minutes,
            video: take(&mut channels, "video")?,
            group_video: take(&mut channels, "group_video")?,
            voice: take(&mut channels, "voice")?,
            sms: take(&mut channels, "sms")?,
            whatsapp: take(&mut channels, "whatsapp")?,
            media: f.video,
            relay_share: f.turn.relay_share,
            agents: f.agents,
            targets: f.targets,
            redundancy: f.redundancy,
            regions: if f.regions.is_empty() {
                vec![("default".to_owned(), 1.0)]
            } else {
                f.regions.into_iter().collect()
            },
        };
        p.validate()?;
        Ok(p)
    }

    /// The session channels present, with their names.
    pub fn sessions(&self) -> impl Iterator<Item = (&'static str, &SessionChannel)> {
        [
            ("video", &self.video),
            ("group_video", &self.group_video),
            ("voice", &self.voice),
        ]
        .into_iter()
        .filter_map(|(n, c)| c.as_ref().map(|c| (n, c)))
    }

    /// Scales every volume (sessions and messages) by `k`: the cost curve.
    pub fn scaled(&self, k: f64) -> Profile {
        let mut p = self.clone();
        match &mut p.arrivals {
            Arrivals::Shape { visits_per_day, .. } => *visits_per_day *= k,
            Arrivals::Series { hourly, .. } => hourly.iter_mut().for_each(|x| *x *= k),
        }
        if let Some(s) = &mut p.sms {
            s.segments_per_day *= k;
        }
        if let Some(w) = &mut p.whatsapp {
            w.templates_per_day *= k;
            w.session_messages_per_day *= k;
        }
        p
    }

    fn validate(&self) -> Result<(), ProfileError> {
        finite_pos("volume.days_per_month", self.days_per_month)?;
        at_least("shape.burst", self.burst, 1.0)?;
        at_least("shape.intra_hour_peak", self.intra_hour_peak, 1.0)?;
        finite_pos(
            "shape.intra_hour_period_minutes",
            self.intra_hour_period_minutes,
        )?;
        let mut share_sum = 0.0;
        let mut any = false;
        for (name, c) in self.sessions() {
            any = true;
            let f = |k: &str| format!("channels.{name}.{k}");
            share(&f("share"), c.share)?;
            finite_pos(&f("mean_minutes"), c.mean_minutes)?;
            share(&f("agent_share"), c.agent_share)?;
            share_sum += c.share;
            if c.participants.is_some() && name != "group_video" {
                return Err(invalid(f("participants"), "only for channels.group_video"));
            }
            if let Some(p) = c.participants
                && !(2..=1000).contains(&p)
            {
                return Err(invalid(f("participants"), "must be 2..=1000"));
            }
            for (k, v) in [
                ("pstn_share", c.pstn_share),
                ("inbound_share", c.inbound_share),
            ] {
                if let Some(v) = v {
                    if name != "voice" {
                        return Err(invalid(f(k), "only for channels.voice"));
                    }
                    share(&f(k), v)?;
                }
            }
        }
        if !any {
            return Err(invalid(
                "channels",
                "at least one session channel (video, group_video, voice) is needed",
            ));
        }
        if (share_sum - 1.0).abs() > 1e-3 {
            return Err(invalid(
                "channels.*.share",
                format!("the session channels' shares must sum to 1 (they sum to {share_sum:.3})"),
            ));
        }
        if let Some(s) = &self.sms {
            finite_nonneg("channels.sms.segments_per_day", s.segments_per_day)?;
        }
        if let Some(w) = &self.whatsapp {
            finite_nonneg("channels.whatsapp.templates_per_day", w.templates_per_day)?;
            finite_nonneg(
                "channels.whatsapp.session_messages_per_day",
                w.session_messages_per_day,
            )?;
        }
        let m = &self.media;
        if m.layers_kbps.is_empty() {
            return Err(invalid("video.layers_kbps", "at least one layer"));
        }
        for (i, l) in m.layers_kbps.iter().enumerate() {
            finite_pos(&format!("video.layers_kbps[{i}]"), *l)?;
        }
        finite_pos("video.fps", m.fps)?;
        finite_pos("video.audio_kbps", m.audio_kbps)?;
        for (k, v) in [
            ("video.one_to_one_layer", m.one_to_one_layer),
            ("video.group_layer", m.group_layer),
        ] {
            if v >= m.layers_kbps.len() {
                return Err(invalid(
                    k,
                    format!("layer index {v} but only {} layers", m.layers_kbps.len()),
                ));
            }
        }
        share("turn.relay_share", self.relay_share)?;
        if let Some(a) = &self.agents {
            finite_pos("agents.handle_minutes", a.handle_minutes)?;
            open_unit("agents.service_level", a.service_level)?;
            finite_nonneg("agents.answer_within_secs", a.answer_within_secs)?;
            if !(a.max_occupancy > 0.0 && a.max_occupancy <= 1.0) {
                return Err(invalid("agents.max_occupancy", "must be in (0, 1]"));
            }
            if !(0.0..1.0).contains(&a.shrinkage) {
                return Err(invalid("agents.shrinkage", "must be in [0, 1)"));
            }
        }
        open_unit("targets.trunk_blocking", self.targets.trunk_blocking)?;
        open_unit("targets.session_blocking", self.targets.session_blocking)?;
        if self.redundancy.zones == 0 {
            return Err(invalid("redundancy.zones", "must be ≥ 1"));
        }
        if self.redundancy.survive_zone_loss && self.redundancy.zones < 2 {
            return Err(invalid(
                "redundancy.survive_zone_loss",
                "needs redundancy.zones ≥ 2",
            ));
        }
        let mut sum = 0.0;
        for (r, s) in &self.regions {
            share(&format!("regions.{r}"), *s)?;
            sum += s;
        }
        if (sum - 1.0).abs() > 1e-3 {
            return Err(invalid(
                "regions",
                format!("shares must sum to 1 (they sum to {sum:.3})"),
            ));
        }
        Ok(())
    }
}

fn finite_nonneg(field: &str, v: f64) -> Result<(), ProfileError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(invalid(field, format!("must be a number ≥ 0 (got {v})")))
    }
}

fn finite_pos(field: &str, v: f64) -> Result<(), ProfileError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(invalid(field, format!("must be a number > 0 (got {v})")))
    }
}

fn at_least(field: &str, v: f64, min: f64) -> Result<(), ProfileError> {
    if v.is_finite() && v >= min {
        Ok(())
    } else {
        Err(invalid(field, format!("must be ≥ {min} (got {v})")))
    }
}

fn share(field: &str, v: f64) -> Result<(), ProfileError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must be a share in [0, 1] (got {v})"),
        ))
    }
}

fn open_unit(field: &str, v: f64) -> Result<(), ProfileError> {
    if v > 0.0 && v < 1.0 {
        Ok(())
    } else {
        Err(invalid(field, format!("must be in (0, 1) (got {v})")))
    }
}

/// Checks `len` non-negative weights (not all zero) and scales them to sum `sum`.
fn normalised<const N: usize>(
    field: &str,
    w: &[f64],
    len: usize,
    sum: f64,
) -> Result<[f64; N], ProfileError> {
    debug_assert_eq!(len, N);
    if w.len() != N {
        return Err(invalid(
            field,
            format!("needs {N} values (got {})", w.len()),
        ));
    }
    for (i, v) in w.iter().enumerate() {
        finite_nonneg(&format!("{field}[{i}]"), *v)?;
    }
    let total: f64 = w.iter().sum();
    if total <= 0.0 {
        return Err(invalid(field, "all weights are zero"));
    }
    let mut out = [0.0; N];
    for (o, v) in out.iter_mut().zip(w) {
        *o = v * sum / total;
    }
    Ok(out)
}

/// Hourly arrivals, one row per consecutive hour: `label,arrivals` (the
/// label, e.g. an ISO timestamp, is not interpreted) or just `arrivals`.
/// `#` comments, blank lines and a header row are skipped.
pub fn parse_arrivals_csv(text: &str, label: &str) -> Result<Vec<f64>, ProfileError> {
    let mut out = Vec::with_capacity(text.len() / 16);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let value = line.rsplit(',').next().unwrap_or("").trim();
        let err = |reason: String| ProfileError::Csv {
            path: label.to_owned(),
            line: i + 1,
            reason,
        };
        match value.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => out.push(v),
            Ok(v) => return Err(err(format!("arrivals `{v}` must be a number ≥ 0"))),
            Err(_) if out.is_empty() => continue, // header
            Err(_) => return Err(err(format!("arrivals `{value}` is not a number"))),
        }
    }
    if out.len() < 24 {
        return Err(ProfileError::Csv {
            path: label.to_owned(),
            line: 0,
            reason: format!("needs at least 24 hourly rows (got {})", out.len()),
        });
    }
    Ok(out)
}
