/**
 * Uploaded active programs in a session across nodes: two node roles in one process (brno, prague), their status
 * APIs joined through `app.request()` (./_in_process.ts), started with a multipart upload to brno's
 * POST /node/cluster/sessions. The sandboxes are real `deno run` children and the link between the nodes is real
 * UDP on loopback.
 */
import assert from "node:assert/strict";
import { openUdp } from "../../lib/net/udp.ts";
import { auth, type InProcessNode, inProcessNodes, LO, nodeStatus } from "./_in_process.ts";
import { poll } from "../_support/until.ts";
import { freeUdpPort } from "../_support/ports.ts";
import { PASS_THROUGH, PORTS } from "../sandbox/_programs.ts";
import { ClusterStore, MAX_SESSION_WRITE, SessionTooLarge } from "../../lib/cluster/store.ts";
import type { EtcdClient } from "../../lib/cluster/etcd.ts";

const NAMES = ["brno", "prague"] as const;
type Name = typeof NAMES[number];
type Node = InProcessNode;

/** Two nodes; `uploads` sets each one's node.uploads keys. */
async function twoNodes(uploads: Partial<Record<Name, Record<string, unknown>>> = {}) {
  // Loading modules starts a sandbox child: a busy test box may take a few seconds.
  const c = await inProcessNodes(NAMES, {
    uploads,
    cluster: { prepare_timeout: 30_000, reservation_timeout: 60_000 },
  });
  const { nodes } = c;
  return {
    nodes,
    /** Starts (or, with `plan`, plans) a session across nodes through brno with the program and its modules. */
    async start(program: string, modules: Record<string, string>, path = "/node/cluster/sessions") {
      const form = new FormData();
      form.append("program", new File([program], "session.dipronn"));
      for (const [name, source] of Object.entries(modules)) form.append("module", new File([source], name));
      const res = await nodes.brno.app.request(path, { method: "POST", body: form, headers: auth });
      return { status: res.status, body: await res.json() };
    },
    [Symbol.asyncDispose]: () => c[Symbol.asyncDispose](),
  };
}

/** What runs, is prepared and was asked to prepare on a node. */
async function heldOn(node: Node) {
  const s = await nodeStatus(node);
  return {
    running: Object.keys(s.sessions),
    prepared: s.prepared.length,
    sandbox_processes: s.sandbox_processes.used,
  };
}

/** In and Last on brno, the uploaded F between them on prague: brno -> prague -> brno over the links. */
const program = (inPort: number) =>
  `Project up;
{ AP name="In" ref=localservice.forwarder; node = "brno"; inputs = in(DIPRONN_INPUT(${inPort})); outputs = out(F.in); }
{ AP name="F" ref=upload.pass; node = "prague"; stamp = 7; inputs = in; outputs = out(Last.in); }
{ AP name="Last" ref=localservice.counter; node = "brno"; inputs = in; }
`;

Deno.test("a session across nodes runs an uploaded AP pinned to another node, and its packets are counted", async () => {
  await using c = await twoNodes();
  const inPort = freeUdpPort();
  const helper = `export const seen = { n: 0 };\n`;
  const { status, body } = await c.start(program(inPort), {
    "pass.ts": PASS_THROUGH,
    "unused_helper.ts": helper,
  });
  assert.equal(status, 201, JSON.stringify(body));
  assert.deepEqual(body.placement.nodeOf, { In: "brno", F: "prague", Last: "brno" });
  // Only prague runs an uploaded AP: it alone got the modules, all of them.
  assert.deepEqual(body.nodes.prague.modules, ["pass.ts", "unused_helper.ts"]);
  assert.equal(body.nodes.brno.modules, undefined);
  assert.deepEqual(await heldOn(c.nodes.brno), { running: ["up"], prepared: 0, sandbox_processes: 0 });
  assert.deepEqual(await heldOn(c.nodes.prague), { running: ["up"], prepared: 0, sandbox_processes: 1 });

  const N = 300;
  const tx = openUdp({ host: LO, port: 0 });
  try {
    const data = new Uint8Array(100);
    for (let i = 0; i < N; i++) {
      tx.send(
        { count: 1, data: () => data, length: () => 100, from: () => tx.local, truncated: () => false },
        tx.destinations([{ host: LO, port: inPort }]),
      );
      if (i % 50 === 49) await new Promise((r) => setTimeout(r, 5));
    }
    await poll(`${N} datagrams counted on brno after prague's uploaded AP`, async () => {
      const aps = (await nodeStatus(c.nodes.brno)).sessions.up.aps as { counted?: { packets: number } }[];
      return aps.find((a) => a.counted)?.counted?.packets === N;
    }, 20_000);
  } finally {
    await tx.close();
  }
  // The member shows the uploaded AP's sandbox figures, in its session and in its part of the cluster session.
  const prague = await nodeStatus(c.nodes.prague);
  const group = prague.sessions.up.sandboxes[0];
  assert.deepEqual(group.aps, ["F"]);
  assert.equal(group.state, "running");
  assert.equal(group.packets_in, N);
  assert.equal(group.packets_out, N);
  assert.equal(prague.cluster.parts.up.sandboxes[0].packets_in, N);

  const stop = await c.nodes.brno.app.request("/node/cluster/sessions/up", {
    method: "DELETE",
    headers: auth,
  });
  assert.equal(stop.status, 200, await stop.text());
  for (const n of NAMES) {
    assert.deepEqual(await heldOn(c.nodes[n]), { running: [], prepared: 0, sandbox_processes: 0 });
  }
});

Deno.test("a syntax error in an uploaded module is refused with its file, line and column, and no node is asked", async () => {
  await using c = await twoNodes();
  const { status, body } = await c.start(program(freeUdpPort()), {
    "pass.ts":
      `${PORTS}import { twice } from "./helper.ts";\nexport function handle(_i, b) { return [twice(b)]; }\n`,
    "helper.ts": `export function twice(b) {\n  return b.concat(b;\n}\n`,
  });
  assert.equal(status, 400, JSON.stringify(body));
  assert.equal(body.errors.length, 1);
  assert.equal(body.errors[0].file, "helper.ts");
  assert.equal(body.errors[0].line, 2);
  assert.ok(body.errors[0].col > 1, JSON.stringify(body.errors[0]));
  assert.match(body.errors[0].text, /^helper\.ts:2:\d+: /);
  for (const n of NAMES) {
    assert.deepEqual(await heldOn(c.nodes[n]), { running: [], prepared: 0, sandbox_processes: 0 });
    const counters = (await nodeStatus(c.nodes[n])).cluster.counters;
    assert.equal(counters.prepares, 0, `${n} was asked nothing`);
  }
  // The dry run refuses it the same way.
  const plan = await c.start(
    program(freeUdpPort()),
    { "pass.ts": `${PORTS}export function handle(\n` },
    "/node/cluster/plan",
  );
  assert.equal(plan.status, 400, JSON.stringify(plan.body));
  assert.equal(plan.body.errors[0].file, "pass.ts");
});

Deno.test("a member whose node takes no uploads refuses its part and the whole start is undone", async () => {
  await using c = await twoNodes({ prague: { enabled: false } });
  const inPort = freeUdpPort();
  const { status, body } = await c.start(program(inPort), { "pass.ts": PASS_THROUGH });
  assert.equal(status, 409, JSON.stringify(body));
  assert.equal(body.nodes.prague.state, "refused");
  assert.match(body.nodes.prague.reason, /node\.uploads\.enabled is false/);
  assert.equal(body.nodes.brno.undone, "released");
  for (const n of NAMES) {
    assert.deepEqual(await heldOn(c.nodes[n]), { running: [], prepared: 0, sandbox_processes: 0 });
  }
  // Nothing holds brno's input port.
  Deno.listenDatagram({ transport: "udp", hostname: LO, port: inPort }).close();
});

Deno.test("a coordinator that takes no uploads answers 400 to a session with modules, and asks no node", async () => {
  await using c = await twoNodes({ brno: { enabled: false } });
  const { status, body } = await c.start(program(freeUdpPort()), { "pass.ts": PASS_THROUGH });
  assert.equal(status, 400, JSON.stringify(body));
  assert.match(body.error, /this node takes no uploaded programs \(node\.uploads\.enabled is false\)/);
  assert.equal((await nodeStatus(c.nodes.prague)).cluster.counters.prepares, 0);
  // Over the upload limits of the coordinator: the same limits as POST /node/sessions.
  await using d = await twoNodes({ brno: { max_modules: 1 } });
  const many = await d.start(program(freeUdpPort()), { "pass.ts": PASS_THROUGH, "b.ts": "export {};\n" });
  assert.equal(many.status, 400, JSON.stringify(many.body));
  assert.match(many.body.error, /it holds 2 modules, at most 1/);
});

Deno.test("ClusterStore refuses a session whose program and modules together are over MAX_SESSION_WRITE, before asking etcd", async () => {
  let asked = 0;
  const etcd = {
    txn: () => {
      asked++;
      return Promise.resolve({ succeeded: true, gets: [], revision: 1 });
    },
  } as unknown as EtcdClient;
  const store = new ClusterStore({ etcd, cluster: "test", valueKey: new Uint8Array(32) });
  const placement = { In: "brno", F: "prague", Last: "brno" };
  // Each under 1 MiB (a program's and node.uploads.max_bytes' default), the two together over the transaction's.
  const text = `# ${"p".repeat(MAX_SESSION_WRITE / 2)}\n${program(5004)}`;
  const upload = {
    modules: { "pass.ts": `// ${"m".repeat(MAX_SESSION_WRITE / 2)}\n${PASS_THROUGH}` },
    kinds: {},
  };
  await store.putSession("a", text, placement);
  await store.putSession("b", program(5004), placement, { upload });
  assert.equal(asked, 2);
  const error = await store.putSession("c", text, placement, { upload }).catch((e) => e);
  assert.ok(error instanceof SessionTooLarge, String(error));
  assert.ok(error.bytes > MAX_SESSION_WRITE);
  assert.equal(error.bytes, store.sessionWriteBytes("c", text, placement, { upload }));
  assert.match(error.message, /^Cannot keep session c in etcd: .* at most 1310720 \(MAX_SESSION_WRITE/);
  assert.equal(asked, 2, "etcd was not asked");
});
