//! `certline demo`: the system on loopback with embedded defaults. Each role
//! runs as its own `certline` process, as it would in a factory.
//!
//! Today it runs the CA end to end (init, serve, a station's batch over mTLS,
//! a revocation, the CRL) and checks every pack with webpki; the full factory
//! day grows here as the station, lines and center land.

pub mod process;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::pki::credential::Credential;
use crate::pki::crl::Reason;
use crate::pki::pack::Pack;
use crate::pki::verify::verify_pack;
use crate::service::client::ServiceClient;
use crate::wire::ca::{self as api, RevokeRequest, Revoked};
use process::{Certline, Service};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to keep the demo's state (default: a new folder under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Devices in the day's batch.
    #[arg(long, default_value_t = 500)]
    pub devices: usize,
    #[arg(long)]
    pub json: bool,
}

fn step(n: usize, what: &str) {
    eprintln!("[{n}] {what}");
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = match args.dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("certline-demo-{}", std::process::id())),
    };
    if dir.join("ca").exists() {
        anyhow::bail!(
            "{} already holds a demo; pass another --dir or remove it",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let certline = Certline::new(&dir)?;

    step(1, "CA: init (root + issuing CA, sealed keys, empty ledger)");
    let ca_dir = dir.join("ca");
    certline.run(&[
        "ca",
        "init",
        "--dir",
        path(&ca_dir),
        "--org",
        "certline Demo Vendor",
    ])?;
    let station_cred = dir.join("station.pem");
    certline.run(&[
        "ca",
        "enroll",
        "--dir",
        path(&ca_dir),
        "--role",
        "station",
        "--name",
        "station-1",
        "--out",
        path(&station_cred),
    ])?;

    step(2, "CA: serve over mutual TLS");
    let ca = Service::start(
        &certline,
        &[
            "ca",
            "serve",
            "--dir",
            path(&ca_dir),
            "--listen",
            "127.0.0.1:0",
        ],
        "CA listening on ",
    )?;

    step(
        3,
        &format!(
            "station: ask for the day's {} packs in one batch",
            args.devices
        ),
    );
    let ids: Vec<String> = (1..=args.devices).map(|n| format!("3012-{n:06}")).collect();
    let ids_file = dir.join("ids.txt");
    std::fs::write(&ids_file, ids.join("\n") + "\n")?;
    let packs_dir = dir.join("packs");
    let batch_start = Instant::now();
    certline.run(&[
        "ca",
        "request",
        "--url",
        &ca.url,
        "--credential",
        path(&station_cred),
        "--ids",
        path(&ids_file),
        "--out",
        path(&packs_dir),
        "--chunk",
        "250",
    ])?;
    let batch_time = batch_start.elapsed();

    step(
        4,
        "check every pack independently (webpki): chain to the root, id in SAN and subject",
    );
    for id in &ids {
        let pack = Pack::read_dir(&packs_dir.join(id))?;
        let identity = verify_pack(&pack).with_context(|| format!("pack {id}"))?;
        anyhow::ensure!(
            identity.id.to_string() == *id,
            "pack {id} names {}",
            identity.id
        );
    }

    step(
        5,
        "station: report one device failed; the CA revokes its certificate and the CRL lists it",
    );
    let cred = Credential::load(&station_cred)?;
    let client = ServiceClient::new(&ca.url, &cred, Duration::from_secs(30))?;
    let failed = ids[0].clone();
    let crl_number = crate::cli::runtime()?.block_on(async {
        let revoked: Revoked = client
            .post(
                api::REVOKE,
                &RevokeRequest {
                    serial: None,
                    id: Some(failed.clone()),
                    reason: Reason::Superseded,
                },
            )
            .await?;
        let crl = client.get_bytes(api::CRL).await?;
        let (_, parsed) =
            x509_parser::parse_x509_crl(&crl).map_err(|e| anyhow::anyhow!("CRL: {e}"))?;
        anyhow::ensure!(
            parsed
                .iter_revoked_certificates()
                .any(|r| hex::encode(r.raw_serial()) == revoked.serial),
            "the CRL does not list {}",
            revoked.serial
        );
        Ok::<_, anyhow::Error>(
            parsed
                .crl_number()
                .map(|n| n.to_string())
                .unwrap_or_default(),
        )
    })?;
    drop(ca);

    step(6, "CA: the audit log's hash chain is intact");
    certline.run(&["ca", "audit", "verify", "--dir", path(&ca_dir)])?;

    let summary = serde_json::json!({
        "dir": dir,
        "devices": args.devices,
        "packs_verified": ids.len(),
        "batch_seconds": batch_time.as_secs_f64(),
        "packs_per_second": ids.len() as f64 / batch_time.as_secs_f64(),
        "revoked": [failed],
        "crl_number": crl_number,
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    crate::cli::emit(args.json, &summary, || {
        println!();
        println!("certline demo: summary");
        println!(
            "  packs issued over mTLS   {:>8}   ({:.0} packs/s for the batch)",
            ids.len(),
            summary["packs_per_second"].as_f64().unwrap_or(0.0)
        );
        println!("  packs verified (webpki)  {:>8}", ids.len());
        println!(
            "  revoked                  {:>8}   ({failed}, CRL number {crl_number})",
            1
        );
        println!("  audit log                   intact");
        println!(
            "  wall time                {:>8.1} s",
            started.elapsed().as_secs_f64()
        );
        println!("  state left in            {}", dir.display());
    })
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}
