// The app page: DOM wiring only. Session logic lives in realtime-session.js and the modules it composes.

import { connect, fetchConfig } from "./realtime-session.js";
import { Conversation } from "./conversation.js";
import { listMicrophones, watchMicrophones } from "./devices.js";
import { renderTool, renderTranscript, showError, showStatus } from "./realtime-view.js";
import { primeAudio, watchLevel } from "./audio-level.js";
import { chosenModel, modelHint, showEfforts, showModels } from "./models.js";

const LOG_LIMIT = 500;
const SPEAKING_LEVEL = 0.02; // remote loudness above which the assistant counts as audibly speaking
const WARN_BEFORE_S = 60;
const MICROPHONE_KEY = "realtime-voice.microphone";
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
  "instructions-count", "call-notice", "call-notice-text", "continue", "cancel-reconnect", "microphone",
  "microphone-notice", "turns-field", "talk", "talk-hint", "enable-audio", "time-left", "download-markdown",
  "download-json", "copy", "keep-status", "model", "model-field", "model-hint", "reasoning", "reasoning-field",
].map((id) => [id.replace(/-(\w)/g, (_, c) => c.toUpperCase()), document.getElementById(id)]));

const state = {
  session: null, status: "idle", assistantLevel: 0, instructionsEditable: true,
  config: {}, live: [], // functions that undo what adopt() set up for the live session
  models: [], // /config's models
};
const conversation = new Conversation(openSession);
const { transcript } = conversation;
window.realtimeApp = { session: null, transcript, conversation };
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
ui.start.addEventListener("click", () => start());
ui.continue.addEventListener("click", () => start({ context: transcript.lastTurns() }));
ui.stop.addEventListener("click", () => conversation.stop());
ui.cancelReconnect.addEventListener("click", () => conversation.stop());
// The user's mute holds until they unmute: across reconnections, a continue, a new start and microphone switches.
ui.mute.addEventListener("click", () => {
  conversation.mute(!conversation.muted);
  showMuted(conversation.muted);
});
ui.interrupt.addEventListener("click", () => state.session.interrupt());
ui.compose.addEventListener("submit", (event) => {
  event.preventDefault();
  state.session?.sendText(ui.message.value);
  ui.message.value = "";
});
ui.clear.addEventListener("click", () => {
  ui.transcript.replaceChildren();
  transcript.clear();
});
ui.errorDismiss.addEventListener("click", () => {
  showError(ui.error, null);
  ui.start.focus();
});
ui.enableAudio.addEventListener("click", () => {
  state.session?.resumeAudio().then(() => { ui.enableAudio.hidden = true; }, (error) => showError(ui.error, error));
});
ui.model.addEventListener("change", () => showModelChoice());
ui.microphone.addEventListener("change", () => {
  localStorage.setItem(MICROPHONE_KEY, ui.microphone.value);
  if (state.session) switchMicrophone(ui.microphone.value);
});
wireConversation();
wirePushToTalk();
wireKeeping();
watchMicrophones(onDevicesChanged);

loadConfig();

async function loadConfig() {
  try {
    const config = (state.config = await fetchConfig());
    const voices = Array.isArray(config.voices) ? config.voices : [];
    ui.voice.replaceChildren(...voices.map((voice) => new Option(voice, voice, false, voice === config.defaultVoice)));
    const { editable = true, maxLength, mode } = config.instructions ?? {};
    if (mode === "append") ui.instructions.placeholder = "Optional: added to the server's own instructions.";
    state.instructionsEditable = editable;
    ui.instructionsField.hidden = !editable;
    ui.instructionsLocked.hidden = editable;
    if (maxLength) ui.instructions.maxLength = maxLength;
    ui.emulatorNotice.hidden = !config.emulator;
    ui.turnsField.hidden = !config.turnDetection?.choosable;
    state.models = showModels(ui.model, ui.modelField, config);
  } catch (error) {
    showError(ui.error, error);
  }
  // Without a voice list the server picks its default voice.
  if (!ui.voice.options.length || !ui.voice.value) ui.voice.replaceChildren(new Option("Server default", ""));
  countInstructions();
  showModelChoice();
  await showMicrophones(await listMicrophones());
  setPhase("idle");
}

/** The chosen model's efforts and what its kind means here; GPT-Live has no turns to take (it is full duplex). */
function showModelChoice() {
  const model = chosenModel(ui.model, state.models);
  showEfforts(ui.reasoning, ui.reasoningField, model);
  ui.modelHint.textContent = modelHint(model);
  ui.turnsField.hidden = !state.config.turnDetection?.choosable || model?.kind === "live";
  if (conversation.phase === "idle") setPhase("idle");
}

/** Push-to-talk when the server turns detection off for everyone, or lets the user choose it (never for GPT-Live). */
function pushToTalk() {
  if (chosenModel(ui.model, state.models)?.kind === "live") return false;
  if (state.config.turnDetection?.type === "none") return true;
  return Boolean(state.config.turnDetection?.choosable) && document.querySelector("input[name=turns]:checked")?.value === "manual";
}

/** One call with the page's current choices; the conversation adds the signal, the turns so far and the mute. */
function openSession({ signal, context, muted }) {
  return connect({
    endpoint: ENDPOINT,
    voice: ui.voice.value,
    instructions: state.instructionsEditable ? ui.instructions.value : "",
    model: ui.model.value || undefined,
    reasoning: ui.reasoningField.hidden ? undefined : ui.reasoning.value || undefined,
    audioElement: ui.remoteAudio,
    microphone: ui.microphone.value || true,
    muted,
    context,
    turns: pushToTalk() ? "manual" : "auto",
    maxSeconds: state.config.session?.maxSeconds ?? null,
    signal,
    onStatus,
    onEvent: (event) => log("in", event),
  });
}

function start({ context = [] } = {}) {
  primeAudio(); // inside the click, so Safari lets the meters' AudioContext run
  showError(ui.error, null);
  showCallNotice(null);
  conversation.start({ context });
  ui.stop.focus();
}

/** The page's side of the conversation's phases and calls (conversation.js runs the cycle itself). */
function wireConversation() {
  conversation.addEventListener("phase", ({ detail: { phase } }) => (phase === "idle" ? finish() : setPhase(phase)));
  conversation.addEventListener("call", ({ detail: { session, reconnected } }) => {
    if (reconnected) showCallNotice("Reconnected. The assistant was given the conversation so far.");
    adopt(session);
  });
  conversation.addEventListener("ended", ({ detail }) => onEnded(detail));
  conversation.addEventListener("reconnecting", ({ detail }) => showReconnecting(detail));
  conversation.addEventListener("gaveup", ({ detail: { message } }) => {
    showCallNotice(`${message} Could not reconnect.`, { offerContinue: transcript.lines.length > 0 });
  });
  conversation.addEventListener("waiting", ({ detail: { message } }) => showCallNotice(message));
  conversation.addEventListener("failed", ({ detail: { error } }) => showError(ui.error, error));
}

/** Show a live call: its transcript, errors, log, meters, time left. */
function adopt(session) {
  state.session = window.realtimeApp.session = session;
  const on = (type, handler) => {
    session.addEventListener(type, handler);
    state.live.push(() => session.removeEventListener(type, handler));
  };
  on("transcript", ({ detail }) => renderTranscript(ui.transcript, detail));
  on("tool", ({ detail }) => renderTool(ui.transcript, detail));
  on("notice", ({ detail }) => showCallNotice(detail.text)); // the server's note, in the call notice's live region
  on("error", ({ detail }) => showError(ui.error, detail));
  on("sent", ({ detail }) => log("out", detail));
  on("audio", ({ detail }) => { ui.enableAudio.hidden = !detail.blocked; });
  on("microphone", () => watchMicrophone(session));
  ui.enableAudio.hidden = !session.audioBlocked;
  watchMicrophone(session);
  const stopAssistantMeter = watchLevel(session.remoteStream, (level) => {
    ui.assistantLevel.value = state.assistantLevel = level;
    showSpeaking();
  });
  state.live.push(stopAssistantMeter, countDown(session));
  listMicrophones().then(showMicrophones); // labels are known once the microphone is allowed
}

/** The mic meter, and a fallback to the default device if this one's track ends (unplugged). */
function watchMicrophone(session) {
  state.stopMicMeter?.();
  const stopMeter = watchLevel(session.localStream, (level) => { ui.micLevel.value = level; });
  const [track] = session.localStream?.getAudioTracks() ?? [];
  const unplugged = () => fallBackToDefault();
  track?.addEventListener("ended", unplugged);
  state.stopMicMeter = () => {
    stopMeter();
    track?.removeEventListener("ended", unplugged);
  };
}

function onEnded(detail) {
  leaveLive();
  if (detail.reconnectable) {
    showCallNotice(detail.message, { reconnecting: true });
    showStatus(ui.status, "reconnecting");
    return;
  }
  const why = detail.reason === "time_limit" ? " Start a new conversation that continues from where you were." : "";
  showCallNotice(detail.message + why, { offerContinue: !detail.byUser && transcript.lines.length > 0 });
}

/** Each try of a reconnection, counting down to it; the user may stop reconnecting. */
function showReconnecting({ attempt, maxAttempts, at, message }) {
  const tell = () => {
    const seconds = Math.max(0, Math.ceil((at - Date.now()) / 1000));
    ui.callNoticeText.textContent = `${message} Reconnecting: attempt ${attempt} of ${maxAttempts}` +
      (seconds ? `, next try in ${seconds} s.` : ", trying now.");
  };
  clearInterval(state.nextTry);
  showCallNotice(message, { reconnecting: true });
  tell();
  state.nextTry = setInterval(tell, 1000);
}

function onStatus(status) {
  state.status = status;
  const reconnecting = conversation.phase === "reconnecting" &&
    (status === "connecting" || status === "error" || status === "disconnected");
  showStatus(ui.status, reconnecting ? "reconnecting" : status);
  showSpeaking();
}

/** Undo what adopt() set up; the session itself is already released. */
function leaveLive() {
  for (const undo of state.live.splice(0)) undo();
  state.stopMicMeter?.();
  state.stopMicMeter = null;
  state.session = window.realtimeApp.session = null;
  ui.enableAudio.hidden = true;
}

/** Back to idle after an end, a drop or a failed start; the status line keeps saying which. */
function finish() {
  leaveLive();
  // Keep keyboard users in place: focus on a control that idle disables moves to Start (or Continue, if offered).
  const focusLost = [document.body, ui.stop, ui.interrupt, ui.message, ui.send, ui.talk].includes(document.activeElement);
  setPhase("idle");
  if (focusLost) (ui.continue.hidden ? ui.start : ui.continue).focus();
}

/** idle, connecting, live, reconnecting, or ending (the server has not yet answered the hang-up: Start waits). */
function setPhase(phase) {
  if (phase !== "reconnecting") clearInterval(state.nextTry);
  const idle = phase === "idle";
  const live = phase === "live";
  ui.start.disabled = ui.continue.disabled = !idle;
  ui.stop.disabled = idle || phase === "ending";
  ui.stop.textContent = phase === "connecting" || phase === "reconnecting" ? "Cancel" : "End conversation";
  ui.voice.disabled = ui.preset.disabled = ui.instructions.disabled = ui.model.disabled = ui.reasoning.disabled = !idle;
  for (const radio of document.querySelectorAll("input[name=turns]")) radio.disabled = !idle;
  ui.interrupt.disabled = ui.message.disabled = ui.send.disabled = !live;
  // GPT-Live is full duplex: nothing to interrupt (the model hint says so).
  ui.interrupt.hidden = live ? conversation.session.live : chosenModel(ui.model, state.models)?.kind === "live";
  const manual = live ? conversation.session.manualTurns : pushToTalk();
  ui.talk.hidden = ui.talkHint.hidden = !manual;
  ui.talk.disabled = !live;
}

/** A notice about the call's end or its reconnection; null hides it. */
function showCallNotice(text, { offerContinue = false, reconnecting = false } = {}) {
  ui.callNotice.hidden = !text;
  ui.callNoticeText.textContent = text ?? "";
  ui.continue.hidden = !offerContinue;
  ui.cancelReconnect.hidden = !reconnecting;
}

/** Time left until the server's session limit, with a warning in its last minute; returns a function that stops. */
function countDown(session) {
  if (!session.endsAt) {
    ui.timeLeft.hidden = true;
    return () => {};
  }
  let warned = false;
  const tick = () => {
    const seconds = Math.max(0, Math.round((session.endsAt - Date.now()) / 1000));
    const clock = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
    ui.timeLeft.textContent = `Time left: ${clock}`;
    ui.timeLeft.hidden = false;
    ui.timeLeft.dataset.warn = String(seconds <= WARN_BEFORE_S);
    if (seconds <= WARN_BEFORE_S && !warned) {
      warned = true;
      showCallNotice(`Less than a minute left: the conversation ends at its time limit in ${clock}.`);
    }
  };
  tick();
  const timer = setInterval(tick, 1000);
  return () => {
    clearInterval(timer);
    ui.timeLeft.hidden = true;
  };
}

// --- microphones ---

async function showMicrophones(microphones) {
  const wanted = ui.microphone.value || localStorage.getItem(MICROPHONE_KEY) || "";
  ui.microphone.replaceChildren(new Option("Default microphone", ""),
    ...microphones.map(({ deviceId, label }) => new Option(label, deviceId)));
  ui.microphone.value = microphones.some((m) => m.deviceId === wanted) ? wanted : "";
}

/** Capture from another device during the call (no reconnect); a device that is gone falls back to the default. */
async function switchMicrophone(deviceId, notice = "") {
  try {
    const { fellBack } = await state.session.useMicrophone(deviceId || undefined);
    if (fellBack) ui.microphone.value = "";
    ui.microphoneNotice.textContent = fellBack ? "That microphone is gone; using the default microphone." : notice;
  } catch (error) {
    showError(ui.error, error);
  }
}

/** A device came or went: refresh the list; if the chosen one went, fall back to the default one. */
async function onDevicesChanged(microphones) {
  const chosen = ui.microphone.value;
  await showMicrophones(microphones);
  if (chosen && !microphones.some((m) => m.deviceId === chosen)) await fallBackToDefault();
}

async function fallBackToDefault() {
  const notice = "Your microphone was disconnected; using the default microphone.";
  ui.microphone.value = "";
  ui.microphoneNotice.textContent = notice;
  if (state.session) await switchMicrophone("", notice);
}

// --- push to talk ---

function wirePushToTalk() {
  const press = (event) => {
    event.preventDefault();
    if (!state.session?.manualTurns) return;
    state.session.startTalking();
    ui.talk.setAttribute("aria-pressed", "true");
    ui.talk.textContent = "Talking… release to send";
  };
  const release = () => {
    if (!state.session?.talking) return;
    state.session.stopTalking();
    ui.talk.setAttribute("aria-pressed", "false");
    ui.talk.textContent = "Hold to talk";
  };
  ui.talk.addEventListener("pointerdown", press);
  for (const type of ["pointerup", "pointerleave", "pointercancel"]) ui.talk.addEventListener(type, release);
  // The Space bar talks while focus is on the button or on nothing that types or toggles.
  const spaceTalks = (event) => event.code === "Space" && state.session?.manualTurns &&
    (event.target === ui.talk || event.target === document.body);
  document.addEventListener("keydown", (event) => {
    if (!spaceTalks(event)) return;
    event.preventDefault();
    if (!event.repeat) press(event);
  });
  document.addEventListener("keyup", (event) => {
    if (!spaceTalks(event)) return;
    event.preventDefault();
    release();
  });
}

// --- keeping the conversation ---

function wireKeeping() {
  const stamp = () => new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
  const save = (text, type, extension) => {
    const link = Object.assign(document.createElement("a"), {
      href: URL.createObjectURL(new Blob([text], { type })), download: `conversation-${stamp()}.${extension}`,
    });
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 0);
    ui.keepStatus.textContent = `Saved ${link.download}.`;
  };
  ui.downloadMarkdown.addEventListener("click", () => save(transcript.toMarkdown(), "text/markdown", "md"));
  ui.downloadJson.addEventListener("click", () =>
    save(JSON.stringify(transcript.toJSON(), null, 2), "application/json", "json"));
  ui.copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(transcript.toMarkdown());
      ui.keepStatus.textContent = "Transcript copied to the clipboard.";
    } catch {
      ui.keepStatus.textContent = "The browser did not allow copying; use Download instead.";
    }
  });
}

// --- small views ---

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
