/**
 * Uploaded modules in a session across nodes with a real etcd (tests/_support/etcd.ts) and three edgenode
 * processes on 127.0.0.1: the modules are kept in etcd with the session, and when the node running the uploaded AP
 * is killed (on_node_loss = restart) the coordinator starts the session again with the uploaded AP on another node,
 * which gets the modules in its prepare and runs them in its own sandbox.
 */
import assert from "node:assert/strict";
import { EtcdClient } from "../../lib/cluster/etcd.ts";
import { clusterId } from "../../lib/cluster/etcd_sync.ts";
import { etcdSecrets } from "../../lib/cluster/etcd_seal.ts";
import { ClusterStore } from "../../lib/cluster/store.ts";
import { openUdp } from "../../lib/net/udp.ts";
import { type EdgenodeProcess, LISTENING, startEdgenode, tempConfig } from "../e2e/_process.ts";
import { EtcdServer } from "../_support/etcd.ts";
import { poll } from "../_support/until.ts";
import { freeTcpPort, freeUdpPort } from "../_support/ports.ts";
import { PASS_THROUGH } from "../sandbox/_programs.ts";
import { clusterConfig } from "./_split.ts";

const TOKEN = "e2e-token-0123456789";
const CLUSTER_TOKEN = "e2e-etcd-uploads-token-0123456789";
const LO = "127.0.0.1";
const NAMES = ["brno", "prague", "liberec"] as const;
type Name = typeof NAMES[number];
const auth = { authorization: `Bearer ${TOKEN}` };

/**
 * In on brno (it receives the request); the uploaded F, which sends out of the session, goes to the first node of
 * `near` that is alive: prague, then liberec once prague is lost.
 */
const program = (inPort: number, outPort: number) =>
  `Project upl;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${inPort})); outputs = out(F.in); }
{ AP name="F" ref=upload.pass; stamp = 7; inputs = in; outputs = out(DIPRONN_OUTPUT("${LO}:${outPort}")); }
`;

Deno.test("etcd cluster: a node running an uploaded AP is lost and the session restarts it on another node, modules and all", async () => {
  await using etcd = await EtcdServer.start();
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_etcd_uploads_" });
  const addr = Object.fromEntries(
    NAMES.map((n) => [n, { api: freeTcpPort(), data: freeUdpPort() }]),
  ) as Record<
    Name,
    { api: number; data: number }
  >;
  await using c0 = await tempConfig("");
  await using c1 = await tempConfig("");
  await using c2 = await tempConfig("");
  const paths = { brno: c0.path, prague: c1.path, liberec: c2.path };
  for (const name of NAMES) {
    const text = clusterConfig({
      name,
      names: NAMES,
      addr,
      dataDir,
      statusToken: TOKEN,
      clusterToken: CLUSTER_TOKEN,
      extra: ["heartbeat: 100ms", "loss_timeout: 1s", "prepare_timeout: 20s", `etcd: ["${etcd.url}"]`],
    });
    // F sends to the test's socket on loopback.
    await Deno.writeTextFile(
      paths[name],
      text.replace(`  bind: ${LO}\n`, `  bind: ${LO}\n  allow_loopback_output: true\n`),
    );
  }
  const processes = new Map<Name, EdgenodeProcess>();
  const store = new ClusterStore({
    etcd: new EtcdClient({ endpoints: [etcd.url] }),
    cluster: await clusterId(CLUSTER_TOKEN),
    valueKey: etcdSecrets(CLUSTER_TOKEN).valueKey,
  });
  const api = (n: Name) => `http://${LO}:${addr[n].api}`;
  const status = async (n: Name) => (await (await fetch(`${api(n)}/status`)).json()).roles.node;
  const rx = openUdp({ host: LO, port: 0 });
  let received = 0;
  let stamped = 0;
  const receiving = (async () => {
    for (;;) {
      const batch = await rx.receive();
      if (!batch) return;
      for (let i = 0; i < batch.count; i++) {
        received++;
        if (batch.data(i)[0] === 7) stamped++;
      }
    }
  })();
  try {
    for (const n of NAMES) {
      const p = startEdgenode(["--config", paths[n], "--status", `${LO}:${addr[n].api}`]);
      processes.set(n, p);
      await p.waitForLine(LISTENING);
    }
    const inPort = freeUdpPort();
    const form = new FormData();
    form.append("program", new File([program(inPort, rx.local.port)], "upl.dipronn"));
    form.append("module", new File([PASS_THROUGH], "pass.ts"));
    const res = await fetch(`${api("brno")}/node/cluster/sessions?on_node_loss=restart&near=prague,liberec`, {
      method: "POST",
      headers: auth,
      body: form,
    });
    const body = await res.json();
    assert.equal(res.status, 201, JSON.stringify(body));
    assert.deepEqual(body.placement.nodeOf, { In: "brno", F: "prague" });
    assert.deepEqual(body.nodes.prague.modules, ["pass.ts"]);
    const stored = await store.session("upl", { upload: true });
    assert.deepEqual(stored?.upload?.modules, { "pass.ts": PASS_THROUGH }, "etcd keeps the modules");
    assert.deepEqual(stored?.upload?.kinds["upload.pass"].info.ports, { inputs: ["in"], outputs: ["out"] });

    const send = async (n: number) => {
      const tx = openUdp({ host: LO, port: 0 });
      try {
        const data = new Uint8Array(100);
        for (let i = 0; i < n; i++) {
          tx.send(
            { count: 1, data: () => data, length: () => 100, from: () => tx.local, truncated: () => false },
            tx.destinations([{ host: LO, port: inPort }]),
          );
          if (i % 50 === 49) await new Promise((r) => setTimeout(r, 5));
        }
      } finally {
        await tx.close();
      }
    };
    await send(100);
    await poll("100 stamped datagrams through prague's F", () => stamped === 100, 20_000);

    processes.get("prague")!.kill("SIGKILL");
    await processes.get("prague")!.waitForExit();
    const restarted = await poll(
      "brno to restart the session without prague",
      async () => {
        const s = (await status("brno")).cluster.coordinated.sessions.upl;
        // The reason is set once the restart's last etcd write is done, just after the state says running.
        return s?.state === "running" && s.placement?.nodeOf?.F === "liberec" && s.reason ? s : null;
      },
      20_000,
      50,
    );
    assert.match(restarted.reason, /node prague lost: restarted without it/);
    assert.deepEqual(restarted.nodes.liberec.modules, ["pass.ts"], "liberec got the modules in its prepare");
    assert.equal((await store.session("upl"))?.placement.F, "liberec");
    const liberec = await status("liberec");
    assert.equal(liberec.sandbox_processes.used, 1);

    await send(100);
    await poll("100 more stamped datagrams through liberec's F", () => stamped === 200, 20_000);
    const group = (await status("liberec")).sessions.upl.sandboxes[0];
    assert.deepEqual(group.aps, ["F"]);
    assert.equal(group.packets_in, 100);
    assert.equal(received, stamped, "every datagram out was stamped by the uploaded AP");

    const stop = await fetch(`${api("brno")}/node/cluster/sessions/upl`, { method: "DELETE", headers: auth });
    assert.equal(stop.status, 200, await stop.text());
    for (const n of ["brno", "liberec"] as const) {
      const s = await status(n);
      assert.deepEqual(Object.keys(s.sessions), [], `nothing left on ${n}`);
      assert.equal(s.sandbox_processes.used, 0);
    }
    assert.equal(await store.session("upl"), undefined);
  } finally {
    await rx.close();
    await receiving.catch(() => {});
    for (const p of processes.values()) await p[Symbol.asyncDispose]();
    await Deno.remove(dataDir, { recursive: true });
  }
});
