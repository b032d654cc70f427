// Browser side of a speech-in/speech-out session with Azure OpenAI gpt-realtime, brokered by this app's /connect.
// No DOM beyond an optional <audio> element, so other web apps can import this file as it is.

const DATA_CHANNEL_LABEL = "oai-events";
const OPEN_TIMEOUT_MS = 20_000;

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

const SERVER_HINT = "The request was refused; reload the page and try again.";
const UPSTREAM_HINT = "Check AZURE_OPENAI_BASE_URL and that Azure OpenAI is reachable from the app, then try again.";
const WEBRTC_HINT = "The audio connection could not be set up; a firewall or VPN may be blocking WebRTC (UDP). Try another network.";
const HINTS = {
  not_configured: "Set the app setting named in the message (Function App configuration, or local.settings.json locally), then restart the app.",
  upstream_auth: 'Check AZURE_OPENAI_API_KEY, or grant the app\'s identity the "Cognitive Services OpenAI User" role on the Azure OpenAI resource.',
  credential_unavailable: "No Azure credential is available: set AZURE_OPENAI_API_KEY, enable the app's managed identity, or sign in with az login.",
  deployment_not_found: "Check that AZURE_OPENAI_DEPLOYMENT names a gpt-realtime deployment on the resource in AZURE_OPENAI_BASE_URL.",
  upstream_rejected: "Azure OpenAI refused the session settings (the message names the field); check the app's REALTIME_* settings.",
  upstream_error: "Azure OpenAI reported a problem; try again, and check the resource's health if it persists.",
  upstream_timeout: UPSTREAM_HINT,
  upstream_unreachable: UPSTREAM_HINT,
  origin_not_allowed: "Add this page's origin to the app's ALLOWED_ORIGINS setting.",
  voice_not_allowed: "Choose one of the voices the server offers.",
  instructions_too_long: "Shorten the instructions, then try again.",
  payload_too_large: "Shorten the instructions, then try again.",
  invalid_sdp: SERVER_HINT,
  missing_sdp: SERVER_HINT,
  bad_request: SERVER_HINT,
  unsupported_media_type: SERVER_HINT,
  microphone_denied: "Allow microphone access for this site (usually from the address bar), then try again.",
  microphone_unavailable: "Connect a microphone or close other apps using it. Browsers only offer the microphone to HTTPS or localhost pages.",
  http_401: "The endpoint wants a Functions key (CONNECT_AUTH_LEVEL=function): add ?code=<key> to the endpoint URL.",
  network_error: "Check that the server is running; a server on another origin must also allow this page's origin (CORS).",
  connection_failed: WEBRTC_HINT,
  connect_timeout: WEBRTC_HINT,
};

/** An Error with the server's error code; `hint` says what a person can do about it. */
export class RealtimeError extends Error {
  constructor(code, message, { status, retryAfter, hint } = {}) {
    super(message);
    this.name = "RealtimeError";
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
    this.hint = hint ?? hintFor(code, retryAfter);
  }
}

/** A short, actionable hint for an error code, or undefined. `retryAfter` is in seconds. */
export function hintFor(code, retryAfter) {
  if (code === "rate_limited" || code === "upstream_rate_limited") {
    return retryAfter ? `Wait ${retryAfter} s, then try again.` : "Wait a moment, then try again.";
  }
  return HINTS[code];
}

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
 */
export async function connect({
  endpoint = "/connect", voice, instructions, audioElement, microphone = true, onEvent, onStatus, signal,
} = {}) {
  return RealtimeSession.open({ endpoint, voice, instructions, audioElement, microphone, onEvent, onStatus, signal });
}

class RealtimeSession extends EventTarget {
  #status = null;
  #closed = false;
  #muted = false;
  #pc = null;
  #dc = null;
  #localStream = null;
  #remoteStream = null;
  #callId = null;
  #audio = null;
  #onStatus;
  #onEvent;
  #partial = new Map(); // "role:itemId" → transcript text so far
  #audioPlaying = false;
  #typedCount = 0;

  static async open({ audioElement, onEvent, onStatus, ...options }) {
    const session = new RealtimeSession();
    session.#onStatus = onStatus;
    session.#onEvent = onEvent;
    // Remote audio only plays, and only reaches WebAudio analysers, through a media element.
    session.#audio = audioElement ?? Object.assign(document.createElement("audio"), { autoplay: true });
    await session.#start(options);
    return session;
  }

  get status() { return this.#status; }
  get callId() { return this.#callId; }
  get pc() { return this.#pc; }
  get localStream() { return this.#localStream; }
  get remoteStream() { return this.#remoteStream; }
  get muted() { return this.#muted; }

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
    this.send({
      type: "conversation.item.create",
      item: { type: "message", role: "user", content: [{ type: "input_text", text: content }] },
    });
    this.#transcript("user", `typed-${++this.#typedCount}`, "final", content);
    this.send({ type: "response.create" });
  }

  mute(muted = true) {
    this.#muted = Boolean(muted);
    for (const track of this.#localStream?.getAudioTracks() ?? []) track.enabled = !this.#muted;
  }

  /** Stop the answer being generated and cut the audio already queued for playback. */
  interrupt() {
    this.send({ type: "response.cancel" });
    this.send({ type: "output_audio_buffer.clear" });
  }

  close() {
    if (this.#release()) this.#setStatus("disconnected");
  }

  async #start({ endpoint, voice, instructions, microphone, signal }) {
    try {
      signal?.throwIfAborted();
      this.#setStatus("connecting");
      if (microphone) this.#localStream = await openMicrophone();
      signal?.throwIfAborted();

      const pc = (this.#pc = new RTCPeerConnection()); // no ICE servers: the service's candidates suffice
      const [micTrack] = this.#localStream?.getAudioTracks() ?? [];
      pc.addTransceiver(micTrack ?? "audio", micTrack
        ? { direction: "sendrecv", streams: [this.#localStream] }
        : { direction: "recvonly" });
      pc.addEventListener("track", ({ track, streams }) => {
        this.#remoteStream = streams[0] ?? new MediaStream([track]);
        this.#audio.srcObject = this.#remoteStream;
        // A page capturing the microphone may autoplay in every engine; without a mic the browser may refuse.
        this.#audio.play?.().catch(() => {});
      });
      const dc = (this.#dc = pc.createDataChannel(DATA_CHANNEL_LABEL));
      dc.addEventListener("message", (message) => this.#receive(message.data));

      // Post the offer without waiting for ICE gathering: the service learns our address from its connectivity checks.
      await pc.setLocalDescription(await pc.createOffer());
      const form = new FormData();
      form.append("sdp", pc.localDescription.sdp);
      if (voice) form.append("voice", voice);
      if (instructions?.trim()) form.append("instructions", instructions);
      const response = await request(absolute(endpoint), {
        method: "POST", body: form, headers: { Accept: "application/sdp, application/json" }, signal,
      });
      if (!response.ok) throw await responseError(response);
      const answer = await response.text();
      if (!answer.startsWith("v=")) {
        throw new RealtimeError("invalid_answer", "The server's answer is not an SDP description.", { status: response.status });
      }
      this.#callId = parseCallId(response.headers.get("Location"));
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
      await waitForOpen(dc, pc, signal);

      const lost = () => this.close();
      dc.addEventListener("close", lost);
      pc.addEventListener("connectionstatechange", () => pc.connectionState === "failed" && lost());
      pc.addEventListener("iceconnectionstatechange", () => pc.iceConnectionState === "failed" && lost());
      signal?.addEventListener("abort", lost, { once: true });
      this.#setStatus("listening");
    } catch (error) {
      this.#release();
      this.#setStatus(error?.name === "AbortError" ? "disconnected" : "error");
      throw error;
    }
  }

  /** Stop the tracks (the browser's mic indicator goes off) and close the channel and connection. False if already done. */
  #release() {
    if (this.#closed) return false;
    this.#closed = true;
    for (const track of this.#localStream?.getTracks() ?? []) track.stop();
    this.#dc?.close();
    this.#pc?.close();
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
        this.#serverError(event.error);
        break;
      default:
        if (ASSISTANT_DELTA.has(event.type)) this.#transcript("assistant", itemId, "delta", event.delta);
        else if (ASSISTANT_DONE.has(event.type)) this.#transcript("assistant", itemId, "final", event.transcript ?? event.text);
    }
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

async function openMicrophone() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new RealtimeError("microphone_unavailable", "This page cannot use a microphone: it is not served over HTTPS or from localhost.");
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    if (error.name === "NotAllowedError" || error.name === "SecurityError") {
      throw new RealtimeError("microphone_denied", "Microphone access was denied.");
    }
    throw new RealtimeError("microphone_unavailable", `No usable microphone (${error.name}: ${error.message}).`);
  }
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

function absolute(endpoint) {
  return new URL(endpoint, globalThis.document?.baseURI ?? globalThis.location?.href);
}

/** fetch, with "server unreachable" (a TypeError, also what a CORS refusal looks like) turned into a RealtimeError. */
async function request(url, init) {
  try {
    return await fetch(url, init);
  } catch (error) {
    if (error?.name === "AbortError") throw error;
    throw new RealtimeError("network_error", `Could not reach ${url} (the server is down, or it refused this page's origin).`);
  }
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
