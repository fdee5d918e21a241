//! An application that depends on tally with `default-features = false` compiles none of the
//! command-line tool's crates: `cargo tree -e normal` of such a dependent, resolved offline from
//! the crates this repository already uses, lists none of them.

use std::process::Command;

const CLI_CRATES: [&str; 7] = [
    "clap",
    "indicatif",
    "hdrhistogram",
    "serde_json",
    "metrics-exporter-prometheus",
    "tracing-subscriber",
    "tempfile",
];

#[test]
fn a_dependent_without_default_features_compiles_no_cli_crate() {
    let dependent = tempfile::tempdir().unwrap();
    let tally = env!("CARGO_MANIFEST_DIR");
    std::fs::write(
        dependent.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"embedder\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
             [dependencies]\ntally = {{ path = {tally:?}, default-features = false }}\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(dependent.path().join("src")).unwrap();
    std::fs::write(dependent.path().join("src/lib.rs"), "").unwrap();
    // The repository's lock file pins the same versions, so resolution needs no network.
    std::fs::copy(
        std::path::Path::new(tally).join("Cargo.lock"),
        dependent.path().join("Cargo.lock"),
    )
    .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(dependent.path())
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        tree.lines().any(|line| line.starts_with("tally ")),
        "{tree}"
    );
    for name in CLI_CRATES {
        assert!(
            !tree
                .lines()
                .any(|line| line.starts_with(&format!("{name} "))),
            "{name} is compiled into an embedding application:\n{tree}"
        );
    }
}
