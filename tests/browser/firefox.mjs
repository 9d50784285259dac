// Firefox (Debian's firefox-esr, driven over WebDriver BiDi by puppeteer-core)
// as the patient and Chromium as the clinician: each must decode the other's
// video, Firefox publishing simulcast. Usage:
//   node firefox.mjs <base-url> <room> <token-firefox> <token-chromium>
// Prints one JSON line per check; exits non-zero on the first failure.
import puppeteer from "puppeteer-core";
import { launch } from "./chromium.mjs";

const [base, room, ffToken, crToken] = process.argv.slice(2);
const TIMEOUT_MS = 40000;

const firefox = await puppeteer.launch({
  browser: "firefox",
  executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
  headless: true,
  extraPrefsFirefox: {
    "media.navigator.streams.fake": true,
    "media.navigator.permission.disabled": true,
    "media.peerconnection.ice.loopback": true,
    "media.peerconnection.ice.obfuscate_host_addresses": false,
  },
});
const chromium = await launch();

async function close() {
  await Promise.allSettled([firefox.close(), chromium.close()]);
}

function report(check, ok, detail) {
  console.log(JSON.stringify({ check, ok, ...detail }));
  if (!ok) {
    close().finally(() => process.exit(1));
    throw new Error(`check failed: ${check}`);
  }
}

// Joins from a page of the origin (to import the SDK); returns what is sent.
async function join(page, token) {
  await page.goto(`${base}/healthz`);
  return page.evaluate(async ({ token, room, height }) => {
    const { Visit, CAMERA } = await import("/sdk.js");
    const video = height ? { width: { ideal: (height * 4) / 3 }, height: { ideal: height } } : CAMERA;
    const stream = await navigator.mediaDevices.getUserMedia({ video, audio: true });
    const visit = (window.visit = new Visit({ token }));
    await visit.join(room, stream);
    const sender = visit.pc.getSenders().find((s) => s.track?.kind === "video");
    const settings = stream.getVideoTracks()[0].getSettings();
    return { capture: `${settings.width}x${settings.height}`, encodings: sender.getParameters().encodings.map((e) => e.rid || "-") };
  }, { token, room, height: Number(process.env.CAPTURE_HEIGHT || 0) });
}

const stats = (page) => page.evaluate(async () => {
  const s = await window.visit.pc.getStats();
  let frames = 0, width = 0, audio = 0;
  s.forEach((r) => {
    if (r.type !== "inbound-rtp") return;
    if (r.kind === "video") { frames += r.framesDecoded || 0; width = Math.max(width, r.frameWidth || 0); }
    if (r.kind === "audio") audio += r.packetsReceived || 0;
  });
  return { frames, width, audio, state: window.visit.pc.connectionState };
});

const ffPage = await firefox.newPage();
ffPage.on("pageerror", (e) => console.error(`[firefox] ${e.message}`));
const crPage = await (await chromium.newContext()).newPage();
// The clinician is there first, as in a visit; the patient joins, publishing
// into a room that already has a subscriber for its tracks.
const crSent = await join(crPage, crToken);
const ffSent = await join(ffPage, ffToken);
report("firefox joins and publishes simulcast", ffSent.encodings.length >= 2, { firefox: ffSent, chromium: crSent });

const deadline = Date.now() + TIMEOUT_MS;
let ff, cr;
while (Date.now() < deadline) {
  [ff, cr] = await Promise.all([stats(ffPage), stats(crPage)]);
  if (ff.frames > 10 && cr.frames > 10 && ff.audio > 10 && cr.audio > 10) break;
  await new Promise((r) => setTimeout(r, 250));
}
report("firefox decodes chromium", ff.frames > 10 && ff.audio > 10, { firefox: ff });
report("chromium decodes firefox", cr.frames > 10 && cr.audio > 10, { chromium: cr });
await close();
