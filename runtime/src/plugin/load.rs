//! Loading a plugin: reading and checking the file, compiling the component,
//! reading the `certline:device` interface version it exports and refusing
//! one this host cannot run, checking what it imports, pre-instantiating it
//! and checking who it says it is.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use wasmtime::component::Component;
use wasmtime::Engine;

use super::bindings::{self, Bindings, Version};
use super::sandbox::plugin_text;
use super::{Plugin, PluginEngine, PluginInfo, EPOCH_TICK, MAX_PLUGIN_BYTES};
use crate::pki::id::check_model;

impl PluginEngine {
    /// Loads a plugin file: checks it, compiles it, checks its interface
    /// version, pre-instantiates it and asks it who it is.
    pub fn load(self: &Arc<Self>, path: &Path) -> anyhow::Result<Plugin> {
        let bytes = read_limited(path)?;
        self.load_bytes(path, &bytes)
            .with_context(|| format!("plugin {} refused", path.display()))
    }

    pub(super) fn load_bytes(
        self: &Arc<Self>,
        path: &Path,
        bytes: &[u8],
    ) -> anyhow::Result<Plugin> {
        check_header(bytes)?;
        let started = Instant::now();
        let component = Component::new(&self.engine, bytes).map_err(|e| {
            anyhow::anyhow!("not a valid WebAssembly component: {}", e.root_cause())
        })?;
        let compile_time = started.elapsed();

        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let interface = interface_version(&exports)?;
        let bindings_version = bindings::check_version(interface).map_err(anyhow::Error::msg)?;
        check_imports(&imports)?;

        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!(
                "it imports something this host does not grant: {}",
                e.root_cause()
            )
        })?;
        let bindings = Bindings::new(bindings_version, pre).map_err(|e| {
            anyhow::anyhow!(
                "it does not implement the {} world: {}",
                bindings::EXPORT,
                e.root_cause()
            )
        })?;
        let mut plugin = Plugin {
            engine: self.clone(),
            path: path.to_path_buf(),
            sha256: crate::pki::fingerprint(bytes),
            size: bytes.len(),
            interface,
            exports,
            imports,
            compile_time,
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                models: Vec::new(),
            },
            bindings,
        };
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let info = plugin.with_session(&label, None, |s| {
            s.call("info", |inst, store| inst.info(store))
        })?;
        plugin.info = validate_info(info)?;
        Ok(plugin)
    }
}

/// Advances `engine`'s epoch every [`EPOCH_TICK`] while the engine lives
/// (epoch deadlines do nothing unless something advances the epoch).
pub(super) fn spawn_epoch_ticker(engine: &Engine) -> anyhow::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .context("cannot start the plugin deadline thread")?;
    Ok(())
}

pub(super) fn read_limited(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read plugin {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("plugin {} is not a file", path.display());
    }
    if meta.len() > MAX_PLUGIN_BYTES as u64 {
        anyhow::bail!(
            "plugin {} is {} bytes, over the limit of {MAX_PLUGIN_BYTES}",
            path.display(),
            meta.len()
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read plugin {}", path.display()))
}

/// Looks at the preamble before wasmtime does, to say plainly what the file is.
fn check_header(bytes: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE: [u8; 4] = [1, 0, 0, 0];
    const COMPONENT: [u8; 4] = [0x0d, 0, 0x01, 0];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        anyhow::bail!("not a WebAssembly file (it does not start with \\0asm)");
    }
    match bytes[4..8].try_into().unwrap() {
        COMPONENT => Ok(()),
        CORE => anyhow::bail!(
            "a core WebAssembly module, not a component: build the plugin for the wasm32-wasip2 target"
        ),
        other => anyhow::bail!("unknown WebAssembly version/layer {other:02x?}"),
    }
}

/// The version of the `certline:device/device` interface a component exports.
fn interface_version(exports: &[String]) -> anyhow::Result<Version> {
    let prefix = format!("{}@", bindings::EXPORT);
    let Some(name) = exports
        .iter()
        .find(|e| e.starts_with(&prefix) || *e == bindings::EXPORT)
    else {
        anyhow::bail!(
            "it does not export {} (it exports: {}); it is not a certline device plugin (wrong world)",
            bindings::EXPORT,
            if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
        );
    };
    let text = name.strip_prefix(&prefix).unwrap_or("");
    Version::parse(text).with_context(|| {
        format!("export {name} has no usable version (expected {prefix}MAJOR.MINOR.PATCH)")
    })
}

/// What a plugin may import: its host interface, and the parts of WASI that
/// Rust's standard library links even when unused (the context behind them
/// grants nothing: no environment, closed stdin, discarded output, a wall clock
/// stuck at zero). Files and sockets are not among them.
const GRANTED_IMPORTS: &[&str] = &[
    "certline:device/host@",
    "wasi:io/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:random/",
];

fn check_imports(imports: &[String]) -> anyhow::Result<()> {
    let refused: Vec<&str> = imports
        .iter()
        .filter(|i| !GRANTED_IMPORTS.iter().any(|g| i.starts_with(g)))
        .map(String::as_str)
        .collect();
    if !refused.is_empty() {
        anyhow::bail!(
            "it imports {}, which this host does not grant (a plugin gets its device link, a log and nothing else)",
            refused.join(", ")
        );
    }
    Ok(())
}

fn validate_info(info: bindings::PluginInfo) -> anyhow::Result<PluginInfo> {
    let name_ok = !info.name.is_empty()
        && info.name.chars().count() <= 64
        && crate::text::is_printable(&info.name);
    if !name_ok {
        anyhow::bail!(
            "malformed answer from info: plugin name \"{}\" must be 1-64 printable characters",
            plugin_text(&info.name)
        );
    }
    if info.version.is_empty()
        || info.version.len() > 64
        || !crate::text::is_printable(&info.version)
    {
        anyhow::bail!(
            "malformed answer from info: plugin version \"{}\" must be 1-64 printable characters",
            plugin_text(&info.version)
        );
    }
    if info.models.is_empty() {
        anyhow::bail!(
            "malformed answer from info: plugin {} serves no model code",
            info.name
        );
    }
    for (i, m) in info.models.iter().enumerate() {
        check_model(m)
            .map_err(|e| anyhow::anyhow!("malformed answer from info: {}", plugin_text(&e)))?;
        if info.models[..i].contains(m) {
            anyhow::bail!(
                "malformed answer from info: plugin {} claims model code {m} twice",
                info.name
            );
        }
    }
    Ok(PluginInfo {
        name: info.name,
        version: info.version,
        models: info.models,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert!(check_header(b"hello world")
            .unwrap_err()
            .to_string()
            .contains("not a WebAssembly file"));
        assert!(check_header(b"\0asm\x01\0\0\0")
            .unwrap_err()
            .to_string()
            .contains("core WebAssembly module"));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn files_and_sockets_are_not_granted() {
        check_imports(&[
            "certline:device/host@0.1.0".into(),
            "wasi:io/streams@0.2.6".into(),
        ])
        .unwrap();
        let err = check_imports(&[
            "wasi:sockets/tcp@0.2.6".into(),
            "wasi:filesystem/preopens@0.2.6".into(),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("wasi:sockets/tcp@0.2.6, wasi:filesystem/preopens@0.2.6"),
            "{err}"
        );
    }

    #[test]
    fn export_versions() {
        let v = interface_version(&["certline:device/device@0.1.0".into()]).unwrap();
        assert_eq!(
            v,
            Version {
                major: 0,
                minor: 1,
                patch: 0
            }
        );
        let err = interface_version(&["wasi:cli/run@0.2.6".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wasi:cli/run@0.2.6") && err.contains("wrong world"),
            "{err}"
        );
    }
}
