//! Helpers for black-box tests: run the real `certline` binary as separate
//! processes, on loopback, in temporary directories. Child processes are
//! started with the library's one helper, `certline::child`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use certline::child::Child;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub const PASSPHRASE: &str = "test passphrase, not for production";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_certline")
}

/// A `certline` command with the test passphrase in its environment (and no
/// other certline secret or log filter inherited). Under
/// `CERTLINE_TEST_KEYSTORE=pkcs11` it also gets the SoftHSM2 configuration
/// and the PIN of the test tokens (see [`hsm`]).
pub fn certline() -> Command {
    let mut cmd = certline::child::certline(bin());
    cmd.env("CERTLINE_PASSPHRASE", PASSPHRASE);
    if let Some(hsm) = hsm::shared() {
        hsm.environment(&mut cmd);
    }
    cmd
}

pub fn run(args: &[&str]) -> Output {
    certline()
        .args(args)
        .output()
        .expect("cannot start certline")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and insists on success, returning stdout.
#[track_caller]
pub fn ok(args: &[&str]) -> String {
    succeeds(run(args), args)
}

/// Runs and insists on failure, returning stderr.
#[track_caller]
pub fn fails(args: &[&str]) -> String {
    failed(run(args), args)
}

/// stdout of a run that must have succeeded (for callers with their own command).
#[track_caller]
pub fn succeeds(out: Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "certline {args:?} failed:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// stderr of a run that must have failed.
#[track_caller]
pub fn failed(out: Output, args: &[&str]) -> String {
    assert!(
        !out.status.success(),
        "certline {args:?} should have failed:\nstdout: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A CA directory initialised in a fresh temporary folder.
pub struct Ca {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    /// The SoftHSM2 of its own that a CA made by [`Ca::on_token`] keeps its
    /// keys in (token [`hsm::CA_TOKEN`]); every command for it runs there.
    pub hsm: Option<hsm::SoftHsm>,
}

impl Ca {
    /// `ca init`; under `CERTLINE_TEST_KEYSTORE=pkcs11` the keys go into a
    /// fresh SoftHSM2 token of this CA's own.
    pub fn init(extra: &[&str]) -> Ca {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let mut args = vec!["ca", "init", "--dir", path(&dir)];
        let token;
        if let Some(hsm) = hsm::shared() {
            token = hsm.new_token();
            args.extend_from_slice(&["--pkcs11-module", hsm::MODULE, "--token", &token]);
        }
        args.extend_from_slice(extra);
        ok(&args);
        Ca {
            tmp,
            dir,
            hsm: None,
        }
    }

    /// `ca init` with the keys in the token [`hsm::CA_TOKEN`] of a SoftHSM2
    /// of this CA's own (whatever `CERTLINE_TEST_KEYSTORE` says).
    pub fn on_token() -> Ca {
        let hsm = hsm::SoftHsm::new();
        hsm.make_token(hsm::CA_TOKEN);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let ca = Ca {
            tmp,
            dir,
            hsm: Some(hsm),
        };
        ca.ok(&[
            "ca",
            "init",
            "--dir",
            ca.dir(),
            "--pkcs11-module",
            hsm::MODULE,
            "--token",
            hsm::CA_TOKEN,
        ]);
        ca
    }

    /// The SoftHSM2 of a CA made by [`Ca::on_token`].
    pub fn hsm(&self) -> &hsm::SoftHsm {
        self.hsm.as_ref().expect("a CA made by Ca::on_token")
    }

    /// `certline` for this CA (on its own SoftHSM2 when it has one).
    pub fn command(&self) -> Command {
        let mut cmd = certline();
        if let Some(hsm) = &self.hsm {
            hsm.environment(&mut cmd);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .expect("cannot start certline")
    }

    /// Runs for this CA and insists on success, returning stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        succeeds(self.run(args), args)
    }

    /// Runs for this CA and insists on failure, returning stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        failed(self.run(args), args)
    }

    pub fn dir(&self) -> &str {
        path(&self.dir)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn enroll(&self, role: &str, name: &str) -> PathBuf {
        let out = self.file(&format!("{role}-{name}.pem"));
        self.ok(&[
            "ca",
            "enroll",
            "--dir",
            self.dir(),
            "--role",
            role,
            "--name",
            name,
            "--out",
            path(&out),
        ]);
        out
    }

    pub fn ids_file(&self, name: &str, ids: &[&str]) -> PathBuf {
        let file = self.file(name);
        std::fs::write(&file, ids.join("\n") + "\n").unwrap();
        file
    }

    /// `ca issue` of `ids` (listed in the file `OUT.ids`) into the pack
    /// folder `out` of the temporary folder, which it returns.
    pub fn issue(&self, out: &str, ids: &[&str]) -> PathBuf {
        let file = self.ids_file(&format!("{out}.ids"), ids);
        let out = self.file(out);
        self.ok(&[
            "ca",
            "issue",
            "--dir",
            self.dir(),
            "--ids",
            path(&file),
            "--out",
            path(&out),
        ]);
        out
    }

    /// `ca request` of `ids` (listed in the file `OUT.ids`) from the CA at
    /// `url` with the station credential `station`, into the pack folder `out`.
    pub fn request(&self, url: &str, station: &Path, ids: &[&str], out: &str) -> Output {
        let file = self.ids_file(&format!("{out}.ids"), ids);
        self.run(&[
            "ca",
            "request",
            "--url",
            url,
            "--credential",
            path(station),
            "--ids",
            path(&file),
            "--out",
            path(&self.file(out)),
        ])
    }

    /// `ca revoke --id` with a reason.
    pub fn revoke(&self, id: &str, reason: &str) {
        self.ok(&[
            "ca",
            "revoke",
            "--dir",
            self.dir(),
            "--id",
            id,
            "--reason",
            reason,
        ]);
    }

    /// Ledger rows as `ca status --json` reports them (kind, status, count).
    pub fn counts(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["ca", "status", "--dir", self.dir(), "--json"])).unwrap()
    }

    pub fn history(&self, id: &str) -> Vec<serde_json::Value> {
        let out = self.run(&["ca", "status", "--dir", self.dir(), "--id", id, "--json"]);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The id's certificates the CA holds as valid.
    pub fn valid(&self, id: &str) -> Vec<serde_json::Value> {
        self.history(id)
            .into_iter()
            .filter(|r| r["status"] == "valid")
            .collect()
    }

    pub fn serve(&self, extra: &[&str]) -> Server {
        let mut cmd = self.command();
        cmd.args([
            "ca",
            "serve",
            "--dir",
            self.dir(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(extra);
        Server::start_command(cmd, "CA listening on ")
    }
}

/// SoftHSM2 for the tests: a configuration whose token folder is a
/// temporary one, tokens made with `softhsm2-util`.
pub mod hsm {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
    pub const PIN: &str = "1234-test-pin";
    pub const SO_PIN: &str = "so-test-pin-5678";
    /// The token of a CA made by [`super::Ca::on_token`].
    pub const CA_TOKEN: &str = "certline-ca";

    pub struct SoftHsm {
        pub tmp: tempfile::TempDir,
        pub conf: PathBuf,
        pub tokens: PathBuf,
        count: AtomicUsize,
    }

    /// Whether the CA tests run on tokens (`CERTLINE_TEST_KEYSTORE=pkcs11`).
    pub fn wanted() -> bool {
        std::env::var("CERTLINE_TEST_KEYSTORE").is_ok_and(|v| v == "pkcs11")
    }

    /// The process's SoftHSM2 when every CA test runs on a token: one
    /// configuration, one fresh token per CA.
    pub fn shared() -> Option<&'static SoftHsm> {
        static SHARED: OnceLock<Option<SoftHsm>> = OnceLock::new();
        SHARED.get_or_init(|| wanted().then(SoftHsm::new)).as_ref()
    }

    impl SoftHsm {
        /// A SoftHSM2 configuration of its own (a test's temporary SOFTHSM2_CONF).
        pub fn new() -> SoftHsm {
            assert!(
                Path::new(MODULE).exists(),
                "SoftHSM2 is not installed ({MODULE}); run tests/prerequisites.sh"
            );
            let tmp = tempfile::tempdir().unwrap();
            let tokens = tmp.path().join("tokens");
            std::fs::create_dir(&tokens).unwrap();
            let conf = tmp.path().join("softhsm2.conf");
            std::fs::write(
                &conf,
                format!(
                    "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                    tokens.display()
                ),
            )
            .unwrap();
            SoftHsm {
                tmp,
                conf,
                tokens,
                count: AtomicUsize::new(0),
            }
        }

        /// SOFTHSM2_CONF and the PIN for a certline or tool command.
        pub fn environment(&self, cmd: &mut Command) {
            cmd.env("SOFTHSM2_CONF", &self.conf);
            cmd.env("CERTLINE_PKCS11_PIN", PIN);
        }

        /// Makes a new token with the test PINs; returns its label.
        pub fn new_token(&self) -> String {
            let label = format!(
                "t{}-{}",
                std::process::id(),
                self.count.fetch_add(1, Ordering::Relaxed)
            );
            self.make_token(&label);
            label
        }

        pub fn make_token(&self, label: &str) {
            let out = Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", &self.conf)
                .args([
                    "--init-token",
                    "--free",
                    "--label",
                    label,
                    "--pin",
                    PIN,
                    "--so-pin",
                    SO_PIN,
                ])
                .output()
                .expect("softhsm2-util is needed (tests/prerequisites.sh installs softhsm2)");
            assert!(
                out.status.success(),
                "softhsm2-util --init-token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        /// `pkcs11-tool` on this SoftHSM2 (logged in with the test PIN).
        pub fn tool(&self, token: &str, args: &[&str]) -> std::process::Output {
            Command::new("pkcs11-tool")
                .env("SOFTHSM2_CONF", &self.conf)
                .args([
                    "--module",
                    MODULE,
                    "--token-label",
                    token,
                    "--login",
                    "--pin",
                    PIN,
                ])
                .args(args)
                .output()
                .expect("pkcs11-tool is needed (tests/prerequisites.sh installs opensc)")
        }
    }
}

/// A long-running certline process that printed its URL; killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(args: &[&str], marker: &str) -> Server {
        let mut cmd = certline();
        cmd.args(args);
        Self::start_command(cmd, marker)
    }

    /// As [`Server::start`], for a command with its own arguments and environment.
    pub fn start_command(cmd: Command, marker: &str) -> Server {
        let child = Child::spawn(cmd)
            .listening(marker)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Server {
            url: child.url.clone(),
            child,
        }
    }

    pub fn kill(&mut self) {
        self.child.kill();
    }
}

pub fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `openssl verify` of a pack folder's device certificate against its root.
pub fn openssl_verify_pack(pack: &Path, crl: Option<&Path>) -> Output {
    let chain = pack.join("chain.pem");
    let mut cmd = Command::new("openssl");
    cmd.arg("verify")
        .arg("-CAfile")
        .arg(pack.join("root.pem"))
        .arg("-untrusted")
        .arg(&chain);
    if let Some(crl) = crl {
        cmd.arg("-crl_check_all").arg("-CRLfile").arg(crl);
    }
    cmd.arg(&chain).output().unwrap()
}

/// The DER blocks with `label` in a PEM file.
pub fn pem_file(path: &Path, label: &str) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(path).unwrap();
    pem::parse_many(&text)
        .unwrap()
        .into_iter()
        .filter(|p| p.tag() == label)
        .map(|p| p.into_contents())
        .collect()
}

/// A rustls client trusting `root`, presenting `identity` (chain DER, PKCS#8 key) if given.
pub fn tls_client(root: &[u8], identity: Option<(Vec<Vec<u8>>, Vec<u8>)>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec())).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                chain.into_iter().map(CertificateDer::from).collect(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// A runtime on the test's thread, for a client's requests.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Sends one request (a POST when there is a body); Err means the TLS layer refused.
pub fn send(
    url: &str,
    tls: rustls::ClientConfig,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>), String> {
    runtime().block_on(async {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap();
        let request = match body {
            Some(body) => client
                .post(format!("{url}{path}"))
                .header("content-type", "application/json")
                .body(body.to_vec()),
            None => client.get(format!("{url}{path}")),
        };
        let response = request.send().await.map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, bytes.to_vec()))
    })
}

/// `openssl verify` of a device chain file (device cert, then issuing CA)
/// against `root`, and its SAN naming `id` as urn:dev:ops:32473-<id>.
#[track_caller]
pub fn assert_chain_verifies_for(chain: &Path, root: &Path, id: &str) {
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(root)
        .arg("-untrusted")
        .arg(chain)
        .arg(chain)
        .output()
        .expect("openssl is needed for this test");
    assert!(
        out.status.success(),
        "openssl verify failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(chain)
        .output()
        .unwrap();
    let san = text(&out.stdout);
    assert!(
        san.contains(&format!("URI:urn:dev:ops:32473-{id}")),
        "SAN does not name {id}: {san}"
    );
}

/// A component built from plugins/ (`plugins/build.sh` builds them).
pub fn wasm(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first with plugins/build.sh",
        path.display()
    );
    path
}

pub const IMAGING: &str = "certline_plugin_imaging";
pub const METER: &str = "certline_plugin_meter";
pub const MISBEHAVE: &str = "certline_test_plugin_misbehave";
pub const HOSTILE: &str = "certline_test_plugin_hostile";
pub const DUP_MODEL: &str = "certline_test_plugin_dup_model";
