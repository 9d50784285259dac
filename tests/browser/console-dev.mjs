// tests/console.rs by hand, without cargo: starts a prebuilt `continuum`
// binary the way tests/common/sipp.rs voice_server_with does (SIP gateway
// on loopback, private trunks allowed, a small RTP range; the console read
// from web/console on disk), seeds it like tests/console.rs (four patients,
// a Twilio provider pointing at a stand-in here, the nurse queue, the agent
// profile, a one-node IVR flow, an inbound route, the caller's patient with
// an earlier chat message), runs console.mjs against it with baresip as the
// caller, then checks what the browser did landed on the server and that
// the phone's recording holds the nurse's 1000 Hz. Usage:
//   node tests/browser/console-dev.mjs [path/to/continuum] [--no-perf]
// (default binary: $CONTINUUM_BIN, else /work/console-bin/continuum; it is
// copied to a temporary folder first). Screenshots: target/screenshots/console/.
import { spawn, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { launch } from "./chromium.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const args = process.argv.slice(2);
const binArg = args.find((a) => !a.startsWith("--")) || process.env.CONTINUUM_BIN || "/work/console-bin/continuum";
const work = fs.mkdtempSync(path.join(os.tmpdir(), "console-dev-"));
const bin = path.join(work, "continuum");
fs.copyFileSync(binArg, bin);
fs.chmodSync(bin, 0o755);
const CLINIC = "+14155559999";
const TWILIO_TOKEN = "twilio-auth-token-for-tests";
const CLINIC_LINE = "+14155550300";
const CALLER = { name: "Maria Lopez", phone: "+14155550131", earlier: "My fever is 39.4 °C since last night and the cough is worse." };
const children = [];
const bye = (code) => {
  for (const c of children) { try { c.kill("SIGTERM"); } catch { /* gone */ } }
  // The binary copy is large; the logs and recordings stay in `work`.
  try { fs.rmSync(bin); } catch { /* gone */ }
  process.exit(code);
};
const freePort = () => 20000 + Math.floor(Math.random() * 20000);

// --- the server ---------------------------------------------------------
const rtp = freePort() & ~1;
const env = {
  ...process.env,
  CONTINUUM_LOG: "warn,continuum_server::voice=info",
  CONTINUUM_WEBHOOKS__ALLOW_PRIVATE_TARGETS: "true",
  CONTINUUM_WEBHOOKS__ALLOW_HTTP_HOSTS: '["127.0.0.1", "localhost"]',
  CONTINUUM_RTC__UDP_LISTEN: "127.0.0.1:0", CONTINUUM_TURN__UDP_LISTEN: "127.0.0.1:0", CONTINUUM_TURN__TCP_LISTEN: "127.0.0.1:0",
  CONTINUUM_SIP__UDP_LISTEN: "127.0.0.1:0", CONTINUUM_SIP__TCP_LISTEN: "127.0.0.1:0",
  CONTINUUM_SIP__ALLOW_PRIVATE_TRUNKS: "true", CONTINUUM_SIP__RTP_PORT_MIN: String(rtp), CONTINUUM_SIP__RTP_PORT_MAX: String(rtp + 19),
  CONTINUUM_SIP__TRUNK_KEEPALIVE_SECS: "0",
  CONTINUUM_MESSAGING__ALLOW_PRIVATE_PROVIDERS: "true", CONTINUUM_MESSAGING__ALLOW_HTTP_HOSTS: '["127.0.0.1"]',
  CONTINUUM_MESSAGING__BACKOFF_BASE_MS: "50", CONTINUUM_MESSAGING__BACKOFF_MAX_SECS: "1",
  CONTINUUM_DEV__CONSOLE_DIR: path.join(root, "web/console"),
};
const logFile = path.join(work, "server.log");
const server = spawn(bin, ["serve", "--listen", "127.0.0.1:0", "--data-dir", path.join(work, "data")], { env, stdio: ["ignore", "pipe", fs.openSync(logFile, "w")] });
children.push(server);
const { base, key } = await new Promise((resolve, reject) => {
  let out = "", k = null;
  const t = setTimeout(() => reject(new Error(`no listen address in 30 s:\n${out}`)), 30000);
  server.stdout.on("data", (d) => {
    out += d;
    k ||= /export CONTINUUM_KEY=(\S+)/.exec(out)?.[1];
    const m = /Continuum listening on (\S+)/.exec(out);
    if (m) { clearTimeout(t); resolve({ base: m[1], key: k }); }
  });
});
const sip = Number(/SIP gateway listening udp=Some\([\d.]+:(\d+)\)/.exec(fs.readFileSync(logFile, "utf8"))?.[1]);
console.error(`server ${base}, SIP ${sip}, work ${work}`);

async function call(method, p, token, body, type = "application/json") {
  const r = await fetch(base + p, { method, headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { "content-type": type } : {}) }, body: body === undefined ? undefined : type === "application/json" ? JSON.stringify(body) : body });
  const text = await r.text();
  return { status: r.status, body: text ? (() => { try { return JSON.parse(text); } catch { return text; } })() : null };
}
async function ok(method, p, token, body, type) {
  const r = await call(method, p, token, body, type);
  if (r.status >= 300) { console.error(`${method} ${p} → ${r.status} ${JSON.stringify(r.body)}`); bye(1); }
  return r.body;
}

// --- a Twilio stand-in (what the SMS reply goes to) ----------------------
const sent = [];
const standIn = http.createServer((req, res) => {
  let body = "";
  req.on("data", (d) => { body += d; });
  req.on("end", () => {
    sent.push(Object.fromEntries(new URLSearchParams(body)));
    res.writeHead(201, { "content-type": "application/json" });
    res.end(JSON.stringify({ sid: `SM${String(sent.length).padStart(32, "0")}`, status: "queued" }));
  });
});
await new Promise((r) => standIn.listen(0, "127.0.0.1", r));
const standInBase = `http://127.0.0.1:${standIn.address().port}`;
/** Twilio's request signature: HMAC-SHA1 over the URL and the sorted parameters. */
const twilioSignature = (url, params) => crypto.createHmac("sha1", TWILIO_TOKEN)
  .update(url + [...params].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => k + v).join("")).digest("base64");
async function postSigned(url, params) {
  const r = await fetch(url, { method: "POST", headers: { "x-twilio-signature": twilioSignature(url, params), "content-type": "application/x-www-form-urlencoded" }, body: new URLSearchParams(params) });
  return r.status;
}

// --- seeding, as tests/console.rs ---------------------------------------
const provider = await ok("POST", "/v1/messaging/providers", key, {
  name: "twilio", kind: "twilio", priority: 1, channels: ["sms", "whatsapp"], senders: [CLINIC],
  spec: { account_sid: "AC0123", base_url: standInBase }, credentials: { auth_token: TWILIO_TOKEN },
});
const inboundUrl = provider.inbound_url;
async function patient(name, phone, subject) {
  const c = await ok("POST", "/v1/contacts", key, { display_name: name, phone, whatsapp: phone });
  const cv = await ok("POST", "/v1/conversations", key, { contact_id: c.id, subject });
  return [c.id, cv.id];
}
const append = (conv, body) => ok("POST", `/v1/conversations/${conv}/events`, key, body);
const [, ana] = await patient("Ana Souza", "+14155550142", "Rash follow-up");
const [benContact, ben] = await patient("Ben Okafor", "+14155550143", "Medication question");
const [, chloe] = await patient("Chloé Martin", "+14155550144", "Post-op check");
const [devContact, dev] = await patient("Dev Patel", "+14155550145", "Chest pain callback");
await append(ana, { channel: "ivr", kind: "ivr.input", body: "1", meta: { menu: "main", digit: "1", label: "Nurse line" }, actor: { type: "system" } });
await append(ana, { channel: "ivr", kind: "triage.result", body: "Urgent: same-day callback", meta: { level: "urgent", disposition: "nurse callback" }, actor: { type: "bot", id: "triage" } });
await append(ana, { channel: "voice", kind: "call.started", meta: { session_id: "s1", direction: "inbound" }, actor: { type: "system" } });
await append(ana, { channel: "voice", kind: "call.ended", meta: { session_id: "s1", direction: "inbound", duration_secs: 134 }, actor: { type: "system" } });
await append(ana, { channel: "voice", kind: "channel.switched", meta: { from: "voice", to: "sms", reason: "patient asked to text" }, actor: { type: "system" } });
const sms = (body, sid, from = "+14155550142") => [["From", from], ["To", CLINIC], ["Body", body], ["MessageSid", sid], ["AccountSid", "AC0123"], ["NumMedia", "0"]];
if ((await postSigned(inboundUrl, sms("Hi, the rash is spreading to my arm. Should I come in?", "SM00000000000000000000000000000001"))) !== 200) bye(1);
const anaPatient = (await ok("POST", "/v1/tokens", key, { identity: "patient-ana", role: "patient", grants: { conversations: [ana] } })).token;
{
  // A photo of a rash, as a phone would send it (a JPEG drawn by Chromium).
  const b = await launch();
  const pg = await b.newPage({ viewport: { width: 240, height: 180 } });
  await pg.setContent(`<body style="margin:0;background:#e0ac8c"><div style="position:absolute;left:60px;top:30px;width:120px;height:120px;border-radius:50%;background:radial-gradient(#c84646,#d9826e 70%,transparent)"></div></body>`);
  const jpeg = await pg.screenshot({ type: "jpeg", quality: 85 });
  await b.close();
  const r = await call("POST", `/v1/conversations/${ana}/attachments?filename=rash.jpg`, anaPatient, jpeg, "image/jpeg");
  if (r.status !== 201) { console.error("attachment", r); bye(1); }
}
await ok("POST", `/v1/conversations/${ana}/queue`, key, { queue: "nurse-line" });
await append(ben, { channel: "whatsapp", kind: "consent.granted", body: "Agreed to WhatsApp messages", meta: { channel: "whatsapp" }, actor: { type: "patient", id: benContact } });
await append(ben, { channel: "chat", kind: "message", body: "Can I take ibuprofen with my new prescription?", actor: { type: "patient", id: benContact } });
await ok("POST", `/v1/conversations/${ben}/queue`, key, { queue: "pharmacy" });
await append(chloe, { channel: "video", kind: "call.started", meta: { session_id: "r1" }, actor: { type: "system" } });
await append(chloe, { channel: "video", kind: "call.ended", meta: { session_id: "r1", duration_secs: 620 }, actor: { type: "system" } });
await append(chloe, { channel: "video", kind: "note", body: "Wound healing well. Review in 2 weeks.", actor: { type: "staff", id: "dr-lee" } });
await ok("POST", `/v1/conversations/${chloe}/assign`, key, { assignee: "nurse-kim" });
if ((await postSigned(inboundUrl, sms("STOP", "SM00000000000000000000000000000002", "+14155550145"))) !== 200) bye(1);
await append(dev, { channel: "voice", kind: "callback.requested", body: "Please call after 3pm", actor: { type: "patient", id: devContact } });

const all = { conversations: ["*"], rooms: ["*"], contacts: ["*"] };
const staff = (await ok("POST", "/v1/tokens", key, { identity: "nurse-kim", role: "clinician", name: "Kim Park, RN", ttl_seconds: 3600, grants: all })).token;
const admin = (await ok("POST", "/v1/tokens", key, { identity: "lead-ortiz", role: "admin", name: "Sam Ortiz", ttl_seconds: 3600 })).token;
const old = await ok("POST", "/v1/tokens", key, { identity: "old-nurse", role: "clinician", ttl_seconds: 600 });
await ok("POST", "/v1/tokens/revoke", key, { jti: old.jti });

// The phone line: the nurse queue, Joy's agent profile, a one-node flow, the route.
await ok("PUT", "/v1/queues/nurse", key, { skills: ["triage"], reservation_timeout_secs: 60, wrap_up_secs: 20 });
await ok("PUT", "/v1/agents/nurse-joy", key, { display_name: "Joy Adams, RN", skills: ["triage"] });
await ok("PUT", "/v1/ivr/flows/nurse-line", key,
  'name: nurse-line\nstart: q\nnodes:\n  q:\n    say: "Connecting you to a nurse."\n    queue: { name: nurse, priority: 10, triage: urgent_symptoms }\n', "application/yaml");
await ok("POST", "/v1/sip/trunks", key, { name: `carrier ${CLINIC_LINE}`, direction: "inbound", numbers: [CLINIC_LINE], allowed_sources: ["127.0.0.1/32"] });
await ok("POST", "/v1/sip/dispatch-rules", key, { number: CLINIC_LINE, action: { type: "ivr", flow: "nurse-line" } });
const [callerContact, callerConv] = await patient(CALLER.name, CALLER.phone, "Fever and cough");
await append(callerConv, { channel: "chat", kind: "message", body: CALLER.earlier, actor: { type: "patient", id: callerContact } });
const joy = (await ok("POST", "/v1/tokens", key, { identity: "nurse-joy", role: "clinician", name: "Joy Adams, RN", ttl_seconds: 3600, grants: all })).token;

// The caller's phone: baresip playing 440 Hz (8 kHz), recording what it hears.
const peers = path.join(work, "peers");
const conf = path.join(peers, "baresip");
const rec = path.join(peers, "rec");
fs.mkdirSync(conf, { recursive: true });
const tone = (file, hz, rate) => spawnSync("sox", ["-n", "-r", String(rate), "-c", "1", "-b", "16", "-e", "signed-integer", file, "synth", "600", "sine", String(hz), "vol", "0.5"]);
tone(path.join(peers, "tone440.wav"), 440, 8000);
tone(path.join(peers, "tone1000.wav"), 1000, 48000);
fs.writeFileSync(path.join(conf, "config"), `sip_listen 127.0.0.1:${freePort()}\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\nmodule sndfile.so\nmodule account.so\nmodule menu.so\naudio_source aufile,${path.join(peers, "tone440.wav")}\naudio_player aufile,/dev/null\naudio_alert aufile,/dev/null\nsnd_path ${rec}\n`);
fs.writeFileSync(path.join(conf, "accounts"), `<sip:${CALLER.phone}@127.0.0.1>;regint=0\n`);
fs.writeFileSync(path.join(conf, "contacts"), "");

const live = sms("It is itchy now and a bit swollen, photo coming.", "SM00000000000000000000000000000009");
const shots = path.join(root, "target/screenshots/console");
const cfg = {
  base, staff, admin, api_key: key, revoked: old.token,
  conv: { id: ana, name: "Ana Souza" }, opted_out: { id: dev, name: "Dev Patel" },
  names: ["Ana Souza", "Ben Okafor", "Chloé Martin", "Dev Patel"], attachment: "rash.jpg",
  inbound: { url: inboundUrl, params: live, signature: twilioSignature(inboundUrl, live), body: live[2][1] },
  agent: { token: joy, name: "Joy Adams, RN" }, tone: path.join(peers, "tone1000.wav"),
  caller: { cmd: "baresip", args: ["-f", conf, "-e", `/dial sip:${CLINIC_LINE}@127.0.0.1:${sip}`, "-t", "900"], log: path.join(peers, "baresip.log"), rec, ...CALLER },
  shots, perf: !args.includes("--no-perf"), perf_real: args.includes("--no-perf") ? 0 : 300,
};
fs.writeFileSync(path.join(work, "cfg.json"), JSON.stringify(cfg));
const run = spawn("node", [path.join(here, "console.mjs"), JSON.stringify(cfg)], { stdio: "inherit" });
const code = await new Promise((r) => run.on("exit", r));
if (code !== 0) { console.error(`console.mjs failed (${code}); server log ${logFile}`); bye(code || 1); }

// What the browser did landed on the server (as tests/console.rs asserts).
const failures = [];
if (!sent.some((r) => r.Body === "Thanks Ana. Please send a photo of your arm today." && r.To === "+14155550142")) failures.push(`the SMS reply: ${JSON.stringify(sent)}`);
const att = (await ok("GET", `/v1/attachments?conversation=${ana}`, key))[0];
if (att?.review !== "reviewed" || att?.reviewed_by !== "nurse-kim") failures.push(`attachment review: ${JSON.stringify(att)}`);
const calls = await ok("GET", `/v1/conversations/${callerConv}/calls`, key);
if (!calls.some((c) => c.state === "ended" && c.direction === "inbound")) failures.push(`the call ended: ${JSON.stringify(calls)}`);
const conv = await ok("GET", `/v1/conversations/${callerConv}`, key);
if (conv.assignee !== "nurse-joy") failures.push(`assigned to nurse-joy: ${JSON.stringify(conv)}`);
console.log(JSON.stringify({ dev_check: "server side", ok: failures.length === 0, failures, calls: calls.map((c) => ({ state: c.state, cause: c.cause })) }));
bye(failures.length ? 1 : 0);
