//! `factory.toml`: the lines a factory runs and the model codes it builds,
//! with whether each carries an identity certificate, with which profile,
//! and where its keys are born (`keygen`).
//! Scripts see the models as `host.models`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pki::id::check_model;
use crate::pki::profile::{CertProfile, Keygen};

pub const FACTORY_FILE: &str = "factory.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactoryConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset: Option<String>,
    #[serde(default)]
    pub lines: BTreeMap<String, FactoryLine>,
    #[serde(default)]
    pub models: BTreeMap<String, FactoryModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactoryLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The line's script folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scripts: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactoryModel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default = "yes")]
    pub certificate: bool,
    #[serde(default)]
    pub profile: CertProfile,
    /// Where the device's key is born: `ca` (the default) or `device`
    /// (the line asks the device's plugin for a CSR).
    #[serde(default)]
    pub keygen: Keygen,
}

fn yes() -> bool {
    true
}

impl FactoryConfig {
    /// Reads and checks a factory file; errors name the file and the field.
    pub fn read(path: &Path) -> anyhow::Result<FactoryConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let config: FactoryConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for (model, m) in &config.models {
            check_model(model).map_err(|e| anyhow::anyhow!("{}: models: {e}", path.display()))?;
            m.profile
                .resolve()
                .map_err(|e| anyhow::anyhow!("{}: models.{model}.profile: {e}", path.display()))?;
        }
        Ok(config)
    }

    /// The models as scripts see them (`host.models`).
    pub fn models_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.models).unwrap_or(serde_json::Value::Null)
    }
}

/// `host.models` for a script folder: from its factory.toml, or empty.
pub fn folder_models(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let path = dir.join(FACTORY_FILE);
    if !path.exists() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    Ok(FactoryConfig::read(&path)?.models_json())
}
