// Live loudness of a MediaStream, for meters. One AudioContext serves the page: Safari only lets a context start
// from a user gesture, so call primeAudio() synchronously in the click handler that starts a session.

let context = null;

export function primeAudio() {
  context ??= new AudioContext();
  if (context.state === "suspended") context.resume().catch(() => {}); // retried by the next primeAudio()
}

/** Call onLevel(0…1) every animation frame until the returned stop function is called. */
export function watchLevel(stream, onLevel) {
  if (!stream?.getAudioTracks().length) return () => {};
  primeAudio();
  const source = context.createMediaStreamSource(stream);
  const analyser = context.createAnalyser();
  analyser.fftSize = 512;
  source.connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  let frame = 0;
  const tick = () => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const sample of samples) sum += sample * sample;
    // Speech RMS rarely exceeds 0.25, so scale it up to use the whole meter.
    onLevel(Math.min(1, Math.sqrt(sum / samples.length) * 4));
    frame = requestAnimationFrame(tick);
  };
  tick();
  return () => {
    cancelAnimationFrame(frame);
    source.disconnect();
    onLevel(0);
  };
}
