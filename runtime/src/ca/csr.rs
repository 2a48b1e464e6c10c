//! The CA's path for keys born in the device (`keygen = "device"`): a
//! station forwards a device's PKCS#10 request for one id; the CA checks the
//! request (`pki::csr`: size, DER, signature, key algorithm against the
//! model's profile) and issues through the same cycle as every pack
//! (`issuance.rs`: validate, reserve, sign, commit, publish; one valid
//! certificate per id, a second only as the replacement of the first).
//!
//! The certificate is built from the id by the device profile
//! (`pki::device_cert`), exactly as for a key the CA generates: the
//! request's subject, SANs and requested extensions are never read. Only
//! its public key is used. [`CertAuthority::issue_for_key`] is the one
//! issuance path for a key the device holds; `/v1/csr` is one front door
//! to it, EST's `simpleenroll` another.

use base64::Engine;

use super::issuance::{CaError, CaErrorKind, CertAuthority, Requester, Signed};
use crate::pki::csr::{self, CsrKey};
use crate::pki::profile::CertProfile;
use crate::pki::to_pem;
use crate::wire::ca::{codes, BatchItem, BatchRequest, CsrRequest, SignedCert};

fn bad_csr(message: impl Into<String>) -> CaError {
    CaError::refused(CaErrorKind::Invalid, codes::BAD_CSR, message)
}

impl CertAuthority {
    /// `POST /v1/csr`: verifies the request, then [`Self::issue_for_key`].
    pub fn sign_csr(
        &mut self,
        request: &CsrRequest,
        requester: &Requester,
    ) -> Result<SignedCert, CaError> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(request.csr.trim())
            .map_err(|e| bad_csr(format!("csr for {}: not base64: {e}", request.id)))?;
        let verified =
            csr::verify(&der).map_err(|e| bad_csr(format!("csr for {}: {e}", request.id)))?;
        self.issue_for_key(
            &request.id,
            request.replaces.as_deref(),
            request.profile.clone(),
            &verified.key,
            requester,
        )
    }

    /// Issues a certificate for `id` over a public key the device proved it
    /// holds: checks as a batch of one (id, `replaces`, profile), refuses a
    /// key of another algorithm than the profile's, then reserve → sign →
    /// commit → publish. `profile` overrides the CA's configured one for the
    /// id's model, as in a batch.
    pub fn issue_for_key(
        &mut self,
        id: &str,
        replaces: Option<&str>,
        profile: Option<CertProfile>,
        key: &CsrKey,
        requester: &Requester,
    ) -> Result<SignedCert, CaError> {
        let now = self.clock().now();
        let mut batch = BatchRequest {
            items: vec![BatchItem {
                id: id.to_string(),
                replaces: replaces.map(str::to_string),
            }],
            profiles: Default::default(),
        };
        if let (Some(profile), Some((model, _))) = (profile, id.split_once('-')) {
            batch.profiles.insert(model.to_string(), profile);
        }
        let items = self.validate(&batch, now)?;
        let (device, _, profile) = &items[0];
        if key.algorithm() != profile.key {
            return Err(bad_csr(format!(
                "csr for {device}: the key is {}, but model {}'s profile asks for {}",
                key.algorithm().name(),
                device.model(),
                profile.key.name()
            )));
        }
        let mut issued = self.issue_items(&items, requester, now, |pki, items, reservations| {
            let (id, _, profile) = &items[0];
            let serial = &reservations[0].serial;
            Ok(vec![Signed {
                serial: serial.clone(),
                id: id.to_string(),
                der: pki.sign_device(id, profile, serial, key, now)?,
                key: (),
            }])
        })?;
        let (signed, fingerprint) = issued.pop().ok_or_else(|| {
            CaError::Internal(anyhow::anyhow!("the cycle returned no certificate"))
        })?;
        tracing::info!(id = %signed.id, serial = %signed.serial.to_hex(), "signed a device-generated key");
        Ok(SignedCert {
            id: signed.id,
            serial: signed.serial.to_hex(),
            fingerprint,
            cert_pem: to_pem("CERTIFICATE", &signed.der),
            issuing_pem: self.pki().issuing_pem().to_string(),
            root_pem: self.pki().root_pem().to_string(),
        })
    }
}
