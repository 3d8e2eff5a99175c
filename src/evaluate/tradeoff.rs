//! Students of one teacher side by side, from their `eval` reports: how many layers each
//! converted, its held-out quality (perplexity ratio, KL, top-1 agreement of the final student),
//! its decode speed and cache + state memory against the teacher's at each measured context,
//! and how long its training took. Written as `comparison.json`, `comparison.md` and a
//! self-contained `comparison.html` whose charts plot every measure against the number of
//! converted layers, and perplexity ratio against decode speed with the Pareto front marked.

use super::report::{
    ConvertedLayers, Report, SpeedRow, esc, f, html_head, html_table, md_table, pct,
};
use crate::train::plot::COLORS;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// `comparison.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// The context length the Pareto chart's speeds are measured at.
    pub context: usize,
    pub students: Vec<Student>,
}

/// One student, as its eval report measured it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Student {
    pub name: String,
    pub layers: ConvertedLayers,
    pub perplexity_ratio: f64,
    pub kl: f64,
    pub top1: f64,
    /// Teacher and student at each measured context.
    pub speed: Vec<SpeedRow>,
    /// Seconds the listed training steps took (absent when no step was listed or a step's
    /// time is unknown).
    pub training_s: Option<f64>,
}

impl Student {
    /// The student that `report` measured (its final model).
    pub fn from_report(name: &str, report: &Report, training_s: Option<f64>) -> Result<Student> {
        let layers = report.layers().with_context(|| {
            format!(
                "the report of `{name}` does not say which layers its student converted \
                 (description: {:?})",
                report.student_description
            )
        })?;
        let last = report
            .heldout
            .models
            .last()
            .with_context(|| format!("the report of `{name}` has no held-out measurement"))?;
        Ok(Student {
            name: name.to_string(),
            layers,
            perplexity_ratio: last.perplexity_ratio,
            kl: last.kl,
            top1: last.top1,
            speed: report.speed.clone(),
            training_s,
        })
    }

    /// The row of one sequence decoded at `context` (what every report measures).
    fn at(&self, context: usize) -> Option<&SpeedRow> {
        self.speed
            .iter()
            .find(|s| s.context == context && s.batch == 1)
    }

    /// Decode speed as a multiple of the teacher's at `context`.
    pub fn speedup(&self, context: usize) -> Option<f64> {
        self.at(context)
            .filter(|s| s.teacher.decode_tok_s > 0.0)
            .map(|s| s.student.decode_tok_s / s.teacher.decode_tok_s)
    }

    /// Cache + state memory as a fraction of the teacher's KV cache at `context`.
    pub fn memory(&self, context: usize) -> Option<f64> {
        self.at(context)
            .filter(|s| s.teacher.state_mib > 0.0)
            .map(|s| s.student.state_mib / s.teacher.state_mib)
    }
}

impl Comparison {
    /// Compares `students`; the Pareto chart uses `context`, or by default the longest context
    /// every report measured.
    pub fn new(students: Vec<Student>, context: Option<usize>) -> Result<Comparison> {
        let shared = shared_contexts(&students);
        let context = match context {
            Some(c) if shared.contains(&c) => c,
            Some(c) => bail!(
                "context {c} was not measured by every report (all of them measured {shared:?}); \
                 add it to the eval steps' `contexts` or choose one of those"
            ),
            None => *shared.iter().max().with_context(|| {
                "the reports share no context length of their speed tables; give their eval \
                 steps a common entry in `contexts`"
            })?,
        };
        Ok(Comparison { context, students })
    }

    /// Every context length measured by every student, ascending.
    pub fn contexts(&self) -> Vec<usize> {
        shared_contexts(&self.students)
    }

    /// The students no other beats on both perplexity ratio (lower) and decode speed at the
    /// chart's context (higher), as indices.
    pub fn pareto_front(&self) -> Vec<usize> {
        let pts: Vec<(f64, f64)> = self
            .students
            .iter()
            .map(|s| (s.speedup(self.context).unwrap_or(0.0), s.perplexity_ratio))
            .collect();
        (0..pts.len())
            .filter(|&i| {
                !pts.iter().enumerate().any(|(j, p)| {
                    j != i
                        && p.0 >= pts[i].0
                        && p.1 <= pts[i].1
                        && (p.0 > pts[i].0 || p.1 < pts[i].1)
                })
            })
            .collect()
    }

    fn head(&self) -> Vec<String> {
        let mut head = vec![
            "student".to_string(),
            "converted".into(),
            "perplexity ratio".into(),
            "KL".into(),
            "top-1".into(),
        ];
        for c in self.contexts() {
            head.push(format!("decode ×teacher @{c}"));
            head.push(format!("memory ×teacher @{c}"));
        }
        head.push("training".into());
        head
    }

    fn rows(&self) -> Vec<Vec<String>> {
        let ratio = |x: Option<f64>| x.map(|x| format!("{x:.2}×")).unwrap_or("–".into());
        self.students
            .iter()
            .map(|s| {
                let mut row = vec![
                    s.name.clone(),
                    format!("{}/{}", s.layers.converted.len(), s.layers.of),
                    f(s.perplexity_ratio, 3),
                    f(s.kl, 4),
                    pct(s.top1),
                ];
                for c in self.contexts() {
                    row.push(ratio(s.speedup(c)));
                    row.push(ratio(s.memory(c)));
                }
                row.push(
                    s.training_s
                        .map(|t| {
                            if t < 100.0 {
                                format!("{t:.1} s")
                            } else {
                                format!("{:.1} min", t / 60.0)
                            }
                        })
                        .unwrap_or("–".into()),
                );
                row
            })
            .collect()
    }

    fn note(&self) -> String {
        "Each student's final model against the teacher on the held-out batches of its eval \
         step; decode speed after prefilling the context and the memory generation carries \
         there (the student's KV cache of its remaining attention layers plus its RWKV state, \
         over the teacher's KV cache), as multiples of the teacher's in the same measurement; \
         training: the time of the student's listed training steps."
            .to_string()
    }

    /// `comparison.md`.
    pub fn markdown(&self, title: &str) -> String {
        let mut s = format!("# {title}\n\n{}\n\n", self.note());
        let head = self.head();
        let head: Vec<&str> = head.iter().map(String::as_str).collect();
        md_table(&mut s, &head, &self.rows());
        let front: Vec<&str> = self
            .pareto_front()
            .into_iter()
            .map(|i| self.students[i].name.as_str())
            .collect();
        let _ = writeln!(
            s,
            "Pareto front (perplexity ratio against decode speed at {} tokens of context): {}.",
            self.context,
            front.join(", ")
        );
        s
    }

    /// `comparison.html`, with the charts inlined.
    pub fn html(&self, title: &str) -> String {
        let mut s = html_head(title, &self.note());
        let head = self.head();
        let head: Vec<&str> = head.iter().map(String::as_str).collect();
        html_table(&mut s, &head, &self.rows());
        let _ = writeln!(
            s,
            "<h2>Quality against speed at {} tokens of context</h2>\
             <p>Lower is closer to the teacher, right is faster; the line joins the students \
             no other beats on both.</p>{}",
            self.context,
            self.pareto_svg()
        );
        s.push_str("<h2>Against the number of converted layers</h2><div>");
        let of = self.students.iter().map(|s| s.layers.of).max().unwrap_or(1);
        let mut panel = |title: String, y: &dyn Fn(&Student) -> Option<f64>| {
            let pts: Vec<Point> = self
                .students
                .iter()
                .enumerate()
                .filter_map(|(i, st)| {
                    y(st).map(|v| Point {
                        x: st.layers.converted.len() as f64,
                        y: v,
                        color: i,
                        label: None,
                    })
                })
                .collect();
            s.push_str(&scatter_svg(
                &title,
                "converted layers",
                (0.0, of as f64),
                &pts,
                None,
                (320.0, 220.0),
            ));
        };
        panel("perplexity ratio".into(), &|s| Some(s.perplexity_ratio));
        panel("KL(teacher ‖ student)".into(), &|s| Some(s.kl));
        panel("top-1 agreement".into(), &|s| Some(s.top1));
        for c in self.contexts() {
            panel(format!("decode speed ×teacher at {c}"), &move |s| {
                s.speedup(c)
            });
            panel(format!("cache + state ×teacher at {c}"), &move |s| {
                s.memory(c)
            });
        }
        s.push_str("</div><p>");
        for (i, st) in self.students.iter().enumerate() {
            let _ = write!(
                s,
                "<span style=\"color:{}\">●</span> {} &nbsp; ",
                color(i),
                esc(&st.name)
            );
        }
        s.push_str("</p></body></html>\n");
        s
    }

    fn pareto_svg(&self) -> String {
        let pts: Vec<Point> = self
            .students
            .iter()
            .enumerate()
            .filter_map(|(i, st)| {
                st.speedup(self.context).map(|x| Point {
                    x,
                    y: st.perplexity_ratio,
                    color: i,
                    label: Some(st.name.clone()),
                })
            })
            .collect();
        let (lo, hi) = pts
            .iter()
            .fold((1.0f64, 1.0f64), |(a, b), p| (a.min(p.x), b.max(p.x)));
        let mut front: Vec<(f64, f64)> = self
            .pareto_front()
            .into_iter()
            .filter_map(|i| {
                let st = &self.students[i];
                st.speedup(self.context).map(|x| (x, st.perplexity_ratio))
            })
            .collect();
        front.sort_by(|a, b| a.0.total_cmp(&b.0));
        let pad = 0.05 * (hi - lo).max(0.1);
        scatter_svg(
            "perplexity ratio",
            &format!("decode speed ×teacher at {}", self.context),
            (lo - pad, hi + pad),
            &pts,
            Some(&front),
            (640.0, 360.0),
        )
    }
}

/// The context lengths every one of `students` measured, ascending.
fn shared_contexts(students: &[Student]) -> Vec<usize> {
    let mut out: Vec<usize> = students
        .iter()
        .flat_map(|s| s.speed.iter().map(|r| r.context))
        .filter(|c| students.iter().all(|s| s.at(*c).is_some()))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn color(i: usize) -> &'static str {
    COLORS[i % COLORS.len()]
}

struct Point {
    x: f64,
    y: f64,
    color: usize,
    label: Option<String>,
}

/// A `w`×`h` scatter plot as inline SVG: `pts` in their colours, the x range given, the y range
/// from the points, and `line` (if any) joining points in order.
fn scatter_svg(
    title: &str,
    xlabel: &str,
    (x0, x1): (f64, f64),
    pts: &[Point],
    line: Option<&[(f64, f64)]>,
    (w, h): (f64, f64),
) -> String {
    let (l, r, t, b) = (52.0, 12.0, 24.0, 36.0);
    let (mut y0, mut y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, c), p| (a.min(p.y), c.max(p.y)));
    if pts.is_empty() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = 0.08 * (y1 - y0).max(1e-3 * y1.abs().max(1e-9));
    (y0, y1) = (y0 - pad, y1 + pad);
    let span_x = (x1 - x0).max(1e-9);
    let px = |x: f64| l + (x - x0) / span_x * (w - l - r);
    let py = |y: f64| h - b - (y - y0) / (y1 - y0) * (h - t - b);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"10\" style=\"margin:4px\">\
         <text x=\"{l}\" y=\"14\" font-size=\"12\">{}</text>\
         <rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        esc(title),
        w - l - r,
        h - t - b,
        (l + w - r) / 2.0,
        h - 6.0,
        esc(xlabel)
    );
    for i in 0..=2 {
        let y = y0 + (y1 - y0) * i as f64 / 2.0;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            l - 4.0,
            py(y) + 3.0,
            tick(y)
        );
        let x = x0 + span_x * i as f64 / 2.0;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            px(x),
            h - b + 12.0,
            tick(x)
        );
    }
    if let Some(line) = line.filter(|l| l.len() > 1) {
        let d: Vec<String> = line
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#444\" stroke-dasharray=\"4 3\"/>",
            d.join(" ")
        );
    }
    for p in pts {
        let _ = write!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{}\"/>",
            px(p.x),
            py(p.y),
            color(p.color)
        );
        if let Some(label) = &p.label {
            // Labels of points in the right third go to their left, inside the chart.
            let (dx, anchor) = if px(p.x) > l + 2.0 * (w - l - r) / 3.0 {
                (-6.0, "end")
            } else {
                (6.0, "start")
            };
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
                px(p.x) + dx,
                py(p.y) - 4.0,
                esc(label)
            );
        }
    }
    s.push_str("</svg>");
    s
}

fn tick(v: f64) -> String {
    if v.abs() >= 100.0 || (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::hybrid::ContextSpeed;
    use crate::evaluate::report::{Heldout, ModelAgreement};

    fn report(layers: &[usize], ppl: f64, speed: f64, mem: f64) -> Report {
        let at = |context, tok_s, mib| ContextSpeed {
            context,
            decode_tok_s: tok_s,
            state_mib: mib,
            ..Default::default()
        };
        Report {
            student_description: format!("RWKV-7 in layers {layers:?} of 30"),
            heldout: Heldout {
                models: vec![
                    ModelAgreement {
                        name: "stage1".into(),
                        perplexity_ratio: 9.0,
                        ..Default::default()
                    },
                    ModelAgreement {
                        name: "final".into(),
                        perplexity_ratio: ppl,
                        kl: ppl - 1.0,
                        top1: 0.8,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            // A batched row first: the comparison reads the rows of one sequence.
            speed: std::iter::once(SpeedRow {
                context: 2048,
                batch: 8,
                teacher: at(2048, 400.0, 640.0),
                student: at(2048, 1000.0, 64.0),
            })
            .chain([2048, 8192].into_iter().map(|c| SpeedRow {
                context: c,
                batch: 1,
                teacher: at(c, 100.0, 80.0),
                student: at(c, 100.0 * speed, 80.0 * mem),
            }))
            .collect(),
            ..Default::default()
        }
    }

    fn students() -> Vec<Student> {
        [
            ("a", vec![1, 2], 1.05, 1.0, 0.9),
            ("b", (0..15).collect(), 1.30, 1.3, 0.5),
            ("c", (0..15).collect(), 1.40, 1.2, 0.5), // beaten by b on both
            ("d", (0..30).collect(), 2.00, 1.8, 0.01),
        ]
        .into_iter()
        .map(|(n, l, p, sp, m)| {
            Student::from_report(n, &report(&l, p, sp, m), Some(600.0)).unwrap()
        })
        .collect()
    }

    #[test]
    fn reads_the_final_model_and_the_layers_of_old_and_new_reports() {
        let mut r = report(&[3, 5], 1.2, 1.1, 0.7);
        let s = Student::from_report("x", &r, None).unwrap();
        assert_eq!(s.layers.converted, vec![3, 5]);
        assert_eq!(s.layers.of, 30);
        assert_eq!(s.perplexity_ratio, 1.2, "the last model is the final one");
        assert!((s.speedup(2048).unwrap() - 1.1).abs() < 1e-12);
        assert!((s.memory(8192).unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(s.speedup(512), None);
        r.layers = Some(ConvertedLayers {
            converted: vec![7],
            of: 12,
        });
        assert_eq!(Student::from_report("x", &r, None).unwrap().layers.of, 12);
        r.layers = None;
        r.student_description = "something else".into();
        let err = Student::from_report("x", &r, None).unwrap_err().to_string();
        assert!(err.contains("does not say which layers"), "{err}");
    }

    #[test]
    fn the_pareto_front_leaves_out_dominated_students() {
        let c = Comparison::new(students(), None).unwrap();
        assert_eq!(c.context, 8192, "the longest shared context by default");
        assert_eq!(c.pareto_front(), vec![0, 1, 3]);
        assert_eq!(c.contexts(), vec![2048, 8192]);
        let err = Comparison::new(students(), Some(512))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[2048, 8192]"), "{err}");
    }

    #[test]
    fn renders_the_table_and_charts() {
        let c = Comparison::new(students(), Some(2048)).unwrap();
        let md = c.markdown("Trade-off");
        assert!(
            md.contains(
                "| b | 15/30 | 1.300 | 0.3000 | 80.0% | 1.30× | 0.50× | 1.30× | 0.50× | 10.0 min |"
            ),
            "{md}"
        );
        assert!(md.contains("Pareto front (perplexity ratio against decode speed at 2048 tokens of context): a, b, d."), "{md}");
        let page = c.html("Trade-off");
        // One Pareto chart and 3 + 2 × 2 panels against the layer count.
        assert_eq!(page.matches("<svg").count(), 8, "{page}");
        assert_eq!(page.matches("<polyline").count(), 1);
    }
}
