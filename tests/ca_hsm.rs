//! The CA's keys in a PKCS#11 token (issue 13), on a real SoftHSM2: each test
//! makes its own SOFTHSM2_CONF with a temporary token folder. `pkcs11-tool`
//! looks at the token from outside; `openssl verify` checks what it signed.

use std::process::Command;

use crate::common;

use common::hsm::{CA_TOKEN, MODULE, PIN};
use common::*;

/// `pkcs11-tool ACTION` on the private key of the CA's issuing key in its token.
fn issuing_key(ca: &Ca, action: &str) -> std::process::Output {
    ca.hsm().tool(
        CA_TOKEN,
        &[action, "--type", "privkey", "--label", "certline-issuing"],
    )
}

#[test]
fn a_ca_on_a_token_issues_revokes_restarts_and_its_keys_never_leave_the_token() {
    let ca = Ca::on_token();

    // Only labels in ca.toml, and no root or issuing key in keys.json.
    let config = std::fs::read_to_string(ca.dir.join("ca.toml")).unwrap();
    assert!(
        config.contains("kind = \"pkcs11\"") && config.contains(CA_TOKEN),
        "{config}"
    );
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ca.dir.join("keys.json")).unwrap()).unwrap();
    assert!(
        keys.get("root").is_none() && keys.get("issuing").is_none(),
        "{keys}"
    );

    // From outside: two private keys in the token, sensitive, never extractable.
    let listed = ca
        .hsm()
        .tool(CA_TOKEN, &["--list-objects", "--type", "privkey"]);
    let listing = text(&listed.stdout);
    for label in ["certline-root", "certline-issuing"] {
        let object = listing
            .split("Private Key Object")
            .find(|o| o.contains(&format!("label:      {label}")))
            .unwrap_or_else(|| panic!("no private key {label} in the token: {listing}"));
        assert!(object.contains("EC"), "{object}");
        assert!(object.contains("sensitive"), "{object}");
        assert!(object.contains("never extractable"), "{object}");
    }
    // ... and pkcs11-tool cannot read one out.
    let read = issuing_key(&ca, "--read-object");
    // (it fails, or reads nothing: the token does not hand out a sensitive value)
    assert!(
        !read.status.success() || read.stdout.is_empty(),
        "{}",
        text(&read.stdout)
    );

    // Serve, a batch, verified by openssl against the root.
    let station = ca.enroll("station", "st1");
    let mut server = ca.serve(&[]);
    let ids: Vec<String> = (0..80).map(|n| format!("3012-{n:04}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    succeeds(
        ca.request(&server.url, &station, &ids, "batch"),
        &["ca", "request"],
    );
    let pack = ca.file("batch").join("3012-0007");
    let verified = openssl_verify_pack(&pack, None);
    assert!(verified.status.success(), "{}", text(&verified.stderr));

    // A CRL signed by the token lists a revocation; openssl checks it.
    server.kill();
    ca.ok(&["ca", "revoke", "--dir", ca.dir(), "--id", "3012-0007"]);
    let crl = ca.file("crl.pem");
    ca.ok(&["ca", "crl", "--dir", ca.dir(), "--out", path(&crl)]);
    let checked = openssl_verify_pack(&pack, Some(&crl));
    assert!(!checked.status.success());
    assert!(text(&checked.stdout).contains("revoked") || text(&checked.stderr).contains("revoked"));
    let other = openssl_verify_pack(&ca.file("batch").join("3012-0008"), Some(&crl));
    assert!(other.status.success(), "{}", text(&other.stderr));

    // A restart finds its keys again and goes on issuing.
    let server = ca.serve(&[]);
    succeeds(
        ca.request(&server.url, &station, &["3012-9000"], "after"),
        &["ca", "request"],
    );
    let verified = openssl_verify_pack(&ca.file("after").join("3012-9000"), Some(&crl));
    assert!(verified.status.success(), "{}", text(&verified.stderr));
}

#[test]
fn a_wrong_pin_is_refused_once_and_never_retried() {
    let ca = Ca::on_token();
    for pin_source in ["env", "file"] {
        let mut cmd = ca.command();
        let pin_file = ca.file("wrong.pin");
        std::fs::write(&pin_file, "0000-wrong\n").unwrap();
        match pin_source {
            "env" => {
                cmd.env("CERTLINE_PKCS11_PIN", "0000-wrong");
            }
            _ => {
                cmd.env_remove("CERTLINE_PKCS11_PIN");
                cmd.args([
                    "ca",
                    "crl",
                    "--dir",
                    ca.dir(),
                    "--pin-file",
                    path(&pin_file),
                ]);
            }
        }
        if pin_source == "env" {
            cmd.args(["ca", "crl", "--dir", ca.dir()]);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("wrong PIN") && err.contains(CA_TOKEN), "{err}");
        assert!(err.contains("never retries"), "{err}");
    }
    // The token is not locked by it: the right PIN still opens it.
    ca.ok(&["ca", "crl", "--dir", ca.dir()]);
    // No PIN at all: said before anything is tried.
    let mut cmd = ca.command();
    cmd.env_remove("CERTLINE_PKCS11_PIN");
    let out = cmd.args(["ca", "crl", "--dir", ca.dir()]).output().unwrap();
    assert!(
        text(&out.stderr).contains("CERTLINE_PKCS11_PIN"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_missing_token_a_module_that_is_not_pkcs11_and_a_key_of_another_type_are_refused_at_start() {
    let ca = Ca::on_token();

    // The token label does not exist (at init and at start).
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().join("ca");
    let init_fails = |module: &str, token: &str| {
        ca.fails(&[
            "ca",
            "init",
            "--dir",
            path(&fresh),
            "--pkcs11-module",
            module,
            "--token",
            token,
        ])
    };
    let err = init_fails(MODULE, "no-such-token");
    assert!(err.contains("no token labelled \"no-such-token\""), "{err}");
    assert!(!fresh.exists(), "a refused init leaves nothing behind");

    // A library that is not a PKCS#11 module, and a path that is no library.
    let libz = [
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libz is on every Debian");
    for module in [libz, "/etc/hostname"] {
        let err = init_fails(module, CA_TOKEN);
        assert!(
            err.contains("is not a PKCS#11 library") && err.contains(module),
            "{err}"
        );
    }
    let err = init_fails("/nonexistent/p11.so", CA_TOKEN);
    assert!(err.contains("does not exist"), "{err}");

    // A key with the right label but another type: the issuing key replaced by an RSA key.
    let deleted = issuing_key(&ca, "--delete-object");
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    let made = ca.hsm().tool(
        CA_TOKEN,
        &[
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--label",
            "certline-issuing",
            "--id",
            "99",
        ],
    );
    assert!(made.status.success(), "{}", text(&made.stderr));
    let err = ca.fails(&["ca", "crl", "--dir", ca.dir()]);
    assert!(
        err.contains("certline-issuing") && err.contains("RSA") && err.contains("EC P-256"),
        "{err}"
    );
    let mut cmd = ca.command();
    let out = cmd
        .args(["ca", "serve", "--dir", ca.dir(), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "serve must refuse at start, not at the first request"
    );
    assert!(
        text(&out.stderr).contains("certline-issuing"),
        "{}",
        text(&out.stderr)
    );

    // The token gone altogether (its folder emptied): a clear error at start.
    for entry in std::fs::read_dir(&ca.hsm().tokens).unwrap() {
        std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
    }
    let err = ca.fails(&["ca", "crl", "--dir", ca.dir()]);
    assert!(
        err.contains(&format!("no token labelled \"{CA_TOKEN}\"")),
        "{err}"
    );
}

#[test]
fn a_token_pulled_while_serving_fails_requests_clearly_and_leaves_no_half_issued_certificate() {
    let ca = Ca::on_token();
    let station = ca.enroll("station", "st1");
    let server = ca.serve(&[]);
    succeeds(
        ca.request(&server.url, &station, &["3012-1"], "before"),
        &["ca", "request"],
    );

    // Pull the token: its files vanish under the running CA.
    for entry in std::fs::read_dir(&ca.hsm().tokens).unwrap() {
        std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
    }
    let out = ca.request(&server.url, &station, &["3012-2", "3012-3"], "after");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("PKCS#11 token") && err.contains(CA_TOKEN),
        "{err}"
    );

    // The ledger: no valid certificate for the failed ids, their reservations revoked.
    drop(server);
    let status = |id: &str| -> Vec<String> {
        ca.history(id)
            .into_iter()
            .map(|r| {
                serde_json::from_value::<certline::wire::ca::CertRecord>(r)
                    .unwrap()
                    .status
                    .as_str()
                    .to_string()
            })
            .collect()
    };
    for id in ["3012-2", "3012-3"] {
        let states = status(id);
        assert!(
            states.iter().all(|s| s == "revoked"),
            "{id} has a live certificate after the token was pulled: {states:?}"
        );
    }
    assert_eq!(status("3012-1"), ["valid"]);
}

#[test]
fn the_pin_never_goes_on_the_command_line() {
    let out = Command::new(bin())
        .args(["ca", "init", "--help"])
        .output()
        .unwrap();
    let help = text(&out.stdout);
    assert!(
        help.contains("--pkcs11-module") && help.contains("--pin-file"),
        "{help}"
    );
    assert!(!help.contains("--pin "), "{help}");
    let _ = PIN;
}
