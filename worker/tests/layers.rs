//! The worker's modules import one another in layers (docs/design.md §3): no module reaches,
//! through any chain of `use` paths, back to itself. This reads every source file of the
//! worker, resolves each `crate::…` and `super::…` path to the module file it names, and
//! fails naming the circle if there is one. Test modules are left out: a test may reach
//! anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `a::b` for `src/a/b.rs` or `src/a/b/mod.rs`; the crate root is the empty path.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            // `src/bin` holds separate programs, not modules of the library.
            if path.file_name().is_some_and(|n| n != "bin") {
                sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "main.rs") {
            out.push(path);
        }
    }
}

/// The paths a `use` tree stands for: `a::{b, c::d, self}` gives `a::b`, `a::c::d`, `a`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else { return vec![tree.to_owned()] };
    let prefix = tree[..open].trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .flat_map(|item| expand(item).into_iter().map(|rest| if rest == "self" { prefix.to_owned() } else { format!("{prefix}::{rest}") }))
        .collect()
}

/// Every `crate::`/`super::` path that the non-test code of `text` names (comments, which
/// may link anywhere, left out).
fn paths(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let code: String = code.lines().map(|line| line.find("//").map_or(line, |at| &line[..at])).collect::<Vec<_>>().join("\n");
    let mut found = Vec::new();
    // `use` statements, which rustfmt may spread over several lines.
    for statement in code.split(';') {
        let Some(at) = statement.find("use ") else { continue };
        let head = statement[..at].trim();
        if !(head.is_empty() || head.ends_with('}') || head.ends_with(']') || head.ends_with("pub") || head.ends_with("pub(crate)")) {
            continue;
        }
        found.extend(expand(&statement[at + 4..]).into_iter().filter(|p| p.starts_with("crate::") || p.starts_with("super::")));
    }
    // Paths written out in the code (`crate::artifacts::read_tensors(…)`); a path that goes
    // on into braces is a `use` tree, read above.
    for (at, _) in code.match_indices("crate::").chain(code.match_indices("super::")) {
        let path: String = code[at..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        if !path.ends_with("::") {
            found.push(path);
        }
    }
    found
}

/// The module a path names: the longest known module it starts with.
fn resolve(from: &[String], path: &str, modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    let mut base: Vec<String> = match parts.first() {
        Some(&"crate") => Vec::new(),
        Some(&"super") => {
            // `super` of `a/b.rs` is `a`; of `a/b/mod.rs` (module `a::b`) it is `a` too.
            let mut parent = from.to_vec();
            parent.pop();
            parent
        }
        _ => return None,
    };
    parts.remove(0);
    while parts.first() == Some(&"super") {
        base.pop();
        parts.remove(0);
    }
    let mut best = base.clone();
    for part in parts {
        base.push(part.to_owned());
        if modules.contains(&base) {
            best = base.clone();
        }
    }
    Some(best)
}

#[test]
fn the_worker_has_no_import_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(f.strip_prefix(&src).expect("under src"))).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in &files {
        let from = module_of(file.strip_prefix(&src).expect("under src"));
        let text = std::fs::read_to_string(file).expect("readable source");
        for path in paths(&text) {
            if let Some(to) = resolve(&from, &path, &modules) {
                // A module's own items, and its ancestors' declarations of it, are no edge.
                if to != from && !to.is_empty() {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    assert!(edges.len() > 20, "the reader found the worker's imports: {} modules import", edges.len());
    assert!(edges.get(&vec!["train".to_owned(), "round".to_owned()]).is_some_and(|e| e.contains(&vec!["error".to_owned()])), "round imports the task error");

    // Depth-first search for a back edge; the circle is the stack from its target.
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            return Some(stack[at..].to_vec());
        }
        if !done.insert(node.clone()) {
            return None;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, stack, done) {
                return Some(circle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in &modules {
        if let Some(circle) = visit(module, &edges, &mut Vec::new(), &mut done) {
            let names: Vec<String> = circle.iter().map(|m| if m.is_empty() { "crate".to_owned() } else { m.join("::") }).collect();
            panic!("import circle: {} -> {}", names.join(" -> "), names[0]);
        }
    }
}
