// A conversation that outlives its calls: the one start → live → ended → reconnect cycle behind both the page
// (app.js) and <realtime-voice>. It holds what the user chose for the whole conversation rather than for one call
// (mute), replays the turns so far into every new call, and goes idle only once the server has answered the last
// call's hang-up, so a Start right after End is not refused for a slot the server has not freed yet. No DOM.

import { Reconnector, sleep } from "./reconnect.js";
import { Transcript } from "./transcript.js";

const SHORT_WAIT_S = 5; // a start refused with too_many_sessions and a Retry-After this short is retried once

/**
 * `open({ signal, context, muted })` opens one call (connect() with the caller's other options) and resolves with its
 * session. Phases (`phase` event and getter): idle → connecting → live → ending → idle, with reconnecting → live
 * after an accident. Events: `phase` {phase}; `call` {session, reconnected} when a call goes live; `ended` (the
 * session's `ended` detail) when it ends; `reconnecting` {attempt, maxAttempts, at, message} before each new try;
 * `gaveup` {message} when no new call could be opened (or reconnecting was stopped); `waiting` {seconds, error,
 * message} before the one retry of a start refused for a short while; `failed` {error} when a start fails.
 */
export class Conversation extends EventTarget {
  #open;
  #phase = "idle";
  #session = null;
  #abort = null;
  #reconnector = null;
  #muted = false;
  #leave = []; // undoes what following the live call set up

  constructor(open, { transcript = new Transcript() } = {}) {
    super();
    this.#open = open;
    this.transcript = transcript;
  }

  get phase() { return this.#phase; }
  /** The live call's session, or null. */
  get session() { return this.#session; }
  get muted() { return this.#muted; }

  /** The user's mute, kept until they unmute: every new call (reconnection, continue, new start) opens muted. */
  mute(muted = true) {
    this.#muted = Boolean(muted);
    this.#session?.mute(this.#muted);
  }

  /** Open a call, from idle only; `context`: earlier turns for the new call (see connect()). */
  async start({ context = [] } = {}) {
    if (this.#phase !== "idle") return;
    const abort = (this.#abort = new AbortController());
    this.#setPhase("connecting");
    let session;
    try {
      session = await this.#openOrWaitOnce(abort.signal, context);
    } catch (error) {
      if (error?.name !== "AbortError") this.#emit("failed", { error });
      this.#setPhase("idle");
      return;
    } finally {
      this.#abort = null;
    }
    if (session.status === "disconnected") await this.#windDown(session); // stopped while the last step finished
    else this.#follow(session, false);
  }

  /** Cancel a connect or a reconnection in progress, or end the live call. */
  stop() {
    this.#reconnector?.cancel();
    this.#abort?.abort();
    this.#session?.close(); // a call from a reconnection is not tied to the first connect's signal
  }

  #openCall(signal, context) {
    return this.#open({ signal, context, muted: this.#muted });
  }

  /** A session cap frees a slot when a call ends: a refusal that says so for a few seconds is waited out once. */
  async #openOrWaitOnce(signal, context) {
    try {
      return await this.#openCall(signal, context);
    } catch (error) {
      const seconds = error?.code === "too_many_sessions" ? error.retryAfter : undefined;
      if (!(seconds <= SHORT_WAIT_S)) throw error;
      const message = `Every conversation the server allows is in use; trying again in ${seconds} s.`;
      this.#emit("waiting", { seconds, error, message });
      await sleep(seconds * 1000, signal);
      return this.#openCall(signal, context);
    }
  }

  #follow(session, reconnected) {
    this.#session = session;
    if (session.muted !== this.#muted) session.mute(this.#muted); // muted or unmuted while it connected
    const ended = ({ detail }) => this.#onEnded(session, detail);
    session.addEventListener("ended", ended);
    this.#leave.push(this.transcript.follow(session), () => session.removeEventListener("ended", ended));
    this.#setPhase("live");
    this.#emit("call", { session, reconnected });
  }

  async #onEnded(session, detail) {
    for (const undo of this.#leave.splice(0)) undo();
    this.#session = null;
    if (detail.reconnectable) this.#setPhase("reconnecting");
    this.#emit("ended", detail);
    if (detail.reconnectable) await this.#reconnect(session, detail);
    else await this.#windDown(session);
  }

  /** After an accident: new calls with capped backoff, each given the turns so far, once the old one is let go. */
  async #reconnect(ended, detail) {
    const reconnector = (this.#reconnector = new Reconnector(async (signal) => {
      await settledUnlessAborted(ended.closed, signal);
      return this.#openCall(signal, this.transcript.lastTurns());
    }));
    reconnector.addEventListener("reconnecting", ({ detail: attempt }) => {
      this.#emit("reconnecting", { ...attempt, message: detail.message });
    });
    const session = await reconnector.run();
    this.#reconnector = null;
    if (session && session.status !== "disconnected") return this.#follow(session, true);
    session?.close();
    this.#emit("gaveup", { message: detail.message });
    await this.#windDown(session ?? ended);
  }

  /** Idle once the server has answered the call's hang-up (bounded by the session), so a new start finds its slot free. */
  async #windDown(session) {
    this.#setPhase("ending");
    await session.closed;
    this.#setPhase("idle");
  }

  #setPhase(phase) {
    if (phase === this.#phase) return;
    this.#phase = phase;
    this.#emit("phase", { phase });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function settledUnlessAborted(promise, signal) {
  return new Promise((resolve, reject) => {
    signal.throwIfAborted();
    signal.addEventListener("abort", () => reject(signal.reason), { once: true });
    promise.then(resolve, resolve);
  });
}
