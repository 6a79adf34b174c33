//! Drawing one frame of `top` from the feed's [`View`]: the title with the connection's state,
//! the headline numbers, the rate chart and the footer here; the tables in [`super::tables`].

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, RenderDirection, Sparkline};

use super::feed::{Link, View};
use super::format;
use super::layout::{self, Rows};
use super::tables;
use crate::stats::snapshot::Snapshot;

/// Draws `view` of the feed at `url` on the whole frame.
pub fn draw(frame: &mut Frame<'_>, view: &View, url: &str) {
    let area = frame.area();
    let rows = view.snapshot.as_ref().map_or_else(Rows::default, |s| Rows {
        stages: s.stages.len(),
        backends: s.models.iter().map(|m| m.backends.len()).sum(),
        nodes: s.cluster.as_ref().map(|c| c.nodes.len()),
    });
    let plan = layout::plan(area, rows);
    frame.render_widget(title(view, url), plan.title);
    frame.render_widget(footer(url), plan.footer);
    let Some(snapshot) = &view.snapshot else {
        let body = Rect {
            y: plan.headline.y,
            height: plan.footer.y.saturating_sub(plan.headline.y),
            ..area
        };
        let waiting = Paragraph::new(format!("Waiting for the first snapshot from {url}")).dim();
        frame.render_widget(waiting, body);
        return;
    };
    frame.render_widget(headline(snapshot), plan.headline);
    tables::stages(frame, plan.stages, &snapshot.stages);
    if let Some(rect) = plan.rates {
        rates(frame, rect, view);
    }
    if let Some(rect) = plan.backends {
        tables::backends(frame, rect, &snapshot.models);
    }
    if let Some(rect) = plan.admission {
        tables::admission(frame, rect, &snapshot.admission);
    }
    if let (Some(rect), Some(cluster)) = (plan.cluster, &snapshot.cluster) {
        tables::cluster(frame, rect, cluster);
    }
}

/// The connection's state first (a long error then pushes the rest off a narrow screen, not the
/// error), then the node.
fn title<'a>(view: &View, url: &str) -> Line<'a> {
    let mut spans = match &view.link {
        Link::Connected => vec![Span::styled("● connected", Style::new().fg(Color::Green))],
        Link::Connecting => vec![Span::styled(
            format!("○ connecting to {url}"),
            Style::new().fg(Color::Yellow),
        )],
        Link::Reconnecting(error) | Link::Refused(error) => {
            let age = view
                .received
                .map(|at| format!(" (data {}s old)", at.elapsed().as_secs()))
                .unwrap_or_default();
            vec![Span::styled(
                format!("○ reconnecting{age}: {error}"),
                Style::new().fg(Color::Red),
            )]
        }
    };
    if let Some(s) = &view.snapshot {
        spans.extend([
            Span::raw("  "),
            Span::styled(s.node.clone(), Style::new().add_modifier(Modifier::BOLD)),
            label("  v"),
            Span::raw(s.version.clone()),
            label("  up "),
            Span::raw(format::uptime(s.uptime_s)),
            label("  config gen "),
            Span::raw(s.generation.to_string()),
        ]);
    }
    Line::from(spans)
}

/// Two lines of the numbers that say how the node is doing.
fn headline<'a>(s: &Snapshot) -> Paragraph<'a> {
    let r = &s.requests;
    let failed = if r.failed > 0 {
        Style::new().fg(Color::Red)
    } else {
        Style::new()
    };
    let shed = if r.shed_rate > 0.0 {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new()
    };
    let first = Line::from(vec![
        value(format::rate(r.rate)),
        label(" req/s   in flight "),
        value(r.in_flight.to_string()),
        label("   completed "),
        value(r.completed.to_string()),
        label("   failed "),
        Span::styled(r.failed.to_string(), failed.add_modifier(Modifier::BOLD)),
        label("   shed "),
        Span::styled(
            format!("{} ({}/s)", r.shed, format::rate(r.shed_rate)),
            shed.add_modifier(Modifier::BOLD),
        ),
    ]);
    let second = Line::from(vec![
        label("TTFT p50 "),
        value(format::latency(s.ttft.p50_ms)),
        label("  p99 "),
        value(format::latency(s.ttft.p99_ms)),
        label("   DLQ "),
        value(s.dlq.map_or_else(|| "-".into(), |n| n.to_string())),
        label("   admitted "),
        value(r.admitted.to_string()),
        label("   cancelled "),
        value(r.cancelled.to_string()),
    ]);
    Paragraph::new(vec![first, second])
}

/// Requests per second over the last minutes, newest at the right edge.
fn rates(frame: &mut Frame<'_>, area: Rect, view: &View) {
    let inner = usize::from(area.width.saturating_sub(2));
    let shown = || view.rates.iter().rev().take(inner).map(|&(_, rate)| rate);
    let max = shown().fold(0.0, f64::max);
    let seconds = view
        .snapshot
        .as_ref()
        .map_or(0, |s| s.interval_ms)
        .saturating_mul(shown().count() as u64)
        / 1000;
    let block = Block::bordered().title(Line::from(vec![
        Span::raw(" requests/s "),
        label("now "),
        value(
            view.rates
                .back()
                .map_or_else(|| "-".into(), |&(_, r)| format::rate(r)),
        ),
        label("  max "),
        value(format::rate(max)),
        label(format!("  last {} ", format::uptime(seconds))),
    ]));
    // Tenths, so that rates below one per second still draw.
    let bars = shown().map(|rate| (rate * 10.0).round() as u64);
    let chart = Sparkline::default()
        .block(block)
        .data(bars)
        .direction(RenderDirection::RightToLeft)
        .style(Style::new().fg(Color::Cyan));
    frame.render_widget(chart, area);
}

fn footer<'a>(url: &str) -> Line<'a> {
    Line::from(vec![
        Span::styled(" q ", Style::new().add_modifier(Modifier::REVERSED)),
        Span::raw(" quit   "),
        label(url.to_owned()),
    ])
}

/// A dim label in a line of numbers.
pub(super) fn label<'a>(text: impl Into<std::borrow::Cow<'a, str>>) -> Span<'a> {
    Span::styled(text, Style::new().add_modifier(Modifier::DIM))
}

/// A bold number.
pub(super) fn value<'a>(text: String) -> Span<'a> {
    Span::styled(text, Style::new().add_modifier(Modifier::BOLD))
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::stats::snapshot::Snapshot;

    const SAMPLE: &str = include_str!("sample-snapshot.json");

    fn screen(width: u16, height: u16, view: &View) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal
            .draw(|frame| draw(frame, view, "http://gw:8080"))
            .unwrap();
        let buffer = terminal.backend().buffer();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    fn sample() -> View {
        let mut view = View::default();
        view.absorb(serde_json::from_str::<Snapshot>(SAMPLE).unwrap());
        view
    }

    #[test]
    fn a_small_terminal_shows_every_stage_and_the_rate() {
        let text = screen(80, 24, &sample());
        for stage in ["rag", "assemble", "inference", "post", "stream"] {
            assert!(text.contains(stage), "no {stage} in\n{text}");
        }
        assert!(text.contains("812.5 req/s"), "{text}");
        assert!(text.contains("120/256"), "{text}");
        assert!(text.contains("140ms"), "{text}");
        assert!(text.contains("vllm-b"), "{text}");
        assert!(text.contains("q  quit"), "{text}");
    }

    #[test]
    fn a_large_terminal_shows_admission_and_the_cluster() {
        let text = screen(160, 50, &sample());
        for part in [
            "admission",
            "normal",
            "worker-1",
            "down: GET http://10.0.0.2",
            "half_open",
            "DLQ 17",
        ] {
            assert!(text.contains(part), "no {part} in\n{text}");
        }
    }

    #[test]
    fn nothing_panics_at_any_size_or_state() {
        let mut reconnecting = sample();
        reconnecting.link = Link::Reconnecting("cannot connect (refused)".into());
        for view in [View::default(), sample(), reconnecting] {
            for (w, h) in [(1, 1), (10, 4), (30, 8), (80, 24), (119, 40), (200, 60)] {
                screen(w, h, &view);
            }
        }
        let text = screen(100, 10, &View::default());
        assert!(
            text.contains("Waiting for the first snapshot from http://gw:8080"),
            "{text}"
        );
    }
}
