//! The step graph: a petgraph DAG whose node `i` is step `i`, with edges from a dependency to
//! the step that depends on it. Pure structure, no knowledge of what steps do.

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::BTreeSet;

#[derive(Debug, Clone)]
pub struct StepGraph {
    pub graph: DiGraph<usize, ()>,
}

impl StepGraph {
    /// Builds the graph from each node's dependency list (indices). Node `i` is step `i`.
    pub fn from_deps(deps: &[Vec<usize>]) -> Self {
        let mut graph = DiGraph::new();
        for i in 0..deps.len() {
            graph.add_node(i);
        }
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                graph.add_edge(NodeIndex::new(d), NodeIndex::new(i), ());
            }
        }
        StepGraph { graph }
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Direct dependencies of `i`, ascending.
    pub fn deps(&self, i: usize) -> Vec<usize> {
        self.neighbors(i, Direction::Incoming)
    }

    /// Steps that depend directly on `i`, ascending.
    pub fn dependents(&self, i: usize) -> Vec<usize> {
        self.neighbors(i, Direction::Outgoing)
    }

    fn neighbors(&self, i: usize, dir: Direction) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(i), dir)
            .map(|n| n.index())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// `i` and everything it transitively depends on.
    pub fn ancestors(&self, i: usize) -> BTreeSet<usize> {
        self.closure(i, Direction::Incoming)
    }

    /// `i` and everything that transitively depends on it.
    pub fn descendants(&self, i: usize) -> BTreeSet<usize> {
        self.closure(i, Direction::Outgoing)
    }

    fn closure(&self, i: usize, dir: Direction) -> BTreeSet<usize> {
        let mut seen = BTreeSet::from([i]);
        let mut stack = vec![i];
        while let Some(n) = stack.pop() {
            for m in self.neighbors(n, dir) {
                if seen.insert(m) {
                    stack.push(m);
                }
            }
        }
        seen
    }

    /// A dependency cycle, if any, as `[a, b, ..., a]` where each node depends on the next.
    pub fn find_cycle(&self) -> Option<Vec<usize>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnStack,
            Done,
        }
        let n = self.len();
        let mut mark = vec![Mark::New; n];
        for start in 0..n {
            if mark[start] != Mark::New {
                continue;
            }
            // Iterative DFS along "depends on" edges, keeping the current path.
            let mut path: Vec<(usize, Vec<usize>)> = vec![(start, self.deps(start))];
            mark[start] = Mark::OnStack;
            while let Some((node, pending)) = path.last_mut() {
                let node = *node;
                match pending.pop() {
                    Some(next) if mark[next] == Mark::OnStack => {
                        let from = path.iter().position(|(p, _)| *p == next).expect("on stack");
                        let mut cycle: Vec<usize> = path[from..].iter().map(|(p, _)| *p).collect();
                        cycle.push(next);
                        return Some(cycle);
                    }
                    Some(next) if mark[next] == Mark::New => {
                        mark[next] = Mark::OnStack;
                        path.push((next, self.deps(next)));
                    }
                    Some(_) => {}
                    None => {
                        mark[node] = Mark::Done;
                        path.pop();
                    }
                }
            }
        }
        None
    }

    /// A topological order that keeps declaration order among independent steps.
    /// Panics on a cycle (validation rejects those first).
    pub fn topo_order(&self) -> Vec<usize> {
        let n = self.len();
        let mut remaining: Vec<usize> = (0..n).map(|i| self.deps(i).len()).collect();
        let mut ready: BTreeSet<usize> = (0..n).filter(|&i| remaining[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for d in self.dependents(i) {
                remaining[d] -= 1;
                if remaining[d] == 0 {
                    ready.insert(d);
                }
            }
        }
        assert_eq!(order.len(), n, "topo_order on a cyclic graph");
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_loop() {
        // 0 <- 1 <- 2 <- 1 (1 and 2 depend on each other), 3 independent
        let g = StepGraph::from_deps(&[vec![], vec![0, 2], vec![1], vec![]]);
        let c = g.find_cycle().unwrap();
        assert_eq!(c.first(), c.last());
        assert_eq!(c.len(), 3);
        assert!(c.contains(&1) && c.contains(&2));
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let g = StepGraph::from_deps(&[vec![0]]);
        assert_eq!(g.find_cycle(), Some(vec![0, 0]));
    }

    #[test]
    fn topo_order_and_closures() {
        // diamond: 0 -> {1, 2} -> 3, plus 4 alone
        let g = StepGraph::from_deps(&[vec![], vec![0], vec![0], vec![1, 2], vec![]]);
        assert!(g.find_cycle().is_none());
        assert_eq!(g.topo_order(), vec![0, 1, 2, 3, 4]);
        assert_eq!(g.ancestors(3), BTreeSet::from([0, 1, 2, 3]));
        assert_eq!(g.descendants(1), BTreeSet::from([1, 3]));
    }
}
