/**
 * `probe sweep`: its options, its maximal throughput, the report's tables, and a real sweep through a relay on
 * loopback with two receivers the relay's targets point at (text table, JSON and HTML as a user gets them).
 */
import assert from "node:assert/strict";
import { runProbe } from "../../lib/cli/probe.ts";
import { parseProbeArgs } from "../../lib/cli/probe.ts";
import { systemClock } from "../../lib/core/clock.ts";
import { UsageError } from "../../lib/core/errors.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { openUdp, openUdpPair } from "../../lib/net/udp.ts";
import { Relay } from "../../lib/relay/relay.ts";
import { REPORT_TABLES } from "../../lib/probe/report_tables.ts";
import {
  maxThroughput,
  offeredMbit,
  receiverFigures,
  receiverNames,
  sweepRates,
  type SweepResult,
  type SweepStep,
} from "../../lib/probe/sweep.ts";
import { formatThroughput } from "../../lib/probe/sweep_report.ts";

const LO = "127.0.0.1";

function sweep(args: string) {
  const command = parseProbeArgs(["sweep", ...args.split(" ").filter(Boolean)]);
  assert.equal(command.mode, "sweep");
  return command;
}

Deno.test("parseProbeArgs sweep takes the defaults of the report's tests", () => {
  const c = sweep("--to 127.0.0.1:9000 --recv 127.0.0.1:5004 --join 127.0.0.1:12345");
  assert.deepEqual(c.options.sizes, [100, 500, 1000, 1450]);
  assert.equal(c.options.rates.length, 12);
  assert.equal(c.options.rates[0], 1000);
  assert.equal(c.options.rates[1], 1500);
  assert.equal(c.options.stepMs, 2000);
  assert.equal(c.options.lossLimit, 1);
  assert.deepEqual(c.options.receivers.map((r) => r.kind), ["recv", "join"]);
  assert.equal(c.out, null);
  assert.equal(c.compare, null);
});

Deno.test("parseProbeArgs sweep spreads --steps up to --max-rate when no --factor is given", () => {
  const c = sweep("--to 127.0.0.1:9000 --recv 127.0.0.1:5004 --from 1000 --steps 3 --max-rate 4000");
  assert.deepEqual(c.options.rates, [1000, 2000, 4000]);
  assert.equal(c.options.maxRate, 4000);
  const capped = sweep("--to 127.0.0.1:9000 --recv 127.0.0.1:5004 --factor 2 --max-rate 5000");
  assert.deepEqual(capped.options.rates, [1000, 2000, 4000, 5000]);
});

Deno.test("parseProbeArgs sweep rejects bad values with a UsageError naming the option", () => {
  const base = "--to 127.0.0.1:9000 --recv 127.0.0.1:5004";
  const cases: [string, RegExp][] = [
    ["--recv 127.0.0.1:5004", /--to IP:PORT is required/],
    ["--to 127.0.0.1:9000", /at least one --recv IP:PORT or --join IP:PORT/],
    [`${base} --sizes 100,abc`, /--sizes must be an integer in 20\.\.65507, got "abc"/],
    [`${base} --sizes 100,100`, /--sizes must not repeat/],
    [`${base} --rtp --sizes 20`, /--sizes must be an integer in 32\.\.65507/],
    [`${base} --from 0`, /--from must be an integer/],
    [`${base} --factor 1`, /--factor must be a number above 1/],
    [`${base} --factor x`, /--factor must be a number above 1/],
    [`${base} --steps 0`, /--steps must be an integer/],
    [`${base} --from 5000 --max-rate 100`, /--max-rate must not be below --from/],
    [`${base} --step 10ms`, /--step must be 100ms\.\.1h/],
    [`${base} --step soon`, /"soon" is not a duration/],
    [`${base} --loss-limit 101`, /--loss-limit must be a percentage/],
    [`${base} --loss-limit -1`, /--loss-limit/],
    [`${base} --udp turbo`, /--udp must be one of/],
    [`${base} --recv 127.0.0.1:5004`, /receiver 127\.0\.0\.1:5004 is given twice/],
    [`${base} --join host.example:1`, /--join: expected an IP address/],
    [`${base} --size 100`, /probe sweep: Unknown option '--size'/],
  ];
  for (const [args, message] of cases) {
    assert.throws(
      () => parseProbeArgs(["sweep", ...args.split(" ")]),
      (e: unknown) => e instanceof UsageError && message.test(e.message),
      `${args} -> ${message}`,
    );
  }
});

Deno.test("parseProbeArgs sweep lets two participants join one reflector, named apart", () => {
  const c = sweep("--to 127.0.0.1:9000 --join 127.0.0.1:12345 --join 127.0.0.1:12345 --recv 127.0.0.1:5004");
  assert.deepEqual(receiverNames(c.options.receivers), [
    "recv 127.0.0.1:5004",
    "join 127.0.0.1:12345",
    "join 127.0.0.1:12345 #2",
  ]);
});

Deno.test("sweepRates multiplies by the factor, stops after the steps and takes --max-rate as the last step", () => {
  assert.deepEqual(sweepRates(1000, 1.5, 4, null), [1000, 1500, 2250, 3375]);
  assert.deepEqual(sweepRates(1000, 2, 10, 3000), [1000, 2000, 3000]);
  assert.deepEqual(sweepRates(1000, 2, 10, 4000), [1000, 2000, 4000]);
  assert.equal(offeredMbit(10000, 1450), 116);
});

const step = (rate: number, losses: number[]): SweepStep => ({
  rate,
  offered_mbit_per_s: offeredMbit(rate, 1000),
  sent: rate,
  sent_mbit_per_s: offeredMbit(rate, 1000),
  tx_dropped: 0,
  receivers: losses.map((loss) => ({
    received: 0,
    lost: 0,
    loss_percent: loss,
    delay_p50_ms: 0.1,
    delay_p99_ms: 0.2,
    mbit_per_s: 0,
  })),
});

Deno.test("maxThroughput is the highest offered rate within the loss limit, per receiver and for all", () => {
  const steps = [step(1000, [0, 0]), step(2000, [0.5, 0]), step(4000, [3, 1])];
  assert.deepEqual(maxThroughput(steps, 1, 2), { receivers: [16, 32], all: 16 });
  assert.deepEqual(maxThroughput(steps, 0, 2), { receivers: [8, 16], all: 8 });
  assert.deepEqual(maxThroughput([step(1000, [5])], 1, 1), { receivers: [null], all: null });
});

Deno.test("receiverFigures counts loss against what was sent, so a lost tail counts", () => {
  const f = receiverFigures(
    { sent: 1000, tx_dropped: 0, duration_s: 1, packets_per_s: 1000, mbit_per_s: 0.8 },
    {
      received: 905,
      bytes: 0,
      expected: 900,
      lost: 0,
      loss_percent: 0,
      duplicates: 5,
      reordered: 0,
      delay_us: { p50: 100, p90: 150, p99: 2500, max: 3000 },
      duration_s: 1,
      packets_per_s: 900,
      mbit_per_s: 0.72,
      foreign: 0,
    },
  );
  assert.deepEqual([f.received, f.lost, f.loss_percent, f.delay_p99_ms], [900, 100, 10, 2.5]);
  assert.ok(Math.abs(f.mbit_per_s - 0.72) < 1e-9, `${f.mbit_per_s} Mb/s received`);
});

Deno.test("--compare report shows the seed report's Tables 4, 5, 6 and 8 beside the sweep's", () => {
  assert.deepEqual(REPORT_TABLES.map((t) => t.title.split(" (")[0]), [
    "Report Table 4",
    "Report Table 5",
    "Report Table 6",
    "Report Table 8",
  ]);
  assert.deepEqual(REPORT_TABLES[0].rows.get(100), [159, 124, 169, 134]);
  assert.deepEqual(REPORT_TABLES[1].rows.get(1450), [923, 899, 925, 903]);
  assert.deepEqual(REPORT_TABLES[2].rows.get(1000), [461.5, 444.5, 461.5, 444.5]);
  assert.deepEqual(REPORT_TABLES[3].rows.get(500), [398.4, 291.1, 218.7, 163.0]);
  const result: SweepResult = {
    version: 1,
    started: "2026-01-01T00:00:00.000Z",
    to: "127.0.0.1:9000",
    receivers: ["recv 127.0.0.1:5004"],
    loss_limit_percent: 1,
    step_s: 1,
    rtp: false,
    sizes: [{ size: 100, steps: [], ended_by: "loss", max_throughput: { receivers: [12.5], all: 12.5 } }],
  };
  const text = formatThroughput(result, REPORT_TABLES);
  assert.match(text, /Maximal throughput \[Mb\/s\] \(loss <= 1%\)/);
  assert.match(text, /^100 B\s+\|\s+12\.5\s+12\.5\s+\|\s+159\.0\s+124\.0\s+169\.0\s+134\.0\s+\|\s+146\.0/m);
  assert.doesNotMatch(text, /597/, "only the sizes swept");
  assert.match(text, /Report Table 8/);
});

Deno.test("probe sweep through a relay on loopback: every step for both receivers, the tables and the charts", async () => {
  // Two pairs of free ports (each receiver also takes port + 1 for RTCP when free): the relay's targets.
  const ports = [openUdpPair(LO), openUdpPair(LO)];
  const targets = ports.map(([a]) => a.local);
  for (const pair of ports) for (const s of pair) await s.close();
  const logger = new Logger({ level: "error", clock: systemClock, sink: () => {} });
  const relay = await Relay.start(
    { name: "sweep", listen: { host: LO, port: 0 }, targets },
    openUdp({ host: LO, port: 0 }),
    new MetricsRegistry(),
    { logger },
  );
  const out = await Deno.makeTempDir({ prefix: "sweep_test_" });
  try {
    const port = Number((relay.status().listen as string).split(":").at(-1));
    const recv = targets.flatMap((t) => ["--recv", `${LO}:${t.port}`]);
    const args = [
      "sweep",
      "--to",
      `${LO}:${port}`,
      ...recv,
      "--sizes",
      "100,1000",
      "--from",
      "1000",
      "--factor",
      "2",
      "--steps",
      "3",
      "--step",
      "300ms",
      "--loss-limit",
      "50",
      "--out",
      out,
      "--compare",
      "report",
    ];
    let stdout = "";
    let stderr = "";
    const status = await runProbe(args, { out: (t) => stdout += t, err: (t) => stderr += t, tty: false });
    assert.equal(status, 0);
    const result = JSON.parse(await Deno.readTextFile(`${out}/sweep.json`)) as SweepResult;
    const names = targets.map((t) => `recv ${LO}:${t.port}`);
    assert.deepEqual(result.receivers, names);
    assert.deepEqual(result.sizes.map((s) => s.size), [100, 1000]);
    for (const s of result.sizes) {
      // Loopback through a relay does not lose half at 4000/s: every step runs.
      assert.deepEqual(s.steps.map((x) => x.rate), [1000, 2000, 4000], `${s.size} B steps`);
      assert.equal(s.ended_by, "steps");
      for (const x of s.steps) {
        assert.equal(x.receivers.length, 2);
        assert.ok(x.sent > 0);
        for (const r of x.receivers) {
          assert.ok(r.received > 0, `${s.size} B at ${x.rate}/s: something arrived`);
          assert.ok(r.loss_percent <= 50, `${s.size} B at ${x.rate}/s: ${r.loss_percent}% lost`);
          assert.ok(r.delay_p99_ms !== null && r.delay_p99_ms >= 0);
        }
      }
      assert.equal(s.max_throughput.all, offeredMbit(4000, s.size));
      assert.equal(s.max_throughput.receivers.length, 2);
    }
    assert.equal(stderr.trim().split("\n").length, 6, "one progress line per step");
    assert.match(stderr, /^probe sweep: 100 B at 1000\/s, 0\.8 Mb\/s offered; recv 127\.0\.0\.1:\d+: loss /m);
    const text = await Deno.readTextFile(`${out}/sweep.txt`);
    assert.equal(stdout, text);
    assert.match(text, /^100 B: ended after 3 steps/m);
    assert.match(text, /Maximal throughput \[Mb\/s\] \(loss <= 50%\)\s+Report Table 4/);
    assert.match(text, /^1000 B\s+\|\s+>=32\.0\s+>=32\.0\s+>=32\.0\s+\|\s+923\.0/m);

    const html = await Deno.readTextFile(`${out}/sweep.html`);
    assert.doesNotMatch(html, /<script|<link|https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
    const charts = html.match(/<svg[\s\S]*?<\/svg>/g) ?? [];
    assert.equal(charts.length, 4, "a loss and a delay chart per size");
    for (const chart of charts) {
      const series = [...chart.matchAll(/<g class="series" data-name="([^"]*)"[^>]*>([\s\S]*?)<\/g>/g)];
      assert.deepEqual(series.map((m) => m[1]), names);
      for (const m of series) assert.equal(m[2].match(/<circle/g)?.length, 3, "a point per step");
    }
    assert.match(html, /<caption>Report Table 6/);
  } finally {
    await relay.close();
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("probe sweep --compare FILE shows a previous sweep.json beside, escaped in the HTML; a bad file is a UsageError", async () => {
  const [a, b] = openUdpPair(LO);
  const port = a.local.port;
  await a.close();
  await b.close();
  const previous: SweepResult = {
    version: 1,
    started: "2026-01-01T00:00:00.000Z",
    to: "127.0.0.1:9000",
    receivers: ["recv <b>old</b>"],
    loss_limit_percent: 1,
    step_s: 1,
    rtp: false,
    sizes: [
      {
        size: 100,
        steps: [step(5000, [0]), step(10000, [4])].map((x) => ({
          ...x,
          offered_mbit_per_s: x.rate * 800 / 1e6,
        })),
        ended_by: "loss",
        max_throughput: { receivers: [4], all: 4 },
      },
      // A size this run does not sweep: not drawn.
      { size: 500, steps: [step(1000, [0])], ended_by: "steps", max_throughput: { receivers: [4], all: 4 } },
    ],
  };
  const files = new Map<string, string>();
  const io = {
    out: () => {},
    err: () => {},
    tty: false,
    readFile: (path: string) =>
      path === "old.json"
        ? Promise.resolve(JSON.stringify(previous))
        : Promise.reject(new Error("No such file")),
    writeFile: (path: string, text: string) => (files.set(path, text), Promise.resolve()),
  };
  // The sender sends straight to the receiver: one short step.
  const args = (compare: string) => [
    "sweep",
    "--to",
    `${LO}:${port}`,
    "--recv",
    `${LO}:${port}`,
    "--sizes",
    "100",
    "--steps",
    "1",
    "--step",
    "200ms",
    "--out",
    "dir",
    "--compare",
    compare,
  ];
  await assert.rejects(
    () => runProbe(args("missing.json"), io),
    (e: unknown) =>
      e instanceof UsageError && /Cannot read --compare "missing\.json": No such file/.test(e.message),
  );
  assert.equal(files.size, 0, "nothing runs or is written when --compare cannot be read");
  assert.equal(await runProbe(args("old.json"), io), 0);
  const text = files.get("dir/sweep.txt")!;
  assert.match(text, /Compared: old\.json/);
  assert.match(text, /^100 B\s+\|\s+>=0\.8\s+>=0\.8\s+\|\s+4\.0\s+4\.0$/m);
  const html = files.get("dir/sweep.html")!;
  assert.match(html, /recv &#60;b&#62;old&#60;\/b&#62;/);
  assert.doesNotMatch(html, /<b>old/);
  // The compared run's loss and delay curves, dashed, beside this run's in both charts of the size both swept.
  const charts = html.match(/<svg[\s\S]*?<\/svg>/g) ?? [];
  assert.equal(charts.length, 2);
  for (const chart of charts) {
    const series = [...chart.matchAll(/<g class="series" data-name="([^"]*)"([^>]*)>([\s\S]*?)<\/g>/g)];
    assert.deepEqual(series.map((m) => m[1]), [
      `recv ${LO}:${port}`,
      "compared old.json: recv &#60;b&#62;old&#60;/b&#62;",
    ]);
    assert.doesNotMatch(series[0][2], /data-dashed/);
    assert.match(series[1][2], /data-dashed="true"/);
    assert.match(series[1][3], /stroke-dasharray/);
    assert.deepEqual(
      series.map((m) => m[3].match(/<circle/g)?.length),
      [1, 2],
      "this run's one step, the compared run's two",
    );
  }
  assert.match(charts[0], /data-x="8" data-y="4"/, "the compared run's 4% loss at 8 Mb/s");
  assert.match(html, /Dashed: compared old\.json, the sweep to 127\.0\.0\.1:9000 started 2026-01-01/);
  assert.equal((JSON.parse(files.get("dir/sweep.json")!) as SweepResult).sizes[0].steps.length, 1);
});
