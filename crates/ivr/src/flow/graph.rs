//! Checks on the flow as a graph, once every node decoded: references to
//! unknown nodes, unreachable nodes (a warning), and loops that never wait
//! for the caller (an error: such a flow would spin or repeat forever
//! without the caller being able to do anything).

use super::decode::Decoder;
use super::*;
use std::collections::BTreeSet;

pub(super) fn check(flow: &Flow, d: &mut Decoder) {
    for r in std::mem::take(&mut d.refs) {
        if !flow.nodes.contains_key(&r.target) {
            d.err(r.pos, format!("{}: unknown node \"{}\"", r.from, r.target));
        }
    }
    if !d.errors.is_empty() {
        return;
    }
    let mut reached = BTreeSet::new();
    let mut todo: Vec<&str> = vec![flow.start.as_str()];
    todo.extend(flow.on_error.as_deref());
    while let Some(n) = todo.pop() {
        if reached.insert(n.to_string())
            && let Some(node) = flow.nodes.get(n)
        {
            todo.extend(successors(node, true));
        }
    }
    for (name, pos) in &d.node_pos.clone() {
        if !reached.contains(name) {
            d.warn(*pos, format!("node \"{name}\" is never reached"));
        }
    }
    // Cycles through nodes that never wait for input.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1: on the path, 2: done
    let mut reported = false;
    for name in flow.nodes.keys() {
        if !reported {
            reported = dfs(flow, name, &mut state, d);
        }
    }
}

/// Depth-first over nodes without input; true once a cycle was reported.
fn dfs<'a>(
    flow: &'a Flow,
    name: &'a str,
    state: &mut BTreeMap<&'a str, u8>,
    d: &mut Decoder,
) -> bool {
    match state.get(name) {
        Some(2) => return false,
        Some(_) => {
            let pos = d.node_pos.get(name).copied().unwrap_or_default();
            d.err(
                pos,
                format!(
                    "node \"{name}\" is on a loop that never waits for the caller (add a menu or gather on the way)"
                ),
            );
            return true;
        }
        None => {}
    }
    let Some(node) = flow.nodes.get(name) else {
        return false;
    };
    state.insert(name, 1);
    for next in successors(node, false) {
        if dfs(flow, next, state, d) {
            return true;
        }
    }
    state.insert(name, 2);
    false
}

/// The nodes `node` can go to; with `through_input` false, none for steps
/// that wait for the caller (menu, gather, record) or leave the flow.
pub(super) fn successors(node: &Node, through_input: bool) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    match &node.step {
        Step::Continue { next } | Step::Sms { next, .. } => out.extend(next.as_deref()),
        Step::Branch(rules) => out.extend(rules.iter().map(|r| r.next.as_str())),
        Step::Hangup | Step::Queue(_) | Step::Transfer(_) => {}
        _ if !through_input => {}
        Step::Record { next, .. } => out.extend(next.as_deref()),
        Step::Webhook(w) => out.extend(w.on_error.as_deref()),
        Step::Collect(c) => {
            if let CollectKind::Menu { options } = &c.kind {
                out.extend(options.values().map(String::as_str));
            }
            if let CollectKind::Gather { next, .. } = &c.kind {
                out.push(next);
            }
            out.extend(c.exhausted.as_deref());
            out.extend(c.invalid.next.as_deref());
            out.extend(c.no_input.next.as_deref());
        }
    }
    out
}
