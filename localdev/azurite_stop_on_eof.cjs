// Preloaded into Azurite (node --require) by localdev/azurite.py: when stdin ends, shut Azurite down
// as Ctrl-C does, so it saves its tables. Stdin ends when localdev/azurite.py's stop() closes it, and also when the
// Python process that started Azurite dies, however it dies: the OS closes the pipe. No signal is sent, so this works
// alike on Linux, macOS and Windows.
"use strict";

function shutDown() {
  // Azurite listens for SIGINT only once it has started; until then it has nothing to save, so ask again shortly.
  if (process.listenerCount("SIGINT") > 0) process.emit("SIGINT");
  else setTimeout(shutDown, 50);
}

process.stdin.on("end", shutDown);
process.stdin.resume();
