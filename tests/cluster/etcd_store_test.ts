/** The cluster's etcd store (members, sessions, parts) against a real etcd-server. */
import assert from "node:assert/strict";
import { EtcdClient } from "../../lib/cluster/etcd.ts";
import {
  ClusterStore,
  type Member,
  SessionExistsError,
  StaleWriteError,
  StoreKeyError,
} from "../../lib/cluster/store.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { etcdSecrets, seal, unseal } from "../../lib/cluster/etcd_seal.ts";
import { EtcdServer } from "../_support/etcd.ts";
import { until } from "../_support/until.ts";

const KEY = etcdSecrets("cluster-token-0123456789").valueKey;
const PROGRAM = `{ AP input1 { TYPE = DIPRONN_INPUT } }\n`;
const PLACEMENT = { input1: "brno", dup1: "brno", sync_hq: "prague", saver1: "pilsen", saver2: "pilsen" };
const UPLOAD = {
  modules: { "pass.ts": "export const ports = { inputs: ['in'], outputs: ['out'] };\n" },
  kinds: {
    "upload.pass": {
      entry: "pass.ts",
      info: { ports: { inputs: ["in"], outputs: ["out"] }, params: {}, needs: {} },
    },
  },
};

function storeOf(etcd: EtcdServer, o: { clock?: ManualClock; leaseSeconds?: number } = {}): ClusterStore {
  return new ClusterStore({
    etcd: new EtcdClient({ endpoints: [etcd.url] }),
    cluster: "test",
    valueKey: KEY,
    clock: o.clock,
    leaseSeconds: o.leaseSeconds,
  });
}

Deno.test("ClusterStore watchMembers sees a member join, leave, and vanish when its lease expires", async () => {
  await using etcd = await EtcdServer.start();
  const store = storeOf(etcd);
  const lists: string[][] = [];
  const watch = await store.watchMembers((members: Member[]) => lists.push(members.map((m) => m.name)));
  try {
    assert.deepEqual(lists, [[]]);
    const brno = await store.join("brno", { api: "10.77.0.1:8080" });
    await until("brno in the list", () => lists.at(-1)?.join() === "brno");
    assert.deepEqual((await store.members()).map((m) => [m.name, m.info.api]), [["brno", "10.77.0.1:8080"]]);

    // prague's clock never moves, so it never renews: a node that died without leaving.
    const prague = storeOf(etcd, { clock: new ManualClock(), leaseSeconds: 2 });
    await prague.join("prague", { api: "10.77.0.2:8080" });
    await until("prague in the list", () => lists.at(-1)?.join() === "brno,prague");
    await until("prague's lease to expire", () => lists.at(-1)?.join() === "brno", 10_000, 50);

    await brno.leave();
    await until("brno gone at once on leave", () => lists.at(-1)?.length === 0, 2_000);
  } finally {
    watch.close();
  }
});

Deno.test("ClusterStore join keeps a short lease alive on its clock and rejoins after losing it", async () => {
  await using etcd = await EtcdServer.start();
  const clock = new ManualClock();
  const store = storeOf(etcd, { clock, leaseSeconds: 2 });
  const m = await store.join("liberec", { api: "10.77.0.3:8080" });
  clock.advance(700); // a third of the TTL: one renewal
  await until("a renewal", () => m.counts.renewals === 1);
  // The lease lost behind the node's back (expired while etcd was cut off): the next renewal joins again.
  const lost = m.lease();
  await new EtcdClient({ endpoints: [etcd.url] }).leaseRevoke(lost);
  assert.deepEqual(await store.members(), []);
  clock.advance(700);
  await until("a rejoin", () => m.counts.rejoins === 1);
  assert.notEqual(m.lease(), lost);
  assert.deepEqual((await store.members()).map((x) => x.name), ["liberec"]);
  await m.leave();
  assert.deepEqual(await store.members(), []);
});

Deno.test("ClusterStore a restarted node gets its parts back from a new store object", async () => {
  await using etcd = await EtcdServer.start();
  const brno = storeOf(etcd);
  await brno.putSession("lecture", PROGRAM, PLACEMENT, { node: "brno", upload: UPLOAD });

  // pilsen restarts: a fresh process has only its name and the etcd address.
  const pilsen = storeOf(etcd);
  const parts = await pilsen.sessionsOf("pilsen");
  assert.equal(parts.length, 1);
  assert.equal(parts[0].session, "lecture");
  assert.deepEqual(parts[0].aps, ["saver1", "saver2"]);
  assert.equal(parts[0].program, PROGRAM);
  assert.deepEqual(parts[0].placement, PLACEMENT);
  assert.equal(parts[0].state?.state, "starting");
  // Its uploaded modules come with it (kept apart from the session's keys, see the next test).
  assert.deepEqual(parts[0].upload, UPLOAD);
  assert.deepEqual((await pilsen.sessionsOf("prague")).map((p) => p.aps), [["sync_hq"]]);
  assert.deepEqual(await pilsen.sessionsOf("liberec"), []);

  // The session outlives the node that received it: another control unit reads it whole.
  const stored = await storeOf(etcd).session("lecture");
  assert.equal(stored?.program, PROGRAM);
  assert.equal(stored?.upload, undefined, "read without its modules unless asked");
  assert.deepEqual((await storeOf(etcd).session("lecture", { upload: true }))?.upload, UPLOAD);
  assert.deepEqual((await storeOf(etcd).sessions()).map((s) => s.name), ["lecture"]);
  // Not under sessions/, which every node watches.
  const raw = await new EtcdClient({ endpoints: [etcd.url] }).range(`${brno.prefix}sessions/`);
  assert.equal(raw.kvs.some((kv) => kv.value.includes("pass.ts")), false);
  assert.ok(await new EtcdClient({ endpoints: [etcd.url] }).get(`${brno.prefix}uploads/lecture`));
});

Deno.test("ClusterStore putSession lets only one of two control units create a session", async () => {
  await using etcd = await EtcdServer.start();
  const a = storeOf(etcd);
  const b = storeOf(etcd);
  const results = await Promise.allSettled([
    a.putSession("race", PROGRAM, { input1: "brno" }, { node: "brno" }),
    b.putSession("race", PROGRAM + "# other\n", { input1: "prague" }, { node: "prague" }),
  ]);
  const won = results.filter((r) => r.status === "fulfilled");
  const lost = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
  assert.equal(won.length, 1);
  assert.equal(lost.length, 1);
  assert.ok(lost[0].reason instanceof SessionExistsError);
  assert.equal(lost[0].reason.message, "Cannot create session race: it already exists in etcd");
  // Only the winner's placement and parts exist.
  const stored = (await a.session("race"))!;
  const winner = stored.placement.input1;
  assert.equal((await a.sessionsOf(winner)).length, 1);
  assert.deepEqual(await a.sessionsOf(winner === "brno" ? "prague" : "brno"), []);
});

Deno.test("ClusterStore updatePlacement moves a part and refuses a stale revision", async () => {
  await using etcd = await EtcdServer.start();
  const store = storeOf(etcd);
  await store.putSession("s", PROGRAM, { a: "brno", b: "prague" });
  const read = (await store.session("s"))!;
  await store.updatePlacement("s", { a: "brno", b: "liberec" }, read.placementRevision);
  assert.deepEqual(await store.sessionsOf("prague"), []);
  assert.deepEqual((await store.sessionsOf("liberec")).map((p) => p.aps), [["b"]]);
  await assert.rejects(
    store.updatePlacement("s", { a: "pilsen", b: "pilsen" }, read.placementRevision),
    StaleWriteError,
  );
  const state = (await store.session("s"))!;
  await store.setState("s", { state: "running", node: "brno" }, { revision: state.stateRevision });
  await assert.rejects(
    store.setState("s", { state: "failed", node: "prague" }, { revision: state.stateRevision }),
    StaleWriteError,
  );
  assert.equal((await store.session("s"))?.state?.state, "running");
});

Deno.test("ClusterStore removeSession removes the session, every part and its modules", async () => {
  await using etcd = await EtcdServer.start();
  const store = storeOf(etcd);
  await store.putSession("gone", PROGRAM, PLACEMENT, { upload: UPLOAD });
  assert.deepEqual(await store.upload("gone"), UPLOAD);
  assert.equal(await store.removeSession("gone"), true);
  assert.equal(await store.session("gone"), undefined);
  for (const node of ["brno", "prague", "pilsen"]) assert.deepEqual(await store.sessionsOf(node), []);
  assert.equal(await store.removeSession("gone"), false);
  const raw = await new EtcdClient({ endpoints: [etcd.url] }).range("/edgenode/test/");
  assert.deepEqual(raw.kvs, [], "no key left behind");
  // A removed session may be created again.
  await store.putSession("gone", PROGRAM, PLACEMENT);
});

Deno.test("ClusterStore refuses names that cannot be part of a key", () => {
  const store = new ClusterStore({
    etcd: new EtcdClient({ endpoints: ["http://127.0.0.1:9"] }),
    cluster: "c",
    valueKey: KEY,
  });
  assert.throws(() => store.partKey("a/b", "s"), StoreKeyError);
  assert.throws(() => store.sessionKey("", "program"), StoreKeyError);
  assert.throws(() =>
    new ClusterStore({ etcd: new EtcdClient({ endpoints: ["http://x"] }), cluster: "a/b", valueKey: KEY })
  );
  assert.equal(store.memberKey("brno"), "/edgenode/c/members/brno");
});

Deno.test("ClusterStore refuses values that carry no valid seal, counting them, and never runs them", async () => {
  await using etcd = await EtcdServer.start();
  const store = storeOf(etcd);
  const raw = new EtcdClient({ endpoints: [etcd.url] });
  await store.putSession("real", PROGRAM, PLACEMENT, { node: "brno", attempt: "aaaaaaaa" });
  assert.equal((await store.session("real"))?.program, PROGRAM);
  // Someone who can write etcd but lacks the token puts a session and a part for brno.
  const forged = (key: string, text: string) => raw.put(key, text);
  await forged(store.sessionKey("evil", "program"), PROGRAM);
  await forged(store.sessionKey("evil", "placement"), JSON.stringify({ input1: "brno" }));
  await forged(store.partKey("brno", "evil"), JSON.stringify({ aps: ["input1"] }));
  // A valid value moved to another key does not verify either.
  const copied = (await raw.range(store.sessionKey("real", "program"))).kvs[0].value;
  await forged(store.sessionKey("copy", "program"), copied);
  await forged(store.sessionKey("copy", "placement"), JSON.stringify({ input1: "brno" }));
  assert.equal(await store.session("evil"), undefined);
  assert.equal(await store.session("copy"), undefined);
  assert.deepEqual((await store.sessions()).map((s) => s.name), ["real"]);
  assert.deepEqual((await store.sessionsOf("brno")).map((p) => p.session), ["real"]);
  assert.ok(store.figures.values_refused >= 4, String(store.figures.values_refused));
  // A tampered leaf of a real session refuses the session whole.
  await forged(store.sessionKey("real", "placement"), JSON.stringify({ input1: "pilsen" }));
  assert.equal(await store.session("real"), undefined);
  assert.equal(store.figures.last_refused_key, store.sessionKey("real", "placement"));
  await store.join("brno", { api: "10.77.0.1:8080" });
  await forged(store.memberKey("mallory"), JSON.stringify({ api: "10.66.0.1:8080" }));
  assert.deepEqual((await store.members()).map((m) => m.name), ["brno"]);
});

Deno.test("etcdSecrets derives a prefix and a value key apart from each other and from other tokens", () => {
  const a = etcdSecrets("cluster-token-aaaaaaaaaaaa");
  const b = etcdSecrets("cluster-token-bbbbbbbbbbbb");
  assert.match(a.prefix, /^c[0-9a-f]{32}$/);
  assert.notEqual(a.prefix, b.prefix);
  assert.deepEqual(etcdSecrets("cluster-token-aaaaaaaaaaaa"), a);
  const v = seal(a.valueKey, "/k", "text.with.dots");
  assert.equal(unseal(a.valueKey, "/k", v), "text.with.dots");
  assert.equal(unseal(b.valueKey, "/k", v), undefined, "another token's key");
  assert.equal(unseal(a.valueKey, "/other", v), undefined, "another key");
  assert.equal(unseal(a.valueKey, "/k", v.replace("text", "TEXT")), undefined, "a changed text");
  for (const bad of ["", "s1.", "text", "s1.short.x"]) assert.equal(unseal(a.valueKey, "/k", bad), undefined);
});
