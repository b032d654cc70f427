// DOM rendering shared by the app page and <realtime-voice>, so both show status, transcript and errors alike.

const STATUS_LABELS = {
  idle: "Ready",
  connecting: "Connecting",
  listening: "Listening",
  thinking: "Thinking",
  speaking: "Speaking",
  reconnecting: "Reconnecting",
  disconnected: "Disconnected",
  error: "Error",
};
const SPEAKERS = { user: "You", assistant: "Assistant" };

/** Show a session status (or "idle") as its label; `data-status` lets styles and tests key on the raw value. */
export function showStatus(element, status) {
  element.textContent = STATUS_LABELS[status] ?? status;
  element.dataset.status = status;
}

/** Add or update the transcript line for one `transcript` event detail, keyed by role and item id. */
export function renderTranscript(container, { role, itemId, text, final, kind, error }) {
  const follow = container.scrollHeight - container.scrollTop - container.clientHeight < 40;
  let line = container.querySelector(`[data-role="${role}"][data-item-id="${CSS.escape(itemId)}"]`);
  if (!line) {
    line = document.createElement("p");
    line.className = "line";
    line.dataset.role = role;
    line.dataset.itemId = itemId;
    const speaker = document.createElement("span");
    speaker.className = "speaker";
    speaker.textContent = `${SPEAKERS[role] ?? role}: `;
    const said = document.createElement("span");
    said.className = "said";
    line.append(speaker, said);
    container.append(line);
  }
  line.dataset.kind = kind;
  line.querySelector(".said").textContent = kind === "failed"
    ? `(speech not transcribed${error ? `: ${error}` : ""})`
    : text || (final ? "(no words)" : "…");
  // Announce a line once it is complete rather than at every delta.
  line.setAttribute("aria-busy", String(!final));
  if (follow) container.scrollTop = container.scrollHeight;
}

/** Show a server-run tool call (a `tool` event detail) as a line of the transcript, updated when it is answered. */
export function renderTool(container, { callId, name, phase, summary }) {
  let line = container.querySelector(`[data-role="tool"][data-call-id="${CSS.escape(callId)}"]`);
  if (!line) {
    line = document.createElement("p");
    line.className = "line tool";
    line.dataset.role = "tool";
    line.dataset.callId = callId;
    container.append(line);
  }
  line.dataset.name = name ?? line.dataset.name ?? "";
  const tool = line.dataset.name || "a tool";
  line.dataset.phase = phase;
  line.textContent = phase === "call" ? `Looking up: ${tool}…` : `Looked up ${tool}: ${summary}`;
  line.setAttribute("aria-busy", String(phase === "call"));
  container.scrollTop = container.scrollHeight;
}

/** Fill an error box holding .error-code, .error-message and .error-hint; a null error hides it. */
export function showError(box, error) {
  box.hidden = !error;
  if (!error) return;
  box.querySelector(".error-code").textContent = error.code ?? "error";
  box.querySelector(".error-message").textContent = error.message ?? String(error);
  const hint = box.querySelector(".error-hint");
  hint.textContent = error.hint ?? "";
  hint.hidden = !error.hint;
}
