/**
 * Three edgenode processes on 127.0.0.1 (distinct status and link ports, one cluster token): a session with parts
 * pinned to the three starts all or nothing. With a port clash on one node its part is refused and nothing runs on
 * the others; without it every part runs, datagrams sent into the first node reach the counter on the third over
 * the links, and a stop reaches every part.
 */
import assert from "node:assert/strict";
import { LISTENING, startEdgenode, tempConfig } from "../e2e/_process.ts";
import { until } from "../_support/until.ts";
import { freeTcpPort, freeUdpPort } from "../_support/ports.ts";
import { clusterConfig, sendDatagrams, splitProgram } from "./_split.ts";

const TOKEN = "e2e-token-0123456789";
const CLUSTER_TOKEN = "e2e-cluster-token-0123456789";
const LO = "127.0.0.1";
const NAMES = ["brno", "prague", "liberec"] as const;
const auth = { authorization: `Bearer ${TOKEN}` };

type Addr = Record<string, { api: number; data: number }>;

/** The three configs; `timing` adds heartbeat lines. */
async function writeConfigs(
  paths: string[],
  { addr, dataDir, timing }: { addr: Addr; dataDir: string; timing: string[] },
): Promise<void> {
  for (const [i, name] of NAMES.entries()) {
    await Deno.writeTextFile(
      paths[i],
      clusterConfig({
        name,
        names: NAMES,
        addr,
        dataDir,
        statusToken: TOKEN,
        clusterToken: CLUSTER_TOKEN,
        extra: timing,
      }),
    );
  }
}

Deno.test("three edgenode processes start a session on all three or on none", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_three_" });
  const addr = Object.fromEntries(NAMES.map((n) => [n, { api: freeTcpPort(), data: freeUdpPort() }]));
  await using c0 = await tempConfig("");
  await using c1 = await tempConfig("");
  await using c2 = await tempConfig("");
  await writeConfigs([c0.path, c1.path, c2.path], {
    addr,
    dataDir,
    timing: ["heartbeat: 200ms", "loss_timeout: 5s"],
  });
  const check = startEdgenode(["--config", c0.path, "--check"]);
  assert.equal((await check.waitForExit()).code, 0, "--check accepts the cluster section");
  await using brno = startEdgenode(["--config", c0.path, "--status", `${LO}:${addr.brno.api}`]);
  await using prague = startEdgenode(["--config", c1.path, "--status", `${LO}:${addr.prague.api}`]);
  await using liberec = startEdgenode(["--config", c2.path, "--status", `${LO}:${addr.liberec.api}`]);
  try {
    for (const p of [brno, prague, liberec]) await p.waitForLine(LISTENING);
    const api = (n: string) => `http://${LO}:${addr[n].api}`;
    const sessionsOn = async (n: string) => {
      const status = await (await fetch(`${api(n)}/status`)).json();
      return {
        running: Object.keys(status.roles.node.sessions),
        prepared: status.roles.node.prepared.length,
      };
    };

    // prague runs a session on the port Mid's input wants: its part is refused, and nothing runs anywhere else.
    const midPort = freeUdpPort();
    const own = await fetch(`${api("prague")}/node/sessions`, {
      method: "POST",
      headers: auth,
      body:
        `Project own;\n{ AP name="C" ref=localservice.counter; inputs = in(DIPRONN_INPUT(${midPort})); }\n`,
    });
    assert.equal(own.status, 201, await own.text());
    const refused = await fetch(`${api("brno")}/node/cluster/sessions`, {
      method: "POST",
      headers: auth,
      body: splitProgram(freeUdpPort(), midPort),
    });
    const r = await refused.json();
    assert.equal(refused.status, 409, JSON.stringify(r));
    assert.equal(r.nodes?.prague?.state, "refused", JSON.stringify(r));
    assert.equal(r.nodes.brno.undone, "released");
    assert.equal(r.nodes.liberec.undone, "released");
    assert.deepEqual(await sessionsOn("brno"), { running: [], prepared: 0 });
    assert.deepEqual(await sessionsOn("liberec"), { running: [], prepared: 0 });
    assert.deepEqual(await sessionsOn("prague"), { running: ["own"], prepared: 0 });

    // Without the clash every part runs, and datagrams cross brno -> prague -> liberec.
    const del = await fetch(`${api("prague")}/node/sessions/own`, { method: "DELETE", headers: auth });
    assert.equal(del.status, 200, await del.text());
    const inPort = freeUdpPort();
    const started = await fetch(`${api("brno")}/node/cluster/sessions`, {
      method: "POST",
      headers: auth,
      body: splitProgram(inPort, midPort),
    });
    const s = await started.json();
    assert.equal(started.status, 201, JSON.stringify(s));
    for (const n of NAMES) assert.deepEqual(await sessionsOn(n), { running: ["split"], prepared: 0 });

    const N = 200;
    await sendDatagrams(inPort, N);
    const counted = async () => {
      const status = await (await fetch(`${api("liberec")}/status`)).json();
      const aps = status.roles.node.sessions.split.aps as { counted?: { packets: number } }[];
      return aps.find((a) => a.counted)?.counted?.packets ?? 0;
    };
    await until(`${N} datagrams counted on liberec`, async () => (await counted()) === N);
    const brnoStatus = await (await fetch(`${api("brno")}/status`)).json();
    assert.ok(brnoStatus.roles.node.links, "the link figures are in /status");

    const stop = await fetch(`${api("brno")}/node/cluster/sessions/split`, {
      method: "DELETE",
      headers: auth,
    });
    assert.equal(stop.status, 200, await stop.text());
    for (const n of NAMES) assert.deepEqual(await sessionsOn(n), { running: [], prepared: 0 });
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("three edgenode processes: a node killed mid-session is noticed and the session stopped on the others", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_three_" });
  const addr = Object.fromEntries(NAMES.map((n) => [n, { api: freeTcpPort(), data: freeUdpPort() }]));
  await using c0 = await tempConfig("");
  await using c1 = await tempConfig("");
  await using c2 = await tempConfig("");
  await writeConfigs([c0.path, c1.path, c2.path], {
    addr,
    dataDir,
    timing: ["heartbeat: 100ms", "loss_timeout: 1s"],
  });
  await using brno = startEdgenode(["--config", c0.path, "--status", `${LO}:${addr.brno.api}`]);
  await using prague = startEdgenode(["--config", c1.path, "--status", `${LO}:${addr.prague.api}`]);
  await using liberec = startEdgenode(["--config", c2.path, "--status", `${LO}:${addr.liberec.api}`]);
  try {
    for (const p of [brno, prague, liberec]) await p.waitForLine(LISTENING);
    const api = (n: string) => `http://${LO}:${addr[n].api}`;
    const started = await fetch(`${api("brno")}/node/cluster/sessions?on_node_loss=stop`, {
      method: "POST",
      headers: auth,
      body: splitProgram(freeUdpPort(), freeUdpPort()),
    });
    assert.equal(started.status, 201, await started.text());
    liberec.kill("SIGKILL");
    await liberec.waitForExit();
    const split = async () => {
      const status = await (await fetch(`${api("brno")}/status`)).json();
      return status.roles.node.cluster.coordinated.sessions.split as { state: string; reason?: string };
    };
    await until(
      "brno to stop the session after liberec's loss",
      async () => (await split()).state === "stopped",
    );
    assert.match((await split()).reason!, /node liberec lost: the session was stopped on every node/);
    for (const n of ["brno", "prague"]) {
      const status = await (await fetch(`${api(n)}/status`)).json();
      assert.deepEqual(Object.keys(status.roles.node.sessions), [], `nothing of split left on ${n}`);
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
