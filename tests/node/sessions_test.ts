/**
 * The session table with the node's budgets: what running sessions hold counts against a new one, and
 * node.allow_sources drops datagrams from other sources at every DIPRONN_INPUT, counted in the session's status.
 */
import { testNode } from "../_support/node.ts";
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { ErrorList } from "../../lib/core/errors.ts";
import { DEFAULT_BUDGETS } from "../../lib/graph/budgets.ts";
import type { NodeServices } from "../../lib/graph/element.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { SessionTable } from "../../lib/node/sessions.ts";
import { openUdp } from "../../lib/net/udp.ts";
import { until } from "../_support/until.ts";

const LO = "127.0.0.1";

async function node(): Promise<NodeServices> {
  const clock = new ManualClock(1_000_000);
  return testNode(clock, { dataDir: await Deno.makeTempDir({ prefix: "edgenode_sessions_" }) });
}

function freePort(): number {
  const s = Deno.listenDatagram({ transport: "udp", hostname: LO, port: 0 });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}

const counting = (name: string, ...ports: number[]) =>
  [
    `Project ${name};`,
    `{ AP name="F" ref=localservice.forwarder; inputs = ${
      ports.map((p, k) => `i${k}(DIPRONN_INPUT(${p}))`).join(", ")
    }; outputs = o(C.in); }`,
    `{ AP name="C" ref=localservice.counter; inputs = in; }`,
  ].join("\n");

Deno.test("SessionTable counts the sockets running sessions hold against the node's budget", async () => {
  const services = await node();
  const table = new SessionTable(services, coreElements(), {
    maxSessions: 4,
    budgets: { ...DEFAULT_BUDGETS, maxSockets: 2 },
  });
  try {
    await table.add(counting("a", freePort()), { file: "a.dipronn" });
    const refused = await table.add(counting("b", freePort(), freePort()), { file: "b.dipronn" }).then(
      () => assert.fail("expected a refusal"),
      (error) => error,
    );
    assert.ok(refused instanceof ErrorList);
    assert.match(
      refused.format(),
      /^b\.dipronn:2:\d+: Budget sockets per node: the session needs 2 UDP sockets and running sessions hold 1, 1 over the node's 2 \(node\.max_sockets\)$/,
    );
    assert.deepEqual(table.list().map((s) => s.plan.name), ["a"]);
    assert.deepEqual(table.budgets().sockets, { used: 1, max: 2 });
    await table.remove("a");
    await table.add(counting("b", freePort(), freePort()), { file: "b.dipronn" });
  } finally {
    await table.stopAll();
    await Deno.remove(services.dataDir, { recursive: true });
  }
});

Deno.test("SessionTable drops datagrams from sources node.allow_sources leaves out, counted per socket", async () => {
  const services = await node();
  const tx = openUdp({ host: LO, port: 0 });
  for (const [allow, name] of [[["192.0.2.0/24"], "shut"], [["127.0.0.0/8"], "open"]] as const) {
    const table = new SessionTable(services, coreElements(), { maxSessions: 1, allowSources: allow });
    try {
      const port = freePort();
      const session = await table.add(counting(name, port), { file: `${name}.dipronn` });
      const data = new Uint8Array(12);
      tx.send(
        { count: 1, data: () => data, length: () => 12, from: () => tx.local, truncated: () => false },
        tx
          .destinations([{ host: LO, port }]),
      );
      const figures = () => {
        const s = session.status() as {
          sockets: { dropped_source: number }[];
          aps: { name: string; counted?: { packets: number } }[];
        };
        return { dropped: s.sockets[0].dropped_source, counted: s.aps[1].counted!.packets };
      };
      await until(`the datagram at session ${name}`, () => figures().dropped + figures().counted === 1);
      // Both are counted in the one receive that took the datagram: no later delivery can change them.
      assert.deepEqual(figures(), name === "shut" ? { dropped: 1, counted: 0 } : { dropped: 0, counted: 1 });
    } finally {
      await table.stopAll();
    }
  }
  await tx.close();
  await Deno.remove(services.dataDir, { recursive: true });
});

Deno.test("SessionTable lets an input's own allow-list narrow the node's", async () => {
  const services = await node();
  const tx = openUdp({ host: LO, port: 0 });
  const table = new SessionTable(services, coreElements(), { maxSessions: 1 });
  try {
    const port = freePort();
    const text = counting("own", port).replace(
      `DIPRONN_INPUT(${port})`,
      `DIPRONN_INPUT(${port}, "192.0.2.0/24")`,
    );
    const session = await table.add(text, { file: "own.dipronn" });
    const data = new Uint8Array(12);
    tx.send(
      { count: 1, data: () => data, length: () => 12, from: () => tx.local, truncated: () => false },
      tx.destinations([{ host: LO, port }]),
    );
    const dropped = () =>
      (session.status() as { sockets: { dropped_source: number }[] }).sockets[0].dropped_source;
    await until("the datagram from loopback to be dropped", () => dropped() === 1);
    const counted =
      (session.status() as { aps: { counted?: { packets: number } }[] }).aps[1].counted!.packets;
    assert.equal(counted, 0);
  } finally {
    await table.stopAll();
    await tx.close();
    await Deno.remove(services.dataDir, { recursive: true });
  }
});

Deno.test("SessionTable on every address refuses a program whose input a running session already sends to, in either order", async () => {
  const services = { ...(await node()), host: "0.0.0.0" };
  const table = new SessionTable(services, coreElements(), { maxSessions: 4 });
  const port = freePort();
  try {
    // A sends to port `port` of some address: with the node bound on every address that may be the node itself.
    await table.add(
      [
        "Project a;",
        `{ AP name="F" ref=localservice.forwarder; inputs = i(DIPRONN_INPUT(${freePort()})); outputs = o(DIPRONN_OUTPUT("192.0.2.7:${port}")); }`,
      ].join("\n"),
      { file: "a.dipronn" },
    );
    const refused = await table.add(counting("b", port), { file: "b.dipronn" }).then(
      () => assert.fail("expected a refusal"),
      (error) => error,
    );
    assert.ok(refused instanceof ErrorList);
    assert.match(
      refused.format(),
      new RegExp(
        `^b\\.dipronn:2:\\d+: DIPRONN_INPUT\\(${port}\\) of F would receive what session a sends to port ${port}, which may be this node's; the node refuses that unless node\\.allow_loopback_output is true$`,
      ),
    );
    assert.deepEqual(table.list().map((s) => s.plan.name), ["a"]);
  } finally {
    await table.stopAll();
    await Deno.remove(services.dataDir, { recursive: true });
  }
});
