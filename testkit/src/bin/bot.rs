//! The real `berth-bot` binary, rebuilt by `cargo test` for the end-to-end tests.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    berth_bot::cli().await
}
