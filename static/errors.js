// Errors a realtime session can end in, each with a hint a person can act on. Shared by the session and its helpers.

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
  network_error: "Check that the server is running and that this network can reach it, then try again.",
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
