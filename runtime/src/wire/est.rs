//! The CA's EST face (RFC 7030): paths, operations, media types and the
//! refusal codes that start every EST error body.
//!
//! `GET  /.well-known/est[/<label>]/cacerts`        certs-only CMS: the issuing CA and the root
//! `GET  /.well-known/est[/<label>]/csrattrs`       what a CSR must carry (the profile's key)
//! `POST /.well-known/est[/<label>]/simpleenroll`   a station (RA) enrolls a device's CSR
//! `POST /.well-known/est[/<label>]/simplereenroll` a device (or its station) renews its identity
//! `POST /.well-known/est[/<label>]/serverkeygen`   a station asks the CA to make the key too
//!
//! A label is a model code: under it, the model's profile answers `csrattrs`
//! and every CSR must name a device of that model. Bodies are base64 (RFC 7030
//! §4 and RFC 8951: whitespace ignored, `Content-Transfer-Encoding` not needed).
//! A refusal is `text/plain`: one line `<code>: <sentence>`, the code one of
//! [`codes`] or [`crate::wire::ca::codes`].

/// Where every EST path starts (RFC 7030 §3.2.2).
pub const WELL_KNOWN: &str = "/.well-known/est";

pub const CACERTS: &str = "cacerts";
pub const CSRATTRS: &str = "csrattrs";
pub const SIMPLEENROLL: &str = "simpleenroll";
pub const SIMPLEREENROLL: &str = "simplereenroll";
pub const SERVERKEYGEN: &str = "serverkeygen";

/// The media type of a request's CSR (RFC 7030 §4.2.1).
pub const PKCS10: &str = "application/pkcs10";
/// `cacerts` (RFC 7030 §4.1.3).
pub const PKCS7_MIME: &str = "application/pkcs7-mime";
/// An enrollment's answer (RFC 7030 §4.2.3) and the certificate part of serverkeygen's.
pub const PKCS7_CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";
/// The private key part of serverkeygen's answer (RFC 7030 §4.4.2).
pub const PKCS8: &str = "application/pkcs8";
/// `csrattrs` (RFC 7030 §4.5.2).
pub const CSRATTRS_TYPE: &str = "application/csrattrs";
/// serverkeygen's answer: `multipart/mixed; boundary=...` (RFC 7030 §4.4.2).
pub const MULTIPART_MIXED: &str = "multipart/mixed";

/// The largest request body the CA reads; a CSR is a few hundred bytes.
pub const MAX_BODY: usize = 1024 * 1024;

/// Seconds a client is asked to wait (`Retry-After`) when the CA could not
/// answer for a reason of its own (a disk, the signer): nothing was issued.
pub const RETRY_AFTER_SECONDS: u32 = 30;

/// Refusal codes only EST has (the CA's issuance refusals keep their
/// [`crate::wire::ca::codes`]).
pub mod codes {
    /// The request's Content-Type is not `application/pkcs10`.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// The body is larger than [`super::MAX_BODY`].
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    /// The body is not base64 (a CSR that is not DER, whose signature does
    /// not verify or whose key is not the profile's is the CA's
    /// [`crate::wire::ca::codes::BAD_CSR`]).
    pub const NOT_BASE64: &str = "not_base64";
    /// The CSR names no device id, or one not in the `<model>-<serial>` format.
    pub const BAD_ID: &str = "bad_id";
    /// A re-enrollment names another id than the client certificate's.
    pub const NOT_YOUR_ID: &str = "not_your_id";
    /// The client certificate is revoked or not this CA's current one for its id.
    pub const CERTIFICATE_REVOKED: &str = "certificate_revoked";
    /// No client certificate, and the operation is not public.
    pub const NO_CLIENT_CERTIFICATE: &str = "no_client_certificate";
    /// The path names no EST operation, or a label that is no model code.
    pub const NOT_FOUND: &str = "not_found";
}
