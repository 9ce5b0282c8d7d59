//! Two-stage shutdown, as in linkerd2-proxy's `linkerd/signal`: the first SIGINT or SIGTERM asks
//! the service to stop gracefully (drain), a second one asks it to stop now.

use tokio_util::sync::CancellationToken;

/// The two shutdown stages, each a token that every task can watch.
#[derive(Debug, Clone)]
pub struct Signals {
    /// Cancelled on the first signal: stop taking work, finish what is in flight.
    pub shutdown: CancellationToken,
    /// Cancelled on the second signal: close whatever remains at once.
    pub force: CancellationToken,
}

impl Signals {
    /// Starts listening for SIGINT and SIGTERM (Ctrl-C only where SIGTERM cannot be registered
    /// or does not exist). Call inside a tokio runtime.
    pub fn listen() -> Self {
        let signals = Signals {
            shutdown: CancellationToken::new(),
            force: CancellationToken::new(),
        };
        tokio::spawn(cancel_on_signals(signals.clone()));
        signals
    }
}

async fn cancel_on_signals(signals: Signals) {
    let mut source = Source::new();
    for (token, what) in [
        (signals.shutdown, "shutting down"),
        (signals.force, "second signal: stopping now"),
    ] {
        match source.next().await {
            Ok(name) => tracing::info!(signal = name, "{what}"),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for signals");
                return;
            }
        }
        token.cancel();
    }
}

/// Where signals come from.
struct Source {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Source {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let term = match signal(SignalKind::terminate()) {
                Ok(term) => Some(term),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops this process");
                    None
                }
            };
            Source { term }
        }
        #[cfg(not(unix))]
        Source {}
    }

    /// The name of the next signal received.
    async fn next(&mut self) -> std::io::Result<&'static str> {
        #[cfg(unix)]
        if let Some(term) = &mut self.term {
            return tokio::select! {
                r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT"),
                _ = term.recv() => Ok("SIGTERM"),
            };
        }
        tokio::signal::ctrl_c().await.map(|()| "SIGINT")
    }
}
