//! The layout holds what ARCHITECTURE.md says: each top-level module depends only on the
//! modules below it (so there are no cycles), the domain touches no NATS, errors are typed,
//! files stay a size a reader can hold, and test support stays out of the product.

use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each top-level module of `src/` may use, lowest layer first. `test_util` (the test
/// kit's seam) and `cli` (the command line) sit on top and may use anything.
const LAYERS: &[(&str, &[&str])] = &[
    ("crashpoint", &[]),
    ("model", &[]),
    ("contract", &["model"]),
    ("telemetry", &["model", "contract"]),
    ("store", &["model", "contract"]),
    ("client", &["model", "contract", "store"]),
    ("tooling", &["model", "contract"]),
    ("write", &["model", "contract", "store", "telemetry"]),
    ("projections", &["crashpoint", "model", "contract", "store"]),
    (
        "reactions",
        &[
            "crashpoint",
            "model",
            "contract",
            "store",
            "write",
            "projections",
            "telemetry",
        ],
    ),
    ("otc", &["model", "contract", "store"]),
    (
        "api",
        &[
            "model",
            "contract",
            "store",
            "write",
            "projections",
            "reactions",
            "otc",
            "telemetry",
        ],
    ),
    (
        "service",
        &[
            "model",
            "contract",
            "store",
            "write",
            "projections",
            "reactions",
            "otc",
            "telemetry",
            "api",
        ],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Every source file with its text, by path under `src/`.
fn sources() -> Result<BTreeMap<String, String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files)?;
    files
        .into_iter()
        .map(|path| {
            let name = path.strip_prefix(src())?.to_string_lossy().into_owned();
            Ok((name, std::fs::read_to_string(&path)?))
        })
        .collect()
}

/// The top-level module a file belongs to (`None` for `lib.rs` and `main.rs`).
fn module_of(file: &str) -> Option<&str> {
    let first = file.split('/').next()?;
    match first {
        "lib.rs" | "main.rs" => None,
        _ => Some(first.trim_end_matches(".rs")),
    }
}

/// Whether a file holds unit tests only.
fn is_tests(file: &str) -> bool {
    file.ends_with("/tests.rs") || file.contains("/tests/")
}

/// The code of a file without comment lines (doc comments may name any module).
fn code(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim_start().starts_with("//"))
}

/// The top-level modules each module uses (`crate::<module>` in its code).
fn dependencies(sources: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in sources {
        let Some(module) = module_of(file) else {
            continue;
        };
        let uses = graph.entry(module.to_string()).or_default();
        for line in code(text) {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let used: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !used.is_empty() && used != module {
                    uses.insert(used);
                }
            }
        }
    }
    graph
}

#[test]
fn each_module_uses_only_the_layers_below_it() -> Result<()> {
    let graph = dependencies(&sources()?);
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    for (module, uses) in &graph {
        if matches!(module.as_str(), "cli" | "test_util") {
            continue;
        }
        let may = allowed
            .get(module.as_str())
            .with_context(|| format!("module {module} is not in the layer table"))?;
        let beyond: Vec<&String> = uses.iter().filter(|u| !may.contains(&u.as_str())).collect();
        assert!(
            beyond.is_empty(),
            "{module} uses {beyond:?}, beyond {may:?}"
        );
    }
    // The table itself only points down, so the graph has no cycle.
    for (i, (module, may)) in LAYERS.iter().enumerate() {
        let below: Vec<&str> = LAYERS[..i].iter().map(|(m, _)| *m).collect();
        for used in *may {
            assert!(
                below.contains(used),
                "{module} may use {used}, which is not below it"
            );
        }
    }
    Ok(())
}

#[test]
fn the_domain_touches_no_nats_and_no_tooling() -> Result<()> {
    for (file, text) in sources()? {
        if module_of(&file) == Some("model") {
            for forbidden in ["async_nats", "tokio", "crate::tooling", "crate::store"] {
                assert!(!text.contains(forbidden), "{file} uses {forbidden}");
            }
        }
    }
    Ok(())
}

#[test]
fn errors_are_typed_and_anyhow_stays_in_main() -> Result<()> {
    for (file, text) in sources()? {
        for line in code(&text) {
            let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            assert!(
                !(compact.contains("Result<") && compact.contains(",String>")),
                "{file}: a Result with a String error: {line}"
            );
            if file != "main.rs" {
                assert!(!line.contains("anyhow"), "{file} uses anyhow: {line}");
            }
        }
    }
    Ok(())
}

#[test]
fn files_are_a_size_a_reader_can_hold() -> Result<()> {
    for (file, text) in sources()? {
        let lines = text.lines().count();
        if is_tests(&file) {
            continue;
        }
        assert!(
            lines <= 600,
            "{file} has {lines} lines (at most 600 outside tests)"
        );
        // A big module keeps its unit tests in a file of their own.
        if text.contains("mod tests {") {
            assert!(
                lines <= 400,
                "{file} ({lines} lines) holds its tests inline"
            );
        }
    }
    let clippy =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("clippy.toml"))?;
    assert!(clippy.contains("too-many-lines-threshold = 80"), "{clippy}");
    let lib = std::fs::read_to_string(src().join("lib.rs"))?;
    assert!(lib.contains("#![warn(clippy::too_many_lines)]"));
    Ok(())
}

#[test]
fn test_support_is_not_a_dependency_of_the_product() -> Result<()> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))?;
    let manifest: toml::Table = text.parse()?;
    let table = |name: &str| -> Result<&toml::Table> {
        manifest[name]
            .as_table()
            .with_context(|| format!("[{name}]"))
    };
    for crate_name in ["natster-testkit", "tempfile"] {
        assert!(
            !table("dependencies")?.contains_key(crate_name),
            "{crate_name} is a runtime dependency"
        );
        assert!(
            table("dev-dependencies")?.contains_key(crate_name),
            "{crate_name} is not a dev-dependency"
        );
    }
    let lib = std::fs::read_to_string(src().join("lib.rs"))?;
    assert!(lib.contains("#[cfg(feature = \"test-util\")]\npub mod test_util;"));
    Ok(())
}
