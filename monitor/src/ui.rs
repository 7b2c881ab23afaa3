//! The screen: [`draw`] paints an [`App`] into a frame and does nothing else, so that any
//! terminal size, any state and any backend (the real terminal or ratatui's test backend) give
//! the same picture.
//!
//! ```text
//!  piw-monitor  master host · up 3h12m · RUNNING
//! ┌Master─────────────────────────────────────────────────────────────────┐
//! │Disk free … · Memory free … · Load … · Temp … · stats 4s ago            │
//! │Queue … · Built in the last hour …                                     │
//! │Packages … · Files … · Downloads …                                     │
//! │Tasks seraph running · the_oracle_1 running · …                        │
//! └───────────────────────────────────────────────────────────────────────┘
//! ┌Slaves (2)─────────────────────────────────────────────────────────────┐
//! │  #  Label  ABI  State  Task  For  Seen  Load  Temp  Disk free  Mem free│
//! └───────────────────────────────────────────────────────────────────────┘
//! ┌Events─────────────────────────────────────────────────────────────────┐
//! │12:00:01 slave 3 (pi4-a) is building foo 1.0                           │
//! └───────────────────────────────────────────────────────────────────────┘
//!  status line (the master's answer, or the question waiting for y/n)
//!  key hints
//! ```

use piwheels_common::config::human_size;
use std::collections::BTreeMap;

use piwheels_common::protocols::{HostStats, NoticeLevel, SlaveSnapshot, TaskState};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Cell, Clear, HighlightSpacing, Paragraph, Row, Table, TableState, Wrap};

use crate::app::{App, Tone};
use crate::view::{self, Activity, Health, limits};

/// The key hints at the bottom of the screen.
const KEYS: &str = "↑↓/jk select · s/w/x/d sleep/wake/skip/kill (capitals: all slaves) · +/- builders · p/r pause/resume master · PgUp/PgDn events · ? help · q quit";

/// The help window's lines.
const HELP: &[(&str, &str)] = &[
    ("↑ ↓  k j", "select a slave"),
    ("s / S", "sleep the selected slave / all slaves: no new builds, the current one goes on"),
    ("w / W", "wake the selected slave / all slaves: undo sleep, skip and kill"),
    ("x / X", "skip the build of the selected slave / of all slaves (asks first)"),
    ("d / D", "kill the selected slave / all slaves: it exits at its next contact (asks first)"),
    ("+ / -", "start one more builder on the selected slave's host / retire one after its build"),
    ("p / r", "pause / resume the master: slaves get no new builds"),
    ("PgUp PgDn", "scroll the event log; Home: oldest, End: follow the newest"),
    ("q  Ctrl-C", "leave the monitor (the master goes on)"),
];

/// Paints the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let stats = app.farm.stats.last();
    let task_lines = task_line(app).width().div_ceil(usize::from(area.width.saturating_sub(2)).max(1)).clamp(1, 3) as u16;
    let log_height = (area.height / 3).clamp(4, 14);
    let [title, master, slaves, log, status, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(5 + task_lines),
        Constraint::Min(4),
        Constraint::Length(log_height),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);

    frame.render_widget(Paragraph::new(title_line(app)), title);
    draw_master(frame, master, app, stats);
    draw_slaves(frame, slaves, app);
    draw_log(frame, log, app);
    frame.render_widget(Paragraph::new(status_line(app)), status);
    frame.render_widget(Paragraph::new(Line::from(KEYS).dark_gray()), keys);

    if let Some(confirmation) = &app.confirmation {
        let text = Text::from(vec![
            Line::from(confirmation.question.clone()),
            Line::from(""),
            Line::from(vec![Span::from("y").bold(), Span::from(": yes    "), Span::from("n").bold(), Span::from(": no")]),
        ]);
        popup(frame, area, "Are you sure?", text, Color::Yellow, 64);
    } else if app.help {
        let lines: Vec<Line> = HELP.iter().map(|(keys, what)| Line::from(vec![Span::from(format!("{keys:<11}")).bold(), Span::from(*what)])).collect();
        popup(frame, area, "Keys (any key closes)", Text::from(lines), Color::Cyan, 96);
    }
}

fn title_line(app: &App) -> Line<'static> {
    let farm = &app.farm;
    let mut spans = vec![
        Span::from(" piw-monitor ").reversed().bold(),
        Span::from(format!(" master {} · up {} · ", farm.host.label, view::duration(app.now - farm.started))),
    ];
    spans.push(if app.stopping {
        Span::from("SHUTTING DOWN").red().bold()
    } else if farm.paused {
        Span::from("PAUSED").black().on_yellow().bold()
    } else {
        Span::from("RUNNING").green().bold()
    });
    if !app.live {
        spans.push(Span::from(format!(" · waiting for status from {}", app.endpoints.status)).dark_gray());
    }
    Line::from(spans)
}

fn draw_master(frame: &mut Frame, area: Rect, app: &App, stats: Option<&piwheels_common::protocols::MasterStats>) {
    let block = Block::default().borders(Borders::ALL).title(" Master ");
    let mut lines = Vec::new();
    match stats {
        Some(stats) => {
            let mut host = host_spans(&stats.host);
            host.push(Span::from(format!(" · stats {} ago", view::duration(app.now - stats.at))).dark_gray());
            lines.push(Line::from(host));
            let pending: u64 = stats.builds_pending.values().sum();
            let built: u64 = stats.builds_last_hour.values().sum();
            lines.push(Line::from(vec![
                Span::from("Queue ").bold(),
                Span::from(format!("{} (total {pending})", per_abi(&stats.builds_pending))),
                Span::from(" · "),
                Span::from("Built in the last hour ").bold(),
                Span::from(format!("{} (total {built})", per_abi(&stats.builds_last_hour))),
            ]));
            lines.push(Line::from(vec![
                Span::from("Packages ").bold(),
                Span::from(stats.packages_built.to_string()),
                Span::from(" · Files ").bold(),
                Span::from(format!("{} ({})", stats.files_count, human_size(stats.builds_size))),
                Span::from(" · New versions last hour ").bold(),
                Span::from(stats.new_last_hour.to_string()),
                Span::from(" · Downloads ").bold(),
                Span::from(format!("{} last hour, {} last month, {} in all", stats.downloads_last_hour, stats.downloads_last_month, stats.downloads_all)),
            ]));
        }
        None => {
            lines.push(Line::from("No statistics from the master yet").dark_gray());
            lines.push(Line::from(""));
            lines.push(Line::from(""));
        }
    }
    lines.push(task_line(app));
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }).block(block), area);
}

/// `cp311 123, cp313 4`, or `none`.
fn per_abi(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts.iter().map(|(abi, n)| format!("{abi} {n}")).collect::<Vec<_>>().join(", ")
}

fn host_spans(host: &HostStats) -> Vec<Span<'static>> {
    let mut spans = vec![
        Span::from("Disk free ").bold(),
        Span::from(view::free_of(host.disk_free, host.disk_size))
            .style(health_style(view::free_health(host.disk_free, host.disk_size, limits::DISK_FREE))),
        Span::from(" · Memory free ").bold(),
        Span::from(view::free_of(host.mem_free, host.mem_size)).style(health_style(view::free_health(host.mem_free, host.mem_size, limits::MEM_FREE))),
    ];
    if host.swap_size > 0 {
        spans.push(Span::from(" · Swap free ").bold());
        spans.push(Span::from(view::free_of(host.swap_free, host.swap_size)));
    }
    spans.push(Span::from(" · Load ").bold());
    spans.push(Span::from(format!("{:.2}", host.load_average)).style(health_style(view::over(host.load_average, limits::LOAD))));
    spans.push(Span::from(" · Temp ").bold());
    spans.push(Span::from(view::temperature(host.cpu_temp)).style(health_style(view::over(host.cpu_temp, limits::TEMPERATURE))));
    spans
}

fn task_line(app: &App) -> Line<'static> {
    let mut spans = vec![Span::from("Tasks").bold()];
    if app.farm.tasks.is_empty() {
        spans.push(Span::from(" none reported").dark_gray());
    }
    for (name, state) in &app.farm.tasks {
        let (word, style) = match state {
            TaskState::Running => ("running", Style::new().green()),
            TaskState::Paused => ("paused", Style::new().yellow()),
            TaskState::Restarting => ("restarting", Style::new().magenta().bold()),
            TaskState::Stopped => ("stopped", Style::new().dark_gray()),
            TaskState::Failed => ("FAILED", Style::new().red().bold()),
        };
        spans.push(Span::from(format!(" {name} ")));
        spans.push(Span::styled(word, style));
        spans.push(Span::from(" ·"));
    }
    if !app.farm.tasks.is_empty() {
        // The separator after the last task.
        spans.pop();
    }
    Line::from(spans)
}

fn draw_slaves(frame: &mut Frame, area: Rect, app: &App) {
    let order = app.slave_order();
    let block = Block::default().borders(Borders::ALL).title(format!(" Slaves ({}) ", order.len()));
    if order.is_empty() {
        frame.render_widget(Paragraph::new(Line::from("No slaves connected").dark_gray()).block(block), area);
        return;
    }
    let header = Row::new(["#", "Label", "ABI", "State", "Task", "For", "Seen", "Load", "Temp", "Disk free", "Mem free"]).bold().underlined();
    let rows = order.iter().map(|id| slave_row(*id, &app.farm.slaves[id], app));
    let widths = [
        Constraint::Length(4),
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Fill(2),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(15),
        Constraint::Length(15),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .block(block)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶")
        .highlight_spacing(HighlightSpacing::Always);
    let mut state = TableState::default().with_selected(app.selected.and_then(|id| order.iter().position(|o| *o == id)));
    frame.render_stateful_widget(table, area, &mut state);
}

fn slave_row<'a>(id: u32, slave: &'a SlaveSnapshot, app: &App) -> Row<'a> {
    let activity = view::activity(slave);
    let state_style = match activity {
        Activity::Building { .. } => Style::new().green(),
        Activity::Asleep => Style::new().blue(),
        Activity::Sending { .. } | Activity::Finishing => Style::new().cyan(),
        Activity::Exiting { .. } | Activity::Refused { .. } => Style::new().red(),
        Activity::Starting | Activity::Idle => Style::new(),
    };
    let stats = slave.stats.last();
    let figure = |text: String, health: Health| Cell::from(text).style(health_style(health));
    let (load, temp, disk, mem) = match stats {
        Some(s) => (
            figure(format!("{:.2}", s.load_average), view::over(s.load_average, limits::LOAD)),
            figure(view::temperature(s.cpu_temp), view::over(s.cpu_temp, limits::TEMPERATURE)),
            figure(view::free_of(s.disk_free, s.disk_size), view::free_health(s.disk_free, s.disk_size, limits::DISK_FREE)),
            figure(view::free_of(s.mem_free, s.mem_size), view::free_health(s.mem_free, s.mem_size, limits::MEM_FREE)),
        ),
        None => (Cell::from("-"), Cell::from("-"), Cell::from("-"), Cell::from("-")),
    };
    Row::new(vec![
        Cell::from(id.to_string()),
        Cell::from(slave.hello.host.label.as_str()),
        Cell::from(slave.hello.abi.as_str()),
        Cell::from(activity.label()).style(state_style),
        Cell::from(activity.detail()),
        Cell::from(view::duration(app.now - slave.state_since)),
        figure(view::duration(app.now - slave.last_seen), view::silence(slave, app.now)),
        load,
        temp,
        disk,
        mem,
    ])
}

fn draw_log(frame: &mut Frame, area: Rect, app: &App) {
    let visible = usize::from(Block::default().borders(Borders::ALL).inner(area).height);
    app.log_height.set(visible);
    // A pane that grew since the log was scrolled shows its oldest lines, not fewer.
    let scroll = app.log_scroll.min(app.max_log_scroll());
    let title = if scroll > 0 { format!(" Events ({scroll} newer below: End to follow) ") } else { " Events ".to_string() };
    let block = Block::default().borders(Borders::ALL).title(title);
    let end = app.log.len().saturating_sub(scroll);
    let lines: Vec<Line> = app
        .log
        .iter()
        .take(end)
        .skip(end.saturating_sub(visible))
        .map(|line| {
            let style = match line.level {
                NoticeLevel::Info => Style::new(),
                NoticeLevel::Warning => Style::new().yellow(),
                NoticeLevel::Error => Style::new().red().bold(),
            };
            Line::from(vec![Span::from(line.at.format("%H:%M:%S ").to_string()).dark_gray(), Span::styled(line.text.clone(), style)])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn status_line(app: &App) -> Line<'static> {
    match &app.status {
        Some(status) => {
            let style = match status.tone {
                Tone::Info => Style::new().bold(),
                Tone::Good => Style::new().green().bold(),
                Tone::Bad => Style::new().red().bold(),
            };
            Line::from(Span::styled(status.text.clone(), style))
        }
        None => Line::from(""),
    }
}

fn health_style(health: Health) -> Style {
    match health {
        Health::Good => Style::new(),
        Health::Alert => Style::new().yellow().bold(),
        Health::Dead => Style::new().red().bold(),
    }
}

/// A bordered window in the middle of `area`, at most `width` wide, over what is below.
fn popup(frame: &mut Frame, area: Rect, title: &str, text: Text<'static>, colour: Color, width: u16) {
    let width = width.min(area.width);
    let inner_width = usize::from(width.saturating_sub(2)).max(1);
    let rows: usize = text.lines.iter().map(|line| wrapped_rows(&line.to_string(), inner_width)).sum();
    let height = u16::try_from(rows + 2).unwrap_or(u16::MAX).min(area.height);
    let window = area.centered(Constraint::Length(width), Constraint::Length(height));
    frame.render_widget(Clear, window);
    let block = Block::default().borders(Borders::ALL).border_style(Style::new().fg(colour)).title(format!(" {title} "));
    frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: false }).block(block), window);
}

/// Rows `text` takes when wrapped at word boundaries into `width` columns (a word longer than
/// a row is broken), as the popup's paragraph wraps it.
fn wrapped_rows(text: &str, width: usize) -> usize {
    let mut rows = 1;
    let mut used = 0;
    for word in text.split(' ') {
        let len = word.chars().count();
        let needed = if used == 0 { len } else { used + 1 + len };
        if needed <= width {
            used = needed;
        } else {
            rows += usize::from(used > 0) + len.saturating_sub(1) / width;
            used = if len == 0 { 0 } else { (len - 1) % width + 1 };
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::wrapped_rows;

    #[test]
    fn rows_of_wrapped_text() {
        assert_eq!(wrapped_rows("", 10), 1);
        assert_eq!(wrapped_rows("one two", 10), 1);
        assert_eq!(wrapped_rows("one two three", 10), 2);
        assert_eq!(wrapped_rows("abcdefghijklmnopqrstuvwxy", 10), 3);
        assert_eq!(wrapped_rows("ab abcdefghijklmnopqrstuvwxy", 10), 4);
    }
}
