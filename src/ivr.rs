//! `continuum ivr`: check a flow file (errors with file, line and column),
//! and render its text prompts ahead of time with espeak-ng.

use anyhow::Context;
use clap::Subcommand;
use continuum_ivr::{Diagnostic, Severity};
use continuum_server::config::Config;
use continuum_server::ivr::prompts::Prompts;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum IvrCommand {
    /// Check a flow: every error and warning as FILE:LINE:COLUMN. Exits 1 on errors.
    Check { flow: PathBuf },
    /// Speak every text prompt of a flow with espeak-ng into the prompt
    /// cache (`ivr.cache_dir`), so the first caller does not wait for it.
    RenderPrompts {
        flow: PathBuf,
        /// The espeak-ng voice (default: the flow's `language`).
        #[arg(long)]
        language: Option<String>,
    },
}

fn print(path: &Path, d: &Diagnostic) {
    let sev = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    eprintln!(
        "{}:{}:{}: {sev}: {}",
        path.display(),
        d.line,
        d.column,
        d.message
    );
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn run(cmd: IvrCommand, cfg: Config) -> anyhow::Result<()> {
    match cmd {
        IvrCommand::Check { flow } => {
            let report = continuum_ivr::check(&read(&flow)?);
            for d in report.errors.iter().chain(&report.warnings) {
                print(&flow, d);
            }
            if !report.errors.is_empty() {
                anyhow::bail!(
                    "{}: {} error(s); the flow was not accepted",
                    flow.display(),
                    report.errors.len()
                );
            }
            println!(
                "{}: ok ({} prompts, {} warnings)",
                flow.display(),
                report.prompts.len(),
                report.warnings.len()
            );
            Ok(())
        }
        IvrCommand::RenderPrompts { flow, language } => {
            let src = read(&flow)?;
            let parsed = continuum_ivr::Flow::from_yaml(&src).map_err(|e| {
                for d in &e.errors {
                    print(&flow, d);
                }
                anyhow::anyhow!(
                    "{}: fix the errors first (continuum ivr check)",
                    flow.display()
                )
            })?;
            let language = language.unwrap_or_else(|| parsed.language.clone());
            let data = &cfg.server.data_dir;
            let prompts = Prompts::new(
                cfg.ivr
                    .cache_dir
                    .clone()
                    .unwrap_or_else(|| data.join("prompt-cache")),
                cfg.ivr
                    .prompts_dir
                    .clone()
                    .unwrap_or_else(|| data.join("prompts")),
            );
            if !prompts.can_speak() {
                anyhow::bail!(
                    "espeak-ng is not installed: install it (Debian: apt-get install espeak-ng), or record the prompts as 8 kHz WAV files"
                );
            }
            let texts = continuum_ivr::check(&src).prompts;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let bar = indicatif::ProgressBar::new(texts.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} prompts {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let mut seconds = 0.0;
            for text in &texts {
                let audio = rt
                    .block_on(prompts.say(text, &language))
                    .with_context(|| format!("rendering \"{text}\""))?;
                seconds += audio.len() as f64 / 8_000.0;
                bar.inc(1);
            }
            bar.finish_and_clear();
            println!(
                "{} prompts rendered ({seconds:.1} s of speech) into {}",
                texts.len(),
                cfg.ivr
                    .cache_dir
                    .clone()
                    .unwrap_or_else(|| data.join("prompt-cache"))
                    .display()
            );
            Ok(())
        }
    }
}
