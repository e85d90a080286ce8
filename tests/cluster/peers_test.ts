/**
 * PeerClient (lib/cluster/peers.ts) against answers too large for it: one that says so in its Content-Length is
 * refused unread, and one that streams without end is read only up to the cap, its stream cancelled, long before the
 * call's deadline (the clock is a ManualClock that never reaches it). And a peer's refusal of a body too large for it.
 */
import assert from "node:assert/strict";
import { clusterKey } from "../../lib/cluster/auth.ts";
import { PeerClient, PeerError } from "../../lib/cluster/peers.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { until } from "../_support/until.ts";

const TOKEN = "cluster-token-0123456789";
const CAP = 256 * 1024;
const STREAM_END = 64 * 1024 * 1024;

Deno.test("PeerClient refuses an answer whose Content-Length is over its cap without reading it", async () => {
  let pulls = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(c) {
      // Short of what it declares (an uncapped client then fails here instead of hanging).
      if (++pulls > 1024) return c.close();
      c.enqueue(new Uint8Array(1024));
    },
  }, { highWaterMark: 0 });
  const huge = () =>
    Promise.resolve(new Response(body, { headers: { "content-length": String(512 * 1024 * 1024) } }));
  const client = new PeerClient({
    self: "brno",
    key: await clusterKey(TOKEN),
    clock: new ManualClock(0),
    fetch: huge,
    maxAnswer: CAP,
  });
  const error = await client.call(
    { name: "prague", api: { host: "127.0.0.1", port: 1 } },
    "GET",
    "/cluster/usage",
    {
      timeoutMs: 5000,
    },
  ).catch((e) => e);
  assert.ok(error instanceof PeerError, String(error));
  assert.equal(error.kind, "bad_answer");
  assert.match(error.message, /more than 262144 bytes/);
  assert.equal(pulls, 0);
});

Deno.test("PeerClient stops reading an answer that streams past its cap, and cancels it", async () => {
  let sent = 0;
  let cancelled = false;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () =>
    new Response(
      new ReadableStream<Uint8Array>({
        pull(c) {
          // Bounded, so that a client without a cap fails this test instead of hanging it.
          if (sent >= STREAM_END) return c.close();
          sent += 64 * 1024;
          c.enqueue(new Uint8Array(64 * 1024));
        },
        cancel() {
          cancelled = true;
        },
      }),
    ));
  try {
    const client = new PeerClient({
      self: "brno",
      key: await clusterKey(TOKEN),
      clock: new ManualClock(0),
      maxAnswer: CAP,
    });
    const error = await client.call(
      { name: "prague", api: { host: "127.0.0.1", port: server.addr.port } },
      "GET",
      "/cluster/usage",
      { timeoutMs: 5000 },
    ).catch((e) => e);
    assert.ok(error instanceof PeerError, String(error));
    assert.equal(error.kind, "bad_answer");
    // Kernel and HTTP buffers hold some more than the cap, nothing like what an uncapped read takes.
    assert.ok(sent < STREAM_END, `the server produced ${sent} bytes`);
    await until("the server's stream cancelled", () => cancelled);
  } finally {
    await server.shutdown();
  }
});

Deno.test("PeerClient reads a peer's unsigned 413 as its body limit, and any other unsigned answer as unauthenticated", async () => {
  // A peer's status API answers a body over its status.max_body before the cluster's guard could sign the answer.
  for (
    const [status, kind, text] of [[413, "too_large", /over prague's status\.max_body \(HTTP 413\)/], [
      500,
      "unauthenticated",
      /HTTP 500/,
    ]] as const
  ) {
    const client = new PeerClient({
      self: "brno",
      key: await clusterKey(TOKEN),
      clock: new ManualClock(0),
      fetch: () =>
        Promise.resolve(Response.json({ error: "Request body larger than 1048576 bytes" }, { status })),
    });
    const error = await client.call(
      { name: "prague", api: { host: "127.0.0.1", port: 1 } },
      "POST",
      "/cluster/sessions/up/prepare",
      { body: { modules: { "pass.ts": "x".repeat(2000) } }, timeoutMs: 5000 },
    ).catch((e) => e);
    assert.ok(error instanceof PeerError, String(error));
    assert.equal(error.kind, kind);
    assert.match(error.message, text);
  }
});
