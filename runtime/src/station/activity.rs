//! What the lines did that the stock does not keep: when each line was last
//! served and its newest refusals (in memory, since the station started).
//! The stock's own counts per line are in [`super::reports`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use crate::store::stock::{now_unix, unix_text};
use crate::wire::station::LineRefusal;

/// Refusals kept per line.
const KEPT: usize = 10;
/// Lines kept (a flood of made-up names cannot grow it further).
const MAX_LINES: usize = 1000;

#[derive(Debug, Default)]
struct Seen {
    last: i64,
    refusals: VecDeque<LineRefusal>,
}

/// Per line: last served, newest refusals.
#[derive(Debug, Default)]
pub struct LineLog {
    lines: Mutex<BTreeMap<String, Seen>>,
}

/// A copy of what the log holds for one line.
#[derive(Debug, Clone, Default)]
pub struct LineSeen {
    pub last: i64,
    /// Newest first.
    pub refusals: Vec<LineRefusal>,
}

impl LineLog {
    /// A request of `line` was served; `refusal` is (id, code, message) if it was refused.
    pub fn record(&self, line: &str, refusal: Option<(&str, &str, &str)>) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if !lines.contains_key(line) && lines.len() >= MAX_LINES {
            return;
        }
        let seen = lines.entry(line.to_string()).or_default();
        let now = now_unix();
        seen.last = now;
        if let Some((id, code, message)) = refusal {
            seen.refusals.push_front(LineRefusal {
                at: unix_text(now),
                id: crate::text::excerpt(id, 80),
                code: code.to_string(),
                message: message.to_string(),
            });
            seen.refusals.truncate(KEPT);
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, LineSeen> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .map(|(name, seen)| {
                (
                    name.clone(),
                    LineSeen {
                        last: seen.last,
                        refusals: seen.refusals.iter().cloned().collect(),
                    },
                )
            })
            .collect()
    }
}
