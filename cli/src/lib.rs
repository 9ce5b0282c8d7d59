//! The `berth` command: talk to a backend from a terminal.
//!
//! `berth rooms`, `berth create`, `berth lookup ID` print the backend's JSON answers;
//! `berth chat` joins (or creates) a room and chats line by line, reconnecting as needed;
//! `berth bench` generates load and reports what it measured ([`berth_bench`]).
//! Errors print as `error: <code>: <message>` and exit with status 1.

mod chat;

use std::io::Write;
use std::process::ExitCode;

use berth_protocol::api::CreateRoomRequest;
use clap::{Parser, Subcommand};
use serde::Serialize;
use tracing_subscriber::EnvFilter;

use berth::{Backend, ClientError, DEFAULT_BACKEND_URL, Session};

/// Flags of `berth`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "berth",
    version,
    about = "Berth client: list, create and join rooms, chat from a terminal, generate load."
)]
pub struct Cli {
    /// The backend's base URL.
    #[arg(long, global = true, env = "BERTH_BACKEND_URL", default_value = DEFAULT_BACKEND_URL)]
    pub backend: String,

    /// Who to log in as (1-32 letters, digits, '_' or '-'). Defaults to $USER.
    #[arg(long, global = true, env = "BERTH_USERNAME")]
    pub username: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// What `berth` does.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Print the public rooms (JSON).
    Rooms,
    /// Create a room and print the answer: its id, URL and a ticket (JSON).
    Create {
        /// Name shown in the room list (defaults to the room id).
        #[arg(long)]
        name: Option<String>,
        /// List the room publicly.
        #[arg(long)]
        public: bool,
    },
    /// Look a room up and print where it lives with a fresh ticket (JSON).
    Lookup {
        /// The room id (`r-...`).
        room_id: String,
    },
    /// Chat in a room: join `--room`, or create one. Type lines to send; Ctrl-D or Ctrl-C leaves.
    Chat {
        /// Join this room instead of creating one.
        #[arg(long)]
        room: Option<String>,
        /// Name of the room to create.
        #[arg(long, conflicts_with = "room")]
        name: Option<String>,
        /// Create the room public.
        #[arg(long, conflicts_with = "room")]
        public: bool,
    },
    /// Generate load: create rooms, connect members, send messages on a schedule, and report
    /// create, connect and delivery latency, throughput and errors.
    Bench(Box<berth_bench::BenchArgs>),
}

/// Parses flags, runs the command, prints errors as `error: <code>: <message>`.
/// Logs (`RUST_LOG`, default `warn`) go to stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A blocking stdin read (chat) never finishes on its own: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let backend = Backend::new(cli.backend.clone());
    match cli.command {
        Command::Rooms => print_json(&backend.list_rooms().await?),
        Command::Create { name, public } => {
            let session = login(&backend, cli.username.as_deref()).await?;
            print_json(
                &backend
                    .create_room(&session, &CreateRoomRequest { name, public })
                    .await?,
            )
        }
        Command::Lookup { room_id } => {
            let session = login(&backend, cli.username.as_deref()).await?;
            print_json(&backend.lookup_room(&session, &room_id).await?)
        }
        Command::Chat { room, name, public } => {
            let session = login(&backend, cli.username.as_deref()).await?;
            chat::run(backend, session, room, CreateRoomRequest { name, public }).await
        }
        Command::Bench(args) => berth_bench::command::run(*args, &cli.backend).await,
    }
}

async fn login(backend: &Backend, username: Option<&str>) -> Result<Session, ClientError> {
    let username = match username {
        Some(name) => name.to_owned(),
        None => default_username(std::env::var("USER").ok().as_deref()),
    };
    backend.login(&username).await
}

/// `$USER` reduced to what a username may hold (letters, digits, `_`, `-`, at most 32), or
/// `guest` when nothing is left.
pub fn default_username(user: Option<&str>) -> String {
    let name: String = user
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(32)
        .collect();
    if name.is_empty() {
        "guest".to_owned()
    } else {
        name
    }
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// `<code>: <message>` for API errors, otherwise the error with its causes.
fn describe(e: &anyhow::Error) -> String {
    match e.downcast_ref::<ClientError>() {
        Some(api @ ClientError::Api { .. }) => api.to_string(),
        _ => format!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_username_is_sanitised() {
        assert_eq!(default_username(Some("alice")), "alice");
        assert_eq!(default_username(Some("Jean Dupont.2")), "JeanDupont2");
        assert_eq!(default_username(Some("élodie")), "lodie");
        assert_eq!(default_username(Some("...")), "guest");
        assert_eq!(default_username(None), "guest");
        assert_eq!(default_username(Some(&"x".repeat(40))).len(), 32);
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::parse_from(["berth", "--backend", "http://h:1", "chat", "--room", "r-1"]);
        assert_eq!(cli.backend, "http://h:1");
        assert!(matches!(cli.command, Command::Chat { room: Some(ref r), .. } if r == "r-1"));
        assert!(Cli::try_parse_from(["berth", "chat", "--room", "r-1", "--public"]).is_err());
        let cli = Cli::parse_from([
            "berth",
            "create",
            "--name",
            "lobby",
            "--public",
            "--username",
            "bob",
        ]);
        assert_eq!(cli.username.as_deref(), Some("bob"));
        assert!(matches!(cli.command, Command::Create { public: true, .. }));
    }

    #[test]
    fn api_errors_print_code_and_message() {
        let e = anyhow::Error::from(ClientError::Api {
            status: 404,
            code: "room_not_found".into(),
            message: "no such room".into(),
            retry_after: None,
        });
        assert_eq!(describe(&e), "room_not_found: no such room");
    }
}
