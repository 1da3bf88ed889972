//! `load report`: result files side by side — the Markdown table compare.sh prints (with
//! Portask ÷ RabbitMQ ratios), one JSON document with every result, and an SVG chart.
//!
//! Runs on the main thread after the runs; reads only the JSON the runs wrote.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::options::ReportArgs;
use super::report::{fmt_us, Report};
use super::HarnessError;

/// Results grouped by scenario, scenarios and targets in the order first seen.
pub struct Table {
    pub scenarios: Vec<String>,
    pub targets: Vec<String>,
    results: BTreeMap<(String, String), Report>,
}

impl Table {
    pub fn new(reports: Vec<Report>) -> Table {
        let mut t = Table {
            scenarios: Vec::new(),
            targets: Vec::new(),
            results: BTreeMap::new(),
        };
        for r in reports {
            let scenario = if r.scenario.is_empty() {
                format!("{} {} B", r.protocol, r.message_size)
            } else {
                r.scenario.clone()
            };
            let target = if r.target.is_empty() {
                r.broker.clone()
            } else {
                r.target.clone()
            };
            if !t.scenarios.contains(&scenario) {
                t.scenarios.push(scenario.clone());
            }
            if !t.targets.contains(&target) {
                t.targets.push(target.clone());
            }
            t.results.insert((scenario, target), r);
        }
        t
    }

    pub fn get(&self, scenario: &str, target: &str) -> Option<&Report> {
        self.results.get(&(scenario.to_owned(), target.to_owned()))
    }

    /// The Markdown table: per target throughput and latency, and the first target ÷ the
    /// second where both ran.
    pub fn markdown(&self) -> String {
        let mut head = vec!["Scenario".to_owned()];
        for t in &self.targets {
            head.push(format!("{} msg/s (produce / consume)", display(t)));
        }
        let pair = (self.targets.len() >= 2).then(|| (&self.targets[0], &self.targets[1]));
        if let Some((a, b)) = pair {
            head.push(format!("{} ÷ {} consume", display(a), display(b)));
        }
        for t in &self.targets {
            head.push(format!("{} latency p50 / p99 / p99.9", display(t)));
        }
        if let Some((a, b)) = pair {
            head.push(format!("{} ÷ {} p99", display(a), display(b)));
        }
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", head.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
        for s in &self.scenarios {
            let mut row = vec![s.clone()];
            for t in &self.targets {
                row.push(match self.get(s, t) {
                    None => "—".into(),
                    Some(r) => match &r.unavailable {
                        Some(why) => format!("n/a ({why})"),
                        None => format!(
                            "{} / {}{}",
                            fmt_rate(r.produce.msg_per_s),
                            fmt_rate(r.consume.msg_per_s),
                            flag(r)
                        ),
                    },
                });
            }
            if let Some((a, b)) = pair {
                row.push(self.ratio(s, a, b, |r| r.consume.msg_per_s));
            }
            for t in &self.targets {
                row.push(match self.get(s, t) {
                    Some(r) if r.unavailable.is_none() => format!(
                        "{} / {} / {}",
                        fmt_us(r.latency.p50_us),
                        fmt_us(r.latency.p99_us),
                        fmt_us(r.latency.p999_us)
                    ),
                    Some(_) => "n/a".into(),
                    None => "—".into(),
                });
            }
            if let Some((a, b)) = pair {
                row.push(self.ratio(s, a, b, |r| r.latency.p99_us));
            }
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }

    /// One row per run with every figure: produce msg/s and MB/s, consume msg/s,
    /// latency p50 … max, loss.
    pub fn detail(&self) -> String {
        let mut out = String::from(
            "| Scenario | Broker | Produce msg/s | Produce MB/s | Consume msg/s | p50 | p95 | p99 | p99.9 | max | Lost |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for s in &self.scenarios {
            for t in &self.targets {
                let Some(r) = self.get(s, t) else { continue };
                if r.unavailable.is_some() {
                    continue;
                }
                let l = &r.latency;
                let _ = writeln!(
                    out,
                    "| {s} | {} | {:.0} | {:.1} | {:.0} | {} | {} | {} | {} | {} | {} |",
                    display(t),
                    r.produce.msg_per_s,
                    r.produce.mb_per_s,
                    r.consume.msg_per_s,
                    fmt_us(l.p50_us),
                    fmt_us(l.p95_us),
                    fmt_us(l.p99_us),
                    fmt_us(l.p999_us),
                    fmt_us(l.max_us),
                    r.verdict.lost
                );
            }
        }
        out
    }

    fn ratio(&self, s: &str, a: &str, b: &str, f: impl Fn(&Report) -> f64) -> String {
        match (self.get(s, a), self.get(s, b)) {
            (Some(x), Some(y)) if x.unavailable.is_none() && y.unavailable.is_none() => {
                let (x, y) = (f(x), f(y));
                if y > 0.0 {
                    format!("{:.2}×", x / y)
                } else {
                    "—".into()
                }
            }
            _ => "—".into(),
        }
    }

    /// Horizontal grouped bars: consume msg/s (linear) and p99 latency (log scale).
    pub fn svg(&self, title: &str) -> String {
        const COLOURS: [&str; 4] = ["#d9480f", "#1c7ed6", "#2b8a3e", "#7048e8"];
        let bar_h = 14.0;
        let group_h = bar_h * self.targets.len().max(1) as f64 + 10.0;
        let label_w = 330.0;
        let panel_w = 330.0;
        let top = 60.0;
        let height = top + group_h * self.scenarios.len() as f64 + 40.0;
        let width = label_w + 2.0 * panel_w + 60.0;
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
            escape(title)
        );
        for (i, t) in self.targets.iter().enumerate() {
            let x = 10.0 + i as f64 * 120.0;
            let _ = writeln!(
                out,
                r#"<rect x="{x}" y="30" width="10" height="10" fill="{}"/><text x="{}" y="39">{}</text>"#,
                COLOURS[i % COLOURS.len()],
                x + 14.0,
                escape(&display(t))
            );
        }
        let panels: [(&str, f64, bool); 2] = [
            ("consume msg/s", label_w, false),
            ("p99 latency (log scale)", label_w + panel_w + 30.0, true),
        ];
        let value = |r: &Report, log: bool| {
            if log {
                r.latency.p99_us
            } else {
                r.consume.msg_per_s
            }
        };
        for (name, x0, log) in panels {
            let _ = writeln!(
                out,
                r#"<text x="{x0}" y="{}" font-weight="bold">{name}</text>"#,
                top - 6.0
            );
            let max = self
                .results
                .values()
                .filter(|r| r.unavailable.is_none())
                .map(|r| value(r, log))
                .fold(0.0f64, f64::max);
            let scale = |v: f64| -> f64 {
                let w = panel_w - 90.0;
                if max <= 0.0 || v <= 0.0 {
                    0.0
                } else if log {
                    // One microsecond at the left edge.
                    (v.max(1.0).ln() / max.max(10.0).ln()) * w
                } else {
                    v / max * w
                }
            };
            for (si, s) in self.scenarios.iter().enumerate() {
                for (ti, t) in self.targets.iter().enumerate() {
                    let y = top + si as f64 * group_h + ti as f64 * bar_h;
                    match self.get(s, t) {
                        Some(r) if r.unavailable.is_none() => {
                            let v = value(r, log);
                            let w = scale(v);
                            let label = if log { fmt_us(v) } else { fmt_rate(v) };
                            let _ = writeln!(
                                out,
                                r#"<rect x="{x0}" y="{y}" width="{w:.1}" height="{}" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                                bar_h - 2.0,
                                COLOURS[ti % COLOURS.len()],
                                x0 + w + 4.0,
                                y + bar_h - 4.0,
                                escape(&label)
                            );
                        }
                        Some(_) => {
                            let _ = writeln!(
                                out,
                                r##"<text x="{x0}" y="{:.1}" fill="#868e96">n/a</text>"##,
                                y + bar_h - 4.0
                            );
                        }
                        None => {}
                    }
                }
            }
        }
        for (si, s) in self.scenarios.iter().enumerate() {
            let y = top + si as f64 * group_h + bar_h;
            let _ = writeln!(out, r#"<text x="10" y="{y:.1}">{}</text>"#, escape(s));
        }
        out.push_str("</svg>\n");
        out
    }
}

#[derive(Serialize)]
struct Document<'a> {
    meta: BTreeMap<String, String>,
    scenarios: Vec<ScenarioResults<'a>>,
}

#[derive(Serialize)]
struct ScenarioResults<'a> {
    scenario: &'a str,
    results: Vec<&'a Report>,
}

fn display(target: &str) -> String {
    match target {
        "portask" => "Portask".into(),
        "rabbitmq" => "RabbitMQ".into(),
        other => other.into(),
    }
}

/// A mark after the figures when the run lost messages or had errors.
fn flag(r: &Report) -> String {
    let mut f = String::new();
    if r.verdict.lost > 0 {
        let _ = write!(f, " ⚠ lost {}", r.verdict.lost);
    }
    if r.send_failures > 0 {
        let _ = write!(f, " ⚠ {} send failures", r.send_failures);
    }
    f
}

pub fn fmt_rate(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1_000.0)
    } else if v >= 1_000.0 {
        format!("{:.1}k", v / 1_000.0)
    } else {
        format!("{v:.0}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `load report FILES… [--json F] [--svg F] [--markdown F]`.
pub fn run(args: &ReportArgs) -> Result<String, HarnessError> {
    let mut reports = Vec::new();
    for p in &args.results {
        reports.push(Report::read_json(p)?);
    }
    let table = Table::new(reports);
    let markdown = format!("{}\n{}", table.markdown(), table.detail());
    if let Some(p) = &args.markdown {
        std::fs::write(p, &markdown)?;
    }
    if let Some(p) = &args.json {
        let doc = Document {
            meta: args.meta.iter().cloned().collect(),
            scenarios: table
                .scenarios
                .iter()
                .map(|s| ScenarioResults {
                    scenario: s,
                    results: table
                        .targets
                        .iter()
                        .filter_map(|t| table.get(s, t))
                        .collect(),
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?;
        std::fs::write(p, text + "\n")?;
    }
    if let Some(p) = &args.svg {
        let title = args
            .meta
            .iter()
            .find(|(k, _)| k == "title")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "Portask load harness".into());
        std::fs::write(p, table.svg(&title))?;
    }
    Ok(markdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(scenario: &str, target: &str, consume: f64, p99: f64) -> Report {
        let mut r = Report {
            scenario: scenario.into(),
            target: target.into(),
            ..Report::default()
        };
        r.consume.msg_per_s = consume;
        r.produce.msg_per_s = consume;
        r.latency.p99_us = p99;
        r
    }

    #[test]
    fn ratios_and_missing_peers() {
        let mut na = report("amqp 1 KiB", "portask", 0.0, 0.0);
        na.unavailable = Some("Portask AMQP not available".into());
        let t = Table::new(vec![
            na,
            report("amqp 1 KiB", "rabbitmq", 20_000.0, 3_000.0),
            report("kafka acks=1", "portask", 150_000.0, 1_500.0),
            report("both", "portask", 30_000.0, 1_000.0),
            report("both", "rabbitmq", 20_000.0, 4_000.0),
        ]);
        let md = t.markdown();
        assert!(md.contains("n/a (Portask AMQP not available)"), "{md}");
        assert!(
            md.contains("| both | 30k / 30k | 20k / 20k | 1.50× |"),
            "{md}"
        );
        assert!(md.contains("| 0.25× |"), "{md}");
        let kafka_row = md.lines().find(|l| l.starts_with("| kafka")).unwrap();
        assert!(kafka_row.contains("| — |"), "{kafka_row}");
        let detail = t.detail();
        assert!(
            detail.contains("| both | RabbitMQ | 20000 | 0.0 | 20000 | 0 µs |"),
            "{detail}"
        );
        assert!(!detail.contains("AMQP 1 KiB | Portask"), "{detail}");
        let svg = t.svg("t");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("n/a"));
    }
}
