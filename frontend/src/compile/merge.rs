//! One graph for several target platforms: the per-platform graphs are merged so that
//! a vertex that is the same in each (the same operation on the same inputs, such as
//! a `FROM --platform=$BUILDPLATFORM` stage that does not use the target's args)
//! appears, and runs, once.

use super::{BuildGraph, CopyFrom, Op, Step};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::HashMap;

/// The merged graph, and for each input graph the map from its vertices to the merged
/// graph's.
pub struct Merged {
    pub dag: DiGraph<Step, ()>,
    pub maps: Vec<HashMap<NodeIndex, NodeIndex>>,
}

fn remap_from(f: &mut CopyFrom, map: &HashMap<NodeIndex, NodeIndex>) {
    if let CopyFrom::Step(n) = f {
        if let Some(m) = map.get(n) {
            *n = *m;
        }
    }
}

/// The operation with its vertex references rewritten into the merged graph.
fn remap(op: &Op, map: &HashMap<NodeIndex, NodeIndex>) -> Op {
    let mut op = op.clone();
    match &mut op {
        Op::Copy(c) => remap_from(&mut c.from, map),
        Op::Run(r) => {
            for m in &mut r.mounts {
                if let Some(f) = &mut m.from {
                    remap_from(f, map);
                }
            }
        }
        _ => {}
    }
    op
}

/// Merges `graphs`, sharing vertices whose operation and inputs are identical.
pub fn merge(graphs: &[BuildGraph]) -> Merged {
    let mut dag: DiGraph<Step, ()> = DiGraph::new();
    let mut by_identity: HashMap<String, NodeIndex> = HashMap::new();
    let mut maps = Vec::new();
    for g in graphs {
        let mut map: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        // Inputs first: the compiler adds a vertex after everything it reads.
        let order = petgraph::algo::toposort(&g.dag, None)
            .unwrap_or_else(|_| g.dag.node_indices().collect());
        for n in order {
            let step = &g.dag[n];
            let op = remap(&step.op, &map);
            let parent = step.parent.and_then(|p| map.get(&p).copied());
            let mut inputs: Vec<NodeIndex> = g
                .dag
                .neighbors_directed(n, petgraph::Direction::Incoming)
                .filter_map(|i| map.get(&i).copied())
                .collect();
            inputs.sort_unstable();
            inputs.dedup();
            let identity = format!(
                "{}|{:?}|{:?}",
                serde_json::to_string(&op).unwrap_or_default(),
                parent.map(|p| p.index()),
                inputs.iter().map(|i| i.index()).collect::<Vec<_>>()
            );
            let m = match by_identity.get(&identity) {
                Some(&m) => m,
                None => {
                    let m = dag.add_node(Step {
                        name: step.name.clone(),
                        line: step.line,
                        op,
                        parent,
                        no_cache: step.no_cache,
                    });
                    for &i in &inputs {
                        dag.add_edge(i, m, ());
                    }
                    by_identity.insert(identity, m);
                    m
                }
            };
            map.insert(n, m);
        }
        maps.push(map);
    }
    Merged { dag, maps }
}
