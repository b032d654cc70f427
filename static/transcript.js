// A conversation's record, kept across reconnections: the finished lines of every session it is given, with
// timestamps, for saving (Markdown, JSON), copying, and replaying into a new call. No DOM.

const SPEAKERS = { user: "You", assistant: "Assistant" };

export class Transcript {
  #lines = [];
  #keys = new Map(); // "role:itemId" of the current session → index in #lines

  /** Record a session's lines (its `transcript` events); returns a function that stops. */
  follow(session) {
    this.#keys.clear(); // item ids are per call
    const listener = ({ detail }) => this.add(detail);
    session.addEventListener("transcript", listener);
    return () => session.removeEventListener("transcript", listener);
  }

  /**
   * One `transcript` event detail. A line is kept from its first words and updated as it grows, so a reply cut off
   * by a lost connection is kept as far as it was heard; `at` is when it began.
   */
  add({ role, itemId, text, kind }) {
    if (kind === "failed" || !text?.trim()) return;
    const key = `${role}:${itemId}`;
    const index = this.#keys.get(key);
    if (index === undefined) this.#keys.set(key, this.#lines.push({ role, text: text.trim(), at: new Date().toISOString() }) - 1);
    else this.#lines[index].text = text.trim();
  }

  get lines() { return this.#lines.map((line) => ({ ...line })); }

  clear() {
    this.#lines = [];
    this.#keys.clear();
  }

  /** The last `count` lines as connect()'s `context`: what a new call replays so the assistant remembers. */
  lastTurns(count = 12) {
    return this.#lines.slice(-count).map(({ role, text }) => ({ role, text }));
  }

  toJSON() {
    return { exportedAt: new Date().toISOString(), lines: this.lines };
  }

  toMarkdown(title = "Conversation") {
    const body = this.#lines.map(({ role, text, at }) => `**${SPEAKERS[role] ?? role}** (${at}): ${text}`);
    return `# ${title}\n\n${body.join("\n\n")}\n`;
  }
}
