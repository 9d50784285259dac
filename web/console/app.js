// Continuum staff console: one ES module, no framework, no build step.
//
// Sections, in order:
//   1. helpers      DOM building (text always as text), formatting, icons
//   2. auth         sign-in providers (an access token today; OIDC plugs in
//                   as another provider) and the session in sessionStorage
//   3. api          every HTTP call and every response shape, mapped in ONE
//                   place (`map`); errors in words; live streams (SSE)
//   4. shell        router (#/inbox, #/c/ID, #/c/ID/context, #/supervisor),
//                   banner, announcements
//   5. inbox        store (Map by conversation id, rAF-batched patches) and
//                   a virtualized list (only visible rows exist)
//   6. conversation timeline across channels, composer, actions
//   7. context      the context panel and attachment review
//   8. agent        availability, incoming reservations (the offer dialog)
//   9. call         the active call (WebRTC audio through /sdk.js) and its bar
//  10. supervisor   queues and agents, live, with a small SVG chart
//  11. boot         start-up, metrics (window.__consoleMetrics), test hooks
//
// Server endpoints that may not exist yet (/v1/me, /v1/inbox, agents,
// reservations, tasks, routing) answer 404 "no such route" on older servers:
// `ApiError.unavailable` is true then, and each feature says in words that
// it is not available on this server instead of breaking.

// =====================================================================
// 1. helpers
// =====================================================================

const $ = (id) => document.getElementById(id);

/** Builds an element. Strings become text nodes, never HTML. */
function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) if (c != null && c !== false) e.append(c);
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function icon(name, cls = "icon") {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", cls);
  const use = document.createElementNS(SVG, "use");
  use.setAttribute("href", "#i-" + name);
  svg.append(use);
  return svg;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const dayTimeFmt = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", hour: "numeric", minute: "2-digit" });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** "10:42" today, "2 Apr, 10:42" otherwise. */
function when(at) {
  if (!at) return "";
  const d = new Date(at);
  if (Number.isNaN(d.getTime())) return "";
  const now = new Date();
  return d.toDateString() === now.toDateString() ? timeFmt.format(d) : dayTimeFmt.format(d);
}

/** "45 s", "12 min", "2 h 5 min", "3 d". */
function duration(secs) {
  secs = Math.max(0, Math.round(secs));
  if (secs < 60) return `${secs} s`;
  const m = Math.floor(secs / 60);
  if (m < 60) return `${m} min`;
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return m % 60 ? `${hrs} h ${m % 60} min` : `${hrs} h`;
  return `${Math.floor(hrs / 24)} d`;
}

/** "2:05", "1:02:05" (a running clock). */
function clock(secs) {
  secs = Math.max(0, Math.floor(secs));
  const s = String(secs % 60).padStart(2, "0");
  const m = Math.floor(secs / 60) % 60;
  const hrs = Math.floor(secs / 3600);
  return hrs ? `${hrs}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function sinceSecs(at) {
  const t = typeof at === "number" ? at : Date.parse(at);
  return Number.isFinite(t) ? (Date.now() - t) / 1000 : null;
}

/** A time the server gives as unix milliseconds (or, elsewhere, RFC 3339) as unix milliseconds. */
function ms(at) {
  if (at == null) return null;
  const t = typeof at === "number" ? at : Date.parse(at);
  return Number.isFinite(t) ? t : null;
}

function bytes(n) {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** "+1 415 555 0142" for North American numbers; others as given. */
function phone(p) {
  if (!p) return "";
  const m = /^\+1(\d{3})(\d{3})(\d{4})$/.exec(p);
  return m ? `+1 ${m[1]} ${m[2]} ${m[3]}` : p;
}

const CHANNELS = {
  sms: { label: "SMS", icon: "sms" },
  whatsapp: { label: "WhatsApp", icon: "whatsapp" },
  chat: { label: "Chat", icon: "chat" },
  video: { label: "Video", icon: "video" },
  voice: { label: "Phone", icon: "voice" },
  ivr: { label: "IVR", icon: "ivr" },
  async: { label: "Upload", icon: "attachment" },
  system: { label: "System", icon: "system" },
};
const channelLabel = (c) => CHANNELS[c]?.label || c || "Unknown";

/** A channel mark: icon and word (never colour alone). */
function channelBadge(channel, extra = "") {
  const c = CHANNELS[channel] || { label: channel || "?", icon: "system" };
  return h("span", { class: `chan ${extra}`, "data-channel": channel || "" }, icon(c.icon), h("span", {}, c.label));
}

const STATE_LABELS = { open: "New", queued: "Waiting", active: "Active", closed: "Closed" };

function debounce(fn, ms) {
  let t;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}

function uuid() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

// =====================================================================
// 2. auth
// =====================================================================
//
// A provider is `{ name, label, signIn(input): Promise<token>, signOut() }`.
// Today's provider takes a pasted access token. An OIDC provider would
// redirect to the identity provider in signIn(), and on the way back
// exchange the code for a Continuum access token; register it with
// `auth.register(...)` and the sign-in screen offers it as a button.

/** Decodes a JWT's claims without checking the signature (the server does). */
function decodeJwt(token) {
  const parts = String(token).split(".");
  if (parts.length !== 3) return null;
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(parts[1].length / 4) * 4, "="));
    return JSON.parse(decodeURIComponent(escape(json)));
  } catch {
    return null;
  }
}

class SignInError extends Error {}

/** The pasted-token provider: checks what can be checked before asking the server. */
const TokenProvider = {
  name: "token",
  label: "Access token",
  async signIn(input) {
    const token = String(input || "").trim().replace(/^Bearer\s+/i, "");
    if (!token) throw new SignInError("Paste your access token first.");
    if (token.startsWith("ck_")) {
      throw new SignInError("This is a tenant API key, meant for servers, not people. The console needs your personal staff access token (it starts with eyJ). Ask your administrator for one.");
    }
    const claims = decodeJwt(token);
    if (!claims) throw new SignInError("This is not an access token: a token has three parts separated by dots and starts with eyJ. Check that you copied all of it.");
    if (claims.exp && claims.exp * 1000 < Date.now()) {
      throw new SignInError(`This token expired at ${fullFmt.format(new Date(claims.exp * 1000))}. Ask for a new one.`);
    }
    if (claims.role === "patient") throw new SignInError("This is a patient's token. The console is for staff: use your own staff token.");
    if (claims.role === "auditor") throw new SignInError("Auditor tokens cannot use the console (they read the audit log only). Use a clinician, agent or admin token.");
    return token;
  },
  signOut() {},
};

const STORE_KEY = "continuum.console.session";
const DRAFT_KEY = "continuum.console.draft";

const auth = {
  providers: new Map([[TokenProvider.name, TokenProvider]]),
  token: null,
  claims: null,
  provider: null,
  expiryTimer: 0,
  warnTimer: 0,
  register(p) { this.providers.set(p.name, p); },
  load() {
    try {
      const s = JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
      if (s?.token) { this.set(s.token, s.provider); return true; }
    } catch { /* nothing stored */ }
    return false;
  },
  set(token, provider = "token") {
    this.token = token;
    this.provider = provider;
    this.claims = decodeJwt(token) || {};
    sessionStorage.setItem(STORE_KEY, JSON.stringify({ token, provider }));
    clearTimeout(this.expiryTimer);
    clearTimeout(this.warnTimer);
    if (this.claims.exp) {
      const left = this.claims.exp * 1000 - Date.now();
      this.warnTimer = setTimeout(() => banner.show(`Your session ends at ${timeFmt.format(new Date(this.claims.exp * 1000))}. Get a new token and sign in again to keep working.`, "warn", { label: "Sign in again", run: () => session.end("Sign in with your new token.") }), Math.max(0, left - 120_000));
      this.expiryTimer = setTimeout(() => session.expired(), Math.max(0, left));
    }
  },
  clear() {
    this.providers.get(this.provider)?.signOut();
    this.token = null;
    this.claims = null;
    clearTimeout(this.expiryTimer);
    clearTimeout(this.warnTimer);
    sessionStorage.removeItem(STORE_KEY);
  },
};

// =====================================================================
// 3. api
// =====================================================================

class ApiError extends Error {
  constructor(status, code, message, path) {
    super(message);
    this.status = status;
    this.code = code;
    this.path = path;
  }
  /** The server does not have this endpoint (yet). */
  get unavailable() {
    return (this.status === 404 && /no such route/i.test(this.message)) || this.status === 405 || this.status === 501;
  }
}

/** What went wrong, in words, for a person: "The message could not be sent: …". */
function explain(e, doing) {
  const lead = doing ? `${doing}: ` : "";
  if (!(e instanceof ApiError)) return `${lead}${e?.message || "something went wrong"}.`;
  if (e.status === 0) return `${lead}the server cannot be reached. Check your network connection and try again.`;
  if (e.unavailable) return `${lead}this is not available on this server yet.`;
  if (e.code === "opted_out") {
    const ch = /whatsapp/i.test(e.message) ? "WhatsApp" : "SMS";
    return `${lead}the patient opted out of ${ch} (they replied STOP). They can reply START to opt back in; until then use another channel or call.`;
  }
  if (e.status === 401) return "Your session expired — sign in again.";
  if (e.status === 403) return `${lead}your role does not allow this (${e.message}).`;
  if (e.status === 429) return `${lead}too many requests just now. Wait a few seconds and try again.`;
  if (e.status === 503) return `${lead}${e.message || "the service is not available on this server"}.`;
  if (e.status >= 500) return `${lead}the server had a problem (${e.status}). Try again; if it keeps happening, tell your administrator.`;
  const msg = e.message ? e.message.charAt(0).toLowerCase() + e.message.slice(1) : `the server answered ${e.status}`;
  return `${lead}${msg.replace(/\.$/, "")}.`;
}

/**
 * Every response shape the console reads, mapped here and nowhere else: if
 * the server's shapes change, this is the one place to adjust.
 */
const map = {
  me(raw) {
    return {
      tenantId: raw.tenant_id,
      subject: raw.subject,
      role: raw.role,
      name: raw.name || raw.agent?.display_name || raw.subject,
      seesAll: !!raw.sees_all_conversations,
      agent: raw.agent ? { displayName: raw.agent.display_name, skills: raw.agent.skills || [], capacity: raw.agent.capacity ?? null } : null,
    };
  },
  inboxItem(raw) {
    return {
      id: raw.conversation_id,
      state: raw.state,
      queue: raw.queue || null,
      assignee: raw.assignee || null,
      patient: { id: raw.patient?.id || null, name: raw.patient?.display_name || null },
      subject: raw.subject || null,
      lastEvent: raw.last_event ? { seq: raw.last_event.seq, kind: raw.last_event.kind, channel: raw.last_event.channel, at: raw.last_event.at, body: raw.last_event.body ?? raw.last_event.preview ?? null } : null,
      unread: raw.unread ?? 0,
      waitingSince: raw.waiting_since || null,
      task: raw.task ? { id: raw.task.id, state: raw.task.state, priority: raw.task.priority, triage: raw.task.triage ?? null } : null,
      updatedAt: raw.updated_at,
      lastSeq: raw.last_event?.seq ?? null,
    };
  },
  event(raw) {
    return {
      seq: raw.seq, at: raw.at, channel: raw.channel, kind: raw.kind,
      actor: raw.actor || { type: "system" }, body: raw.body ?? null, meta: raw.meta || {},
    };
  },
  message(raw) {
    return { id: raw.id, seq: raw.event_seq, channel: raw.channel, state: raw.state, error: raw.last_error || null, to: raw.to, body: raw.body };
  },
  attachment(raw) {
    return {
      id: raw.id, seq: raw.event_seq, type: raw.content_type, size: raw.size, filename: raw.filename || null,
      review: raw.review, note: raw.review_note || null, reviewedAt: raw.reviewed_at || null, reviewedBy: raw.reviewed_by || null,
      uploadedBy: raw.uploaded_by, at: raw.created_at,
    };
  },
  context(raw) {
    return {
      conversation: raw.conversation,
      patient: raw.patient,
      pending: raw.pending || [],
      triage: raw.last_triage ? map.event(raw.last_triage) : null,
      lastSwitch: raw.last_channel_switch ? map.event(raw.last_channel_switch) : null,
      lastHandoff: raw.last_handoff ? map.event(raw.last_handoff) : null,
      optedOut: raw.opted_out || [],
      channels: raw.channels || [],
      openSessions: raw.open_media_sessions || [],
      appointments: raw.appointments || [],
      recent: (raw.recent_events || []).map(map.event),
    };
  },
  /** GET /v1/agents/me, the `hello` event and POST /v1/agents/me/state: times are unix ms. */
  agent(raw) {
    return {
      id: raw.id, state: raw.state, wrapUpUntil: ms(raw.wrap_up_until),
      // Only {id, task_id, expires_at}: the rest comes from the task (agent.hydrate).
      reservation: raw.reservation ? map.reservation(raw.reservation) : null,
      tasks: (raw.tasks || []).map(map.task),
    };
  },
  task(t) {
    return { id: t.id, conversationId: t.conversation_id, channel: t.channel, queue: t.queue, state: t.state, priority: t.priority ?? 0, triage: t.triage ?? null, callId: t.call_id || null, position: t.position ?? null };
  },
  /** The `reservation` event: {id, task_id, conversation_id, channel, queue, priority, triage, expires_at (unix ms), context}. */
  reservation(raw) {
    const ctx = raw.context ? map.context(raw.context) : null;
    return {
      id: raw.id, taskId: raw.task_id, conversationId: raw.conversation_id || null, channel: raw.channel || null, queue: raw.queue || null,
      priority: raw.priority ?? null, triage: raw.triage ?? null, expiresAt: ms(raw.expires_at),
      caller: { name: ctx?.patient?.display_name || null, phone: ctx?.patient?.bindings?.phone || null },
      context: ctx,
    };
  },
  accepted(raw) {
    return {
      taskId: raw.task_id, conversationId: raw.conversation_id, channel: raw.channel, queue: raw.queue,
      call: raw.call ? { id: raw.call.id, roomId: raw.call.room_id, joinToken: raw.call.join_token } : null,
    };
  },
  call(raw) {
    return { id: raw.id, state: raw.state, cause: raw.cause || null, roomId: raw.room_id || null, remote: raw.remote, answeredAt: raw.answered_at || null };
  },
  /** GET /v1/routing/stats and the `stats` event. */
  stats(raw) {
    return {
      queues: (raw.queues || []).map((q) => ({
        name: q.name, waiting: q.waiting ?? 0, longestWait: (q.longest_wait_ms ?? 0) / 1000, reserved: q.reserved ?? 0, assigned: q.assigned ?? 0,
        serviceLevel: q.service_level_15m ?? null, answered: q.answered_15m ?? 0, within: q.answered_within_target_15m ?? 0, abandoned: q.abandoned_15m ?? 0, overflowed: q.overflowed_15m ?? 0,
      })),
      byState: raw.agents_by_state || {},
      agents: (raw.agents || []).map((a) => ({
        id: a.id, state: a.state, tasks: Array.isArray(a.tasks) ? a.tasks.length : 0, offered: !!a.reserved,
        idle: a.idle_ms != null ? a.idle_ms / 1000 : null, wrapLeft: a.wrap_up_remaining_ms != null ? a.wrap_up_remaining_ms / 1000 : null, missed: a.missed ?? 0,
      })),
      history: (raw.history || []).map((p) => ({ at: ms(p.at), waiting: p.waiting ?? 0, serviceLevel: p.service_level ?? null })),
    };
  },
};

const api = {
  async http(method, path, { body, query, raw = false, headers = {}, token = auth.token } = {}) {
    let url = path;
    if (query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v != null && v !== "") q.set(k, v);
      const s = q.toString();
      if (s) url += (url.includes("?") ? "&" : "?") + s;
    }
    const init = { method, headers: { authorization: `Bearer ${token}`, ...headers } };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(url, init);
    } catch {
      throw new ApiError(0, "network", "the server cannot be reached", path);
    }
    if (!r.ok) {
      let code = "http_" + r.status, message = r.statusText;
      try {
        const j = await r.json();
        code = j?.error?.code || code;
        message = j?.error?.message || message;
      } catch { /* not JSON */ }
      const err = new ApiError(r.status, code, message, path);
      // Signed in and refused: the session is over (while signing in, the form says why).
      if (r.status === 401 && token === auth.token && app.me) session.expired();
      throw err;
    }
    if (raw) return r;
    if (r.status === 204) return null;
    const text = await r.text();
    return text ? JSON.parse(text) : null;
  },
  get: (p, o) => api.http("GET", p, o),
  post: (p, body = {}, o = {}) => api.http("POST", p, { ...o, body }),

  async me() { return map.me(await api.get("/v1/me")); },

  // Inbox: /v1/inbox when the server has it.
  async inboxPage({ state, queue, assignee, cursor, limit = 500 } = {}) {
    const r = await api.get("/v1/inbox", { query: { state, queue, assignee, cursor, limit } });
    return { items: (r.items || []).map(map.inboxItem), next: r.next_cursor || null };
  },

  conversation: (id) => api.get(`/v1/conversations/${encodeURIComponent(id)}`),
  assign: (id, assignee) => api.post(`/v1/conversations/${encodeURIComponent(id)}/assign`, { assignee }),
  close: (id) => api.post(`/v1/conversations/${encodeURIComponent(id)}/close`, {}),
  reopen: (id) => api.post(`/v1/conversations/${encodeURIComponent(id)}/reopen`, {}),
  async context(id) { return map.context(await api.get(`/v1/conversations/${encodeURIComponent(id)}/context`, { query: { events: 5 } })); },
  async events(id, after, limit = 200) {
    const r = await api.get(`/v1/conversations/${encodeURIComponent(id)}/events`, { query: { after, limit } });
    return { events: (r.events || []).map(map.event), next: r.next_after ?? null };
  },
  async appendChat(id, body, key) {
    return map.event(await api.post(`/v1/conversations/${encodeURIComponent(id)}/events`, { channel: "chat", kind: "message", body, idempotency_key: key }));
  },
  async messages(id) { return (await api.get(`/v1/conversations/${encodeURIComponent(id)}/messages`)).map(map.message); },
  async sendMessage(id, channel, body, key) {
    return map.message(await api.post(`/v1/conversations/${encodeURIComponent(id)}/messages`, { channel, body, idempotency_key: key }));
  },
  markRead: (id, seq) => api.post(`/v1/conversations/${encodeURIComponent(id)}/chat/receipts`, { read_seq: seq, delivered_seq: seq }),
  createRoom: (id) => api.post(`/v1/conversations/${encodeURIComponent(id)}/rooms`, { waiting_room: false }),
  visitLink: (id, channel, roomId) => api.post(`/v1/conversations/${encodeURIComponent(id)}/visit-link`, { channel, room_id: roomId || undefined }),
  async attachments(convId) {
    return (await api.get("/v1/attachments", { query: { conversation: convId, limit: 200 } })).map(map.attachment);
  },
  async attachment(id) { return map.attachment(await api.get(`/v1/attachments/${encodeURIComponent(id)}`)); },
  async attachmentContent(id) { return (await api.http("GET", `/v1/attachments/${encodeURIComponent(id)}/content`, { raw: true })).blob(); },
  async review(id, note) { return map.attachment(await api.post(`/v1/attachments/${encodeURIComponent(id)}/review`, { note: note || null })); },

  async dial(conversationId, to, roomId) { return map.call(await api.post("/v1/calls", { conversation_id: conversationId, to, room_id: roomId })); },
  async call(id) { return map.call(await api.get(`/v1/calls/${encodeURIComponent(id)}`)); },
  hangup: (id) => api.post(`/v1/calls/${encodeURIComponent(id)}/hangup`),
  dtmf: (id, digits) => api.post(`/v1/calls/${encodeURIComponent(id)}/dtmf`, { digits }),
  transferCall: (id, target) => api.post(`/v1/calls/${encodeURIComponent(id)}/transfer`, { target }),
  hold: (id, held) => api.post(`/v1/calls/${encodeURIComponent(id)}/hold`, { held }),

  async agentMe() { return map.agent(await api.get("/v1/agents/me")); },
  async setAgentState(state) { return map.agent(await api.post("/v1/agents/me/state", { state })); },
  async task(id) { return map.task(await api.get(`/v1/tasks/${encodeURIComponent(id)}`)); },
  /** Agents' profiles (admins only): display names for the supervisor view. */
  agents: () => api.get("/v1/agents"),
  async accept(resId) { return map.accepted(await api.post(`/v1/reservations/${encodeURIComponent(resId)}/accept`)); },
  reject: (resId) => api.post(`/v1/reservations/${encodeURIComponent(resId)}/reject`),
  completeTask: (id) => api.post(`/v1/tasks/${encodeURIComponent(id)}/complete`),
  transferTask: (id, queue) => api.post(`/v1/tasks/${encodeURIComponent(id)}/transfer`, { queue }),
  async stats() { return map.stats(await api.get("/v1/routing/stats")); },

  streams: {
    inbox: "/v1/inbox/stream",
    agent: "/v1/agents/me/events",
    routing: "/v1/routing/stream",
    timeline: (id) => `/v1/conversations/${encodeURIComponent(id)}/events/stream`,
  },
};

/**
 * A server-sent events stream with the session's token (EventSource cannot
 * send headers: the token goes as `access_token`, like the timeline stream).
 * Reports its status ("connecting", "live", "reconnecting", "unavailable",
 * "failed") and, when the browser gives up, asks the server why.
 */
class LiveStream {
  constructor(path, { query = {}, events = {}, onStatus = () => {}, resume } = {}) {
    this.path = path;
    this.query = query;
    this.events = events;
    this.onStatus = onStatus;
    this.resume = resume; // () => extra query on re-open (e.g. {after: lastSeq})
    this.es = null;
    this.closed = false;
    this.retry = 0;
    this.timer = 0;
  }
  url() {
    const q = new URLSearchParams({ ...this.query, ...(this.resume ? this.resume() : {}) });
    for (const [k, v] of [...q]) if (v === "undefined" || v === "null" || v === "") q.delete(k);
    q.set("access_token", auth.token);
    return `${this.path}?${q}`;
  }
  open() {
    if (this.closed) return this;
    this.onStatus("connecting");
    const es = (this.es = new EventSource(this.url()));
    es.addEventListener("open", () => { this.retry = 0; clearTimeout(this.quiet); this.onStatus("live"); });
    for (const [name, fn] of Object.entries(this.events)) {
      es.addEventListener(name, (e) => {
        let data;
        try { data = JSON.parse(e.data); } catch { return; }
        fn(data, e);
      });
    }
    es.addEventListener("error", () => {
      if (this.closed) return;
      if (es.readyState === EventSource.CONNECTING) {
        // The browser reconnects by itself; say so only if it takes a while.
        clearTimeout(this.quiet);
        this.quiet = setTimeout(() => { if (es.readyState !== EventSource.OPEN && !this.closed) this.onStatus("reconnecting"); }, 4000);
        return;
      }
      es.close();
      this.probe();
    });
    return this;
  }
  /** The browser gave up (an HTTP error): find out why, then retry or stop. */
  async probe() {
    const ctl = new AbortController();
    let status = 0, message = "";
    try {
      const r = await fetch(this.path, { headers: { authorization: `Bearer ${auth.token}`, accept: "text/event-stream" }, signal: ctl.signal });
      status = r.status;
      if (!r.ok) message = (await r.json().catch(() => ({})))?.error?.message || "";
    } catch { status = 0; }
    ctl.abort();
    if (this.closed) return;
    if (status === 401) { if (app.me) session.expired(); return; }
    if ((status === 404 && /no such route/i.test(message)) || status === 405) { this.onStatus("unavailable"); return; }
    if (status === 403 || status === 404) { this.onStatus("failed", message || `refused (${status})`); return; }
    this.retry++;
    const wait = Math.min(30_000, 1000 * 2 ** Math.min(this.retry, 5));
    this.onStatus("reconnecting", `retrying in ${Math.round(wait / 1000)} s`);
    this.timer = setTimeout(() => this.open(), wait);
  }
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.quiet);
    this.es?.close();
  }
}

// =====================================================================
// 4. shell: session, router, banner, announcements
// =====================================================================

const app = {
  me: null,
  route: { view: "work", conv: null, pane: "inbox" },
  streams: new Set(),
};

function announce(text, assertive = false) {
  const el = assertive ? $("alerter") : $("announcer");
  el.textContent = "";
  setTimeout(() => { el.textContent = text; }, 30);
}

const banner = {
  show(text, tone = "info", action = null) {
    $("banner").hidden = false;
    $("banner").dataset.tone = tone;
    $("banner-text").textContent = text;
    const b = $("banner-action");
    b.hidden = !action;
    if (action) { b.textContent = action.label; b.onclick = action.run; }
  },
  hide() { $("banner").hidden = true; },
};

function screen(name) {
  document.body.dataset.screen = name;
}

const session = {
  async begin(token, provider = "token") {
    auth.set(token, provider);
    const me = await api.me();
    app.me = me;
    return me;
  },
  /** Back to the sign-in screen, saying why. */
  end(notice = "") {
    for (const s of app.streams) s.close();
    app.streams.clear();
    agent.stop();
    supervisor.stop();
    conversation.close();
    inbox.stop();
    auth.clear();
    app.me = null;
    banner.hide();
    showSignIn(notice);
  },
  expired() {
    if (!auth.token) return;
    const draft = conversation.id ? $("reply-text").value.trim() : "";
    if (draft) sessionStorage.setItem(DRAFT_KEY, JSON.stringify({ conv: conversation.id, text: draft, channel: $("reply-channel").value }));
    session.end(draft
      ? "Your session expired — sign in again with a new token. Your unsent reply was kept: it is back in the reply box when you return to the conversation."
      : "Your session expired — sign in again with a new token.");
  },
};

function track(stream) {
  app.streams.add(stream);
  return stream.open();
}

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  if (parts[0] === "supervisor") return { view: "supervisor", conv: null, pane: "supervisor" };
  if (parts[0] === "c" && parts[1]) return { view: "work", conv: decodeURIComponent(parts[1]), pane: parts[2] === "context" ? "context" : "conv" };
  return { view: "work", conv: conversation.id, pane: "inbox" };
}

function go(hash) {
  if (location.hash === hash) onRoute();
  else location.hash = hash;
}

function onRoute() {
  if (document.body.dataset.screen !== "app") return;
  const r = (app.route = parseRoute());
  document.body.dataset.view = r.view;
  document.body.dataset.pane = r.pane;
  $("nav-inbox").toggleAttribute("aria-current", r.view === "work");
  if (r.view === "work") $("nav-inbox").setAttribute("aria-current", "page");
  if (r.view === "supervisor") $("nav-supervisor").setAttribute("aria-current", "page");
  else $("nav-supervisor").removeAttribute("aria-current");
  if (r.view === "supervisor") {
    supervisor.start();
    $("sup-title").focus();
    return;
  }
  supervisor.stop();
  if (r.conv && r.conv !== conversation.id) conversation.open(r.conv);
  if (r.pane === "context" && narrow()) $("ctx-title").focus();
  if (r.pane === "inbox") inbox.list?.refresh(true);
}

const narrow = () => matchMedia("(max-width: 899px)").matches;

// =====================================================================
// 5. inbox: store + virtualized list
// =====================================================================

/** Metrics the perf test reads (performance.now() milliseconds). */
const metrics = (window.__consoleMetrics = {
  inbox: { loadStart: null, dataAt: null, firstRenderAt: null, renderMs: null, items: 0, source: null },
  updates: { count: 0, batches: 0, batchMs: [], perUpdateMs: [] },
  longTasks: [],
});
try {
  new PerformanceObserver((list) => { for (const e of list.getEntries()) metrics.longTasks.push({ start: e.startTime, ms: e.duration }); })
    .observe({ type: "longtask", buffered: true });
} catch { /* not supported */ }

const ROW_H = 76;

/**
 * A list that only keeps the visible rows (plus a few) in the DOM, placed
 * with transforms inside a spacer as tall as the whole list. Rows are
 * recycled; a row is redrawn only when its item changed.
 */
class VirtualList {
  constructor(viewport, spacer, { render, onActivate, onOpen }) {
    this.viewport = viewport;
    this.spacer = spacer;
    this.renderRow = render;
    this.onOpen = onOpen;
    this.onActivate = onActivate;
    this.ids = [];
    this.rows = new Map(); // id → element
    this.pool = [];
    this.active = -1;
    this.frame = 0;
    viewport.addEventListener("scroll", () => this.schedule(), { passive: true });
    new ResizeObserver(() => this.schedule()).observe(viewport);
    viewport.addEventListener("keydown", (e) => this.key(e));
    viewport.addEventListener("click", (e) => {
      const row = e.target.closest("[role=option]");
      if (!row) return;
      this.setActive(this.ids.indexOf(row.dataset.id), false);
      this.onOpen(row.dataset.id);
    });
    viewport.addEventListener("focus", () => { if (this.active < 0 && this.ids.length) this.setActive(0); else this.markActive(); });
  }
  /** New order: rows move (transforms); only `force` redraws their content. */
  setIds(ids, force = true) {
    const activeId = this.ids[this.active];
    this.ids = ids;
    this.active = activeId ? ids.indexOf(activeId) : -1;
    const height = `${ids.length * ROW_H}px`;
    if (this.spacer.style.height !== height) this.spacer.style.height = height;
    if (force) this.render(true);
  }
  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(false); });
  }
  refresh(force = false) { this.render(force); }
  /** Draws the rows in view; `force` redraws them even if unchanged. */
  render(force, changed = null) {
    const top = this.viewport.scrollTop;
    const height = this.viewport.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_H) - 4);
    const last = Math.min(this.ids.length, Math.ceil((top + height) / ROW_H) + 4);
    const want = new Set(this.ids.slice(first, last));
    for (const [id, el] of this.rows) {
      if (!want.has(id)) { this.rows.delete(id); el.remove(); this.pool.push(el); }
    }
    for (let i = first; i < last; i++) {
      const id = this.ids[i];
      let el = this.rows.get(id);
      const fresh = !el;
      if (fresh) {
        el = this.pool.pop() || h("div", { role: "option", class: "row" });
        el.dataset.id = id;
        el.id = "row-" + id;
        this.rows.set(id, el);
        this.spacer.append(el);
      }
      if (el._y !== i) { el.style.transform = `translateY(${i * ROW_H}px)`; el._y = i; }
      el.setAttribute("aria-posinset", i + 1);
      el.setAttribute("aria-setsize", this.ids.length);
      if (fresh || force || (changed && changed.has(id))) this.renderRow(el, id);
      el.setAttribute("aria-selected", i === this.active ? "true" : "false");
    }
    this.markActive();
  }
  markActive() {
    const id = this.ids[this.active];
    if (id && this.rows.has(id)) this.viewport.setAttribute("aria-activedescendant", "row-" + id);
    else this.viewport.removeAttribute("aria-activedescendant");
  }
  setActive(i, scroll = true) {
    if (!this.ids.length) return;
    i = Math.max(0, Math.min(this.ids.length - 1, i));
    this.active = i;
    if (scroll) {
      const y = i * ROW_H, top = this.viewport.scrollTop, hgt = this.viewport.clientHeight;
      if (y < top) this.viewport.scrollTop = y;
      else if (y + ROW_H > top + hgt) this.viewport.scrollTop = y + ROW_H - hgt;
    }
    this.render(false);
    this.onActivate?.(this.ids[i]);
  }
  key(e) {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    const page = Math.max(1, Math.floor(this.viewport.clientHeight / ROW_H) - 1);
    const moves = { ArrowDown: 1, j: 1, ArrowUp: -1, k: -1, PageDown: page, PageUp: -page };
    if (e.key in moves) { e.preventDefault(); this.setActive((this.active < 0 ? -1 : this.active) + moves[e.key]); return; }
    if (e.key === "Home") { e.preventDefault(); this.setActive(0); return; }
    if (e.key === "End") { e.preventDefault(); this.setActive(this.ids.length - 1); return; }
    if (e.key === "Enter" || e.key === " ") {
      if (this.active >= 0) { e.preventDefault(); this.onOpen(this.ids[this.active]); }
    }
  }
}

const inbox = {
  items: new Map(), // conversation id → item
  pending: new Map(), // updates waiting for the next frame
  frame: 0,
  list: null,
  stream: null,
  tickTimer: 0,
  queues: new Set(),
  filter: { state: "", queue: "", mine: false, sort: "updated" },
  version: 0,

  init() {
    this.list = new VirtualList($("inbox-list"), $("inbox-spacer"), {
      render: (el, id) => this.renderRow(el, id),
      onOpen: (id) => go(`#/c/${encodeURIComponent(id)}`),
    });
    const f = this.filter;
    $("f-state").addEventListener("change", (e) => { f.state = e.target.value; this.load(); });
    $("f-queue").addEventListener("change", (e) => { f.queue = e.target.value; this.rebuild(); });
    $("f-sort").addEventListener("change", (e) => { f.sort = e.target.value; this.rebuild(); });
    $("f-mine").addEventListener("change", (e) => { f.mine = e.target.checked; this.rebuild(); });
  },

  live(text, tone = "ok") {
    $("inbox-live").textContent = text;
    $("inbox-live").dataset.tone = tone;
  },

  stop() {
    this.stream?.close();
    this.stream = null;
    clearInterval(this.tickTimer);
    this.items.clear();
    this.pending.clear();
  },

  /** Loads the inbox (all pages of GET /v1/inbox), then follows it live (GET /v1/inbox/stream). */
  async load() {
    this.stream?.close();
    clearInterval(this.tickTimer);
    metrics.inbox.loadStart = performance.now();
    this.live("Loading…", "wait");
    $("inbox-empty").hidden = true;
    const state = this.filter.state || undefined;
    const items = [];
    try {
      let cursor = null;
      do {
        const page = await api.inboxPage({ state, cursor });
        items.push(...page.items);
        cursor = page.next;
      } while (cursor && items.length < 50_000);
    } catch (e) {
      this.live("Not loaded", "bad");
      this.showEmpty(explain(e, "The inbox could not be loaded"), true);
      return;
    }
    metrics.inbox.dataAt = performance.now();
    metrics.inbox.source = "inbox";
    this.items.clear();
    for (const it of items) this.put(it);
    this.rebuild();
    metrics.inbox.firstRenderAt = performance.now();
    metrics.inbox.renderMs = metrics.inbox.firstRenderAt - metrics.inbox.dataAt;
    metrics.inbox.items = items.length;
    this.follow(state);
    // Waiting times move on their own.
    this.tickTimer = setInterval(() => this.list.refresh(true), 30_000);
  },

  /** Live rows: `conversation` (an inbox row), `resync` (updates were missed: reload). */
  follow(state) {
    this.stream = track(new LiveStream(api.streams.inbox, {
      query: { state },
      events: {
        conversation: (raw) => this.update(map.inboxItem(raw)),
        resync: () => this.load(),
      },
      onStatus: (s, why) => {
        if (s === "live") this.live("Live");
        else if (s === "reconnecting") this.live(`Reconnecting${why ? ` (${why})` : ""}…`, "wait");
        else if (s === "unavailable") this.live("Live updates are not available on this server: reload to see new messages", "bad");
        else if (s === "failed") this.live(`Live updates refused: ${why}`, "bad");
        else this.live("Connecting…", "wait");
      },
    }));
  },

  put(item) {
    item._t = Date.parse(item.updatedAt) || 0;
    item._w = item.waitingSince ? Date.parse(item.waitingSince) : Infinity;
    item._v = ++this.version;
    this.items.set(item.id, item);
    if (item.queue && !this.queues.has(item.queue)) { this.queues.add(item.queue); this.queuesChanged = true; }
  },

  /** A live change: applied on the next animation frame, with its neighbours. */
  update(item) {
    item._received = performance.now();
    this.pending.set(item.id, item);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.applyBatch());
  },

  passes(it) {
    const f = this.filter;
    if (f.state ? it.state !== f.state : it.state === "closed") return false;
    if (f.queue && it.queue !== f.queue) return false;
    if (f.mine && it.assignee !== app.me?.subject) return false;
    return true;
  },
  compare(a, b) {
    if (inbox.filter.sort === "waiting" && a._w !== b._w) return a._w - b._w;
    return b._t - a._t || (a.id < b.id ? -1 : 1);
  },
  /** Where `it` goes in the (sorted) view: binary search. */
  position(ids, it) {
    let lo = 0, hi = ids.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.compare(this.items.get(ids[mid]), it) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  },

  applyBatch() {
    this.frame = 0;
    const t0 = performance.now();
    const batch = [...this.pending.values()];
    this.pending.clear();
    const ids = this.list.ids;
    const changed = new Set();
    let moved = false;
    for (const item of batch) {
      const old = this.items.get(item.id);
      if (old) {
        const i = ids.indexOf(item.id);
        if (i >= 0) { ids.splice(i, 1); moved = true; }
        // A field the stream leaves out keeps its old value: the inbox
        // carries no message text, so a body the timeline gave us stays
        // while the row's last event is the same one.
        if (item.lastEvent === undefined) item.lastEvent = old.lastEvent;
        else if (item.lastEvent && old.lastEvent && item.lastEvent.seq === old.lastEvent.seq) {
          item.lastEvent = { ...old.lastEvent, ...item.lastEvent, body: item.lastEvent.body ?? old.lastEvent.body, actor: item.lastEvent.actor || old.lastEvent.actor, meta: item.lastEvent.meta || old.lastEvent.meta };
        }
        if (!item.patient.name) item.patient.name = old.patient.name;
      }
      this.put(item);
      if (this.passes(item)) { ids.splice(this.position(ids, item), 0, item.id); moved = true; }
      changed.add(item.id);
      if (item.id === conversation.id) conversation.inboxChanged(item);
    }
    if (this.queuesChanged) this.fillQueues();
    if (moved) this.list.setIds(ids, false);
    this.list.render(false, changed);
    this.count();
    // Layout now, inside the measurement (it would happen in this frame anyway).
    void this.list.spacer.offsetHeight;
    const ms = performance.now() - t0;
    metrics.updates.count += batch.length;
    metrics.updates.batches++;
    metrics.updates.batchMs.push(ms);
    for (let i = 0; i < batch.length; i++) metrics.updates.perUpdateMs.push(ms / batch.length);
  },

  /** Re-filters and re-sorts everything (filters changed, or a full load). */
  rebuild() {
    const ids = [];
    for (const it of this.items.values()) if (this.passes(it)) ids.push(it.id);
    ids.sort((a, b) => this.compare(this.items.get(a), this.items.get(b)));
    if (this.queuesChanged) this.fillQueues();
    this.list.setIds(ids);
    this.count();
  },

  count() {
    const n = this.list.ids.length;
    if (n !== this.counted) $("inbox-count").textContent = `(${n.toLocaleString()})`;
    if (n && n === this.counted) return;
    this.counted = n;
    if (!n) {
      const f = this.filter;
      const filtered = f.queue || f.mine || f.state;
      this.showEmpty(filtered ? "No conversations match these filters." : "No open conversations. New ones appear here as patients get in touch.");
    } else $("inbox-empty").hidden = true;
  },

  showEmpty(text, bad = false) {
    const el = $("inbox-empty");
    el.hidden = false;
    el.textContent = text;
    el.dataset.tone = bad ? "bad" : "";
  },

  fillQueues() {
    this.queuesChanged = false;
    const sel = $("f-queue");
    const cur = sel.value;
    const names = [...this.queues].sort();
    sel.replaceChildren(h("option", { value: "" }, "All queues"), ...names.map((q) => h("option", { value: q }, q)));
    sel.value = cur;
    $("queue-names").replaceChildren(...names.map((q) => h("option", { value: q })));
  },

  renderRow(el, id) {
    const it = this.items.get(id);
    if (!it) return;
    const name = it.patient.name || "Patient";
    const waiting = it.waitingSince ? sinceSecs(it.waitingSince) : null;
    const tone = waiting == null ? "" : waiting >= 1800 ? "bad" : waiting >= 600 ? "warn" : "ok";
    const le = it.lastEvent;
    const by = le?.kind === "message" && le.actor?.type === "staff" ? (le.actor.id === app.me?.subject ? "You: " : `${le.actor.id || "Staff"}: `) : "";
    // The inbox never carries message text (only what the timeline gave us).
    // Bookkeeping (delivery receipts, assignment) says nothing here, and the
    // inbox carries no meta for it: the subject says more.
    const telling = le && !QUIET_KINDS.has(le.kind) && !(le.kind === "routing" && !le.meta) ? le : null;
    const summary = telling ? (le.kind === "message" && !le.body ? (it.unread ? `${it.unread > 99 ? "99+" : it.unread} new message${it.unread === 1 ? "" : "s"}` : "Message") : by + eventSummary(le))
      : it.unread ? `${it.unread > 99 ? "99+" : it.unread} unread${it.subject ? ` · ${it.subject}` : ""}` : it.subject || (le ? "No new messages" : "No activity yet");
    const parts = [
      h("div", { class: "row-line1" },
        it.unread ? h("span", { class: "unread" }, h("span", { class: "sr-only" }, `${it.unread} unread`), String(it.unread > 99 ? "99+" : it.unread)) : null,
        h("span", { class: "row-name" }, name),
        it.task?.priority != null && it.task.priority > 0 ? h("span", { class: "prio" }, `Priority ${it.task.priority}`) : null,
        waiting != null
          ? h("span", { class: "wait", "data-tone": tone }, icon("clock"), `waiting ${duration(waiting)}`)
          : h("span", { class: "row-time" }, when(it.updatedAt))),
      h("div", { class: "row-line2" },
        telling ? channelBadge(le.channel, "small") : null,
        h("span", { class: "row-summary" }, summary)),
      h("div", { class: "row-line3" },
        h("span", { class: "pill", "data-state": it.state }, STATE_LABELS[it.state] || it.state),
        it.queue ? h("span", { class: "pill q" }, `Queue: ${it.queue}`) : null,
        it.assignee ? h("span", { class: "pill who" }, it.assignee === app.me?.subject ? "Mine" : `With ${it.assignee}`) : null,
        it.task?.triage ? h("span", { class: "pill triage" }, `Triage: ${triageWords(it.task.triage) || "set"}`) : null),
    ];
    el.replaceChildren(...parts);
    el.dataset.unread = it.unread ? "1" : "";
    el.dataset.open = id === conversation.id ? "1" : "";
    // The row's own text is its accessible name (what is seen is what is read).
  },

  markSeen(id) {
    const it = this.items.get(id);
    if (it && it.unread) this.update({ ...it, unread: 0 });
  },
};

/** "urgent_symptoms" → "Urgent symptoms". */
function triageWords(t) {
  if (!t) return "";
  const s = typeof t === "string" ? t : t.level || "";
  const w = String(s).replace(/[_-]+/g, " ").trim();
  return w ? w.charAt(0).toUpperCase() + w.slice(1) : "";
}

/** A `routing` event (the queue's doings), in words. */
function routingWords(m) {
  const q = m.queue ? ` ${m.queue}` : "";
  const who = (a) => (a && a === app.me?.subject ? "you" : a || "an agent");
  switch (m.action) {
    case "queued": return `Waiting in queue${q}${m.priority ? ` (priority ${m.priority})` : ""}`;
    case "reserved": return `Offered to ${who(m.agent)}`;
    case "timed_out": return `${who(m.agent) === "you" ? "You" : who(m.agent)} did not answer in time; offered to the next agent`;
    case "transferred": return `Transferred from queue ${m.from_queue || "?"} to${q}`;
    case "completed": return `Finished${q ? ` (queue${q})` : ""}`;
    case "abandoned": return `The caller left queue${q} before anyone answered`;
    case "voicemail": return `Sent to voicemail from queue${q}`;
    case "callback": return `Callback promised from queue${q}`;
    case "overflowed": return `Moved on from queue${q} (waited too long)`;
    case "requeued": return `Back in queue${q}`;
    default: return `Queue${q}: ${String(m.action || "update").replace(/_/g, " ")}`;
  }
}

/** Bookkeeping events: not what a row in the inbox should say. */
const QUIET_KINDS = new Set(["delivery.status", "state.changed", "assigned", "participant.joined", "participant.left", "quality.degraded", "quality.recovered", "ivr.step"]);
/** What is worth a line in the offer dialog's "Latest": the patient's words and what happened to them, not bookkeeping. */
const TELLING_KINDS = new Set(["message", "attachment", "callback.requested", "triage.result", "channel.switched", "call.failed", "note", "opt_out", "opt_in"]);

/** One line about an event, for the inbox and the offer dialog. */
function eventSummary(e) {
  const body = e.body ? String(e.body).replace(/\s+/g, " ").slice(0, 140) : "";
  switch (e.kind) {
    case "message": return body || "Message";
    case "attachment": return `Attachment${e.meta?.filename ? `: ${e.meta.filename}` : ""}`;
    case "call.started": return e.channel === "video" ? "Video visit started" : "Phone call started";
    case "call.ended": return e.channel === "video" ? "Video visit ended" : "Phone call ended";
    case "call.failed": return `Call failed${e.meta?.reason ? `: ${e.meta.reason}` : ""}`;
    case "channel.switched": return `Switched from ${channelLabel(e.meta?.from)} to ${channelLabel(e.meta?.to)}`;
    case "triage.result": return `Triage: ${body || triageWords(e.meta?.level) || "result"}`;
    case "routing": return routingWords(e.meta || {});
    case "ivr.step": return "Phone menu";
    case "ivr.route": return `Phone menu sent the call to ${e.meta?.queue ? `queue ${e.meta.queue}` : "a queue"}`;
    case "callback.requested": return `Callback requested${body ? `: ${body}` : ""}`;
    case "ivr.input": return `IVR: pressed ${e.meta?.digit ?? body}`;
    case "note": return body ? `Note: ${body}` : "Internal note";
    case "opt_out": return `Opted out of ${channelLabel(e.meta?.channel || e.channel)}`;
    case "opt_in": return `Opted back in to ${channelLabel(e.meta?.channel || e.channel)}`;
    case "delivery.status": return `Delivery: ${e.meta?.status || ""}`;
    case "state.changed": return `Now ${STATE_LABELS[e.meta?.to] || e.meta?.to || ""}`;
    case "assigned": return e.meta?.assignee ? `Assigned to ${e.meta.assignee}` : e.meta?.queue ? `Queued in ${e.meta.queue}` : "Assignment changed";
    default: return body || e.kind;
  }
}

// =====================================================================
// 6. conversation: timeline across channels, composer, actions
// =====================================================================

const DELIVERY = {
  sending: { text: "Sending…", icon: "clock" },
  queued: { text: "Queued", icon: "clock" },
  sent: { text: "Sent", icon: "tick" },
  delivered: { text: "Delivered", icon: "ticks" },
  read: { text: "Read", icon: "ticks" },
  undelivered: { text: "Not delivered", icon: "alert", bad: true },
  failed: { text: "Not sent", icon: "alert", bad: true },
  suppressed: { text: "Not sent", icon: "alert", bad: true },
  unconfirmed: { text: "Sent, delivery not confirmed", icon: "tick" },
  posted: { text: "Sent to the patient's chat", icon: "tick" },
};
const RANK = { sending: 0, queued: 1, posted: 2, sent: 2, unconfirmed: 3, delivered: 4, read: 5, undelivered: 6, failed: 6, suppressed: 6 };

/** A provider's error, said for a nurse. */
function deliveryReason(err, state) {
  if (state === "suppressed") return "the patient opted out of this channel";
  if (!err) return state === "undelivered" ? "the carrier could not deliver it" : "";
  if (/unsubscribed|opted.?out|STOP/i.test(err)) return "the patient opted out (replied STOP)";
  if (/invalid|not a valid|21211|21614/i.test(err)) return "the number cannot receive texts";
  return err.replace(/^(refused \([^)]*\): )+/, "");
}

const conversation = {
  id: null,
  conv: null,
  ctx: null,
  patient: null,
  events: new Map(), // seq → event
  els: new Map(), // seq → <li>
  delivery: new Map(), // message seq → { state, error }
  local: new Map(), // idempotency key → { el, channel, body }
  readByPatient: 0,
  firstSeq: null,
  lastSeq: 0,
  stream: null,
  room: null,
  gen: 0,
  refreshCtx: null,

  init() {
    $("conv-back").addEventListener("click", () => go("#/inbox"));
    $("ctx-back").addEventListener("click", () => go(`#/c/${encodeURIComponent(this.id)}`));
    $("conv-context-btn").addEventListener("click", () => go(`#/c/${encodeURIComponent(this.id)}/context`));
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    $("reply-text").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.send(); }
    });
    $("reply-channel").addEventListener("change", () => this.hint());
    $("tl-earlier").addEventListener("click", () => this.earlier());
    $("act-assign").addEventListener("click", () => this.assign());
    $("act-close").addEventListener("click", (e) => this.closeOrReopen(e.currentTarget));
    $("act-video").addEventListener("click", () => this.startVideo());
    $("act-call").addEventListener("click", () => this.callPatient());
    $("act-link").addEventListener("click", () => this.sendLink());
    $("act-done").addEventListener("click", () => this.finishTask());
    this.refreshCtx = debounce(() => this.loadContext(), 800);
  },

  close() {
    this.stream?.close();
    this.stream = null;
    this.id = null;
    $("conv-body").hidden = true;
    $("conv-none").hidden = false;
    $("ctx-body").replaceChildren(h("p", { class: "empty" }, "No conversation open."));
  },

  notice(text, tone = "info", ...extra) {
    const n = $("conv-notice");
    n.hidden = !text;
    n.dataset.tone = tone;
    n.replaceChildren(h("p", {}, text), ...extra, h("button", { type: "button", class: "btn-quiet", "aria-label": "Dismiss this notice", onclick: () => { n.hidden = true; } }, "Dismiss"));
    if (tone === "bad") announce(text, true);
  },

  drafts: new Map(), // conversation id → unsent reply text (a reply never follows you to another patient)

  async open(id) {
    const gen = ++this.gen;
    this.stream?.close();
    if (this.id && this.id !== id) {
      const text = $("reply-text").value;
      if (text.trim()) this.drafts.set(this.id, text); else this.drafts.delete(this.id);
    }
    $("reply-text").value = this.drafts.get(id) || "";
    this.drafts.delete(id);
    this.id = id;
    this.conv = this.ctx = this.patient = null;
    this.events.clear();
    this.els.clear();
    this.delivery.clear();
    this.local.clear();
    this.readByPatient = 0;
    this.firstSeq = null;
    this.lastSeq = 0;
    this.room = null;
    $("conv-none").hidden = true;
    $("conv-body").hidden = false;
    $("conv-notice").hidden = true;
    $("tl-items").replaceChildren(h("li", { class: "tl-loading" }, "Loading the timeline…"));
    $("tl-earlier").hidden = true;
    $("conv-title").textContent = inbox.items.get(id)?.patient.name || "Conversation";
    $("conv-sub").textContent = "";
    $("ctx-body").replaceChildren(h("p", { class: "empty" }, "Loading…"));
    inbox.list.refresh(true);
    try {
      const [conv, ctx, msgs] = await Promise.all([
        api.conversation(id),
        api.context(id).catch((e) => ({ error: e })),
        api.messages(id).catch(() => []),
      ]);
      if (gen !== this.gen) return;
      this.conv = conv;
      if (!ctx.error) { this.ctx = ctx; this.patient = ctx.patient; }
      for (const m of msgs) this.delivery.set(m.seq, { state: m.state, error: m.error });
      const after = Math.max(0, conv.last_seq - 150);
      const page = await api.events(id, after, 200);
      if (gen !== this.gen) return;
      $("tl-items").replaceChildren();
      for (const e of page.events) this.add(e, false);
      this.firstSeq = page.events[0]?.seq ?? conv.last_seq + 1;
      $("tl-earlier").hidden = after === 0;
      this.header();
      this.composerSetup();
      this.restoreDraft();
      this.context();
      this.scrollEnd();
      if (!page.events.length) $("tl-items").append(h("li", { class: "tl-empty" }, "Nothing on this conversation yet."));
      this.follow();
      this.loadAttachments();
      if (!narrow() || app.route.pane === "conv") $("conv-title").focus({ preventScroll: true });
      inbox.markSeen(id);
      if (this.lastSeq) api.markRead(id, this.lastSeq).catch(() => {});
    } catch (e) {
      if (gen !== this.gen) return;
      $("tl-items").replaceChildren(h("li", { class: "tl-error", role: "alert" },
        e instanceof ApiError && e.status === 404 ? "This conversation does not exist, or your token does not give you access to it." : explain(e, "The conversation could not be opened")));
      $("ctx-body").replaceChildren();
    }
  },

  follow() {
    const id = this.id;
    this.stream = track(new LiveStream(api.streams.timeline(id), {
      resume: () => ({ after: this.lastSeq }),
      events: {
        timeline: (raw) => { if (this.id === id) this.onLive(map.event(raw)); },
        receipt: (r) => { if (this.id === id) this.onReceipt(r); },
      },
      onStatus: (s, why) => {
        if (this.id !== id) return;
        const el = $("conv-sub");
        el.dataset.live = s;
        if (s === "live") this.liveNote = "";
        else if (s === "reconnecting") this.liveNote = "Reconnecting to live updates…";
        else if (s === "failed" || s === "unavailable") this.liveNote = `Live updates stopped${why ? `: ${why}` : ""}. Reload to catch up.`;
        this.header();
      },
    }));
  },

  onLive(e) {
    if (this.events.has(e.seq)) return;
    $("tl-items").querySelector(".tl-empty")?.remove();
    const stick = this.nearEnd();
    this.add(e, true);
    if (stick) this.scrollEnd();
    if (["message", "attachment", "callback.requested", "triage.result", "channel.switched", "opt_out", "opt_in", "consent.granted", "consent.revoked", "state.changed", "assigned", "call.started", "call.ended", "call.failed"].includes(e.kind)) this.refreshCtx();
    if (e.kind === "attachment") this.loadAttachments();
    // The open conversation's row follows its timeline at once.
    const row = inbox.items.get(this.id);
    if (row && !QUIET_KINDS.has(e.kind) && (e.seq > (row.lastEvent?.seq ?? 0) || (e.seq === row.lastEvent?.seq && row.lastEvent.body == null && e.body))) {
      inbox.update({ ...row, patient: { ...row.patient }, lastEvent: { seq: e.seq, kind: e.kind, channel: e.channel, at: e.at, body: e.body, meta: e.meta, actor: e.actor }, lastSeq: Math.max(row.lastSeq || 0, e.seq), updatedAt: e.at });
    }
    if (e.kind === "message" && e.actor.type === "patient") {
      announce(`New ${channelLabel(e.channel)} message from ${this.patient?.display_name || "the patient"}`);
      api.markRead(this.id, e.seq).catch(() => {});
    }
    if (e.kind === "state.changed" || e.kind === "assigned") {
      api.conversation(this.id).then((c) => { if (c.id === this.id) { this.conv = c; this.header(); } }).catch(() => {});
    }
  },

  onReceipt(r) {
    if (r.role !== "patient") return;
    this.readByPatient = Math.max(this.readByPatient, r.read_seq || 0);
    for (const [seq, el] of this.els) {
      const ev = this.events.get(seq);
      if (ev?.kind === "message" && ev.channel === "chat" && ev.actor.type !== "patient") this.paintDelivery(el, ev);
    }
  },

  inboxChanged(item) {
    if (this.conv && (item.state !== this.conv.state || item.assignee !== (this.conv.assignee || null))) {
      this.conv = { ...this.conv, state: item.state, assignee: item.assignee, queue: item.queue };
      this.header();
    }
  },

  /** Adds (or, for our own pending message, settles) an event on the timeline. */
  add(e, live) {
    this.events.set(e.seq, e);
    this.lastSeq = Math.max(this.lastSeq, e.seq);
    if (e.kind === "delivery.status") {
      const of = e.meta?.of_seq;
      if (of != null) {
        const cur = this.delivery.get(of);
        const next = e.meta.status;
        if (!cur || (RANK[next] ?? 0) >= (RANK[cur.state] ?? 0)) this.delivery.set(of, { state: next, error: e.meta.error || cur?.error || null });
        const el = this.els.get(of);
        if (el) this.paintDelivery(el, this.events.get(of));
        if (live && ["failed", "undelivered"].includes(next)) announce(`A message was not delivered: ${deliveryReason(e.meta.error, next)}`, true);
      }
      return;
    }
    // Our own message coming back: take over the pending bubble.
    let el = null;
    const key = e.meta?.idempotency_key || null;
    for (const [k, l] of this.local) {
      if (l.seq === e.seq || (key && k === key)) { el = l.el; this.local.delete(k); break; }
    }
    const fresh = this.renderEvent(e);
    if (el) { el.replaceWith(fresh); } else this.place(fresh, e.seq);
    this.els.set(e.seq, fresh);
  },

  place(el, seq) {
    const list = $("tl-items");
    let before = null;
    for (const child of list.children) {
      const s = Number(child.dataset.seq);
      if (s > seq) { before = child; break; }
    }
    list.insertBefore(el, before);
  },

  nearEnd() {
    const t = $("timeline");
    return t.scrollHeight - t.scrollTop - t.clientHeight < 120;
  },
  scrollEnd() {
    const t = $("timeline");
    t.scrollTop = t.scrollHeight;
  },

  async earlier() {
    const btn = $("tl-earlier");
    btn.disabled = true;
    const until = this.firstSeq;
    const after = Math.max(0, until - 151);
    try {
      const page = await api.events(this.id, after, 150);
      const t = $("timeline");
      const from = t.scrollHeight - t.scrollTop;
      for (const e of page.events) if (e.seq < until) this.add(e, false);
      this.firstSeq = after + 1;
      btn.hidden = after === 0;
      t.scrollTop = t.scrollHeight - from;
    } catch (e) {
      this.notice(explain(e, "Earlier events could not be loaded"), "bad");
    }
    btn.disabled = false;
  },

  who(actor) {
    if (actor.type === "patient") return this.patient?.display_name || "Patient";
    if (actor.type === "staff") return actor.id === app.me?.subject ? `${app.me.name} (you)` : actor.id || "Staff";
    if (actor.type === "bot") return actor.id ? `Automated (${actor.id})` : "Automated";
    return "System";
  },

  renderEvent(e) {
    const side = e.actor.type === "patient" ? "in" : (e.kind === "message" ? "out" : "sys");
    const li = h("li", { class: "ev", "data-seq": e.seq, "data-kind": e.kind, "data-channel": e.channel, "data-side": side });
    const meta = h("div", { class: "ev-meta" }, channelBadge(e.channel), h("span", { class: "ev-who" }, this.who(e.actor)),
      h("time", { datetime: e.at, title: fullFmt.format(new Date(e.at)) }, when(e.at)));
    switch (e.kind) {
      case "message": {
        li.classList.add("bubble");
        if (e.meta?.auto_reply) li.dataset.auto = "1";
        li.append(meta, h("p", { class: "ev-body" }, e.body || ""));
        if (side === "out") { li.append(h("p", { class: "ev-state" })); this.paintDelivery(li, e); }
        if (e.meta?.handoff) li.append(h("p", { class: "ev-note" }, icon("link"), "Visit link"));
        break;
      }
      case "note":
        li.classList.add("note");
        li.append(h("div", { class: "ev-meta" }, h("span", { class: "chan", "data-channel": "note" }, icon("note"), h("span", {}, "Internal note")), h("span", { class: "ev-who" }, this.who(e.actor)), h("time", { datetime: e.at }, when(e.at))),
          h("p", { class: "ev-body" }, e.body || ""), h("p", { class: "ev-hint" }, "Staff only — never shown to the patient."));
        break;
      case "attachment": {
        li.classList.add("card");
        const a = this.attachments?.get(e.meta?.attachment_id);
        const reviewed = a?.review === "reviewed";
        li.append(meta, h("p", { class: "ev-body" }, icon("attachment"), ` ${e.meta?.filename || "File"} · ${e.meta?.content_type || "unknown type"}${e.meta?.size ? ` · ${bytes(e.meta.size)}` : ""}`),
          h("p", { class: "ev-review", "data-reviewed": reviewed ? "1" : "" }, a ? (reviewed ? `Reviewed${a.reviewedBy ? ` by ${a.reviewedBy}` : ""}${a.note ? `: “${a.note}”` : ""}` : "Waiting for review") : ""),
          e.meta?.attachment_id ? h("button", { type: "button", class: "btn-secondary btn-small", onclick: () => review.open(e.meta.attachment_id) }, reviewed ? "View" : "Review") : null);
        break;
      }
      case "triage.result":
        li.classList.add("card", "triage");
        li.append(meta, h("p", { class: "ev-body" }, h("strong", {}, "Triage result: "), e.body || triageWords(e.meta?.level) || "—"), metaLine(e.meta, ["disposition", "score"]) || "");
        break;
      case "callback.requested":
        li.classList.add("card", "callback");
        li.append(meta, h("p", { class: "ev-body" }, h("strong", {}, "Callback requested"), e.body ? `: ${e.body}` : ""));
        break;
      default: {
        li.classList.add("line");
        li.append(channelBadge(e.channel === "video" && callRoom(e.meta) ? "voice" : e.channel), h("span", { class: "ev-line" }, lineText(e)), h("time", { datetime: e.at, title: fullFmt.format(new Date(e.at)) }, when(e.at)));
      }
    }
    return li;
  },

  paintDelivery(li, e) {
    const line = li.querySelector(".ev-state");
    if (!line || !e) return;
    let d = this.delivery.get(e.seq);
    if (e.channel === "chat") {
      d = { state: this.readByPatient >= e.seq ? "read" : "posted" };
    }
    if (!d) d = { state: e.meta?.auto_reply ? "sent" : "queued" };
    const def = DELIVERY[d.state] || { text: d.state, icon: "tick" };
    const reason = def.bad ? deliveryReason(d.error, d.state) : "";
    li.dataset.state = d.state;
    line.replaceChildren(icon(def.icon), h("span", {}, def.text + (reason ? `: ${reason}` : "")));
  },

  header() {
    const c = this.conv;
    if (!c) return;
    const name = this.patient?.display_name || inbox.items.get(c.id)?.patient.name || "Patient";
    $("conv-title").textContent = name;
    const bits = [STATE_LABELS[c.state] || c.state];
    if (c.queue) bits.push(`queue ${c.queue}`);
    bits.push(c.assignee ? (c.assignee === app.me?.subject ? "assigned to you" : `assigned to ${c.assignee}`) : "not assigned");
    if (c.subject) bits.unshift(c.subject);
    $("conv-sub").textContent = bits.join(" · ") + (this.liveNote ? ` — ${this.liveNote}` : "");
    const mine = c.assignee === app.me?.subject;
    $("act-assign").hidden = mine || c.state === "closed";
    $("act-close").textContent = c.state === "closed" ? "Reopen" : "Close";
    $("act-close").setAttribute("aria-label", c.state === "closed" ? "Reopen the conversation" : "Close the conversation");
    $("act-close").dataset.confirm = "";
    const task = agent.taskFor(c.id);
    const onCall = call.current && call.current.conversationId === c.id && !["ended", "failed"].includes(call.current.state);
    $("act-done").hidden = !task || !!onCall;
    $("act-done").textContent = task ? `Done: finish this ${channelLabel(task.channel).toLowerCase()} task` : "Done";
    const ph = this.patient?.bindings?.phone;
    $("act-call").disabled = !ph || !!call.current;
    $("act-call").title = ph ? "" : "No phone number on file";
  },

  composerSetup() {
    const sel = $("reply-channel");
    const b = this.patient?.bindings || {};
    const out = new Set(this.ctx?.optedOut || []);
    const options = [
      ["sms", "SMS", !!b.phone, b.phone ? "" : "no mobile number on file"],
      ["whatsapp", "WhatsApp", !!b.whatsapp, b.whatsapp ? "" : "no WhatsApp number on file"],
      ["chat", "Chat", true, ""],
    ];
    sel.replaceChildren(...options.map(([v, label, ok, why]) => {
      const blocked = out.has(v);
      return h("option", { value: v, disabled: !ok || blocked }, `${label}${blocked ? " — opted out" : !ok ? ` — ${why}` : ""}`);
    }));
    // The patient's channel: where they last wrote to us.
    let pick = null;
    for (const e of [...this.events.values()].reverse()) {
      if (e.kind === "message" && e.actor.type === "patient" && ["sms", "whatsapp", "chat"].includes(e.channel)) { pick = e.channel; break; }
    }
    pick ||= this.patient?.preferred_channel;
    const usable = (v) => [...sel.options].some((o) => o.value === v && !o.disabled);
    if (!usable(pick)) pick = ["sms", "whatsapp", "chat"].find(usable);
    sel.value = pick;
    this.hint();
  },

  /** A reply left unsent when the session expired comes back (never sent by itself). */
  restoreDraft() {
    let d = null;
    try { d = JSON.parse(sessionStorage.getItem(DRAFT_KEY) || "null"); } catch { /* none */ }
    if (!d || d.conv !== this.id) return;
    sessionStorage.removeItem(DRAFT_KEY);
    $("reply-text").value = d.text;
    if ([...$("reply-channel").options].some((o) => o.value === d.channel && !o.disabled)) { $("reply-channel").value = d.channel; this.hint(); }
    this.notice("Your unsent reply from before you signed in again is back in the reply box. Check it, then send it.", "info");
  },

  hint() {
    const ch = $("reply-channel").value;
    const b = this.patient?.bindings || {};
    const out = this.ctx?.optedOut || [];
    const notes = [];
    if (ch === "sms") notes.push(`Texts ${phone(b.phone)} from the clinic's number.`);
    if (ch === "whatsapp") notes.push(`Writes to ${phone(b.whatsapp)} on WhatsApp (outside 24 hours since their last message, WhatsApp needs a template).`);
    if (ch === "chat") notes.push("Posts to the patient's secure chat; they see it when they open their chat link.");
    for (const c of out) notes.push(`The patient opted out of ${channelLabel(c)}.`);
    notes.push("Enter sends, Shift+Enter starts a new line.");
    $("reply-hint").textContent = notes.join(" ");
  },

  async send(retry = null) {
    const ch = retry?.channel || $("reply-channel").value;
    const body = retry?.body ?? $("reply-text").value.trim();
    if (!body) { $("reply-text").focus(); return; }
    if (!ch) { this.notice("There is no channel to reply on: the patient has no number on file and chat is unavailable.", "bad"); return; }
    const key = retry?.key || uuid();
    const convId = this.id;
    let el = retry?.el;
    if (!el) {
      el = h("li", { class: "ev bubble", "data-side": "out", "data-channel": ch, "data-kind": "message", "data-seq": String(Number.MAX_SAFE_INTEGER) },
        h("div", { class: "ev-meta" }, channelBadge(ch), h("span", { class: "ev-who" }, `${app.me?.name || "You"} (you)`), h("time", {}, timeFmt.format(new Date()))),
        h("p", { class: "ev-body" }, body), h("p", { class: "ev-state" }));
      $("tl-items").querySelector(".tl-empty")?.remove();
      $("tl-items").append(el);
      $("reply-text").value = "";
      this.scrollEnd();
    }
    const entry = { el, channel: ch, body, key, seq: null };
    this.local.set(key, entry);
    el.dataset.state = "sending";
    el.querySelector(".ev-state").replaceChildren(icon("clock"), h("span", {}, "Sending…"));
    el.querySelector(".retry")?.remove();
    try {
      let seq;
      if (ch === "chat") {
        const ev = await api.appendChat(convId, body, key);
        seq = ev.seq;
        if (this.id === convId && !this.events.has(seq)) this.onLive(ev);
      } else {
        const m = await api.sendMessage(convId, ch, body, key);
        seq = m.seq;
        const cur = this.delivery.get(seq);
        if (!cur || (RANK[m.state] ?? 0) > (RANK[cur.state] ?? 0)) this.delivery.set(seq, { state: m.state, error: m.error });
      }
      if (this.id !== convId) return;
      entry.seq = seq;
      el.dataset.seq = seq;
      if (this.events.has(seq)) {
        // The stream was faster: the event is already drawn; drop our copy.
        this.local.delete(key);
        if (this.els.get(seq) !== el) el.remove();
        this.paintDelivery(this.els.get(seq), this.events.get(seq));
      } else {
        this.paintDelivery(el, { seq, channel: ch, meta: {} });
      }
      announce(`Message sent by ${channelLabel(ch)}`);
    } catch (e) {
      if (this.id !== convId) return;
      el.dataset.state = "failed";
      const why = explain(e, "The message could not be sent");
      el.querySelector(".ev-state").replaceChildren(icon("alert"), h("span", {}, why));
      el.append(h("button", { type: "button", class: "btn-secondary btn-small retry", onclick: () => this.send(entry) }, "Try again"));
      announce(why, true);
      if (e.code === "opted_out") this.refreshCtx();
    }
  },

  async assign() {
    const btn = $("act-assign");
    btn.disabled = true;
    try {
      this.conv = await api.assign(this.id, app.me.subject);
      this.header();
      announce("Assigned to you");
    } catch (e) {
      this.notice(explain(e, "Could not assign the conversation to you"), "bad");
    }
    btn.disabled = false;
  },

  async finishTask() {
    const task = agent.taskFor(this.id);
    if (!task) return;
    const btn = $("act-done");
    btn.disabled = true;
    try {
      await agent.finish(task.id);
      announce("Task finished; wrap-up started");
    } catch (e) {
      this.notice(explain(e, "The task could not be finished"), "bad");
    }
    btn.disabled = false;
    this.header();
  },

  async closeOrReopen(btn) {
    if (this.conv?.state !== "closed" && btn.dataset.confirm !== "1") {
      btn.dataset.confirm = "1";
      btn.textContent = "Confirm: close it";
      setTimeout(() => { if (btn.dataset.confirm === "1") this.header(); }, 5000);
      return;
    }
    btn.disabled = true;
    try {
      this.conv = this.conv.state === "closed" ? await api.reopen(this.id) : await api.close(this.id);
      this.header();
      announce(this.conv.state === "closed" ? "Conversation closed" : "Conversation reopened");
    } catch (e) {
      this.notice(explain(e, "The conversation's state could not be changed"), "bad");
    }
    btn.disabled = false;
  },

  async ensureRoom() {
    if (this.room) return this.room;
    const r = await api.createRoom(this.id);
    this.room = r.id;
    return r.id;
  },

  async startVideo() {
    const btn = $("act-video");
    btn.disabled = true;
    try {
      const room = await this.ensureRoom();
      const link = `/visit?room=${encodeURIComponent(room)}&conversation=${encodeURIComponent(this.id)}#token=${encodeURIComponent(auth.token)}`;
      this.notice("The video room is open. Join it, then send the patient their link.", "ok",
        h("a", { class: "btn-primary btn-link", href: link, target: "_blank", rel: "noopener" }, "Join the video visit (new tab)"),
        h("button", { type: "button", class: "btn-secondary", onclick: () => this.sendLink() }, "Text the patient a link"));
    } catch (e) {
      this.notice(explain(e, "The video visit could not be started"), "bad");
    }
    btn.disabled = false;
  },

  async sendLink() {
    const btn = $("act-link");
    btn.disabled = true;
    let ch = $("reply-channel").value;
    if (ch !== "sms" && ch !== "whatsapp") ch = [...$("reply-channel").options].find((o) => (o.value === "sms" || o.value === "whatsapp") && !o.disabled)?.value;
    if (!ch) {
      this.notice("The visit link could not be sent: the patient has no number to text, or opted out of texts.", "bad");
      btn.disabled = false;
      return;
    }
    try {
      const room = await this.ensureRoom();
      const r = await api.visitLink(this.id, ch, room);
      const exp = r.link_expires_at ? timeFmt.format(new Date(r.link_expires_at * 1000)) : null;
      this.notice(`Visit link sent by ${channelLabel(ch)}${exp ? `; it works until ${exp}` : ""}. Its delivery shows on the timeline.`, "ok");
    } catch (e) {
      this.notice(explain(e, "The visit link could not be sent"), "bad");
    }
    btn.disabled = false;
  },

  async callPatient() {
    const to = this.patient?.bindings?.phone;
    if (!to) { this.notice("There is no phone number on file for this patient.", "bad"); return; }
    const btn = $("act-call");
    btn.disabled = true;
    try {
      const room = await this.ensureRoom();
      const c = await api.dial(this.id, to, room);
      call.start({ callId: c.id, roomId: room, joinToken: auth.token, conversationId: this.id, label: `${this.patient.display_name} · ${phone(to)}`, outbound: true });
    } catch (e) {
      this.notice(explain(e, "The call could not be placed"), "bad");
      btn.disabled = false;
    }
  },

  async loadContext() {
    if (!this.id) return;
    const id = this.id;
    try {
      const ctx = await api.context(id);
      if (id !== this.id) return;
      this.ctx = ctx;
      this.patient = ctx.patient;
      const keep = $("reply-channel").value;
      this.composerSetup();
      if ([...$("reply-channel").options].some((o) => o.value === keep && !o.disabled)) { $("reply-channel").value = keep; this.hint(); }
      this.context();
      this.header();
    } catch { /* the panel keeps what it had */ }
  },

  attachments: new Map(),
  async loadAttachments() {
    const id = this.id;
    try {
      const list = await api.attachments(id);
      if (id !== this.id) return;
      this.attachments = new Map(list.map((a) => [a.id, a]));
      for (const [seq, el] of this.els) {
        const e = this.events.get(seq);
        if (e?.kind === "attachment") { const fresh = this.renderEvent(e); el.replaceWith(fresh); this.els.set(seq, fresh); }
      }
      this.context();
    } catch (e) {
      this.attachmentsError = explain(e, "Attachments could not be listed");
      this.context();
    }
  },

  context() { contextPanel.render(this); },
};

function metaLine(meta, keys) {
  const bits = keys.filter((k) => meta?.[k] != null && meta[k] !== "").map((k) => `${k}: ${meta[k]}`);
  return bits.length ? h("p", { class: "ev-hint" }, bits.join(" · ")) : null;
}

/** Whether a room's event is the room of the phone call on the bar (a phone call taken from a queue meets in a room). */
function callRoom(m) {
  return !!m?.session_id && m.session_id === call.current?.roomId;
}

/** The words for a one-line event (calls, switches, IVR, consent, state). */
function lineText(e) {
  const m = e.meta || {};
  const video = e.channel === "video";
  switch (e.kind) {
    case "call.started": return video ? (callRoom(m) ? "The call's audio room opened" : "Video visit started") : `Phone call started${m.direction ? ` (${m.direction === "inbound" ? "patient called in" : "we called out"})` : ""}`;
    case "call.ended": if (video && callRoom(m)) return "The call's audio room closed";
      return `${video ? "Video visit" : "Phone call"} ended${m.duration_secs != null ? ` after ${duration(m.duration_secs)}` : ""}${m.reason ? ` — ${causeWords(m.reason) || String(m.reason).replace(/_/g, " ")}` : ""}`;
    case "call.failed": return `${video ? "Video visit" : "Phone call"} failed${m.reason ? `: ${String(m.reason).replace(/_/g, " ")}` : ""}${m.sip_status ? ` (SIP ${m.sip_status})` : ""}`;
    case "channel.switched": return `Switched from ${channelLabel(m.from)} to ${channelLabel(m.to)}${m.reason ? ` — ${String(m.reason).replace(/_/g, " ")}` : ""}`;
    case "participant.joined": return `${m.name || conversation.who(e.actor)} joined the ${video && !callRoom(m) ? "visit" : "call"}`;
    case "participant.left": return `${m.name || conversation.who(e.actor)} left the ${video && !callRoom(m) ? "visit" : "call"}`;
    case "quality.degraded": return `Connection quality dropped${m.participant ? ` for ${m.participant}` : ""}`;
    case "quality.recovered": return "Connection quality recovered";
    case "ivr.input": return `Pressed ${m.digit ?? e.body ?? "?"} in the phone menu${m.label ? ` (${m.label})` : ""}`;
    case "ivr.route": return `Phone menu sent the call to ${m.queue ? `queue ${m.queue}` : m.target || e.body || "a queue"}`;
    case "ivr.step": return `Phone menu${m.node ? ` (step “${m.node}”)` : ""}`;
    case "routing": return routingWords(m);
    case "consent.granted": return `Consent given${e.body ? `: ${e.body}` : m.channel ? ` for ${channelLabel(m.channel)}` : ""}`;
    case "consent.revoked": return `Consent withdrawn${e.body ? `: ${e.body}` : m.channel ? ` for ${channelLabel(m.channel)}` : ""}`;
    case "opt_out": return `Patient opted out of ${channelLabel(m.channel || e.channel)}${m.sender ? ` from ${phone(m.sender)}` : ""}`;
    case "opt_in": return `Patient opted back in to ${channelLabel(m.channel || e.channel)}`;
    case "state.changed": return `Conversation ${STATE_LABELS[m.to] ? `is now ${STATE_LABELS[m.to].toLowerCase()}` : "state changed"}${m.reason ? ` — ${m.reason}` : ""}`;
    case "assigned": return m.assignee ? `Assigned to ${m.assignee === app.me?.subject ? "you" : m.assignee}` : m.queue ? `Placed in queue ${m.queue}` : "Assignment changed";
    default: return eventSummary(e);
  }
}

// =====================================================================
// 7. context panel and attachment review
// =====================================================================

const PENDING_WORDS = {
  awaiting_assignment: (p) => `Waiting for someone to take it (${STATE_LABELS[p.state]?.toLowerCase() || p.state})`,
  unanswered_messages: (p) => `${p.count} unanswered message${p.count === 1 ? "" : "s"} (${(p.channels || []).map(channelLabel).join(", ")}) since ${when(p.since)}`,
  callback_requested: (p) => `Callback requested at ${when(p.at)} (${channelLabel(p.channel)})`,
  delivery_failed: (p) => `A ${channelLabel(p.channel)} message failed to deliver at ${when(p.at)}`,
  call_failed: (p) => `A call failed at ${when(p.at)} (${channelLabel(p.channel)})`,
};

/** The context snapshot, drawn as sections (used by the panel and the offer dialog). */
function contextSections(ctx, { compact = false } = {}) {
  if (compact) return offerSections(ctx);
  const out = [];
  const p = ctx.patient;
  if (p) {
    const b = p.bindings || {};
    out.push(section("Patient", h("dl", { class: "facts" },
      fact("Name", p.display_name),
      b.phone ? fact("Phone", phone(b.phone)) : fact("Phone", "none on file"),
      b.whatsapp && b.whatsapp !== b.phone ? fact("WhatsApp", phone(b.whatsapp)) : b.whatsapp ? fact("WhatsApp", "same number") : null,
      p.date_of_birth ? fact("Born", p.date_of_birth) : null,
      p.preferred_channel ? fact("Prefers", channelLabel(p.preferred_channel)) : null,
      p.time_zone ? fact("Time zone", p.time_zone) : null,
      p.external_id ? fact("Record no.", p.external_id) : null)));
  }
  out.push(section("Pending", ctx.pending.length
    ? h("ul", { class: "pending" }, ctx.pending.map((x) => h("li", { "data-type": x.type }, icon(x.type === "delivery_failed" || x.type === "call_failed" ? "alert" : "clock"), h("span", {}, (PENDING_WORDS[x.type] || (() => x.type))(x)))))
    : h("p", { class: "muted" }, "Nothing pending.")));
  out.push(section("Triage", ctx.triage
    ? h("div", { class: "triage-box" }, h("p", {}, h("strong", {}, ctx.triage.body || triageWords(ctx.triage.meta.level) || "Result")), metaLine(ctx.triage.meta, ["disposition", "score"]), h("p", { class: "muted" }, `${when(ctx.triage.at)} · ${ctx.triage.meta.source === "ivr" ? "phone menu" : channelLabel(ctx.triage.channel)}`))
    : h("p", { class: "muted" }, "No triage result.")));
  out.push(section("Last channel switch", ctx.lastSwitch
    ? h("p", {}, lineText(ctx.lastSwitch), h("span", { class: "muted" }, ` · ${when(ctx.lastSwitch.at)}`))
    : h("p", { class: "muted" }, "The patient has not switched channels.")));
  const consent = [];
  for (const c of ctx.optedOut) consent.push(h("li", { "data-tone": "bad" }, icon("alert"), h("span", {}, `Opted out of ${channelLabel(c)}: do not message them there.`)));
  const consentEvents = (ctx.recent || []).filter((e) => e.kind.startsWith("consent."));
  for (const e of consentEvents) consent.push(h("li", {}, lineText(e), ` · ${when(e.at)}`));
  out.push(section("Consent", consent.length ? h("ul", { class: "consent" }, consent) : h("p", { class: "muted" }, "No opt-outs. No consent changes recorded recently.")));
  {
    if (ctx.openSessions.length) out.push(section("Live now", h("ul", {}, ctx.openSessions.map((s) => h("li", {}, `${channelLabel(s.channel)} session since ${when(s.started_at)}`)))));
    if (ctx.appointments.length) {
      const upcoming = ctx.appointments.filter((a) => a.status !== "cancelled").slice(0, 3);
      out.push(section("Appointments", h("ul", {}, upcoming.map((a) => h("li", {}, `${fullFmt.format(new Date(a.start_time))}${a.clinician ? ` with ${a.clinician}` : ""} — ${a.status}`)))));
    }
    if (ctx.channels.length) out.push(section("Channels used", h("ul", { class: "chan-list" }, ctx.channels.map((c) => h("li", {}, channelBadge(c.channel), ` ${c.events} event${c.events === 1 ? "" : "s"}, last ${when(c.last_at)}`)))));
  }
  return out;
}

/**
 * The context in the offer dialog: only what helps decide and prepare in
 * the seconds before answering (what the patient wrote, what is pending,
 * warnings); who is calling and the triage are said above it.
 */
function offerSections(ctx) {
  const out = [];
  const telling = (ctx.recent || []).filter((e) => TELLING_KINDS.has(e.kind) && !(e.kind === "triage.result" && ctx.triage?.seq === e.seq)).slice(-3);
  out.push(section("Latest from the patient", telling.length
    ? h("ul", { class: "recent" }, telling.map((e) => h("li", {}, channelBadge(e.channel, "small"),
      h("span", {}, e.kind === "message" ? h("q", {}, eventSummary(e)) : eventSummary(e), h("span", { class: "muted" }, ` · ${when(e.at)}`)))))
    : h("p", { class: "muted" }, "Nothing recent: a first contact.")));
  const pending = ctx.pending.filter((x) => x.type !== "awaiting_assignment");
  if (pending.length) out.push(section("Pending", h("ul", { class: "pending" }, pending.map((x) => h("li", { "data-type": x.type }, icon(x.type === "delivery_failed" || x.type === "call_failed" ? "alert" : "clock"), h("span", {}, (PENDING_WORDS[x.type] || (() => x.type))(x)))))));
  const warn = [];
  for (const c of ctx.optedOut) warn.push(h("li", { "data-tone": "bad" }, icon("alert"), h("span", {}, `Opted out of ${channelLabel(c)}`)));
  if (ctx.lastSwitch) warn.push(h("li", {}, icon("transfer"), h("span", {}, `${lineText(ctx.lastSwitch)} · ${when(ctx.lastSwitch.at)}`)));
  if (warn.length) out.push(section("Good to know", h("ul", { class: "consent" }, warn)));
  const p = ctx.patient || {};
  const facts = [p.date_of_birth ? fact("Born", p.date_of_birth) : null, p.external_id ? fact("Record no.", p.external_id) : null,
    p.preferred_channel ? fact("Prefers", channelLabel(p.preferred_channel)) : null].filter(Boolean);
  const next = (ctx.appointments || []).find((a) => a.status !== "cancelled");
  if (next) facts.push(fact("Next visit", `${fullFmt.format(new Date(next.start_time))}${next.clinician ? ` with ${next.clinician}` : ""}`));
  if (facts.length) out.push(section("Patient", h("dl", { class: "facts" }, ...facts)));
  return out;
}
function section(title, ...body) { return h("section", { class: "ctx-section" }, h("h3", {}, title), ...body); }
function fact(k, v) { return [h("dt", {}, k), h("dd", {}, v)]; }

const contextPanel = {
  render(cv) {
    const body = $("ctx-body");
    if (!cv.id) return;
    if (!cv.ctx) {
      body.replaceChildren(h("p", { class: "notice", "data-tone": "bad" }, "The context could not be loaded. The timeline still shows everything that happened."));
      return;
    }
    const parts = contextSections(cv.ctx);
    const att = [...(cv.attachments?.values() || [])];
    let attBody;
    if (cv.attachmentsError) attBody = h("p", { class: "notice", "data-tone": "bad" }, cv.attachmentsError);
    else if (!att.length) attBody = h("p", { class: "muted" }, "No attachments.");
    else attBody = h("ul", { class: "attachments" }, att.map((a) => h("li", { "data-review": a.review },
      h("span", { class: "att-name" }, icon("attachment"), ` ${a.filename || a.type}`),
      h("span", { class: "att-state" }, a.review === "reviewed" ? `Reviewed${a.reviewedBy ? ` by ${a.reviewedBy}` : ""}` : "Needs review"),
      h("button", { type: "button", class: "btn-secondary btn-small", onclick: () => review.open(a.id), "aria-label": `${a.review === "reviewed" ? "View" : "Review"} ${a.filename || "attachment"}` }, a.review === "reviewed" ? "View" : "Review"))));
    parts.splice(2, 0, section("Attachments", attBody));
    body.replaceChildren(...parts);
  },
};

const review = {
  id: null,
  url: null,
  init() {
    $("review-cancel").addEventListener("click", () => $("review").close());
    $("review").addEventListener("close", () => { if (this.url) URL.revokeObjectURL(this.url); this.url = null; this.id = null; });
    $("review-form").addEventListener("submit", (e) => { e.preventDefault(); this.submit(); });
  },
  async open(id) {
    this.id = id;
    const dlg = $("review");
    $("review-error").hidden = true;
    $("review-note").value = "";
    $("review-preview").replaceChildren(h("p", { class: "muted" }, "Loading the file…"));
    $("review-meta").textContent = "";
    $("review-state").replaceChildren();
    dlg.showModal();
    try {
      const a = await api.attachment(id);
      if (this.id !== id) return;
      this.show(a);
      const blob = await api.attachmentContent(id);
      if (this.id !== id) return;
      this.url = URL.createObjectURL(blob);
      const name = a.filename || "attachment";
      if (/^image\/(png|jpeg|gif|webp)$/.test(a.type)) {
        $("review-preview").replaceChildren(h("img", { src: this.url, alt: `Image from the patient: ${name}` }),
          h("a", { href: this.url, download: name, class: "btn-quiet" }, `Download ${name}`));
      } else {
        $("review-preview").replaceChildren(h("p", {}, `No preview for ${a.type} files.`), h("a", { href: this.url, download: name, class: "btn-secondary btn-link" }, `Download ${name} (${bytes(a.size)})`));
      }
    } catch (e) {
      if (this.id !== id) return;
      $("review-preview").replaceChildren(h("p", { class: "notice", "data-tone": "bad", role: "alert" },
        e instanceof ApiError && e.status === 500 ? "The stored file failed its integrity check and is not shown. Tell your administrator." : explain(e, "The file could not be loaded")));
    }
  },
  show(a) {
    $("review-title").textContent = `Review: ${a.filename || "attachment"}`;
    $("review-meta").textContent = `${a.type} · ${bytes(a.size)} · received ${when(a.at)} from ${a.uploadedBy?.type === "patient" ? "the patient" : a.uploadedBy?.type || "unknown"}`;
    const done = a.review === "reviewed";
    $("review-state").replaceChildren(done
      ? h("p", { class: "notice", "data-tone": "ok" }, `Reviewed${a.reviewedBy ? ` by ${a.reviewedBy}` : ""}${a.reviewedAt ? ` at ${when(a.reviewedAt)}` : ""}${a.note ? `: “${a.note}”` : "."}`)
      : h("p", { class: "muted" }, "Not reviewed yet. Add a note for the record (what you saw, what happens next)."));
    $("review-note").disabled = done;
    $("review-note").closest("form").querySelector("label[for=review-note]").hidden = done;
    $("review-note").hidden = done;
    $("review-submit").hidden = done;
  },
  async submit() {
    const id = this.id;
    const btn = $("review-submit");
    btn.disabled = true;
    $("review-error").hidden = true;
    try {
      const a = await api.review(id, $("review-note").value.trim());
      this.show(a);
      announce("Attachment marked reviewed");
      if (conversation.attachments.has(id)) {
        conversation.attachments.set(id, a);
        conversation.loadAttachments();
      }
      $("review-cancel").focus();
    } catch (e) {
      $("review-error").hidden = false;
      $("review-error").textContent = e instanceof ApiError && e.status === 409 ? "Someone already reviewed this attachment; it is shown as it is now." : explain(e, "Could not mark it reviewed");
      if (e instanceof ApiError && e.status === 409) api.attachment(id).then((a) => this.show(a)).catch(() => {});
    }
    btn.disabled = false;
  },
};

// =====================================================================
// 8. agent: availability and incoming work
// =====================================================================

const AGENT_STATES = { available: "Available", away: "Away", offline: "Offline", busy: "Busy", wrap_up: "Wrap-up" };

const agent = {
  me: null,
  stream: null,
  offer: null,
  offerTimer: 0,
  wrapTimer: 0,
  available: false,
  accepted: new Set(), // conversations taken here (their `assigned` echo needs no banner)

  init() {
    $("agent-state").addEventListener("change", (e) => this.setState(e.target.value));
    $("offer-accept").addEventListener("click", () => this.accept());
    $("offer-reject").addEventListener("click", () => this.reject());
    $("offer-reopen").addEventListener("click", () => this.showOffer());
    // Escape hides the offer without answering it; it stays reachable from the top bar.
    $("offer").addEventListener("cancel", () => { if (this.offer) $("offer-reopen").hidden = false; });
  },

  detail(text, tone = "") {
    $("agent-detail").textContent = text;
    $("agent-detail").dataset.tone = tone;
  },

  /** Tasks of mine on this conversation (a chat or SMS taken from a queue). */
  taskFor(conversationId) {
    return this.me?.tasks.find((t) => t.conversationId === conversationId && t.state === "assigned") || null;
  },

  async start() {
    const sel = $("agent-state");
    if (!app.me?.agent && app.me?.role === "admin") { $("agent").hidden = true; return; }
    if (!app.me?.agent) {
      // No agent profile (GET /v1/me says so): no routing controls, just why.
      $("agent").hidden = false;
      sel.hidden = $("agent").querySelector(".agent-label").hidden = true;
      $("agent").dataset.routing = "none";
      this.detail(app.me?.seesAll === false ? "Queue work needs access to every conversation" : "Not set up to take calls from queues", "muted");
      return;
    }
    $("agent").hidden = false;
    try {
      this.me = await api.agentMe();
      this.available = true;
      sel.disabled = false;
      sel.hidden = $("agent").querySelector(".agent-label").hidden = false;
      $("agent").dataset.routing = "";
      this.paint();
      if (this.me.reservation) this.hydrate(this.me.reservation);
      this.stream = track(new LiveStream(api.streams.agent, {
        events: {
          // On every (re)connection: the state, the pending offer, the tasks.
          hello: (raw) => this.onView(map.agent(raw)),
          resync: () => api.agentMe().then((v) => this.onView(v)).catch(() => {}),
          reservation: (r) => this.onReservation(map.reservation(r)),
          reservation_cancelled: (r) => this.offerGone(r.id, /hung|abandon|cancel/.test(r.reason || "") || !r.reason ? "The caller hung up before you answered." : `The offer was withdrawn (${String(r.reason).replace(/_/g, " ")}).`),
          reservation_timed_out: (r) => this.offerGone(r.id, "The offer timed out before you answered; it goes to the next agent. A missed offer may set you Away: your status above says, and Available takes work again."),
          assigned: (a) => this.onAssigned(a),
          state: (st) => { this.me = { ...this.me, state: st.state, wrapUpUntil: ms(st.wrap_up_until) }; this.paint(); },
        },
        onStatus: (st, why) => {
          if (st === "reconnecting") this.detail("Reconnecting — you may miss offers", "warn");
          else if (st === "live") this.paint();
          else if (st === "failed") this.detail(`Offers stopped: ${why}`, "bad");
          else if (st === "unavailable") this.detail("Incoming work is not available on this server", "warn");
        },
      }));
    } catch (e) {
      sel.disabled = true;
      // Without routing there is no status to choose: say so instead of showing one.
      sel.hidden = $("agent").querySelector(".agent-label").hidden = true;
      $("agent").dataset.routing = "none";
      if (e instanceof ApiError && e.status === 401) return;
      if (e instanceof ApiError && e.status === 403) this.detail(`Queue work is not open to you: ${e.message}`, "muted");
      else this.detail(explain(e, "Your status could not be loaded"), "bad");
    }
  },

  onView(v) {
    this.me = v;
    this.paint();
    if (v.reservation && v.reservation.id !== this.offer?.id) this.hydrate(v.reservation);
    if (!v.reservation && this.offer && this.offer.expiresAt < Date.now()) this.offerGone(this.offer.id, "The offer timed out before you answered.");
    conversation.header();
  },

  /**
   * A pending offer known only by {id, task_id, expires_at} (after a
   * reload): its task says what it is, the conversation's context who.
   */
  async hydrate(r) {
    try {
      const t = await api.task(r.taskId);
      const ctx = await api.context(t.conversationId).catch(() => null);
      if (this.offer && this.offer.id === r.id) return;
      this.onReservation({ ...r, conversationId: t.conversationId, channel: t.channel, queue: t.queue, priority: t.priority, triage: t.triage,
        caller: { name: ctx?.patient?.display_name || null, phone: ctx?.patient?.bindings?.phone || null }, context: ctx });
    } catch { /* it will come again, or time out */ }
  },

  stop() {
    this.stream?.close();
    this.stream = null;
    clearInterval(this.offerTimer);
    clearInterval(this.wrapTimer);
    if ($("offer").open) $("offer").close();
    this.offer = null;
  },

  paint() {
    const sel = $("agent-state");
    const s = this.me?.state || "offline";
    // Busy and wrap-up are set by the server: shown, not choosable.
    for (const o of [...sel.options]) if (o.dataset.auto) o.remove();
    if (!["available", "away", "offline"].includes(s)) sel.append(h("option", { value: s, disabled: true, "data-auto": "1" }, AGENT_STATES[s] || s));
    sel.value = s;
    document.body.dataset.agent = s;
    clearInterval(this.wrapTimer);
    const n = this.me?.tasks?.length || 0;
    if (s === "wrap_up") {
      const tick = () => {
        const left = this.me.wrapUpUntil ? (this.me.wrapUpUntil - Date.now()) / 1000 : null;
        this.detail(left != null && left > 0 ? `Wrap-up: ${clock(left)} left` : "Wrap-up", "warn");
        $("agent-detail").title = "After a task, a short time to finish notes before new work is offered";
      };
      tick();
      this.wrapTimer = setInterval(tick, 1000);
    } else if (s === "busy" && this.offer) this.detail("Incoming work offered", "warn");
    else if (s === "busy") this.detail(call.current && !["ended", "failed"].includes(call.current.state) ? "On a call" : n ? `Working on ${n} task${n > 1 ? "s" : ""}` : "Busy", "warn");
    else if (s === "available") this.detail("Ready for calls and messages", "ok");
    else if (s === "away") this.detail("No new work is offered", "muted");
    else this.detail("Signed out of the queues", "muted");
  },

  async setState(s) {
    const sel = $("agent-state");
    sel.disabled = true;
    try {
      this.me = await api.setAgentState(s);
      this.paint();
      announce(`Status: ${AGENT_STATES[this.me.state] || this.me.state}`);
    } catch (e) {
      this.paint();
      this.detail(explain(e, "Your status was not changed"), "bad");
    }
    sel.disabled = !this.available;
  },

  async refresh() {
    try { this.me = await api.agentMe(); this.paint(); conversation.header(); } catch { /* the stream keeps us right */ }
  },

  onReservation(r) {
    this.offer = r;
    this.showOffer();
    this.paint();
    const what = r.channel === "voice" ? "call" : `${channelLabel(r.channel)} conversation`;
    announce(`Incoming ${what} from ${r.caller.name || "a patient"}${r.queue ? `, queue ${r.queue}` : ""}${r.triage ? `, ${triageWords(r.triage)}` : ""}`, true);
  },

  showOffer() {
    const r = this.offer;
    if (!r) return;
    const isCall = r.channel === "voice";
    $("offer-title").textContent = isCall ? "Incoming call" : r.channel === "video" ? "Video visit request" : `New ${channelLabel(r.channel)} conversation`;
    const who = r.caller.name || "Unknown caller";
    $("offer-desc").replaceChildren(
      h("strong", { class: "offer-who" }, who),
      r.caller.phone ? h("span", {}, ` · ${isCall ? "calling from " : ""}${phone(r.caller.phone)}`) : null,
      h("br"),
      h("span", { class: "muted" }, [r.queue ? `Queue ${r.queue}` : null, r.priority ? `priority ${r.priority}` : null, r.context?.conversation?.subject || null].filter(Boolean).join(" · ")));
    const ctxParts = r.context ? contextSections(r.context, { compact: true }) : [h("p", { class: "muted" }, "No context came with this offer.")];
    $("offer-triage").hidden = !r.triage;
    $("offer-triage").dataset.tone = /urgent|emergen/i.test(r.triage || "") ? "bad" : "";
    $("offer-triage").replaceChildren(icon("alert"), h("span", {}, h("strong", {}, "Triage: "), triageWords(r.triage)));
    $("offer-context").replaceChildren(...ctxParts);
    $("offer-error").hidden = true;
    $("offer-accept").disabled = $("offer-reject").disabled = false;
    $("offer-accept").textContent = isCall ? "Accept call" : "Accept";
    $("offer-reject").textContent = "Reject";
    $("offer-reopen").hidden = true;
    clearInterval(this.offerTimer);
    const tick = () => {
      const left = r.expiresAt != null ? (r.expiresAt - Date.now()) / 1000 : NaN;
      $("offer-countdown").textContent = Number.isFinite(left) ? (left > 0 ? `Answer within ${Math.ceil(left)} s` : "Time is up…") : "";
      $("offer-countdown").dataset.tone = left < 6 ? "bad" : "";
    };
    tick();
    this.offerTimer = setInterval(tick, 250);
    if (!$("offer").open) $("offer").showModal();
    $("offer-accept").focus();
  },

  offerGone(id, why) {
    if (!this.offer || this.offer.id !== id) return;
    this.offer = null;
    clearInterval(this.offerTimer);
    $("offer-reopen").hidden = true;
    if ($("offer").open) $("offer").close();
    banner.show(why, "warn", { label: "Dismiss", run: () => banner.hide() });
    announce(why, true);
    this.paint();
  },

  async accept() {
    const r = this.offer;
    if (!r) return;
    $("offer-accept").disabled = $("offer-reject").disabled = true;
    $("offer-accept").textContent = "Accepting…";
    // Its `assigned` echo can come before the answer: no "assigned to you" banner for it.
    if (r.conversationId) this.accepted.add(r.conversationId);
    try {
      const a = await api.accept(r.id);
      this.offer = null;
      clearInterval(this.offerTimer);
      $("offer").close();
      this.accepted.add(a.conversationId);
      go(`#/c/${encodeURIComponent(a.conversationId)}`);
      if (a.call) {
        call.start({ callId: a.call.id, roomId: a.call.roomId, joinToken: a.call.joinToken, taskId: a.taskId, conversationId: a.conversationId,
          label: `${r.caller.name || "Caller"}${r.caller.phone ? ` · ${phone(r.caller.phone)}` : ""}` });
      } else {
        announce(`${channelLabel(a.channel)} conversation with ${r.caller.name || "the patient"} is yours`);
      }
      this.refresh();
    } catch (e) {
      const gone = e instanceof ApiError && (e.status === 409 || e.status === 404 || e.status === 410);
      $("offer-error").hidden = false;
      $("offer-error").textContent = e instanceof ApiError && e.status === 410 ? "The caller hung up before the call could be joined."
        : gone ? "This offer is no longer yours: it expired or was withdrawn." : explain(e, "Could not accept");
      $("offer-accept").textContent = "Accept";
      $("offer-reject").disabled = false;
      if (gone) { this.offer = null; clearInterval(this.offerTimer); $("offer-countdown").textContent = ""; $("offer-reject").textContent = "Close"; }
      else $("offer-accept").disabled = false;
      $("offer-reject").focus();
    }
  },

  async reject() {
    const r = this.offer;
    if (!r) { $("offer").close(); $("offer-reject").textContent = "Reject"; return; }
    $("offer-accept").disabled = $("offer-reject").disabled = true;
    try {
      await api.reject(r.id);
      this.offer = null;
      clearInterval(this.offerTimer);
      $("offer").close();
      announce("Offer rejected; it goes to the next agent");
      this.paint();
    } catch (e) {
      $("offer-error").hidden = false;
      $("offer-error").textContent = explain(e, "Could not reject");
      $("offer-accept").disabled = $("offer-reject").disabled = false;
    }
  },

  onAssigned(a) {
    // The echo of an accept here, or work given to us elsewhere.
    this.refresh();
    if (this.accepted.has(a.conversation_id)) return;
    if (a.conversation_id && a.conversation_id !== conversation.id) {
      banner.show(`A ${channelLabel(a.channel)} conversation was assigned to you.`, "info", { label: "Open it", run: () => { banner.hide(); go(`#/c/${encodeURIComponent(a.conversation_id)}`); } });
    }
  },

  /** Done with a chat or text task: wrap-up starts. */
  async finish(taskId) {
    await api.completeTask(taskId);
    await this.refresh();
  },
};

// =====================================================================
// 9. call: the active call, audio through the SFU (/sdk.js)
// =====================================================================

const CALL_WORDS = {
  connecting: "Connecting your audio…",
  dialing: "Calling the patient…",
  ringing: "Ringing…",
  connected: "Connected",
  held: "On hold — the caller cannot hear you",
  ended: "Call ended",
  failed: "Call failed",
};

const call = {
  current: null,
  timer: 0,
  poll: 0,

  init() {
    $("call-mute").addEventListener("click", () => this.mute());
    $("call-hold").addEventListener("click", () => this.hold());
    $("call-hangup").addEventListener("click", () => this.hangup());
    $("call-dismiss").addEventListener("click", () => this.dismiss());
    $("call-keypad").addEventListener("click", () => this.toggle("keypad", "call-keypad"));
    $("call-transfer").addEventListener("click", () => this.toggle("transfer", "call-transfer"));
    const pad = $("keypad");
    for (const d of ["1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#"]) {
      pad.append(h("button", { type: "button", class: "key", "aria-label": `Send tone ${d}`, onclick: () => this.dtmf(d) }, d));
    }
    pad.append(h("p", { id: "keypad-sent", class: "keypad-sent", role: "status" }));
    pad.addEventListener("keydown", (e) => { if (/^[0-9*#]$/.test(e.key)) { e.preventDefault(); this.dtmf(e.key); } });
    $("transfer").addEventListener("change", () => {
      const kind = new FormData($("transfer")).get("transfer-kind");
      $("transfer-target-label").textContent = kind === "queue" ? "Queue" : "Phone number or SIP address";
      $("transfer-target").setAttribute("list", kind === "queue" ? "queue-names" : "");
      $("transfer-target").placeholder = kind === "queue" ? "e.g. nurse-line" : "+14155550100 or sip:desk@pbx.example.org";
    });
    $("transfer").addEventListener("submit", (e) => { e.preventDefault(); this.transfer(); });
  },

  toggle(panel, btn) {
    const open = $(panel).hidden;
    for (const [p, b] of [["keypad", "call-keypad"], ["transfer", "call-transfer"]]) { $(p).hidden = true; $(b).setAttribute("aria-expanded", "false"); }
    $(panel).hidden = !open;
    $(btn).setAttribute("aria-expanded", String(open));
    if (open) $(panel).querySelector("button, input")?.focus();
  },

  set(state, why = "") {
    const c = this.current;
    if (!c) return;
    c.state = state;
    $("callbar").dataset.state = state;
    const text = (CALL_WORDS[state] || state) + (why ? `: ${why}` : "");
    $("call-state").textContent = text;
    const live = ["connected", "held"].includes(state);
    const over = ["ended", "failed"].includes(state);
    $("call-mute").disabled = !live && state !== "connecting" && state !== "ringing" && state !== "dialing";
    $("call-hold").disabled = !live;
    $("call-keypad").disabled = !live;
    $("call-transfer").disabled = !live;
    $("call-hangup").hidden = over;
    // Once it is over only "Close" is left (nothing to mute, hold or dial).
    for (const b of ["call-mute", "call-hold", "call-keypad", "call-transfer"]) $(b).hidden = over;
    $("call-dismiss").hidden = !over;
    $("call-dismiss").textContent = "Close";
    if (over) { for (const [p, b] of [["keypad", "call-keypad"], ["transfer", "call-transfer"]]) { $(p).hidden = true; $(b).setAttribute("aria-expanded", "false"); } }
    if (state === "connected" && !c.startedAt) {
      c.startedAt = Date.now();
      this.timer = setInterval(() => { $("call-timer").textContent = clock((Date.now() - c.startedAt) / 1000); }, 1000);
    }
    if (over) {
      clearInterval(this.timer);
      clearInterval(this.poll);
      this.cleanup();
      conversation.header();
      // The call is over: so is its task (wrap-up starts; the agent's status shows its countdown).
      this.finishTask();
      $("call-dismiss").focus();
    }
    agent.paint();
    announce(text, state === "failed");
  },

  async start(opts) {
    if (this.current && !["ended", "failed"].includes(this.current.state)) {
      banner.show("You are already on a call: hang up first.", "warn");
      return;
    }
    this.current = { ...opts, state: "connecting", muted: false, held: false, startedAt: null };
    $("callbar").hidden = false;
    $("call-title").textContent = opts.label || "Call";
    $("call-timer").textContent = "0:00";
    this.set("connecting");
    $("call-hangup").focus();
    conversation.header();
    const c = this.current;
    // Follow the phone leg's state (dialing, ringing, answered, ended).
    if (c.callId) this.poll = setInterval(() => this.check(), 2000);
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true }, video: false });
    } catch (e) {
      this.set("failed", e?.name === "NotAllowedError" ? "your microphone is blocked. Allow it in the browser's address bar, then call again" : "no microphone was found");
      if (c.callId) api.hangup(c.callId).catch(() => {});
      return;
    }
    if (this.current !== c) { stream.getTracks().forEach((t) => t.stop()); return; }
    c.stream = stream;
    try {
      const { Visit } = await import("/sdk.js");
      const visit = (c.visit = new Visit({ token: c.joinToken }));
      visit.addEventListener("track", (e) => {
        if (e.detail.track.kind !== "audio") return;
        const el = c.audio || (c.audio = h("audio", { autoplay: true, class: "sr-only", "aria-hidden": "true" }));
        el.srcObject = e.detail.stream;
        document.body.append(el);
        el.play?.().catch(() => {});
      });
      visit.addEventListener("state", (e) => {
        if (this.current !== c) return;
        const s = e.detail.state;
        if (s === "connected" && (!c.outbound || c.answered)) { if (!c.held) this.set("connected"); }
        if (s === "connected") c.mediaUp = true;
        if (s === "disconnected") $("call-state").textContent = "Audio interrupted — reconnecting…";
        if (s === "failed" && c.state !== "ended") this.set("failed", "the audio connection was lost");
      });
      visit.addEventListener("ended", () => { if (this.current === c && c.state !== "failed") this.set("ended", "the visit room was closed"); });
      visit.addEventListener("error", (e) => { if (this.current === c && e.detail?.code === "resume_failed") this.set("failed", e.detail.message); });
      await visit.join(c.roomId, stream, { simulcast: false });
      if (!c.outbound && this.current === c && c.state === "connecting") this.set("connected");
    } catch (e) {
      if (this.current !== c) return;
      this.set("failed", e?.message ? `could not join the call's audio (${e.message})` : "could not join the call's audio");
      if (c.callId) api.hangup(c.callId).catch(() => {});
    }
  },

  async check() {
    const c = this.current;
    if (!c?.callId) return;
    try {
      const s = await api.call(c.callId);
      if (this.current !== c) return;
      if (s.state === "dialing" && c.state === "connecting") this.set("dialing");
      else if (s.state === "ringing" && ["connecting", "dialing"].includes(c.state)) this.set("ringing");
      else if (s.state === "answered") { c.answered = true; if (["connecting", "dialing", "ringing"].includes(c.state) && (c.mediaUp || !c.outbound)) this.set("connected"); }
      else if (s.state === "ended" && !["ended", "failed"].includes(c.state)) this.set("ended", causeWords(s.cause));
      else if (s.state === "failed" && !["ended", "failed"].includes(c.state)) this.set("failed", causeWords(s.cause) || "the call did not go through");
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) clearInterval(this.poll);
    }
  },

  mute() {
    const c = this.current;
    if (!c) return;
    c.muted = !c.muted;
    for (const t of c.stream?.getAudioTracks() || []) t.enabled = !c.muted;
    try { c.visit?.setMuted("audio", c.muted); } catch { /* older SDK */ }
    $("call-mute").setAttribute("aria-pressed", String(c.muted));
    $("call-mute").querySelector("span").textContent = c.muted ? "Unmute" : "Mute";
    $("call-mute").querySelector("use").setAttribute("href", c.muted ? "#i-mic-off" : "#i-mic");
    announce(c.muted ? "Microphone muted: the caller cannot hear you" : "Microphone on");
    $("callbar").dataset.muted = c.muted ? "1" : "";
  },

  async hold() {
    const c = this.current;
    if (!c?.callId) return;
    const next = !c.held;
    $("call-hold").disabled = true;
    try {
      await api.hold(c.callId, next);
      if (this.current !== c) return;
      c.held = next;
      for (const t of c.stream?.getAudioTracks() || []) t.enabled = !next && !c.muted;
      $("call-hold").setAttribute("aria-pressed", String(next));
      $("call-hold").querySelector("span").textContent = next ? "Resume" : "Hold";
      this.set(next ? "held" : "connected");
    } catch (e) {
      $("call-state").textContent = e instanceof ApiError && e.unavailable
        ? "Hold is not available on this server yet: mute your microphone instead."
        : explain(e, next ? "Hold failed" : "Resume failed");
    }
    $("call-hold").disabled = !["connected", "held"].includes(c.state);
  },

  async dtmf(d) {
    const c = this.current;
    if (!c?.callId) return;
    const out = $("keypad-sent");
    try {
      await api.dtmf(c.callId, d);
      c.digits = ((c.digits || "") + d).slice(-20);
      out.textContent = `Sent: ${c.digits}`;
    } catch (e) {
      out.textContent = explain(e, `Tone ${d} not sent`);
    }
  },

  async transfer() {
    const c = this.current;
    if (!c) return;
    const kind = new FormData($("transfer")).get("transfer-kind");
    const target = $("transfer-target").value.trim();
    const status = $("transfer-status");
    if (!target) { status.textContent = "Enter where to transfer the call."; return; }
    status.textContent = "Transferring…";
    try {
      if (kind === "queue") {
        if (!c.taskId) throw new Error("only calls taken from a queue can go back to a queue; transfer to a number instead");
        await api.transferTask(c.taskId, target);
        status.textContent = `Transferred to queue ${target}.`;
        c.taskDone = true; // the task went with the call
        this.set("ended", `transferred to queue ${target}`);
      } else {
        const uri = /^sips?:/.test(target) ? target : `sip:${target.replace(/[\s()-]/g, "")}`;
        await api.transferCall(c.callId, uri);
        status.textContent = `Transfer to ${target} requested; the call ends here once they answer.`;
      }
    } catch (e) {
      status.textContent = explain(e, "The transfer failed");
    }
  },

  async hangup() {
    const c = this.current;
    if (!c) return;
    $("call-hangup").disabled = true;
    try {
      if (c.callId) await api.hangup(c.callId);
      this.set("ended", "you hung up");
    } catch (e) {
      if (e instanceof ApiError && (e.status === 409 || e.status === 404)) this.set("ended", "the call had already ended");
      else $("call-state").textContent = explain(e, "Hang-up failed (press again)");
    }
    $("call-hangup").disabled = false;
  },

  /** POST /v1/tasks/{id}/complete once the call is over (wrap-up starts). */
  async finishTask() {
    const c = this.current;
    if (!c?.taskId || c.taskDone) return;
    c.taskDone = "pending";
    try {
      await api.completeTask(c.taskId);
      c.taskDone = true;
    } catch (e) {
      // Already completed (or transferred away): nothing left to finish.
      if (e instanceof ApiError && (e.status === 404 || e.status === 409)) c.taskDone = true;
      else { c.taskDone = false; $("call-state").textContent += ` — ${explain(e, "the task could not be finished (press Close to try again)")}`; }
    }
    agent.refresh();
  },

  cleanup() {
    const c = this.current;
    if (!c) return;
    try { c.visit?.leave(); } catch { /* gone */ }
    c.stream?.getTracks().forEach((t) => t.stop());
    c.audio?.remove();
  },

  async dismiss() {
    const c = this.current;
    if (c?.taskId && c.taskDone !== true) {
      await this.finishTask();
      if (c.taskDone !== true) return;
    }
    this.current = null;
    $("callbar").hidden = true;
    for (const b of ["call-mute", "call-hold", "call-keypad", "call-transfer"]) $(b).hidden = false;
    $("call-mute").setAttribute("aria-pressed", "false");
    $("call-hold").setAttribute("aria-pressed", "false");
    $("call-mute").querySelector("span").textContent = "Mute";
    $("call-hold").querySelector("span").textContent = "Hold";
    conversation.header();
    ($("reply-text").offsetParent ? $("reply-text") : $("main")).focus();
  },
};

function causeWords(cause) {
  if (!cause) return "";
  const words = {
    remote_hangup: "the caller hung up", caller_hangup: "the caller hung up", target_hangup: "the patient hung up",
    local_hangup: "hung up here", hangup: "hung up here", busy: "the line was busy", no_answer: "no answer", rejected: "the call was declined",
    transferred: "transferred", room_empty: "everyone left", media_timeout: "the audio stopped (network problem)", session_expired: "the call timed out",
  };
  return words[cause] || String(cause).replace(/_/g, " ");
}

// =====================================================================
// 10. supervisor: queues and agents, live, with a chart of the last hour
// =====================================================================

const supervisor = {
  stream: null,
  stats: null,
  started: false,
  names: new Map(), // agent id → display name (GET /v1/agents, admins only)

  async start() {
    if (this.started) return;
    this.started = true;
    const body = $("sup-body");
    // The chart is drawn at the width it is shown: redraw when that changes.
    this.resize ||= new ResizeObserver(() => {
      const w = body.clientWidth;
      if (this.started && this.stats && w > 0 && Math.abs(w - (this.drawnAt || 0)) > 8) this.render(this.stats);
    });
    this.resize.observe(body);
    body.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    if (app.me?.agent) this.names.set(app.me.subject, app.me.agent.displayName);
    if (app.me?.role === "admin" && this.names.size < 2) {
      api.agents().then((list) => { for (const a of list || []) this.names.set(a.id, a.display_name); if (this.stats) this.render(this.stats); }).catch(() => {});
    }
    try {
      this.render(await api.stats());
      this.stream = track(new LiveStream(api.streams.routing, {
        events: { stats: (raw) => this.render(map.stats(raw)) },
        onStatus: (s, why) => {
          const el = $("sup-live");
          el.dataset.tone = s === "live" ? "ok" : s === "failed" ? "bad" : "wait";
          el.textContent = s === "live" ? "Live" : s === "reconnecting" ? "Reconnecting…" : s === "unavailable" ? "Live updates not available: refreshing every 15 s" : s === "failed" ? `Live updates refused: ${why}` : "Connecting…";
          if (s === "unavailable") this.pollTimer = setInterval(() => api.stats().then((x) => this.render(x)).catch(() => {}), 15_000);
        },
      }));
    } catch (e) {
      $("sup-live").textContent = "";
      body.replaceChildren(h("p", { class: "notice", "data-tone": e instanceof ApiError && e.unavailable ? "" : "bad", role: "alert" },
        e instanceof ApiError && e.unavailable ? "The supervisor view is not available on this server yet: it needs queue and agent statistics (GET /v1/routing/stats), which this server version does not have."
          : e instanceof ApiError && e.status === 403 ? "Your role cannot see queue and agent statistics. Ask an administrator." : explain(e, "Statistics could not be loaded")));
      this.started = false;
    }
  },

  stop() {
    this.stream?.close();
    this.stream = null;
    clearInterval(this.pollTimer);
    this.started = false;
  },

  render(s) {
    this.stats = s;
    for (const q of s.queues) if (!inbox.queues.has(q.name)) { inbox.queues.add(q.name); inbox.queuesChanged = true; }
    if (inbox.queuesChanged) inbox.fillQueues();
    const pct = (v) => (v == null ? "—" : `${Math.round(v * (v <= 1 ? 100 : 1))}%`);
    const by = s.byState;
    const cards = h("ul", { class: "sup-cards", "aria-label": "Agents signed in, by state" },
      ["available", "busy", "wrap_up", "away"].map((k) => h("li", { "data-state": k }, h("span", { class: "n" }, String(by[k] ?? 0)), h("span", {}, AGENT_STATES[k]))));
    const waitingNow = s.queues.reduce((n, q) => n + q.waiting, 0);
    const queues = h("table", { class: "grid" },
      h("caption", {}, `Queues — ${waitingNow} waiting now`),
      h("thead", {}, h("tr", {}, ["Queue", "Waiting", "Longest wait", "Offered", "With an agent", "Service level (15 min)", "Answered", "Abandoned"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, s.queues.length ? s.queues.map((q) => h("tr", {},
        h("th", { scope: "row" }, q.name),
        h("td", { "data-tone": q.waiting > 0 ? "warn" : "" }, String(q.waiting)),
        h("td", { "data-tone": q.longestWait >= 300 ? "bad" : q.longestWait >= 60 ? "warn" : "" }, q.waiting ? duration(q.longestWait) : "—"),
        h("td", {}, String(q.reserved)), h("td", {}, String(q.assigned)),
        h("td", { "data-tone": q.serviceLevel != null && q.serviceLevel < 0.8 && q.serviceLevel <= 1 ? "bad" : "" }, pct(q.serviceLevel)),
        h("td", {}, String(q.answered)), h("td", {}, String(q.abandoned)))) : h("tr", {}, h("td", { colspan: 8 }, "No queues yet."))));
    const agents = h("table", { class: "grid" },
      h("caption", {}, "Agents"),
      h("thead", {}, h("tr", {}, ["Agent", "State", "Tasks", "Missed offers"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, s.agents.length ? s.agents.map((a) => h("tr", {},
        h("th", { scope: "row" }, this.names.get(a.id) || a.id, a.id === app.me?.subject ? h("span", { class: "muted" }, " (you)") : null),
        h("td", {}, h("span", { class: "pill", "data-agent": a.state }, AGENT_STATES[a.state] || a.state),
          a.offered ? h("span", { class: "muted" }, " · offer pending") : a.wrapLeft ? h("span", { class: "muted" }, ` · ${clock(a.wrapLeft)} left`) : a.idle != null && a.state === "available" ? h("span", { class: "muted" }, ` · free ${duration(a.idle)}`) : null),
        h("td", {}, String(a.tasks)), h("td", { "data-tone": a.missed ? "warn" : "" }, String(a.missed))))
        : h("tr", {}, h("td", { colspan: 4 }, "No agents signed in."))));
    // The chart's "now": waiting across the queues, and the service level over all of them.
    const ended = s.queues.reduce((n, q) => n + q.answered + q.abandoned + q.overflowed, 0);
    const within = s.queues.reduce((n, q) => n + q.within, 0);
    const current = { at: Date.now(), waiting: waitingNow, serviceLevel: ended ? within / ended : null };
    this.drawnAt = $("sup-body").clientWidth;
    const width = (this.drawnAt || 680) - 34;
    $("sup-body").replaceChildren(cards, h("div", { class: "sup-chart" }, chart(s.history, current, width)),
      h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Queues table (scrolls sideways)" }, queues),
      h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Agents table" }, agents));
  },
};

/** Waiting calls (bars, left axis) and service level (line, right axis) over the last hour, as SVG. */
function chart(history, current = null, width = 640) {
  // Drawn at the width it is shown (text stays readable on a phone).
  const W = Math.max(300, Math.min(760, Math.round(width))), H = W < 480 ? 180 : 200, L = 36, R = 44, T = 16, B = 30;
  const now = Date.now(), from = now - 3600_000;
  // The server samples every 30 s; the live numbers are the point at "now".
  const pts = [...history, ...(current ? [current] : [])].filter((p) => Number.isFinite(p.at) && p.at >= from).sort((a, b) => a.at - b.at);
  const step = Math.max(1, Math.ceil(Math.max(4, ...pts.map((p) => p.waiting)) / 4));
  const maxW = step * 4;
  const x = (t) => L + ((t - from) / 3600_000) * (W - L - R);
  const yW = (v) => H - B - (v / maxW) * (H - T - B);
  const yS = (v) => H - B - v * (H - T - B);
  const el = (tag, attrs, ...kids) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    for (const k of kids) e.append(k);
    return e;
  };
  const sl = (v) => (v == null ? null : v > 1 ? v / 100 : v);
  const peak = pts.reduce((m, p) => (p.waiting > (m?.waiting ?? -1) ? p : m), null);
  const lastSl = sl(pts.at(-1)?.serviceLevel);
  const summary = pts.length
    ? `Last hour: waiting calls peaked at ${peak.waiting} at ${timeFmt.format(new Date(peak.at))}; ${pts.at(-1).waiting} waiting now; service level now ${lastSl == null ? "unknown" : Math.round(lastSl * 100) + "%"}.`
    : "No data for the last hour yet.";
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "chart-title chart-desc", class: "chart" },
    el("title", { id: "chart-title" }, "Waiting calls and service level, last hour"),
    el("desc", { id: "chart-desc" }, summary));
  // Grid and axes.
  for (let i = 0; i <= 4; i++) {
    const v = (maxW / 4) * i, y = yW(v);
    svg.append(el("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid-line" }));
    svg.append(el("text", { x: L - 6, y: y + 4, class: "axis", "text-anchor": "end" }, String(v)));
    svg.append(el("text", { x: W - R + 6, y: yS(i / 4) + 4, class: "axis" }, `${i * 25}%`));
  }
  for (let m = 60; m >= 0; m -= W < 480 ? 30 : 15) {
    svg.append(el("text", { x: x(now - m * 60_000), y: H - 10, class: "axis", "text-anchor": m === 60 ? "start" : m ? "middle" : "end" }, m ? `−${m} min` : "now"));
  }
  // Waiting: bars (a point every 30 s).
  const bw = Math.max(2, ((W - L - R) / 120) * 0.8);
  for (const p of pts) if (p.waiting > 0) svg.append(el("rect", { x: x(p.at) - bw / 2, y: yW(p.waiting), width: bw, height: H - B - yW(p.waiting), class: "bar" }));
  // Service level: a dashed line with dots.
  const slPts = pts.filter((p) => sl(p.serviceLevel) != null);
  if (slPts.length) {
    svg.append(el("polyline", { points: slPts.map((p) => `${x(p.at).toFixed(1)},${yS(sl(p.serviceLevel)).toFixed(1)}`).join(" "), class: "sl-line" }));
    const lp = slPts.at(-1);
    svg.append(el("circle", { cx: x(lp.at), cy: yS(sl(lp.serviceLevel)), r: 4, class: "sl-dot" }));
  }
  svg.append(el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis-line" }), el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis-line" }));
  const legend = h("p", { class: "legend" },
    h("span", { class: "legend-item" }, h("span", { class: "key-bar" }), "Waiting (bars, left scale)"),
    h("span", { class: "legend-item" }, h("span", { class: "key-line" }), "Service level: answered within target (dashed line, right scale)"));
  return [h("h3", {}, "Last hour"), svg, legend, h("p", { class: "muted" }, summary)];
}

// =====================================================================
// 11. boot
// =====================================================================

function showSignIn(notice = "") {
  screen("signin");
  const n = $("signin-notice");
  n.hidden = !notice;
  n.textContent = notice;
  $("signin-error").hidden = true;
  $("signin-token").value = "";
  $("signin-token").removeAttribute("aria-invalid");
  const others = [...auth.providers.values()].filter((p) => p.name !== "token");
  $("signin-providers").replaceChildren(...others.map((p) => h("button", { type: "button", class: "btn-secondary", onclick: () => signIn(p) }, `Sign in with ${p.label}`)));
  $("signin-title").focus();
}

async function signIn(provider = TokenProvider) {
  const err = $("signin-error");
  const btn = $("signin-submit");
  err.hidden = true;
  btn.disabled = true;
  btn.textContent = "Signing in…";
  try {
    const token = await provider.signIn($("signin-token").value);
    try {
      await session.begin(token, provider.name);
    } catch (e) {
      auth.clear();
      if (e instanceof ApiError && e.status === 401) throw new SignInError("The server did not accept this token: it may have expired, been revoked, or come from another Continuum server. Ask for a new one.");
      if (e instanceof ApiError && e.status === 403) throw new SignInError("This token's role cannot list conversations, so it cannot use the console. Use a clinician, agent or admin token.");
      throw new SignInError(explain(e, "Signing in failed"));
    }
    $("signin-token").value = "";
    enterApp();
  } catch (e) {
    err.hidden = false;
    err.textContent = e instanceof SignInError ? e.message : explain(e, "Signing in failed");
    $("signin-token").setAttribute("aria-invalid", "true");
    $("signin-token").focus();
  } finally {
    btn.disabled = false;
    btn.textContent = "Sign in";
  }
}

function enterApp() {
  screen("app");
  $("signin-notice").hidden = true;
  const me = app.me;
  $("me-name").textContent = `${me.name}${me.role ? ` · ${me.role}` : ""}`;
  // Supervisors: admins (and anyone the stats endpoint lets in, found on first visit).
  // Every staff role may see the queues (GET /v1/routing/stats); the view explains a refusal.
  $("nav-supervisor").hidden = false;
  if (!location.hash) history.replaceState(null, "", "#/inbox");
  inbox.load();
  agent.start();
  onRoute();
}

function keys(e) {
  if (document.body.dataset.screen !== "app" || e.defaultPrevented) return;
  const t = e.target;
  const typing = t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement || t.isContentEditable;
  if (e.key === "/" && !typing && !e.ctrlKey && !e.metaKey) {
    e.preventDefault();
    if (app.route.view !== "work") go("#/inbox");
    if (narrow() && app.route.pane !== "inbox") go("#/inbox");
    $("f-state").focus();
  } else if (e.key === "Escape" && !typing && narrow() && app.route.pane === "context") {
    go(`#/c/${encodeURIComponent(conversation.id)}`);
  } else if (e.key === "Escape" && !typing && narrow() && app.route.pane === "conv") {
    go("#/inbox");
  }
}

async function boot() {
  inbox.init();
  conversation.init();
  review.init();
  agent.init();
  call.init();
  $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn(TokenProvider); });
  $("signout").addEventListener("click", async () => {
    // Signing out ends the token too (any token may revoke itself), so a
    // copy left in this browser is worthless.
    if (auth.claims?.jti) await api.post("/v1/tokens/revoke", { jti: auth.claims.jti }).catch(() => {});
    session.end("You signed out. Your token no longer works; get a new one to sign in again.");
  });
  addEventListener("hashchange", onRoute);
  addEventListener("keydown", keys);
  addEventListener("offline", () => banner.show("You are offline. Nothing can be sent until the connection is back; live updates resume by themselves.", "bad"));
  addEventListener("online", () => { banner.hide(); announce("Back online"); });
  matchMedia("(max-width: 899px)").addEventListener("change", () => inbox.list.refresh(true));

  if (new URLSearchParams(location.search).has("test-hooks")) {
    // For tests only: push inbox updates without a server stream.
    window.__consoleTest = {
      call: () => call.current,
      agent: () => agent.me,
      inboxUpdate: (raw) => inbox.update(map.inboxItem(raw)),
      inboxSize: () => inbox.list.ids.length,
      item: (id) => { const it = inbox.items.get(id); return it ? { lastSeq: it.lastSeq, unread: it.unread, shown: !!inbox.list.rows.get(id) } : null; },
      renderedRows: () => inbox.list.rows.size,
    };
  }

  if (auth.load()) {
    try {
      await session.begin(auth.token, auth.provider);
      enterApp();
      return;
    } catch (e) {
      auth.clear();
      showSignIn(e instanceof ApiError && e.status === 401 ? "Your session expired — sign in again." : explain(e, "Could not restore your session"));
      return;
    }
  }
  showSignIn();
}

boot();
