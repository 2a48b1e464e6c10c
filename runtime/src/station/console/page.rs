//! The console's pages as HTML, from the station's typed reports. Every text
//! that comes from outside (ids, names, messages, audit details) is escaped;
//! no page carries inline script or inline style (the CSP forbids both).

use super::chart;
use crate::wire::station::{
    AuditPage, AuditPageQuery, CrlHealth, DeviceReport, DiscardReport, LinesReport, ModelStock,
    ProgressReport, QueueReport, ReworkReport, StockReport,
};

/// Text as HTML (element content and quoted attribute values).
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Text as one query parameter's value.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

const PAGES: [(&str, &str); 6] = [
    ("Today", "/console/today"),
    ("Lines", "/console/lines"),
    ("Devices", "/console/devices"),
    ("Actions", "/console/actions"),
    ("Audit", "/console/audit"),
    ("Users", "/console/users"),
];

fn document(title: &str, header: &str, main: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · certline station</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
         <script src=\"/console/assets/console.js\" defer></script></head>\
         <body>{header}<main>{main}</main></body></html>\n",
        title = esc(title)
    )
}

/// A page of a logged-in administrator: navigation, who is in, logout.
pub fn layout(title: &str, user: &str, csrf: &str, body: &str) -> String {
    let nav: String = PAGES
        .iter()
        .map(|(name, href)| {
            let here = if title.starts_with(name)
                || (title.starts_with("Confirm") && *name == "Actions")
            {
                " class=\"here\""
            } else {
                ""
            };
            format!("<a href=\"{href}\"{here}>{name}</a>")
        })
        .collect();
    let header = format!(
        "<header><span class=\"brand\">certline station</span><nav>{nav}</nav>\
         <span class=\"who\">{user}</span>\
         <form method=\"post\" action=\"/console/logout\">{csrf}\
         <button class=\"plain\" type=\"submit\">Log out</button></form></header>",
        user = esc(user),
        csrf = csrf_field(csrf),
    );
    document(title, &header, &format!("<h1>{}</h1>{body}", esc(title)))
}

fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// A refusal on its own page (no session needed to read it).
pub fn refused(message: &str) -> String {
    document(
        "Refused",
        "<header><span class=\"brand\">certline station</span></header>",
        &format!(
            "<h1>Refused</h1><p class=\"outcome bad\" id=\"refusal\">{}</p>\
             <p><a href=\"/console/today\">Back to the console</a></p>",
            esc(message)
        ),
    )
}

pub fn login(message: Option<&str>, csrf: &str) -> String {
    let message = message
        .map(|m| format!("<p class=\"outcome bad\" id=\"login-error\">{}</p>", esc(m)))
        .unwrap_or_default();
    document(
        "Log in",
        "<header><span class=\"brand\">certline station</span></header>",
        &format!(
            "<div class=\"login card\"><h1>Log in</h1>{message}\
             <form class=\"stack\" method=\"post\" action=\"/console/login\">{csrf}\
             <label>User<input name=\"user\" autocomplete=\"username\" required data-focus></label>\
             <label>Password<input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button type=\"submit\">Log in</button></form></div>",
            csrf = csrf_field(csrf)
        ),
    )
}

/// What an action did, shown above the actions.
pub struct Outcome {
    pub ok: bool,
    pub text: String,
}

impl Outcome {
    pub fn ok(text: impl Into<String>) -> Outcome {
        Outcome {
            ok: true,
            text: text.into(),
        }
    }

    pub fn failed(text: impl Into<String>) -> Outcome {
        Outcome {
            ok: false,
            text: text.into(),
        }
    }

    pub fn discarded(report: &DiscardReport) -> Outcome {
        Outcome::ok(format!(
            "Discarded {} leftover pack(s) of model {}; {} revocation(s) go to the CA.",
            report.discarded.len(),
            report.model,
            report.revocations_queued
        ))
    }

    pub fn reworked(report: &ReworkReport) -> Outcome {
        Outcome::ok(format!(
            "{}: certificate {} is revoked; its fresh pack is {}.",
            report.id, report.revoked_serial, report.replacement
        ))
    }

    fn html(&self) -> String {
        format!(
            "<p class=\"outcome {}\" id=\"outcome\">{}</p>",
            if self.ok { "ok" } else { "bad" },
            esc(&self.text)
        )
    }
}

// ---- Today ----

/// Everything Today shows.
pub struct Today {
    pub stock: StockReport,
    pub progress: ProgressReport,
    pub queue: QueueReport,
    pub crl: CrlHealth,
}

/// One column of the stock table: the field's name in `admin stock --json`,
/// its heading, its value.
pub type StockColumn = (&'static str, &'static str, fn(&ModelStock) -> usize);

/// The columns of the stock table.
pub const STOCK_COLUMNS: [StockColumn; 10] = [
    ("planned_today", "Planned today", |m| m.planned_today),
    ("in_stock", "In stock", |m| m.in_stock),
    ("handed_out", "Handed out", |m| m.handed_out),
    ("used_today", "Used today", |m| m.used_today),
    ("failed_today", "Failed today", |m| m.failed_today),
    ("replaced_today", "Replaced today", |m| m.replaced_today),
    ("quarantined", "Quarantined", |m| m.quarantined),
    ("discarded", "Discarded", |m| m.discarded),
    ("waiting_for_ca", "Waiting for the CA", |m| m.waiting_for_ca),
    (
        "signed_today",
        "Signed today (keys born in the device)",
        |m| m.signed_today,
    ),
];

fn stock_table(stock: &StockReport) -> String {
    let columns = &STOCK_COLUMNS;
    let heads: String = columns
        .iter()
        .map(|(_, head, _)| format!("<th class=\"n\">{head}</th>"))
        .collect();
    let rows: String = stock
        .models
        .iter()
        .map(|m| {
            let cells: String = columns
                .iter()
                .map(|(field, _, value)| {
                    format!("<td class=\"n\" data-field=\"{field}\">{}</td>", value(m))
                })
                .collect();
            format!(
                "<tr data-model=\"{model}\"><td>{model}</td>\
                 <td data-field=\"certificate\" data-value=\"{c}\">{cert}</td>\
                 <td data-field=\"keygen\" data-value=\"{keygen}\">{keygen}</td>{cells}</tr>",
                model = esc(&m.model),
                keygen = m.keygen.name(),
                c = m.certificate,
                cert = if m.certificate { "yes" } else { "no" },
            )
        })
        .collect();
    format!(
        "<table id=\"stock\" data-day=\"{day}\"><thead><tr><th>Model</th><th>Certificate</th><th>Keys born in</th>{heads}</tr></thead>\
         <tbody>{rows}</tbody></table>",
        day = esc(&stock.day)
    )
}

fn queue_table(queue: &QueueReport) -> String {
    if queue.items.is_empty() {
        return "<p class=\"ok\" id=\"queue-empty\">Nothing waits for the CA.</p>".into();
    }
    let rows: String = queue
        .items
        .iter()
        .map(|q| {
            format!(
                "<tr><td>{kind}</td><td><a href=\"/console/devices?id={qid}\">{id}</a></td>\
                 <td class=\"mono\">{serial}</td><td>{reason}</td><td>{at}</td><td class=\"n\">{attempts}</td>\
                 <td class=\"detail\">{error}</td></tr>",
                kind = q.kind,
                qid = query_value(&q.id),
                id = esc(&q.id),
                serial = esc(&q.serial),
                reason = esc(&q.reason),
                at = esc(&q.queued_at),
                attempts = q.attempts,
                error = esc(q.last_error.as_deref().unwrap_or("")),
            )
        })
        .collect();
    format!(
        "<table id=\"queue\"><thead><tr><th>Work</th><th>Device</th><th>Serial</th><th>Reason</th>\
         <th>Queued</th><th class=\"n\">Attempts</th><th>Last error</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

/// The part of Today that refreshes itself.
pub fn today_live(t: &Today) -> String {
    let crl = if t.crl.fresh {
        format!(
            "<span class=\"ok\">fresh</span> (next update {})",
            esc(t.crl.next_update.as_deref().unwrap_or("?"))
        )
    } else {
        format!(
            "<span class=\"bad\">none fresh: lines are refused</span> {}",
            esc(t.crl.error.as_deref().unwrap_or(""))
        )
    };
    format!(
        "<p class=\"muted\">Station day <strong id=\"day\">{day}</strong> · CA's CRL: {crl}</p>\
         <h2>Stock per model</h2>{stock}\
         <h2>Progress today</h2><div class=\"cards\">\
         <div class=\"card\" id=\"chart-models\">{models}</div>\
         <div class=\"card\" id=\"chart-lines\">{lines}</div></div>\
         <h2>Waiting for the CA (<span id=\"waiting\">{waiting}</span>)</h2>{queue}",
        day = esc(&t.stock.day),
        stock = stock_table(&t.stock),
        models = chart::progress(
            "Devices written today per model (dashed: the plan)",
            &t.progress.models,
            t.progress.hours,
            t.progress.hour_now
        ),
        lines = chart::progress(
            "Devices written today per line",
            &t.progress.lines,
            t.progress.hours,
            t.progress.hour_now
        ),
        waiting = t.stock.waiting_for_ca,
        queue = queue_table(&t.queue),
    )
}

pub fn today(t: &Today) -> String {
    format!(
        "<div id=\"live\" data-live=\"/console/today/live\" data-every=\"5000\">{}</div>",
        today_live(t)
    )
}

// ---- Lines ----

pub fn lines(report: &LinesReport) -> String {
    if report.lines.is_empty() {
        return format!(
            "<p id=\"no-lines\">No line has talked to the station on {} yet.</p>",
            esc(&report.day)
        );
    }
    let mut out = String::new();
    for l in &report.lines {
        let refusals: String = l
            .refusals
            .iter()
            .map(|r| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"detail\">{}</td></tr>",
                    esc(&r.at),
                    esc(&r.id),
                    esc(&r.code),
                    esc(&r.message)
                )
            })
            .collect();
        let failures: String = l
            .failures
            .iter()
            .map(|f| {
                format!(
                    "<tr><td>{}</td><td><a href=\"/console/devices?id={}\">{}</a></td><td class=\"mono\">{}</td><td class=\"detail\">{}</td></tr>",
                    esc(&f.at),
                    query_value(&f.id),
                    esc(&f.id),
                    esc(&f.serial),
                    esc(&f.reason)
                )
            })
            .collect();
        out.push_str(&format!(
            "<div class=\"card line\" data-line=\"{name}\"><h2>{name}</h2>\
             <p>Last seen {seen} · taken <strong data-field=\"taken_today\">{taken}</strong> · \
             written <strong data-field=\"written_today\">{written}</strong> · \
             failed <strong data-field=\"failed_today\">{failed}</strong> · \
             holding <strong data-field=\"holding\">{holding}</strong></p>{refusals}{failures}</div>",
            name = esc(&l.line),
            seen = esc(l.last_seen.as_deref().unwrap_or("not since the station started")),
            taken = l.taken_today,
            written = l.written_today,
            failed = l.failed_today,
            holding = l.holding,
            refusals = if refusals.is_empty() {
                "<p class=\"muted\">No refusals since the station started.</p>".into()
            } else {
                format!("<h3>Last refusals</h3><table class=\"refusals\"><tr><th>At</th><th>Scanned</th><th>Code</th><th>Message</th></tr>{refusals}</table>")
            },
            failures = if failures.is_empty() {
                "<p class=\"muted\">No failed writes today.</p>".into()
            } else {
                format!("<h3>Last failures</h3><table class=\"failures\"><tr><th>At</th><th>Device</th><th>Serial</th><th>Reason</th></tr>{failures}</table>")
            },
        ));
    }
    out
}

// ---- Devices ----

pub fn devices(id: Option<&str>, found: Option<&Result<DeviceReport, String>>) -> String {
    let search = format!(
        "<form class=\"inline\" method=\"get\" action=\"/console/devices\">\
         <label>Device id (type or scan)<input name=\"id\" value=\"{}\" placeholder=\"MODEL-SERIAL\" \
         autocomplete=\"off\" data-focus></label><button type=\"submit\">Look up</button></form>",
        esc(id.unwrap_or(""))
    );
    let result = match found {
        None => String::new(),
        Some(Err(message)) => format!(
            "<p class=\"outcome bad\" id=\"outcome\">{}</p>",
            esc(message)
        ),
        Some(Ok(d)) => device(d),
    };
    format!("{search}{result}")
}

fn device(d: &DeviceReport) -> String {
    let written = d
        .packs
        .iter()
        .any(|p| p.state.is_live() && p.state.is_written());
    let plan = match &d.plan {
        Some(p) => format!(
            "Planned for {} (model {}, {} row {}){}{}",
            esc(&p.day),
            esc(&p.model),
            esc(&p.source),
            p.row,
            if p.discarded { " · discarded" } else { "" },
            if p.rework {
                " · rework authorised"
            } else {
                ""
            },
        ),
        None => "In no plan".into(),
    };
    let packs: String = d
        .packs
        .iter()
        .map(|p| {
            format!(
                "<tr data-state=\"{state}\"><td class=\"mono\">{serial}</td><td>{state}</td><td>{stocked}</td>\
                 <td>{line}</td><td>{taken}</td><td>{written}</td><td>{ended}</td><td class=\"detail\">{reason}</td>\
                 <td>{key}</td></tr>",
                serial = esc(&p.serial),
                state = p.state,
                stocked = esc(&p.stocked_at),
                line = esc(p.line.as_deref().unwrap_or("")),
                taken = esc(p.taken_at.as_deref().unwrap_or("")),
                written = esc(p.written_at.as_deref().unwrap_or("")),
                ended = esc(p.ended_at.as_deref().unwrap_or("")),
                reason = esc(p.end_reason.as_deref().unwrap_or("")),
                key = if p.key_held { "held" } else { "gone" },
            )
        })
        .collect();
    let waiting = if d.waiting_for_ca.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"bad\">Waiting for the CA: {}</p>",
            d.waiting_for_ca
                .iter()
                .map(|q| format!("{} of {}", q.kind, esc(&q.serial)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "<div class=\"card\" id=\"device\" data-id=\"{id}\" data-written=\"{written}\"><h2>{id}</h2>\
         <p>{plan}</p><p>Certificate written into the device: <strong>{w}</strong></p>{waiting}\
         <table id=\"packs\"><thead><tr><th>Serial</th><th>State</th><th>Stocked</th><th>Line</th><th>Taken</th>\
         <th>Written</th><th>Ended</th><th>Why</th><th>Key</th></tr></thead><tbody>{packs}</tbody></table></div>",
        id = esc(&d.id),
        w = if written { "yes" } else { "no" },
    )
}

// ---- Actions ----

pub fn actions(
    stock: &StockReport,
    queue: &QueueReport,
    csrf: &str,
    outcome: Option<&Outcome>,
) -> String {
    let options: String = stock
        .models
        .iter()
        .filter(|m| m.in_stock > 0)
        .map(|m| {
            format!(
                "<option value=\"{model}\">{model} ({n} in stock)</option>",
                model = esc(&m.model),
                n = m.in_stock
            )
        })
        .collect();
    let discard = if options.is_empty() {
        "<p class=\"muted\">No model has leftovers in stock.</p>".to_string()
    } else {
        format!(
            "<form class=\"inline\" id=\"discard\" method=\"post\" action=\"/console/actions/discard\">{csrf}\
             <label>Model<select name=\"model\">{options}</select></label>\
             <button class=\"danger\" type=\"submit\">Discard the leftovers…</button></form>",
            csrf = csrf_field(csrf)
        )
    };
    format!(
        "{outcome}<div class=\"card\"><h2>Discard the leftovers of a model</h2>\
         <p class=\"muted\">Every stocked pack of the model is discarded and its certificate revoked at the CA \
         (a model out of production). You confirm on the next page.</p>{discard}</div>\
         <div class=\"card\"><h2>Rework a device</h2>\
         <p class=\"muted\">The written certificate is revoked; a fresh pack is fetched for the device.</p>\
         <form class=\"inline\" id=\"rework\" method=\"post\" action=\"/console/actions/rework\">{csrf}\
         <label>Device id<input name=\"id\" required placeholder=\"MODEL-SERIAL\" autocomplete=\"off\"></label>\
         <label>Reason<input name=\"reason\" required placeholder=\"board replaced\"></label>\
         <button type=\"submit\">Rework</button></form></div>\
         <div class=\"card\"><h2>The CA queue</h2><p>{waiting} item(s) wait for the CA.</p>\
         <form id=\"retry\" method=\"post\" action=\"/console/actions/retry\">{csrf}\
         <button type=\"submit\">Retry now</button></form></div>",
        outcome = outcome.map(Outcome::html).unwrap_or_default(),
        csrf = csrf_field(csrf),
        waiting = queue.items.len(),
    )
}

pub fn confirm_discard(model: &str, count: usize, csrf: &str, note: Option<&str>) -> String {
    format!(
        "{note}<div class=\"card\"><p id=\"confirm-text\">This discards <strong id=\"confirm-count\">{count}</strong> \
         leftover pack(s) of model <strong>{m}</strong> and revokes their certificates at the CA. \
         It cannot be undone.</p>\
         <form class=\"stack\" id=\"confirm\" method=\"post\" action=\"/console/actions/discard\">{csrf}\
         <input type=\"hidden\" name=\"model\" value=\"{m}\">\
         <input type=\"hidden\" name=\"count\" value=\"{count}\">\
         <label>Type the model code again to confirm<input name=\"confirm\" required autocomplete=\"off\" data-focus></label>\
         <button class=\"danger\" type=\"submit\">Discard {count} pack(s) of {m}</button></form>\
         <p><a href=\"/console/actions\">Cancel</a></p></div>",
        note = note
            .map(|n| format!("<p class=\"outcome bad\" id=\"outcome\">{}</p>", esc(n)))
            .unwrap_or_default(),
        m = esc(model),
        csrf = csrf_field(csrf),
    )
}

// ---- Audit ----

pub fn audit(report: &AuditPage, query: &AuditPageQuery) -> String {
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let integrity = if report.intact {
        format!(
            "<p class=\"ok\" id=\"integrity\" data-intact=\"true\">The audit chain is intact: {} entries, each \
             bound to the one before.</p>",
            report.entries
        )
    } else {
        format!(
            "<p class=\"outcome bad\" id=\"integrity\" data-intact=\"false\">The audit chain is broken: {}</p>",
            esc(report.problem.as_deref().unwrap_or("?"))
        )
    };
    let rows: String = report
        .page
        .iter()
        .map(|e| {
            format!(
                "<tr data-action=\"{action}\"><td class=\"n\">{seq}</td><td>{at}</td><td>{actor}</td><td>{action}</td>\
                 <td class=\"detail mono\">{detail}</td></tr>",
                seq = e.seq,
                at = esc(&e.at),
                actor = esc(&e.actor),
                action = esc(&e.action),
                detail = esc(&e.detail.to_string()),
            )
        })
        .collect();
    let next = match report.next_before {
        Some(before) => {
            let mut href = format!("/console/audit?before={before}");
            for (name, v) in [
                ("action", &query.action),
                ("user", &query.user),
                ("id", &query.id),
            ] {
                if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                    href.push_str(&format!("&{name}={}", query_value(v)));
                }
            }
            format!(
                "<p><a id=\"older\" href=\"{}\">Older entries</a></p>",
                esc(&href)
            )
        }
        None => String::new(),
    };
    format!(
        "{integrity}<form class=\"inline\" method=\"get\" action=\"/console/audit\">\
         <label>Action<input name=\"action\" value=\"{a}\" placeholder=\"discard\"></label>\
         <label>User or line<input name=\"user\" value=\"{u}\" placeholder=\"admin\"></label>\
         <label>Device id or serial<input name=\"id\" value=\"{i}\"></label>\
         <button type=\"submit\">Filter</button></form>\
         <table id=\"audit\"><thead><tr><th class=\"n\">#</th><th>At</th><th>Who</th><th>Action</th><th>Detail</th></tr></thead>\
         <tbody>{rows}</tbody></table>{next}",
        a = value(&query.action),
        u = value(&query.user),
        i = value(&query.id),
    )
}

// ---- Users ----

pub fn users(user: &str, csrf: &str, outcome: Option<&Outcome>) -> String {
    format!(
        "{outcome}<div class=\"cards\"><div class=\"card\"><h2>Add an administrator</h2>\
         <form class=\"stack\" id=\"user-add\" method=\"post\" action=\"/console/users/add\">{csrf}\
         <label>User name<input name=\"name\" required autocomplete=\"off\"></label>\
         <label>Password (8 characters or more)<input name=\"password\" type=\"password\" required autocomplete=\"new-password\"></label>\
         <label>Password again<input name=\"again\" type=\"password\" required autocomplete=\"new-password\"></label>\
         <button type=\"submit\">Add</button></form></div>\
         <div class=\"card\"><h2>Change your password ({u})</h2>\
         <form class=\"stack\" id=\"password\" method=\"post\" action=\"/console/users/password\">{csrf}\
         <label>Current password<input name=\"current\" type=\"password\" required autocomplete=\"current-password\"></label>\
         <label>New password<input name=\"password\" type=\"password\" required autocomplete=\"new-password\"></label>\
         <label>New password again<input name=\"again\" type=\"password\" required autocomplete=\"new-password\"></label>\
         <button type=\"submit\">Change</button></form></div></div>",
        outcome = outcome.map(Outcome::html).unwrap_or_default(),
        csrf = csrf_field(csrf),
        u = esc(user),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_text_is_escaped_and_no_page_has_inline_script_or_style() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let page = layout("Today", "<img src=x onerror=alert(1)>", "c\"sr", "");
        assert!(!page.contains("<img src=x"), "{page}");
        assert!(page.contains("value=\"c&quot;sr\""), "{page}");
        for page in [page, login(Some("<b>no</b>"), "t"), refused("<script>")] {
            assert!(!page.contains("<script>"), "{page}");
            assert!(!page.contains("style="), "{page}");
            assert!(!page.contains("<img"), "{page}");
            assert!(
                !page.contains("onclick") && !page.contains("onload"),
                "no inline event handlers: {page}"
            );
        }
        assert_eq!(query_value("A1-0 &x"), "A1-0%20%26x");
    }
}
