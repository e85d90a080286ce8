/**
 * Uploaded active programs across nodes when the module loads on the coordinator but not on the member that runs
 * it (issue 19): each node holds an upload to its own node.uploads limits and status.max_body, so a member can refuse
 * what its coordinator took. Two node roles in one process (brno coordinates, prague runs the uploaded AP), their
 * status APIs joined through `app.request()` (./_in_process.ts); the sandboxes are real `deno run` children and the
 * link between the nodes is real UDP on loopback.
 */
import assert from "node:assert/strict";
import { auth, type InProcessNode, inProcessNodes, LO, nodeStatus } from "./_in_process.ts";
import { sendDatagrams } from "./_split.ts";
import { poll } from "../_support/until.ts";
import { freeUdpPort } from "../_support/ports.ts";
import { PASS_THROUGH, PORTS } from "../sandbox/_programs.ts";

const NAMES = ["brno", "prague"] as const;
type Name = typeof NAMES[number];
type Node = InProcessNode;

const MiB = 1024 * 1024;

/** Two nodes; `uploads` sets each one's node.uploads keys, `maxBody` each one's status.max_body. */
async function twoNodes(
  o: {
    uploads?: Partial<Record<Name, Record<string, unknown>>>;
    maxBody?: Partial<Record<Name, number>>;
  } = {},
) {
  // Loading modules starts a sandbox child: a busy test box may take a few seconds.
  const c = await inProcessNodes(NAMES, {
    ...o,
    cluster: { prepare_timeout: 30_000, reservation_timeout: 60_000 },
  });
  const { nodes } = c;
  return {
    nodes,
    /** Starts a session across nodes through brno with the program and its modules. */
    async start(program: string, modules: Record<string, string>) {
      const form = new FormData();
      form.append("program", new File([program], "session.dipronn"));
      for (const [name, source] of Object.entries(modules)) form.append("module", new File([source], name));
      const res = await nodes.brno.app.request("/node/cluster/sessions", {
        method: "POST",
        body: form,
        headers: auth,
      });
      return { status: res.status, body: await res.json() };
    },
    async stop(name: string) {
      const res = await nodes.brno.app.request(`/node/cluster/sessions/${name}`, {
        method: "DELETE",
        headers: auth,
      });
      return { status: res.status, body: await res.json() };
    },
    [Symbol.asyncDispose]: () => c[Symbol.asyncDispose](),
  };
}

/** What an operator sees held on a node: its sessions (GET /node/sessions and /status), reservations, sandboxes. */
async function heldOn(node: Node) {
  const s = await nodeStatus(node);
  const listed = await (await node.app.request("/node/sessions")).json() as { name: string }[];
  return {
    listed: listed.map((l) => l.name),
    running: Object.keys(s.sessions),
    prepared: s.prepared.length,
    parts: Object.keys(s.cluster.parts),
    sandbox_processes: s.sandbox_processes.used,
  };
}

const NOTHING = { listed: [], running: [], prepared: 0, parts: [], sandbox_processes: 0 };

/** Nothing of any start is held on either node, and brno's input port is free again. */
async function assertNothingHeld(nodes: Record<Name, Node>, inPort: number, what: string) {
  for (const n of NAMES) assert.deepEqual(await heldOn(nodes[n]), NOTHING, `${what}: ${n} holds nothing`);
  Deno.listenDatagram({ transport: "udp", hostname: LO, port: inPort }).close();
}

/** The refusal an operator gets: 409, the member named with its reason, the coordinator's own part released. */
function assertRefusedBy(
  start: {
    status: number;
    body: {
      state: string;
      error: string;
      nodes: Record<Name, { state: string; reason: string; undone: string }>;
    };
  },
  reason: RegExp,
) {
  const { status, body } = start;
  assert.equal(status, 409, JSON.stringify(body));
  assert.equal(body.state, "failed");
  assert.match(body.error, /^node prague refused: /);
  assert.match(body.error, reason);
  assert.match(body.error, /; nothing was left running$/);
  assert.equal(body.nodes.prague.state, "refused");
  assert.match(body.nodes.prague.reason, reason);
  assert.equal(body.nodes.brno.undone, "released");
}

/** In and Last on brno, the uploaded F between them on prague: brno -> prague -> brno over the links. */
const program = (inPort: number) =>
  `Project up;
{ AP name="In" ref=localservice.forwarder; node = "brno"; inputs = in(DIPRONN_INPUT(${inPort})); outputs = out(F.in); }
{ AP name="F" ref=upload.pass; node = "prague"; stamp = 7; inputs = in; outputs = out(Last.in); }
{ AP name="Last" ref=localservice.counter; node = "brno"; inputs = in; }
`;

/**
 * The corrected start: `modules` run on prague, `n` datagrams into brno reach its counter through prague's uploaded
 * AP and its sandbox; then the session is stopped everywhere and nothing is left.
 */
async function startsAndFlows(
  c: Awaited<ReturnType<typeof twoNodes>>,
  inPort: number,
  modules: Record<string, string>,
  n = 200,
) {
  const { status, body } = await c.start(program(inPort), modules);
  assert.equal(status, 201, JSON.stringify(body));
  assert.deepEqual(body.nodes.prague.modules, Object.keys(modules));
  assert.equal((await heldOn(c.nodes.prague)).sandbox_processes, 1);
  await sendDatagrams(inPort, n);
  await poll(`${n} datagrams counted on brno after prague's uploaded AP`, async () => {
    const aps = (await nodeStatus(c.nodes.brno)).sessions.up.aps as { counted?: { packets: number } }[];
    return aps.find((a) => a.counted)?.counted?.packets === n;
  }, 20_000);
  const group = (await nodeStatus(c.nodes.prague)).sessions.up.sandboxes[0];
  assert.deepEqual([group.aps, group.packets_in, group.packets_out], [["F"], n, n]);
  const stop = await c.stop("up");
  assert.equal(stop.status, 200, JSON.stringify(stop.body));
  await assertNothingHeld(c.nodes, inPort, "after the stop");
}

Deno.test("a member whose node.uploads limits are below the upload refuses its part, naming itself and the limit, and nothing is left anywhere", async () => {
  // brno (the coordinator) has the defaults (1 MiB, 32 modules): it loads every upload below.
  await using c = await twoNodes({ uploads: { prague: { max_bytes: 4096, max_modules: 1 } } });
  const inPort = freeUdpPort();

  const big = `${PASS_THROUGH}// ${"x".repeat(6000)}\n`;
  assertRefusedBy(
    await c.start(program(inPort), { "pass.ts": big }),
    /Cannot use the upload: its modules hold \d+ bytes, at most 4096 \(node\.uploads\.max_bytes\)/,
  );
  await assertNothingHeld(c.nodes, inPort, "over prague's max_bytes");

  assertRefusedBy(
    await c.start(program(inPort), { "pass.ts": PASS_THROUGH, "helper.ts": "export const n = 1;\n" }),
    /Cannot use the upload: it holds 2 modules, at most 1 \(node\.uploads\.max_modules\)/,
  );
  await assertNothingHeld(c.nodes, inPort, "over prague's max_modules");
  const prague = (await nodeStatus(c.nodes.prague)).cluster.counters;
  assert.deepEqual([prague.prepares, prague.prepares_refused], [2, 2]);

  await startsAndFlows(c, inPort, { "pass.ts": PASS_THROUGH });
});

Deno.test("a member that gives uploads no storage refuses a module declaring files, at its place, and nothing is left", async () => {
  await using c = await twoNodes({ uploads: { prague: { storage_bytes: 0 } } });
  const inPort = freeUdpPort();
  const keeper = PASS_THROUGH.replace(PORTS, `${PORTS}export const needs = { files: "write" };\n`);
  const start = await c.start(program(inPort), { "pass.ts": keeper });
  assertRefusedBy(start, /this node gives uploads no storage/);
  // The member's own check, at the AP's place in the program.
  const [error] = start.body.nodes.prague.errors;
  assert.deepEqual([error.file, error.line], ["session.dipronn", 3]);
  assert.match(error.text, /^session\.dipronn:3:\d+: F \(upload\.pass\): it declares needs\.files = "write"/);
  await assertNothingHeld(c.nodes, inPort, "prague gives no storage");

  await startsAndFlows(c, inPort, { "pass.ts": PASS_THROUGH });
});

Deno.test("a module that loads under the coordinator's heap_mb but not under the member's is refused by the member, and nothing is left", async () => {
  // 64 MiB of numbers kept at load: far over prague's 16 MiB heap, far under brno's 256. The child on prague dies
  // out of memory while its module loads: the refusal says so at once, not at prague's start_timeout.
  const hog =
    `${PASS_THROUGH}export const kept = Array.from({ length: 64 }, () => new Array(1 << 17).fill(1.5));\n`;
  await using c = await twoNodes({
    uploads: { brno: { heap_mb: 256, memory_mb: 1024 }, prague: { heap_mb: 16, start_timeout: 8000 } },
  });
  const inPort = freeUdpPort();
  assertRefusedBy(
    await c.start(program(inPort), { "pass.ts": hog }),
    /Cannot start sandbox "up \(loading\)": out of memory \(heap limit 16 MiB\), it ended/,
  );
  await assertNothingHeld(c.nodes, inPort, "over prague's heap");

  await startsAndFlows(c, inPort, { "pass.ts": PASS_THROUGH });
});

Deno.test("modules over a member's status.max_body are refused by that member, named, and nothing is left", async () => {
  // brno takes large uploads (its max_body and max_bytes 4 MiB); prague would load them (max_bytes 4 MiB) but its
  // status API takes bodies of 1 MiB, the default, and the modules travel in the prepare's body.
  await using c = await twoNodes({
    uploads: { brno: { max_bytes: 4 * MiB }, prague: { max_bytes: 4 * MiB } },
    maxBody: { brno: 4 * MiB },
  });
  const inPort = freeUdpPort();
  const padded = (bytes: number) => `${PASS_THROUGH}// ${"x".repeat(bytes)}\n`;
  assertRefusedBy(
    await c.start(program(inPort), { "pass.ts": padded(1.2 * MiB) }),
    /POST \/cluster\/sessions\/up\/prepare: its body of \d+ bytes is over prague's status\.max_body \(HTTP 413\)/,
  );
  await assertNothingHeld(c.nodes, inPort, "over prague's max_body");
  // It never reached prague's cluster routes: nothing was prepared there, nothing needs undoing.
  assert.equal((await nodeStatus(c.nodes.prague)).cluster.counters.prepares, 0);

  // The same modules, smaller than prague's limit with room for the rest of the prepare.
  await startsAndFlows(c, inPort, { "pass.ts": padded(900 * 1024) });
});
