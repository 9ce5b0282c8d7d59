//! The `berth` command: talk to a backend from a terminal.
//!
//! `berth rooms`, `berth create`, `berth lookup ID` print the backend's JSON answers;
//! `berth chat` joins (or creates) a room and chats line by line, reconnecting as needed;
//! `berth bench` generates load and reports what it measured ([`berth_bench`]).
//! `berth register` and `berth login` sign an account in and keep its token in the user's config
//! directory ([`credentials`]), which the other commands then use; without a stored session
//! they sign in as a guest named `--username`.
//! Errors print as `error: <code>: <message>` and exit with status 1.

mod chat;
pub mod credentials;
mod terminal;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use berth_protocol::api::CreateRoomRequest;
use clap::{Parser, Subcommand};
use serde::Serialize;

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

    /// CA certificate(s) (PEM) to trust on `https://` / `wss://`, besides the web's roots.
    #[arg(long, global = true, env = "BERTH_TLS_CA")]
    pub ca_file: Option<std::path::PathBuf>,

    /// Who to log in as (1-32 letters, digits, '_' or '-'). Defaults to $USER.
    #[arg(long, global = true, env = "BERTH_USERNAME")]
    pub username: Option<String>,

    /// Where `berth login` keeps its token. Default: `$XDG_CONFIG_HOME/berth`, else
    /// `~/.config/berth`.
    #[arg(long, global = true, env = "BERTH_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// What `berth` does.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Print the public rooms (JSON); with `--mine`, this user's rooms with unread counts.
    Rooms {
        /// Every room this user created, joined or was added to, with `lastSeq`, `readSeq` and
        /// `unread`, most recent activity first.
        #[arg(long)]
        mine: bool,
    },
    /// Create a room and print the answer: its id, URL and a ticket (JSON).
    Create {
        /// Name shown in the room list (defaults to the room id).
        #[arg(long)]
        name: Option<String>,
        /// List the room publicly.
        #[arg(long)]
        public: bool,
        /// Members only (add them with `berth invite`).
        #[arg(long, conflicts_with = "public")]
        private: bool,
    },
    /// Add an account to a private room you belong to.
    Invite {
        /// The room id.
        room_id: String,
        /// The account to add.
        username: String,
    },
    /// Chat in the direct-message room of this account and USER (created on first use).
    Dm {
        /// The other account's name.
        user: String,
    },
    /// Look a room up and print where it lives with a fresh ticket (JSON).
    Lookup {
        /// The room id (`r-...`) or its share link (`http://host:8080/#/rooms/r-...`).
        #[arg(value_parser = parse_room)]
        room_id: String,
    },
    /// Chat in a room: join `--room`, or create one. Type lines to send; Ctrl-D or Ctrl-C leaves.
    Chat {
        /// Join this room (its id, or its share link `http://host:8080/#/rooms/r-...`) instead
        /// of creating one.
        #[arg(long, value_parser = parse_room)]
        room: Option<String>,
        /// Name of the room to create.
        #[arg(long, conflicts_with = "room")]
        name: Option<String>,
        /// Create the room public.
        #[arg(long, conflicts_with = "room")]
        public: bool,
    },
    /// Create an account (`--username`, else $USER) and sign it in; the token is kept for the
    /// other commands.
    Register {
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Sign an account in (`--username`, else $USER); the token is kept for the other commands.
    Login {
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget the token kept for this backend.
    Logout,
    /// Print who the kept token (or a guest sign-in) names (JSON).
    Whoami,
    /// Generate load: create rooms, connect members, send messages on a schedule, and report
    /// create, connect and delivery latency, throughput and errors.
    Bench(Box<berth_bench::BenchArgs>),
}

/// Parses flags, runs the command, prints errors as `error: <code>: <message>`.
/// Logs (`RUST_LOG`, default `warn`) go to stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    berth_runtime::trace::init("warn");
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
    let backend_url = cli.backend.clone();
    let result = runtime.block_on(run(cli));
    // A blocking stdin read (chat) never finishes on its own: do not wait for it, and take the
    // terminal back from the line editor.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    terminal::restore_mode();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e, &backend_url));
            ExitCode::FAILURE
        }
    }
}

/// A room id from `--room` / `lookup`: the id itself, or the share link the web client shows
/// (`http://host:8080/#/rooms/r-...`), from which the id is taken.
pub fn parse_room(input: &str) -> Result<String, String> {
    let input = input.trim();
    let id = match input.find("#/rooms/") {
        Some(at) => input[at + "#/rooms/".len()..].trim_end_matches('/'),
        None => input,
    };
    let valid = (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(id.to_owned())
    } else {
        Err(format!(
            "expected a room id like r-7kq2m9x4ta or a link like http://host:8080/#/rooms/r-7kq2m9x4ta, got {input:?}"
        ))
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let tls = match &cli.ca_file {
        Some(path) => berth::Tls::with_ca_file(path)?,
        None => berth::Tls::default(),
    };
    let backend = Backend::with_tls(cli.backend.clone(), &tls);
    match cli.command.clone() {
        Command::Register { password_stdin } => {
            let (dir, username) = (config_dir(&cli)?, username(&cli));
            let password = read_password(password_stdin, "Choose a password: ")?;
            let session = backend.register(&username, &password).await?;
            credentials::save(&dir, backend.base_url(), &session)?;
            note(&format!("registered and signed in as {}", session.username));
            Ok(())
        }
        Command::Login { password_stdin } => {
            let (dir, username) = (config_dir(&cli)?, username(&cli));
            let password = read_password(password_stdin, "Password: ")?;
            let session = backend.login_with_password(&username, &password).await?;
            credentials::save(&dir, backend.base_url(), &session)?;
            note(&format!("signed in as {}", session.username));
            Ok(())
        }
        Command::Logout => {
            let dir = config_dir(&cli)?;
            if credentials::remove(&dir, backend.base_url())? {
                note("signed out");
            } else {
                note("no sign-in kept for this backend");
            }
            Ok(())
        }
        Command::Whoami => {
            let session = session(&backend, &cli).await?;
            print_json(&backend.me(&session).await?)
        }
        Command::Rooms { mine: false } => print_json(&backend.list_rooms().await?),
        Command::Rooms { mine: true } => {
            let session = session(&backend, &cli).await?;
            print_json(&backend.my_rooms(&session).await?)
        }
        Command::Create {
            name,
            public,
            private,
        } => {
            let session = session(&backend, &cli).await?;
            let req = CreateRoomRequest {
                name,
                public,
                private,
            };
            print_json(&backend.create_room(&session, &req).await?)
        }
        Command::Invite { room_id, username } => {
            let session = session(&backend, &cli).await?;
            backend.add_member(&session, &room_id, &username).await?;
            note(&format!("{username} is now a member of {room_id}"));
            Ok(())
        }
        Command::Dm { user } => {
            let session = session(&backend, &cli).await?;
            let dm = backend.open_dm(&session, &user).await?;
            note(&format!("direct messages with {}", dm.dm.username));
            let room = Some(dm.ticket.room_id);
            chat::run(backend, session, room, CreateRoomRequest::default()).await
        }
        Command::Lookup { room_id } => {
            let session = session(&backend, &cli).await?;
            print_json(&backend.lookup_room(&session, &room_id).await?)
        }
        Command::Chat { room, name, public } => {
            let session = session(&backend, &cli).await?;
            let create = CreateRoomRequest {
                name,
                public,
                private: false,
            };
            chat::run(backend, session, room, create).await
        }
        Command::Bench(args) => berth_bench::command::run(*args, &cli.backend).await,
    }
}

/// The session the room commands use: the one `berth login` kept for this backend (unless
/// `--username` names someone else), else a guest sign-in.
async fn session(backend: &Backend, cli: &Cli) -> anyhow::Result<Session> {
    if let Some(dir) = credentials::config_dir(cli.config_dir.as_deref())
        && let Some(kept) = credentials::load(&dir, backend.base_url())?
        && cli
            .username
            .as_deref()
            .is_none_or(|u| u.eq_ignore_ascii_case(&kept.username))
    {
        return Ok(kept);
    }
    match backend.login(&username(cli)).await {
        Err(e) if e.code() == Some("password_required") => {
            Err(anyhow::anyhow!("{e} (run `berth login` first)"))
        }
        other => Ok(other?),
    }
}

fn username(cli: &Cli) -> String {
    match &cli.username {
        Some(name) => name.clone(),
        None => {
            let user = std::env::var("USER").ok();
            let name = default_username(user.as_deref());
            if let Some(notice) = username_notice(user.as_deref(), &name) {
                eprintln!("* {notice}");
            }
            name
        }
    }
}

fn config_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    credentials::config_dir(cli.config_dir.as_deref()).ok_or_else(|| {
        anyhow::anyhow!("no config directory: set --config-dir, XDG_CONFIG_HOME or HOME")
    })
}

/// The password: the first line of stdin with `--password-stdin`, else asked on the terminal
/// without echo.
fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        rpassword::prompt_password(prompt)?
    } else {
        anyhow::bail!("no terminal to ask for the password on: use --password-stdin");
    };
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    Ok(password)
}

fn note(text: &str) {
    eprintln!("{text}");
}

/// What to tell the user when `$USER` could not be used as it is, or `None` when it could.
pub fn username_notice(user: Option<&str>, chosen: &str) -> Option<String> {
    match user {
        Some(user) if user == chosen => None,
        Some(user) if !user.is_empty() => Some(format!(
            "$USER {user:?} is not a valid username (1-32 letters, digits, '_' or '-'): signing in as {chosen:?}; choose with --username"
        )),
        _ => Some(format!(
            "$USER is not set: signing in as {chosen:?}; choose with --username"
        )),
    }
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

/// `<code>: <message>` for API errors, otherwise the error with its causes; a backend that
/// cannot be reached gets a hint naming the URL tried.
fn describe(e: &anyhow::Error, backend_url: &str) -> String {
    match e.downcast_ref::<ClientError>() {
        Some(api @ ClientError::Api { .. }) => api.to_string(),
        Some(ClientError::Http(http)) if http.is_connect() => format!(
            "{e:#}\nhint: is the Berth backend running at {backend_url}? (set --backend or BERTH_BACKEND_URL)"
        ),
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
        assert_eq!(describe(&e, "http://b:1"), "room_not_found: no such room");
    }

    #[test]
    fn share_links_are_room_ids() {
        assert_eq!(parse_room("r-7kq2m9x4ta").unwrap(), "r-7kq2m9x4ta");
        assert_eq!(
            parse_room("http://127.0.0.1:8080/#/rooms/r-7kq2m9x4ta").unwrap(),
            "r-7kq2m9x4ta"
        );
        assert_eq!(
            parse_room(" https://chat.example/berth/#/rooms/r-1/ ").unwrap(),
            "r-1"
        );
        assert!(parse_room("http://h/#/rooms/").is_err());
        assert!(parse_room("r 1").is_err());
        let cli = Cli::parse_from(["berth", "chat", "--room", "http://h:8080/#/rooms/r-9"]);
        assert!(matches!(cli.command, Command::Chat { room: Some(ref r), .. } if r == "r-9"));
        let cli = Cli::parse_from(["berth", "lookup", "http://h:8080/#/rooms/r-8"]);
        assert!(matches!(cli.command, Command::Lookup { ref room_id } if room_id == "r-8"));
    }

    #[test]
    fn username_changes_are_announced() {
        assert_eq!(username_notice(Some("alice"), "alice"), None);
        let notice = username_notice(Some("john.doe"), "johndoe").unwrap();
        assert!(
            notice.contains("\"john.doe\"") && notice.contains("\"johndoe\""),
            "{notice}"
        );
        let notice = username_notice(None, "guest").unwrap();
        assert!(
            notice.contains("not set") && notice.contains("\"guest\""),
            "{notice}"
        );
    }

    #[tokio::test]
    async fn connection_refused_names_the_backend() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let err = Backend::new(url.clone()).login("alice").await.unwrap_err();
        let text = describe(&anyhow::Error::from(err), &url);
        assert!(
            text.contains(&format!("is the Berth backend running at {url}?")),
            "{text}"
        );
    }
}
