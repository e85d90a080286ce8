/**
 * Uploaded modules in a session across nodes with a real etcd (tests/_support/etcd.ts) and three edgenode
 * processes on 127.0.0.1: the modules are kept in etcd with the session, and when the node running the uploaded AP
 * is killed (on_node_loss = restart) the coordinator starts the session again with the uploaded AP on another node,
 * which gets the modules in its prepare and runs them in its own sandbox.
 */
import assert from "node:assert/strict";
import { openUdp } from "../../lib/net/udp.ts";
import { poll } from "../_support/until.ts";
import { freeUdpPort } from "../_support/ports.ts";
import { PASS_THROUGH } from "../sandbox/_programs.ts";
import { auth, LO, NAMES, withEtcdCluster } from "./_etcd_cluster.ts";
import { sendDatagrams } from "./_split.ts";

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
  await withEtcdCluster({
    clusterToken: "e2e-etcd-uploads-token-0123456789",
    extra: ["heartbeat: 100ms", "loss_timeout: 1s", "prepare_timeout: 20s"],
    // F sends to the test's socket on loopback.
    allowLoopbackOutput: true,
  }, async (c) => {
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
      for (const n of NAMES) await c.start(n);
      const inPort = freeUdpPort();
      const form = new FormData();
      form.append("program", new File([program(inPort, rx.local.port)], "upl.dipronn"));
      form.append("module", new File([PASS_THROUGH], "pass.ts"));
      const res = await fetch(
        `${c.api("brno")}/node/cluster/sessions?on_node_loss=restart&near=prague,liberec`,
        {
          method: "POST",
          headers: auth,
          body: form,
        },
      );
      const body = await res.json();
      assert.equal(res.status, 201, JSON.stringify(body));
      assert.deepEqual(body.placement.nodeOf, { In: "brno", F: "prague" });
      assert.deepEqual(body.nodes.prague.modules, ["pass.ts"]);
      const stored = await c.store.session("upl", { upload: true });
      assert.deepEqual(stored?.upload?.modules, { "pass.ts": PASS_THROUGH }, "etcd keeps the modules");
      assert.deepEqual(stored?.upload?.kinds["upload.pass"].info.ports, { inputs: ["in"], outputs: ["out"] });

      await sendDatagrams(inPort, 100);
      await poll("100 stamped datagrams through prague's F", () => stamped === 100, 20_000);

      await c.kill("prague");
      const restarted = await poll(
        "brno to restart the session without prague",
        async () => {
          const s = (await c.status("brno")).cluster.coordinated.sessions.upl;
          // The reason is set once the restart's last etcd write is done, just after the state says running.
          return s?.state === "running" && s.placement?.nodeOf?.F === "liberec" && s.reason ? s : null;
        },
        20_000,
        50,
      );
      assert.match(restarted.reason, /node prague lost: restarted without it/);
      assert.deepEqual(
        restarted.nodes.liberec.modules,
        ["pass.ts"],
        "liberec got the modules in its prepare",
      );
      assert.equal((await c.store.session("upl"))?.placement.F, "liberec");
      const liberec = await c.status("liberec");
      assert.equal(liberec.sandbox_processes.used, 1);

      await sendDatagrams(inPort, 100);
      await poll("100 more stamped datagrams through liberec's F", () => stamped === 200, 20_000);
      const group = (await c.status("liberec")).sessions.upl.sandboxes[0];
      assert.deepEqual(group.aps, ["F"]);
      assert.equal(group.packets_in, 100);
      assert.equal(received, stamped, "every datagram out was stamped by the uploaded AP");

      const stop = await fetch(`${c.api("brno")}/node/cluster/sessions/upl`, {
        method: "DELETE",
        headers: auth,
      });
      assert.equal(stop.status, 200, await stop.text());
      for (const n of ["brno", "liberec"] as const) {
        const s = await c.status(n);
        assert.deepEqual(Object.keys(s.sessions), [], `nothing left on ${n}`);
        assert.equal(s.sandbox_processes.used, 0);
      }
      assert.equal(await c.store.session("upl"), undefined);
    } finally {
      await rx.close();
      await receiving.catch(() => {});
    }
  });
});
