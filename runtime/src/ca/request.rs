//! The client side of the CA: `certline ca request` asks a running CA for the
//! packs of a list of ids and writes them as pack folders.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;

use crate::pki::id::DeviceId;
use crate::service::client::ServiceClient;
use crate::wire::ca::{self as api, BatchRequest, PackBatch, WrittenPack};

/// Reads an id list: one id a line; blank lines and `#` comments are skipped.
/// Errors name the file and line.
pub fn read_ids(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read id list {}", path.display()))?;
    let mut ids = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let id = line.trim();
        if id.is_empty() || id.starts_with('#') {
            continue;
        }
        DeviceId::parse(id).map_err(|e| anyhow::anyhow!("{}:{number}: {e}", path.display()))?;
        if let Some(first) = seen.insert(id.to_string(), number) {
            anyhow::bail!(
                "{}:{number}: device id {id} is listed twice (first on line {first})",
                path.display()
            );
        }
        ids.push(id.to_string());
    }
    if ids.is_empty() {
        anyhow::bail!("{} lists no device ids", path.display());
    }
    Ok(ids)
}

/// Writes every pack of a batch as `out/<id>/`.
pub fn write_batch(batch: &PackBatch, out: &Path) -> anyhow::Result<Vec<WrittenPack>> {
    batch
        .packs
        .iter()
        .map(|issued| {
            let dir = out.join(&issued.id);
            batch.pack(issued).write_dir(&dir)?;
            Ok(WrittenPack {
                id: issued.id.clone(),
                serial: issued.serial.clone(),
                fingerprint: issued.fingerprint.clone(),
                dir,
            })
        })
        .collect()
}

/// Refuses before asking anything if a pack folder would be overwritten.
pub fn check_out_dir(ids: &[String], out: &Path) -> anyhow::Result<()> {
    if let Some(id) = ids.iter().find(|id| out.join(id).exists()) {
        anyhow::bail!(
            "{} already exists; refusing to overwrite a pack (choose another --out)",
            out.join(id).display()
        );
    }
    Ok(())
}

/// Asks the CA in chunks (each all-or-nothing) and writes each chunk's packs
/// as soon as it arrives, reporting progress after every chunk.
pub async fn request_packs(
    client: &ServiceClient,
    ids: &[String],
    out: &Path,
    chunk: usize,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<Vec<WrittenPack>> {
    check_out_dir(ids, out)?;
    let mut written = Vec::with_capacity(ids.len());
    for part in ids.chunks(chunk.max(1)) {
        let request = BatchRequest::for_ids(part);
        let batch: PackBatch = client.post(api::PACKS, &request).await.map_err(|e| {
            anyhow::anyhow!(
                "{e} ({} of {} packs were written before this)",
                written.len(),
                ids.len()
            )
        })?;
        written.extend(write_batch(&batch, out)?);
        progress(written.len(), ids.len());
    }
    Ok(written)
}
