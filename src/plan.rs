//! `continuum plan`: capacity for the peak burst and the cost curve against
//! a CPaaS (crates/plan), from a workload profile, a price book and the
//! capacity `continuum bench sfu --out` measured on this hardware.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use continuum_plan::capacity::Capacity;
use continuum_plan::cost::PriceBook;
use continuum_plan::profile::Profile;
use continuum_plan::{chart, metrics, report, simulate};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PlanArgs {
    #[command(subcommand)]
    pub command: Option<PlanCommand>,
    #[command(flatten)]
    pub inputs: Inputs,
    /// Print the plan as JSON instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Write cost.svg/png and demand.svg/png into this folder.
    #[arg(long, value_name = "DIR")]
    pub charts: Option<PathBuf>,
    /// A running server's Prometheus endpoint (e.g.
    /// http://127.0.0.1:7400/metrics): report its load against the plan.
    #[arg(long, value_name = "URL")]
    pub from_metrics: Option<String>,
    /// Bearer token for /metrics (server.metrics_token).
    #[arg(long, env = "CONTINUUM_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Scrape twice this many seconds apart to add packet rates (0: once).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub metrics_interval: f64,
}

#[derive(Args)]
pub struct Inputs {
    /// Workload profile (TOML; see examples/plan/profile.toml).
    #[arg(required = true)]
    pub profile: Option<PathBuf>,
    /// Price book (TOML; see examples/plan/prices.toml). Default: the
    /// documented list prices built in.
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
    /// Per-core capacity: a `continuum bench sfu --out` or `bench voice --out` result, or a
    /// capacity TOML/JSON. Default: the figures in docs/benchmarks.md.
    #[arg(long, value_name = "FILE")]
    pub capacity: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum PlanCommand {
    /// Discrete-event simulation of the profile as planned: observed peak
    /// concurrency, blocking and waiting against Erlang's predictions.
    Simulate(SimArgs),
}

#[derive(Args)]
pub struct SimArgs {
    #[command(flatten)]
    pub inputs: Inputs,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Days to simulate (from a Monday of the busiest month, × burst).
    #[arg(long, default_value_t = 7)]
    pub days: usize,
    /// Agents on the queue (default: the plan's peak figure).
    #[arg(long)]
    pub agents: Option<u64>,
    /// Override the profile's shape.intra_hour_peak.
    #[arg(long)]
    pub intra_hour_peak: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

fn load(i: &Inputs) -> anyhow::Result<(Profile, Capacity, PriceBook)> {
    let path = i.profile.as_ref().context("a profile file is needed")?;
    let profile = Profile::load(path)?;
    let capacity = match &i.capacity {
        Some(c) => Capacity::load(c)?,
        None => Capacity::default(),
    };
    let prices = match &i.prices {
        Some(p) => PriceBook::load(p)?,
        None => PriceBook::default(),
    };
    Ok((profile, capacity, prices))
}

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    if let Some(PlanCommand::Simulate(s)) = args.command {
        return run_simulation(s);
    }
    let (profile, capacity, prices) = load(&args.inputs)?;
    let plan = continuum_plan::plan(&profile, &capacity, &prices)?;
    let headroom = match &args.from_metrics {
        Some(url) => Some(live_headroom(
            &plan,
            url,
            args.metrics_token.as_deref(),
            args.metrics_interval,
        )?),
        None => None,
    };
    let charts = match &args.charts {
        Some(dir) => chart::write_all(&plan, dir)?,
        None => Vec::new(),
    };
    if args.json {
        let mut v = serde_json::to_value(&plan)?;
        if let Some(h) = &headroom {
            v["headroom"] = serde_json::to_value(h)?;
        }
        if !charts.is_empty() {
            v["charts"] = serde_json::to_value(&charts)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report::plan(&plan));
        if let Some(h) = &headroom {
            println!();
            print!("{}", report::headroom(h));
        }
        for c in &charts {
            println!("chart written: {}", c.display());
        }
    }
    Ok(())
}

fn live_headroom(
    plan: &continuum_plan::Plan,
    url: &str,
    token: Option<&str>,
    interval: f64,
) -> anyhow::Result<metrics::Headroom> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let scrape = || async {
            let mut req = client.get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("fetching {url}"))?;
            let status = resp.status();
            let text = resp.text().await?;
            anyhow::ensure!(status.is_success(), "{url}: HTTP {status}: {}", text.trim());
            Ok::<_, anyhow::Error>(metrics::parse(&text)?)
        };
        let first = scrape().await?;
        let observed = if interval > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(interval)).await;
            let second = scrape().await?;
            metrics::observe(&second, Some((&first, interval)))?
        } else {
            metrics::observe(&first, None)?
        };
        Ok(metrics::headroom(plan, &observed))
    })
}

fn run_simulation(s: SimArgs) -> anyhow::Result<()> {
    let (mut profile, capacity, prices) = load(&s.inputs)?;
    if let Some(p) = s.intra_hour_peak {
        anyhow::ensure!(p >= 1.0, "--intra-hour-peak must be ≥ 1");
        profile.intra_hour_peak = p;
    }
    anyhow::ensure!(s.days >= 1, "--days must be ≥ 1");
    let plan = continuum_plan::plan(&profile, &capacity, &prices)?;
    let mut cfg = simulate::config_for(&profile, &plan, s.days, s.seed);
    if let (Some(n), Some(a)) = (s.agents, cfg.agents.as_mut()) {
        a.servers = n;
    }
    let bar = ProgressBar::new(1000);
    bar.set_style(ProgressStyle::with_template(
        "simulating [{bar:40}] {percent:>3}% {elapsed_precise} eta {eta}",
    )?);
    let result = simulate::run(&cfg, &mut |done| bar.set_position((done * 1000.0) as u64))?;
    bar.finish_and_clear();
    if s.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        let sized: f64 = plan.demand.channels.iter().map(|c| c.sizing_erlangs).sum();
        let hint = match (&plan.agents, s.agents) {
            (Some(a), None) if a.agents_at_hourly_mean < a.peak.agents => Some(format!(
                "the plan staffs {} agents for the intra-hour peak; Erlang C at the hourly mean alone would staff {}: try --agents {}",
                a.peak.agents, a.agents_at_hourly_mean, a.agents_at_hourly_mean
            )),
            _ => None,
        };
        print!("{}", report::simulation(&result, sized, hint.as_deref()));
    }
    Ok(())
}
