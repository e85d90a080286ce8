/**
 * The etcd side of the cluster in one process: heartbeats that also judge by membership (ManualClock), and the
 * coordinator writing sessions to a real etcd (tests/_support/etcd.ts) with in-process fake members: written before
 * any prepare, removed when a start fails or the session stops, a name another control unit holds refused without
 * asking any node, an unreachable etcd failing the start before any node holds anything, and an adopted session
 * stopped everywhere.
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { Coordinator, type CoordinatorOptions } from "../../lib/cluster/coordinator.ts";
import { EtcdClient } from "../../lib/cluster/etcd.ts";
import { clusterId } from "../../lib/cluster/etcd_sync.ts";
import { etcdSecrets } from "../../lib/cluster/etcd_seal.ts";
import { Heartbeats } from "../../lib/cluster/heartbeat.ts";
import type { Member, UndoResult } from "../../lib/cluster/members.ts";
import { PartRefused, type PartRequest } from "../../lib/cluster/parts.ts";
import { ClusterStore, MAX_SESSION_WRITE, SessionTooLarge } from "../../lib/cluster/store.ts";
import type { NodeUsage } from "../../lib/cluster/usage.ts";
import { EtcdServer } from "../_support/etcd.ts";
import { until } from "../_support/until.ts";

/** A member that keeps its parts in maps; `refuse` makes it refuse every prepare. */
class FakeMember implements Member {
  readonly prepared = new Map<string, string>();
  readonly running = new Map<string, string>();
  readonly calls: string[] = [];
  readonly requests: PartRequest[] = [];
  refuse = false;

  constructor(readonly name: string) {}

  usage(): Promise<NodeUsage> {
    this.calls.push("usage");
    return Promise.resolve({
      name: this.name,
      cpu: 0.1,
      memory: 0.2,
      pps_in: 0,
      pps_out: 0,
      bps_in: 0,
      bps_out: 0,
      sessions: 0,
      aps: 0,
      free_ports: 100,
    });
  }

  prepare(session: string, req: PartRequest): Promise<void> {
    this.calls.push("prepare");
    this.requests.push(req);
    if (this.refuse) return Promise.reject(new PartRefused(this.name, "port 5004 is held by session other"));
    this.prepared.set(session, req.attempt);
    return Promise.resolve();
  }

  commit(session: string, attempt: string): Promise<void> {
    this.calls.push("commit");
    if (this.prepared.get(session) !== attempt) return Promise.reject(new PartRefused(this.name, "nothing"));
    this.prepared.delete(session);
    this.running.set(session, attempt);
    return Promise.resolve();
  }

  abort(session: string): Promise<UndoResult> {
    this.calls.push("abort");
    if (this.prepared.delete(session)) return Promise.resolve("released");
    if (this.running.delete(session)) return Promise.resolve("stopped");
    return Promise.resolve("none");
  }

  heartbeat(): Promise<void> {
    return Promise.resolve();
  }
}

const PROGRAM = `Project demo;
{ AP name="In" ref=localservice.forwarder; node = "brno"; inputs = in(DIPRONN_INPUT(5004)); outputs = out(Mid.in); }
{ AP name="Mid" ref=localservice.forwarder; node = "prague"; inputs = in; outputs = out(Last.in); }
{ AP name="Last" ref=localservice.counter; node = "liberec"; inputs = in; }
`;
const SOURCE = { file: "demo.dipronn", format: "dipronn" as const };

function setup(
  endpoint: string,
  o: { spare?: string; gone?: (node: string) => boolean; inspect?: CoordinatorOptions["inspect"] } = {},
) {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const members = ["brno", "prague", "liberec", ...(o.spare ? [o.spare] : [])].map((n) => new FakeMember(n));
  const byName = Object.fromEntries(members.map((m) => [m.name, m]));
  const store = new ClusterStore({
    etcd: new EtcdClient({ endpoints: [endpoint], timeoutMs: 2000 }),
    cluster: "unit",
    valueKey: etcdSecrets("cluster-token-0123456789").valueKey,
  });
  /** A control unit on `self` over the same members and etcd (another one takes sessions over). */
  const coordinatorOn = (self: string) =>
    new Coordinator({
      self,
      members,
      clock,
      logger: new Logger({ level: "error", clock, sink: () => {} }),
      stepTimeoutMs: 2000,
      store,
      gone: o.gone,
      inspect: o.inspect,
      place,
    });
  // The pins as the program says, except that an AP whose node is gone goes to the spare (what a restart needs).
  const place: CoordinatorOptions["place"] = (spec, input) => {
    const alive = new Set(input.nodes.map((n) => n.name));
    const nodeOf = Object.fromEntries(spec.aps.map((a) => [a.name, a.node?.name ?? "brno"]));
    return {
      session: spec.name,
      nodeOf: Object.fromEntries(
        Object.entries(nodeOf).map(([ap, n]) => [ap, alive.has(n) ? n : o.spare ?? n]),
      ),
      why: {},
    };
  };
  const coordinator = coordinatorOn("brno");
  const holds = () =>
    members.filter((m) => m.name !== o.spare).map((m) => [m.name, m.prepared.size + m.running.size]);
  return { clock, byName, store, coordinator, coordinatorOn, holds };
}

Deno.test("Heartbeats declare a peer whose etcd lease is gone lost at the next round, and back only once it rejoins", async () => {
  const clock = new ManualClock(0);
  const events: string[] = [];
  const members = new Set(["prague"]);
  const hb = new Heartbeats({
    clock,
    intervalMs: 1000,
    lossMs: 60_000,
    watch: () => new Set(["prague"]),
    send: () => Promise.resolve(),
    onLost: (peer) => events.push(`lost ${peer}`),
    onBack: (peer) => events.push(`back ${peer}`),
    alive: (peer) => members.has(peer),
  });
  const round = async () => {
    clock.advance(1000);
    hb.tick();
    await new Promise((r) => setTimeout(r, 0));
  };
  await round();
  assert.deepEqual(events, []);
  members.delete("prague"); // its lease expired, though it still answers (a cut off etcd, say)
  await round();
  assert.deepEqual(events, ["lost prague"]);
  await round();
  hb.received("prague");
  assert.deepEqual(events, ["lost prague"], "heard from, but not a member: still lost");
  members.add("prague");
  await round();
  assert.deepEqual(events, ["lost prague", "back prague"]);
});

Deno.test("Coordinator with etcd writes the session before any prepare, marks it running and removes it on stop", async () => {
  await using etcd = await EtcdServer.start();
  const { store, coordinator, holds } = setup(etcd.url);
  const outcome = await coordinator.start(PROGRAM, { ...SOURCE, onNodeLoss: "restart" });
  assert.equal(outcome.state, "running", JSON.stringify(outcome));
  const stored = await store.session("demo");
  assert.deepEqual(stored?.placement, { In: "brno", Mid: "prague", Last: "liberec" });
  assert.equal(stored?.program, PROGRAM);
  assert.deepEqual(stored?.source, { file: "demo.dipronn", format: "dipronn", on_node_loss: "restart" });
  assert.equal(stored?.state?.state, "running");
  assert.equal(stored?.state?.node, "brno");
  assert.equal(stored?.state?.attempt, outcome.attempt);
  assert.deepEqual((await store.sessionsOf("liberec")).map((p) => p.aps), [["Last"]]);

  const stopped = await coordinator.stop("demo");
  assert.equal(stopped?.state, "stopped");
  assert.equal(await store.session("demo"), undefined);
  assert.deepEqual(await store.sessionsOf("liberec"), []);
  assert.deepEqual(holds(), [["brno", 0], ["prague", 0], ["liberec", 0]]);
});

Deno.test("Coordinator with etcd removes the session again when one node refuses its part", async () => {
  await using etcd = await EtcdServer.start();
  const { byName, store, coordinator, holds } = setup(etcd.url);
  byName.prague.refuse = true;
  const outcome = await coordinator.start(PROGRAM, SOURCE);
  assert.equal(outcome.state, "failed");
  assert.match(outcome.reason!, /node prague refused/);
  assert.equal(await store.session("demo"), undefined, "a failed start leaves nothing in etcd");
  assert.deepEqual(holds(), [["brno", 0], ["prague", 0], ["liberec", 0]]);
  assert.equal(store.figures.sessions_removed, 1);
});

Deno.test("Coordinator with etcd refuses a name another control unit holds there, asking no node to prepare", async () => {
  await using etcd = await EtcdServer.start();
  const { byName, store, coordinator } = setup(etcd.url);
  await store.putSession("demo", PROGRAM, { In: "prague" }, { node: "prague", state: "running" });
  const outcome = await coordinator.start(PROGRAM, SOURCE);
  assert.equal(outcome.state, "failed");
  assert.match(outcome.reason!, /Cannot create session demo: it already exists in etcd/);
  for (const m of Object.values(byName)) {
    assert.deepEqual(m.calls, ["usage"], `${m.name} asked only for usage`);
  }
  const kept = await store.session("demo");
  assert.equal(kept?.state?.node, "prague", "the other control unit's session is left as it was");
  assert.deepEqual(kept?.placement, { In: "prague" });
});

Deno.test("Coordinator with an unreachable etcd fails a start before any node holds anything", async () => {
  const { byName, coordinator } = setup("http://127.0.0.1:1");
  const outcome = await coordinator.start(PROGRAM, SOURCE);
  assert.equal(outcome.state, "failed");
  assert.match(outcome.reason!, /Cannot write session demo to etcd/);
  for (const m of Object.values(byName)) assert.deepEqual(m.calls, ["usage"]);
});

Deno.test("Coordinator adopts a session from etcd and its stop reaches every part and removes it", async () => {
  await using etcd = await EtcdServer.start();
  const { byName, store, coordinator } = setup(etcd.url);
  const placement = { In: "brno", Mid: "prague", Last: "liberec" };
  await store.putSession("demo", PROGRAM, placement, {
    node: "liberec",
    state: "running",
    attempt: "00aa11bb",
  });
  for (const m of Object.values(byName)) m.running.set("demo", "00aa11bb");
  const stored = (await store.session("demo"))!;
  const session = coordinator.adopt("demo", stored, { reason: "stop asked on brno", waiting: ["liberec"] });
  assert.equal(session.attempt, "00aa11bb");
  assert.equal(session.nodes.liberec.state, "lost");
  assert.equal(session.nodes.prague.state, "committed");
  const outcome = await coordinator.stop("demo");
  assert.equal(outcome?.state, "stopped");
  for (const m of Object.values(byName)) assert.equal(m.running.size, 0, `${m.name} stopped its part`);
  assert.equal(await store.session("demo"), undefined);
});

Deno.test("clusterId keeps clusters with different tokens apart in one etcd", async () => {
  const a = await clusterId("cluster-token-aaaaaaaaaaaa");
  assert.match(a, /^c[0-9a-f]{32}$/);
  assert.equal(a, await clusterId("cluster-token-aaaaaaaaaaaa"));
  assert.notEqual(a, await clusterId("cluster-token-bbbbbbbbbbbb"));
});

Deno.test("Coordinator with etcd restarts a session without a lost node and rewrites its placement there", async () => {
  await using etcd = await EtcdServer.start();
  const { byName, store, coordinator } = setup(etcd.url, { spare: "pilsen" });
  const first = await coordinator.start(PROGRAM, { ...SOURCE, onNodeLoss: "restart" });
  assert.equal(first.state, "running");
  byName.liberec.running.clear(); // it died with its part
  await coordinator.nodeLost("liberec");
  const now = coordinator.get("demo")!;
  assert.equal(now.state, "running", now.reason);
  const stored = await store.session("demo");
  assert.deepEqual(stored?.placement, { In: "brno", Mid: "prague", Last: "pilsen" });
  assert.equal(stored?.state?.state, "running");
  assert.equal(stored?.state?.attempt, now.attempt);
  assert.notEqual(now.attempt, first.attempt);
  assert.deepEqual(await store.sessionsOf("liberec"), [], "the lost node's part is gone from etcd");
  assert.deepEqual((await store.sessionsOf("pilsen")).map((p) => p.aps), [["Last"]]);
  assert.equal(byName.pilsen.running.get("demo"), now.attempt);
});

Deno.test("Coordinator with etcd leaves a lost node to the control unit etcd names as the session's coordinator", async () => {
  await using etcd = await EtcdServer.start();
  const { byName, store, coordinator } = setup(etcd.url);
  assert.equal((await coordinator.start(PROGRAM, SOURCE)).state, "running");
  const stored = (await store.session("demo"))!;
  await store.setState("demo", { state: "running", node: "prague", attempt: stored.state?.attempt }, {
    revision: stored.stateRevision,
  });
  await coordinator.nodeLost("liberec");
  assert.equal(coordinator.get("demo"), undefined, "no longer coordinated here");
  for (const n of ["brno", "prague"]) assert.equal(byName[n].running.size, 1, `${n} keeps its part`);
  assert.equal((await store.session("demo"))?.state?.node, "prague");
});

Deno.test("Coordinator leaves a node whose etcd lease expired out of placement, saying so", async () => {
  const { byName, coordinator } = setup("http://127.0.0.1:1", { gone: (n) => n === "liberec" });
  const plan = await coordinator.plan(PROGRAM, SOURCE);
  assert.deepEqual(plan.usage.map((u) => u.name), ["brno", "prague"]);
  assert.deepEqual(plan.left_out, { liberec: "its etcd lease expired" });
  assert.deepEqual(byName.liberec.calls, [], "not even asked for its usage");
});

/** Mid is uploaded (`upload.pass`), pinned to prague. */
const UPLOADED = PROGRAM.replace('name="Mid" ref=localservice.forwarder', 'name="Mid" ref=upload.pass');
const PASS = {
  entry: "pass.ts",
  info: { ports: { inputs: ["in"], outputs: ["out"] }, params: {}, needs: {} },
};
const inspect: CoordinatorOptions["inspect"] = () => Promise.resolve({ "upload.pass": PASS });

Deno.test("Coordinator with etcd keeps modules out of the sessions watch, and a takeover's restart sends them from etcd", async () => {
  await using etcd = await EtcdServer.start();
  const { byName, store, coordinator, coordinatorOn } = setup(etcd.url, { spare: "pilsen", inspect });
  const client = new EtcdClient({ endpoints: [etcd.url], timeoutMs: 2000 });
  const marker = "module-text-only-in-uploads";
  const modules = { "pass.ts": `// ${marker}\nexport {};\n` };
  // What every node's session watch receives.
  const watched: string[] = [];
  const watch = client.watch(
    `${store.prefix}sessions/`,
    (events) => watched.push(...events.map((e) => e.value)),
  );
  await watch.ready;
  try {
    const outcome = await coordinator.start(UPLOADED, { ...SOURCE, onNodeLoss: "restart", modules });
    assert.equal(outcome.state, "running", JSON.stringify(outcome));
    await until("the running state watched", () => watched.some((v) => v.includes(`"running"`)));
    assert.equal(watched.some((v) => v.includes(marker)), false, "no module in the sessions watch");
    assert.ok((await client.get(store.uploadKey("demo")))?.value.includes(marker));
  } finally {
    watch.close();
  }
  // liberec takes the session over (brno is gone): it has the modules from etcd only.
  await store.setState("demo", {
    state: "running",
    node: "liberec",
    attempt: coordinator.get("demo")!.attempt,
  });
  const listed = (await store.sessions()).find((s) => s.name === "demo")!;
  assert.equal(listed.upload, undefined, "a listing leaves the modules out");
  const liberec = coordinatorOn("liberec");
  liberec.adopt("demo", { ...listed, upload: await store.upload("demo") }, { reason: "taken over" });
  // prague, running the uploaded AP, is lost: the restart puts it on pilsen, which gets the modules in its prepare.
  await liberec.nodeLost("prague");
  assert.equal(liberec.get("demo")?.state, "running", JSON.stringify(liberec.get("demo")?.events));
  const toPilsen = byName.pilsen.requests.at(-1)!;
  assert.deepEqual(toPilsen.modules, modules);
  assert.deepEqual(toPilsen.kinds, { "upload.pass": PASS });
  assert.equal(byName.liberec.requests.at(-1)!.modules, undefined);
  // A stop removes the modules from etcd with the session, and from the coordinator's memory.
  assert.equal((await liberec.stop("demo"))?.state, "stopped");
  assert.equal(await client.get(store.uploadKey("demo")), undefined);
  assert.equal(liberec.get("demo")?.upload, undefined);
});

Deno.test("Coordinator with etcd refuses a session whose program and modules together are over MAX_SESSION_WRITE, asking no node", async () => {
  await using etcd = await EtcdServer.start();
  const { byName, store, coordinator } = setup(etcd.url, { inspect });
  // Each under 1 MiB, both together over what one etcd transaction may carry.
  const program = `# ${"p".repeat(MAX_SESSION_WRITE / 2)}\n${UPLOADED}`;
  const modules = { "pass.ts": `// ${"m".repeat(MAX_SESSION_WRITE / 2)}\nexport {};\n` };
  const error = await coordinator.start(program, { ...SOURCE, modules }).catch((e) => e);
  assert.ok(error instanceof SessionTooLarge, String(error));
  assert.match(
    error.message,
    /take \d+ bytes in one transaction, at most 1310720 \(MAX_SESSION_WRITE, under etcd's --max-request-bytes/,
  );
  for (const m of Object.values(byName)) assert.deepEqual(m.calls, [], `${m.name} was asked nothing`);
  assert.equal(await store.session("demo"), undefined);
  // The dry run says the same; the program alone fits.
  const withModules = { ...SOURCE, modules };
  await assert.rejects(() => coordinator.plan(program, withModules), SessionTooLarge);
  assert.equal((await coordinator.start(program, SOURCE)).state, "running");
});
