//! `certline ca bench`: batch issuance against the raw rate of the crypto
//! library in the same run (one P-256 key generation plus one signature);
//! with `--postgres URL`, the same batch on a PostgreSQL ledger by one and by
//! two CA instances at once (each with its own connection and lease, as two
//! `ca serve` processes would be), beside the SQLite figure, and the ledger's
//! own write rate (reserve + commit of one id) on both stores, which is what
//! serializing every writer on the audit chain's head costs.
//! With `--revoked N`: revocation at scale instead (`revocation_bench.rs`).

use std::time::{Duration, Instant};

use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use clap::Args;
use serde::Serialize;

use super::config::{CaConfig, DEFAULT_PEN};
use super::issuance::{CertAuthority, Clock, Requester};
use super::serve::{router, CaState};
use crate::pki::authority::Authority;
use crate::pki::keys::raw_keygen_and_sign;
use crate::pki::keystore::pkcs11::Token;
use crate::pki::keystore::{self, CaKeyAlgorithm};
use crate::pki::role::Role;
use crate::service::client::ServiceClient;
use crate::service::tls::{server_config, ClientAuth};
use crate::store::ledger::{CertKind, Ledger, Location, Reservation};
use crate::store::pg;
use crate::wire::ca::{self as api, BatchRequest, PackBatch};
use zeroize::Zeroizing;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Packs per batch.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Skip the over-the-wire measurement.
    #[arg(long)]
    pub no_wire: bool,
    /// Also measure on a PostgreSQL ledger in this database (password from
    /// CERTLINE_LEDGER_PASSWORD); the bench works in a schema of its own,
    /// dropped at the end.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// Also measure issuance with the issuing key in a PKCS#11 token through
    /// this module, beside the token's own raw signing rate (throw-away keys,
    /// deleted afterwards); needs --token and the PIN (CERTLINE_PKCS11_PIN or --pin-file).
    #[arg(long, requires = "token")]
    pub pkcs11_module: Option<std::path::PathBuf>,
    /// The PKCS#11 token's label.
    #[arg(long, requires = "pkcs11_module")]
    pub token: Option<String>,
    /// File holding the token's user PIN (else CERTLINE_PKCS11_PIN).
    #[arg(long)]
    pub pin_file: Option<std::path::PathBuf>,
    /// Measure revocation instead: a CA and a center with no revoked
    /// certificate, then with this many on the CRL, in one run.
    #[arg(long, value_name = "N")]
    pub revoked: Option<usize>,
    /// With --revoked: revokes and replacements per storm.
    #[arg(long, default_value_t = 300)]
    pub storm: usize,
    /// With --revoked: center connections per device kind.
    #[arg(long, default_value_t = 200)]
    pub connections: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Figure {
    what: String,
    threads: usize,
    per_second: f64,
    of_raw: f64,
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn fresh_ca(dir: &std::path::Path, name: &str, count: usize) -> anyhow::Result<CertAuthority> {
    let clock = Clock::system();
    let authority = sealed_authority(clock.now())?;
    let ledger = Ledger::open(&Location::Sqlite(dir.join(format!("{name}.db"))), true)?;
    Ok(CertAuthority::new(
        authority,
        ledger,
        bench_config(count),
        clock,
    ))
}

fn bench_config(count: usize) -> CaConfig {
    CaConfig {
        listen: "127.0.0.1:0".into(),
        crl_validity_hours: 24,
        ..CaConfig::new("certline Bench", DEFAULT_PEN, count)
    }
}

/// A throw-away CA with software keys.
fn sealed_authority(now: time::OffsetDateTime) -> anyhow::Result<Authority> {
    let (root, _) = keystore::file::generate(CaKeyAlgorithm::P384)?;
    let (issuing, _) = keystore::file::generate(CaKeyAlgorithm::P256)?;
    Authority::create(
        "certline Bench",
        DEFAULT_PEN,
        &Default::default(),
        root,
        issuing,
        now,
    )
}

fn batch(prefix: &str, count: usize) -> BatchRequest {
    BatchRequest::for_ids((0..count).map(|n| format!("{prefix}-{n:08}")))
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(revoked) = args.revoked {
        return super::revocation_bench::run(revoked, args.storm, args.connections, args.json);
    }
    let count = args.count.max(1);
    let tmp = tempfile::tempdir()?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut figures = Vec::new();

    // The yardstick, single-threaded.
    let signer = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
        .map_err(|_| anyhow::anyhow!("key generation failed"))?;
    let message = [0x5au8; 400];
    let start = Instant::now();
    for _ in 0..count {
        raw_keygen_and_sign(&signer, &message)?;
    }
    let raw = rate(count, start.elapsed());
    figures.push(Figure {
        what: "raw P-256 keygen + 1 signature".into(),
        threads: 1,
        per_second: raw,
        of_raw: 1.0,
    });

    // The certificate work alone: key, profile, DER, signature, PEM; no ledger.
    let now = time::OffsetDateTime::now_utc();
    let pki = sealed_authority(now)?;
    let profile = crate::pki::profile::CertProfile::default()
        .resolve()
        .map_err(anyhow::Error::msg)?;
    let start = Instant::now();
    for n in 0..count {
        let id = crate::pki::id::DeviceId::new("PKI", &format!("{n:08}"))?;
        let key = crate::pki::keys::DeviceKey::generate(profile.key)?;
        let der = pki.sign_device(
            &id,
            &profile,
            &crate::pki::serial::Serial::random(),
            &key,
            now,
        )?;
        std::hint::black_box((crate::pki::to_pem("CERTIFICATE", &der), key.pkcs8_pem()));
    }
    let certs = rate(count, start.elapsed());
    figures.push(Figure {
        what: "device certs + keys, no ledger".into(),
        threads: 1,
        per_second: certs,
        of_raw: certs / raw,
    });

    // In process: profile, encoding, PEM, ledger reserve + commit.
    let mut ca = fresh_ca(tmp.path(), "inproc", count)?;
    let start = Instant::now();
    let issued = ca.issue_batch(&batch("BENCH", count), &Requester::operator("bench"), 1)?;
    let inproc = rate(issued.packs.len(), start.elapsed());
    figures.push(Figure {
        what: "packs in process (ledger committed)".into(),
        threads: 1,
        per_second: inproc,
        of_raw: inproc / raw,
    });

    if let Some(url) = &args.postgres {
        figures.extend(on_postgres(url, tmp.path(), count, raw)?);
    }

    if !args.no_wire {
        for threads in [1, cores] {
            let per_second = over_the_wire(tmp.path(), count, threads)?;
            figures.push(Figure {
                what: "packs over mTLS (ledger committed)".into(),
                threads,
                per_second,
                of_raw: per_second / raw,
            });
            if cores == 1 {
                break;
            }
        }
    }

    if let (Some(module), Some(token)) = (&args.pkcs11_module, &args.token) {
        let pin = keystore::pkcs11::read_pin(args.pin_file.as_deref())?;
        figures.extend(pkcs11_figures(
            tmp.path(),
            module,
            token,
            &pin,
            count,
            cores,
        )?);
    }

    crate::command::emit(args.json, &figures, || {
        println!("batch issuance, {count} packs per batch, P-256");
        println!("  (the PKCS#11 rows compare with the token's raw rate, the others with the software one)");
        for f in &figures {
            println!(
                "  {:<52} {:>2} thread(s) {:>9.0}/s  {:>5.1}% of raw",
                f.what,
                f.threads,
                f.per_second,
                f.of_raw * 100.0
            );
        }
    })
}

/// The PKCS#11 path: the token's raw P-256 signing rate on every core (the
/// yardstick), then packs in process with the issuing key in the token, in
/// one run through the same module. The keys are throw-away and deleted.
fn pkcs11_figures(
    dir: &std::path::Path,
    module: &std::path::Path,
    token: &str,
    pin: &str,
    count: usize,
    cores: usize,
) -> anyhow::Result<Vec<Figure>> {
    let token = Token::open(module, token, pin)?;
    let tag = crate::pki::serial::Serial::random().to_hex();
    let labels = [
        format!("certline-bench-root-{}", &tag[..8]),
        format!("certline-bench-issuing-{}", &tag[..8]),
    ];
    let result = (|| -> anyhow::Result<Vec<Figure>> {
        let root = token.generate(&labels[0], CaKeyAlgorithm::P384, 1)?;
        let issuing = token.generate(&labels[1], CaKeyAlgorithm::P256, cores.max(2))?;
        let raw = keystore::pkcs11::raw_sign_rate(&issuing, count, cores)?;
        let clock = Clock::system();
        let authority = Authority::create(
            "certline Bench",
            DEFAULT_PEN,
            &Default::default(),
            root,
            issuing,
            clock.now(),
        )?;
        let ledger = Ledger::open(&Location::Sqlite(dir.join("pkcs11.db")), true)?;
        let config = CaConfig {
            crl_validity_hours: 24,
            ..CaConfig::new("certline Bench", DEFAULT_PEN, count)
        };
        let mut ca = CertAuthority::new(authority, ledger, config, clock);
        let start = Instant::now();
        let issued = ca.issue_batch(&batch("HSM", count), &Requester::operator("bench"), cores)?;
        let packs = rate(issued.packs.len(), start.elapsed());
        Ok(vec![
            Figure {
                what: format!("PKCS#11 raw P-256 signatures ({})", module.display()),
                threads: cores,
                per_second: raw,
                of_raw: 1.0,
            },
            Figure {
                what: "packs in process, issuing key in the token".into(),
                threads: cores,
                per_second: packs,
                of_raw: packs / raw,
            },
        ])
    })();
    for label in &labels {
        if let Err(e) = token.destroy(label) {
            tracing::warn!("could not delete the bench key {label}: {e:#}");
        }
    }
    result
}

fn over_the_wire(dir: &std::path::Path, count: usize, threads: usize) -> anyhow::Result<f64> {
    let mut ca = fresh_ca(dir, &format!("wire{threads}"), count)?;
    let hosts = ["127.0.0.1".to_string()];
    let bench = Requester::operator("bench");
    let server_cred = ca.enroll(Role::Ca, "ca", &hosts, &bench)?;
    let station = ca.enroll(Role::Station, "bench-station", &hosts, &bench)?;
    let tls = server_config(&server_cred, ClientAuth::Optional)?;
    let request = batch("WIRE", count);
    crate::command::runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let state = CaState::new(ca, threads)?;
        let server = tokio::spawn(crate::service::server::serve(
            listener,
            tls,
            router(state),
            std::future::pending(),
        ));
        let client = ServiceClient::new(&url, &station, Role::Ca, Duration::from_secs(600))?;
        let start = Instant::now();
        let batch: PackBatch = client.post(api::PACKS, &request).await?;
        let elapsed = start.elapsed();
        server.abort();
        anyhow::ensure!(
            batch.packs.len() == count,
            "the CA returned {} packs, not {count}",
            batch.packs.len()
        );
        Ok(rate(count, elapsed))
    })
}

/// A bench schema of its own in the database named by `url`, dropped on drop.
struct BenchSchema {
    target: pg::Target,
    schema: String,
}

impl BenchSchema {
    fn create(url: &str) -> anyhow::Result<BenchSchema> {
        let password = std::env::var(pg::PASSWORD_ENV).ok().map(Zeroizing::new);
        let target = pg::Target::parse(url, password)?;
        let schema = format!(
            "certline_bench_{}",
            &crate::pki::serial::Serial::random().to_hex()[..12]
        );
        target
            .connect()?
            .client()
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .map_err(|e| target.explain(&e))?;
        Ok(BenchSchema { target, schema })
    }

    fn location(&self) -> Location {
        Location::Postgres {
            target: Box::new(self.target.in_schema(&self.schema)),
            lease: Duration::from_secs(30),
        }
    }
}

impl Drop for BenchSchema {
    fn drop(&mut self) {
        if let Ok(mut db) = self.target.connect() {
            let _ = db
                .client()
                .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema));
        }
    }
}

/// Batches on a PostgreSQL ledger by one and by two CA instances, and the
/// ledger write rate of both stores.
fn on_postgres(
    url: &str,
    dir: &std::path::Path,
    count: usize,
    raw: f64,
) -> anyhow::Result<Vec<Figure>> {
    let schema = BenchSchema::create(url)?;
    let location = schema.location();
    let clock = Clock::system();
    let (root, root_pkcs8) = keystore::file::generate(CaKeyAlgorithm::P384)?;
    let (issuing, issuing_pkcs8) = keystore::file::generate(CaKeyAlgorithm::P256)?;
    let authority = Authority::create(
        "certline Bench",
        DEFAULT_PEN,
        &Default::default(),
        root,
        issuing,
        clock.now(),
    )?;
    let instance = |authority: Authority| -> anyhow::Result<CertAuthority> {
        let mut ledger = Ledger::open(&location, true)?;
        ledger.bind_root(&crate::pki::fingerprint(authority.root_der()))?;
        Ok(CertAuthority::new(
            authority,
            ledger,
            bench_config(count),
            clock.clone(),
        ))
    };
    let twin = || {
        Authority::load(
            "certline Bench",
            DEFAULT_PEN,
            authority.root_der().to_vec(),
            authority.issuing_der().to_vec(),
            keystore::file::from_pkcs8(&root_pkcs8)?,
            keystore::file::from_pkcs8(&issuing_pkcs8)?,
        )
    };
    let mut first = instance(twin()?)?;
    let mut second = instance(twin()?)?;
    let mut figures = Vec::new();
    let bench = Requester::operator("bench");

    let start = Instant::now();
    let issued = first.issue_batch(&batch("PGONE", count), &bench, 1)?;
    let one = rate(issued.packs.len(), start.elapsed());
    figures.push(Figure {
        what: "packs in process, PostgreSQL, 1 CA".into(),
        threads: 1,
        per_second: one,
        of_raw: one / raw,
    });

    // Two CA instances, each its own batch, at the same time.
    let start = Instant::now();
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| first.issue_batch(&batch("PGTWOA", count), &bench, 1));
        let b = scope.spawn(|| second.issue_batch(&batch("PGTWOB", count), &bench, 1));
        (a.join(), b.join())
    });
    let packs = a
        .map_err(|_| anyhow::anyhow!("a CA instance panicked"))??
        .packs
        .len()
        + b.map_err(|_| anyhow::anyhow!("a CA instance panicked"))??
            .packs
            .len();
    let two = rate(packs, start.elapsed());
    figures.push(Figure {
        what: "packs in process, PostgreSQL, 2 CAs at once (sum)".into(),
        threads: 2,
        per_second: two,
        of_raw: two / raw,
    });

    // The ledger alone: one-id reserve + commit transactions.
    let writes = (count / 10).clamp(50, 2000);
    let sqlite = ledger_writes(
        &mut [Ledger::open(
            &Location::Sqlite(dir.join("writes.db")),
            true,
        )?],
        writes,
    )?;
    let pg_one = ledger_writes(&mut [Ledger::open(&location, false)?], writes)?;
    let pg_two = ledger_writes(
        &mut [
            Ledger::open(&location, false)?,
            Ledger::open(&location, false)?,
        ],
        writes,
    )?;
    for (what, writers, per_second) in [
        ("ledger writes (reserve+commit, 1 id), SQLite", 1, sqlite),
        (
            "ledger writes (reserve+commit, 1 id), PostgreSQL",
            1,
            pg_one,
        ),
        (
            "ledger writes (reserve+commit, 1 id), PostgreSQL",
            2,
            pg_two,
        ),
    ] {
        figures.push(Figure {
            what: what.into(),
            threads: writers,
            per_second,
            of_raw: per_second / raw,
        });
    }
    Ok(figures)
}

/// Reserve + commit of one id, `writes` times per ledger, all ledgers at once:
/// issuance cycles per second in all.
fn ledger_writes(ledgers: &mut [Ledger], writes: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let tag = crate::pki::serial::Serial::random().to_hex();
    std::thread::scope(|scope| {
        let workers: Vec<_> = ledgers
            .iter_mut()
            .enumerate()
            .map(|(n, ledger)| {
                let tag = &tag;
                scope.spawn(move || -> anyhow::Result<()> {
                    for i in 0..writes {
                        let serial = crate::pki::serial::Serial::random();
                        let now = time::OffsetDateTime::now_utc();
                        ledger.reserve(
                            &[Reservation {
                                serial: serial.clone(),
                                subject: format!("W{}-{n}x{i:07}", &tag[..6]),
                                kind: CertKind::Device,
                                replaces: None,
                            }],
                            "bench",
                            now,
                        )?;
                        ledger.commit_issued(&[(serial, "00".into())], "bench", now)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a ledger writer panicked"))??;
        }
        anyhow::Ok(())
    })?;
    Ok(rate(writes * ledgers.len(), start.elapsed()))
}
