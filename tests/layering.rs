//! The host library's layering, checked from its sources: each module may
//! use only modules of a lower layer, so there are no cycles and no upward
//! edges (the verdict rules never reach for the guest runtime, nor the
//! runtime for the rules), and nothing in the library reaches the command
//! line, which lives in the binary. A new module has to be given a layer
//! here, which is where a newcomer finds the map.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's modules by layer, lowest first. A module may use a module
/// of any lower layer, never one of its own layer or above.
const LAYERS: &[&[&str]] = &[
    // Leaves: pure rules and small utilities that know nothing else here.
    &[
        "subject",
        "ordering",
        "headers",
        "stats",
        "logging",
        "watch",
        "nats_server",
        "unreadable",
    ],
    &["config"],
    &["message"],
    // The verdict rules and the guest runtime, side by side, apart.
    &["pipeline", "wasm"],
    // Where rules meet instances; golden cases run on a plugin.
    &["worker", "cases"],
    &["registry", "topology"],
    &["sink"],
    &["tenant"],
    &["ops"],
    &["service"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime/src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`tenant/pull.rs` →
/// `tenant`), or `None` for the binary's own files.
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.trim_end_matches(".rs").to_owned();
    match name.as_str() {
        "main" | "cli" => None,
        _ => Some(name),
    }
}

/// The modules `code` names as `crate::<module>`, comments left out (a doc
/// link is a pointer for the reader, not a dependency).
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                refs.insert(name);
            }
            rest = after;
        }
    }
    refs
}

/// Each library module and the library modules it uses.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let code = std::fs::read_to_string(&file).unwrap();
        let used = edges.entry(module.clone()).or_default();
        for name in crate_refs(&code) {
            if name != module {
                used.insert(name);
            }
        }
    }
    edges.remove("lib");
    edges
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn every_module_uses_only_lower_layers() {
    let mut wrong = Vec::new();
    for (module, used) in edges() {
        let Some(own) = layer_of(&module) else {
            wrong.push(format!("`{module}` has no layer in tests/layering.rs"));
            continue;
        };
        for dep in used {
            match layer_of(&dep) {
                Some(layer) if layer < own => {}
                Some(_) => wrong.push(format!("`{module}` uses `{dep}`, not below it")),
                None => wrong.push(format!(
                    "`{module}` uses `{dep}`, which is no library module"
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_library_never_reaches_the_command_line() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    assert!(
        !lib.lines()
            .any(|l| l.trim_start().starts_with("pub mod cli")
                || l.trim_start().starts_with("mod cli")),
        "lib.rs declares the cli module"
    );
    let main = std::fs::read_to_string(src().join("main.rs")).unwrap();
    assert!(main.contains("mod cli;"), "the binary owns the cli module");
    for (module, used) in edges() {
        assert!(!used.contains("cli"), "`{module}` uses the command line");
    }
}

#[test]
fn the_layer_table_names_only_real_modules() {
    let found = edges();
    for layer in LAYERS {
        for module in *layer {
            assert!(
                found.contains_key(*module),
                "`{module}` is in LAYERS but not in runtime/src"
            );
        }
    }
}

#[test]
fn a_reference_in_code_counts_and_one_in_a_comment_does_not() {
    let refs =
        crate_refs("use crate::wasm::Plugin; // see crate::service\nlet x = crate::sink::f();");
    assert_eq!(refs, BTreeSet::from(["sink".to_owned(), "wasm".to_owned()]));
}
