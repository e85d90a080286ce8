/**
 * The report's four-node infrastructure on one machine: four network namespaces (Brno, Prague, Liberec, Pilsen)
 * joined with a few ms of delay per pair (tests/_support/netns.ts), etcd in Brno's, and one edgenode per namespace
 * with a `node.cluster` section naming the other three as peers and the etcd endpoint. Waits for every node's
 * /status, prints the URLs, and runs until Ctrl-C (or `--seconds N`); on that or any failure it stops every process
 * and removes the namespaces. Needs root (namespaces, TUN devices).
 *
 *   deno run -A scripts/testbed.ts [--seconds N] [--binary dist/edgenode] [--no-etcd] [--keep-logs] [--bridge]
 *                                  [--sweep [--sweep-out DIR]]
 *
 * --bridge joins the namespaces with a kernel bridge and no delay instead of the delay line (for rate benchmarks).
 * --sweep runs a short `probe sweep` across the bed once it is up and then stops it: a session on Brno duplicates
 * its input to Prague and to a reflector AP; the sweep runs in Prague's namespace, sends to Brno's input and
 * receives both ways back (a probe receiver and a reflector participant). Its reports go to --sweep-out
 * (test-output/testbed-sweep by default).
 *
 * As a module: `await using bed = await Testbed.start()` gives the nodes (addresses, status URLs, the status token)
 * to a test or a benchmark that runs sessions on them.
 */
import { parseArgs } from "node:util";
import { stringify } from "yaml";
import denoJson from "../deno.json" with { type: "json" };
import { EtcdServer } from "../tests/_support/etcd.ts";
import { CITIES, CITY_DELAYS_MS, NetnsBed, sweepStaleNamespaces } from "../tests/_support/netns.ts";
import { poll, within } from "../tests/_support/until.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const STATUS_PORT = 8080;
const DATA_PORT = 7400;
const ETCD_PORT = 2379;

export interface TestbedOptions {
  readonly names?: readonly string[];
  readonly delaysMs?: Readonly<Record<string, number>>;
  /** "delay" (default): the delay line with each pair's delay; "bridge": kernel speed, no delay (benchmarks). */
  readonly link?: "delay" | "bridge";
  /** Run etcd (in the first namespace) and give every node its endpoint. Default true. */
  readonly etcd?: boolean;
  /** A compiled edgenode to run instead of `deno run main.ts` with the edgenode task's flags. */
  readonly binary?: string;
  /** Added to each node's `node:` section (session budgets, allow_sources, ...). */
  readonly nodeSection?: (name: string) => Record<string, unknown>;
  /** Added to each node's `node.cluster` section (load_threshold, heartbeat, ...). */
  readonly clusterSection?: (name: string) => Record<string, unknown>;
  /** How long each node may take to serve /status, ms. Default 60000. */
  readonly startTimeoutMs?: number;
  /** Where the configs, tokens, data dirs and logs go; default a fresh temp dir, removed on dispose. */
  readonly dir?: string;
  readonly log?: (line: string) => void;
}

export interface TestbedNode {
  readonly name: string;
  readonly netns: string;
  readonly address: string;
  /** http://ADDRESS:8080, reachable from the host (the bed gives the host an address too). */
  readonly statusUrl: string;
  readonly dataAddress: string;
  readonly config: string;
  readonly log: string;
  readonly process: Deno.ChildProcess;
}

export class Testbed implements AsyncDisposable {
  readonly bed: NetnsBed;
  readonly dir: string;
  /** Bearer token of every node's mutating routes (session upload). */
  readonly statusToken: string;
  readonly nodes: TestbedNode[] = [];
  etcd: EtcdServer | undefined;
  readonly #ownDir: boolean;
  readonly #logs: Deno.FsFile[] = [];
  readonly #copies: Promise<void>[] = [];
  #disposed = false;

  private constructor(bed: NetnsBed, dir: string, ownDir: boolean, statusToken: string) {
    this.bed = bed;
    this.dir = dir;
    this.#ownDir = ownDir;
    this.statusToken = statusToken;
  }

  /** Builds the bed, starts etcd and the nodes, waits for every /status; cleans up and throws on failure. */
  static async start(o: TestbedOptions = {}): Promise<Testbed> {
    const log = o.log ?? (() => {});
    const stale = await sweepStaleNamespaces();
    if (stale.length) log(`testbed: removed namespaces of an earlier run: ${stale.join(", ")}`);
    const names = o.names ?? CITIES;
    const bed = await NetnsBed.create({
      names,
      delaysMs: o.delaysMs ?? CITY_DELAYS_MS,
      host: true,
      link: o.link,
    });
    const dir = o.dir ?? await Deno.makeTempDir({ prefix: "edgenode_testbed_" });
    const testbed = new Testbed(bed, dir, o.dir === undefined, randomToken());
    try {
      await testbed.#startAll(names, o, log);
    } catch (error) {
      await testbed[Symbol.asyncDispose]();
      throw error;
    }
    return testbed;
  }

  node(name: string): TestbedNode {
    const n = this.nodes.find((x) => x.name === name);
    if (!n) throw new Error(`No node ${name} in the test bed`);
    return n;
  }

  /** The first node that has exited, if any (a bed whose node died is broken). */
  exited(): Promise<{ name: string; code: number }> {
    return Promise.race(
      this.nodes.map((n) => n.process.status.then((s) => ({ name: n.name, code: s.code }))),
    );
  }

  async #startAll(names: readonly string[], o: TestbedOptions, log: (line: string) => void): Promise<void> {
    const first = this.bed.node(names[0]);
    const useEtcd = o.etcd ?? true;
    if (useEtcd) {
      this.etcd = await EtcdServer.start({ netns: first.netns, host: first.address, clientPort: ETCD_PORT });
      log(`testbed: etcd at ${this.etcd.url} (in ${first.name})`);
    }
    const clusterToken = `${this.dir}/cluster.token`;
    await Deno.writeTextFile(clusterToken, randomToken() + "\n", { mode: 0o600 });
    await Deno.writeTextFile(`${this.dir}/status.token`, this.statusToken + "\n", { mode: 0o600 });
    const denoFlags = runArgs();
    for (const name of names) {
      const me = this.bed.node(name);
      const dataDir = `${this.dir}/${name}/data`;
      await Deno.mkdir(dataDir, { recursive: true });
      const config = {
        name,
        roles: ["node"],
        status: { listen: `${me.address}:${STATUS_PORT}`, token: this.statusToken, max_body: "4MiB" },
        node: {
          bind: me.address,
          data_dir: dataDir,
          ...o.nodeSection?.(name),
          cluster: {
            name,
            token_file: clusterToken,
            data: `${me.address}:${DATA_PORT}`,
            peers: names.filter((p) => p !== name).map((p) => {
              const peer = this.bed.node(p);
              return { name: p, api: `${peer.address}:${STATUS_PORT}`, data: `${peer.address}:${DATA_PORT}` };
            }),
            ...(useEtcd ? { etcd: [this.etcd!.url] } : {}),
            ...o.clusterSection?.(name),
          },
        },
      };
      const configPath = `${this.dir}/${name}/edgenode.yaml`;
      await Deno.writeTextFile(
        configPath,
        `# The test bed's node ${name} (scripts/testbed.ts)\n${stringify(config)}`,
      );
      const [cmd, args] = o.binary
        ? [o.binary, ["--config", configPath]]
        : [Deno.execPath(), [...denoFlags, "--config", configPath]];
      const logPath = `${this.dir}/${name}/edgenode.log`;
      const logFile = await Deno.open(logPath, { write: true, create: true, truncate: true });
      this.#logs.push(logFile);
      const process = this.bed.spawn(name, cmd, args, {
        cwd: ROOT,
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      });
      // Both streams into the node's log, in arrival order; a full pipe would stall the node.
      let chain = Promise.resolve();
      const copy = async (stream: ReadableStream<Uint8Array>) => {
        for await (const chunk of stream) {
          chain = chain.then(async () => {
            for (let off = 0; off < chunk.length;) off += await logFile.write(chunk.subarray(off));
          }).catch(() => {});
        }
      };
      this.#copies.push(
        Promise.all([copy(process.stdout), copy(process.stderr)]).then(() => chain, () => chain),
      );
      this.nodes.push({
        name,
        netns: me.netns,
        address: me.address,
        statusUrl: `http://${me.address}:${STATUS_PORT}/status`,
        dataAddress: `${me.address}:${DATA_PORT}`,
        config: configPath,
        log: logPath,
        process,
      });
    }
    const exited = this.exited();
    await Promise.all(this.nodes.map(async (n) => {
      const up = poll(
        `${n.name}'s /status at ${n.statusUrl}`,
        async () => {
          try {
            const r = await fetch(n.statusUrl, { signal: AbortSignal.timeout(1000) });
            await r.body?.cancel();
            return r.ok;
          } catch {
            return false;
          }
        },
        o.startTimeoutMs ?? 60_000,
        200,
      );
      const dead = exited.then(async ({ name, code }) => {
        const tail = (await Deno.readTextFile(this.node(name).log).catch(() => "")).split("\n").slice(-15)
          .join("\n");
        throw new Error(`Node ${name} exited with code ${code} before every node was up:\n${tail}`);
      });
      await Promise.race([up, dead]);
    }));
    exited.catch(() => {});
  }

  /** Stops every node and etcd, removes the namespaces and (unless kept) the files. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    // SIGTERM to every node at once, so that none waits on a peer already gone.
    for (const n of this.nodes) {
      try {
        n.process.kill("SIGTERM");
      } catch {
        // Ended already.
      }
    }
    await Promise.all(this.nodes.map((n) => within(n.process.status, 10_000)));
    await this.etcd?.[Symbol.asyncDispose]();
    await this.bed[Symbol.asyncDispose]();
    await Promise.all(this.#copies);
    for (const f of this.#logs) {
      try {
        f.close();
      } catch {
        // Closed already.
      }
    }
    if (this.#ownDir) await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/** The edgenode task's `deno run` flags and script (deno.json), without the leading `deno`. */
function runArgs(): string[] {
  const words = denoJson.tasks.edgenode.trim().split(/\s+/);
  if (words[0] !== "deno" || words[1] !== "run") {
    throw new Error("deno.json: the edgenode task must be `deno run ...`");
  }
  return words.slice(1);
}

/** The sweep's session on Brno: its input to Prague (SWEEP_RECV) and to a reflector participants join at SWEEP_JOIN. */
const SWEEP_INPUT = 10000;
const SWEEP_RECV = 5004;
const SWEEP_JOIN = 12345;

function sweepProgram(recvAt: string): string {
  return `Project bed_sweep;
{ AP name="Dup" ref=localservice.duplicator;
    inputs = in(DIPRONN_INPUT(${SWEEP_INPUT}));
    outputs = o1(DIPRONN_OUTPUT("${recvAt}")), o2(Refl.in);
}
{ AP name="Refl" ref=reflector;
    inputs = in, participant_registration(DIPRONN_INPUT(${SWEEP_JOIN}));
    outputs = out(DIPRONN_OUTPUT);
}
`;
}

/**
 * Starts the sweep's session on `from`'s peer `via` and runs `probe sweep` in `from`'s namespace against it (sizes
 * 100 and 1450 B, 1000 to 8000 datagrams/s, 1 s steps); returns the sweep's exit code.
 */
export async function sweepBed(
  bed: Testbed,
  o: { from: string; via: string; out: string; args?: readonly string[] },
): Promise<number> {
  const from = bed.node(o.from);
  const via = bed.node(o.via);
  const res = await fetch(`http://${via.address}:${STATUS_PORT}/node/sessions?file=bed_sweep.dipronn`, {
    method: "POST",
    headers: { authorization: `Bearer ${bed.statusToken}`, "content-type": "text/plain" },
    body: sweepProgram(`${from.address}:${SWEEP_RECV}`),
  });
  if (!res.ok) {
    throw new Error(`Cannot start the sweep's session on ${via.name}: ${res.status} ${await res.text()}`);
  }
  await res.body?.cancel();
  const args = [
    "probe",
    "sweep",
    "--to",
    `${via.address}:${SWEEP_INPUT}`,
    "--recv",
    `${from.address}:${SWEEP_RECV}`,
    "--join",
    `${via.address}:${SWEEP_JOIN}`,
    ...(o.args ?? ["--sizes", "100,1450", "--from", "1000", "--factor", "2", "--steps", "4", "--step", "1s"]),
    "--out",
    o.out,
  ];
  const child = bed.bed.spawn(o.from, Deno.execPath(), [...runArgs(), ...args], {
    cwd: ROOT,
    stdout: "inherit",
    stderr: "inherit",
    env: { NO_COLOR: "1" },
  });
  return (await child.status).code;
}

function randomToken(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(24)), (b) => b.toString(16).padStart(2, "0")).join(
    "",
  );
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      seconds: { type: "string" },
      binary: { type: "string" },
      "no-etcd": { type: "boolean" },
      "keep-logs": { type: "boolean" },
      bridge: { type: "boolean" },
      sweep: { type: "boolean" },
      "sweep-out": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(
      "usage: deno run -A scripts/testbed.ts [--seconds N] [--binary PATH] [--no-etcd] [--keep-logs] [--bridge]\n" +
        "                                   [--sweep [--sweep-out DIR]]",
    );
    return 0;
  }
  const seconds = values.seconds === undefined ? undefined : Number(values.seconds);
  if (seconds !== undefined && !(seconds > 0)) {
    console.error(`testbed: --seconds wants a positive number, got ${values.seconds}`);
    return 2;
  }
  const dir = await Deno.makeTempDir({ prefix: "edgenode_testbed_" });
  const stop = Promise.withResolvers<string>();
  const onSignal = (signal: Deno.Signal) => () => stop.resolve(signal);
  const handlers = (["SIGINT", "SIGTERM"] as const).map((s) => [s, onSignal(s)] as const);
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);
  let failed = false;
  /** The bed's namespaces, looked for again at the end: the last line says whether they are gone. */
  let namespaces: string[] = [];
  try {
    await using bed = await Testbed.start({
      binary: values.binary,
      etcd: !values["no-etcd"],
      link: values.bridge ? "bridge" : "delay",
      dir,
      log: (line) => console.log(line),
    });
    namespaces = bed.nodes.map((n) => n.netns);
    for (const n of bed.nodes) {
      console.log(
        `testbed: ${n.name.padEnd(8)} ${n.address}  netns ${n.netns}  status ${n.statusUrl}  log ${n.log}`,
      );
    }
    console.log(
      `testbed: status token in ${dir}/status.token; shell in a node: ip netns exec ${bed.nodes[0].netns} sh`,
    );
    let sweepFailed = false;
    const sweepOut = values["sweep-out"] ?? "test-output/testbed-sweep";
    const sweepTo = sweepOut.startsWith("/") ? sweepOut : `${Deno.cwd()}/${sweepOut}`;
    if (values.sweep) {
      console.log(`testbed: probe sweep from prague through a session on brno into ${sweepTo}`);
    } else console.log(seconds ? `testbed: running for ${seconds} s` : "testbed: running until Ctrl-C");
    const timer = seconds ? setTimeout(() => stop.resolve("time"), seconds * 1000) : undefined;
    const why = await Promise.race([
      stop.promise,
      bed.exited().then(({ name, code }) =>
        `node ${name} exited with code ${code} (log ${bed.node(name).log})`
      ),
      ...(values.sweep
        ? [
          sweepBed(bed, { from: "prague", via: "brno", out: sweepTo }).then((code) => {
            sweepFailed = code !== 0;
            return `the sweep ended with code ${code}`;
          }),
        ]
        : []),
    ]);
    failed = why.startsWith("node ") || sweepFailed;
    clearTimeout(timer);
    console.log(`testbed: stopping (${why})`);
  } catch (error) {
    failed = true;
    console.error(`testbed: ${(error as Error).message}`);
  } finally {
    for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
  }
  if (failed || values["keep-logs"]) console.log(`testbed: logs kept in ${dir}`);
  else await Deno.remove(dir, { recursive: true }).catch(() => {});
  const left = await leftNamespaces(namespaces);
  if (left.length) {
    console.error(`testbed: namespaces left behind (remove with ip netns delete NAME): ${left.join(" ")}`);
    return 1;
  }
  console.log("testbed: everything stopped, namespaces removed");
  return failed ? 1 : 0;
}

/** Which of `names` `ip netns list` still lists (none when `ip` cannot be run: nothing to tell). */
async function leftNamespaces(names: readonly string[]): Promise<string[]> {
  if (!names.length) return [];
  try {
    const out = await new Deno.Command("ip", { args: ["netns", "list"], stdout: "piped", stderr: "null" })
      .output();
    const listed = new Set(new TextDecoder().decode(out.stdout).split("\n").map((l) => l.split(" ")[0]));
    return names.filter((n) => listed.has(n));
  } catch {
    return [];
  }
}

if (import.meta.main) Deno.exit(await main());
