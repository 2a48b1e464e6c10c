//! The WIT bindings, one module per released interface version, and the
//! dispatch from a loaded plugin to the right one (the pattern of Zed's
//! extension host).
//!
//! `wit/since_vX.Y.Z/` holds what `certline:device@X.Y.Z` means, frozen the
//! day it was released; [`FROZEN`] pins each file's SHA-256, so an edit to a
//! released version fails the tests. The next version is written in
//! `wit/device.wit`. Releasing it means: copy `wit/device.wit` into
//! `wit/since_vX.Y.Z/`, pin its hash in [`FROZEN`], add a `since_vX_Y_Z` module
//! bound from it (it becomes the newest: its `Host` traits are the ones
//! [`HostState`] implements; turn the older modules' impls into conversions
//! that forward to it), add a [`Bindings`] variant, and list the version in
//! [`SUPPORTED`].

pub mod since_v0_1_0;
pub mod since_v0_2_0;

use wasmtime::component::Resource;

pub use super::sandbox::{HostState, LinkHandle};

/// The interface versions this host can run, oldest first; the last is the one
/// whose `Host` traits the host implements directly.
pub const SUPPORTED: &[Version] = &[
    Version {
        major: 0,
        minor: 1,
        patch: 0,
    },
    Version {
        major: 0,
        minor: 2,
        patch: 0,
    },
];

/// The first version whose plugins can have a device generate its key
/// (`generate-key`, a pack without a key).
pub const DEVICE_KEYGEN: Version = Version {
    major: 0,
    minor: 2,
    patch: 0,
};

/// The WIT package and the interface a plugin must export.
pub const PACKAGE: &str = "certline:device";
pub const EXPORT: &str = "certline:device/device";

/// Each released interface version's WIT file (under `wit/`) and the
/// SHA-256 of its bytes. A released version never changes.
pub const FROZEN: &[(&str, &str)] = &[
    (
        "since_v0.1.0/device.wit",
        "488ebaf97e9899797899b3e2d957af5502f8772da56e8f66551a491b5a5af857",
    ),
    (
        "since_v0.2.0/device.wit",
        "b02c485791f133f6f8f3f95c46852b6db9e5566a49b3e07813cd1cc37cfff63a",
    ),
];

/// The newest interface: the one [`HostState`] implements.
pub use since_v0_2_0 as latest;

pub use latest::certline::device::host::LinkError;
pub use latest::exports::certline::device::device::{
    Error as PluginError, Identity, KeyAlgorithm, KeyRequest, Pack, PluginInfo,
};

/// A pre-instantiated plugin, by interface version.
#[derive(Clone)]
pub enum Bindings {
    V0_1(since_v0_1_0::PluginPre<HostState>),
    V0_2(since_v0_2_0::PluginPre<HostState>),
}

/// An instance of a plugin, by interface version; its calls take and return the
/// latest types.
pub enum Instance {
    V0_1(since_v0_1_0::Plugin),
    V0_2(since_v0_2_0::Plugin),
}

impl Bindings {
    /// Bindings of `version` (one of [`SUPPORTED`]) for a pre-instantiated component.
    pub fn new(
        version: Version,
        pre: wasmtime::component::InstancePre<HostState>,
    ) -> wasmtime::Result<Bindings> {
        match (version.major, version.minor) {
            (0, 1) => Ok(Bindings::V0_1(since_v0_1_0::PluginPre::new(pre)?)),
            (0, 2) => Ok(Bindings::V0_2(since_v0_2_0::PluginPre::new(pre)?)),
            _ => wasmtime::bail!("no bindings for {PACKAGE}@{version}"),
        }
    }

    pub fn instantiate(
        &self,
        store: &mut wasmtime::Store<HostState>,
    ) -> wasmtime::Result<Instance> {
        match self {
            Bindings::V0_1(pre) => Ok(Instance::V0_1(pre.instantiate(store)?)),
            Bindings::V0_2(pre) => Ok(Instance::V0_2(pre.instantiate(store)?)),
        }
    }
}

impl Instance {
    pub fn info(&self, store: &mut wasmtime::Store<HostState>) -> wasmtime::Result<PluginInfo> {
        match self {
            Instance::V0_1(p) => Ok(p.certline_device_device().call_info(store)?.into()),
            Instance::V0_2(p) => p.certline_device_device().call_info(store),
        }
    }

    pub fn read_identity(
        &self,
        store: &mut wasmtime::Store<HostState>,
        link: Resource<LinkHandle>,
    ) -> wasmtime::Result<Result<Identity, PluginError>> {
        match self {
            Instance::V0_1(p) => Ok(p
                .certline_device_device()
                .call_read_identity(store, link)?
                .map(Into::into)
                .map_err(Into::into)),
            Instance::V0_2(p) => p.certline_device_device().call_read_identity(store, link),
        }
    }

    pub fn write_pack(
        &self,
        store: &mut wasmtime::Store<HostState>,
        link: Resource<LinkHandle>,
        pack: &Pack,
    ) -> wasmtime::Result<Result<(), PluginError>> {
        match self {
            Instance::V0_1(p) => Ok(p
                .certline_device_device()
                .call_write_pack(store, link, &since_v0_1_0::pack(pack)?)?
                .map_err(Into::into)),
            Instance::V0_2(p) => p
                .certline_device_device()
                .call_write_pack(store, link, pack),
        }
    }

    pub fn prove_possession(
        &self,
        store: &mut wasmtime::Store<HostState>,
        link: Resource<LinkHandle>,
        challenge: &[u8],
    ) -> wasmtime::Result<Result<Vec<u8>, PluginError>> {
        match self {
            Instance::V0_1(p) => Ok(p
                .certline_device_device()
                .call_prove_possession(store, link, challenge)?
                .map_err(Into::into)),
            Instance::V0_2(p) => p
                .certline_device_device()
                .call_prove_possession(store, link, challenge),
        }
    }

    /// Since 0.2.0: the device generates a key and answers a CSR (DER).
    pub fn generate_key(
        &self,
        store: &mut wasmtime::Store<HostState>,
        link: Resource<LinkHandle>,
        request: &KeyRequest,
    ) -> wasmtime::Result<Result<Vec<u8>, PluginError>> {
        match self {
            Instance::V0_1(_) => wasmtime::bail!(
                "a {PACKAGE}@0.1.0 plugin cannot have a device generate its key (that needs {PACKAGE}@{DEVICE_KEYGEN})"
            ),
            Instance::V0_2(p) => p
                .certline_device_device()
                .call_generate_key(store, link, request),
        }
    }
}

/// Adds the latest host implementation and a locked-down WASI to a linker.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<HostState>) -> wasmtime::Result<()> {
    // Rust's wasm32-wasip2 std imports WASI even if the plugin never uses it; the
    // context behind it grants nothing (see `HostState::new`).
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    since_v0_1_0::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<HostState>>(
        linker,
        |s| s,
    )?;
    since_v0_2_0::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<HostState>>(linker, |s| s)
}

/// A semantic version, as in `certline:device@0.1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version {
            major: parts.next()??,
            minor: parts.next()??,
            patch: parts.next()??,
        };
        parts.next().is_none().then_some(v)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Whether a plugin built against `found` can run here, and with which bindings
/// (the newest supported version of the same major whose minor is not older).
pub fn check_version(found: Version) -> Result<Version, String> {
    let newest = *SUPPORTED.last().expect("at least one supported version");
    let same_major: Vec<&Version> = SUPPORTED
        .iter()
        .filter(|v| v.major == found.major)
        .collect();
    let Some(newest_of_major) = same_major.last() else {
        return Err(format!(
            "the plugin was built against {PACKAGE}@{found}, another major version than this host's {PACKAGE}@{newest}; rebuild it against {PACKAGE}@{newest}"
        ));
    };
    if found.minor > newest_of_major.minor {
        return Err(format!(
            "the plugin was built against {PACKAGE}@{found}, newer than this host's {PACKAGE}@{newest_of_major}; update certline or rebuild the plugin against {PACKAGE}@{newest_of_major}"
        ));
    }
    same_major
        .iter()
        .find(|v| v.minor == found.minor)
        .map(|v| **v)
        .ok_or_else(|| {
            format!("the plugin was built against {PACKAGE}@{found}, which this host no longer supports (it supports {PACKAGE}@{newest})")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = |s| Version::parse(s).unwrap();
        assert_eq!(check_version(v("0.1.0")).unwrap(), v("0.1.0"));
        assert_eq!(check_version(v("0.1.7")).unwrap(), v("0.1.0"));
        assert_eq!(check_version(v("0.2.0")).unwrap(), v("0.2.0"));
        let newer = check_version(v("0.3.0")).unwrap_err();
        assert!(
            newer.contains("certline:device@0.3.0") && newer.contains("certline:device@0.2.0"),
            "{newer}"
        );
        let major = check_version(v("1.0.0")).unwrap_err();
        assert!(
            major.contains("another major version") && major.contains("@1.0.0"),
            "{major}"
        );
        assert!(Version::parse("0.1").is_none());
        assert!(Version::parse("0.1.0.0").is_none());
    }

    fn wit_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit")
    }

    /// The package version a WIT file declares (`package certline:device@X;`).
    fn declared(text: &str) -> Version {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("package certline:device@"))
            .expect("a package certline:device@… line");
        Version::parse(line.trim_end_matches(';')).expect("a semantic version")
    }

    /// A released interface version is frozen: its file's bytes hash to the
    /// pinned value, and every folder under `wit/since_v*` is pinned. If this
    /// fails, put the released file back (`git checkout wit/since_v…`) and
    /// write the change in `wit/device.wit` as the next version.
    #[test]
    fn released_wit_versions_are_frozen() {
        for (file, pinned) in FROZEN {
            let bytes = std::fs::read(wit_dir().join(file)).unwrap();
            assert_eq!(
                crate::pki::fingerprint(&bytes),
                *pinned,
                "wit/{file} changed, but a released interface version never changes"
            );
            let folder = file.split('/').next().unwrap();
            let version = folder.strip_prefix("since_v").unwrap();
            assert_eq!(
                declared(std::str::from_utf8(&bytes).unwrap()).to_string(),
                version,
                "wit/{file} declares another version than its folder"
            );
        }
        let mut folders: Vec<String> = std::fs::read_dir(wit_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("since_v"))
            .collect();
        folders.sort();
        let pinned: Vec<String> = FROZEN
            .iter()
            .map(|(f, _)| f.split('/').next().unwrap().to_string())
            .collect();
        assert_eq!(
            folders, pinned,
            "every released version is pinned in FROZEN"
        );
        // The host binds every supported version from its frozen folder.
        for v in SUPPORTED {
            assert!(
                pinned.contains(&format!("since_v{v}")),
                "supported version {v} has no frozen WIT"
            );
        }
    }

    /// `wit/device.wit` is where the next version is written: it is either
    /// still the newest released version, byte for byte, or declares a
    /// version newer than every released one (never an edited old one).
    #[test]
    fn the_working_wit_is_the_newest_release_or_a_newer_version() {
        let working = std::fs::read(wit_dir().join("device.wit")).unwrap();
        let (newest_file, _) = FROZEN.last().unwrap();
        let newest = std::fs::read(wit_dir().join(newest_file)).unwrap();
        if working == newest {
            return;
        }
        let next = declared(std::str::from_utf8(&working).unwrap());
        let released = declared(std::str::from_utf8(&newest).unwrap());
        assert!(
            next > released,
            "wit/device.wit differs from the released {PACKAGE}@{released} but still says {PACKAGE}@{next}: a change is a new version"
        );
    }
}
