//! The `--plot` SVG: throughput over time, latency by percentile and p99
//! over time, for both systems.

use std::fmt::Write as _;

use super::report::Report;

/// One line of a plot: name, colour, points.
type Series<'a> = (&'a str, &'a str, &'a [(f64, f64)]);

/// Three panels as SVG: throughput over time, latency by percentile, p99
/// over time. Drawn by hand: two polylines per panel do not justify a
/// plotting library and its font stack.
pub(super) fn plot(r: &Report) -> String {
    let (w, h) = (800.0, 300.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="12">"#,
        h * 3.0 + 60.0
    );
    let panel = |svg: &mut String,
                 top: f64,
                 title: &str,
                 xlabel: &str,
                 ylabel: &str,
                 series: &[Series<'_>]| {
        let (left, right, bottom) = (60.0, w - 20.0, top + h - 30.0);
        let all = series.iter().flat_map(|(_, _, pts)| pts.iter());
        let xmax = all.clone().map(|p| p.0).fold(0.0_f64, f64::max).max(1e-9);
        let ymax = all.map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9);
        let _ = write!(
            svg,
            r#"<text x="{left}" y="{}" font-weight="bold">{title}</text><line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/><line x1="{left}" y1="{}" x2="{left}" y2="{bottom}" stroke="black"/><text x="{}" y="{}">{xlabel}</text><text x="5" y="{}">{ylabel}</text><text x="5" y="{}">{ymax:.1}</text>"#,
            top + 15.0,
            top + 25.0,
            (left + right) / 2.0,
            bottom + 20.0,
            top + 40.0,
            top + 30.0
        );
        for (i, (name, color, pts)) in series.iter().enumerate() {
            let points: Vec<String> = pts
                .iter()
                .map(|(x, y)| {
                    format!(
                        "{:.1},{:.1}",
                        left + x / xmax * (right - left),
                        bottom - y / ymax * (bottom - top - 25.0)
                    )
                })
                .collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{color}">{name}</text>"#,
                points.join(" "),
                right - 120.0,
                top + 15.0 + 15.0 * i as f64
            );
        }
    };
    panel(
        &mut svg,
        0.0,
        "Throughput over time",
        "seconds",
        "msg/s",
        &[
            ("sluice", "#1f77b4", &r.sluice.timeline),
            ("baseline", "#ff7f0e", &r.baseline.timeline),
        ],
    );
    panel(
        &mut svg,
        h + 20.0,
        &format!(
            "Latency at {:.0} % of peak throughput",
            r.latency_load * 100.0
        ),
        "percentile",
        "ms",
        &[
            ("sluice", "#1f77b4", &r.sluice.curve),
            ("baseline", "#ff7f0e", &r.baseline.curve),
        ],
    );
    panel(
        &mut svg,
        2.0 * (h + 20.0),
        "Latency p99 per 100 ms, over the latency phase",
        "seconds",
        "ms",
        &[
            ("sluice", "#1f77b4", &r.sluice.p99_over_time),
            ("baseline", "#ff7f0e", &r.baseline.p99_over_time),
        ],
    );
    svg.push_str("</svg>\n");
    svg
}
