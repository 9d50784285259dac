// WHIP publish + WHEP watch with plain RTCPeerConnection and fetch (no SDK):
// what any standards-based encoder or player does. Usage:
//   node whip.mjs <base-url> <room> <publisher-token> <viewer-token>
// Prints one JSON line per check; exits non-zero on failure.
import { launch } from "./chromium.mjs";

const [base, room, pubToken, viewToken] = process.argv.slice(2);
const browser = await launch();
const fail = async (check, detail) => {
  console.log(JSON.stringify({ check, ok: false, ...detail }));
  await browser.close();
  process.exit(1);
};

async function page() {
  const p = await (await browser.newContext()).newPage();
  p.on("pageerror", (e) => console.error(e.message));
  await p.goto(`${base}/healthz`); // same origin, secure context (127.0.0.1)
  return p;
}

const publish = (p, token) => p.evaluate(async ({ room, token }) => {
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
  const pc = new RTCPeerConnection();
  for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: "sendonly", streams: [stream] });
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch(`/v1/rooms/${room}/whip`, {
    method: "POST",
    headers: { "content-type": "application/sdp", authorization: `Bearer ${token}` },
    body: pc.localDescription.sdp,
  });
  if (r.status !== 201) return { status: r.status, body: await r.text() };
  await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
  window.pc = pc;
  for (let i = 0; i < 100 && pc.connectionState !== "connected"; i++) await new Promise((ok) => setTimeout(ok, 100));
  return { status: 201, location: r.headers.get("location"), state: pc.connectionState };
}, { room, token });
const publisher = await page();
const pub = await publish(publisher, pubToken);
if (pub.status !== 201 || pub.state !== "connected") await fail("WHIP publish", pub);
console.log(JSON.stringify({ check: "WHIP publish", ok: true, ...pub }));

const watch = (p, token) => p.evaluate(async ({ room, token }) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch(`/v1/rooms/${room}/whep`, {
    method: "POST",
    headers: { "content-type": "application/sdp", authorization: `Bearer ${token}` },
    body: pc.localDescription.sdp,
  });
  if (r.status !== 201) return { status: r.status, body: await r.text() };
  await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
  window.viewerPc = pc;
  return { status: 201, location: r.headers.get("location") };
}, { room, token });
// Waits (≤ 30 s) for the WHEP viewer of page `p` to decode video and receive audio.
const media = (p) => p.evaluate(async () => {
  const pc = window.viewerPc;
  let frames = 0, audio = 0, videoPackets = 0, keyFrames = 0, nacks = 0, plis = 0, codec = null;
  for (let i = 0; i < 300 && (frames < 10 || audio < 10); i++) {
    await new Promise((ok) => setTimeout(ok, 100));
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        frames = s.framesDecoded || 0;
        videoPackets = s.packetsReceived || 0;
        keyFrames = s.keyFramesDecoded || 0;
        nacks = s.nackCount || 0;
        plis = s.pliCount || 0;
        codec = s.codecId || null;
      }
      if (s.type === "inbound-rtp" && s.kind === "audio") audio = s.packetsReceived || 0;
    });
  }
  return { frames, audio, videoPackets, keyFrames, nacks, plis, codec };
});
const viewer = await page();
const started = await watch(viewer, viewToken);
const view = { ...started, ...(started.status === 201 ? await media(viewer) : {}) };
if (view.status !== 201 || view.frames < 10 || view.audio < 10) await fail("WHEP watch", view);
console.log(JSON.stringify({ check: "WHEP watch", ok: true, ...view }));

// Ending: the owner deletes its session (200); a second delete finds nothing (404).
const del = async (p, location, token) => p.evaluate(async ({ location, token }) =>
  (await fetch(location, { method: "DELETE", headers: { authorization: `Bearer ${token}` } })).status, { location, token });
const first = await del(viewer, view.location, viewToken);
const again = await del(viewer, view.location, viewToken);
const other = await del(viewer, pub.location, "not-a-token");
if (first !== 200 || again !== 404 || other !== 401) await fail("DELETE", { first, again, other });
console.log(JSON.stringify({ check: "DELETE", ok: true }));
if ((await del(publisher, pub.location, pubToken)) !== 200) await fail("DELETE publisher", {});

// A viewer that comes before anyone publishes (WHEP has no renegotiation):
// the next publisher's tracks go into its waiting m-lines.
const early = await page();
const waiting = await watch(early, viewToken); // answered: the viewer is in, nothing to watch yet
const later = await publish(await page(), pubToken);
const lateView = { ...waiting, ...(waiting.status === 201 ? await media(early) : {}) };
if (later.status !== 201 || lateView.status !== 201 || lateView.frames < 10 || lateView.audio < 10) {
  await fail("WHEP viewer gets a later publisher", { later, lateView });
}
console.log(JSON.stringify({ check: "WHEP viewer gets a later publisher", ok: true, ...lateView }));
await browser.close();
