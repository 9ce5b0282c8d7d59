//! `berth bench`: its flags ([`BenchArgs`]) and what it prints — a table, or one JSON object
//! with `--json`; a status line on stderr while it runs (on a terminal, without `--quiet`).

use std::io::{IsTerminal as _, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::options::{BenchOptions, DirectTarget, Fleet, Target};

/// Most loopback addresses `--bind-ips N` expands to.
const MAX_BIND_IPS: u32 = 250;

/// Flags of `berth bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Rooms to create (or, with --direct, to fill: bench-room-<offset+i>).
    #[arg(long, default_value_t = 10)]
    pub rooms: u32,

    /// Members per room, each its own user and connection. 0 only creates the rooms (a
    /// placement benchmark).
    #[arg(long, default_value_t = 10)]
    pub members: u32,

    /// Members per room that send (default: all).
    #[arg(long)]
    pub senders: Option<u32>,

    /// Messages per second per sending member. A comma-separated list runs one step per value
    /// on the same connections (a rate sweep). 0 holds the connections idle.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub rate: Vec<f64>,

    /// Message text size in bytes (at least the ~30-byte timing stamp).
    #[arg(long, default_value_t = 100)]
    pub size: usize,

    /// How long each rate step sends (e.g. 10s, 1m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,

    /// Spread the connects evenly over this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub ramp_up: Duration,

    /// After each step, wait at most this long for messages still on their way.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub drain: Duration,

    /// Logins and room creates in flight at once.
    #[arg(long, default_value_t = 16)]
    pub create_concurrency: usize,

    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Bound on one connection's TCP connect, upgrade and welcome.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,

    /// Local addresses to connect from, round robin: a list (127.0.0.1,127.0.0.2) or a count N
    /// for 127.0.0.1 to 127.0.0.N. Each address pair has only ~28,000 ports.
    #[arg(long)]
    pub bind_ips: Option<BindIps>,

    /// Talk straight to this session server (ws://HOST:PORT/PATH) with self-minted tickets:
    /// no backend, no scheduler.
    #[arg(long, value_name = "URL", requires_all = ["server_id", "ticket_key"])]
    pub direct: Option<String>,

    /// With --direct: the server's id (the tickets' audience).
    #[arg(long, requires = "direct")]
    pub server_id: Option<String>,

    /// With --direct: the ticket private key (PKCS#8 PEM, Ed25519; the backend's
    /// ticket.key.pem).
    #[arg(long, value_name = "PRIVATE.pem", requires = "direct")]
    pub ticket_key: Option<PathBuf>,

    /// With --direct: index of the first room, so that several processes can load one server
    /// without sharing rooms.
    #[arg(long, default_value_t = 0, requires = "direct")]
    pub room_offset: u32,

    /// Stop the rate sweep after the first step that saturated (deliveries still missing after
    /// --drain, or members lost).
    #[arg(long)]
    pub until_saturated: bool,

    /// The server's process id, when it runs on this machine: each step reports its CPU use
    /// and memory beside the generator's.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// The scheduler (one URL, or its replicas comma-separated), to report how many session
    /// servers the run needed (with the secret).
    #[arg(long, env = "BERTH_SCHEDULER_URL")]
    pub scheduler_url: Option<String>,

    /// The cluster secret for the scheduler API.
    #[arg(long, env = "BERTH_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<Secret>,

    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,

    /// No status line while running.
    #[arg(long)]
    pub quiet: bool,
}

/// A secret flag value, kept out of `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.trim().to_owned()))
    }
}

/// `--bind-ips`: a list of addresses, or a count of loopback addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindIps(pub Vec<IpAddr>);

impl FromStr for BindIps {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(n) = s.trim().parse::<u32>() {
            if n == 0 || n > MAX_BIND_IPS {
                return Err(format!("a count must be between 1 and {MAX_BIND_IPS}"));
            }
            return Ok(BindIps(
                (1..=n)
                    .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
                    .collect(),
            ));
        }
        s.split(',')
            .map(|a| a.trim().parse::<IpAddr>().map_err(|e| format!("{a}: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(BindIps)
    }
}

impl BenchArgs {
    /// The run these flags ask for; `backend_url` is `berth --backend`.
    pub fn into_options(self, backend_url: &str) -> BenchOptions {
        let target = match self.direct {
            Some(url) => Target::Direct(DirectTarget {
                url,
                server_id: self.server_id.unwrap_or_default(),
                ticket_key: self.ticket_key.unwrap_or_default(),
                room_offset: self.room_offset,
            }),
            None => Target::Backend {
                url: backend_url.to_owned(),
                fleet: match (self.scheduler_url, self.cluster_secret) {
                    (Some(scheduler_url), Some(secret)) if !secret.0.is_empty() => Some(Fleet {
                        scheduler_url,
                        secret: secret.0,
                    }),
                    _ => None,
                },
            },
        };
        BenchOptions {
            target,
            rooms: self.rooms,
            members: self.members,
            senders: self.senders,
            rates: self.rate,
            size: self.size,
            duration: self.duration,
            ramp_up: self.ramp_up,
            drain: self.drain,
            create_concurrency: self.create_concurrency,
            connect_concurrency: self.connect_concurrency,
            connect_timeout: self.connect_timeout,
            bind_ips: self.bind_ips.map(|b| b.0).unwrap_or_default(),
            until_saturated: self.until_saturated,
            server_pid: self.server_pid,
            progress: !self.quiet && !self.json && std::io::stderr().is_terminal(),
        }
    }
}

/// Runs `berth bench` and prints its report. Ctrl-C ends the run early and still prints what
/// ran. Fails when no member could connect (or, creating only, no room was created).
pub async fn run(args: BenchArgs, backend_url: &str) -> anyhow::Result<()> {
    let json = args.json;
    let quiet = args.quiet;
    let options = args.into_options(backend_url);
    let shutdown = CancellationToken::new();
    let on_ctrl_c = shutdown.clone();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });
    let report = super::run_until(options, shutdown).await;
    ctrl_c.abort();
    let report = report?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        if !quiet {
            for w in report.warnings() {
                eprintln!("{w}");
            }
        }
    } else {
        write!(out, "{}", report.table())?;
    }
    out.flush()?;
    if !report.is_useful() {
        anyhow::bail!("bench: nothing was measured (see the errors in the report)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrap {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn flags_become_options() {
        let w = Wrap::try_parse_from([
            "x",
            "--rooms",
            "3",
            "--members",
            "4",
            "--rate",
            "0.5,2",
            "--duration",
            "1500ms",
            "--bind-ips",
            "3",
            "--scheduler-url",
            "http://s:1",
            "--cluster-secret",
            "sek",
        ])
        .unwrap();
        assert!(!format!("{w:?}").contains("sek"));
        let o = w.args.into_options("http://b:2");
        assert_eq!((o.rooms, o.members), (3, 4));
        assert_eq!(o.rates, vec![0.5, 2.0]);
        assert_eq!(o.duration, Duration::from_millis(1500));
        assert_eq!(o.bind_ips.len(), 3);
        assert_eq!(o.bind_ips[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        match &o.target {
            Target::Backend {
                url,
                fleet: Some(f),
            } => {
                assert_eq!(url, "http://b:2");
                assert_eq!(
                    (f.scheduler_url.as_str(), f.secret.as_str()),
                    ("http://s:1", "sek")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(o.validate().is_ok());
    }

    #[test]
    fn direct_needs_its_companions() {
        assert!(Wrap::try_parse_from(["x", "--direct", "ws://h:1/ws"]).is_err());
        assert!(Wrap::try_parse_from(["x", "--server-id", "s"]).is_err());
        let w = Wrap::try_parse_from([
            "x",
            "--direct",
            "ws://h:1/ws",
            "--server-id",
            "s-1",
            "--ticket-key",
            "k.pem",
            "--room-offset",
            "100",
            "--bind-ips",
            "127.0.0.2,127.0.0.3",
        ])
        .unwrap();
        let o = w.args.into_options("http://unused");
        match &o.target {
            Target::Direct(d) => {
                assert_eq!(
                    (d.url.as_str(), d.server_id.as_str(), d.room_offset),
                    ("ws://h:1/ws", "s-1", 100)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(o.bind_ips.len(), 2);
        assert!(Wrap::try_parse_from(["x", "--bind-ips", "0"]).is_err());
        assert!(Wrap::try_parse_from(["x", "--bind-ips", "nope"]).is_err());
    }
}
