/**
 * `probe sweep` on the paths the relay test does not take: a size ends at the first step whose loss passes the limit
 * (a target where nothing listens loses everything), and an RTP sweep through a use_RTP reflector with two joined
 * participants gives a series per participant in every chart. Loopback only; files go to a map, not the disk.
 */
import assert from "node:assert/strict";
import { runProbe } from "../../lib/cli/probe.ts";
import { systemClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { openUdpPair } from "../../lib/net/udp.ts";
import type { SweepResult } from "../../lib/probe/sweep.ts";
import { Reflector } from "../../lib/relay/reflector.ts";
import { freeUdpPort } from "../_support/ports.ts";

const LO = "127.0.0.1";

/** Runs `probe sweep ARGS --out out`, keeping what it writes and prints. */
async function sweep(args: readonly string[]) {
  const files = new Map<string, string>();
  let stdout = "";
  let stderr = "";
  const status = await runProbe(["sweep", ...args, "--out", "out"], {
    out: (t) => stdout += t,
    err: (t) => stderr += t,
    tty: false,
    readFile: () => Promise.reject(new Error("No file here")),
    writeFile: (path, text) => (files.set(path, text), Promise.resolve()),
  });
  return {
    status,
    stdout,
    progress: stderr.trim().split("\n").filter(Boolean),
    result: JSON.parse(files.get("out/sweep.json")!) as SweepResult,
    html: files.get("out/sweep.html")!,
  };
}

/** Per chart of an HTML report: its series' names and how many measured points each has. */
function chartSeries(html: string): { name: string; points: number }[][] {
  return (html.match(/<svg[\s\S]*?<\/svg>/g) ?? []).map((svg) =>
    [...svg.matchAll(/<g class="series" data-name="([^"]*)"[^>]*>([\s\S]*?)<\/g>/g)].map((m) => ({
      name: m[1],
      points: m[2].match(/<circle/g)?.length ?? 0,
    }))
  );
}

Deno.test("probe sweep ends a size at the first step whose loss passes the limit, then sweeps the next size", async () => {
  // Nothing listens at the target: every datagram is lost, so each size ends after its first of four steps.
  const dead = freeUdpPort();
  const recv = freeUdpPort();
  const run = await sweep([
    "--to",
    `${LO}:${dead}`,
    "--recv",
    `${LO}:${recv}`,
    "--sizes",
    "100,1000",
    "--from",
    "1000",
    "--steps",
    "4",
    "--step",
    "200ms",
  ]);
  assert.equal(run.status, 0);
  assert.deepEqual(run.result.sizes.map((s) => [s.size, s.ended_by, s.steps.length]), [
    [100, "loss", 1],
    [1000, "loss", 1],
  ]);
  for (const s of run.result.sizes) {
    assert.equal(s.steps[0].receivers[0].loss_percent, 100);
    assert.ok(s.steps[0].sent > 0, "the step did send");
    assert.deepEqual(s.max_throughput, { receivers: [null], all: null }, "no step within the limit");
  }
  assert.equal(run.progress.length, 2, "one progress line per step run");
  assert.match(run.stdout, /^100 B: ended by loss above 1%$/m);
  // Ended by loss: the maxima are not lower bounds (no ">="), and at no rate were they met.
  assert.match(run.stdout, /^100 B\s+\|\s+-\s+-$/m);
  assert.match(run.html, /<p>ended by loss above 1%<\/p>/);
  // Per size a loss chart with its one point at 100% and a delay chart with none (nothing arrived to time).
  const name = `recv ${LO}:${recv}`;
  assert.deepEqual(chartSeries(run.html), [1, 0, 1, 0].map((points) => [{ name, points }]));
  assert.equal(run.html.match(/data-y="100"/g)?.length, 2);
});

Deno.test("probe sweep --rtp with two --join of one use_RTP reflector: a series per participant in every chart", async () => {
  const [data, dataRtcp] = openUdpPair(LO);
  const [registration, registrationRtcp] = openUdpPair(LO);
  const reflector = new Reflector(
    {
      name: "sweep",
      registration: registration.local,
      use_rtp: true,
      timeout: 30_000,
      max_participants: 10,
      max_per_address: 4,
      allow: ["loopback"],
      participants: [],
    },
    { data, registration, dataRtcp, registrationRtcp },
    {
      clock: systemClock,
      metrics: new MetricsRegistry(),
      logger: new Logger({ level: "error", clock: systemClock, sink: () => {} }),
    },
  );
  try {
    const join = `${LO}:${registration.local.port}`;
    const run = await sweep([
      "--rtp",
      "--to",
      `${LO}:${data.local.port}`,
      "--join",
      join,
      "--join",
      join,
      "--sizes",
      "200,1000",
      "--from",
      "1000",
      "--steps",
      "2",
      "--step",
      "300ms",
      "--loss-limit",
      "50",
    ]);
    assert.equal(run.status, 0);
    const names = [`join ${join}`, `join ${join} #2`];
    assert.deepEqual(run.result.receivers, names);
    assert.equal(run.result.rtp, true);
    for (const s of run.result.sizes) {
      assert.deepEqual(s.steps.map((x) => x.rate), [1000, 1500], `${s.size} B steps`);
      assert.equal(s.ended_by, "steps");
      for (const x of s.steps) {
        for (const r of x.receivers) {
          assert.ok(
            r.received > 0,
            `${s.size} B at ${x.rate}/s: the reflector forwarded to each participant`,
          );
          assert.ok(r.delay_p99_ms !== null, "the delay is measured through RTP too");
        }
      }
    }
    // Two participants, kept across the steps and sizes (each rejoins with its port), and nothing but RTP sent.
    const status = reflector.status();
    assert.equal((status.participants as unknown[]).length, 2);
    assert.equal(status.malformed_data, 0);
    assert.match(run.html, /RTP\./);
    const charts = chartSeries(run.html);
    assert.equal(charts.length, 4, "a loss and a delay chart per size");
    for (const chart of charts) assert.deepEqual(chart, names.map((name) => ({ name, points: 2 })));
  } finally {
    await reflector.close();
  }
});
