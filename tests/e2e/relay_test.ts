/** The relay role end to end: a real edgenode process relaying loopback UDP to sinks in this test. */
import assert from "node:assert/strict";
import { openUdp } from "../../lib/net/udp.ts";
import { collect } from "../net/udp_contract.ts";
import { getJson, getText, LISTENING, startEdgenode, tempConfig } from "./_process.ts";

for (const impl of ["fast", "portable"] as const) {
  Deno.test(`edgenode relay (${impl}) delivers every datagram to every target and counts each`, async () => {
    const sinks = [openUdp({ host: "127.0.0.1", port: 0 }), openUdp({ host: "127.0.0.1", port: 0 })];
    const source = openUdp({ host: "127.0.0.1", port: 0 });
    try {
      await using config = await tempConfig([
        "roles: [relay]",
        "relay:",
        `  udp: ${impl}`,
        "  relays:",
        "    - name: video",
        "      listen: 127.0.0.1:0",
        `      targets: [${sinks.map((s) => `127.0.0.1:${s.local.port}`).join(", ")}]`,
        "",
      ].join("\n"));
      await using edgenode = startEdgenode(["--config", config.path, "--status", "127.0.0.1:0"]);
      const [, relayPort] = await edgenode.waitForLine(
        /msg="relay listening" relay=video listen=127\.0\.0\.1:(\d+)/,
      );
      const [, statusPort] = await edgenode.waitForLine(LISTENING);

      // Paced in small bursts, well under either path's loss threshold: this test is about correctness, the benchmark about rate.
      const n = 2000;
      const to = source.destinations([{ host: "127.0.0.1", port: Number(relayPort) }]);
      for (let i = 0; i < n; i += 10) {
        source.send(
          Array.from({ length: 10 }, (_, k) => new TextEncoder().encode(`dgram ${i + k}`)),
          to,
        );
        await new Promise((r) => setTimeout(r, 1));
      }
      for (const sink of sinks) {
        const got = await collect(sink, n, 10_000);
        assert.deepEqual(
          got.map((g) => new TextDecoder().decode(g.data)),
          Array.from({ length: n }, (_, i) => `dgram ${i}`),
          "in order, none lost",
        );
      }

      const status = await getJson(`http://127.0.0.1:${statusPort}/status`);
      const relay =
        (status.roles as Record<string, { relays: Record<string, Record<string, unknown>> }>).relay
          .relays.video;
      assert.equal(relay.udp, impl);
      assert.equal(relay.thread, impl === "fast", "the fast path runs on a thread of its own");
      assert.equal(relay.rx_packets, n);
      assert.deepEqual(
        (relay.targets as { sent: number }[]).map((t) => t.sent),
        [n, n],
      );
      const metrics = await getText(`http://127.0.0.1:${statusPort}/metrics`);
      for (const sink of sinks) {
        assert.match(
          metrics,
          new RegExp(
            `^edgenode_relay_target_sent_total\\{relay="video",target="127.0.0.1:${sink.local.port}"\\} ${n}$`,
            "m",
          ),
        );
      }
      assert.match(metrics, new RegExp(`^edgenode_relay_rx_packets_total\\{relay="video"\\} ${n}$`, "m"));

      edgenode.kill("SIGTERM");
      const result = await edgenode.waitForExit();
      assert.equal(result.code, 0, result.stderr);
    } finally {
      for (const s of [source, ...sinks]) await s.close();
    }
  });
}

Deno.test("edgenode relay refuses to start on a UDP port in use and exits 1", async () => {
  const held = openUdp({ host: "127.0.0.1", port: 0 });
  try {
    await using config = await tempConfig(
      `roles: [relay]\nrelay:\n  relays:\n    - {name: r, listen: 127.0.0.1:${held.local.port}, targets: [127.0.0.1:9]}\n`,
    );
    await using edgenode = startEdgenode(["--config", config.path, "--status", "127.0.0.1:0"]);
    const result = await edgenode.waitForExit();
    assert.equal(result.code, 1);
    // The config's place of the relay's listen address, then the reason.
    assert.match(
      result.stderr,
      new RegExp(
        `edgenode: ${config.path}:4:25: relay\\.relays\\[0\\]\\.listen: Cannot bind relay "r" on ` +
          `127.0.0.1:${held.local.port}: Cannot listen on udp 127.0.0.1:${held.local.port}: address already in use\\n$`,
      ),
    );
  } finally {
    await held.close();
  }
});
