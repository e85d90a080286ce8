/** Node usage from the node's counters and host figures, with rates over the injected clock. */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { type NodeFigures, parseProcStat, parseUsage, UsageSampler } from "../../lib/cluster/usage.ts";

Deno.test("parseProcStat reads busy and total time from the cpu line", () => {
  const text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
  assert.deepEqual(parseProcStat(text), { busy: 150, total: 1000 });
  assert.equal(parseProcStat("garbage"), null);
});

Deno.test("UsageSampler gives rates over the interval between samples, and CPU from /proc/stat deltas", () => {
  const clock = new ManualClock(0);
  let figures: NodeFigures = {
    sessions: 2,
    aps: 5,
    free_ports: 90,
    packets_in: 0,
    packets_out: 0,
    bytes_in: 0,
    bytes_out: 0,
  };
  let cpu = { busy: 0, total: 0 };
  const sampler = new UsageSampler("brno", clock, () => figures, {
    cpuTimes: () => cpu,
    loadavg: () => 1,
    cores: 4,
    memory: () => ({ total: 1000, available: 250 }),
  });
  const first = sampler.sample();
  assert.deepEqual(first, {
    name: "brno",
    cpu: 0.25,
    memory: 0.75,
    pps_in: 0,
    pps_out: 0,
    bps_in: 0,
    bps_out: 0,
    sessions: 2,
    aps: 5,
    free_ports: 90,
  });
  clock.advance(2000);
  figures = { ...figures, packets_in: 2000, packets_out: 4000, bytes_in: 250_000, bytes_out: 500_000 };
  cpu = { busy: 300, total: 1000 };
  const second = sampler.sample();
  assert.equal(second.pps_in, 1000);
  assert.equal(second.pps_out, 2000);
  assert.equal(second.bps_in, 1_000_000);
  assert.equal(second.bps_out, 2_000_000);
  assert.equal(second.cpu, 0.3);
  // A sample soon after keeps the rates of the last full interval.
  clock.advance(10);
  assert.equal(sampler.sample().pps_in, 1000);
});

Deno.test("parseUsage refuses a peer's answer that is not a usage of that peer", () => {
  const good = {
    name: "prague",
    cpu: 0.5,
    memory: 2,
    pps_in: 1,
    pps_out: 1,
    bps_in: 1,
    bps_out: 1,
    sessions: 0,
    aps: 0,
    free_ports: 3,
  };
  assert.equal((parseUsage(good, "prague") as { memory: number }).memory, 1);
  assert.match(parseUsage(good, "brno") as string, /names node "prague", not "brno"/);
  assert.match(parseUsage({ ...good, cpu: "x" }, "prague") as string, /cpu is not a number/);
  assert.match(parseUsage(null, "prague") as string, /not an object/);
});
