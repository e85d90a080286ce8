/**
 * The main module of a sandbox child: `deno run` with no --allow-* flag but read access to its own upload directory,
 * started by host.ts. Its frames travel on stdin and stdout, so the program's console output is moved to stderr
 * before the program is imported.
 */
import { serveGuest } from "./guest.ts";

const toStderr = (...args: unknown[]) => console.error(...args);
for (const method of ["log", "info", "debug"] as const) console[method] = toStderr;

async function writeAll(bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await Deno.stdout.write(bytes.subarray(off));
}

await serveGuest(Deno.args[0], {
  input: Deno.stdin.readable,
  write: writeAll,
  exit: (code) => Deno.exit(code),
});
