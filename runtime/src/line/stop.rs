//! A step of a scan that failed, in the operator's words: the status, a
//! stable code, what happened and what to do next, for a station that refuses
//! to hand out a pack and for a device write that fails.

use super::workflow::Status;
use crate::link;
use crate::pki::id::DeviceId;
use crate::plugin::{Fault, OpError};
use crate::service::client::ClientError;
use crate::wire::station::codes;

/// A step that failed, as the operator sees it.
pub(super) struct Stop {
    pub(super) status: Status,
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) next: String,
}

pub(super) fn stop(status: Status, code: &'static str, message: String, next: &str) -> Stop {
    Stop {
        status,
        code,
        message,
        next: next.to_string(),
    }
}

/// A refusal of the station in an operator's words.
pub(super) fn take_refusal(e: &ClientError, id: &DeviceId, url: &str) -> Stop {
    let model = id.model();
    let refused = |code, message: String, next: &str| stop(Status::Refused, code, message, next);
    match e {
        ClientError::Unreachable { reason, .. } => refused(
            "station_unreachable",
            format!("the station at {url} cannot be reached ({reason}); nothing was written"),
            "leave the device connected; scan it again when the station is back (tell the shift lead)",
        ),
        ClientError::Garbage { reason, .. } => refused(
            "station_error",
            format!("the station gave an answer the line cannot read ({reason}); nothing was written"),
            "scan the device again; if it repeats, call the station administrator",
        ),
        ClientError::Refused { code, message, .. } => match code.as_str() {
            codes::NOT_IN_PLAN => refused(
                "not_in_plan",
                format!("{id} is not in the production plan; nothing was written"),
                "check the plate; set the device aside and ask the shift lead",
            ),
            codes::NOT_PLANNED_TODAY => refused(
                "not_planned_today",
                format!("{id} is planned for another day, not today; nothing was written"),
                "set the device aside and ask the shift lead (the station administrator can authorise it)",
            ),
            codes::UNKNOWN_MODEL => refused(
                "unknown_model",
                format!("the station does not know model {model}; nothing was written"),
                "check the model code on the plate; if it is right, ask the station administrator to add the model",
            ),
            codes::NO_CERTIFICATE_MODEL => refused(
                "no_certificate_model",
                format!("model {model} is built without a certificate; nothing to write"),
                "take the device off and connect the next one",
            ),
            codes::NOT_IN_STOCK => refused(
                "not_in_stock",
                format!("the station has no certificate for {id} yet (not fetched); nothing was written"),
                "set the device aside and ask the station administrator to run today's fetch",
            ),
            codes::REPLACEMENT_PENDING => refused(
                "replacement_pending",
                format!("the fresh certificate for {id} is still on its way from the CA; nothing was written"),
                "wait a minute, then scan the device again",
            ),
            codes::ALREADY_WRITTEN => refused(
                "already_written",
                format!("{id} already has its certificate (written earlier); nothing was changed"),
                "take the device off and connect the next one; if it must be written again, ask the station administrator for a rework",
            ),
            codes::HANDED_OUT_ELSEWHERE => refused(
                "handed_out_elsewhere",
                format!("{id} is being written on another line; nothing was written"),
                "check the plate; if it is right, let the other line finish first",
            ),
            codes::DISCARDED => refused(
                "discarded",
                format!("the certificate for {id} was discarded by the station administrator; nothing was written"),
                "set the device aside and ask the station administrator",
            ),
            codes::QUARANTINED => refused(
                "quarantined",
                format!("the station's stored certificate for {id} is damaged and kept out of use; nothing was written"),
                "set the device aside and ask the station administrator",
            ),
            codes::CA_UNREACHABLE => refused(
                "ca_unreachable",
                format!("CA unreachable, retry: the station could not get {id}'s certificate signed ({message}); nothing was signed or written"),
                "leave the device connected and scan it again in a minute; if it repeats, tell the shift lead the CA is down",
            ),
            codes::BAD_CSR => refused(
                "bad_csr",
                format!("the device's key request for {id} was refused: {message}; nothing was signed or written"),
                "scan the device again (it generates a fresh key); if it repeats, set it aside for repair",
            ),
            codes::DEVICE_KEYGEN_MODEL | codes::CA_KEYGEN_MODEL => refused(
                "keygen_mismatch",
                format!("the station and this line disagree on where {model}'s keys are born: {message}; nothing was written"),
                "set the device aside and call the line engineer (factory.toml keygen for the model)",
            ),
            codes::WRONG_STATE => refused(
                "wrong_state",
                format!("the station has a result pending for {id} ({message}); nothing was written"),
                "wait a minute, then scan the device again",
            ),
            _ => refused(
                "station_refused",
                format!("the station refused {id}: {message} ({code}); nothing was written"),
                "set the device aside and call the station administrator",
            ),
        },
    }
}

/// A failed device operation in an operator's words.
pub(super) fn write_failure(e: &OpError, id: &DeviceId) -> Stop {
    let failed = |code, message: String, next: &str| stop(Status::Failed, code, message, next);
    let retry = "scan the device again to write a fresh certificate; if it fails again, set it aside for repair";
    match &e.fault {
        Fault::Link { failure, .. } => match failure {
            link::LinkFailure::Timeout => failed(
                "device_timeout",
                format!("the device stopped answering during the write ({e})"),
                "check the cable and the device, then scan it again to write a fresh certificate",
            ),
            _ => failed(
                "link_dropped",
                format!("the connection to the device dropped during the write ({e})"),
                "check the cable, then scan the device again to write a fresh certificate",
            ),
        },
        Fault::Device { reason, .. } => failed(
            "device_refused",
            format!("the device refused the write: {reason}"),
            retry,
        ),
        Fault::Protocol { detail, .. } => failed(
            "device_protocol",
            format!("the device answered something its plugin cannot understand: {detail}"),
            retry,
        ),
        Fault::WrongDevice { found, .. } => failed(
            "wrong_device",
            format!("the device on the cable says it is {found}, but the plate says {id}"),
            "connect the device whose plate you scanned, or scan the plate of the device on the cable",
        ),
        Fault::ReadBack { detail } => failed(
            "readback_mismatch",
            format!("the device did not keep the certificate correctly: {detail}"),
            retry,
        ),
        Fault::Possession { detail } => failed(
            "possession_failed",
            format!("the device could not prove it holds the new key: {detail}"),
            retry,
        ),
        Fault::Csr { detail } => stop(
            Status::Refused,
            "bad_csr",
            format!("the device's key request for {id} cannot be signed: {detail}; nothing was signed or written"),
            "scan the device again (it generates a fresh key); if it repeats, set it aside for repair",
        ),
        Fault::Trap { .. }
        | Fault::OutOfFuel { .. }
        | Fault::Deadline { .. }
        | Fault::Rule { .. }
        | Fault::Memory { .. }
        | Fault::Malformed { .. }
        | Fault::Host(_) => failed(
            "plugin_fault",
            format!("the device plugin failed: {e}"),
            &format!(
                "set the device aside and call the line engineer (the plugin for model {} needs fixing)",
                id.model()
            ),
        ),
    }
}
