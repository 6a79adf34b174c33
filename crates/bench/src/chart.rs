//! A PNG chart of latency p50 and p99 against offered rate, one line per system (open-loop
//! runs with at least one rate).
//!
//! plotters is built without its system-font backend, so text needs a TTF file: the chart uses
//! DejaVu Sans from the system (`/usr/share/fonts/truetype/dejavu/`, Debian's `fonts-dejavu-core`)
//! at run time; no font is shipped with this crate. Without it, the chart is skipped.

use crate::report::Row;
use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use std::path::Path;
use std::sync::OnceLock;

/// Fonts tried in turn.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn font() -> Result<()> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let ok = *LOADED.get_or_init(|| {
        FONTS.iter().filter_map(|p| std::fs::read(p).ok()).any(|bytes| {
            // Registered once per process and used until exit: leaking it is the lifetime.
            register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .is_ok()
        })
    });
    if ok {
        Ok(())
    } else {
        bail!("no TTF font found (tried {FONTS:?}); install fonts-dejavu-core")
    }
}

/// Draws `rows` (those with an offered rate) to `path`.
///
/// # Errors
/// When there are no rate rows, no font, or the PNG cannot be written.
pub fn draw(rows: &[Row], path: &Path) -> Result<()> {
    let mut systems: Vec<&str> = Vec::new();
    for r in rows {
        if r.offered_rps.is_some() && !systems.contains(&r.system.as_str()) {
            systems.push(&r.system);
        }
    }
    let points = |system: &str, f: fn(&crate::stats::Percentiles) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.system == system)
            .filter_map(|r| Some((r.offered_rps?, f(r.latency.as_ref()?))))
            .collect()
    };
    let all: Vec<(f64, f64)> = systems.iter().flat_map(|s| points(s, |p| p.p99_ms)).collect();
    if all.is_empty() {
        bail!("no open-loop rows to chart");
    }
    font()?;
    let max_x = all.iter().map(|p| p.0).fold(0.0, f64::max) * 1.05;
    let max_y = all.iter().map(|p| p.1).fold(0.0, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency against offered rate", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("offered rate (req/s)")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN];
    for (i, system) in systems.iter().enumerate() {
        let color = palette[i % palette.len()];
        for (name, f, width) in [
            (
                "p50",
                (|p: &crate::stats::Percentiles| p.p50_ms) as fn(&_) -> f64,
                1,
            ),
            ("p99", |p| p.p99_ms, 3),
        ] {
            chart
                .draw_series(LineSeries::new(points(system, f), color.stroke_width(width)))
                .map_err(|e| anyhow!("{e}"))?
                .label(format!("{system} {name}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width)));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
