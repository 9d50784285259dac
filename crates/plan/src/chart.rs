//! Charts (plotters, SVG and PNG): the cost curve of the three options with
//! the break-even volume marked, and demand over the day against the
//! provisioned capacity. PNG text uses DejaVu Sans embedded in the binary
//! (the `dejavu` crate), so no system fonts or fontconfig are needed.

use crate::Plan;
use crate::cost::format_count;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;

pub const SIZE: (u32, u32) = (960, 600);

#[derive(Debug, thiserror::Error)]
#[error("chart {file}: {message}")]
pub struct ChartError {
    pub file: String,
    pub message: String,
}

const CPAAS: RGBColor = RGBColor(214, 39, 40);
const SELF_HOSTED: RGBColor = RGBColor(31, 119, 180);
const HYBRID: RGBColor = RGBColor(44, 160, 44);
const GREY: RGBColor = RGBColor(120, 120, 120);
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is valid TrueType; a failure would only lose text.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Writes `cost.svg`, `cost.png`, `demand.svg`, `demand.png` into `dir`
/// (created if missing) and returns their paths.
pub fn write_all(plan: &Plan, dir: &Path) -> Result<Vec<PathBuf>, ChartError> {
    register_font();
    std::fs::create_dir_all(dir).map_err(|e| ChartError {
        file: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    type Draw = fn(&Plan, &DrawingArea<SVGBackend, Shift>) -> DrawResult;
    type DrawPng = fn(&Plan, &DrawingArea<BitMapBackend, Shift>) -> DrawResult;
    let charts: [(&str, Draw, DrawPng); 2] = [
        ("cost", |p, a| cost(p, a), |p, a| cost(p, a)),
        ("demand", |p, a| demand(p, a), |p, a| demand(p, a)),
    ];
    for (name, svg, png) in charts {
        let path = dir.join(format!("{name}.svg"));
        let err = |path: &Path, e: Box<dyn std::error::Error>| ChartError {
            file: path.display().to_string(),
            message: e.to_string(),
        };
        {
            let area = SVGBackend::new(&path, SIZE).into_drawing_area();
            svg(plan, &area)
                .and_then(|_| Ok(area.present()?))
                .map_err(|e| err(&path, e))?;
        }
        out.push(path);
        let path = dir.join(format!("{name}.png"));
        {
            let area = BitMapBackend::new(&path, SIZE).into_drawing_area();
            png(plan, &area)
                .and_then(|_| Ok(area.present()?))
                .map_err(|e| err(&path, e))?;
        }
        out.push(path);
    }
    Ok(out)
}

fn money(v: f64) -> String {
    format!("${}", count(v))
}

/// Axis labels: 800, 1k, 1.2k, 15k, 2.5M (one decimal only when needed, so
/// neighbouring ticks never print the same label).
fn count(v: f64) -> String {
    let short = |unit: f64, suffix: &str| {
        let x = v / unit;
        if (x - x.round()).abs() < 1e-6 {
            format!("{x:.0}{suffix}")
        } else {
            format!("{x:.1}{suffix}")
        }
    };
    if v >= 1e6 {
        short(1e6, "M")
    } else if v >= 1e3 {
        short(1e3, "k")
    } else {
        format!("{v:.0}")
    }
}

fn cost<DB: DrawingBackend>(plan: &Plan, area: &DrawingArea<DB, Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let pts = &plan.cost_curve;
    let x_max = pts.last().map_or(1.0, |p| p.sessions_per_month).max(1.0);
    let y_max = pts
        .iter()
        .map(|p| p.cpaas.max(p.self_hosted).max(p.hybrid))
        .fold(1.0, f64::max)
        * 1.08;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Monthly cost vs volume: CPaaS, self-hosted, hybrid",
            (FONT, 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("sessions per month")
        .y_desc("USD per month")
        .x_label_formatter(&|v| count(*v))
        .y_label_formatter(&|v| money(*v))
        .label_style((FONT, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    type Series = (&'static str, RGBColor, fn(&crate::CostPoint) -> f64);
    let series: [Series; 3] = [
        ("CPaaS", CPAAS, |p| p.cpaas),
        ("self-hosted", SELF_HOSTED, |p| p.self_hosted),
        ("hybrid (WebRTC self-hosted)", HYBRID, |p| p.hybrid),
    ];
    for (label, color, f) in series {
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.sessions_per_month, f(p))),
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    let marks = [
        (
            &plan.self_hosted_break_even,
            SELF_HOSTED,
            "self-hosted break-even",
        ),
        (&plan.hybrid_break_even, HYBRID, "hybrid break-even"),
    ];
    for (i, (be, color, label)) in marks.into_iter().enumerate() {
        if let Some(x) = be.sessions_per_month {
            chart.draw_series(DashedLineSeries::new(
                [(x, 0.0), (x, y_max)],
                6,
                4,
                color.stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{label}: {}/month", format_count(x)),
                (x, y_max * (0.95 - 0.06 * i as f64)),
                (FONT, 14).into_font().color(&color),
            )))?;
        }
    }
    let now = plan.demand.sessions_per_month;
    chart.draw_series(DashedLineSeries::new(
        [(now, 0.0), (now, y_max)],
        2,
        4,
        GREY.stroke_width(1),
    ))?;
    chart.draw_series(std::iter::once(Text::new(
        "this profile",
        (now, y_max * 0.05),
        (FONT, 13).into_font().color(&GREY),
    )))?;
    legend(&mut chart)
}

fn demand<DB: DrawingBackend>(plan: &Plan, area: &DrawingArea<DB, Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let sum = |f: fn(&crate::demand::ChannelDemand) -> &[f64; 24]| {
        let mut v = [0.0; 24];
        for c in &plan.demand.channels {
            for (o, x) in v.iter_mut().zip(f(c)) {
                *o += x;
            }
        }
        v
    };
    let peak = sum(|c| &c.peak_day_erlangs);
    let avg = sum(|c| &c.average_day_erlangs);
    let capacity = (plan.media.session_slots + plan.media.trunk_channels) as f64;
    let y_max = peak.iter().copied().fold(capacity, f64::max).max(1.0)
        * (plan.demand.sizing_rate / plan.demand.peak_hour_rate.max(1e-12)).max(1.0)
        * 1.12;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Concurrent sessions over the day vs provisioned capacity",
            (FONT, 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..24f64, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("hour of day")
        .y_desc("concurrent sessions (mean in the hour)")
        .x_labels(13)
        .x_label_formatter(&|v| format!("{v:02.0}:00"))
        .y_label_formatter(&|v| count(*v))
        .label_style((FONT, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    // Step lines: a rate holds for its whole hour.
    let steps = |v: [f64; 24]| {
        v.into_iter()
            .enumerate()
            .flat_map(|(h, x)| [(h as f64, x), (h as f64 + 1.0, x)])
            .collect::<Vec<_>>()
    };
    chart
        .draw_series(LineSeries::new(steps(peak), CPAAS.stroke_width(2)))?
        .label("sizing day (busiest weekday and month × burst)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], CPAAS.stroke_width(2)));
    let k = plan.demand.sizing_rate / plan.demand.peak_hour_rate.max(1e-12);
    if k > 1.0 + 1e-9 {
        chart
            .draw_series(DashedLineSeries::new(
                steps(peak.map(|x| x * k)),
                4,
                3,
                CPAAS.mix(0.6).stroke_width(1),
            ))?
            .label(format!("sized for: × {k:.2} intra-hour peak"))
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], CPAAS.mix(0.6).stroke_width(1))
            });
    }
    chart
        .draw_series(LineSeries::new(steps(avg), GREY.stroke_width(2)))?
        .label("average day")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREY.stroke_width(2)));
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, capacity), (24.0, capacity)],
            8,
            4,
            SELF_HOSTED.stroke_width(2),
        ))?
        .label(format!(
            "provisioned: {} session slots + trunk channels",
            format_count(capacity)
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], SELF_HOSTED.stroke_width(2)));
    legend(&mut chart)
}

/// The series legend, top left, the same on every chart.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{count, money};

    #[test]
    fn neighbouring_ticks_get_distinct_labels() {
        assert_eq!(
            [800.0, 1000.0, 1200.0, 15_000.0, 2_500_000.0].map(count),
            ["800", "1k", "1.2k", "15k", "2.5M"]
        );
        assert_eq!(money(80_000.0), "$80k");
    }
}
