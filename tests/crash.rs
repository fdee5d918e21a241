//! kill -9 durability: a child `tally crash-worker` runs a random mint/transfer load under
//! `Durability::Sync` on 4 shards and is killed with SIGKILL at random moments (checkpoints run
//! every few ms, so many kills land inside one; some land in a clean shutdown while the index is
//! persisted). After every kill the directory is reopened and checked against a model: every
//! acknowledged op present, in-flight ops all-or-nothing, supply == sum of balances.
//!
//! The long campaign: `cargo test --release --test crash -- --ignored` (or `tally crashtest --cycles 500`).

use std::process::Command;

/// Runs `tally crashtest` and checks its summary: no violation, and real work checked.
fn campaign(cycles: u32, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["crashtest", "--cycles", &cycles.to_string()])
        .args([
            "--seed",
            &seed.to_string(),
            "--shards",
            "4",
            "--max-run-ms",
            "500",
        ])
        .args(["--min-phase-hits", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let totals = stdout
        .lines()
        .find(|line| line.starts_with("crashtest: "))
        .unwrap_or_else(|| panic!("no summary in:\n{stdout}"));
    let number_before = |word: &str| -> u64 {
        let before = &totals[..totals.find(word).unwrap()];
        before.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert_eq!(number_before(" cycles"), cycles as u64);
    assert_eq!(number_before(" violations"), 0, "{stdout}");
    // The campaign must actually have checked work, or it proves nothing.
    let checked = number_before(" acknowledged ops checked");
    assert!(checked > 100 * cycles as u64, "only {checked} ops checked");
}

#[test]
fn kill_9_loses_no_acknowledged_op() {
    campaign(8, 0x7a11);
}

#[test]
#[ignore = "long campaign: cargo test --release --test crash -- --ignored"]
fn kill_9_campaign_long() {
    campaign(300, 0xdead_beef);
}

#[test]
fn a_directory_held_by_another_process_is_locked() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["crash-worker", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The worker prints `O` before it opens the ledger and `R` once it has.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "O");
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "R",
        "the worker opened the ledger"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(tally::Ledger::open(tally::Config::new(dir.path())));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        matches!(result, Err(tally::LedgerError::Locked { .. })),
        "{result:?}"
    );
}
