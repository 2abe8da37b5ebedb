//! The top-level module graph of `src/`: which module names which through `crate::` paths,
//! its cycles, and the imports that run up the layers.

use std::collections::{BTreeMap, BTreeSet};

use super::source::SourceFile;

/// Layers from the top (nearest the client) down: (name, modules).
pub type Layers = &'static [(&'static str, &'static [&'static str])];

/// Module → module → the files (with line numbers) where the first names the second.
pub struct Graph {
    edges: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    modules: BTreeSet<String>,
}

impl Graph {
    /// Reads every `crate::x` and `crate::{x, y}` reference in the files.
    pub fn read(files: &[SourceFile]) -> Graph {
        let mut graph = Graph {
            edges: BTreeMap::new(),
            modules: BTreeSet::new(),
        };
        for file in files {
            let Some(from) = &file.module else { continue };
            graph.modules.insert(from.clone());
            let text = file.code.join("\n");
            for (to, offset) in referenced_modules(&text) {
                if &to != from {
                    let line = text[..offset].matches('\n').count() + 1;
                    graph.add(from, &to, format!("{}:{line}", file.path));
                }
            }
        }
        graph
    }

    fn add(&mut self, from: &str, to: &str, at: String) {
        let sites = self
            .edges
            .entry(from.to_string())
            .or_default()
            .entry(to.to_string())
            .or_default();
        sites.push(at);
    }

    fn targets(&self, from: &str) -> impl Iterator<Item = &String> {
        self.edges.get(from).into_iter().flat_map(|m| m.keys())
    }

    fn sites(&self, from: &str, to: &str) -> String {
        let sites = &self.edges[from][to];
        let more = sites.len().saturating_sub(3);
        let shown = sites.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        if more > 0 {
            format!("{shown} (+{more} more)")
        } else {
            shown
        }
    }

    /// Each cycle (a strongly connected set of two or more modules), with its edges.
    pub fn cycles(&self) -> Vec<String> {
        let mut out = Vec::new();
        for component in self.strongly_connected() {
            if component.len() < 2 {
                continue;
            }
            let mut text = format!("cycle: {}", component.join(" ↔ "));
            for from in &component {
                for to in self.targets(from).filter(|t| component.contains(t)) {
                    text += &format!("\n    {from} -> {to}: {}", self.sites(from, to));
                }
            }
            out.push(text);
        }
        out
    }

    /// Modules whose files exist but that no layer names.
    pub fn unplaced(&self, layers: Layers) -> Vec<String> {
        self.modules
            .iter()
            .filter(|m| layer_of(layers, m).is_none())
            .cloned()
            .collect()
    }

    /// (from, to, description) for every import from a lower layer to a higher one.
    pub fn upward(&self, layers: Layers) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (from, targets) in &self.edges {
            let Some(low) = layer_of(layers, from) else {
                continue;
            };
            for to in targets.keys() {
                let Some(high) = layer_of(layers, to) else {
                    continue;
                };
                if high < low {
                    let text = format!(
                        "    {from} ({}) -> {to} ({}): {}",
                        layers[low].0,
                        layers[high].0,
                        self.sites(from, to)
                    );
                    out.push((from.clone(), to.clone(), text));
                }
            }
        }
        out
    }

    /// Tarjan's algorithm over the module graph.
    fn strongly_connected(&self) -> Vec<Vec<String>> {
        let mut state = Tarjan::default();
        for m in &self.modules {
            if !state.index.contains_key(m) {
                state.visit(self, m);
            }
        }
        state.components
    }
}

#[derive(Default)]
struct Tarjan {
    next: usize,
    index: BTreeMap<String, usize>,
    low: BTreeMap<String, usize>,
    stack: Vec<String>,
    on_stack: BTreeSet<String>,
    components: Vec<Vec<String>>,
}

impl Tarjan {
    fn visit(&mut self, graph: &Graph, m: &str) {
        self.index.insert(m.to_string(), self.next);
        self.low.insert(m.to_string(), self.next);
        self.next += 1;
        self.stack.push(m.to_string());
        self.on_stack.insert(m.to_string());
        for to in graph.targets(m) {
            if !self.index.contains_key(to) {
                self.visit(graph, to);
                let low = self.low[m].min(self.low[to]);
                self.low.insert(m.to_string(), low);
            } else if self.on_stack.contains(to) {
                let low = self.low[m].min(self.index[to]);
                self.low.insert(m.to_string(), low);
            }
        }
        if self.low[m] == self.index[m] {
            let mut component = Vec::new();
            while let Some(top) = self.stack.pop() {
                self.on_stack.remove(&top);
                let done = top == m;
                component.push(top);
                if done {
                    break;
                }
            }
            component.sort();
            self.components.push(component);
        }
    }
}

fn layer_of(layers: Layers, module: &str) -> Option<usize> {
    layers.iter().position(|(_, ms)| ms.contains(&module))
}

/// The top-level modules a text names, with where: `crate::x::…` and each top-level item
/// of `crate::{x, y::{z, w}}` (which rustfmt may spread over several lines).
fn referenced_modules(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        let preceded = text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        if preceded {
            continue; // `$crate::` or `other_crate::`
        }
        match rest.strip_prefix('{') {
            Some(group) => out.extend(group_items(group).into_iter().map(|m| (m, i))),
            None => out.extend(ident(rest).map(|m| (m, i))),
        }
    }
    out
}

/// The first identifier of each top-level item of a `{…}` group (after its `{`).
fn group_items(group: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.extend(ident(group[start..i].trim()));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.extend(ident(group[start..i].trim()));
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

fn ident(text: &str) -> Option<String> {
    let name: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty() && name != "self").then_some(name)
}
