//! Messages for actix applications: the ledger's operations as `actix::Message`s.
//!
//! [`Ledger::actor`](crate::Ledger::actor) hands out the address of a [`LedgerActor`], a small
//! front actor that runs on the ledger's own actix threads. An actor of the application's own
//! `System` (or any thread) sends it these messages and gets exactly what the async methods
//! return, through the same code:
//!
//! | message | result | same as |
//! |---|---|---|
//! | [`Apply`]`(Op)` | `Result<Receipt, LedgerError>` | `Ledger::mint` / `Ledger::transfer` |
//! | [`Submit`]`(Vec<Op>)` | `Result<Vec<Result<Receipt, LedgerError>>, LedgerError>` | `Ledger::submit` |
//! | [`GetAccount`]`(Pubkey)` | `Result<Option<Account>, LedgerError>` | `Ledger::account` |
//! | [`GetStats`] | `Result<Stats, LedgerError>` | `Ledger::stats` |
//! | [`Lookup`]`(TransferId)` | `Result<Option<Transfer>, LedgerError>` | `Ledger::lookup` |
//! | [`GetHistory`] | `Result<Vec<Entry>, LedgerError>` | `Ledger::history` |
//!
//! Every op carries its [`TransferId`]: a message re-sent after a timeout or a
//! restart is applied once, exactly as a retried call is.
//!
//! `send` waits for mailbox space (back-pressure) and for the answer; `try_send` fails at once
//! when the mailbox is full. `do_send` is fire-and-forget: it ignores the mailbox bound and drops
//! the answer, so a caller that uses it cannot know whether an operation committed.
//!
//! The messages are built for the actix version tally re-exports as `tally::actix` (0.13); use
//! that one (or the same version) in the application.
//!
//! The front actor holds a weak handle: it does not keep a ledger open. Once the ledger is shut
//! down (or every [`Ledger`] clone is dropped) its actors stop: a message then fails with
//! `MailboxError::Closed`, or is answered [`LedgerError::Closed`] if it was already taken.
//!
//! [`Ledger`]: crate::Ledger

use std::sync::Weak;

use actix::prelude::*;

use crate::{Account, Entry, LedgerError, Op, Pubkey, Receipt, Stats, Transfer, TransferId};

/// One mint or transfer. Answers like `Ledger::mint` / `Ledger::transfer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<Receipt, LedgerError>")]
pub struct Apply(pub Op);

/// A batch, applied as if one op after another. Answers like `Ledger::submit`.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<Vec<Result<Receipt, LedgerError>>, LedgerError>")]
pub struct Submit(pub Vec<Op>);

/// Reads one account. Answers like `Ledger::account`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<Option<Account>, LedgerError>")]
pub struct GetAccount(pub Pubkey);

/// The ledger's figures. Answers like `Ledger::stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<Stats, LedgerError>")]
pub struct GetStats;

/// The applied transfer with an id. Answers like `Ledger::lookup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<Option<Transfer>, LedgerError>")]
pub struct Lookup(pub TransferId);

/// A page of an account's history. Answers like `Ledger::history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<Vec<Entry>, LedgerError>")]
pub struct GetHistory {
    pub key: Pubkey,
    pub after: u64,
    pub limit: usize,
}

/// The front actor that turns messages into ledger calls. Get its address from
/// [`Ledger::actor`](crate::Ledger::actor).
pub struct LedgerActor {
    ledger: Weak<crate::Inner>,
}

impl LedgerActor {
    pub(crate) fn new(ledger: Weak<crate::Inner>) -> Self {
        LedgerActor { ledger }
    }

    /// The ledger, while any handle to it is alive.
    fn ledger(&self) -> Result<crate::Ledger, LedgerError> {
        self.ledger
            .upgrade()
            .map(|inner| crate::Ledger { inner })
            .ok_or(LedgerError::Closed)
    }
}

impl Actor for LedgerActor {
    type Context = Context<Self>;
}

impl Handler<Apply> for LedgerActor {
    type Result = ResponseFuture<Result<Receipt, LedgerError>>;

    fn handle(&mut self, Apply(op): Apply, _: &mut Context<Self>) -> Self::Result {
        let ledger = self.ledger();
        Box::pin(async move { ledger?.apply(op).await })
    }
}

impl Handler<Submit> for LedgerActor {
    type Result = ResponseFuture<Result<Vec<Result<Receipt, LedgerError>>, LedgerError>>;

    fn handle(&mut self, Submit(ops): Submit, _: &mut Context<Self>) -> Self::Result {
        let ledger = self.ledger();
        Box::pin(async move { ledger?.submit(ops).await })
    }
}

impl Handler<GetAccount> for LedgerActor {
    type Result = ResponseFuture<Result<Option<Account>, LedgerError>>;

    fn handle(&mut self, GetAccount(key): GetAccount, _: &mut Context<Self>) -> Self::Result {
        let ledger = self.ledger();
        Box::pin(async move { ledger?.account(&key).await })
    }
}

impl Handler<GetStats> for LedgerActor {
    type Result = ResponseFuture<Result<Stats, LedgerError>>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        let ledger = self.ledger();
        Box::pin(async move { ledger?.stats().await })
    }
}

impl Handler<Lookup> for LedgerActor {
    type Result = ResponseFuture<Result<Option<Transfer>, LedgerError>>;

    fn handle(&mut self, Lookup(id): Lookup, _: &mut Context<Self>) -> Self::Result {
        let ledger = self.ledger();
        Box::pin(async move { ledger?.lookup(id).await })
    }
}

impl Handler<GetHistory> for LedgerActor {
    type Result = ResponseFuture<Result<Vec<Entry>, LedgerError>>;

    fn handle(&mut self, message: GetHistory, _: &mut Context<Self>) -> Self::Result {
        let ledger = self.ledger();
        Box::pin(async move {
            ledger?
                .history(&message.key, message.after, message.limit)
                .await
        })
    }
}
