/**
 * The report's infrastructure tests (its section 5) on the four-node test bed: the whole four-node session against a
 * plain UDP relay chain in the same run, on the bridge variant of the bed (veth pairs to a kernel bridge: kernel
 * speed, no delay), so that what is measured is the nodes, not the delay line.
 *
 *   four-node session  config/sessions/presentation_4nodes.dipronn started through Brno's operator route
 *                      (tests/e2e/_four_nodes.ts), the transcoder a forwarder (as the report's own tests, footnote 5),
 *                      the syncers real; links between the nodes on their link ports
 *   relay chain        the edgenode relay role in each namespace, the same topology without the graph: Brno relays
 *                      10000 and 10002 to Prague and Liberec, each a reflector (registration 12345 / 12354) with
 *                      Pilsen as a static participant; Pilsen's "files" are two `probe recv --listen` processes
 *
 * Each trial: `edgenode probe send --rtp` in brno's namespace, a video-like stream (payload type 32, 90 kHz) of the
 * size under test at the rate under test to 10000 and an audio-like one (type 11, 50/s of 1292 B) to 10002, each with
 * sender reports; four `probe recv --rtp --join` analysers (in brno and pilsen, joined to both reflectors), and both
 * saved files in pilsen's data_dir (read back as pcap) count per SSRC. Loss = (sent - received) / sent at every
 * analyser and file; delay = the analysers' one-way delay (all namespaces share the host's clock, so Pilsen has one
 * too, which the report's could not measure).
 *
 * Prints, per size: the highest input rate with loss <= 0.1% everywhere (doubling from BENCH_START, then bisection),
 * shaped as the report's Table 6 (per receiver: Prague, Liberec, Pilsen from each) and Table 8 (the Brno node) side
 * by side with its figures, and the loss and delay at the rates tried (its Figures 7-10), rising. Exits non-zero only
 * when it cannot run (no root, no namespaces).
 *
 *   deno task bench cluster                 quick: 100 and 1450 B, 1 s trials, from 16k/s, 2 bisection steps (about 2 minutes)
 *   BENCH_FULL=1 deno task bench cluster    full: 100, 500, 1000, 1450 B, 2 s trials, 4 steps, two tries per rate,
 *                                           and trials at 0.5 .. 1.5 x the loss-free rate
 *   BENCH_SIZES=1450 BENCH_PATHS=session    one size, one path
 *   BENCH_VERBOSE=1                         each trial, and for a lossy one the per-link counters over it (where
 *                                           the loss was: on a link, or inside a node)
 *   BENCH_SYNCERS=forwarders                the syncers as forwarders too (what the syncers cost)
 *
 * A trial whose sender or analyser fails (a process ended by a signal) is made once more; a second failure ends the
 * run. A pinned AP is not refused for the box's load here (node.cluster.load_threshold 2): the bench loads it.
 */
import { announce, benchFull, benchNumber } from "./_mode.ts";
import { benchSizes, LOSS_LIMIT } from "./_udp_rate.ts";
import { poll } from "../_support/until.ts";
import {
  FourNodes,
  type InNetns,
  LINKS,
  NODES,
  type Participant,
  PORTS,
  receivedOf,
  SESSION,
} from "../e2e/_four_nodes.ts";

const SIZES = benchSizes("100,1450", "100,500,1000,1450");
const SECONDS = benchNumber("BENCH_SECONDS", 1, 2);
const BISECT = benchNumber("BENCH_BISECT", 2, 4);
const TRIES = benchNumber("BENCH_TRIES", 1, 2);
const START = benchNumber("BENCH_START", 16_000, 4000);
const AUDIO_SIZE = 12 + 1280;
const AUDIO_RATE = 50;
/** The report's Table 6 (Mb/s: Prague, Liberec, Pilsen from Prague, Pilsen from Liberec) and Table 8 (Brno node). */
const TABLE6: Record<number, number[]> = {
  100: [74.5, 62, 74.5, 62],
  500: [298.5, 291, 298.5, 291],
  1000: [461.5, 444.5, 461.5, 444.5],
  1450: [468.5, 459, 468.5, 459],
};
const TABLE8: Record<number, number[]> = {
  100: [86.5, 64.5, 44.2, 34.1],
  500: [398.4, 291.1, 218.7, 163.0],
  1000: [778.2, 407.9, 324.0, 275.4],
  1450: [828.8, 460.1, 411.1, 365.1],
};
/** Receivers in the order of Table 6, then the two files. */
const RECEIVERS = [
  "brno->prague",
  "brno->liberec",
  "pilsen->prague",
  "pilsen->liberec",
  "file high",
  "file low",
];
const RELAY_STATUS_PORT = 8081;
const SETTLE_MS = 700;
const VERBOSE = Deno.env.get("BENCH_VERBOSE") === "1";
/** BENCH_SYNCERS=forwarders: the syncers replaced by forwarders (what the syncers cost). */
const SYNCERS = Deno.env.get("BENCH_SYNCERS") === "forwarders" ? "forwarders" : "real";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Trial {
  readonly rate: number;
  /** Input Mb/s (video + audio UDP payloads as sent). */
  readonly mbps: number;
  /** Loss percent per RECEIVERS entry. */
  readonly loss: number[];
  readonly worst: number;
  readonly where: string;
  /** One-way delay at the analysers in brno and in pilsen (worst of the two reflectors), µs. */
  readonly brno: { p50: number; p99: number } | null;
  readonly pilsen: { p50: number; p99: number } | null;
}

interface Path {
  readonly name: string;
  /** Participants joined on each reflector (the smaller count). */
  joined(): Promise<number>;
  /** Before a trial's sources start (the relay chain's Pilsen receivers). */
  beforeTrial(): void;
  /** Per link (a->b): packets a sent, b received, b counted lost; the session's link ports only. */
  links?(): Promise<Map<string, { tx: number; rx: number; lost: number }>>;
  /** After the sources: what each "file" holds of these SSRCs. */
  files(ssrcs: number[], total: number): Promise<number[]>;
  stop(): Promise<void>;
}

function sessionPath(run: FourNodes): Path {
  return {
    name: "session",
    async joined() {
      return Math.min(
        await run.participantsOf("prague", "Reflector_high"),
        await run.participantsOf("liberec", "Reflector_low"),
      );
    },
    beforeTrial() {},
    async links() {
      const out = new Map<string, { tx: number; rx: number; lost: number }>();
      const all = new Map(await Promise.all(NODES.map(async (n) => [n, await run.links(n)] as const)));
      for (const [a, b] of LINKS) {
        const tx = all.get(a)?.get(b);
        const rx = all.get(b)?.get(a);
        out.set(`${a}->${b}`, { tx: tx?.tx_packets ?? 0, rx: rx?.rx_packets ?? 0, lost: rx?.lost ?? 0 });
      }
      return out;
    },
    async files(ssrcs, total) {
      // The savers flush once a second: read until both hold everything, or two reads a flush apart agree.
      let last = -1;
      for (let i = 0; i < 10; i++) {
        await sleep(i === 0 ? 300 : 1100);
        await run.readFiles();
        const now = run.files.reduce((n, f) => n + f.of(ssrcs), 0);
        if (now === last || now >= total * run.files.length) break;
        last = now;
      }
      return run.files.map((f) => f.of(ssrcs));
    },
    async stop() {
      const r = await run.stopSession();
      if (r.status !== 200) console.log(`  session: stop answered ${r.status} ${JSON.stringify(r.body)}`);
    },
  };
}

/** The relay role in brno, prague and liberec: the session's topology as plain relays and reflectors. */
async function relayChain(run: FourNodes): Promise<Path> {
  const at = (n: string) => run.address(n);
  const configs: Record<string, string[]> = {
    brno: [
      "  relays:",
      ...[["v", PORTS.video], ["a", PORTS.audio]].map(([name, port]) =>
        `    - {name: ${name}, listen: "${at("brno")}:${port}", targets: ["${at("prague")}:20000", "${
          at("liberec")
        }:20000"]}`
      ),
    ],
    prague: [
      "  reflectors:",
      `    - {name: high, data: "${at("prague")}:20000", registration: "${at("prague")}:${PORTS.high}", ` +
      `timeout: 2s, max_per_address: 100, participants: ["${at("pilsen")}:30000"]}`,
    ],
    liberec: [
      "  reflectors:",
      `    - {name: low, data: "${at("liberec")}:20000", registration: "${at("liberec")}:${PORTS.low}", ` +
      `timeout: 2s, max_per_address: 100, participants: ["${at("pilsen")}:30002"]}`,
    ],
  };
  const relays: InNetns[] = [];
  for (const [node, lines] of Object.entries(configs)) {
    const path = `${run.testbed.dir}/${node}/relay.yaml`;
    await Deno.writeTextFile(
      path,
      [
        "roles: [relay]",
        "log:\n  level: warn",
        `status:\n  listen: "${at(node)}:${RELAY_STATUS_PORT}"`,
        "relay:",
        "  udp: fast",
        ...lines,
        "",
      ].join("\n"),
    );
    relays.push(run.edgenode(node, `relay in ${node}`, ["--config", path]));
  }
  const relayStatus = async (node: string) => {
    try {
      const r = await fetch(`http://${at(node)}:${RELAY_STATUS_PORT}/status`, {
        signal: AbortSignal.timeout(1000),
      });
      return r.ok ? await r.json() : null;
    } catch {
      return null;
    }
  };
  for (const node of Object.keys(configs)) {
    await poll(`the relay in ${node}`, () => relayStatus(node), 30_000, 200);
  }
  /** Joined participants of a relay reflector (its static one left out). */
  const joinedOn = async (node: string, name: string) => {
    const s = await relayStatus(node);
    const ps = (s?.roles?.relay?.reflectors?.[name]?.participants ?? []) as { origin?: string }[];
    return ps.filter((p) => p.origin === "join").length;
  };
  let sinks: InNetns[] = [];
  return {
    name: "relay chain",
    async joined() {
      return Math.min(await joinedOn("prague", "high"), await joinedOn("liberec", "low"));
    },
    beforeTrial() {
      sinks = [30000, 30002].map((port) =>
        run.edgenode("pilsen", `pilsen sink ${port}`, [
          "probe",
          "recv",
          "--listen",
          `${at("pilsen")}:${port}`,
          "--rtp",
          "--json",
          "--quiet",
          "--duration",
          `${SECONDS + 30}s`,
          "--idle",
          "1s",
        ])
      );
    },
    async files(ssrcs) {
      const reports = await run.interrupt(sinks);
      return reports.map((r) => receivedOf(r, ssrcs));
    },
    async stop() {
      for (const r of relays) {
        try {
          r.child.kill("SIGTERM");
        } catch {
          // Ended already.
        }
        await r.output;
      }
    },
  };
}

async function trial(run: FourNodes, path: Path, size: number, rate: number): Promise<Trial> {
  // The last trial's analysers are gone: the reflectors drop them after their timeout (2 s) of silence.
  await poll(
    `the last trial's participants to expire (${path.name})`,
    async () => (await path.joined()) === 0,
    15_000,
    200,
  );
  const linksBefore = VERBOSE ? await path.links?.() : undefined;
  path.beforeTrial();
  const participants: Participant[] = run.participants({ durationS: SECONDS + 30, idleS: 1 });
  try {
    await poll(`the analysers to join (${path.name})`, async () => (await path.joined()) >= 2, 20_000, 100);
  } catch (error) {
    for (const p of participants) p.child.kill("SIGKILL");
    throw error;
  }
  const sent = await run.send({ size, rate, seconds: SECONDS, audioSize: AUDIO_SIZE, audioRate: AUDIO_RATE });
  // What is in flight (a syncer holds each datagram for its delay) arrives within this; then the analysers end.
  await sleep(SETTLE_MS);
  const reports = await run.interrupt(participants);
  const ssrcs = [sent.video.rtp!.ssrc, sent.audio.rtp!.ssrc];
  const total = sent.video.sent + sent.audio.sent;
  const files = await path.files(ssrcs, total);
  const got = [...reports.map((r) => receivedOf(r, ssrcs)), ...files];
  const loss = got.map((n) => Math.max(0, ((total - n) / total) * 100));
  let worst = 0;
  loss.forEach((l, i) => {
    if (l > loss[worst]) worst = i;
  });
  const delay = (at: string) => {
    const ds = reports.filter((_, i) => participants[i].at === at).map((r) => r.delay_us).filter((d) =>
      d !== null
    );
    return ds.length
      ? { p50: Math.max(...ds.map((d) => d!.p50)), p99: Math.max(...ds.map((d) => d!.p99)) }
      : null;
  };
  if (linksBefore && loss[worst] > LOSS_LIMIT) {
    // Where the loss was: on a link (its counters), or inside a node (a link delivered all it was sent).
    const after = (await path.links?.())!;
    const lines = [...after].map(([k, v]) => {
      const b = linksBefore.get(k) ?? { tx: 0, rx: 0, lost: 0 };
      return `${k} sent ${v.tx - b.tx} received ${v.rx - b.rx} lost ${v.lost - b.lost}`;
    });
    console.log(`    links over the trial (${total} sent into brno): ${lines.join("; ")}`);
  }
  const seconds = Math.max(sent.video.duration_s, 1e-3);
  return {
    rate: total / seconds,
    mbps: ((sent.video.sent * size + sent.audio.sent * AUDIO_SIZE) * 8) / seconds / 1e6,
    loss,
    worst: loss[worst],
    where: loss[worst] > 0 ? RECEIVERS[worst] : "-",
    brno: delay("brno"),
    pilsen: delay("pilsen"),
  };
}

interface Search {
  readonly best: Trial | null;
  /** Every trial made, for the rising-rate table. */
  readonly trials: Trial[];
}

async function search(run: FourNodes, path: Path, size: number): Promise<Search> {
  const trials: Trial[] = [];
  const passes = async (rate: number) => {
    let last: Trial | null = null;
    for (let i = 0; i < TRIES; i++) {
      const began = performance.now();
      try {
        last = await trial(run, path, size, rate);
      } catch (error) {
        // One process of the trial failed (seen: a sender ended by a signal from outside): the trial once more.
        console.log(
          `    ${path.name} ${size} B ${rate}/s: trial failed, once more: ${(error as Error).message}`,
        );
        last = await trial(run, path, size, rate);
      }
      trials.push(last);
      if (VERBOSE) {
        console.log(
          `    ${path.name} ${size} B ${rate}/s: worst loss ${last.worst.toFixed(3)}% (${last.where}), ` +
            `${((performance.now() - began) / 1000).toFixed(1)} s`,
        );
      }
      if (last.worst <= LOSS_LIMIT) return last;
    }
    return null;
  };
  let best: Trial | null = null;
  let lo = 0;
  let hi = 0;
  for (let rate = START; rate <= 1_280_000; rate *= 2) {
    const t = await passes(rate);
    if (!t) {
      hi = rate;
      break;
    }
    [best, lo] = [t, rate];
  }
  for (let i = 0; hi && i < BISECT && hi - lo > hi * 0.03; i++) {
    const mid = Math.round((lo + hi) / 2);
    const t = await passes(mid);
    if (t) [best, lo] = [t, mid];
    else hi = mid;
  }
  if (benchFull() && lo) {
    for (const f of [0.5, 0.75, 1.25, 1.5]) await passes(Math.round(lo * f));
  }
  return { best, trials };
}

const us = (
  d: { p50: number; p99: number } | null,
) => (d ? `${(d.p50 / 1000).toFixed(2)}/${(d.p99 / 1000).toFixed(2)}` : "-");

/** The highest rate tried up to which receiver `i` lost <= LOSS_LIMIT in every trial, Mb/s in. */
function bestFor(s: Search | undefined, i: number): number {
  let best = 0;
  for (const t of [...(s?.trials ?? [])].sort((a, b) => a.rate - b.rate)) {
    if (t.loss[i] > LOSS_LIMIT) break;
    best = t.mbps;
  }
  return best;
}

async function main(): Promise<number> {
  announce(
    "cluster_bench",
    "the four-node session's highest loss-free input rate per size against a relay chain on the same bed, as the " +
      "report's Tables 6 and 8 beside its figures, and loss and delay at the rates tried",
  );
  const only = Deno.env.get("BENCH_PATHS")?.split(",").map((s) => s.trim());
  const want = (name: string) => !only || only.some((o) => name.startsWith(o));
  const t0 = performance.now();
  await using run = await FourNodes.start({
    link: "bridge",
    // The savers may write whatever a trial sends (1 TiB each): the node's quota allows both.
    nodeSection: () => ({ saver_quota: "4096GiB" }),
  });
  console.log(
    `Four-node bench: bridge bed (no delay), loss limit ${LOSS_LIMIT}% at 4 analysers and 2 files, ${SECONDS} s ` +
      `trials, video + audio (${AUDIO_RATE}/s of ${AUDIO_SIZE} B), ${TRIES} tr${
        TRIES > 1 ? "ies" : "y"
      } per rate, ` +
      `syncers ${SYNCERS}, ${navigator.hardwareConcurrency} cores; bed up in ${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s`,
  );
  const results = new Map<string, Search>();
  const measure = async (path: Path) => {
    try {
      for (const size of SIZES) {
        const s = await search(run, path, size);
        results.set(`${path.name}|${size}`, s);
        console.log(
          `  ${path.name.padEnd(18)} ${String(size).padStart(5)} B  ${
            Math.round(s.best?.rate ?? 0).toString().padStart(7)
          }/s  ${(s.best?.mbps ?? 0).toFixed(1).padStart(6)} Mb/s in  (${s.trials.length} trials)`,
        );
      }
    } finally {
      await path.stop();
    }
  };
  if (want("session")) {
    await run.startSession({
      transcoder: "forwarder",
      syncers: SYNCERS,
      reflectorTimeoutS: 2,
      maxPerAddress: 100,
      saverMaxBytes: 2 ** 40,
    });
    await measure(sessionPath(run));
  }
  if (want("relay")) await measure(await relayChain(run));

  const paths = ["session", "relay chain"].filter(want);
  const get = (p: string, size: number) => results.get(`${p}|${size}`);
  console.log(
    `\nTable 6 shape: highest input Mb/s with loss <= ${LOSS_LIMIT}% at each receiver (ours, bridge bed) | the ` +
      "report's (network-bound, Mb/s)",
  );
  console.log(
    "size | path | Prague | Liberec | Pil from Pra | Pil from Lib | file high | file low | report: Pra / Lib / Pil-Pra / Pil-Lib",
  );
  for (const size of SIZES) {
    for (const p of paths) {
      const cols = RECEIVERS.map((_, i) => bestFor(get(p, size), i).toFixed(1));
      console.log(`${size} B | ${p} | ${cols.join(" | ")} | ${(TABLE6[size] ?? []).join(" / ")}`);
    }
  }
  console.log(
    `\nTable 8 shape: the Brno node (ours: the whole session's loss-free input, Brno sending each stream twice ` +
      "over links; the report's: Brno dom0 with 1..4 streams)",
  );
  console.log(
    "size | session Mb/s in | relay chain Mb/s in | session / relay | report 1 / 2 / 3 / 4 streams",
  );
  for (const size of SIZES) {
    const s = get("session", size)?.best;
    const r = get("relay chain", size)?.best;
    console.log(
      `${size} B | ${s ? s.mbps.toFixed(1) : "-"} (${s ? Math.round(s.rate) : "-"}/s) | ${
        r ? r.mbps.toFixed(1) : "-"
      } (${r ? Math.round(r.rate) : "-"}/s) | ${s && r ? (s.mbps / r.mbps).toFixed(2) : "-"} | ${
        (TABLE8[size] ?? []).join(" / ")
      }`,
    );
  }
  console.log("\nLoss and delay at the rates tried (the report's Figures 7-10), rising");
  console.log(
    "path | size | rate/s | Mb/s in | worst loss % (where) | delay ms p50/p99 Brno analysers | Pilsen analysers",
  );
  for (const p of paths) {
    for (const size of SIZES) {
      const trials = [...(get(p, size)?.trials ?? [])].sort((a, b) => a.rate - b.rate);
      for (const t of trials) {
        console.log(
          `${p} | ${size} B | ${Math.round(t.rate)} | ${t.mbps.toFixed(1)} | ${
            t.worst.toFixed(3)
          } (${t.where}) | ${us(t.brno)} | ${us(t.pilsen)}`,
        );
      }
    }
  }
  console.log(`\ncluster_bench: ${((performance.now() - t0) / 1000).toFixed(0)} s; session ${SESSION}`);
  return 0;
}

try {
  Deno.exit(await main());
} catch (error) {
  console.error(`cluster_bench could not run: ${error instanceof Error ? error.stack : error}`);
  Deno.exit(1);
}
