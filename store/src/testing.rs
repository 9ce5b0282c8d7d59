//! Helpers for tests that run against PostgreSQL: each test gets a database of its own, created
//! through an admin URL and dropped afterwards.
//!
//! The admin URL comes from `BERTH_TEST_DATABASE_URL` (e.g.
//! `postgres://postgres:postgres@127.0.0.1:5432/postgres`). Without it the PostgreSQL variants
//! are skipped on a developer's machine, and *fail* under CI (`CI=true`), so that CI can never
//! pass by silently not testing PostgreSQL.
//!
//! [`skip`] is how any test that cannot run here says so (here, the testkit's browser tests).

use std::io::Write as _;

use tokio_postgres::NoTls;

/// The environment variable naming a file where [`skip`] records skipped suites, one line each;
/// `scripts/test.sh` sets it and names them in its last line.
pub const SKIP_LOG_ENV: &str = "BERTH_SKIP_LOG";

/// Reports that a test of `suite` cannot run on this machine, and why: a loud
/// `BERTH-SKIP: <suite>: <reason>` line on stderr and in `$BERTH_SKIP_LOG`. Under `CI=true` it
/// then panics, so that CI can never pass by not running a suite.
pub fn skip(suite: &str, reason: &str) {
    let line = format!("BERTH-SKIP: {suite}: {reason}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV).filter(|p| !p.is_empty()) {
        // One short append per line: concurrent tests do not interleave within a line.
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = appended {
            panic!("cannot record the skip in {}: {e}", path.to_string_lossy());
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{line}: nothing may be skipped under CI=true");
    }
}

/// The environment variable holding the admin URL.
pub const TEST_DATABASE_URL_ENV: &str = "BERTH_TEST_DATABASE_URL";

/// The admin URL, or `None` to skip (reported by [`skip`]). Panics under `CI=true` without one.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var(TEST_DATABASE_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            skip("postgres", &format!("{TEST_DATABASE_URL_ENV} unset"));
            None
        }
    }
}

/// A database of its own for one test, dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct TempDatabase {
    /// URL of the new database.
    pub url: String,
    /// Its name.
    pub name: String,
    admin_url: String,
}

impl TempDatabase {
    /// Creates `berth_test_<random>` through `admin_url`. Panics on failure (it is for tests).
    pub async fn create(admin_url: &str) -> TempDatabase {
        let name = format!("berth_test_{:016x}", rand::random::<u64>());
        let client = admin(admin_url).await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TempDatabase {
            url: with_database(admin_url, &name),
            name,
            admin_url: admin_url.to_owned(),
        }
    }

    /// Runs `sql` as the admin (for tests that break the database on purpose).
    pub async fn admin_execute(&self, sql: &str) {
        admin(&self.admin_url)
            .await
            .batch_execute(sql)
            .await
            .unwrap();
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread with a runtime of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = admin(&admin_url).await;
                if let Err(e) = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                {
                    eprintln!("cannot drop test database {name}: {e}");
                }
            });
        });
        let _ = done.join();
    }
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {} ({e})", crate::redact_url(url)));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// `admin_url` with its database replaced by `name`.
pub fn with_database(admin_url: &str, name: &str) -> String {
    let (base, query) = admin_url
        .split_once('?')
        .map_or((admin_url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_names_are_swapped() {
        assert_eq!(
            super::with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(super::with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            super::with_database("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}
