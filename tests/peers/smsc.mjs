// An SMSC stand-in for crates/smpp's tests, on the npm package `smpp`
// (node-smpp, a third-party SMPP implementation with a server side).
//
//   node tests/peers/smsc.mjs [--port 0] [--system-id esme] [--password secret]
//        [--reject-binds N] [--throttle 2,5] [--drop-after N --drop-hold K]
//        [--receipts both|tlv|text|none]
//
// Prints one JSON object per line on stdout: {"event":"listening","port":N}
// first, then every PDU it receives ({"event":"pdu","command":...} with the
// fields node-smpp decoded, `udh`: the UDH's information elements as node-smpp
// lists them (hex, e.g. 0003 ref total seq, without the UDH length octet),
// and the text node-smpp decoded by data_coding), and what it sends on its
// own ({"event":"sent",...}).
//
// - bind_transceiver: checks system_id and password (ESME_RINVPASWD if
//   wrong); the first --reject-binds binds get ESME_RBINDFAIL anyway.
// - submit_sm: answered with a new message_id, or ESME_RTHROTTLED for the
//   Nth submits listed in --throttle (counted from 1 over the whole run);
//   with registered_delivery, a delivery receipt follows (deliver_sm,
//   esm_class 0x04, Appendix B text and/or the receipted_message_id and
//   message_state TLVs). Destinations starting with 999 get stat:UNDELIV.
// - --drop-after N --drop-hold K: answer N submits, then hold (never answer)
//   the next ones and destroy the connection once K are held. Once.
//
// Commands on stdin, one JSON object per line:
//   {"cmd":"mo","from":"15557654321","to":"12345","text":"hi","coding":"gsm"|"ucs2","parts":1,"reverse":false}
//       a handset message on the latest bound session; parts > 1 sends it
//       concatenated (UDH 05 00 03 ref total seq), reverse sends the parts
//       last first.
//   {"cmd":"throttle","next":K}        throttle the next K submits
//   {"cmd":"drop","after":N,"hold":K}  as --drop-after/--drop-hold
//   {"cmd":"mute"}                     sessions open now answer nothing more
//   {"cmd":"enquire_link"}             send enquire_link on the latest session
// The process exits when stdin closes.
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';

const require = createRequire(new URL('../browser/package.json', import.meta.url));
const smpp = require('smpp');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const port = Number(opt('port', '0'));
const systemId = opt('system-id', 'esme');
const password = opt('password', 'secret');
let rejectBinds = Number(opt('reject-binds', '0'));
const throttleAt = new Set(String(opt('throttle', '')).split(',').filter(Boolean).map(Number));
const receipts = opt('receipts', 'both');
let drop = opt('drop-after', null) === null
  ? null
  : { after: Number(opt('drop-after')), hold: Number(opt('drop-hold', '1')), answered: 0, held: 0 };

const log = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const hex = (b) => Buffer.from(b).toString('hex');

let submits = 0;
let nextId = 0x1000;
let nextSession = 0;
let latest = null;
const live = new Set();

// node-smpp decodes short_message to {udh: [Buffer], message: string}.
function textOf(sm) {
  if (sm === undefined || sm === null) return { text: null, udh: [] };
  if (Buffer.isBuffer(sm)) return { text: sm.toString('latin1'), udh: [] };
  return { text: typeof sm.message === 'string' ? sm.message : hex(sm.message), udh: (sm.udh || []).map(hex) };
}

function smsDate(d = new Date()) {
  const p = (n) => String(n).padStart(2, '0');
  return `${p(d.getUTCFullYear() % 100)}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}`;
}

function sendReceipt(session, sub, messageId, text) {
  const failed = String(sub.destination_addr).startsWith('999');
  const stat = failed ? 'UNDELIV' : 'DELIVRD';
  const date = smsDate();
  const snippet = (text || '').replace(/[^ -~]/g, '?').slice(0, 20);
  const body = `id:${messageId} sub:001 dlvrd:${failed ? '000' : '001'} submit date:${date} done date:${date} stat:${stat} err:${failed ? '001' : '000'} text:${snippet}`;
  const fields = {
    source_addr: sub.destination_addr,
    dest_addr_ton: sub.source_addr_ton,
    dest_addr_npi: sub.source_addr_npi,
    destination_addr: sub.source_addr,
    esm_class: 0x04,
    data_coding: 0,
    short_message: receipts === 'tlv' ? Buffer.alloc(0) : Buffer.from(body, 'ascii'),
  };
  if (receipts === 'both' || receipts === 'tlv') {
    fields.receipted_message_id = messageId;
    fields.message_state = failed ? 5 : 2;
  }
  session.deliver_sm(fields, (resp) => log({ event: 'pdu', session: session.id, command: resp.command, command_status: resp.command_status, sequence_number: resp.sequence_number }));
  log({ event: 'sent', session: session.id, command: 'deliver_sm', kind: 'receipt', message_id: messageId, stat });
}

function sendMo(c) {
  const session = latest;
  if (!session) {
    log({ event: 'error', message: 'mo: no bound session' });
    return;
  }
  const dataCoding = c.coding === 'ucs2' ? 8 : 0;
  const chars = Array.from(c.text);
  const parts = Math.max(1, c.parts || 1);
  const ref = Math.floor(Math.random() * 256);
  const pdus = [];
  for (let i = 0; i < parts; i++) {
    const chunk = chars.slice(Math.floor((i * chars.length) / parts), Math.floor(((i + 1) * chars.length) / parts)).join('');
    const short_message = parts === 1 ? chunk : { udh: Buffer.from([5, 0, 3, ref, parts, i + 1]), message: chunk };
    pdus.push({ source_addr: c.from, source_addr_ton: 1, source_addr_npi: 1, destination_addr: c.to, data_coding: dataCoding, short_message });
  }
  if (c.reverse) pdus.reverse();
  for (const fields of pdus) {
    session.deliver_sm(fields, (resp) => log({ event: 'pdu', session: session.id, command: resp.command, command_status: resp.command_status, sequence_number: resp.sequence_number }));
  }
  log({ event: 'sent', session: session.id, command: 'deliver_sm', kind: 'mo', parts });
}

const server = smpp.createServer((session) => {
  session.id = ++nextSession;
  session.muted = false;
  session.bound = false;
  live.add(session);
  log({ event: 'connect', session: session.id });
  session.on('error', (e) => log({ event: 'error', session: session.id, message: String(e && e.message) }));
  session.on('close', () => {
    live.delete(session);
    if (latest === session) latest = null;
    log({ event: 'close', session: session.id });
  });

  session.on('pdu', (pdu) => {
    if (pdu.command === 'submit_sm' || pdu.command.endsWith('_resp')) return; // logged where handled
    const rec = { event: 'pdu', session: session.id, command: pdu.command, command_status: pdu.command_status, sequence_number: pdu.sequence_number };
    if (pdu.command === 'bind_transceiver') Object.assign(rec, { system_id: pdu.system_id, password: pdu.password, interface_version: pdu.interface_version });
    log(rec);
    if (pdu.command === 'unknown' && !session.muted) session.send(pdu.response());
  });

  session.on('bind_transceiver', (pdu) => {
    let status = 0;
    if (pdu.system_id !== systemId || pdu.password !== password) status = smpp.ESME_RINVPASWD;
    else if (rejectBinds > 0) {
      rejectBinds--;
      status = smpp.ESME_RBINDFAIL;
    }
    session.send(pdu.response({ command_status: status, system_id: 'standin' }));
    log({ event: 'sent', session: session.id, command: 'bind_transceiver_resp', command_status: status });
    if (status) {
      session.close();
      return;
    }
    session.bound = true;
    latest = session;
  });

  session.on('enquire_link', (pdu) => {
    if (!session.muted) session.send(pdu.response());
  });

  session.on('unbind', (pdu) => {
    session.send(pdu.response());
    session.close();
  });

  session.on('submit_sm', (pdu) => {
    const n = ++submits;
    const { text, udh } = textOf(pdu.short_message);
    const rec = {
      event: 'pdu', session: session.id, command: 'submit_sm', n, at: Date.now(),
      sequence_number: pdu.sequence_number,
      source_addr: pdu.source_addr, source_addr_ton: pdu.source_addr_ton, source_addr_npi: pdu.source_addr_npi,
      destination_addr: pdu.destination_addr, dest_addr_ton: pdu.dest_addr_ton, dest_addr_npi: pdu.dest_addr_npi,
      esm_class: pdu.esm_class, data_coding: pdu.data_coding, registered_delivery: pdu.registered_delivery,
      udh, text,
    };
    if (session.muted) {
      log({ ...rec, answer: 'muted' });
      return;
    }
    if (drop && drop.answered >= drop.after) {
      drop.held++;
      log({ ...rec, answer: 'held' });
      if (drop.held >= drop.hold) {
        drop = null;
        log({ event: 'dropped', session: session.id });
        session.destroy();
      }
      return;
    }
    if (throttleAt.has(n)) {
      log({ ...rec, answer: 'throttled' });
      session.send(pdu.response({ command_status: smpp.ESME_RTHROTTLED }));
      return;
    }
    const messageId = (nextId++).toString(16);
    if (drop) drop.answered++;
    log({ ...rec, answer: 'ok', message_id: messageId });
    session.send(pdu.response({ message_id: messageId }), () => {
      if ((pdu.registered_delivery & 0x03) && receipts !== 'none') sendReceipt(session, pdu, messageId, text);
    });
  });
});

server.on('error', (e) => {
  log({ event: 'error', message: String(e && e.message) });
  process.exit(1);
});

server.listen(port, '127.0.0.1', () => {
  log({ event: 'listening', port: server.address().port });
});

createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  let c;
  try {
    c = JSON.parse(line);
  } catch (e) {
    log({ event: 'error', message: `bad command: ${line}` });
    return;
  }
  switch (c.cmd) {
    case 'mo':
      sendMo(c);
      break;
    case 'throttle':
      for (let i = 1; i <= (c.next || 1); i++) throttleAt.add(submits + i);
      break;
    case 'drop':
      drop = { after: c.after || 0, hold: c.hold || 1, answered: 0, held: 0 };
      break;
    case 'mute':
      for (const s of live) s.muted = true;
      break;
    case 'enquire_link':
      if (latest) latest.enquire_link((resp) => log({ event: 'pdu', session: latest && latest.id, command: resp.command, command_status: resp.command_status }));
      break;
    default:
      log({ event: 'error', message: `unknown command: ${c.cmd}` });
  }
  log({ event: 'ok', cmd: c.cmd });
}).on('close', () => process.exit(0));
