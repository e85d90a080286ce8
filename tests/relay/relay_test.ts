/** The Relay itself, in this process: the fast path on a thread of its own, counting into shared memory. */
import assert from "node:assert/strict";
import { systemClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { openUdp, type UdpSocket } from "../../lib/net/udp.ts";
import { Relay } from "../../lib/relay/relay.ts";
import { collect } from "../net/udp_contract.ts";

const LO = "127.0.0.1";

async function relayThrough(
  thread: boolean,
  impl: "fast" | "portable",
  body: (relay: Relay, source: UdpSocket, sinks: UdpSocket[], metrics: MetricsRegistry) => Promise<void>,
  logs: string[] = [],
) {
  const logger = new Logger({ level: "debug", clock: systemClock, sink: (l) => logs.push(l) });
  const sinks = [openUdp({ host: LO, port: 0 }), openUdp({ host: LO, port: 0 })];
  const source = openUdp({ host: LO, port: 0 });
  const socket = openUdp({ host: LO, port: 0 }, { impl });
  const metrics = new MetricsRegistry();
  const relay = await Relay.start(
    { name: "r", listen: socket.local, targets: sinks.map((s) => s.local) },
    socket,
    metrics,
    { thread, logger },
  );
  try {
    await body(relay, source, sinks, metrics);
  } finally {
    await relay.close();
    for (const s of [source, ...sinks]) await s.close();
  }
}

for (
  const [impl, thread, expected] of [["fast", true, true], ["fast", false, false], [
    "portable",
    true,
    false,
  ]] as const
) {
  Deno.test(`relay (${impl}, thread ${thread}) runs ${expected ? "on its own thread" : "on the event loop"} and counts every datagram`, async () => {
    await relayThrough(thread, impl, async (relay, source, sinks, metrics) => {
      assert.equal(relay.threaded, expected);
      const to = source.destinations(
        [relay.status().listen as string].map((a) => ({ host: LO, port: Number(a.split(":")[1]) })),
      );
      const n = 500;
      for (let i = 0; i < n; i += 10) {
        source.send(Array.from({ length: 10 }, (_, k) => new TextEncoder().encode(`d${i + k}`)), to);
        await new Promise((r) => setTimeout(r, 1));
      }
      for (const sink of sinks) {
        const got = await collect(sink, n);
        assert.equal(new TextDecoder().decode(got[n - 1].data), `d${n - 1}`);
      }
      const status = relay.status();
      assert.equal(status.state, "running");
      assert.equal(status.thread, expected);
      assert.equal(status.rx_packets, n);
      assert.equal(status.tx_packets, 2 * n);
      assert.deepEqual((status.targets as { sent: number }[]).map((t) => t.sent), [n, n]);
      assert.match(
        metrics.render(),
        new RegExp(`^edgenode_relay_rx_packets_total\\{relay="r"\\} ${n}$`, "m"),
      );
    });
  });
}

Deno.test("a relay thread waiting for data stops by itself when the relay closes", async () => {
  const logs: string[] = [];
  let closed: Relay | null = null;
  await relayThrough(true, "fast", async (relay, source, sinks) => {
    closed = relay;
    const port = Number((relay.status().listen as string).split(":")[1]);
    source.send([new Uint8Array(10)], source.destinations([{ host: LO, port }]));
    await collect(sinks[0], 1);
    // Now the thread waits in the kernel with no timeout: close() must wake it, not terminate it.
  }, logs);
  assert.deepEqual(logs.filter((l) => l.includes("warn")), [], "no 'did not stop when asked; terminated'");
  assert.equal((closed as unknown as Relay).status().rx_packets, 1, "counters stay readable after close");
});
