/**
 * Three node roles in one process, their status APIs joined through `app.request()` (the cluster's fetch is routed
 * to the peer's app; no HTTP sockets): a session with parts pinned to the three starts all or nothing through the
 * operator route, a port clash on one node leaves nothing on the others, stop reaches every part, usage and the
 * dry run answer, and unsigned requests to /cluster/* are refused and counted in /status and /metrics.
 */
import assert from "node:assert/strict";
import type { ManualClock } from "../../lib/core/clock.ts";
import { openUdp } from "../../lib/net/udp.ts";
import { until } from "../_support/until.ts";
import { freeUdpPort as freePort } from "../_support/ports.ts";
import { auth, CLUSTER_TOKEN, type InProcessNode as Node, inProcessNodes, LO } from "./_in_process.ts";

const NAMES = ["brno", "prague", "liberec"] as const;

const threeNodes = () => inProcessNodes(NAMES);

/** In on brno (fed from outside), Mid on prague (with an input of its own), Last on liberec. */
const program = (inPort: number, midPort: number) =>
  `Project split;
{ AP name="In" ref=localservice.forwarder; node = "brno"; inputs = in(DIPRONN_INPUT(${inPort})); outputs = out(Mid.in); }
{ AP name="Mid" ref=localservice.forwarder; node = "prague"; inputs = in, side(DIPRONN_INPUT(${midPort})); outputs = out(Last.in); }
{ AP name="Last" ref=localservice.counter; node = "liberec"; inputs = in; }
`;

async function status(node: Node): Promise<Record<string, unknown>> {
  const body = await (await node.app.request("/status")).json();
  return body.roles.node;
}

const sessionsOn = async (node: Node) => Object.keys((await status(node)).sessions as object);
const preparedOn = async (node: Node) => (await status(node)).prepared as unknown[];

Deno.test("cluster routes start a session on three nodes, and stop reaches every part", async () => {
  await using c = await threeNodes();
  const inPort = freePort();
  const res = await c.nodes.brno.app.request("/node/cluster/sessions", {
    method: "POST",
    headers: auth,
    body: program(inPort, freePort()),
  });
  const body = await res.json();
  assert.equal(res.status, 201, JSON.stringify(body));
  assert.equal(body.state, "running");
  assert.deepEqual(body.placement.nodeOf, { In: "brno", Mid: "prague", Last: "liberec" });
  for (const n of NAMES) {
    assert.equal(body.nodes[n].state, "committed");
    assert.deepEqual(await sessionsOn(c.nodes[n]), ["split"]);
  }
  const cluster = (await status(c.nodes.brno)).cluster as {
    coordinated: { sessions: Record<string, unknown> };
  };
  assert.equal((cluster.coordinated.sessions.split as { state: string }).state, "running");

  // Datagrams into brno reach the counter on liberec over the links.
  const tx = openUdp({ host: LO, port: 0 });
  try {
    const data = new Uint8Array(40);
    for (let i = 0; i < 20; i++) {
      tx.send(
        { count: 1, data: () => data, length: () => 40, from: () => tx.local, truncated: () => false },
        tx.destinations([{ host: LO, port: inPort }]),
      );
    }
    const counted = async () => {
      const s = (await status(c.nodes.liberec)).sessions as Record<
        string,
        { aps: { counted?: { packets: number } }[] }
      >;
      return s.split.aps.find((a) => a.counted)?.counted?.packets ?? 0;
    };
    await until("20 datagrams counted on liberec", async () => (await counted()) === 20);
  } finally {
    await tx.close();
  }

  const stop = await c.nodes.brno.app.request("/node/cluster/sessions/split", {
    method: "DELETE",
    headers: auth,
  });
  assert.equal(stop.status, 200);
  for (const n of NAMES) assert.deepEqual(await sessionsOn(c.nodes[n]), []);
});

Deno.test("cluster routes start nothing anywhere when one node's part clashes on a port", async () => {
  await using c = await threeNodes();
  const midPort = freePort();
  // prague runs a session of its own on the port Mid's input wants.
  const own = await c.nodes.prague.app.request("/node/sessions", {
    method: "POST",
    headers: auth,
    body: `Project own;\n{ AP name="C" ref=localservice.counter; inputs = in(DIPRONN_INPUT(${midPort})); }\n`,
  });
  assert.equal(own.status, 201);
  const res = await c.nodes.brno.app.request("/node/cluster/sessions", {
    method: "POST",
    headers: auth,
    body: program(freePort(), midPort),
  });
  const body = await res.json();
  assert.equal(res.status, 409, JSON.stringify(body));
  assert.equal(body.state, "failed");
  assert.equal(body.nodes.prague.state, "refused");
  assert.match(body.nodes.prague.reason, new RegExp(`${midPort}.*session own`));
  assert.match(body.error, /nothing was left running/);
  assert.deepEqual(await sessionsOn(c.nodes.brno), []);
  assert.deepEqual(await sessionsOn(c.nodes.liberec), []);
  assert.deepEqual(await sessionsOn(c.nodes.prague), ["own"]);
  for (const n of NAMES) assert.deepEqual(await preparedOn(c.nodes[n]), []);
});

Deno.test("cluster routes answer the dry run with the placement and prepare nothing", async () => {
  await using c = await threeNodes();
  const res = await c.nodes.brno.app.request("/node/cluster/plan", {
    method: "POST",
    headers: auth,
    body: program(freePort(), freePort()),
  });
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.equal(body.dry_run, true);
  assert.deepEqual(body.placement.nodeOf, { In: "brno", Mid: "prague", Last: "liberec" });
  assert.deepEqual(
    body.links.map((l: { from: string; to: string; fromNode: string; toNode: string }) =>
      `${l.from}@${l.fromNode} -> ${l.to}@${l.toNode}`
    ),
    ["In@brno -> Mid@prague", "Mid@prague -> Last@liberec"],
  );
  assert.deepEqual(body.usage.map((u: { name: string }) => u.name).sort(), ["brno", "liberec", "prague"]);
  assert.equal(body.usage[0].memory, 0.2);
  for (const n of NAMES) assert.deepEqual(await preparedOn(c.nodes[n]), []);
});

Deno.test("cluster routes refuse unsigned requests to /cluster/* with 401, counted in /status and /metrics", async () => {
  await using c = await threeNodes();
  assert.deepEqual(c.nodes.prague.role.selfGuarded, ["/cluster/"]);
  const usage = await c.nodes.prague.app.request("/cluster/usage");
  assert.equal(usage.status, 401);
  const prepare = await c.nodes.prague.app.request("/cluster/sessions/x/prepare", {
    method: "POST",
    body: "{}",
  });
  assert.equal(prepare.status, 401);
  const counters = ((await status(c.nodes.prague)).cluster as { counters: Record<string, number> }).counters;
  assert.equal(counters.auth_refused_no_header, 2);
  const metrics = await (await c.nodes.prague.app.request("/metrics")).text();
  assert.match(metrics, /^edgenode_cluster_auth_refused_no_header_total\{node="prague"\} 2$/m);
  assert.ok(
    !JSON.stringify(await status(c.nodes.prague)).includes(CLUSTER_TOKEN),
    "/status never shows the token",
  );
});

/** Runs heartbeat rounds: one second of the clock at a time, letting the signed exchanges settle between. */
async function seconds(clock: ManualClock, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    clock.advance(1000);
    for (let k = 0; k < 20; k++) await new Promise((r) => setTimeout(r, 0));
  }
}

for (const setting of ["stop", "restart"] as const) {
  Deno.test(`cluster routes notice a node killed mid-session and stop the session cleanly (on_node_loss = ${setting})`, async () => {
    await using c = await threeNodes();
    const text = program(freePort(), freePort()).replace(
      "Project split;",
      `Project split;\non_node_loss = ${setting};`,
    );
    const res = await c.nodes.brno.app.request("/node/cluster/sessions", {
      method: "POST",
      headers: auth,
      body: text,
    });
    assert.equal(res.status, 201, JSON.stringify(await res.json()));
    await seconds(c.clock, 2);
    await c.kill("liberec");
    const state = async () => {
      const cluster = (await status(c.nodes.brno)).cluster as {
        coordinated: {
          lost: string[];
          sessions: Record<string, { state: string; reason?: string; on_node_loss: string }>;
        };
        peers_heard: Record<string, { state: string }>;
      };
      return cluster;
    };
    await seconds(c.clock, 3);
    assert.deepEqual((await state()).coordinated.lost, [], "silent 3 s is not yet lost");
    await seconds(c.clock, 2);
    const after = await state();
    assert.deepEqual(after.coordinated.lost, ["liberec"]);
    assert.equal(after.peers_heard.liberec.state, "lost");
    await until(
      "the session to settle",
      async () => (await state()).coordinated.sessions.split.state === "stopped",
    );
    const s = (await state()).coordinated.sessions.split;
    assert.equal(s.on_node_loss, setting);
    // With restart, Last is pinned to liberec: no other node may take it, so the session stops, saying why.
    assert.match(
      s.reason!,
      setting === "stop"
        ? /node liberec lost: the session was stopped on every node/
        : /node liberec lost; a restart without it failed: Cannot place session split/,
    );
    assert.deepEqual(await sessionsOn(c.nodes.brno), []);
    assert.deepEqual(await sessionsOn(c.nodes.prague), []);
  });
}

Deno.test("cluster routes stop the parts of a killed coordinator on the other nodes when there is no etcd", async () => {
  await using c = await threeNodes();
  const res = await c.nodes.brno.app.request("/node/cluster/sessions", {
    method: "POST",
    headers: auth,
    body: program(freePort(), freePort()),
  });
  assert.equal(res.status, 201, JSON.stringify(await res.json()));
  await seconds(c.clock, 2);
  assert.deepEqual(await sessionsOn(c.nodes.prague), ["split"]);
  await c.kill("brno");
  await seconds(c.clock, 5);
  await until("the parts to stop", async () => (await sessionsOn(c.nodes.prague)).length === 0);
  await until("the parts to stop", async () => (await sessionsOn(c.nodes.liberec)).length === 0);
  for (const n of [c.nodes.prague, c.nodes.liberec]) {
    const cluster = (await status(n)).cluster as {
      parts: Record<string, unknown>;
      parts_orphaned: { session: string; coordinator: string; undone: string; reason: string }[];
      counters: Record<string, number>;
    };
    assert.deepEqual(cluster.parts, {});
    assert.equal(cluster.parts_orphaned.length, 1);
    assert.equal(cluster.parts_orphaned[0].session, "split");
    assert.equal(cluster.parts_orphaned[0].undone, "stopped");
    assert.match(cluster.parts_orphaned[0].reason, /coordinator brno lost \(no etcd/);
    assert.equal(cluster.counters.parts_orphaned, 1);
  }
  // The name is free again on the surviving nodes.
  const again = await c.nodes.prague.app.request("/node/cluster/sessions", {
    method: "POST",
    headers: auth,
    body: program(freePort(), freePort()).replaceAll('node = "brno"', 'node = "prague"'),
  });
  assert.equal(again.status, 201, JSON.stringify(await again.json()));
});

Deno.test("cluster routes place the APs that feed receivers near the nodes the request names", async () => {
  await using c = await threeNodes();
  const text = `Project near;
{ AP name="In" ref=localservice.forwarder; node = "brno"; inputs = in(DIPRONN_INPUT(${freePort()})); outputs = out(Out.in); }
{ AP name="Out" ref=localservice.forwarder; inputs = in; outputs = out(DIPRONN_OUTPUT); }
`;
  const plan = (near: string) =>
    c.nodes.brno.app.request(`/node/cluster/plan?near=${near}`, {
      method: "POST",
      headers: auth,
      body: text,
    });
  for (const near of ["liberec", "prague,liberec"]) {
    const res = await plan(near);
    const body = await res.json();
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.equal(body.placement.nodeOf.Out, near.split(",")[0], JSON.stringify(body.placement.why));
  }
  const unknown = await plan("vienna");
  assert.equal(unknown.status, 400);
  assert.match((await unknown.json()).error, /Cannot place near vienna: not a node of this cluster/);
  assert.equal((await plan("bad%20name")).status, 400);
});
