//! `sluice new` and `sluice build`: start a handler in Rust, Python or
//! JavaScript, and build one into a component, whatever its language.
//!
//! `sluice new NAME --lang L` writes `NAME/` from the templates in
//! `templates/` (embedded in the binary, as is the WIT contract, so it works
//! anywhere): a handler that passes messages on with `next`, a copy of
//! `wit/pipeline.wit`, the build file the language needs and
//! `NAME.cases.json`, one golden case the host runs before it swaps a new
//! version in.
//!
//! `sluice build [DIR]` finds the language from the files present
//! (`Cargo.toml`, `app.py`, `handler.js`), runs its toolchain from PATH and
//! writes `DIR/NAME.wasm` beside `DIR/NAME.cases.json`. A missing tool is an
//! error that says how to install it. What the guest may do at run time is
//! the host's business; this module only drives compilers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The contract every handler targets, as this binary's host implements it.
const WIT: &str = include_str!("../../../wit/pipeline.wit");
/// Builds a JavaScript handler with componentize-qjs (see the file's own
/// comment for why it is more than one command); scripts/build-plugins runs
/// the same file.
const JS_BUILD: &str = include_str!("../../../tools/js/build-handler.mjs");

const RUST_CARGO: &str = include_str!("templates/rust/Cargo.toml");
const RUST_CARGO_CONFIG: &str = include_str!("templates/rust/cargo-config.toml");
const RUST_LIB: &str = include_str!("templates/rust/lib.rs");
const RUST_TOOLCHAIN: &str = include_str!("templates/rust/rust-toolchain.toml");
const PYTHON_APP: &str = include_str!("templates/python/app.py");
const JS_HANDLER: &str = include_str!("templates/js/handler.js");
const CASES: &str = include_str!("templates/cases.json");

/// The versions the templates and the install hints name, as this
/// repository pins them.
/// The componentize-py version the project builds with, pinned once in
/// `plugins/python/componentize-py.version` (scripts/setup reads it too).
const COMPONENTIZE_PY_VERSION: &str =
    include_str!("../../../plugins/python/componentize-py.version").trim_ascii();
const COMPONENTIZE_QJS: &str = "componentize-qjs@0.4.5";

/// A handler's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with wit-bindgen, built with cargo for wasm32-wasip2.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-qjs (QuickJS).
    Js,
}

impl Lang {
    fn name(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        }
    }

    /// The file whose presence marks a folder as this language's.
    fn marker(self) -> &'static str {
        match self {
            Lang::Rust => "Cargo.toml",
            Lang::Python => "app.py",
            Lang::Js => "handler.js",
        }
    }
}

/// Arguments of `sluice new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The plugin's name: lowercase letters, digits, `-` and `_`, starting
    /// with a letter. The folder NAME/ is created in the current directory.
    name: String,
    /// The handler's language.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
}

/// Arguments of `sluice build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The plugin's folder, as `sluice new` made it.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Where to write the component. Default: DIR/NAME.wasm, NAME being the
    /// folder's name.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

/// `sluice new`.
pub fn new(args: NewArgs) -> anyhow::Result<()> {
    let name = args.name;
    check_name(&name)?;
    let dir = PathBuf::from(&name);
    if dir.exists() {
        bail!("{} already exists; choose another name", dir.display());
    }
    let fill = |template: &str| template.replace("{{name}}", &name);
    let mut files: Vec<(PathBuf, String)> = vec![
        ("wit/pipeline.wit".into(), WIT.to_owned()),
        (format!("{name}.cases.json").into(), fill(CASES)),
    ];
    match args.lang {
        Lang::Rust => files.extend([
            ("Cargo.toml".into(), fill(RUST_CARGO)),
            (".cargo/config.toml".into(), RUST_CARGO_CONFIG.to_owned()),
            ("rust-toolchain.toml".into(), RUST_TOOLCHAIN.to_owned()),
            ("src/lib.rs".into(), fill(RUST_LIB)),
            (".gitignore".into(), format!("/target\n/{name}.wasm\n")),
        ]),
        Lang::Python => files.extend([
            ("app.py".into(), fill(PYTHON_APP)),
            (".gitignore".into(), format!("__pycache__/\n/{name}.wasm\n")),
        ]),
        Lang::Js => files.extend([
            ("handler.js".into(), fill(JS_HANDLER)),
            (".gitignore".into(), format!("/{name}.wasm\n")),
        ]),
    }
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "created {name}/, a {} handler that passes every message on unchanged.\n\
         next:\n  sluice build {name}\n  echo '{{\"hello\":\"world\"}}' | sluice handle --plugin {name}/{name}.wasm",
        args.lang.name()
    );
    Ok(())
}

/// A name that is a valid Rust crate, file and subject token everywhere.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !first_ok || !rest_ok {
        bail!(
            "plugin name `{name}`: use lowercase letters, digits, `-` and `_`, starting with a letter"
        );
    }
    Ok(())
}

/// `sluice build`.
pub fn build(args: BuildArgs) -> anyhow::Result<()> {
    let dir = fs::canonicalize(&args.dir)
        .with_context(|| format!("no plugin folder at {}", args.dir.display()))?;
    let lang = detect(&dir)?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("the plugin folder has no usable name")?
        .to_owned();
    let out = match args.out {
        Some(out) => {
            std::path::absolute(&out).with_context(|| format!("resolving {}", out.display()))?
        }
        None => dir.join(format!("{name}.wasm")),
    };
    // Everything is written beside the output and renamed into place, so a
    // plugin folder watcher never sees half a component.
    let partial = out.with_extension(format!("wasm.partial.{}", std::process::id()));
    let scratch = tempfile::tempdir().context("creating a temporary folder")?;
    let result = match lang {
        Lang::Rust => build_rust(&dir, &partial),
        Lang::Python => build_python(&dir, &wit_dir(&dir, scratch.path())?, &partial),
        Lang::Js => build_js(
            &dir,
            &wit_dir(&dir, scratch.path())?,
            scratch.path(),
            &partial,
        ),
    };
    if let Err(err) = result {
        let _ = fs::remove_file(&partial);
        return Err(err);
    }
    fs::rename(&partial, &out).with_context(|| format!("writing {}", out.display()))?;
    let size = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "built {} ({} handler, {size} bytes)",
        out.display(),
        lang.name()
    );
    Ok(())
}

/// The language of the plugin in `dir`, from the one marker file present.
fn detect(dir: &Path) -> anyhow::Result<Lang> {
    let found: Vec<Lang> = [Lang::Rust, Lang::Python, Lang::Js]
        .into_iter()
        .filter(|lang| dir.join(lang.marker()).is_file())
        .collect();
    match found.as_slice() {
        [lang] => Ok(*lang),
        [] => bail!(
            "{}: no plugin here: expected Cargo.toml (Rust), app.py (Python) or handler.js (JavaScript); `sluice new NAME --lang rust|python|js` makes one",
            dir.display()
        ),
        several => {
            let markers: Vec<&str> = several.iter().map(|lang| lang.marker()).collect();
            bail!(
                "{}: files of several languages ({}); keep one plugin per folder",
                dir.display(),
                markers.join(", ")
            )
        }
    }
}

/// The WIT folder to build against: the plugin's own copy (`sluice new`
/// writes one), else the contract embedded in this binary.
fn wit_dir(dir: &Path, scratch: &Path) -> anyhow::Result<PathBuf> {
    let own = dir.join("wit");
    if own.is_dir() {
        return Ok(own);
    }
    let embedded = scratch.join("wit");
    fs::create_dir_all(&embedded)?;
    fs::write(embedded.join("pipeline.wit"), WIT)?;
    Ok(embedded)
}

fn build_rust(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let cargo = tool("cargo", "install Rust with rustup (https://rustup.rs)")?;
    let manifest = dir.join("Cargo.toml");
    // Ask cargo where the artifact lands: it honours CARGO_TARGET_DIR and a
    // `[lib] name`.
    let metadata = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .context("running cargo metadata")?;
    if !metadata.status.success() {
        bail!(
            "cargo metadata failed for {}:\n{}",
            manifest.display(),
            String::from_utf8_lossy(&metadata.stderr)
        );
    }
    let artifact = cdylib_artifact(&metadata.stdout)?;
    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(&manifest)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed (is the target installed? `rustup target add wasm32-wasip2`)");
    }
    fs::copy(&artifact, out)
        .with_context(|| format!("copying {} (did cargo build it?)", artifact.display()))?;
    Ok(())
}

/// `target/wasm32-wasip2/release/<lib>.wasm` for the package's cdylib, from
/// `cargo metadata` output.
fn cdylib_artifact(metadata: &[u8]) -> anyhow::Result<PathBuf> {
    let metadata: serde_json::Value =
        serde_json::from_slice(metadata).context("reading cargo metadata")?;
    let target_dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata names no target directory")?;
    let lib = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|package| package["targets"].as_array().into_iter().flatten())
        .find(|target| {
            target["crate_types"]
                .as_array()
                .is_some_and(|types| types.iter().any(|t| t == "cdylib"))
        })
        .and_then(|target| target["name"].as_str())
        .context("the package has no cdylib target: add `[lib] crate-type = [\"cdylib\"]`")?;
    Ok(Path::new(target_dir)
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", lib.replace('-', "_"))))
}

fn build_python(dir: &Path, wit: &Path, out: &Path) -> anyhow::Result<()> {
    let componentize = tool(
        "componentize-py",
        &format!(
            "install it with `pip install componentize-py=={COMPONENTIZE_PY_VERSION}` (a virtualenv is fine)"
        ),
    )?;
    // The app module is `app` in DIR; a virtualenv's site-packages (for
    // dependencies) is added by componentize-py itself.
    let status = Command::new(componentize)
        .arg("-d")
        .arg(wit)
        .args(["-w", "handler", "componentize", "app", "-p"])
        .arg(dir)
        .arg("-o")
        .arg(out)
        .current_dir(dir)
        .status()
        .context("running componentize-py")?;
    if !status.success() {
        bail!("componentize-py failed for {}", dir.display());
    }
    Ok(())
}

fn build_js(dir: &Path, wit: &Path, scratch: &Path, out: &Path) -> anyhow::Result<()> {
    let install = format!(
        "install it with `npm install {COMPONENTIZE_QJS}` and put node_modules/.bin on PATH"
    );
    tool("componentize-qjs", &install)?;
    let node = tool("node", "install Node.js 18 or later")?;
    let script = scratch.join("build-handler.mjs");
    fs::write(&script, JS_BUILD).context("writing the JavaScript build script")?;
    let status = Command::new(node)
        .arg(&script)
        .arg("--wit")
        .arg(wit)
        .arg("--js")
        .arg(dir.join("handler.js"))
        .arg("--module-root")
        .arg(dir)
        .arg("--out")
        .arg(out)
        .status()
        .context("running node")?;
    if !status.success() {
        bail!("building {} with componentize-qjs failed", dir.display());
    }
    Ok(())
}

/// `name` found on PATH, or an error that says how to install it.
fn tool(name: &str, install: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("`{name}` is not on PATH: {install}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("demo").is_ok());
        assert!(check_name("my-plugin_2").is_ok());
        for bad in ["", "Demo", "2fa", "-x", "a b", "a.b", "ü"] {
            assert!(check_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_language_comes_from_the_one_marker_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no plugin here"), "{err}");
        fs::write(dir.path().join("app.py"), "").unwrap();
        assert_eq!(detect(dir.path()).unwrap(), Lang::Python);
        fs::write(dir.path().join("handler.js"), "").unwrap();
        let err = detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("app.py, handler.js"), "{err}");
    }

    #[test]
    fn the_cdylib_artifact_follows_cargo_metadata() {
        let metadata = br#"{"target_directory": "/t", "packages": [{"targets": [
            {"name": "build-script-build", "crate_types": ["bin"]},
            {"name": "my-plugin", "crate_types": ["cdylib"]}]}]}"#;
        assert_eq!(
            cdylib_artifact(metadata).unwrap(),
            PathBuf::from("/t/wasm32-wasip2/release/my_plugin.wasm")
        );
        let err = cdylib_artifact(br#"{"target_directory": "/t", "packages": []}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cdylib"), "{err}");
    }

    #[test]
    fn a_missing_tool_says_how_to_install_it() {
        let err = tool("surely-no-such-tool", "install it somehow")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "`surely-no-such-tool` is not on PATH: install it somehow"
        );
    }
}
