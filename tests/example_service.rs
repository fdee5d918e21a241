//! The embedding example (`examples/axum_service.rs`) builds and serves real HTTP requests on
//! loopback, /metrics included; its transfers are exactly once per `Idempotency-Key`.

#[path = "../examples/axum_service.rs"]
#[allow(dead_code)]
mod service;

use std::io::{Read, Write};
use std::net::TcpStream;

use tally::TransferId;

fn request(address: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    request_with(address, method, path, "", body)
}

/// A request with `headers` (each line ending in `\r\n`) added.
fn request_with(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_mint_transfer_account_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let state = service::app(dir.path()).await.unwrap();
    let ledger = state.ledger.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, service::router(state)).await });

    let alice = "aa".repeat(32);
    let bob = "bb".repeat(32);
    let key = |id: TransferId| format!("Idempotency-Key: {id}\r\n");
    let results = tokio::task::spawn_blocking(move || {
        vec![
            request(
                address,
                "POST",
                "/mint",
                &format!(r#"{{"to":"{alice}","amount":100}}"#),
            ),
            request_with(
                address,
                "POST",
                "/transfer",
                &key(TransferId::new()),
                &format!(r#"{{"from":"{alice}","to":"{bob}","amount":30}}"#),
            ),
            request_with(
                address,
                "POST",
                "/transfer",
                &key(TransferId::new()),
                &format!(r#"{{"from":"{bob}","to":"{alice}","amount":31}}"#),
            ),
            request(address, "GET", &format!("/account/{bob}"), ""),
            request(address, "GET", "/account/xyz", ""),
            request(address, "GET", "/health", ""),
            request(address, "GET", "/metrics", ""),
        ]
    })
    .await
    .unwrap();
    assert_eq!(results[0].0, 200, "{:?}", results[0]);
    assert_eq!(results[1].0, 200, "{:?}", results[1]);
    assert_eq!(results[2].0, 422, "insufficient funds: {:?}", results[2]);
    assert_eq!(results[3].0, 200);
    assert!(results[3].1.contains(r#""balance":30"#), "{}", results[3].1);
    assert_eq!(results[4].0, 400);
    assert_eq!(results[5].0, 200);
    assert!(results[5].1.contains(r#""degraded":false"#));
    assert_eq!(results[6].0, 200);
    assert!(results[6].1.contains("tally_ops_total"), "{}", results[6].1);
    assert!(
        results[6].1.contains("tally_op_latency_seconds"),
        "{}",
        results[6].1
    );
    ledger.shutdown().await.unwrap();
}

/// A transfer is exactly once per `Idempotency-Key`: a retried request gets the identical
/// receipt and the money moves once; the same key with another amount is a 409; a missing or
/// malformed key is a 400 and moves nothing. Refusals are remembered per key too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_transfer_with_the_same_idempotency_key_moves_money_once() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = tally::Ledger::open(tally::Config::new(dir.path()))
        .await
        .unwrap();
    // The Prometheus recorder is per process, and the other test of this binary installs it:
    // serve this ledger without `service::app`.
    let state = service::AppState {
        ledger: ledger.clone(),
        metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, service::router(state)).await });

    let alice = "a1".repeat(32);
    let bob = "b2".repeat(32);
    let id = TransferId::new();
    let refused_id = TransferId::new();
    let results = tokio::task::spawn_blocking(move || {
        let pay = |headers: &str, amount: u64| {
            request_with(
                address,
                "POST",
                "/transfer",
                headers,
                &format!(r#"{{"from":"{alice}","to":"{bob}","amount":{amount}}}"#),
            )
        };
        let key = format!("Idempotency-Key: {id}\r\n");
        let refused_key = format!("Idempotency-Key: {refused_id}\r\n");
        vec![
            request(
                address,
                "POST",
                "/mint",
                &format!(r#"{{"to":"{alice}","amount":100}}"#),
            ),
            pay(&key, 30),
            pay(&key, 30),
            pay(&key, 31),
            pay("", 30),
            pay("Idempotency-Key: xyz\r\n", 30),
            pay(
                &format!("Idempotency-Key: {}\r\n", &id.to_string()[1..]),
                30,
            ),
            pay(&refused_key, 500),
            request(
                address,
                "POST",
                "/mint",
                &format!(r#"{{"to":"{alice}","amount":1000}}"#),
            ),
            pay(&refused_key, 500),
            pay(&key, 30),
            request(address, "GET", &format!("/account/{bob}"), ""),
        ]
    })
    .await
    .unwrap();
    assert_eq!(results[0].0, 200, "{:?}", results[0]);
    assert_eq!(results[1].0, 200, "{:?}", results[1]);
    assert!(results[1].1.contains(r#""lsn""#), "{}", results[1].1);
    assert_eq!(results[2], results[1], "a retry: the identical receipt");
    assert_eq!(
        results[3].0, 409,
        "same key, other amount: {:?}",
        results[3]
    );
    assert!(results[3].1.contains(&id.to_string()), "{}", results[3].1);
    for (n, what) in [(4, "no key"), (5, "not hex"), (6, "31 digits")] {
        assert_eq!(results[n].0, 400, "{what}: {:?}", results[n]);
    }
    assert_eq!(results[7].0, 422, "insufficient funds: {:?}", results[7]);
    assert_eq!(results[8].0, 200, "{:?}", results[8]);
    assert_eq!(
        results[9], results[7],
        "a refused key is refused again, identically, after funds arrive"
    );
    assert_eq!(results[10], results[1], "still the identical receipt");
    assert_eq!(results[11].0, 200);
    assert!(
        results[11].1.contains(r#""balance":30"#),
        "the money moved once: {}",
        results[11].1
    );
    let alice = ledger
        .account(&"a1".repeat(32).parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((alice.balance, alice.sequence), (1_070, 3));
    ledger.shutdown().await.unwrap();
}
