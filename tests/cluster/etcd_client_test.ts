/**
 * The etcd JSON-gateway client against a real etcd-server (Debian's), one per test on free loopback ports, plus the
 * pure stream splitter split at every byte.
 */
import assert from "node:assert/strict";
import {
  EtcdClient,
  EtcdRequestError,
  EtcdUnreachableError,
  JsonStreamSplitter,
  type WatchEvent,
} from "../../lib/cluster/etcd.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { EtcdServer } from "../_support/etcd.ts";
import { until } from "../_support/until.ts";

/** A loopback port nothing listens on (bound and released): a connection there is refused at once. */
function deadPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

Deno.test("JsonStreamSplitter cuts concatenated objects however the stream is chunked", () => {
  const messages = [
    { result: { created: true } },
    { result: { events: [{ kv: { key: "a2V5", value: "e30=" } }], note: 'brace } and quote \\" in "text"' } },
    { result: {} },
  ];
  const text = messages.map((m) => JSON.stringify(m)).join("\n") + "\n";
  for (let cut = 0; cut <= text.length; cut++) {
    const splitter = new JsonStreamSplitter(1024);
    const out = [...splitter.push(text.slice(0, cut)), ...splitter.push(text.slice(cut))];
    assert.deepEqual(out.map((t) => JSON.parse(t)), messages, `cut at ${cut}`);
  }
  // One character at a time as well.
  const splitter = new JsonStreamSplitter(1024);
  const out: string[] = [];
  for (const c of text) out.push(...splitter.push(c));
  assert.equal(out.length, 3);
});

Deno.test("JsonStreamSplitter refuses an unfinished message over its bound", () => {
  const splitter = new JsonStreamSplitter(100);
  assert.throws(() => splitter.push(`{"result":"${"x".repeat(200)}`), /over 100 bytes/);
});

Deno.test("EtcdClient put, get, range by prefix and delete work on a real etcd", async () => {
  await using etcd = await EtcdServer.start();
  const client = new EtcdClient({ endpoints: [etcd.url] });
  const rev = await client.put("/t/a", "één");
  assert.ok(rev > 0);
  await client.put("/t/b", "2");
  await client.put("/u/c", "3");
  const a = await client.get("/t/a");
  assert.equal(a?.value, "één");
  assert.equal(a?.createRevision, rev);
  assert.equal(await client.get("/t/none"), undefined);
  const { kvs } = await client.range("/t/");
  assert.deepEqual(kvs.map((kv) => [kv.key, kv.value]), [["/t/a", "één"], ["/t/b", "2"]]);
  assert.equal(await client.delete("/t/", { prefix: true }), 2);
  assert.deepEqual((await client.range("/t/")).kvs, []);
  assert.equal((await client.get("/u/c"))?.value, "3");
});

Deno.test("EtcdClient create is refused for an existing key and update for a stale revision", async () => {
  await using etcd = await EtcdServer.start();
  const client = new EtcdClient({ endpoints: [etcd.url] });
  assert.equal(await client.create("/k", "first"), true);
  assert.equal(await client.create("/k", "second"), false);
  const kv = (await client.get("/k"))!;
  assert.equal(kv.value, "first");
  assert.equal(await client.update("/k", "third", kv.modRevision), true);
  assert.equal(await client.update("/k", "fourth", kv.modRevision), false, "stale revision");
  assert.equal((await client.get("/k"))?.value, "third");
  const r = await client.txn({
    compare: [{ key: "/k", target: "value", value: "third" }],
    success: [{ get: { key: "/k" } }, { put: { key: "/k2", value: "x" } }],
  });
  assert.equal(r.succeeded, true);
  assert.equal(r.gets[0][0].value, "third");
});

Deno.test("EtcdClient lease keys go when the lease expires and at once on revoke", async () => {
  await using etcd = await EtcdServer.start();
  const client = new EtcdClient({ endpoints: [etcd.url] });
  const short = await client.leaseGrant(2);
  assert.equal(short.ttl, 2);
  await client.put("/lease/short", "x", { lease: short.id });
  assert.equal((await client.get("/lease/short"))?.lease, short.id);
  assert.ok(await client.leaseKeepAlive(short.id) > 0);
  // etcd's own expiry: 2 s after the last renewal (its timer runs about every 500 ms).
  const started = performance.now();
  await until(
    "the leased key to expire",
    async () => (await client.get("/lease/short")) === undefined,
    10_000,
    100,
  );
  console.log(
    `lease of 2 s: key gone ${((performance.now() - started) / 1000).toFixed(2)} s after the last renewal`,
  );
  assert.equal(await client.leaseKeepAlive(short.id), 0, "an expired lease renews to TTL 0");

  const long = await client.leaseGrant(60);
  await client.put("/lease/long", "y", { lease: long.id });
  await client.leaseRevoke(long.id);
  assert.equal(await client.get("/lease/long"), undefined);
  await client.leaseRevoke(long.id); // gone already: not an error
  await assert.rejects(
    client.put("/lease/bad", "z", { lease: long.id }),
    (e) =>
      e instanceof EtcdRequestError && /etcd refused put of \/lease\/bad: .*lease not found/.test(e.message),
  );
});

Deno.test("EtcdClient watch sees puts and deletes under its prefix and stops on close", async () => {
  await using etcd = await EtcdServer.start();
  const client = new EtcdClient({ endpoints: [etcd.url] });
  const seen: WatchEvent[] = [];
  let ended: unknown = "not yet";
  const watch = client.watch("/w/", (events) => seen.push(...events), { onEnd: (e) => ended = e });
  await watch.ready;
  await client.put("/w/a", "1");
  await client.put("/other", "2");
  await client.delete("/w/a");
  await until("two events", () => seen.length >= 2);
  assert.deepEqual(seen.map((e) => [e.type, e.key, e.value]), [["put", "/w/a", "1"], ["delete", "/w/a", ""]]);
  watch.close();
  assert.equal(ended, undefined, "closed, not broken");
});

Deno.test("EtcdClient tries the next endpoint when one refuses connections", async () => {
  await using etcd = await EtcdServer.start();
  const dead = `http://127.0.0.1:${deadPort()}`;
  const client = new EtcdClient({ endpoints: [dead, etcd.url] });
  await client.put("/f", "1");
  assert.equal(client.counts.failovers, 1);
  assert.equal((await client.get("/f"))?.value, "1");
  assert.equal(client.counts.failovers, 1, "later calls start at the endpoint that answered");
  // A watch also starts on an endpoint that answers.
  const seen: WatchEvent[] = [];
  const watch = new EtcdClient({ endpoints: [dead, etcd.url] }).watch("/f", (e) => seen.push(...e));
  await watch.ready;
  await client.put("/f", "2");
  await until("the watch event", () => seen.length === 1);
  watch.close();
});

Deno.test("EtcdClient names the endpoint it cannot reach", async () => {
  const url = `http://127.0.0.1:${deadPort()}`;
  const client = new EtcdClient({ endpoints: [url] });
  await assert.rejects(
    client.get("/x"),
    (e) => e instanceof EtcdUnreachableError && e.message.startsWith(`Cannot reach etcd at ${url}: `),
  );
});

Deno.test("EtcdClient call ends at its deadline when etcd does not answer", async () => {
  // A server that accepts and never answers stands for a hung etcd.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  const accepting = (async () => {
    try {
      for await (const c of listener) conns.push(c);
    } catch { /* closed */ }
  })();
  try {
    const clock = new ManualClock();
    const url = `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`;
    const client = new EtcdClient({ endpoints: [url], clock, timeoutMs: 3000 });
    const call = client.get("/x");
    await until("the request to arrive", () => conns.length === 1);
    clock.advance(3000);
    await assert.rejects(
      call,
      (e) => e instanceof EtcdUnreachableError && /Deadline of 3000 ms/.test(e.message),
    );
  } finally {
    listener.close();
    for (const c of conns) c.close();
    await accepting;
  }
});

Deno.test("EtcdClient watch resumes after etcd restarts and misses no event of the gap", async () => {
  await using etcd = await EtcdServer.start();
  const client = new EtcdClient({ endpoints: [etcd.url] });
  const seen: string[] = [];
  let ended: unknown = "not yet";
  const watch = client.watch("/r/", (events) => seen.push(...events.map((e) => e.value)), {
    onEnd: (e) => ended = e,
  });
  try {
    await watch.ready;
    await client.put("/r/a", "before");
    await until("the first event", () => seen.length === 1);
    await etcd.stop();
    await etcd.restart();
    // Written before the watch is back: the resume starts from the revision after the last event seen.
    await client.put("/r/b", "during");
    await client.put("/r/c", "after");
    await until("the events of the gap", () => seen.length === 3, 10_000);
    assert.deepEqual(seen, ["before", "during", "after"]);
    assert.ok(client.counts.watch_resumes >= 1);
    assert.equal(ended, "not yet");
  } finally {
    watch.close();
  }
});
