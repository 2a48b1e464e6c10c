//! The CA's ledger on a real PostgreSQL server (see `pg_support`): several
//! `ca serve` processes on one database issue nothing twice, a killed one's
//! reservations are revoked once its lease ran out while the other keeps
//! serving, a database restart fails requests clearly and then serves again,
//! `ca migrate-ledger` copies a SQLite ledger with its audit chain, and bad
//! database settings are refused with a message that names what is wrong.
//! Few tests on purpose: each starts its own server.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ca::{crl_entries, get, identity_of, post};
use crate::common::{self, certline, fails, ok, path, Ca};
use crate::pg_support::{PgServer, PASSWORD};
use crate::station_support as st;

/// A CA initialised with its ledger in `database` (created here).
fn pg_ca(pg: &PgServer, database: &str) -> Ca {
    pg.create_database(database);
    Ca::init(&[
        "--ledger",
        &pg.url(database),
        "--ledger-password-file",
        path(&pg.password_file()),
    ])
}

/// A second CA process's directory: the same CA (keys, config) on another machine.
fn copy_dir(ca: &Ca, name: &str) -> PathBuf {
    let to = ca.tmp.path().join(name);
    let out = Command::new("cp")
        .args(["-a", ca.dir(), path(&to)])
        .output()
        .unwrap();
    assert!(out.status.success());
    to
}

fn serve(dir: &Path, env: &[(&str, &str)]) -> crate::station_support::Proc {
    let mut cmd = certline();
    cmd.args(["ca", "serve", "--dir", path(dir), "--listen", "127.0.0.1:0"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    crate::station_support::Proc::start(cmd, "CA listening on ")
}

/// `certline ca request` for `ids` through the CA at `url`, as a child process.
fn request(ca: &Ca, url: &str, station: &Path, ids: &[String], out: &str) -> Command {
    let ids_file = ca.file(&format!("{out}.ids"));
    std::fs::write(&ids_file, ids.join("\n") + "\n").unwrap();
    let mut cmd = certline();
    cmd.args(["ca", "request", "--url", url, "--credential"])
        .arg(station)
        .args(["--ids", path(&ids_file), "--out"])
        .arg(ca.file(out))
        .args(["--chunk", "10000", "--json"]);
    cmd
}

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (1..=count).map(|n| format!("{prefix}-{n:06}")).collect()
}

/// Every device id's certificates as the ledger has them: (serial, status).
fn statuses(ca: &Ca, id: &str) -> Vec<(String, String)> {
    ca.history(id)
        .iter()
        .map(|r| {
            (
                r["serial"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// How many device ids matching `like` have a valid certificate.
fn valid_devices(pg: &PgServer, database: &str, like: &str) -> usize {
    pg.sql(
        database,
        &format!("SELECT count(DISTINCT subject) FROM certs WHERE kind = 'device' AND status = 'valid' AND subject LIKE '{like}'"),
    )
    .parse()
    .unwrap()
}

/// Device ids with more than one valid certificate.
fn twice(pg: &PgServer, database: &str) -> usize {
    pg.sql(
        database,
        "SELECT count(*) FROM (SELECT subject FROM certs WHERE kind = 'device' AND status = 'valid' GROUP BY subject HAVING count(*) > 1) AS t",
    )
    .parse()
    .unwrap()
}

fn audit_intact(dir: &str) {
    let out = ok(&["ca", "audit", "verify", "--dir", dir]);
    assert!(out.contains("audit log intact"), "{out}");
}

#[test]
fn two_ca_processes_on_one_database_issue_nothing_twice() {
    let Some(pg) = PgServer::start() else { return };
    let ca = pg_ca(&pg, "two");
    let second = copy_dir(&ca, "ca-2");
    let one = serve(&ca.dir, &[]);
    let two = serve(&second, &[]);
    let station_a = ca.enroll("station", "factory-a");
    let station_b = ca.enroll("station", "factory-b");

    // The same ids asked for through both processes at once: exactly one
    // request gets them (each is all or nothing), the other is refused.
    let same = ids("3012", 300);
    let mut a = request(&ca, &one.url, &station_a, &same, "a")
        .spawn()
        .unwrap();
    let mut b = request(&ca, &two.url, &station_b, &same, "b")
        .spawn()
        .unwrap();
    let (a, b) = (a.wait().unwrap(), b.wait().unwrap());
    assert!(
        a.success() != b.success(),
        "exactly one of two requests for the same ids must succeed: {a:?} {b:?}"
    );
    let winner = if a.success() { "a" } else { "b" };
    assert_eq!(valid_devices(&pg, "two", "3012-%"), 300);
    assert_eq!(twice(&pg, "two"), 0);
    // The packs the winner wrote are the valid certificates.
    for id in [&same[0], &same[299]] {
        let valid = statuses(&ca, id);
        assert_eq!(valid.len(), 1, "{id}: {valid:?}");
        let pack = ca.file(winner).join(id).join("chain.pem");
        let der = common::pem_file(&pack, "CERTIFICATE").remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(hex::encode(cert.raw_serial()), valid[0].0);
    }

    // Different ids through both at once: both served, every id once.
    let left = ids("A123", 200);
    let right = ids("B456", 200);
    let mut a = request(&ca, &one.url, &station_a, &left, "left")
        .spawn()
        .unwrap();
    let mut b = request(&ca, &two.url, &station_b, &right, "right")
        .spawn()
        .unwrap();
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    assert_eq!(valid_devices(&pg, "two", "A123-%"), 200);
    assert_eq!(valid_devices(&pg, "two", "B456-%"), 200);
    assert_eq!(twice(&pg, "two"), 0);
    assert_eq!(
        pg.sql(
            "two",
            "SELECT count(*) FROM certs WHERE status = 'reserved'"
        ),
        "0"
    );

    // A revocation through one process is on the CRL the other serves
    // (within its crl_max_delay; each publishes what the shared ledger holds).
    let revoked = statuses(&ca, &left[0])[0].0.clone();
    let root = common::pem_file(&ca.dir.join("root.pem"), "CERTIFICATE").remove(0);
    let station_id = identity_of(&station_a, &station_a);
    let body = serde_json::json!({"id": left[0], "reason": "key-compromise"});
    let (status, reply) = post(
        &two.url,
        common::tls_client(&root, Some(station_id)),
        "/v1/revoke",
        body.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "{reply}");
    let served = |url: &str| {
        let (status, der) = get(url, common::tls_client(&root, None), "/v1/crl").unwrap();
        assert_eq!(status, 200);
        der
    };
    let listed = |der: &[u8]| crl_entries(der).1.iter().any(|(s, _)| *s == revoked);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (from_one, from_two) = loop {
        let (a, b) = (served(&one.url), served(&two.url));
        if (listed(&a) && listed(&b)) || std::time::Instant::now() > deadline {
            break (a, b);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        listed(&from_one) && listed(&from_two),
        "{revoked} is not on the CRLs both processes serve: {:?} / {:?}",
        crl_entries(&from_one),
        crl_entries(&from_two)
    );
    // Numbers come from one counter: the same number is the same CRL.
    if crl_entries(&from_one).0 == crl_entries(&from_two).0 {
        assert_eq!(from_one, from_two, "two different CRLs with one number");
    }
    let crl = ca.file("crl.pem");
    ok(&["ca", "crl", "--dir", ca.dir(), "--out", path(&crl)]);
    if common::openssl_available() {
        let text = Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in", path(&crl)])
            .output()
            .map(|o| common::text(&o.stdout))
            .unwrap_or_default();
        assert!(
            text.to_uppercase().contains(&revoked.to_uppercase()),
            "{revoked} missing from {text}"
        );
    }
    audit_intact(ca.dir());
    audit_intact(path(&second));
    drop((one, two));
}

/// A station of its own factory, initialised against the CA process at
/// `url`, with the day's plan for `count` devices of 3012 from `first`.
fn station_with_plan(ca: &Ca, name: &str, url: &str, first: u32, count: u32) -> PathBuf {
    let credential = ca.enroll("station", name);
    let dir = ca.file(name);
    st::ok(&[
        "station",
        "init",
        "--dir",
        path(&dir),
        "--ca",
        url,
        "--credential",
        path(&credential),
        "--model",
        "3012",
        "--chunk-size",
        "40",
    ]);
    let plan = ca.file(&format!("{name}.csv"));
    let rows = format!(
        "date,model,first_serial,count\n{},3012,{first:06},{count}\n",
        st::DAY
    );
    std::fs::write(&plan, rows).unwrap();
    st::ok(&[
        "station",
        "plan",
        "import",
        "--dir",
        path(&dir),
        path(&plan),
    ]);
    dir
}

/// (id, serial) of a station's stocked packs.
fn stocked(station: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open_with_flags(
        station.join("stock.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT id, serial FROM packs WHERE state = 'stocked' ORDER BY id")
        .unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

/// Two factories' stations fetch the same day's plans at once, each through
/// its own CA process on the one database: every id ends with exactly one
/// valid certificate, each station's stock is exactly the ledger's valid
/// certificates of its ids, and the audit chain verifies.
#[test]
fn two_stations_fetch_the_days_plans_through_two_ca_processes() {
    let Some(pg) = PgServer::start() else { return };
    let ca = pg_ca(&pg, "plans");
    let second = copy_dir(&ca, "ca-2");
    let (one, two) = (serve(&ca.dir, &[]), serve(&second, &[]));
    let north = station_with_plan(&ca, "north", &one.url, 1, 150);
    let south = station_with_plan(&ca, "south", &two.url, 1001, 150);

    let fetch = |dir: &Path| {
        let mut cmd = st::certline();
        cmd.args([
            "station",
            "fetch",
            "--dir",
            path(dir),
            "--day",
            &st::DAY.to_string(),
            "--json",
        ]);
        cmd.spawn().unwrap()
    };
    let (mut a, mut b) = (fetch(&north), fetch(&south));
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());

    let valid: std::collections::BTreeMap<String, String> = pg
        .sql(
            "plans",
            "SELECT string_agg(subject || '=' || serial, ',' ORDER BY subject) FROM certs WHERE kind = 'device' AND status = 'valid'",
        )
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(id, serial)| (id.to_string(), serial.to_string()))
        .collect();
    assert_eq!(valid.len(), 300, "{valid:?}");
    assert_eq!(twice(&pg, "plans"), 0);
    for (station, first) in [(&north, 1), (&south, 1001)] {
        let stock = stocked(station);
        assert_eq!(stock.len(), 150, "{}", station.display());
        for (n, (id, serial)) in stock.iter().enumerate() {
            assert_eq!(*id, format!("3012-{:06}", first + n));
            assert_eq!(
                valid.get(id),
                Some(serial),
                "{id}: the stock and the ledger differ"
            );
        }
    }
    assert_eq!(
        pg.sql(
            "plans",
            "SELECT count(*) FROM certs WHERE status = 'reserved'"
        ),
        "0"
    );
    audit_intact(ca.dir());
}

#[cfg(feature = "failpoints")]
#[test]
fn a_killed_ca_process_loses_its_reservations_when_its_lease_ends() {
    let Some(pg) = PgServer::start() else { return };
    let ca = pg_ca(&pg, "lease");
    // A short lease, so the test does not wait long for it to end.
    let config = ca.dir.join("ca.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("lease_seconds = 30", "lease_seconds = 4"),
    )
    .unwrap();
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("lease_seconds = 4"));
    let second = copy_dir(&ca, "ca-2");
    let station = ca.enroll("station", "factory-a");
    let survivor = serve(&second, &[]);

    // The first process stops right after reserving a batch, and is killed there.
    let mut armed = serve(&ca.dir, &[("FAILPOINTS", "ca-after-reserve=pause")]);
    let batch = ids("3012", 50);
    let mut asked = request(&ca, &armed.url, &station, &batch, "lost")
        .spawn()
        .unwrap();
    armed.wait_stderr("ca reached fail point ca-after-reserve");
    // A live peer's reservations are never touched: the survivor refuses these ids.
    let mut refused = request(&ca, &survivor.url, &station, &batch, "early")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        common::text(&refused.stderr).contains("being issued right now"),
        "{}",
        common::text(&refused.stderr)
    );
    armed.kill(); // SIGKILL, mid-batch
    assert!(!asked.wait().unwrap().success());
    assert_eq!(
        pg.sql(
            "lease",
            "SELECT count(*) FROM certs WHERE status = 'reserved' AND subject LIKE '3012-%'"
        ),
        "50"
    );

    // The survivor keeps serving other ids meanwhile.
    let other = ids("A123", 20);
    assert!(request(&ca, &survivor.url, &station, &other, "other")
        .status()
        .unwrap()
        .success());

    // Once the lease ended, the survivor revokes the dead process's reservations.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while statuses(&ca, &batch[0])[0].1 == "reserved" {
        assert!(std::time::Instant::now() < deadline, "never abandoned");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(
        pg.sql("lease", "SELECT count(*) FROM certs WHERE status = 'revoked' AND reason = 'cessation-of-operation' AND subject LIKE '3012-%'"),
        "50"
    );
    // And the ids can be issued again, once each.
    refused = request(&ca, &survivor.url, &station, &batch, "again")
        .output()
        .unwrap();
    assert!(
        refused.status.success(),
        "{}",
        common::text(&refused.stderr)
    );
    assert_eq!(valid_devices(&pg, "lease", "3012-%"), 50);
    assert_eq!(valid_devices(&pg, "lease", "A123-%"), 20);
    assert_eq!(twice(&pg, "lease"), 0);
    audit_intact(path(&second));
}

#[test]
fn a_database_restart_fails_requests_clearly_then_serves_again() {
    let Some(mut pg) = PgServer::start() else {
        return;
    };
    let ca = pg_ca(&pg, "restart");
    let server = ca.serve(&[]);
    let station = ca.enroll("station", "factory-a");
    assert!(
        request(&ca, &server.url, &station, &ids("3012", 30), "before")
            .status()
            .unwrap()
            .success()
    );

    pg.stop("fast");
    let out = request(&ca, &server.url, &station, &ids("3012", 60), "down")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = common::text(&out.stderr);
    assert!(err.contains("ledger database"), "{err}");
    pg.start_again();

    // The same request again: served, nothing half-written before.
    let out = request(&ca, &server.url, &station, &ids("3012", 60), "after")
        .output()
        .unwrap();
    // The first 30 are already certified: ask for the new ones only.
    assert!(!out.status.success());
    let err = common::text(&out.stderr);
    assert!(err.contains("already has a valid certificate"), "{err}");
    let fresh: Vec<String> = ids("3012", 60).split_off(30);
    let out = request(&ca, &server.url, &station, &fresh, "after2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert_eq!(valid_devices(&pg, "restart", "3012-%"), 60);
    assert_eq!(
        pg.sql(
            "restart",
            "SELECT count(*) FROM certs WHERE kind = 'device'"
        ),
        "60"
    );
    audit_intact(ca.dir());
}

#[test]
fn migrate_ledger_copies_sqlite_with_its_audit_chain() {
    let Some(pg) = PgServer::start() else { return };
    let ca = Ca::init(&[]);
    ca.issue("packs", &["3012-1", "3012-2", "3012-3"]);
    ok(&["ca", "revoke", "--dir", ca.dir(), "--id", "3012-2"]);
    let before = ok(&["ca", "audit", "verify", "--dir", ca.dir(), "--json"]);
    let counts = ca.counts();

    pg.create_database("moved");
    let out = ok(&[
        "ca",
        "migrate-ledger",
        "--dir",
        ca.dir(),
        "--to",
        &pg.url("moved"),
        "--password-file",
        path(&pg.password_file()),
    ]);
    assert!(out.contains("chain verified"), "{out}");
    assert!(std::fs::read_to_string(ca.dir.join("ca.toml"))
        .unwrap()
        .contains("postgres://"));
    let after = ok(&["ca", "audit", "verify", "--dir", ca.dir(), "--json"]);
    assert_eq!(before, after);
    assert_eq!(ca.counts(), counts);
    // The CA works on it: the revoked id gets a new certificate.
    let again = ca.ids_file("again", &["3012-2", "3012-4"]);
    ok(&[
        "ca",
        "issue",
        "--dir",
        ca.dir(),
        "--ids",
        path(&again),
        "--out",
        path(&ca.file("packs2")),
    ]);
    assert_eq!(
        pg.sql(
            "moved",
            "SELECT count(*) FROM certs WHERE status = 'valid' AND kind = 'device'"
        ),
        "4"
    );
    // A second migration is refused: the CA is on PostgreSQL already.
    let err = fails(&[
        "ca",
        "migrate-ledger",
        "--dir",
        ca.dir(),
        "--to",
        &pg.url("moved"),
    ]);
    assert!(err.contains("already keeps its ledger"), "{err}");
}

#[test]
fn bad_database_settings_are_refused_naming_what_is_wrong() {
    let Some(pg) = PgServer::start() else { return };
    pg.create_database("good");
    let pwfile = pg.password_file();
    let init = |url: &str, password_file: &Path| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let err = fails(&[
            "ca",
            "init",
            "--dir",
            path(&dir),
            "--ledger",
            url,
            "--ledger-password-file",
            path(password_file),
        ]);
        assert!(!dir.join("ca.toml").exists(), "a failed init left a CA");
        err
    };

    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = init(
        &format!("postgres://certline@127.0.0.1:{port}/good"),
        &pwfile,
    );
    assert!(err.contains("cannot reach the ledger database"), "{err}");

    // A wrong password.
    let wrong = pg.password_file().with_file_name("wrong-password");
    std::fs::write(&wrong, "not the password").unwrap();
    let err = init(&pg.url("good"), &wrong);
    assert!(err.contains("wrong password"), "{err}");

    // A password in the URL.
    let url = pg
        .url("good")
        .replace("certline@", &format!("certline:{PASSWORD}@"));
    let err = init(&url, &pwfile);
    assert!(err.contains("carries a password"), "{err}");

    // A database that does not exist.
    let err = init(&pg.url("missing"), &pwfile);
    assert!(err.contains("does not exist"), "{err}");

    // A ledger of a newer certline: refused, and left as it was.
    let ca = pg_ca(&pg, "newer");
    pg.sql(
        "newer",
        "UPDATE certline_schema SET version = 99 WHERE component = 'ledger'",
    );
    let err = fails(&["ca", "status", "--dir", ca.dir()]);
    assert!(
        err.contains("schema version 99") && err.contains("upgrade certline"),
        "{err}"
    );
    assert_eq!(
        pg.sql(
            "newer",
            "SELECT version FROM certline_schema WHERE component = 'ledger'"
        ),
        "99"
    );

    // Another CA's ledger: a second CA initialised on the same database is refused.
    let other = pg_ca(&pg, "shared");
    let err = init(&pg.url("shared"), &pwfile);
    assert!(err.contains("belongs to another CA"), "{err}");
    ok(&["ca", "status", "--dir", other.dir()]);
}
