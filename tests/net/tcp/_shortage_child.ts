/**
 * Run by shortage_test.ts as its own process, with a low descriptor limit: opens a listener on the transport named by
 * its argument, uses up every descriptor left, then reports how a connect and an accept fail (one JSON line each).
 * The parent makes the client whose accept fails once this prints "full".
 */
import { systemClock } from "../../../lib/core/clock.ts";
import { openTransport } from "../../../lib/net/tcp/open.ts";

// Deno 2.9.6 makes its signal handling lazily, about half a second after start, and panics if no descriptor is left
// by then: made first here.
const noSignal = () => {};
Deno.addSignalListener("SIGUSR2", noSignal);
const transport = openTransport(Deno.args[0] === "fast" ? "fast" : "portable");
const listener = transport.listen({ host: "127.0.0.1", port: 0 });
// The fast reactor's look for the event loop's epoll set runs a shell: it must be done before descriptors run out.
await transport.ready;
const held: Deno.DatagramConn[] = [];
const describe = (e: Error) => ({
  name: e.name,
  code: (e as { code?: string }).code ?? null,
  message: e.message,
});
const report = (what: string, e: Error) => console.log(JSON.stringify({ what, ...describe(e) }));
try {
  for (let i = 0; i < 4096; i++) {
    held.push(Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 }));
  }
} catch {
  // out of descriptors: what this wanted
}
const connectError = await new Promise<Error | null>((resolve) =>
  transport.connect(listener.addr, 1000, systemClock, {
    connected: (conn) => (conn.close(), resolve(null)),
    connectFailed: resolve,
  })
);
if (connectError) report("connect", connectError);
else console.log(JSON.stringify({ what: "connect", name: "connected" }));
console.log(`full ${listener.addr.port}`);
await new Promise<void>((resolve) => {
  listener.serve((conn) => conn.close(), (error) => {
    report("accept", error);
    resolve();
    return new Promise(() => {});
  });
});
for (const h of held) h.close();
Deno.exit(0);
