//! Black-box tests of `certline center` and `certline device-sim --report-to`:
//! real CA, center and device processes on loopback, devices connecting with
//! the identity in their flash files.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Center {
    _server: Server,
    url: String,
}

struct World {
    ca: Ca,
    devlink: PathBuf,
    contracts: PathBuf,
    center_dir: PathBuf,
}

const CONTRACTS: &str = "devices,contract,from,to\n\
3012-000001,C-1001,2026-01-01,\n\
3012-000010..3012-000019,C-2000,2026-01-01,2099-12-31\n";

fn world() -> World {
    let ca = Ca::init(&[]);
    let center_dir = ca.file("center");
    std::fs::create_dir_all(&center_dir).unwrap();
    ok(&[
        "ca",
        "enroll",
        "--dir",
        ca.dir(),
        "--role",
        "center",
        "--name",
        "center",
        "--out",
        path(&center_dir.join("credential.pem")),
    ]);
    let devlink = ca.enroll("device-link", "acme-boards");
    let contracts = ca.file("contracts.csv");
    std::fs::write(&contracts, CONTRACTS).unwrap();
    World {
        ca,
        devlink,
        contracts,
        center_dir,
    }
}

impl World {
    fn center(&self, crl_args: &[&str]) -> Center {
        let mut args = vec![
            "center",
            "--dir",
            path(&self.center_dir),
            "--listen",
            "127.0.0.1:0",
            "--contracts",
            path(&self.contracts),
        ];
        args.extend_from_slice(crl_args);
        let server = Server::start(&args, "center listening on ");
        let url = server.url.clone();
        Center {
            _server: server,
            url,
        }
    }

    /// A device whose flash holds the pack issued for it (as if written on the line).
    fn device(&self, id: &str, written: bool) -> PathBuf {
        let (model, serial) = id.split_once('-').unwrap();
        let dir = self.ca.file(&format!("dev-{id}"));
        // Opening the device once lays out its NVRAM (id, link credential).
        let out = run(&[
            "device-sim",
            "--dir",
            path(&dir),
            "--model",
            model,
            "--serial",
            serial,
            "--credential",
            path(&self.devlink),
            "--report-to",
            "https://127.0.0.1:9",
        ]);
        assert!(!out.status.success());
        if written {
            let ids = self.ca.ids_file(&format!("ids-{id}"), &[id]);
            let packs = self.ca.file(&format!("packs-{id}"));
            ok(&[
                "ca",
                "issue",
                "--dir",
                self.ca.dir(),
                "--ids",
                path(&ids),
                "--out",
                path(&packs),
            ]);
            let flash = dir.join("flash");
            std::fs::create_dir_all(&flash).unwrap();
            for f in ["root.pem", "chain.pem", "key.pem"] {
                std::fs::copy(packs.join(id).join(f), flash.join(f)).unwrap();
            }
        }
        dir
    }

    fn report(
        &self,
        center: &Center,
        device: &Path,
        id: &str,
        extra: &[&str],
    ) -> serde_json::Value {
        let (model, serial) = id.split_once('-').unwrap();
        let mut args = vec![
            "device-sim",
            "--dir",
            path(device),
            "--model",
            model,
            "--serial",
            serial,
            "--report-to",
            &center.url,
            "--counter",
            "4711",
            "--json",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&ok(&args)).unwrap()
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.center_dir.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[test]
fn the_center_tells_contract_no_contract_revoked_and_unknown_apart() {
    let w = world();
    let ca_server = w.ca.serve(&[]);
    let center = w.center(&["--ca", &ca_server.url]);

    let under = w.device("3012-000001", true);
    let answer = w.report(&center, &under, "3012-000001", &[]);
    assert_eq!(answer["decision"]["verdict"], "contract", "{answer}");
    assert_eq!(answer["decision"]["id"], "3012-000001");
    assert_eq!(answer["decision"]["contract"], "C-1001");
    assert_eq!(answer["report_accepted"], true);

    let ranged = w.device("3012-000015", true);
    assert_eq!(
        w.report(&center, &ranged, "3012-000015", &[])["decision"]["contract"],
        "C-2000"
    );

    let without = w.device("3012-000002", true);
    let answer = w.report(&center, &without, "3012-000002", &[]);
    assert_eq!(answer["decision"]["verdict"], "no_contract", "{answer}");
    assert_eq!(answer["report_accepted"], true);

    // A device with an empty flash has no identity to show.
    let blank = w.device("3012-000003", false);
    let answer = w.report(&center, &blank, "3012-000003", &[]);
    assert_eq!(answer["decision"]["verdict"], "unknown", "{answer}");
    assert!(answer["decision"]["reason"]
        .as_str()
        .unwrap()
        .contains("no client certificate"));
    assert_eq!(answer["report_accepted"], false);

    // Revoked at the CA: the center learns it from the CRL at its next refresh.
    ok(&[
        "ca",
        "revoke",
        "--dir",
        w.ca.dir(),
        "--id",
        "3012-000001",
        "--reason",
        "key-compromise",
    ]);
    let center = w.center(&["--ca", &ca_server.url]);
    let answer = w.report(&center, &under, "3012-000001", &[]);
    assert_eq!(answer["decision"]["verdict"], "revoked", "{answer}");
    assert!(
        answer["decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("KeyCompromise"),
        "{answer}"
    );
    assert_eq!(answer["report_accepted"], false);
}

#[test]
fn a_report_naming_another_id_is_refused_and_logged_as_impersonation() {
    let w = world();
    let ca_server = w.ca.serve(&[]);
    let center = w.center(&["--ca", &ca_server.url]);
    // The cheap device claims to be the one under contract to have its counter billed there.
    let cheap = w.device("3012-000002", true);
    let answer = w.report(
        &center,
        &cheap,
        "3012-000002",
        &["--report-id", "3012-000001"],
    );
    assert_eq!(
        answer["decision"]["id"], "3012-000002",
        "the center believes the certificate: {answer}"
    );
    assert_eq!(answer["report_accepted"], false);
    assert!(
        answer["report_refused"]
            .as_str()
            .unwrap()
            .contains("impersonation attempt"),
        "{answer}"
    );
    let events = w.events();
    let logged = events
        .iter()
        .find(|e| e["event"] == "impersonation")
        .expect("an impersonation event");
    assert_eq!(logged["detail"]["claimed"], "3012-000001");
    assert_eq!(logged["detail"]["certified"], "3012-000002");
    assert!(!events
        .iter()
        .any(|e| e["event"] == "report" && e["detail"]["id"] == "3012-000001"));
}

#[test]
fn a_certificate_from_another_ca_is_refused_at_tls() {
    let w = world();
    let ca_server = w.ca.serve(&[]);
    let center = w.center(&["--ca", &ca_server.url]);
    // A device of another vendor's CA, whose flash trusts that CA's root.
    let other = world();
    let foreign = other.device("3012-000001", true);
    let out = run(&[
        "device-sim",
        "--dir",
        path(&foreign),
        "--model",
        "3012",
        "--serial",
        "000001",
        "--report-to",
        &center.url,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot reach"),
        "{}",
        text(&out.stderr)
    );
    assert!(w.events().is_empty(), "nothing got past TLS");
}

#[test]
fn an_expired_crl_fails_closed_unless_told_otherwise() {
    let w = world();
    let crl = w.ca.file("crl.pem");
    ok(&[
        "ca",
        "crl",
        "--dir",
        w.ca.dir(),
        "--valid-for",
        "1",
        "--out",
        path(&crl),
    ]);
    let device = w.device("3012-000001", true);
    std::thread::sleep(std::time::Duration::from_millis(2100));

    let center = w.center(&["--crl-file", path(&crl)]);
    let answer = w.report(&center, &device, "3012-000001", &[]);
    assert_eq!(answer["decision"]["verdict"], "unverifiable", "{answer}");
    assert!(
        answer["decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("failing closed"),
        "{answer}"
    );
    assert_eq!(answer["report_accepted"], false);

    let lenient = w.center(&["--crl-file", path(&crl), "--allow-stale-crl"]);
    assert_eq!(
        w.report(&lenient, &device, "3012-000001", &[])["decision"]["verdict"],
        "contract"
    );

    // A missing CRL (the CA is not there) fails closed too.
    let blind = w.center(&["--ca", "https://127.0.0.1:9"]);
    let answer = w.report(&blind, &device, "3012-000001", &[]);
    assert_eq!(answer["decision"]["verdict"], "unverifiable", "{answer}");
    assert!(
        answer["decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("no CRL"),
        "{answer}"
    );
}

#[test]
fn a_malformed_contract_list_is_refused_and_the_previous_one_stays() {
    let w = world();
    // At start there is no previous list: the center refuses to start, naming row and field.
    let bad = w.ca.file("bad.csv");
    std::fs::write(
        &bad,
        "devices,contract,from,to\n3012-000001,C-1,2026-01-01,\n3012-000002,C-2,yesterday,\n",
    )
    .unwrap();
    let err = fails(&[
        "center",
        "--dir",
        path(&w.center_dir),
        "--listen",
        "127.0.0.1:0",
        "--contracts",
        path(&bad),
        "--crl-file",
        "x",
    ]);
    assert!(err.contains("row 2 (line 3), field from"), "{err}");

    let crl = w.ca.file("crl.pem");
    ok(&["ca", "crl", "--dir", w.ca.dir(), "--out", path(&crl)]);
    let center = w.center(&["--crl-file", path(&crl)]);
    let device = w.device("3012-000002", true);
    assert_eq!(
        w.report(&center, &device, "3012-000002", &[])["decision"]["verdict"],
        "no_contract"
    );

    // A broken edit (saved by rename, as editors do) is refused; the old list keeps serving.
    let tmp = w.ca.file("contracts.tmp");
    std::fs::write(
        &tmp,
        "devices,contract,from\n3012-000002,C-9,2026-01-01\nnot-an-id!,C-9,2026-01-01\n",
    )
    .unwrap();
    std::fs::rename(&tmp, &w.contracts).unwrap();
    let health = wait_for_health(&w, &center, |h| h["contracts_error"].is_string());
    assert!(
        health["contracts_error"]
            .as_str()
            .unwrap()
            .contains("row 2 (line 3), field devices"),
        "{health}"
    );
    assert_eq!(
        w.report(&center, &device, "3012-000002", &[])["decision"]["verdict"],
        "no_contract"
    );

    // A good edit takes effect.
    std::fs::write(&tmp, "devices,contract,from\n3012-000002,C-9,2026-01-01\n").unwrap();
    std::fs::rename(&tmp, &w.contracts).unwrap();
    wait_for_health(&w, &center, |h| {
        h["contracts_error"].is_null() && h["contracts"] == 1
    });
    let answer = w.report(&center, &device, "3012-000002", &[]);
    assert_eq!(answer["decision"]["contract"], "C-9", "{answer}");
}

/// Polls the center's health (over TLS with the CA root, no client certificate)
/// until `done` holds; reloads are asynchronous.
fn wait_for_health(
    w: &World,
    center: &Center,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let root = pem_file(&w.ca.dir.join("root.pem"), "CERTIFICATE").remove(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let health: serde_json::Value =
            send(&center.url, tls_client(&root, None), "/v1/health", None)
                .ok()
                .and_then(|(_, body)| serde_json::from_slice(&body).ok())
                .unwrap_or(serde_json::Value::Null);
        if done(&health) {
            return health;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the center never got there: {health}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn openssl_s_client_with_a_devices_flash_files_gets_its_status() {
    if !openssl_available() {
        eprintln!("openssl is not installed; skipping");
        return;
    }
    let w = world();
    let ca_server = w.ca.serve(&[]);
    let center = w.center(&["--ca", &ca_server.url]);
    let device = w.device("3012-000001", true);
    let flash = device.join("flash");
    let addr = center.url.trim_start_matches("https://").to_string();
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-ign_eof", "-connect", &addr, "-cert"])
        .arg(flash.join("chain.pem"))
        // -cert sends only the first certificate; the issuing CA goes with it.
        .arg("-cert_chain")
        .arg(flash.join("chain.pem"))
        .arg("-key")
        .arg(flash.join("key.pem"))
        .arg("-CAfile")
        .arg(flash.join("root.pem"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let body = text(&out.stdout);
    assert!(body.contains("\"verdict\":\"contract\""), "{body}");
    assert!(
        body.contains("\"id\":\"3012-000001\"") && body.contains("C-1001"),
        "{body}"
    );
}

#[test]
fn a_crl_with_a_bad_signature_or_an_older_number_is_refused_and_the_set_stays() {
    let w = world();
    let a = w.device("3012-000002", true);
    let b = w.device("3012-000003", true);
    let crl_out = |name: &str| {
        let file = w.ca.file(name);
        ok(&[
            "ca",
            "crl",
            "--now",
            "--dir",
            w.ca.dir(),
            "--out",
            path(&file),
        ]);
        file
    };
    let revoke = |id: &str| {
        ok(&[
            "ca",
            "revoke",
            "--dir",
            w.ca.dir(),
            "--id",
            id,
            "--reason",
            "key-compromise",
        ]);
    };
    let older = crl_out("older.pem");
    revoke("3012-000002");
    let served = w.ca.file("served.pem");
    std::fs::copy(crl_out("first.pem"), &served).unwrap();
    revoke("3012-000003");
    let newer = crl_out("newer.pem");
    // Replaces the file the center reads the way an editor or a sync tool would.
    let offer = |crls: Vec<Vec<u8>>| {
        let tmp = w.ca.file("served.tmp");
        let pem: String = crls
            .into_iter()
            .map(|der| ::pem::encode(&::pem::Pem::new("X509 CRL", der)))
            .collect();
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, &served).unwrap();
    };

    let center = w.center(&["--crl-file", path(&served), "--crl-refresh", "1"]);
    let verdict = |device: &Path, id: &str| {
        w.report(&center, device, id, &[])["decision"]["verdict"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(verdict(&a, "3012-000002"), "revoked");
    assert_eq!(verdict(&b, "3012-000003"), "no_contract");

    // The newer CRL with one bit of its signature flipped: refused, the set stays.
    let mut forged = pem_file(&newer, "X509 CRL");
    let last = forged[0].len() - 1;
    forged[0][last] ^= 0x01;
    offer(forged);
    let health = wait_for_health(&w, &center, |h| h["crl_error"].is_string());
    assert!(
        health["crl_error"].as_str().unwrap().contains("signature"),
        "{health}"
    );
    assert_eq!(verdict(&b, "3012-000003"), "no_contract");
    assert_eq!(verdict(&a, "3012-000002"), "revoked");

    // An older CRL (one that does not list a revocation already known): refused.
    offer(pem_file(&older, "X509 CRL"));
    let health = wait_for_health(&w, &center, |h| {
        h["crl_error"].as_str().is_some_and(|e| e.contains("older"))
    });
    assert!(
        health["crl_error"].as_str().unwrap().contains("refused"),
        "{health}"
    );
    assert_eq!(verdict(&a, "3012-000002"), "revoked");

    // The genuine newer CRL is taken: both revoked.
    offer(pem_file(&newer, "X509 CRL"));
    wait_for_health(&w, &center, |h| h["crl_error"].is_null());
    assert_eq!(verdict(&b, "3012-000003"), "revoked");
    assert_eq!(verdict(&a, "3012-000002"), "revoked");
}
