//! The station's console (`/console/` on the station's HTTPS listener).
//!
//! Without a browser, plain HTTPS requests check the security rules: the
//! cookies' flags, the Content-Security-Policy, no admin action through GET,
//! a form without its CSRF token refused, and line, center and device-link
//! certificates refused as the API refuses them (only the login grants admin).
//!
//! In a real browser (Debian's headless Chromium driven by playwright-core,
//! `tests/console/console.mjs`), against a CA, a station and a line run as
//! processes: a wrong password refused, lockout, Today's numbers equal to
//! `station admin stock --json`, a discard through the page revoked at the
//! CA, a form without its CSRF token refused, and nothing requested from
//! anywhere but the station. Screenshots of each page land in
//! `$CARGO_TARGET_TMPDIR/console/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use certline::wire::station::StockReport;

use crate::common::{pem_file, tls_client};
use crate::line_support::*;
use crate::station_support::{json, Factory, ADMIN_PASSWORD, DAY};

/// A plain HTTPS client (no redirects followed, no cookie jar) presenting
/// `identity` (a credential file) if given.
struct Http {
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
    url: String,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The value of the `Set-Cookie` named `name`, and the whole header line.
    fn cookie(&self, name: &str) -> (String, String) {
        let line = self
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .find(|v| v.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} cookie set: {:?}", self.headers));
        let value = line[name.len() + 1..]
            .split(';')
            .next()
            .unwrap()
            .to_string();
        (value, line)
    }

    /// The value of the form field `name` in the page.
    fn field(&self, name: &str) -> String {
        let at = self
            .body
            .find(&format!("name=\"{name}\" value=\""))
            .unwrap_or_else(|| panic!("no {name} field in {}", self.body));
        let rest = &self.body[at + name.len() + 15..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

impl Http {
    fn new(url: &str, root_from: &Path, identity: Option<&Path>) -> Http {
        let root = pem_file(root_from, "CERTIFICATE").pop().unwrap();
        let identity = identity.map(|cred| {
            let mut chain = pem_file(cred, "CERTIFICATE");
            chain.pop(); // a credential ends with its root
            (chain, pem_file(cred, "PRIVATE KEY").remove(0))
        });
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_client(&root, identity))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Http {
            client,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            url: url.to_string(),
        }
    }

    fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        self.rt.block_on(async {
            let response = request.send().await.expect("the station answers");
            Answer {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body: response.text().await.unwrap(),
            }
        })
    }

    fn get(&self, path: &str, cookie: Option<&str>) -> Answer {
        let mut request = self.client.get(format!("{}{path}", self.url));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        self.send(request)
    }

    fn post(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Answer {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_value(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut request = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        self.send(request)
    }

    /// Logs in through the login form: the session cookie and its page's CSRF token.
    fn login(&self, user: &str, password: &str) -> (String, Answer) {
        let form = self.get("/console/login", None);
        let (login_cookie, _) = form.cookie("certline_login");
        let cookie = format!("certline_login={login_cookie}");
        let answer = self.post(
            "/console/login",
            Some(&cookie),
            &[
                ("user", user),
                ("password", password),
                ("csrf", &form.field("csrf")),
            ],
        );
        (cookie, answer)
    }
}

fn form_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn stock(factory: &Factory) -> StockReport {
    serde_json::from_value(json(&[
        "station",
        "admin",
        "stock",
        "--dir",
        factory.dir(),
        "--json",
    ]))
    .unwrap()
}

fn in_stock(factory: &Factory, model: &str) -> usize {
    stock(factory)
        .models
        .iter()
        .find(|m| m.model == model)
        .map_or(0, |m| m.in_stock)
}

#[test]
fn console_security_rules_hold_without_a_browser() {
    let factory = Factory::new(&["A123"], &[], &[]);
    factory.plan("plan.csv", &[&format!("{DAY},A123,000001,3")]);
    factory.fetch(DAY);
    let station = factory.serve();
    let http = Http::new(&station.url, &factory.station_cred, None);

    // Not logged in: a page leads to the login; every answer carries the CSP.
    let answer = http.get("/console/today", None);
    assert_eq!(answer.status, 303);
    assert_eq!(answer.header("location"), "/console/login");
    let login = http.get("/console/login", None);
    assert_eq!(login.status, 200);
    for a in [&answer, &login] {
        let csp = a.header("content-security-policy");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(a.header("x-frame-options"), "DENY");
        assert_eq!(a.header("x-content-type-options"), "nosniff");
    }
    let (_, line) = login.cookie("certline_login");
    for flag in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(line.contains(flag), "{line}");
    }

    // The login form without its token (cookie or field) is refused.
    let no_csrf = http.post(
        "/console/login",
        None,
        &[
            ("user", "admin"),
            ("password", ADMIN_PASSWORD),
            ("csrf", "x"),
        ],
    );
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    assert!(no_csrf.body.contains("CSRF"), "{}", no_csrf.body);

    // The login: a session cookie with every flag, expiring like an API session.
    let (_, answer) = http.login("admin", ADMIN_PASSWORD);
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(answer.header("location"), "/console/today");
    let (token, line) = answer.cookie("certline_session");
    for flag in [
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=3600",
    ] {
        assert!(line.contains(flag), "{flag} missing: {line}");
    }
    let session = format!("certline_session={token}");

    // Today: no inline script or style, every script from the station.
    let today = http.get("/console/today", Some(&session));
    assert_eq!(today.status, 200, "{}", today.body);
    assert!(today.body.contains("data-model=\"A123\""), "{}", today.body);
    assert!(
        !today.body.contains("<script>"),
        "inline script: {}",
        today.body
    );
    assert!(
        !today.body.contains("style="),
        "inline style: {}",
        today.body
    );
    assert!(today
        .header("content-security-policy")
        .contains("form-action 'self'"));
    let script = http.get("/console/assets/console.js", None);
    assert_eq!(script.status, 200);
    assert!(script.header("content-type").starts_with("text/javascript"));
    let csrf = http.get("/console/actions", Some(&session)).field("csrf");

    // No admin action through GET, with a valid session.
    for path in [
        "/console/actions/discard?model=A123&count=3&confirm=A123",
        "/console/actions/retry?now=1",
        "/console/users/add?name=eve&password=eve%20password&again=eve%20password",
        "/console/logout?now=1",
    ] {
        let answer = http.get(&format!("{path}&csrf={csrf}"), Some(&session));
        assert_eq!(answer.status, 405, "GET {path}: {}", answer.body);
    }
    assert_eq!(in_stock(&factory, "A123"), 3);

    // A state-changing form without its CSRF token, or with another's, does nothing.
    let confirm = [("model", "A123"), ("count", "3"), ("confirm", "A123")];
    for token in [None, Some("0".repeat(64))] {
        let mut form = confirm.to_vec();
        if let Some(t) = &token {
            form.push(("csrf", t));
        }
        let answer = http.post("/console/actions/discard", Some(&session), &form);
        assert!(
            matches!(answer.status, 403 | 400),
            "{}: {}",
            answer.status,
            answer.body
        );
        assert_eq!(in_stock(&factory, "A123"), 3);
    }

    // Line, center and device-link certificates give no admin: the console
    // sends them to the login, refuses their posts; the API refuses them too.
    for (role, name) in [
        ("line", "line-1"),
        ("center", "center-1"),
        ("device-link", "acme"),
    ] {
        let cred = factory.ca.enroll(role, name);
        let holder = Http::new(&station.url, &cred, Some(&cred));
        let page = holder.get("/console/today", None);
        assert_eq!(page.status, 303, "{role}: {}", page.body);
        assert_eq!(page.header("location"), "/console/login");
        let mut form = confirm.to_vec();
        form.push(("csrf", &csrf));
        let post = holder.post("/console/actions/discard", None, &form);
        assert_eq!(post.status, 401, "{role}: {}", post.body);
        let api = holder.get("/v1/admin/stock", None);
        assert_eq!(api.status, 401, "{role}: {}", api.body);
        assert_eq!(in_stock(&factory, "A123"), 3);
    }

    // With the session and its token, the same discard asks for confirmation
    // first, then discards; logging out ends the session.
    let mut form = vec![("model", "A123"), ("csrf", &csrf)];
    let ask = http.post("/console/actions/discard", Some(&session), &form);
    assert_eq!(ask.status, 200, "{}", ask.body);
    assert!(ask.body.contains("id=\"confirm-count\">3<"), "{}", ask.body);
    assert_eq!(in_stock(&factory, "A123"), 3);
    form.extend([("count", "3"), ("confirm", "A123")]);
    let done = http.post("/console/actions/discard", Some(&session), &form);
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body
            .contains("Discarded 3 leftover pack(s) of model A123"),
        "{}",
        done.body
    );
    assert_eq!(in_stock(&factory, "A123"), 0);
    let out = http.post("/console/logout", Some(&session), &[("csrf", &csrf)]);
    assert_eq!(out.status, 303);
    assert_eq!(http.get("/console/today", Some(&session)).status, 303);
}

/// Where the browser script and its packages are.
fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/console")
}

#[test]
fn the_console_in_a_real_browser() {
    let dir = console_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir() && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Debian's chromium and playwright-core in tests/console: run tests/prerequisites.sh"
    );
    // A station with two models planned today; 3012 written through a line.
    let rig = Rig::new(
        &["3012", "3013"],
        &["3012,000001,4", "3013,000001,3"],
        &[IMAGING],
    );
    let cable = free_addr();
    let mut scanner = Scanner::new();
    let config = rig.config("line.toml", &scanner.section(3000), &cable, "");
    let line = Line::start(&config);
    for n in 1..=3 {
        let id = format!("3012-{n:06}");
        let device = rig.device(&id, Some(&cable), &[]);
        scanner.scan(&id);
        assert_line(&line.device(), &id, "ok", "written", &[]);
        drop(device);
    }
    // One refusal for the lines page.
    let stray = rig.device("3012-999999", Some(&cable), &[]);
    scanner.scan("3012-999999");
    assert_line(&line.device(), "3012-999999", "refused", "not_in_plan", &[]);
    drop(stray);

    let factory = &rig.factory;
    let before = stock(factory);
    let b200: Vec<String> = (1..=3).map(|n| format!("3013-{n:06}")).collect();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new("node")
        .arg("console.mjs")
        .current_dir(&dir)
        .env("STATION_URL", rig.station_url())
        .env("OUT_DIR", &out)
        .env("ADMIN_USER", "admin")
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("DISCARD_MODEL", "3013")
        .env("DEVICE_ID", "3012-000001")
        .env("MAX_FAILURES", "5")
        .output()
        .expect("cannot run node");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the browser script failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&run.stdout)
        )
    });
    eprintln!("screenshots in {}", out.display());

    // Nothing but the station was asked for anything.
    assert_eq!(report["outside"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["consoleErrors"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["unauthenticatedLandsOn"], "/console/login");

    // A wrong password is refused; the right one opens Today.
    assert_eq!(report["wrongPassword"]["status"], 401, "{report:#}");
    assert!(report["wrongPassword"]["message"]
        .as_str()
        .unwrap()
        .contains("wrong user or password"));
    assert_eq!(report["loggedInAt"], "/console/today");

    // Today's numbers are `admin stock --json`'s, field by field.
    assert_eq!(report["todayDay"], before.day);
    let shown = report["today"].as_array().unwrap();
    assert_eq!(shown.len(), before.models.len(), "{report:#}");
    for model in &before.models {
        let row = shown
            .iter()
            .find(|r| r["model"] == model.model)
            .unwrap_or_else(|| panic!("no row for {}: {report:#}", model.model));
        let json = serde_json::to_value(model).unwrap();
        for (field, value) in json.as_object().unwrap() {
            assert_eq!(
                &row[field], value,
                "{} {field}: page {row} stock {json}",
                model.model
            );
        }
    }
    assert_eq!(
        before
            .models
            .iter()
            .find(|m| m.model == "3012")
            .unwrap()
            .used_today,
        3
    );
    assert_eq!(report["chartLines"], 2, "one line per model: {report:#}");
    assert_eq!(report["liveRefreshed"], true);

    // Lines: line-1 wrote 3 and its refusal is shown.
    let lines = report["lines"].as_array().unwrap();
    let line_1 = lines
        .iter()
        .find(|l| l["line"] == "line-1")
        .expect("line-1 listed");
    assert_eq!(line_1["written"], 3, "{report:#}");
    assert!(
        line_1["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "not_in_plan"),
        "{report:#}"
    );

    // The device looked up by its scanned id.
    assert_eq!(report["device"]["id"], "3012-000001");
    assert_eq!(report["device"]["written"], "true");

    // The form without its token did nothing; the confirmed discard did.
    assert_eq!(report["withoutCsrf"]["status"], 403, "{report:#}");
    assert_eq!(report["confirmCount"], 3);
    assert_eq!(report["discard"]["status"], 200, "{report:#}");
    assert!(report["discard"]["message"]
        .as_str()
        .unwrap()
        .contains("Discarded 3 leftover pack(s) of model 3013"));
    assert_eq!(in_stock(factory, "3013"), 0);

    // The discard is revoked at the CA (not only shown in the page).
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &b200 {
        loop {
            let history = factory.ca.history(id);
            if !history.is_empty() && history.iter().all(|r| r["status"] == "revoked") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} not revoked at the CA: {history:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    // The audit log has it with the user; the chain is intact.
    assert_eq!(report["audit"]["intact"], "true");
    assert!(report["audit"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a == "discard"));
    assert!(
        report["audit"]["who"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == "admin:admin"),
        "{report:#}"
    );
    assert!(report["userAdded"]
        .as_str()
        .unwrap()
        .contains("lockme added"));
    assert_eq!(report["afterLogout"], "/console/login");

    // Lockout: four refusals, the fifth locks, the right password is refused then.
    let lockout = report["lockout"].as_array().unwrap();
    assert!(
        lockout[..4].iter().all(|a| a["status"] == 401),
        "{report:#}"
    );
    assert_eq!(lockout[4]["status"], 429, "{report:#}");
    assert!(lockout[4]["message"]
        .as_str()
        .unwrap()
        .contains("locked out"));
    assert_eq!(report["lockedRightPassword"]["status"], 429, "{report:#}");
    assert!(report["lockedRightPassword"]["message"]
        .as_str()
        .unwrap()
        .contains("locked out"));

    for name in [
        "login",
        "today",
        "lines",
        "devices",
        "users",
        "actions",
        "audit",
        "locked-out",
    ] {
        assert!(
            out.join(format!("{name}.png")).is_file(),
            "no screenshot of {name}"
        );
    }
}
