//! `certline plugin new`: a device plugin crate for a new model, from the
//! templates in `runtime/templates/plugin/` (embedded in the binary): the
//! plugin (a line-based protocol on the SDK), its device stub for
//! `device-sim --exec`, and a script that builds and tries both. What it
//! makes passes `plugin check` and `plugin try` without edits.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// One template file: where it goes in the new crate, its text, and whether
/// it is a program (mode 0755).
struct File {
    path: &'static str,
    text: &'static str,
    program: bool,
}

const RUST: [File; 5] = [
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
        path: "device.py",
        text: include_str!("../../templates/plugin/rust/device.py"),
        program: true,
    },
    File {
        path: "try.sh",
        text: include_str!("../../templates/plugin/rust/try.sh"),
        program: true,
    },
    File {
        path: "README.md",
        text: include_str!("../../templates/plugin/rust/README.md"),
        program: false,
    },
];

/// What `plugin new` was asked for.
pub struct NewPlugin<'a> {
    pub name: &'a str,
    pub model: &'a str,
    /// Where the crate goes (must not exist, or be empty).
    pub dir: &'a Path,
    /// A certline source tree: the crate depends on its plugins/sdk and
    /// plugins/protocol by path.
    pub source: &'a Path,
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
    for (what, dir) in [("the SDK", &sdk), ("the protocol crate", &protocol)] {
        if !dir.join("Cargo.toml").is_file() {
            anyhow::bail!(
                "{} has no {what} ({} is missing); name a certline source tree with --source",
                new.source.display(),
                dir.display()
            );
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
    let fill = |text: &str| {
        text.replace("{{name}}", new.name)
            .replace("{{model}}", new.model)
            .replace("{{wasm}}", &wasm)
            .replace("{{sdk}}", &absolute(&sdk).display().to_string())
            .replace("{{protocol}}", &absolute(&protocol).display().to_string())
    };
    let mut written = Vec::new();
    for f in &RUST {
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
    if lock.is_file() {
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
        let tmp = tempfile::tempdir().unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = tmp.path().join("acme-widget");
        let files = create(&NewPlugin {
            name: "acme-widget",
            model: "W1",
            dir: &dir,
            source: &source,
        })
        .unwrap();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(!text.contains("{{"), "{} keeps a placeholder", f.display());
        }
        // A second time into the same folder changes nothing.
        let err = create(&NewPlugin {
            name: "acme-widget",
            model: "W1",
            dir: &dir,
            source: &source,
        })
        .unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
    }
}
