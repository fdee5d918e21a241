//! kill -9 durability: a child `tally crash-worker` runs a random mint/transfer load under
//! `Durability::Sync` on 4 shards and is killed with SIGKILL at random moments (checkpoints run
//! every few ms, so many kills land inside one; some land in a clean shutdown while the index is
//! persisted). After every kill the directory is reopened and checked against a model: every
//! acknowledged op present, in-flight ops all-or-nothing, supply == sum of balances.
//!
//! The long campaign: `cargo test --release --test crash -- --ignored` (or `tally crashtest --cycles 500`).

use tally::crashtest::{run_campaign, CampaignArgs};

fn campaign(cycles: u32, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let args = CampaignArgs {
        cycles,
        data_dir: None,
        seed,
        shards: 4,
        max_run_ms: 500,
        ..CampaignArgs::default()
    };
    let report = run_campaign(env!("CARGO_BIN_EXE_tally").as_ref(), dir.path(), &args).unwrap();
    println!("{report:?}");
    assert!(
        report.violations.is_empty(),
        "violations: {:#?}",
        report.violations
    );
    assert_eq!(report.cycles, cycles);
    // The campaign must actually have checked work, or it proves nothing.
    assert!(
        report.acknowledged_ops > 100 * cycles as u64,
        "only {} ops checked",
        report.acknowledged_ops
    );
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
