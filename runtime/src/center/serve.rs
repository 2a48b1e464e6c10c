//! The center's HTTPS API (see `wire::center`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::contracts::Contracts;
use super::crl::CrlState;
use super::decide::{decide, Policy};
use crate::service::server::{ApiError, JsonBody, Peer};
use crate::wire::center::{self as api, Decision, Health, Report, ReportReceipt, Verdict};

/// The contract list in force, and why the last reload was refused, if it was.
#[derive(Default)]
pub struct ContractBook {
    pub contracts: Contracts,
    pub error: Option<String>,
}

impl ContractBook {
    /// Loads the file; on error keeps the list in force and records why.
    pub fn reload(&mut self, path: &std::path::Path) {
        match Contracts::load(path) {
            Ok(contracts) => {
                tracing::info!(
                    contracts = contracts.len(),
                    "contract list loaded from {}",
                    path.display()
                );
                self.contracts = contracts;
                self.error = None;
            }
            Err(e) => {
                tracing::error!("contract list refused, keeping the previous one: {e:#}");
                self.error = Some(format!("{e:#}"));
            }
        }
    }
}

pub struct CenterState {
    pub root: Vec<u8>,
    pub crl: Arc<RwLock<CrlState>>,
    pub contracts: Arc<RwLock<ContractBook>>,
    pub policy: Policy,
    /// Append-only JSON lines: every decision and report, impersonations flagged.
    pub events: Mutex<std::fs::File>,
}

impl CenterState {
    pub fn open_events(path: &PathBuf) -> anyhow::Result<Mutex<std::fs::File>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open the event log {}: {e}", path.display()))?;
        Ok(Mutex::new(file))
    }

    fn decide(&self, peer: &Peer) -> Decision {
        let crl = self.crl.read().unwrap_or_else(|p| p.into_inner());
        let book = self.contracts.read().unwrap_or_else(|p| p.into_inner());
        decide(
            &peer.chain,
            &self.root,
            &crl,
            &book.contracts,
            &self.policy,
            time::OffsetDateTime::now_utc(),
        )
    }

    fn record(&self, event: &str, peer: &Peer, detail: serde_json::Value) {
        let line = serde_json::json!({
            "at": crate::store::db::now_text(),
            "event": event,
            "peer": peer.addr.to_string(),
            "detail": detail,
        });
        let mut file = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = writeln!(file, "{line}").and_then(|()| file.flush()) {
            tracing::error!("cannot write the event log: {e}");
        }
    }
}

pub fn router(state: Arc<CenterState>) -> Router {
    Router::new()
        .route(api::STATUS, get(status))
        .route(api::REPORT, post(report))
        .route(api::HEALTH, get(health))
        .with_state(state)
}

async fn status(
    State(state): State<Arc<CenterState>>,
    Extension(peer): Extension<Peer>,
) -> Json<Decision> {
    let decision = state.decide(&peer);
    tracing::info!(verdict = decision.verdict.name(), id = ?decision.id, "status");
    state.record(
        "status",
        &peer,
        serde_json::to_value(&decision).unwrap_or_default(),
    );
    Json(decision)
}

async fn report(
    State(state): State<Arc<CenterState>>,
    Extension(peer): Extension<Peer>,
    JsonBody(report): JsonBody<Report>,
) -> Result<Json<ReportReceipt>, ApiError> {
    let decision = state.decide(&peer);
    if decision.id.is_some() && decision.id.as_deref() != Some(report.id.as_str()) {
        let certified = decision.id.clone().unwrap_or_default();
        tracing::warn!(claimed = %report.id, certified = %certified, peer = %peer.addr, "impersonation attempt");
        state.record(
            "impersonation",
            &peer,
            serde_json::json!({"claimed": report.id, "certified": certified, "counter": report.counter}),
        );
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "impersonation",
            format!(
                "the report names {} but the device's certificate is for {certified}: refused and logged as an impersonation attempt",
                report.id
            ),
        ));
    }
    if !matches!(decision.verdict, Verdict::Contract | Verdict::NoContract) {
        state.record(
            "report_refused",
            &peer,
            serde_json::to_value(&decision).unwrap_or_default(),
        );
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            match decision.verdict {
                Verdict::Revoked => "revoked",
                Verdict::Unverifiable => "unverifiable",
                _ => "unknown",
            },
            format!("report refused: {}", decision.reason),
        ));
    }
    state.record(
        "report",
        &peer,
        serde_json::json!({"id": report.id, "counter": report.counter, "verdict": decision.verdict, "contract": decision.contract}),
    );
    Ok(Json(ReportReceipt {
        accepted: true,
        decision,
    }))
}

async fn health(State(state): State<Arc<CenterState>>) -> Json<Health> {
    let crl = state.crl.read().unwrap_or_else(|p| p.into_inner()).clone();
    let book = state.contracts.read().unwrap_or_else(|p| p.into_inner());
    Json(Health {
        status: "ok".into(),
        contracts: book.contracts.len(),
        contracts_error: book.error.clone(),
        crl_next_update: crl.next_update.map(crate::store::db::time_text),
        crl_error: crl.error,
    })
}
