//! What a serving station does besides answering requests: hand-out
//! timeouts and the CA queue every second (or when woken), the CA's CRL on
//! its schedule, the plan drop folder every 2 s, retention by age every
//! minute, the scheduled fetch when its time comes, and once after start the
//! clean-up of certificates an interrupted fetch left valid at the CA.
//!
//! Nothing here runs before the port opens, and a retention policy is asked
//! on a task of its own without the station held: a slow or stuck script
//! delays retention, never the lines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fetch::{blocking, CaLink};
use super::serve::ServeState;

/// Fetches the CA's CRL and takes it if it verifies; a revoked line the
/// station has seen loses the packs it holds at once. Bounded in time.
pub async fn refresh_crl(state: &ServeState, ca: &CaLink) {
    let fetched = tokio::time::timeout(Duration::from_secs(20), ca.crl()).await;
    let der = match fetched {
        Ok(Ok(der)) => der,
        Ok(Err(e)) => {
            tracing::warn!("cannot refresh the CA's CRL (keeping the last one): {e:#}");
            state.crl.failed(format!("{e:#}"));
            return;
        }
        Err(_) => {
            tracing::warn!("the CA did not answer for its CRL in 20 s (keeping the last one)");
            state.crl.failed("the CA did not answer within 20 s".into());
            return;
        }
    };
    let newly = match state.crl.offer(&der) {
        Ok(newly) => newly,
        Err(e) => {
            tracing::error!("the CA's CRL was refused: {e:#}");
            state.crl.failed(format!("{e:#}"));
            return;
        }
    };
    let lost: Vec<(String, String)> = {
        let seen = state.lines_seen.lock().unwrap_or_else(|p| p.into_inner());
        newly
            .iter()
            .filter_map(|serial| seen.get(serial).map(|name| (name.clone(), serial.clone())))
            .collect()
    };
    for (line, serial) in lost {
        let why = format!("the CA revoked the credential of line {line} (serial {serial})");
        match blocking(&state.shared, move |s| s.line_lost(&line, &why)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::warn!("{n} pack(s) held by a revoked line revoked and replaced");
                state.wake.notify_one();
            }
            Ok(Err(e)) | Err(e) => tracing::error!("revoking the packs of a lost line: {e:#}"),
        }
    }
}

/// One retention sweep: candidates read with the station held, the policy
/// asked without it, the decisions applied with it again.
async fn sweep_retention(state: &ServeState) -> anyhow::Result<usize> {
    let sweep = blocking(&state.shared, |s| s.retention_candidates()).await??;
    let decided = tokio::task::spawn_blocking(move || sweep.decide())
        .await
        .map_err(|e| anyhow::anyhow!("the retention policy failed: {e}"))?;
    blocking(&state.shared, move |s| s.apply_retention(decided)).await?
}

/// Starts a retention sweep on a task of its own, unless one still runs.
fn spawn_retention(state: &ServeState, running: &Arc<AtomicBool>) {
    if running.swap(true, Ordering::SeqCst) {
        tracing::warn!("the previous retention sweep still runs (a slow policy?); skipped");
        return;
    }
    let (state, running) = (state.clone(), running.clone());
    tokio::spawn(async move {
        match sweep_retention(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("retention: {n} pack(s) flagged or deleted"),
            Err(e) => tracing::error!("retention sweep failed: {e:#}"),
        }
        running.store(false, Ordering::SeqCst);
    });
}

/// Runs forever (see the module's opening comment).
pub async fn background(state: ServeState, ca: Arc<CaLink>) {
    let dir = state.dir.clone();
    let retention_running = Arc::new(AtomicBool::new(false));
    // Packs written but not yet retained (a crash, a policy error) are
    // looked at once at start, then every minute.
    spawn_retention(&state, &retention_running);
    let mut last_retention = Instant::now();
    let mut last_drop: Option<Instant> = None;
    let mut last_scheduled: Option<time::Date> = None;
    let mut scheduled_retry: Option<Instant> = None;
    let mut last_crl = Instant::now();
    let mut orphans_done = false;
    let mut orphans_retry: Option<Instant> = None;
    loop {
        tokio::select! {
            () = state.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match blocking(&state.shared, |s| s.sweep_timeouts()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::warn!("{n} hand-out(s) timed out; revoking and replacing"),
            Ok(Err(e)) | Err(e) => tracing::error!("timeout sweep failed: {e:#}"),
        }
        if !orphans_done && orphans_retry.is_none_or(|at| Instant::now() >= at) {
            match super::dir::lock_fetch(&dir) {
                Ok(_lock) => match super::fetch::revoke_orphans(&state.shared, &ca).await {
                    Ok(n) => {
                        orphans_done = true;
                        if n > 0 {
                            tracing::warn!(
                                "{n} certificate(s) an interrupted fetch left valid at the CA are being revoked"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!("orphan check at the CA failed (retried): {e:#}");
                        orphans_retry = Some(Instant::now() + Duration::from_secs(30));
                    }
                },
                Err(e) => {
                    tracing::info!("orphan check waits for the running fetch: {e:#}");
                    orphans_retry = Some(Instant::now() + Duration::from_secs(30));
                }
            }
        }
        match super::fetch::work_queue(&state.shared, &ca, false).await {
            Ok(run) if run.done > 0 || run.failed > 0 => tracing::info!(
                done = run.done,
                failed = run.failed,
                waiting = run.waiting,
                "CA queue"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!("CA queue failed: {e:#}"),
        }
        if last_drop.is_none_or(|at| at.elapsed() >= Duration::from_secs(2)) {
            last_drop = Some(Instant::now());
            let dir = dir.clone();
            match blocking(&state.shared, move |s| super::plan::drop_folder(s, &dir)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) | Err(e) => tracing::error!("plan drop folder: {e:#}"),
            }
        }
        if last_crl.elapsed() >= state.crl_refresh {
            last_crl = Instant::now();
            refresh_crl(&state, &ca).await;
        }
        if last_retention.elapsed() >= Duration::from_secs(60) {
            last_retention = Instant::now();
            spawn_retention(&state, &retention_running);
        }
        let due = blocking(&state.shared, |s| {
            let minute = s.config.fetch_minute()?;
            let offset = s.config.offset().ok()?;
            let now = time::OffsetDateTime::now_utc().to_offset(offset);
            let today = s.today();
            let at = u32::from(now.hour()) * 60 + u32::from(now.minute());
            (at >= minute).then(|| {
                (
                    today,
                    s.config.next_working_days(today, s.config.days_ahead),
                )
            })
        })
        .await
        .ok()
        .flatten();
        if let Some((today, days)) = due {
            if last_scheduled != Some(today)
                && scheduled_retry.is_none_or(|at| Instant::now() >= at)
            {
                last_scheduled = Some(today);
                match super::dir::lock_fetch(&dir) {
                    Ok(_lock) => {
                        let mut quiet = |_: usize, _: usize| {};
                        match super::fetch::fetch(&state.shared, &ca, &days, &mut quiet).await {
                            Ok(r) => {
                                tracing::warn!(fetched = r.fetched, days = ?r.days, "scheduled fetch done")
                            }
                            Err(e) => {
                                tracing::error!(
                                    "scheduled fetch failed (retried in 10 minutes): {e:#}"
                                );
                                // Try again later today, without holding up
                                // timeouts and the CA queue meanwhile.
                                last_scheduled = None;
                                scheduled_retry = Some(Instant::now() + Duration::from_secs(600));
                            }
                        }
                    }
                    Err(e) => tracing::warn!("scheduled fetch skipped: {e:#}"),
                }
            }
        }
    }
}
