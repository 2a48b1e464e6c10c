//! The CA's EST front door (RFC 7030), beside the JSON API on the same
//! mutual-TLS listener: framing (base64 bodies, media types, status codes,
//! `Retry-After`, the 1 MiB bound, a `text/plain` body naming what was wrong)
//! and who may call what. Every certificate it hands out is made by the same
//! issuance code as the JSON API's (`issuance.rs`: same profile code, same
//! ledger, same audit log, one valid certificate per id); the CSR is checked
//! by the one PKCS#10 verifier, [`crate::pki::csr`]. What is EST's own here is
//! reading the device id out of a CSR's subject or SAN.
//!
//! Who may call what:
//! - `cacerts`, `csrattrs`: any client certificate of this CA; no certificate
//!   at all only when `[est] public = true` in `ca.toml`.
//! - `simpleenroll`, `serverkeygen`: a station credential (the RA case).
//! - `simplereenroll`: a device presenting its current identity certificate
//!   (a new certificate for the same id; the old one revoked, superseded), or
//!   the station that asked for the id's valid certificate (it replaces it).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine;
use tokio::sync::OnceCell;
use x509_cert::der::asn1::{Any, ObjectIdentifier, SetOfVec};
use x509_cert::der::{Decode, Encode};

use super::config::CaConfig;
use super::issuance::{CaError, CaErrorKind, CertAuthority, Requester};
use super::serve::CaState;
use crate::pki::csr;
use crate::pki::id::{check_model, DeviceId};
use crate::pki::identity::device_identity;
use crate::pki::profile::KeyAlgorithm;
use crate::pki::role::Role;
use crate::service::server::{ApiError, Peer};
use crate::wire::ca::{codes as ca_codes, BatchItem, BatchRequest, IssuedPack};
use crate::wire::est::{self as wire, codes};

/// An EST refusal: a status, a stable code and a sentence, sent as
/// `text/plain` (`<code>: <sentence>`), with `Retry-After` when the fault was
/// the CA's and a later try may succeed.
#[derive(Debug)]
pub struct EstError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: bool,
    allow: Option<&'static str>,
}

impl EstError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> EstError {
        EstError {
            status,
            code,
            message: message.into(),
            retry_after: false,
            allow: None,
        }
    }

    fn bad_csr(message: impl Into<String>) -> EstError {
        EstError::new(StatusCode::BAD_REQUEST, ca_codes::BAD_CSR, message)
    }

    fn bad_id(message: impl Into<String>) -> EstError {
        EstError::new(StatusCode::BAD_REQUEST, codes::BAD_ID, message)
    }

    fn forbidden(code: &'static str, message: impl Into<String>) -> EstError {
        EstError::new(StatusCode::FORBIDDEN, code, message)
    }
}

impl From<ApiError> for EstError {
    /// The JSON API's refusals keep their status and code; a failure of the CA
    /// itself becomes 503 with `Retry-After` (RFC 7030 §4.2.3): nothing was issued.
    fn from(err: ApiError) -> EstError {
        if err.status == StatusCode::INTERNAL_SERVER_ERROR {
            return EstError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: err.code,
                message: format!("{}; nothing was issued, try again later", err.message),
                retry_after: true,
                allow: None,
            };
        }
        EstError::new(err.status, err.code, err.message)
    }
}

impl From<CaError> for EstError {
    fn from(err: CaError) -> EstError {
        let status = match err.kind() {
            CaErrorKind::Invalid => StatusCode::BAD_REQUEST,
            CaErrorKind::Conflict => StatusCode::CONFLICT,
            CaErrorKind::NotFound => StatusCode::NOT_FOUND,
            CaErrorKind::Forbidden => StatusCode::FORBIDDEN,
            CaErrorKind::Internal => {
                return EstError::from(match err {
                    CaError::Internal(err) => ApiError::internal(err),
                    refused => ApiError::internal(anyhow::anyhow!("{refused}")),
                })
            }
        };
        EstError::new(status, err.code(), err.to_string())
    }
}

impl IntoResponse for EstError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}: {}\n", self.code, self.message),
        )
            .into_response();
        if self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(wire::RETRY_AFTER_SECONDS),
            );
        }
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 7235: a 401 names how to authenticate; here, a TLS client certificate.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Mutual realm=\"certline EST\""),
            );
        }
        response
    }
}

/// What EST reads often and never changes while the CA runs: its
/// configuration and the certs-only CMS of its CA certificates.
struct Fixed {
    config: CaConfig,
    /// Base64 (wrapped) certs-only CMS: the issuing CA and the root.
    cacerts: String,
}

#[derive(Clone)]
pub struct EstState {
    ca: CaState,
    fixed: Arc<OnceCell<Fixed>>,
}

impl EstState {
    async fn fixed(&self) -> Result<&Fixed, EstError> {
        self.fixed
            .get_or_try_init(|| async {
                self.ca
                    .with_ca(|ca, _| {
                        let pki = ca.pki();
                        let cacerts = certs_only(&[pki.issuing_der(), pki.root_der()])
                            .map_err(CaError::Internal)?;
                        Ok(Fixed {
                            config: ca.config().clone(),
                            cacerts: base64_lines(&cacerts, "\n"),
                        })
                    })
                    .await
                    .map_err(EstError::from)
            })
            .await
    }
}

/// The EST routes, to merge into the CA's router.
pub fn router(ca: CaState) -> Router {
    let state = EstState {
        ca,
        fixed: Arc::new(OnceCell::new()),
    };
    Router::new()
        .route(&format!("{}/{{op}}", wire::WELL_KNOWN), any(unlabelled))
        .route(
            &format!("{}/{{label}}/{{op}}", wire::WELL_KNOWN),
            any(labelled),
        )
        .with_state(state)
}

async fn unlabelled(
    State(state): State<EstState>,
    Extension(peer): Extension<Peer>,
    Path(op): Path<String>,
    request: Request,
) -> Response {
    answer(state, peer, None, op, request).await
}

async fn labelled(
    State(state): State<EstState>,
    Extension(peer): Extension<Peer>,
    Path((label, op)): Path<(String, String)>,
    request: Request,
) -> Response {
    answer(state, peer, Some(label), op, request).await
}

async fn answer(
    state: EstState,
    peer: Peer,
    label: Option<String>,
    op: String,
    request: Request,
) -> Response {
    match operation(&state, &peer, label.as_deref(), &op, request).await {
        Ok(response) => response,
        Err(err) => {
            tracing::info!(peer = %peer.addr, op, code = err.code, "EST refused: {}", err.message);
            err.into_response()
        }
    }
}

async fn operation(
    state: &EstState,
    peer: &Peer,
    label: Option<&str>,
    op: &str,
    request: Request,
) -> Result<Response, EstError> {
    if let Some(label) = label {
        check_model(label).map_err(|e| {
            EstError::new(
                StatusCode::NOT_FOUND,
                codes::NOT_FOUND,
                format!("no EST label {label:?} here: a label is a model code ({e})"),
            )
        })?;
    }
    let allow = match op {
        wire::CACERTS | wire::CSRATTRS => "GET",
        wire::SIMPLEENROLL | wire::SIMPLEREENROLL | wire::SERVERKEYGEN => "POST",
        "fullcmc" => {
            return Err(EstError::new(
                StatusCode::NOT_IMPLEMENTED,
                codes::NOT_FOUND,
                "this CA does not implement fullcmc (RFC 7030 §4.3, optional)",
            ))
        }
        other => {
            return Err(EstError::new(
                StatusCode::NOT_FOUND,
                codes::NOT_FOUND,
                format!(
                    "no EST operation {other:?}; this CA serves cacerts, csrattrs, simpleenroll, simplereenroll and serverkeygen"
                ),
            ))
        }
    };
    let method = request.method().clone();
    if method.as_str() != allow {
        let mut err = EstError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ca_codes::BAD_REQUEST,
            format!("{op} takes {allow}, not {method}"),
        );
        err.allow = Some(allow);
        return Err(err);
    }
    let fixed = state.fixed().await?;
    if method == Method::GET {
        may_read(peer, &fixed.config, op)?;
        return match op {
            wire::CACERTS => Ok(base64_body(wire::PKCS7_MIME, fixed.cacerts.clone())),
            _ => csrattrs(&fixed.config, label),
        };
    }
    // Who may ask before what they sent is read.
    let requester = match op {
        wire::SIMPLEREENROLL => reenroller(&state.ca, peer).await?,
        _ => EnrollAs::Station(state.ca.station(peer).await?),
    };
    let (parts, body) = request.into_parts();
    let der = csr_body(&parts.headers, body).await?;
    let csr = EstCsr::read(&der, &fixed.config, label)?;
    match op {
        wire::SIMPLEENROLL => enroll(state, requester, csr, false).await,
        wire::SIMPLEREENROLL => enroll(state, requester, csr, true).await,
        _ => serverkeygen(state, requester, csr).await,
    }
}

/// `cacerts` and `csrattrs` answer any client certificate of this CA, and a
/// client without one only when the operator made them public.
fn may_read(peer: &Peer, config: &CaConfig, op: &str) -> Result<(), EstError> {
    if config.est.public || peer.serial.is_some() {
        return Ok(());
    }
    Err(EstError::new(
        StatusCode::UNAUTHORIZED,
        codes::NO_CLIENT_CERTIFICATE,
        format!(
            "no client certificate; {op} on this CA is not public (the operator may set `[est] public = true` in ca.toml)"
        ),
    ))
}

/// Who a POST comes from.
enum EnrollAs {
    Station(Requester),
    /// A device by its current identity: the id and the certificate's serial (hex).
    Device {
        id: DeviceId,
        serial: String,
    },
}

/// `simplereenroll` takes a station credential or a device identity certificate.
async fn reenroller(ca: &CaState, peer: &Peer) -> Result<EnrollAs, EstError> {
    let how = "simplereenroll takes the device's current identity certificate (or the credential of the station that asked for it)";
    match (&peer.role, peer.chain.first()) {
        (Some((Role::Station, _)), _) => Ok(EnrollAs::Station(ca.station(peer).await?)),
        (Some((role, name)), _) => Err(EstError::forbidden(
            ca_codes::FORBIDDEN,
            format!("a {role} credential ({name}) may not re-enroll; {how}"),
        )),
        (None, None) => Err(EstError::new(
            StatusCode::UNAUTHORIZED,
            codes::NO_CLIENT_CERTIFICATE,
            format!("no client certificate; {how}"),
        )),
        (None, Some(leaf)) => {
            let identity = device_identity(leaf).map_err(|e| {
                EstError::forbidden(
                    ca_codes::FORBIDDEN,
                    format!("the client certificate is neither a service credential nor a device identity ({e:#}); {how}"),
                )
            })?;
            Ok(EnrollAs::Device {
                id: identity.id,
                serial: identity.serial_hex,
            })
        }
    }
}

/// Reads a request body that must be a base64 PKCS#10: the media type, the
/// size bound, then base64 (RFC 8951: whitespace ignored).
async fn csr_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, EstError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if media.as_deref() != Some(wire::PKCS10) {
        return Err(EstError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            codes::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "the request's Content-Type is {}; EST takes a CSR as {} (base64 DER)",
                media
                    .map(|m| format!("{m:?}"))
                    .unwrap_or_else(|| "missing".into()),
                wire::PKCS10
            ),
        ));
    }
    let too_large = || {
        EstError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::BODY_TOO_LARGE,
            format!(
                "the request body is larger than {} bytes; a CSR is a few hundred",
                wire::MAX_BODY
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > wire::MAX_BODY as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, wire::MAX_BODY)
        .await
        .map_err(|_| too_large())?;
    let text: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if text.is_empty() {
        return Err(EstError::bad_csr(
            "the request body is empty; send the CSR as base64 DER",
        ));
    }
    let not_base64 =
        |message: String| EstError::new(StatusCode::BAD_REQUEST, codes::NOT_BASE64, message);
    if text.starts_with(b"-----") {
        return Err(not_base64(
            "the body is PEM; EST takes the CSR as base64 DER without the -----BEGIN/END----- lines".into(),
        ));
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(&text)
        .map_err(|e| not_base64(format!("the body is not base64: {e}")))
}

/// A CSR that parsed, whose signature verified, and the device id it names.
struct EstCsr {
    id: DeviceId,
    /// The key it proved possession of: all a certificate takes from it.
    key: csr::CsrKey,
}

impl EstCsr {
    /// Parses and verifies (the one PKCS#10 verifier) and reads the id: from
    /// the subject (`CN=<model>-<serial>`, or `CN=<model>` with
    /// `serialNumber=<serial>`; a serialNumber must agree) or from a SAN URI
    /// `urn:dev:ops:<PEN>-<model>-<serial>` under this CA's PEN; when both
    /// name one, they must name the same. Under a label, the id's model must
    /// be the label.
    fn read(der: &[u8], config: &CaConfig, label: Option<&str>) -> Result<EstCsr, EstError> {
        let verified = csr::verify(der).map_err(|e| EstError::bad_csr(e.to_string()))?;
        let request = &verified.request;
        let from_subject = id_from_subject(&request.info.subject)?;
        let from_san = id_from_san(&request.info.attributes, config.pen)?;
        let id = match (from_subject, from_san) {
            (Some(a), Some(b)) if a != b => {
                return Err(EstError::bad_id(format!(
                    "the CSR's subject names device {a} but its SAN names {b}"
                )))
            }
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => {
                return Err(EstError::bad_id(format!(
                    "the CSR names no device id: give its subject CN=<model>-<serial> and serialNumber=<serial>, or a SAN URI urn:dev:ops:{}-<model>-<serial>",
                    config.pen
                )))
            }
        };
        if let Some(label) = label {
            if id.model() != label {
                return Err(EstError::bad_id(format!(
                    "this EST label serves model {label}; the CSR names device {id}"
                )));
            }
        }
        Ok(EstCsr {
            id,
            key: verified.key,
        })
    }
}

fn text_value(value: &Any) -> Option<String> {
    use x509_cert::der::{Tag, Tagged};
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString => {
            String::from_utf8(value.value().to_vec()).ok()
        }
        _ => None,
    }
}

const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_SERIAL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");
const OID_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");

fn id_from_subject(subject: &x509_cert::name::Name) -> Result<Option<DeviceId>, EstError> {
    let mut cn = None;
    let mut serial = None;
    for atv in subject.0.iter().flat_map(|rdn| rdn.0.iter()) {
        let slot = if atv.oid == OID_CN {
            &mut cn
        } else if atv.oid == OID_SERIAL_NUMBER {
            &mut serial
        } else {
            continue;
        };
        let text = text_value(&atv.value).ok_or_else(|| {
            EstError::bad_id("the CSR's subject CN or serialNumber is not a string")
        })?;
        if slot.replace(text).is_some() {
            return Err(EstError::bad_id(
                "the CSR's subject has two CNs or two serialNumbers",
            ));
        }
    }
    let id = match (cn, serial) {
        (None, None) => return Ok(None),
        (None, Some(serial)) => {
            return Err(EstError::bad_id(format!(
                "the CSR's subject has serialNumber={serial:?} but no CN naming the device (CN=<model>-<serial>)"
            )))
        }
        (Some(cn), serial) if cn.contains('-') => {
            let id = DeviceId::parse(&cn)
                .map_err(|e| EstError::bad_id(format!("the CSR's subject CN: {e}")))?;
            if let Some(serial) = serial {
                if serial != id.serial() {
                    return Err(EstError::bad_id(format!(
                        "the CSR's subject serialNumber {serial:?} is not the serial of its CN {cn:?}"
                    )));
                }
            }
            id
        }
        (Some(cn), Some(serial)) => DeviceId::new(&cn, &serial)
            .map_err(|e| EstError::bad_id(format!("the CSR's subject CN and serialNumber: {e}")))?,
        (Some(cn), None) => {
            return Err(EstError::bad_id(format!(
                "the CSR's subject CN {cn:?} is not a device id (expected <model>-<serial>, e.g. 3012-123456)"
            )))
        }
    };
    Ok(Some(id))
}

fn id_from_san(
    attributes: &x509_cert::attr::Attributes,
    pen: u32,
) -> Result<Option<DeviceId>, EstError> {
    use x509_cert::der::oid::AssociatedOid;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::request::ExtensionReq;
    let bad = |what: String| EstError::bad_csr(format!("the CSR's extension request: {what}"));
    let mut found = None;
    for attribute in attributes.iter().filter(|a| a.oid == ExtensionReq::OID) {
        for value in attribute.values.iter() {
            let extensions: ExtensionReq = value
                .decode_as()
                .map_err(|e| bad(format!("not a list of extensions: {e}")))?;
            for extension in extensions.0.iter().filter(|e| e.extn_id == OID_SAN) {
                let san = SubjectAltName::from_der(extension.extn_value.as_bytes())
                    .map_err(|e| bad(format!("subjectAltName is malformed: {e}")))?;
                for name in san.0 {
                    let GeneralName::UniformResourceIdentifier(uri) = name else {
                        continue;
                    };
                    let Some(rest) = uri.as_str().strip_prefix("urn:dev:ops:") else {
                        continue;
                    };
                    let (their_pen, id) = rest.split_once('-').ok_or_else(|| {
                        EstError::bad_id(format!(
                            "the CSR's SAN URI {uri} is not urn:dev:ops:<PEN>-<model>-<serial>"
                        ))
                    })?;
                    if their_pen != pen.to_string() {
                        return Err(EstError::bad_id(format!(
                            "the CSR's SAN URI {uri} is under enterprise number {their_pen}; this CA issues under {pen}"
                        )));
                    }
                    let id = DeviceId::parse(id)
                        .map_err(|e| EstError::bad_id(format!("the CSR's SAN URI {uri}: {e}")))?;
                    if found.as_ref().is_some_and(|f| f != &id) {
                        return Err(EstError::bad_id(
                            "the CSR's SAN names two different devices",
                        ));
                    }
                    found = Some(id);
                }
            }
        }
    }
    Ok(found)
}

/// `simpleenroll` (a station's CSR for a new id) and `simplereenroll` (a new
/// certificate for an id that has one, replacing it).
async fn enroll(
    state: &EstState,
    who: EnrollAs,
    csr: EstCsr,
    reenroll: bool,
) -> Result<Response, EstError> {
    let issued = state
        .ca
        .with_ca(move |ca, _| {
            let (requester, replaces) = match who {
                EnrollAs::Station(requester) if !reenroll => (requester, None),
                EnrollAs::Station(requester) => {
                    let live = ca.ledger().live_device_cert(&csr.id.to_string())?;
                    let Some(live) = live else {
                        return Err(refused(
                            CaErrorKind::NotFound,
                            ca_codes::NO_VALID_CERTIFICATE,
                            format!(
                                "device {} has no valid certificate to re-enroll; use simpleenroll",
                                csr.id
                            ),
                        ));
                    };
                    (requester, Some(live.serial))
                }
                EnrollAs::Device { id, serial } => {
                    device_may_reenroll(ca, &id, &serial, &csr.id)?;
                    (Requester::Device(id.to_string()), Some(serial))
                }
            };
            issue_csr(ca, &csr, replaces, &requester)
        })
        .await?;
    let cms = certs_only(&[&issued]).map_err(|e| EstError::from(ApiError::internal(e)))?;
    Ok(base64_body(
        wire::PKCS7_CERTS_ONLY,
        base64_lines(&cms, "\n"),
    ))
}

fn refused(kind: CaErrorKind, code: &'static str, message: String) -> CaError {
    CaError::Refused {
        kind,
        code,
        message,
    }
}

/// A device re-enrolls only its own id, with the certificate that is its
/// valid one in the ledger. Each refusal is in the audit log.
fn device_may_reenroll(
    ca: &mut CertAuthority,
    id: &DeviceId,
    serial: &str,
    asked: &DeviceId,
) -> Result<(), CaError> {
    let requester = Requester::Device(id.to_string());
    let record = ca.ledger().by_serial(serial)?;
    let refusal = match record {
        None => Some((
            ca_codes::UNKNOWN_SERIAL,
            CaErrorKind::Forbidden,
            format!("the client certificate (serial {serial}) is not in this CA's ledger"),
        )),
        Some(record) if record.status == crate::wire::ca::CertStatus::Revoked => Some((
            codes::CERTIFICATE_REVOKED,
            CaErrorKind::Forbidden,
            format!(
                "the client certificate of {id} (serial {serial}) is revoked ({}); a revoked identity cannot re-enroll",
                record.reason.unwrap_or_default()
            ),
        )),
        Some(record) if record.subject != id.to_string() => Some((
            ca_codes::FORBIDDEN,
            CaErrorKind::Forbidden,
            format!(
                "the client certificate (serial {serial}) was issued to {}, not to {id}",
                record.subject
            ),
        )),
        Some(_) if asked != id => Some((
            codes::NOT_YOUR_ID,
            CaErrorKind::Forbidden,
            format!("device {id} may re-enroll only itself; the CSR names {asked}"),
        )),
        Some(_) => None,
    };
    let Some((code, kind, message)) = refusal else {
        return Ok(());
    };
    ca.record_refusal(
        &requester,
        "est-reenroll-refused",
        &serde_json::json!({
            "client_id": id.to_string(),
            "client_serial": serial,
            "csr_id": asked.to_string(),
            "code": code,
        }),
    )?;
    Err(refused(kind, code, message))
}

/// The CSR path of issuance, the JSON API's `/v1/csr` own
/// ([`CertAuthority::issue_for_key`]): the certificate is built from the id
/// by the profile code (which also refuses a key of another algorithm than
/// the profile's); the CSR gives only its key.
fn issue_csr(
    ca: &mut CertAuthority,
    csr: &EstCsr,
    replaces: Option<String>,
    requester: &Requester,
) -> Result<Vec<u8>, CaError> {
    let signed = ca.issue_for_key(
        &csr.id.to_string(),
        replaces.as_deref(),
        None,
        &csr.key,
        requester,
    )?;
    crate::pki::pem_blocks(&signed.cert_pem, "CERTIFICATE")
        .ok()
        .and_then(|mut certs| certs.pop())
        .ok_or_else(|| CaError::Internal(anyhow::anyhow!("the issued certificate is unreadable")))
}

/// `serverkeygen`: the CA makes the key (the JSON API's own path), for a
/// station only; the answer is the key (PKCS#8) and the certificate.
async fn serverkeygen(state: &EstState, who: EnrollAs, csr: EstCsr) -> Result<Response, EstError> {
    let EnrollAs::Station(requester) = who else {
        return Err(EstError::forbidden(
            ca_codes::FORBIDDEN,
            "serverkeygen takes a station credential",
        ));
    };
    let request = BatchRequest {
        items: vec![BatchItem {
            id: csr.id.to_string(),
            replaces: None,
        }],
        profiles: Default::default(),
    };
    let mut batch = state
        .ca
        .with_ca(move |ca, _| ca.issue_batch(&request, &requester, 1))
        .await?;
    let issued = batch
        .packs
        .pop()
        .ok_or_else(|| EstError::from(ApiError::internal(anyhow::anyhow!("no pack issued"))))?;
    let cert = cert_der(&issued)?;
    let key = crate::pki::pem_blocks(&issued.key_pem, "PRIVATE KEY")
        .ok()
        .and_then(|mut keys| keys.pop())
        .map(zeroize::Zeroizing::new)
        .ok_or_else(|| {
            EstError::from(ApiError::internal(anyhow::anyhow!(
                "the issued key is unreadable"
            )))
        })?;
    let cms = certs_only(&[&cert]).map_err(|e| EstError::from(ApiError::internal(e)))?;
    let boundary = format!(
        "est-{}",
        hex::encode(crate::pki::serial::Serial::random().as_bytes())
    );
    let mut body = String::new();
    for (media, data) in [
        (wire::PKCS8, key.as_slice()),
        (wire::PKCS7_CERTS_ONLY, &cms),
    ] {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Type: {media}\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            base64_lines(data, "\r\n")
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    let body = zeroize::Zeroizing::new(body);
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            format!("{}; boundary={boundary}", wire::MULTIPART_MIXED),
        )],
        body.as_str().to_owned(),
    )
        .into_response())
}

fn cert_der(issued: &IssuedPack) -> Result<Vec<u8>, EstError> {
    crate::pki::pem_blocks(&issued.cert_pem, "CERTIFICATE")
        .ok()
        .and_then(|mut certs| certs.pop())
        .ok_or_else(|| {
            EstError::from(ApiError::internal(anyhow::anyhow!(
                "the issued certificate is unreadable"
            )))
        })
}

/// `csrattrs` (RFC 7030 §4.5.2): the key algorithm of the profile (the
/// label's model, or the default profile) and the signature algorithm to use,
/// and that the subject carries serialNumber.
fn csrattrs(config: &CaConfig, label: Option<&str>) -> Result<Response, EstError> {
    let profile = match label {
        Some(model) => config.profile(model),
        None => &config.default_profile,
    };
    let der = csr_attributes(profile.key).map_err(|e| EstError::from(ApiError::internal(e)))?;
    Ok(base64_body(wire::CSRATTRS_TYPE, base64_lines(&der, "\n")))
}

/// `CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID` for a key algorithm:
/// the public key type as an attribute (RFC 7030 §4.5.2; for EC with the
/// curve as its value), the signature algorithm and serialNumber as OIDs.
pub fn csr_attributes(key: KeyAlgorithm) -> anyhow::Result<Vec<u8>> {
    let ec_public_key = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    let (key_type, signature) = match key {
        KeyAlgorithm::P256 => (
            Some(ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7")),
            ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
        ),
        KeyAlgorithm::P384 => (
            Some(ObjectIdentifier::new_unwrap("1.3.132.0.34")),
            ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3"),
        ),
        KeyAlgorithm::Ed25519 => (None, ObjectIdentifier::new_unwrap("1.3.101.112")),
    };
    let mut items: Vec<Any> = Vec::new();
    if let Some(curve) = key_type {
        let mut values = SetOfVec::new();
        values.insert(Any::encode_from(&curve)?)?;
        let attribute = x509_cert::attr::Attribute {
            oid: ec_public_key,
            values,
        };
        items.push(Any::encode_from(&attribute)?);
    }
    items.push(Any::encode_from(&signature)?);
    items.push(Any::encode_from(&OID_SERIAL_NUMBER)?);
    Ok(items.to_der()?)
}

/// A certs-only CMS SignedData (RFC 5652 degenerate case) holding `certs`.
pub fn certs_only(certs: &[&[u8]]) -> anyhow::Result<Vec<u8>> {
    let parsed = certs
        .iter()
        .map(|der| x509_cert::Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(cms::content_info::ContentInfo::try_from(parsed)?.to_der()?)
}

/// Base64 in lines of 64 characters (what `openssl base64 -d` reads).
fn base64_lines(data: &[u8], newline: &str) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    lines.join(newline)
}

fn base64_body(media: &'static str, text: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, media),
            (
                header::HeaderName::from_static("content-transfer-encoding"),
                "base64",
            ),
        ],
        text + "\n",
    )
        .into_response()
}
