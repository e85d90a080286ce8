/**
 * A test bed of network namespaces, one per node (the report's cities), each with its own network stack, joined by a
 * wide-area delay line with a one-way delay per pair of cities (a few ms), addresses in 10.77.0.0/24 and loopback up.
 * Needs root (CI runs as root) and iproute2.
 *
 * The delays: `tc netem` is what one would use, but the kernel of these machines (and of CI, the same kind) is built
 * without sch_netem ("Specified qdisc kind is unknown") and has no other qdisc that delays. So each namespace gets a
 * TUN device instead of a veth, and one process (tests/_support/delay_line.ts) holds every packet for its pair's
 * delay and hands it to the destination's device. Layer 3, transparent to every program inside.
 *
 * For a rate benchmark that wants the kernel's speed rather than the delays, `link: "bridge"` joins the namespaces
 * with veth pairs to a bridge in a hub namespace instead (no delay).
 *
 * Names are unique per run (`en<pid>-<rand>-<city>`), so runs never collide; `dispose` ends every process the bed
 * started (and anything else left inside its namespaces), stops the delay line (its devices go with it) and removes
 * the namespaces, also after a failure. `sweepStaleNamespaces()` removes what an earlier, crashed run left.
 */
import { requireTools } from "./tools.ts";
import { within } from "./until.ts";

/** The report's four nodes. */
export const CITIES = ["brno", "prague", "liberec", "pilsen"] as const;

/**
 * One-way delays between the cities in ms, roughly by distance over the research network (the report gives none;
 * these are "a few ms" as the issue asks).
 */
export const CITY_DELAYS_MS: Readonly<Record<string, number>> = {
  "brno-prague": 3,
  "brno-liberec": 4,
  "brno-pilsen": 4,
  "prague-liberec": 2,
  "prague-pilsen": 2,
  "liberec-pilsen": 3,
};

export interface BedOptions {
  /** One namespace per name (letters, digits, "_"). */
  readonly names: readonly string[];
  /** One-way delay per pair, `"a-b"` (either order), ms; the same both ways. */
  readonly delaysMs?: Readonly<Record<string, number>>;
  /** For pairs not in `delaysMs`. Default 0. */
  readonly defaultDelayMs?: number;
  /** The first three octets of the bed's /24. Default "10.77.0". Node i gets .(i+1). */
  readonly subnet?: string;
  /**
   * Give this (the root) namespace an address on the bed too, `.254`, with no delay to anyone: lets a script on the
   * host reach the nodes (their status pages). Off by default: tests talk to the nodes from inside.
   */
  readonly host?: boolean;
  /**
   * "delay" (default): the delay line, each pair's delay, at user-space speed (tens of thousands of packets/s here).
   * "bridge": a kernel bridge with no delay (veth pairs), for a rate benchmark that wants the kernel's speed.
   */
  readonly link?: "delay" | "bridge";
}

export interface BedNode {
  readonly name: string;
  readonly netns: string;
  readonly address: string;
  readonly ifname: string;
}

export interface RunOutput {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

const STALE = /^en(\d+)-[0-9a-f]{4}-/;
const NAME = /^[a-z0-9_]{1,24}$/;

export class NetnsBed implements AsyncDisposable {
  readonly prefix: string;
  readonly nodes: readonly BedNode[];
  /** This namespace's address on the bed when `host` was asked for. */
  readonly hostAddress: string | undefined;
  readonly #ip: string;
  readonly #children = new Set<Deno.ChildProcess>();
  #delayLine: Deno.ChildProcess | undefined;
  #delayStdin: WritableStreamDefaultWriter<Uint8Array> | undefined;
  #delayOutput: Promise<string> = Promise.resolve("");
  #disposed = false;

  private constructor(prefix: string, nodes: BedNode[], hostAddress: string | undefined, ip: string) {
    this.prefix = prefix;
    this.nodes = nodes;
    this.hostAddress = hostAddress;
    this.#ip = ip;
  }

  /** Builds the namespaces and the delay line; on any failure removes what it made and throws. */
  static async create(o: BedOptions): Promise<NetnsBed> {
    const tools = await requireTools(
      "network namespace tests",
      ["ip"],
      "the Debian package iproute2 (and run as root)",
    );
    for (const name of o.names) {
      if (!NAME.test(name)) throw new Error(`Cannot use ${JSON.stringify(name)} as a namespace's node name`);
    }
    const subnet = o.subnet ?? "10.77.0";
    const tag = crypto.getRandomValues(new Uint8Array(2)).reduce(
      (s, b) => s + b.toString(16).padStart(2, "0"),
      "",
    );
    const prefix = `en${Deno.pid}-${tag}-`;
    const nodes: BedNode[] = o.names.map((name, i) => ({
      name,
      netns: prefix + name,
      address: `${subnet}.${i + 1}`,
      ifname: `en${tag}t${i}`,
    }));
    const hostAddress = o.host ? `${subnet}.254` : undefined;
    const bed = new NetnsBed(prefix, nodes, hostAddress, tools.ip);
    try {
      for (const n of nodes) await bed.#ipRun(["netns", "add", n.netns]);
      const hostIf = `en${tag}th`;
      if (o.link === "bridge") {
        // Kernel speed, no delay: a bridge in a hub namespace of its own, one veth pair per node.
        const hub = `${prefix}hub`;
        await bed.#ipRun(["netns", "add", hub]);
        await bed.#ipRun(["-n", hub, "link", "add", "br0", "type", "bridge"]);
        await bed.#ipRun(["-n", hub, "link", "set", "br0", "up"]);
        const pairs = nodes.map((n) => [n.ifname, n.netns] as const);
        if (hostAddress) pairs.push([hostIf, ""]);
        for (const [ifname, netns] of pairs) {
          await bed.#ipRun([
            "-n",
            hub,
            "link",
            "add",
            `${ifname}p`,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            netns || String(Deno.pid),
          ]);
          await bed.#ipRun(["-n", hub, "link", "set", `${ifname}p`, "master", "br0", "up"]);
        }
      } else {
        const members = nodes.map((n) => ({ ifname: n.ifname, address: n.address }));
        if (hostAddress) members.push({ ifname: hostIf, address: hostAddress });
        const delays: Record<string, number> = {};
        for (const a of nodes) {
          for (const b of nodes) {
            if (a === b) continue;
            const ms = o.delaysMs?.[`${a.name}-${b.name}`] ?? o.delaysMs?.[`${b.name}-${a.name}`] ??
              o.defaultDelayMs ?? 0;
            delays[`${a.address}>${b.address}`] = ms;
          }
        }
        await bed.#startDelayLine({ members, delays, defaultDelayMs: 0 });
        for (const n of nodes) await bed.#ipRun(["link", "set", n.ifname, "netns", n.netns]);
      }
      for (const n of nodes) {
        await bed.#ipRun(["-n", n.netns, "addr", "add", `${n.address}/24`, "dev", n.ifname]);
        // A longer device queue than TUN's 500: a burst waits for the delay line instead of being dropped.
        await bed.#ipRun(["-n", n.netns, "link", "set", n.ifname, "txqueuelen", "10000", "up"]);
        await bed.#ipRun(["-n", n.netns, "link", "set", "lo", "up"]);
      }
      if (hostAddress) {
        await bed.#ipRun(["addr", "add", `${hostAddress}/24`, "dev", hostIf]);
        await bed.#ipRun(["link", "set", hostIf, "up"]);
      }
    } catch (error) {
      await bed[Symbol.asyncDispose]();
      throw error;
    }
    return bed;
  }

  node(name: string): BedNode {
    const n = this.nodes.find((x) => x.name === name);
    if (!n) throw new Error(`No node ${name} in this bed (${this.nodes.map((x) => x.name).join(", ")})`);
    return n;
  }

  /** Starts `cmd args` inside `name`'s namespace; the bed ends it on dispose if it still runs. */
  spawn(
    name: string,
    cmd: string,
    args: readonly string[],
    o: Omit<Deno.CommandOptions, "args"> = {},
  ): Deno.ChildProcess {
    const child = new Deno.Command(this.#ip, {
      stdin: "null",
      ...o,
      args: ["netns", "exec", this.node(name).netns, cmd, ...args],
    }).spawn();
    this.#children.add(child);
    child.status.finally(() => this.#children.delete(child));
    return child;
  }

  /** Runs `cmd args` inside `name`'s namespace to its end (killed after `timeoutMs`, default 20 s). */
  async run(name: string, cmd: string, args: readonly string[], timeoutMs = 20_000): Promise<RunOutput> {
    const child = this.spawn(name, cmd, args, { stdout: "piped", stderr: "piped" });
    const output = child.output();
    if (!await within(output, timeoutMs)) {
      kill(child, "SIGKILL");
      await output.catch(() => {});
      throw new Error(`${cmd} ${args.join(" ")} in ${name} did not end within ${timeoutMs} ms`);
    }
    const out = await output;
    const d = new TextDecoder();
    return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
  }

  /**
   * Sets a kernel parameter inside `name`'s namespace (the `net.*` ones are per namespace), as `sysctl -w key=value`
   * does there: e.g. `net.ipv4.ip_nonlocal_bind`, `1`, so a program can listen on an address the box does not hold yet.
   */
  async sysctl(name: string, key: string, value: string): Promise<void> {
    const out = await this.run(name, "sysctl", ["-w", `${key}=${value}`]);
    if (out.code !== 0) throw new Error(`Cannot set ${key}=${value} in ${name}: ${out.stderr.trim()}`);
  }

  /** The process ids inside `name`'s namespace now (whoever started them). */
  async pids(name: string): Promise<number[]> {
    return await pidsInside(this.#ip, this.node(name).netns);
  }

  /** The bed's namespaces that exist now (after dispose: none). */
  async existing(): Promise<string[]> {
    return (await listNamespaces(this.#ip)).filter((n) => n.startsWith(this.prefix));
  }

  /** After dispose: the delay line's counters (forwarded, dropped_full, dropped_unknown, late_ms_max, ...). */
  async delayLineCounts(): Promise<Record<string, number> | undefined> {
    const last = (await this.#delayOutput).trim().split("\n").at(-1) ?? "";
    try {
      return last.startsWith("{") ? JSON.parse(last) : undefined;
    } catch {
      return undefined;
    }
  }

  /** Ends what it started, the delay line, and the namespaces. Safe to call twice. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    await Promise.all([...this.#children].map((c) => stop(c)));
    for (const ns of await this.existing()) await killInside(this.#ip, ns);
    if (this.#delayLine) {
      // A closed stdin asks it to stop (and print its counters); SIGTERM, then SIGKILL, if it does not.
      await this.#delayStdin?.close().catch(() => {});
      if (!await within(this.#delayLine.status, 3_000)) kill(this.#delayLine, "SIGTERM");
      if (!await within(this.#delayLine.status, 3_000)) kill(this.#delayLine, "SIGKILL");
      await this.#delayLine.status;
      await this.#delayOutput;
    }
    for (const ns of await this.existing()) await this.#ipRun(["netns", "del", ns]).catch(() => {});
  }

  async #startDelayLine(config: unknown): Promise<void> {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-prompt",
        "--allow-ffi",
        "--allow-read",
        new URL("./delay_line.ts", import.meta.url).pathname,
        JSON.stringify(config),
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    this.#delayLine = child;
    this.#delayStdin = child.stdin.getWriter();
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    const ready = (async () => {
      while (!text.includes("ready\n")) {
        const { value, done } = await lines.read();
        if (done) throw new Error(`The delay line ended before it was ready: ${text}`);
        text += value;
      }
    })();
    if (!await within(ready, 15_000)) throw new Error("The delay line was not ready within 15 s");
    await ready;
    this.#delayOutput = (async () => {
      for (;;) {
        const { value, done } = await lines.read();
        if (done) return text;
        text += value;
      }
    })().catch(() => text);
  }

  async #ipRun(args: readonly string[]): Promise<void> {
    await ipRun(this.#ip, args);
  }
}

/**
 * Removes namespaces that a crashed run of these tests left (named `en<pid>-...` with that pid gone), ending any
 * process still inside them. Returns their names.
 */
export async function sweepStaleNamespaces(): Promise<string[]> {
  const { ip } = await requireTools("network namespace tests", ["ip"], "the Debian package iproute2");
  const removed: string[] = [];
  for (const ns of await listNamespaces(ip)) {
    const m = STALE.exec(ns);
    if (!m || Number(m[1]) === Deno.pid) continue;
    if (await processAlive(Number(m[1]))) continue;
    await killInside(ip, ns);
    await ipRun(ip, ["netns", "del", ns]).catch(() => {});
    removed.push(ns);
  }
  return removed;
}

/**
 * Whether process `pid` exists. Deno refuses /proc/PID to anything but --allow-all ("NotCapable"), which `deno test`
 * with the usual flags lacks: taken as "gone", that swept the live bed of a concurrent run (its nodes killed, its
 * namespaces removed). So: /proc when readable, else `kill -0`; when neither can tell, alive (never sweep a bed
 * that may be in use).
 */
async function processAlive(pid: number): Promise<boolean> {
  try {
    await Deno.stat(`/proc/${pid}`);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
  }
  try {
    const out = await new Deno.Command("kill", { args: ["-0", String(pid)], stdout: "null", stderr: "piped" })
      .output();
    return out.success || !/no such process/i.test(new TextDecoder().decode(out.stderr));
  } catch {
    return true;
  }
}

async function listNamespaces(ip: string): Promise<string[]> {
  const out = await new Deno.Command(ip, { args: ["netns", "list"], stdout: "piped", stderr: "piped" })
    .output();
  return new TextDecoder().decode(out.stdout).split("\n").map((l) => l.split(" ")[0]).filter(Boolean);
}

/** The process ids inside `ns`, as `ip netns pids` lists them. */
async function pidsInside(ip: string, ns: string): Promise<number[]> {
  const out = await new Deno.Command(ip, { args: ["netns", "pids", ns], stdout: "piped", stderr: "null" })
    .output();
  return new TextDecoder().decode(out.stdout).split(/\s+/).filter(Boolean).map(Number);
}

/** Ends every process inside `ns` (by pid, as `ip netns pids` lists them): SIGTERM, then SIGKILL. */
async function killInside(ip: string, ns: string): Promise<void> {
  const pids = () => pidsInside(ip, ns);
  let left = await pids();
  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    if (!left.length) return;
    for (const pid of left) {
      try {
        Deno.kill(pid, signal);
      } catch {
        // Gone already.
      }
    }
    const end = performance.now() + 3_000;
    while ((left = await pids()).length && performance.now() < end) {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function ipRun(ip: string, args: readonly string[]): Promise<void> {
  const out = await new Deno.Command(ip, { args: [...args], stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    const detail = new TextDecoder().decode(out.stderr).trim();
    const hint = /not permitted|permission denied/i.test(detail)
      ? " (the test bed needs root: namespaces, TUN)"
      : "";
    throw new Error(`Cannot run ip ${args.join(" ")}: ${detail}${hint}`);
  }
}

function kill(child: Deno.ChildProcess, signal: Deno.Signal): void {
  try {
    child.kill(signal);
  } catch {
    // Ended already.
  }
}

async function stop(child: Deno.ChildProcess): Promise<void> {
  kill(child, "SIGTERM");
  if (!await within(child.status, 5_000)) kill(child, "SIGKILL");
  await child.status.catch(() => {});
}
