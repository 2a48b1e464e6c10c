//! `certline plugin new`: a device plugin for a new model, from the
//! templates in `runtime/templates/plugin/` (embedded in the binary): the
//! plugin (a line-based protocol; a Rust crate on the SDK, or a Python
//! module for componentize-py with the newest WIT beside it), its device
//! stub for `device-sim --exec`, and a script that builds and tries both
//! (the stub and the script are shared by both languages). What it makes
//! passes `plugin check` and `plugin try` without edits.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// One template file: where it goes in the new plugin, its text, and
/// whether it is a program (mode 0755).
struct File {
    path: &'static str,
    text: &'static str,
    program: bool,
}

/// The files every plugin gets, whatever its language: the device stub the
/// simulator runs and the script that builds, checks and tries.
const COMMON: [File; 2] = [
    File {
        path: "device.py",
        text: include_str!("../../templates/plugin/device.py"),
        program: true,
    },
    File {
        path: "try.sh",
        text: include_str!("../../templates/plugin/try.sh"),
        program: true,
    },
];

const RUST: [File; 3] = [
    File {
        path: "Cargo.toml",
        text: include_str!("../../templates/plugin/rust/Cargo.toml"),
        program: false,
    },
    File {
        path: "src/lib.rs",
        text: include_str!("../../templates/plugin/rust/src/lib.rs"),
        program: false,
    },
    File {
        path: "README.md",
        text: include_str!("../../templates/plugin/rust/README.md"),
        program: false,
    },
];

/// A Python plugin is built by componentize-py from the WIT beside it: the
/// newest released interface, copied in so the plugin builds anywhere.
const PYTHON: [File; 3] = [
    File {
        path: "app.py",
        text: include_str!("../../templates/plugin/python/app.py"),
        program: false,
    },
    File {
        path: "wit/device.wit",
        text: include_str!("../../../wit/since_v0.2.0/device.wit"),
        program: false,
    },
    File {
        path: "README.md",
        text: include_str!("../../templates/plugin/python/README.md"),
        program: false,
    },
];

/// The language a plugin is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A crate on the SDK, built with cargo for wasm32-wasip2.
    Rust,
    /// A module built with componentize-py (`--stub-wasi`).
    Python,
}

impl Lang {
    /// The language-specific files, the plugin's own source file, and the
    /// lines of try.sh that build the component into `$wasm`.
    fn parts(self) -> (&'static [File], &'static str, &'static str) {
        match self {
            Lang::Rust => (
                &RUST,
                "src/lib.rs",
                "cargo build --release --target wasm32-wasip2\n\
                 target=${CARGO_TARGET_DIR:-target}\n\
                 wasm=$target/wasm32-wasip2/release/{{wasm}}",
            ),
            Lang::Python => (
                &PYTHON,
                "app.py",
                "mkdir -p build\n\
                 componentize-py -d wit -w plugin componentize app -o build/{{wasm}} --stub-wasi\n\
                 wasm=build/{{wasm}}",
            ),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
        }
    }
}

/// What `plugin new` was asked for.
pub struct NewPlugin<'a> {
    pub name: &'a str,
    pub model: &'a str,
    /// Where the crate goes (must not exist, or be empty).
    pub dir: &'a Path,
    /// A certline source tree: a Rust crate depends on its plugins/sdk and
    /// plugins/protocol by path (a Python plugin needs none).
    pub source: &'a Path,
    pub lang: Lang,
}

/// A crate name the template can use: a-z first, then a-z 0-9 and '-'.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        anyhow::bail!(
            "plugin name {name:?}: use 1-40 of a-z 0-9 and '-', starting with a letter (it becomes the crate's name)"
        );
    }
    Ok(())
}

/// Writes the crate; returns the files written.
pub fn create(new: &NewPlugin<'_>) -> anyhow::Result<Vec<PathBuf>> {
    check_name(new.name)?;
    crate::pki::id::check_model(new.model)
        .map_err(|e| anyhow::anyhow!("--model {}: {e}", new.model))?;
    let sdk = new.source.join("plugins/sdk");
    let protocol = new.source.join("plugins/protocol");
    // A Python plugin needs nothing from the source tree (its WIT is copied in).
    if new.lang == Lang::Rust {
        for (what, dir) in [("the SDK", &sdk), ("the protocol crate", &protocol)] {
            if !dir.join("Cargo.toml").is_file() {
                anyhow::bail!(
                    "{} has no {what} ({} is missing); name a certline source tree with --source",
                    new.source.display(),
                    dir.display()
                );
            }
        }
    }
    if new.dir.exists()
        && std::fs::read_dir(new.dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        anyhow::bail!(
            "{} already exists and is not empty; nothing was written",
            new.dir.display()
        );
    }
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let wasm = format!("{}.wasm", new.name.replace('-', "_"));
    let (files, plugin_source, build) = new.lang.parts();
    let interface = super::bindings::SUPPORTED
        .last()
        .expect("the host supports an interface version")
        .to_string();
    let fill = |text: &str| {
        text.replace("{{build}}", build)
            .replace("{{lang}}", new.lang.label())
            .replace("{{plugin_source}}", plugin_source)
            .replace("{{interface}}", &interface)
            .replace("{{name}}", new.name)
            .replace("{{model}}", new.model)
            .replace("{{wasm}}", &wasm)
            .replace("{{sdk}}", &absolute(&sdk).display().to_string())
            .replace("{{protocol}}", &absolute(&protocol).display().to_string())
    };
    let mut written = Vec::new();
    for f in COMMON.iter().chain(files) {
        let path = new.dir.join(f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, fill(f.text))
            .with_context(|| format!("cannot write {}", path.display()))?;
        if f.program {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        written.push(path);
    }
    // The versions the SDK is built and tested with (cargo drops what the
    // new crate does not use); without it the first build resolves afresh.
    let lock = new.source.join("plugins/Cargo.lock");
    if new.lang == Lang::Rust && lock.is_file() {
        let to = new.dir.join("Cargo.lock");
        std::fs::copy(&lock, &to).with_context(|| format!("cannot write {}", to.display()))?;
        written.push(to);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_crate_names() {
        assert!(check_name("acme-widget").is_ok());
        for bad in ["", "Acme", "1widget", "acme_widget", "a b", "../x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for lang in [Lang::Rust, Lang::Python] {
            let tmp = tempfile::tempdir().unwrap();
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let dir = tmp.path().join("acme-widget");
            let new = NewPlugin {
                name: "acme-widget",
                model: "W1",
                dir: &dir,
                source: &source,
                lang,
            };
            let files = create(&new).unwrap();
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap();
                assert!(!text.contains("{{"), "{} keeps a placeholder", f.display());
            }
            // A second time into the same folder changes nothing.
            let err = create(&new).unwrap_err();
            assert!(err.to_string().contains("not empty"), "{err}");
        }
    }

    /// A Python plugin is built against the newest released interface (the
    /// WIT copied into it is the last frozen one).
    #[test]
    fn python_plugins_get_the_newest_wit() {
        let newest = super::super::bindings::FROZEN.last().unwrap().0;
        let wit = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../wit")
            .join(newest);
        assert_eq!(std::fs::read_to_string(wit).unwrap(), PYTHON[1].text);
        assert_eq!(PYTHON[1].path, "wit/device.wit");
    }
}
