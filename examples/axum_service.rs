//! A tiny HTTP service that embeds a tally ledger, the way a real application would:
//!
//! ```text
//! cargo run --release --example axum_service -- ./service-data 127.0.0.1:8080
//! curl -X POST localhost:8080/mint -H 'content-type: application/json' -d '{"to":"<64 hex>","amount":100}'
//! curl -X POST localhost:8080/transfer -H 'content-type: application/json' \
//!      -H "Idempotency-Key: $(openssl rand -hex 16)" -d '{"from":"..","to":"..","amount":5}'
//! curl localhost:8080/account/<64 hex>
//! curl localhost:8080/health
//! curl localhost:8080/metrics            # Prometheus text, tally_* metrics included
//! ```
//!
//! A transfer needs an `Idempotency-Key` header: 32 hex digits, the transfer's id. A client that
//! did not hear the answer (a timeout, a dropped connection) sends the same request with the same
//! key again and gets the identical receipt; the money moves once. The same key with a different
//! body is refused with 409 Conflict. (A mint takes the header too; without it the mint gets a
//! fresh id.)
//!
//! It binds to loopback only.

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::{json, Value};
use tally::{Config, Ledger, LedgerError, Pubkey, Receipt, TransferId};

#[derive(Clone)]
pub struct AppState {
    pub ledger: Ledger,
    pub metrics: PrometheusHandle,
}

#[derive(Deserialize)]
pub struct MintRequest {
    to: String,
    amount: u64,
}

#[derive(Deserialize)]
pub struct TransferRequest {
    from: String,
    to: String,
    amount: u64,
}

type Reply = (StatusCode, Json<Value>);

fn parse_key(text: &str) -> Result<Pubkey, Reply> {
    text.parse().map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("bad key: {e}") })),
        )
    })
}

/// The header that carries a transfer's id.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The transfer id in the `Idempotency-Key` header; a missing or malformed key is a 400.
fn idempotency_key(headers: &HeaderMap) -> Result<TransferId, Reply> {
    let bad = |why: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("Idempotency-Key: {why}") })),
        )
    };
    let value = headers
        .get(IDEMPOTENCY_KEY)
        .ok_or_else(|| bad("missing (32 hex digits)".into()))?;
    let text = value
        .to_str()
        .map_err(|_| bad("not 32 hex digits".into()))?;
    let id: TransferId = text.parse().map_err(|e| bad(format!("{e}")))?;
    if !id.is_valid() {
        return Err(bad(format!("{id} is reserved")));
    }
    Ok(id)
}

fn receipt_reply(receipt: Receipt) -> Reply {
    (
        StatusCode::OK,
        Json(json!({
            "shard": receipt.shard,
            "lsn": receipt.lsn,
            "timestamp_ns": receipt.timestamp_ns,
        })),
    )
}

fn failure(error: LedgerError) -> Reply {
    let status = match error {
        LedgerError::InsufficientFunds { .. }
        | LedgerError::SameAccount
        | LedgerError::ZeroAmount
        | LedgerError::Overflow => StatusCode::UNPROCESSABLE_ENTITY,
        LedgerError::AccountNotFound(_) => StatusCode::NOT_FOUND,
        LedgerError::IdConflict { .. } => StatusCode::CONFLICT,
        LedgerError::InvalidId { .. } => StatusCode::BAD_REQUEST,
        LedgerError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(json!({ "error": error.to_string() })))
}

async fn mint(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<MintRequest>,
) -> Reply {
    let to = match parse_key(&request.to) {
        Ok(key) => key,
        Err(reply) => return reply,
    };
    let id = if headers.contains_key(IDEMPOTENCY_KEY) {
        match idempotency_key(&headers) {
            Ok(id) => id,
            Err(reply) => return reply,
        }
    } else {
        TransferId::new()
    };
    match state.ledger.mint(id, to, request.amount).await {
        Ok(receipt) => receipt_reply(receipt),
        Err(error) => failure(error),
    }
}

/// A transfer, exactly once per `Idempotency-Key`: a retry with the same key and body gets the
/// identical receipt (or the identical refusal), the same key with another body a 409.
async fn transfer(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<TransferRequest>,
) -> Reply {
    let id = match idempotency_key(&headers) {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let (from, to) = match (parse_key(&request.from), parse_key(&request.to)) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(reply), _) | (_, Err(reply)) => return reply,
    };
    match state.ledger.transfer(id, from, to, request.amount).await {
        Ok(receipt) => receipt_reply(receipt),
        Err(error) => failure(error),
    }
}

async fn account(State(state): State<AppState>, Path(key): Path<String>) -> Reply {
    let key = match parse_key(&key) {
        Ok(key) => key,
        Err(reply) => return reply,
    };
    match state.ledger.account(&key).await {
        Ok(Some(account)) => (
            StatusCode::OK,
            Json(
                json!({ "key": account.key.to_string(), "balance": account.balance, "sequence": account.sequence }),
            ),
        ),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no such account" })),
        ),
        Err(error) => failure(error),
    }
}

async fn health(State(state): State<AppState>) -> Reply {
    let health = state.ledger.health();
    let status = if health.degraded {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(json!({ "degraded": health.degraded, "reasons": health.reasons })),
    )
}

async fn metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

/// The service's routes, separate from `main` so a test can serve them too.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/mint", post(mint))
        .route("/transfer", post(transfer))
        .route("/account/{key}", get(account))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Installs the Prometheus recorder (once per process) and opens the ledger.
pub async fn app(data_dir: &std::path::Path) -> Result<AppState, Box<dyn std::error::Error>> {
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let ledger = Ledger::open(Config::new(data_dir)).await?;
    Ok(AppState { ledger, metrics })
}

#[allow(dead_code)] // a test includes this file as a module and serves `router` itself
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data_dir = args.next().unwrap_or_else(|| "./service-data".into());
    let address: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;
    if !address.ip().is_loopback() {
        return Err("this example only binds to a loopback address".into());
    }
    let state = app(std::path::Path::new(&data_dir)).await?;
    let ledger = state.ledger.clone();
    let listener = tokio::net::TcpListener::bind(address).await?;
    println!("tally service on http://{address}");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    ledger.shutdown().await?;
    Ok(())
}
