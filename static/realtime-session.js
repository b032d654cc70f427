// Browser side of a speech-in/speech-out session with Azure OpenAI gpt-realtime (or GPT-Live), brokered by this app's
// /connect. A GPT-Live session (its Location is /v1/live/sessions/…) is full duplex: no response lifecycle, timed
// transcript fragments assembled into turns here, typed messages and replayed context as appended instructions.
// No DOM beyond an optional <audio> element, so other web apps can import this file as it is. A small core:
// microphones (devices.js), reconnection (reconnect.js) and transcripts (transcript.js) are modules of their own.

import { openMicrophone } from "./devices.js";
import { RealtimeError, hintFor } from "./errors.js";

export { RealtimeError, hintFor };

const DATA_CHANNEL_LABEL = "oai-events";
const OPEN_TIMEOUT_MS = 20_000;
const DROP_GRACE_MS = 3_000; // ICE "disconnected" this long (no packets either way) is a lost connection
const LIMIT_SLACK_S = 15; // a hang-up by the server this close to the session limit is the limit
const MIN_TALK_MS = 150; // a push-to-talk press shorter than this is a slip, not a turn (the service wants 100 ms)
const HANGUP_WAIT_MS = 10_000; // `closed` stops waiting for the server's answer to the hang-up after this long
const LIVE_TURN_GAP_MS = 1_000; // GPT-Live has no turn end: a pause this long between fragments starts a new turn
const LIVE_CONTEXT_CHARS = 1_800; // appended context is limited to 500 tokens
// GPT-Live's `session.closed` reasons, as the session's end: why, and in words.
const LIVE_CLOSED = {
  close_requested: ["server", "the server closed it"],
  expired: ["service_limit", "it reached the service's time limit"],
  content: ["server", "content the service does not allow"],
  remote_hangup: ["server", "the other side hung up"],
  connection_lost: ["network", "the connection was lost"],
};

/**
 * Why a session ended (the `ended` event's `reason`): `user` (close(), or the caller's signal), `time_limit` (the
 * server's session limit, see connect's `maxSeconds`), `server` (the server hung up: an operator, a kill switch),
 * `service_limit` (the service's own session limit: `session_expired`), `network` (the connection was lost).
 * Only the last two are accidents worth reconnecting for.
 */
export const RECONNECTABLE = new Set(["service_limit", "network"]);
const ENDED_MESSAGES = {
  user: "You ended the conversation.",
  time_limit: "The conversation reached its time limit.",
  server: "The conversation was ended by the server.",
  service_limit: "The service ended the session at its time limit.",
  network: "The connection was lost.",
};

const ASSISTANT_DELTA = new Set([
  "response.output_audio_transcript.delta",
  "response.output_text.delta",
  "response.audio_transcript.delta", // beta name
  "response.text.delta", // beta name
]);
const ASSISTANT_DONE = new Set([
  "response.output_audio_transcript.done",
  "response.output_text.done",
  "response.audio_transcript.done",
  "response.text.done",
]);

/** The call id from a `Location` such as `/v1/realtime/calls/rtc_…`: a `call_id` query parameter, else the last path segment. */
export function parseCallId(location) {
  if (!location) return null;
  const url = new URL(location, "http://relative.invalid"); // the base only lets relative values parse
  return url.searchParams.get("call_id") || url.pathname.split("/").filter(Boolean).pop() || null;
}

/** GET the server's /config, resolved relative to the connect endpoint (so "https://app/connect" → "https://app/config"). */
export async function fetchConfig(endpointBase = "/connect", { signal } = {}) {
  const url = new URL("config", absolute(endpointBase));
  const response = await request(url, { headers: { Accept: "application/json" }, signal });
  if (!response.ok) throw await responseError(response);
  try {
    return await response.json();
  } catch {
    throw new RealtimeError("bad_config", `${url} did not return JSON.`, { status: response.status });
  }
}

/**
 * Open a session: microphone → RTCPeerConnection → POST the offer to `endpoint` → apply the answer → wait for the
 * data channel. Resolves with the session once it is listening; rejects with a RealtimeError (or the signal's
 * AbortError) after releasing everything it had opened. `onStatus` and `onEvent` also see the connecting phase,
 * before the caller holds the session.
 *
 * `microphone`: true (the default device), a deviceId (falls back to the default if it is gone) or false.
 * `muted`: open the call muted (see mute()); the microphone is silenced before its track reaches the connection.
 * `context`: earlier turns `[{role: "user"|"assistant", text}]`, replayed into the new call before it is listening,
 * so the assistant remembers a conversation an earlier call started. `turns: "manual"` turns the service's turn
 * detection off (push-to-talk: see startTalking/stopTalking). `maxSeconds`: the server's session limit (/config's
 * `session.maxSeconds`); the session ends itself there (reason `time_limit`) and `endsAt` says when.
 */
export async function connect({
  endpoint = "/connect", voice, instructions, model, reasoning, audioElement, microphone = true, muted = false,
  context = [], turns = "auto", maxSeconds = null, onEvent, onStatus, signal,
} = {}) {
  return RealtimeSession.open({
    endpoint, voice, instructions, model, reasoning, audioElement, microphone, muted, context, turns, maxSeconds,
    onEvent, onStatus, signal,
  });
}

class RealtimeSession extends EventTarget {
  #status = null;
  #tools = new Map(); // call_id of a server-run tool call → "call" or "output" (the phase already shown)
  #note = null; // the server's last system note in this call (its supervisor's), which an end by the server explains
  #ended = false;
  #endedReason = null;
  #muted = false;
  #manualTurns = false;
  #talkingSince = null; // push-to-talk: when the current press began
  #pc = null;
  #dc = null;
  #localStream = null;
  #remoteStream = null;
  #callId = null;
  #hangupUrl = null; // the server's hang-up for this call, with its token; null when the server offers none
  #callToken = null;
  #endsAt = null;
  #limitTimer = 0;
  #dropTimer = 0;
  #serviceExpired = false;
  #audio = null;
  #audioBlocked = false;
  #onStatus;
  #onEvent;
  #partial = new Map(); // "role:itemId" → transcript text so far
  #audioPlaying = false;
  #typedCount = 0;
  #live = false; // a GPT-Live session
  #liveTurns = { user: null, assistant: null }; // the turn each side is in: {id, lastEnd, timer}
  #liveCount = 0;
  #liveClosed = null; // the reason GPT-Live gave in session.closed
  #speakingTimer = 0;
  #closed;
  #settleClosed;

  constructor() {
    super();
    this.#closed = new Promise((resolve) => { this.#settleClosed = resolve; });
  }

  static async open({ audioElement, onEvent, onStatus, ...options }) {
    const session = new RealtimeSession();
    session.#onStatus = onStatus;
    session.#onEvent = onEvent;
    // Remote audio only plays, and only reaches WebAudio analysers, through a media element.
    session.#audio = audioElement ?? Object.assign(document.createElement("audio"), { autoplay: true });
    // Inside the caller's click, before any await: Safari then lets this element play the remote stream later.
    session.#audio.play?.()?.catch(() => {});
    await session.#start(options);
    return session;
  }

  get status() { return this.#status; }
  get callId() { return this.#callId; }
  get pc() { return this.#pc; }
  get localStream() { return this.#localStream; }
  get remoteStream() { return this.#remoteStream; }
  get muted() { return this.#muted; }
  /** Push-to-talk: turn detection is off and the microphone is live only between startTalking and stopTalking. */
  get manualTurns() { return this.#manualTurns; }
  /** A GPT-Live session: full duplex, so there is nothing to interrupt and no push-to-talk. */
  get live() { return this.#live; }
  get talking() { return this.#talkingSince !== null; }
  /** When the session ends at the server's limit (ms since the epoch), or null. */
  get endsAt() { return this.#endsAt; }
  /** Why it ended (see RECONNECTABLE), or null while it lasts. */
  get endedReason() { return this.#endedReason; }
  /** True while the browser refuses to play the assistant's audio until the user clicks (see resumeAudio). */
  get audioBlocked() { return this.#audioBlocked; }
  /**
   * Resolves once the call is over at both ends: after `ended`, when the server has answered the hang-up (at once
   * when none is sent, at the latest after HANGUP_WAIT_MS). Until then the server may still count the call.
   */
  get closed() { return this.#closed; }

  /** Send a client event object over the data channel; dispatches `sent` so logs can show both directions. */
  send(event) {
    if (this.#dc?.readyState !== "open") throw new RealtimeError("not_connected", "The session is not connected.");
    this.#dc.send(JSON.stringify(event));
    this.dispatchEvent(new CustomEvent("sent", { detail: event }));
  }

  /** A typed user message, shown in the transcript at once, then a request for the assistant's answer. */
  sendText(text) {
    const content = String(text ?? "").trim();
    if (!content) return;
    if (this.#live) {
      // GPT-Live takes no items and no response.create: the text is appended context the model answers in its time.
      this.send({ type: "session.instructions.append", content: `The user typed: ${content}`, delegation_id: null });
      this.#transcript("user", `typed-${++this.#typedCount}`, "final", content);
      return;
    }
    this.send({
      type: "conversation.item.create",
      item: { type: "message", role: "user", content: [{ type: "input_text", text: content }] },
    });
    this.#transcript("user", `typed-${++this.#typedCount}`, "final", content);
    this.send({ type: "response.create" });
  }

  mute(muted = true) {
    this.#muted = Boolean(muted);
    this.#applyMicrophone();
  }

  /** Push-to-talk pressed: drop stray audio and open the microphone. */
  startTalking() {
    if (!this.#manualTurns || this.talking) return;
    this.send({ type: "input_audio_buffer.clear" });
    this.#talkingSince = performance.now();
    this.#applyMicrophone();
    this.#setStatus("listening");
  }

  /** Push-to-talk released: close the microphone, commit what was said and ask for the answer. */
  stopTalking() {
    if (!this.talking) return;
    const heldMs = performance.now() - this.#talkingSince;
    this.#talkingSince = null;
    this.#applyMicrophone();
    if (heldMs < MIN_TALK_MS) {
      this.send({ type: "input_audio_buffer.clear" });
      return;
    }
    this.send({ type: "input_audio_buffer.commit" });
    this.send({ type: "response.create" });
    this.#setStatus("thinking");
  }

  /**
   * Capture from another microphone without reconnecting (the sender's track is replaced). With a deviceId that is
   * gone, the default device is used; resolves with `{ deviceId, fellBack }`.
   */
  async useMicrophone(deviceId) {
    const sender = this.#pc?.getSenders().find((s) => s.track?.kind === "audio" || s.track === null);
    if (!sender || this.#ended) throw new RealtimeError("not_connected", "The session is not connected.");
    const { stream, fellBack } = await openMicrophone(deviceId);
    const [track] = stream.getAudioTracks();
    if (this.#ended) {
      track.stop();
      throw new RealtimeError("not_connected", "The session ended while the microphone opened.");
    }
    this.#applyMicrophone(stream); // before the sender has it: a muted call never sends the new device
    await sender.replaceTrack(track);
    for (const old of this.#localStream?.getTracks() ?? []) old.stop();
    this.#localStream = stream;
    this.dispatchEvent(new CustomEvent("microphone", { detail: { stream, fellBack } }));
    return { deviceId: track.getSettings?.().deviceId, fellBack };
  }

  /** Stop the answer being generated and cut the audio already queued for playback. */
  interrupt() {
    if (this.#live) throw new RealtimeError("not_supported", "GPT-Live is full duplex: just speak to interrupt it.");
    this.send({ type: "response.cancel" });
    this.send({ type: "output_audio_buffer.clear" });
  }

  /** Play the assistant's audio after the browser blocked autoplay; call it from a click. */
  async resumeAudio() {
    await this.#audio.play();
    this.#audioBlocked = false;
    this.dispatchEvent(new CustomEvent("audio", { detail: { blocked: false } }));
  }

  /** End the call: release everything here at once and tell the server, so its slot is free. */
  close() {
    this.#end("user");
  }

  async #start({ endpoint, voice, instructions, model, reasoning, microphone, muted, context, turns, maxSeconds, signal }) {
    this.#muted = Boolean(muted);
    this.#manualTurns = turns === "manual";
    try {
      signal?.throwIfAborted();
      this.#setStatus("connecting");
      if (microphone) ({ stream: this.#localStream } = await openMicrophone(microphone === true ? undefined : microphone));
      this.#applyMicrophone(); // before the connection has the track: muted (or push-to-talk) sends silence from the start
      signal?.throwIfAborted();

      const pc = (this.#pc = new RTCPeerConnection()); // no ICE servers: the service's candidates suffice
      const [micTrack] = this.#localStream?.getAudioTracks() ?? [];
      pc.addTransceiver(micTrack ?? "audio", micTrack
        ? { direction: "sendrecv", streams: [this.#localStream] }
        : { direction: "recvonly" });
      pc.addEventListener("track", ({ track, streams }) => {
        this.#remoteStream = streams[0] ?? new MediaStream([track]);
        this.#audio.srcObject = this.#remoteStream;
        this.#audio.play?.()?.catch((error) => {
          // Safari/iOS, or a page without a recent click: say so, so the page can offer a button instead of silence.
          if (error?.name !== "NotAllowedError" || this.#ended) return;
          this.#audioBlocked = true;
          this.dispatchEvent(new CustomEvent("audio", { detail: { blocked: true } }));
        });
      });
      const dc = (this.#dc = pc.createDataChannel(DATA_CHANNEL_LABEL));
      dc.addEventListener("message", (message) => this.#receive(message.data));

      // Post the offer without waiting for ICE gathering: the service learns our address from its connectivity checks.
      await pc.setLocalDescription(await pc.createOffer());
      const form = new FormData();
      form.append("sdp", pc.localDescription.sdp);
      if (voice) form.append("voice", voice);
      if (instructions?.trim()) form.append("instructions", instructions);
      if (model) form.append("model", model);
      if (reasoning) form.append("reasoning", reasoning);
      const url = absolute(endpoint);
      const response = await request(url, {
        method: "POST", body: form, headers: { Accept: "application/sdp, application/json" }, signal,
      });
      if (!response.ok) throw await responseError(response);
      const answer = await response.text();
      if (!answer.startsWith("v=")) {
        throw new RealtimeError("invalid_answer", "The server's answer is not an SDP description.", { status: response.status });
      }
      const location = response.headers.get("Location");
      this.#callId = parseCallId(location);
      this.#live = /\/live\/sessions\//.test(location ?? "");
      if (this.#live && this.#manualTurns) {
        this.#manualTurns = false; // GPT-Live listens all the time: push-to-talk does not apply
        this.#applyMicrophone();
      }
      this.#callToken = response.headers.get("X-Call-Token");
      if (this.#callId && this.#callToken) this.#hangupUrl = hangupUrl(url, this.#callId);
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
      await waitForOpen(dc, pc, signal);

      this.#watchForTheEnd(dc, pc, signal);
      if (this.#manualTurns) {
        this.send({ type: "session.update", session: { type: "realtime", audio: { input: { turn_detection: null } } } });
      }
      this.#replay(context);
      if (maxSeconds > 0) {
        this.#endsAt = Date.now() + maxSeconds * 1000;
        this.#limitTimer = setTimeout(() => this.#end("time_limit"), maxSeconds * 1000);
      }
      this.#setStatus("listening");
    } catch (error) {
      this.#release();
      this.#hangUp(); // the server may have created the call already: let it go at once rather than at its limit
      this.#setStatus(error?.name === "AbortError" ? "disconnected" : "error");
      throw error;
    }
  }

  /** Earlier turns as items of the new call, before anyone speaks, so the assistant remembers them. */
  #replay(turns) {
    if (this.#live) return this.#replayLive(turns);
    for (const { role, text } of turns ?? []) {
      if (!text || (role !== "user" && role !== "assistant")) continue;
      const type = role === "user" ? "input_text" : "output_text";
      this.send({ type: "conversation.item.create", item: { type: "message", role, content: [{ type, text }] } });
    }
  }

  /** GPT-Live takes no items: the turns so far become one appended instruction, the newest kept within its bound. */
  #replayLive(turns) {
    const lines = (turns ?? []).filter(({ role, text }) => text && (role === "user" || role === "assistant"))
      .map(({ role, text }) => `${role === "user" ? "User" : "Assistant"}: ${text}`);
    if (!lines.length) return;
    const earlier = lines.join("\n").slice(-LIVE_CONTEXT_CHARS);
    this.send({
      type: "session.instructions.append",
      content: `The conversation so far, continued from an earlier call:\n${earlier}`,
      delegation_id: null,
    });
  }

  /**
   * Tell an ended call from one still going, and why: the channel closing under us is the server hanging up (or
   * the service at its limit, which says `session_expired` first); ICE failing, or staying disconnected past a short
   * grace, is a lost network (a hung-up call closes its channel at once, a lost one says nothing).
   */
  #watchForTheEnd(dc, pc, signal) {
    dc.addEventListener("close", () => {
      const nearLimit = this.#endsAt && Date.now() >= this.#endsAt - LIMIT_SLACK_S * 1000;
      const live = LIVE_CLOSED[this.#liveClosed]?.[0] ?? (this.#liveClosed ? "server" : null);
      this.#end(this.#serviceExpired ? "service_limit" : nearLimit ? "time_limit" : live ?? "server");
    });
    const connection = () => {
      const state = pc.connectionState ?? pc.iceConnectionState;
      if (state === "failed" || pc.iceConnectionState === "failed") this.#end("network");
      else if (state === "disconnected") this.#dropTimer ||= setTimeout(() => this.#end("network"), DROP_GRACE_MS);
      else if (state === "connected") {
        clearTimeout(this.#dropTimer);
        this.#dropTimer = 0;
      }
    };
    pc.addEventListener("connectionstatechange", connection);
    pc.addEventListener("iceconnectionstatechange", connection);
    signal?.addEventListener("abort", () => this.#end("user"), { once: true });
  }

  /** Finish once, for one reason: release, tell the server (unless it ended the call), then `ended` and the status. */
  #end(reason) {
    if (!this.#release()) return;
    this.#endedReason = reason;
    if (reason === "server" || reason === "service_limit") this.#letGo();
    else this.#hangUp();
    const detail = { reason, byUser: reason === "user", reconnectable: RECONNECTABLE.has(reason), message: ENDED_MESSAGES[reason] };
    if (reason === "server" && this.#note) {
      detail.serverNote = this.#note;
      detail.message += ` The server said: ${this.#note}`;
    }
    if (this.#liveClosed) {
      detail.serviceReason = this.#liveClosed;
      detail.message += ` GPT-Live closed the session: ${LIVE_CLOSED[this.#liveClosed]?.[1] ?? this.#liveClosed}.`;
    }
    this.dispatchEvent(new CustomEvent("ended", { detail }));
    this.#setStatus("disconnected");
  }

  /**
   * Tell the server the call is over, so its slot is free; `closed` resolves when it has answered. The connection
   * (already silent: release() stopped the microphone) is let go only then, so the server, which hangs the call up
   * itself, records the end as the caller's rather than as a browser that vanished. keepalive: the request outlives
   * a page being closed; a failure changes nothing here, the call is over (the server's sweep ends it).
   */
  #hangUp() {
    if (!this.#hangupUrl) return this.#letGo();
    const answered = fetch(this.#hangupUrl, { method: "POST", headers: { "X-Call-Token": this.#callToken }, keepalive: true });
    const timer = setTimeout(() => this.#letGo(), HANGUP_WAIT_MS);
    answered.catch(() => {}).finally(() => {
      clearTimeout(timer);
      this.#letGo();
    });
  }

  /** Close the channel and the connection; the call is over at both ends. */
  #letGo() {
    this.#dc?.close();
    this.#pc?.close();
    this.#settleClosed();
  }

  /**
   * Mute, and push-to-talk's released button, both silence the track (the sender keeps sending silence). Every track
   * gets this before the connection has it (`stream`: a new microphone's, else the current one's).
   */
  #applyMicrophone(stream = this.#localStream) {
    const live = !this.#muted && (!this.#manualTurns || this.talking);
    for (const track of stream?.getAudioTracks() ?? []) track.enabled = live;
  }

  /**
   * Stop the tracks (the browser's mic indicator goes off) and the assistant's audio at once; the connection closes
   * in #letGo(). False if already done.
   */
  #release() {
    if (this.#ended) return false;
    this.#ended = true;
    clearTimeout(this.#limitTimer);
    clearTimeout(this.#dropTimer);
    clearTimeout(this.#speakingTimer);
    for (const turn of Object.values(this.#liveTurns)) clearTimeout(turn?.timer);
    for (const track of this.#localStream?.getTracks() ?? []) track.stop();
    this.#audio.srcObject = null;
    this.#partial.clear();
    return true;
  }

  #setStatus(status) {
    if (status === this.#status) return;
    this.#status = status;
    this.#onStatus?.(status);
    this.dispatchEvent(new CustomEvent("status", { detail: status }));
  }

  #receive(data) {
    if (this.#ended) return; // an ended call's last events, before the hang-up closes its channel, show nothing
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return; // the service only sends JSON; anything else carries nothing to show
    }
    this.#onEvent?.(event);
    this.dispatchEvent(new CustomEvent("event", { detail: event }));
    this.#follow(event);
  }

  /** Derive status, transcript and errors from one server event. */
  #follow(event) {
    if (this.#live) return this.#followLive(event);
    const itemId = event.item_id ?? event.response_id;
    switch (event.type) {
      case "input_audio_buffer.speech_started":
        this.#setStatus("listening");
        this.#transcript("user", itemId, "placeholder");
        break;
      case "input_audio_buffer.speech_stopped":
      case "response.created":
        this.#setStatus("thinking");
        break;
      case "output_audio_buffer.started":
        this.#audioPlaying = true;
        this.#setStatus("speaking");
        break;
      case "output_audio_buffer.stopped":
      case "output_audio_buffer.cleared":
        this.#audioPlaying = false;
        this.#setStatus("listening");
        break;
      case "response.done": {
        // Generation ends before playback does; output_audio_buffer.stopped ends "speaking" in that case.
        if (!this.#audioPlaying) this.#setStatus("listening");
        // A cancelled response may end without its transcript's .done: close the lines it left open.
        for (const key of [...this.#partial.keys()].filter((k) => k.startsWith("assistant:"))) {
          this.#transcript("assistant", key.slice("assistant:".length), "final");
        }
        const failure = event.response?.status === "failed" ? event.response.status_details?.error : null;
        if (failure) this.#serverError(failure);
        break;
      }
      case "response.output_item.added":
      case "response.output_item.done":
        this.#tool(event.item, "call");
        break;
      case "conversation.item.added":
        this.#tool(event.item, "output");
        this.#notice(event.item);
        break;
      case "conversation.item.created":
      case "conversation.item.done":
        this.#tool(event.item, "output");
        break;
      case "conversation.item.input_audio_transcription.delta":
        this.#transcript("user", itemId, "delta", event.delta);
        break;
      case "conversation.item.input_audio_transcription.completed":
        this.#transcript("user", itemId, "final", event.transcript);
        break;
      case "conversation.item.input_audio_transcription.failed":
        this.#transcript("user", itemId, "failed", undefined, event.error?.message);
        break;
      case "error":
        // The service's limit: the channel closes next, and `ended` says so; nothing for the user to fix.
        if (event.error?.code === "session_expired") this.#serviceExpired = true;
        else this.#serverError(event.error);
        break;
      default:
        if (ASSISTANT_DELTA.has(event.type)) this.#transcript("assistant", itemId, "delta", event.delta);
        else if (ASSISTANT_DONE.has(event.type)) this.#transcript("assistant", itemId, "final", event.transcript ?? event.text);
    }
  }

  /** GPT-Live's events: both sides' timed fragments, its errors, and why it closed (the channel closes next). */
  #followLive(event) {
    switch (event.type) {
      case "session.input_transcript.delta":
        this.#liveFragment("user", event);
        break;
      case "session.output_transcript.delta":
        this.#liveFragment("assistant", event);
        this.#setStatus("speaking");
        clearTimeout(this.#speakingTimer);
        this.#speakingTimer = setTimeout(() => this.#setStatus("listening"), LIVE_TURN_GAP_MS);
        break;
      case "session.closed":
        this.#liveClosed = event.reason || "closed";
        break;
      case "error":
        this.#serverError(event.error);
        break;
    }
  }

  /**
   * One timed fragment into its side's turn. GPT-Live never says a turn ended, so a turn ends when its side pauses:
   * LIVE_TURN_GAP_MS between one fragment's end_ms and the next one's start_ms, or that long without a fragment.
   * Both sides may speak at once (full duplex), so both may have a turn growing at the same time.
   */
  #liveFragment(role, { delta = "", start_ms: start, end_ms: end }) {
    let turn = this.#liveTurns[role];
    if (turn && Number.isFinite(start) && Number.isFinite(turn.lastEnd) && start - turn.lastEnd > LIVE_TURN_GAP_MS) {
      this.#closeLiveTurn(role);
      turn = null;
    }
    if (!turn) turn = this.#liveTurns[role] = { id: `live-${++this.#liveCount}` };
    turn.lastEnd = Number.isFinite(end) ? end : turn.lastEnd;
    clearTimeout(turn.timer);
    turn.timer = setTimeout(() => this.#closeLiveTurn(role), LIVE_TURN_GAP_MS);
    this.#transcript(role, turn.id, "delta", delta);
  }

  #closeLiveTurn(role) {
    const turn = this.#liveTurns[role];
    if (!turn) return;
    clearTimeout(turn.timer);
    this.#liveTurns[role] = null;
    this.#transcript(role, turn.id, "final", (this.#partial.get(`${role}:${turn.id}`) ?? "").trim());
  }

  /**
   * A tool the server runs (docs/tools.md), as far as the data channel shows it: one `tool` event when the model
   * calls it (`phase: "call"`, its name) and one when the server's answer joins the conversation (`phase: "output"`,
   * a short `summary`). The page never answers a call itself. Several events carry the same item: each phase once.
   * A call shows only as its response makes it (`response.output_item.*`, which `?webrtcfilter=on` hides) and an
   * output only for a call shown, so a filtered page, which still sees the conversation's items, shows no tool at all.
   */
  #tool(item, phase) {
    const callId = item?.call_id;
    if (!callId || item.type !== (phase === "call" ? "function_call" : "function_call_output")) return;
    if (this.#tools.get(callId) !== (phase === "call" ? undefined : "call")) return;
    this.#tools.set(callId, phase);
    const detail = { callId, phase, name: item.name ?? null };
    if (phase === "output") detail.summary = toolSummary(item.output);
    this.dispatchEvent(new CustomEvent("tool", { detail }));
  }

  /**
   * A system message the server put into the conversation (its supervisor: "This conversation ends in 30 seconds.",
   * or why it is about to hang up), as one `notice` event {itemId, text}; kept, so an end by the server says why.
   */
  #notice(item) {
    if (item?.type !== "message" || item.role !== "system") return;
    const parts = Array.isArray(item.content) ? item.content : [];
    const text = parts.map((part) => (typeof part?.text === "string" ? part.text : "")).join(" ").trim();
    if (!text) return;
    this.#note = text;
    this.dispatchEvent(new CustomEvent("notice", { detail: { itemId: item.id ?? null, text } }));
  }

  /** Dispatch a normalised transcript update; `text` is always the whole line so far, `delta` the new piece. */
  #transcript(role, itemId, kind, piece, error) {
    const key = `${role}:${itemId}`;
    const sofar = this.#partial.get(key) ?? "";
    let text = sofar;
    if (kind === "delta") this.#partial.set(key, (text = sofar + (piece ?? "")));
    else if (kind === "final") text = piece ?? sofar;
    const final = kind === "final" || kind === "failed";
    if (final) this.#partial.delete(key);
    const detail = { role, itemId, text, final, kind };
    if (kind === "delta") detail.delta = piece ?? "";
    if (error) detail.error = error;
    this.dispatchEvent(new CustomEvent("transcript", { detail }));
  }

  #serverError(error = {}) {
    const code = error.code || error.type || "server_error";
    // Interrupt while nothing is being generated is harmless, though the service reports it.
    if (code === "response_cancel_not_active") return;
    const detail = { code, message: error.message || "The realtime service reported an error." };
    const hint = hintFor(code);
    if (hint) detail.hint = hint;
    this.dispatchEvent(new CustomEvent("error", { detail }));
  }
}

/** A tool output (a string, JSON for structured results) in a few words for the page: never the whole of it. */
export function toolSummary(output) {
  let value = output;
  try {
    value = JSON.parse(output);
  } catch {
    // plain text
  }
  if (value && typeof value === "object" && !Array.isArray(value)) {
    if (typeof value.error === "string") return `failed: ${clip(value.error)}`;
    if (Array.isArray(value.hits)) {
      const first = value.hits[0]?.path;
      return value.hits.length ? `${value.hits.length} found${first ? `, first ${clip(String(first), 40)}` : ""}` : "nothing found";
    }
    if (typeof value.time === "string") return clip(value.time);
  }
  return clip(typeof value === "string" ? value : JSON.stringify(value) ?? "");
}

function clip(text, length = 80) {
  const flat = String(text).replace(/\s+/g, " ").trim();
  return flat.length > length ? `${flat.slice(0, length - 1)}…` : flat || "done";
}

function waitForOpen(dc, pc, signal) {
  if (dc.readyState === "open") return Promise.resolve();
  return new Promise((resolve, reject) => {
    const listeners = new AbortController();
    const on = (target, type, handler) => target?.addEventListener(type, handler, { signal: listeners.signal });
    const settle = (error) => {
      listeners.abort();
      clearTimeout(timer);
      if (error) reject(error);
      else resolve();
    };
    const failed = () => new RealtimeError("connection_failed", "The audio connection to the realtime service failed.");
    const timer = setTimeout(() => settle(new RealtimeError(
      "connect_timeout", `The audio connection did not open within ${OPEN_TIMEOUT_MS / 1000} s.`,
    )), OPEN_TIMEOUT_MS);
    on(dc, "open", () => settle());
    on(dc, "close", () => settle(failed()));
    on(pc, "connectionstatechange", () => pc.connectionState === "failed" && settle(failed()));
    on(signal, "abort", () => settle(signal.reason));
  });
}

/** The server's hang-up for a call: the connect endpoint's sibling `calls/{id}/hangup`, query (a function key) kept. */
function hangupUrl(connectUrl, callId) {
  const url = new URL(connectUrl);
  url.pathname = `${url.pathname.replace(/\/connect\/?$/, "")}/calls/${encodeURIComponent(callId)}/hangup`;
  return url;
}

function absolute(endpoint) {
  return new URL(endpoint, globalThis.document?.baseURI ?? globalThis.location?.href);
}

/** fetch, with "no answer" (a TypeError: the server is down, or it refused this page's origin) as a RealtimeError. */
async function request(url, init) {
  try {
    return await fetch(url, init);
  } catch (error) {
    if (error?.name === "AbortError") throw error;
    throw unanswered(url);
  }
}

/**
 * Why a fetch got no answer the page may read. Same origin: the server is unreachable. Another origin: most likely
 * the answer came without this site in its Access-Control-Allow-Origin (the browser hides it and says only "Failed
 * to fetch"), so say that, and how the site's owner can check.
 */
function unanswered(url) {
  const here = globalThis.location?.origin;
  if (!here || here === "null" || url.origin === here) {
    return new RealtimeError("network_error", `Could not reach ${url}: the server is down or unreachable.`);
  }
  return new RealtimeError(
    "cross_origin_blocked",
    `The browser could not read an answer from ${url.origin}: this site (${here}) may not be allowed to use this endpoint.`,
    {
      hint: `The app's ALLOWED_ORIGINS setting must list ${here}, and the function app's platform CORS list stay empty. ` +
        `To check: open ${new URL("config", url)} in a new tab (any answer means the server is up), and look for the ` +
        "blocked request in the browser's developer console. An endpoint that needs a function key also needs ?code=<key>.",
    },
  );
}

/** A RealtimeError from a failed response: the server's {"error": {code, message}} when present, else a readable summary. */
async function responseError(response) {
  const retryAfter = parseRetryAfter(response.headers.get("Retry-After"));
  const body = await response.text().catch(() => "");
  let error;
  try {
    ({ error } = JSON.parse(body));
  } catch {
    // not JSON: a gateway's HTML page, plain text or nothing
  }
  const code = (typeof error?.code === "string" && error.code) || `http_${response.status}`;
  let message = (typeof error?.message === "string" && error.message) || (typeof error === "string" && error);
  if (!message) {
    const excerpt = textOf(body).slice(0, 200);
    message = `The server answered ${response.status}${response.statusText ? ` ${response.statusText}` : ""}${excerpt ? `: ${excerpt}` : "."}`;
  }
  return new RealtimeError(code, message, { status: response.status, retryAfter });
}

function textOf(body) {
  return body
    .replace(/<(script|style)\b[\s\S]*?<\/\1>/gi, " ")
    .replace(/<[^>]*>/g, " ")
    .replace(/\s+/g, " ")
    .trim();
}

/** Retry-After in whole seconds: it may be a number of seconds or an HTTP date. */
function parseRetryAfter(value) {
  if (!value) return undefined;
  const seconds = /^\d+$/.test(value.trim()) ? Number(value) : (Date.parse(value) - Date.now()) / 1000;
  return Number.isFinite(seconds) ? Math.max(0, Math.ceil(seconds)) : undefined;
}
