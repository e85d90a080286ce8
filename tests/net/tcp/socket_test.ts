import assert from "node:assert/strict";
import { ManualClock } from "../../../lib/core/clock.ts";
import { StartError } from "../../../lib/core/errors.ts";
import { yieldToEventLoop } from "../../../lib/core/yield.ts";
import {
  classifyTcpError,
  closeQuietly,
  connectTcp,
  listenTcp,
  TcpConnectError,
} from "../../../lib/net/tcp/socket.ts";
import { blackhole } from "../../_support/backends.ts";

const LO = "127.0.0.1";

async function settledWithin<T>(p: Promise<T>, turns: number): Promise<boolean> {
  let settled = false;
  p.then(() => (settled = true), () => (settled = true));
  for (let i = 0; i < turns && !settled; i++) await yieldToEventLoop();
  return settled;
}

Deno.test("listenTcp binds port 0 to a real port and accept returns connections connectTcp made", async () => {
  const listener = listenTcp({ host: LO, port: 0 });
  assert.equal(listener.addr.host, LO);
  assert.ok(listener.addr.port > 0);
  const [client, server] = await Promise.all([connectTcp(listener.addr), listener.accept()]);
  assert.ok(server);
  await client.write(new TextEncoder().encode("hi"));
  const buf = new Uint8Array(8);
  assert.equal(await server.read(buf), 2);
  client.close();
  server.close();
  listener.close();
});

Deno.test("listenTcp accept resolves null once the listener is closed, and closing twice is harmless", async () => {
  const listener = listenTcp({ host: LO, port: 0 });
  const pending = listener.accept();
  listener.close();
  assert.equal(await pending, null);
  assert.equal(await listener.accept(), null);
  listener.close();
  listener[Symbol.dispose]();
});

Deno.test("listenTcp reports an address in use as StartError naming the address", () => {
  using first = listenTcp({ host: LO, port: 0 });
  assert.throws(
    () => listenTcp({ host: LO, port: first.addr.port }),
    (e: unknown) => {
      assert.ok(e instanceof StartError);
      assert.equal(e.message, `Cannot listen on tcp ${LO}:${first.addr.port}: address already in use`);
      return true;
    },
  );
});

Deno.test("listenTcp with reusePort lets two listeners share a port", async () => {
  using first = listenTcp({ host: LO, port: 0 }, { reusePort: true });
  using second = listenTcp({ host: LO, port: first.addr.port }, { reusePort: true });
  assert.equal(second.addr.port, first.addr.port);
  const conn = await connectTcp(first.addr);
  // The kernel picks one of the two; take it from whichever got it.
  const [a, b] = [first.accept(), second.accept()];
  const got = await Promise.race([a, b]);
  assert.ok(got);
  got.close();
  conn.close();
  first.close();
  second.close();
  await Promise.all([a, b]);
});

Deno.test("connectTcp to a port nobody listens on fails with kind refused", async () => {
  const listener = listenTcp({ host: LO, port: 0 });
  const addr = listener.addr;
  listener.close();
  await assert.rejects(connectTcp(addr), (e: unknown) => {
    assert.ok(e instanceof TcpConnectError);
    assert.equal(e.kind, "refused");
    assert.deepEqual(e.addr, addr);
    assert.equal(e.message, `Cannot connect to ${LO}:${addr.port}: connection refused`);
    assert.ok(e.cause instanceof Deno.errors.ConnectionRefused);
    return true;
  });
});

Deno.test("connectTcp gives up after timeoutMs on the clock, and the caller's abort is kind aborted", async () => {
  // A listener that never accepts, its accept queue full.
  await using hole = await blackhole();
  const addr = { host: LO, port: hole.port };
  // The queue is full: this SYN is dropped and the connect hangs until the clock says otherwise.
  const clock = new ManualClock();
  const hanging = connectTcp(addr, { timeoutMs: 2000, clock });
  assert.equal(await settledWithin(hanging, 20), false);
  clock.advance(1999);
  assert.equal(await settledWithin(hanging, 20), false);
  clock.advance(1);
  await assert.rejects(hanging, (e: unknown) => e instanceof TcpConnectError && e.kind === "timeout");
  assert.equal(clock.pending, 0);

  const controller = new AbortController();
  const aborted = connectTcp(addr, { timeoutMs: 2000, clock, signal: controller.signal });
  controller.abort(new Error("server went down"));
  await assert.rejects(aborted, (e: unknown) => {
    assert.ok(e instanceof TcpConnectError);
    assert.equal(e.kind, "aborted");
    assert.match(e.message, /: aborted$/);
    return true;
  });
  assert.equal(clock.pending, 0);
  await assert.rejects(
    connectTcp(addr, { signal: AbortSignal.abort() }),
    (e: unknown) => e instanceof TcpConnectError && e.kind === "aborted",
  );
});

Deno.test("connectTcp leaves an established connection alone when its timeout would have passed", async () => {
  using listener = listenTcp({ host: LO, port: 0 });
  const clock = new ManualClock();
  const [client, server] = await Promise.all([
    connectTcp(listener.addr, { timeoutMs: 100, clock }),
    listener.accept(),
  ]);
  assert.equal(clock.pending, 0);
  clock.advance(1000);
  assert.equal(await client.write(Uint8Array.of(1)), 1);
  assert.equal(await server!.read(new Uint8Array(4)), 1);
  client.close();
  server!.close();
});

Deno.test("classifyTcpError sorts Deno's socket errors into kinds", () => {
  const e = Deno.errors;
  assert.equal(classifyTcpError(new e.ConnectionRefused("x")), "refused");
  assert.equal(classifyTcpError(new e.ConnectionReset("x")), "reset");
  assert.equal(classifyTcpError(new e.BrokenPipe("x")), "reset");
  assert.equal(classifyTcpError(new e.ConnectionAborted("x")), "reset");
  assert.equal(classifyTcpError(new e.TimedOut("x")), "timeout");
  assert.equal(classifyTcpError(new e.NetworkUnreachable("x")), "unreachable");
  assert.equal(classifyTcpError(Object.assign(new Error("x"), { code: "EHOSTUNREACH" })), "unreachable");
  assert.equal(classifyTcpError(new e.BadResource("x")), "closed");
  assert.equal(classifyTcpError(new e.Interrupted("x")), "closed");
  assert.equal(classifyTcpError(new Error("x")), "other");
  assert.equal(classifyTcpError("not an error"), "other");
});

Deno.test("closeQuietly swallows closing a closed connection", async () => {
  using listener = listenTcp({ host: LO, port: 0 });
  const [client, server] = await Promise.all([connectTcp(listener.addr), listener.accept()]);
  client.close();
  closeQuietly(client);
  closeQuietly(server!);
  closeQuietly(server!);
});

Deno.test("classifyTcpError takes running out of descriptors as local, and an address this host cannot use as a failure", () => {
  const withCode = (code: string) => Object.assign(new Error(code), { code });
  assert.equal(classifyTcpError(withCode("EMFILE")), "local");
  assert.equal(classifyTcpError(withCode("ENOBUFS")), "local");
  // An IPv6 server on a host with IPv6 off answers every check so: the server must go down, not stay up unchecked.
  assert.notEqual(classifyTcpError(withCode("EADDRNOTAVAIL")), "local");
});
