//! The HTML report: one self-contained page with inline SVG plots — a wait-time CDF per
//! class, utilisation over time, and a contention heat map by resource.

use std::fmt::Write;

use super::report::{hms, Comparison, Report};
use super::scenario::Scenario;

const COLORS: [&str; 8] = ["#d62728", "#ff7f0e", "#9467bd", "#1f77b4", "#2ca02c", "#7f7f7f", "#17becf", "#bcbd22"];
const W: f64 = 640.0;
const H: f64 = 260.0;
const PAD: f64 = 44.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}}\
         pre{{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}}\
         svg{{background:#fff;border:1px solid #ddd;margin:.5em 0}} h2{{margin-top:1.5em}}\
         </style></head><body>\n<h1>{t}</h1>\n{body}</body></html>\n",
        t = esc(title)
    )
}

fn axes(svg: &mut String, x_label: &str, y_label: &str) {
    let _ = write!(
        svg,
        "<line x1=\"{PAD}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"#444\"/>\
         <line x1=\"{PAD}\" y1=\"10\" x2=\"{PAD}\" y2=\"{y}\" stroke=\"#444\"/>\
         <text x=\"{xm}\" y=\"{yl}\" font-size=\"11\" text-anchor=\"middle\">{x_label}</text>\
         <text x=\"12\" y=\"{ym}\" font-size=\"11\" text-anchor=\"middle\" transform=\"rotate(-90 12 {ym})\">{y_label}</text>",
        y = H - PAD,
        x2 = W - 10.0,
        xm = (W + PAD) / 2.0,
        yl = H - 8.0,
        ym = (H - PAD) / 2.0,
    );
}

/// 0%, 25%, … 100% down the y axis.
fn percent_labels(svg: &mut String, y: &dyn Fn(f64) -> f64) {
    for k in 0..=4 {
        let f = k as f64 / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{:.0}\" font-size=\"10\" text-anchor=\"end\">{:.0}%</text>",
            PAD - 4.0,
            y(f) + 3.0,
            f * 100.0
        );
    }
}

fn polyline(svg: &mut String, pts: &[(f64, f64)], color: &str) {
    let d: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = write!(svg, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{}\"/>", d.join(" "));
}

fn legend(svg: &mut String, items: &[(String, &str)]) {
    for (i, (name, color)) in items.iter().enumerate() {
        let y = 18.0 + 13.0 * i as f64;
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{ry}\" width=\"10\" height=\"3\" fill=\"{color}\"/><text x=\"{tx}\" y=\"{y}\" font-size=\"10\">{}</text>",
            esc(name),
            x = W - 150.0,
            ry = y - 4.0,
            tx = W - 136.0,
        );
    }
}

/// Wait-time CDF per class, x on a log scale.
pub fn cdf_svg(r: &Report) -> String {
    let mut svg = format!("<svg width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\">");
    axes(&mut svg, "wait before a pass starts (log scale)", "fraction of passes");
    let (lo, hi) = (
        (*r.cdf_ms.first().unwrap_or(&1_000) as f64).max(1.0).ln(),
        (*r.cdf_ms.last().unwrap_or(&1_000) as f64).max(2.0).ln(),
    );
    let span = (hi - lo).max(1e-9);
    let x = |ms: u64| PAD + ((ms as f64).max(1.0).ln() - lo) / span * (W - PAD - 10.0);
    let y = |f: f64| (H - PAD) - f * (H - PAD - 10.0);
    for k in 0..=4 {
        let ms = (lo + span * k as f64 / 4.0).exp() as u64;
        let _ = write!(
            svg,
            "<text x=\"{:.0}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x(ms),
            H - PAD + 13.0,
            hms(ms)
        );
    }
    percent_labels(&mut svg, &y);
    let mut items = Vec::new();
    for (i, c) in r.classes.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = r.cdf_ms.iter().zip(&c.cdf).map(|(ms, f)| (x(*ms), y(*f))).collect();
        polyline(&mut svg, &pts, color);
        items.push((format!("{} (p99 {})", c.class, hms(c.p99_ms)), color));
    }
    legend(&mut svg, &items);
    svg.push_str("</svg>");
    svg
}

/// Agents running and each resource's busy fraction, per time bucket.
pub fn utilisation_svg(r: &Report) -> String {
    let mut svg = format!("<svg width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\">");
    axes(&mut svg, "simulated time", "utilisation");
    let n = r.agent_series.len().max(1);
    let x = |b: usize| PAD + (b as f64 + 0.5) / n as f64 * (W - PAD - 10.0);
    let y = |f: f64| (H - PAD) - f.clamp(0.0, 1.0) * (H - PAD - 10.0);
    for k in 0..=4 {
        let b = (n * k / 4).min(n);
        let _ = write!(
            svg,
            "<text x=\"{:.0}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            PAD + b as f64 / n as f64 * (W - PAD - 10.0),
            H - PAD + 13.0,
            hms(b as u64 * r.bucket_ms)
        );
    }
    percent_labels(&mut svg, &y);
    let mut items = vec![("agents running".to_string(), "#000")];
    polyline(&mut svg, &r.agent_series.iter().enumerate().map(|(b, v)| (x(b), y(*v))).collect::<Vec<_>>(), "#000");
    let mut busiest: Vec<&super::report::ResourceUse> = r.resources.iter().filter(|x| x.grants > 0).collect();
    busiest.sort_by(|a, b| b.busy.total_cmp(&a.busy));
    for (i, res) in busiest.iter().take(6).enumerate() {
        let color = COLORS[(i + 2) % COLORS.len()];
        polyline(&mut svg, &res.busy_series.iter().enumerate().map(|(b, v)| (x(b), y(*v))).collect::<Vec<_>>(), color);
        items.push((res.path.clone(), color));
    }
    legend(&mut svg, &items);
    svg.push_str("</svg>");
    svg
}

/// Mean waiters per resource and time bucket: darker is more contended.
pub fn heatmap_svg(r: &Report) -> String {
    let rows: Vec<&super::report::ResourceUse> =
        r.resources.iter().filter(|x| x.grants > 0 || x.peak_waiters > 0).collect();
    let label_w = 170.0;
    let cell_h = 18.0;
    let h = 30.0 + cell_h * rows.len() as f64;
    let n = rows.first().map_or(1, |x| x.waiters_series.len()).max(1);
    let cell_w = (W - label_w - 10.0) / n as f64;
    let max = rows.iter().flat_map(|x| x.waiters_series.iter()).copied().fold(0.0f64, f64::max).max(1e-9);
    let mut svg = format!("<svg width=\"{W}\" height=\"{h}\" xmlns=\"http://www.w3.org/2000/svg\">");
    for (i, res) in rows.iter().enumerate() {
        let y = 10.0 + cell_h * i as f64;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            label_w - 6.0,
            y + 12.0,
            esc(&res.path)
        );
        for (b, v) in res.waiters_series.iter().enumerate() {
            let t = (v / max).clamp(0.0, 1.0);
            let shade = (255.0 - t * 200.0) as u8;
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"rgb(255,{shade},{shade})\"><title>{} at {}: {:.1} waiting</title></rect>",
                label_w + cell_w * b as f64,
                cell_w + 0.2,
                cell_h - 2.0,
                esc(&res.path),
                hms(b as u64 * r.bucket_ms),
                v
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{label_w}\" y=\"{}\" font-size=\"10\">0 … {} (white: nobody waits; darkest: {:.1} waiting on average)</text>",
        h - 6.0,
        hms(n as u64 * r.bucket_ms),
        max
    );
    svg.push_str("</svg>");
    svg
}

fn sections(r: &Report) -> String {
    format!(
        "<h3>Wait-time CDF per class</h3>\n{}\n<h3>Utilisation over time</h3>\n{}\n<h3>Contention by resource (mean waiters)</h3>\n{}\n",
        cdf_svg(r),
        utilisation_svg(r),
        heatmap_svg(r)
    )
}

/// The page of one run.
pub fn run_page(sc: &Scenario, r: &Report) -> String {
    let body = format!("<p>{}</p>\n<pre>{}</pre>\n{}", esc(&sc.description), esc(&r.table()), sections(r));
    page(&format!("qm sim run — {}", sc.name), &body)
}

/// The page of a comparison: the side-by-side table, then each variant's plots.
pub fn compare_page(sc: &Scenario, c: &Comparison) -> String {
    let mut body = format!("<p>{}</p>\n<pre>{}</pre>\n", esc(&sc.description), esc(&c.table()));
    for r in &c.runs {
        let _ = write!(body, "<h2>{}</h2>\n{}", esc(&r.variant), sections(r));
    }
    page(&format!("qm sim compare — {}", sc.name), &body)
}
