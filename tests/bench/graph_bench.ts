/**
 * Session graph benchmark, all paths in one run on one machine. For each datagram size it finds the highest offered
 * rate with loss <= 0.1% (a doubling search, then bisection) through:
 *   relay          the edgenode relay role (relay.relays, fast UDP path): the reference
 *   chain N        an edgenode node session whose program is N `localservice.forwarder` APs in a row, from
 *                  DIPRONN_INPUT(port) to DIPRONN_OUTPUT(sink), for N = 1, 4 and 8 (fast UDP path)
 *   vm chain 4     the same 4 forwarders inside one `{ VM ... }` group: every batch crosses into the group's worker
 *                  isolate and back (two transferred buffers per batch)
 * and the p50/p99 delay each adds at 10k datagrams/s (minus the direct path: sender straight to the receiver). The
 * sender is `edgenode probe send` in its own process; receivers run here on the fast sockets. Prints figures and
 * ratios to the relay; exits non-zero only when it could not run.
 *
 * Figures: highest loss-free datagrams/s per path and size with the ratio to the relay; delay added at 10k/s.
 *
 *   make bench / deno task bench graph   quick: 100 and 1450 B, chain 8 and vm chain 4, 1 s trials, from 40k/s (~2 min)
 *   BENCH_FULL=1 deno task bench graph   full: chains 1, 4 and 8 too, 1.5 s trials, 5 bisection steps (~6 min)
 *   BENCH_SIZES=100 BENCH_SECONDS=1 deno task bench graph   any part of either, by hand
 */
import { startEdgenode, tempConfig } from "../e2e/_process.ts";
import { announce, benchFull } from "./_mode.ts";
import {
  benchSeconds,
  benchSizes,
  DELAY_RATE,
  direct,
  freePort,
  LO,
  LOSS_LIMIT,
  measure,
  type Measured,
  type Path,
  relayRolePath,
  signed,
} from "./_udp_rate.ts";

const SIZES = benchSizes("100,1450");
const SECONDS = benchSeconds();
// Quick: the longest chain only (one forwarder is uploaded_bench's "builtin" path, in the same `make bench`).
const CHAINS = benchFull() ? [1, 4, 8] : [8];

/**
 * A program of `length` forwarders in a row, F1 fed by DIPRONN_INPUT(`input`), the last sending to `sink`; with
 * `vm`, all of them in one VM group.
 */
function chainProgram(length: number, ports: { input: number; sink: number }, vm = false): string {
  const lines = [`Project bench_chain_${length};`];
  if (vm) lines.push(`{ VM name="bench_vm" ref=bench_image;`);
  for (let i = 1; i <= length; i++) {
    const input = i === 1 ? `in(DIPRONN_INPUT(${ports.input}))` : "in";
    const output = i === length ? `DIPRONN_OUTPUT("${LO}:${ports.sink}")` : `F${i + 1}.in`;
    lines.push(
      `{ AP name="F${i}" ref=localservice.forwarder;`,
      `    inputs = ${input};`,
      `    outputs = out(${output});`,
      "}",
    );
  }
  if (vm) lines.push("}");
  return lines.join("\n") + "\n";
}

function chainPath(length: number, vm = false): Path {
  return {
    name: `${vm ? "vm " : ""}chain ${length}`,
    participants: 1,
    async start(sinks) {
      const dir = await Deno.makeTempDir({ prefix: "edgenode_graph_bench_" });
      const held: AsyncDisposable[] = [{
        [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
      }];
      const input = freePort();
      try {
        const program = `${dir}/chain.dipronn`;
        await Deno.writeTextFile(program, chainProgram(length, { input, sink: sinks[0].local.port }, vm));
        const config = await tempConfig([
          "roles: [node]",
          "log:\n  level: warn",
          "node:",
          `  bind: ${LO}`,
          `  data_dir: ${dir}`,
          "  udp: fast",
          "  allow_loopback_output: true", // the sink listens on loopback
          `  sessions: [${program}]`,
          "",
        ].join("\n"));
        held.unshift(config);
        const node = startEdgenode(["--config", config.path, "--status", `${LO}:0`, "--log-level", "info"]);
        held.unshift(node);
        await node.waitForLine(
          new RegExp(`msg="session started" session=bench_chain_${length} aps=${length} `),
        );
      } catch (error) {
        for (const h of held) await h[Symbol.asyncDispose]();
        throw error;
      }
      const stop = async () => {
        for (const h of held) await h[Symbol.asyncDispose]();
      };
      return { to: `${LO}:${input}`, stop };
    },
  };
}

async function main(): Promise<number> {
  announce(
    "graph_bench",
    "loss-free datagrams/s per path and size with the ratio to the relay, delay at 10k/s",
  );
  const relay = relayRolePath("relay", "fast");
  const paths = [relay, ...CHAINS.map((n) => chainPath(n)), chainPath(4, true)];
  console.log(
    `Graph benchmark: loss limit ${LOSS_LIMIT}%, ${SECONDS} s per trial, ${Deno.build.os}, ${navigator.hardwareConcurrency} cores`,
  );

  // The direct path only gives the delay baseline; its rate is udp_bench's business.
  const base = (await measure(direct, { sizes: [], seconds: SECONDS })).delay;
  const results = new Map<string, Measured>();
  for (const path of paths) results.set(path.name, await measure(path, { sizes: SIZES, seconds: SECONDS }));

  const rate = (path: Path, size: number) => results.get(path.name)!.rates.get(size)!;
  console.log(`\nHighest rate with loss <= ${LOSS_LIMIT}% (datagrams/s)`);
  console.log(["path", ...SIZES.map((s) => `${s} B`), ...SIZES.map((s) => `${s} B vs relay`)].join(" | "));
  for (const path of paths) {
    console.log([
      path.name,
      ...SIZES.map((s) => Math.round(rate(path, s)).toString()),
      ...SIZES.map((s) => (rate(path, s) / rate(relay, s)).toFixed(2)),
    ].join(" | "));
  }

  console.log(
    `\nDelay added at ${DELAY_RATE} datagrams/s of 100 B (one-way, microseconds, minus the direct path)`,
  );
  console.log(`direct: p50 ${base.p50.toFixed(0)} us, p99 ${base.p99.toFixed(0)} us (absolute)`);
  for (const path of paths) {
    const d = results.get(path.name)!.delay;
    // The absolute figures too: one scheduling stall in the direct trial moves its p99, and every difference with it.
    console.log(
      `${path.name}: p50 ${signed(d.p50 - base.p50)} us, p99 ${signed(d.p99 - base.p99)} us ` +
        `(absolute: p50 ${d.p50.toFixed(0)} us, p99 ${d.p99.toFixed(0)} us)`,
    );
  }
  return 0;
}

try {
  Deno.exit(await main());
} catch (error) {
  console.error(`graph_bench could not run: ${error instanceof Error ? error.stack : error}`);
  Deno.exit(1);
}
