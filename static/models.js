// The model and reasoning-effort pickers, shared by the page (app.js) and <realtime-voice>: filled from /config's
// `models` and `defaultModel`. The model picker shows only when there is a choice; the effort picker only for a
// model that takes one (kind `reasoning`). No state of its own beyond the two <select> elements it is given.

const KIND_LABELS = { realtime: "", reasoning: " (reasoning)", live: " (GPT-Live preview, full duplex)" };
const HINTS = {
  realtime: "",
  reasoning: "A reasoning model: more effort answers more carefully, and more slowly.",
  live: "GPT-Live is full duplex: it listens while it speaks, so there is no Interrupt button; just speak over it.",
};

/** Fill `select` with the offered models (default selected); `field` (its wrapper) shows only with a choice. */
export function showModels(select, field, config) {
  const models = Array.isArray(config?.models) ? config.models : [];
  select.replaceChildren(...models.map(({ name, kind }) =>
    new Option(`${name}${KIND_LABELS[kind] ?? ""}`, name, false, name === config.defaultModel)));
  field.hidden = models.length < 2;
  return models;
}

/** The chosen model's entry from /config, or null when the server offers none (it then uses its default). */
export function chosenModel(select, models) {
  return models.find((model) => model.name === select.value) ?? null;
}

/** The efforts the chosen model takes, or hide the field; "" (the model's own default) is always the first choice. */
export function showEfforts(select, field, model) {
  const efforts = Array.isArray(model?.reasoning) ? model.reasoning : [];
  const kept = select.value;
  select.replaceChildren(new Option("Model default", ""), ...efforts.map((effort) => new Option(effort, effort)));
  select.value = efforts.includes(kept) ? kept : "";
  field.hidden = !efforts.length;
}

/** What to tell the user about the chosen model's kind ("" for plain realtime models). */
export function modelHint(model) {
  return HINTS[model?.kind] ?? "";
}
