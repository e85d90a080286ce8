/**
 * Uploaded active programs through the node's session API (issue 19): each test uploads a program with its modules
 * in one multipart POST /node/sessions, sends datagrams to the session on loopback and watches what comes out and
 * what /status and /metrics say. The sandbox processes are real `deno run` children with hard limits.
 */
import assert from "node:assert/strict";
import { roleApp } from "../api/_role_app.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { nodeRole } from "../../lib/node/role.ts";
import { freeUdpPort } from "../_support/ports.ts";
import { poll, until } from "../_support/until.ts";
import { ARRAY_BOMB, BUFFER_BOMB, EXITS, LOOPS_ON_FF, PORTS, trying } from "../sandbox/_programs.ts";

const TOKEN = "node-token-0123456789";
const auth = { authorization: `Bearer ${TOKEN}` };
const EXAMPLES = new URL("../../config/examples/", import.meta.url);

async function setup(uploads: Record<string, unknown> = {}) {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const logger = new Logger({ level: "error", clock, sink: () => {} });
  const metrics = new MetricsRegistry();
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_uploads_" });
  const defaults = nodeRole.section.default as Record<string, unknown>;
  const role = await nodeRole.start(
    {
      ...defaults,
      bind: "127.0.0.1",
      data_dir: dataDir,
      allow_loopback_output: true,
      uploads: { ...(defaults.uploads as object), ...uploads },
    } as never,
    { nodeName: "n", logger, metrics, clock },
  );
  const app = roleApp("node", role, { clock, metrics, logger, token: TOKEN });
  return {
    app,
    dataDir,
    async upload(program: string, modules: Record<string, string>, file = "session.dipronn") {
      const form = new FormData();
      form.append("program", new File([program], file));
      for (const [name, source] of Object.entries(modules)) form.append("module", new File([source], name));
      const res = await app.request("/node/sessions", { method: "POST", body: form, headers: auth });
      return { status: res.status, body: await res.json() };
    },
    async session(name: string): Promise<SessionStatus> {
      return await (await app.request(`/node/sessions/${name}`)).json();
    },
    async nodeStatus() {
      return (await (await app.request("/status")).json()).roles.node;
    },
    async metricsText() {
      return await (await app.request("/metrics")).text();
    },
    async [Symbol.asyncDispose]() {
      await role.stop(new AbortController().signal);
      await Deno.remove(dataDir, { recursive: true });
    },
  };
}

interface SandboxFigures {
  state: string;
  pid: number | null;
  restarts: number;
  last_error: string | null;
  memory_kills: number;
  deadline_kills: number;
  denials: number;
  denied: string[];
  packets_in: number;
  packets_out: number;
  dropped: Record<string, number>;
  next_start_ms?: number;
}

interface SessionStatus {
  aps: { name: string; sandbox?: SandboxFigures & { group: string } }[];
  vms: { name: string; sandbox?: SandboxFigures }[];
  sandboxes?: (SandboxFigures & { group: string; aps: string[] })[];
}

const sandboxOf = (s: SessionStatus, ap: string) => s.aps.find((a) => a.name === ap)!.sandbox!;

/** A UDP socket on loopback that keeps what it receives. */
function receiver() {
  const socket = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const got: Uint8Array[] = [];
  const loop = (async () => {
    try {
      for (;;) got.push((await socket.receive())[0]);
    } catch { /* closed */ }
  })();
  return {
    port: (socket.addr as Deno.NetAddr).port,
    got,
    async [Symbol.asyncDispose]() {
      socket.close();
      await loop;
    },
  };
}

const sender = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
async function send(port: number, datagrams: Uint8Array[]): Promise<void> {
  for (const d of datagrams) await sender.send(d, { transport: "udp", hostname: "127.0.0.1", port });
}

/** An RTP datagram: payload type `pt`, sequence `seq`, 20 bytes of payload 0x11. */
function rtp(pt: number, seq: number): Uint8Array {
  const d = new Uint8Array(32).fill(0x11);
  d[0] = 0x80;
  d[1] = pt;
  d[2] = seq >> 8;
  d[3] = seq & 0xff;
  return d;
}

const example = (name: string) => Deno.readTextFileSync(new URL(name, EXAMPLES));

Deno.test("an uploaded VM group runs the shipped examples in one sandbox process beside a built-in counter", async () => {
  await using env = await setup();
  await using out = receiver();
  const input = freeUdpPort();
  const { status, body } = await env.upload(
    `Project marked;
{ VM name="my_VM1" ref=uploaded;
  { AP name="Mark" ref=upload.watermark;
      inputs = in(DIPRONN_INPUT(${input}));
      outputs = out(Filter.in);
      offset = 12;
      mark = 255;
  }
  { AP name="Filter" ref=upload.rtp_filter;
      inputs = in;
      outputs = out(Dup.in);
      drop_payload_type = 0;
  }
  { AP name="Dup" ref=localservice.duplicator;
      inputs = in;
      outputs = o1(Count.in), o2(DIPRONN_OUTPUT("127.0.0.1:${out.port}"));
  }
  { AP name="Count" ref=localservice.counter;
      inputs = in;
  }
}
`,
    { "watermark.ts": example("watermark.ts"), "rtp_filter.ts": example("rtp_filter.ts") },
  );
  assert.equal(status, 201, JSON.stringify(body));
  const datagrams = Array.from({ length: 40 }, (_, i) => rtp(i % 2 ? 0 : 96, i));
  await send(input, datagrams);
  await until("20 datagrams of payload type 96", () => out.got.length >= 20);
  assert.ok(out.got.every((d) => (d[1] & 0x7f) === 96), "payload type 0 was dropped");
  assert.ok(out.got.every((d) => d[12] === 255 && d[13] === 0x11), "byte 12 stamped, the rest untouched");
  assert.deepEqual(out.got.map((d) => (d[2] << 8) | d[3]), datagrams.flatMap((_, i) => i % 2 ? [] : [i]));

  const s = await env.session("marked");
  const mark = sandboxOf(s, "Mark");
  const filter = sandboxOf(s, "Filter");
  assert.equal(mark.state, "running");
  assert.equal(mark.group, "my_VM1");
  assert.ok(mark.pid !== null && mark.pid === filter.pid, "the group's uploaded APs share one process");
  assert.equal(s.sandboxes?.length, 1);
  assert.deepEqual(s.sandboxes![0].aps, ["Mark", "Filter"]);
  assert.equal(s.sandboxes![0].packets_in, 80, "40 into Mark, 40 from Mark into Filter");
  const shared = (s.sandboxes![0] as unknown as { batches_shared: number }).batches_shared;
  assert.ok(shared >= 1, `batches crossed in the memory shared with the sandbox: ${shared}`);
  assert.equal(s.vms[0].sandbox?.state, "running");
  const count = await poll("the counter's figures", async () => {
    const c = (await env.session("marked")).aps.find((a) => a.name === "Count") as unknown as {
      inputs: { packets: number }[];
    };
    return c.inputs[0].packets >= 20 ? c : null;
  });
  assert.equal(count.inputs[0].packets, 20);
  const node = await env.nodeStatus();
  assert.deepEqual(node.sandbox_processes, { used: 1, max: 16 });
  const metrics = await env.metricsText();
  assert.match(metrics, /edgenode_session_sandbox_up\{session="marked",group="my_VM1"\} 1/);
  assert.match(metrics, /edgenode_session_sandbox_packets_in_total\{session="marked",group="my_VM1"\} 80/);
  assert.match(
    metrics,
    /edgenode_session_sandbox_batches_shared_total\{session="marked",group="my_VM1"\} [1-9]/,
  );
  assert.match(
    metrics,
    /edgenode_session_sandbox_dropped_total\{session="marked",group="my_VM1",reason="deadline"\} 0/,
  );

  const stop = await env.app.request("/node/sessions/marked", { method: "DELETE", headers: auth });
  assert.equal(stop.status, 200);
  await stop.body?.cancel();
  const pid = mark.pid!;
  const alive = await new Deno.Command("kill", { args: ["-0", String(pid)], stderr: "null" }).output();
  assert.equal(alive.success, false, "the sandbox process ended with its session");
  assert.doesNotMatch(await env.metricsText(), /session_sandbox/);
  assert.deepEqual((await env.nodeStatus()).sandbox_processes, { used: 0, max: 16 });
});

Deno.test("an upload that reads a file, opens a socket, runs a process, reads the environment, calls FFI or imports a URL is denied and /status says so", async () => {
  await using env = await setup();
  await using out = receiver();
  const input = freeUdpPort();
  const attempts = {
    "read_file.js": trying(`Deno.readTextFile("/etc/hostname")`),
    "socket.js": trying(`Deno.connect({ hostname: "127.0.0.1", port: 9 })`),
    "process.js": trying(`new Deno.Command("/bin/true").output()`),
    "env.js": trying(`Promise.resolve().then(() => Deno.env.get("HOME"))`),
    "ffi.js": trying(`Promise.resolve().then(() => Deno.dlopen("libc.so.6", {}))`),
    "url.js": trying(`import("https://example.com/x.js")`),
  };
  const names = Object.keys(attempts).map((f) => f.replace(".js", ""));
  const { status, body } = await env.upload(
    `Project denied;
{ AP name="Dup" ref=localservice.duplicator;
    inputs = in(DIPRONN_INPUT(${input}));
    outputs = ${
      names.map((n) => `o_${n}(T_${n}.in)`).join(", ")
    }, last(DIPRONN_OUTPUT("127.0.0.1:${out.port}"));
}
{ VM name="tries" ref=attempts;
${names.map((n) => `  { AP name="T_${n}" ref=upload.${n}; inputs = in; }`).join("\n")}
}
`,
    attempts,
  );
  assert.equal(status, 201, JSON.stringify(body));
  await send(input, [rtp(96, 1)]);
  // One attempt may be listed twice (read and net access were, on a busy box): six denials need not be six attempts.
  const kinds = ["read access", "net access", "run access", "env access", "ffi access"];
  const sandbox = await poll("a denial of each attempt", async () => {
    const s = (await env.session("denied")).sandboxes![0];
    const seen = s.denied.join("\n");
    return kinds.every((what) => seen.includes(what)) &&
        /remote specifier|--no-remote|example\.com/.test(seen)
      ? s
      : null;
  });
  const denied = sandbox.denied.join("\n");
  for (const what of kinds) assert.match(denied, new RegExp(what), `${what} in ${denied}`);
  assert.match(denied, /remote specifier|--no-remote|example\.com/);
  assert.equal(sandbox.state, "running", "a denial is an error of the handler, not of the sandbox");
  await until("the session's other branch", () => out.got.length === 1);
});

Deno.test("an uploaded infinite loop is stopped within its deadline while its session and a second session keep flowing", async () => {
  await using env = await setup({ deadline: 200 });
  await using outA = receiver();
  await using outB = receiver();
  const inA = freeUdpPort();
  const inB = freeUdpPort();
  const a = await env.upload(
    `Project spinning;
{ AP name="Dup" ref=localservice.duplicator;
    inputs = in(DIPRONN_INPUT(${inA}));
    outputs = o1(Spin.in), o2(DIPRONN_OUTPUT("127.0.0.1:${outA.port}"));
}
{ AP name="Spin" ref=upload.loops; inputs = in; }
`,
    { "loops.js": LOOPS_ON_FF },
  );
  assert.equal(a.status, 201, JSON.stringify(a.body));
  const b = await env.upload(
    `Project neighbour;
{ AP name="Pass" ref=upload.pass;
    inputs = in(DIPRONN_INPUT(${inB}));
    outputs = out(DIPRONN_OUTPUT("127.0.0.1:${outB.port}"));
}
`,
    { "pass.js": `${PORTS}export function handle(_i, batch) { return [batch]; }\n` },
  );
  assert.equal(b.status, 201, JSON.stringify(b.body));
  const started = performance.now();
  await send(inA, [new Uint8Array([0xff, 1, 2, 3])]);
  for (let i = 0; i < 20; i++) {
    await send(inA, [new Uint8Array([1, i])]);
    await send(inB, [new Uint8Array([2, i])]);
  }
  const spin = await poll("the deadline kill", async () => {
    const s = sandboxOf(await env.session("spinning"), "Spin");
    return s.deadline_kills >= 1 ? s : null;
  });
  assert.ok(performance.now() - started < 5000);
  assert.match(String(spin.last_error), /did not return within 200 ms/);
  await until("session A's other branch", () => outA.got.length === 21);
  await until("session B", () => outB.got.length === 20);
  assert.ok(outB.got.every((d, i) => d[0] === 2 && d[1] === i), "in order and whole");
  await until("the spinner restarted", async () => {
    const s = sandboxOf(await env.session("spinning"), "Spin");
    return s.state === "running" && s.restarts >= 1;
  });
  await send(inA, [new Uint8Array([1, 99])]);
  await until("the spinner passes again", async () => {
    const s = sandboxOf(await env.session("spinning"), "Spin");
    return s.packets_out >= 1;
  });
});

Deno.test("uploaded memory bombs (a growing array, a growing set of ArrayBuffers) are stopped and the node lives", async () => {
  // A deadline long enough for the bombs to reach their limits (a short one would stop them first).
  await using env = await setup({ heap_mb: 48, memory_mb: 128, deadline: 20_000 });
  await using out = receiver();
  const input = freeUdpPort();
  const { status, body } = await env.upload(
    `Project bombs;
{ AP name="Dup" ref=localservice.duplicator;
    inputs = in(DIPRONN_INPUT(${input}));
    outputs = o1(Arrays.in), o2(Buffers.in), o3(DIPRONN_OUTPUT("127.0.0.1:${out.port}"));
}
{ AP name="Arrays" ref=upload.array_bomb; inputs = in; }
{ AP name="Buffers" ref=upload.buffer_bomb; inputs = in; }
`,
    { "array_bomb.js": ARRAY_BOMB, "buffer_bomb.js": BUFFER_BOMB },
  );
  assert.equal(status, 201, JSON.stringify(body));
  // Read while both run: after a kill a sandbox has no pid until its restart.
  const pids = await poll("both bombs running", async () => {
    const s = await env.session("bombs");
    const both = [sandboxOf(s, "Arrays").pid, sandboxOf(s, "Buffers").pid];
    return both.every((pid) => typeof pid === "number") ? both : null;
  });
  assert.notEqual(pids[0], pids[1], "ungrouped APs have a process each");
  await send(input, [rtp(96, 1)]);
  const s = await poll("both bombs stopped", async () => {
    const s = await env.session("bombs");
    return sandboxOf(s, "Arrays").memory_kills >= 1 && sandboxOf(s, "Buffers").memory_kills >= 1 ? s : null;
  }, 30_000);
  assert.match(String(sandboxOf(s, "Buffers").last_error), /out of memory/);
  await send(input, [rtp(96, 2)]);
  await until("the session's own branch, after the bombs", () => out.got.length === 2);
  assert.equal((await env.app.request("/healthz")).status < 500, true);
});

Deno.test("a multipart body holding only a program starts it as a program like any other; one naming an upload it lacks is refused at the AP", async () => {
  await using env = await setup();
  const port = freeUdpPort();
  const plain = await env.upload(
    `Project plain;\n{ AP name="C" ref=localservice.counter; inputs = in(DIPRONN_INPUT(${port})); }\n`,
    {},
  );
  assert.equal(plain.status, 201, JSON.stringify(plain.body));
  const lacking = await env.upload(
    `Project lacking;\n{ AP name="U" ref=upload.gone; inputs = in(DIPRONN_INPUT(${freeUdpPort()})); }\n`,
    {},
  );
  assert.equal(lacking.status, 400, JSON.stringify(lacking.body));
  assert.match(JSON.stringify(lacking.body.errors), /session\.dipronn:2:\d+: .*upload\.gone/);
});

Deno.test("a syntax error in an uploaded module is refused with its file, line and column, and nothing starts", async () => {
  await using env = await setup();
  const input = freeUdpPort();
  const { status, body } = await env.upload(
    `Project broken;
{ AP name="F" ref=upload.helper_user;
    inputs = in(DIPRONN_INPUT(${input}));
}
`,
    {
      "helper_user.ts":
        `${PORTS}import { twice } from "./helper.ts";\nexport function handle(_i, b) { return [twice(b)]; }\n`,
      "helper.ts": `export function twice(b) {\n  return b.concat(b;\n}\n`,
    },
  );
  assert.equal(status, 400, JSON.stringify(body));
  assert.equal(body.errors.length, 1);
  assert.equal(body.errors[0].file, "helper.ts");
  assert.equal(body.errors[0].line, 2);
  assert.ok(body.errors[0].col > 1, JSON.stringify(body.errors[0]));
  assert.doesNotMatch(JSON.stringify(body), /edgenode-sandbox-/, "the node's paths are not shown");
  assert.deepEqual(await (await env.app.request("/node/sessions")).json(), []);
  assert.deepEqual((await env.nodeStatus()).sandbox_processes, { used: 0, max: 16 });
  // The port is free again: nothing holds it.
  Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: input }).close();
});

Deno.test("an uploaded AP's wrong port name or parameter is refused at its place in the program", async () => {
  await using env = await setup();
  const { status, body } = await env.upload(
    `Project wrong;
{ AP name="F" ref=upload.rtp_filter;
    inputs = in(DIPRONN_INPUT(${freeUdpPort()}));
    drop_payload_type = 200;
    colour = "red";
}
{ AP name="G" ref=upload.nothing; inputs = in; }
{ AP name="H" ref=upload.rtp_filter; inputs = input(DIPRONN_INPUT(${freeUdpPort()})); outputs = o(G.in); }
`,
    { "rtp_filter.ts": example("rtp_filter.ts") },
  );
  assert.equal(status, 400, JSON.stringify(body));
  const texts = body.errors.map((e: { text: string }) => e.text).join("\n");
  assert.match(texts, /session\.dipronn:4:\d+: F\.drop_payload_type: must be at most 127/);
  assert.match(texts, /session\.dipronn:5:\d+: upload\.rtp_filter has no parameter "colour"/);
  assert.match(texts, /session\.dipronn:7:\d+: Unknown AP kind "upload\.nothing"/);
  assert.match(
    texts,
    /session\.dipronn:8:\d+: H \(upload\.rtp_filter\): it has no input "input" \(its inputs: in\)/,
  );
  assert.match(
    texts,
    /session\.dipronn:8:\d+: H \(upload\.rtp_filter\): it has no output "o" \(its outputs: out\)/,
  );
});

Deno.test("an uploaded AP that crashes on every batch is restarted with a growing backoff", async () => {
  await using env = await setup();
  const input = freeUdpPort();
  const { status, body } = await env.upload(
    `Project crashing;
{ AP name="Exits" ref=upload.exits; inputs = in(DIPRONN_INPUT(${input})); }
`,
    { "exits.js": EXITS },
  );
  assert.equal(status, 201, JSON.stringify(body));
  const delays: number[] = [];
  for (let crash = 1; crash <= 3; crash++) {
    await until(
      `run ${crash} ready`,
      async () => sandboxOf(await env.session("crashing"), "Exits").state === "running",
    );
    await send(input, [rtp(96, crash)]);
    const s = await poll(`crash ${crash}`, async () => {
      const s = sandboxOf(await env.session("crashing"), "Exits");
      return s.state === "backoff" && s.restarts === crash - 1 ? s : null;
    });
    delays.push(s.next_start_ms!);
    assert.match(String(s.last_error), /exit code 3/);
  }
  assert.ok(delays[1] > delays[0] && delays[2] > delays[1], `backoff grows: ${delays}`);
  assert.equal(sandboxOf(await env.session("crashing"), "Exits").dropped.crashed, 3);
});

Deno.test("an uploaded program that declares files keeps them in its own directory of the data directory, within its bytes", async () => {
  await using env = await setup({ storage_bytes: 20_000 });
  const input = freeUdpPort();
  const keeper = `${PORTS}export const needs = { files: "write" };
let n = 0;
export function handle(_i, batch) {
  n += batch.length;
  Deno.writeTextFileSync("count.txt", String(n));
  Deno.writeFileSync(\`chunk-\${n}.bin\`, new Uint8Array(6000));
  return [batch];
}
`;
  const { status, body } = await env.upload(
    `Project keeping;
{ AP name="Keep" ref=upload.keeper; inputs = in(DIPRONN_INPUT(${input})); }
`,
    { "keeper.js": keeper },
  );
  assert.equal(status, 201, JSON.stringify(body));
  // A directory of this run of the session's own (a new name each start), its group's under it.
  const [root] = [...Deno.readDirSync(`${env.dataDir}/uploads`)].map((e) => e.name);
  assert.match(root, /^keeping-[0-9a-f]{8}$/);
  const dir = `${env.dataDir}/uploads/${root}/ap_Keep`;
  await send(input, [rtp(96, 1)]);
  await until("its file", () => {
    try {
      return Deno.readTextFileSync(`${dir}/count.txt`) === "1";
    } catch {
      return false;
    }
  });
  let s = sandboxOf(await env.session("keeping"), "Keep");
  assert.equal(s.denials, 0, JSON.stringify(s.denied));
  // Three more chunks of 6000 B take it over its 20,000 bytes: it is stopped for good, its files kept.
  for (let i = 2; i <= 4; i++) {
    await until(`file ${i - 1} written`, () => {
      try {
        return Deno.readTextFileSync(`${dir}/count.txt`) === String(i - 1);
      } catch {
        return false;
      }
    });
    await send(input, [rtp(96, i)]);
  }
  s = await poll("the storage limit", async () => {
    const s = sandboxOf(await env.session("keeping"), "Keep");
    return s.state === "failed" ? s : null;
  });
  assert.match(
    String(s.last_error),
    /its files hold \d+ bytes, over its 20000 \(node\.uploads\.storage_bytes\)/,
  );
  assert.ok(Deno.statSync(`${dir}/chunk-1.bin`).isFile);
  // Storage lives as long as the session.
  const stop = await env.app.request("/node/sessions/keeping", { method: "DELETE", headers: auth });
  assert.equal(stop.status, 200);
  await stop.body?.cancel();
  assert.deepEqual([...Deno.readDirSync(`${env.dataDir}/uploads`)], []);
});

Deno.test("a node that gives uploads no storage refuses a program that declares files, at its place", async () => {
  await using env = await setup({ storage_bytes: 0 });
  const { status, body } = await env.upload(
    `Project nostore;
{ AP name="Keep" ref=upload.keeper; inputs = in(DIPRONN_INPUT(${freeUdpPort()})); }
`,
    {
      "keeper.js":
        `${PORTS}export const needs = { files: "read" };\nexport function handle(_i, b) { return [b]; }\n`,
    },
  );
  assert.equal(status, 400, JSON.stringify(body));
  assert.match(
    body.errors[0].text,
    /session\.dipronn:2:\d+: Keep \(upload\.keeper\): it declares needs\.files = "read" and this node gives uploads no storage/,
  );
});

Deno.test("a node with uploads off refuses a program with modules, and says how to turn them on", async () => {
  await using env = await setup({ enabled: false });
  const { status, body } = await env.upload(`Project off;\n{ AP name="F" ref=upload.x; inputs = in; }\n`, {
    "x.js": PORTS,
  });
  assert.equal(status, 400);
  assert.match(body.error, /node\.uploads\.enabled/);
});

globalThis.addEventListener("unload", () => sender.close());
