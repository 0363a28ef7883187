//! A timeline of runs at a glance (a Gantt chart): one row per run, its
//! wait from due time to first start, each attempt coloured by how it
//! ended, and the backoff between attempts. As text for the terminal and
//! as an SVG file.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::history::{Attempt, Run};

/// One stretch of a run's row.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub kind: Kind,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Due but not started (schedule delay, a queue, dependencies).
    Waiting,
    /// Between a failed attempt and the next (backoff).
    Backoff,
    Succeeded,
    Failed,
    TimedOut,
    Lost,
    Cancelled,
    Running,
}

impl Kind {
    fn of(state: &str) -> Kind {
        match state {
            "succeeded" => Kind::Succeeded,
            "failed" => Kind::Failed,
            "timed_out" => Kind::TimedOut,
            "lost" => Kind::Lost,
            "cancelled" => Kind::Cancelled,
            _ => Kind::Running,
        }
    }

    /// The character of the text chart.
    pub fn glyph(self) -> char {
        match self {
            Kind::Waiting => '.',
            Kind::Backoff => '-',
            Kind::Succeeded => '#',
            Kind::Failed => 'x',
            Kind::TimedOut => 'T',
            Kind::Lost => '?',
            Kind::Cancelled => 'c',
            Kind::Running => '>',
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Kind::Waiting => "#d0d0d0",
            Kind::Backoff => "#f3d27a",
            Kind::Succeeded => "#4c9a5a",
            Kind::Failed => "#c8453a",
            Kind::TimedOut => "#a0307a",
            Kind::Lost => "#7a7a7a",
            Kind::Cancelled => "#555555",
            Kind::Running => "#3b78c2",
        }
    }
}

/// The stretches of one run, in time order; an open stretch ends at `now`.
pub fn segments(run: &Run, attempts: &[Attempt], now: DateTime<Utc>) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut at = run.due_at;
    for (i, a) in attempts.iter().enumerate() {
        if a.started_at > at {
            out.push(Segment {
                kind: if i == 0 { Kind::Waiting } else { Kind::Backoff },
                from: at,
                to: a.started_at,
            });
        }
        let end = a.ended_at.unwrap_or(now);
        out.push(Segment {
            kind: Kind::of(&a.state),
            from: a.started_at,
            to: end,
        });
        at = end;
    }
    if attempts.is_empty() {
        let end = run.ended_at.unwrap_or(now);
        if end > at {
            out.push(Segment {
                kind: Kind::Waiting,
                from: at,
                to: end,
            });
        }
    } else if run.state == "retrying"
        && let Some(next) = run.next_attempt_at
    {
        out.push(Segment {
            kind: Kind::Backoff,
            from: at,
            to: next.min(now).max(at),
        });
    }
    out
}

/// Rows of (label, segments) and the span they cover.
pub struct Chart {
    pub rows: Vec<(String, Vec<Segment>)>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Chart {
    pub fn new(rows: Vec<(String, Vec<Segment>)>) -> Option<Chart> {
        let from = rows
            .iter()
            .flat_map(|(_, s)| s.iter().map(|s| s.from))
            .min()?;
        let to = rows
            .iter()
            .flat_map(|(_, s)| s.iter().map(|s| s.to))
            .max()?;
        Some(Chart {
            rows,
            from,
            to: to.max(from + chrono::Duration::seconds(1)),
        })
    }

    fn x(&self, t: DateTime<Utc>, width: f64) -> f64 {
        let span = (self.to - self.from).num_milliseconds().max(1) as f64;
        (t - self.from).num_milliseconds() as f64 / span * width
    }

    /// The chart as text, `width` characters of time per row.
    pub fn text(&self, width: usize) -> String {
        let label = self
            .rows
            .iter()
            .map(|(l, _)| l.len())
            .max()
            .unwrap_or(0)
            .min(48);
        let mut out = format!(
            "{:label$}  {} .. {} UTC\n",
            "",
            self.from.format("%H:%M:%S"),
            self.to.format("%H:%M:%S")
        );
        for (name, segs) in &self.rows {
            let mut line = vec![' '; width];
            // Waits first, attempts over them: a short attempt stays visible.
            let waits = segs
                .iter()
                .filter(|s| matches!(s.kind, Kind::Waiting | Kind::Backoff));
            let attempts = segs
                .iter()
                .filter(|s| !matches!(s.kind, Kind::Waiting | Kind::Backoff));
            for s in waits.chain(attempts) {
                let a = self.x(s.from, width as f64).floor() as usize;
                let b = (self.x(s.to, width as f64).ceil() as usize)
                    .max(a + 1)
                    .min(width);
                for c in line.iter_mut().take(b).skip(a.min(width - 1)) {
                    *c = s.kind.glyph();
                }
            }
            let name: String = name.chars().take(label).collect();
            let _ = writeln!(
                out,
                "{name:label$}  {}",
                line.into_iter().collect::<String>()
            );
        }
        out.push_str("legend: . waiting  - backoff  # succeeded  x failed  T timed out  ? lost  c cancelled  > running\n");
        out
    }

    /// The chart as an SVG document.
    pub fn svg(&self) -> String {
        let (label_w, width, row_h) = (320.0, 900.0, 18.0);
        let height = row_h * (self.rows.len() as f64 + 3.0);
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"monospace\" font-size=\"11\">\n",
            label_w + width + 20.0
        );
        let _ = writeln!(
            out,
            "<text x=\"4\" y=\"12\">runs {} .. {} UTC</text>",
            self.from.format("%Y-%m-%d %H:%M:%S"),
            self.to.format("%H:%M:%S")
        );
        for (i, (name, segs)) in self.rows.iter().enumerate() {
            let y = row_h * (i as f64 + 1.0) + 4.0;
            let _ = writeln!(
                out,
                "<text x=\"4\" y=\"{}\">{}</text>",
                y + 11.0,
                escape(name)
            );
            for s in segs {
                let x = label_w + self.x(s.from, width);
                let w = (self.x(s.to, width) - self.x(s.from, width)).max(1.0);
                let _ = writeln!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"><title>{:?} {} .. {}</title></rect>",
                    row_h - 4.0,
                    s.kind.colour(),
                    s.kind,
                    s.from.format("%H:%M:%S%.3f"),
                    s.to.format("%H:%M:%S%.3f")
                );
            }
        }
        let y = row_h * (self.rows.len() as f64 + 2.0);
        let mut x = 4.0;
        for k in [
            Kind::Waiting,
            Kind::Backoff,
            Kind::Succeeded,
            Kind::Failed,
            Kind::TimedOut,
            Kind::Lost,
            Kind::Cancelled,
            Kind::Running,
        ] {
            let _ = writeln!(
                out,
                "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{y}\">{:?}</text>",
                y - 9.0,
                k.colour(),
                x + 13.0,
                k
            );
            x += 100.0;
        }
        out.push_str("</svg>\n");
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn run(state: &str, due: i64, ended: Option<i64>) -> Run {
        Run {
            id: 1,
            run_key: "job@x".into(),
            job: "job".into(),
            logical_time: t(due),
            logical_date: None,
            trigger: "schedule".into(),
            state: state.into(),
            attempts: 0,
            due_at: t(due),
            started_at: None,
            ended_at: ended.map(t),
            next_attempt_at: None,
            error: None,
            summary: None,
            scheduler: None,
            epoch: None,
            batch: None,
            max_parallel: None,
        }
    }

    fn attempt(n: i32, state: &str, from: i64, to: Option<i64>) -> Attempt {
        Attempt {
            attempt: n,
            state: state.into(),
            started_at: t(from),
            ended_at: to.map(t),
            error: None,
            scheduler: "s".into(),
            epoch: 1,
        }
    }

    #[test]
    fn a_run_with_a_retry_shows_its_wait_failure_backoff_and_success() {
        let r = run("succeeded", 0, Some(40));
        let a = [
            attempt(1, "failed", 2, Some(10)),
            attempt(2, "succeeded", 20, Some(40)),
        ];
        let s = segments(&r, &a, t(100));
        let kinds: Vec<Kind> = s.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [Kind::Waiting, Kind::Failed, Kind::Backoff, Kind::Succeeded]
        );
        assert_eq!((s[2].from, s[2].to), (t(10), t(20)));
        let chart = Chart::new(vec![("job@x".into(), s)]).unwrap();
        let text = chart.text(40);
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.contains(".xxxxxxxx-") && row.trim_end().ends_with('#'),
            "{text}"
        );
        let svg = chart.svg();
        assert!(
            svg.starts_with("<svg") && svg.matches("<rect").count() >= 4 + 8,
            "{svg}"
        );
    }

    #[test]
    fn a_waiting_run_and_a_running_one_end_at_now() {
        let s = segments(&run("queued", 0, None), &[], t(30));
        assert_eq!(
            s,
            [Segment {
                kind: Kind::Waiting,
                from: t(0),
                to: t(30)
            }]
        );
        let s = segments(
            &run("running", 0, None),
            &[attempt(1, "running", 5, None)],
            t(30),
        );
        assert_eq!(s.last().unwrap().kind, Kind::Running);
        assert_eq!(s.last().unwrap().to, t(30));
    }
}
