/**
 * Run by fd_channel_test.ts as its own process, with a low descriptor limit: every descriptor this process may open
 * is taken (eventfds) but the one a client's socket takes, so the control listener's accept fails with EMFILE; after
 * a second of that the fillers go and the accept succeeds. Prints one JSON line: the CPU time the process used over
 * that second, the errors the listener reported, and whether the accept came through.
 *
 * The test process itself must never run out of descriptors: Deno 2.9.6 panics when a part of the runtime it makes
 * lazily cannot get one (its signal handling, about half a second after start, and the update check's certificate
 * store; seen here). So this runs alone, with the update check off (by the parent) and signal handling made first.
 */
import { connectControl, ControlListener } from "../../lib/net/fd_channel.ts";
import { sharedLibc } from "../../lib/net/libc.ts";

/** This process's CPU time (user and system) in ms, from /proc/self (which Deno opens only with --allow-all; 100 ticks a second). */
function cpuMs(): number {
  const fields = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const noSignal = () => {};
Deno.addSignalListener("SIGUSR2", noSignal);
const [dir] = Deno.args;
const listener = ControlListener.open(`${dir}/control.sock`);
const stop = new AbortController();
const errors: string[] = [];
const c = sharedLibc()!.symbols;
const before = cpuMs();
const fillers: number[] = [];
for (let fd; (fd = c.eventfd(0, 0o2000000)) >= 0;) fillers.push(fd);
c.close(fillers.pop()!);
const client = connectControl(`${dir}/control.sock`);
const accepted = listener.accept(stop.signal, (message) => errors.push(message));
await new Promise((resolve) => setTimeout(resolve, 1_000));
for (const fd of fillers.splice(0)) c.close(fd);
const used = cpuMs() - before;
const server = await accepted;
console.log(JSON.stringify({ cpuMs: used, errors, accepted: server !== null }));
server?.close();
client.close();
stop.abort();
listener.close();
Deno.removeSignalListener("SIGUSR2", noSignal);
