//! A dependency-ordered work queue over a [`StepGraph`], knowing nothing about what nodes do
//! (like cargo's `DependencyQueue`). The executor asks it which node may start, reports how
//! each ended, and stops it on a failure; it never blocks and never spawns anything.
//!
//! Rules: a node may start when all its dependencies succeeded; independent nodes run side by
//! side up to `max_parallel`; an *exclusive* node runs alone; after [`Scheduler::stop`] nothing
//! new starts, and running nodes are left to finish.

use super::graph::StepGraph;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Waiting,
    Running,
    Succeeded,
    Failed,
    /// Not run because a dependency failed or the queue was stopped.
    Skipped,
}

#[derive(Debug)]
pub struct Scheduler {
    graph: StepGraph,
    state: Vec<NodeState>,
    unmet: Vec<usize>,
    exclusive: Vec<bool>,
    max_parallel: usize,
    ready: BTreeSet<usize>,
    running: BTreeSet<usize>,
    stopped: bool,
}

impl Scheduler {
    pub fn new(graph: StepGraph, exclusive: Vec<bool>, max_parallel: usize) -> Self {
        let n = graph.len();
        assert_eq!(exclusive.len(), n);
        let unmet: Vec<usize> = (0..n).map(|i| graph.deps(i).len()).collect();
        let ready = (0..n).filter(|&i| unmet[i] == 0).collect();
        Scheduler {
            graph,
            state: vec![NodeState::Waiting; n],
            unmet,
            exclusive,
            max_parallel: max_parallel.max(1),
            ready,
            running: BTreeSet::new(),
            stopped: false,
        }
    }

    /// The next node that may start now (lowest index first), marked running.
    pub fn next(&mut self) -> Option<usize> {
        if self.stopped {
            return None;
        }
        let exclusive_running = self.running.iter().any(|&r| self.exclusive[r]);
        if exclusive_running || self.running.len() >= self.max_parallel {
            return None;
        }
        // Lowest index first; an exclusive node waits for the running ones to drain rather than
        // being overtaken (so it cannot starve).
        let pick = self.ready.first().copied()?;
        if self.exclusive[pick] && !self.running.is_empty() {
            return None;
        }
        self.ready.remove(&pick);
        self.running.insert(pick);
        self.state[pick] = NodeState::Running;
        Some(pick)
    }

    /// Reports how a running node ended. A failure skips everything that depends on it.
    pub fn finish(&mut self, node: usize, ok: bool) {
        assert!(self.running.remove(&node), "node {node} was not running");
        if ok {
            self.state[node] = NodeState::Succeeded;
            for d in self.graph.dependents(node) {
                self.unmet[d] -= 1;
                if self.unmet[d] == 0 && self.state[d] == NodeState::Waiting {
                    self.ready.insert(d);
                }
            }
        } else {
            self.state[node] = NodeState::Failed;
            for d in self.graph.descendants(node) {
                if d != node && self.state[d] == NodeState::Waiting {
                    self.state[d] = NodeState::Skipped;
                    self.ready.remove(&d);
                }
            }
        }
    }

    /// Starts nothing new from now on; waiting nodes end as skipped.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Nothing is running and nothing more will start.
    pub fn is_finished(&self) -> bool {
        self.running.is_empty() && (self.stopped || self.ready.is_empty())
    }

    pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
        self.running.iter().copied()
    }

    /// Final states; waiting nodes of a stopped queue are reported as skipped.
    pub fn states(&self) -> Vec<NodeState> {
        self.state
            .iter()
            .map(|s| {
                if *s == NodeState::Waiting {
                    NodeState::Skipped
                } else {
                    *s
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the queue to the end, failing the nodes in `fail`; returns start order (in batches).
    fn drive(
        deps: &[Vec<usize>],
        exclusive: &[bool],
        max: usize,
        fail: &[usize],
    ) -> (Vec<Vec<usize>>, Vec<NodeState>) {
        let mut s = Scheduler::new(StepGraph::from_deps(deps), exclusive.to_vec(), max);
        let mut batches = Vec::new();
        while !s.is_finished() {
            let mut batch = Vec::new();
            while let Some(n) = s.next() {
                batch.push(n);
            }
            for &n in &batch {
                let ok = !fail.contains(&n);
                s.finish(n, ok);
                if !ok {
                    s.stop();
                }
            }
            batches.push(batch);
        }
        (batches, s.states())
    }

    #[test]
    fn runs_in_dependency_order_with_parallelism() {
        // diamond 0 -> {1,2} -> 3
        let (b, st) = drive(&[vec![], vec![0], vec![0], vec![1, 2]], &[false; 4], 2, &[]);
        assert_eq!(b, vec![vec![0], vec![1, 2], vec![3]]);
        assert!(st.iter().all(|s| *s == NodeState::Succeeded));
    }

    #[test]
    fn max_parallel_one_is_sequential() {
        let (b, _) = drive(&[vec![], vec![], vec![]], &[false; 3], 1, &[]);
        assert_eq!(b, vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn exclusive_nodes_run_alone() {
        let (b, _) = drive(&[vec![], vec![], vec![]], &[false, true, false], 3, &[]);
        assert_eq!(b, vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn failure_skips_dependents_and_stops_new_work() {
        // 0 fails; 1 depends on 0; 2 is independent but starts only after the failure batch.
        let (b, st) = drive(&[vec![], vec![0], vec![]], &[false; 3], 1, &[0]);
        assert_eq!(b, vec![vec![0]]);
        assert_eq!(
            st,
            vec![NodeState::Failed, NodeState::Skipped, NodeState::Skipped]
        );
    }

    #[test]
    fn running_siblings_finish_after_a_failure() {
        let mut s = Scheduler::new(
            StepGraph::from_deps(&[vec![], vec![], vec![0]]),
            vec![false; 3],
            2,
        );
        assert_eq!(s.next(), Some(0));
        assert_eq!(s.next(), Some(1));
        s.finish(0, false);
        s.stop();
        assert!(!s.is_finished());
        assert_eq!(s.next(), None);
        s.finish(1, true);
        assert!(s.is_finished());
        assert_eq!(
            s.states(),
            vec![NodeState::Failed, NodeState::Succeeded, NodeState::Skipped]
        );
    }
}
