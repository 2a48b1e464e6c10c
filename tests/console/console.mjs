// Drives Debian's headless Chromium through the station console with
// playwright-core (never a browser a test tool downloads). Run by
// tests/station_console.rs, which starts the CA, the station and a line as
// processes and checks what this script reports (one JSON object on stdout)
// against the station's own reports and the CA.
//
// Every request to anything but the station is aborted and reported: the
// console must work with nothing from outside.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const need = (name) => {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
};
const station = need("STATION_URL");
const out = need("OUT_DIR");
const admin = need("ADMIN_USER");
const password = need("ADMIN_PASSWORD");
const discardModel = need("DISCARD_MODEL");
const deviceId = need("DEVICE_ID");
const maxFailures = Number(need("MAX_FAILURES"));
const lockUser = "lockme";
const lockPassword = "lockme password 1";

fs.mkdirSync(out, { recursive: true });
const report = { outside: [], steps: [] };
const step = (name, value) => {
  report.steps.push(name);
  process.stderr.write(`[console.mjs] ${name}\n`);
  return value;
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  // The station's server certificate chains to the factory's root, which this
  // fresh browser profile does not trust.
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 900 },
  });
  const origin = new URL(station).origin;
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (new URL(url).origin === origin) {
      return route.continue();
    }
    report.outside.push(url);
    return route.abort("blockedbyclient");
  });
  const page = await context.newPage();
  const consoleErrors = [];
  page.on("console", (m) => {
    // A refused page (401, 400, 429: the refusals this script provokes and
    // checks by status) is logged by Chromium as an error; anything else
    // (a script error, a CSP violation) is a defect.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource: the server responded with a status of")) {
      consoleErrors.push(m.text());
    }
  });
  const shot = (name) => page.screenshot({ path: path.join(out, `${name}.png`), fullPage: true });
  const login = async (user, secret) => {
    await page.goto(`${station}/console/login`);
    await page.fill("input[name=user]", user);
    await page.fill("input[name=password]", secret);
    const [answer] = await Promise.all([
      page.waitForNavigation(),
      page.click("button[type=submit]"),
    ]);
    return answer;
  };

  // Not logged in: every page leads to the login.
  await page.goto(`${station}/console/`);
  report.unauthenticatedLandsOn = step("login page", new URL(page.url()).pathname);
  await shot("login");

  // A wrong password is refused.
  let answer = await login(admin, "not the password");
  report.wrongPassword = {
    status: answer.status(),
    message: await page.textContent("#login-error"),
  };
  step("wrong password");

  // The right one opens Today.
  answer = await login(admin, password);
  report.loggedInAt = new URL(page.url()).pathname;
  step("logged in");
  await page.waitForSelector("#stock");
  report.today = await page.$$eval("#stock tbody tr", (rows) =>
    rows.map((row) => {
      const model = { model: row.getAttribute("data-model") };
      for (const cell of row.querySelectorAll("[data-field]")) {
        const field = cell.getAttribute("data-field");
        const value = cell.getAttribute("data-value");
        model[field] =
          field === "certificate" ? value === "true" : value !== null ? value : Number(cell.textContent);
      }
      return model;
    }),
  );
  report.todayDay = await page.getAttribute("#stock", "data-day");
  report.chartLines = await page.$$eval("#chart-models svg polyline", (l) => l.length);
  await shot("today");
  // Refreshed live, through the station only.
  await page.waitForSelector("#live[data-refreshed]", { timeout: 20000 });
  report.liveRefreshed = true;
  step("today refreshed");

  await page.goto(`${station}/console/lines`);
  report.lines = await page.$$eval(".line", (cards) =>
    cards.map((c) => ({
      line: c.getAttribute("data-line"),
      written: Number(c.querySelector("[data-field=written_today]").textContent),
      refusals: [...c.querySelectorAll(".refusals code")].map((e) => e.textContent),
    })),
  );
  await shot("lines");
  step("lines");

  // A device looked up as a scanner types it: the id, then Enter.
  await page.goto(`${station}/console/devices`);
  await page.keyboard.type(deviceId);
  await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
  report.device = {
    id: await page.getAttribute("#device", "data-id"),
    written: await page.getAttribute("#device", "data-written"),
    states: await page.$$eval("#packs tbody tr", (r) => r.map((e) => e.getAttribute("data-state"))),
  };
  await shot("devices");
  step("device");

  // Another administrator, added through the page.
  await page.goto(`${station}/console/users`);
  await page.fill("#user-add input[name=name]", lockUser);
  await page.fill("#user-add input[name=password]", lockPassword);
  await page.fill("#user-add input[name=again]", lockPassword);
  await Promise.all([page.waitForNavigation(), page.click("#user-add button")]);
  report.userAdded = await page.textContent("#outcome");
  await shot("users");
  step("user added");

  // A form posted without its CSRF token is refused, and does nothing.
  await page.goto(`${station}/console/actions`);
  await page.selectOption("#discard select[name=model]", discardModel);
  await Promise.all([page.waitForNavigation(), page.click("#discard button")]);
  report.confirmCount = Number(await page.textContent("#confirm-count"));
  await page.fill("#confirm input[name=confirm]", discardModel);
  await page.evaluate(() => document.querySelector("#confirm input[name=csrf]").remove());
  answer = (
    await Promise.all([page.waitForNavigation(), page.click("#confirm button")])
  )[0];
  report.withoutCsrf = { status: answer.status(), message: await page.textContent("#refusal") };
  await shot("csrf-refused");
  step("csrf refused");

  // The discard, confirmed with the model code typed again.
  await page.goto(`${station}/console/actions`);
  await page.selectOption("#discard select[name=model]", discardModel);
  await Promise.all([page.waitForNavigation(), page.click("#discard button")]);
  await shot("discard-confirm");
  await page.fill("#confirm input[name=confirm]", discardModel);
  answer = (await Promise.all([page.waitForNavigation(), page.click("#confirm button")]))[0];
  report.discard = { status: answer.status(), message: await page.textContent("#outcome") };
  await shot("actions");
  step("discarded");

  // The audit log shows it, with the user, and the chain's integrity.
  await page.goto(`${station}/console/audit`);
  await page.fill("input[name=action]", "discard");
  await Promise.all([page.waitForNavigation(), page.click("form.inline button")]);
  report.audit = {
    intact: await page.getAttribute("#integrity", "data-intact"),
    actions: await page.$$eval("#audit tbody tr", (r) => r.map((e) => e.getAttribute("data-action"))),
    who: await page.$$eval("#audit tbody tr td:nth-child(3)", (r) => r.map((e) => e.textContent)),
  };
  await shot("audit");
  step("audit");

  // Log out: the pages lead to the login again.
  await page.click("header form button");
  await page.waitForURL(/\/console\/login$/);
  await page.goto(`${station}/console/today`);
  report.afterLogout = new URL(page.url()).pathname;
  step("logged out");

  // Lockout: the new user's password wrong as often as the station allows,
  // then even the right one is refused.
  report.lockout = [];
  for (let i = 0; i < maxFailures; i++) {
    answer = await login(lockUser, `wrong ${i}`);
    report.lockout.push({ status: answer.status(), message: await page.textContent("#login-error") });
  }
  answer = await login(lockUser, lockPassword);
  report.lockedRightPassword = { status: answer.status(), message: await page.textContent("#login-error") };
  await shot("locked-out");
  step("locked out");

  report.consoleErrors = consoleErrors;
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report) + "\n");
