// The patient chat page (/chat) between visits, in real Chromium, against a
// clinician on the chat WebSocket (driven by tests/chat.rs, which answers
// what the page sends: delivered at once, typing, read, a reply). Usage:
//   node chat.mjs '{"base", "conversation", "patient", "expired", "shots"}'
// `patient` is a patient token for the conversation, `expired` one that has
// run out. Screenshots of every state land in `shots`. Prints one JSON line
// per check and exits non-zero on the first failure.
import { launch } from "./chromium.mjs";
import fs from "node:fs";
import path from "node:path";

const cfg = JSON.parse(process.argv[2]);
const { base, conversation, shots } = cfg;
const TIMEOUT_MS = 30000;
fs.mkdirSync(shots, { recursive: true });

const PHONE = {
  viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 1,
  userAgent: "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Mobile Safari/537.36",
};
const DESKTOP = { viewport: { width: 1280, height: 800 } };

const browser = await launch();
const started = Date.now();
function report(check, ok, detail = {}) {
  console.log(JSON.stringify({ check, ok, ...detail, at_s: (Date.now() - started) / 1000 }));
  if (!ok) {
    browser.close().finally(() => process.exit(1));
    throw new Error(`check failed: ${check}`);
  }
}

/**
 * Opens the chat link. The chat WebSocket goes through a route the test
 * controls: `net.mode` "pass" (a proxy to the server), "refuse" (closed at
 * once: no network) or "swallow" (the page's chat messages never reach the
 * server: a send without an answer).
 */
async function open(name, device, token, { conv = conversation, query = "" } = {}) {
  const ctx = await browser.newContext(device);
  const net = { mode: "pass" };
  await ctx.routeWebSocket(/\/chat\?/, (ws) => {
    if (net.mode === "refuse") {
      ws.close({ code: 1011, reason: "offline" });
      return;
    }
    const server = ws.connectToServer();
    ws.onMessage((m) => {
      if (net.mode === "swallow" && JSON.parse(m).type === "chat") return;
      server.send(m);
    });
    server.onMessage((m) => ws.send(m));
  });
  const page = await ctx.newPage();
  page.on("console", (m) => { if (m.type() === "error" && !/Failed to load resource|WebSocket/.test(m.text())) console.error(`[${name}] ${m.text()}`); });
  page.on("pageerror", (e) => console.error(`[${name}] ${e.message}`));
  await page.goto(`${base}/chat?conversation=${conv}${query}#token=${encodeURIComponent(token)}`);
  return { name, page, ctx, net };
}

const shot = (peer, file) => peer.page.screenshot({ path: path.join(shots, file) });

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

function waitText(peer, selector, needles, timeout = TIMEOUT_MS) {
  return peer.page.waitForFunction(([sel, needles]) => {
    const t = document.querySelector(sel)?.innerText || "";
    return needles.every((n) => t.includes(n));
  }, [selector, [].concat(needles)], { timeout }).then(() => true, () => false);
}
const textOf = (peer, selector) => peer.page.evaluate((sel) => document.querySelector(sel)?.innerText || "", selector);

/** Waits until our message with `body` is in one of `states`; returns its state line. */
function ownState(peer, body, states, timeout = TIMEOUT_MS) {
  return peer.page.waitForFunction(([body, states]) => {
    const m = [...document.querySelectorAll("#log .msg.mine")].find((el) => el.querySelector("p")?.textContent === body);
    return m && states.includes(m.dataset.state) ? `${m.dataset.state}|${m.dataset.seq || ""}|${m.querySelector(".state").innerText}` : false;
  }, [body, states], { timeout }).then((h) => h.jsonValue(), () => null);
}

async function write(peer, text) {
  await peer.page.fill("#text", text);
  await peer.page.press("#text", "Enter");
}

const connected = (peer) => peer.page.waitForFunction(() => document.body.dataset.conn === "open", null, { timeout: TIMEOUT_MS }).then(() => true, () => false);

// ---------------------------------------------------------------------
// A patient on a phone: history, a message with its ticks, the clinician
// typing and answering.
// ---------------------------------------------------------------------
const ana = await open("patient-phone", PHONE, cfg.patient, { query: "&send_timeout_ms=4000" });
{
  const ok = (await connected(ana)) &&
    (await waitText(ana, "#log", ["Please send a photo of the rash if it changes.", "Dr. Maya Lee", "Ok, will do", "SMS"]));
  const log = await textOf(ana, "#log");
  report("history shows chat and texts, never notes (phone)", ok && !log.includes("internal") && !log.includes("biopsy"),
    { log: log.slice(0, 400), title: await textOf(ana, "#title") });
}
await write(ana, "Hello from the chat page");
{
  const s = await ownState(ana, "Hello from the chat page", ["sent", "delivered", "read"]);
  report("own message is acked: Sent", !!s && /\|\d+\|/.test(s), { state: s });
}
{
  const s = await ownState(ana, "Hello from the chat page", ["delivered"]);
  report("delivered tick", !!s && s.includes("Delivered"), { state: s });
}
report("clinician typing shows", await waitText(ana, "#typing", ["Dr. Maya Lee is typing"]), { typing: await textOf(ana, "#typing") });
{
  const s = await ownState(ana, "Hello from the chat page", ["read"]);
  report("read tick", !!s && s.includes("Read"), { state: s });
}
{
  const ok = await waitText(ana, "#log", ["Thanks, Ana. Is the rash spreading?"]);
  // The reply ends the typing indicator.
  const cleared = await ana.page.waitForFunction(() => document.getElementById("typing").textContent === "", null, { timeout: 10000 }).then(() => true, () => false);
  await shot(ana, "chat-phone.png");
  report("reply arrives and is read", ok && cleared, { typing: await textOf(ana, "#typing") });
}
await accessible(ana, "chat (phone)");

// ---------------------------------------------------------------------
// Offline: said in words; a message written meanwhile waits, then goes.
// ---------------------------------------------------------------------
ana.net.mode = "refuse";
await ana.ctx.setOffline(true);
{
  const offline = await ana.page.waitForFunction(() => document.body.dataset.conn === "offline", null, { timeout: TIMEOUT_MS }).then(() => true, () => false);
  await write(ana, "Sent while offline");
  const s = await ownState(ana, "Sent while offline", ["queued"]);
  const bannerText = await textOf(ana, "#banner");
  await shot(ana, "chat-phone-offline.png");
  report("offline is said and the message waits", offline && !!s && s.includes("waiting for a connection") && bannerText.includes("offline"),
    { state: s, banner: bannerText, status: await textOf(ana, "#status") });
}
ana.net.mode = "pass";
await ana.ctx.setOffline(false);
{
  const s = await ownState(ana, "Sent while offline", ["sent", "delivered", "read"]);
  const back = await connected(ana);
  report("reconnected: the waiting message is sent", !!s && back && (await ana.page.locator("#banner").isHidden()), { state: s });
}

// ---------------------------------------------------------------------
// A send that gets no answer: failed, with a retry that works.
// ---------------------------------------------------------------------
ana.net.mode = "swallow";
await write(ana, "Retry me");
{
  const s = await ownState(ana, "Retry me", ["failed"], 20000);
  const retry = ana.page.locator("#log .msg.mine[data-state=failed] button.retry");
  const visible = await retry.isVisible().catch(() => false);
  await shot(ana, "chat-phone-failed.png");
  report("a send without an answer offers a retry", !!s && s.includes("Not sent") && visible, { state: s });
  ana.net.mode = "pass";
  await retry.click();
  const sent = await ownState(ana, "Retry me", ["sent", "delivered", "read"]);
  report("retry sends it", !!sent, { state: sent });
}
await ownState(ana, "Retry me", ["read"], 10000);

// ---------------------------------------------------------------------
// The same link on a computer: the whole conversation, ticks included.
// ---------------------------------------------------------------------
{
  const desk = await open("patient-desktop", DESKTOP, cfg.patient);
  const ok = (await connected(desk)) &&
    (await waitText(desk, "#log", ["Please send a photo", "Hello from the chat page", "Thanks, Ana. Is the rash spreading?", "Sent while offline", "Retry me"]));
  const read = await ownState(desk, "Hello from the chat page", ["read"]);
  await desk.page.fill("#text", "Typing on a computer");
  await shot(desk, "chat-desktop.png");
  report("desktop shows the conversation", ok && !!read, { read });
  await accessible(desk, "chat (desktop)");
  await desk.ctx.close();
}
await ana.ctx.close();

// ---------------------------------------------------------------------
// Links that do not work: each says why and what to do.
// ---------------------------------------------------------------------
{
  const old = await open("expired", PHONE, cfg.expired);
  const ok = await waitText(old, "#screen-notice", ["expired", "the front desk, +1 415 555 0100"]);
  await shot(old, "chat-phone-expired.png");
  report("an expired link says so and who to contact", ok && (await old.page.evaluate(() => document.body.dataset.screen)) === "notice",
    { text: await textOf(old, "#screen-notice") });
  await old.ctx.close();
}
{
  const bad = await open("broken", PHONE, "garbage");
  const ok = await waitText(bad, "#screen-notice", ["not valid"]);
  await shot(bad, "chat-phone-invalid.png");
  report("a broken link says it is not valid", ok, { text: await textOf(bad, "#screen-notice") });
  await bad.ctx.close();
}
{
  const wrong = await open("wrong", PHONE, cfg.patient, { conv: "01a00000-0000-7000-8000-000000000000" });
  const ok = await waitText(wrong, "#screen-notice", ["not valid for these messages"]);
  report("a link for another conversation says so", ok, { text: await textOf(wrong, "#screen-notice") });
  await wrong.ctx.close();
}

await browser.close();
