// Continuum browser SDK: join a visit room over the signaling WebSocket and
// exchange media through the SFU. No build step; an ES module.
//
//   import { Visit } from "/sdk.js";
//   const visit = new Visit({ token });
//   visit.addEventListener("track", (e) => attach(e.detail.stream));
//   await visit.join(roomId, await navigator.mediaDevices.getUserMedia({ video: true, audio: true }));

// Simulcast layers, lowest first (the SFU orders them by measured bitrate,
// so the rid names are only labels). The bitrates are the capacity planner's
// `video.layers_kbps` (crates/plan/src/profile.rs; a test keeps them equal).
const SIMULCAST = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", maxBitrate: 1_500_000 },
];

/**
 * What to ask the camera for: 720p where the device allows (a 1:1 visit on a
 * good network then reaches the top layer), less where it does not.
 */
export const CAMERA = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };

/**
 * The simulcast encodings a capture of `height` pixels can fill. Chromium
 * drops layers the input cannot fill (3 from 540p, 2 from 270p): asking for
 * three at 480p silently loses the top one, and viewers get half size at best.
 * So send only the layers the input supports, always including full size.
 */
export function encodingsFor(height) {
  if (!height || height >= 540) return SIMULCAST;
  if (height >= 270) return SIMULCAST.slice(1).map((e) => ({ ...e }));
  return null; // one full-size encoding
}

export class Visit extends EventTarget {
  /**
   * `token`: an access token with a grant for the room. `iceTransportPolicy`:
   * "all" (default) or "relay" (only through TURN, e.g. to test a network that
   * passes nothing else).
   */
  constructor({ token, url, iceTransportPolicy = "all" } = {}) {
    super();
    this.token = token;
    this.iceTransportPolicy = iceTransportPolicy;
    /** Who we are, from the server's `welcome`: { identity, name, role, expires_at }. */
    this.me = null;
    /** TURN servers from `welcome` (short-lived credentials). */
    this.iceServers = [];
    /** Others in the room: participant id → { participant, identity, name, role }. */
    this.participants = new Map();
    /** Patients in the waiting room (staff only): [{ ticket, identity, name, since }]. */
    this.waiting = [];
    this.base = (url || location.origin).replace(/^http/, "ws");
    this.wsUrl = this.base + "/v1/rtc?token=" + encodeURIComponent(token);
    /** Where we first connected: in a cluster, the node that places rooms. */
    this.homeUrl = this.wsUrl;
    /** The media node hosting our room, when a cluster redirected us there. */
    this.node = null;
    this.pc = null;
    this.ws = null;
    this.participant = null;
    this.state = "new";
    /** Others' tracks in the room, by track id (from `track_published`). */
    this.tracks = new Map();
    /** Latest connection-quality notice per participant (ours included). */
    this.quality = new Map();
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state) {
    this.state = state;
    this._emit("state", { state });
  }

  /**
   * Joins `room`, publishing the tracks of `stream` (if any). Video is sent
   * as simulcast (full, half and quarter size; the SFU gives each viewer the
   * layer its bandwidth and requested size allow) unless `simulcast: false`.
   */
  async join(room, stream, { simulcast = true } = {}) {
    this._setState("connecting");
    this.stream = stream;
    this.room = room;
    this.simulcast = simulcast;
    this._redirects = 0;
    // Signaling first: its `welcome` carries the TURN servers, so the peer
    // connection gathers relay candidates from the first offer on (on a
    // network that blocks UDP, TURN over TCP/TLS is the only way in).
    try {
      await this._openSignaling();
    } catch (e) {
      this._setState("failed");
      throw e;
    }
    const pc = (this.pc = new RTCPeerConnection({
      bundlePolicy: "max-bundle",
      iceServers: this.iceServers,
      iceTransportPolicy: this.iceTransportPolicy,
    }));
    pc.addEventListener("track", (e) => {
      const stream = e.streams[0] || new MediaStream([e.track]);
      this._emit("track", { track: e.track, stream });
    });
    pc.addEventListener("connectionstatechange", () => {
      if (this.pc !== pc) return; // replaced by a rejoin
      const s = pc.connectionState;
      if (s === "connected") this._setState("connected");
      if (s === "failed" || s === "disconnected") {
        this._setState(s);
        // The network changed or dropped: restart ICE, keeping our seat in the
        // room (the SFU holds it for a grace period).
        if (s === "failed") this.restartIce().catch(() => {});
        else setTimeout(() => { if (pc.connectionState === "disconnected") this.restartIce().catch(() => {}); }, 2000);
      }
    });
    if (stream) {
      for (const track of stream.getTracks()) {
        const init = { direction: "sendonly", streams: [stream] };
        if (simulcast && track.kind === "video") {
          const encodings = encodingsFor(track.getSettings?.().height);
          if (encodings) init.sendEncodings = encodings;
        }
        pc.addTransceiver(track, init);
      }
    }
    // Trickle our candidates (optional for the ICE-lite SFU, but cheap).
    pc.addEventListener("icecandidate", (e) => {
      if (this.participant && this.ws?.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify({ type: "candidate", candidate: e.candidate ? e.candidate.candidate : "" }));
      }
    });
    // One data channel per participant; the SFU relays its messages to the
    // rest of the room (annotations, reactions, device control; ≤ 16 KiB each).
    this.channel = pc.createDataChannel("continuum");
    this.channel.addEventListener("message", (e) => this._emit("data", { data: e.data }));

    // Closing the tab is leaving (a dropped connection would hold the seat
    // for the resume grace period).
    globalThis.addEventListener?.("pagehide", () => { if (this.state !== "left") this.leave(); });
    const joined = new Promise((resolve, reject) => {
      this._joined = { resolve, reject };
    });
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    this.ws.send(JSON.stringify({ type: "join", room, sdp: pc.localDescription.sdp }));
    return joined;
  }

  /** Opens the signaling WebSocket and waits for the server's `welcome`. */
  async _openSignaling() {
    const ws = (this.ws = new WebSocket(this.wsUrl));
    await new Promise((resolve, reject) => {
      const fail = (message) => reject(Object.assign(new Error(message), { code: "signaling_failed" }));
      const timer = setTimeout(() => { fail("the server did not answer"); ws.close(); }, 10000);
      // A refused token (expired, revoked, invalid) closes the connection
      // before it opens; browsers do not say why (ask POST /v1/visit-help).
      ws.onerror = () => { clearTimeout(timer); fail("signaling connection failed"); };
      ws.onclose = () => { clearTimeout(timer); fail("signaling connection closed"); };
      ws.onmessage = (m) => {
        const msg = JSON.parse(m.data);
        if (msg.type !== "welcome") return;
        clearTimeout(timer);
        this.me = { identity: msg.identity, name: msg.name, role: msg.role, expires_at: msg.expires_at };
        this.iceServers = (msg.ice_servers || []).map(({ urls, username, credential }) => ({ urls, username, credential }));
        this._emit("welcome", msg);
        resolve();
      };
    });
    ws.onmessage = (m) => this._onSignal(JSON.parse(m.data));
    ws.onclose = () => {
      if (!["left", "ended"].includes(this.state) && this.ws === ws) this._resume();
    };
  }

  /**
   * The signaling connection dropped (network change): take our seat back on
   * a new one (the SFU holds it for a grace period, with our subscriptions
   * and layer choices), then restart ICE for the new network.
   */
  async _resume() {
    if (this._resuming) return;
    if (!this.resumeToken || !this.participant) return this._setState("disconnected");
    this._resuming = true;
    this._setState("reconnecting");
    const deadline = Date.now() + 15000;
    let failures = 0;
    for (let delay = 250; Date.now() < deadline && this.state !== "left"; delay = Math.min(delay * 2, 4000)) {
      try {
        await this._openSignaling();
        const resumed = new Promise((resolve, reject) => { this._resumed = { resolve, reject }; });
        this.ws.send(JSON.stringify({ type: "resume", participant: this.participant, token: this.resumeToken }));
        await resumed;
        this._resuming = false;
        if (this.pc?.connectionState === "connected") this._setState("connected");
        await this.restartIce();
        return;
      } catch (e) {
        // The seat is gone (its media node stopped), or the node does not
        // answer at all: in a cluster, join again through the home node,
        // which places the room on a live media node.
        failures += 1;
        if (e.code === "resume_refused" || (this.node && failures >= 2)) break;
        await new Promise((r) => setTimeout(r, delay));
      }
    }
    if (this.state !== "left" && this.room && (this.node || this.wsUrl !== this.homeUrl)) {
      this._resuming = false;
      return this._rejoin();
    }
    this._resuming = false;
    this._setState("disconnected");
    this._emit("error", { code: "resume_failed", message: "lost the connection to the room: join again" });
  }

  /**
   * The media node holding our seat is gone: a new peer connection, joined
   * through the home node (which moves the room to a live media node), with
   * the same camera and microphone. Others' tracks come again as `track`.
   */
  async _rejoin() {
    this._setState("reconnecting");
    this._emit("rejoining", { node: this.node });
    const old = this.ws;
    this.ws = null;
    try { old?.close(); } catch (_) {}
    try { this.pc?.close(); } catch (_) {}
    this.pc = null;
    this.participant = null;
    this.resumeToken = null;
    this.tracks.clear();
    this.participants.clear();
    this.wsUrl = this.homeUrl;
    this.node = null;
    const deadline = Date.now() + 30000;
    for (let delay = 250; Date.now() < deadline && this.state !== "left"; delay = Math.min(delay * 2, 2000)) {
      try {
        await this.join(this.room, this.stream, { simulcast: this.simulcast });
        this._emit("rejoined", { node: this.node });
        return;
      } catch (e) {
        try { this.ws?.close(); } catch (_) {}
        try { this.pc?.close(); } catch (_) {}
        this.ws = null;
        this.pc = null;
        this.wsUrl = this.homeUrl;
        if (e.code === "visit_ended") return;
        await new Promise((r) => setTimeout(r, delay));
      }
    }
    this._setState("disconnected");
    this._emit("error", { code: "resume_failed", message: "lost the connection to the room: join again" });
  }

  /** The room is on another media node: continue the join there. */
  async _redirect(msg) {
    this._redirects += 1;
    if (this._redirects > 3) {
      this._joined?.reject(Object.assign(new Error("the cluster kept redirecting the join"), { code: "redirect_loop" }));
      return;
    }
    const old = this.ws;
    this.ws = null;
    try { old?.close(); } catch (_) {}
    this.node = msg.node;
    this.wsUrl = msg.url + (msg.url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this.token);
    try {
      await this._openSignaling();
      if (this.iceServers.length) {
        try { this.pc.setConfiguration({ ...this.pc.getConfiguration(), iceServers: this.iceServers }); } catch (_) {}
      }
      this._emit("redirected", { node: msg.node });
      this.ws.send(JSON.stringify({ type: "join", room: msg.room, sdp: this.pc.localDescription.sdp }));
    } catch (e) {
      this._joined?.reject(e);
    }
  }

  async _onSignal(msg) {
    const pc = this.pc;
    switch (msg.type) {
      case "redirect":
        await this._redirect(msg);
        break;
      case "resumed":
        // Fresh TURN credentials came with this connection's `welcome`.
        if (this.iceServers.length) {
          try { pc.setConfiguration({ ...pc.getConfiguration(), iceServers: this.iceServers }); } catch (_) {}
        }
        this._resumed?.resolve(msg);
        this._resumed = null;
        this._emit("resumed", msg);
        break;
      case "joined":
        this.participant = msg.participant;
        this.conversation = msg.conversation;
        this.resumeToken = msg.resume;
        await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
        this._joined?.resolve(msg);
        break;
      case "waiting":
        // The room has a waiting room: staff admit us (then `joined` comes).
        this.ticket = msg.ticket;
        this._setState("waiting");
        this._emit("waiting", msg);
        break;
      case "roster":
        this.participants = new Map(msg.participants.map((p) => [p.participant, p]));
        this._emit("participants", { participants: [...this.participants.values()] });
        break;
      case "participant_joined":
        this.participants.set(msg.participant, msg);
        this._emit("participants", { participants: [...this.participants.values()], joined: msg });
        break;
      case "participant_left":
        this.participants.delete(msg.participant);
        this._emit("participants", { participants: [...this.participants.values()], left: msg.participant });
        break;
      case "waiting_room":
        this.waiting = msg.waiting;
        this._emit("waiting_room", { waiting: msg.waiting });
        break;
      case "patient_on_phone":
        // Staff: the patient's video failed and their phone is being called
        // into this room; `context` is what was just discussed.
        this._emit("patient_on_phone", msg);
        break;
      case "visit_ended":
        this._finish("ended");
        this._emit("ended", msg);
        this._joined?.reject(Object.assign(new Error("the visit has ended"), { code: "visit_ended" }));
        break;
      case "offer": {
        // The SFU renegotiates when others' tracks come or go.
        await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
        const answer = await pc.createAnswer();
        await pc.setLocalDescription(answer);
        this.ws.send(JSON.stringify({ type: "answer", sdp: pc.localDescription.sdp }));
        break;
      }
      case "answer":
        await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
        break;
      case "refreshed":
        this._refreshed?.resolve(msg.expires_at);
        this._refreshed = null;
        break;
      case "token_expired":
        this._emit("token_expired", msg);
        break;
      case "chat":
        // A chat message of the room's conversation, in seq order; ours
        // come back too (with our client_id): that is the ack.
        this._emit("chat", msg);
        break;
      case "typing":
        this._emit("typing", msg);
        break;
      case "chat_receipt":
        this._emit("receipt", msg);
        break;
      case "chat_receipts":
        this._emit("receipts", msg);
        break;
      case "error":
        if ("client_id" in msg) {
          // A chat message was refused: which one and why (the call is fine).
          this._emit("chat_error", msg);
          break;
        }
        if (msg.code === "refresh_refused" && this._refreshed) {
          this._refreshed.reject(Object.assign(new Error(msg.message), { code: msg.code }));
          this._refreshed = null;
          break;
        }
        if (this._resumed) {
          this._resumed.reject(Object.assign(new Error(msg.message), { code: msg.code }));
          this._resumed = null;
          break;
        }
        this._emit("error", msg);
        this._joined?.reject(Object.assign(new Error(msg.message), { code: msg.code }));
        break;
      case "left":
        this._setState("left");
        break;
      case "speaker":
        // participant: the SFU's id ("p3"), which is also the stream id of their tracks.
        this.speaker = msg.participant;
        this._emit("speaker", msg);
        break;
      case "muted": {
        // Keep the roster current: `participants` carries what each muted.
        const p = this.participants.get(msg.participant);
        if (p) p.muted = { ...(p.muted || {}), [msg.kind]: msg.muted };
        this._emit("muted", msg);
        break;
      }
      case "track_published":
        // {participant, identity, kind, track}: its media arrives in the
        // remote stream whose id is the participant id.
        this.tracks.set(msg.track, msg);
        this._emit("track_published", msg);
        break;
      case "track_unpublished":
        this.tracks.delete(msg.track);
        this._emit("track_unpublished", msg);
        break;
      case "quality":
        // {participant, rating: excellent|good|poor, loss, rtt_ms, jitter_ms}:
        // our own connection about once a second, others' when it changes.
        this.quality.set(msg.participant, msg);
        this._emit("quality", msg);
        break;
      case "publish_layers":
        // Nobody in the room takes some of our simulcast layers: stop
        // encoding and sending them (saves our uplink and CPU) until asked again.
        await this._pauseLayers(msg.mid, msg.paused);
        break;
    }
  }

  async _pauseLayers(mid, paused) {
    const t = this.pc.getTransceivers().find((t) => t.mid === mid);
    if (!t?.sender) return;
    const params = t.sender.getParameters();
    if (!params.encodings?.length) return;
    let changed = false;
    for (const e of params.encodings) {
      const on = !e.rid || !paused.includes(e.rid);
      if (e.active !== on) {
        e.active = on;
        changed = true;
      }
    }
    if (!changed) return;
    try {
      await t.sender.setParameters(params);
      this._emit("layers", { mid, paused });
    } catch (_) {
      // A concurrent renegotiation changed the parameters: the layers stay
      // as they were (the SFU drops what nobody takes).
    }
  }

  /** Sends a message to everyone else in the room over the data channel. */
  sendData(data) {
    if (this.channel?.readyState !== "open") throw new Error("the data channel is not open yet");
    this.channel.send(data);
  }

  /** Whether chat messages can go over the signaling connection now. */
  get chatReady() {
    return this.ws?.readyState === WebSocket.OPEN && (!!this.participant || this.state === "waiting");
  }

  /**
   * Sends a chat message to the room's conversation (the token must grant
   * it). `clientId` is its idempotency key: send again with the same one
   * after a reconnect and it is stored once. Returns the client id; the
   * message comes back as a `chat` event (with it) once stored, or as a
   * `chat_error` event.
   */
  sendChat(body, clientId = crypto.randomUUID()) {
    if (!this.chatReady) throw new Error("not in the room: chat goes over REST meanwhile");
    this.ws.send(JSON.stringify({ type: "chat", body, client_id: clientId }));
    return clientId;
  }

  /** Tells the room you are typing (`true`) or stopped (ephemeral, rate-limited by the server). */
  typing(active) {
    if (this.chatReady) this.ws.send(JSON.stringify({ type: "typing", active }));
  }

  /** Everything up to `seq` of the conversation reached / was shown to you. */
  markDelivered(seq) {
    if (this.chatReady) this.ws.send(JSON.stringify({ type: "chat_delivered", seq }));
  }
  markRead(seq) {
    if (this.chatReady) this.ws.send(JSON.stringify({ type: "chat_read", seq }));
  }

  /** Restarts ICE (new credentials and candidates) without leaving the room. */
  async restartIce() {
    const pc = this.pc;
    if (!pc || !this.ws || this.ws.readyState !== WebSocket.OPEN) throw new Error("not joined");
    if (pc.signalingState !== "stable") return;
    const offer = await pc.createOffer({ iceRestart: true });
    await pc.setLocalDescription(offer);
    this.ws.send(JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp }));
  }

  /**
   * Caps the video quality received from `participant` (or from everyone when
   * omitted): "low", "medium" or "high", e.g. by the size it is shown at.
   */
  setVideoQuality(quality, participant) {
    const msg = { type: "layer", quality };
    if (participant) msg.participant = participant;
    this.ws?.send(JSON.stringify(msg));
  }

  /**
   * Stops receiving `participant`'s tracks of `kind` ("audio", "video", or
   * both when omitted), e.g. a tile out of view or audio-only on a weak link.
   */
  unsubscribe(participant, kind) {
    this._subscription("unsubscribe", participant, kind);
  }

  /** Receives `participant`'s tracks again (video restarts at a keyframe). */
  subscribe(participant, kind) {
    this._subscription("subscribe", participant, kind);
  }

  _subscription(type, participant, kind) {
    const msg = { type, participant };
    if (kind) msg.kind = kind;
    this.ws?.send(JSON.stringify(msg));
  }

  /** Mutes or unmutes the local tracks of one kind ("audio" or "video"). */
  setMuted(kind, muted) {
    for (const s of this.pc?.getSenders() || []) {
      if (s.track && s.track.kind === kind) s.track.enabled = !muted;
    }
    // Tell the room, so others can show it.
    try { this.ws?.send(JSON.stringify({ type: "mute", kind, muted })); } catch (_) {}
  }

  /**
   * Hands the connection a fresh access token (same identity and role, from
   * your backend) before the current one expires; a reconnect after a
   * network change uses it too. Resolves with the new expiry (Unix seconds).
   * Without it, the call goes on past expiry but cannot rejoin or publish anew
   * (a `token_expired` event tells you).
   */
  refresh(token) {
    this.token = token;
    this.wsUrl = this.base + "/v1/rtc?token=" + encodeURIComponent(token);
    return new Promise((resolve, reject) => {
      this._refreshed = { resolve, reject };
      this.ws?.send(JSON.stringify({ type: "refresh", token }));
    });
  }

  /** Staff: let a waiting patient in (a `ticket` from the `waiting_room` event). */
  admit(ticket) {
    this.ws?.send(JSON.stringify({ type: "admit", ticket }));
  }

  /** Staff: end the visit for everyone (all leave; nobody can join again). */
  endVisit() {
    this.ws?.send(JSON.stringify({ type: "end_visit" }));
  }

  /**
   * Leaves the room, and stops the camera and microphone tracks we published
   * (unless `stopTracks: false`), so the camera light goes off.
   */
  leave({ stopTracks = true } = {}) {
    try { this.ws?.send(JSON.stringify({ type: "leave" })); } catch (_) {}
    this._finish("left", stopTracks);
  }

  _finish(state, stopTracks = true) {
    this._setState(state);
    const ws = this.ws;
    this.ws = null;
    ws?.close();
    if (stopTracks) {
      for (const s of this.pc?.getSenders() || []) s.track?.stop();
      for (const t of this.stream?.getTracks() || []) t.stop();
    }
    this.pc?.close();
  }

  /** Inbound video stats summed over tracks: { framesDecoded, packetsReceived }. */
  async inboundStats() {
    const out = { framesDecoded: 0, packetsReceived: 0, audioPacketsReceived: 0 };
    if (!this.pc) return out;
    const stats = await this.pc.getStats();
    stats.forEach((r) => {
      if (r.type !== "inbound-rtp") return;
      if (r.kind === "video") {
        out.framesDecoded += r.framesDecoded || 0;
        out.packetsReceived += r.packetsReceived || 0;
      } else if (r.kind === "audio") {
        out.audioPacketsReceived += r.packetsReceived || 0;
      }
    });
    return out;
  }
}
