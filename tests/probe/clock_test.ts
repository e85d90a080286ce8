/**
 * The probe's ends on an injected clock: pacing, the idle and join timeouts follow the ManualClock a test advances,
 * never the wall clock (datagrams still cross loopback for real).
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { openUdp } from "../../lib/net/udp.ts";
import { PROBE_HEADER, writeProbe } from "../../lib/probe/packet.ts";
import { probeRecv, probeSend } from "../../lib/probe/run.ts";
import { until } from "../_support/until.ts";

const LO = "127.0.0.1";
const T0 = 1_700_000_000_000;
/** One turn of the event loop, so that a loop woken by the clock runs before the next step. */
const turn = () => new Promise((r) => setTimeout(r, 0));

Deno.test("probeSend paces by its clock: 100/s for 1 s of the clock is 100 datagrams, whatever the wall clock did", async () => {
  const clock = new ManualClock(T0);
  const receiver = openUdp({ host: LO, port: 0 });
  try {
    const sending = probeSend({
      to: receiver.local,
      size: 64,
      rate: [100, 100],
      durationMs: 1000,
      count: 0,
      stream: 1,
      impl: "auto",
      clock,
    });
    let done = false;
    sending.then(() => done = true);
    for (let t = 0; t <= 1100 && !done; t += 10) {
      clock.advance(10);
      await turn();
    }
    const report = await sending;
    assert.equal(report.sent, 100);
    assert.equal(report.duration_s, 1);
    assert.equal(report.packets_per_s, 100);
  } finally {
    await receiver.close();
  }
});

Deno.test("probeRecv stops after its idle time on its clock once datagrams came", async () => {
  const clock = new ManualClock(T0);
  const lines: string[] = [];
  let ready!: (port: number) => void;
  const listening = new Promise<number>((r) => ready = r);
  const receiving = probeRecv({
    listen: { host: LO, port: 0 },
    durationMs: 60_000,
    count: 0,
    idleMs: 5_000,
    impl: "auto",
    progress: (line) => lines.push(line),
    ready: (local) => ready(local.port),
    clock,
  });
  const port = await listening;
  const sender = openUdp({ host: LO, port: 0 });
  try {
    const packets = [0, 1, 2].map((seq) => {
      const d = new Uint8Array(PROBE_HEADER + 8);
      writeProbe(d, seq, 1, clock.nowUs());
      return d;
    });
    sender.send(packets, sender.destinations([{ host: LO, port }]));
    // A progress line comes every second of the clock; wait for the one that has counted the three.
    await until("the three datagrams counted", async () => {
      clock.advance(250);
      await turn();
      return lines.some((l) => l.startsWith("probe recv: 3 received"));
    });
    let stopped = false;
    receiving.then(() => stopped = true);
    await turn();
    assert.equal(stopped, false, "still listening: less than the idle time has passed since they came");
    clock.advance(5_000);
    const report = await receiving;
    assert.equal(report.received, 3);
  } finally {
    await sender.close();
  }
});

Deno.test("probeRecv --join gives up after 5 s of its clock without an answer, naming the reflector", async () => {
  const clock = new ManualClock(T0);
  // A bound socket that never answers stands for a reflector that is not there.
  const silent = openUdp({ host: LO, port: 0 });
  try {
    const receiving = probeRecv({
      listen: { host: LO, port: 0 },
      join: silent.local,
      durationMs: 60_000,
      count: 0,
      idleMs: 400,
      impl: "auto",
      clock,
    });
    clock.advance(5_250);
    await assert.rejects(
      receiving,
      new RegExp(`Cannot join the reflector at ${LO}:${silent.local.port}: no answer`),
    );
  } finally {
    await silent.close();
  }
});
