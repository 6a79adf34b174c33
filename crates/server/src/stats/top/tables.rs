//! `top`'s tables: the pipeline's stages, the models' backends, the priority gate's admission, and
//! the cluster's nodes. Each fits the columns to the width it gets; rows that do not fit are cut
//! off at the bottom, and the title says how many are shown.

use std::ops::Range;

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Row, Table};

use super::format::{self, latency};
use super::render::{label, value};
use crate::stats::snapshot::{Admission, ClusterView, ModelView, StageView};

/// From this width the stages' queues get a bar beside their numbers.
const QUEUE_BARS: u16 = 100;
/// The bar's width in cells.
const BAR: usize = 8;

pub fn stages(frame: &mut Frame<'_>, area: Rect, stages: &[StageView]) {
    let bars = area.width >= QUEUE_BARS;
    let header = header(
        &[
            "stage",
            "queue",
            "in flight",
            "rate/s",
            "shed",
            "failed",
            "work p50",
            "work p99",
            "wait p99",
        ],
        1..9,
    );
    let rows = stages.iter().map(|s| {
        let fill = fraction(s.queued, s.capacity);
        let queue = format!("{}/{}", s.queued, s.capacity);
        let queue = if bars {
            Line::from(vec![
                Span::raw(format!("{queue:>9} ")),
                Span::styled(bar(fill, BAR), Style::new().fg(fill_color(fill))),
            ])
        } else if fill >= 0.5 {
            Line::styled(queue, Style::new().fg(fill_color(fill))).right_aligned()
        } else {
            Line::from(queue).right_aligned()
        };
        let saturated = s.concurrency > 0 && s.in_flight >= s.concurrency;
        Row::new(vec![
            Cell::from(s.name.clone()),
            Cell::from(queue),
            number(
                format!("{}/{}", s.in_flight, s.concurrency),
                saturated.then_some(Color::Yellow),
            ),
            number(format::rate(s.rate), None),
            number(
                format::count(s.shed),
                (s.shed_rate > 0.0).then_some(Color::Yellow),
            ),
            number(
                format::count(s.failed),
                (s.failed_rate > 0.0).then_some(Color::Red),
            ),
            number(latency(s.work.p50_ms), None),
            number(latency(s.work.p99_ms), None),
            number(latency(s.queue_wait.p99_ms), None),
        ])
    });
    let queue_width = if bars { 10 + BAR as u16 } else { 9 };
    let widths = [
        Constraint::Length(9),
        Constraint::Length(queue_width),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    let title = titled(" stages ", stages.len(), area);
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(title));
    frame.render_widget(table, area);
}

pub fn backends(frame: &mut Frame<'_>, area: Rect, models: &[ModelView]) {
    let header = header(
        &["model", "backend", "health", "breaker", "in flight", "waiting"],
        4..6,
    );
    let mut rows = Vec::new();
    for model in models {
        for (i, b) in model.backends.iter().enumerate() {
            let name = match (i, model.kind.as_str()) {
                (0, "chat") => model.name.clone(),
                (0, kind) => format!("{} ({kind})", model.name),
                _ => String::new(),
            };
            let mut health = if b.healthy {
                vec![Span::styled("ok", Style::new().fg(Color::Green))]
            } else {
                let problem = b.problem.as_deref().map(|p| format!(": {p}")).unwrap_or_default();
                vec![Span::styled(
                    format!("down{problem}"),
                    Style::new().fg(Color::Red),
                )]
            };
            if let Some(ms) = b.resting_ms {
                let resting = format!(", resting {}", latency(Some(ms as f64)));
                health.push(Span::styled(resting, Style::new().fg(Color::Yellow)));
            }
            if b.down_elsewhere {
                health.push(Span::styled(", down elsewhere", Style::new().fg(Color::Yellow)));
            }
            let breaker = match b.breaker.as_str() {
                "closed" => Color::Green,
                "half_open" => Color::Yellow,
                _ => Color::Red,
            };
            rows.push(Row::new(vec![
                Cell::from(name),
                Cell::from(b.name.clone()),
                Cell::from(Line::from(health)),
                Cell::from(Span::styled(b.breaker.clone(), Style::new().fg(breaker))),
                number(b.in_flight.to_string(), None),
                number(b.upstream_waiting.to_string(), None),
            ]));
        }
    }
    let model_width = models
        .iter()
        .map(|m| m.name.len() + if m.kind == "chat" { 0 } else { m.kind.len() + 3 })
        .max();
    let backend_width = models
        .iter()
        .flat_map(|m| &m.backends)
        .map(|b| b.name.len())
        .max();
    let widths = [
        Constraint::Length(clamp(model_width, 5, 24)),
        Constraint::Length(clamp(backend_width, 7, 20)),
        Constraint::Fill(1),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(7),
    ];
    let title = titled(" backends ", rows.len(), area);
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(title));
    frame.render_widget(table, area);
}

pub fn admission(frame: &mut Frame<'_>, area: Rect, a: &Admission) {
    let gate = if a.max_in_flight > 0 && a.in_flight >= a.max_in_flight {
        Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
    } else {
        Style::new().add_modifier(Modifier::BOLD)
    };
    let title = Line::from(vec![
        Span::raw(" admission  "),
        label("gate in flight "),
        Span::styled(format!("{}/{}", a.in_flight, a.max_in_flight), gate),
        label("  queued "),
        value(format!("{}/{} ", a.queued, a.max_queued)),
    ]);
    let header = header(&["priority", "queued", "admitted", "shed"], 1..4);
    let rows = a.priorities.iter().map(|p| {
        Row::new(vec![
            Cell::from(p.priority.clone()),
            number(p.queued.to_string(), None),
            number(format::count(p.admitted), None),
            number(format::count(p.shed), None),
        ])
    });
    let widths = [8, 7, 9, 7].map(Constraint::Length);
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(title));
    frame.render_widget(table, area);
}

pub fn cluster(frame: &mut Frame<'_>, area: Rect, cluster: &ClusterView) {
    let mut title = vec![Span::raw(titled(" cluster ", cluster.nodes.len(), area))];
    if let Some(error) = &cluster.error {
        title.push(Span::styled(format!("{error} "), Style::new().fg(Color::Red)));
    }
    let header = header(
        &[
            "node",
            "role",
            "address",
            "version",
            "in flight",
            "queued",
            "load",
            "slots",
            "models",
            "down",
        ],
        4..8,
    );
    let rows = cluster.nodes.iter().map(|n| {
        let load = format!("{:.0}%", n.load * 100.0);
        let slots = if n.slots == 0 {
            "-".to_string()
        } else {
            n.slots.to_string()
        };
        Row::new(vec![
            Cell::from(n.name.clone()),
            Cell::from(n.role.clone()),
            Cell::from(n.address.clone()),
            Cell::from(n.version.clone()),
            number(n.in_flight.to_string(), None),
            number(n.queued.to_string(), None),
            number(load, (n.load >= 0.9).then_some(Color::Yellow)),
            number(slots, None),
            Cell::from(n.models.join(", ")),
            Cell::from(Span::styled(
                n.down_backends.join(", "),
                Style::new().fg(Color::Red),
            )),
        ])
    });
    let name_width = cluster.nodes.iter().map(|n| n.name.len()).max();
    let address_width = cluster.nodes.iter().map(|n| n.address.len()).max();
    let widths = [
        Constraint::Length(clamp(name_width, 4, 20)),
        Constraint::Length(7),
        Constraint::Length(clamp(address_width, 7, 21)),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Fill(2),
        Constraint::Fill(1),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(Line::from(title)));
    frame.render_widget(table, area);
}

/// A bold header row; the `numeric` columns are right-aligned like their cells.
fn header(names: &[&'static str], numeric: Range<usize>) -> Row<'static> {
    Row::new(names.iter().enumerate().map(|(i, &name)| {
        let line = Line::from(name);
        Cell::from(if numeric.contains(&i) {
            line.right_aligned()
        } else {
            line
        })
    }))
    .style(Style::new().add_modifier(Modifier::BOLD))
}

/// A right-aligned number, coloured when it calls for attention.
fn number<'a>(text: String, color: Option<Color>) -> Cell<'a> {
    let style = color.map_or_else(Style::new, |c| Style::new().fg(c));
    Cell::from(Line::styled(text, style).right_aligned())
}

/// A table's title, saying so when `rows` do not all fit in `area`.
fn titled(name: &str, rows: usize, area: Rect) -> String {
    let room = usize::from(area.height.saturating_sub(3));
    if rows > room {
        format!("{name}({room} of {rows}) ")
    } else {
        name.to_owned()
    }
}

fn clamp(width: Option<usize>, min: u16, max: u16) -> u16 {
    u16::try_from(width.unwrap_or(0)).unwrap_or(max).clamp(min, max)
}

/// How full a queue is, 0 to 1.
fn fraction(used: usize, capacity: usize) -> f64 {
    if capacity == 0 {
        0.0
    } else {
        (used as f64 / capacity as f64).min(1.0)
    }
}

fn fill_color(fill: f64) -> Color {
    if fill < 0.5 {
        Color::Green
    } else if fill < 0.9 {
        Color::Yellow
    } else {
        Color::Red
    }
}

/// A bar `width` cells long filled to `fill` (0 to 1) in eighths of a cell.
fn bar(fill: f64, width: usize) -> String {
    const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (fill.clamp(0.0, 1.0) * (width * 8) as f64).round() as usize;
    let mut bar = "█".repeat(eighths / 8);
    let partial = eighths % 8;
    if partial > 0 {
        bar.push(EIGHTHS[partial]);
    }
    let drawn = bar.chars().count();
    bar.extend(std::iter::repeat_n('·', width - drawn));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_in_eighths() {
        assert_eq!(bar(0.0, 4), "····");
        assert_eq!(bar(0.5, 4), "██··");
        assert_eq!(bar(1.0 / 32.0, 4), "▏···");
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(7.0, 4), "████");
        assert_eq!(fraction(3, 0), 0.0);
    }
}
