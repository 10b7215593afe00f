//! Renders one or more JSON results into an SVG chart: latency percentile
//! curves on the left (x: percentile on a log scale of 1/(1-p), the way
//! HdrHistogram plots them), throughput bars on the right, one colour per
//! result, labelled by each result's `label`.

use std::path::Path;

use plotters::prelude::*;
use thiserror::Error;

use crate::stats::RunResult;

/// Why a chart could not be made.
#[derive(Debug, Error)]
pub enum ReportError {
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: not a result file: {1}")]
    Parse(String, serde_json::Error),
    #[error("no results given")]
    Empty,
    #[error("drawing: {0}")]
    Draw(String),
}

/// Reads result files.
pub fn load(paths: &[String]) -> Result<Vec<RunResult>, ReportError> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| ReportError::Read(p.clone(), e))?;
            serde_json::from_str(&text).map_err(|e| ReportError::Parse(p.clone(), e))
        })
        .collect()
}

/// x coordinate of percentile `p` (0..100): log10(1 / (1 - p/100)).
pub fn percentile_x(p: f64) -> f64 {
    let rest = (1.0 - p / 100.0).max(1e-9);
    -rest.log10()
}

/// The percentile label of an x coordinate: 0 → "0%", 1 → "90%", 2 → "99%", ...
pub fn x_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let digits = (x.round() as i64 - 2).max(0) as usize;
    format!("{p:.digits$}%")
}

fn draw_err<E: std::fmt::Debug>(e: E) -> ReportError {
    ReportError::Draw(format!("{e:?}"))
}

/// Draws `results` into an SVG file at `out`.
pub fn render(results: &[RunResult], out: &Path) -> Result<(), ReportError> {
    if results.is_empty() {
        return Err(ReportError::Empty);
    }
    let root = SVGBackend::new(out, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let (left, right) = root.split_horizontally(860);
    let name = |r: &RunResult| {
        if r.label.is_empty() {
            r.scenario.clone()
        } else {
            format!("{} ({})", r.label, r.scenario)
        }
    };

    let (mut lo, mut hi) = (f64::MAX, 1.0f64);
    for r in results {
        for &(_, us) in &r.latency.curve {
            if us > 0.0 {
                lo = lo.min(us);
                hi = hi.max(us);
            }
        }
    }
    if lo > hi {
        lo = 1.0;
    }
    let mut lat = ChartBuilder::on(&left)
        .caption("latency by percentile", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..6f64, (lo * 0.8..hi * 1.25).log_scale())
        .map_err(draw_err)?;
    lat.configure_mesh()
        .x_labels(7)
        .x_label_formatter(&|x| x_label(*x))
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .draw()
        .map_err(draw_err)?;
    for (i, r) in results.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> =
            r.latency.curve.iter().filter(|(_, us)| *us > 0.0).map(|&(p, us)| (percentile_x(p), us)).collect();
        lat.draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(draw_err)?
            .label(name(r))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    lat.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(draw_err)?;

    let top = results.iter().map(|r| r.units_per_s).fold(1.0, f64::max);
    let n = results.len() as u32;
    let mut bars = ChartBuilder::on(&right)
        .caption("throughput (units/s)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d((0u32..n).into_segmented(), 0f64..top * 1.15)
        .map_err(draw_err)?;
    bars.configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => {
                results.get(*i as usize).map(|r| format!("{} ({})", r.label, r.unit)).unwrap_or_default()
            }
            _ => String::new(),
        })
        .y_desc("per second")
        .draw()
        .map_err(draw_err)?;
    for (i, r) in results.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let i = i as u32;
        bars.draw_series(std::iter::once(Rectangle::new(
            [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), r.units_per_s)],
            color.filled(),
        )))
        .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{new_hist, percentiles};

    #[test]
    fn percentile_axis() {
        assert!((percentile_x(90.0) - 1.0).abs() < 1e-9);
        assert!((percentile_x(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(x_label(0.0), "0%");
        assert_eq!(x_label(2.0), "99%");
        assert_eq!(x_label(3.0), "99.9%");
    }

    #[test]
    fn renders_an_svg() {
        let mut h = new_hist();
        for v in 1..1000u64 {
            h.saturating_record(v * 1000);
        }
        let r = RunResult {
            scenario: "echo".into(),
            label: "a".into(),
            unit: "round_trip".into(),
            units_per_s: 1234.0,
            latency: percentiles(&h),
            ..RunResult::default()
        };
        let dir = std::env::temp_dir().join(format!("lt-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("c.svg");
        render(&[r.clone(), RunResult { label: "b".into(), ..r }], &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.contains("<svg"));
        assert!(svg.contains("latency by percentile"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
