/**
 * Cluster authentication through `app.request()`: a signed request reaches the route and its answer is signed back;
 * a wrong token, a stale timestamp, a tampered body, a replay, an unknown peer and a request meant for another node
 * are refused with 401 and counted by reason; an answer not signed by the peer is refused by the caller.
 */
import assert from "node:assert/strict";
import { Hono } from "hono";
import { ManualClock } from "../../lib/core/clock.ts";
import {
  clusterAuth,
  clusterKey,
  type Refusal,
  REPLY_HEADER,
  REQUEST_HEADER,
  signRequest,
} from "../../lib/cluster/auth.ts";
import { PeerClient, PeerError } from "../../lib/cluster/peers.ts";
import { until } from "../_support/until.ts";

const TOKEN = "cluster-token-0123456789";
const T0 = Date.UTC(2026, 0, 1);

async function setup(token = TOKEN) {
  const clock = new ManualClock(T0);
  const refused: Refusal[] = [];
  const app = new Hono();
  app.use(
    "/cluster/*",
    clusterAuth({
      key: await clusterKey(token),
      self: "prague",
      peers: new Set(["brno", "pilsen"]),
      skewMs: 30_000,
      clock,
      refused: (r) => refused.push(r),
    }),
  );
  app.post(
    "/cluster/echo",
    async (c) => c.json({ got: await c.req.json(), from: c.get("clusterPeer" as never) }),
  );
  const fetchApp = (input: string, init: RequestInit) => Promise.resolve(app.request(input, init));
  return { clock, refused, app, fetchApp };
}

const prague = { name: "prague", api: { host: "127.0.0.1", port: 1 } };

Deno.test("PeerClient signs a request the peer accepts, and checks the signed answer", async () => {
  const { clock, refused, fetchApp } = await setup();
  const client = new PeerClient({ self: "brno", key: await clusterKey(TOKEN), clock, fetch: fetchApp });
  const answer = await client.call(prague, "POST", "/cluster/echo", { body: { x: 1 }, timeoutMs: 1000 });
  assert.equal(answer.status, 200);
  assert.deepEqual(answer.body, { got: { x: 1 }, from: "brno" });
  assert.deepEqual(refused, []);
});

Deno.test("clusterAuth refuses a wrong token with 401, counted, and the caller sees the answer unsigned", async () => {
  const { clock, refused, fetchApp } = await setup();
  const client = new PeerClient({
    self: "brno",
    key: await clusterKey("another-token-0123456789"),
    clock,
    fetch: fetchApp,
  });
  const error = await client.call(prague, "POST", "/cluster/echo", { body: {}, timeoutMs: 1000 }).catch((e) =>
    e
  );
  assert.ok(error instanceof PeerError);
  assert.equal(error.kind, "unauthenticated");
  assert.match(error.message, /HTTP 401/);
  assert.deepEqual(refused, ["bad_signature"]);
});

async function signed(
  o: { body: string; now: number; from?: string; to?: string; path?: string; token?: string },
) {
  const { header } = await signRequest(await clusterKey(o.token ?? TOKEN), {
    from: o.from ?? "brno",
    to: o.to ?? "prague",
    method: "POST",
    path: o.path ?? "/cluster/echo",
    body: new TextEncoder().encode(o.body),
    now: o.now,
  });
  return {
    method: "POST",
    headers: { [REQUEST_HEADER]: header, "content-type": "application/json" },
    body: o.body,
  };
}

Deno.test("clusterAuth refuses stale, tampered, replayed, foreign and misaddressed requests with 401, by reason", async () => {
  const { app, refused } = await setup();
  const url = "http://prague/cluster/echo";
  // A timestamp 31 s old (the window is 30 s), and one 31 s ahead.
  assert.equal((await app.request(url, await signed({ body: "{}", now: T0 - 31_000 }))).status, 401);
  assert.equal((await app.request(url, await signed({ body: "{}", now: T0 + 31_000 }))).status, 401);
  // The body changed after signing.
  const tampered = await signed({ body: '{"x":1}', now: T0 });
  assert.equal((await app.request(url, { ...tampered, body: '{"x":2}' })).status, 401);
  // The path changed after signing.
  assert.equal(
    (await app.request(url, await signed({ body: "{}", now: T0, path: "/cluster/other" }))).status,
    401,
  );
  // Accepted once, refused when sent again.
  const once = await signed({ body: "{}", now: T0 });
  const first = await app.request(url, once);
  assert.equal(first.status, 200);
  assert.ok(first.headers.get(REPLY_HEADER));
  assert.equal((await app.request(url, once)).status, 401);
  // A name not among the peers, a request for another node, no header, a garbled header.
  assert.equal((await app.request(url, await signed({ body: "{}", now: T0, from: "vienna" }))).status, 401);
  assert.equal((await app.request(url, await signed({ body: "{}", now: T0, to: "pilsen" }))).status, 401);
  assert.equal((await app.request(url, { method: "POST", body: "{}" })).status, 401);
  const garbled = await app.request(url, {
    method: "POST",
    headers: { [REQUEST_HEADER]: "v1 nonsense" },
    body: "{}",
  });
  assert.equal(garbled.status, 401);
  assert.deepEqual(refused, [
    "stale",
    "stale",
    "bad_signature",
    "bad_signature",
    "replayed",
    "unknown_peer",
    "wrong_target",
    "no_header",
    "malformed",
  ]);
});

Deno.test("clusterAuth refuses methods peers never use with 405, counted, without reading their body", async () => {
  const { app, refused } = await setup();
  for (const method of ["OPTIONS", "PROPFIND", "PUT", "DELETE"]) {
    let pulled = false;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulled = true;
        controller.enqueue(new Uint8Array(1 << 20));
      },
    }, { highWaterMark: 0 });
    const res = await app.request(new Request("http://localhost/cluster/echo", { method, body }));
    assert.equal(res.status, 405, method);
    assert.match((await res.json()).error, new RegExp(`^${method} is not a cluster method`));
    assert.equal(pulled, false, `${method}: the body was not read`);
  }
  assert.deepEqual(refused, ["malformed", "malformed", "malformed", "malformed"]);
});

Deno.test("PeerClient refuses an answer from a node that does not hold the token", async () => {
  const clock = new ManualClock(T0);
  // A stand-in that answers 200 without a reply signature.
  const impostor = () => Promise.resolve(Response.json({ ok: true }));
  const client = new PeerClient({ self: "brno", key: await clusterKey(TOKEN), clock, fetch: impostor });
  const error = await client.call(prague, "GET", "/cluster/usage", { timeoutMs: 1000 }).catch((e) => e);
  assert.ok(error instanceof PeerError);
  assert.equal(error.kind, "unauthenticated");
});

Deno.test("PeerClient gives up after its timeout on the injected clock", async () => {
  const clock = new ManualClock(T0);
  const never = () => new Promise<Response>(() => {});
  const client = new PeerClient({ self: "brno", key: await clusterKey(TOKEN), clock, fetch: never });
  const call = client.call(prague, "GET", "/cluster/usage", { timeoutMs: 2000 }).catch((e) => e);
  await until("the call's deadline", () => clock.pending > 0);
  clock.advance(2000);
  const error = await call;
  assert.ok(error instanceof PeerError);
  assert.equal(error.kind, "timeout");
});
