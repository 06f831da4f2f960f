//! The results as a markdown table (with the team's targets checked) or as
//! JSON. Pure: rows in, text out.

use crate::stats::Summary;
use crate::subject::Subject;
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = "ADD")]
    Add,
    #[serde(rename = "DEL")]
    Del,
}

impl Op {
    pub fn verb(self) -> &'static str {
        match self {
            Op::Add => "ADD",
            Op::Del => "DEL",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Sequential,
    Parallel,
}

impl Mode {
    fn label(self, parallel: usize) -> String {
        match self {
            Mode::Sequential => "sequential".into(),
            Mode::Parallel => format!("{parallel} parallel"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub subject: Subject,
    pub op: Op,
    pub mode: Mode,
    pub summary: Summary,
}

/// How the run was set up, and where.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub command: String,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub pods: usize,
    pub parallel: usize,
    pub rounds: usize,
    /// `/proc/loadavg` before and after: other work on the machine shows
    /// up in every figure, so a busy run should be re-run.
    pub load_before: String,
    pub load_after: String,
}

/// The ratios of one row's median to its comparison points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Ratios {
    pub vs_reference: Option<f64>,
    pub vs_floor_ip: Option<f64>,
    pub vs_floor_netlink: Option<f64>,
}

fn median(rows: &[Row], s: Subject, op: Op, mode: Mode) -> Option<f64> {
    rows.iter()
        .find(|r| r.subject == s && r.op == op && r.mode == mode)
        .map(|r| r.summary.median_ms)
}

pub fn ratios(rows: &[Row], r: &Row) -> Ratios {
    let vs = |other: Option<Subject>| {
        let o = median(rows, other?, r.op, r.mode)?;
        (o > 0.0).then(|| r.summary.median_ms / o)
    };
    let plugin = r.subject.is_plugin();
    Ratios {
        vs_reference: vs(r.subject.reference()),
        vs_floor_ip: vs(plugin.then_some(Subject::FloorIp)),
        vs_floor_netlink: vs(plugin.then_some(Subject::FloorNetlink)),
    }
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "—".into())
}

/// A target check, as a line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub ratio: f64,
    pub limit: f64,
    pub met: bool,
}

/// The team's targets: weft ADD with ipMasq at most 1/5 of the
/// reference's ADD with ipMasq, and weft DEL within 1.3× of the kernel's
/// veth deletion floor (checked against both floors, per mode and per
/// ipMasq setting).
pub fn targets(rows: &[Row]) -> Vec<Target> {
    let mut out = Vec::new();
    for mode in [Mode::Sequential, Mode::Parallel] {
        let add = rows.iter().find(|r| {
            r.subject == (Subject::Weft { masq: true }) && r.op == Op::Add && r.mode == mode
        });
        if let Some(ratio) = add.and_then(|r| ratios(rows, r).vs_reference) {
            out.push(Target {
                what: format!("weft ADD with ipMasq ≤ 1/5 of reference ({mode:?})"),
                ratio,
                limit: 0.2,
                met: ratio <= 0.2,
            });
        }
        for masq in [true, false] {
            let del = rows.iter().find(|r| {
                r.subject == (Subject::Weft { masq }) && r.op == Op::Del && r.mode == mode
            });
            let Some(del) = del else { continue };
            let rs = ratios(rows, del);
            for (floor, ratio) in [
                ("ip link del", rs.vs_floor_ip),
                ("netlink", rs.vs_floor_netlink),
            ] {
                if let Some(ratio) = ratio {
                    out.push(Target {
                        what: format!(
                            "weft DEL ({}) ≤ 1.3× kernel floor, {floor} ({mode:?})",
                            Subject::Weft { masq }.label()
                        ),
                        ratio,
                        limit: 1.3,
                        met: ratio <= 1.3,
                    });
                }
            }
        }
    }
    out
}

pub fn markdown(meta: &Meta, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### CNI ADD/DEL latency\n");
    let _ = writeln!(s, "Command: `{}`  ", meta.command);
    let _ = writeln!(
        s,
        "Machine: {} CPUs ({}), Linux {}  ",
        meta.cpus, meta.cpu_model, meta.kernel
    );
    let _ = writeln!(
        s,
        "Load average (1/5/15 min) before: {}, after: {}  ",
        meta.load_before, meta.load_after
    );
    let _ = writeln!(
        s,
        "Sequential: {} pods over {} round(s), each round ADDing its share one after another, then DELeting them. Parallel: {} calls started together, once per round. Configurations take turns within each round (order rotated), after one untimed warm-up pod each.\n",
        meta.pods, meta.rounds, meta.parallel
    );
    let _ = writeln!(
        s,
        "| configuration | op | mode | n | median ms | p90 ms | vs reference | vs floor (ip link) | vs floor (netlink) |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let q = ratios(rows, r);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} |",
            r.subject.label(),
            r.op.verb(),
            r.mode.label(meta.parallel),
            r.summary.n,
            r.summary.median_ms,
            r.summary.p90_ms,
            ratio_cell(q.vs_reference),
            ratio_cell(q.vs_floor_ip),
            ratio_cell(q.vs_floor_netlink),
        );
    }
    let ts = targets(rows);
    if !ts.is_empty() {
        let _ = writeln!(s, "\nTargets (ratios of medians):\n");
        for t in ts {
            let _ = writeln!(
                s,
                "- {}: {:.2}× (limit {:.2}×) — {}",
                t.what,
                t.ratio,
                t.limit,
                if t.met { "met" } else { "MISSED" }
            );
        }
    }
    s
}

pub fn json(meta: &Meta, rows: &[Row]) -> serde_json::Value {
    let out: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "configuration": r.subject.label(),
                "subject": r.subject,
                "op": r.op,
                "mode": r.mode,
                "summary": r.summary,
                "ratios": ratios(rows, r),
            })
        })
        .collect();
    serde_json::json!({ "meta": meta, "rows": out, "targets": targets(rows) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(subject: Subject, op: Op, mode: Mode, median: f64) -> Row {
        Row {
            subject,
            op,
            mode,
            summary: Summary {
                n: 10,
                median_ms: median,
                p90_ms: median * 1.5,
                mean_ms: median,
                min_ms: median,
                max_ms: median,
            },
        }
    }

    fn sample() -> Vec<Row> {
        let s = Mode::Sequential;
        vec![
            row(Subject::FloorNetlink, Op::Del, s, 20.0),
            row(Subject::FloorIp, Op::Del, s, 22.0),
            row(Subject::Reference { masq: true }, Op::Add, s, 30.0),
            row(Subject::Weft { masq: true }, Op::Add, s, 3.0),
            row(Subject::Weft { masq: true }, Op::Del, s, 30.0),
        ]
    }

    #[test]
    fn ratios_compare_like_with_like() {
        let rows = sample();
        let q = ratios(&rows, &rows[3]);
        assert_eq!(q.vs_reference, Some(0.1));
        assert_eq!(q.vs_floor_ip, None, "no ADD floor row in the sample");
        let q = ratios(&rows, &rows[4]);
        assert_eq!(q.vs_floor_netlink, Some(1.5));
        assert_eq!(q.vs_reference, None, "no reference DEL row");
        assert_eq!(ratios(&rows, &rows[0]), Ratios::default());
    }

    #[test]
    fn targets_are_checked() {
        let ts = targets(&sample());
        assert_eq!(ts.len(), 3);
        assert!(ts[0].met, "ADD 3 ms vs 30 ms");
        assert!(!ts[1].met, "DEL 30 ms vs 22 ms ip floor");
        assert!(!ts[2].met, "DEL 30 ms vs 20 ms netlink floor");
    }

    #[test]
    fn markdown_has_a_row_per_result() {
        let meta = Meta {
            command: "weft-bench".into(),
            kernel: "6".into(),
            cpus: 2,
            cpu_model: "x".into(),
            pods: 10,
            parallel: 20,
            rounds: 1,
            load_before: "0.1 0.1 0.1".into(),
            load_after: "0.2 0.1 0.1".into(),
        };
        let md = markdown(&meta, &sample());
        assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), 6);
        assert!(md.contains(
            "| weft-cni, ipMasq | ADD | sequential | 10 | 3.00 | 4.50 | 0.10× | — | — |"
        ));
        let j = json(&meta, &sample());
        assert_eq!(j["rows"].as_array().unwrap().len(), 5);
    }
}
