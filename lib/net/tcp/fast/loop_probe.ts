/**
 * Finds the epoll set this thread's event loop (Deno's reactor) waits in, so the fast engine can join it and wait
 * on the event loop's own thread: either kind of readiness then wakes the one wait, with no thread hop.
 *
 * Deno does not say which descriptor that is. The probe opens a Deno UDP socket, lets the event loop register it (on
 * its first pending receive), and looks in /proc for the epoll set that watches that very socket. Deno lets a program
 * read /proc/self only with --allow-all, so a shell reads it (the agent reads /proc the same way).
 */
import type { Clock } from "../../../core/clock.ts";

/** Looks after each pause (the event loop registers the probe's socket within a turn or two). */
const ATTEMPTS = 10;
const PAUSE_MS = 10;

/**
 * The epoll sets of this process that watch the UDP socket bound to 127.0.0.1:`port`: the socket's inode from
 * /proc/net/udp, the descriptor that links to it, then every descriptor whose fdinfo has it as a target ("tfd: N").
 */
async function watchersOfUdpPort(port: number): Promise<number[]> {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  const script = `cd /proc/${Deno.pid} || exit 1
inode=$(awk '$2 == "0100007F:${hex}" { print $10; exit }' net/udp)
[ -n "$inode" ] || exit 0
sock=
for f in fd/*; do [ "$(readlink "$f")" = "socket:[$inode]" ] && sock=\${f#fd/}; done
[ -n "$sock" ] || exit 0
for f in fdinfo/*; do grep -q "^tfd: *$sock " "$f" 2>/dev/null && echo "\${f#fdinfo/}"; done
exit 0`;
  const out = await new Deno.Command("sh", { args: ["-c", script], stdout: "piped", stderr: "null" })
    .output();
  return new TextDecoder().decode(out.stdout).split("\n").filter((l) => /^\d+$/.test(l)).map(Number);
}

/**
 * The descriptor of the epoll set this thread's event loop waits in, or -1. Worker threads have sets of their own,
 * which do not watch the probe; nor does `own` (the engine's set), which may be watching sockets opened meanwhile (a
 * listener made right after the engine). Pauses between looks are on `clock`.
 */
export async function findEventLoopEpoll(own: number, clock: Clock): Promise<number> {
  try {
    const probe = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    const port = (probe.addr as Deno.NetAddr).port;
    const pending = probe.receive().catch(() => null);
    try {
      for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
        await new Promise((resolve) => clock.setTimeout(() => resolve(null), PAUSE_MS));
        const found = (await watchersOfUdpPort(port)).filter((fd) => fd !== own);
        if (found.length) return found[0];
      }
    } finally {
      probe.close();
      await pending;
    }
  } catch {
    // No /proc, no shell, or not allowed to run one: the engine waits on another thread when quiet.
  }
  return -1;
}
