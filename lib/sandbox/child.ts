/**
 * The main module of a sandbox child: `deno run` with no --allow-* flag but read access to its own upload directory
 * and access to the one unix socket its frames travel on (arguments: the socket's path, the memory it shares with
 * the host as PATH:BYTES or "-", then the URL of each program's entry module),
 * started by host.ts. The program's console output goes to stderr, where the host keeps the last lines.
 */
import { serveGuest } from "./guest.ts";
import { mapShared } from "./shared_ring.ts";

// The memory shared with the host, mapped before anything else runs: FFI (granted for this one step) is revoked
// by then, mapped or not.
const [socketPath, sharedSpec, ...entries] = Deno.args;
const sharedAt = sharedSpec.lastIndexOf(":");
const shared = sharedSpec === "-" || sharedAt < 0
  ? null
  : mapShared(sharedSpec.slice(0, sharedAt), Number(sharedSpec.slice(sharedAt + 1)));
// Whatever the arguments said: no FFI from here on.
Deno.permissions.revokeSync({ name: "ffi" });

// No threads of its own: a Worker would spin beyond the handler's deadline and the heartbeat's reach.
delete (globalThis as { Worker?: unknown }).Worker;

const toStderr = (...args: unknown[]) => console.error(...args);
for (const method of ["log", "info", "debug"] as const) console[method] = toStderr;

const conn = await Deno.connect({ transport: "unix", path: socketPath });
// The host lowers this process's memory limit to what the runtime maps now plus the program's budget, then sends
// one byte: only then is the upload loaded.
const go = new Uint8Array(1);
if ((await conn.read(go)) !== 1) Deno.exit(0);

async function writeAll(bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

await serveGuest(entries, {
  input: conn,
  shared,
  write: writeAll,
  exit: (code) => Deno.exit(code),
});
// The host closed the socket: a program's own timers must not keep the process alive.
Deno.exit(0);
