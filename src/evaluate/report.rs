//! The human report of an `eval` step, rendered from its `report.json`: a Markdown file (curves
//! linked as SVG files beside it) and a self-contained HTML page (curves inlined).

use super::layer_choice::LayerChoice;
use crate::bench::hybrid::ContextSpeed;
use crate::grpo::problems::Accuracy;
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::Path;

/// `report.json`: what the `eval` step measured. Written and read through this one type.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub pipeline: String,
    /// The teacher's and the final student's settings paths (`@step` labels).
    pub teacher: String,
    pub student: String,
    pub student_description: String,
    pub heldout: Heldout,
    pub math: Math,
    /// Held-out accuracy before and after each GRPO stage.
    pub grpo: Vec<GrpoAccuracy>,
    pub generations: Vec<Generations>,
    /// Decode speed and memory of teacher and student at each context length.
    pub speed: Vec<SpeedRow>,
    /// Training curves copied beside the report.
    pub curves: Vec<Curve>,
    /// Layers chosen by measurement (`layers = { auto = K }`) in a listed step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_choices: Vec<StepLayerChoice>,
    /// The final student's converted layers and the teacher's layer count (absent from reports
    /// written before they were recorded: see [`Report::layers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<ConvertedLayers>,
}

/// Which of the teacher's layers the final student converted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvertedLayers {
    pub converted: Vec<usize>,
    pub of: usize,
}

impl Report {
    /// The final student's converted layers: recorded, or read from the description that
    /// reports written before they were recorded carry (`RWKV-7 in layers [..] of N`).
    pub fn layers(&self) -> Option<ConvertedLayers> {
        if let Some(l) = &self.layers {
            return Some(l.clone());
        }
        let rest = self
            .student_description
            .strip_prefix("RWKV-7 in layers [")?;
        let (list, of) = rest.split_once("] of ")?;
        let converted = list
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().ok())
            .collect::<Option<Vec<usize>>>()?;
        Some(ConvertedLayers {
            converted,
            of: of.trim().parse().ok()?,
        })
    }
}

/// The layer probe's result of one step (its `layer_choice.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLayerChoice {
    pub step: String,
    pub choice: LayerChoice,
}

/// Held-out agreement of every model with the teacher, on the same batches.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heldout {
    pub batches: usize,
    pub batch_size: usize,
    pub teacher_perplexity: f64,
    pub models: Vec<ModelAgreement>,
}

/// One model's agreement with the teacher (see [`super::agreement::Agreement`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelAgreement {
    pub name: String,
    pub perplexity: f64,
    pub perplexity_ratio: f64,
    pub kl: f64,
    pub top1: f64,
}

/// Math accuracy of teacher and student (absent when the step had no math problems).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Math {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<Accuracy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student: Option<Accuracy>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrpoAccuracy {
    pub step: String,
    pub accuracy_before: Accuracy,
    pub accuracy_after: Accuracy,
}

/// Replies to one fixed prompt.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Generations {
    pub prompt: String,
    pub teacher_greedy: String,
    pub student_greedy: String,
    pub student_sampled: String,
    /// Why a greedy reply is degenerate (see [`super::degenerate`]), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_degenerate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_degenerate: Option<String>,
}

impl Generations {
    /// The student's greedy reply is degenerate where the teacher's is not.
    pub fn student_failed(&self) -> bool {
        self.student_degenerate.is_some() && self.teacher_degenerate.is_none()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpeedRow {
    pub context: usize,
    /// Sequences decoded together from the prefilled context (reports written before this
    /// field measured one).
    #[serde(default = "one")]
    pub batch: usize,
    pub teacher: ContextSpeed,
    pub student: ContextSpeed,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Curve {
    /// What it shows, e.g. `stage1 (loss)`.
    pub step: String,
    /// Relative to the report.
    pub file: String,
}

pub(crate) fn f(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "–".to_string()
    }
}

pub(crate) fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", 100.0 * x)
    } else {
        "–".to_string()
    }
}

/// Rows of the held-out table: (model, perplexity, ratio, KL, top-1).
fn heldout_rows(r: &Report) -> Vec<[String; 5]> {
    let h = &r.heldout;
    let mut rows = vec![[
        "teacher".to_string(),
        f(h.teacher_perplexity, 3),
        "1.000".into(),
        "0".into(),
        "100.0%".into(),
    ]];
    for m in &h.models {
        rows.push([
            m.name.clone(),
            f(m.perplexity, 3),
            f(m.perplexity_ratio, 3),
            f(m.kl, 4),
            pct(m.top1),
        ]);
    }
    rows
}

fn math_rows(r: &Report) -> Vec<[String; 3]> {
    let row = |name: String, a: &Accuracy| {
        [
            name,
            format!("{}/{}", a.correct, a.problems),
            pct(a.accuracy),
        ]
    };
    let mut rows = Vec::new();
    for (name, a) in [("teacher", &r.math.teacher), ("student", &r.math.student)] {
        if let Some(a) = a {
            rows.push(row(name.to_string(), a));
        }
    }
    for g in &r.grpo {
        rows.push(row(format!("{} (before)", g.step), &g.accuracy_before));
        rows.push(row(format!("{} (after)", g.step), &g.accuracy_after));
    }
    rows
}

fn speed_rows(r: &Report) -> Vec<[String; 7]> {
    r.speed
        .iter()
        .map(|s| {
            let (t, h) = (&s.teacher, &s.student);
            let ratio = if t.decode_tok_s > 0.0 {
                format!("{:.2}×", h.decode_tok_s / t.decode_tok_s)
            } else {
                "–".into()
            };
            [
                s.context.to_string(),
                s.batch.to_string(),
                f(t.decode_tok_s, 1),
                f(h.decode_tok_s, 1),
                ratio,
                f(t.state_mib, 2),
                format!("{} (RWKV {})", f(h.state_mib, 2), f(h.recurrent_mib, 2)),
            ]
        })
        .collect()
}

/// Rows of a layer probe's table: (layer, KL, top-1, converted).
fn layer_rows(c: &LayerChoice) -> Vec<[String; 4]> {
    c.scores
        .iter()
        .map(|s| {
            [
                s.layer.to_string(),
                f(s.kl, 4),
                pct(s.top1),
                if s.chosen { "yes" } else { "" }.to_string(),
            ]
        })
        .collect()
}

fn layer_note(c: &StepLayerChoice) -> String {
    format!(
        "`{}` converted the {} layers {:?} whose replacement cost least: each layer's \
         held-out KL(teacher ‖ teacher with only that layer's attention replaced), after {} \
         probe steps training a mixer in every layer ({} positions, {:.0} s).",
        c.step,
        c.choice.k,
        c.choice.layers,
        c.choice.probe_steps,
        c.choice.positions,
        c.choice.seconds
    )
}

const LAYER_HEAD: [&str; 4] = [
    "layer",
    "KL when replaced alone",
    "top-1 agreement",
    "converted",
];

/// Each layer's KL as a bar (converted layers dark), inline SVG.
fn layer_svg(c: &LayerChoice) -> String {
    let (w, h, pad) = (640.0, 160.0, 24.0);
    let max = c.scores.iter().map(|s| s.kl).fold(1e-12, f64::max);
    let n = c.scores.len().max(1) as f64;
    let bw = (w - 2.0 * pad) / n;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-size=\"9\" font-family=\"sans-serif\">"
    );
    for (i, s) in c.scores.iter().enumerate() {
        let bh = (h - 2.0 * pad) * (s.kl / max).clamp(0.0, 1.0);
        let x = pad + i as f64 * bw;
        let fill = if s.chosen { "#1f5fa8" } else { "#b9c9dc" };
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{fill}\">\
             <title>layer {}: KL {:.4}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            h - pad - bh,
            (bw - 1.0).max(0.5),
            s.layer,
            s.kl,
            x + bw / 2.0,
            h - pad + 11.0,
            s.layer
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{pad}\" y=\"12\">KL when replaced alone (max {max:.3}); dark: converted</text></svg>"
    );
    svg
}

const HELDOUT_HEAD: [&str; 5] = [
    "model",
    "perplexity",
    "ratio to teacher",
    "KL(teacher‖model)",
    "top-1 agreement",
];
const MATH_HEAD: [&str; 3] = ["model", "correct", "accuracy"];
const SPEED_NOTE: &str = "Decode speed after prefilling the context, and what the generation \
     carries: the teacher's KV cache grows with the context; in the student, converted layers \
     hold a fixed-size RWKV state and the remaining attention layers a KV cache. At a batch \
     above 1, that many sequences decode together from the prefilled context (its state \
     repeated, as GRPO's groups are): every step reads the weights once for all of them, \
     tok/s counts the tokens of all of them and the memory is the whole batch's.";

const SPEED_HEAD: [&str; 7] = [
    "context",
    "batch",
    "teacher tok/s",
    "student tok/s",
    "speed ratio",
    "teacher KV cache MiB",
    "student cache + state MiB",
];

/// A Markdown table (rows as long as `head`).
pub(crate) fn md_table<R: AsRef<[String]>>(out: &mut String, head: &[&str], rows: &[R]) {
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.as_ref().join(" | "));
    }
    out.push('\n');
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An HTML table (rows as long as `head`).
pub(crate) fn html_table<R: AsRef<[String]>>(out: &mut String, head: &[&str], rows: &[R]) {
    out.push_str("<table><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>");
    for r in rows {
        out.push_str("<tr>");
        for c in r.as_ref() {
            let _ = write!(out, "<td>{}</td>", esc(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>\n");
}

fn intro(r: &Report) -> String {
    format!(
        "Teacher `{}`; student `{}` ({}). Held-out text: {} batches of {} sequences.",
        r.teacher, r.student, r.student_description, r.heldout.batches, r.heldout.batch_size,
    )
}

/// The three replies of a generation, labelled (a degenerate greedy reply says why).
fn replies(g: &Generations) -> [(String, &str); 3] {
    let label = |who: &str, why: &Option<String>| match why {
        Some(why) => format!("{who}, greedy — degenerate: {why}"),
        None => format!("{who}, greedy"),
    };
    [
        (label("teacher", &g.teacher_degenerate), &g.teacher_greedy),
        (label("student", &g.student_degenerate), &g.student_greedy),
        ("student, sampled".to_string(), &g.student_sampled),
    ]
}

/// `report.md`; curve files are referenced relative to it.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Evaluation report — {}\n", r.pipeline);
    let _ = writeln!(s, "{}\n", intro(r));
    let _ = writeln!(s, "## Held-out agreement with the teacher\n");
    md_table(&mut s, &HELDOUT_HEAD, &heldout_rows(r));
    let math = math_rows(r);
    if !math.is_empty() {
        let _ = writeln!(s, "## Math accuracy (greedy, exact numeric answer)\n");
        md_table(&mut s, &MATH_HEAD, &math);
    }
    let speed = speed_rows(r);
    if !speed.is_empty() {
        let _ = writeln!(
            s,
            "## Generation speed and memory vs context\n\n{SPEED_NOTE}\n"
        );
        md_table(&mut s, &SPEED_HEAD, &speed);
    }
    for c in &r.layer_choices {
        let _ = writeln!(s, "## Layers chosen by measurement\n\n{}\n", layer_note(c));
        md_table(&mut s, &LAYER_HEAD, &layer_rows(&c.choice));
    }
    if !r.curves.is_empty() {
        let _ = writeln!(s, "## Training curves\n");
        for c in &r.curves {
            let _ = writeln!(s, "### {}\n\n![{}]({})\n", c.step, c.step, c.file);
        }
    }
    if !r.generations.is_empty() {
        let _ = writeln!(s, "## Generations\n");
        for g in &r.generations {
            let _ = writeln!(s, "**Prompt:** {}\n", g.prompt);
            for (label, text) in replies(g) {
                let _ = writeln!(s, "- *{label}*: {}\n", text.trim().replace('\n', " "));
            }
        }
    }
    s
}

/// The start of a report page: styles, the title as heading and an introduction.
pub(crate) fn html_head(title: &str, intro: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}th{{background:#f4f4f4}}\
         .gen{{white-space:pre-wrap;background:#f8f8f8;padding:.5em;border-radius:4px}}</style></head><body>\
         <h1>{t}</h1><p>{intro}</p>\n",
        t = esc(title),
        intro = esc(intro)
    )
}

/// `report.html`, self-contained: curve SVGs are read from `dir` and inlined.
pub fn html(r: &Report, dir: &Path) -> String {
    let mut s = String::new();
    s.push_str(&html_head(
        &format!("Evaluation report — {}", r.pipeline),
        &intro(r),
    ));
    s.push_str("<h2>Held-out agreement with the teacher</h2>\n");
    html_table(&mut s, &HELDOUT_HEAD, &heldout_rows(r));
    let math = math_rows(r);
    if !math.is_empty() {
        s.push_str("<h2>Math accuracy (greedy, exact numeric answer)</h2>\n");
        html_table(&mut s, &MATH_HEAD, &math);
    }
    let speed = speed_rows(r);
    if !speed.is_empty() {
        let _ = writeln!(
            s,
            "<h2>Generation speed and memory vs context</h2><p>{}</p>",
            esc(SPEED_NOTE)
        );
        html_table(&mut s, &SPEED_HEAD, &speed);
    }
    for c in &r.layer_choices {
        let _ = writeln!(
            s,
            "<h2>Layers chosen by measurement</h2><p>{}</p><div>{}</div>",
            esc(&layer_note(c)),
            layer_svg(&c.choice)
        );
        html_table(&mut s, &LAYER_HEAD, &layer_rows(&c.choice));
    }
    if !r.curves.is_empty() {
        s.push_str("<h2>Training curves</h2>\n");
        for c in &r.curves {
            let svg = std::fs::read_to_string(dir.join(&c.file)).unwrap_or_default();
            let _ = writeln!(s, "<h3>{}</h3><div>{}</div>", esc(&c.step), svg);
        }
    }
    if !r.generations.is_empty() {
        s.push_str("<h2>Generations</h2>\n");
        for g in &r.generations {
            let _ = write!(s, "<h3>{}</h3>", esc(&g.prompt));
            for (label, text) in replies(g) {
                let _ = write!(
                    s,
                    "<p><b>{}</b></p><div class=\"gen\">{}</div>",
                    esc(&label),
                    esc(text.trim())
                );
            }
        }
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_section_present() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("curves")).unwrap();
        std::fs::write(
            dir.path().join("curves/stage1.svg"),
            "<svg id=\"c1\"></svg>",
        )
        .unwrap();
        let acc = |correct: usize| Accuracy {
            problems: 4,
            correct,
            accuracy: correct as f64 / 4.0,
            answered: correct,
            samples: vec![],
        };
        let speed = |decode_tok_s, state_mib, recurrent_mib| ContextSpeed {
            context: 128,
            decode_tok_s,
            state_mib,
            recurrent_mib,
            ..Default::default()
        };
        let r = Report {
            pipeline: "demo".into(),
            teacher: "t".into(),
            student: "s".into(),
            student_description: "2 of 4".into(),
            heldout: Heldout {
                batches: 2,
                batch_size: 4,
                teacher_perplexity: 10.0,
                models: vec![ModelAgreement {
                    name: "stage1".into(),
                    perplexity: 12.0,
                    perplexity_ratio: 1.2,
                    kl: 0.3,
                    top1: 0.8,
                }],
            },
            math: Math {
                teacher: Some(acc(1)),
                student: None,
            },
            grpo: vec![GrpoAccuracy {
                step: "grpo".into(),
                accuracy_before: acc(0),
                accuracy_after: acc(1),
            }],
            speed: vec![
                SpeedRow {
                    context: 128,
                    batch: 1,
                    teacher: speed(10.0, 1.0, 0.0),
                    student: speed(20.0, 0.5, 0.25),
                },
                SpeedRow {
                    context: 128,
                    batch: 8,
                    teacher: speed(40.0, 8.0, 0.0),
                    student: speed(60.0, 4.0, 2.0),
                },
            ],
            curves: vec![Curve {
                step: "stage1".into(),
                file: "curves/stage1.svg".into(),
            }],
            generations: vec![Generations {
                prompt: "Hi <b>".into(),
                teacher_greedy: "Hello".into(),
                student_greedy: "Hey".into(),
                student_sampled: "Yo".into(),
                teacher_degenerate: None,
                student_degenerate: Some("\"Hey\" repeated 3 times".into()),
            }],
            layer_choices: vec![StepLayerChoice {
                step: "stage1".into(),
                choice: LayerChoice::from_scores(1, &[(0.5, 0.9), (0.125, 0.95)]),
            }],
            layers: Some(ConvertedLayers {
                converted: vec![1],
                of: 2,
            }),
        };
        assert!(r.generations[0].student_failed());
        // The JSON form reads back to the same report.
        let again: Report = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(markdown(&again), markdown(&r));
        assert_eq!(again.layers(), r.layers);
        let md = markdown(&r);
        assert!(
            md.contains("| stage1 | 12.000 | 1.200 | 0.3000 | 80.0% |"),
            "{md}"
        );
        assert!(md.contains("| grpo (after) | 1/4 | 25.0% |"));
        assert!(
            md.contains("| 128 | 1 | 10.0 | 20.0 | 2.00× | 1.00 | 0.50 (RWKV 0.25) |"),
            "{md}"
        );
        assert!(
            md.contains("| 128 | 8 | 40.0 | 60.0 | 1.50× | 8.00 | 4.00 (RWKV 2.00) |"),
            "{md}"
        );
        // A report written before rows had a batch measured one sequence.
        let mut old = serde_json::to_value(&r.speed[0]).unwrap();
        old.as_object_mut().unwrap().remove("batch");
        assert_eq!(serde_json::from_value::<SpeedRow>(old).unwrap().batch, 1);
        assert!(md.contains("![stage1](curves/stage1.svg)"));
        assert!(md.contains("| 1 | 0.1250 | 95.0% | yes |"), "{md}");
        assert!(md.contains("| 0 | 0.5000 | 90.0% |  |"), "{md}");
        assert!(
            md.contains("*student, greedy — degenerate: \"Hey\" repeated 3 times*"),
            "{md}"
        );
        let page = html(&r, dir.path());
        assert!(page.contains("<svg id=\"c1\"></svg>"), "curves are inlined");
        assert!(page.contains("Hi &lt;b&gt;"), "text is escaped");
        assert!(
            page.contains("<title>layer 1: KL 0.1250</title>"),
            "probe bars"
        );
        // Without optional sections nothing is rendered for them.
        let bare = Report {
            heldout: Heldout {
                teacher_perplexity: 3.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let md = markdown(&bare);
        assert!(!md.contains("Math accuracy") && !md.contains("Training curves"));
        assert!(!md.contains("Layers chosen"));
    }
}
