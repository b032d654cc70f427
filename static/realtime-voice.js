// <realtime-voice endpoint="https://app.example/connect" voice="marin" instructions="…" model="…" reasoning="…">:
// a drop-in voice chat built on realtime-session.js. It re-dispatches the session's events (status, event, sent,
// transcript, error, ended, notice)
// on itself; they do not bubble, so a generic window "error" handler never mistakes them for script errors. Like the
// page (and through the same conversation.js), it says why a call ended, reconnects after an accident replaying the
// conversation so far, keeps the user's mute across calls, and lets Start wait until the server has let the last
// call go. With more than one model offered (/config), it shows a model picker (and an effort picker for reasoning
// models); `model` and `reasoning` choose the initial values.

import { connect, fetchConfig } from "./realtime-session.js";
import { chosenModel, modelHint, showEfforts, showModels } from "./models.js";
import { Conversation } from "./conversation.js";
import { renderTool, renderTranscript, showError, showStatus } from "./realtime-view.js";

const template = document.createElement("template");
template.innerHTML = `
<style>
  :host {
    --rv-accent: #0b5cad;
    --rv-accent-text: #fff;
    --rv-border: #6b7280;
    --rv-error: #a4001d;
    --rv-focus: #c2410c;
    --rv-pressed: #b45309;
    display: block;
    max-width: 40rem;
    padding: 1rem;
    border: 1px solid var(--rv-border);
    border-radius: 0.5rem;
    font: inherit;
    color: inherit;
  }
  :host([hidden]) { display: none; }
  .bar { display: flex; flex-wrap: wrap; align-items: center; gap: 0.5rem; }
  button {
    min-height: 2.75rem;
    padding: 0.5rem 1rem;
    border: 1px solid var(--rv-accent);
    border-radius: 0.375rem;
    background: transparent;
    color: inherit;
    font: inherit;
    cursor: pointer;
  }
  .toggle { background: var(--rv-accent); color: var(--rv-accent-text); }
  button[aria-pressed="true"] { background: var(--rv-pressed); border-color: var(--rv-pressed); color: #fff; }
  button:disabled { opacity: 0.55; cursor: not-allowed; }
  button:focus-visible { outline: 3px solid var(--rv-focus); outline-offset: 2px; }
  .status { font-weight: 600; }
  .error { margin: 0.75rem 0 0; color: var(--rv-error); }
  .notice { margin: 0.75rem 0 0; font-weight: 600; }
  .error[hidden], .error-hint[hidden], .notice[hidden], button[hidden], .pick[hidden], .hint[hidden] { display: none; }
  .picks { display: flex; flex-wrap: wrap; gap: 0.75rem; margin-bottom: 0.75rem; }
  .pick { display: flex; flex-direction: column; gap: 0.25rem; }
  select { min-height: 2.25rem; font: inherit; }
  select:focus-visible { outline: 3px solid var(--rv-focus); outline-offset: 2px; }
  .hint { margin: 0 0 0.75rem; font-size: 0.9em; }
  .error-code { font-weight: 700; }
  .transcript { max-height: 16rem; overflow-y: auto; margin-top: 0.75rem; }
  .transcript:focus-visible { outline: 3px solid var(--rv-focus); }
  .line { margin: 0.25rem 0; }
  .speaker { font-weight: 600; }
  .line[aria-busy="true"] .said { opacity: 0.75; }
  .sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); white-space: nowrap; }
</style>
<div class="picks">
  <label class="pick model-field" hidden>Model <select class="model" part="model"></select></label>
  <label class="pick reasoning-field" hidden>Reasoning effort <select class="reasoning" part="reasoning"></select></label>
</div>
<p class="hint model-hint" part="hint" hidden></p>
<div class="bar">
  <button type="button" class="toggle" part="button toggle">Start conversation</button>
  <button type="button" class="mute" part="button mute" aria-pressed="false">Mute microphone</button>
  <span><span class="sr-only">Status: </span><span class="status" part="status" role="status" aria-live="polite"></span></span>
</div>
<p class="notice" part="notice" role="status" aria-live="polite" hidden></p>
<button type="button" class="enable-audio" part="button enable-audio" hidden>Enable audio</button>
<p class="error" part="error" role="alert" hidden>
  <span class="error-code"></span>: <span class="error-message"></span> <span class="error-hint"></span>
</p>
<div class="transcript" part="transcript" role="log" aria-live="polite" aria-label="Conversation transcript" tabindex="0"></div>
<audio autoplay></audio>
`;

const TOGGLE_LABELS = {
  idle: "Start conversation", connecting: "Cancel", reconnecting: "Cancel", live: "End conversation", ending: "Ending…",
};

export class RealtimeVoiceElement extends HTMLElement {
  #conversation = new Conversation((options) => this.#open(options));
  #ui;
  #models = [];

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.append(template.content.cloneNode(true));
    const find = (selector) => root.querySelector(selector);
    this.#ui = {
      toggle: find(".toggle"), mute: find(".mute"), status: find(".status"),
      error: find(".error"), transcript: find(".transcript"), audio: find("audio"), notice: find(".notice"),
      enableAudio: find(".enable-audio"), model: find(".model"), modelField: find(".model-field"),
      reasoning: find(".reasoning"), reasoningField: find(".reasoning-field"), hint: find(".model-hint"),
    };
    this.#ui.model.addEventListener("change", () => this.#showModelChoice());
    showStatus(this.#ui.status, "idle");
    this.#ui.toggle.addEventListener("click", () => (this.#conversation.phase === "idle" ? this.start() : this.stop()));
    this.#ui.enableAudio.addEventListener("click", () => {
      this.session?.resumeAudio().then(() => { this.#ui.enableAudio.hidden = true; }, () => {});
    });
    this.#ui.mute.addEventListener("click", () => {
      this.#conversation.mute(!this.#conversation.muted);
      this.#ui.mute.setAttribute("aria-pressed", String(this.#conversation.muted));
    });
    this.#follow(this.#conversation);
  }

  connectedCallback() {
    this.#loadModels();
  }

  /** The models the server offers, for the pickers; without them the `model` attribute (or the server's default) holds. */
  async #loadModels() {
    try {
      this.#models = showModels(this.#ui.model, this.#ui.modelField, await fetchConfig(this.#endpoint));
    } catch {
      return; // the page still works: the server picks its default model
    }
    const wanted = this.getAttribute("model");
    if (wanted && this.#models.some((model) => model.name === wanted)) this.#ui.model.value = wanted;
    this.#showModelChoice();
    const effort = this.getAttribute("reasoning");
    if (effort && !this.#ui.reasoningField.hidden) this.#ui.reasoning.value = effort;
  }

  #showModelChoice() {
    const model = chosenModel(this.#ui.model, this.#models);
    showEfforts(this.#ui.reasoning, this.#ui.reasoningField, model);
    this.#ui.hint.textContent = modelHint(model);
    this.#ui.hint.hidden = !this.#ui.hint.textContent;
  }

  get #endpoint() { return this.getAttribute("endpoint") || "/connect"; }

  /** The live session (for diagnostics), or null. */
  get session() { return this.#conversation.session; }

  start() {
    if (this.#conversation.phase !== "idle") return;
    showError(this.#ui.error, null);
    this.#say("");
    return this.#conversation.start();
  }

  /** Cancel a connect or a reconnection in progress, or end the session. */
  stop() {
    this.#conversation.stop();
  }

  disconnectedCallback() {
    this.stop();
  }

  #open({ signal, context, muted }) {
    const picked = this.#models.length > 0;
    return connect({
      endpoint: this.#endpoint,
      voice: this.getAttribute("voice") || undefined,
      instructions: this.getAttribute("instructions") || undefined,
      model: (picked ? this.#ui.model.value : this.getAttribute("model")) || undefined,
      reasoning: (picked ? !this.#ui.reasoningField.hidden && this.#ui.reasoning.value : this.getAttribute("reasoning")) ||
        undefined,
      audioElement: this.#ui.audio,
      muted,
      context,
      signal,
      onStatus: (status) => this.#onStatus(status),
      onEvent: (event) => this.#emit("event", event),
    });
  }

  #follow(conversation) {
    conversation.addEventListener("phase", ({ detail: { phase } }) => this.#setPhase(phase));
    conversation.addEventListener("call", ({ detail: { session, reconnected } }) => {
      if (reconnected) this.#say("Reconnected.");
      this.#adopt(session);
    });
    conversation.addEventListener("ended", ({ detail }) => {
      this.#ui.enableAudio.hidden = true;
      this.#say(detail.message);
    });
    conversation.addEventListener("reconnecting", ({ detail: { attempt, maxAttempts, message } }) => {
      this.#say(`${message} Reconnecting (attempt ${attempt} of ${maxAttempts})…`);
      showStatus(this.#ui.status, "reconnecting");
    });
    conversation.addEventListener("gaveup", ({ detail: { message } }) => this.#say(`${message} Could not reconnect.`));
    conversation.addEventListener("waiting", ({ detail: { message } }) => this.#say(message));
    conversation.addEventListener("failed", ({ detail: { error } }) => {
      const { code = "error", message = String(error), hint, status } = error ?? {};
      showError(this.#ui.error, { code, message, hint });
      this.#emit("error", { code, message, hint, status });
    });
  }

  #adopt(session) {
    session.addEventListener("transcript", ({ detail }) => renderTranscript(this.#ui.transcript, detail));
    session.addEventListener("tool", ({ detail }) => renderTool(this.#ui.transcript, detail));
    session.addEventListener("notice", ({ detail }) => this.#say(detail.text)); // the server's note (a live region)
    session.addEventListener("error", ({ detail }) => showError(this.#ui.error, detail));
    session.addEventListener("audio", ({ detail }) => { this.#ui.enableAudio.hidden = !detail.blocked; });
    for (const type of ["transcript", "error", "sent", "ended", "notice"]) {
      session.addEventListener(type, ({ detail }) => this.#emit(type, detail));
    }
    this.#ui.enableAudio.hidden = !session.audioBlocked;
  }

  #say(text) {
    this.#ui.notice.textContent = text;
    this.#ui.notice.hidden = !text;
  }

  #onStatus(status) {
    if (this.#conversation.phase !== "reconnecting") showStatus(this.#ui.status, status);
    this.#emit("status", status);
  }

  #setPhase(phase) {
    this.#ui.toggle.textContent = TOGGLE_LABELS[phase];
    this.#ui.toggle.disabled = phase === "ending";
    this.#ui.model.disabled = this.#ui.reasoning.disabled = phase !== "idle";
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

if (!customElements.get("realtime-voice")) customElements.define("realtime-voice", RealtimeVoiceElement);
