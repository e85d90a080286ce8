/** The process's socket registry (lib/net/handover.ts) and the openers that use it. */
import assert from "node:assert/strict";
import { channelPair, inspectSocket } from "../../lib/net/fd_channel.ts";
import { processSockets, socketKey, SocketRegistry } from "../../lib/net/handover.ts";
import {
  AF_INET,
  F_GETFL,
  type Libc,
  O_NONBLOCK,
  sharedLibc,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  writeSockaddr,
} from "../../lib/net/libc.ts";
import { openUdp, openUdpPair } from "../../lib/net/udp.ts";
import { openFastTransport } from "../../lib/net/tcp/fast/transport.ts";
import { listenTcp } from "../../lib/net/tcp/socket.ts";

Deno.test("SocketRegistry lists what is held until forgotten, and never a port the kernel chose", () => {
  const r = new SocketRegistry();
  const forget = r.hold("udp", { host: "0.0.0.0", port: 5000 }, 7);
  r.hold("tcp", { host: "127.0.0.1", port: 0 }, 8);
  r.hold("tcp", { host: "127.0.0.1", port: 8080 }, null, "Deno keeps it");
  assert.deepEqual(r.held(), [
    { kind: "udp", addr: { host: "0.0.0.0", port: 5000 }, fd: 7, reason: null },
    { kind: "tcp", addr: { host: "127.0.0.1", port: 8080 }, fd: null, reason: "Deno keeps it" },
  ]);
  forget();
  assert.equal(r.held().length, 1);
});

Deno.test("SocketRegistry gives an inherited descriptor once, to the same kind and address, and lists the rest", () => {
  const r = new SocketRegistry();
  r.inherit([
    { kind: "udp", addr: { host: "127.0.0.1", port: 5000 }, fd: 10 },
    { kind: "tcp", addr: { host: "::1", port: 5000 }, fd: 11 },
    { kind: "tcp", addr: { host: "0.0.0.0", port: 80 }, fd: 12 },
  ]);
  assert.equal(r.take("tcp", { host: "127.0.0.1", port: 5000 }), null, "kind matters");
  assert.equal(r.take("udp", { host: "localhost", port: 5000 }), 10, "localhost is 127.0.0.1");
  assert.equal(r.take("udp", { host: "127.0.0.1", port: 5000 }), null, "given once");
  assert.equal(r.take("tcp", { host: "0:0:0:0:0:0:0:1", port: 5000 }), 11, "IPv6 spelled another way");
  assert.equal(r.take("tcp", { host: "0.0.0.0", port: 0 }), null);
  assert.deepEqual(r.unclaimed(), [{ kind: "tcp", addr: { host: "0.0.0.0", port: 80 }, fd: 12 }]);
  assert.deepEqual(r.unclaimed(), []);
  assert.equal(socketKey("udp", { host: "::", port: 1 }), "udp [::]:1");
});

Deno.test("a fast UDP socket at a fixed port is listed, adopted from an inheritance, and unlisted when closed", async () => {
  const r = processSockets();
  const probe = openUdp({ host: "127.0.0.1", port: 0 }, { impl: "fast" });
  const port = probe.local.port;
  await probe.close();
  const a = openUdp({ host: "127.0.0.1", port }, { impl: "fast" });
  const mine = r.held().find((h) => h.kind === "udp" && h.addr.port === port);
  assert.ok(mine && mine.fd !== null && mine.reason === null);
  // As a new process would get it: a copy of the descriptor, inherited, then asked for by an opener of that address.
  const [x, y] = channelPair();
  await x.send({}, [mine.fd!]);
  const copy = (await y.receive(5_000)).fds[0];
  x.close();
  y.close();
  r.inherit([{ kind: "udp", addr: inspectSocket(copy).addr!, fd: copy }]);
  const b = openUdp({ host: "127.0.0.1", port }, { impl: "fast" }); // binding would fail: a holds the port
  assert.deepEqual(b.local, a.local);
  assert.equal(r.held().filter((h) => h.addr.port === port).length, 2);
  await a.close();
  // b still receives on the socket a closed its copy of.
  const sender = openUdp({ host: "127.0.0.1", port: 0 });
  sender.send([new Uint8Array([1, 2, 3])], sender.destinations([b.local]));
  const batch = await b.receive();
  assert.equal(batch?.count, 1);
  await b.close();
  await sender.close();
  assert.equal(r.held().filter((h) => h.addr.port === port).length, 0);
});

Deno.test("openUdpPair keeps its derived port out of the registry", async () => {
  const [a, b] = openUdpPair("127.0.0.1", { impl: "fast" });
  const ports = processSockets().held().map((h) => h.addr.port);
  assert.ok(!ports.includes(a.local.port) && !ports.includes(b.local.port));
  await a.close();
  await b.close();
});

Deno.test("a fast TCP listener adopts an inherited listening socket; a Deno listener is listed as not passable", async () => {
  const transport = openFastTransport()!;
  const r = processSockets();
  const first = transport.listen({ host: "127.0.0.1", port: 0 });
  const port = first.addr.port;
  first.close();
  const a = transport.listen({ host: "127.0.0.1", port });
  const held = r.held().find((h) => h.kind === "tcp" && h.addr.port === port)!;
  const [x, y] = channelPair();
  await x.send({}, [held.fd!]);
  const copy = (await y.receive(5_000)).fds[0];
  x.close();
  y.close();
  assert.equal(inspectSocket(copy).listening, true);
  r.inherit([{ kind: "tcp", addr: inspectSocket(copy).addr!, fd: copy }]);
  const b = transport.listen({ host: "127.0.0.1", port });
  a.close();
  // A connection queued now is accepted by b, from the queue a and b shared.
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const got = await new Promise<boolean>((resolve) => {
    b.serve((c) => {
      c.close();
      resolve(true);
    }, () => Promise.resolve());
  });
  assert.ok(got);
  conn.close();
  b.close();
  const fixed = listenTcp({ host: "127.0.0.1", port });
  const listed = r.held().find((h) => h.kind === "tcp" && h.addr.port === port)!;
  assert.equal(listed.fd, null);
  assert.match(listed.reason!, /keeps its descriptor/);
  fixed.close();
  assert.equal(r.held().filter((h) => h.addr.port === port).length, 0);
});

Deno.test("a fast TCP listener makes an adopted blocking listening socket non-blocking", async () => {
  const c = sharedLibc()!.symbols as unknown as Libc;
  // A blocking listener, as a peer other than edgenode could hand over: socket(2) without SOCK_NONBLOCK.
  const slab = new Uint8Array(64);
  const view = new DataView(slab.buffer);
  const fd = c.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const len = writeSockaddr(view, 0, { host: "127.0.0.1", port: 0 }, false);
  assert.equal(c.bind(fd, slab, len), 0);
  assert.equal(c.listen(fd, 8), 0);
  assert.equal(c.fcntl(fd, F_GETFL, 0) & O_NONBLOCK, 0);
  const addr = inspectSocket(fd).addr!;
  processSockets().inherit([{ kind: "tcp", addr, fd }]);
  const transport = openFastTransport()!;
  const listener = transport.listen(addr);
  assert.notEqual(c.fcntl(fd, F_GETFL, 0) & O_NONBLOCK, 0, "O_NONBLOCK set on adoption");
  // It accepts through the reactor, and the reactor's thread never blocks in accept.
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: addr.port });
  const got = await new Promise<boolean>((resolve) => {
    listener.serve((accepted) => {
      accepted.close();
      resolve(true);
    }, () => Promise.resolve());
  });
  assert.ok(got);
  conn.close();
  listener.close();
});
