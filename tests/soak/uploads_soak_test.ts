/**
 * Soak: a node process starts and stops a session of uploaded active programs (config/examples/uploaded.dipronn:
 * the watermark and the RTP filter in one sandbox process, a built-in counter in the group's worker) 40 times through
 * the session API, carrying datagrams each time; afterwards it holds no more descriptors or threads than before,
 * no sandbox process is left, and nothing of the uploads is left on disk. Each start makes a sandbox: a process, its
 * socket, its permission-audit FIFO and a private directory, which is where a leak would show (the audit reader once
 * kept a descriptor and a thread per sandbox for good).
 */
import assert from "node:assert/strict";
import { openUdp } from "../../lib/net/udp.ts";
import { freeUdpPort } from "../_support/ports.ts";
import { until } from "../_support/until.ts";
import { soakNode } from "./_node.ts";
import { mib, procFigures } from "./_proc.ts";

const LO = "127.0.0.1";
const CYCLES = Number(Deno.env.get("SOAK_UPLOAD_CYCLES") ?? 40);
const PER_CYCLE = 20;
/** The test's own fetches keep HTTP connections to the status API alive: their number may differ by one or two. */
const FD_TOLERANCE = 2;
const EXAMPLES = new URL("../../config/examples/", import.meta.url);

function rtp(seq: number, payloadType: number): Uint8Array {
  const d = new Uint8Array(12 + 160);
  d[0] = 0x80;
  d[1] = payloadType;
  d[2] = seq >> 8;
  d[3] = seq & 0xff;
  d.set([0, 0, 0x22, 0x22], 8);
  return d;
}

/** The pids of `pid`'s child processes (from /proc, read by sh: Deno wants --allow-all for /proc). */
async function children(pid: number): Promise<number[]> {
  const out = await new Deno.Command("sh", {
    args: ["-c", 'cat /proc/"$1"/task/*/children', "sh", String(pid)],
    stderr: "null",
  }).output();
  return new TextDecoder().decode(out.stdout).split(/\s+/).filter(Boolean).map(Number);
}

async function entries(dir: string): Promise<string[]> {
  try {
    return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    throw error;
  }
}

Deno.test({
  name:
    "node starts and stops an uploaded session 40 times without leaking a process, a descriptor, a thread or a file",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const started = performance.now();
  const input = freeUdpPort();
  const program = (await Deno.readTextFile(new URL("uploaded.dipronn", EXAMPLES)))
    .replace("DIPRONN_INPUT(10040)", `DIPRONN_INPUT(${input})`);
  const modules = await Promise.all(
    ["watermark.ts", "rtp_filter.ts"].map(async (name) =>
      new File([await Deno.readTextFile(new URL(name, EXAMPLES))], name)
    ),
  );
  await using soak = await soakNode();
  const { process: node, dataDir, api, auth } = soak;
  const name = "uploaded_example";
  const source = openUdp({ host: LO, port: 0 });
  try {
    const to = source.destinations([{ host: LO, port: input }]);
    const cycle = async (i: number) => {
      const form = new FormData();
      form.append("program", new File([program], "uploaded.dipronn"));
      for (const m of modules) form.append("module", m);
      const up = await fetch(api, { method: "POST", body: form, headers: auth });
      const body = await up.json();
      assert.equal(up.status, 201, `cycle ${i}: ${JSON.stringify(body)}`);
      // Half of them payload type 0, which the filter drops: the counter sees the other half.
      source.send(Array.from({ length: PER_CYCLE }, (_, k) => rtp(i * PER_CYCLE + k, k % 2 ? 0 : 96)), to);
      await until(`cycle ${i}'s datagrams through the uploaded programs`, async () => {
        const s = await (await fetch(`${api}/${name}`)).json() as {
          aps: { name: string; inputs: { packets: number }[] }[];
        };
        const count = s.aps.find((a) => a.name === "Count")!;
        return count.inputs.reduce((n, p) => n + p.packets, 0) >= PER_CYCLE / 2;
      });
      const down = await fetch(`${api}/${name}`, { method: "DELETE", headers: auth });
      assert.equal(down.status, 200, `cycle ${i}: stop`);
      await down.body?.cancel();
    };

    // One cycle first: what the first session makes once for the node's life is in the baseline.
    await cycle(0);
    const before = await procFigures(node.pid);
    for (let i = 1; i <= CYCLES; i++) await cycle(i);
    assert.deepEqual(await (await fetch(api)).json(), [], "no session left");
    // The blocking pool keeps an idle thread for 10 s before it ends it.
    await until(
      "the node's threads and children back to the baseline",
      async () =>
        (await procFigures(node.pid)).threads <= before.threads && (await children(node.pid)).length === 0,
      30_000,
      250,
    );
    const after = await procFigures(node.pid);
    const left = await entries(`${dataDir}/uploads`);
    console.log(
      `uploads soak: ${CYCLES + 1} start/stop cycles of an uploaded session (a sandbox process each), ` +
        `${(CYCLES + 1) * PER_CYCLE} datagrams sent\n  node fds ${before.fds} -> ${after.fds}, threads ` +
        `${before.threads} -> ${after.threads}, RSS ${mib(before.rssKiB)} -> ${mib(after.rssKiB)}, ` +
        `sandbox processes left 0, upload directories left ${left.length}; ` +
        `${((performance.now() - started) / 1000).toFixed(1)} s`,
    );
    assert.ok(after.fds <= before.fds + FD_TOLERANCE, `descriptors ${before.fds} -> ${after.fds}`);
    assert.ok(after.threads <= before.threads, `threads ${before.threads} -> ${after.threads}`);
    assert.deepEqual(left, [], "nothing of the uploads left in the data directory");
  } finally {
    await source.close();
  }
});
