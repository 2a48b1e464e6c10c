//! Hostile peers (issue 12), against real CA, station and center processes on
//! loopback:
//! - every endpoint × every peer that must be refused (no certificate,
//!   another CA's certificate, a self-signed look-alike, a revoked
//!   credential, each wrong role, a forged or ended admin session) → the
//!   expected refusal, as one table;
//! - every certline client × a server holding the wrong role's credential →
//!   the client refuses in the handshake, before it sends a byte;
//! - slow and idle connections are dropped and cannot crowd out a real
//!   request (short limits set through the environment).

use crate::common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{path, pem_file, Ca, Server};
use rustls_pki_types::ServerName;

const ADMIN_PASSWORD: &str = "admin password for hostile peer tests";
/// Long enough for any process on a loaded machine; only a guard against a hang.
const GUARD: Duration = Duration::from_secs(60);

/// A client identity: certificate chain (leaf first, DER) and PKCS#8 key.
type Identity = (Vec<Vec<u8>>, Vec<u8>);

/// The chain and key of a credential file (leaf, issuing CA, root, key).
fn credential(file: &Path) -> Identity {
    let mut certs = pem_file(file, "CERTIFICATE");
    certs.pop(); // the root is the trust anchor, not part of the chain sent
    (certs, pem_file(file, "PRIVATE KEY").remove(0))
}

/// The chain and key of a pack folder (a device identity).
fn pack(dir: &Path) -> Identity {
    (
        pem_file(&dir.join("chain.pem"), "CERTIFICATE"),
        pem_file(&dir.join("key.pem"), "PRIVATE KEY").remove(0),
    )
}

fn serial_of(cert_der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).unwrap();
    hex::encode(cert.raw_serial())
}

/// A self-signed certificate that looks like a certline credential (same
/// names, same role URI) but was never signed by the CA.
fn look_alike(cn: &str, uri: &str) -> Identity {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "certline");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = params.self_signed(&key).unwrap();
    (vec![cert.der().to_vec()], key.serialize_der())
}

fn tls(root: &[u8], identity: Option<&Identity>) -> rustls::ClientConfig {
    common::tls_client(root, identity.cloned())
}

/// One request; Err is a TLS (or connection) failure.
fn request(
    rt: &tokio::runtime::Runtime,
    url: &str,
    tls: rustls::ClientConfig,
    method: &str,
    path: &str,
    body: Option<&str>,
    bearer: Option<&str>,
) -> Result<(u16, serde_json::Value), String> {
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(GUARD)
            .build()
            .unwrap();
        let mut req = match method {
            "POST" => client
                .post(format!("{url}{path}"))
                .header("content-type", "application/json")
                .body(body.unwrap_or("{}").to_string()),
            _ => client.get(format!("{url}{path}")),
        };
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        let response = req.send().await.map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((status, json))
    })
}

/// What a cell of the matrix expects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The TLS layer refuses the peer: no HTTP exchange at all.
    Tls,
    /// An HTTP refusal with this status and code.
    Refused(u16, &'static str),
    /// A center decision (200) with this verdict.
    Verdict(&'static str),
    /// Served: neither a TLS failure nor an authentication refusal.
    Served,
    /// Refused by the login's own rules (any 401, 403 or 429).
    Denied,
    /// Not asked (a real peer on an endpoint that would change state).
    Skip,
}

struct Peer {
    name: &'static str,
    identity: Option<Identity>,
    bearer: Option<String>,
    /// The device id the peer's certificate names, for center reports.
    device: Option<&'static str>,
}

/// Which kind of peer, for the expectation functions: "foreign" (not from
/// our CA), "none" (no client certificate, whatever session it holds), or
/// the peer's own name.
fn kind(name: &str) -> &str {
    if name.starts_with("another CA's") || name.starts_with("self-signed") {
        "foreign"
    } else if matches!(
        name,
        "no certificate" | "forged session" | "ended session" | "admin session"
    ) {
        "none"
    } else {
        name
    }
}

fn ca_expect(endpoint: &str, peer: &str) -> Expect {
    let open = matches!(endpoint, "/v1/crl" | "/v1/crl/root" | "/v1/health");
    match kind(peer) {
        "foreign" => Expect::Tls,
        _ if open => Expect::Served,
        "station" if matches!(endpoint, "/v1/packs" | "/v1/lookup") => Expect::Served,
        "station" => Expect::Skip,
        "none" => Expect::Refused(401, "no_client_certificate"),
        // Revoked, and every other role (a device identity included).
        _ => Expect::Refused(403, "forbidden"),
    }
}

fn station_expect(endpoint: &str, peer: &str) -> Expect {
    let line_api = matches!(
        endpoint,
        "/v1/take" | "/v1/received" | "/v1/written" | "/v1/failed"
    );
    match kind(peer) {
        "foreign" => Expect::Tls,
        _ if endpoint == "/v1/health" => Expect::Served,
        // A password guess is refused (or locked out, or rate-limited).
        _ if endpoint == "/v1/admin/login" => Expect::Denied,
        "line" if line_api => Expect::Served,
        "none" if line_api => Expect::Refused(401, "no_client_certificate"),
        _ if line_api => Expect::Refused(403, "forbidden"),
        // Admin endpoints: only a live session counts, whatever the certificate.
        _ if peer == "admin session" => match endpoint {
            "/v1/admin/stock" | "/v1/admin/audit" | "/v1/admin/queue" => Expect::Served,
            _ => Expect::Skip,
        },
        _ => Expect::Refused(401, "unauthorized"),
    }
}

fn center_expect(endpoint: &str, peer: &str) -> Expect {
    let k = kind(peer);
    match (endpoint, k) {
        (_, "foreign") => Expect::Tls,
        ("/v1/health", _) => Expect::Served,
        ("/v1/status", "device") => Expect::Served,
        ("/v1/status", "revoked device") => Expect::Verdict("revoked"),
        ("/v1/status", _) => Expect::Verdict("unknown"),
        ("/v1/report", "device") => Expect::Served,
        ("/v1/report", "revoked device") => Expect::Refused(403, "revoked"),
        ("/v1/report", _) => Expect::Refused(403, "unknown"),
        _ => unreachable!("{endpoint}"),
    }
}

fn check(expect: Expect, got: &Result<(u16, serde_json::Value), String>) -> Result<(), String> {
    let code = |v: &serde_json::Value| v["code"].as_str().unwrap_or("").to_string();
    match (expect, got) {
        (Expect::Skip, _) => Ok(()),
        (Expect::Tls, Err(_)) => Ok(()),
        (Expect::Refused(status, codes), Ok((s, body)))
            if *s == status && codes.split('|').any(|c| c == code(body)) =>
        {
            Ok(())
        }
        (Expect::Verdict(verdict), Ok((200, body))) if body["verdict"] == verdict => Ok(()),
        (Expect::Served, Ok((s, _))) if *s != 401 && *s != 403 => Ok(()),
        (Expect::Denied, Ok((401 | 403 | 429, _))) => Ok(()),
        _ => Err(format!("expected {expect:?}, got {got:?}")),
    }
}

/// Polls `ready` (a liveness guard, not a timing assertion).
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < GUARD, "{what}: not within {GUARD:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct World {
    ca: Ca,
    other: Ca,
    root: Vec<u8>,
    root_file: PathBuf,
    creds: BTreeMap<&'static str, PathBuf>,
    packs: PathBuf,
}

fn enroll(ca: &Ca, role: &str, name: &str) -> PathBuf {
    ca.enroll(role, name)
}

fn revoke(ca: &Ca, serial: &str) {
    common::ok(&["ca", "revoke", "--dir", ca.dir(), "--serial", serial]);
}

fn world() -> World {
    let ca = Ca::init(&[]);
    let other = Ca::init(&["--org", "Another Vendor"]);
    let mut creds = BTreeMap::new();
    for (key, role, name) in [
        ("station", "station", "station-1"),
        ("revoked station", "station", "station-old"),
        ("line", "line", "line-1"),
        ("revoked line", "line", "line-old"),
        ("center", "center", "center-1"),
        ("device-link", "device-link", "boards"),
        ("ca", "ca", "ca-look"),
    ] {
        creds.insert(key, enroll(&ca, role, name));
    }
    creds.insert(
        "another CA's station",
        enroll(&other, "station", "station-1"),
    );
    creds.insert("another CA's line", enroll(&other, "line", "line-1"));
    let packs = ca.file("packs");
    let ids = ca.ids_file("ids", &["3012-000001", "3012-000002"]);
    common::ok(&[
        "ca",
        "issue",
        "--dir",
        ca.dir(),
        "--ids",
        path(&ids),
        "--out",
        path(&packs),
    ]);
    let other_packs = other.file("packs");
    let other_ids = other.ids_file("ids", &["3012-000001"]);
    common::ok(&[
        "ca",
        "issue",
        "--dir",
        other.dir(),
        "--ids",
        path(&other_ids),
        "--out",
        path(&other_packs),
    ]);
    std::fs::rename(
        other_packs.join("3012-000001"),
        packs.join("other-3012-000001"),
    )
    .unwrap();
    for key in ["revoked station", "revoked line"] {
        revoke(&ca, &serial_of(&credential(&creds[key]).0[0]));
    }
    revoke(&ca, &serial_of(&pack(&packs.join("3012-000002")).0[0]));
    let root_file = packs.join("3012-000001").join("root.pem");
    let root = pem_file(&root_file, "CERTIFICATE").remove(0);
    World {
        ca,
        other,
        root,
        root_file,
        creds,
        packs,
    }
}

/// Every endpoint of the CA, the station and the center against every peer.
#[test]
fn every_endpoint_refuses_every_hostile_peer() {
    let w = world();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The CA.
    let ca_server = w.ca.serve(&[]);

    // The station, with the CA's CRL (which lists the revoked line).
    let station_dir = w.ca.file("station");
    let station = |args: &[&str]| {
        let out = common::certline()
            .env("CERTLINE_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            common::text(&out.stderr)
        );
    };
    station(&[
        "station",
        "init",
        "--dir",
        path(&station_dir),
        "--ca",
        &ca_server.url,
        "--credential",
        path(&w.creds["station"]),
        "--model",
        "3012",
    ]);
    let station_server = {
        let mut cmd = common::certline();
        cmd.env("CERTLINE_ADMIN_PASSWORD", ADMIN_PASSWORD).args([
            "station",
            "serve",
            "--dir",
            path(&station_dir),
            "--listen",
            "127.0.0.1:0",
        ]);
        Server::start_command(cmd, "station listening on ")
    };

    // The center, with the CA's CRL.
    let center_dir = w.ca.file("center");
    std::fs::create_dir_all(&center_dir).unwrap();
    std::fs::copy(&w.creds["center"], center_dir.join("credential.pem")).unwrap();
    let contracts = w.ca.file("contracts.csv");
    std::fs::write(
        &contracts,
        "devices,contract,from,to\n3012-000001,C-1,2026-01-01,\n",
    )
    .unwrap();
    let center_server = Server::start(
        &[
            "center",
            "--dir",
            path(&center_dir),
            "--listen",
            "127.0.0.1:0",
            "--contracts",
            path(&contracts),
            "--ca",
            &ca_server.url,
        ],
        "center listening on ",
    );

    let device = pack(&w.packs.join("3012-000001"));
    let mut peers: Vec<Peer> = vec![
        Peer {
            name: "no certificate",
            identity: None,
            bearer: None,
            device: None,
        },
        Peer {
            name: "another CA's station",
            identity: Some(credential(&w.creds["another CA's station"])),
            bearer: None,
            device: None,
        },
        Peer {
            name: "another CA's line",
            identity: Some(credential(&w.creds["another CA's line"])),
            bearer: None,
            device: None,
        },
        Peer {
            name: "another CA's device",
            identity: Some(pack(&w.packs.join("other-3012-000001"))),
            bearer: None,
            device: Some("3012-000001"),
        },
        Peer {
            name: "self-signed station",
            identity: Some(look_alike(
                "station-1",
                "urn:certline:role:station:station-1",
            )),
            bearer: None,
            device: None,
        },
        Peer {
            name: "self-signed line",
            identity: Some(look_alike("line-1", "urn:certline:role:line:line-1")),
            bearer: None,
            device: None,
        },
        Peer {
            name: "self-signed device",
            identity: Some(look_alike("3012-000001", "urn:dev:ops:32473-3012-000001")),
            bearer: None,
            device: Some("3012-000001"),
        },
        Peer {
            name: "revoked station",
            identity: Some(credential(&w.creds["revoked station"])),
            bearer: None,
            device: None,
        },
        Peer {
            name: "revoked line",
            identity: Some(credential(&w.creds["revoked line"])),
            bearer: None,
            device: None,
        },
        Peer {
            name: "revoked device",
            identity: Some(pack(&w.packs.join("3012-000002"))),
            bearer: None,
            device: Some("3012-000002"),
        },
        Peer {
            name: "station",
            identity: Some(credential(&w.creds["station"])),
            bearer: None,
            device: None,
        },
        Peer {
            name: "line",
            identity: Some(credential(&w.creds["line"])),
            bearer: None,
            device: None,
        },
        Peer {
            name: "center",
            identity: Some(credential(&w.creds["center"])),
            bearer: None,
            device: None,
        },
        Peer {
            name: "device-link",
            identity: Some(credential(&w.creds["device-link"])),
            bearer: None,
            device: None,
        },
        Peer {
            name: "ca",
            identity: Some(credential(&w.creds["ca"])),
            bearer: None,
            device: None,
        },
        Peer {
            name: "device",
            identity: Some(device),
            bearer: None,
            device: Some("3012-000001"),
        },
        Peer {
            name: "forged session",
            identity: None,
            bearer: Some("00".repeat(32)),
            device: None,
        },
    ];

    // Admin sessions: a live one, and one that has ended.
    let login = |rt: &tokio::runtime::Runtime| {
        let (status, body) = request(
            rt,
            &station_server.url,
            tls(&w.root, None),
            "POST",
            "/v1/admin/login",
            Some(&serde_json::json!({"user": "admin", "password": ADMIN_PASSWORD}).to_string()),
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_string()
    };
    let live = login(&rt);
    let ended = login(&rt);
    let (status, _) = request(
        &rt,
        &station_server.url,
        tls(&w.root, None),
        "POST",
        "/v1/admin/logout",
        None,
        Some(&ended),
    )
    .unwrap();
    assert_eq!(status, 200);
    peers.push(Peer {
        name: "ended session",
        identity: None,
        bearer: Some(ended),
        device: None,
    });
    peers.push(Peer {
        name: "admin session",
        identity: None,
        bearer: Some(live),
        device: None,
    });

    // The station and the center judge revocation by the CA's CRL: wait until
    // both hold it (the revoked line refused, the revoked device revoked).
    let line = credential(&w.creds["line"]);
    let revoked_line = credential(&w.creds["revoked line"]);
    wait_until("the station knows the CA's CRL", || {
        let take = |id: &Identity| {
            request(
                &rt,
                &station_server.url,
                tls(&w.root, Some(id)),
                "POST",
                "/v1/take",
                Some(r#"{"id":"3012-000009"}"#),
                None,
            )
        };
        matches!(take(&revoked_line), Ok((403, _)))
            && matches!(take(&line), Ok((s, _)) if s != 403 && s != 401 && s != 503)
    });
    let revoked_device = pack(&w.packs.join("3012-000002"));
    wait_until("the center knows the CA's CRL", || {
        matches!(
            request(&rt, &center_server.url, tls(&w.root, Some(&revoked_device)), "GET", "/v1/status", None, None),
            Ok((200, body)) if body["verdict"] == "revoked"
        )
    });

    let report = |peer: &Peer| {
        serde_json::json!({"id": peer.device.unwrap_or("3012-000001"), "counter": 1}).to_string()
    };
    type ExpectFn = fn(&str, &str) -> Expect;
    /// Method, path and body of each endpoint of a server.
    type Endpoints<'a> = &'a [(&'a str, &'a str, Option<&'a str>)];
    let ca_endpoints: Endpoints = &[
        (
            "POST",
            "/v1/packs",
            Some(r#"{"items":[{"id":"3012-000100"}]}"#),
        ),
        (
            "POST",
            "/v1/replace",
            Some(r#"{"id":"3012-000001","replaces":"01"}"#),
        ),
        ("POST", "/v1/revoke", Some(r#"{"serial":"01"}"#)),
        ("POST", "/v1/lookup", Some(r#"{"ids":["3012-000001"]}"#)),
        ("GET", "/v1/crl", None),
        ("GET", "/v1/crl/root", None),
        ("GET", "/v1/health", None),
    ];
    let station_endpoints: Endpoints = &[
        ("POST", "/v1/take", Some(r#"{"id":"3012-000009"}"#)),
        (
            "POST",
            "/v1/received",
            Some(r#"{"id":"3012-000009","serial":"01"}"#),
        ),
        (
            "POST",
            "/v1/written",
            Some(r#"{"id":"3012-000009","serial":"01","fingerprint":"00"}"#),
        ),
        (
            "POST",
            "/v1/failed",
            Some(r#"{"id":"3012-000009","serial":"01","reason":"test"}"#),
        ),
        ("GET", "/v1/health", None),
        (
            "POST",
            "/v1/admin/login",
            Some(r#"{"user":"intruder","password":"guess"}"#),
        ),
        ("POST", "/v1/admin/logout", None),
        ("GET", "/v1/admin/stock", None),
        ("POST", "/v1/admin/discard", Some(r#"{"model":"3012"}"#)),
        ("GET", "/v1/admin/audit", None),
        (
            "POST",
            "/v1/admin/rework",
            Some(r#"{"id":"3012-000009","reason":"test"}"#),
        ),
        ("GET", "/v1/admin/queue", None),
        ("POST", "/v1/admin/queue/retry", None),
        ("GET", "/v1/admin/device?id=3012-000009", None),
    ];
    let center_endpoints: Endpoints = &[
        ("GET", "/v1/status", None),
        ("POST", "/v1/report", None),
        ("GET", "/v1/health", None),
    ];
    let servers: [(&str, &str, Endpoints, ExpectFn); 3] = [
        ("CA", &ca_server.url, ca_endpoints, ca_expect),
        (
            "station",
            &station_server.url,
            station_endpoints,
            station_expect,
        ),
        (
            "center",
            &center_server.url,
            center_endpoints,
            center_expect,
        ),
    ];

    let mut failures = Vec::new();
    let mut cells = 0;
    for (server, url, endpoints, expect) in servers {
        for &(method, endpoint, body) in endpoints {
            let endpoint_path = endpoint.split('?').next().unwrap();
            for peer in &peers {
                let want = expect(endpoint_path, peer.name);
                if want == Expect::Skip {
                    continue;
                }
                cells += 1;
                let body = match (server, endpoint) {
                    ("center", "/v1/report") => Some(report(peer)),
                    _ => body.map(str::to_string),
                };
                let got = request(
                    &rt,
                    url,
                    tls(&w.root, peer.identity.as_ref()),
                    method,
                    endpoint,
                    body.as_deref(),
                    peer.bearer.as_deref(),
                );
                if let Err(why) = check(want, &got) {
                    failures.push(format!(
                        "{server} {method} {endpoint} × {}: {why}",
                        peer.name
                    ));
                }
            }
        }
    }
    assert!(cells > 300, "only {cells} cells");
    assert!(
        failures.is_empty(),
        "{} of {cells} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    drop(w.other);
}

// ---- every client against a server of the wrong role ----

/// What a fake server saw: TLS handshakes that completed and failed, and
/// application bytes (an HTTP request, a password) received.
#[derive(Debug, Default, Clone)]
struct Seen {
    attempts: usize,
    handshakes: usize,
    bytes: usize,
}

/// A TLS server on loopback presenting `cred` (any role, from the real CA),
/// recording what its clients send. It answers nothing.
struct FakeServer {
    url: String,
    seen: Arc<Mutex<Seen>>,
    _rt: tokio::runtime::Runtime,
}

impl FakeServer {
    fn start(cred: &Path) -> FakeServer {
        let cred = certline::pki::credential::Credential::load(cred).unwrap();
        let config = certline::service::tls::server_config(
            &cred,
            certline::service::tls::ClientAuth::Optional,
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let record = seen.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    record.lock().unwrap().attempts += 1;
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    record.lock().unwrap().handshakes += 1;
                    let mut buf = vec![0u8; 4096];
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await
                    {
                        record.lock().unwrap().bytes += n;
                    }
                });
            }
        });
        FakeServer { url, seen, _rt: rt }
    }

    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}

#[test]
fn every_client_refuses_a_server_of_the_wrong_role_before_sending_anything() {
    let w = world();
    let ca_server = w.ca.serve(&[]);

    // A station with two packs in stock, discarded: two revocations queued for the CA.
    let station_dir = w.ca.file("station");
    let station_cmd = |args: &[&str]| {
        let out = common::certline()
            .env("CERTLINE_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            common::text(&out.stdout),
            common::text(&out.stderr),
        )
    };
    let must = |(ok, out, err): (bool, String, String)| {
        assert!(ok, "{out}{err}");
        out
    };
    must(station_cmd(&[
        "station",
        "init",
        "--dir",
        path(&station_dir),
        "--ca",
        &ca_server.url,
        "--credential",
        path(&w.creds["station"]),
        "--model",
        "4000",
    ]));
    let today = time::OffsetDateTime::now_utc().date();
    let plan = w.ca.file("plan.csv");
    std::fs::write(
        &plan,
        format!("date,model,first_serial,count\n{today},4000,000001,2\n"),
    )
    .unwrap();
    must(station_cmd(&[
        "station",
        "plan",
        "import",
        "--dir",
        path(&station_dir),
        path(&plan),
    ]));
    must(station_cmd(&[
        "station",
        "fetch",
        "--dir",
        path(&station_dir),
    ]));
    must(station_cmd(&[
        "station",
        "admin",
        "discard",
        "--dir",
        path(&station_dir),
        "--model",
        "4000",
    ]));
    // The queued work for the CA: (kind, id, serial) of every item.
    let queue = || {
        let out = must(station_cmd(&[
            "station",
            "admin",
            "queue",
            "--dir",
            path(&station_dir),
            "--json",
        ]));
        let items: serde_json::Value = serde_json::from_str(&out).unwrap();
        items["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| format!("{} {} {}", i["kind"], i["id"], i["serial"]))
            .collect::<Vec<_>>()
    };
    let queued = queue();
    assert_eq!(queued.len(), 2, "{queued:?}");

    // A device whose flash holds its identity.
    let device_dir = w.ca.file("device");
    let _ = common::run(&[
        "device-sim",
        "--dir",
        path(&device_dir),
        "--model",
        "3012",
        "--serial",
        "000001",
        "--credential",
        path(&w.creds["device-link"]),
        "--report-to",
        "https://127.0.0.1:9",
    ]);
    let flash = device_dir.join("flash");
    std::fs::create_dir_all(&flash).unwrap();
    for f in ["root.pem", "chain.pem", "key.pem"] {
        std::fs::copy(w.packs.join("3012-000001").join(f), flash.join(f)).unwrap();
    }
    let ids = w.ca.ids_file("request-ids", &["3012-000050"]);
    let contracts = w.ca.file("contracts.csv");
    std::fs::write(&contracts, "devices,contract,from,to\n").unwrap();
    let center_dir = w.ca.file("center");
    std::fs::create_dir_all(&center_dir).unwrap();
    std::fs::copy(&w.creds["center"], center_dir.join("credential.pem")).unwrap();

    // Runs a client against `url` until it gives up; Ok(output) when it failed
    // as it must.
    let run_client = |client: &str, url: &str, n: usize| -> (bool, String) {
        let out_dir = w.ca.file(&format!("out-{n}"));
        let mut cmd = common::certline();
        cmd.env("CERTLINE_ADMIN_PASSWORD", ADMIN_PASSWORD);
        match client {
            "station → CA" => {
                // `station fetch` sends the queued revocations first; with
                // nothing left to fetch it succeeds, and says in the queue
                // why they still wait.
                cmd.args(["station", "fetch", "--dir", path(&station_dir), "--ca", url]);
                cmd.stdin(Stdio::null()).output().unwrap();
                let (_, out, _) = station_cmd(&[
                    "station",
                    "admin",
                    "queue",
                    "--dir",
                    path(&station_dir),
                    "--json",
                ]);
                return (out.matches("\"kind\"").count() == 2, out);
            }
            "station admin → station" => {
                cmd.args([
                    "station",
                    "admin",
                    "stock",
                    "--url",
                    url,
                    "--root",
                    path(&w.root_file),
                ]);
            }
            "device → center" => {
                cmd.args([
                    "device-sim",
                    "--dir",
                    path(&device_dir),
                    "--model",
                    "3012",
                    "--serial",
                    "000001",
                    "--credential",
                    path(&w.creds["device-link"]),
                    "--report-to",
                    url,
                ]);
            }
            "ca request → CA" => {
                cmd.args([
                    "ca",
                    "request",
                    "--url",
                    url,
                    "--credential",
                    path(&w.creds["station"]),
                    "--ids",
                    path(&ids),
                    "--out",
                    path(&out_dir),
                ]);
            }
            "line → station" => {
                // The line's client, as line/terminal.rs builds it.
                let cred = certline::pki::credential::Credential::load(&w.creds["line"]).unwrap();
                let client = certline::service::client::ServiceClient::new(
                    url,
                    &cred,
                    certline::pki::role::Role::Station,
                    Duration::from_secs(30),
                )
                .unwrap();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let result = rt.block_on(client.post::<_, serde_json::Value>(
                    "/v1/take",
                    &serde_json::json!({"id": "3012-000001"}),
                ));
                return (result.is_err(), format!("{result:?}"));
            }
            "center → CA" => {
                // The center starts and fetches the CRL from `url`; its health says why it failed.
                let mut cmd = common::certline();
                cmd.args([
                    "center",
                    "--dir",
                    path(&center_dir),
                    "--listen",
                    "127.0.0.1:0",
                    "--contracts",
                    path(&contracts),
                    "--ca",
                    url,
                ]);
                let center = Server::start_command(cmd, "center listening on ");
                let root = w.root.clone();
                let mut health = serde_json::Value::Null;
                wait_until("the center tried the CA", || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    health = request(
                        &rt,
                        &center.url,
                        tls(&root, None),
                        "GET",
                        "/v1/health",
                        None,
                        None,
                    )
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                    !health["crl_error"].is_null() || !health["crl_next_update"].is_null()
                });
                return (health["crl_next_update"].is_null(), health.to_string());
            }
            other => unreachable!("{other}"),
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        (
            !out.status.success(),
            format!("{}{}", common::text(&out.stdout), common::text(&out.stderr)),
        )
    };

    let clients: [(&str, &str); 6] = [
        ("station → CA", "ca"),
        ("ca request → CA", "ca"),
        ("center → CA", "ca"),
        ("station admin → station", "station"),
        ("line → station", "station"),
        ("device → center", "center"),
    ];
    let mut failures = Vec::new();
    let mut n = 0;
    for (client, wants) in clients {
        for holds in ["ca", "station", "center", "line", "device-link"] {
            n += 1;
            let fake = FakeServer::start(&w.creds[holds]);
            let (failed, output) = run_client(client, &fake.url, n);
            let seen = fake.seen();
            if holds == wants {
                // The control: the right role gets the request (the fake
                // then answers nothing, so the client fails anyway).
                if seen.bytes == 0 {
                    failures.push(format!("{client} × {holds} server: the request never arrived ({seen:?}); the fake cannot tell"));
                }
                continue;
            }
            if !failed {
                failures.push(format!(
                    "{client} × {holds} server: the client did not fail: {output}"
                ));
            }
            if seen.attempts == 0 || seen.bytes > 0 || seen.handshakes > 0 {
                failures.push(format!(
                    "{client} × {holds} server: expected a refused handshake and no bytes, saw {seen:?}: {output}"
                ));
            }
            let said = output.contains(&format!("expected a {wants} credential"))
                || output.contains("does not allow extended key usage for server authentication");
            if !said {
                failures.push(format!(
                    "{client} × {holds} server: the error does not say why: {output}"
                ));
            }
        }
    }
    // The station kept its queued revocations: nothing was sent, nothing dequeued.
    assert_eq!(queue(), queued);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- slow and idle connections (D7) ----

/// A TLS connection that finished its handshake and sent half a request.
fn half_request(
    addr: &str,
    root: &[u8],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(GUARD)).unwrap();
    let conn = rustls::ClientConnection::new(
        Arc::new(tls(root, None)),
        ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    stream
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    stream.flush().unwrap();
    stream
}

/// True when the server closed the connection (a read ends or fails) before
/// the guard; false when it is still open.
fn closed_by_server(stream: &mut impl Read) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a 408 or an alert before the close
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_and_idle_connections_are_dropped_and_cannot_crowd_out_a_request() {
    let w = world();
    let limits = [
        ("CERTLINE_HEADER_TIMEOUT_MS", "1000"),
        ("CERTLINE_HANDSHAKE_TIMEOUT_MS", "1000"),
        ("CERTLINE_MAX_CONNECTIONS", "8"),
    ];
    let with_limits = |args: &[&str], marker: &str| {
        let mut cmd = common::certline();
        cmd.args(args);
        for (k, v) in limits {
            cmd.env(k, v);
        }
        Server::start_command(cmd, marker)
    };
    let ca_server = with_limits(
        &[
            "ca",
            "serve",
            "--dir",
            w.ca.dir(),
            "--listen",
            "127.0.0.1:0",
        ],
        "CA listening on ",
    );
    let center_dir = w.ca.file("center");
    std::fs::create_dir_all(&center_dir).unwrap();
    std::fs::copy(&w.creds["center"], center_dir.join("credential.pem")).unwrap();
    let contracts = w.ca.file("contracts.csv");
    std::fs::write(&contracts, "devices,contract,from,to\n").unwrap();
    let center_server = with_limits(
        &[
            "center",
            "--dir",
            path(&center_dir),
            "--listen",
            "127.0.0.1:0",
            "--contracts",
            path(&contracts),
            "--ca",
            &ca_server.url,
        ],
        "center listening on ",
    );
    let station_dir = w.ca.file("station");
    let out = common::certline()
        .env("CERTLINE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .args([
            "station",
            "init",
            "--dir",
            path(&station_dir),
            "--ca",
            &ca_server.url,
            "--credential",
            path(&w.creds["station"]),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let station_server = with_limits(
        &[
            "station",
            "serve",
            "--dir",
            path(&station_dir),
            "--listen",
            "127.0.0.1:0",
        ],
        "station listening on ",
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (name, url) in [
        ("CA", &ca_server.url),
        ("station", &station_server.url),
        ("center", &center_server.url),
    ] {
        let addr = url.trim_start_matches("https://").to_string();
        // Twice the connection cap of peers that never finish: half of them
        // stop after the TCP connect, half in the middle of their headers.
        let mut silent: Vec<TcpStream> = (0..8)
            .map(|_| {
                let s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(GUARD)).unwrap();
                s
            })
            .collect();
        let mut slow: Vec<_> = (0..8).map(|_| half_request(&addr, &w.root)).collect();
        // A real request still gets its answer.
        let got = request(
            &rt,
            url,
            tls(&w.root, None),
            "GET",
            "/v1/health",
            None,
            None,
        );
        assert!(matches!(got, Ok((200, _))), "{name}: {got:?}");
        // And every stalled connection was closed by the server.
        for (i, s) in silent.iter_mut().enumerate() {
            assert!(
                closed_by_server(s),
                "{name}: silent connection {i} still open"
            );
        }
        for (i, s) in slow.iter_mut().enumerate() {
            assert!(
                closed_by_server(s),
                "{name}: connection {i} with unfinished headers still open"
            );
        }
        // An idle keep-alive connection is closed too.
        let mut idle = half_request(&addr, &w.root);
        idle.write_all(b"1\r\n\r\n").unwrap();
        idle.flush().unwrap();
        assert!(
            closed_by_server(&mut idle),
            "{name}: idle keep-alive connection still open"
        );
    }
}
