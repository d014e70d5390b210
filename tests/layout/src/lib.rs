//! The source layout rules the maintainers asked for (issue #15), checked on every `lint` stage:
//! - no crate among `shared`, `filters`, `worker`, `cli` and `xtask` has a cycle between its top-level modules
//!   (a module is `src/<name>.rs` or everything under `src/<name>/`; it uses another when its code names
//!   `crate::<other>`, in a path or a `use crate::{...}` group; the crate root is not a module here);
//! - no file of an adapter (`filters/src`, `worker/src`) is longer than [`MAX_ADAPTER_LINES`] lines;
//! - no adapter declares a numeric `const` or `static` outside `#[cfg(test)]` items: caps, timeouts, back-off
//!   and pacing values are the core's (`shared/src/host.rs` and the module each rule belongs to), so both
//!   adapters read one value with one reason.
//!
//! Comments, strings and character literals are skipped, so a doc link or a message naming `crate::x` is no
//! use of `x`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The longest an adapter's source file may be: an adapter gathers, drives the core and renders, no more.
pub const MAX_ADAPTER_LINES: usize = 600;

/// Which top-level modules each module of one crate uses.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// `text` without comments and without the contents of string and character literals (kept as `""`).
pub fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = at(i);
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && at(i) != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0usize;
            while i < chars.len() {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth = depth.saturating_sub(1);
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r'
            && (at(i + 1) == '"' || (at(i + 1) == '#' && matches!(at(i + 2), '#' | '"')))
            && !at(i.wrapping_sub(1)).is_alphanumeric()
            && at(i.wrapping_sub(1)) != '_'
        {
            // Raw string: r"...", r#"..."#, ...
            let mut j = i + 1;
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if at(j) == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && at(j) != '"' {
                j += if at(j) == '\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i = j + 1;
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{..}') or a lifetime ('a): only the literal is skipped.
            if at(i + 1) == '\\' {
                let mut j = i + 2;
                while j < chars.len() && at(j) != '\'' {
                    j += 1;
                }
                out.push_str("' '");
                i = j + 1;
            } else if at(i + 2) == '\'' {
                out.push_str("' '");
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The first path segment after every `crate::` in `code` (already [`code_only`]), with each member of a
/// `crate::{...}` group.
pub fn crate_references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest.get(..at).and_then(|b| b.chars().last());
        rest = rest.get(at + "crate::".len()..).unwrap_or("");
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `foo_crate::` (a `$crate::` path in a macro is a use)
        }
        let tail = rest.trim_start();
        if let Some(group) = tail.strip_prefix('{') {
            // Members at depth 1 of the group: the first identifier of each comma-separated entry.
            let mut depth = 1usize;
            let mut entry = String::new();
            let mut entries = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => entries.push(std::mem::take(&mut entry)),
                    _ if depth == 1 => entry.push(c),
                    _ => {}
                }
            }
            entries.push(entry);
            out.extend(entries.iter().filter_map(|e| identifier(e)));
        } else if let Some(name) = identifier(tail) {
            out.insert(name);
        }
    }
    out
}

fn identifier(text: &str) -> Option<String> {
    let name: String = text
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Every `.rs` file under `dir`, sorted.
pub fn rust_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The module graph of the crate whose sources are under `src`.
pub fn module_graph(src: &Path) -> io::Result<Graph> {
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for path in rust_files(src)? {
        let Ok(relative) = path.strip_prefix(src) else {
            continue;
        };
        let mut parts = relative.components();
        let first = parts
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_root = parts.next().is_none() && (first == "lib.rs" || first == "main.rs");
        // `src/bin/*` are crates of their own, not modules.
        if is_root || first == "bin" {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_string();
        files.entry(module).or_default().push(path);
    }
    let mut graph = Graph::new();
    for (module, paths) in &files {
        let uses = graph.entry(module.clone()).or_default();
        for path in paths {
            let code = code_only(&fs::read_to_string(path)?);
            uses.extend(
                crate_references(&code)
                    .into_iter()
                    .filter(|m| m != module && files.contains_key(m)),
            );
        }
    }
    Ok(graph)
}

/// The primitive number types: a `const` or `static` of one of these (or an array of one) is a number.
const NUMBER_TYPES: [&str; 14] = [
    "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize", "f32",
    "f64",
];

/// `code` (already [`code_only`]) without the items marked `#[cfg(test)]`: each such attribute and the item
/// after it, up to its `;` or through its matching `}`.
pub fn without_test_items(code: &str) -> String {
    const ATTRIBUTE: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find(ATTRIBUTE) {
        out.push_str(rest.get(..at).unwrap_or(""));
        let item = rest.get(at + ATTRIBUTE.len()..).unwrap_or("");
        let mut depth = 0usize;
        let mut end = item.len();
        for (i, c) in item.char_indices() {
            match c {
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = item.get(end..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// The names of the `const` and `static` items of `code` (already [`code_only`]) whose type is a number or
/// an array of numbers (`const fn`, `const { .. }` blocks and string or byte-string constants are not).
pub fn numeric_constants(code: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    for keyword in ["const", "static"] {
        let mut offset = 0;
        while let Some(found) = code.get(offset..).and_then(|r| r.find(keyword)) {
            let at = offset + found;
            offset = at + keyword.len();
            let before = code.get(..at).and_then(|b| b.chars().last());
            let after = code.get(offset..).unwrap_or("");
            if before.is_some_and(is_ident) || !after.starts_with(char::is_whitespace) {
                continue; // part of another word, or `const{`
            }
            let after = after.trim_start();
            let after = after.strip_prefix("mut ").unwrap_or(after).trim_start();
            let name: String = after.chars().take_while(|c| is_ident(*c)).collect();
            let Some(declared) = after.get(name.len()..).map(str::trim_start) else {
                continue;
            };
            let Some(typed) = declared.strip_prefix(':') else {
                continue; // `const fn`, a const generic's use, ...
            };
            let ty: String = typed
                .chars()
                .take_while(|c| *c != '=' && *c != ';')
                .filter(|c| !c.is_whitespace())
                .collect();
            let element = ty
                .strip_prefix('[')
                .and_then(|t| t.split(';').next())
                .unwrap_or(&ty);
            if NUMBER_TYPES.contains(&element) {
                out.push(name);
            }
        }
    }
    out
}

/// One cycle of `graph` (its modules in order, the first repeated at the end), if there is one.
pub fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        graph: &Graph,
        node: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node)?;
                let mut cycle: Vec<String> = path.get(start..)?.to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(graph, next, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut marks, &mut Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workspace root (this crate is `tests/layout`).
    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[test]
    fn no_crate_has_a_module_cycle() {
        for krate in ["shared", "filters", "worker", "cli", "xtask"] {
            let graph = module_graph(&root().join(krate).join("src")).unwrap();
            assert!(!graph.is_empty(), "{krate}: no modules found");
            if let Some(cycle) = find_cycle(&graph) {
                panic!("{krate}/src: module cycle {}", cycle.join(" -> "));
            }
        }
    }

    #[test]
    fn adapter_files_are_short() {
        let mut long = Vec::new();
        for adapter in ["filters", "worker"] {
            for path in rust_files(&root().join(adapter).join("src")).unwrap() {
                let lines = fs::read_to_string(&path).unwrap().lines().count();
                if lines > MAX_ADAPTER_LINES {
                    long.push(format!("{} ({lines} lines)", path.display()));
                }
            }
        }
        assert!(
            long.is_empty(),
            "adapter files over {MAX_ADAPTER_LINES} lines: {long:?}"
        );
    }

    #[test]
    fn adapters_declare_no_numbers() {
        let mut found = Vec::new();
        for adapter in ["filters", "worker"] {
            for path in rust_files(&root().join(adapter).join("src")).unwrap() {
                let code = without_test_items(&code_only(&fs::read_to_string(&path).unwrap()));
                for name in numeric_constants(&code) {
                    found.push(format!("{}: {name}", path.display()));
                }
            }
        }
        assert!(
            found.is_empty(),
            "numeric constants in an adapter (caps, timeouts, pacing belong to the core, shared/src/host.rs): \
             {found:?}"
        );
    }

    #[test]
    fn numeric_constants_are_found_outside_test_items_only() {
        let code = code_only(
            r##"
            pub const TICK_MS: u64 = 500;
            pub(crate) const  SPINS : u32 = 1;
            static mut COUNT: usize = 0;
            const TABLE: [u8; 4] = [0; 4];
            pub const NAME: &str = "x"; const TAG: &[u8] = b"H"; const K: Key = Key(1);
            pub const fn f() -> u64 { 1 }
            thread_local! { static CELL: RefCell<u64> = const { RefCell::new(0) }; }
            // const COMMENTED: u64 = 1;
            #[cfg(test)]
            const ONLY_TESTS: u64 = 1;
            #[cfg(test)]
            mod tests { const INNER: u64 = 2; fn g() { let _ = { 1 }; } }
            const AFTER: i64 = -1;
            "##,
        );
        assert_eq!(
            numeric_constants(&without_test_items(&code)),
            ["TICK_MS", "SPINS", "TABLE", "AFTER", "COUNT"]
        );
    }

    #[test]
    fn references_are_read_from_paths_and_groups_not_comments_or_strings() {
        let code = code_only(
            r##"
            use crate::a::X;
            use crate::{b, c::{D, E}, d as dd};
            // use crate::commented;
            /* crate::blocked */
            let s = "crate::quoted"; let r = r#"crate::raw"#; let q = '"';
            let t = crate::e::f(); $crate::g::h!(); my_crate::other;
            "##,
        );
        let refs: Vec<String> = crate_references(&code).into_iter().collect();
        assert_eq!(refs, ["a", "b", "c", "d", "e", "g"]);
    }

    #[test]
    fn a_cycle_is_found_and_a_chain_is_not() {
        let graph = |edges: &[(&str, &str)]| {
            let mut g = Graph::new();
            for (from, to) in edges {
                g.entry(from.to_string())
                    .or_default()
                    .insert(to.to_string());
                g.entry(to.to_string()).or_default();
            }
            g
        };
        assert_eq!(
            find_cycle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])),
            None
        );
        assert_eq!(
            find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
    }
}
