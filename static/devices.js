// Microphones: open one (a chosen device, or the default), list them, and notice when one comes or goes.
// No DOM, no session: realtime-session.js composes it, and other web apps may import it on its own.

import { RealtimeError } from "./errors.js";

/**
 * Open a microphone. With `deviceId`, that device if it is still there, else the default one; resolves with the
 * stream and whether it fell back. Rejects with a RealtimeError (`microphone_denied` / `microphone_unavailable`).
 */
export async function openMicrophone(deviceId) {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new RealtimeError("microphone_unavailable", "This page cannot use a microphone: it is not served over HTTPS or from localhost.");
  }
  try {
    if (deviceId) {
      try {
        return { stream: await navigator.mediaDevices.getUserMedia({ audio: { deviceId: { exact: deviceId } } }), fellBack: false };
      } catch (error) {
        if (error.name !== "OverconstrainedError" && error.name !== "NotFoundError") throw error;
      }
    }
    return { stream: await navigator.mediaDevices.getUserMedia({ audio: true }), fellBack: Boolean(deviceId) };
  } catch (error) {
    if (error.name === "NotAllowedError" || error.name === "SecurityError") {
      throw new RealtimeError("microphone_denied", "Microphone access was denied.");
    }
    throw new RealtimeError("microphone_unavailable", `No usable microphone (${error.name}: ${error.message}).`);
  }
}

// Chromium also lists the system's default (and, on Windows, communications) device under these ids: the same
// microphone twice. Pickers offer "the default" as no deviceId at all, which follows the system's choice.
const ALIASES = new Set(["default", "communications"]);

/**
 * The audio inputs as `{deviceId, label}`, each device once (see ALIASES); labels are empty until the page has had
 * microphone permission.
 */
export async function listMicrophones() {
  const devices = (await navigator.mediaDevices?.enumerateDevices?.()) ?? [];
  return devices
    .filter((device) => device.kind === "audioinput" && device.deviceId && !ALIASES.has(device.deviceId))
    .map(({ deviceId, label }, index) => ({ deviceId, label: label || `Microphone ${index + 1}` }));
}

/** Call `onChange(microphones)` whenever a device is plugged in or out; returns a function that stops watching. */
export function watchMicrophones(onChange) {
  const devices = navigator.mediaDevices;
  if (!devices?.addEventListener) return () => {};
  const changed = async () => onChange(await listMicrophones());
  devices.addEventListener("devicechange", changed);
  return () => devices.removeEventListener("devicechange", changed);
}

