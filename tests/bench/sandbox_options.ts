/**
 * Measures the three ways to isolate an uploaded active program (issue 19) on this machine, one run, and prints a
 * table: (a) a Web Worker with `deno: { permissions: "none" }`, (b) a `node:worker_threads` worker with
 * `resourceLimits`, (c) a `deno run` child with no --allow-* flag, a V8 heap flag and `prlimit --as`
 * (lib/sandbox/host.ts). For each: what a memory bomb (a growing array; a growing set of ArrayBuffers) does, which
 * permissions the program gets, how an infinite loop is stopped and how fast, and packets/s of a pass-through at
 * batches of 64 x 1450 B and 64 x 100 B, against the same handler called in this isolate.
 *
 * Every case runs in a process of its own (a bomb may take the whole process), itself under `prlimit --as --data`
 * so that no case can take more than ~1.5 GiB of this shared machine: for the two in-process options that bound is
 * the only one, and it is the whole process's (the node's own allocations would fail with the bomb's). Also checks whether cgroup v1 memory and cpu can be
 * used here.
 *
 *     deno run -A --unstable-worker-options tests/bench/sandbox_options.ts
 */
import { Worker as ThreadWorker } from "node:worker_threads";
import { encodeBatch } from "../../lib/graph/vm/codec.ts";
import { ArrayBatch } from "../../lib/graph/batch.ts";
import { SandboxHost } from "../../lib/sandbox/host.ts";
import { ADDRESS_BASE_MB, DATA_BASE_MB } from "../../lib/sandbox/proc.ts";

const PORTS = `export const ports = { inputs: ["in"], outputs: ["out"] };\n`;
const PASS = `${PORTS}export function handle(_i, batch) { return [batch]; }\n`;
const LOOP = `${PORTS}export function handle(_i, batch) { for (;;) {} }\n`;
const ARRAY_BOMB = `${PORTS}const h = [];
export function handle() { for (;;) h.push(new Array(100000).fill(h.length)); }\n`;
const BUFFER_BOMB = `${PORTS}const h = new Set();
export function handle() { for (;;) h.add(new Uint8Array(1 << 20).fill(7).buffer); }\n`;
const PROBES: Record<string, string> = {
  file: `Deno.readTextFile("/etc/hostname")`,
  net: `Deno.connect({ hostname: "127.0.0.1", port: 9 })`,
  run: `new Deno.Command("/bin/true").output()`,
  env: `Promise.resolve(Deno.env.get("HOME"))`,
  ffi: `Promise.resolve().then(() => Deno.dlopen("libc.so.6", {}))`,
  import_url: `import("https://esm.sh/left-pad")`,
  import_path: `import("file:///etc/hostname.js")`,
};
const PROBE = `${PORTS}export async function handle(_i, batch) {
  const out = {};
  for (const [k, f] of Object.entries({ ${
  Object.entries(PROBES).map(([k, v]) => `${k}: () => ${v}`).join(", ")
} })) {
    try { await f(); out[k] = "ALLOWED"; } catch (e) { out[k] = e.name + ": " + String(e.message).split("\\n")[0].slice(0, 60); }
  }
  return [[{ data: new TextEncoder().encode(JSON.stringify(out)), from: batch[0].from }]];
}\n`;

const MECHS = ["worker", "threads", "process"] as const;
type Mech = typeof MECHS[number];
const WORKER_URL = new URL("./_sandbox_worker.ts", import.meta.url);

function batchOf(n: number, size: number): ArrayBatch {
  const items = Array.from({ length: n }, () => new Uint8Array(size).fill(1));
  return new ArrayBatch(items, items.map(() => ({ host: "127.0.0.1", port: 5004 })));
}

/** One in-process option, driven the same way: load a program, send batches, hear answers. */
interface Guest {
  load(source: string): Promise<void>;
  send(batch: ArrayBatch): void;
  onAnswer: (count: number, first: Uint8Array) => void;
  onEnd: (why: string) => void;
  stop(): Promise<number>;
}

function webWorker(): Guest {
  const w = new Worker(WORKER_URL, { type: "module", deno: { permissions: "none" } });
  const g: Guest = {
    onAnswer: () => {},
    onEnd: () => {},
    load: (source) =>
      new Promise((resolve) => {
        w.onmessage = (e) => {
          if (e.data instanceof ArrayBuffer) return answer(g, e.data);
          resolve();
        };
        w.postMessage({ source });
      }),
    send: (b) => {
      const buf = encodeBatch({ kind: "deliver", ap: 0, port: 0, rtcp: false }, b);
      w.postMessage(buf, [buf]);
    },
    stop: () => {
      const t = performance.now();
      w.terminate();
      return Promise.resolve(performance.now() - t);
    },
  };
  w.onerror = (e) => {
    e.preventDefault();
    g.onEnd(`worker error: ${e.message}`);
  };
  return g;
}

function threadsWorker(): Guest {
  const w = new ThreadWorker(WORKER_URL, { resourceLimits: { maxOldGenerationSizeMb: 64 } });
  const g: Guest = {
    onAnswer: () => {},
    onEnd: () => {},
    load: (source) =>
      new Promise((resolve) => {
        w.on("message", (m: unknown) => (m instanceof ArrayBuffer ? answer(g, m) : resolve()));
        w.postMessage({ source });
      }),
    send: (b) => {
      const buf = encodeBatch({ kind: "deliver", ap: 0, port: 0, rtcp: false }, b);
      w.postMessage(buf, [buf]);
    },
    stop: async () => {
      const t = performance.now();
      await w.terminate();
      return performance.now() - t;
    },
  };
  w.on("error", (e: Error & { code?: string }) => g.onEnd(`worker error: ${e.code ?? ""} ${e.message}`));
  w.on("exit", (code: number) => g.onEnd(`worker exit ${code}`));
  return g;
}

async function answer(g: Guest, buf: ArrayBuffer): Promise<void> {
  const { decodeBatch } = await import("../../lib/graph/vm/codec.ts");
  const { batch } = decodeBatch(buf);
  g.onAnswer(batch.count, batch.count ? batch.data(0).slice() : new Uint8Array());
}

function processGuest(deadlineMs = 100_000): Guest & { host: () => SandboxHost } {
  let host: SandboxHost | null = null;
  const g = {
    onAnswer: (_c: number, _f: Uint8Array) => {},
    onEnd: (_w: string) => {},
    host: () => host!,
    load: async (source: string) => {
      host = new SandboxHost({
        name: "bench",
        modules: { "main.js": source },
        entry: "main.js",
        limits: { heapMb: 64, memoryMb: 256, deadlineMs, maxInFlight: 64 },
        sampleMs: 0,
        backoff: { initialMs: 60_000 },
        onOutput: (_o, b) => g.onAnswer(b.count, b.count ? b.data(0).slice() : new Uint8Array()),
      });
      await host.start();
      let crashes = 0;
      const watch = setInterval(() => {
        const s = host!.status();
        if ((s.crashes as number) > crashes) g.onEnd(String((crashes = s.crashes as number, s.last_error)));
      }, 2);
      host.stop = ((stop) => () => (clearInterval(watch), stop()))(host.stop.bind(host));
    },
    send: (b: ArrayBatch) => void host!.push(0, b),
    stop: async () => {
      const t = performance.now();
      await host?.stop();
      return performance.now() - t;
    },
  };
  return g;
}

function guestOf(mech: Mech, deadlineMs?: number): Guest {
  return mech === "worker" ? webWorker() : mech === "threads" ? threadsWorker() : processGuest(deadlineMs);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs one case in this process and returns what it found. */
async function runCase(mech: Mech, what: string): Promise<Record<string, unknown>> {
  if (what === "array" || what === "buffers") {
    const g = guestOf(mech);
    const ended = new Promise<string>((r) => g.onEnd = r);
    await g.load(what === "array" ? ARRAY_BOMB : BUFFER_BOMB);
    const t = performance.now();
    g.send(batchOf(1, 100));
    const why = await Promise.race([ended, sleep(40_000).then(() => "still running after 40 s")]);
    const ms = Math.round(performance.now() - t);
    await g.stop();
    return { outcome: `parent lives; ${why.slice(0, 140)}`, ms };
  }
  if (what === "perms") {
    const g = guestOf(mech);
    const got = new Promise<Uint8Array>((r) => g.onAnswer = (_c, first) => r(first));
    await g.load(PROBE);
    g.send(batchOf(1, 100));
    const result = JSON.parse(new TextDecoder().decode(await got));
    const extra = mech === "process"
      ? { audit: (g as ReturnType<typeof processGuest>).host().status().denied }
      : {};
    await g.stop();
    return { ...result, ...extra };
  }
  if (what === "loop") {
    const deadline = 100;
    const g = guestOf(mech, deadline);
    await g.load(LOOP);
    const t = performance.now();
    if (mech === "process") {
      const ended = new Promise<string>((r) => g.onEnd = r);
      g.send(batchOf(1, 100));
      const why = await ended;
      const total = performance.now() - t;
      await g.stop();
      return {
        outcome: `killed by the host's deadline: ${why.slice(0, 80)}`,
        stop_ms: +(total - deadline).toFixed(1),
      };
    }
    g.send(batchOf(1, 100));
    await sleep(deadline);
    const stopMs = await g.stop();
    // The parent's loop is free and a fresh guest answers: the spinning one is gone.
    const g2 = guestOf(mech);
    await g2.load(PASS);
    const got = new Promise<number>((r) => g2.onAnswer = r);
    const t2 = performance.now();
    g2.send(batchOf(1, 100));
    await got;
    const answerMs = performance.now() - t2;
    await g2.stop();
    return {
      outcome: "terminate() after the deadline",
      stop_ms: +stopMs.toFixed(1),
      next_answer_ms: +answerMs.toFixed(1),
    };
  }
  if (what === "rate") {
    const out: Record<string, unknown> = {};
    for (const size of [1450, 100]) {
      const g = guestOf(mech);
      await g.load(PASS);
      const batch = batchOf(64, size);
      let packets = 0;
      let inFlight = 0;
      const window = 16;
      let running = true;
      g.onAnswer = (count) => {
        packets += count;
        inFlight--;
        while (running && inFlight < window) (inFlight++, g.send(batch));
      };
      const t = performance.now();
      while (inFlight < window) (inFlight++, g.send(batch));
      await sleep(1500);
      running = false;
      out[`pps_${size}`] = Math.round(packets / ((performance.now() - t) / 1000));
      await g.stop();
    }
    return out;
  }
  if (what === "inline") {
    // The same handler in this isolate, with the same encoding both ways (what any boundary here costs at least).
    const { decodeBatch } = await import("../../lib/graph/vm/codec.ts");
    const mod = await import(`data:application/javascript,${encodeURIComponent(PASS)}`);
    const out: Record<string, unknown> = {};
    for (const size of [1450, 100]) {
      const batch = batchOf(64, size);
      let packets = 0;
      const t = performance.now();
      while (performance.now() - t < 1000) {
        const { batch: b } = decodeBatch(
          encodeBatch({ kind: "deliver", ap: 0, port: 0, rtcp: false }, batch),
        );
        const list = [];
        for (let i = 0; i < b.count; i++) list.push({ data: b.data(i), from: b.from(i) });
        const o = mod.handle(0, list)[0];
        const back = encodeBatch({ kind: "emitted", ap: 0, port: 0, rtcp: false }, {
          count: o.length,
          data: (i: number) => o[i].data,
          length: (i: number) => o[i].data.length,
          from: (i: number) => o[i].from,
          truncated: () => false,
        });
        packets += decodeBatch(back).batch.count;
      }
      out[`pps_${size}`] = Math.round(packets / ((performance.now() - t) / 1000));
    }
    return out;
  }
  throw new Error(`Unknown case ${what}`);
}

/** The cgroup v1 hierarchies this process could use, checked by making and removing one. */
function cgroupCheck(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const c of ["memory", "cpu"]) {
    const own = Deno.readTextFileSync("/proc/self/cgroup").split("\n").find((l) => l.split(":")[1] === c)
      ?.split(":")[2] ?? "/";
    const dir = `/sys/fs/cgroup/${c}${own === "/" ? "" : own}/edgenode-bench-${Deno.pid}`;
    try {
      Deno.mkdirSync(dir);
      Deno.removeSync(dir);
      out[c] = `writable (made and removed ${dir})`;
    } catch (error) {
      out[c] = `not usable: ${(error as Error).message}`;
    }
  }
  return out;
}

async function main(): Promise<void> {
  const args = Deno.args;
  if (args[0] === "--case") {
    const result = await runCase(args[1] as Mech, args[2]);
    console.log(`RESULT ${JSON.stringify(result)}`);
    Deno.exit(0);
  }
  const self = new URL(import.meta.url).pathname;
  // A bound on each case's process (heap and ArrayBuffers alike: see proc.ts), so a bomb cannot take this machine.
  const limitBytes = (ADDRESS_BASE_MB + 1536) * 1024 * 1024;
  const dataBytes = (DATA_BASE_MB + 1536) * 1024 * 1024;
  const run = async (mech: string, what: string) => {
    const cmd = new Deno.Command("prlimit", {
      args: [
        `--as=${limitBytes}`,
        `--data=${dataBytes}`,
        "--core=0",
        "--",
        "timeout",
        "90",
        Deno.execPath(),
        "run",
        "-A",
        "--unstable-worker-options",
        self,
        "--case",
        mech,
        what,
      ],
      stdout: "piped",
      stderr: "piped",
    });
    const t = performance.now();
    const out = await cmd.output();
    const text = new TextDecoder().decode(out.stdout);
    const line = text.split("\n").find((l) => l.startsWith("RESULT "));
    if (line) return JSON.parse(line.slice(7));
    const err = new TextDecoder().decode(out.stderr).split("\n").filter((l) =>
      l.trim() && !l.startsWith("    ")
    );
    const fatal = err.find((l) => /out of memory|Fatal|allocation failed|panicked/i.test(l)) ?? err.at(-1) ??
      "";
    return {
      outcome: `WHOLE PROCESS DIED (${out.signal ?? `exit ${out.code}`}) after ${
        Math.round(performance.now() - t)
      } ms: ${fatal.trim().slice(0, 100)}`,
    };
  };
  const results: Record<string, Record<string, unknown>> = {};
  for (const mech of MECHS) {
    for (const what of ["array", "buffers", "perms", "loop", "rate"]) {
      results[`${mech} ${what}`] = await run(mech, what);
      console.error(`${mech} ${what}: ${JSON.stringify(results[`${mech} ${what}`])}`);
    }
  }
  results["inline rate"] = await run("process", "inline");
  const inline = results["inline rate"];
  console.log(
    "\n| option | memory bomb: array | memory bomb: ArrayBuffers | infinite loop | pps 64x1450 B | pps 64x100 B |",
  );
  console.log("|---|---|---|---|---|---|");
  for (const mech of MECHS) {
    const r = (w: string) => results[`${mech} ${w}`];
    const loop = r("loop");
    const rate = r("rate");
    const ratio = (k: string) =>
      typeof rate[k] === "number"
        ? `${rate[k]} (${((rate[k] as number) / (inline[k] as number)).toFixed(2)} of inline)`
        : "-";
    console.log(
      `| ${mech} | ${r("array").outcome} (${r("array").ms ?? "-"} ms) | ${r("buffers").outcome} (${
        r("buffers").ms ?? "-"
      } ms) | ${loop.outcome}; stop ${loop.stop_ms} ms${
        loop.next_answer_ms ? `, next answer ${loop.next_answer_ms} ms` : ""
      } | ${ratio("pps_1450")} | ${ratio("pps_100")} |`,
    );
  }
  console.log(`| inline (same handler, this isolate) | | | | ${inline.pps_1450} | ${inline.pps_100} |`);
  console.log("\n| option | " + Object.keys(PROBES).join(" | ") + " |");
  console.log("|---|" + Object.keys(PROBES).map(() => "---").join("|") + "|");
  for (const mech of MECHS) {
    const p = results[`${mech} perms`];
    console.log(
      `| ${mech} | ${
        Object.keys(PROBES).map((k) => String(p[k] ?? p.outcome ?? "-").replace(/\|/g, "/")).join(" | ")
      } |`,
    );
  }
  console.log("\nprocess: permission audit (host side):", JSON.stringify(results["process perms"].audit));
  console.log("cgroup v1:", JSON.stringify(cgroupCheck()));
}

await main();
