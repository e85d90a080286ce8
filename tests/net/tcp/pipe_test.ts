import assert from "node:assert/strict";
import { type Clock, ManualClock } from "../../../lib/core/clock.ts";
import { yieldToEventLoop } from "../../../lib/core/yield.ts";
import { classifyTcpError, connectTcp, listenTcp } from "../../../lib/net/tcp/socket.ts";
import { BufferPool } from "../../../lib/net/tcp/pool.ts";
import { pipe, type PipeConn, type PipeCounters, type PipeOptions } from "../../../lib/net/tcp/pipe.ts";

const LO = "127.0.0.1";
const MiB = 1024 * 1024;

/** A pair of connected loopback sockets. */
async function socketPair(): Promise<[Deno.TcpConn, Deno.TcpConn]> {
  using listener = listenTcp({ host: LO, port: 0 });
  const [near, far] = await Promise.all([connectTcp(listener.addr), listener.accept()]);
  return [near, far!];
}

/**
 * client <-> a [pipe] b <-> server over real loopback sockets. `wrap` lets a test put instruments around the
 * pipe's two connections.
 */
async function proxied(
  options: PipeOptions = {},
  wrap: (a: PipeConn, b: PipeConn) => [PipeConn, PipeConn] = (a, b) => [a, b],
) {
  const [client, a] = await socketPair();
  const [b, server] = await socketPair();
  const counters: PipeCounters = options.counters ?? { up: 0, down: 0 };
  const [pa, pb] = wrap(a, b);
  const done = pipe(pa, pb, { ...options, counters });
  let ended = false;
  done.then(() => (ended = true));
  return { client, server, done, counters, ended: () => ended };
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
}

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    chunks.push(buf.slice(0, n));
  }
  const out = new Uint8Array(chunks.reduce((s, c) => s + c.length, 0));
  chunks.reduce((off, c) => (out.set(c, off), off + c.length), 0);
  return out;
}

async function readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let off = 0; off < n;) {
    const got = await conn.read(out.subarray(off));
    if (got === null) throw new Error(`EOF after ${off} of ${n} bytes`);
    off += got;
  }
  return out;
}

function random(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let off = 0; off < n; off += 65536) {
    crypto.getRandomValues(out.subarray(off, Math.min(n, off + 65536)));
  }
  return out;
}

/** True when `conn` has nothing more to give: EOF, or a reset (both mean the pipe closed it). */
async function closedByPeer(conn: Deno.Conn): Promise<boolean> {
  try {
    return (await conn.read(new Uint8Array(16))) === null;
  } catch (error) {
    return classifyTcpError(error) === "reset";
  }
}

async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await yieldToEventLoop();
}

Deno.test("pipe relays 1 MiB each way at once, byte-exact, and ends with eof", async () => {
  const pool = new BufferPool({ capacity: 4 });
  const { client, server, done, counters } = await proxied({ pool });
  const up = random(MiB);
  const down = random(MiB);
  const clientSide = Promise.all([
    writeAll(client, up).then(() => client.closeWrite()),
    readAll(client),
  ]);
  const serverSide = Promise.all([
    writeAll(server, down).then(() => server.closeWrite()),
    readAll(server),
  ]);
  const [[, gotDown], [, gotUp]] = await Promise.all([clientSide, serverSide]);
  assert.equal(gotUp.length, MiB);
  assert.deepEqual(gotUp, up);
  assert.deepEqual(gotDown, down);
  const result = await done;
  assert.deepEqual(result, { up: MiB, down: MiB, reason: "eof" });
  assert.deepEqual(counters, { up: MiB, down: MiB });
  client.close();
  server.close();
});

Deno.test("pipe half-closes: the client shuts its sending side and still gets the reply", async () => {
  const { client, server, done } = await proxied();
  await writeAll(client, new TextEncoder().encode("request"));
  await client.closeWrite();
  // The server sees EOF first, and only then answers.
  assert.equal(new TextDecoder().decode(await readAll(server)), "request");
  await writeAll(server, new TextEncoder().encode("reply after your FIN"));
  await server.closeWrite();
  assert.equal(new TextDecoder().decode(await readAll(client)), "reply after your FIN");
  assert.deepEqual(await done, { up: 7, down: 20, reason: "eof" });
  client.close();
  server.close();
});

Deno.test("pipe keeps the reverse direction running for as long as it lasts after one side's EOF", async () => {
  const { client, server, done, ended } = await proxied();
  await client.closeWrite();
  assert.equal((await readAll(server)).length, 0);
  for (let i = 0; i < 10; i++) {
    await writeAll(server, Uint8Array.of(i));
    assert.deepEqual(await readExactly(client, 1), Uint8Array.of(i));
  }
  assert.equal(ended(), false);
  server.close();
  assert.equal(await closedByPeer(client), true);
  assert.equal((await done).reason, "eof");
  client.close();
});

/**
 * A peer in another process that reads one byte and waits; SIGKILL then closes its socket with data unread, so the
 * kernel sends RST (an in-process close sends FIN first: Deno shuts the socket down before closing it).
 */
async function killablePeer(): Promise<{ conn: Deno.TcpConn; ready: Promise<void>; kill(): Promise<void> }> {
  using listener = listenTcp({ host: LO, port: 0 });
  const code = `const c = await Deno.connect({ hostname: "${LO}", port: ${listener.addr.port} });
    await c.read(new Uint8Array(1)); console.log("ready"); setInterval(() => {}, 1000);`;
  const child = new Deno.Command(Deno.execPath(), { args: ["eval", code], stdout: "piped", stderr: "null" })
    .spawn();
  const conn = (await listener.accept())!;
  const reader = child.stdout.getReader();
  const ready = reader.read().then(() => {});
  return {
    conn,
    ready,
    async kill() {
      child.kill("SIGKILL");
      await child.status;
      reader.releaseLock();
      await child.stdout.cancel();
    },
  };
}

for (const side of ["server", "client"] as const) {
  Deno.test(`pipe closes the other side when the ${side} resets, and returns its buffers`, async () => {
    const pool = new BufferPool({ capacity: 1 });
    const peer = await killablePeer();
    const [other, near] = await socketPair();
    const [a, b] = side === "server" ? [near, peer.conn] : [peer.conn, near];
    const done = pipe(a, b, { pool });
    // Two bytes in one segment: the peer reads one and dies with the other unread.
    await writeAll(other, Uint8Array.of(1, 2));
    await peer.ready;
    await peer.kill();
    assert.equal(await closedByPeer(other), true);
    const result = await done;
    assert.equal(result.reason, "error");
    assert.equal(result.side, side === "server" ? "b" : "a");
    assert.equal(classifyTcpError(result.error), "reset");
    assert.equal(pool.inUse, 0);
    assert.equal(pool.free, 1);
    other.close();
  });
}

Deno.test("pipe closes both sides promptly on abort, with reads pending on both", async () => {
  const controller = new AbortController();
  const pool = new BufferPool();
  const { client, server, done } = await proxied({ signal: controller.signal, pool });
  await writeAll(client, Uint8Array.of(7));
  assert.deepEqual(await readExactly(server, 1), Uint8Array.of(7));
  const reason = new Error("server went down");
  controller.abort(reason);
  const [clientClosed, serverClosed, result] = await Promise.all([
    closedByPeer(client),
    closedByPeer(server),
    done,
  ]);
  assert.ok(clientClosed && serverClosed);
  assert.deepEqual(result, { up: 1, down: 0, reason: "aborted", error: reason });
  assert.equal(pool.inUse, 0);
  client.close();
  server.close();
});

Deno.test("pipe with an already aborted signal closes both at once and takes no buffer", async () => {
  const pool = new BufferPool();
  const { client, server, done } = await proxied({ signal: AbortSignal.abort(), pool });
  assert.equal((await done).reason, "aborted");
  assert.equal(await closedByPeer(client), true);
  assert.equal(await closedByPeer(server), true);
  assert.equal(pool.allocated, 0);
  client.close();
  server.close();
});

Deno.test("pipe ends idle after idleMs with no byte either way, on one timer re-checked", async () => {
  const manual = new ManualClock(10_000);
  let timersSet = 0;
  const clock: Clock = {
    now: () => manual.now(),
    nowUs: () => manual.nowUs(),
    setTimeout: (fn, ms) => (timersSet++, manual.setTimeout(fn, ms)),
    clearTimeout: (id) => manual.clearTimeout(id),
  };
  const { client, server, done, ended } = await proxied({ idleMs: 1000, clock });
  manual.advance(999);
  // Traffic at t+999, many reads: the pipe stamps it and sets no timer per read.
  for (let i = 0; i < 20; i++) {
    await writeAll(client, Uint8Array.of(i));
    await readExactly(server, 1);
    await writeAll(server, Uint8Array.of(i));
    await readExactly(client, 1);
  }
  assert.equal(timersSet, 1);
  manual.advance(1); // the timer fires, finds 1 ms of quiet, re-arms for the rest
  await turns(5);
  assert.equal(ended(), false);
  assert.equal(timersSet, 2);
  assert.equal(manual.pending, 1);
  manual.advance(998);
  await turns(5);
  assert.equal(ended(), false);
  manual.advance(1);
  const result = await done;
  assert.deepEqual(result, { up: 20, down: 20, reason: "idle" });
  assert.equal(await closedByPeer(client), true);
  assert.equal(await closedByPeer(server), true);
  assert.equal(manual.pending, 0);
  client.close();
  server.close();
});

Deno.test("pipe clears its idle timer and abort listener when it ends otherwise", async () => {
  const clock = new ManualClock();
  const controller = new AbortController();
  const { client, server, done } = await proxied({ idleMs: 5000, clock, signal: controller.signal });
  client.close();
  server.close();
  assert.equal((await done).reason, "eof");
  assert.equal(clock.pending, 0);
  controller.abort(); // must not touch anything now
});

Deno.test("pipe returns both buffers to the pool, and a second connection reuses them", async () => {
  const pool = new BufferPool({ bufferBytes: 16 * 1024, capacity: 4 });
  for (let round = 0; round < 3; round++) {
    const { client, server, done } = await proxied({ pool });
    assert.equal(pool.inUse, 2);
    await writeAll(client, random(100_000));
    await client.closeWrite();
    assert.equal((await readAll(server)).length, 100_000);
    server.close();
    await done;
    client.close();
    assert.equal(pool.inUse, 0);
    assert.equal(pool.free, 2);
    assert.equal(pool.allocated, 2);
  }
});

Deno.test("pipe settles with error, not a rejection, when a side is closed already", async () => {
  const [client, a] = await socketPair();
  const [b, server] = await socketPair();
  a.close();
  const result = await pipe(a, b);
  assert.equal(result.reason, "error");
  assert.equal(result.side, "a");
  assert.equal(classifyTcpError(result.error), "closed");
  assert.equal(await closedByPeer(server), true);
  client.close();
  server.close();
});

/** A connection whose reads always have `chunk` bytes ready and whose writes wait for the test to finish them. */
class ScriptedConn implements PipeConn {
  reads = 0;
  readonly writes: { data: Uint8Array; finish: (n: number) => void }[] = [];
  #eof?: () => void;
  constructor(readonly chunk = 0) {}
  read(p: Uint8Array): Promise<number | null> {
    this.reads++;
    if (this.chunk === 0) return new Promise((resolve) => (this.#eof = () => resolve(null)));
    p.fill(this.reads & 0xff, 0, this.chunk);
    return Promise.resolve(this.chunk);
  }
  write(p: Uint8Array): Promise<number> {
    return new Promise((resolve) => this.writes.push({ data: p.slice(), finish: resolve }));
  }
  closeWrite(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {
    this.#eof?.();
  }
}

Deno.test("pipe reads again only when the last chunk is fully written, short writes included", async () => {
  const source = new ScriptedConn(1000);
  const sink = new ScriptedConn();
  const counters = { up: 0, down: 0 };
  const controller = new AbortController();
  const done = pipe(source, sink, { counters, signal: controller.signal });
  await turns(10);
  assert.equal(source.reads, 1);
  assert.equal(sink.writes.length, 1);
  assert.equal(sink.writes[0].data.length, 1000);

  sink.writes[0].finish(300); // a short write
  await turns(10);
  assert.equal(source.reads, 1, "no read while 700 bytes of the chunk are unwritten");
  assert.equal(sink.writes.length, 2);
  assert.deepEqual(sink.writes[1].data, new Uint8Array(700).fill(1));
  assert.equal(counters.up, 300);

  sink.writes[1].finish(700);
  await turns(10);
  assert.equal(source.reads, 2);
  assert.equal(counters.up, 1000);
  assert.equal(sink.writes.length, 3);
  assert.deepEqual(sink.writes[2].data, new Uint8Array(1000).fill(2));

  // However long the writer stays stuck, the reader stays put: one buffer held, no more.
  await turns(50);
  assert.equal(source.reads, 2);
  controller.abort();
  sink.writes[2].finish(0);
  assert.equal((await done).reason, "aborted");
});

Deno.test("pipe holds at most one buffer per direction when the client stops reading (real sockets)", async () => {
  const pool = new BufferPool();
  const total = 64 * MiB;
  // Instruments around the pipe's sockets: bytes the pipe read from the server and wrote to the client.
  let fromServer = 0;
  let toClient = 0;
  let writePending = false;
  let readsDuringWrite = 0;
  let maxHeld = 0;
  const { client, server, done } = await proxied({ pool }, (a, b) => [
    {
      read: (p) => a.read(p),
      write: async (p) => {
        writePending = true;
        try {
          const n = await a.write(p);
          toClient += n;
          return n;
        } finally {
          writePending = false;
        }
      },
      closeWrite: () => a.closeWrite(),
      close: () => a.close(),
    },
    {
      read: async (p) => {
        if (writePending) readsDuringWrite++;
        const n = await b.read(p);
        fromServer += n ?? 0;
        maxHeld = Math.max(maxHeld, fromServer - toClient);
        return n;
      },
      write: (p) => b.write(p),
      closeWrite: () => b.closeWrite(),
      close: () => b.close(),
    },
  ]);
  let serverWrote = 0;
  let serverDone = false;
  const chunk = new Uint8Array(256 * 1024);
  const writer = (async () => {
    for (let off = 0; off < total;) {
      for (let i = 0; i < chunk.length; i++) chunk[i] = (off + i) & 0xff;
      await writeAll(server, chunk);
      off += chunk.length;
      serverWrote = off;
    }
    await server.closeWrite();
    serverDone = true;
  })();

  // The client reads nothing until the pipe's write to it has stayed blocked for a good while.
  let stuckFor = 0;
  let lastToClient = -1;
  while (stuckFor < 200) {
    await yieldToEventLoop();
    stuckFor = writePending && toClient === lastToClient ? stuckFor + 1 : 0;
    lastToClient = toClient;
  }
  // Kernel buffers took a few MiB; the server is stuck, not done: nothing upstream of them grew.
  assert.ok(!serverDone && serverWrote < total, `the server wrote ${serverWrote} of ${total} bytes`);
  assert.ok(maxHeld <= pool.bufferBytes, `held ${maxHeld} bytes`);
  assert.equal(readsDuringWrite, 0);

  // Now the client reads everything; every byte arrives in order.
  const buf = new Uint8Array(128 * 1024);
  let got = 0;
  for (;;) {
    const n = await client.read(buf);
    if (n === null) break;
    for (let i = 0; i < n; i++) {
      if (buf[i] !== ((got + i) & 0xff)) throw new Error(`Byte ${got + i} is wrong`);
    }
    got += n;
  }
  await writer;
  assert.equal(got, total);
  assert.equal(readsDuringWrite, 0);
  assert.ok(maxHeld <= pool.bufferBytes);
  await client.closeWrite();
  assert.deepEqual(await done, { up: 0, down: total, reason: "eof" });
  client.close();
  server.close();
});
