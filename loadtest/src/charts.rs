//! Charts as SVG strings, drawn by plotters' SVG backend (text is left to
//! the browser, so no font library is involved), for inlining in the HTML.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

const W: u32 = 920;
const H: u32 = 340;

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("chart: {e}")
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

pub struct Line<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A line chart; an empty string when there is nothing to draw.
pub fn lines(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Line<'_>],
) -> Result<String, String> {
    lines_with(title, x_desc, y_desc, series, &|x| format!("{x}"))
}

pub fn lines_with(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Line<'_>],
    x_fmt: &dyn Fn(&f64) -> String,
) -> Result<String, String> {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    let mut any = false;
    for &(x, y) in all {
        if !(x.is_finite() && y.is_finite()) {
            continue;
        }
        any = true;
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !any {
        return Ok(String::new());
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.08 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, 0f64..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(x_fmt)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        for (i, s) in series.iter().enumerate() {
            if s.points.is_empty() {
                continue;
            }
            let c = color(i);
            chart
                .draw_series(LineSeries::new(
                    s.points
                        .iter()
                        .copied()
                        .filter(|(x, y)| x.is_finite() && y.is_finite()),
                    c.stroke_width(2),
                ))
                .map_err(err)?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Bars in pairs, e.g. observed and expected share per tier.
pub fn paired_bars(
    title: &str,
    y_desc: &str,
    groups: &[String],
    names: (&str, &str),
    values: &[(f64, f64)],
) -> Result<String, String> {
    if groups.is_empty() {
        return Ok(String::new());
    }
    let n = groups.len() as u32 * 2;
    let ymax = values
        .iter()
        .flat_map(|&(a, b)| [a, b])
        .fold(0f64, f64::max)
        .max(1e-9)
        * 1.15;
    // One label per pair, under its first bar; the legend tells the colours.
    let labels: Vec<String> = groups
        .iter()
        .flat_map(|g| [g.clone(), String::new()])
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((0u32..n).into_segmented(), 0f64..ymax)
            .map_err(err)?;
        let fmt = |v: &SegmentValue<u32>| match v {
            SegmentValue::CenterOf(k) => labels.get(*k as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(y_desc)
            .x_labels(n as usize)
            .x_label_formatter(&fmt)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        let first: Vec<(u32, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (2 * i as u32, v.0))
            .collect();
        let second: Vec<(u32, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (2 * i as u32 + 1, v.1))
            .collect();
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(color(0).filled())
                    .margin(6)
                    .data(first),
            )
            .map_err(err)?
            .label(names.0)
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color(0).filled()));
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(color(7).filled())
                    .margin(6)
                    .data(second),
            )
            .map_err(err)?
            .label(names.1)
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color(7).filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Percentile distributions on a "nines" axis (x = −log10(1 − p)).
pub fn percentiles(title: &str, curves: &[(String, Vec<(f64, f64)>)]) -> Result<String, String> {
    let to_x = |p: f64| -(1.0 - (p / 100.0).min(0.9999)).log10();
    let lines: Vec<Line<'_>> = curves
        .iter()
        .map(|(name, pts)| Line {
            name: name.as_str(),
            points: pts.iter().map(|&(p, ms)| (to_x(p), ms)).collect(),
        })
        .collect();
    let fmt = |x: &f64| {
        let p = 100.0 * (1.0 - 10f64.powf(-*x));
        if p < 99.0 {
            format!("{p:.0}%")
        } else {
            format!("{p:.2}%")
        }
    };
    lines_with(title, "percentile", "milliseconds", &lines, &fmt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_render_to_svg_without_fonts() {
        let svg = lines(
            "throughput",
            "seconds",
            "jobs/s",
            &[Line {
                name: "done",
                points: vec![(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)],
            }],
        )
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("throughput"));
        let bars = paired_bars(
            "shares",
            "%",
            &["free".into(), "enterprise".into()],
            ("observed", "expected"),
            &[(10.0, 11.0), (50.0, 53.0)],
        )
        .unwrap();
        assert!(bars.contains("<rect"));
        assert!(bars.contains("enterprise"));
        assert!(bars.contains("expected"));
        let p = percentiles(
            "latency",
            &[("submit".into(), vec![(50.0, 1.0), (99.9, 9.0)])],
        )
        .unwrap();
        assert!(p.contains("<svg"));
        assert_eq!(lines("empty", "x", "y", &[]).unwrap(), "");
    }
}
