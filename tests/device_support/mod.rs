//! Helpers for the device-side tests: a CA with link credentials, the device
//! simulator as a real process, the plugins built from plugins/.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use certline::child::{Child, Stderr};

#[allow(unused_imports)] // each test file uses its own few
pub use crate::common::{certline, text, PASSPHRASE};

/// Runs `cmd` and insists on success, returning stdout.
#[track_caller]
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("cannot start certline");
    crate::common::succeeds(out, &[&certline::child::describe(cmd)])
}

#[allow(unused_imports)] // each test file uses its own few
pub use crate::common::{wasm, DUP_MODEL, HOSTILE, IMAGING, METER, MISBEHAVE};
pub const FUTURE_VERSION: &str = "certline_test_plugin_future_version";
pub const WRONG_WORLD: &str = "certline-test-plugin-wrong-world";
pub const SNEAKY: &str = "certline_test_plugin_sneaky";

/// A CA in a temporary folder with a device-link and a line credential.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        ok(certline().args(["ca", "init", "--dir"]).arg(pki.ca()));
        pki.enroll("device-link", "acme-boards", &pki.device_link());
        pki.enroll("line", "line-1", &pki.line());
        pki
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca(&self) -> PathBuf {
        self.path().join("ca")
    }

    pub fn device_link(&self) -> PathBuf {
        self.path().join("device-link.pem")
    }

    pub fn line(&self) -> PathBuf {
        self.path().join("line.pem")
    }

    pub fn enroll(&self, role: &str, name: &str, out: &Path) {
        ok(certline()
            .args(["ca", "enroll", "--role", role, "--name", name, "--dir"])
            .arg(self.ca())
            .arg("--out")
            .arg(out));
    }

    /// Issues packs for `ids`; returns the folder holding one folder per id.
    pub fn issue(&self, ids: &[&str]) -> PathBuf {
        let n = std::fs::read_dir(self.path()).unwrap().count();
        let list = self.path().join(format!("ids-{n}.txt"));
        std::fs::write(&list, ids.join("\n") + "\n").unwrap();
        let out = self.path().join(format!("packs-{n}"));
        ok(certline()
            .args(["ca", "issue", "--dir"])
            .arg(self.ca())
            .arg("--ids")
            .arg(&list)
            .arg("--out")
            .arg(&out));
        out
    }

    /// One pack for `id`.
    pub fn pack(&self, id: &str) -> PathBuf {
        self.issue(&[id]).join(id)
    }
}

/// A running `certline device-sim`, killed when dropped.
pub struct Sim {
    child: Child,
    /// The TCP address or pty path it printed.
    pub addr: String,
    pub dir: PathBuf,
    stderr: PathBuf,
}

impl Sim {
    /// Starts a simulator for `id` (MODEL-SERIAL) in `dir` on loopback TCP
    /// (`pty` false) or a pseudo-terminal, with extra flags (fault knobs).
    pub fn start(dir: &Path, id: &str, credential: &Path, pty: bool, extra: &[&str]) -> Sim {
        let cable = (!pty).then_some("127.0.0.1:0");
        Sim::start_on(dir, id, credential, cable, extra)
    }

    /// A simulator listening on `cable` (a TCP address), or on a new
    /// pseudo-terminal when `cable` is None.
    pub fn start_on(
        dir: &Path,
        id: &str,
        credential: &Path,
        cable: Option<&str>,
        extra: &[&str],
    ) -> Sim {
        let (model, serial) = id.split_once('-').unwrap();
        let stderr = dir.with_extension("stderr");
        let mut cmd = certline();
        cmd.args(["device-sim", "--model", model, "--serial", serial, "--dir"])
            .arg(dir)
            .arg("--credential")
            .arg(credential)
            .args(extra);
        match cable {
            Some(addr) => cmd.args(["--listen", addr]),
            None => cmd.arg("--pty"),
        };
        let child = Child::spawn(cmd)
            .stderr(Stderr::File(stderr.clone()))
            .first_line()
            .unwrap_or_else(|e| panic!("device-sim printed no address: {e:#}"));
        Sim {
            addr: child.url.clone(),
            child,
            dir: dir.to_path_buf(),
            stderr,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn flash(&self) -> PathBuf {
        self.dir.join("flash")
    }

    /// Waits for the simulator to exit by itself (after a pty link drop).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    pub fn flash_files(&self) -> Vec<String> {
        match std::fs::read_dir(self.flash()) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                names
            }
            Err(_) => Vec::new(),
        }
    }

    /// The flash holds nothing: no identity was written.
    #[track_caller]
    pub fn assert_blank(&self) {
        let files: Vec<String> = self
            .flash_files()
            .into_iter()
            .filter(|f| f.ends_with(".pem"))
            .collect();
        assert!(
            files.is_empty(),
            "flash of {} holds {files:?}",
            self.dir.display()
        );
    }

    /// The flash holds a chain that verifies to `root`, names `id` in its
    /// SAN, and whose device certificate has `fingerprint`.
    #[track_caller]
    pub fn assert_holds(&self, root: &Path, id: &str, fingerprint: &str) {
        let chain = self.flash().join("chain.pem");
        crate::common::assert_chain_verifies_for(&chain, root, id);
        let pem = std::fs::read_to_string(&chain).unwrap();
        let der = certline::pki::pem_blocks(&pem, "CERTIFICATE").unwrap();
        assert_eq!(certline::pki::fingerprint(&der[0]), fingerprint);
        assert_eq!(
            std::fs::read_to_string(self.flash().join("root.pem"))
                .unwrap()
                .trim(),
            std::fs::read_to_string(root).unwrap().trim()
        );
    }
}

/// `certline plugin try` with the line credential of `pki`.
pub fn plugin_try(pki: &Pki, plugin: &str, device: &str, pack: &Path, extra: &[&str]) -> Output {
    certline()
        .args(["plugin", "try", "--plugin"])
        .arg(wasm(plugin))
        .args(["--device", device, "--pack"])
        .arg(pack)
        .arg("--credential")
        .arg(pki.line())
        .args(extra)
        .output()
        .expect("cannot start certline")
}

/// Asserts a command failed and its stderr says each of `needles`.
#[track_caller]
pub fn assert_fails(out: &Output, needles: &[&str]) {
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success:\n{}",
        text(&out.stdout)
    );
    for n in needles {
        assert!(err.contains(n), "stderr does not say {n:?}:\n{err}");
    }
}

/// Every file of a folder with its bytes (empty if the folder does not exist).
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Nothing but the three flash files, no temporary leftovers, in a device dir.
#[track_caller]
pub fn assert_no_leftovers(device_dir: &Path) {
    for name in [".flash.new", ".flash.old"] {
        assert!(
            !device_dir.join(name).exists(),
            "{name} left behind in {}",
            device_dir.display()
        );
    }
}

/// Asserts the simulator's flash holds `pack` and that it verifies: chain to
/// the root with openssl, SAN naming `id`.
#[track_caller]
pub fn assert_flash_holds(flash: &Path, pack: &Path, id: &str) {
    for f in ["root.pem", "chain.pem", "key.pem"] {
        assert_eq!(
            std::fs::read(flash.join(f)).unwrap(),
            std::fs::read(pack.join(f)).unwrap(),
            "flash {f} differs from the pack"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(flash.join("key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "key.pem in flash must be owner-only");
    crate::common::assert_chain_verifies_for(&flash.join("chain.pem"), &flash.join("root.pem"), id);
}
