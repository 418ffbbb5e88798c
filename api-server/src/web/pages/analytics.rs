//! `/orgs/{org}/analytics`: how the organization's secrets are used (owners and admins, as the
//! audit log): reads and writes per environment per day, the most-read keys, active leases,
//! failing webhooks, and which API keys and service tokens read what.
//!
//! Charts are SVG drawn here: bars are `<rect>`s with their geometry and colour as attributes
//! (the Content-Security-Policy allows no inline style), each chart has a `<title>` and the
//! same numbers in a table beside it.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;

use super::{Layout, when};
use crate::service::analytics::{self, Place, WINDOW_DAYS};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render};

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new().route("/orgs/{org}/analytics", get(page))
}

/// The colours of the charts' series (with enough contrast on light and dark pages).
const READS: &str = "#2f6fdb";
const WRITES: &str = "#d9822b";
const LEASES: &str = "#2f9e6b";

/// A bar of a chart, in the SVG's user units.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub x: String,
    pub y: String,
    pub width: String,
    pub height: String,
    pub fill: &'static str,
    /// Its tooltip (and accessible name).
    pub title: String,
}

/// A text of a chart (axis labels).
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub x: String,
    pub y: String,
    pub anchor: &'static str,
    pub text: String,
}

/// A chart: a `viewBox` of `width` × `height`, its bars and labels.
#[derive(Debug, Clone)]
pub struct Chart {
    pub id: String,
    pub title: String,
    pub width: u32,
    pub height: u32,
    /// Where the bars stand, for an axis line.
    pub baseline: Option<String>,
    pub bars: Vec<Bar>,
    pub labels: Vec<Label>,
}

/// A chart as SVG.
#[derive(Template)]
#[template(path = "fragments/chart.html")]
struct ChartSvg<'a> {
    c: &'a Chart,
}

impl Chart {
    fn svg(&self) -> Result<String, WebError> {
        Ok(ChartSvg { c: self }.render()?)
    }
}

fn num(v: f64) -> String {
    let rounded = (v * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}")
    } else {
        format!("{rounded:.1}")
    }
}

/// `MM-DD` of day `day` (days since the epoch).
fn day_label(day: i64) -> String {
    let d = crate::ids::Timestamp(day * 86_400_000).to_datetime();
    format!("{:02}-{:02}", u8::from(d.month()), d.day())
}

// Narrow enough that its text stays legible when a phone shrinks it.
const DAY_CHART_WIDTH: u32 = 420;
const DAY_CHART_HEIGHT: u32 = 150;
const AXIS: f64 = 20.0;
const TOP: f64 = 14.0;

/// Reads and writes per day: two bars a day, on a scale whose top is `max` (shared by the
/// charts of one page, so that they compare).
pub fn day_chart(
    id: &str,
    title: &str,
    first_day: i64,
    reads: &[i64],
    writes: &[i64],
    max: i64,
) -> Chart {
    let days = reads.len().max(1);
    let plot = f64::from(DAY_CHART_HEIGHT) - AXIS - TOP;
    let slot = f64::from(DAY_CHART_WIDTH) / days as f64;
    let bar = (slot - 6.0) / 2.0;
    let scale = |n: i64| {
        if max <= 0 {
            0.0
        } else {
            plot * n as f64 / max as f64
        }
    };
    let mut bars = Vec::with_capacity(days * 2);
    let mut labels = Vec::new();
    for (i, (r, w)) in reads.iter().zip(writes).enumerate() {
        let day = first_day + i as i64;
        let x = slot * i as f64 + 3.0;
        let date = day_label(day);
        for (offset, n, fill, what) in [(0.0, *r, READS, "reads"), (bar, *w, WRITES, "writes")] {
            let h = scale(n);
            bars.push(Bar {
                x: num(x + offset),
                y: num(TOP + plot - h),
                width: num(bar),
                height: num(h),
                fill,
                title: format!("{date}: {n} {what}"),
            });
        }
        // Every other day is named: fourteen dates do not fit a phone's width.
        if i % 2 == 0 {
            labels.push(Label {
                x: num(x + bar),
                y: num(f64::from(DAY_CHART_HEIGHT) - 5.0),
                anchor: "middle",
                text: date,
            });
        }
    }
    labels.push(Label {
        x: "0".into(),
        y: num(TOP - 3.0),
        anchor: "start",
        text: format!("{max}"),
    });
    Chart {
        id: id.to_owned(),
        title: title.to_owned(),
        width: DAY_CHART_WIDTH,
        height: DAY_CHART_HEIGHT,
        baseline: Some(num(TOP + plot)),
        bars,
        labels,
    }
}

const ROW_CHART_WIDTH: u32 = 480;
const ROW: f64 = 22.0;
const NAMES: f64 = 200.0;

/// One horizontal bar per `(name, value)`, the name on its left and the value at its end.
pub fn row_chart(id: &str, title: &str, rows: &[(String, i64)], fill: &'static str) -> Chart {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let room = f64::from(ROW_CHART_WIDTH) - NAMES - 40.0;
    let mut bars = Vec::with_capacity(rows.len());
    let mut labels = Vec::with_capacity(rows.len() * 2);
    for (i, (name, n)) in rows.iter().enumerate() {
        let y = ROW * i as f64;
        let w = room * (*n).max(0) as f64 / max as f64;
        bars.push(Bar {
            x: num(NAMES),
            y: num(y + 3.0),
            width: num(w),
            height: num(ROW - 6.0),
            fill,
            title: format!("{name}: {n}"),
        });
        labels.push(Label {
            x: num(NAMES - 6.0),
            y: num(y + ROW - 7.0),
            anchor: "end",
            text: shorten(name, 32),
        });
        labels.push(Label {
            x: num(NAMES + w + 4.0),
            y: num(y + ROW - 7.0),
            anchor: "start",
            text: n.to_string(),
        });
    }
    Chart {
        id: id.to_owned(),
        title: title.to_owned(),
        width: ROW_CHART_WIDTH,
        height: u32::try_from(rows.len()).unwrap_or(0).max(1) * ROW as u32,
        baseline: None,
        bars,
        labels,
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max - 1).collect();
    short.push('…');
    short
}

fn place(p: &Place) -> String {
    match (&p.project, &p.env) {
        (Some(project), Some(env)) => format!("{project}/{env}"),
        _ => "(deleted)".to_owned(),
    }
}

/// An environment's activity: its chart and the same numbers for the table.
#[derive(Debug)]
pub struct ActivityView {
    pub place: String,
    /// The chart, as SVG.
    pub chart: String,
    pub reads: i64,
    pub writes: i64,
    /// `(date, reads, writes)` per day.
    pub days: Vec<(String, i64, i64)>,
}

#[derive(Debug)]
pub struct KeyView {
    pub place: String,
    pub key: String,
    pub reads: i64,
}

#[derive(Debug)]
pub struct ClientView {
    pub kind: &'static str,
    pub name: String,
    pub owner: Option<String>,
    pub revoked: bool,
    pub place: String,
    pub reads: i64,
    pub last_read: String,
    pub keys: String,
}

#[derive(Debug)]
pub struct LeaseView {
    pub place: String,
    pub name: String,
    pub active: i64,
}

#[derive(Debug)]
pub struct WebhookView {
    pub project: String,
    pub id: String,
    pub url: String,
    pub consecutive_failures: i64,
    pub disabled: bool,
    pub reason: Option<String>,
}

#[derive(Template)]
#[template(path = "analytics.html")]
struct AnalyticsPage {
    layout: Layout,
    org: String,
    window_days: usize,
    from: String,
    to: String,
    activity: Vec<ActivityView>,
    keys_chart: Option<String>,
    keys: Vec<KeyView>,
    keys_sampled: bool,
    max_read_events: i64,
    clients: Vec<ClientView>,
    leases_chart: Option<String>,
    leases: Vec<LeaseView>,
    webhooks: Vec<WebhookView>,
}

/// `/orgs/{org}/analytics`.
pub async fn page(
    State(state): State<AppState>,
    who: SignedIn,
    Path(org): Path<String>,
) -> Result<Response, WebError> {
    let a = analytics::overview(&state, &who.principal, &org).await?;
    let layout = Layout::signed_in(&state, &who, Some(&a.ctx), "Analytics", "analytics").await?;
    let max = a
        .activity
        .iter()
        .flat_map(|e| e.reads.iter().chain(&e.writes))
        .copied()
        .max()
        .unwrap_or(0);
    let mut activity = Vec::with_capacity(a.activity.len());
    for (i, e) in a.activity.iter().enumerate() {
        let name = place(&e.place);
        let chart = day_chart(
            &format!("activity-{i}"),
            &format!("Reads and writes per day in {name}"),
            a.first_day,
            &e.reads,
            &e.writes,
            max,
        );
        activity.push(ActivityView {
            chart: chart.svg()?,
            reads: e.reads.iter().sum(),
            writes: e.writes.iter().sum(),
            days: e
                .reads
                .iter()
                .zip(&e.writes)
                .enumerate()
                .map(|(d, (r, w))| (day_label(a.first_day + d as i64), *r, *w))
                .collect(),
            place: name,
        });
    }
    let keys: Vec<KeyView> = a
        .top_keys
        .iter()
        .map(|k| KeyView {
            place: place(&k.place),
            key: k.key.clone(),
            reads: k.reads,
        })
        .collect();
    let keys_chart = if keys.is_empty() {
        None
    } else {
        let rows: Vec<(String, i64)> = keys
            .iter()
            .map(|k| (format!("{} ({})", k.key, k.place), k.reads))
            .collect();
        Some(row_chart("top-keys", "The most-read keys", &rows, READS).svg()?)
    };
    let leases: Vec<LeaseView> = a
        .leases
        .iter()
        .map(|l| LeaseView {
            place: place(&l.place),
            name: l.name.clone(),
            active: l.active,
        })
        .collect();
    let leases_chart = if leases.is_empty() {
        None
    } else {
        let rows: Vec<(String, i64)> = leases
            .iter()
            .map(|l| (format!("{} ({})", l.name, l.place), l.active))
            .collect();
        Some(row_chart("leases", "Active leases per dynamic secret", &rows, LEASES).svg()?)
    };
    let clients = a
        .clients
        .iter()
        .map(|c| ClientView {
            kind: if c.kind == "api_key" {
                "API key"
            } else {
                "Service token"
            },
            name: c
                .name
                .clone()
                .unwrap_or_else(|| format!("deleted ({})", c.id)),
            owner: c.owner.clone(),
            revoked: c.revoked,
            place: place(&c.place),
            reads: c.reads,
            last_read: when(c.last_read),
            keys: c.keys.join(", "),
        })
        .collect();
    let webhooks = a
        .failing_webhooks
        .iter()
        .map(|w| WebhookView {
            project: w.project.clone(),
            id: w.id.clone(),
            url: w.url.clone(),
            consecutive_failures: w.consecutive_failures,
            disabled: w.disabled,
            reason: w.disabled_reason.clone(),
        })
        .collect();
    render(&AnalyticsPage {
        layout,
        org,
        window_days: WINDOW_DAYS,
        from: day_label(a.first_day),
        to: day_label(a.first_day + WINDOW_DAYS as i64 - 1),
        activity,
        keys_chart,
        keys,
        keys_sampled: a.keys_sampled,
        max_read_events: analytics::MAX_READ_EVENTS,
        clients,
        leases_chart,
        leases,
        webhooks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_bars_stand_on_the_axis_and_scale_to_the_shared_maximum() {
        let chart = day_chart("c", "t", 0, &[4, 0], &[2, 1], 8);
        assert_eq!(chart.bars.len(), 4);
        let plot = f64::from(DAY_CHART_HEIGHT) - AXIS - TOP;
        for bar in &chart.bars {
            let y: f64 = bar.y.parse().unwrap_or(-1.0);
            let h: f64 = bar.height.parse().unwrap_or(-1.0);
            assert!((y + h - (TOP + plot)).abs() < 0.11, "{bar:?}");
        }
        let half: f64 = chart.bars[0].height.parse().unwrap_or(0.0);
        assert!((half - plot / 2.0).abs() < 0.11);
        assert_eq!(chart.bars[0].title, "01-01: 4 reads");
        assert_eq!(chart.bars[1].fill, WRITES);
        assert_eq!(chart.bars[2].height, "0");
    }

    #[test]
    fn row_bars_are_as_long_as_their_share_of_the_longest() {
        let chart = row_chart("r", "t", &[("A".into(), 3), ("B".into(), 1)], READS);
        let long: f64 = chart.bars[0].width.parse().unwrap_or(0.0);
        let short: f64 = chart.bars[1].width.parse().unwrap_or(0.0);
        assert!((long / short - 3.0).abs() < 0.01);
        assert_eq!(chart.height, 44);
        assert!(chart.labels.iter().any(|l| l.text == "3"));
    }

    #[test]
    fn numbers_have_at_most_one_decimal() {
        assert_eq!(num(3.0), "3");
        assert_eq!(num(2.345), "2.3");
        assert_eq!(shorten("abcdef", 4), "abc…");
    }
}
