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
/// other certline secret or log filter inherited).
pub fn certline() -> Command {
    let mut cmd = certline::child::certline(bin());
    cmd.env("CERTLINE_PASSPHRASE", PASSPHRASE);
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
}

impl Ca {
    pub fn init(extra: &[&str]) -> Ca {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let mut args = vec!["ca", "init", "--dir", path(&dir)];
        args.extend_from_slice(extra);
        ok(&args);
        Ca { tmp, dir }
    }

    pub fn dir(&self) -> &str {
        path(&self.dir)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn enroll(&self, role: &str, name: &str) -> PathBuf {
        let out = self.file(&format!("{role}-{name}.pem"));
        ok(&[
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

    /// Ledger rows as `ca status --json` reports them (kind, status, count).
    pub fn counts(&self) -> serde_json::Value {
        serde_json::from_str(&ok(&["ca", "status", "--dir", self.dir(), "--json"])).unwrap()
    }

    pub fn history(&self, id: &str) -> Vec<serde_json::Value> {
        let out = run(&["ca", "status", "--dir", self.dir(), "--id", id, "--json"]);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn serve(&self, extra: &[&str]) -> Server {
        let mut args = vec![
            "ca",
            "serve",
            "--dir",
            self.dir(),
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Server::start(&args, "CA listening on ")
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

/// Sends one request (a POST when there is a body); Err means the TLS layer refused.
pub fn send(
    url: &str,
    tls: rustls::ClientConfig,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
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
