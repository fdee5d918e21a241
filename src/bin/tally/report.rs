//! The text of `tally verify` and `tally inspect`: the library returns the reports, the tool
//! words them.

use std::fmt::{self, Write};
use std::time::SystemTime;

use tally::internals::storage::accounts::{Header, HEADER_BYTES, SLOT_BYTES};
use tally::internals::verify::{Inspection, ShardInspection, Verdict, VerifyReport};

/// The report `tally verify` prints.
pub fn verify_text(report: &VerifyReport) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = write_verify(report, &mut text);
    text
}

/// The description `tally inspect` prints.
pub fn inspect_text(inspection: &Inspection) -> String {
    let mut text = String::new();
    let _ = write_inspection(inspection, &mut text);
    text
}

fn write_verify(report: &VerifyReport, f: &mut String) -> fmt::Result {
    writeln!(f, "verify {}", report.data_dir.display())?;
    let version = report
        .format_version
        .map_or_else(|| "unknown".to_string(), |v| v.to_string());
    writeln!(
        f,
        "  format version {version}, {}, {} accounts, lock {}",
        plural(report.shards as usize, "shard"),
        group_digits(report.accounts as u128),
        report.lock
    )?;
    writeln!(
        f,
        "  {} WAL records read, {} above the checkpoints replayed",
        group_digits(report.wal_records as u128),
        group_digits(report.replayed_records as u128)
    )?;
    if let Some(supply) = report.total_supply {
        writeln!(
            f,
            "  balances sum to {} + {} owed credits ({}) = total supply {}",
            group_digits(report.balance_sum),
            report.owed_credits,
            group_digits(report.owed_amount),
            group_digits(supply)
        )?;
    }
    for note in &report.notes {
        writeln!(f, "note: {note}")?;
    }
    for cut in &report.cuts {
        writeln!(f, "cut: {cut}")?;
    }
    for problem in &report.problems {
        writeln!(f, "problem: {problem}")?;
    }
    write_verdict(report, f)
}

fn write_verdict(report: &VerifyReport, f: &mut String) -> fmt::Result {
    match &report.verdict {
        Verdict::Refused(_) => writeln!(
            f,
            "NOT SOUND: open refuses the directory (see the problem above)"
        ),
        _ if !report.problems.is_empty() => writeln!(
            f,
            "NOT SOUND: opens, but {}",
            plural(report.problems.len(), "problem")
        ),
        Verdict::New => writeln!(
            f,
            "sound: no ledger yet; open creates a new one here, {}",
            plural(report.notes.len(), "note")
        ),
        Verdict::OpensAfterCutting => writeln!(
            f,
            "opens after cutting {} (never acknowledged as durable), no problems",
            plural(report.cuts.len(), "torn WAL tail")
        ),
        Verdict::Sound => writeln!(
            f,
            "sound: no problems, {}",
            plural(report.notes.len(), "note")
        ),
    }
}

fn write_inspection(inspection: &Inspection, f: &mut String) -> fmt::Result {
    write_summary(inspection, f)?;
    writeln!(f)?;
    write_table(inspection, f)?;
    write_damage(inspection, f)
}

/// The directory as a whole: version, shards, lock, shutdown state, totals at the checkpoint.
fn write_summary(inspection: &Inspection, f: &mut String) -> fmt::Result {
    let headers: Vec<&Header> = inspection
        .shards
        .iter()
        .filter_map(|s| s.header.as_ref().ok())
        .collect();
    let unclean: Vec<String> = inspection
        .shards
        .iter()
        .filter(|s| !s.header.as_ref().is_ok_and(|h| h.clean))
        .map(|s| s.shard.to_string())
        .collect();
    writeln!(f, "data directory   {}", inspection.data_dir.display())?;
    writeln!(f, "format version   {}", inspection.manifest.version)?;
    writeln!(f, "shards           {}", inspection.manifest.shard_count)?;
    writeln!(f, "lock             {}", inspection.lock)?;
    if unclean.is_empty() {
        writeln!(f, "shutdown         clean (every shard)")?;
    } else {
        writeln!(
            f,
            "shutdown         NOT clean: shard {} (the next open replays the WAL)",
            unclean.join(", ")
        )?;
    }
    write_totals(inspection, f, &headers)
}

fn write_totals(inspection: &Inspection, f: &mut String, headers: &[&Header]) -> fmt::Result {
    // Headers pass their CRC but may still hold nonsense: sums saturate.
    let accounts = headers
        .iter()
        .fold(0u64, |sum, h| sum.saturating_add(h.slot_count));
    let replay: u64 = inspection
        .shards
        .iter()
        .map(ShardInspection::records_after_checkpoint)
        .sum();
    writeln!(
        f,
        "accounts         {} at the last checkpoint; {} WAL records after it",
        group_digits(accounts as u128),
        group_digits(replay as u128)
    )?;
    let balance = headers
        .iter()
        .fold(0u128, |sum, h| sum.saturating_add(h.balance_sum));
    writeln!(
        f,
        "balances         {} at the last checkpoint",
        group_digits(balance)
    )?;
    let latest = inspection
        .shards
        .iter()
        .filter_map(|s| s.accounts_modified)
        .max();
    let checkpoint_lsns: Vec<String> = headers
        .iter()
        .map(|h| group_digits(h.checkpoint_lsn as u128))
        .collect();
    writeln!(
        f,
        "last checkpoint  LSN {} (per shard); account files last written {}",
        checkpoint_lsns.join(" / "),
        latest.map_or_else(|| "unknown".into(), describe_time)
    )
}

fn write_table(inspection: &Inspection, f: &mut String) -> fmt::Result {
    writeln!(
        f,
        "{:>5} {:>12} {:>9} {:>12} {:>10} {:>4} {:>21} {:>12} {:>12} {:>14} {:>12} {:>5}",
        "shard",
        "accounts",
        "slots",
        "accounts.dat",
        "index.bin",
        "segs",
        "WAL used / file",
        "WAL records",
        "history",
        "checkpoint LSN",
        "last LSN",
        "clean"
    )?;
    for shard in &inspection.shards {
        write_row(f, shard)?;
    }
    Ok(())
}

fn write_damage(inspection: &Inspection, f: &mut String) -> fmt::Result {
    for shard in &inspection.shards {
        if let Err(reason) = &shard.header {
            writeln!(f, "shard {:03}: {reason} (run tally verify)", shard.shard)?;
        }
        if let Some(damage) = &shard.wal_damage {
            writeln!(
                f,
                "shard {:03}: WAL stops at {damage} (a torn tail after a crash, or damage: run tally verify)",
                shard.shard
            )?;
        }
    }
    Ok(())
}

/// One shard's row of the inspection table.
fn write_row(f: &mut String, shard: &ShardInspection) -> fmt::Result {
    let header = shard.header.as_ref().ok();
    let capacity = shard
        .accounts_file_bytes
        .map(|len| len.saturating_sub(HEADER_BYTES) / SLOT_BYTES as u64);
    let dash = || "-".to_string();
    writeln!(
        f,
        "{:>5} {:>12} {:>9} {:>12} {:>10} {:>4} {:>21} {:>12} {:>12} {:>14} {:>12} {:>5}",
        format!("{:03}", shard.shard),
        header.map_or_else(dash, |h| group_digits(h.slot_count as u128)),
        capacity.map_or_else(dash, |c| group_digits(c as u128)),
        shard.accounts_file_bytes.map_or_else(dash, human_bytes),
        shard.index_file_bytes.map_or_else(dash, human_bytes),
        shard.wal_segments,
        format!(
            "{} / {}",
            human_bytes(shard.wal_used_bytes),
            human_bytes(shard.wal_file_bytes)
        ),
        group_digits(shard.wal_records as u128),
        human_bytes(shard.history_bytes),
        header.map_or_else(dash, |h| group_digits(h.checkpoint_lsn as u128)),
        // An empty WAL (as a clean shutdown leaves it) ends at the checkpoint.
        shard
            .last_lsn
            .or(header.map(|h| h.checkpoint_lsn))
            .map_or_else(dash, |lsn| group_digits(lsn as u128)),
        header.map_or_else(dash, |h| if h.clean { "yes" } else { "no" }.into()),
    )
}

/// `"1 note"`, `"2 notes"`.
pub fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// `1234567` as `"1,234,567"`.
pub fn group_digits(value: u128) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// A byte count in B, KiB, MiB or GiB.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// A file time as UTC and its age, e.g. `2025-03-01 12:00:07 UTC (42 s ago)`.
fn describe_time(time: SystemTime) -> String {
    let Ok(since_epoch) = time.duration_since(SystemTime::UNIX_EPOCH) else {
        return "before 1970".into();
    };
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    let age = SystemTime::now().duration_since(time).map_or_else(
        |_| "in the future".to_string(),
        |age| describe_age(age.as_secs()),
    );
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC ({age})",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

fn describe_age(seconds: u64) -> String {
    match seconds {
        0..=119 => format!("{seconds} s ago"),
        120..=7_199 => format!("{} min ago", seconds / 60),
        7_200..=172_799 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `tally lookup`: one transfer, a field a line.
pub fn transfer(transfer: &tally::Transfer) -> String {
    let from = transfer
        .from
        .map_or_else(|| "(mint)".to_string(), |key| key.to_string());
    format!(
        "id {}\nfrom {from}\nto {}\namount {}\nuser_data {}\ntimestamp_ns {}\n",
        transfer.id, transfer.to, transfer.amount, transfer.user_data, transfer.timestamp_ns
    )
}

/// `tally history`: one line per entry.
pub fn history(key: &tally::Pubkey, entries: &[tally::Entry]) -> String {
    let mut out = format!("history of {key}: {} entries\n", entries.len());
    for entry in entries {
        let transfer = &entry.transfer;
        let (direction, other) = match transfer.from {
            None => ("mint", String::new()),
            Some(from) if from == *key => ("to", transfer.to.to_string()),
            Some(from) => ("from", from.to_string()),
        };
        let sign = if transfer.from == Some(*key) {
            '-'
        } else {
            '+'
        };
        out.push_str(&format!(
            "{:>8} {sign}{:<12} balance {:<14} {} {direction} {other} ts {}\n",
            entry.sequence,
            transfer.amount,
            entry.balance_after,
            transfer.id,
            transfer.timestamp_ns
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1_000), "1,000");
        assert_eq!(group_digits(1_234_567), "1,234,567");
    }

    #[test]
    fn bytes_are_humane() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
