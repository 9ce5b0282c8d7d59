//! The `berth-bot` binary; everything is in [`berth_bot::cli`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    berth_bot::cli().await
}
