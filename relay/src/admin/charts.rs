//! Bar charts as inline SVG, drawn on the server: no script, and nothing the console's CSP
//! refuses (presentation attributes and classes from the console's own style sheet, never
//! a `style` attribute). Each chart names itself (`<title>`, `<desc>` with a summary in
//! words) for screen readers, and comes with its numbers as a table.

use super::html::esc;

/// One bar: its label on the axis, its value, and the value as people read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar {
    pub label: String,
    pub value: i64,
    pub shown: String,
}

/// What a chart says around its bars.
pub struct Chart<'a> {
    /// The element id; `{id}-title` and `{id}-desc` name the SVG's parts.
    pub id: &'a str,
    pub title: &'a str,
    /// A sentence for screen readers: what the bars add up to.
    pub summary: &'a str,
    /// The label of the axis the bars stand on (categories).
    pub category_axis: &'a str,
    /// The label of the axis the bars grow along (values).
    pub value_axis: &'a str,
    pub bars: &'a [Bar],
    /// How a tick value reads (`12`, `3.40 MB`).
    pub tick_text: &'a dyn Fn(i64) -> String,
    /// Label every n-th bar on its axis (counted back from the last, which is always
    /// labelled): 30 days need not 30 labels.
    pub label_every: usize,
}

/// The drawing's size in SVG units; the page scales it to its column.
const WIDTH: i64 = 640;
const HEIGHT: i64 = 280;
/// Room for the value ticks at the left and the axis title beside them.
const LEFT: i64 = 78;
const RIGHT: i64 = 12;
const TOP: i64 = 16;
/// Room for the category labels and the axis title below.
const BOTTOM: i64 = 52;
/// Room for names beside horizontal bars.
const NAME_WIDTH: i64 = 150;
/// One horizontal bar's row.
const ROW: i64 = 24;
/// Longest name drawn beside a bar (the table has it whole).
const MAX_NAME_CHARS: usize = 18;

/// A round step for about `ticks` ticks up to `max`: 1, 2 or 5 times a power of ten.
pub fn nice_step(max: i64, ticks: i64) -> i64 {
    let ticks = ticks.max(1);
    let raw = max.max(1).saturating_add(ticks - 1) / ticks;
    let mut power = 1i64;
    loop {
        for m in [1, 2, 5] {
            let step = m * power;
            if step >= raw {
                return step;
            }
        }
        match power.checked_mul(10) {
            Some(p) => power = p,
            None => return raw,
        }
    }
}

/// The value ticks for bars up to `max`: 0, step, …, the first multiple at or above `max`.
pub fn ticks(max: i64) -> Vec<i64> {
    let step = nice_step(max, 4);
    let steps = max.max(1).saturating_add(step - 1) / step;
    (0..=steps).map(|i| i.saturating_mul(step)).collect()
}

fn svg_open(c: &Chart, height: i64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"{id}-svg\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" height=\"{height}\" \
         role=\"img\" aria-labelledby=\"{id}-title {id}-desc\"><title id=\"{id}-title\">{}</title><desc id=\"{id}-desc\">{}</desc>",
        esc(c.title),
        esc(c.summary),
        id = esc(c.id),
    )
}

/// `value` of `top` as a length of `len` units (without overflow for any i64).
fn scale(value: i64, len: i64, top: i64) -> i64 {
    (i128::from(value.max(0)) * i128::from(len) / i128::from(top.max(1))) as i64
}

/// Whether the bar at `i` of `n` gets its label drawn.
fn labelled(i: usize, n: usize, every: usize) -> bool {
    (n - 1 - i).is_multiple_of(every.max(1))
}

/// A name cut to fit beside a bar.
fn short(name: &str) -> String {
    if name.chars().count() <= MAX_NAME_CHARS {
        name.to_string()
    } else {
        let mut s: String = name.chars().take(MAX_NAME_CHARS - 1).collect();
        s.push('…');
        s
    }
}

/// Vertical bars: categories along the bottom, values up the left.
pub fn columns(c: &Chart) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let base = TOP + plot_h;
    let max = c.bars.iter().map(|b| b.value).max().unwrap_or(0);
    let ticks = ticks(max);
    let top = *ticks.last().unwrap_or(&1);
    let mut svg = svg_open(c, HEIGHT);
    for v in &ticks {
        let y = base - scale(*v, plot_h, top);
        svg.push_str(&format!(
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6,
            y + 4,
            esc(&(c.tick_text)(*v))
        ));
    }
    let n = c.bars.len().max(1) as i64;
    let slot = plot_w / n;
    let gap = (slot / 5).max(1);
    for (i, b) in c.bars.iter().enumerate() {
        let x = LEFT + i as i64 * slot;
        let h = scale(b.value, plot_h, top);
        svg.push_str(&format!(
            "<rect class=\"bar\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{h}\"><title>{}: {}</title></rect>",
            x + gap / 2,
            base - h,
            slot - gap,
            esc(&b.label),
            esc(&b.shown)
        ));
        if labelled(i, c.bars.len(), c.label_every) {
            svg.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                x + slot / 2,
                base + 16,
                esc(&b.label)
            ));
        }
    }
    svg.push_str(&format!(
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\"/><line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{base}\"/>\
         <text class=\"title\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text class=\"title\" x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text></svg>",
        WIDTH - RIGHT,
        LEFT + plot_w / 2,
        HEIGHT - 8,
        esc(c.category_axis),
        TOP + plot_h / 2,
        TOP + plot_h / 2,
        esc(c.value_axis),
    ));
    svg
}

/// Horizontal bars: one row per category (named at the left), values along the bottom.
pub fn rows(c: &Chart) -> String {
    let n = c.bars.len().max(1) as i64;
    let plot_h = n * ROW;
    let height = TOP + plot_h + BOTTOM;
    let left = NAME_WIDTH + 8;
    let plot_w = WIDTH - left - RIGHT - 40;
    let base = TOP + plot_h;
    let max = c.bars.iter().map(|b| b.value).max().unwrap_or(0);
    let ticks = ticks(max);
    let top = *ticks.last().unwrap_or(&1);
    let mut svg = svg_open(c, height);
    for v in &ticks {
        let x = left + scale(*v, plot_w, top);
        svg.push_str(&format!(
            "<line class=\"grid\" x1=\"{x}\" y1=\"{TOP}\" x2=\"{x}\" y2=\"{base}\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            base + 16,
            esc(&(c.tick_text)(*v))
        ));
    }
    for (i, b) in c.bars.iter().enumerate() {
        let y = TOP + i as i64 * ROW;
        let w = scale(b.value, plot_w, top);
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect class=\"bar\" x=\"{left}\" y=\"{}\" width=\"{w}\" height=\"{}\"><title>{}: {}</title></rect>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            left - 6,
            y + ROW / 2 + 4,
            esc(&short(&b.label)),
            y + 3,
            ROW - 6,
            esc(&b.label),
            esc(&b.shown),
            left + w + 4,
            y + ROW / 2 + 4,
            esc(&b.shown),
        ));
    }
    svg.push_str(&format!(
        "<line class=\"axis\" x1=\"{left}\" y1=\"{TOP}\" x2=\"{left}\" y2=\"{base}\"/><line class=\"axis\" x1=\"{left}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\"/>\
         <text class=\"title\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text class=\"title\" x=\"12\" y=\"{}\">{}</text></svg>",
        left + plot_w,
        left + plot_w / 2,
        height - 8,
        esc(c.value_axis),
        TOP - 4,
        esc(c.category_axis),
    ));
    svg
}

/// The chart's numbers as a table (`heads` over the label and the shown value), under a
/// disclosure the admin opens.
pub fn table(id: &str, summary: &str, heads: [&str; 2], bars: &[Bar]) -> String {
    let rows: String = bars
        .iter()
        .map(|b| {
            format!(
                "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
                esc(&b.label),
                esc(&b.shown)
            )
        })
        .collect();
    format!(
        "<details class=\"data\" id=\"{id}-data\"><summary>{}</summary><table class=\"chart-data\" id=\"{id}-table\"><tr><th>{}</th><th>{}</th></tr>{rows}</table></details>",
        esc(summary),
        esc(heads[0]),
        esc(heads[1]),
        id = esc(id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bars(values: &[i64]) -> Vec<Bar> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Bar {
                label: format!("d{i}"),
                value: *v,
                shown: v.to_string(),
            })
            .collect()
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(ticks(0), vec![0, 1]);
        assert_eq!(ticks(3), vec![0, 1, 2, 3]);
        assert_eq!(ticks(7), vec![0, 2, 4, 6, 8]);
        assert_eq!(ticks(143), vec![0, 50, 100, 150]);
        assert_eq!(ticks(3_400_000), vec![0, 1_000_000, 2_000_000, 3_000_000, 4_000_000]);
        assert!(ticks(i64::MAX).len() >= 2);
    }

    #[test]
    fn bars_are_drawn_to_scale_with_escaped_labels_and_no_style() {
        let mut data = bars(&[0, 5, 10]);
        data[2].label = "<b>&".into();
        let text = |v: i64| v.to_string();
        let chart = Chart {
            id: "c",
            title: "Sessions \"per\" day",
            summary: "15 in all",
            category_axis: "Day",
            value_axis: "Sessions",
            bars: &data,
            tick_text: &text,
            label_every: 1,
        };
        for svg in [columns(&chart), rows(&chart)] {
            assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
            assert!(!svg.contains("style="), "the CSP refuses inline styles");
            assert!(svg.contains("&lt;b&gt;&amp;") && !svg.contains("<b>"));
            assert!(svg.contains("Sessions &quot;per&quot; day"));
            assert_eq!(svg.matches("class=\"bar\"").count(), 3);
        }
        // The tallest bar fills the plot (ticks end at 10), the middle one half of it.
        let svg = columns(&chart);
        let plot_h = HEIGHT - TOP - BOTTOM;
        assert!(svg.contains(&format!("height=\"{plot_h}\"><title>&lt;b&gt;&amp;: 10")));
        assert!(svg.contains(&format!("height=\"{}\"><title>d1: 5", plot_h / 2)));
    }

    #[test]
    fn long_names_are_cut_beside_the_bar_only() {
        assert_eq!(short("alice"), "alice");
        let long = "a-very-long-operator-name";
        assert_eq!(short(long).chars().count(), MAX_NAME_CHARS);
        let table = table("t", "Table", ["Operator", "Sessions"], &bars(&[1]));
        assert!(table.contains("<td>d0</td><td class=\"n\">1</td>"));
    }

    #[test]
    fn every_fifth_label_counting_back_from_the_last() {
        let shown: Vec<usize> = (0..30).filter(|i| labelled(*i, 30, 5)).collect();
        assert_eq!(shown, vec![4, 9, 14, 19, 24, 29]);
    }
}
