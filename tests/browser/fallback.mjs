// PSTN fallback end to end, in real Chromium: a clinician (fake microphone
// playing a 1000 Hz tone) and a patient are in a video visit; the patient's
// browser is killed (SIGKILL: no goodbye on any socket); the clinician's page
// must say the patient moved to phone, with what was just discussed; then the
// phone's audio (baresip playing 440 Hz) must reach the clinician's page
// through the room (WebAudio analyser on the received track). Usage:
//   node fallback.mjs <base> <room> <conversation> <clinician-token> <patient-token> <tone.wav> <shots-dir>
// Prints one JSON line per check (and `cut_at`, epoch ms); exits non-zero on the first failure.
import { launch, launchKillable } from "./chromium.mjs";

const [base, room, conversation, drToken, patToken, tone, shots] = process.argv.slice(2);
const TIMEOUT_MS = 45000;
const clinicianBrowser = await launch([`--use-file-for-fake-audio-capture=${tone}`]);
const { browser: patientBrowser, kill: killPatient } = await launchKillable();

function report(check, ok, detail = {}) {
  console.log(JSON.stringify({ check, ok, ...detail }));
  if (!ok) {
    Promise.allSettled([clinicianBrowser.close()]).finally(() => { try { killPatient(); } catch (_) {} process.exit(1); });
    throw new Error(`check failed: ${check}`);
  }
}

async function open(browser, name, token, viewport) {
  const page = await (await browser.newContext({ viewport })).newPage();
  page.on("pageerror", (e) => console.error(`[${name}] ${e.message}`));
  await page.goto(`${base}/visit?room=${room}&conversation=${conversation}#token=${encodeURIComponent(token)}`);
  await page.click("#join", { timeout: TIMEOUT_MS });
  return page;
}

const dr = await open(clinicianBrowser, "clinician", drToken, { width: 1280, height: 800 });
const patient = await open(patientBrowser, "patient", patToken, { width: 390, height: 844 });
const connected = (page) => page.waitForFunction(() => window.visit?.state === "connected", null, { timeout: TIMEOUT_MS }).then(() => true, () => false);
report("both connected", (await connected(dr)) && (await connected(patient)));
// Each hears the other before the cut.
const hearsOthers = (page) => page.waitForFunction(async () => {
  const stats = await window.visit.pc.getStats();
  let packets = 0;
  stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "audio") packets += r.packetsReceived || 0; });
  return packets > 50;
}, null, { timeout: TIMEOUT_MS, polling: 500 }).then(() => true, () => false);
report("the clinician hears the patient by video", await hearsOthers(dr));

// The cut: the patient's browser dies.
const cutAt = Date.now();
console.log(JSON.stringify({ cut_at: cutAt }));
killPatient();

const moved = await dr.waitForFunction(() => document.querySelector("#banner:not([hidden]) #banner-text")?.textContent.includes("Patient moved to phone"), null, { timeout: TIMEOUT_MS })
  .then(() => true, () => false);
const bannerText = await dr.textContent("#banner-text").catch(() => "");
report("the clinician's page says the patient moved to phone", moved, { banner: bannerText, after_ms: Date.now() - cutAt });
const summary = await dr.textContent(".phone-switch").catch(() => "");
report("with what was just discussed", summary.includes("last 5 minutes") && summary.includes("rash"), { summary });
await dr.screenshot({ path: `${shots}/fallback-clinician-desktop.png` });

// The phone joins the room: its audio (440 Hz from baresip) reaches the page.
const heard = await dr.evaluate(async (TIMEOUT_MS) => {
  const deadline = Date.now() + TIMEOUT_MS;
  const ctx = new AudioContext();
  while (Date.now() < deadline) {
    // Every live audio track: the dead patient's is silent now, the phone's carries 440 Hz.
    for (const r of window.visit.pc.getReceivers()) {
      if (!r.track || r.track.kind !== "audio" || r.track.readyState !== "live") continue;
      const src = ctx.createMediaStreamSource(new MediaStream([r.track]));
      const an = ctx.createAnalyser();
      an.fftSize = 4096;
      src.connect(an);
      await new Promise((res) => setTimeout(res, 700));
      const bins = new Float32Array(an.frequencyBinCount);
      an.getFloatFrequencyData(bins);
      src.disconnect();
      const hz = (i) => (i * ctx.sampleRate) / an.fftSize;
      let peak = 0;
      for (let i = 1; i < bins.length; i++) if (bins[i] > bins[peak]) peak = i;
      const at440 = bins[Math.round((440 * an.fftSize) / ctx.sampleRate)];
      if (Math.abs(hz(peak) - 440) < 15 && at440 > -70) return { ok: true, peak_hz: Math.round(hz(peak)), db: Math.round(at440), ms: Date.now() };
    }
    await new Promise((res) => setTimeout(res, 300));
  }
  return { ok: false };
}, TIMEOUT_MS);
report("the phone's 440 Hz reaches the clinician through the room", heard.ok, { ...heard, after_cut_ms: heard.ms ? heard.ms - cutAt : null });
const tile = await dr.waitForSelector(".tile .phone-badge", { timeout: 10000 }).then(() => true, () => false);
report("the phone participant has a phone badge", tile);
await dr.screenshot({ path: `${shots}/fallback-clinician-phone.png` });
await dr.setViewportSize({ width: 390, height: 844 });
await dr.screenshot({ path: `${shots}/fallback-clinician-phone-390.png` });
// Keep talking for a few seconds: baresip records the clinician's 1000 Hz.
await new Promise((res) => setTimeout(res, 4000));
report("done", true);
await clinicianBrowser.close();
process.exit(0);
