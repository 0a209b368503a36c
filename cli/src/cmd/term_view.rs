//! Drawing `openshell term`: the sandbox table on top, the selected sandbox's log or
//! policy below, one status line at the bottom. Fits an 80×24 terminal: columns
//! shrink and are cut, never wrapped; the lower pane gets what the table leaves.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row as TRow, Table, TableState};

use super::term::{App, HELP, Mode, Pane};
use super::term_data::Kind;

struct Colors {
    accent: Color,
    selected: Style,
    denied: Style,
    inference: Style,
    dim: Style,
}

fn colors(dark: bool) -> Colors {
    if dark {
        Colors {
            accent: Color::Cyan,
            selected: Style::new()
                .bg(Color::DarkGray)
                .add_modifier(Modifier::BOLD),
            denied: Style::new()
                .fg(Color::LightRed)
                .add_modifier(Modifier::BOLD),
            inference: Style::new().fg(Color::LightMagenta),
            dim: Style::new().fg(Color::Gray),
        }
    } else {
        Colors {
            accent: Color::Blue,
            selected: Style::new().bg(Color::Gray).add_modifier(Modifier::BOLD),
            denied: Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            inference: Style::new().fg(Color::Magenta),
            dim: Style::new().fg(Color::DarkGray),
        }
    }
}

/// Draw the whole dashboard.
pub fn draw(f: &mut Frame, app: &App) {
    let c = colors(app.dark);
    let area = f.area();
    let visible = app.visible();
    // The table takes what its rows need (header and borders: 3), at most half.
    let table_h = (visible.len() as u16 + 3).clamp(4, (area.height / 2).max(4));
    let [top, bottom, status] = Layout::vertical([
        Constraint::Length(table_h),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_table(f, app, &c, top);
    draw_pane(f, app, &c, bottom);
    draw_status(f, app, &c, status);
}

fn border(title: String, focused: bool, c: &Colors) -> Block<'static> {
    let style = if focused {
        Style::new().fg(c.accent).add_modifier(Modifier::BOLD)
    } else {
        c.dim
    };
    Block::new()
        .borders(Borders::ALL)
        .border_style(style)
        .title(title)
}

fn draw_table(f: &mut Frame, app: &App, c: &Colors, area: Rect) {
    let visible = app.visible();
    let header = TRow::new(
        [
            "NAME",
            "PHASE",
            "IMAGE",
            "PROVIDERS",
            "AGE",
            "IDLE",
            "FORWARDS",
        ]
        .map(|h| Cell::from(h).style(Style::new().fg(c.accent).add_modifier(Modifier::BOLD))),
    );
    let rows: Vec<TRow> = visible
        .iter()
        .map(|r| {
            let phase_style = match r.phase.to_string().as_str() {
                "Ready" => Style::new().fg(Color::Green),
                "Error" => c.denied,
                _ => Style::new(),
            };
            TRow::new(vec![
                Cell::from(r.name.clone()),
                Cell::from(r.phase.to_string()).style(phase_style),
                Cell::from(r.image.clone()),
                Cell::from(r.providers.clone()),
                Cell::from(r.age.clone()),
                Cell::from(r.idle.clone()),
                Cell::from(r.forwards.clone()),
            ])
        })
        .collect();
    let widths = [
        Constraint::Fill(3),
        Constraint::Length(12),
        Constraint::Fill(3),
        Constraint::Fill(2),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Fill(3),
    ];
    let title = if app.filter.is_empty() {
        format!(" sandboxes ({}) ", app.rows.len())
    } else {
        format!(
            " sandboxes ({} of {}, filter: {}) ",
            visible.len(),
            app.rows.len(),
            app.filter
        )
    };
    let table = Table::new(rows, widths)
        .header(header)
        .block(border(title, app.mode == Mode::List, c))
        .row_highlight_style(c.selected)
        .highlight_symbol("> ");
    let mut state = TableState::default();
    state.select(
        app.selected
            .as_ref()
            .and_then(|s| visible.iter().position(|r| &r.name == s)),
    );
    f.render_stateful_widget(table, area, &mut state);
    if visible.is_empty() {
        let msg = if app.rows.is_empty() {
            "no sandboxes: 'openshell sandbox create' makes one"
        } else {
            "no sandbox matches the filter (Esc clears it)"
        };
        let inner = Rect {
            x: area.x + 2,
            y: area.y + 2,
            width: area.width.saturating_sub(4),
            height: 1,
        };
        f.render_widget(Paragraph::new(msg).style(c.dim), inner);
    }
}

fn draw_pane(f: &mut Frame, app: &App, c: &Colors, area: Rect) {
    let name = app.current().map_or("-".to_string(), |r| r.name.clone());
    let focused = app.mode == Mode::Pane;
    let height = area.height.saturating_sub(2) as usize;
    let needle = app.find.to_lowercase();
    let (title, lines): (String, Vec<Line>) = match app.pane {
        Pane::Logs => {
            let all: Vec<&super::term_data::Line> = app
                .log
                .iter()
                .flat_map(|l| l.lines.iter())
                .filter(|l| needle.is_empty() || l.text.to_lowercase().contains(&needle))
                .collect();
            let end = all.len().saturating_sub(app.scroll);
            let start = end.saturating_sub(height);
            let shown = all[start..end]
                .iter()
                .map(|l| {
                    let style = match l.kind {
                        Kind::Denied => c.denied,
                        Kind::Inference => c.inference,
                        Kind::Plain => Style::new(),
                    };
                    // The date is the same on every line: show the time of day.
                    let text = l.text.get(11..).unwrap_or(&l.text).to_string();
                    Line::from(Span::styled(text, style))
                })
                .collect();
            let follow = if app.follow { "follow" } else { "paused" };
            let find = if app.find.is_empty() {
                String::new()
            } else {
                format!(", filter: {}", app.find)
            };
            (format!(" logs: {name} ({follow}{find}) "), shown)
        }
        Pane::Policy => {
            let start = app.scroll.min(app.policy.len().saturating_sub(height));
            let shown = app.policy[start..]
                .iter()
                .take(height)
                .map(|l| Line::from(l.clone()))
                .collect();
            (format!(" policy: {name} "), shown)
        }
    };
    f.render_widget(Paragraph::new(lines).block(border(title, focused, c)), area);
}

fn draw_status(f: &mut Frame, app: &App, c: &Colors, area: Rect) {
    let line = match &app.mode {
        Mode::Filter { text, .. } => Line::from(vec![
            Span::styled("filter: ", Style::new().fg(c.accent)),
            Span::raw(text.clone()),
            Span::styled("▏  Enter apply  Esc cancel", c.dim),
        ]),
        Mode::Confirm(name) => Line::from(Span::styled(
            format!("delete sandbox {name}? y/n"),
            c.denied,
        )),
        _ if !app.message.is_empty() => Line::from(vec![
            Span::raw(app.message.clone()),
            Span::styled(format!("  | {HELP}"), c.dim),
        ]),
        _ => Line::from(Span::styled(HELP, c.dim)),
    };
    f.render_widget(Paragraph::new(line), area);
}
