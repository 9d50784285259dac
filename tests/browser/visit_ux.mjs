// The visit page as a patient (phone) and a clinician (desktop) use it, in
// real Chromium, with screenshots of every state. Usage:
//   node visit_ux.mjs '{"base", "room", "conversation", "patient", "clinician",
//                       "interpreter", "expired", "open_room", "open_patient", "shots"}'
// `room` has a waiting room; the tokens are for it (`expired` has expired);
// `open_room` (same conversation) has none, with `open_patient` a patient
// token for it. Prints one JSON line per check and exits non-zero on the
// first failure. When it prints {"step":"append-sms"}, the driver
// (tests/visit_page.rs) appends an SMS to the conversation through the API;
// the clinician's context panel must show it.
import { launch } from "./chromium.mjs";
import fs from "node:fs";
import path from "node:path";

const cfg = JSON.parse(process.argv[2]);
const { base, room, conversation, shots } = cfg;
const [patientToken, clinicianToken, interpreterToken, expiredToken] = [cfg.patient, cfg.clinician, cfg.interpreter, cfg.expired];
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

async function open(name, device, token, { init, permissions, inRoom = room, before } = {}) {
  const ctx = await browser.newContext({ ...device, ...(permissions ? { permissions } : {}) });
  if (init) await ctx.addInitScript(init);
  if (before) await before(ctx);
  const page = await ctx.newPage();
  page.on("console", (m) => { if (m.type() === "error" && !/Failed to load resource|WebSocket/.test(m.text())) console.error(`[${name}] ${m.text()}`); });
  page.on("pageerror", (e) => console.error(`[${name}] ${e.message}`));
  await page.goto(`${base}/visit?room=${inRoom}&conversation=${conversation}#token=${encodeURIComponent(token)}`);
  return { name, page, ctx };
}

const shot = (peer, file) => peer.page.screenshot({ path: path.join(shots, file) });

// axe-core (npm) scans the page as it is now: WCAG 2 A/AA rules, and no
// serious or critical violation is allowed.
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

/** Waits until the (visible) text of `selector` contains every needle. */
function waitText(peer, selector, needles, timeout = TIMEOUT_MS) {
  return peer.page.waitForFunction(([sel, needles]) => {
    const t = document.querySelector(sel)?.innerText || "";
    return needles.every((n) => t.includes(n));
  }, [selector, [].concat(needles)], { timeout }).then(() => true, () => false);
}
const textOf = (peer, selector) => peer.page.evaluate((sel) => document.querySelector(sel)?.innerText || "", selector);
const screenIs = (peer, screen, reason) => peer.page.waitForFunction(([screen, reason]) =>
  document.body.dataset.screen === screen && (!reason || document.getElementById("screen-notice").dataset.reason === reason),
[screen, reason], { timeout: TIMEOUT_MS }).then(() => true, () => false);

/** Waits until `peer` decodes video from `remotes` others. */
async function decodes(peer, remotes) {
  return peer.page.waitForFunction(async (remotes) => {
    if (!window.visit?.pc) return false;
    const frames = [];
    (await window.visit.pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") frames.push(r.framesDecoded || 0); });
    return frames.filter((f) => f > 10).length >= remotes;
  }, remotes, { timeout: TIMEOUT_MS, polling: 250 }).then(() => true, () => false);
}

// ---------------------------------------------------------------------
// Links that cannot work, and a browser that refuses the camera: no call.
// ---------------------------------------------------------------------
const deny = () => {
  // A patient who tapped "Block" (or whose browser blocks the site).
  if (navigator.mediaDevices) {
    navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException("Permission denied", "NotAllowedError"));
  }
};
for (const [device, file, browserName] of [[PHONE, "patient-phone-denied.png", "Chrome on Android"], [DESKTOP, "patient-desktop-denied.png", "Chrome or Edge on a computer"]]) {
  const denied = await open("denied", device, patientToken, { init: deny, permissions: [] });
  const helped = await waitText(denied, "#device-msg", ["can't use your camera or microphone", `To allow it in ${browserName}`]);
  const join = await textOf(denied, "#join");
  const retry = await denied.page.locator("#retry-devices").isVisible();
  await shot(denied, file);
  report(`denied camera shows help and a way to continue (${device === PHONE ? "phone" : "desktop"})`,
    helped && /without camera or microphone/.test(join) && retry && (await denied.page.locator("#join").isEnabled()),
    { join, retry, help: (await textOf(denied, "#device-msg")).slice(0, 200) });
  await denied.ctx.close();
}

for (const [device, file] of [[PHONE, "patient-phone-invalid.png"], [DESKTOP, "patient-desktop-invalid.png"]]) {
  const bad = await open("bad-link", device, "garbage");
  const ok = (await screenIs(bad, "notice", "invalid")) && (await waitText(bad, "#screen-notice", ["not valid"]));
  await shot(bad, file);
  report(`a broken link says it is not valid (${device === PHONE ? "phone" : "desktop"})`, ok, { text: await textOf(bad, "#screen-notice") });
  await bad.ctx.close();
}

{
  const expired = await open("expired", PHONE, expiredToken);
  const ok = (await screenIs(expired, "notice", "expired")) &&
    (await waitText(expired, "#screen-notice", ["expired", "the front desk, +1 415 555 0100"]));
  await shot(expired, "patient-phone-expired.png");
await accessible(expired, "expired link (phone)");
  report("an expired link says so and who to contact", ok, { text: await textOf(expired, "#screen-notice") });
  await expired.ctx.close();
}

// ---------------------------------------------------------------------
// Networks that let the page load but not the call.
// ---------------------------------------------------------------------
{
  // Signaling (a WebSocket) refused on the way, e.g. by a filtering proxy.
  const blocked = await open("ws-blocked", PHONE, patientToken, { before: (ctx) => ctx.routeWebSocket(/\/v1\/rtc/, (ws) => ws.close()) });
  await blocked.page.click("#join");
  const ok = (await screenIs(blocked, "notice", "blocked")) &&
    (await waitText(blocked, "#screen-notice", ["We can't connect you", "mobile data"])) && (await blocked.page.locator("#retry").isVisible());
  await shot(blocked, "patient-phone-network-blocked.png");
  report("a network that blocks signaling says what to do", ok, { text: await textOf(blocked, "#screen-notice") });
  await blocked.ctx.close();
}
{
  // Signaling passes, media never does (no ICE candidate can reach the SFU).
  const noMedia = () => {
    const Native = window.RTCPeerConnection;
    const cut = (c) => ({ ...c, iceServers: [], iceTransportPolicy: "relay" });
    window.RTCPeerConnection = class extends Native {
      constructor(c = {}) { super(cut(c)); }
      setConfiguration(c) { return super.setConfiguration(cut(c)); }
    };
  };
  const stuck = await open("media-blocked", PHONE, cfg.open_patient, { init: noMedia, inRoom: cfg.open_room });
  await stuck.page.click("#join");
  const ok = await waitText(stuck, "#banner", ["Video can't get through this network", "Try mobile data"]);
  await shot(stuck, "patient-phone-media-blocked.png");
  report("a network that blocks media says what to do", ok, { banner: await textOf(stuck, "#banner"), status: await textOf(stuck, "#status") });
  await stuck.page.click("#leave");
  await stuck.ctx.close();
}

// ---------------------------------------------------------------------
// Patient (phone): pre-call check, then the waiting room.
// ---------------------------------------------------------------------
const patient = await open("patient", PHONE, patientToken);
const precall = (await screenIs(patient, "precall")) &&
  (await patient.page.locator("#join:not([disabled])").waitFor({ timeout: TIMEOUT_MS }).then(() => true, () => false));
const preview = await patient.page.waitForFunction(() => document.getElementById("preview").videoWidth > 0, null, { timeout: TIMEOUT_MS })
  .then(() => true, () => false);
await shot(patient, "patient-phone-precall.png");
await accessible(patient, "pre-call check (phone)");
report("patient sees the pre-call check", precall && preview, { join: await textOf(patient, "#join"), preview });

await patient.page.click("#join");
const waiting = (await waitText(patient, "#stage-notice", ["waiting room", "let you in shortly"])) &&
  (await patient.page.evaluate(() => window.visit.state === "waiting"));
await shot(patient, "patient-phone-waiting.png");
await accessible(patient, "waiting room (phone)");
report("patient waits in the waiting room", waiting, { notice: await textOf(patient, "#stage-notice") });

// ---------------------------------------------------------------------
// Clinician (desktop): alone, sees who waits, admits.
// ---------------------------------------------------------------------
const clinician = await open("clinician", DESKTOP, clinicianToken);
await clinician.page.click("#join");
const listed = await waitText(clinician, "#waiting-room", ["Waiting room (1)", "Ana Souza"]);
const alone = await waitText(clinician, "#stage-notice", ["Waiting for the patient", "Ana Souza is in the waiting room"]);
report("clinician alone sees waiting for the patient", alone, { notice: await textOf(clinician, "#stage-notice") });
await shot(clinician, "clinician-desktop-waiting-room.png");
report("clinician sees the patient in the waiting room", listed, { list: await textOf(clinician, "#waiting-room") });

await clinician.page.click("#waiting-list button.admit");
const both = (await decodes(patient, 1)) && (await decodes(clinician, 1));
report("admitted: patient and clinician decode each other", both, {});
const named = await waitText(clinician, "#stage .tile figcaption", ["Ana Souza", "Patient"]);
const namedBack = await waitText(patient, "#stage .tile figcaption", ["Dr. Maya Lee", "Clinician"]);
report("clinician's tile names the patient", named && namedBack, {
  clinicianSees: await textOf(clinician, "#stage .tile figcaption"), patientSees: await textOf(patient, "#stage .tile figcaption"),
});

// ---------------------------------------------------------------------
// The clinician's context panel, live.
// ---------------------------------------------------------------------
const context = (await waitText(clinician, "#context-panel", ["Ana Souza", "2 Apr 1980", "(415) 555-", "Rash follow-up"])) &&
  (await clinician.page.locator('#context-panel time[datetime="1980-04-02"]').count()) === 1;
report("context panel shows the patient", context, { panel: (await textOf(clinician, "#context-panel")).slice(0, 400) });
console.log(JSON.stringify({ step: "append-sms" }));
const sms = await waitText(clinician, "#ctx-timeline", ["SMS", "Running 5 min late"], 10000);
await shot(clinician, "clinician-desktop-call.png");
await accessible(clinician, "clinician in a call with the context panel (desktop)");
await shot(patient, "patient-phone-call.png");
await accessible(patient, "patient in a call (phone)");
report("context panel shows a new SMS live", sms, { timeline: (await textOf(clinician, "#ctx-timeline")).slice(0, 300) });

// ---------------------------------------------------------------------
// Chat: the patient writes from the drawer; the clinician sees who wrote.
// ---------------------------------------------------------------------
await patient.page.click("#chat-toggle");
await patient.page.fill("#text", "I can see you now");
await patient.page.press("#text", "Enter");
const chatted = await clinician.page.waitForFunction(() => [...document.querySelectorAll("#log .msg")].some((m) =>
  m.querySelector(".who")?.textContent === "Ana Souza" && m.textContent.includes("I can see you now") && m.querySelector("time")),
null, { timeout: TIMEOUT_MS }).then(() => true, () => false);
const ownShown = await waitText(patient, "#log", ["You", "I can see you now"]);
// System notices are not messages: they have a style of their own.
const notices = await clinician.page.evaluate(() => [...document.querySelectorAll("#log .notice")].map((n) => n.textContent));
await shot(patient, "patient-phone-chat.png");
report("clinician gets the patient's chat with the name", chatted && ownShown && notices.some((n) => n.includes("Ana Souza joined")), { notices });
// The clinician's chat is on screen (desktop): the patient sees it read.
const readTick = await patient.page.waitForFunction(() => [...document.querySelectorAll("#log .msg.mine")].some((m) =>
  m.textContent.includes("I can see you now") && m.dataset.state === "read" && m.querySelector(".state").textContent.includes("Read")),
null, { timeout: TIMEOUT_MS }).then(() => true, () => false);
report("the patient's message is ticked read once the clinician saw it", readTick, {});
// The clinician types: the patient sees who; the answer ends it, and is read.
await clinician.page.fill("#text", "Good, I can see you too");
const typing = await waitText(patient, "#typing", ["Dr. Maya Lee is typing"]);
await shot(patient, "patient-phone-chat-typing.png");
await clinician.page.press("#text", "Enter");
const answered = (await waitText(patient, "#log", ["Good, I can see you too"])) &&
  (await patient.page.waitForFunction(() => document.getElementById("typing").textContent === "", null, { timeout: 10000 }).then(() => true, () => false));
const answerRead = await clinician.page.waitForFunction(() => [...document.querySelectorAll("#log .msg.mine")].some((m) =>
  m.textContent.includes("Good, I can see you too") && m.dataset.state === "read"),
null, { timeout: TIMEOUT_MS }).then(() => true, () => false);
report("typing shows and the answer is ticked read", typing && answered && answerRead, { typing: await textOf(patient, "#typing") });
await patient.page.click("#chat-panel [data-close]");

// A third person (an interpreter, staff: no waiting room): a grid, where our
// own picture is a cell of its own rather than covering someone.
const interpreter = await open("interpreter", { viewport: { width: 640, height: 480 } }, interpreterToken);
await interpreter.page.click("#join");
const gridSeen = {
  clinicianDecodes: await decodes(clinician, 2),
  patientDecodes: await decodes(patient, 2),
  clinicianLabels: await waitText(clinician, "#stage", ["Ana Souza", "Luis Ortega (interpreter)", "Care team", "You"]),
  patientLabels: await waitText(patient, "#stage", ["Dr. Maya Lee", "Luis Ortega (interpreter)"]),
};
const grid = Object.values(gridSeen).every(Boolean);
const cells = await clinician.page.evaluate(() => ({
  tiles: document.querySelectorAll("#stage > .tile").length,
  selfInGrid: document.getElementById("self-tile").parentElement.id === "stage",
  columns: getComputedStyle(document.getElementById("stage")).gridTemplateColumns.split(" ").length,
}));
await shot(clinician, "clinician-desktop-grid.png");
await shot(patient, "patient-phone-grid.png");
report("three people: a labelled grid", grid && cells.tiles === 2 && cells.selfInGrid && cells.columns === 2, { ...cells, ...gridSeen });
await interpreter.page.click("#leave");
await interpreter.ctx.close();
const backToTwo = await clinician.page.waitForFunction(() => document.querySelectorAll("#stage > .tile").length === 1 &&
  document.getElementById("self-tile").parentElement.id !== "stage", null, { timeout: TIMEOUT_MS }).then(() => true, () => false);
report("the grid goes back to one tile when the interpreter leaves", backToTwo, {});

// The phone turned on its side.
await patient.page.setViewportSize({ width: 844, height: 390 });
await patient.page.waitForTimeout(300); // let the layout settle for the picture (nothing is checked)
await shot(patient, "patient-phone-landscape.png");
await patient.page.setViewportSize(PHONE.viewport);

// The connection drops (a network change): the page says so, and recovers.
await patient.page.evaluate(() => {
  window.banners = [];
  const b = document.getElementById("banner");
  new MutationObserver(() => { if (!b.hidden) window.banners.push(b.innerText); }).observe(b, { attributes: true, childList: true, subtree: true, characterData: true });
});
await patient.page.evaluate(() => window.visit.ws.close());
const recovered = await patient.page.waitForFunction(() => window.visit.state === "connected" && document.getElementById("banner").hidden &&
  window.banners.some((t) => t.includes("Reconnecting")), null, { timeout: TIMEOUT_MS }).then(() => true, () => false);
report("a dropped connection says reconnecting, then recovers", recovered && (await decodes(clinician, 1)),
  { banners: await patient.page.evaluate(() => window.banners), status: await textOf(patient, "#status") });

// ---------------------------------------------------------------------
// Leave, rejoin (no waiting room the second time).
// ---------------------------------------------------------------------
await patient.page.click("#leave");
const leftScreen = (await screenIs(patient, "notice", "left")) && (await patient.page.locator("#rejoin").isVisible());
const tracks = await patient.page.evaluate(() => window.visit.stream.getTracks().map((t) => `${t.kind}:${t.readyState}`));
const cameraOff = tracks.length === 2 && tracks.every((t) => t.endsWith(":ended"));
await shot(patient, "patient-phone-left.png");
report("patient leaves: end screen, camera and microphone off", leftScreen && cameraOff, { tracks });
const clinicianAloneAgain = await waitText(clinician, "#stage-notice", ["Waiting for the patient"]);
report("clinician is told the patient left", clinicianAloneAgain && (await waitText(clinician, "#log", ["Ana Souza left"])), {});

await patient.page.evaluate(() => {
  window.phases = [];
  new MutationObserver(() => window.phases.push(document.body.dataset.phase)).observe(document.body, { attributes: true, attributeFilter: ["data-phase"] });
});
await patient.page.click("#rejoin");
const back = await patient.page.waitForFunction(() => document.body.dataset.phase === "incall", null, { timeout: TIMEOUT_MS }).then(() => true, () => false);
const phases = await patient.page.evaluate(() => window.phases);
const backMedia = (await decodes(patient, 1)) && (await decodes(clinician, 1));
report("patient rejoins without waiting again", back && backMedia && !phases.includes("waiting"), { phases });

// The clinician steps out: the patient is told, in words, who they wait for.
await clinician.page.click("#leave");
const patientAlone = await waitText(patient, "#stage-notice", ["Waiting for the clinician"]);
await shot(patient, "patient-phone-alone.png");
report("patient alone sees waiting for the clinician", patientAlone, { notice: await textOf(patient, "#stage-notice") });
await clinician.page.click("#rejoin");
const reunited = (await decodes(clinician, 1)) && (await decodes(patient, 1));
report("clinician rejoins", reunited, {});

// ---------------------------------------------------------------------
// The clinician ends the visit for everyone.
// ---------------------------------------------------------------------
const late = await open("late", PHONE, patientToken); // the link opened again, on the pre-call screen
await late.page.locator("#join:not([disabled])").waitFor({ timeout: TIMEOUT_MS });

await clinician.page.click("#end-visit");
await clinician.page.locator("#confirm-end").waitFor({ state: "visible" });
await shot(clinician, "clinician-desktop-confirm-end.png");
await clinician.page.click("#confirm-end-yes");
const patientEnded = (await screenIs(patient, "notice", "ended")) &&
  (await waitText(patient, "#screen-notice", ["The visit has ended", "Dr. Maya Lee ended the visit"])) &&
  !(await patient.page.locator("#rejoin").isVisible());
const clinicianEnded = (await screenIs(clinician, "notice", "ended")) && (await waitText(clinician, "#screen-notice", ["You ended the visit for everyone"]));
const released = await patient.page.evaluate(() => window.visit.stream.getTracks().every((t) => t.readyState === "ended"));
await shot(patient, "patient-phone-ended.png");
await shot(clinician, "clinician-desktop-ended.png");
report("clinician ends the visit for everyone", patientEnded && clinicianEnded && released, {
  patient: await textOf(patient, "#screen-notice"), clinician: await textOf(clinician, "#screen-notice"),
});

await late.page.click("#join");
const lateEnded = (await screenIs(late, "notice", "ended")) && (await waitText(late, "#screen-notice", ["The visit has ended"]));
const reopened = await open("reopened", PHONE, patientToken);
const reopenedEnded = (await screenIs(reopened, "notice", "ended")) && (await waitText(reopened, "#screen-notice", ["The visit has ended"]));
report("a join after the end shows the visit ended", lateEnded && reopenedEnded, { late: await textOf(late, "#screen-notice") });

await browser.close();
