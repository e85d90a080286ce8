/**
 * The agent's TCP listener on 127.0.0.1 with real sockets: one line then the close, the checker's agent-send
 * text read, the connection limit, the per-connection deadline on a ManualClock, and a clean stop.
 */
import assert from "node:assert/strict";
import { type AgentServerOptions, serveAgent } from "../../lib/agent/server.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { StartError } from "../../lib/core/errors.ts";
import { Logger } from "../../lib/core/logger.ts";
import { until } from "../_support/until.ts";

function options(over: Partial<AgentServerOptions> = {}): AgentServerOptions {
  const clock = new ManualClock();
  return {
    listen: { host: "127.0.0.1", port: 0 },
    maxClients: 64,
    timeoutMs: 2000,
    clock,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    reply: () => Promise.resolve("75% ready\n"),
    ...over,
  };
}

/** Everything the server sends until it closes. */
async function readAll(conn: Deno.TcpConn): Promise<string> {
  const chunks: string[] = [];
  const buf = new Uint8Array(1024);
  const decoder = new TextDecoder();
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) return chunks.join("");
    chunks.push(decoder.decode(buf.subarray(0, n)));
  }
}

const never = new AbortController().signal;

Deno.test("serveAgent answers one line and closes", async () => {
  const server = serveAgent(options());
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    assert.equal(await readAll(conn), "75% ready\n");
    conn.close();
  } finally {
    await server.close(never);
  }
  assert.equal(server.stats.replies, 1);
  assert.equal(server.stats.errors, 0);
  assert.equal(server.stats.active, 0);
});

Deno.test("serveAgent reads the checker's agent-send text without waiting for it", async () => {
  const server = serveAgent(options());
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    await conn.write(new TextEncoder().encode("web/srv1\n"));
    assert.equal(await readAll(conn), "75% ready\n");
    conn.close();
    await until("the connection to end", () => server.stats.active === 0);
    assert.equal(server.stats.lastRequest, "web/srv1");
  } finally {
    await server.close(never);
  }
});

Deno.test("serveAgent closes connections over maxClients unanswered and counts them", async () => {
  const server = serveAgent(options({ maxClients: 2 }));
  const open: Deno.TcpConn[] = [];
  try {
    // Two checkers read their line but keep the connection open, so the server still holds both.
    for (let i = 0; i < 2; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
      open.push(conn);
      const buf = new Uint8Array(64);
      const n = await conn.read(buf);
      assert.equal(new TextDecoder().decode(buf.subarray(0, n!)), "75% ready\n");
    }
    const third = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    assert.equal(await readAll(third).catch(() => ""), "");
    third.close();
    assert.equal(server.stats.refused, 1);
    for (const c of open.splice(0)) c.close();
    await until("the held connections to end", () => server.stats.active === 0);
    const fourth = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    assert.equal(await readAll(fourth), "75% ready\n");
    fourth.close();
  } finally {
    for (const c of open) c.close();
    await server.close(never);
  }
  assert.equal(server.stats.replies, 3);
});

Deno.test("serveAgent closes a connection whose reply is not ready by its deadline", async () => {
  const opts = options({ timeoutMs: 500, reply: () => new Promise<string>(() => {}) });
  const server = serveAgent(opts);
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    await until("the connection to be accepted", () => server.stats.active === 1);
    const reading = readAll(conn).catch(() => "");
    (opts.clock as ManualClock).advance(500);
    assert.equal(await reading, "");
    conn.close();
    await until("the connection to end", () => server.stats.active === 0);
    assert.equal(server.stats.errors, 1);
    assert.equal(server.stats.replies, 0);
  } finally {
    await server.close(never);
  }
});

Deno.test("serveAgent close cuts lingering connections when the drain deadline passes", async () => {
  const server = serveAgent(options());
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  const buf = new Uint8Array(64);
  assert.ok(await conn.read(buf));
  const drain = new AbortController();
  const closing = server.close(drain.signal);
  drain.abort();
  await closing;
  assert.equal(server.stats.active, 0);
  assert.equal(await readAll(conn).catch(() => ""), "");
  conn.close();
  await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port: server.addr.port }));
});

Deno.test("serveAgent names the address and the reason when it cannot listen", async () => {
  const first = serveAgent(options());
  try {
    assert.throws(
      () => serveAgent(options({ listen: first.addr })),
      (e) =>
        e instanceof StartError &&
        e.message ===
          `Cannot start agent: cannot listen on tcp 127.0.0.1:${first.addr.port}: address already in use`,
    );
  } finally {
    await first.close(never);
  }
});
