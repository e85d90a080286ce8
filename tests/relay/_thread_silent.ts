/// <reference lib="deno.worker" />
/** A stand-in for lib/relay/relay_thread.ts that never answers (a thread stuck while starting). */
self.onmessage = () => {};
