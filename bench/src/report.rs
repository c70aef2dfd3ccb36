//! The report: every run's figures, then each goal beside its baseline.

use std::fmt::Write;

use crate::load::Outcome;

/// One measured run.
pub struct Run {
    pub name: String,
    pub backend: String,
    pub outcome: Outcome,
}

/// One goal of the issue, checked.
pub struct Figure {
    pub number: &'static str,
    pub backend: String,
    pub what: String,
    pub measured: String,
    pub goal: String,
    /// None: not measured (say why in `measured`).
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    pub runs: Vec<Run>,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn run(&mut self, name: &str, backend: &str, outcome: Outcome) -> Outcome {
        let (c, s) = outcome.cores();
        let (idle, steal) = outcome.machine.shares();
        println!(
            "{name:<44} {backend:<10} {:>9.0}/s p50 {:>7.2} ms p99 {:>7.2} ms p99.9 {:>7.2} ms cpu client {c:.2} server {s:.2} others {:.2} s idle {:.0}% steal {:.0}% errors {}",
            outcome.throughput(),
            outcome.ms(0.5),
            outcome.ms(0.99),
            outcome.ms(0.999),
            outcome.others_cpu,
            idle * 100.0,
            steal * 100.0,
            outcome.errors,
        );
        if let Some(e) = &outcome.first_error {
            println!("    first error: {e}");
        }
        self.runs.push(Run {
            name: name.to_owned(),
            backend: backend.to_owned(),
            outcome: outcome.clone(),
        });
        outcome
    }

    pub fn figure(
        &mut self,
        number: &'static str,
        backend: &str,
        what: impl Into<String>,
        measured: impl Into<String>,
        goal: impl Into<String>,
        met: Option<bool>,
    ) {
        let f = Figure {
            number,
            backend: backend.to_owned(),
            what: what.into(),
            measured: measured.into(),
            goal: goal.into(),
            met,
        };
        println!(
            "figure {} ({}): {} — {} (goal {}): {}",
            f.number,
            f.backend,
            f.what,
            f.measured,
            f.goal,
            verdict(f.met)
        );
        self.figures.push(f);
    }

    pub fn markdown(&self, machine: &str, args: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Benchmarks\n\n\
             Written by `sovra-bench run` (see \"Running\" below); do not edit by hand.\n\
             Every figure is a ratio against a baseline measured in the same run on\n\
             the same machine, so a noisy or slower machine moves both sides.\n\n\
             - Machine: {machine}\n- Run: {args}\n\
             - Durability: SQLite WAL with `synchronous=FULL` (Sovra's `Db::connect`; the\n  baselines' sqlx pools set the same); PostgreSQL with `synchronous_commit=on` (its default).\n"
        );
        let _ = writeln!(out, "## Goals\n");
        let _ = writeln!(
            out,
            "| # | backend | what | measured | goal | |\n|---|---|---|---|---|---|"
        );
        for f in &self.figures {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                f.number,
                f.backend,
                f.what,
                f.measured,
                f.goal,
                verdict(f.met)
            );
        }
        let _ = writeln!(out, "\n## Runs\n");
        let _ = writeln!(
            out,
            "| run | backend | req/s | p50 ms | p99 ms | p99.9 ms | client cores | server cores | others' CPU s | machine idle | steal | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &self.runs {
            let o = &r.outcome;
            let (c, s) = o.cores();
            let (idle, steal) = o.machine.shares();
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {c:.2} | {s:.2} | {:.2} | {:.0}% | {:.0}% | {} |",
                r.name,
                r.backend,
                o.throughput(),
                o.ms(0.5),
                o.ms(0.99),
                o.ms(0.999),
                o.others_cpu,
                idle * 100.0,
                steal * 100.0,
                o.errors
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\n## Notes from this run\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}
