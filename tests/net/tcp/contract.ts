/**
 * The contract every TCP Transport passes (run by fast_test.ts and portable_test.ts), in the manner of the UDP
 * sockets' suite (tests/net/udp_contract.ts): one suite, two implementations. Deno's own sockets are the client and
 * the server; the transport's listener, connect and splice sit between, as in a service.
 */
import assert from "node:assert/strict";
import { type Clock, ManualClock, systemClock } from "../../../lib/core/clock.ts";
import { StartError } from "../../../lib/core/errors.ts";
import { yieldToEventLoop } from "../../../lib/core/yield.ts";
import type { HostPort } from "../../../lib/net/address.ts";
import { BufferPool } from "../../../lib/net/tcp/pool.ts";
import { connectTcp, listenTcp } from "../../../lib/net/tcp/socket.ts";
import type { Conn, SpliceOptions, SpliceResult, Transport } from "../../../lib/net/tcp/transport.ts";

export const LO = "127.0.0.1";
const MiB = 1024 * 1024;
const enc = new TextEncoder();
const dec = new TextDecoder();

/** `transport.connect` as a promise. */
export function connectVia(
  transport: Transport,
  addr: HostPort,
  options: { timeoutMs?: number; clock?: Clock } = {},
): Promise<Conn> {
  return new Promise((resolve, reject) =>
    transport.connect(addr, options.timeoutMs ?? 0, options.clock ?? systemClock, {
      connected: resolve,
      connectFailed: reject,
    })
  );
}

/** `transport.splice` as a promise. */
export function spliceVia(
  transport: Transport,
  a: Conn,
  b: Conn,
  options: SpliceOptions = {},
): Promise<SpliceResult> {
  return new Promise((resolve) => transport.splice(a, b, options, { spliced: resolve }));
}

/** client -> [transport listener, transport connect] -> server, not spliced yet; the test holds both Deno ends. */
export async function connected(transport: Transport) {
  const front = transport.listen({ host: LO, port: 0 });
  using back = listenTcp({ host: LO, port: 0 });
  let served: Promise<void> = Promise.resolve();
  const accepted = new Promise<Conn>((resolve) => served = front.serve(resolve, () => Promise.resolve()));
  const [client, a] = await Promise.all([connectTcp(front.addr), accepted]);
  const [b, server] = await Promise.all([connectVia(transport, back.addr), back.accept()]);
  front.close();
  await served;
  return { client, server: server!, a, b };
}

export async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
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

export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

/**
 * A server in another process that reads one byte and waits; SIGKILL then closes its socket with data unread, so the
 * kernel sends RST (an in-process close sends FIN first: Deno shuts the socket down before closing it).
 */
async function killableServer(): Promise<{ addr: HostPort; ready: Promise<void>; kill(): Promise<void> }> {
  const code = `const l = Deno.listen({ hostname: "${LO}", port: 0 }); console.log(l.addr.port);
    const c = await l.accept(); await c.read(new Uint8Array(1)); console.log("ready"); setInterval(() => {}, 1000);`;
  const child = new Deno.Command(Deno.execPath(), { args: ["eval", code], stdout: "piped", stderr: "null" })
    .spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const line = async () => {
    while (!text.includes("\n")) {
      const { value, done } = await lines.read();
      if (done) throw new Error("The server process ended early");
      text += value;
    }
    const i = text.indexOf("\n");
    const first = text.slice(0, i);
    text = text.slice(i + 1);
    return first;
  };
  const port = Number(await line());
  const ready = line().then(() => {});
  let killed = false;
  return {
    addr: { host: LO, port },
    ready,
    async kill() {
      if (killed) return;
      killed = true;
      child.kill("SIGKILL");
      await child.status;
      await lines.cancel().catch(() => {});
      await ready.catch(() => {});
    },
  };
}

export function tcpContract(name: string, open: () => Transport): void {
  const test = (what: string, fn: (t: Transport) => Promise<void>) =>
    Deno.test(`${name} transport ${what}`, () => fn(open()));

  test("relays 4 MiB each way at once, byte-exact, through pooled buffers, and ends with eof", async (t) => {
    const pool = new BufferPool({ bufferBytes: 16 * 1024, capacity: 4 });
    const { client, server, a, b } = await connected(t);
    const done = spliceVia(t, a, b, { pool });
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
    assert.deepEqual({ reason: result.reason, up: result.up, down: result.down }, {
      reason: "eof",
      up: up.length,
      down: down.length,
    });
    assert.equal(pool.inUse, 0, "every buffer went back to the pool");
    client.close();
    server.close();
  });

  test("half-closes: the client shuts its sending side and still gets the reply", async (t) => {
    const { client, server, a, b } = await connected(t);
    const done = spliceVia(t, a, b);
    await writeAll(client, enc.encode("question"));
    await client.closeWrite();
    assert.equal(dec.decode(await readAll(server)), "question", "the server sees EOF after it");
    await writeAll(server, enc.encode("answer"));
    server.close();
    assert.equal(dec.decode(await readAll(client)), "answer");
    assert.equal((await done).reason, "eof");
    client.close();
  });

  test("delivers what a server said and its end before the splice began (server speaks first)", async (t) => {
    const { client, server, a, b } = await connected(t);
    await writeAll(server, enc.encode("220 ready"));
    await server.closeWrite();
    // Give the transport a chance to see both before the splice takes the connection.
    for (let i = 0; i < 20; i++) await yieldToEventLoop();
    const done = spliceVia(t, a, b);
    assert.equal(dec.decode(await readAll(client)), "220 ready", "the greeting, then the end");
    await client.closeWrite();
    assert.equal((await readAll(server)).length, 0, "the server sees the client's end");
    assert.equal((await done).reason, "eof");
    client.close();
    server.close();
  });

  test("ends with an error on the server's side when the server resets, and the client sees the end", async (t) => {
    const server = await killableServer();
    try {
      const front = t.listen({ host: LO, port: 0 });
      let served: Promise<void> = Promise.resolve();
      const accepted = new Promise<Conn>((resolve) => served = front.serve(resolve, () => Promise.resolve()));
      const [client, a] = await Promise.all([connectTcp(front.addr), accepted]);
      front.close();
      await served;
      const b = await connectVia(t, server.addr);
      const done = spliceVia(t, a, b);
      // Two bytes in one segment: the server reads one and dies with the other unread (the kernel sends RST).
      await writeAll(client, Uint8Array.of(1, 2));
      await server.ready;
      await server.kill();
      const result = await done;
      assert.equal(result.reason, "error");
      assert.equal(result.side, "b", "the server's side failed");
      assert.equal((await readAll(client)).length, 0, "the client sees its connection end");
      client.close();
    } finally {
      await server.kill();
    }
  });

  test("closes both sides on abort, whether the signal aborts during the splice or before it", async (t) => {
    for (const when of ["during", "before"] as const) {
      const controller = new AbortController();
      const { client, server, a, b } = await connected(t);
      if (when === "before") controller.abort(new Error("server down"));
      const done = spliceVia(t, a, b, { signal: controller.signal });
      if (when === "during") controller.abort(new Error("server down"));
      const result = await done;
      assert.equal(result.reason, "aborted", when);
      assert.equal((await readAll(client)).length, 0, "the client sees its connection end");
      assert.equal((await readAll(server)).length, 0, "and so does the server");
      client.close();
      server.close();
    }
  });

  test("ends idle after idleMs of quiet on the injected clock, and not at 999 of 1000 ms", async (t) => {
    const clock = new ManualClock(0);
    const { client, server, a, b } = await connected(t);
    const done = spliceVia(t, a, b, { idleMs: 1000, clock });
    let ended = false;
    done.then(() => ended = true);
    await writeAll(client, new Uint8Array([1]));
    assert.equal(await server.read(new Uint8Array(1)), 1);
    clock.advance(999);
    await yieldToEventLoop();
    assert.equal(ended, false, "999 ms of quiet is not idle (only the clock can end it)");
    clock.advance(1);
    assert.equal((await done).reason, "idle");
    client.close();
    server.close();
  });

  test("tells the addresses of both connections", async (t) => {
    const { client, server, a, b } = await connected(t);
    const clientAddr = client.localAddr as Deno.NetAddr;
    assert.deepEqual(a.remote, { host: LO, port: clientAddr.port });
    assert.equal(a.local.port, (client.remoteAddr as Deno.NetAddr).port);
    assert.deepEqual(b.local, { host: LO, port: (server.remoteAddr as Deno.NetAddr).port });
    a.close();
    b.close();
    client.close();
    server.close();
  });

  test("writes a header before relaying (a PROXY line)", async (t) => {
    const { client, server, a, b } = await connected(t);
    await t.writeAll(b, enc.encode("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
    const done = spliceVia(t, a, b);
    await writeAll(client, enc.encode("hello"));
    await client.closeWrite();
    assert.equal(dec.decode(await readAll(server)), "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nhello");
    server.close();
    await done;
    client.close();
  });

  test("connect names the address and the kernel's reason", async (t) => {
    const probe = Deno.listen({ hostname: LO, port: 0 });
    const port = (probe.addr as Deno.NetAddr).port;
    probe.close();
    await assert.rejects(
      connectVia(t, { host: LO, port }),
      (err: unknown) =>
        err instanceof Error && err.message === `Cannot connect to ${LO}:${port}: connection refused` &&
        err.name !== "LocalShortage",
    );
  });

  test("listen on a port in use throws a StartError naming it", () => {
    const held = Deno.listen({ hostname: LO, port: 0 });
    try {
      const port = (held.addr as Deno.NetAddr).port;
      assert.throws(
        () => open().listen({ host: LO, port }),
        (err: unknown) =>
          err instanceof StartError &&
          err.message === `Cannot listen on tcp ${LO}:${port}: address already in use`,
      );
    } finally {
      held.close();
    }
    return Promise.resolve();
  });
}
