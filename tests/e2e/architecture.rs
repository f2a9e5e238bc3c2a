//! The layering ARCHITECTURE.md promises, checked on the source itself: no import cycle
//! between sibling modules anywhere in a crate (the top-level modules of each crate, and the
//! modules inside each of them, e.g. `tunnel::control` and `tunnel::incoming`). Every path
//! that names another module is counted (`use crate::x`, `crate::x::f()`, `super::x`,
//! `super::super::x`, `self::x`, grouped use trees), not only `use crate::` lines; test
//! modules (`#[cfg(test)]`) are left out, as they may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under `src` (`tunnel/server.rs` -> ["tunnel", "server"],
/// `tunnel/mod.rs` -> ["tunnel"], `lib.rs` -> []).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts
        .last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        parts.pop();
    }
    parts
}

/// The file without its `#[cfg(test)]` items (from the attribute to the end: test modules
/// sit at the end of a file in this code base) and without comment lines.
fn non_test_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifier starting at `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The `a::b::c` segments starting at `s` (a group `{x, y::z}` ends them; see [`expand`]).
fn segments(s: &str) -> (Vec<String>, &str) {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let name = ident(rest);
        if name.is_empty() {
            return (out, rest);
        }
        out.push(name.to_string());
        rest = &rest[name.len()..];
        match rest.strip_prefix("::") {
            Some(r) if !r.starts_with('{') => rest = r,
            Some(r) => return (out, r),
            None => return (out, rest),
        }
    }
}

/// The paths a use tree names, from `base` on: `a::b`, or `a::{b, c::{d}}` expanded.
fn expand(base: &[String], s: &str, out: &mut Vec<Vec<String>>) {
    let (segs, rest) = segments(s);
    let mut path = base.to_vec();
    path.extend(segs);
    match rest.strip_prefix('{') {
        None => out.push(path),
        Some(group) => {
            // The group's items, split at the commas of this brace level.
            let (mut depth, mut start) = (0usize, 0usize);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        expand(&path, group[start..i].trim(), out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&path, group[start..i].trim(), out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The absolute module paths a file's code names through `crate::`, `super::` and
/// `self::` paths (whole use trees, grouped or not); `own` is the file's module path.
fn named_paths(code: &str, own: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue; // `nodepass_crate::`, or the tail of another path
        }
        expand(&[], &code[i + "crate::".len()..], &mut out);
    }
    for (i, _) in code.match_indices("super::") {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue; // counted with the first `super::` of the path
        }
        let mut after = &code[i..];
        let mut ups = 0;
        while let Some(a) = after.strip_prefix("super::") {
            ups += 1;
            after = a;
        }
        if ups <= own.len() {
            expand(&own[..own.len() - ups], after, &mut out);
        }
    }
    for (i, _) in code.match_indices("self::") {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        expand(own, &code[i + "self::".len()..], &mut out);
    }
    out
}

/// Edges between sibling modules, per parent module, of the crate whose sources are in
/// `src`: a file in module `a::b::x` naming `a::b::y::...` is an edge `x -> y` under `a::b`
/// (and a file in `a::x` naming `c::...` is an edge `a -> c` at the top).
fn module_graph(src: &Path) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files
        .iter()
        .map(|f| module_path(src, f))
        .flat_map(|p| (1..=p.len()).map(move |n| p[..n].to_vec()))
        .collect();
    let mut graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for f in &files {
        let own = module_path(src, f);
        if own.is_empty() {
            continue; // lib.rs / main.rs: the root may name every module
        }
        let text = std::fs::read_to_string(f).expect("read source");
        for path in named_paths(&non_test_code(&text), &own) {
            // The longest prefix of the path that is a module of this crate.
            let Some(target) = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p))
            else {
                continue;
            };
            let common = own.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common < own.len() && common < target.len() {
                graphs
                    .entry(own[..common].join("::"))
                    .or_default()
                    .entry(own[common].clone())
                    .or_default()
                    .insert(target[common].clone());
            }
        }
    }
    graphs
}

/// The cycles of a graph, each as its strongly connected component (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            let graph = self.graph;
            for w in graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    scc.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.found.push(scc);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.found
}

#[test]
fn the_checker_sees_crate_super_self_and_grouped_paths() {
    let own = vec!["metrics".to_string()];
    let code = "use super::state::Registry;\nuse crate::{events, model::{Instance, Target}};\nfn f() { crate::store::open(); nodepass_crate::x(); }";
    let got: BTreeSet<String> = named_paths(code, &own)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    let want: BTreeSet<String> = [
        "state::Registry",
        "events",
        "model::Instance",
        "model::Target",
        "store::open",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want);
    let own = vec!["tunnel".to_string(), "server".to_string()];
    let got = named_paths(
        "use super::control::{self, X};\nuse super::super::pool::Pool;",
        &own,
    );
    assert!(got.contains(&vec!["tunnel".into(), "control".into(), "self".into()]));
    assert!(got.contains(&vec!["pool".into(), "Pool".into()]));
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".to_string()]]);
}

#[test]
fn no_import_cycle_between_the_top_level_modules_of_a_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut report = Vec::new();
    for krate in ["proto", "worker", "master", "."] {
        let src = root.join(krate).join("src");
        let graphs = module_graph(&src);
        if krate != "." {
            assert!(
                !graphs.is_empty(),
                "{krate}: no module imports found; is the checker reading {}?",
                src.display()
            );
        }
        for (parent, graph) in &graphs {
            for cycle in cycles(graph) {
                let under = if parent.is_empty() { "crate" } else { parent };
                report.push(format!("{krate} ({under}): {}", cycle.join(" <-> ")));
            }
        }
    }
    assert!(
        report.is_empty(),
        "import cycles between top-level modules (break them with a trait or by moving the \
         shared item to a lower module):\n{}",
        report.join("\n")
    );
}
