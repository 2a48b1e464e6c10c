//! The plan's progress as an SVG chart, drawn on the station (no script, no
//! library): per series, devices written so far today, hour by hour, with
//! the plan as a dashed line of the same colour.

use super::page::esc;
use crate::wire::station::ProgressSeries;

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 30.0;
const COLOURS: [&str; 8] = [
    "#1f5fa8", "#d9730d", "#2e8b57", "#a32020", "#6a4c93", "#8c564b", "#c71585", "#4b6b7a",
];

/// The chart of `series` over a day of `hours` hours, drawn up to `hour_now`
/// (the whole day when None).
pub fn progress(
    title: &str,
    series: &[ProgressSeries],
    hours: usize,
    hour_now: Option<usize>,
) -> String {
    let hours = hours.max(1);
    let top = series
        .iter()
        .map(|s| s.planned.max(s.written))
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |hour: f64| LEFT + plot_w * hour / hours as f64;
    let y = |n: f64| TOP + plot_h - plot_h * n / top as f64;
    let mut svg = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = esc(title)
    );
    // Axes, hour ticks every 3 hours, the count at the top.
    svg.push_str(&format!(
        "<line x1=\"{l}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#888\"/>\
         <line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{b}\" stroke=\"#888\"/>\
         <text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{top}</text>\
         <text x=\"{tx}\" y=\"{b}\" text-anchor=\"end\">0</text>",
        l = LEFT,
        r = LEFT + plot_w,
        t = TOP,
        b = TOP + plot_h,
        tx = LEFT - 6.0,
        ty = TOP + 4.0,
    ));
    for h in (0..=hours).step_by(3) {
        svg.push_str(&format!(
            "<line x1=\"{hx:.1}\" y1=\"{b}\" x2=\"{hx:.1}\" y2=\"{b2}\" stroke=\"#888\"/>\
             <text x=\"{hx:.1}\" y=\"{ly}\" text-anchor=\"middle\">{h:02}</text>",
            hx = x(h as f64),
            b = TOP + plot_h,
            b2 = TOP + plot_h + 4.0,
            ly = TOP + plot_h + 16.0,
        ));
    }
    if let Some(now) = hour_now {
        svg.push_str(&format!(
            "<line x1=\"{nx:.1}\" y1=\"{t}\" x2=\"{nx:.1}\" y2=\"{b}\" stroke=\"#bbb\" stroke-dasharray=\"2 3\"/>",
            nx = x((now + 1).min(hours) as f64),
            t = TOP,
            b = TOP + plot_h,
        ));
    }
    let last = hour_now.map_or(hours, |h| (h + 1).min(hours));
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        if s.planned > 0 {
            let py = y(s.planned as f64);
            svg.push_str(&format!(
                "<line x1=\"{l}\" y1=\"{py:.1}\" x2=\"{r}\" y2=\"{py:.1}\" stroke=\"{colour}\" \
                 stroke-dasharray=\"6 4\" stroke-opacity=\"0.6\"/>",
                l = LEFT,
                r = LEFT + plot_w,
            ));
        }
        let mut points = format!("{:.1},{:.1}", x(0.0), y(0.0));
        let mut sum = 0;
        for (h, n) in s.per_hour.iter().enumerate().take(last) {
            sum += n;
            points.push_str(&format!(" {:.1},{:.1}", x((h + 1) as f64), y(sum as f64)));
        }
        svg.push_str(&format!(
            "<polyline points=\"{points}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>"
        ));
        let label = if s.planned > 0 {
            format!("{} {}/{}", s.name, s.written, s.planned)
        } else {
            format!("{} {}", s.name, s.written)
        };
        let ly = TOP + 12.0 + 16.0 * i as f64;
        svg.push_str(&format!(
            "<rect x=\"{lx}\" y=\"{ry:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{tx}\" y=\"{ly:.1}\">{label}</text>",
            lx = LEFT + plot_w + 12.0,
            ry = ly - 9.0,
            tx = LEFT + plot_w + 26.0,
            label = esc(&label),
        ));
    }
    if series.is_empty() {
        svg.push_str(&format!(
            "<text x=\"{cx}\" y=\"{cy}\" text-anchor=\"middle\">nothing planned or written today</text>",
            cx = LEFT + plot_w / 2.0,
            cy = TOP + plot_h / 2.0,
        ));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_a_line_up_to_now_with_its_plan_and_names_are_escaped() {
        let series = vec![ProgressSeries {
            name: "A<1>".into(),
            planned: 10,
            written: 4,
            per_hour: {
                let mut v = vec![0; 24];
                v[8] = 3;
                v[9] = 1;
                v
            },
        }];
        let svg = progress("t", &series, 24, Some(9));
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("A&lt;1&gt; 4/10"), "{svg}");
        assert!(!svg.contains("A<1>"));
        assert!(svg.contains("stroke-dasharray=\"6 4\""));
        // Points from 00:00 to the end of the current hour: 11 of them.
        let points = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split(' ').count(), 11, "{points}");
        assert!(
            !svg.contains("style="),
            "no inline style: the CSP forbids it"
        );
    }
}
