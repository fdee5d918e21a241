//! The `tally` binary, run as a newcomer or an operator would run it: every subcommand, its
//! output, its exit code, and its one-line errors, including `verify` on damaged directories.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Small files, so that each test runs in a fraction of a second.
const SMALL_CONFIG: &str = "\
[ledger]
shards = 3
[wal]
segment_bytes = 1048576
[accounts]
initial_slots = 64
";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn tally(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .output()
        .expect("the tally binary runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A data directory inside a temporary directory, with the small config file beside it.
struct Data {
    _temp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
}

impl Data {
    fn new() -> Self {
        let temp = tempfile::tempdir().unwrap();
        let config = temp.path().join("tally.toml");
        std::fs::write(&config, SMALL_CONFIG).unwrap();
        Data {
            dir: temp.path().join("data"),
            config,
            _temp: temp,
        }
    }

    /// Runs `tally <command> --data-dir DIR --config FILE <rest>`.
    fn run(&self, command: &str, rest: &[&str]) -> Run {
        let mut args = vec![
            command,
            "--data-dir",
            self.dir.to_str().unwrap(),
            "--config",
            self.config.to_str().unwrap(),
        ];
        args.extend_from_slice(rest);
        tally(&args)
    }

    fn shard(&self, shard: u32) -> PathBuf {
        self.dir.join(format!("shard-{shard:03}"))
    }

    /// Runs the crash worker (3 shards) until it has acknowledged `acknowledged` operations, then
    /// kills it with SIGKILL in the middle of its work: the WALs keep their records.
    fn kill_worker_after(&self, acknowledged: usize) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["crash-worker", "--data-dir", self.dir.to_str().unwrap()])
            .args([
                "--shards",
                "3",
                "--seed",
                "7",
                "--checkpoint-interval-ms",
                "20",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen < acknowledged {
            let line = lines.next().expect("the worker keeps printing").unwrap();
            seen += usize::from(line.starts_with('A'));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A small load, ended by a clean shutdown (which leaves the WALs without records).
    fn load(&self) {
        let run = self.run(
            "load",
            &[
                "--accounts",
                "300",
                "--transfers",
                "3000",
                "--clients",
                "3",
                "--batch",
                "100",
            ],
        );
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    }
}

fn key(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// The error contract: exit 1, exactly one line on stderr, no panic, no debug dump.
fn assert_error(run: &Run, expected: &str) {
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {:?}", run.stderr);
    assert!(lines[0].starts_with("error: "), "{:?}", lines[0]);
    assert!(
        lines[0].contains(expected),
        "{:?} lacks {expected:?}",
        lines[0]
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(!run.stderr.contains(" {"), "debug dump: {}", run.stderr);
}

/// The offset verify names for `path` in a `problem:` line.
fn problem_offset(stdout: &str, path: &Path) -> u64 {
    let prefix = format!("problem: {} at offset ", path.display());
    let line = stdout
        .lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no problem named {prefix:?} in:\n{stdout}"));
    line[prefix.len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The live WAL segments of a shard (`wal-*.log`; the retired `history-*.log` are not read by
/// recovery).
fn wal_segments(shard_dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(shard_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with("wal-") && name.ends_with(".log")
        })
        .collect();
    segments.sort();
    segments
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

// ---------------------------------------------------------------------------------------------
// load

#[test]
fn load_prints_a_summary_with_a_passing_conservation_check() {
    let data = Data::new();
    let run = data.run(
        "load",
        &[
            "--accounts",
            "200",
            "--transfers",
            "2000",
            "--clients",
            "2",
            "--batch",
            "50",
            "--worker-threads",
            "2",
        ],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    for expected in [
        "3 shards, durability sync, 2 clients on 2 runtime threads, batches of 50, uniform keys",
        "2,000 in",
        "transfers/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "fsyncs",
        "WAL bytes",
        "checkpoints",
        "peak RSS",
        "conservation   ok: total supply 200,000,000 = sum of shard balances 200,000,000",
        "the 200 accounts",
    ] {
        assert!(
            run.stdout.contains(expected),
            "{expected:?} in:\n{}",
            run.stdout
        );
    }
    // The progress bar only draws on a terminal.
    assert_eq!(run.stderr, "");
}

#[test]
fn load_json_has_every_key_and_consistent_values() {
    let data = Data::new();
    let run = data.run(
        "load",
        &[
            "--accounts",
            "40",
            "--transfers",
            "300",
            "--clients",
            "3",
            "--batch",
            "1",
            "--skew",
            "zipf",
            "--durability",
            "periodic",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let summary: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let number = |key: &str| {
        summary[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {summary}"))
    };
    for key in [
        "transfers_per_sec",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "fsyncs",
        "wal_bytes",
        "peak_rss_bytes",
    ] {
        assert!(number(key) >= 0.0, "{key}");
    }
    assert_eq!(summary["conservation_ok"], true);
    assert!(number("transfers_per_sec") > 0.0);
    assert!(number("p50_us") <= number("p99_us"));
    assert!(number("p99_us") <= number("p999_us"));
    assert!(number("p999_us") <= number("max_us"));
    assert!(number("wal_bytes") > 0.0);
    assert!(number("peak_rss_bytes") > 1e6);
    assert!(number("cpu_seconds") > 0.0, "the transfers took CPU");
    let per_transfer = number("cpu_us_per_transfer");
    assert!(
        (per_transfer - number("cpu_seconds") * 1e6 / 300.0).abs() < 1e-6 * per_transfer.max(1.0),
        "{summary}"
    );
    // No clock tick may pass in so short a run; when one does, steal is a share.
    let steal = &summary["steal_percent"];
    assert!(
        steal.is_null() || steal.as_f64().is_some_and(|s| (0.0..=100.0).contains(&s)),
        "{summary}"
    );
    assert_eq!(number("applied") + number("rejected"), 300.0);
    assert_eq!(summary["durability"], "periodic");
    assert_eq!(summary["skew"], "zipf");
    assert_eq!(summary["batch"], 1);
    assert_eq!(summary["total_supply"], 40_000_000);
    assert_eq!(summary["balance_sum"], 40_000_000);
}

#[test]
fn load_under_sync_counts_fsyncs_and_a_second_run_adds_accounts() {
    let data = Data::new();
    let args = [
        "--accounts",
        "50",
        "--transfers",
        "200",
        "--clients",
        "4",
        "--batch",
        "1",
        "--json",
    ];
    let first: serde_json::Value =
        serde_json::from_str(data.run("load", &args).stdout.trim()).unwrap();
    assert_eq!(first["durability"], "sync");
    assert!(first["fsyncs"].as_u64().unwrap() > 0, "{first}");
    let second = data.run("load", &args);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let second: serde_json::Value = serde_json::from_str(second.stdout.trim()).unwrap();
    assert_eq!(second["conservation_ok"], true);
    assert_eq!(second["total_supply"], 100_000_000, "{second}");
    let inspect = data.run("inspect", &[]);
    assert!(
        inspect
            .stdout
            .contains("accounts         100 at the last checkpoint"),
        "{}",
        inspect.stdout
    );
}

#[test]
fn load_rejects_bad_options_without_running() {
    let data = Data::new();
    let run = data.run("load", &["--accounts", "1"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--accounts"), "{}", run.stderr);
    let run = data.run("load", &["--skew", "lumpy"]);
    assert_eq!(run.code, 2);
    assert!(!data.dir.exists(), "nothing was created");
}

// ---------------------------------------------------------------------------------------------
// verify and inspect on sound directories

#[test]
fn verify_and_inspect_a_directory_after_load() {
    let data = Data::new();
    data.load();
    let verify = data.run("verify", &[]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify
            .stdout
            .contains("format version 4, 3 shards, 300 accounts, lock free"),
        "{}",
        verify.stdout
    );
    assert!(
        verify.stdout.contains("= total supply 300,000,000"),
        "{}",
        verify.stdout
    );
    assert!(
        verify.stdout.contains("sound: no problems"),
        "{}",
        verify.stdout
    );
    assert!(!verify.stdout.contains("problem:"));

    let inspect = data.run("inspect", &[]);
    assert_eq!(inspect.code, 0, "{}", inspect.stderr);
    for expected in [
        "format version   4",
        "shards           3",
        "lock             free",
        "shutdown         clean (every shard)",
        "accounts         300 at the last checkpoint; 0 WAL records after it",
        "balances         300,000,000 at the last checkpoint",
        "last checkpoint  LSN",
        "accounts.dat",
        "WAL used / file",
    ] {
        assert!(
            inspect.stdout.contains(expected),
            "{expected:?} in:\n{}",
            inspect.stdout
        );
    }
    for shard in ["000", "001", "002"] {
        assert!(
            inspect
                .stdout
                .lines()
                .any(|line| line.trim_start().starts_with(shard) && line.ends_with("yes")),
            "shard {shard} row in:\n{}",
            inspect.stdout
        );
    }
}

#[test]
fn verify_accepts_a_directory_left_by_kill_9_and_the_next_open_settles_it() {
    let data = Data::new();
    data.kill_worker_after(300);

    // Sound, or (when the kill landed in the middle of a WAL write) opens after cutting the
    // torn tails: never a problem.
    let verify = data.run("verify", &[]);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert!(
        verify.stdout.contains("sound: no problems")
            || (verify.stdout.contains("opens after cutting")
                && verify.stdout.contains(" no problems")),
        "{}",
        verify.stdout
    );
    assert!(!verify.stdout.contains("problem:"), "{}", verify.stdout);
    let inspect = data.run("inspect", &[]);
    assert!(
        inspect.stdout.contains("shutdown         NOT clean"),
        "{}",
        inspect.stdout
    );
    // Opening recovers and shuts down cleanly; the directory stays sound.
    let account = data.run("account", &[&key(0xEE)]);
    assert_error(&account, "account not found");
    let verify = data.run("verify", &[]);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert!(
        verify.stdout.contains("0 owed credits"),
        "{}",
        verify.stdout
    );
    let inspect = data.run("inspect", &[]);
    assert!(
        inspect.stdout.contains("shutdown         clean"),
        "{}",
        inspect.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// verify on damaged directories

/// A kill -9 in the middle of a WAL write: the frame's header and first record reached the file,
/// the rest of it did not. Open cuts the frame; verify reads the history only up to the cut, so
/// every account's newest entry before it is found (this once failed one CI run in many, when a
/// real kill tore a frame this way).
#[test]
fn verify_reads_the_history_only_up_to_a_torn_tail() {
    use tally::internals::wal::{frame, reader};
    // A kill itself rarely tears a write; this test makes its own tear, after a kill that left
    // every WAL whole.
    let data = (0..5)
        .map(|_| {
            let data = Data::new();
            data.kill_worker_after(300);
            data
        })
        .find(|data| {
            data.run("verify", &[])
                .stdout
                .contains("sound: no problems")
        })
        .expect("five kills in a row left a torn WAL write");
    let shard = data.shard(0);
    let scan = reader::scan(&shard, 1).unwrap();
    let segment = scan
        .tail
        .segment
        .clone()
        .expect("shard 0 has a WAL segment");
    let (_, body) = scan.records.last().expect("shard 0 logged records");
    let next = scan.tail.next_lsn;
    let mut frames = Vec::new();
    let mut start = 0;
    frame::push_record(&mut frames, &mut start, next, body);
    let second = frame::push_record(&mut frames, &mut start, next + 1, body);
    frame::seal(&mut frames, next, next + 1, 0).unwrap();
    // The header and first record of a two-record frame; the second record's header is zeros.
    let mut bytes = std::fs::read(&segment.path).unwrap();
    let at = scan.tail.offset as usize;
    assert!(bytes[at..at + frames.len()].iter().all(|&b| b == 0));
    bytes[at..at + second].copy_from_slice(&frames[..second]);
    std::fs::write(&segment.path, &bytes).unwrap();

    assert_opens_after_one_cut(
        &data,
        &format!("cut: {} at offset {at}", segment.path.display()),
    );
    // The next open cuts the frame, and the directory is sound.
    assert_an_open_leaves_it_sound(&data);
}

/// A command opens the ledger (and recovers it); `verify` then finds it sound.
fn assert_an_open_leaves_it_sound(data: &Data) {
    assert_eq!(data.run("account", &[&key(0xEE)]).code, 1);
    let verify = data.run("verify", &[]);
    assert!(
        verify.stdout.contains("sound: no problems"),
        "{}",
        verify.stdout
    );
}

/// `verify` says the directory opens after cutting one torn WAL tail, names it with `cut`, and
/// reports no problem.
fn assert_opens_after_one_cut(data: &Data, cut: &str) {
    let verify = data.run("verify", &[]);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert!(verify.stdout.contains(cut), "{}", verify.stdout);
    assert!(
        verify
            .stdout
            .contains("opens after cutting 1 torn WAL tail"),
        "{}",
        verify.stdout
    );
    assert!(!verify.stdout.contains("problem:"), "{}", verify.stdout);
}

#[test]
fn verify_finds_a_flipped_byte_in_the_middle_of_the_wal_records() {
    let data = Data::new();
    // The segment holding the most records, of any shard.
    let fullest = || {
        (0..3)
            .flat_map(|shard| wal_segments(&data.shard(shard)))
            .map(|segment| {
                let bytes = std::fs::read(&segment).unwrap();
                let written = bytes
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |last| last + 1);
                (segment, written)
            })
            .max_by_key(|(_, written)| *written)
            .unwrap()
    };
    // The worker shuts down cleanly every 50-400 ms (each shutdown starts new segments) and
    // checkpoints retire full ones, so a kill that lands just after either leaves only small
    // segments: run it again (it recovers the directory) until one holds several pages.
    data.kill_worker_after(2000);
    let mut found = fullest();
    for _ in 0..10 {
        if found.1 > 4096 {
            break;
        }
        data.kill_worker_after(2000);
        found = fullest();
    }
    let (segment, written) = found;
    assert!(
        written > 4096,
        "{} holds {written} bytes",
        segment.display()
    );
    let flipped = written / 2;
    flip_byte(&segment, flipped);

    let verify = data.run("verify", &[]);
    assert_eq!(verify.code, 1, "{}", verify.stdout);
    assert!(verify.stdout.contains("NOT SOUND"), "{}", verify.stdout);
    let offset = problem_offset(&verify.stdout, &segment);
    assert!(
        offset <= flipped as u64
            && flipped as u64 - offset < tally::internals::wal::frame::MAX_FRAME_TOTAL as u64,
        "frame at {offset} holds byte {flipped}"
    );
    // The ledger refuses the directory with the same place, in one line.
    let mint = data.run("mint", &[&key(1), "5"]);
    assert_error(
        &mint,
        &format!("corrupt file {} at offset {offset}", segment.display()),
    );
}

#[test]
fn verify_finds_a_flipped_byte_in_the_preallocated_middle_of_a_wal_segment() {
    let data = Data::new();
    data.load();
    let segment = wal_segments(&data.shard(0)).pop().unwrap();
    let middle = std::fs::metadata(&segment).unwrap().len() as usize / 2;
    assert!(
        std::fs::read(&segment).unwrap()[middle..]
            .iter()
            .all(|&b| b == 0),
        "the load must not fill half a segment"
    );
    flip_byte(&segment, middle);

    // Nothing after the end of the log was ever proven synced: open cuts it, and verify says
    // exactly that, naming the segment and where the log ends.
    assert_opens_after_one_cut(&data, &format!("cut: {} at offset ", segment.display()));
    // The next open cuts it; the directory is sound again and the byte is gone.
    assert_an_open_leaves_it_sound(&data);
    assert_eq!(std::fs::read(&segment).unwrap()[middle], 0);
}

#[test]
fn verify_finds_a_damaged_account_slot_and_reading_it_fails_with_its_place() {
    let data = Data::new();
    let target = key(0x5A);
    assert_eq!(data.run("mint", &[&key(0x11), "1000"]).code, 0);
    assert_eq!(data.run("mint", &[&target, "700"]).code, 0);
    // Find the slot that holds the account in one of the account files.
    let needle = [0x5Au8; 32];
    let (path, offset) = (0..3)
        .find_map(|shard| {
            let path = data.shard(shard).join("accounts.dat");
            let bytes = std::fs::read(&path).unwrap();
            (8192..bytes.len())
                .step_by(128)
                .find(|&start| bytes[start..start + 32] == needle)
                .map(|start| (path, start))
        })
        .expect("the account is in a slot");
    flip_byte(&path, offset + 33);

    let verify = data.run("verify", &[]);
    assert_eq!(verify.code, 1, "{}", verify.stdout);
    assert_eq!(problem_offset(&verify.stdout, &path), offset as u64);
    assert!(
        verify.stdout.contains("slot CRC mismatch"),
        "{}",
        verify.stdout
    );
    let account = data.run("account", &[&target]);
    assert_error(
        &account,
        &format!("corrupt file {} at offset {offset}", path.display()),
    );
    // The other account is untouched.
    let other = data.run("account", &[&key(0x11)]);
    assert_eq!(other.code, 0, "{}", other.stderr);
    assert!(other.stdout.contains("balance 1000"));
}

#[test]
fn a_garbage_manifest_is_named_by_verify_inspect_and_every_command() {
    let data = Data::new();
    assert_eq!(data.run("mint", &[&key(1), "10"]).code, 0);
    let manifest = data.dir.join("MANIFEST");
    std::fs::write(&manifest, b"this is not a manifest at all!!!!!!!").unwrap();

    let verify = data.run("verify", &[]);
    assert_eq!(verify.code, 1, "{}", verify.stdout);
    assert_eq!(problem_offset(&verify.stdout, &manifest), 0);
    assert!(verify.stdout.contains("bad magic"), "{}", verify.stdout);
    // verify answers as open does: refused, nothing about shards it would never read.
    assert!(
        verify.stdout.contains("NOT SOUND: open refuses"),
        "{}",
        verify.stdout
    );

    let expected = format!("corrupt file {} at offset 0", manifest.display());
    assert_error(&data.run("inspect", &[]), &expected);
    assert_error(&data.run("mint", &[&key(1), "10"]), &expected);
    assert_error(&data.run("account", &[&key(1)]), &expected);
    assert_error(&data.run("transfer", &[&key(1), &key(2), "1"]), &expected);
}

#[test]
fn verify_never_writes() {
    let data = Data::new();
    data.load();
    let snapshot = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        for entry in walk(dir) {
            files.push((entry.clone(), std::fs::read(&entry).unwrap()));
        }
        files.sort();
        files
    };
    let segment = wal_segments(&data.shard(2)).pop().unwrap();
    flip_byte(&segment, 100);
    flip_byte(&data.dir.join("shard-001").join("accounts.dat"), 8192 + 40);
    let before = snapshot(&data.dir);
    assert_eq!(data.run("verify", &[]).code, 1);
    assert_eq!(data.run("inspect", &[]).code, 0);
    assert!(
        before == snapshot(&data.dir),
        "verify or inspect changed a file"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

// ---------------------------------------------------------------------------------------------
// Single operations and their errors

#[test]
fn mint_transfer_and_account_by_hand() {
    let data = Data::new();
    let (alice, bob) = (key(0xA1), key(0xB0));
    let mint = data.run("mint", &[&alice, "100"]);
    assert_eq!(mint.code, 0, "{}", mint.stderr);
    assert!(
        mint.stdout
            .starts_with(&format!("minted 100 to {alice}: balance 100")),
        "{}",
        mint.stdout
    );
    let transfer = data.run("transfer", &[&alice, &bob, "30"]);
    assert_eq!(transfer.code, 0, "{}", transfer.stderr);
    assert!(
        transfer.stdout.contains(&format!(
            "transferred 30 from {alice} (balance 70) to {bob} (balance 30)"
        )),
        "{}",
        transfer.stdout
    );
    let account = data.run("account", &[&bob]);
    assert_eq!(account.code, 0, "{}", account.stderr);
    assert_eq!(
        account.stdout,
        format!("account {bob}\nbalance 30\nsequence 1\n")
    );
    // Upper-case hex names the same account.
    let account = data.run("account", &[&alice.to_uppercase()]);
    assert_eq!(
        account.stdout,
        format!("account {alice}\nbalance 70\nsequence 2\n")
    );
}

/// `--id` makes a command exactly-once: run again, it changes nothing and prints the same
/// receipt; with other fields it is a conflict. `lookup` and `history` read the history.
#[test]
fn ids_lookup_and_history_by_hand() {
    let data = Data::new();
    let (alice, bob) = (key(0xA1), key(0xB0));
    let minted = data.run("mint", &[&alice, "100"]);
    assert_eq!(minted.code, 0, "{}", minted.stderr);
    let new_id = minted
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("id "))
        .expect("a new id is printed");
    assert_eq!(new_id.len(), 32, "{}", minted.stdout);
    let id = "0000000000000000000000000000abcd";
    let first = data.run("transfer", &["--id", id, &alice, &bob, "30"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let receipt = |run: &Run| {
        run.stdout
            .lines()
            .filter(|line| {
                line.starts_with("shard ")
                    || line.starts_with("lsn ")
                    || line.starts_with("timestamp_ns ")
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(receipt(&first).len(), 3, "{}", first.stdout);
    let again = data.run("transfer", &["--id", id, &alice, &bob, "30"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(receipt(&again), receipt(&first));
    assert!(again.stdout.contains("(balance 70)"), "{}", again.stdout);
    assert_error(
        &data.run("transfer", &["--id", id, &alice, &bob, "31"]),
        &format!("transfer id {id} was already used with different fields"),
    );
    assert_error(
        &data.run("transfer", &["--id", "xyz", &alice, &bob, "1"]),
        "bad transfer id \"xyz\"",
    );
    let lookup = data.run("lookup", &[id]);
    assert_eq!(lookup.code, 0, "{}", lookup.stderr);
    assert!(
        lookup.stdout.starts_with(&format!(
            "id {id}\nfrom {alice}\nto {bob}\namount 30\nuser_data 0\ntimestamp_ns "
        )),
        "{}",
        lookup.stdout
    );
    assert_error(
        &data.run("lookup", &["00000000000000000000000000000001"]),
        "no transfer with id 00000000000000000000000000000001",
    );
    let history = data.run("history", &[&alice]);
    assert_eq!(history.code, 0, "{}", history.stderr);
    let lines: Vec<&str> = history.stdout.lines().collect();
    assert_eq!(lines[0], format!("history of {alice}: 2 entries"));
    assert!(
        lines[1].contains("+100") && lines[1].contains("balance 100"),
        "{}",
        history.stdout
    );
    assert!(
        lines[2].contains("-30") && lines[2].contains("balance 70") && lines[2].contains(id),
        "{}",
        history.stdout
    );
    let later = data.run("history", &[&alice, "--after", "1", "--limit", "5"]);
    assert_eq!(later.stdout.lines().count(), 2, "{}", later.stdout);
}

#[test]
fn bad_keys_and_amounts_are_one_line_errors() {
    let data = Data::new();
    assert_error(
        &data.run("mint", &["xyz", "5"]),
        "bad key \"xyz\": a public key is 64 hex characters, got 3",
    );
    assert_error(
        &data.run("account", &[&"g".repeat(64)]),
        "invalid hex character at position 0",
    );
    assert_error(
        &data.run("transfer", &[&key(1), &"0".repeat(65), "5"]),
        "got 65",
    );
    assert!(!data.dir.exists(), "a bad key creates nothing");
    assert_error(
        &data.run("mint", &[&key(1), "0"]),
        "amount must be greater than zero",
    );
    assert_eq!(data.run("mint", &[&key(1), "10"]).code, 0);
    assert_error(
        &data.run("transfer", &[&key(1), &key(2), "11"]),
        "insufficient funds: needed 11, available 10",
    );
    assert_error(
        &data.run("transfer", &[&key(1), &key(1), "1"]),
        "source and target are the same account",
    );
    let max = u64::MAX.to_string();
    assert_error(
        &data.run("mint", &[&key(3), &max]),
        "mint would overflow the total supply",
    );
    // A negative amount is a usage error (clap, exit 2), not a crash.
    let negative = data.run("mint", &[&key(1), "-5"]);
    assert_eq!(negative.code, 2, "{}", negative.stderr);
    assert!(!negative.stderr.contains("panicked"));
}

#[test]
fn an_unknown_account_is_an_error() {
    let data = Data::new();
    assert_eq!(data.run("mint", &[&key(1), "10"]).code, 0);
    let unknown = key(0x77);
    assert_error(
        &data.run("account", &[&unknown]),
        &format!("account not found: {unknown}"),
    );
    assert_error(
        &data.run("transfer", &[&unknown, &key(1), "1"]),
        &format!("account not found: {unknown}"),
    );
}

#[test]
fn commands_on_a_missing_directory_fail_without_creating_it() {
    let data = Data::new();
    let expected = format!("no data directory at {}", data.dir.display());
    assert_error(&data.run("account", &[&key(1)]), &expected);
    assert_error(&data.run("transfer", &[&key(1), &key(2), "1"]), &expected);
    let missing = format!("I/O error at {}", data.dir.display());
    assert_error(&data.run("verify", &[]), &missing);
    assert_error(&data.run("inspect", &[]), &missing);
    assert!(!data.dir.exists());
    let bad_config = tally(&["verify", "--config", "/nonexistent/tally.toml"]);
    assert_error(&bad_config, "/nonexistent/tally.toml");
}

#[test]
fn a_locked_directory_is_refused_and_verify_says_so() {
    let data = Data::new();
    assert_eq!(data.run("mint", &[&key(1), "10"]).code, 0);
    let lock = std::fs::File::open(data.dir.join("LOCK")).unwrap();
    lock.try_lock().unwrap();

    let expected = format!(
        "data directory is locked by another ledger: {}",
        data.dir.join("LOCK").display()
    );
    assert_error(&data.run("mint", &[&key(1), "10"]), &expected);
    assert_error(&data.run("account", &[&key(1)]), &expected);
    assert_error(&data.run("load", &["--accounts", "2"]), &expected);
    let verify = data.run("verify", &[]);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert!(verify.stdout.contains("lock HELD"), "{}", verify.stdout);
    assert!(
        verify.stdout.contains("LOCK: held by another process"),
        "{}",
        verify.stdout
    );
    assert!(data
        .run("inspect", &[])
        .stdout
        .contains("lock             HELD"));

    lock.unlock().unwrap();
    let account = data.run("account", &[&key(1)]);
    assert_eq!(account.code, 0, "{}", account.stderr);
    assert!(account.stdout.contains("balance 10"));
}

#[test]
fn the_config_file_sets_the_data_directory() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("from-config");
    let config = temp.path().join("tally.toml");
    std::fs::write(
        &config,
        format!(
            "[ledger]\ndata_dir = {:?}\nshards = 2\n[wal]\nsegment_bytes = 1048576\n",
            dir.to_str().unwrap()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    assert_eq!(tally(&["mint", "--config", config, &key(4), "9"]).code, 0);
    let inspect = tally(&["inspect", "--config", config]);
    assert_eq!(inspect.code, 0, "{}", inspect.stderr);
    assert!(
        inspect.stdout.contains("shards           2"),
        "{}",
        inspect.stdout
    );
    assert!(dir.join("MANIFEST").exists());
}

#[test]
fn a_reader_that_goes_away_is_not_a_panic() {
    let data = Data::new();
    assert_eq!(data.run("mint", &[&key(1), "10"]).code, 0);
    for command in ["inspect", "verify", "account"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args([command, "--data-dir", data.dir.to_str().unwrap()])
            .args(["--config", data.config.to_str().unwrap()])
            .args((command == "account").then(|| key(1)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before the command writes (as `tally inspect | head -0` would).
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{command}: {stderr}");
        assert!(!stderr.contains("panicked"), "{command}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// crashtest and help

/// A short campaign with every kill aimed (every fifth during recovery): 20 cycles aim at each
/// phase at least twice, and the campaign itself fails unless each was hit (`--min-phase-hits`).
#[test]
fn crashtest_runs_a_short_campaign_without_violations() {
    let run = tally(&[
        "crashtest",
        "--cycles",
        "20",
        "--max-run-ms",
        "150",
        "--aimed-percent",
        "100",
        "--recovery-every",
        "5",
        "--min-phase-hits",
        "1",
    ]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let figures: Vec<&str> = run.stdout.lines().next().unwrap().split(' ').collect();
    assert_eq!(
        figures[..3],
        ["crashtest:", "20", "cycles,"],
        "{}",
        run.stdout
    );
    let checked: u64 = figures[3].parse().unwrap();
    assert!(checked > 0, "no op checked: {}", run.stdout);
    assert!(run.stdout.contains(" 0 violations"), "{}", run.stdout);
    // `verify` judged the directory every kill left (a verdict each).
    let verdicts: Vec<u64> = run
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("verify after each kill: "))
        .unwrap_or_else(|| panic!("no verify counts in {}", run.stdout))
        .split(", ")
        .filter_map(|part| part.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(verdicts.len(), 3, "{}", run.stdout);
    assert_eq!(verdicts.iter().sum::<u64>(), 20, "{}", run.stdout);
    let phases = run
        .stdout
        .lines()
        .find_map(|line| line.split_once("hits each): "))
        .unwrap_or_else(|| panic!("no phase counts in {}", run.stdout))
        .1;
    for phase in [
        "recovery",
        "credit-resend",
        "checkpoint-start",
        "checkpoint-end",
        "shutdown",
        "index-persist",
    ] {
        let counts = phases
            .split(", ")
            .find_map(|entry| entry.strip_prefix(&format!("{phase} ")))
            .unwrap_or_else(|| panic!("{phase} missing in {phases}"));
        let hits: u64 = counts.split('/').next().unwrap().parse().unwrap();
        assert!(hits >= 1, "{phase} not hit: {}", run.stdout);
    }
}

#[test]
fn help_lists_every_subcommand() {
    let run = tally(&["--help"]);
    assert_eq!(run.code, 0);
    for command in [
        "load",
        "verify",
        "inspect",
        "mint",
        "transfer",
        "account",
        "crashtest",
    ] {
        assert!(
            run.stdout.contains(&format!("  {command} ")),
            "{command} in:\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains("crash-worker"), "the worker is hidden");
    for command in ["load", "verify", "inspect", "mint", "transfer", "account"] {
        let help = tally(&[command, "--help"]);
        assert!(help.stdout.contains("--data-dir <DIR>"), "{command}");
        assert!(help.stdout.contains("--config <FILE>"), "{command}");
    }
}

/// `load --metrics-addr` serves Prometheus text with tally's metric names while it runs, and
/// `RUST_LOG` turns on the library's logs on stderr.
#[test]
fn load_serves_metrics_on_loopback_and_logs_with_rust_log() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let data_dir = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "load",
            "--accounts",
            "2000",
            "--transfers",
            "2000000",
            "--batch",
            "1",
            "--clients",
            "64",
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--metrics-addr", &address])
        .env("RUST_LOG", "tally=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut scraped = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(&address) {
            let _ = write!(
                stream,
                "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            );
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            if response.contains("tally_ops_total") && response.contains("tally_wal_syncs_total") {
                scraped = response;
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        scraped.starts_with("HTTP/1.1 200"),
        "no metrics scraped: {scraped:?}"
    );
    for name in [
        "tally_ops_total",
        "tally_op_latency_seconds",
        "tally_wal_syncs_total",
        "tally_recovery_duration_seconds",
    ] {
        assert!(scraped.contains(name), "{name} missing from {scraped}");
    }
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(
        logs.contains("recovered"),
        "RUST_LOG=tally=info shows the open: {logs}"
    );
}

// ---------------------------------------------------------------------------------------------
// graceful stop

/// SIGTERM during `load` stops the clients, finishes the calls in flight, shuts the ledger down
/// cleanly and prints the partial summary (exit 143); `verify` then finds a clean, sound
/// directory with nothing to replay.
#[test]
fn sigterm_during_load_shuts_down_cleanly_with_a_partial_summary() {
    let data = Data::new();
    let child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["load", "--data-dir", data.dir.to_str().unwrap()])
        .args(["--config", data.config.to_str().unwrap()])
        .args([
            "--accounts",
            "2000",
            "--transfers",
            "100000000",
            "--batch",
            "10",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The handler is installed before the ledger opens; wait until transfers are running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !data.dir.join("MANIFEST").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "load never created its directory"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(700));
    // SAFETY: kill only sends a signal to the child this test spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stdout}\n{stderr}");
    assert!(stdout.contains("interrupted    by SIGTERM"), "{stdout}");
    assert!(stdout.contains("conservation   ok"), "{stdout}");
    let verify = data.run("verify", &[]);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert!(
        verify.stdout.contains("sound: no problems"),
        "{}",
        verify.stdout
    );
    assert!(
        verify.stdout.contains("0 above the checkpoints replayed"),
        "{}",
        verify.stdout
    );
    let inspect = data.run("inspect", &[]);
    assert!(
        inspect
            .stdout
            .contains("shutdown         clean (every shard)"),
        "{}",
        inspect.stdout
    );
}

/// SIGINT to the campaign's parent stops it after the cycle in progress, which is still checked,
/// and prints the partial summary (exit 130).
#[test]
fn sigint_stops_a_crashtest_campaign_after_a_checked_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "crashtest",
            "--cycles",
            "100000",
            "--max-run-ms",
            "150",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: kill only sends a signal to the child this test spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(130),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("interrupted by SIGINT after"), "{stdout}");
    assert!(stdout.contains(" 0 violations"), "{stdout}");
}
