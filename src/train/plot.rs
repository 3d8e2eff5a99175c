//! Training curves as self-contained SVGs: chosen series of a `metrics.jsonl` against the
//! optimizer step — the losses (`loss*`, `kl`, `ce`) on a logarithmic y axis, or any other
//! series (GRPO's rewards) on a linear one.

use anyhow::Result;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// The series colours of every chart.
pub(crate) const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Writes `out` (SVG) with every loss series of the metrics file (log y axis); returns the
/// number of series drawn.
pub fn write_loss_svg(metrics: &Path, out: &Path, title: &str) -> Result<usize> {
    write_series_svg(
        metrics,
        out,
        title,
        |k| k.starts_with("loss") || k == "kl" || k == "ce",
        true,
    )
}

/// Writes `out` (SVG) with the series of the metrics file whose names `keep` accepts, on a log
/// or linear y axis; returns the number of series drawn.
pub fn write_series_svg(
    metrics: &Path,
    out: &Path,
    title: &str,
    keep: impl Fn(&str) -> bool,
    log_y: bool,
) -> Result<usize> {
    let text = std::fs::read_to_string(metrics)?;
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let Some(step) = v["step"].as_f64() else {
            continue;
        };
        for (k, val) in v.as_object().into_iter().flatten() {
            if keep(k)
                && let Some(y) = val
                    .as_f64()
                    .filter(|y| (!log_y || *y > 0.0) && y.is_finite())
            {
                series.entry(k.clone()).or_default().push((step, y));
            }
        }
    }
    // The y axis maps f(y): ln y on a log axis, y on a linear one.
    let f = |y: f64| if log_y { y.ln() } else { y };
    let f_inv = |v: f64| if log_y { v.exp() } else { v };
    let (w, h, l, r, t, b) = (720.0, 420.0, 70.0, 170.0, 40.0, 50.0);
    let pts = series.values().flatten();
    let xmax = pts.clone().map(|p| p.0).fold(1.0, f64::max);
    let (ymin, ymax) = pts.fold((f64::MAX, f64::MIN), |(a, c), p| {
        (a.min(f(p.1)), c.max(f(p.1)))
    });
    let (ymin, ymax) = if ymin >= ymax {
        (ymin - 1.0, ymin + 1.0)
    } else {
        (ymin, ymax)
    };
    let px = |x: f64| l + (w - l - r) * (x / xmax);
    let py = |y: f64| t + (h - t - b) * (1.0 - (f(y) - ymin) / (ymax - ymin));
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>"#,
        (w - r + l) / 2.0
    );
    let _ = write!(
        svg,
        r#"<line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{l}" y1="{t}" x2="{l}" y2="{}" stroke="black"/>"#,
        h - b,
        w - r,
        h - b,
        h - b
    );
    for i in 0..=4 {
        let y = f_inv(ymin + (ymax - ymin) * i as f64 / 4.0);
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{:.3}</text>"#,
            l - 6.0,
            py(y) + 4.0,
            y
        );
        let x = xmax * i as f64 / 4.0;
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{:.0}</text>"#,
            px(x),
            h - b + 18.0,
            x
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">optimizer step</text>"#,
        (w - r + l) / 2.0,
        h - 10.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/>"#,
            path.join(" ")
        );
        let ly = t + 16.0 * i as f64;
        let _ = write!(
            svg,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{name}</text>"#,
            w - r + 10.0,
            w - r + 30.0,
            w - r + 36.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    crate::util::fsx::atomic_write(out, svg.as_bytes())?;
    Ok(series.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_every_loss_series() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("metrics.jsonl");
        std::fs::write(&m, "{\"step\":1,\"loss\":2.0,\"loss_layer_3\":1.5,\"lr\":0.1}\n{\"step\":2,\"loss\":1.0,\"loss_layer_3\":0.7,\"lr\":0.1}\n").unwrap();
        let out = dir.path().join("loss.svg");
        assert_eq!(super::write_loss_svg(&m, &out, "stage1").unwrap(), 2);
        let svg = std::fs::read_to_string(&out).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("loss_layer_3") && !svg.contains(">lr<"));
        // A linear axis takes zero and negative values.
        std::fs::write(
            &m,
            "{\"step\":1,\"reward\":-0.5}\n{\"step\":2,\"reward\":0.0}\n",
        )
        .unwrap();
        let n = super::write_series_svg(&m, &out, "grpo", |k| k == "reward", false).unwrap();
        assert_eq!(n, 1);
        assert!(std::fs::read_to_string(out).unwrap().contains("-0.500"));
    }
}
