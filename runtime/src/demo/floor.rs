//! The shop floor of the demo: each line is a `certline line` process whose
//! scanner is its stdin; the demo places one simulated device at a time on
//! the line's cable (a TCP address for the imaging line, a serial
//! pseudo-terminal for the meter line), types the scan, and reads the
//! operator line back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::process::{Certline, DeviceSim, LineProc};
use super::{path, progress};

/// Where a line's devices are plugged in.
#[derive(Debug, Clone)]
pub enum Cable {
    /// A loopback TCP address (the crossover cable).
    Tcp(String),
    /// A fixed serial port path (a symlink the demo points at each meter's
    /// pseudo-terminal in turn, as a meter is plugged into the line's port).
    Serial(PathBuf),
}

/// One scan on a line: what is on the cable, what is typed, what should happen.
/// The code a line reports when its workflow waits for the operator's
/// confirming rescan.
const CONFIRM: &str = "confirm";

pub struct Step {
    pub scan: String,
    /// The device on the cable (id, simulator fault flags), if any.
    pub device: Option<(String, Vec<String>)>,
    /// ok, refused or failed.
    pub expect: &'static str,
    pub note: &'static str,
}

impl Step {
    pub fn new(scan: &str, device: Option<&str>, expect: &'static str, note: &'static str) -> Step {
        Step {
            scan: scan.to_string(),
            device: device.map(|d| (d.to_string(), Vec::new())),
            expect,
            note,
        }
    }

    pub fn faulty(scan: &str, faults: &[&str], expect: &'static str, note: &'static str) -> Step {
        Step {
            scan: scan.to_string(),
            device: Some((
                scan.to_string(),
                faults.iter().map(|f| f.to_string()).collect(),
            )),
            expect,
            note,
        }
    }
}

/// What one scan did.
#[derive(Debug, Clone, Serialize)]
pub struct ScanResult {
    pub line: String,
    pub scan: String,
    /// The device id the line read from the scan, if it got that far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub status: String,
    pub code: String,
    pub message: String,
    pub expected: String,
    pub note: String,
    pub ms: f64,
    /// The line's workflow when it handled this scan.
    pub workflow: String,
}

/// A production line of the demo.
pub struct Line {
    pub name: String,
    pub config: PathBuf,
    pub cable: Cable,
    pub steps: Vec<Step>,
}

/// Writes a line's configuration (TOML, as a factory engineer would).
#[allow(clippy::too_many_arguments)]
pub fn write_config(
    dir: &Path,
    name: &str,
    station_url: &str,
    credential: &Path,
    device: &str,
    plugins: &Path,
    scripts: Option<&Path>,
    factory: &Path,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join("line.toml");
    let scripts = match scripts {
        Some(s) => format!("\n[scripts]\ndir = \"{}\"\n", path(s)),
        None => String::new(),
    };
    std::fs::write(
        &file,
        format!(
            "# written by certline demo\n\
             name = \"{name}\"\nstate_dir = \"state\"\nfactory = \"{}\"\n\n\
             [station]\nurl = \"{station_url}\"\ncredential = \"{}\"\ntimeout_ms = 10000\nretry_ms = 500\n\n\
             [scanner]\nsource = \"stdin\"\ndebounce_ms = 0\n\n\
             [device]\naddress = \"{device}\"\nconnect_timeout_ms = 10000\nwrite_timeout_ms = 30000\n\n\
             [plugins]\ndir = \"{}\"\n{scripts}",
            path(factory),
            path(credential),
            path(plugins)
        ),
    )?;
    Ok(file)
}

/// The day's models as a factory.toml the lines read (which ones carry a
/// certificate, which generate their keys in the device).
pub fn write_factory(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut text = String::from("# written by certline demo: the day's models\nname = \"demo\"\n");
    for p in super::PLAN {
        text.push_str(&format!(
            "\n[models.{}]\ndescription = \"{}\"\ncertificate = {}\nkeygen = \"{}\"\n",
            p.model,
            p.what,
            p.certificate,
            if p.device_keygen { "device" } else { "ca" }
        ));
    }
    let file = dir.join("factory.toml");
    std::fs::write(&file, text)?;
    Ok(file)
}

/// Runs a line's shift: starts the terminal, works through its steps, ends
/// the shift. Each step's result is shown as progress.
pub fn run_line(
    certline: &Certline,
    line: &Line,
    devices: &Path,
    link_credential: &Path,
) -> anyhow::Result<Vec<ScanResult>> {
    let mut terminal = LineProc::start(certline, &line.config, &line.name)?;
    progress(&format!(
        "    {:<7} ready, workflow: {}",
        line.name, terminal.workflow
    ));
    let mut results = Vec::new();
    for step in &line.steps {
        let device = match &step.device {
            Some((id, faults)) => {
                let faults: Vec<&str> = faults.iter().map(String::as_str).collect();
                let cable = match &line.cable {
                    Cable::Tcp(addr) => Some(addr.as_str()),
                    Cable::Serial(_) => None,
                };
                let sim = DeviceSim::start(
                    certline,
                    &devices.join(id),
                    id,
                    link_credential,
                    cable,
                    &faults,
                )?;
                if let Cable::Serial(port) = &line.cable {
                    plug_in(port, Path::new(&sim.addr))?;
                }
                Some(sim)
            }
            None => None,
        };
        let started = Instant::now();
        let mut v = terminal.scan(&step.scan)?;
        let mut tries = 0;
        while v.status == "refused" && tries < 40 {
            tries += 1;
            if v.code == CONFIRM {
                // line.lua asks the operator to check the device first (meters
                // in service mode); the operator confirms by scanning again.
                progress(&format!(
                    "    {:<7} {:<16} operator confirms: {}",
                    line.name, step.scan, v.message
                ));
            } else if v.code == crate::wire::station::codes::REPLACEMENT_PENDING {
                // A failed write is replaced by the station; if the replacement
                // is not in stock yet, the operator scans again a moment later.
                std::thread::sleep(Duration::from_millis(250));
            } else {
                break;
            }
            v = terminal.scan(&step.scan)?;
        }
        drop(device);
        let result = ScanResult {
            line: line.name.clone(),
            scan: step.scan.clone(),
            id: v.id,
            status: v.status,
            code: v.code,
            message: v.message,
            expected: step.expect.to_string(),
            note: step.note.to_string(),
            ms: started.elapsed().as_secs_f64() * 1000.0,
            workflow: terminal.workflow.clone(),
        };
        progress(&format!(
            "    {:<7} {:<16} {:<8} {:<20} {}{}",
            line.name,
            result.scan,
            result.status.to_uppercase(),
            result.code,
            step.note,
            if result.status == step.expect {
                String::new()
            } else {
                format!(" (UNEXPECTED: {})", result.message)
            }
        ));
        results.push(result);
    }
    terminal.finish();
    Ok(results)
}

/// Points the line's serial port at a meter's pseudo-terminal (atomically).
fn plug_in(port: &Path, pty: &Path) -> anyhow::Result<()> {
    let tmp = port.with_extension("plugging");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(pty, &tmp)
        .with_context(|| format!("cannot link {} to {}", tmp.display(), pty.display()))?;
    std::fs::rename(&tmp, port).with_context(|| format!("cannot replace {}", port.display()))?;
    Ok(())
}

/// A free loopback address for a line's cable (bound, then released).
pub fn free_addr() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}
