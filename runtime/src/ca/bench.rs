//! `certline ca bench`: batch issuance against the raw rate of the crypto
//! library in the same run (one P-256 key generation plus one signature).
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
use crate::pki::role::Role;
use crate::service::client::ServiceClient;
use crate::service::tls::{server_config, ClientAuth};
use crate::store::ledger::Ledger;
use crate::wire::ca::{self as api, BatchRequest, PackBatch};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Packs per batch.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Skip the over-the-wire measurement.
    #[arg(long)]
    pub no_wire: bool,
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
    let (authority, _) = Authority::create("certline Bench", DEFAULT_PEN, clock.now())?;
    let ledger = Ledger::open(&dir.join(format!("{name}.db")), true)?;
    let config = CaConfig {
        listen: "127.0.0.1:0".into(),
        crl_validity_hours: 24,
        ..CaConfig::new("certline Bench", DEFAULT_PEN, count)
    };
    Ok(CertAuthority::new(authority, ledger, config, clock))
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
    let (pki, _) = Authority::create("certline Bench", DEFAULT_PEN, now)?;
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

    crate::command::emit(args.json, &figures, || {
        println!("batch issuance, {count} packs per batch, P-256");
        for f in &figures {
            println!(
                "  {:<40} {:>2} thread(s) {:>9.0}/s  {:>5.1}% of raw",
                f.what,
                f.threads,
                f.per_second,
                f.of_raw * 100.0
            );
        }
    })
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
