// Drives real Chromium peers through /visit. Usage:
//   node visit.mjs <base-url> <room> <conversation> <token-a> <token-b> <token-c>
// Scenario: A and B join and must decode each other's video and receive audio;
// C joins and must decode both; B leaves. Prints one JSON line per check and
// exits non-zero on the first failure.
import { launch } from "./chromium.mjs";

const [base, room, conversation, ...tokens] = process.argv.slice(2);
const TIMEOUT_MS = 30000;

const browser = await launch();

function report(check, ok, detail) {
  console.log(JSON.stringify({ check, ok, ...detail }));
  if (!ok) {
    browser.close().finally(() => process.exit(1));
    throw new Error(`check failed: ${check}`);
  }
}

async function open(name, token) {
  const ctx = await browser.newContext();
  // Three browsers encoding 720p simulcast starve a 2-core runner of CPU
  // (seconds of jitter): capture 640 × 480 here, whatever the page asks for.
  await ctx.addInitScript(() => {
    const md = navigator.mediaDevices;
    const getUserMedia = md.getUserMedia.bind(md);
    md.getUserMedia = (c) => getUserMedia(c?.video ? { ...c, video: { ...(typeof c.video === "object" ? c.video : {}), width: { ideal: 640 }, height: { ideal: 480 } } } : c);
  });
  const page = await ctx.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.error(`[${name}] ${m.text()}`); });
  page.on("pageerror", (e) => console.error(`[${name}] ${e.message}`));
  const url = `${base}/visit?room=${room}&conversation=${conversation}#token=${encodeURIComponent(token)}`;
  await page.goto(url);
  // Past the pre-call check (camera and microphone preview): these rooms have no waiting room.
  await page.click("#join", { timeout: TIMEOUT_MS });
  return { name, page, ctx };
}

// Per remote stream: decoded video frames and received audio packets.
async function inbound(peer) {
  return peer.page.evaluate(async () => {
    if (!window.visit || !window.visit.pc) return { video: [], audio: [] };
    const stats = await window.visit.pc.getStats();
    const video = [], audio = [];
    stats.forEach((r) => {
      if (r.type !== "inbound-rtp") return;
      if (r.kind === "video") video.push(r.framesDecoded || 0);
      if (r.kind === "audio") audio.push(r.packetsReceived || 0);
    });
    return { video, audio, state: window.visit.state };
  });
}

// Waits until `peer` decodes video from `remotes` others and gets their audio.
async function waitForMedia(peer, remotes) {
  const deadline = Date.now() + TIMEOUT_MS;
  let last;
  while (Date.now() < deadline) {
    last = await inbound(peer);
    const decoding = last.video.filter((f) => f > 10).length;
    const hearing = last.audio.filter((p) => p > 10).length;
    if (decoding >= remotes && hearing >= remotes) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  report(`${peer.name} receives media from ${remotes}`, false, { last });
}

const a = await open("A", tokens[0]);
const b = await open("B", tokens[1]);
report("A decodes B", true, await waitForMedia(a, 1));
report("B decodes A", true, await waitForMedia(b, 1));

// Signaling fan-out: B mutes its microphone and A is told.
// Data channel: A's message reaches B through the SFU.
await b.page.evaluate(() => { window.gotData = []; window.visit.addEventListener("data", (e) => window.gotData.push(e.detail.data)); });
const sentOk = await a.page.evaluate(async () => {
  for (let i = 0; i < 100 && window.visit.channel.readyState !== "open"; i++) await new Promise((r) => setTimeout(r, 100));
  window.visit.sendData("vitals: HR 72");
  return window.visit.channel.readyState;
});
const got = await b.page.waitForFunction(() => window.gotData.includes("vitals: HR 72"), null, { timeout: TIMEOUT_MS }).then(() => true, () => false);
report("B gets A's data-channel message", got, { sentOk });

// ICE restart (what the SDK does after a network change): same seat, media flows on.
const idBefore = await a.page.evaluate(() => window.visit.participant);
const framesBefore = (await inbound(a)).video.reduce((x, y) => x + y, 0);
const ufragBefore = await a.page.evaluate(() => window.visit.pc.remoteDescription.sdp.match(/a=ice-ufrag:(\S+)/)[1]);
await a.page.evaluate(() => window.visit.restartIce());
let restarted = false, framesAfter = framesBefore, ufragAfter = ufragBefore;
for (const deadline = Date.now() + TIMEOUT_MS; Date.now() < deadline; ) {
  await new Promise((r) => setTimeout(r, 250));
  ufragAfter = await a.page.evaluate(() => window.visit.pc.remoteDescription.sdp.match(/a=ice-ufrag:(\S+)/)[1]);
  framesAfter = (await inbound(a)).video.reduce((x, y) => x + y, 0);
  const state = await a.page.evaluate(() => window.visit.pc.connectionState);
  if (ufragAfter !== ufragBefore && state === "connected" && framesAfter > framesBefore + 30) { restarted = true; break; }
}
const idAfter = await a.page.evaluate(() => window.visit.participant);
report("A restarts ICE and keeps its seat", restarted && idBefore === idAfter, { idBefore, idAfter, ufragBefore, ufragAfter, framesBefore, framesAfter });

// Simulcast: B sends several layers; A gets the layer it asks for (the SFU
// switches at a keyframe, rewriting numbers so A's decoder never notices).
async function videoWidth(peer) {
  return peer.page.evaluate(async () => {
    let w = 0;
    (await window.visit.pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") w = Math.max(w, r.frameWidth || 0); });
    return w;
  });
}
async function waitWidth(peer, ok) {
  let w = 0;
  for (const deadline = Date.now() + TIMEOUT_MS; Date.now() < deadline; ) {
    w = await videoWidth(peer);
    if (ok(w)) return { w, ok: true };
    await new Promise((r) => setTimeout(r, 250));
  }
  return { w, ok: false };
}
// The layers B sends: waited for, not sampled once (on a loaded machine
// Chromium starts the lower layers a moment after the first).
async function layersOf(peer) {
  return peer.page.evaluate(async () => {
    const rids = new Set();
    (await window.visit.pc.getStats()).forEach((r) => { if (r.type === "outbound-rtp" && r.kind === "video" && r.rid && r.bytesSent > 0) rids.add(r.rid); });
    return [...rids].sort();
  });
}
let layersSent = await layersOf(b);
for (const deadline = Date.now() + TIMEOUT_MS; layersSent.length < 2 && Date.now() < deadline; ) {
  await new Promise((r) => setTimeout(r, 250));
  layersSent = await layersOf(b);
}
await a.page.evaluate(() => window.visit.setVideoQuality("high"));
const high = await waitWidth(a, (w) => w >= 320);
// The lowest layer is at most half the capture's width (a quarter with three
// layers: the SDK sends only the layers the capture can fill).
const captureWidth = await b.page.evaluate(() => window.visit.stream.getVideoTracks()[0].getSettings().width);
await a.page.evaluate(() => window.visit.setVideoQuality("low"));
const low = await waitWidth(a, (w) => w > 0 && w <= captureWidth / 2);
const framesLow = (await inbound(a)).video.reduce((x, y) => x + y, 0);
await new Promise((r) => setTimeout(r, 1000));
const framesLowLater = (await inbound(a)).video.reduce((x, y) => x + y, 0);
// Going up also needs the bandwidth estimate to allow it, which a loaded CI
// machine's loopback may not (the up-switch is proven deterministically in
// crates/sfu/tests/simulcast.rs); asking for less must always work.
report("A gets the simulcast layer it asks for", layersSent.length >= 2 && low.ok && framesLowLater > framesLow + 5,
  { layersSent, captureWidth, widthHigh: high.w, upSwitchAllowedByBwe: high.ok, widthLow: low.w, framesLow, framesLowLater });

// Dynacast: A, B's only subscriber, shows B as a thumbnail, so the SFU asks
// B to stop encoding its upper layers (the lowest keeps running).
const encodings = await b.page.waitForFunction(() => {
  const t = window.visit.pc.getTransceivers().find((t) => t.sender?.track?.kind === "video");
  const enc = t?.sender.getParameters().encodings || [];
  const off = enc.filter((e) => e.active === false).length;
  return enc.length > 1 && off >= 1 && enc[0].active !== false && enc.map((e) => `${e.rid}:${e.active}`);
}, null, { timeout: TIMEOUT_MS }).then((h) => h.jsonValue(), () => null);
report("B stops sending the layers nobody takes", encodings !== null, { encodings });
await a.page.evaluate(() => window.visit.setVideoQuality("high"));

// Room notices: A knows B's tracks and ratings (its own too). Subscriptions:
// A goes audio-only (B's frames stop while B's audio goes on), then back.
const bId = await b.page.evaluate(() => window.visit.participant);
const known = await a.page.waitForFunction((bId) => {
  const v = window.visit;
  const tracks = [...v.tracks.values()].filter((t) => t.participant === bId).map((t) => t.kind).sort();
  return tracks.join() === "audio,video" && v.quality.has(v.participant) &&
    { tracks, ratings: [...v.quality.values()].map((q) => `${q.participant}:${q.rating}`) };
}, bId, { timeout: TIMEOUT_MS }).then((h) => h.jsonValue(), () => null);
const frames = async () => (await inbound(a)).video.reduce((x, y) => x + y, 0);
const audioPackets = async () => (await inbound(a)).audio.reduce((x, y) => x + y, 0);
await a.page.click("#audio-only"); // the page's button: unsubscribes everyone's video
// Stopped: the frame count holds still over a whole second.
let stopped = false, held = 0;
for (const deadline = Date.now() + TIMEOUT_MS; Date.now() < deadline && !stopped; ) {
  const f0 = await frames(), a0 = await audioPackets();
  await new Promise((r) => setTimeout(r, 1000));
  held = (await frames()) - f0;
  stopped = held === 0 && (await audioPackets()) > a0 + 20;
}
const framesOff = await frames();
await a.page.click("#audio-only"); // and back
let resumed = false;
for (const deadline = Date.now() + TIMEOUT_MS; Date.now() < deadline && !resumed; ) {
  resumed = (await frames()) > framesOff + 10;
  if (!resumed) await new Promise((r) => setTimeout(r, 250));
}
report("A unsubscribes from B's video and back", known !== null && stopped && resumed,
  { known, stopped, resumed, framesOff, framesNow: await frames() });

// Signaling reconnect: A's WebSocket drops (as on a network change); the SDK
// takes the same seat back on a new connection and restarts ICE.
await a.page.evaluate(() => { window.resumes = 0; window.visit.addEventListener("resumed", () => window.resumes++); });
const seatBefore = await a.page.evaluate(() => window.visit.participant);
await a.page.evaluate(() => window.visit.ws.close());
const resumedSeat = await a.page.waitForFunction(() => window.resumes >= 1 && window.visit.state === "connected" && window.visit.ws.readyState === 1,
  null, { timeout: TIMEOUT_MS }).then(() => true, () => false);
const framesAfterResume = await frames();
let flowing = false;
for (const deadline = Date.now() + TIMEOUT_MS; Date.now() < deadline && !flowing; ) {
  flowing = (await frames()) > framesAfterResume + 30;
  if (!flowing) await new Promise((r) => setTimeout(r, 250));
}
const seatAfter = await a.page.evaluate(() => window.visit.participant);
report("A's signaling drops and it resumes its seat", resumedSeat && flowing && seatBefore === seatAfter,
  { resumedSeat, flowing, seatBefore, seatAfter, state: await a.page.evaluate(() => window.visit.state) });

// Active speaker: Chromium's fake microphone beeps; someone becomes the speaker.
const speaker = await a.page.waitForFunction(() => window.visit.speaker !== undefined, null, { timeout: TIMEOUT_MS })
  .then(() => a.page.evaluate(() => window.visit.speaker), () => undefined);
report("A is told the active speaker", speaker !== undefined, { speaker });

await b.page.click("#mute-audio");
const told = await a.page.waitForFunction(
  () => [...document.querySelectorAll("#log .notice")].some((p) => p.textContent.includes("muted their microphone")),
  null, { timeout: TIMEOUT_MS },
).then(() => true, () => false);
report("A is told B muted", told, {});
await b.page.click("#mute-audio");

const c = await open("C", tokens[2]);
report("C decodes A and B", true, await waitForMedia(c, 2));
report("A decodes B and C", true, await waitForMedia(a, 2));

await b.page.click("#leave");
await b.ctx.close();
// A keeps receiving C after B left: decoded frames keep growing.
const total = async () => (await inbound(a)).video.reduce((x, y) => x + y, 0);
const before = await total();
let after = before;
for (const deadline = Date.now() + TIMEOUT_MS; after < before + 30 && Date.now() < deadline; ) {
  await new Promise((r) => setTimeout(r, 250));
  after = await total();
}
report("A still decodes after B left", after >= before + 30, { before, after });

await a.page.click("#leave");
await c.page.click("#leave");
await browser.close();
