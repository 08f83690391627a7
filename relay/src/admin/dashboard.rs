//! The dashboard: the last 30 days at a glance, as SVG bar charts drawn on the server with
//! their numbers as tables: sessions per day, sessions per operator (the top 10), how long
//! sessions lasted, and bytes moved per day. Days are days in the console's time zone.
//! Each figure is one aggregate query (a handful of rows back), never the sessions
//! themselves.

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use super::charts::{self, Bar, Chart};
use super::html::{self, esc, t, Lang, Text};
use super::ops::OpError;
use super::pages::{op_error, render};
use super::{Console, Ctx};

/// Days the dashboard looks back, today included.
pub const DAYS: usize = 30;
/// Operators in the per-operator chart.
pub const TOP_OPERATORS: i64 = 10;

/// Upper edges of the duration buckets (ms): under 1 minute, 1–5, 5–15, 15–30, 30–60
/// minutes, 1–2 hours, and 2 hours or more. Support sessions run minutes to an hour or
/// so; the edges keep those apart.
const DURATION_EDGES: [i64; 6] = [60_000, 300_000, 900_000, 1_800_000, 3_600_000, 7_200_000];

/// The duration buckets' names, in the order of [`DURATION_EDGES`] plus the open end.
fn duration_labels(lang: Lang) -> [&'static str; 7] {
    match lang {
        Lang::En => [
            "< 1 min",
            "1–5 min",
            "5–15 min",
            "15–30 min",
            "30–60 min",
            "1–2 h",
            "≥ 2 h",
        ],
        Lang::Ja => [
            "1分未満",
            "1〜5分",
            "5〜15分",
            "15〜30分",
            "30〜60分",
            "1〜2時間",
            "2時間以上",
        ],
    }
}

/// The `days` days up to `today` in `zone`, and their `days + 1` bounds (Unix ms; a day is
/// 23 or 25 hours where the zone changes its clocks).
fn day_ranges(zone: &TimeZone, today: Date, days: usize) -> Result<(Vec<Date>, Vec<i64>), jiff::Error> {
    let first = today.checked_sub(jiff::Span::new().days(days as i64 - 1))?;
    let mut dates = Vec::with_capacity(days);
    let mut bounds = Vec::with_capacity(days + 1);
    let mut day = first;
    for _ in 0..=days {
        bounds.push(day.to_zoned(zone.clone())?.timestamp().as_millisecond());
        dates.push(day);
        day = day.tomorrow()?;
    }
    dates.truncate(days);
    Ok((dates, bounds))
}

/// A count as a tick or a value.
fn count(n: i64) -> String {
    n.to_string()
}

/// A byte count as a tick or a value.
fn bytes(n: i64) -> String {
    html::bytes(n.max(0) as u64)
}

/// One figure: its heading, the chart and the table of its numbers.
fn figure(lang: Lang, id: &str, svg: String, table_heads: [&str; 2], bars: &[Bar], note: &str) -> String {
    let table_label = match lang {
        Lang::En => "The numbers as a table",
        Lang::Ja => "数値を表で表示",
    };
    format!(
        "<figure class=\"chart\" id=\"{id}\">{svg}<figcaption class=\"hint\">{note}</figcaption>{}</figure>",
        charts::table(id, table_label, table_heads, bars),
        note = esc(note),
    )
}

pub(super) async fn dashboard_page(State(console): State<Console>, Extension(ctx): Extension<Ctx>) -> Response {
    let lang = ctx.lang;
    let zone = &ctx.zone;
    let today = jiff::Timestamp::now().to_zoned(zone.clone()).date();
    let Ok((dates, bounds)) = day_ranges(zone, today, DAYS) else {
        return op_error(&ctx, &OpError::Internal);
    };
    let store = &console.shared.store;
    let since = bounds[0];
    let (totals, top, durations) = match tokio::try_join!(
        store.totals_per_range(&bounds),
        store.top_operators(since, TOP_OPERATORS),
        store.duration_histogram(since, &DURATION_EDGES),
    ) {
        Ok(all) => all,
        Err(e) => return op_error(&ctx, &e.into()),
    };
    let all_sessions: i64 = totals.iter().map(|d| d.sessions).sum();
    let all_bytes: i64 = totals.iter().map(|d| d.bytes).sum();

    let day_bars = |value: &dyn Fn(usize) -> i64, shown: &dyn Fn(i64) -> String| -> Vec<Bar> {
        dates
            .iter()
            .enumerate()
            .map(|(i, d)| Bar {
                label: d.strftime("%m-%d").to_string(),
                value: value(i),
                shown: shown(value(i)),
            })
            .collect()
    };
    // Tables name the whole date; the chart's axis the month and day.
    let full_dates = |bars: Vec<Bar>| -> Vec<Bar> {
        bars.into_iter()
            .zip(&dates)
            .map(|(b, d)| Bar {
                label: d.to_string(),
                ..b
            })
            .collect()
    };
    let per_day = day_bars(&|i| totals[i].sessions, &count);
    let bytes_per_day = day_bars(&|i| totals[i].bytes, &bytes);
    let per_operator: Vec<Bar> = top
        .iter()
        .map(|(name, n)| Bar {
            label: name.clone(),
            value: *n,
            shown: count(*n),
        })
        .collect();
    let lasted: Vec<Bar> = duration_labels(lang)
        .iter()
        .zip(&durations)
        .map(|(label, n)| Bar {
            label: label.to_string(),
            value: *n,
            shown: count(*n),
        })
        .collect();

    let (in_all, joined) = match lang {
        Lang::En => (
            format!("{all_sessions} sessions in 30 days"),
            format!(
                "{} sessions a client joined and that have ended",
                durations.iter().sum::<i64>()
            ),
        ),
        Lang::Ja => (
            format!("30日間で {all_sessions} セッション"),
            format!("お客様が参加し終了した {} セッション", durations.iter().sum::<i64>()),
        ),
    };
    let moved = match lang {
        Lang::En => format!("{} moved in 30 days", bytes(all_bytes)),
        Lang::Ja => format!("30日間の転送量 {}", bytes(all_bytes)),
    };
    let abbreviation = jiff::Timestamp::now().to_zoned(zone.clone()).strftime("%Z").to_string();
    let zone_note = if abbreviation == html::zone_name(zone) {
        format!("{} {abbreviation}", t(lang, Text::Sessions30))
    } else {
        format!(
            "{} {} ({abbreviation})",
            t(lang, Text::Sessions30),
            html::zone_name(zone)
        )
    };
    let day_axis = format!("{} ({})", t(lang, Text::AxisDay), html::zone_name(zone));

    let f1 = figure(
        lang,
        "sessions-per-day",
        charts::columns(&Chart {
            id: "sessions-per-day",
            title: t(lang, Text::ChartSessionsPerDay),
            summary: &in_all,
            category_axis: &day_axis,
            value_axis: t(lang, Text::AxisSessions),
            bars: &per_day,
            tick_text: &count,
            label_every: 5,
        }),
        [t(lang, Text::Day), t(lang, Text::AxisSessions)],
        &full_dates(per_day.clone()),
        &in_all,
    );
    let f2 = figure(
        lang,
        "sessions-per-operator",
        charts::rows(&Chart {
            id: "sessions-per-operator",
            title: t(lang, Text::ChartPerOperator),
            summary: &in_all,
            category_axis: t(lang, Text::Operator),
            value_axis: t(lang, Text::AxisSessions),
            bars: &per_operator,
            tick_text: &count,
            label_every: 1,
        }),
        [t(lang, Text::Operator), t(lang, Text::AxisSessions)],
        &per_operator,
        &in_all,
    );
    let f3 = figure(
        lang,
        "session-durations",
        charts::columns(&Chart {
            id: "session-durations",
            title: t(lang, Text::ChartDurations),
            summary: &joined,
            category_axis: t(lang, Text::AxisDuration),
            value_axis: t(lang, Text::AxisSessions),
            bars: &lasted,
            tick_text: &count,
            label_every: 1,
        }),
        [t(lang, Text::AxisDuration), t(lang, Text::AxisSessions)],
        &lasted,
        t(lang, Text::DurationsHelp),
    );
    let f4 = figure(
        lang,
        "bytes-per-day",
        charts::columns(&Chart {
            id: "bytes-per-day",
            title: t(lang, Text::ChartBytesPerDay),
            summary: &moved,
            category_axis: &day_axis,
            value_axis: t(lang, Text::AxisBytes),
            bars: &bytes_per_day,
            tick_text: &bytes,
            label_every: 5,
        }),
        [t(lang, Text::Day), t(lang, Text::AxisBytes)],
        &full_dates(bytes_per_day.clone()),
        &moved,
    );
    let empty = if all_sessions == 0 {
        format!("<p id=\"no-sessions\">{}</p>", t(lang, Text::NoSessionsInPeriod))
    } else {
        String::new()
    };
    let heading = |text: Text| format!("<h2>{}</h2>", t(lang, text));
    let body = format!(
        "<p class=\"hint\" id=\"dashboard-zone\">{}</p>{empty}<div class=\"charts\">\
         <section>{}{f1}</section><section>{}{f2}</section><section>{}{f3}</section><section>{}{f4}</section></div>",
        esc(&zone_note),
        heading(Text::ChartSessionsPerDay),
        heading(Text::ChartPerOperator),
        heading(Text::ChartDurations),
        heading(Text::ChartBytesPerDay),
    );
    render(&ctx, t(lang, Text::Dashboard), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_days_back_in_the_zone_with_its_clock_changes() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let today = jiff::civil::date(2026, 4, 10);
        let (dates, bounds) = day_ranges(&berlin, today, 30).unwrap();
        assert_eq!(dates.len(), 30);
        assert_eq!(bounds.len(), 31);
        assert_eq!(dates[0], jiff::civil::date(2026, 3, 12));
        assert_eq!(dates[29], today);
        let hours: Vec<i64> = bounds.windows(2).map(|w| (w[1] - w[0]) / 3_600_000).collect();
        // 2026-03-29 has 23 hours in Berlin; every other day 24.
        assert_eq!(hours.iter().filter(|h| **h == 23).count(), 1);
        assert_eq!(hours.iter().filter(|h| **h == 24).count(), 29);
        assert_eq!(DURATION_EDGES.len() + 1, duration_labels(Lang::Ja).len());
    }
}
