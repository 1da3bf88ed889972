//! `load report`: result files side by side — the Markdown table compare.sh prints (with
//! Portask ÷ RabbitMQ ratios), one JSON document with every result, and an SVG chart.
//!
//! Runs on the main thread after the runs; reads only the JSON the runs wrote.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::options::ReportArgs;
use super::report::{fmt_us, Report};
use super::stats::LatencySummary;
use super::HarnessError;

/// Results grouped by scenario, scenarios and targets in the order first seen. Several
/// runs of one scenario on one target (compare.sh --repeat) are shown as their median.
pub struct Table {
    pub scenarios: Vec<String>,
    pub targets: Vec<String>,
    runs: BTreeMap<(String, String), Vec<Report>>,
    results: BTreeMap<(String, String), Report>,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Each percentile (and the mean) the median over `runs`; the sample count of the first.
fn median_latency(runs: Vec<&LatencySummary>) -> LatencySummary {
    let m = |f: fn(&LatencySummary) -> f64| median(runs.iter().map(|l| f(l)).collect());
    LatencySummary {
        count: runs.first().map_or(0, |l| l.count),
        mean_us: m(|l| l.mean_us),
        p50_us: m(|l| l.p50_us),
        p95_us: m(|l| l.p95_us),
        p99_us: m(|l| l.p99_us),
        p999_us: m(|l| l.p999_us),
        max_us: m(|l| l.max_us),
    }
}

/// One report standing for several runs: each figure is the median of the runs' figures
/// (taken separately), losses and failures are summed, so no run's loss is hidden.
fn combine(runs: &[Report]) -> Report {
    let mut r = runs[0].clone();
    if runs.len() == 1 || runs.iter().any(|x| x.unavailable.is_some()) {
        return r;
    }
    let m = |f: &dyn Fn(&Report) -> f64| median(runs.iter().map(f).collect());
    r.produce.msg_per_s = m(&|x| x.produce.msg_per_s);
    r.produce.mb_per_s = m(&|x| x.produce.mb_per_s);
    r.produce.seconds = m(&|x| x.produce.seconds);
    r.consume.msg_per_s = m(&|x| x.consume.msg_per_s);
    r.consume.mb_per_s = m(&|x| x.consume.mb_per_s);
    r.consume.seconds = m(&|x| x.consume.seconds);
    r.latency = median_latency(runs.iter().map(|x| &x.latency).collect());
    let acks: Vec<&LatencySummary> = runs.iter().filter_map(|x| x.ack_latency.as_ref()).collect();
    // A median of what only some runs had would stand for none of them.
    r.ack_latency = (acks.len() == runs.len()).then(|| median_latency(acks));
    if runs.iter().all(|x| x.broker_cpu_us_per_msg.is_some()) {
        r.broker_cpu_us_per_msg = Some(m(&|x| x.broker_cpu_us_per_msg.unwrap_or(0.0)));
        r.broker_cpu_s = Some(m(&|x| x.broker_cpu_s.unwrap_or(0.0)));
    }
    r.verdict.lost = runs.iter().map(|x| x.verdict.lost).sum();
    r.send_failures = runs.iter().map(|x| x.send_failures).sum();
    r.passed = runs.iter().all(|x| x.passed);
    r.settings.insert(
        "runs".into(),
        format!("{} (median of each figure)", runs.len()),
    );
    r
}

impl Table {
    pub fn new(reports: Vec<Report>) -> Table {
        let mut t = Table {
            scenarios: Vec::new(),
            targets: Vec::new(),
            runs: BTreeMap::new(),
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
            t.runs.entry((scenario, target)).or_default().push(r);
        }
        t.results = t
            .runs
            .iter()
            .map(|(key, runs)| (key.clone(), combine(runs)))
            .collect();
        t
    }

    /// How many runs stand behind each cell (the largest count over all cells).
    pub fn repeats(&self) -> usize {
        self.runs.values().map(Vec::len).max().unwrap_or(0)
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
        // Ack latency only when some run was acknowledged by its broker.
        let acks = self.results.values().any(|r| r.ack_latency.is_some());
        if acks {
            for t in &self.targets {
                head.push(format!("{} ack p50 / p99", display(t)));
            }
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
                            "{} / {}{}{}",
                            fmt_rate(r.produce.msg_per_s),
                            fmt_rate(r.consume.msg_per_s),
                            r.broker_cpu_us_per_msg
                                .map(|c| format!(" (CPU {c:.2} µs/msg)"))
                                .unwrap_or_default(),
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
            if acks {
                for t in &self.targets {
                    row.push(match self.get(s, t).and_then(|r| r.ack_latency.as_ref()) {
                        Some(a) => format!("{} / {}", fmt_us(a.p50_us), fmt_us(a.p99_us)),
                        None => "—".into(),
                    });
                }
            }
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }

    /// One row per run with every figure: produce msg/s and MB/s, consume msg/s,
    /// latency p50 … max, ack latency p50 and p99, broker CPU per message, loss.
    pub fn detail(&self) -> String {
        let mut out = String::from(
            "| Scenario | Broker | Produce msg/s | Produce MB/s | Consume msg/s | p50 | p95 | p99 | p99.9 | max | ack p50 | ack p99 | CPU µs/msg | Lost | Runs |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for s in &self.scenarios {
            for t in &self.targets {
                let Some(r) = self.get(s, t) else { continue };
                if r.unavailable.is_some() {
                    continue;
                }
                let l = &r.latency;
                let ack = |f: fn(&LatencySummary) -> f64| {
                    r.ack_latency
                        .as_ref()
                        .map_or_else(|| "—".into(), |a| fmt_us(f(a)))
                };
                let _ = writeln!(
                    out,
                    "| {s} | {} | {:.0} | {:.1} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    display(t),
                    r.produce.msg_per_s,
                    r.produce.mb_per_s,
                    r.consume.msg_per_s,
                    fmt_us(l.p50_us),
                    fmt_us(l.p95_us),
                    fmt_us(l.p99_us),
                    fmt_us(l.p999_us),
                    fmt_us(l.max_us),
                    ack(|a| a.p50_us),
                    ack(|a| a.p99_us),
                    r.broker_cpu_us_per_msg
                        .map_or_else(|| "—".into(), |c| format!("{c:.2}")),
                    r.verdict.lost,
                    self.runs.get(&(s.clone(), t.clone())).map_or(0, Vec::len)
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
    /// One per target: the run, or the medians of its runs.
    results: Vec<&'a Report>,
    /// Every run, when a target ran the scenario more than once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    runs: Vec<&'a Report>,
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
    let note = match table.repeats() {
        0 | 1 => String::new(),
        n => format!("Each figure is the median of {n} runs.\n\n"),
    };
    let markdown = format!("{note}{}\n{}", table.markdown(), table.detail());
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
                    runs: if table.repeats() > 1 {
                        table
                            .targets
                            .iter()
                            .filter_map(|t| table.runs.get(&(s.clone(), t.clone())))
                            .flatten()
                            .collect()
                    } else {
                        Vec::new()
                    },
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
    fn repeated_runs_show_medians_and_every_loss() {
        let mut lossy = report("k", "portask", 300.0, 9.0);
        lossy.verdict.lost = 2;
        lossy.passed = false;
        let t = Table::new(vec![
            report("k", "portask", 100.0, 5.0),
            lossy,
            report("k", "portask", 200.0, 1.0),
        ]);
        let r = t.get("k", "portask").unwrap();
        assert_eq!(r.consume.msg_per_s, 200.0);
        assert_eq!(r.latency.p99_us, 5.0);
        assert_eq!(r.verdict.lost, 2);
        assert!(!r.passed);
        assert_eq!(t.repeats(), 3);
        let cpu = |c: f64| {
            let mut r = report("s", "portask", 1.0, 1.0);
            r.broker_cpu_us_per_msg = Some(c);
            r
        };
        let t = Table::new(vec![cpu(3.0), cpu(1.0), cpu(2.0)]);
        assert_eq!(
            t.get("s", "portask").unwrap().broker_cpu_us_per_msg,
            Some(2.0)
        );
        assert!(
            t.markdown().contains("(CPU 2.00 µs/msg)"),
            "{}",
            t.markdown()
        );
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn ack_latency_columns_and_medians() {
        let acked = |p50: f64, p99: f64| {
            let mut r = report("k", "portask", 10_000.0, 900.0);
            r.ack_latency = Some(LatencySummary {
                count: 10,
                p50_us: p50,
                p99_us: p99,
                ..LatencySummary::default()
            });
            r
        };
        let t = Table::new(vec![
            acked(300.0, 2_000.0),
            acked(100.0, 1_000.0),
            acked(200.0, 3_000.0),
            report("a", "rabbitmq", 5_000.0, 700.0),
        ]);
        let a = t.get("k", "portask").and_then(|r| r.ack_latency.clone());
        assert_eq!(a.map(|a| (a.p50_us, a.p99_us)), Some((200.0, 2_000.0)));
        let md = t.markdown();
        assert!(
            md.lines()
                .next()
                .is_some_and(|h| h.contains("| Portask ack p50 / p99 | RabbitMQ ack p50 / p99 |")),
            "{md}"
        );
        let k = md.lines().find(|l| l.starts_with("| k |")).expect("row k");
        assert!(k.ends_with("| 200 µs / 2.00 ms | — |"), "{k}");
        let detail = t.detail();
        assert!(
            detail.contains("| 200 µs | 2.00 ms | — | 0 | 3 |"),
            "{detail}"
        );
        assert!(detail.contains("| — | — | — | 0 | 1 |"), "{detail}");
        // A run without acks among repeats: no median of what only some runs had.
        let mut plain = acked(1.0, 1.0);
        plain.ack_latency = None;
        let t = Table::new(vec![acked(5.0, 6.0), plain]);
        assert_eq!(
            t.get("k", "portask").map(|r| r.ack_latency.is_none()),
            Some(true)
        );
        // Without any acks the table keeps its old columns.
        let t = Table::new(vec![report("a", "rabbitmq", 5_000.0, 700.0)]);
        assert!(!t.markdown().contains("ack"), "{}", t.markdown());
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
