// Reconnection with capped exponential backoff. No DOM and no knowledge of WebRTC: give it a function that opens a
// session, and it retries that until one opens, the attempts run out or the caller cancels.

/** The wait before attempt `attempt` (1-based): base·2^(attempt-1), capped, with up to 20 % random spread. */
export function backoffDelay(attempt, { baseMs = 500, capMs = 8_000, random = Math.random } = {}) {
  const delay = Math.min(capMs, baseMs * 2 ** (attempt - 1));
  return Math.round(delay * (0.8 + 0.4 * random()));
}

/**
 * Retry `open()` until it resolves. Events: `reconnecting` {attempt, maxAttempts, delayMs, at, error} before each
 * wait (`at`: when the try starts, ms since the epoch), `reconnected` {session, attempt}, `gaveup` {error, attempts}
 * and `cancelled`. `run()` resolves with the session, or with null when it gave up or was cancelled.
 */
export class Reconnector extends EventTarget {
  #open;
  #options;
  #abort = null;

  constructor(open, { maxAttempts = 6, baseMs = 500, capMs = 8_000 } = {}) {
    super();
    this.#open = open;
    this.#options = { maxAttempts, baseMs, capMs };
  }

  get active() { return this.#abort !== null; }

  async run() {
    if (this.#abort) return null;
    const abort = (this.#abort = new AbortController());
    const { maxAttempts } = this.#options;
    let error = null;
    try {
      for (let attempt = 1; attempt <= maxAttempts; attempt++) {
        const delayMs = backoffDelay(attempt, this.#options);
        this.#emit("reconnecting", { attempt, maxAttempts, delayMs, at: Date.now() + delayMs, error });
        await sleep(delayMs, abort.signal);
        try {
          const session = await this.#open(abort.signal);
          this.#emit("reconnected", { session, attempt });
          return session;
        } catch (failure) {
          if (abort.signal.aborted) throw failure;
          error = failure;
        }
      }
      this.#emit("gaveup", { error, attempts: maxAttempts });
      return null;
    } catch {
      this.#emit("cancelled", {});
      return null;
    } finally {
      this.#abort = null;
    }
  }

  /** Stop waiting or connecting; run() then resolves with null. */
  cancel() {
    this.#abort?.abort();
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** Resolve after `ms`, or reject with the signal's reason as soon as it aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    signal.throwIfAborted();
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
  });
}
