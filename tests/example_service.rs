//! The embedding example (`examples/axum_service.rs`) builds and serves real HTTP requests on
//! loopback, /metrics included.

#[path = "../examples/axum_service.rs"]
#[allow(dead_code)]
mod service;

use std::io::{Read, Write};
use std::net::TcpStream;

fn request(address: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
    let results = tokio::task::spawn_blocking(move || {
        vec![
            request(
                address,
                "POST",
                "/mint",
                &format!(r#"{{"to":"{alice}","amount":100}}"#),
            ),
            request(
                address,
                "POST",
                "/transfer",
                &format!(r#"{{"from":"{alice}","to":"{bob}","amount":30}}"#),
            ),
            request(
                address,
                "POST",
                "/transfer",
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
