/**
 * The fast TCP path (lib/net/tcp_fast.ts) with real loopback sockets: Deno's own sockets are the client and the
 * server, the engine's listener, connect and splice sit between, as in a service.
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { StartError } from "../../lib/core/errors.ts";
import { yieldToEventLoop } from "../../lib/core/yield.ts";
import { connectTcp, listenTcp } from "../../lib/net/tcp.ts";
import { type FastConn, TcpEngine } from "../../lib/net/tcp_fast.ts";
import { BufferPool, type PipeResult } from "../../lib/scheduler/pipe.ts";

const LO = "127.0.0.1";
const MiB = 1024 * 1024;

function engine(): TcpEngine {
  const e = TcpEngine.get();
  assert.ok(e, "the fast TCP path needs Linux and --allow-ffi");
  return e;
}

/** client -> [engine listener, engine connect] -> server, not spliced yet; the test holds both Deno ends. */
async function connected() {
  const e = engine();
  const front = e.listen({ host: LO, port: 0 });
  const back = listenTcp({ host: LO, port: 0 });
  const [client, a] = await Promise.all([connectTcp(front.addr), front.accept()]);
  const [b, server] = await Promise.all([e.connect(back.addr), back.accept()]);
  front.close();
  back.close();
  return { e, client, server: server!, a: a!, b };
}

/** client -> [engine listener | splice | engine connect] -> server. */
async function spliced(options: Parameters<TcpEngine["splice"]>[2] = {}) {
  const c = await connected();
  return { ...c, done: c.e.splice(c.a, c.b, options) };
}

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await conn.read(buf).catch(() => null);
    if (n === null) break;
    parts.push(buf.slice(0, n));
  }
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let off = 0;
  for (const p of parts) (out.set(p, off), off += p.length);
  return out;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

Deno.test("fast splice relays 4 MiB each way at once, byte-exact, through held buffers, and ends with eof", async () => {
  const pool = new BufferPool({ bufferBytes: 16 * 1024, capacity: 4 });
  const { client, server, done } = await spliced({ pool });
  const up = pattern(4 * MiB, 1);
  const down = pattern(4 * MiB, 2);
  const [gotUp, gotDown] = await Promise.all([
    readAll(server),
    readAll(client),
    writeAll(client, up).then(() => client.closeWrite()),
    writeAll(server, down).then(() => server.closeWrite()),
  ]);
  assert.deepEqual(gotUp, up);
  assert.deepEqual(gotDown, down);
  const result = await done;
  assert.equal(result.reason, "eof");
  assert.equal(result.up, up.length);
  assert.equal(result.down, down.length);
  client.close();
  server.close();
});

Deno.test("fast splice half-closes: the client shuts its sending side and still gets the reply", async () => {
  const { client, server, done } = await spliced();
  await writeAll(client, new TextEncoder().encode("question"));
  await client.closeWrite();
  assert.equal(new TextDecoder().decode(await readAll(server)), "question", "the server sees EOF after it");
  await writeAll(server, new TextEncoder().encode("answer"));
  server.close();
  assert.equal(new TextDecoder().decode(await readAll(client)), "answer");
  assert.equal((await done).reason, "eof");
  client.close();
});

Deno.test("fast splice delivers what a server said and its end before the splice took the connection (server speaks first)", async () => {
  const { e, client, server, a, b } = await connected();
  // A greeting and the server's FIN arrive while the connection is not yet spliced: the engine reports each
  // only once, so the connection keeps what it saw for the splice.
  await writeAll(server, new TextEncoder().encode("220 ready"));
  await server.closeWrite();
  for (let i = 0; i < 200 && !(b.events & 0x2000); i++) await yieldToEventLoop();
  assert.ok(b.events & 0x2000, "the FIN was reported before the splice");
  const done = e.splice(a, b);
  assert.equal(new TextDecoder().decode(await readAll(client)), "220 ready", "the greeting, then the end");
  await client.closeWrite();
  assert.equal((await readAll(server)).length, 0, "the server sees the client's end");
  assert.equal((await done).reason, "eof");
  client.close();
  server.close();
});

Deno.test("fast splice ends when the server goes away with the client's bytes unread, and the client sees the end", async () => {
  const { client, server, done } = await spliced();
  await writeAll(client, new Uint8Array(10));
  // A close with unread data in its buffer resets the connection.
  server.close();
  const result = await done;
  assert.equal(result.reason, "error");
  assert.equal(result.side, "b", "the server's side failed");
  assert.equal((await readAll(client)).length, 0);
  client.close();
});

Deno.test("fast splice closes both sides on abort, and when the service closes one of its connections", async () => {
  for (const how of ["signal", "close"] as const) {
    const controller = new AbortController();
    const { client, server, a, done } = await spliced({ signal: controller.signal });
    if (how === "signal") controller.abort();
    else (a as FastConn).close();
    const result: PipeResult = await done;
    assert.equal(result.reason, "aborted", how);
    assert.equal((await readAll(client)).length, 0, "the client sees its connection end");
    assert.equal((await readAll(server)).length, 0, "and so does the server");
    client.close();
    server.close();
  }
});

Deno.test("fast splice given a connection closed already ends at once and closes the other (the service stopping mid-connect)", async () => {
  const { e, client, server, a, b } = await connected();
  a.close();
  const result = await e.splice(a, b);
  assert.equal(result.reason, "aborted");
  assert.equal(b.closed, true, "the server's connection is closed too");
  assert.equal((await readAll(server)).length, 0, "and the server sees it end");
  assert.equal((await readAll(client)).length, 0);
  client.close();
  server.close();
});

Deno.test("fast splice ends idle after idleMs on the injected clock", async () => {
  const clock = new ManualClock(0);
  const { client, server, done } = await spliced({ idleMs: 1000, clock });
  await writeAll(client, new Uint8Array([1]));
  const first = new Uint8Array(1);
  assert.equal(await server.read(first), 1);
  clock.advance(999);
  await yieldToEventLoop();
  let ended = false;
  done.then(() => ended = true);
  await yieldToEventLoop();
  assert.equal(ended, false, "999 ms of quiet is not idle");
  clock.advance(1);
  assert.equal((await done).reason, "idle");
  client.close();
  server.close();
});

Deno.test("fast listener and connect turn Nagle off on both sides of a splice (small replies leave at once)", async () => {
  const { client, server, a, b, done } = await spliced();
  assert.equal(a.engine.noDelay(a), true, "accepted: inherited from the listener");
  assert.equal(b.engine.noDelay(b), true, "connected");
  client.close();
  server.close();
  await done;
});

Deno.test("fast connect names the address and the kernel's reason; a port in use is a StartError", async () => {
  const e = engine();
  const probe = Deno.listen({ hostname: LO, port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  await assert.rejects(
    e.connect({ host: LO, port }),
    new RegExp(`^Error: Cannot connect to ${LO}:${port}: connection refused$`),
  );
  const held = Deno.listen({ hostname: LO, port: 0 });
  try {
    assert.throws(
      () => e.listen({ host: LO, port: (held.addr as Deno.NetAddr).port }),
      (err: unknown) =>
        err instanceof StartError &&
        /Cannot listen on tcp 127\.0\.0\.1:\d+: address already in use/.test(err.message),
    );
  } finally {
    held.close();
  }
});

Deno.test("fast engine waits on the event loop's own thread (it found the event loop's epoll set)", async () => {
  const e = engine();
  await e.ready;
  assert.equal(e.waitsOnEventLoopThread, true);
});

Deno.test("a fresh engine finds the event loop's epoll set even while its own set watches new sockets", async () => {
  // Its own process, so the engine is made at the start, as in edgenode; the permissions are edgenode's.
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      "--allow-net",
      "--allow-read",
      "--allow-run",
      "--allow-ffi",
      "--unstable-net",
      new URL("../fixtures/net/engine_busy_start.ts", import.meta.url).pathname,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const result = JSON.parse(text);
  assert.ok(result.sockets > 0, "sockets were opened while the engine looked");
  assert.equal(result.waitsOnEventLoopThread, true);
});
