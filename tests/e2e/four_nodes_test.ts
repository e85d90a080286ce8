/**
 * The report's four-node run in network namespaces (tests/e2e/_four_nodes.ts): Brno's inputs, duplicators and
 * transcoder (a forwarder here: the probe's payloads are no video), Prague's and Liberec's syncers and reflectors,
 * Pilsen's savers, started through Brno's operator route; RTP from Brno reaches the analysers in Brno and Pilsen
 * through both reflectors and both files in Pilsen, every link counts what it carried, and a stop through Brno ends
 * every part. Needs root (namespaces, TUN devices), as CI runs.
 */
import assert from "node:assert/strict";
import { until } from "../_support/until.ts";
import { FILES, FourNodes, LINKS, type LinkStatus, NODES, receivedOf, SESSION } from "./_four_nodes.ts";

/** The split the program pins (presentation_4nodes.dipronn). */
const SPLIT: Record<string, string> = {
  Dup_V: "brno",
  Dup_A: "brno",
  Transcode: "brno",
  Sync_high: "prague",
  Dup_high: "prague",
  Reflector_high: "prague",
  Sync_low: "liberec",
  Dup_low: "liberec",
  Reflector_low: "liberec",
  Saver_high: "pilsen",
  Saver_low: "pilsen",
};

Deno.test({
  name:
    "four nodes run the report's session: every RTP packet sent in Brno reaches Prague, Liberec and Pilsen",
  fn: async () => {
    const began = performance.now();
    await using run = await FourNodes.start({ link: "delay" });
    const started = await run.startSession({ transcoder: "forwarder" });
    assert.deepEqual((started.placement as { nodeOf: Record<string, string> }).nodeOf, SPLIT);
    for (const n of NODES) {
      assert.deepEqual(await run.sessionsOn(n), { running: [SESSION], prepared: 0 }, `${n} runs its part`);
    }

    const participants = run.participants({ durationS: 40, idleS: 3 });
    await run.waitJoined(2);
    const sent = await run.send({ size: 400, rate: 400, seconds: 3 });
    const reports = await run.reports(participants);
    const ssrcs = [sent.video.rtp!.ssrc, sent.audio.rtp!.ssrc];
    // What left Brno's sources (the kernel refused none of it, or that is named).
    const total = sent.video.sent - sent.video.tx_dropped + sent.audio.sent - sent.audio.tx_dropped;
    assert.ok(sent.video.sent >= 1000 && sent.audio.sent >= 100, JSON.stringify(sent));

    // Per-link counters: each link's sender and receiver agree, nothing lost or reordered.
    const links = new Map<string, Map<string, LinkStatus>>(
      await Promise.all(NODES.map(async (n) => [n, await run.links(n)] as const)),
    );
    const linkLine = (a: string, b: string) => {
      const tx = links.get(a)!.get(b);
      const rx = links.get(b)!.get(a);
      return `${a}->${b}: sent ${tx?.tx_packets} (dropped ${tx?.tx_dropped}), received ${rx?.rx_packets}, lost ${rx?.lost}, ` +
        `reordered ${rx?.reordered}, delay p50 ${rx?.delay_p50_ms} ms`;
    };
    const linkReport = LINKS.map(([a, b]) => linkLine(a, b)).join("\n");

    const arrived = reports.map((r, i) => ({
      where: participants[i].label,
      got: receivedOf(r, ssrcs),
    }));
    for (const { where, got } of arrived) {
      assert.equal(
        got,
        total,
        `participant ${where} got ${got} of ${total} RTP packets; links:\n${linkReport}`,
      );
    }
    for (const [a, b] of LINKS) {
      const tx = links.get(a)!.get(b) as LinkStatus;
      const rx = links.get(b)!.get(a) as LinkStatus;
      assert.ok(tx.tx_packets > 0, `link ${linkLine(a, b)}`);
      assert.equal(tx.tx_packets, rx.rx_packets, `link ${linkLine(a, b)}`);
      assert.equal(tx.tx_dropped, 0, `link ${linkLine(a, b)}`);
      assert.equal(rx.lost, 0, `link ${linkLine(a, b)}`);
      // A link carries every datagram of the streams it holds (video and audio, or one twinstream), and RTCP.
      assert.ok(rx.rx_packets >= total, `link ${linkLine(a, b)} carried fewer than the ${total} sent`);
    }
    // The split makes no other link: nothing between brno and pilsen, nor between prague and liberec.
    for (const [a, b] of [["brno", "pilsen"], ["prague", "liberec"]]) {
      assert.equal(links.get(a)!.get(b)?.tx_packets ?? 0, 0, `no traffic ${a}->${b}`);
      assert.equal(links.get(b)!.get(a)?.tx_packets ?? 0, 0, `no traffic ${b}->${a}`);
    }

    // A stop through Brno ends every part on every node; the savers flush their files as they stop.
    const stopped = await run.stopSession();
    assert.equal(stopped.status, 200, JSON.stringify(stopped.body));
    for (const n of NODES) {
      assert.deepEqual(
        await run.sessionsOn(n),
        { running: [], prepared: 0 },
        `nothing of the session on ${n}`,
      );
    }
    const coordinated = (await run.nodeStatus("brno")).cluster as {
      coordinated: { sessions: Record<string, { state: string }> };
    };
    assert.equal(coordinated.coordinated.sessions[SESSION].state, "stopped");

    await until(
      "both saved files complete",
      async () => {
        await run.readFiles();
        return run.files.every((f) => f.of(ssrcs) >= total);
      },
      10_000,
      200,
    ).catch(() => {});
    run.files.forEach((f, i) => {
      assert.equal(f.of(ssrcs), total, `${FILES[i]} holds ${f.of(ssrcs)} of ${total}; links:\n${linkReport}`);
    });
    const seconds = (performance.now() - began) / 1000;
    console.log(
      `four nodes: ${total} RTP packets from brno reached ${arrived.length} participants and ${run.files.length} ` +
        `files; links:\n${linkReport}\n(${seconds.toFixed(1)} s with the bed)`,
    );
    assert.ok(seconds < 60, `the run took ${seconds.toFixed(1)} s`);
  },
});
