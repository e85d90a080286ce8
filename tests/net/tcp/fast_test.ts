/**
 * The fast TCP transport (lib/net/tcp/fast/) with real loopback sockets: the shared contract, then what only the fast
 * path has (readiness kept for a splice, Nagle off by inheritance, the event loop's epoll set joined).
 */
import assert from "node:assert/strict";
import type { FastConn } from "../../../lib/net/tcp/fast/conn.ts";
import { Reactor } from "../../../lib/net/tcp/fast/reactor.ts";
import { fastTransport } from "../../../lib/net/tcp/fast/transport.ts";
import type { Transport } from "../../../lib/net/tcp/transport.ts";
import { until } from "../../_support/until.ts";
import { connected, readAll, spliceVia, tcpContract, writeAll } from "./contract.ts";

function reactor(): Reactor {
  const r = Reactor.get();
  assert.ok(r, "the fast TCP path needs Linux and --allow-ffi");
  return r;
}

const open = (): Transport => fastTransport(reactor());

tcpContract("fast", open);

Deno.test("fast splice keeps a server's greeting and FIN reported before it took the connection", async () => {
  const t = open();
  const { client, server, a, b } = await connected(t);
  await writeAll(server, new TextEncoder().encode("220 ready"));
  await server.closeWrite();
  // The reactor reports each only once (edge-triggered): the connection keeps what it saw for the splice.
  await until("the FIN to be reported before the splice", () => ((b as FastConn).events & 0x2000) !== 0);
  const done = spliceVia(t, a, b);
  assert.equal(new TextDecoder().decode(await readAll(client)), "220 ready");
  await client.closeWrite();
  assert.equal((await done).reason, "eof");
  client.close();
  server.close();
});

Deno.test("fast splice ends aborted when the service closes one of its connections, and closes the other", async () => {
  const t = open();
  const { client, server, a, b } = await connected(t);
  const done = spliceVia(t, a, b);
  a.close();
  assert.equal((await done).reason, "aborted");
  assert.equal((b as FastConn).closed, true);
  assert.equal((await readAll(server)).length, 0, "the server sees its connection end");
  client.close();
  server.close();
});

Deno.test("fast splice given a connection closed already ends at once and closes the other (the service stopping mid-connect)", async () => {
  const t = open();
  const { client, server, a, b } = await connected(t);
  a.close();
  const result = await spliceVia(t, a, b);
  assert.equal(result.reason, "aborted");
  assert.equal((b as FastConn).closed, true, "the server's connection is closed too");
  assert.equal((await readAll(server)).length, 0, "and the server sees it end");
  client.close();
  server.close();
});

Deno.test("fast listener and connect turn Nagle off on both sides of a splice (small replies leave at once)", async () => {
  const t = open();
  const { client, server, a, b } = await connected(t);
  const r = reactor();
  assert.equal(r.noDelay((a as FastConn).fd), true, "accepted: inherited from the listener");
  assert.equal(r.noDelay((b as FastConn).fd), true, "connected");
  a.close();
  b.close();
  client.close();
  server.close();
});

Deno.test("fast reactor waits on the event loop's own thread (it found the event loop's epoll set)", async () => {
  const r = reactor();
  await r.ready;
  assert.equal(r.waitsOnEventLoopThread, true);
});

Deno.test("a fresh reactor finds the event loop's epoll set even while its own set watches new sockets", async () => {
  // Its own process, so the reactor is made at the start, as in edgenode; the permissions are edgenode's.
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      "--allow-net",
      "--allow-read",
      "--allow-run",
      "--allow-ffi",
      "--unstable-net",
      new URL("../../fixtures/net/engine_busy_start.ts", import.meta.url).pathname,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const result = JSON.parse(text);
  assert.ok(result.sockets > 0, "sockets were opened while the reactor looked");
  assert.equal(result.waitsOnEventLoopThread, true);
});
