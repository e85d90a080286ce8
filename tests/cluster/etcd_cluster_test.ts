/**
 * Three edgenode processes on 127.0.0.1 sharing a real etcd (tests/_support/etcd.ts): a node killed (SIGKILL) and
 * started again with the same config gets its part back from etcd and datagrams flow through it again; the session
 * outlives the node that received it (another member takes coordination over when its lease expires, the node's part
 * comes back when it restarts, a stop through any node stops every part and empties etcd) or, back within its lease,
 * resumes coordinating it; two nodes asked to start one session name at once: exactly one does; a node whose etcd
 * cannot be reached starts and says why.
 */
import assert from "node:assert/strict";
import { LISTENING, startEdgenode, tempConfig } from "../e2e/_process.ts";
import { until } from "../_support/until.ts";
import { freeTcpPort, freeUdpPort } from "../_support/ports.ts";
import { sendDatagrams, splitProgram } from "./_split.ts";
import {
  auth,
  type EtcdCluster as Cluster,
  LO,
  type Name,
  NAMES,
  TOKEN,
  withEtcdCluster,
} from "./_etcd_cluster.ts";

const CLUSTER_TOKEN = "e2e-etcd-cluster-token-0123456789";

/** Three nodes with one etcd, heartbeats every 200 ms and the given loss timeout. */
const withCluster = (lossTimeout: string, body: (c: Cluster) => Promise<void>) =>
  withEtcdCluster({
    clusterToken: CLUSTER_TOKEN,
    extra: ["heartbeat: 200ms", `loss_timeout: ${lossTimeout}`],
  }, body);

async function startSplit(c: Cluster, via: Name, inPort: number, midPort: number): Promise<Response> {
  return await fetch(`${c.api(via)}/node/cluster/sessions`, {
    method: "POST",
    headers: auth,
    body: splitProgram(inPort, midPort),
  });
}

/** Sends `n` datagrams into brno's In and waits until liberec's counter has counted `total` in all. */
async function sendThrough(c: Cluster, inPort: number, n: number, total: number): Promise<void> {
  await sendDatagrams(inPort, n);
  const counted = async () => {
    const aps = (await c.status("liberec")).sessions.split?.aps as { counted?: { packets: number } }[];
    return aps?.find((a) => a.counted)?.counted?.packets ?? 0;
  };
  await until(`${total} datagrams counted on liberec`, async () => (await counted()) === total);
}

Deno.test("etcd cluster: a node killed and started again gets its part back and datagrams flow through it", async () => {
  await withCluster("10s", async (c) => {
    for (const n of NAMES) await c.start(n);
    const inPort = freeUdpPort();
    const started = await startSplit(c, "brno", inPort, freeUdpPort());
    assert.equal(started.status, 201, await started.text());
    const stored = await c.store.session("split");
    assert.deepEqual(stored?.placement, { In: "brno", Mid: "prague", Last: "liberec" });
    assert.equal(stored?.state?.state, "running");
    assert.equal(stored?.state?.node, "brno");
    assert.deepEqual((await c.store.sessionsOf("prague")).map((p) => p.aps), [["Mid"]]);
    await sendThrough(c, inPort, 100, 100);

    await c.kill("prague");
    await c.start("prague");
    await until("prague to run its part again", async () => (await c.running("prague")).includes("split"));
    const etcd = (await c.status("prague")).cluster.etcd;
    assert.equal(etcd.parts_restored, 1, JSON.stringify(etcd));
    assert.equal(etcd.state, "joined");
    assert.deepEqual(etcd.members, ["brno", "liberec", "prague"]);
    assert.match(etcd.lease, /^\d+$/, "the lease held");
    assert.equal(etcd.last_error, null);
    assert.equal(etcd.endpoints.length, 1);
    assert.equal(etcd.store.sessions_created, 0, "prague wrote no session: it brought its part back");
    assert.equal((await c.status("brno")).cluster.etcd.store.sessions_created, 1);
    // The restarted prague's first datagram to liberec is of a new link epoch: liberec refuses it (unconfirmed) and
    // takes the epoch from the next one on (lib/cluster/link_header.ts ReplayWindow).
    await sendThrough(c, inPort, 100, 199);

    const stop = await fetch(`${c.api("brno")}/node/cluster/sessions/split`, {
      method: "DELETE",
      headers: auth,
    });
    assert.equal(stop.status, 200, await stop.text());
    for (const n of NAMES) assert.deepEqual(await c.running(n), [], `nothing left on ${n}`);
    assert.equal(await c.store.session("split"), undefined);
  });
});

Deno.test("etcd cluster: the session survives the restart of the node that received it, and any node stops it", async () => {
  await withCluster("2s", async (c) => {
    for (const n of NAMES) await c.start(n);
    const inPort = freeUdpPort();
    const midPort = freeUdpPort();
    const started = await startSplit(c, "brno", inPort, midPort);
    assert.equal(started.status, 201, await started.text());

    await c.kill("brno");
    // Its lease expires: the lowest-named live member holding a part (liberec) coordinates the session now.
    await until(
      "liberec to take coordination over",
      async () => (await c.store.session("split"))?.state?.node === "liberec",
      15_000,
      100,
    );
    const coordinated = (await c.status("liberec")).cluster.coordinated.sessions.split;
    assert.equal(coordinated.state, "running", JSON.stringify(coordinated));
    assert.equal(coordinated.nodes.brno.state, "lost");
    assert.equal((await c.status("liberec")).cluster.etcd.takeovers, 1);
    for (const n of ["prague", "liberec"] as const) assert.deepEqual(await c.running(n), ["split"]);

    // prague's own input still feeds liberec meanwhile.
    await sendDatagrams(midPort, 20);
    const counted = async () => {
      const aps = (await c.status("liberec")).sessions.split.aps as { counted?: { packets: number } }[];
      return aps.find((a) => a.counted)?.counted?.packets ?? 0;
    };
    await until("20 datagrams from prague's input counted", async () => (await counted()) === 20);

    // brno restarts: its part comes back (coordinated by liberec now) and its input reaches liberec again.
    await c.start("brno");
    await until("brno to run its part again", async () => (await c.running("brno")).includes("split"));
    await until(
      "liberec to hear brno back",
      async () =>
        (await c.status("liberec")).cluster.coordinated.sessions.split.nodes.brno.state === "committed",
    );
    await sendThrough(c, inPort, 100, 120);

    // Stop through prague, which coordinates nothing: every part stops and etcd forgets the session.
    const stop = await fetch(`${c.api("prague")}/node/cluster/sessions/split`, {
      method: "DELETE",
      headers: auth,
    });
    const s = await stop.json();
    assert.equal(stop.status, 200, JSON.stringify(s));
    assert.deepEqual(Object.keys(s.nodes).sort(), ["brno", "liberec", "prague"]);
    for (const n of NAMES) assert.deepEqual(await c.running(n), [], `nothing left on ${n}`);
    assert.equal(await c.store.session("split"), undefined);
    for (const n of NAMES) assert.deepEqual(await c.store.sessionsOf(n), []);
    await until(
      "liberec to let the session go",
      async () => (await c.status("liberec")).cluster.coordinated.sessions.split.state === "stopped",
    );
  });
});

Deno.test("etcd cluster: the node that received the session, back within its lease, resumes coordinating it", async () => {
  await withCluster("10s", async (c) => {
    for (const n of NAMES) await c.start(n);
    const inPort = freeUdpPort();
    const started = await startSplit(c, "brno", inPort, freeUdpPort());
    assert.equal(started.status, 201, await started.text());
    const epoch = (await c.status("brno")).links.epoch as number;
    await c.kill("brno");
    await until("a second past brno's link epoch", () => Math.floor(Date.now() / 1000) > epoch, 2_000);
    await c.start("brno");
    await until("brno to run its part again", async () => (await c.running("brno")).includes("split"));
    await until(
      "brno to coordinate the session again",
      async () => (await c.status("brno")).cluster.coordinated.sessions.split?.state === "running",
    );
    assert.equal(
      (await c.store.session("split"))?.state?.node,
      "brno",
      "no takeover: its lease never expired",
    );
    await sendThrough(c, inPort, 100, 100);

    const stop = await fetch(`${c.api("liberec")}/node/cluster/sessions/split`, {
      method: "DELETE",
      headers: auth,
    });
    assert.equal(stop.status, 200, await stop.text());
    for (const n of NAMES) assert.deepEqual(await c.running(n), [], `nothing left on ${n}`);
    assert.equal(await c.store.session("split"), undefined);
  });
});

Deno.test("etcd cluster: two nodes asked to start one session name at once: exactly one does", async () => {
  await withCluster("10s", async (c) => {
    for (const n of NAMES) await c.start(n);
    const inPort = freeUdpPort();
    const midPort = freeUdpPort();
    const answers = await Promise.all(
      (["brno", "prague"] as const).map(async (n) => {
        const r = await startSplit(c, n, inPort, midPort);
        return { node: n, status: r.status, body: await r.json() };
      }),
    );
    const won = answers.filter((a) => a.status === 201);
    const lost = answers.filter((a) => a.status !== 201);
    assert.equal(won.length, 1, JSON.stringify(answers));
    assert.equal(lost[0].status, 409, JSON.stringify(lost[0].body));
    assert.match(lost[0].body.reason, /already exists in etcd/);
    assert.equal((await c.store.session("split"))?.state?.node, won[0].node);
    for (const n of NAMES) assert.deepEqual(await c.running(n), ["split"], `one part on ${n}`);

    const stop = await fetch(`${c.api(lost[0].node)}/node/cluster/sessions/split`, {
      method: "DELETE",
      headers: auth,
    });
    assert.equal(stop.status, 200, await stop.text());
    for (const n of NAMES) assert.deepEqual(await c.running(n), [], `nothing left on ${n}`);
    assert.equal(await c.store.session("split"), undefined);
  });
});

Deno.test("etcd cluster: a node whose etcd cannot be reached starts all the same and says why in /status", async () => {
  const api = freeTcpPort();
  await using config = await tempConfig(
    [
      "roles: [node]",
      "status:",
      `  token: ${TOKEN}`,
      "node:",
      `  bind: ${LO}`,
      "  cluster:",
      "    name: brno",
      `    token: ${CLUSTER_TOKEN}`,
      `    data: ${LO}:${freeUdpPort()}`,
      `    etcd: ["http://${LO}:${freeTcpPort()}"]`,
      "",
    ].join("\n"),
  );
  await using node = startEdgenode(["--config", config.path, "--status", `${LO}:${api}`]);
  await node.waitForLine(LISTENING);
  const etcd = async () => (await (await fetch(`http://${LO}:${api}/status`)).json()).roles.node.cluster.etcd;
  await until("the failed join in /status", async () => (await etcd()).last_error !== null);
  const e = await etcd();
  assert.equal(e.state, "joining");
  assert.equal(e.lease, null);
  assert.match(e.last_error.message, /^joining etcd: /);
  assert.ok(e.errors >= 1);
});
