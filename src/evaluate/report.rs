//! The human report of an `eval` step, rendered from its `report.json`: a Markdown file (curves
//! linked as SVG files beside it) and a self-contained HTML page (curves inlined).

use serde_json::Value;
use std::fmt::Write;
use std::path::Path;

fn f(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "–".to_string(), |x| format!("{x:.digits$}"))
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "–".to_string(), |x| format!("{:.1}%", 100.0 * x))
}

/// Rows of the held-out table: (model, perplexity, ratio, KL, top-1).
fn heldout_rows(r: &Value) -> Vec<[String; 5]> {
    let h = &r["heldout"];
    let mut rows = vec![[
        "teacher".to_string(),
        f(&h["teacher_perplexity"], 3),
        "1.000".into(),
        "0".into(),
        "100.0%".into(),
    ]];
    for m in h["models"].as_array().into_iter().flatten() {
        rows.push([
            m["name"].as_str().unwrap_or("?").to_string(),
            f(&m["perplexity"], 3),
            f(&m["perplexity_ratio"], 3),
            f(&m["kl"], 4),
            pct(&m["top1"]),
        ]);
    }
    rows
}

fn math_rows(r: &Value) -> Vec<[String; 3]> {
    let mut rows = Vec::new();
    for (name, key) in [("teacher", "teacher"), ("student", "student")] {
        let a = &r["math"][key];
        if a.is_object() {
            rows.push([
                name.to_string(),
                format!("{}/{}", a["correct"], a["problems"]),
                pct(&a["accuracy"]),
            ]);
        }
    }
    for g in r["grpo"].as_array().into_iter().flatten() {
        for (label, key) in [("before", "accuracy_before"), ("after", "accuracy_after")] {
            let a = &g[key];
            rows.push([
                format!("{} ({label})", g["step"].as_str().unwrap_or("grpo")),
                format!("{}/{}", a["correct"], a["problems"]),
                pct(&a["accuracy"]),
            ]);
        }
    }
    rows
}

fn speed_rows(r: &Value) -> Vec<[String; 6]> {
    r["speed"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let (t, h) = (&s["teacher"], &s["student"]);
            let ratio = match (h["decode_tok_s"].as_f64(), t["decode_tok_s"].as_f64()) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "–".into(),
            };
            [
                s["context"].to_string(),
                f(&t["decode_tok_s"], 1),
                f(&h["decode_tok_s"], 1),
                ratio,
                f(&t["state_mib"], 2),
                format!(
                    "{} (RWKV {})",
                    f(&h["state_mib"], 2),
                    f(&h["recurrent_mib"], 2)
                ),
            ]
        })
        .collect()
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
     hold a fixed-size RWKV state and the remaining attention layers a KV cache.";

const SPEED_HEAD: [&str; 6] = [
    "context",
    "teacher tok/s",
    "student tok/s",
    "speed ratio",
    "teacher KV cache MiB",
    "student cache + state MiB",
];

fn md_table<const N: usize>(out: &mut String, head: [&str; N], rows: &[[String; N]]) {
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(N));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html_table<const N: usize>(out: &mut String, head: [&str; N], rows: &[[String; N]]) {
    out.push_str("<table><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{}</td>", esc(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>\n");
}

fn intro(r: &Value) -> String {
    format!(
        "Teacher `{}`; student `{}` ({}). Held-out text: {} batches of {} sequences.",
        r["teacher"].as_str().unwrap_or("?"),
        r["student"].as_str().unwrap_or("?"),
        r["student_description"].as_str().unwrap_or(""),
        r["heldout"]["batches"],
        r["heldout"]["batch_size"],
    )
}

/// `report.md`; curve files are referenced relative to it.
pub fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Evaluation report — {}\n",
        r["pipeline"].as_str().unwrap_or("run")
    );
    let _ = writeln!(s, "{}\n", intro(r));
    let _ = writeln!(s, "## Held-out agreement with the teacher\n");
    md_table(&mut s, HELDOUT_HEAD, &heldout_rows(r));
    let math = math_rows(r);
    if !math.is_empty() {
        let _ = writeln!(s, "## Math accuracy (greedy, exact numeric answer)\n");
        md_table(&mut s, MATH_HEAD, &math);
    }
    let speed = speed_rows(r);
    if !speed.is_empty() {
        let _ = writeln!(
            s,
            "## Generation speed and memory vs context\n\n{SPEED_NOTE}\n"
        );
        md_table(&mut s, SPEED_HEAD, &speed);
    }
    if let Some(curves) = r["curves"].as_array().filter(|c| !c.is_empty()) {
        let _ = writeln!(s, "## Training curves\n");
        for c in curves {
            let _ = writeln!(
                s,
                "### {}\n\n![{}]({})\n",
                c["step"].as_str().unwrap_or("?"),
                c["step"].as_str().unwrap_or("?"),
                c["file"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(gens) = r["generations"].as_array().filter(|g| !g.is_empty()) {
        let _ = writeln!(s, "## Generations\n");
        for g in gens {
            let _ = writeln!(s, "**Prompt:** {}\n", g["prompt"].as_str().unwrap_or(""));
            for k in ["teacher_greedy", "student_greedy", "student_sampled"] {
                let text = g[k].as_str().unwrap_or("").trim();
                let _ = writeln!(
                    s,
                    "- *{}*: {}\n",
                    k.replace('_', ", "),
                    text.replace('\n', " ")
                );
            }
        }
    }
    s
}

/// `report.html`, self-contained: curve SVGs are read from `dir` and inlined.
pub fn html(r: &Value, dir: &Path) -> String {
    let mut s = String::new();
    let title = format!(
        "Evaluation report — {}",
        r["pipeline"].as_str().unwrap_or("run")
    );
    let _ = write!(
        s,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}th{{background:#f4f4f4}}\
         .gen{{white-space:pre-wrap;background:#f8f8f8;padding:.5em;border-radius:4px}}</style></head><body>\
         <h1>{t}</h1><p>{intro}</p>\n",
        t = esc(&title),
        intro = esc(&intro(r))
    );
    s.push_str("<h2>Held-out agreement with the teacher</h2>\n");
    html_table(&mut s, HELDOUT_HEAD, &heldout_rows(r));
    let math = math_rows(r);
    if !math.is_empty() {
        s.push_str("<h2>Math accuracy (greedy, exact numeric answer)</h2>\n");
        html_table(&mut s, MATH_HEAD, &math);
    }
    let speed = speed_rows(r);
    if !speed.is_empty() {
        let _ = write!(
            s,
            "<h2>Generation speed and memory vs context</h2><p>{}</p>\n",
            esc(SPEED_NOTE)
        );
        html_table(&mut s, SPEED_HEAD, &speed);
    }
    if let Some(curves) = r["curves"].as_array().filter(|c| !c.is_empty()) {
        s.push_str("<h2>Training curves</h2>\n");
        for c in curves {
            let file = c["file"].as_str().unwrap_or("");
            let svg = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            let _ = write!(
                s,
                "<h3>{}</h3><div>{}</div>\n",
                esc(c["step"].as_str().unwrap_or("?")),
                svg
            );
        }
    }
    if let Some(gens) = r["generations"].as_array().filter(|g| !g.is_empty()) {
        s.push_str("<h2>Generations</h2>\n");
        for g in gens {
            let _ = write!(s, "<h3>{}</h3>", esc(g["prompt"].as_str().unwrap_or("")));
            for k in ["teacher_greedy", "student_greedy", "student_sampled"] {
                let _ = write!(
                    s,
                    "<p><b>{}</b></p><div class=\"gen\">{}</div>",
                    esc(&k.replace('_', ", ")),
                    esc(g[k].as_str().unwrap_or("").trim())
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
        let r = serde_json::json!({
            "pipeline": "demo", "teacher": "t", "student": "s", "student_description": "2 of 4",
            "heldout": {"batches": 2, "batch_size": 4, "teacher_perplexity": 10.0,
                "models": [{"name": "stage1", "perplexity": 12.0, "perplexity_ratio": 1.2, "kl": 0.3, "top1": 0.8}]},
            "math": {"teacher": {"correct": 1, "problems": 4, "accuracy": 0.25}},
            "grpo": [{"step": "grpo", "accuracy_before": {"correct": 0, "problems": 4, "accuracy": 0.0},
                      "accuracy_after": {"correct": 1, "problems": 4, "accuracy": 0.25}}],
            "speed": [{"context": 128, "teacher": {"decode_tok_s": 10.0, "state_mib": 1.0},
                       "student": {"decode_tok_s": 20.0, "state_mib": 0.5, "recurrent_mib": 0.25}}],
            "curves": [{"step": "stage1", "file": "curves/stage1.svg"}],
            "generations": [{"prompt": "Hi <b>", "teacher_greedy": "Hello", "student_greedy": "Hey", "student_sampled": "Yo"}],
        });
        let md = markdown(&r);
        assert!(
            md.contains("| stage1 | 12.000 | 1.200 | 0.3000 | 80.0% |"),
            "{md}"
        );
        assert!(md.contains("| grpo (after) | 1/4 | 25.0% |"));
        assert!(
            md.contains("| 128 | 10.0 | 20.0 | 2.00× | 1.00 | 0.50 (RWKV 0.25) |"),
            "{md}"
        );
        assert!(md.contains("![stage1](curves/stage1.svg)"));
        let page = html(&r, dir.path());
        assert!(page.contains("<svg id=\"c1\"></svg>"), "curves are inlined");
        assert!(page.contains("Hi &lt;b&gt;"), "text is escaped");
        // Without optional sections nothing is rendered for them.
        let bare = serde_json::json!({"heldout": {"teacher_perplexity": 3.0, "models": []}});
        let md = markdown(&bare);
        assert!(!md.contains("Math accuracy") && !md.contains("Training curves"));
    }
}
