/// <reference lib="deno.worker" />
/** A stand-in for lib/relay/relay_thread.ts that fails before its loop, as a thread without FFI does. */
self.onmessage = () => {
  self.postMessage({ error: "FFI to libc is not available in the relay thread" });
};
