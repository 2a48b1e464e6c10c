//! The line's configuration file (TOML). Relative paths are relative to the
//! file's folder. Loading checks everything that can be checked without
//! touching the station or a device, so a broken edit is refused before it
//! replaces a working configuration.
//!
//! ```toml
//! name = "line-1"                      # shown in operator lines and logs
//! state_dir = "state"                  # the outbox of undelivered results
//! factory = "factory.toml"             # models and where their keys are born
//!                                      # (default: factory.toml in [scripts] dir)
//!
//! [station]
//! url = "https://station.factory:7443"
//! credential = "line-1.pem"            # from `certline ca enroll --role line`
//! timeout_ms = 5000                    # each request to the station
//! retry_ms = 2000                      # how often kept results are retried
//!
//! [scanner]
//! source = "serial"                    # or "stdin" (keyboard wedge)
//! port = "/dev/ttyUSB0"
//! baud = 9600
//! debounce_ms = 800                    # the same code again within this is one scan
//!
//! [device]
//! address = "192.168.7.2:4000"         # or a serial port path, e.g. "/dev/ttyS1"
//! connect_timeout_ms = 5000            # connect and TLS handshake
//! write_timeout_ms = 60000             # one plugin operation, all its link waits
//!
//! [plugins]
//! dir = "plugins"
//!
//! [scripts]
//! dir = "scripts/acme"                 # the factory's workflow (Lua, issue 7)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::link::DeviceAddr;
use crate::scanner::Source;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: String,
    state_dir: PathBuf,
    station: RawStation,
    scanner: RawScanner,
    device: RawDevice,
    plugins: RawPlugins,
    #[serde(default)]
    scripts: Option<RawScripts>,
    #[serde(default)]
    factory: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawStation {
    url: String,
    credential: PathBuf,
    #[serde(default = "default_station_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_retry")]
    retry_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawScanner {
    source: String,
    #[serde(default)]
    port: Option<PathBuf>,
    #[serde(default = "default_baud")]
    baud: u32,
    #[serde(default = "default_debounce")]
    debounce_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    address: String,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: u64,
    #[serde(default = "default_write_timeout")]
    write_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawPlugins {
    dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawScripts {
    dir: PathBuf,
}

fn default_station_timeout() -> u64 {
    5_000
}
fn default_retry() -> u64 {
    2_000
}
fn default_baud() -> u32 {
    9_600
}
fn default_debounce() -> u64 {
    800
}
fn default_connect_timeout() -> u64 {
    5_000
}
fn default_write_timeout() -> u64 {
    60_000
}

/// A checked line configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LineConfig {
    /// The file it came from.
    pub file: PathBuf,
    pub name: String,
    pub state_dir: PathBuf,
    pub station_url: String,
    pub credential: PathBuf,
    pub station_timeout: Duration,
    pub retry: Duration,
    pub scanner: Source,
    pub debounce: Duration,
    pub device: DeviceAddr,
    pub connect_timeout: Duration,
    pub write_timeout: Duration,
    pub plugin_dir: PathBuf,
    pub script_dir: Option<PathBuf>,
    /// The factory's `factory.toml` (which models generate their keys in the
    /// device): `factory`, else `factory.toml` in the script folder if there.
    pub factory_file: Option<PathBuf>,
}

fn millis(what: &str, ms: u64, min: u64, max: u64) -> anyhow::Result<Duration> {
    if ms < min || ms > max {
        anyhow::bail!("{what} = {ms} is out of range ({min}..={max} ms)");
    }
    Ok(Duration::from_millis(ms))
}

impl LineConfig {
    /// Reads and checks the file.
    pub fn load(file: &Path) -> anyhow::Result<LineConfig> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read line configuration {}", file.display()))?;
        Self::parse(file, &text).with_context(|| format!("line configuration {}", file.display()))
    }

    /// Checks `text` as the content of `file`.
    pub fn parse(file: &Path, text: &str) -> anyhow::Result<LineConfig> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let base = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let at = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let name = raw.name.trim().to_string();
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            anyhow::bail!("name {:?} must be 1-64 printable characters", raw.name);
        }
        if !raw.station.url.starts_with("https://") {
            anyhow::bail!(
                "[station] url {:?} must start with https:// (nothing is spoken in clear text)",
                raw.station.url
            );
        }
        let scanner = match raw.scanner.source.as_str() {
            "stdin" | "keyboard" => {
                if raw.scanner.port.is_some() {
                    anyhow::bail!(
                        "[scanner] port is set but source is {:?}; use source = \"serial\" for a serial reader",
                        raw.scanner.source
                    );
                }
                Source::Stdin
            }
            "serial" => {
                let port = raw.scanner.port.as_ref().context(
                    "[scanner] source = \"serial\" needs port = \"/dev/...\" (the reader's serial port)",
                )?;
                if raw.scanner.baud == 0 || raw.scanner.baud > 4_000_000 {
                    anyhow::bail!("[scanner] baud = {} is not a serial speed", raw.scanner.baud);
                }
                Source::Serial {
                    port: at(port),
                    baud: raw.scanner.baud,
                }
            }
            other => anyhow::bail!(
                "[scanner] source = {other:?} is not a scanner source (expected \"serial\" or \"stdin\")"
            ),
        };
        let device = DeviceAddr::parse(&raw.device.address)
            .map_err(|e| anyhow::anyhow!("[device] address: {e}"))?;
        let device = match device {
            DeviceAddr::Serial(p) => DeviceAddr::Serial(at(&p)),
            tcp => tcp,
        };
        let config = LineConfig {
            file: file.to_path_buf(),
            name,
            state_dir: at(&raw.state_dir),
            station_url: raw.station.url.trim_end_matches('/').to_string(),
            credential: at(&raw.station.credential),
            station_timeout: millis("[station] timeout_ms", raw.station.timeout_ms, 100, 600_000)?,
            retry: millis("[station] retry_ms", raw.station.retry_ms, 50, 3_600_000)?,
            scanner,
            debounce: millis("[scanner] debounce_ms", raw.scanner.debounce_ms, 0, 60_000)?,
            device,
            connect_timeout: millis(
                "[device] connect_timeout_ms",
                raw.device.connect_timeout_ms,
                100,
                600_000,
            )?,
            write_timeout: millis(
                "[device] write_timeout_ms",
                raw.device.write_timeout_ms,
                100,
                3_600_000,
            )?,
            plugin_dir: at(&raw.plugins.dir),
            factory_file: match (&raw.factory, &raw.scripts) {
                (Some(file), _) => Some(at(file)),
                (None, Some(s)) => Some(at(&s.dir).join(crate::script::factory::FACTORY_FILE))
                    .filter(|f| f.exists()),
                (None, None) => None,
            },
            script_dir: raw.scripts.map(|s| at(&s.dir)),
        };
        if let Some(file) = &config.factory_file {
            if !file.is_file() {
                anyhow::bail!("factory = {} is not a file", file.display());
            }
        }
        if !config.plugin_dir.is_dir() {
            anyhow::bail!(
                "[plugins] dir {} does not exist or is not a folder",
                config.plugin_dir.display()
            );
        }
        if let Some(dir) = &config.script_dir {
            if !dir.is_dir() {
                anyhow::bail!(
                    "[scripts] dir {} does not exist or is not a folder",
                    dir.display()
                );
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> String {
        std::fs::create_dir_all(dir.join("plugins")).unwrap();
        "name = \"line-1\"\nstate_dir = \"state\"\n\
         [station]\nurl = \"https://127.0.0.1:1\"\ncredential = \"line.pem\"\n\
         [scanner]\nsource = \"serial\"\nport = \"/dev/ttyUSB0\"\n\
         [device]\naddress = \"127.0.0.1:4000\"\n\
         [plugins]\ndir = \"plugins\"\n"
            .to_string()
    }

    #[test]
    fn relative_paths_and_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("line.toml");
        let c = LineConfig::parse(&file, &sample(tmp.path())).unwrap();
        assert_eq!(c.credential, tmp.path().join("line.pem"));
        assert_eq!(c.state_dir, tmp.path().join("state"));
        assert_eq!(c.debounce, Duration::from_millis(800));
        assert_eq!(
            c.scanner,
            Source::Serial {
                port: "/dev/ttyUSB0".into(),
                baud: 9600
            }
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("line.toml");
        let good = sample(tmp.path());
        for (from, to, says) in [
            ("https://127.0.0.1:1", "http://127.0.0.1:1", "https://"),
            (
                "source = \"serial\"",
                "source = \"usb\"",
                "not a scanner source",
            ),
            ("127.0.0.1:4000", "printer", "[device] address"),
            ("dir = \"plugins\"", "dir = \"nope\"", "[plugins] dir"),
            ("name = \"line-1\"", "nmae = \"line-1\"", "nmae"),
        ] {
            let err = LineConfig::parse(&file, &good.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{says}: {err}");
        }
    }
}
