//! redb: one write transaction per batch, committed with `Durability::Immediate`.

use std::path::Path;

use anyhow::{bail, Context};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tally::Pubkey;

use crate::peer::Peer;
use crate::workload::{index_of, Transfer};

const ACCOUNTS: TableDefinition<[u8; 32], u64> = TableDefinition::new("accounts");

pub struct Redb {
    db: Database,
}

impl Redb {
    /// Opens a new database with redb's default settings (1 GiB cache).
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let db = Database::create(dir.join("accounts.redb")).context("open redb")?;
        Ok(Redb { db })
    }
}

impl Peer for Redb {
    fn create_accounts(&mut self, keys: &[Pubkey], balance: u64) -> anyhow::Result<()> {
        for chunk in keys.chunks(65_536) {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut table = txn.open_table(ACCOUNTS)?;
                for key in chunk {
                    table.insert(key.0, balance)?;
                }
            }
            txn.commit()?;
        }
        Ok(())
    }

    fn commit_batch(&mut self, keys: &[Pubkey], batch: &[Transfer]) -> anyhow::Result<u64> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut rejected = 0;
        {
            let mut table = txn.open_table(ACCOUNTS)?;
            for t in batch {
                let (from, to) = (&keys[t.from as usize], &keys[t.to as usize]);
                let from_balance = table
                    .get(from.0)?
                    .map(|guard| guard.value())
                    .with_context(|| format!("redb: account {from} not found"))?;
                if from_balance < t.amount {
                    rejected += 1;
                    continue;
                }
                let to_balance = table
                    .get(to.0)?
                    .map(|guard| guard.value())
                    .with_context(|| format!("redb: account {to} not found"))?;
                table.insert(from.0, from_balance - t.amount)?;
                table.insert(to.0, to_balance + t.amount)?;
            }
        }
        txn.commit()?;
        Ok(rejected)
    }

    fn balances(&mut self) -> anyhow::Result<Vec<(u64, u64)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ACCOUNTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, balance) = entry?;
            let Some(index) = index_of(&key.value()) else {
                bail!("redb: short key");
            };
            out.push((index, balance.value()));
        }
        Ok(out)
    }
}
