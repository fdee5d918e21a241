//! An actix application that moves money by sending tally messages from an actor of its own.
//!
//! The application runs its own actix `System`; tally runs its actors on threads of its own and
//! hands out the address of a front actor (`Ledger::actor`). A `Teller` actor of the application
//! sends it `Apply`, `Submit`, `GetAccount` and `GetStats` messages.
//!
//! ```sh
//! cargo run --example actix_app
//! ```

use tally::actix::prelude::*;
use tally::messages::{Apply, GetAccount, GetStats, LedgerActor, Submit};
use tally::{Config, Ledger, LedgerError, Op, Pubkey, TransferId};

/// The application's actor: pays out a payroll through the ledger and reports balances.
pub struct Teller {
    pub ledger: Addr<LedgerActor>,
}

impl Actor for Teller {
    type Context = Context<Self>;
}

/// Fund `treasury`, pay each employee `salary`, and return every balance afterwards.
#[derive(Message)]
#[rtype(result = "Result<Vec<u64>, LedgerError>")]
pub struct Payroll {
    pub treasury: Pubkey,
    pub employees: Vec<Pubkey>,
    pub salary: u64,
}

impl Handler<Payroll> for Teller {
    type Result = ResponseFuture<Result<Vec<u64>, LedgerError>>;

    fn handle(&mut self, payroll: Payroll, _: &mut Context<Self>) -> Self::Result {
        let ledger = self.ledger.clone();
        Box::pin(async move {
            let closed = |_| LedgerError::Closed;
            let funding = payroll.salary * payroll.employees.len() as u64;
            let mint = Op::Mint {
                id: TransferId::new(),
                user_data: 0,
                to: payroll.treasury,
                amount: funding,
            };
            ledger.send(Apply(mint)).await.map_err(closed)??;
            let payments = payroll
                .employees
                .iter()
                .map(|&employee| Op::Transfer {
                    id: TransferId::new(),
                    user_data: 0,
                    from: payroll.treasury,
                    to: employee,
                    amount: payroll.salary,
                })
                .collect();
            for result in ledger.send(Submit(payments)).await.map_err(closed)?? {
                result?;
            }
            let mut balances = Vec::new();
            for key in std::iter::once(payroll.treasury).chain(payroll.employees) {
                let account = ledger.send(GetAccount(key)).await.map_err(closed)??;
                balances.push(account.map_or(0, |a| a.balance));
            }
            let stats = ledger.send(GetStats).await.map_err(closed)??;
            assert_eq!(stats.total_supply, funding as u128);
            Ok(balances)
        })
    }
}

/// Opens a ledger in `data_dir` on a tokio runtime of its own, runs a payroll from an actor of an
/// actix `System`, and shuts the ledger down. Returns the treasury's and employees' balances.
pub fn run(data_dir: &std::path::Path) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Runtime::new()?;
    let ledger = runtime.block_on(Ledger::open(Config::new(data_dir).shards(2)))?;
    let front = ledger.actor();
    let system = System::new();
    let balances = system.block_on(async move {
        let teller = Teller { ledger: front }.start();
        let payroll = Payroll {
            treasury: Pubkey([0xAA; 32]),
            employees: (1..=3).map(|n| Pubkey([n; 32])).collect(),
            salary: 1_500,
        };
        teller.send(payroll).await
    })??;
    runtime.block_on(ledger.shutdown())?;
    Ok(balances)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("tally-actix-app-{}", std::process::id()));
    let balances = run(&dir)?;
    println!("treasury and employees after payroll: {balances:?}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
