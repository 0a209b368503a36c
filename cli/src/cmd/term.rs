//! `openshell term`: a live dashboard of this user's sandboxes (ratatui on crossterm).
//!
//! The sandbox table refreshes every second; the selected sandbox's log is followed
//! (denials and inference calls highlighted) or its policy shown. Actions that leave
//! the dashboard (a shell) or change things (delete) run this same binary as a child,
//! so they behave exactly as the commands do; the terminal is given back to the
//! child and taken again afterwards. The terminal is restored on every way out: `q`,
//! Ctrl-C, an error, and a panic (the hook restores it before the message prints).
//! Keys are listed in [`HELP`] and README's `term` section.

use std::io::{IsTerminal, Stdout};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{execute, terminal};

use super::term_data::{self, LogTail, Row};
use super::term_view;
use crate::output::fail;

/// The key help shown on the bottom line.
pub const HELP: &str =
    "↑↓ select  Enter/l logs  p policy  f follow  / filter  s shell  d delete  q quit";

/// Colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Theme {
    /// Dark unless the terminal says its background is light (COLORFGBG).
    Auto,
    /// For dark backgrounds.
    Dark,
    /// For light backgrounds.
    Light,
}

/// `openshell term [--theme auto|dark|light]`
#[derive(Debug, Args)]
pub struct TermArgs {
    /// Colours for a dark or light terminal.
    #[arg(long, value_enum, env = "OPENSHELL_THEME", default_value_t = Theme::Auto)]
    theme: Theme,
}

/// What the lower pane shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    /// The followed log.
    Logs,
    /// The policy (`policy get --full`).
    Policy,
}

/// Where keys go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// ↑↓ move through the sandboxes.
    List,
    /// ↑↓ scroll the lower pane.
    Pane,
    /// Typing a filter after `/`: for the list, or (`pane`) for the lower pane.
    Filter {
        /// What was typed.
        text: String,
        /// Whether it filters the pane's lines.
        pane: bool,
    },
    /// `d` asked: delete this sandbox?
    Confirm(String),
}

/// The dashboard's state.
pub struct App {
    /// Every sandbox.
    pub rows: Vec<Row>,
    /// The selected sandbox's name (kept across refreshes).
    pub selected: Option<String>,
    /// The lower pane.
    pub pane: Pane,
    /// Where keys go.
    pub mode: Mode,
    /// The list's filter (sandbox names, images, phases).
    pub filter: String,
    /// The lower pane's filter (lines).
    pub find: String,
    /// Keep the log scrolled to its end.
    pub follow: bool,
    /// Lines scrolled up from the end (logs) or down from the top (policy).
    pub scroll: usize,
    /// The selected sandbox's log.
    pub log: Option<LogTail>,
    /// The selected sandbox's policy text.
    pub policy: Vec<String>,
    /// The last action's result.
    pub message: String,
    /// Colours in use.
    pub dark: bool,
}

impl App {
    fn new(dark: bool) -> Self {
        Self {
            rows: vec![],
            selected: None,
            pane: Pane::Logs,
            mode: Mode::List,
            filter: String::new(),
            find: String::new(),
            follow: true,
            scroll: 0,
            log: None,
            policy: vec![],
            message: String::new(),
            dark,
        }
    }

    /// The rows the list filter lets through.
    pub fn visible(&self) -> Vec<&Row> {
        let f = self.filter.to_lowercase();
        self.rows
            .iter()
            .filter(|r| {
                f.is_empty()
                    || r.name.to_lowercase().contains(&f)
                    || r.image.to_lowercase().contains(&f)
                    || r.phase.to_string().to_lowercase().contains(&f)
            })
            .collect()
    }

    /// The selected row, if it is visible.
    pub fn current(&self) -> Option<&Row> {
        let sel = self.selected.as_deref()?;
        self.visible().into_iter().find(|r| r.name == sel)
    }

    fn refresh(&mut self) {
        self.rows = term_data::rows();
        let vis: Vec<String> = self.visible().iter().map(|r| r.name.clone()).collect();
        let keep = self.selected.as_ref().is_some_and(|s| vis.contains(s));
        if !keep {
            self.select(vis.first().cloned());
        }
    }

    fn select(&mut self, name: Option<String>) {
        if name == self.selected {
            return;
        }
        self.selected = name;
        self.scroll = 0;
        self.log = self.current().map(|r| LogTail::open(&r.log_dir));
        self.policy.clear();
        if self.pane == Pane::Policy {
            self.load_policy();
        }
    }

    fn step(&mut self, down: bool) {
        let vis: Vec<String> = self.visible().iter().map(|r| r.name.clone()).collect();
        if vis.is_empty() {
            return;
        }
        let at = self
            .selected
            .as_ref()
            .and_then(|s| vis.iter().position(|n| n == s));
        let next = match (at, down) {
            (None, _) => 0,
            (Some(i), true) => (i + 1).min(vis.len() - 1),
            (Some(i), false) => i.saturating_sub(1),
        };
        self.select(Some(vis[next].clone()));
    }

    fn load_policy(&mut self) {
        let Some(name) = self.selected.clone() else {
            return;
        };
        let o = child(&["policy", "get", &name, "--full"]).output();
        self.policy = match o {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
            Ok(o) => vec![String::from_utf8_lossy(&o.stderr).trim().to_string()],
            Err(e) => vec![format!("policy get: {e}")],
        };
    }

    /// Handle one key; false ends the dashboard.
    fn key(&mut self, k: KeyEvent, term: &mut Term) -> bool {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return false;
        }
        match std::mem::replace(&mut self.mode, Mode::List) {
            Mode::Filter { mut text, pane } => {
                match k.code {
                    KeyCode::Enter if pane => {
                        self.find = text;
                        self.scroll = 0;
                        self.mode = Mode::Pane;
                    }
                    KeyCode::Enter => {
                        self.filter = text;
                        let vis: Vec<String> =
                            self.visible().iter().map(|r| r.name.clone()).collect();
                        if !self.selected.as_ref().is_some_and(|s| vis.contains(s)) {
                            self.select(vis.first().cloned());
                        }
                    }
                    KeyCode::Esc if pane => self.mode = Mode::Pane,
                    KeyCode::Esc => {}
                    KeyCode::Backspace => {
                        text.pop();
                        self.mode = Mode::Filter { text, pane };
                    }
                    KeyCode::Char(c) if text.chars().count() < 64 => {
                        text.push(c);
                        self.mode = Mode::Filter { text, pane };
                    }
                    _ => self.mode = Mode::Filter { text, pane },
                }
                return true;
            }
            Mode::Confirm(name) => {
                if matches!(k.code, KeyCode::Char('y' | 'Y')) {
                    let o = child(&["sandbox", "delete", &name]).output();
                    self.message = match o {
                        Ok(o) if o.status.success() => format!("deleted {name}"),
                        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                        Err(e) => format!("delete {name}: {e}"),
                    };
                    self.refresh();
                } else {
                    self.message = format!("{name} kept");
                }
                return true;
            }
            m => self.mode = m,
        }
        let in_pane = self.mode == Mode::Pane;
        match k.code {
            KeyCode::Char('q') => return false,
            KeyCode::Esc if in_pane && !self.find.is_empty() => self.find.clear(),
            KeyCode::Esc if in_pane => self.mode = Mode::List,
            KeyCode::Esc if !self.filter.is_empty() => {
                self.filter.clear();
                self.refresh();
            }
            KeyCode::Tab => {
                self.mode = if in_pane { Mode::List } else { Mode::Pane };
            }
            KeyCode::Up | KeyCode::Char('k') if !in_pane => self.step(false),
            KeyCode::Down | KeyCode::Char('j') if !in_pane => self.step(true),
            KeyCode::Up | KeyCode::Char('k') => self.scroll_by(true, 1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll_by(false, 1),
            KeyCode::PageUp => self.scroll_by(true, 10),
            KeyCode::PageDown => self.scroll_by(false, 10),
            KeyCode::Enter | KeyCode::Char('l') => {
                self.pane = Pane::Logs;
                self.mode = Mode::Pane;
                self.scroll = 0;
            }
            KeyCode::Char('p') => {
                self.pane = Pane::Policy;
                self.mode = Mode::Pane;
                self.scroll = 0;
                self.load_policy();
            }
            KeyCode::Char('f') => {
                self.follow = !self.follow;
                if self.follow {
                    self.scroll = 0;
                }
                self.message = format!("follow {}", if self.follow { "on" } else { "off" });
            }
            KeyCode::Char('/') => {
                let text = if in_pane { &self.find } else { &self.filter };
                self.mode = Mode::Filter {
                    text: text.clone(),
                    pane: in_pane,
                };
            }
            KeyCode::Char('d') => {
                if let Some(r) = self.current() {
                    self.mode = Mode::Confirm(r.name.clone());
                }
            }
            KeyCode::Char('s') => {
                if let Some(r) = self.current() {
                    let name = r.name.clone();
                    self.message = term.shell(&name);
                    self.refresh();
                }
            }
            _ => {}
        }
        true
    }

    fn scroll_by(&mut self, up: bool, n: usize) {
        // Logs scroll back from their end; the policy forward from its top.
        let toward_start = if self.pane == Pane::Logs { up } else { !up };
        if toward_start {
            self.scroll = self.scroll.saturating_add(n);
            if self.pane == Pane::Logs {
                self.follow = false;
            }
        } else {
            self.scroll = self.scroll.saturating_sub(n);
        }
    }
}

/// This binary, for the actions.
fn child(args: &[&str]) -> std::process::Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| "openshell".into());
    let mut c = std::process::Command::new(exe);
    c.args(args).stdin(std::process::Stdio::null());
    c
}

/// The terminal in dashboard mode; restored on drop.
struct Term {
    t: Terminal<CrosstermBackend<Stdout>>,
}

fn enter() -> std::io::Result<()> {
    terminal::enable_raw_mode()?;
    execute!(std::io::stdout(), terminal::EnterAlternateScreen)
}

fn leave() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        terminal::LeaveAlternateScreen,
        ratatui::crossterm::cursor::Show
    );
}

impl Term {
    fn new() -> std::io::Result<Self> {
        enter()?;
        let t = Terminal::new(CrosstermBackend::new(std::io::stdout()));
        match t {
            Ok(t) => Ok(Self { t }),
            Err(e) => {
                leave();
                Err(e)
            }
        }
    }

    /// `sandbox connect NAME` on the real terminal, then back to the dashboard.
    fn shell(&mut self, name: &str) -> String {
        leave();
        let status = child(&["sandbox", "connect", name])
            .stdin(std::process::Stdio::inherit())
            .status();
        let back = enter().and_then(|()| self.t.clear());
        match (status, back) {
            (_, Err(e)) => format!("terminal: {e}"),
            (Ok(s), _) => format!("shell in {name} ended ({s})"),
            (Err(e), _) => format!("connect {name}: {e}"),
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        leave();
    }
}

fn dark(theme: Theme) -> bool {
    match theme {
        Theme::Dark => true,
        Theme::Light => false,
        // COLORFGBG="fg;bg" (rxvt, konsole, ...): background 7 or 9-15 is light.
        Theme::Auto => std::env::var("COLORFGBG")
            .ok()
            .and_then(|v| v.rsplit(';').next().and_then(|b| b.parse::<u8>().ok()))
            .is_none_or(|bg| !(bg == 7 || bg >= 9)),
    }
}

/// Run the dashboard; returns the exit status.
pub fn run(args: TermArgs) -> i32 {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return fail(
            "term needs a terminal (it draws a dashboard); for a script use 'openshell sandbox list' and 'openshell logs -f'",
        );
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        leave();
        previous(info);
    }));
    let mut term = match Term::new() {
        Ok(t) => t,
        Err(e) => return fail(format!("term: set up the terminal: {e}")),
    };
    let mut app = App::new(dark(args.theme));
    match event_loop(&mut app, &mut term) {
        Ok(()) => 0,
        Err(e) => {
            drop(term);
            fail(format!("term: {e}"))
        }
    }
}

fn event_loop(app: &mut App, term: &mut Term) -> std::io::Result<()> {
    const REFRESH: Duration = Duration::from_secs(1);
    const LOG_POLL: Duration = Duration::from_millis(250);
    app.refresh();
    let mut last_refresh = Instant::now();
    #[cfg(debug_assertions)]
    if std::env::var_os("OPENSHELL_TERM_TEST_PANIC").is_some() {
        // Debug builds only: lets the tests prove the terminal comes back after a panic.
        term.t.draw(|f| term_view::draw(f, app))?;
        panic!("OPENSHELL_TERM_TEST_PANIC");
    }
    loop {
        term.t.draw(|f| term_view::draw(f, app))?;
        let wait = REFRESH.saturating_sub(last_refresh.elapsed()).min(LOG_POLL);
        if event::poll(wait)?
            && let Event::Key(k) = event::read()?
            && k.kind != KeyEventKind::Release
            && !app.key(k, term)
        {
            return Ok(());
        }
        if let Some(l) = app.log.as_mut() {
            l.poll();
        }
        if last_refresh.elapsed() >= REFRESH {
            app.refresh();
            last_refresh = Instant::now();
        }
    }
}
