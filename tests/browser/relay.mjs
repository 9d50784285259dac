// Two Chromium peers that may use nothing but TURN (iceTransportPolicy
// "relay"), as behind a network that passes only TURN, over one transport at
// a time; or, with transport "any", peers with every candidate allowed on a
// network that drops UDP (run inside such a network namespace): ICE must find
// TURN over TCP by itself. Usage:
//   node relay.mjs <base-url> <room> <transport: udp|tcp|tls|any> <token-a> <token-b>
// Prints one JSON line per check; exits non-zero on the first failure.
import { launch } from "./chromium.mjs";

const [base, room, transport, ...tokens] = process.argv.slice(2);
const TIMEOUT_MS = 30000;
// turns: is served with a self-signed certificate in the test; off loopback
// the page is plain http, which browsers allow cameras only when told to.
const browser = await launch(["--ignore-certificate-errors", `--unsafely-treat-insecure-origin-as-secure=${base}`]);

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
  return page.evaluate(async ({ token, room, transport }) => {
    const { Visit } = await import("/sdk.js");
    const any = transport === "any";
    const visit = (window.visit = new Visit({ token, iceTransportPolicy: any ? "all" : "relay" }));
    // Keep only the TURN URL of the transport under test (the SDK creates its
    // peer connection from `welcome`'s servers right after this event).
    const wanted = { udp: /^turn:.*transport=udp/, tcp: /^turn:.*transport=tcp/, tls: /^turns:/, any: /./ }[transport];
    let offered = [];
    visit.addEventListener("welcome", () => {
      visit.iceServers = visit.iceServers
        .map((s) => ({ ...s, urls: [].concat(s.urls).filter((u) => wanted.test(u)) }))
        .filter((s) => s.urls.length);
      offered = visit.iceServers.flatMap((s) => s.urls);
    });
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 }, audio: true });
    const started = performance.now();
    const connected = new Promise((resolve) => {
      visit.addEventListener("state", ({ detail }) => { if (detail.state === "connected") resolve(performance.now() - started); });
    });
    await visit.join(room, stream, { simulcast: false });
    window.connectMs = await Promise.race([connected, new Promise((r) => setTimeout(() => r(null), 30000))]);
    return { offered, connectMs: window.connectMs };
  }, { token, room, transport });
}

// The pair ICE chose: our side's candidate type and how it reaches TURN.
async function path(page) {
  return page.evaluate(async () => {
    const stats = await window.visit.pc.getStats();
    let pair, local;
    stats.forEach((r) => { if (r.type === "transport" && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId); });
    if (pair) local = stats.get(pair.localCandidateId);
    let frames = 0;
    stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0; });
    return { type: local?.candidateType, relayProtocol: local?.relayProtocol, frames };
  });
}

const [a, b] = await Promise.all([join("A", tokens[0]), join("B", tokens[1])]);
const pages = browser.contexts().map((c) => c.pages()[0]);
if (transport !== "any") {
  report(`${transport}: only TURN ${transport} offered`, a.offered.length === 1 && b.offered.length === 1, { a: a.offered, b: b.offered });
}
report(`${transport}: both connect through the relay`, a.connectMs != null && b.connectMs != null, { connectMsA: a.connectMs, connectMsB: b.connectMs });

// With UDP dropped, TCP is what is left (no TLS listener in that test).
const protocol = { udp: "udp", tcp: "tcp", tls: "tls", any: "tcp" }[transport];
const deadline = Date.now() + TIMEOUT_MS;
let seen;
while (Date.now() < deadline) {
  seen = await Promise.all(pages.map(path));
  if (seen.every((p) => p.frames > 10)) break;
  await new Promise((r) => setTimeout(r, 250));
}
report(`${transport}: media flows over relay candidates`, seen.every((p) => p.type === "relay" && p.relayProtocol === protocol && p.frames > 10), {
  paths: seen, connectMsA: Math.round(a.connectMs), connectMsB: Math.round(b.connectMs),
});
await browser.close();
