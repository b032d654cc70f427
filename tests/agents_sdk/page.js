// A third-party page built on OpenAI's Agents SDK (browser, WebRTC transport), as a new user would write it.
// tests/test_agents_sdk.py bundles it with esbuild, serves it from another origin and drives it through `window.sdk`.
import { OpenAIRealtimeWebRTC, RealtimeAgent, RealtimeSession } from "@openai/agents-realtime";

export const AGENT_INSTRUCTIONS = "You are the Agents SDK test agent.";

const serverEvents = []; // every server event the SDK's transport received, as sent
const sdkEvents = []; // the SDK's own events a UI reacts to
const errors = []; // everything the SDK reported as an error
let transport;
let session;
let voice;

/** A microphone the test switches on and off: a tone through WebAudio, untouched by the browser's noise suppression. */
function microphone() {
  const context = new AudioContext();
  const tone = context.createOscillator();
  tone.frequency.value = 220;
  voice = context.createGain();
  voice.gain.value = 0;
  const out = context.createMediaStreamDestination();
  tone.connect(voice).connect(out);
  tone.start();
  return out.stream;
}

function text(item) {
  return (item.content ?? []).map((part) => part.transcript ?? part.text ?? "").join("");
}

window.sdk = {
  serverEvents,
  sdkEvents,
  errors,
  async connect(url, apiKey, model) {
    transport = new OpenAIRealtimeWebRTC({ mediaStream: microphone(), audioElement: document.querySelector("audio") });
    transport.on("*", (event) => serverEvents.push(event));
    const agent = new RealtimeAgent({ name: "Assistant", instructions: AGENT_INSTRUCTIONS });
    // As docs/embedding.md's example: the deployment names, since the SDK's session.update replaces the server's settings.
    const config = { audio: { input: { transcription: { model: "whisper-1" } } } };
    session = new RealtimeSession(agent, { transport, model, config });
    session.on("error", (event) => errors.push(String(event.error?.message ?? JSON.stringify(event.error ?? event))));
    for (const name of ["audio_start", "audio_stopped", "audio_interrupted"]) {
      session.on(name, () => sdkEvents.push(name));
    }
    await session.connect({ apiKey, url });
  },
  status: () => transport?.status,
  send: (message) => session.sendMessage(message),
  speak: (on) => { voice.gain.value = on ? 0.5 : 0; },
  interrupt: () => session.interrupt(),
  close: () => session.close(),
  history: () => session.history.filter((item) => item.type === "message").map((item) => ({
    role: item.role, status: item.status, text: text(item),
  })),
};
