/** The Relay itself, in this process: the fast path on a thread of its own, counting into shared memory. */
import assert from "node:assert/strict";
import { systemClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { openUdp, type UdpSocket } from "../../lib/net/udp.ts";
import { Relay, type RelayOptions } from "../../lib/relay/relay.ts";
import { collect } from "../net/udp_contract.ts";
import { until } from "../_support/until.ts";

const LO = "127.0.0.1";

async function relayThrough(
  thread: boolean,
  impl: "fast" | "portable",
  body: (relay: Relay, source: UdpSocket, sinks: UdpSocket[], metrics: MetricsRegistry) => Promise<void>,
  logs: string[] = [],
  extra: { options?: RelayOptions; allow?: string[]; sourceHost?: string } = {},
) {
  const logger = new Logger({ level: "debug", clock: systemClock, sink: (l) => logs.push(l) });
  const sinks = [openUdp({ host: LO, port: 0 }), openUdp({ host: LO, port: 0 })];
  const source = openUdp({ host: extra.sourceHost ?? LO, port: 0 });
  const socket = openUdp({ host: LO, port: 0 }, { impl });
  const metrics = new MetricsRegistry();
  const relay = await Relay.start(
    { name: "r", listen: socket.local, targets: sinks.map((s) => s.local), allow_sources: extra.allow },
    socket,
    metrics,
    { thread, logger, ...extra.options },
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

const listenOf = (relay: Relay) => ({
  host: LO,
  port: Number((relay.status().listen as string).split(":")[1]),
});
const text = (s: string) => new TextEncoder().encode(s);

for (
  const [what, module] of [
    ["fails before its loop", new URL("./_thread_fails.ts", import.meta.url)],
    ["does not answer in time", new URL("./_thread_silent.ts", import.meta.url)],
  ] as const
) {
  Deno.test(`a relay whose thread ${what} relays on the event loop from a socket it can still read`, async () => {
    const logs: string[] = [];
    await relayThrough(
      true,
      "fast",
      async (relay, source, sinks) => {
        assert.equal(relay.threaded, false);
        source.send([text("first"), text("second")], source.destinations([listenOf(relay)]));
        for (const sink of sinks) {
          // A socket shut for reading would give empty datagrams at once, forever, and never these two.
          const got = await collect(sink, 2);
          assert.deepEqual(got.map((g) => new TextDecoder().decode(g.data)), ["first", "second"]);
        }
        await until("4 datagrams sent counted", () => relay.status().tx_packets === 4);
        const status = relay.status();
        assert.equal(status.rx_packets, 2);
        assert.equal(status.dropped_empty, 0);
      },
      logs,
      { options: { module, startMs: 200 } },
    );
    assert.equal(logs.filter((l) => l.includes("relay thread did not start")).length, 1);
  });
}

for (const [impl, thread] of [["fast", true], ["fast", false], ["portable", false]] as const) {
  const how = `${impl}${thread ? ", thread" : ""}`;

  Deno.test(`relay (${how}) sends no empty datagram on and counts it`, async () => {
    await relayThrough(thread, impl, async (relay, source, sinks) => {
      source.send(
        [new Uint8Array(0), text("data"), new Uint8Array(0)],
        source.destinations([listenOf(relay)]),
      );
      for (const sink of sinks) {
        const [got] = await collect(sink, 1);
        assert.equal(new TextDecoder().decode(got.data), "data", "the first datagram a target gets has data");
      }
      // A marker sent after: had an empty datagram gone on, it would have reached the target before this one.
      source.send([text("marker")], source.destinations([listenOf(relay)]));
      const [next] = await collect(sinks[0], 1);
      assert.equal(new TextDecoder().decode(next.data), "marker");
      // A thread counts after it has sent, so the count may trail the datagrams a moment.
      await until("4 datagrams sent counted", () => relay.status().tx_packets === 4);
      const status = relay.status();
      assert.equal(status.rx_packets, 4);
      assert.equal(status.dropped_empty, 2);
      assert.equal(status.tx_packets, 4);
    });
  });

  Deno.test(`relay (${how}) sends on only what comes from allow_sources and counts the rest`, async () => {
    const metrics: MetricsRegistry[] = [];
    await relayThrough(
      thread,
      impl,
      async (relay, allowed, sinks, m) => {
        metrics.push(m);
        const outsider = openUdp({ host: LO, port: 0 });
        try {
          outsider.send([text("outsider")], outsider.destinations([listenOf(relay)]));
          await until("the outsider's datagram counted", () => relay.status().dropped_denied === 1);
          allowed.send([text("allowed")], allowed.destinations([listenOf(relay)]));
          for (const sink of sinks) {
            const [got] = await collect(sink, 1);
            assert.equal(
              new TextDecoder().decode(got.data),
              "allowed",
              "the outsider's datagram went nowhere",
            );
          }
          await until("2 datagrams sent counted", () => relay.status().tx_packets === 2);
          const status = relay.status();
          assert.deepEqual(status.allow_sources, ["127.0.0.2/32", "10.0.0.0/8"]);
          assert.equal(status.rx_packets, 2);
          assert.equal(status.tx_packets, 2);
          assert.match(m.render(), /^edgenode_relay_dropped_denied_total\{relay="r"\} 1$/m);
        } finally {
          await outsider.close();
        }
      },
      [],
      { allow: ["127.0.0.2/32", "10.0.0.0/8"], sourceHost: "127.0.0.2" },
    );
  });
}

Deno.test("a relay without allow_sources lets any source in and says so", async () => {
  await relayThrough(true, "fast", (relay) => {
    assert.equal(relay.status().allow_sources, "any");
    return Promise.resolve();
  });
});
