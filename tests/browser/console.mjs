// The staff console (/console) in real Chromium, against a running server
// (driven by tests/console.rs, which seeds it; or by hand, see
// tests/browser/console-dev.mjs). Usage:
//   node console.mjs '{"base", "staff", "admin", "api_key", "revoked", "conv": {"id", "name"},
//                      "opted_out": {"id", "name"}, "names": [...], "attachment": "rash.jpg",
//                      "inbound": {"url", "params": [[k, v], ...], "signature", "body"},
//                      "agent": {"token", "name"}, "tone": "/path/1000hz.wav",
//                      "caller": {"cmd", "args": [...], "log", "rec", "name", "phone", "earlier"},
//                      "shots": DIR, "perf": true|false, "perf_real": 300}'
// `staff` is a clinician's access token granting every conversation, `admin`
// an admin's (the supervisor), `api_key` the tenant key (pasted by mistake,
// it must be refused in words; the real-server perf part seeds with it),
// `revoked` a token the server no longer accepts. `inbound` is a Twilio
// webhook (signed by the test with the official library) that brings a new
// SMS from the patient of `conv`. `agent` is the nurse who takes the phone
// call: an agent profile in the `nurse` queue, her token granted every
// conversation. `tone` is the browser's fake microphone (1000 Hz). `caller`
// is how to start the caller's phone (baresip dialling the clinic number,
// whose IVR flow queues the call): the command, its log (baresip prints the
// DTMF it receives there) and the folder of its recordings (`*-dec.wav`: what
// the phone heard); `name`, `phone`, `earlier` are the caller's patient, her
// number and a message she sent before (the context must show them).
// Screenshots land in `shots`. Prints one JSON line per check (and `note`
// lines for what it did not check) and exits non-zero on the first failure.
//
// Everything runs against the real server, with one exception, labelled
// "generated" in its check: the 10,000-conversation perf check routes
// /v1/inbox and /v1/inbox/stream to generated data (a test server holds a
// handful of conversations). With `perf_real`, that many real conversations
// are then seeded and the inbox is measured against the real server too.
import { launch } from "./chromium.mjs";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";

const cfg = JSON.parse(process.argv[2]);
const { base, shots } = cfg;
const TIMEOUT_MS = 30000;
/** Waits on the phone call: a loaded 2-core CI machine renders speech and joins rooms slowly. */
const CALL_TIMEOUT_MS = 120000;
fs.mkdirSync(shots, { recursive: true });

const PHONE = {
  viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 1,
  userAgent: "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Mobile Safari/537.36",
};
const DESKTOP = { viewport: { width: 1280, height: 800 } };

// The fake microphone plays `tone` (1000 Hz) where given: the phone call checks what the caller hears.
const browser = await launch(cfg.tone ? [`--use-file-for-fake-audio-capture=${cfg.tone}`] : []);
const cleanups = [];
const started = Date.now();
function report(check, ok, detail = {}) {
  console.log(JSON.stringify({ check, ok, ...detail, at_s: (Date.now() - started) / 1000 }));
  if (!ok) {
    for (const c of cleanups) c();
    browser.close().finally(() => process.exit(1));
    throw new Error(`check failed: ${check}`);
  }
}
const note = (text, detail = {}) => console.log(JSON.stringify({ note: text, ...detail }));

async function open(name, device, { routes } = {}) {
  const ctx = await browser.newContext(device);
  if (routes) await routes(ctx);
  const page = await ctx.newPage();
  page.on("console", (m) => {
    // Probes of endpoints this server may not have answer 404: expected.
    if (m.type() === "error" && !/Failed to load resource|EventSource/.test(m.text())) console.error(`[${name}] ${m.text()}`);
  });
  page.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
  await page.goto(`${base}/console?test-hooks=1`);
  return { name, page, ctx };
}

const shot = (peer, file) => peer.page.screenshot({ path: path.join(shots, file) });
const textOf = (peer, selector) => peer.page.evaluate((sel) => document.querySelector(sel)?.innerText || "", selector);
function waitText(peer, selector, needles, timeout = TIMEOUT_MS) {
  return peer.page.waitForFunction(([sel, needles]) => {
    const t = document.querySelector(sel)?.innerText || "";
    return needles.every((n) => t.includes(n));
  }, [selector, [].concat(needles)], { timeout }).then(() => true, () => false);
}
/** Like waitText, on textContent (not upper-cased by CSS, includes hidden text). */
function waitContent(peer, selector, needles, timeout = TIMEOUT_MS) {
  return peer.page.waitForFunction(([sel, needles]) => {
    const t = document.querySelector(sel)?.textContent || "";
    return needles.every((n) => t.includes(n));
  }, [selector, [].concat(needles)], { timeout }).then(() => true, () => false);
}
const until = (peer, fn, arg, timeout = TIMEOUT_MS) => peer.page.waitForFunction(fn, arg, { timeout }).then(() => true, () => false);

const AXE = fs.readFileSync(new URL("./node_modules/axe-core/axe.min.js", import.meta.url), "utf8");
async function accessible(peer, label) {
  await peer.page.addScriptTag({ content: AXE });
  const found = await peer.page.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } });
    return r.violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
  });
  report(`accessibility: ${label}`, found.length === 0, { violations: found });
}

async function signIn(peer, token) {
  await peer.page.waitForSelector("#signin-token", { state: "visible", timeout: TIMEOUT_MS });
  await peer.page.fill("#signin-token", token);
  await peer.page.click("#signin-submit");
}
const inApp = (peer) => until(peer, () => document.body.dataset.screen === "app");
const rowsShowing = (peer, names) => waitText(peer, "#inbox-list", names);

/** "+1 415 555 0131", as the console writes North American numbers. */
const phoneWords = (p) => { const m = /^\+1(\d{3})(\d{3})(\d{4})$/.exec(p || ""); return m ? `+1 ${m[1]} ${m[2]} ${m[3]}` : p; };

/** Does the server have an endpoint? (A 404 "no such route" means not yet.) */
async function has(pathname, token = cfg.staff, method = "GET", body = undefined) {
  const r = await fetch(base + pathname, { method, headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) }, body: body ? JSON.stringify(body) : undefined });
  if (r.status === 404 || r.status === 405) {
    const body = await r.text();
    return !/no such route/i.test(body) && r.status !== 405;
  }
  return true;
}

// ---------------------------------------------------------------------
// Signing in: wrong tokens are refused in words; the staff token works.
// ---------------------------------------------------------------------
const desk = await open("desktop", DESKTOP);
await desk.page.waitForSelector("#signin-token", { state: "visible" });
await shot(desk, "console-desktop-signin.png");
{
  const tries = [
    ["garbage", "not an access token"],
    [cfg.api_key, "tenant API key"],
  ];
  if (cfg.revoked) tries.push([cfg.revoked, "did not accept this token"]);
  const seen = [];
  for (const [token, needle] of tries) {
    await signIn(desk, token);
    const ok = await waitText(desk, "#signin-error", [needle]);
    seen.push({ needle, ok, text: await textOf(desk, "#signin-error") });
  }
  await shot(desk, "console-desktop-signin-error.png");
  report("a wrong token is refused with a clear reason", seen.every((s) => s.ok) && (await desk.page.evaluate(() => document.body.dataset.screen)) === "signin", { seen });
}
await signIn(desk, cfg.staff);
{
  const ok = (await inApp(desk)) && (await rowsShowing(desk, cfg.names));
  await shot(desk, "console-desktop-inbox.png");
  report("signed in: the inbox lists the seeded conversations", ok, {
    inbox: (await textOf(desk, "#inbox-list")).slice(0, 400), live: await textOf(desk, "#inbox-live"), me: await textOf(desk, "#me-name"),
  });
}

// ---------------------------------------------------------------------
// Keyboard: / to the filters, j/k and arrows through the list, Enter opens.
// ---------------------------------------------------------------------
{
  const p = desk.page;
  await p.locator("body").press("/");
  const toFilters = await p.evaluate(() => document.activeElement?.id === "f-state");
  await p.focus("#inbox-list");
  const active = () => p.evaluate(() => document.getElementById("inbox-list").getAttribute("aria-activedescendant"));
  const a0 = await active();
  await p.keyboard.press("j");
  const a1 = await active();
  await p.keyboard.press("ArrowDown");
  const a2 = await active();
  await p.keyboard.press("k");
  const a3 = await active();
  // Walk to the conversation under test and open it with Enter.
  let found = false;
  await p.keyboard.press("Home");
  for (let i = 0; i < cfg.names.length + 2; i++) {
    const label = await p.evaluate(() => { const id = document.getElementById("inbox-list").getAttribute("aria-activedescendant"); return id ? document.getElementById(id)?.textContent : ""; });
    if (label?.includes(cfg.conv.name)) { found = true; break; }
    await p.keyboard.press("j");
  }
  await p.keyboard.press("Enter");
  const opened = await until(desk, (id) => location.hash === `#/c/${id}`, cfg.conv.id);
  report("keyboard: / focuses filters, j/k/arrows move, Enter opens", toFilters && !!a0 && a1 !== a0 && a2 !== a1 && a3 === a1 && found && opened,
    { toFilters, moves: [a0, a1, a2, a3], found, hash: await p.evaluate(() => location.hash) });
}

// ---------------------------------------------------------------------
// The conversation: the whole timeline across channels, and the context.
// ---------------------------------------------------------------------
{
  const ok = await waitText(desk, "#timeline", ["Triage result", "IVR", "Phone", "SMS", cfg.attachment]);
  // textContent: the panel's headings are upper-cased by CSS only.
  const ctxOk = await until(desk, (needles) => needles.every((n) => document.getElementById("ctx-body").textContent.includes(n)),
    [cfg.conv.name, "Pending", "Triage", "Last channel switch", "Consent", "Attachments", cfg.attachment]);
  await shot(desk, "console-desktop-conversation.png");
  report("conversation: timeline across channels with marks, and the context panel", ok && ctxOk, {
    timeline: (await textOf(desk, "#timeline")).slice(0, 600), context: (await textOf(desk, "#ctx-body")).slice(0, 500),
  });
}
await accessible(desk, "inbox and conversation (desktop)");

// ---------------------------------------------------------------------
// Live: a new inbound SMS (a signed Twilio webhook) shows on the timeline
// and in the inbox row without a reload.
// ---------------------------------------------------------------------
{
  const { url, params, signature, body } = cfg.inbound;
  const r = await fetch(url, { method: "POST", headers: { "x-twilio-signature": signature, "content-type": "application/x-www-form-urlencoded" }, body: new URLSearchParams(params) });
  const onTimeline = await waitText(desk, "#timeline", [body]);
  const inRow = await until(desk, ([id, body]) => (document.getElementById(`row-${id}`)?.innerText || "").includes(body.slice(0, 30)), [cfg.conv.id, body]);
  await shot(desk, "console-desktop-live-sms.png");
  report("live: an inbound SMS appears on the open timeline and in its inbox row", r.status === 200 && onTimeline && inRow,
    { webhook: r.status, onTimeline, inRow, inbox_mode: await desk.page.evaluate(() => window.__consoleMetrics.inbox.source) });
}

// ---------------------------------------------------------------------
// Reply by SMS: the bubble shows its delivery state, in words.
// ---------------------------------------------------------------------
{
  const p = desk.page;
  const channel = await p.inputValue("#reply-channel");
  const text = "Thanks Ana. Please send a photo of your arm today.";
  await p.fill("#reply-text", text);
  await p.press("#reply-text", "Enter");
  const state = await p.waitForFunction((text) => {
    const li = [...document.querySelectorAll("#tl-items .ev[data-side=out]")].find((el) => el.querySelector(".ev-body")?.textContent === text);
    return li && ["sent", "delivered", "read"].includes(li.dataset.state) ? `${li.dataset.state}|${li.querySelector(".ev-state").innerText}` : false;
  }, text, { timeout: TIMEOUT_MS }).then((h) => h.jsonValue(), () => null);
  await shot(desk, "console-desktop-reply-sent.png");
  report("reply on the patient's channel (SMS) shows its delivery state", channel === "sms" && !!state, { channel, state });
}

// ---------------------------------------------------------------------
// A patient who opted out of SMS: the composer says so, nothing silent.
// ---------------------------------------------------------------------
if (cfg.opted_out) {
  const p = desk.page;
  await p.evaluate((id) => { location.hash = `#/c/${id}`; }, cfg.opted_out.id);
  const ok = await waitText(desk, "#conv-title", [cfg.opted_out.name]) && await until(desk, () => {
    const o = [...document.querySelectorAll("#reply-channel option")].find((o) => o.value === "sms");
    return o && o.disabled && /opted out/i.test(o.textContent) && /opted out of SMS/.test(document.getElementById("reply-hint").textContent);
  });
  const consent = await waitText(desk, "#ctx-body", ["Opted out of SMS"]);
  await shot(desk, "console-desktop-opted-out.png");
  report("opted out of SMS: the channel is disabled and the reason is shown", ok && consent, {
    options: await p.evaluate(() => [...document.querySelectorAll("#reply-channel option")].map((o) => `${o.textContent}${o.disabled ? " (disabled)" : ""}`)),
    hint: await textOf(desk, "#reply-hint"),
  });
  await p.evaluate((id) => { location.hash = `#/c/${id}`; }, cfg.conv.id);
  await waitText(desk, "#conv-title", [cfg.conv.name]);
}

// ---------------------------------------------------------------------
// Attachment review: the image previews; marked reviewed with a note.
// ---------------------------------------------------------------------
{
  const p = desk.page;
  await waitText(desk, "#ctx-body", [cfg.attachment]);
  await p.locator("#ctx-body .attachments button").first().click();
  const img = await until(desk, () => { const i = document.querySelector("#review-preview img"); return i && i.complete && i.naturalWidth > 0; });
  await p.fill("#review-note", "Rash spreading on the forearm; same-day appointment offered.");
  await shot(desk, "console-desktop-attachment.png");
  await p.click("#review-submit");
  const done = await waitText(desk, "#review-state", ["Reviewed", "same-day appointment"]);
  await shot(desk, "console-desktop-attachment-reviewed.png");
  await p.click("#review-cancel");
  const inPanel = await waitText(desk, "#ctx-body", ["Reviewed"]);
  const onTimeline = await waitText(desk, "#timeline", ["Reviewed"]);
  report("attachment: image preview, marked reviewed with a note", img && done && inPanel && onTimeline, { state: await textOf(desk, "#review-state") });
}

// ---------------------------------------------------------------------
// Phone size: one pane at a time, with a way back.
// ---------------------------------------------------------------------
const phone = await open("phone", PHONE);
await phone.page.waitForSelector("#signin-token", { state: "visible" });
await shot(phone, "console-phone-signin.png");
await signIn(phone, cfg.staff);
{
  const ok = (await inApp(phone)) && (await rowsShowing(phone, cfg.names));
  await shot(phone, "console-phone-inbox.png");
  report("phone: signed in, the inbox fills the screen", ok && (await phone.page.locator("#pane-conv").isHidden()));
}
{
  const p = phone.page;
  await p.locator(`#row-${cfg.conv.id}`).click();
  const ok = await waitText(phone, "#timeline", [cfg.inbound.body]);
  const single = (await p.locator("#pane-inbox").isHidden()) && (await p.locator("#conv-back").isVisible());
  await shot(phone, "console-phone-conversation.png");
  await p.click("#conv-context-btn");
  const ctx = await waitContent(phone, "#ctx-body", [cfg.conv.name, "Triage"]) && (await p.locator("#pane-conv").isHidden());
  await shot(phone, "console-phone-context.png");
  await p.click("#ctx-back");
  const back = await until(phone, () => document.body.dataset.pane === "conv");
  await p.click("#conv-back");
  const home = await until(phone, () => document.body.dataset.pane === "inbox");
  report("phone: conversation, context and back, one pane at a time", ok && single && ctx && back && home, { timeline: ok, single, ctx, back, home, pane: await p.evaluate(() => document.body.dataset.pane) });
  await accessible(phone, "inbox (phone)");
}

// ---------------------------------------------------------------------
// An incoming phone call, for real: the nurse (cfg.agent: an agent
// profile, a token granted every conversation) goes Available; the caller
// (baresip, spawned here from cfg.caller: it dials the clinic number, whose
// IVR flow queues the call in `nurse` with triage urgent_symptoms) plays
// 440 Hz and records what it hears; the reservation dialog shows who calls
// and their context; she accepts; the page joins the room with the join
// token (audio only) and hears 440 Hz; the phone hears her 1000 Hz (the
// browser's fake microphone); DTMF, hold and resume, hang up, wrap-up.
// Each screen at desktop and phone size.
// ---------------------------------------------------------------------
let callerProc = null;
const stopCaller = () => { try { callerProc?.kill("SIGTERM"); } catch { /* gone */ } };
cleanups.push(stopCaller);

/** Screenshots at desktop size and, by resizing the same page, at phone size (390×844). */
async function shotBoth(peer, name) {
  await shot(peer, `console-desktop-${name}.png`);
  const size = peer.page.viewportSize();
  await peer.page.setViewportSize(PHONE.viewport);
  await peer.page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  await shot(peer, `console-phone-${name}.png`);
  await peer.page.setViewportSize(size);
  await peer.page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
}

/**
 * What the page receives from the call's room: the strongest frequency and
 * the level at `hz` (dB), measured with a WebAudio analyser on every live
 * received audio track, until `want(result)` holds or `timeout` passes.
 */
function listen(peer, hz, wantTone, timeout = CALL_TIMEOUT_MS) {
  return peer.page.evaluate(async ([hz, wantTone, timeout]) => {
    const deadline = Date.now() + timeout;
    const ctx = new AudioContext();
    let last = { ok: false };
    while (Date.now() < deadline) {
      const pc = window.__consoleTest.call()?.visit?.pc;
      for (const r of pc?.getReceivers() || []) {
        if (!r.track || r.track.kind !== "audio" || r.track.readyState !== "live") continue;
        const src = ctx.createMediaStreamSource(new MediaStream([r.track]));
        const an = ctx.createAnalyser();
        an.fftSize = 4096;
        src.connect(an);
        await new Promise((res) => setTimeout(res, 700));
        const bins = new Float32Array(an.frequencyBinCount);
        an.getFloatFrequencyData(bins);
        src.disconnect();
        let peak = 1;
        for (let i = 1; i < bins.length; i++) if (bins[i] > bins[peak]) peak = i;
        const peakHz = Math.round((peak * ctx.sampleRate) / an.fftSize);
        const db = Math.round(bins[Math.round((hz * an.fftSize) / ctx.sampleRate)]);
        const tone = Math.abs(peakHz - hz) < 15 && db > -70;
        last = { ok: tone === wantTone, peak_hz: peakHz, db_at_hz: db, at: Date.now() };
        if (last.ok) { ctx.close(); return last; }
      }
      await new Promise((res) => setTimeout(res, 300));
    }
    ctx.close();
    return last;
  }, [hz, wantTone, timeout]);
}

/** 16-bit PCM of a WAV being written (baresip's recording), like tests/common/phone.rs wav_samples. */
function wavSamples(file) {
  let b;
  try { b = fs.readFileSync(file); } catch { return { rate: 8000, samples: new Int16Array(0) }; }
  if (b.length < 28) return { rate: 8000, samples: new Int16Array(0) };
  const rate = b.readUInt32LE(24);
  let i = 12;
  while (i + 8 <= b.length) {
    const len = b.readUInt32LE(i + 4);
    if (b.toString("ascii", i, i + 4) === "data") {
      const start = i + 8;
      const end = len === 0 || start + len > b.length ? b.length : start + len;
      const n = Math.floor((end - start) / 2);
      const out = new Int16Array(n);
      for (let k = 0; k < n; k++) out[k] = b.readInt16LE(start + 2 * k);
      return { rate, samples: out };
    }
    i += 8 + len + (len & 1);
  }
  return { rate, samples: new Int16Array(0) };
}
/** Power at `hz` over the signal's total (Goertzel), 0..1, like phone.rs tone_share. */
function toneShare(rate, x, hz) {
  const n = x.length;
  if (!n) return 0;
  const k = Math.floor(0.5 + (n * hz) / rate);
  const w = (2 * Math.PI * k) / n, coeff = 2 * Math.cos(w);
  let s1 = 0, s2 = 0, total = 0;
  for (let i = 0; i < n; i++) { const s = x[i] + coeff * s1 - s2; s2 = s1; s1 = s; total += x[i] * x[i]; }
  const power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
  return total === 0 ? 0 : power / ((total * n) / 2);
}
/** The phone's last `secs` seconds: share of `hz` and RMS. */
function phoneHears(hz, secs = 2) {
  const files = fs.existsSync(cfg.caller.rec) ? fs.readdirSync(cfg.caller.rec).filter((f) => f.endsWith("-dec.wav")).sort() : [];
  if (!files.length) return { share: 0, rms: 0, secs: 0 };
  const { rate, samples } = wavSamples(path.join(cfg.caller.rec, files.at(-1)));
  const want = rate * secs;
  if (samples.length < want) return { share: 0, rms: 0, secs: samples.length / rate };
  const tail = samples.subarray(samples.length - want);
  let sq = 0;
  for (const v of tail) sq += v * v;
  return { share: Math.round(toneShare(rate, tail, hz) * 100) / 100, rms: Math.round(Math.sqrt(sq / tail.length)), secs: Math.round(samples.length / rate) };
}
/** Polls the phone's recording until `ok(heard)` (no fixed sleeps: the recording grows in real time). */
async function phoneUntil(hz, ok, timeout = CALL_TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
  let heard = phoneHears(hz);
  while (!ok(heard) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 500));
    heard = phoneHears(hz);
  }
  return { ok: ok(heard), ...heard };
}
const callerLog = () => { try { return fs.readFileSync(cfg.caller.log, "utf8").replace(/\r/g, "\n"); } catch { return ""; } };
async function callerLogUntil(re, timeout = CALL_TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    if (re.test(callerLog())) return true;
    await new Promise((r) => setTimeout(r, 300));
  }
  return false;
}

if (cfg.agent && cfg.caller) {
  const nurse = await open("nurse", DESKTOP);
  const p = nurse.page;
  await signIn(nurse, cfg.agent.token);
  await inApp(nurse);
  // Her status: from GET /v1/agents/me (offline until she says otherwise).
  const shown = await until(nurse, () => !document.getElementById("agent-state").hidden && document.getElementById("agent-state").value === "offline");
  await p.selectOption("#agent-state", "available");
  const avail = await until(nurse, () => document.body.dataset.agent === "available" && /Ready/.test(document.getElementById("agent-detail").textContent));
  await shotBoth(nurse, "available");
  report("agent: the status selector goes Available (POST /v1/agents/me/state)", shown && avail, { detail: await textOf(nurse, "#agent-detail") });

  // The patient calls the clinic.
  fs.mkdirSync(cfg.caller.rec, { recursive: true });
  const logFd = fs.openSync(cfg.caller.log, "w");
  callerProc = spawn(cfg.caller.cmd, cfg.caller.args, { stdio: ["ignore", logFd, "ignore"] });
  const dialedAt = Date.now();
  const offered = await until(nurse, () => document.getElementById("offer").open, null, CALL_TIMEOUT_MS);
  const offerMs = Date.now() - dialedAt;
  // textContent: headings are upper-cased by CSS only.
  const ctxShown = await waitContent(nurse, "#offer", [cfg.caller.name, phoneWords(cfg.caller.phone), "Urgent symptoms", "Queue nurse", cfg.caller.earlier.slice(0, 30), "Answer within"]);
  const focusIn = await p.evaluate(() => document.getElementById("offer").contains(document.activeElement));
  await shotBoth(nurse, "incoming-call");
  for (let i = 0; i < 6; i++) await p.keyboard.press("Tab");
  const trapped = await p.evaluate(() => document.getElementById("offer").contains(document.activeElement));
  await p.focus("#offer-accept");
  report("incoming call: the reservation dialog shows the caller, triage, their context and a countdown", offered && ctxShown && focusIn && trapped,
    { dialed_to_offer_ms: offerMs, text: (await textOf(nurse, "#offer")).slice(0, 600), role: await p.getAttribute("#offer", "role"), focusIn, trapped });
  await accessible(nurse, "incoming call dialog (desktop)");

  await p.click("#offer-accept");
  const connected = await until(nurse, () => document.getElementById("callbar").dataset.state === "connected", null, CALL_TIMEOUT_MS);
  const opened = await waitText(nurse, "#conv-title", [cfg.caller.name], CALL_TIMEOUT_MS) && await waitText(nurse, "#timeline", [cfg.caller.earlier.slice(0, 30)], CALL_TIMEOUT_MS);
  const callInfo = await p.evaluate(() => { const c = window.__consoleTest.call(); return c && { callId: c.callId, roomId: c.roomId, taskId: c.taskId, audioOnly: c.stream?.getVideoTracks().length === 0 && c.stream?.getAudioTracks().length === 1 }; });
  report("accept: the call bar says connected, the caller's conversation opens, audio only", connected && opened && !!callInfo?.audioOnly,
    { state: await textOf(nurse, "#call-state"), title: await textOf(nurse, "#call-title"), call: callInfo });

  // Audio both ways.
  const heard = await listen(nurse, 440, true);
  report("the page hears the caller's 440 Hz through the room", heard.ok, heard);
  const phoneHeard = await phoneUntil(1000, (h) => h.share > 0.3);
  report("the caller's phone hears the nurse's 1000 Hz", phoneHeard.ok, phoneHeard);
  await shotBoth(nurse, "call-connected");

  // Mute: the local track is disabled (the phone stops hearing 1000 Hz).
  await p.click("#call-mute");
  const muted = await until(nurse, () => document.getElementById("call-mute").getAttribute("aria-pressed") === "true" && window.__consoleTest.call().stream.getAudioTracks().every((t) => !t.enabled));
  const silent = await phoneUntil(1000, (h) => h.share < 0.1);
  await p.click("#call-mute");
  const unmuted = await until(nurse, () => window.__consoleTest.call().stream.getAudioTracks().every((t) => t.enabled));
  const back = await phoneUntil(1000, (h) => h.share > 0.3);
  report("mute: the microphone track is disabled and the phone stops hearing the nurse", muted && silent.ok && unmuted && back.ok, { muted: silent, unmuted: back });

  // DTMF: the keypad sends a tone to the phone (RFC 4733; baresip logs it).
  await p.click("#call-keypad");
  await p.click("#keypad button:has-text('5')");
  const sent = await waitText(nurse, "#keypad-sent", ["Sent: 5"], CALL_TIMEOUT_MS);
  const got = await callerLogUntil(/received event: '5'/);
  await shotBoth(nurse, "call-keypad");
  report("keypad: DTMF 5 reaches the caller's phone", sent && got, { sent: await textOf(nurse, "#keypad-sent") });
  await p.click("#call-keypad");

  // Hold and resume (POST /v1/calls/{id}/hold): the room stops hearing the caller, then hears them again.
  const holdReal = await has(`/v1/calls/${encodeURIComponent(callInfo.callId)}/hold`, cfg.agent.token, "POST", { held: false });
  if (holdReal) {
    await p.click("#call-hold");
    const held = await until(nurse, () => document.getElementById("callbar").dataset.state === "held", null, CALL_TIMEOUT_MS);
    const quiet = await listen(nurse, 440, false);
    await shotBoth(nurse, "call-held");
    await p.click("#call-hold");
    const resumed = await until(nurse, () => document.getElementById("callbar").dataset.state === "connected", null, CALL_TIMEOUT_MS);
    const again = await listen(nurse, 440, true);
    report("hold: the caller is held (the room stops hearing them) and resumed", held && quiet.ok && resumed && again.ok, { held: quiet, resumed: again });
  } else {
    await p.click("#call-hold");
    const said = await waitText(nurse, "#call-state", ["not available on this server"], CALL_TIMEOUT_MS);
    await shotBoth(nurse, "call-hold-unavailable");
    report("hold: a server without POST /v1/calls/{id}/hold says so, the call goes on", said && (await p.evaluate(() => document.getElementById("callbar").dataset.state)) === "connected", { said: await textOf(nurse, "#call-state") });
    note("hold not checked end to end: this server has no POST /v1/calls/{id}/hold yet");
  }

  // The supervisor, while the call is up: the nurse queue and Joy, busy.
  const sup = await open("supervisor", DESKTOP);
  await signIn(sup, cfg.admin);
  await inApp(sup);
  await sup.page.click("#nav-supervisor");
  const supOk = await waitText(sup, "#sup-body", ["nurse", cfg.agent.name, "Busy", "Last hour"], CALL_TIMEOUT_MS) &&
    (await sup.page.locator("#sup-body svg.chart").count()) === 1;
  const supLive = await waitText(sup, "#sup-live", ["Live"], CALL_TIMEOUT_MS);
  await shotBoth(sup, "supervisor");
  report("supervisor: the nurse queue and the nurse (busy) from /v1/routing/stats, live from /v1/routing/stream, with the last-hour chart", supOk && supLive,
    { text: (await textOf(sup, "#sup-body")).slice(0, 500), chart: await sup.page.evaluate(() => document.getElementById("chart-desc")?.textContent) });
  await accessible(sup, "supervisor (desktop)");

  // Hang up: the phone's call ends, the task completes, wrap-up counts down.
  await p.click("#call-hangup");
  const ended = await until(nurse, () => document.getElementById("callbar").dataset.state === "ended", null, CALL_TIMEOUT_MS);
  const wrap = await until(nurse, () => document.body.dataset.agent === "wrap_up" && /Wrap-up: \d+:\d\d left/.test(document.getElementById("agent-detail").textContent), null, CALL_TIMEOUT_MS);
  const phoneDone = await callerLogUntil(/terminated/);
  const said = await textOf(nurse, "#call-state");
  await shotBoth(nurse, "call-ended");
  report("hang up: the call ends on the phone, the task completes, wrap-up counts down", ended && /ended/i.test(said) && wrap && phoneDone,
    { said, status: await textOf(nurse, "#agent-detail") });
  await p.click("#call-dismiss");
  const closed = await until(nurse, () => document.getElementById("callbar").hidden);
  // The supervisor's live view counts the answered call.
  // (Columns: queue, waiting, longest wait, offered, with an agent, service level, answered, abandoned.)
  const counted = await until(sup, () => [...document.querySelectorAll("#sup-body table tbody tr")]
    .some((tr) => tr.cells[0]?.textContent === "nurse" && tr.cells[4]?.textContent === "0" && tr.cells[6]?.textContent === "1"), null, CALL_TIMEOUT_MS);
  report("after the call: the bar closes, the supervisor's live view shows it answered and nobody on it", closed && counted, { closed, counted, queues: (await textOf(sup, "#sup-body table")).slice(0, 300) });
  // Back to available once wrap-up is over.
  const availAgain = await until(nurse, () => document.body.dataset.agent === "available", null, CALL_TIMEOUT_MS);
  report("wrap-up ends: available again (the `state` event)", availAgain, { detail: await textOf(nurse, "#agent-detail") });
  await sup.ctx.close();
  await nurse.ctx.close();
  stopCaller();
} else {
  note("no cfg.agent/cfg.caller: the phone-call scenario did not run");
}

// ---------------------------------------------------------------------
// Session expiry: a 401 anywhere brings back the sign-in, saying why; an
// unsent reply is kept and comes back after signing in again. (The 401 is
// routed: the server's tokens last at least minutes.)
// ---------------------------------------------------------------------
{
  const p = desk.page;
  const draft = "Draft kept across sign-in";
  await waitText(desk, "#conv-title", [cfg.conv.name]);
  await p.fill("#reply-text", draft);
  await desk.ctx.route("**/v1/conversations/*/visit-link", (route) => route.fulfill({ status: 401, contentType: "application/json", body: JSON.stringify({ error: { code: "unauthorized", message: "token expired" } }) }));
  await p.click("#act-link");
  const ok = await waitText(desk, "#signin-notice", ["Your session expired — sign in again", "unsent reply was kept"]);
  const screenNow = await p.evaluate(() => document.body.dataset.screen);
  await shot(desk, "console-desktop-session-expired.png");
  await desk.ctx.unroute("**/v1/conversations/*/visit-link");
  await signIn(desk, cfg.staff);
  const back = (await inApp(desk)) && (await until(desk, (d) => document.getElementById("reply-text").value === d, draft));
  report("an expired session returns to sign-in and says so; the unsent reply comes back", ok && screenNow === "signin" && back,
    { notice_shown: ok, screen: screenNow, draft_back: back, notice: await textOf(desk, "#signin-notice") });
  await p.fill("#reply-text", "");
}

// ---------------------------------------------------------------------
// 10,000 conversations: time to first render and the cost of live updates.
// Simulated: /v1/inbox answers 10,000 generated items in one page and
// /v1/inbox/stream a burst of 500 `conversation` events (documented
// shapes); the trickle part pushes one update per frame through the
// page's test hook, as a busy stream would.
// ---------------------------------------------------------------------
if (cfg.perf) {
  const N = 10_000;
  const t0 = Date.parse("2026-01-01T08:00:00Z");
  const channels = ["sms", "whatsapp", "chat", "voice", "video", "ivr"];
  const states = ["queued", "active", "open"];
  const item = (i, at) => ({
    conversation_id: `perf-${i}`, state: states[i % 3], queue: ["nurse-line", "pharmacy", "billing", "triage"][i % 4], assignee: i % 5 === 0 ? "nurse-kim" : null,
    patient: { id: `p-${i}`, display_name: `Patient ${String(i).padStart(5, "0")}` },
    last_event: { seq: 10, kind: "message", channel: channels[i % channels.length], at, body: `Message number ${i} about symptoms and medication` },
    unread: i % 7 === 0 ? 2 : 0, waiting_since: i % 3 === 0 ? at : null,
    task: i % 11 === 0 ? { id: `t-${i}`, state: "queued", priority: 1, triage: "urgent" } : null,
    updated_at: at,
  });
  const items = Array.from({ length: N }, (_, i) => item(i, new Date(t0 + i * 1000).toISOString()));
  const inboxBody = JSON.stringify({ items, next_cursor: null });
  let burstRelease;
  const burstGo = new Promise((r) => { burstRelease = r; });
  const routes = async (ctx) => {
    await ctx.route("**/v1/inbox?*", (route) => route.fulfill({ status: 200, contentType: "application/json", body: inboxBody }));
    let streams = 0;
    await ctx.route("**/v1/inbox/stream?*", async (route) => {
      if (streams++ > 0) return route.fulfill({ status: 200, contentType: "text/event-stream", body: "retry: 600000\n\n" });
      await burstGo;
      let body = "retry: 600000\n\n";
      for (let k = 0; k < 500; k++) {
        const i = (k * 7919) % N;
        body += `event: conversation\ndata: ${JSON.stringify({ ...item(i, new Date(t0 + N * 1000 + k * 1000).toISOString()), unread: 1 })}\n\n`;
      }
      route.fulfill({ status: 200, contentType: "text/event-stream", body });
    });
  };
  const perf = await open("perf", DESKTOP, { routes });
  const p = perf.page;
  await p.waitForSelector("#signin-token", { state: "visible" });
  await p.fill("#signin-token", cfg.staff);
  const clicked = await p.evaluate(() => performance.now());
  await p.click("#signin-submit");
  const rendered = await until(perf, () => window.__consoleMetrics.inbox.firstRenderAt && document.querySelectorAll("#inbox-list [role=option]").length > 0, null, 60000);
  const first = await p.evaluate(() => ({ ...window.__consoleMetrics.inbox, rows: document.querySelectorAll("#inbox-list [role=option]").length, size: window.__consoleTest.inboxSize() }));
  const ttfr = first.firstRenderAt - clicked;
  await shot(perf, "console-desktop-inbox-10000.png");
  report("perf (generated data): 10,000 conversations render (virtualized)", rendered && first.size >= N * 0.6 && first.rows < 80, {
    items: first.items, in_view: first.size, dom_rows: first.rows,
    time_to_first_render_ms: Math.round(ttfr), data_to_render_ms: Math.round(first.renderMs * 10) / 10,
  });
  // Scrolling far keeps the DOM small.
  await p.evaluate(() => { document.getElementById("inbox-list").scrollTop = 400_000; });
  await p.waitForTimeout(200);
  const rowsAfter = await p.evaluate(() => document.querySelectorAll("#inbox-list [role=option]").length);
  // Burst through the (routed) stream.
  await p.evaluate(() => { window.__consoleMetrics.updates = { count: 0, batches: 0, batchMs: [], perUpdateMs: [] }; window.__consoleMetrics.longTasks = []; });
  burstRelease();
  await until(perf, () => window.__consoleMetrics.updates.count >= 500, null, 30000);
  const burst = await p.evaluate(() => window.__consoleMetrics.updates);
  // Trickle: one update per frame, as a steady stream would.
  await p.evaluate(() => { window.__consoleMetrics.updates = { count: 0, batches: 0, batchMs: [], perUpdateMs: [] }; window.__consoleMetrics.longTasks = []; });
  await p.evaluate(async (N) => {
    for (let k = 0; k < 300; k++) {
      const i = (k * 104729) % N;
      window.__consoleTest.inboxUpdate({
        conversation_id: `perf-${i}`, state: "queued", queue: "nurse-line", assignee: null,
        patient: { id: `p-${i}`, display_name: `Patient ${String(i).padStart(5, "0")}` },
        last_event: { seq: 11 + k, kind: "message", channel: "sms", at: new Date().toISOString(), body: `Live update ${k}` },
        unread: 1, waiting_since: new Date().toISOString(), task: null, updated_at: new Date().toISOString(),
      });
      await new Promise((r) => requestAnimationFrame(r));
    }
    await new Promise((r) => requestAnimationFrame(r));
  }, N);
  const trickle = await p.evaluate(() => ({ ...window.__consoleMetrics.updates, longTasks: window.__consoleMetrics.longTasks }));
  const stat = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    const mean = s.reduce((a, b) => a + b, 0) / (s.length || 1);
    return { n: s.length, mean_ms: Math.round(mean * 1000) / 1000, p95_ms: Math.round((s[Math.floor(s.length * 0.95)] ?? 0) * 1000) / 1000, max_ms: Math.round((s.at(-1) ?? 0) * 1000) / 1000 };
  };
  const topNow = await p.evaluate(() => { document.getElementById("inbox-list").scrollTop = 0; return new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(document.querySelector("#inbox-list [aria-posinset='1']")?.innerText || "")))); });
  await shot(perf, "console-desktop-inbox-10000-live.png");
  const trickleStat = stat(trickle.batchMs);
  report("perf (generated data): live updates patch one row each, without jank", burst.count >= 500 && trickle.count === 300 && trickleStat.p95_ms < 16 && rowsAfter < 80 && topNow.includes("Live update"), {
    burst_stream: { updates: burst.count, frames: burst.batches, per_update: stat(burst.perUpdateMs), per_frame: stat(burst.batchMs) },
    trickle_one_per_frame: { updates: trickle.count, per_update: trickleStat, long_tasks_over_50ms: trickle.longTasks.length },
    dom_rows_after_scroll: rowsAfter, top_row: topNow.replace(/\n/g, " | "),
  });
  await perf.ctx.close();
}

// ---------------------------------------------------------------------
// The same against the real server: `perf_real` conversations seeded
// through the API (a contact, a conversation, a patient message each),
// then the inbox's first render from GET /v1/inbox, and the latency of
// live rows: a patient message posted to the API → its row updated from
// GET /v1/inbox/stream (the server gathers changes for 200 ms).
// ---------------------------------------------------------------------
if (cfg.perf_real) {
  const N = cfg.perf_real;
  const api = async (method, p, body) => {
    const r = await fetch(base + p, { method, headers: { authorization: `Bearer ${cfg.api_key}`, "content-type": "application/json" }, body: body ? JSON.stringify(body) : undefined });
    if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${await r.text()}`);
    return r.status === 204 ? null : r.json();
  };
  const seedStart = Date.now();
  const convs = [];
  let next = 0;
  await Promise.all(Array.from({ length: 6 }, async () => {
    while (next < N) {
      const i = next++;
      const c = await api("POST", "/v1/contacts", { display_name: `Load Patient ${String(i).padStart(4, "0")}`, phone: `+1415556${String(i).padStart(4, "0")}` });
      const cv = await api("POST", "/v1/conversations", { contact_id: c.id, subject: `Load ${i}` });
      await api("POST", `/v1/conversations/${cv.id}/events`, { channel: "sms", kind: "message", body: `Question ${i} about my medication`, actor: { type: "patient" } });
      convs.push(cv.id);
    }
  }));
  const seedMs = Date.now() - seedStart;
  const real = await open("perf-real", DESKTOP);
  const p = real.page;
  await p.waitForSelector("#signin-token", { state: "visible" });
  await p.fill("#signin-token", cfg.staff);
  const clicked = await p.evaluate(() => performance.now());
  await p.click("#signin-submit");
  const rendered = await until(real, (n) => window.__consoleMetrics.inbox.firstRenderAt && window.__consoleTest.inboxSize() >= n, N, 60000);
  const first = await p.evaluate(() => ({ ...window.__consoleMetrics.inbox, rows: document.querySelectorAll("#inbox-list [role=option]").length, size: window.__consoleTest.inboxSize() }));
  await until(real, () => document.getElementById("inbox-live").textContent === "Live");
  await shot(real, "console-desktop-inbox-real.png");
  // Live rows, one at a time (each waits for its row: no overlap).
  const lat = [];
  await p.evaluate(() => { window.__consoleMetrics.updates = { count: 0, batches: 0, batchMs: [], perUpdateMs: [] }; window.__consoleMetrics.longTasks = []; });
  for (let k = 0; k < 30; k++) {
    const id = convs[(k * 37) % convs.length];
    const t0 = Date.now();
    const ev = await api("POST", `/v1/conversations/${id}/events`, { channel: "sms", kind: "message", body: `Follow-up ${k}`, actor: { type: "patient" } });
    const ok = await until(real, ([id, seq]) => (window.__consoleTest.item(id)?.lastSeq ?? 0) >= seq, [id, ev.seq], 20000);
    if (ok) lat.push(Date.now() - t0);
  }
  const upd = await p.evaluate(() => ({ ...window.__consoleMetrics.updates, longTasks: window.__consoleMetrics.longTasks.length }));
  const sorted = [...lat].sort((a, b) => a - b);
  const pct = (q) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))];
  const perRow = [...upd.batchMs].sort((a, b) => a - b);
  report(`perf (real server): ${N} real conversations load and render; live rows arrive through the stream`, rendered && lat.length === 30, {
    conversations: first.items, seeded_in_ms: seedMs, time_to_first_render_ms: Math.round(first.firstRenderAt - clicked),
    fetch_ms: Math.round(first.dataAt - first.loadStart), data_to_render_ms: Math.round(first.renderMs * 10) / 10, dom_rows: first.rows,
    live_row_latency_ms: { n: lat.length, p50: pct(0.5), p95: pct(0.95), max: sorted.at(-1) },
    row_patch_ms: { frames: perRow.length, p95: Math.round((perRow[Math.floor(perRow.length * 0.95)] ?? 0) * 1000) / 1000 }, long_tasks_over_50ms: upd.longTasks,
  });
  await real.ctx.close();
}

for (const c of cleanups) c();
await browser.close();
