//! SQLite through rusqlite (bundled): WAL journal, `synchronous=FULL`, one transaction per batch.

use std::path::Path;

use anyhow::{bail, Context};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tally::Pubkey;

use crate::peer::Peer;
use crate::workload::{index_of, Transfer};

pub struct Sqlite {
    conn: Connection,
}

impl Sqlite {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(dir.join("accounts.sqlite")).context("open SQLite")?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("SQLite refused WAL mode: journal_mode = {mode}");
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        let synchronous: i64 = conn.pragma_query_value(None, "synchronous", |row| row.get(0))?;
        if synchronous != 2 {
            bail!("SQLite synchronous is {synchronous}, not FULL (2)");
        }
        // 64 MiB page cache (the default is 2 MiB): the whole table stays in memory, as in tally.
        conn.pragma_update(None, "cache_size", -65_536)?;
        conn.execute_batch(
            "CREATE TABLE accounts (key BLOB PRIMARY KEY NOT NULL, balance INTEGER NOT NULL) \
             WITHOUT ROWID",
        )?;
        Ok(Sqlite { conn })
    }
}

fn balance_of(tx: &Transaction<'_>, key: &Pubkey) -> anyhow::Result<u64> {
    let mut select = tx.prepare_cached("SELECT balance FROM accounts WHERE key = ?1")?;
    let balance: Option<i64> = select
        .query_row(params![&key.0[..]], |row| row.get(0))
        .optional()?;
    let balance = balance.with_context(|| format!("SQLite: account {key} not found"))?;
    u64::try_from(balance).context("SQLite: negative balance")
}

fn set_balance(tx: &Transaction<'_>, key: &Pubkey, balance: u64) -> anyhow::Result<()> {
    let mut update = tx.prepare_cached("UPDATE accounts SET balance = ?1 WHERE key = ?2")?;
    let changed = update.execute(params![i64::try_from(balance)?, &key.0[..]])?;
    if changed != 1 {
        bail!("SQLite: update of {key} changed {changed} rows");
    }
    Ok(())
}

impl Peer for Sqlite {
    fn create_accounts(&mut self, keys: &[Pubkey], balance: u64) -> anyhow::Result<()> {
        let balance = i64::try_from(balance)?;
        for chunk in keys.chunks(65_536) {
            let tx = self.conn.transaction()?;
            {
                let mut insert =
                    tx.prepare_cached("INSERT INTO accounts (key, balance) VALUES (?1, ?2)")?;
                for key in chunk {
                    insert.execute(params![&key.0[..], balance])?;
                }
            }
            tx.commit()?;
        }
        Ok(())
    }

    fn commit_batch(&mut self, keys: &[Pubkey], batch: &[Transfer]) -> anyhow::Result<u64> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let mut rejected = 0;
        for t in batch {
            let (from, to) = (&keys[t.from as usize], &keys[t.to as usize]);
            let from_balance = balance_of(&tx, from)?;
            if from_balance < t.amount {
                rejected += 1;
                continue;
            }
            let to_balance = balance_of(&tx, to)?;
            set_balance(&tx, from, from_balance - t.amount)?;
            set_balance(&tx, to, to_balance + t.amount)?;
        }
        tx.commit()?;
        Ok(rejected)
    }

    fn settle(&mut self) -> anyhow::Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn balances(&mut self) -> anyhow::Result<Vec<(u64, u64)>> {
        let mut select = self.conn.prepare("SELECT key, balance FROM accounts")?;
        let rows = select.query_map([], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (key, balance) = row?;
            let index = index_of(&key).context("SQLite: short key")?;
            out.push((index, u64::try_from(balance)?));
        }
        Ok(out)
    }
}
