// Two Chromium peers join one room, each through a different node of a
// cluster, are redirected to the media node that hosts it, and see each
// other. Then the test kills that media node (kill -9): both must come back
// by themselves, on another media node, with video flowing again. Usage:
//   node cluster.mjs <home-url-a> <home-url-b> <room> <token-a> <token-b>
// Prints one JSON line per check; `{"check":"joined",...,"node":...}` is the
// test's cue to kill that node. Exits non-zero on the first failure.
import { launch } from "./chromium.mjs";

const [baseA, baseB, room, ...tokens] = process.argv.slice(2);
const browser = await launch();

function report(check, ok, detail) {
  console.log(JSON.stringify({ check, ok, ...detail }));
  if (!ok) {
    browser.close().finally(() => process.exit(1));
    throw new Error(`check failed: ${check}`);
  }
}

async function join(name, base, token) {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => console.error(`[${name}] ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") console.error(`[${name}] ${m.text()}`); });
  await page.goto(`${base}/healthz`); // any page of the home origin, to import the SDK from
  await page.evaluate(async ({ token, room }) => {
    const { Visit } = await import("/sdk.js");
    const visit = (window.visit = new Visit({ token }));
    window.nodes = [];
    visit.addEventListener("redirected", (e) => window.nodes.push(e.detail.node));
    visit.addEventListener("state", ({ detail }) => {
      if (detail.state === "reconnecting" && window.lostAt == null) window.lostAt = performance.now();
    });
    visit.addEventListener("rejoined", () => { window.rejoinedAt = performance.now(); });
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 }, audio: true });
    await visit.join(room, stream, { simulcast: false });
  }, { token, room });
  return page;
}

// Video frames decoded from others on the current peer connection.
async function frames(page) {
  return page.evaluate(async () => {
    if (!window.visit.pc) return 0;
    const stats = await window.visit.pc.getStats();
    let n = 0;
    stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") n += r.framesDecoded || 0; });
    return n;
  });
}

async function waitForVideo(pages, what, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let seen = [];
  while (Date.now() < deadline) {
    seen = await Promise.all(pages.map(frames));
    if (seen.every((n) => n > 10)) return seen;
    await new Promise((r) => setTimeout(r, 100));
  }
  report(what, false, { frames: seen });
}

const pages = await Promise.all([join("A", baseA, tokens[0]), join("B", baseB, tokens[1])]);
const nodes = await Promise.all(pages.map((p) => p.evaluate(() => window.nodes)));
const hosts = nodes.map((n) => n[n.length - 1]);
report("both redirected to one media node", hosts[0] && hosts[0] === hosts[1], { nodes });
const frames1 = await waitForVideo(pages, "each sees the other", 30000);
report("each sees the other", true, { frames: frames1 });
report("joined", true, { node: hosts[0] });

// The test kills that node now. Both notice, rejoin through the home node,
// and get video again on a new peer connection.
const started = Date.now();
const deadline = started + 60000;
while (Date.now() < deadline) {
  const back = await Promise.all(pages.map((p) => p.evaluate(() => window.rejoinedAt != null)));
  if (back.every(Boolean)) break;
  await new Promise((r) => setTimeout(r, 100));
}
const after = await Promise.all(pages.map((p) => p.evaluate(() => ({ nodes: window.nodes, lostAt: window.lostAt, rejoinedAt: window.rejoinedAt }))));
report("both rejoined", after.every((a) => a.rejoinedAt != null), { after });
const moved = after.map((a) => a.nodes[a.nodes.length - 1]);
report("moved to another media node", moved[0] === moved[1] && moved[0] !== hosts[0], { from: hosts[0], to: moved });
const frames2 = await waitForVideo(pages, "video flows again", 30000);
const flowingAt = await Promise.all(pages.map((p) => p.evaluate(() => performance.now())));
report("video flows again", true, {
  frames: frames2,
  // From noticing the loss (the signaling socket closing) to rejoined, and to video again.
  rejoinMs: after.map((a) => Math.round(a.rejoinedAt - a.lostAt)),
  videoMs: after.map((a, i) => Math.round(flowingAt[i] - a.lostAt)),
});
console.log(JSON.stringify({ check: "recovered", ok: true }));
await browser.close();
