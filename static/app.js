// The app page: DOM wiring only. Session logic lives in realtime-session.js.

import { connect, fetchConfig } from "./realtime-session.js";
import { renderTranscript, showError, showStatus } from "./realtime-view.js";
import { primeAudio, watchLevel } from "./audio-level.js";

const LOG_LIMIT = 500;
const SPEAKING_LEVEL = 0.02; // remote loudness above which the assistant counts as audibly speaking
const PRESETS = [
  { label: "Friendly assistant", text: "You are a friendly, helpful assistant. Keep answers short and conversational." },
  { label: "Concise expert", text: "Answer in one or two precise sentences. Ask a clarifying question when a request is ambiguous." },
  { label: "Spanish tutor", text: "You are a patient Spanish tutor. Speak slowly in simple Spanish and gently correct mistakes in English." },
  { label: "Mock interviewer", text: "You interview me for a software engineering job. Ask one question at a time and give brief feedback on each answer." },
];

const ui = Object.fromEntries([
  "start", "stop", "status", "voice", "instructions", "preset", "mute", "interrupt", "message", "send", "transcript",
  "log-entries", "log-count", "clear", "error", "error-dismiss", "mic-level", "mic-muted", "assistant-level",
  "assistant-speaking", "emulator-notice", "remote-audio", "compose", "instructions-field", "instructions-locked",
  "instructions-count",
].map((id) => [id.replace(/-(\w)/g, (_, c) => c.toUpperCase()), document.getElementById(id)]));

const state = { session: null, abort: null, status: "idle", assistantLevel: 0, instructionsEditable: true, stopMeters: [] };
window.realtimeApp = { session: null };
// With CONNECT_AUTH_LEVEL=function, open the page as /?code=<key> and the key is passed on to /connect.
const functionKey = new URLSearchParams(location.search).get("code");
const ENDPOINT = functionKey ? `/connect?code=${encodeURIComponent(functionKey)}` : "/connect";

ui.preset.append(new Option("Custom", ""), ...PRESETS.map(({ label }, index) => new Option(label, String(index))));
ui.preset.addEventListener("change", () => {
  if (ui.preset.value) ui.instructions.value = PRESETS[ui.preset.value].text;
  countInstructions();
});
ui.instructions.addEventListener("input", () => {
  if (ui.preset.value && ui.instructions.value !== PRESETS[ui.preset.value].text) ui.preset.value = "";
  countInstructions();
});
ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", () => state.abort?.abort()); // cancels a connect in progress, or closes the session
ui.mute.addEventListener("click", () => {
  state.session.mute(!state.session.muted);
  showMuted(state.session.muted);
});
ui.interrupt.addEventListener("click", () => state.session.interrupt());
ui.compose.addEventListener("submit", (event) => {
  event.preventDefault();
  state.session?.sendText(ui.message.value);
  ui.message.value = "";
});
ui.clear.addEventListener("click", () => ui.transcript.replaceChildren());
ui.errorDismiss.addEventListener("click", () => {
  showError(ui.error, null);
  ui.start.focus();
});

loadConfig();

async function loadConfig() {
  try {
    const config = await fetchConfig();
    const voices = Array.isArray(config.voices) ? config.voices : [];
    ui.voice.replaceChildren(...voices.map((voice) => new Option(voice, voice, false, voice === config.defaultVoice)));
    const { editable = true, maxLength, mode } = config.instructions ?? {};
    if (mode === "append") ui.instructions.placeholder = "Optional: added to the server's own instructions.";
    state.instructionsEditable = editable;
    ui.instructionsField.hidden = !editable;
    ui.instructionsLocked.hidden = editable;
    if (maxLength) ui.instructions.maxLength = maxLength;
    ui.emulatorNotice.hidden = !config.emulator;
  } catch (error) {
    showError(ui.error, error);
  }
  // Without a voice list the server picks its default voice.
  if (!ui.voice.options.length || !ui.voice.value) ui.voice.replaceChildren(new Option("Server default", ""));
  countInstructions();
  setPhase("idle");
}

async function start() {
  primeAudio(); // inside the click, so Safari lets the meters' AudioContext run
  showError(ui.error, null);
  const abort = (state.abort = new AbortController());
  setPhase("connecting");
  ui.stop.focus();
  try {
    const session = await connect({
      endpoint: ENDPOINT,
      voice: ui.voice.value,
      instructions: state.instructionsEditable ? ui.instructions.value : "",
      audioElement: ui.remoteAudio,
      signal: abort.signal,
      onStatus,
      onEvent: (event) => log("in", event),
    });
    if (session.status === "disconnected") return finish(); // ended while the last step finished
    state.session = window.realtimeApp.session = session;
    session.addEventListener("transcript", ({ detail }) => renderTranscript(ui.transcript, detail));
    session.addEventListener("error", ({ detail }) => showError(ui.error, detail));
    session.addEventListener("sent", ({ detail }) => log("out", detail));
    state.stopMeters = [
      watchLevel(session.localStream, (level) => { ui.micLevel.value = level; }),
      watchLevel(session.remoteStream, (level) => {
        ui.assistantLevel.value = state.assistantLevel = level;
        showSpeaking();
      }),
    ];
    setPhase("live");
  } catch (error) {
    if (error?.name !== "AbortError") showError(ui.error, error);
    finish();
  }
}

function onStatus(status) {
  state.status = status;
  showStatus(ui.status, status);
  showSpeaking();
  if (status === "disconnected" && state.session) finish();
}

/** Back to idle after an end, a drop or a failed start; the status line keeps saying which. */
function finish() {
  for (const stop of state.stopMeters) stop();
  state.stopMeters = [];
  state.session = window.realtimeApp.session = null;
  state.abort = null;
  // Keep keyboard users in place: focus on a control that idle disables moves to Start.
  const focusLost = [document.body, ui.stop, ui.mute, ui.interrupt, ui.message, ui.send].includes(document.activeElement);
  setPhase("idle");
  showMuted(false);
  if (focusLost) ui.start.focus();
}

function setPhase(phase) {
  const idle = phase === "idle";
  const live = phase === "live";
  ui.start.disabled = !idle;
  ui.stop.disabled = idle;
  ui.voice.disabled = ui.preset.disabled = ui.instructions.disabled = !idle;
  ui.mute.disabled = ui.interrupt.disabled = ui.message.disabled = ui.send.disabled = !live;
}

function showMuted(muted) {
  ui.mute.setAttribute("aria-pressed", String(muted));
  ui.micMuted.hidden = !muted;
}

function showSpeaking() {
  const speaking = state.status === "speaking" || state.assistantLevel > SPEAKING_LEVEL;
  if (ui.assistantSpeaking.dataset.active === String(speaking)) return;
  ui.assistantSpeaking.dataset.active = String(speaking);
  ui.assistantSpeaking.querySelector(".label").textContent = speaking ? "Assistant speaking" : "Assistant quiet";
}

function countInstructions() {
  const max = ui.instructions.maxLength > 0 ? ` of ${ui.instructions.maxLength}` : "";
  ui.instructionsCount.textContent = `${ui.instructions.value.length}${max} characters`;
}

function log(direction, event) {
  const now = new Date();
  const time = `${now.toTimeString().slice(0, 8)}.${String(now.getMilliseconds()).padStart(3, "0")}`;
  const entry = document.createElement("li");
  entry.dataset.direction = direction;
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = `${time} ${direction} ${event?.type ?? "(no type)"}`;
  const payload = document.createElement("pre");
  payload.textContent = JSON.stringify(event, null, 2);
  details.append(summary, payload);
  entry.append(details);
  ui.logEntries.append(entry);
  while (ui.logEntries.childElementCount > LOG_LIMIT) ui.logEntries.firstElementChild.remove();
  ui.logCount.textContent = ui.logEntries.childElementCount;
}
