// A 1:1 visit on a good network must reach the top simulcast layer: the
// viewer's decoded frame width (getStats), not just "frames decoded". Usage:
//   node quality.mjs <base-url> <room> <capture-height> <token-a> <token-b>
// Prints one JSON line per check; exits non-zero on the first failure.
import { launch } from "./chromium.mjs";

const [base, room, height, ...tokens] = process.argv.slice(2);
const TIMEOUT_MS = 60000;
const browser = await launch();

function report(check, ok, detail) {
  console.log(JSON.stringify({ check, ok, ...detail }));
  if (!ok) {
    browser.close().finally(() => process.exit(1));
    throw new Error(`check failed: ${check}`);
  }
}

async function join(name, token) {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => console.error(`[${name}] ${e.message}`));
  await page.goto(`${base}/healthz`); // any page of the origin, to import the SDK from
  const sent = await page.evaluate(async ({ token, room, height }) => {
    const { Visit, CAMERA } = await import("/sdk.js");
    const video = height === 720 ? CAMERA : { width: { exact: (height * 4) / 3 }, height: { exact: height } };
    const stream = await navigator.mediaDevices.getUserMedia({ video, audio: true });
    const visit = (window.visit = new Visit({ token }));
    await visit.join(room, stream);
    const sender = visit.pc.getSenders().find((s) => s.track?.kind === "video");
    const { width: w, height: h } = stream.getVideoTracks()[0].getSettings();
    return { capture: `${w}x${h}`, width: w, rids: sender.getParameters().encodings.map((e) => e.rid || "-") };
  }, { token, room, height: Number(height) });
  return { name, page, sent };
}

// What this peer sends per layer, and why it is limited (for the report).
const sending = (page) => page.evaluate(async () => {
  const stats = await window.visit.pc.getStats();
  const out = [];
  let bwe;
  stats.forEach((r) => {
    if (r.type === "outbound-rtp" && r.kind === "video") out.push(`${r.rid}:${r.frameWidth || 0}w:${Math.round((r.bytesSent || 0) / 1000)}kB:${r.qualityLimitationReason}`);
    if (r.type === "candidate-pair" && r.nominated && r.availableOutgoingBitrate) bwe = Math.round(r.availableOutgoingBitrate / 1000);
  });
  return { layers: out.sort(), outgoingBweKbps: bwe };
});

// The widest video frame this peer decodes now.
const width = (page) => page.evaluate(async () => {
  const stats = await window.visit.pc.getStats();
  let w = 0, frames = 0;
  stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") { w = Math.max(w, r.frameWidth || 0); frames += r.framesDecoded || 0; } });
  return { w, frames };
});

const [a, b] = await Promise.all([join("A", tokens[0]), join("B", tokens[1])]);
report(`${height}p: sends the layers the capture can fill`, a.sent.rids.length === (Number(height) >= 540 ? 3 : 2), { a: a.sent, b: b.sent });

const deadline = Date.now() + TIMEOUT_MS;
const started = Date.now();
let seen = [];
while (Date.now() < deadline) {
  seen = await Promise.all([width(a.page), width(b.page)]);
  if (seen[0].w >= b.sent.width && seen[1].w >= a.sent.width) break;
  await new Promise((r) => setTimeout(r, 250));
}
report(`${height}p: each receives the other's top layer`, seen[0].w >= b.sent.width && seen[1].w >= a.sent.width, {
  receivedWidth: seen.map((s) => s.w), sentWidth: [a.sent.width, b.sent.width], afterMs: Date.now() - started,
  sending: await Promise.all([sending(a.page), sending(b.page)]),
});
await browser.close();
