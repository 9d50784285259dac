// A participant that never answers the SFU's renegotiation offer is
// disconnected after rtc.answer_timeout_secs. Usage:
//   node silent.mjs <base-url> <room> <conversation> <token-silent> <token-other>
import { launch } from "./chromium.mjs";

const [base, room, conversation, silentToken, otherToken] = process.argv.slice(2);
const browser = await launch();
const open = async (token) => {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${base}/visit?room=${room}&conversation=${conversation}#token=${encodeURIComponent(token)}`);
  await page.click("#join", { timeout: 30000 }); // past the pre-call check
  return page;
};
const silent = await open(silentToken);
await silent.waitForFunction(() => window.visit && window.visit.state === "connected", null, { timeout: 30000 });
// From now on it reads signaling but never answers.
await silent.evaluate(() => {
  window.seen = [];
  window.visit._onSignal = (msg) => window.seen.push(msg.type);
});
await open(otherToken);
const ok = await silent.waitForFunction(() => window.seen.includes("offer") && window.seen.includes("left"), null, { timeout: 30000 })
  .then(() => true, () => false);
const seen = await silent.evaluate(() => window.seen);
console.log(JSON.stringify({ check: "silent participant is disconnected", ok, seen }));
await browser.close();
process.exit(ok ? 0 : 1);
