//! A real PostgreSQL server for the ledger tests: `initdb` and `pg_ctl` from
//! Debian's `postgresql` (installed by `tests/prerequisites.d/60-postgresql.sh`)
//! in a temporary directory, listening on loopback TCP at a free port, run as
//! the `postgres` user when the tests run as root (postgres refuses root), and
//! stopped and removed when dropped.
//!
//! Where the server cannot start at all (no PostgreSQL binaries on this
//! machine) [`PgServer::start`] says so loudly and returns `None`, and the
//! test returns early; with `CI` set in the environment that is a failure
//! instead, since CI installs the prerequisites.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The password of the `certline` database user the CA connects as.
pub const PASSWORD: &str = "ledger password for tests";
/// The password of the `postgres` superuser of the test server.
const SUPERUSER_PASSWORD: &str = "superuser password for tests";

pub struct PgServer {
    tmp: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// Run the server's tools as `postgres` (the tests run as root).
    as_postgres: bool,
    running: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` with an `initdb`.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn skip(why: &str) -> Option<PgServer> {
    let message = format!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !! SKIPPED: this PostgreSQL ledger test did not run: {why}.\n\
         !! Install the prerequisites (tests/prerequisites.sh) to run it.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    if std::env::var_os("CI").is_some() {
        panic!("{message}(CI must run the PostgreSQL tests)");
    }
    eprintln!("{message}");
    None
}

fn checked(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl PgServer {
    /// A fresh cluster with a `certline` user (password [`PASSWORD`]), started.
    pub fn start() -> Option<PgServer> {
        let Some(bin) = find_bin() else {
            return skip("no PostgreSQL server binaries under /usr/lib/postgresql");
        };
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let tmp = tempfile::tempdir().expect("temporary directory");
        if as_postgres {
            let chown = Command::new("chown")
                .args(["postgres:postgres", path(tmp.path())])
                .output();
            match chown {
                Ok(out) if out.status.success() => {}
                _ => return skip("running as root and there is no `postgres` user to run it as"),
            }
        }
        let mut server = PgServer {
            tmp,
            bin,
            port: free_port(),
            as_postgres,
            running: false,
        };
        let pwfile = server.tmp.path().join("superuser-password");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).unwrap();
        if as_postgres {
            checked(
                Command::new("chown")
                    .args(["postgres:postgres", path(&pwfile)])
                    .output()
                    .unwrap(),
                "chown",
            );
        }
        let data = server.data();
        checked(
            server
                .tool("initdb")
                .args([
                    "-D",
                    path(&data),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", path(&pwfile)))
                .output()
                .expect("cannot run initdb"),
            "initdb",
        );
        server.start_again();
        server.sql(
            "postgres",
            &format!("CREATE ROLE certline LOGIN PASSWORD '{PASSWORD}'"),
        );
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn tool(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(exe);
            cmd
        } else {
            Command::new(exe)
        }
    }

    /// Starts the server (again) on its port; waits until it accepts connections.
    pub fn start_again(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60",
            self.port,
            path(self.tmp.path())
        );
        checked(
            self.tool("pg_ctl")
                .args(["-D", path(&self.data()), "-o", &options, "-w", "-t", "60"])
                .args(["-l", path(&self.tmp.path().join("server.log")), "start"])
                .output()
                .expect("cannot run pg_ctl"),
            "pg_ctl start",
        );
        self.running = true;
    }

    /// Stops the server: `fast` ends sessions cleanly, `immediate` is a crash.
    pub fn stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        checked(
            self.tool("pg_ctl")
                .args(["-D", path(&self.data()), "-m", mode, "-w", "stop"])
                .output()
                .expect("cannot run pg_ctl"),
            "pg_ctl stop",
        );
        self.running = false;
    }

    /// A new empty database owned by the `certline` user.
    pub fn create_database(&self, name: &str) {
        self.sql(
            "postgres",
            &format!("CREATE DATABASE {name} OWNER certline"),
        );
    }

    /// A file holding the `certline` user's password (for `--ledger-password-file`).
    pub fn password_file(&self) -> PathBuf {
        let file = self.tmp.path().join("ledger-password");
        if !file.exists() {
            std::fs::write(&file, PASSWORD).unwrap();
        }
        file
    }

    /// The URL a CA connects with (no password in it: that comes from the environment).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://certline@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL as the superuser over the server's socket; returns psql's unaligned output.
    pub fn sql(&self, database: &str, statement: &str) -> String {
        let out = checked(
            Command::new(self.bin.join("psql"))
                .args(["-h", path(self.tmp.path()), "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1"])
                .args(["-X", "-A", "-t", "-c", statement])
                .output()
                .expect("cannot run psql"),
            &format!("psql {statement:?}"),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .tool("pg_ctl")
                .args(["-D", path(&self.data()), "-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
