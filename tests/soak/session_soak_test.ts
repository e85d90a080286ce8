/**
 * Soak: a node process starts and stops the report's Appendix A session (forwarders for the transcoder and syncers,
 * two savers, two reflectors in a VM group's worker) 100 times through the session API, carrying datagrams each
 * time; afterwards it holds no more sockets, descriptors or threads than before the first start.
 *
 * Timers: the node exposes no count of its timers, and Deno none from outside. What a leaked timer would cost is
 * printed instead: the node's voluntary context switches over an idle second before and after (each timer that
 * fires wakes the process), with a bound far below what 100 leaked 250 ms snapshot timers would add (400 a second).
 *
 * Memory: the node's RSS saws between about 110 and 180 MiB with a period of about 100 cycles as V8 collects the
 * workers' isolates (300 cycles, SOAK_CYCLES=300 SOAK_TRACE=1, showed no trend: troughs 108, 112, 114 MiB), so the
 * bound on it is the top of that saw, not the baseline.
 */
import assert from "node:assert/strict";
import { openUdp, openUdpPair } from "../../lib/net/udp.ts";
import { until } from "../_support/until.ts";
import { soakNode } from "./_node.ts";
import { mib, procFigures } from "./_proc.ts";

const LO = "127.0.0.1";
const CYCLES = Number(Deno.env.get("SOAK_CYCLES") ?? 100);
const PER_CYCLE = 20;
/** Leaked wake-ups the idle-second comparison tolerates (see the module doc). */
const WAKEUP_TOLERANCE = 40;
/** RSS after the cycles may exceed the baseline by this much (see the module doc). */
const RSS_TOLERANCE_KIB = 128 * 1024;
/** The test's own fetches keep HTTP connections to the status API alive: their number may differ by one or two. */
const SOCKET_TOLERANCE = 2;

/** Free loopback port pairs (p, p + 1) for the program's four use_RTP inputs; closed again for the node to bind. */
async function freePairs(n: number): Promise<number[]> {
  const ports: number[] = [];
  for (let i = 0; i < n; i++) {
    const [a, b] = openUdpPair(LO, { even: true });
    ports.push(a.local.port);
    await a.close();
    await b.close();
  }
  return ports;
}

function rtp(seq: number): Uint8Array {
  const d = new Uint8Array(12 + 160);
  d[0] = 0x80;
  d[1] = 33;
  d[2] = seq >> 8;
  d[3] = seq & 0xff;
  d.set([0, 0, 0x11, 0x11], 8);
  return d;
}

/** Voluntary context switches of `pid` so far (from /proc, read by sh: Deno wants --allow-all for /proc). */
async function wakeups(pid: number): Promise<number> {
  const out = await new Deno.Command("sh", {
    args: ["-c", 'grep "^voluntary_ctxt_switches" "/proc/$1/status"', "sh", String(pid)],
  }).output();
  return Number(/(\d+)/.exec(new TextDecoder().decode(out.stdout))?.[1] ?? NaN);
}

async function idleWakeups(pid: number): Promise<number> {
  const start = await wakeups(pid);
  await new Promise((r) => setTimeout(r, 1000));
  return (await wakeups(pid)) - start;
}

Deno.test({
  name: "node starts and stops a session 100 times without leaking a socket, a descriptor or a thread",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const started = performance.now();
  const [video, audio, high, low] = await freePairs(4);
  const fixture = await Deno.readTextFile(
    new URL("../fixtures/appendix_a_forwarders.dipronn", import.meta.url),
  );
  const program = fixture
    .replace("DIPRONN_INPUT(10000)", `DIPRONN_INPUT(${video})`)
    .replace("DIPRONN_INPUT(10002)", `DIPRONN_INPUT(${audio})`)
    .replace("DIPRONN_INPUT(12345)", `DIPRONN_INPUT(${high})`)
    .replace("DIPRONN_INPUT(12354)", `DIPRONN_INPUT(${low})`)
    // Each cycle's savers write the files of the one before.
    .replaceAll(/output_file = ("[^"]+");/g, "output_file = $1; overwrite = true;");
  assert.equal(program.match(/overwrite = true/g)?.length, 2);
  await using soak = await soakNode();
  const { process: node, api, auth } = soak;
  const name = "synchro_infrastructure.first_tests";
  const source = openUdp({ host: LO, port: 0 });
  try {
    const to = source.destinations([{ host: LO, port: video }]);
    const cycle = async (i: number) => {
      const up = await fetch(`${api}?file=appendix_a.dipronn`, {
        method: "POST",
        body: program,
        headers: auth,
      });
      const body = await up.json();
      assert.equal(up.status, 201, `cycle ${i}: ${JSON.stringify(body)}`);
      source.send(Array.from({ length: PER_CYCLE }, (_, k) => rtp(i * PER_CYCLE + k)), to);
      // The session carries them: both savers' sides of the graph count every one.
      await until(`cycle ${i}'s datagrams at the video duplicator`, async () => {
        const s = await (await fetch(`${api}/${name}`)).json() as {
          aps: { name: string; inputs: { packets: number }[] }[];
        };
        const dup = s.aps.find((a) => a.name === "Dup_V")!;
        return dup.inputs.reduce((n, p) => n + p.packets, 0) >= PER_CYCLE;
      });
      const down = await fetch(`${api}/${name}`, { method: "DELETE", headers: auth });
      assert.equal(down.status, 200, `cycle ${i}: stop`);
      await down.body?.cancel();
    };

    // One cycle first, so that what the first session makes once for the node's life (pools, compiled code) is
    // in the baseline.
    await cycle(0);
    const before = await procFigures(node.pid);
    const idleBefore = await idleWakeups(node.pid);
    let peak = before;
    for (let i = 1; i <= CYCLES; i++) {
      await cycle(i);
      if (i === CYCLES / 2) peak = await procFigures(node.pid);
      if (Deno.env.get("SOAK_TRACE") && i % 25 === 0) {
        console.log(i, JSON.stringify(await procFigures(node.pid)));
      }
    }
    assert.deepEqual(await (await fetch(api)).json(), [], "no session left");
    // Sockets are closed when stop answers; a worker's thread may take a moment to be joined, and the runtime's
    // blocking pool (where the FFI receives wait) keeps an idle thread for 10 s before it ends it.
    await until(
      "the node's threads back to the baseline",
      async () => {
        return (await procFigures(node.pid)).threads <= before.threads;
      },
      30_000,
      250,
    );
    const after = await procFigures(node.pid);
    const idleAfter = await idleWakeups(node.pid);
    console.log(
      `session soak: ${CYCLES + 1} start/stop cycles of the Appendix A session, ${
        (CYCLES + 1) * PER_CYCLE
      } ` +
        `datagrams carried\n  node fds ${before.fds} -> ${after.fds} (sockets ${before.sockets} -> ` +
        `${after.sockets}), threads ${before.threads} -> ${after.threads} (${peak.threads} between cycles at ` +
        `cycle ${CYCLES / 2}), RSS ${mib(before.rssKiB)} -> ${mib(after.rssKiB)} (tolerance ` +
        `${mib(RSS_TOLERANCE_KIB)}); idle wake-ups per second ` +
        `${idleBefore} -> ${idleAfter} (timers: the node exposes none); ` +
        `${((performance.now() - started) / 1000).toFixed(1)} s`,
    );
    assert.ok(after.sockets <= before.sockets + SOCKET_TOLERANCE, "no socket leaked");
    assert.ok(after.fds <= before.fds + SOCKET_TOLERANCE, "no descriptor leaked");
    assert.ok(after.threads <= before.threads, "no worker thread leaked");
    assert.ok(
      after.rssKiB <= before.rssKiB + RSS_TOLERANCE_KIB,
      `RSS ${mib(before.rssKiB)} -> ${mib(after.rssKiB)}`,
    );
    assert.ok(idleAfter <= idleBefore + WAKEUP_TOLERANCE, `idle wake-ups ${idleBefore} -> ${idleAfter}`);
  } finally {
    await source.close();
  }
});
