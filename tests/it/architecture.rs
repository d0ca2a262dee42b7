//! The module layering of `src/` (ARCHITECTURE.md, "Layers"): every top-level module imports
//! only modules below it, so there are no upward imports and no cycles between them.
//!
//! Every path in the source is read with `syn` — `use` trees, paths in code and the tokens of
//! macros (`$crate::…` included) — and resolved to the top-level module it names.

use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// The top-level modules of the library, lowest first. A module may import any module before
/// it in this list and none after it. A new module takes its place here.
const LAYERS: &[&str] = &[
    "domain",
    "yaml",
    "diagnostic",
    "connect",
    "net",
    "config",
    "rules",
    "source",
    "store",
    "slo",
    "engine",
    "runner",
    "plan",
    "incident",
    "notify",
    "capture",
    "trace",
    "app",
    "demo",
    "runtime",
    "http",
    "serve",
    "cli",
];

/// One reference from a file of module `from` to the top-level module `to`.
#[derive(Debug)]
struct Import {
    from: String,
    to: String,
    file: PathBuf,
    line: usize,
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let imports = imports_in(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        imports.len() > 100,
        "only {} imports found: the scan is broken",
        imports.len()
    );
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut problems = Vec::new();
    for i in &imports {
        for m in [&i.from, &i.to] {
            if rank(m).is_none() {
                problems.push(format!(
                    "{}:{}: module `{m}` is not in LAYERS (tests/it/architecture.rs); place it there",
                    i.file.display(),
                    i.line
                ));
            }
        }
        if let (Some(from), Some(to)) = (rank(&i.from), rank(&i.to))
            && to > from
        {
            problems.push(format!(
                "{}:{}: `{}` imports `{}`, a layer above it",
                i.file.display(),
                i.line,
                i.from,
                i.to
            ));
        }
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_layering_check_sees_imports_in_use_trees_paths_and_macros() {
    let source = r#"
        use crate::{store::{self, Store}, domain::Value};
        fn f() { let _ = crate::plan::propose; }
        macro_rules! m { () => { $crate::http::router() }; }
        mod tests { use super::super::cli::run; }
    "#;
    let found = imports_of(source, &["engine".into()], Path::new("x.rs"));
    let mut to: Vec<&str> = found.iter().map(|i| i.to.as_str()).collect();
    to.sort();
    assert_eq!(to, ["cli", "domain", "http", "plan", "store", "store"]);
    assert!(found.iter().all(|i| i.from == "engine"));
}

fn imports_in(src: PathBuf) -> Vec<Import> {
    let mut imports = Vec::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).unwrap();
        if relative == Path::new("main.rs") || relative == Path::new("lib.rs") {
            continue; // the binary and the crate root: they may name every module
        }
        let module = module_path(relative);
        let text = std::fs::read_to_string(&file).unwrap();
        imports.extend(imports_of(&text, &module, &file));
    }
    imports
}

/// `http/console/pages.rs` → `[http, console, pages]`; `plan/mod.rs` → `[plan]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn imports_of(text: &str, module: &[String], file: &Path) -> Vec<Import> {
    let parsed =
        syn::parse_file(text).unwrap_or_else(|e| panic!("{}: cannot parse: {e}", file.display()));
    let mut scan = Scan {
        module: module.to_vec(),
        file: file.to_path_buf(),
        found: Vec::new(),
    };
    scan.visit_file(&parsed);
    scan.found
}

struct Scan {
    /// The module the visitor is in (inline `mod` blocks included).
    module: Vec<String>,
    file: PathBuf,
    found: Vec<Import>,
}

impl Scan {
    /// Records the top-level module a path starting with `segments` names, if it leaves the
    /// file's own top-level module.
    fn path(&mut self, segments: &[String], line: usize) {
        let target = match segments.first().map(String::as_str) {
            Some("crate") => segments.get(1).cloned(),
            Some("super") => {
                let ups = segments.iter().take_while(|s| *s == "super").count();
                let base = self.module.len().checked_sub(ups).unwrap_or_else(|| {
                    panic!(
                        "{}:{line}: `super` above the crate root",
                        self.file.display()
                    )
                });
                if base == 0 {
                    segments.get(ups).cloned()
                } else {
                    Some(self.module[0].clone())
                }
            }
            _ => None,
        };
        let from = self.module[0].clone();
        if let Some(to) = target
            && to != from
            && to.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            self.found.push(Import {
                from,
                to,
                file: self.file.clone(),
                line,
            });
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                let line = n.ident.span().start().line;
                self.path(&prefix.clone(), line);
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                let line = r.ident.span().start().line;
                self.path(&prefix.clone(), line);
                prefix.pop();
            }
            syn::UseTree::Glob(g) => {
                let line = g.star_token.span.start().line;
                let mut whole = prefix.clone();
                whole.push("*".into());
                self.path(&whole, line);
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// `crate :: name` or `super :: …` sequences in a macro's tokens.
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, tree) in trees.iter().enumerate() {
            match tree {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id) if id == "crate" || id == "super" => {
                    let mut segments = vec![id.to_string()];
                    let mut j = i + 1;
                    while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) =
                        (trees.get(j), trees.get(j + 1))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        match trees.get(j + 2) {
                            Some(TokenTree::Ident(next)) => segments.push(next.to_string()),
                            _ => break,
                        }
                        j += 3;
                    }
                    // `$crate` is `$` then `crate`; `crate` alone after `pub(` is visibility.
                    if segments.len() > 1 {
                        self.path(&segments, id.span().start().line);
                    }
                }
                _ => {}
            }
        }
    }
}

impl<'ast> Visit<'ast> for Scan {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = path.segments.first() {
            self.path(&segments, first.ident.span().start().line);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if item.content.is_some() {
            self.module.push(item.ident.to_string());
            syn::visit::visit_item_mod(self, item);
            self.module.pop();
        }
    }
}
