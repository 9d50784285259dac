//! `continuum appointments import FILE`: a CSV or JSON file of appointments
//! into a running server, over its API (`POST /v1/appointments/import`),
//! in parts, with a progress bar. Every row is checked first (here, then by
//! the server with `dry_run`): one bad row means nothing is imported, and
//! every bad row is printed with its number. A file imported again updates
//! rather than duplicates (rows are matched by `external_id`).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use continuum_server::reminders::ImportReport;
use continuum_server::reminders::rows::{self, AppointmentRequest, RowError};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum AppointmentsCommand {
    /// Import appointments (and plan their reminders) from a CSV file (a
    /// header row: external_id, phone, start_time, and optionally
    /// patient_name, time_zone, location, clinician, template, status) or a
    /// JSON array of the same fields.
    Import(ImportArgs),
}

#[derive(Args)]
pub struct ImportArgs {
    /// The file: `.csv` or `.json` (or say which with --format).
    pub file: PathBuf,
    /// `csv` or `json` (default: from the file's extension).
    #[arg(long)]
    pub format: Option<String>,
    /// The server's base URL.
    #[arg(long, env = "CONTINUUM_URL", default_value = "http://127.0.0.1:7400")]
    pub url: String,
    /// The tenant's API key (or an admin token).
    #[arg(long, env = "CONTINUUM_KEY", hide_env_values = true)]
    pub key: String,
    /// Rows per request.
    #[arg(long, default_value_t = 500)]
    pub chunk: usize,
    /// Check every row and import nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(cmd: AppointmentsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AppointmentsCommand::Import(args) => import(args),
    }
}

fn print_errors(errors: &[RowError]) {
    for e in errors {
        eprintln!("{e}");
    }
    let mut rows: Vec<usize> = errors.iter().map(|e| e.row).collect();
    rows.dedup();
    eprintln!(
        "{} row(s) are wrong; nothing was imported (fix them and run the import again)",
        rows.len()
    );
}

fn bar(len: usize, prefix: &'static str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>9} [{bar:40.cyan/blue}] {pos}/{len} rows ({per_sec}, {eta} left)",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    if args.chunk == 0 || args.chunk > rows::MAX_ROWS {
        bail!("--chunk must be 1..={}", rows::MAX_ROWS);
    }
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let format = match &args.format {
        Some(f) => f.to_ascii_lowercase(),
        None => args
            .file
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default(),
    };
    // The whole file at once here (the server's per-request limit is for
    // each part we send).
    let parsed = match format.as_str() {
        "csv" => parse_all(&bytes, true),
        "json" => parse_all(&bytes, false),
        other => bail!(
            "cannot tell the format of {} (`{other}`): use a .csv or .json file, or --format csv|json",
            args.file.display()
        ),
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            print_errors(&[e]);
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut errors = Vec::new();
    let parsed_ids: Vec<(usize, String)> = parsed
        .iter()
        .filter_map(|(row, r)| Some((*row, r.as_ref().ok()?.external_id.clone()?)))
        .collect();
    let mut good: Vec<(usize, AppointmentRequest)> = Vec::with_capacity(parsed.len());
    for (row, r) in parsed {
        match r {
            Ok(req) => match rows::check(row, &req, true) {
                Ok(_) => good.push((row, req)),
                Err(e) => errors.extend(e),
            },
            Err(e) => errors.push(e),
        }
    }
    errors.extend(duplicates(&parsed_ids));
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.row);
        print_errors(&errors);
        return Ok(ExitCode::FAILURE);
    }
    if good.is_empty() {
        eprintln!("{} has no appointments", args.file.display());
        return Ok(ExitCode::FAILURE);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(send(&args, good))
}

/// Parses the whole file, numbering rows as one file (the row limit is
/// per request, and the file is sent in parts).
fn parse_all(bytes: &[u8], csv: bool) -> Result<rows::Parsed, RowError> {
    if csv {
        rows::parse_csv(bytes, usize::MAX)
    } else {
        rows::parse_json(bytes, usize::MAX)
    }
}

/// Rows giving an external_id an earlier row gave (over the whole file:
/// the server sees one part at a time).
fn duplicates(ids: &[(usize, String)]) -> Vec<RowError> {
    let mut seen = std::collections::HashMap::new();
    let mut errors = Vec::new();
    for (row, x) in ids {
        match seen.get(x) {
            Some(first) => errors.push(RowError {
                row: *row,
                field: Some("external_id".into()),
                message: format!("external_id `{}` is also on row {first}", rows::shown(x)),
            }),
            None => {
                seen.insert(x.clone(), *row);
            }
        }
    }
    errors
}

/// What one request answered.
enum Answer {
    Done(ImportReport),
    Refused(Vec<RowError>),
}

async fn post(
    client: &reqwest::Client,
    args: &ImportArgs,
    part: &[(usize, AppointmentRequest)],
    dry_run: bool,
) -> anyhow::Result<Answer> {
    let url = format!(
        "{}/v1/appointments/import{}",
        args.url.trim_end_matches('/'),
        if dry_run { "?dry_run=true" } else { "" }
    );
    let body: Vec<&AppointmentRequest> = part.iter().map(|(_, r)| r).collect();
    let resp = client
        .post(&url)
        .bearer_auth(&args.key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("sending to {url} (is the server running? --url)"))?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    // The server numbers the rows of each part from 1: back to the file's.
    let file_row = |n: usize| part.get(n.wrapping_sub(1)).map_or(n, |(row, _)| *row);
    match status.as_u16() {
        200 => Ok(Answer::Done(
            serde_json::from_value::<ImportReport>(v).map(|mut r| {
                for e in &mut r.failed {
                    e.row = file_row(e.row);
                }
                r
            })?,
        )),
        422 if v.get("rows").is_some() => {
            let mut errs: Vec<RowError> = serde_json::from_value(v["rows"].clone())?;
            for e in &mut errs {
                e.row = file_row(e.row);
            }
            Ok(Answer::Refused(errs))
        }
        _ => bail!(
            "the server answered {status}: {}",
            v["error"]["message"].as_str().unwrap_or("(no message)")
        ),
    }
}

async fn send(
    args: &ImportArgs,
    good: Vec<(usize, AppointmentRequest)>,
) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()?;
    let n = good.len();
    // 1. The server checks every part (templates, duplicates) first.
    let pb = bar(n, "checking");
    let mut errors = Vec::new();
    for part in good.chunks(args.chunk) {
        if let Answer::Refused(e) = post(&client, args, part, true).await? {
            errors.extend(e);
        }
        pb.inc(part.len() as u64);
    }
    pb.finish_and_clear();
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.row);
        print_errors(&errors);
        return Ok(ExitCode::FAILURE);
    }
    if args.dry_run {
        println!("{n} rows checked: all good (--dry-run: nothing imported)");
        return Ok(ExitCode::SUCCESS);
    }
    // 2. Written part by part (each idempotent by external_id).
    let pb = bar(n, "importing");
    let mut total = ImportReport::default();
    for part in good.chunks(args.chunk) {
        match post(&client, args, part, false).await? {
            Answer::Done(r) => {
                total.rows += r.rows;
                total.created += r.created;
                total.updated += r.updated;
                total.rescheduled += r.rescheduled;
                total.cancelled += r.cancelled;
                total.unchanged += r.unchanged;
                total.failed.extend(r.failed);
            }
            Answer::Refused(e) => {
                pb.abandon();
                print_errors(&e);
                eprintln!(
                    "(rows before row {} were imported; run the import again once fixed)",
                    part[0].0
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        pb.inc(part.len() as u64);
    }
    pb.finish_and_clear();
    println!(
        "imported {} rows: {} created, {} updated, {} rescheduled, {} cancelled, {} unchanged",
        total.rows,
        total.created,
        total.updated,
        total.rescheduled,
        total.cancelled,
        total.unchanged
    );
    if !total.failed.is_empty() {
        for e in &total.failed {
            eprintln!("{e}");
        }
        eprintln!(
            "{} row(s) could not be written; run the import again to complete it",
            total.failed.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
