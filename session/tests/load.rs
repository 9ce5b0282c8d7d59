//! A rough fan-out throughput check, ignored by default:
//! `cargo test --release -p berth-session --test load -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use common::start;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check"]
async fn fan_out_throughput() {
    const MEMBERS: usize = 100;
    const SENDERS: usize = 5;
    const PER_SENDER: usize = 2000;
    let server = start(&[
        "--message-rate",
        "1000000",
        "--message-burst",
        "1000000",
        "--members-per-room",
        "200",
    ])
    .await;
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for i in 0..MEMBERS {
        let (client, _) = server.join("r-load", &format!("user{i}")).await;
        let (tx, rx) = client.ws.split();
        writers.push(tx);
        readers.push(rx);
    }
    let total = SENDERS * PER_SENDER;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut rx in readers {
        tasks.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < total {
                match rx.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("\"message\"") => seen += 1,
                    Some(Ok(_)) => {}
                    other => panic!("reader ended: {other:?}"),
                }
            }
        }));
    }
    for mut tx in writers.drain(..SENDERS) {
        tokio::spawn(async move {
            for i in 0..PER_SENDER {
                let frame =
                    format!(r#"{{"type":"send","text":"message number {i} with some text"}}"#);
                tx.send(Message::text(frame)).await.unwrap();
            }
            // keep the sender's socket open
            std::future::pending::<()>().await;
        });
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{total} messages to {MEMBERS} members in {secs:.2} s: {:.0} msg/s in, {:.0} frames/s out",
        total as f64 / secs,
        (total * MEMBERS) as f64 / secs
    );
}
