//! Rules about errors that no compiler lint holds, checked over the source of every crate.
//!
//! Errors are types with kinds, not strings: outside the allow-lists below, no `Result` (nor
//! `Ok::<_, E>` / `Err::<_, E>`, nor a `FromStr`-style `type Err`) has an error type that is a
//! string (`String`, `&str`, `Box<str>`, `Cow<str>`), a boxed `dyn Error`, or a `type` alias of
//! one of those (so an alias cannot dodge the rule); no `thiserror` error has a variant (or is a
//! struct) whose only field is a message string; `anyhow` appears only at the CLI's top level,
//! and only `chorus-cli` depends on it.
//!
//! Every `crates/*/src/**/*.rs` is parsed with `syn`; `#[cfg(test)]` items (an out-of-line
//! `#[cfg(test)] mod tests;` skips its file) and `#[test]` functions are skipped (tests may use
//! `anyhow` and boxed errors). A finding names its file, line and item. An allow-list entry is a
//! file, a folder (ending in `/`) or one item of a file (`path: Type::item`); an entry that no
//! longer excuses anything fails the test too, so the lists only ever shrink.
//!
//! Why a test and not clippy's `disallowed-types`: clippy reads one `clippy.toml` for the whole
//! workspace, so allowing `anyhow` in the CLI's top level would take an `#[allow]` in each of its
//! files, and the lint sees only types — not `anyhow!`, `bail!` or `.context()`, nor a string
//! error type behind an alias. Only `chorus-cli` may depend on `anyhow` (checked below), so
//! elsewhere it does not even compile.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::{self, Visit};

/// The CLI's top level, where `anyhow` is the error type: the dispatch in `lib.rs` and the
/// command modules it dispatches to, whose errors are only ever printed by `chorus_cli::main`.
/// The CLI's library modules (`app`, `natsd`, `client`), which tests and several commands call,
/// return typed errors.
const ANYHOW_ALLOWED: &[&str] = &[
    "crates/cli/src/lib.rs",
    "crates/cli/src/batch/",
    "crates/cli/src/bench/",
    "crates/cli/src/budgets.rs",
    "crates/cli/src/check.rs",
    "crates/cli/src/dev.rs",
    "crates/cli/src/dlq.rs",
    "crates/cli/src/healthcheck.rs",
    "crates/cli/src/job.rs",
    "crates/cli/src/keys.rs",
    "crates/cli/src/mock.rs",
];

/// Names a single string field of an error may not have: the field would carry a message (of
/// an underlying error, usually) where a typed `#[source]` or a variant of its own belongs.
/// A field that names a thing (`var`, `field`, `model`) is data, and fine.
const MESSAGE_FIELDS: &[&str] = &[
    "message",
    "msg",
    "reason",
    "detail",
    "details",
    "error",
    "err",
    "cause",
    "description",
    "text",
    "problem",
    "why",
    "info",
    "source",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rule {
    StringError,
    StringVariant,
    Anyhow,
}

impl Rule {
    fn explain(self) -> &'static str {
        match self {
            Rule::StringError => {
                "an error type that is a string or a boxed `dyn Error`: use an error enum with \
                 thiserror and a kind callers can match"
            }
            Rule::StringVariant => {
                "an error variant wrapping a message string: keep the underlying error as a \
                 typed `#[source]`, or give the case a variant of its own"
            }
            Rule::Anyhow => {
                "`anyhow` outside the CLI's top level (tests/code_rules.rs ANYHOW_ALLOWED): \
                 return a typed error"
            }
        }
    }
}

#[derive(Debug)]
struct Finding {
    file: String,
    line: usize,
    /// The item it is in: `Type::method`, `function`, `Enum::Variant`.
    item: String,
    rule: Rule,
    what: String,
}

#[test]
fn errors_are_types_with_kinds_not_strings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = sources(root);
    assert!(
        files.len() > 50,
        "found only {} source files under crates/*/src",
        files.len()
    );
    let parsed: Vec<(String, syn::File)> = files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let file = syn::parse_file(&text)
                .unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()));
            (relative(root, path), file)
        })
        .collect();

    let mut findings = check(&parsed);
    findings.extend(anyhow_dependencies(root));

    let mut report = String::new();
    let mut used = BTreeSet::new();
    for finding in &findings {
        if let Some(entry) = waiver(finding) {
            used.insert(entry);
            continue;
        }
        let _ = writeln!(
            report,
            "{}:{} in `{}`: {} — {}",
            finding.file,
            finding.line,
            finding.item,
            finding.what,
            finding.rule.explain()
        );
    }
    for entry in ANYHOW_ALLOWED {
        if !used.contains(entry) {
            let _ = writeln!(
                report,
                "tests/code_rules.rs: `{entry}` is allow-listed but breaks no rule: take it off the list"
            );
        }
    }
    assert!(report.is_empty(), "\n{report}");
}

#[test]
fn the_rules_find_what_they_name_and_nothing_else() {
    let sample = r#"
type Reason = String;
type Because = Reason;
type Res<T> = Result<T, String>;
pub fn aliased() -> Result<(), Because> { Ok(()) }
fn boxed() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> { Ok(()) }
fn shared() -> core::result::Result<(), std::sync::Arc<str>> { Ok(()) }
fn turbofish() { let _ = Ok::<(), &'static str>(()); }
fn typed() -> Result<(), std::io::Error> { Ok(()) }
fn io() -> std::io::Result<String> { Ok(String::new()) }
impl std::str::FromStr for Thing {
    type Err = std::borrow::Cow<'static, str>;
    fn from_str(_: &str) -> Result<Self, Self::Err> { todo!() }
}
#[derive(Debug, thiserror::Error)]
enum Wrapping {
    #[error("{0}")]
    Tuple(String),
    #[error("{message}")]
    Message { message: String },
    #[error("the variable `{var}` is not set")]
    Named { var: String },
    #[error("{what}: {detail}")]
    Two { what: String, detail: String },
}
#[derive(Debug, Error)]
#[error("{reason}")]
struct Alone { reason: Box<str> }
enum Data { Contains(String) }
use anyhow::Context as _;
fn top() -> anyhow::Result<()> { anyhow::bail!("no") }
fn inside() { tokio::select! { _ = f() => anyhow::Ok(()) } }
#[cfg(test)]
mod tests {
    fn helper() -> Result<(), String> { Ok(()) }
    use anyhow::Context as _;
}
#[tokio::test]
async fn a_test() -> Result<(), Box<dyn std::error::Error>> { Ok(()) }
"#;
    let parse = |text: &str| syn::parse_file(text).expect("the sample parses");
    // An out-of-line test module is test code too.
    let files = [
        ("crates/x/src/sample.rs".into(), parse(sample)),
        (
            "crates/x/src/batch/mod.rs".into(),
            parse("#[cfg(test)]\nmod tests;"),
        ),
        (
            "crates/x/src/batch/tests.rs".into(),
            parse("fn helper() -> Result<(), String> { Ok(()) }"),
        ),
    ];
    let found: Vec<(usize, String, Rule)> = check(&files)
        .into_iter()
        .map(|f| (f.line, f.item, f.rule))
        .collect();
    let expected = [
        (4, "Res", Rule::StringError),
        (5, "aliased", Rule::StringError),
        (6, "boxed", Rule::StringError),
        (7, "shared", Rule::StringError),
        (8, "turbofish", Rule::StringError),
        (12, "Thing", Rule::StringError),
        (18, "Wrapping::Tuple", Rule::StringVariant),
        (20, "Wrapping::Message", Rule::StringVariant),
        (28, "Alone", Rule::StringVariant),
        (30, "(top level)", Rule::Anyhow),
        (31, "top", Rule::Anyhow),
        (31, "top", Rule::Anyhow),
        (32, "inside", Rule::Anyhow),
    ];
    let expected: Vec<(usize, String, Rule)> = expected
        .into_iter()
        .map(|(line, item, rule)| (line, item.to_owned(), rule))
        .collect();
    assert_eq!(found, expected);
}

/// What the rules find in `files`, before any allow-list.
fn check(files: &[(String, syn::File)]) -> Vec<Finding> {
    let aliases = string_aliases(files.iter().map(|(_, file)| file));
    let tests = test_module_files(files);
    let mut findings = Vec::new();
    for (name, file) in files.iter().filter(|(name, _)| !tests.contains(name)) {
        let mut checker = Checker {
            file: name,
            aliases: &aliases,
            scope: Vec::new(),
            findings: &mut findings,
        };
        checker.visit_file(file);
    }
    findings.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    findings
}

/// The files of the out-of-line `#[cfg(test)] mod name;` declarations in `files` (test code,
/// skipped like an inline test module): `name.rs` or `name/mod.rs` beside a `lib.rs`, `main.rs`
/// or `mod.rs`, and in the folder named after any other file.
fn test_module_files(files: &[(String, syn::File)]) -> BTreeSet<String> {
    let mut tests = BTreeSet::new();
    for (path, file) in files {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let folder = match name {
            "lib.rs" | "main.rs" | "mod.rs" => dir.to_owned(),
            other => format!("{dir}/{}", other.trim_end_matches(".rs")),
        };
        for item in &file.items {
            if let syn::Item::Mod(module) = item
                && module.content.is_none()
                && is_test(&module.attrs)
            {
                tests.insert(format!("{folder}/{}.rs", module.ident));
                tests.insert(format!("{folder}/{}/mod.rs", module.ident));
            }
        }
    }
    tests
}

/// The allow-list entry that excuses `finding`, if any.
fn waiver(finding: &Finding) -> Option<&'static str> {
    let covers = |entry: &&&str| {
        let (path, item) = match entry.split_once(": ") {
            Some((path, item)) => (path, Some(item)),
            None => (**entry, None),
        };
        let file = finding.file == path || (path.ends_with('/') && finding.file.starts_with(path));
        file && item.is_none_or(|item| finding.item == item)
    };
    match finding.rule {
        Rule::Anyhow => ANYHOW_ALLOWED.iter().find(covers).copied(),
        Rule::StringError | Rule::StringVariant => None,
    }
}

/// Every `crates/*/src/**/*.rs`, sorted.
fn sources(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for krate in crate_dirs(root) {
        let src = krate.join("src");
        if src.is_dir() {
            walk(&src, &mut files);
        }
    }
    files.sort();
    files
}

fn crate_dirs(root: &Path) -> Vec<PathBuf> {
    let crates = root.join("crates");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&crates)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", crates.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", crates.display()))
                .path()
        })
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// `anyhow` as a normal dependency of any crate but `chorus-cli` (dev-dependencies are fine).
fn anyhow_dependencies(root: &Path) -> Vec<Finding> {
    let mut findings = Vec::new();
    for krate in crate_dirs(root) {
        let manifest = krate.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", manifest.display()));
        let parsed: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("cannot parse {}: {e}", manifest.display()));
        let name = parsed
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default();
        let depends = parsed
            .get("dependencies")
            .and_then(|d| d.as_table())
            .is_some_and(|d| d.contains_key("anyhow"));
        if depends && name != "chorus-cli" {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with("anyhow"))
                .map_or(0, |i| i + 1);
            findings.push(Finding {
                file: relative(root, &manifest),
                line,
                item: "[dependencies]".into(),
                rule: Rule::Anyhow,
                what: format!("`{name}` depends on anyhow"),
            });
        }
    }
    findings
}

/// The names of `type` aliases, anywhere in the workspace, that stand for a string or a boxed
/// `dyn Error` (through other such aliases too).
fn string_aliases<'a>(files: impl Iterator<Item = &'a syn::File> + Clone) -> BTreeSet<String> {
    #[derive(Default)]
    struct Aliases<'ast>(Vec<&'ast syn::ItemType>);
    impl<'ast> Visit<'ast> for Aliases<'ast> {
        fn visit_item_type(&mut self, item: &'ast syn::ItemType) {
            self.0.push(item);
        }
    }
    let mut all = Aliases::default();
    for file in files {
        all.visit_file(file);
    }
    let mut names = BTreeSet::new();
    loop {
        let before = names.len();
        for item in &all.0 {
            if item.generics.params.is_empty() && stringly(&item.ty, &names) {
                names.insert(item.ident.to_string());
            }
        }
        if names.len() == before {
            return names;
        }
    }
}

/// Whether `ty` is a string, a boxed `dyn Error`, or an alias of one.
fn stringly(ty: &syn::Type, aliases: &BTreeSet<String>) -> bool {
    match ty {
        syn::Type::Paren(inner) => stringly(&inner.elem, aliases),
        syn::Type::Group(inner) => stringly(&inner.elem, aliases),
        syn::Type::Reference(reference) => is_str(&reference.elem),
        syn::Type::Path(path) if path.qself.is_none() => {
            let Some(last) = path.path.segments.last() else {
                return false;
            };
            let name = last.ident.to_string();
            match (&last.arguments, name.as_str()) {
                (syn::PathArguments::None, "String") => true,
                (syn::PathArguments::None, _) => {
                    path.path.segments.len() == 1 && aliases.contains(&name)
                }
                (syn::PathArguments::AngleBracketed(args), "Box" | "Arc" | "Rc" | "Cow") => args
                    .args
                    .iter()
                    .any(|arg| matches!(arg, syn::GenericArgument::Type(t) if is_str(t) || is_dyn_error(t))),
                _ => false,
            }
        }
        _ => false,
    }
}

fn is_str(ty: &syn::Type) -> bool {
    matches!(ty, syn::Type::Path(p) if p.qself.is_none() && p.path.is_ident("str"))
}

/// `dyn Error + …` (also `dyn std::error::Error`, `dyn StdError`).
fn is_dyn_error(ty: &syn::Type) -> bool {
    let syn::Type::TraitObject(object) = ty else {
        return false;
    };
    object.bounds.iter().any(|bound| match bound {
        syn::TypeParamBound::Trait(bound) => bound
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident.to_string().ends_with("Error")),
        _ => false,
    })
}

struct Checker<'a> {
    file: &'a str,
    aliases: &'a BTreeSet<String>,
    /// The names of the items being visited, outermost first.
    scope: Vec<String>,
    findings: &'a mut Vec<Finding>,
}

impl Checker<'_> {
    fn report(&mut self, span: proc_macro2::Span, rule: Rule, what: String) {
        let item = match self.scope.is_empty() {
            true => "(top level)".to_owned(),
            false => self.scope.join("::"),
        };
        self.report_in(span, item, rule, what);
    }

    fn report_in(&mut self, span: proc_macro2::Span, item: String, rule: Rule, what: String) {
        self.findings.push(Finding {
            file: self.file.to_owned(),
            line: span.start().line,
            item,
            rule,
            what,
        });
    }

    fn within(&mut self, name: String, visit: impl FnOnce(&mut Self)) {
        self.scope.push(name);
        visit(self);
        self.scope.pop();
    }

    /// A `thiserror` error whose only field is a message string.
    fn check_fields(&mut self, name: String, fields: &syn::Fields) {
        let mut iter = fields.iter();
        let (Some(field), None) = (iter.next(), iter.next()) else {
            return;
        };
        let message = match &field.ident {
            None => true,
            Some(ident) => MESSAGE_FIELDS.contains(&ident.to_string().as_str()),
        };
        if message && stringly(&field.ty, self.aliases) {
            let what = format!("`{}`", tokens(fields));
            self.report_in(field.span(), name, Rule::StringVariant, what);
        }
    }
}

/// `#[cfg(test)]`, `#[test]`, `#[tokio::test]`.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        let path = attr.path();
        if path.is_ident("cfg") {
            return attr
                .parse_args::<syn::Path>()
                .is_ok_and(|p| p.is_ident("test"));
        }
        path.segments.last().is_some_and(|s| s.ident == "test")
    })
}

/// `#[derive(…, Error, …)]` (thiserror's, by any path).
fn derives_error(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("derive"))
        .any(|attr| {
            attr.parse_args_with(
                syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated,
            )
            .is_ok_and(|paths| {
                paths
                    .iter()
                    .any(|p| p.segments.last().is_some_and(|s| s.ident == "Error"))
            })
        })
}

/// Whether `tokens` (a macro's input) mention `anyhow`.
fn mentions_anyhow(tokens: proc_macro2::TokenStream) -> Option<proc_macro2::Span> {
    tokens.into_iter().find_map(|tree| match tree {
        proc_macro2::TokenTree::Ident(ident) if ident == "anyhow" => Some(ident.span()),
        proc_macro2::TokenTree::Group(group) => mentions_anyhow(group.stream()),
        _ => None,
    })
}

impl<'ast> Visit<'ast> for Checker<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            _ => return visit::visit_item(self, item),
        };
        if !is_test(attrs) {
            visit::visit_item(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        if !is_test(&item.attrs) {
            self.within(item.sig.ident.to_string(), |this| {
                visit::visit_impl_item_fn(this, item)
            });
        }
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        self.within(item.sig.ident.to_string(), |this| {
            visit::visit_trait_item_fn(this, item)
        });
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        self.within(item.sig.ident.to_string(), |this| {
            visit::visit_item_fn(this, item)
        });
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        let name = match &*item.self_ty {
            syn::Type::Path(path) => path.path.segments.last().map(|s| s.ident.to_string()),
            _ => None,
        };
        self.within(name.unwrap_or_else(|| "impl".into()), |this| {
            visit::visit_item_impl(this, item)
        });
    }

    fn visit_item_trait(&mut self, item: &'ast syn::ItemTrait) {
        self.within(item.ident.to_string(), |this| {
            visit::visit_item_trait(this, item)
        });
    }

    fn visit_item_type(&mut self, item: &'ast syn::ItemType) {
        self.within(item.ident.to_string(), |this| {
            visit::visit_item_type(this, item)
        });
    }

    fn visit_item_enum(&mut self, item: &'ast syn::ItemEnum) {
        if derives_error(&item.attrs) {
            for variant in &item.variants {
                let name = format!("{}::{}", item.ident, variant.ident);
                self.check_fields(name, &variant.fields);
            }
        }
        self.within(item.ident.to_string(), |this| {
            visit::visit_item_enum(this, item)
        });
    }

    fn visit_item_struct(&mut self, item: &'ast syn::ItemStruct) {
        if derives_error(&item.attrs) {
            self.check_fields(item.ident.to_string(), &item.fields);
        }
        self.within(item.ident.to_string(), |this| {
            visit::visit_item_struct(this, item)
        });
    }

    /// `type Err = String;` in a `FromStr` (or any trait's `Err`/`Error`).
    fn visit_impl_item_type(&mut self, item: &'ast syn::ImplItemType) {
        if (item.ident == "Err" || item.ident == "Error") && stringly(&item.ty, self.aliases) {
            self.report(
                item.span(),
                Rule::StringError,
                format!("`type {} = {}`", item.ident, tokens(&item.ty)),
            );
        }
        visit::visit_impl_item_type(self, item);
    }

    /// `Result<T, E>`, `Ok::<T, E>`, `Err::<T, E>` by any path.
    fn visit_path_segment(&mut self, segment: &'ast syn::PathSegment) {
        if matches!(segment.ident.to_string().as_str(), "Result" | "Ok" | "Err")
            && let syn::PathArguments::AngleBracketed(args) = &segment.arguments
        {
            let types: Vec<&syn::Type> = args
                .args
                .iter()
                .filter_map(|arg| match arg {
                    syn::GenericArgument::Type(ty) => Some(ty),
                    _ => None,
                })
                .collect();
            if let [_, error] = types[..]
                && stringly(error, self.aliases)
            {
                self.report(
                    segment.span(),
                    Rule::StringError,
                    format!("`{}<_, {}>`", segment.ident, tokens(error)),
                );
            }
        }
        visit::visit_path_segment(self, segment);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if let Some(first) = path.segments.first()
            && first.ident == "anyhow"
            && path.segments.len() > 1
        {
            self.report(path.span(), Rule::Anyhow, format!("`{}`", tokens(path)));
        }
        visit::visit_path(self, path);
    }

    fn visit_use_tree(&mut self, tree: &'ast syn::UseTree) {
        let name = match tree {
            syn::UseTree::Path(p) => Some(&p.ident),
            syn::UseTree::Name(n) => Some(&n.ident),
            syn::UseTree::Rename(r) => Some(&r.ident),
            _ => None,
        };
        if name.is_some_and(|n| n == "anyhow") {
            self.report(tree.span(), Rule::Anyhow, "`use anyhow`".into());
            return;
        }
        visit::visit_use_tree(self, tree);
    }

    /// Tokens of macros syn does not parse (`format!`, `tokio::select!`): an `anyhow` inside.
    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        if let Some(span) = mentions_anyhow(mac.tokens.clone()) {
            self.report(span, Rule::Anyhow, "`anyhow` in a macro".into());
        }
        visit::visit_macro(self, mac);
    }
}

/// Source text of a node, roughly as written (`Result<(), String>`).
fn tokens(node: &impl quote::ToTokens) -> String {
    let spaced = [
        (" :: ", "::"),
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        ("& ", "&"),
        (" (", "("),
        ("( ", "("),
        (" )", ")"),
    ];
    let text = node.to_token_stream().to_string();
    spaced
        .iter()
        .fold(text, |text, (from, to)| text.replace(from, to))
}
