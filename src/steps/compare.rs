//! `compare` steps: several students of one teacher side by side, from their `eval` steps'
//! reports — converted layers, held-out quality, decode speed and memory against the teacher,
//! training time — as `comparison.json`, `comparison.md` and `comparison.html` (see
//! [`crate::evaluate::tradeoff`]). The step reads reports only; it loads no model.

use crate::evaluate::report::Report;
use crate::evaluate::tradeoff::{Comparison, Student};
use crate::pipeline::ArtifactRef;
use crate::pipeline::rundir::work_seconds;
use crate::pipeline::step::{Step, StepContext, settings_json};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One student to compare.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// Its name in the table and charts.
    pub name: String,
    /// The artifacts of the `eval` step that measured it (its `report.json`).
    pub report: ArtifactRef,
    /// The steps that trained it (e.g. `["@stage1_k8", "@stage2_k8"]`): their times add up to
    /// its training time.
    #[serde(default)]
    pub training: Vec<ArtifactRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareSettings {
    /// The students, in table order (`[[step.students]]`).
    pub students: Vec<Candidate>,
    /// The context length whose decode speed the Pareto chart uses (default: the longest every
    /// report measured).
    #[serde(default)]
    pub context: Option<usize>,
    /// The page's title.
    #[serde(default = "d_title")]
    pub title: String,
}

fn d_title() -> String {
    "Students compared".into()
}

impl Step for CompareSettings {
    fn kind(&self) -> &'static str {
        "compare"
    }

    fn settings_json(&self) -> serde_json::Value {
        settings_json(self)
    }

    fn artifact_refs(&self) -> Vec<(&'static str, &ArtifactRef)> {
        self.students
            .iter()
            .flat_map(|c| {
                std::iter::once(("students.report", &c.report))
                    .chain(c.training.iter().map(|t| ("students.training", t)))
            })
            .collect()
    }

    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.students.is_empty() {
            out.push((
                "students".into(),
                "list at least one student ([[step.students]] with `name` and `report`)".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.students {
            if !seen.insert(c.name.as_str()) {
                out.push((
                    "students".into(),
                    format!("the name `{}` is given to two students", c.name),
                ));
            }
        }
        out
    }

    fn exclusive(&self) -> bool {
        false
    }

    fn run(&self, ctx: &StepContext) -> Result<()> {
        let mut students = Vec::new();
        for c in &self.students {
            let path = c.report.resolve(ctx)?.join("report.json");
            let report: Report = crate::util::fsx::read_json(&path)?.with_context(|| {
                format!(
                    "`{}` has no report.json (looked for {}): name an `eval` step's artifacts",
                    c.report,
                    path.display()
                )
            })?;
            let mut training = Some(0.0);
            for t in &c.training {
                let secs = work_seconds(&t.resolve(ctx)?);
                if secs.is_none() {
                    tracing::warn!("{}: no recorded time for `{t}`", ctx.id);
                }
                training = training.zip(secs).map(|(a, b)| a + b);
            }
            let training = training.filter(|_| !c.training.is_empty());
            students.push(Student::from_report(&c.name, &report, training)?);
        }
        let comparison = Comparison::new(students, self.context)?;
        let out = &ctx.out_dir;
        crate::util::fsx::atomic_write_json(&out.join("comparison.json"), &comparison)?;
        crate::util::fsx::atomic_write(
            &out.join("comparison.md"),
            comparison.markdown(&self.title).as_bytes(),
        )?;
        crate::util::fsx::atomic_write(
            &out.join("comparison.html"),
            comparison.html(&self.title).as_bytes(),
        )?;
        tracing::info!(
            "{}: {} students compared: {}",
            ctx.id,
            comparison.students.len(),
            out.join("comparison.html").display()
        );
        Ok(())
    }
}
