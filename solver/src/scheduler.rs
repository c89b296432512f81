//! The DAG scheduler: every vertex starts as soon as its inputs are done, on a rayon
//! pool, so independent stages run at the same time. Pulls use the tokio runtime for
//! concurrent downloads.

use crate::session::{Done, Solver};
use crate::{ops, Error, Result};
use kiln_frontend::BuildGraph;
use petgraph::graph::NodeIndex;
use petgraph::Direction;
use std::collections::HashMap;
use std::sync::Mutex;

struct State {
    done: HashMap<NodeIndex, Done>,
    waiting: HashMap<NodeIndex, usize>,
    error: Option<Error>,
}

/// Runs every vertex of `g`; returns each vertex's key and result.
pub fn solve(s: &Solver, g: &BuildGraph) -> Result<HashMap<NodeIndex, Done>> {
    let dag = &g.dag;
    let waiting: HashMap<NodeIndex, usize> = dag
        .node_indices()
        .map(|n| (n, dag.neighbors_directed(n, Direction::Incoming).count()))
        .collect();
    let roots: Vec<NodeIndex> = waiting
        .iter()
        .filter(|(_, &c)| c == 0)
        .map(|(&n, _)| n)
        .collect();
    let state = Mutex::new(State {
        done: HashMap::new(),
        waiting,
        error: None,
    });
    // Vertices mostly wait on child processes and the network, so the pool is wider
    // than the core count; the CPU work happens in the helpers.
    let threads = dag.node_count().clamp(2, 16);
    // Stacks of 16 MiB (address space, touched only as used): the walks a vertex makes
    // recurse once per directory level, down to `MAX_TREE_DEPTH`.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(16 << 20)
        .build()
        .map_err(|e| Error::Scheduler(e.to_string()))?;
    pool.scope(|scope| {
        for r in roots {
            spawn(scope, s, g, &state, r);
        }
    });
    let st = state.into_inner().unwrap_or_else(|p| p.into_inner());
    // What was learned of the context stays useful even when a step failed.
    if let Err(e) = s.file_hashes.save(s.store()) {
        tracing::warn!("keeping the context's file digests: {e}");
    }
    if let Some(e) = st.error {
        return Err(e);
    }
    Ok(st.done)
}

fn spawn<'s>(
    scope: &rayon::Scope<'s>,
    s: &'s Solver,
    g: &'s BuildGraph,
    state: &'s Mutex<State>,
    n: NodeIndex,
) {
    scope.spawn(move |scope| {
        let inputs = {
            let st = state.lock().unwrap_or_else(|p| p.into_inner());
            if st.error.is_some() {
                return;
            }
            // Only this vertex's inputs (its parent and COPY source), not every result.
            g.dag
                .neighbors_directed(n, Direction::Incoming)
                .filter_map(|i| st.done.get(&i).map(|d| (i, d.clone())))
                .collect::<HashMap<_, _>>()
        };
        let result = ops::run_vertex(s, g, n, &inputs);
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(d) => {
                st.done.insert(n, d);
                let ready: Vec<NodeIndex> = g
                    .dag
                    .neighbors_directed(n, Direction::Outgoing)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .filter(|m| {
                        let c = st.waiting.get_mut(m).map(|c| {
                            *c -= 1;
                            *c
                        });
                        c == Some(0)
                    })
                    .collect();
                drop(st);
                for m in ready {
                    spawn(scope, s, g, state, m);
                }
            }
            Err(e) => {
                if st.error.is_none() {
                    st.error = Some(e);
                }
            }
        }
    });
}
