//! Golden config errors: each `tests/golden/config/NAME.toml` is a broken
//! config and `NAME.err` the exact message it must produce. Set
//! `SLUICE_BLESS=1` to rewrite the `.err` files after an intended change.

use std::path::Path;

use sluice::config::Config;

use crate::support::root;

#[test]
fn bad_configs_give_golden_errors_that_name_the_key() {
    let dir = Path::new("tests/golden/config");
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        // Relative path so the message (which names the file) is stable.
        let rel = dir.join(&name);
        let err = match Config::load(&root().join(&rel)) {
            Ok(_) => {
                failures.push(format!("{name}: loaded without error"));
                continue;
            }
            Err(e) => e.to_string().replace(&format!("{}/", root().display()), ""),
        };
        let golden = path.with_extension("err");
        if std::env::var_os("SLUICE_BLESS").is_some() {
            std::fs::write(&golden, format!("{err}\n")).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if want.trim_end() != err {
            failures.push(format!(
                "{name}:\n  want: {}\n  got:  {err}",
                want.trim_end()
            ));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 15, "only {checked} golden configs");
}

#[test]
fn the_example_configs_load() {
    Config::load(&root().join("examples/dev.toml")).unwrap_or_else(|e| panic!("{e}"));
}
