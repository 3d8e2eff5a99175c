//! The step graph as text: an indented list, Graphviz DOT, or Mermaid.

use super::graph::StepGraph;
use super::schema::Pipeline;
use std::fmt::Write;

/// One line per step in topological order, with its depth and dependencies.
pub fn ascii(p: &Pipeline, g: &StepGraph) -> String {
    let order = g.topo_order();
    let mut depth = vec![0usize; p.steps.len()];
    for &i in &order {
        depth[i] = g.deps(i).iter().map(|&d| depth[d] + 1).max().unwrap_or(0);
    }
    let width = p
        .steps
        .iter()
        .map(|s| s.id.len() + 2 * depth[p.step_index(&s.id).unwrap()])
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for &i in &order {
        let s = &p.steps[i];
        let name = format!("{}{}", "  ".repeat(depth[i]), s.id);
        let deps: Vec<&str> = g.deps(i).iter().map(|&d| p.steps[d].id.as_str()).collect();
        let after = if deps.is_empty() {
            String::new()
        } else {
            format!("  <- {}", deps.join(", "))
        };
        let _ = writeln!(out, "{name:<width$}  [{}]{after}", s.kind());
    }
    out
}

pub fn dot(p: &Pipeline, g: &StepGraph) -> String {
    let mut out = format!("digraph \"{}\" {{\n  rankdir=LR;\n", p.name);
    for s in &p.steps {
        let _ = writeln!(out, "  \"{}\" [label=\"{}\\n({})\"];", s.id, s.id, s.kind());
    }
    for (i, s) in p.steps.iter().enumerate() {
        for d in g.deps(i) {
            let _ = writeln!(out, "  \"{}\" -> \"{}\";", p.steps[d].id, s.id);
        }
    }
    out.push_str("}\n");
    out
}

pub fn mermaid(p: &Pipeline, g: &StepGraph) -> String {
    let node = |id: &str| id.replace('-', "_");
    let mut out = String::from("flowchart LR\n");
    for s in &p.steps {
        let _ = writeln!(out, "  {}[\"{} ({})\"]", node(&s.id), s.id, s.kind());
    }
    for (i, s) in p.steps.iter().enumerate() {
        for d in g.deps(i) {
            let _ = writeln!(out, "  {} --> {}", node(&p.steps[d].id), node(&s.id));
        }
    }
    out
}
