/**
 * The two phases of a start across nodes on one node's session table: prepare checks and reserves (ports, budgets,
 * the name) without starting; commit starts; abort releases; a reservation without a commit runs out on the clock.
 */
import { testNode } from "../_support/node.ts";
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { ErrorList } from "../../lib/core/errors.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { SessionConflict, SessionTable } from "../../lib/node/sessions.ts";

const LO = "127.0.0.1";

function freePort(): number {
  const s = Deno.listenDatagram({ transport: "udp", hostname: LO, port: 0 });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}

const counting = (name: string, port: number) =>
  [
    `Project ${name};`,
    `{ AP name="F" ref=localservice.forwarder; inputs = i(DIPRONN_INPUT(${port})); outputs = o(C.in); }`,
    `{ AP name="C" ref=localservice.counter; inputs = in; }`,
  ].join("\n");

/** True when a UDP port on loopback can be bound now (nothing holds it). */
function bindable(port: number): boolean {
  try {
    Deno.listenDatagram({ transport: "udp", hostname: LO, port }).close();
    return true;
  } catch {
    return false;
  }
}

async function table(reservationMs = 5000) {
  const clock = new ManualClock(1_000_000);
  const services = testNode(clock, { dataDir: await Deno.makeTempDir({ prefix: "edgenode_prepare_" }) });
  const t = new SessionTable(services, coreElements(), { maxSessions: 4, reservationMs });
  return {
    clock,
    t,
    async [Symbol.asyncDispose]() {
      await t.stopAll();
      await Deno.remove(services.dataDir, { recursive: true });
    },
  };
}

Deno.test("SessionTable.prepare reserves without starting, and commit starts", async () => {
  await using s = await table();
  const port = freePort();
  const plan = await s.t.prepare("a", counting("a", port), { file: "a.dipronn" });
  assert.deepEqual(plan.ports, [port]);
  assert.deepEqual(s.t.list(), []);
  assert.equal(bindable(port), true, "a prepared part binds nothing");
  assert.deepEqual(s.t.prepared().map((p) => p.session), ["a"]);
  assert.deepEqual(s.t.budgets().sockets.used, 1);
  // The reservation holds the port against another program.
  const clash = await s.t.add(counting("b", port), { file: "b.dipronn" }).catch((e) => e);
  assert.ok(clash instanceof ErrorList);
  assert.match(clash.format(), /session a \(prepared\)/);
  const session = await s.t.commit("a");
  assert.equal(session.plan.name, "a");
  assert.deepEqual(s.t.prepared(), []);
  assert.equal(bindable(port), false, "a committed part holds its port");
});

Deno.test("SessionTable.abort releases a prepared part", async () => {
  await using s = await table();
  const port = freePort();
  await s.t.prepare("a", counting("a", port), { file: "a.dipronn" });
  assert.equal(await s.t.abort("a"), true);
  assert.equal(await s.t.abort("a"), false);
  await assert.rejects(() => s.t.commit("a"), SessionConflict);
  await s.t.add(counting("b", port), { file: "b.dipronn" });
});

Deno.test("SessionTable releases a reservation that is not committed in time", async () => {
  await using s = await table(5000);
  const port = freePort();
  await s.t.prepare("a", counting("a", port), { file: "a.dipronn" });
  s.clock.advance(4999);
  assert.equal(s.t.prepared().length, 1);
  s.clock.advance(1);
  assert.deepEqual(s.t.prepared(), []);
  await assert.rejects(() => s.t.commit("a"), /No prepared part of session a/);
  await s.t.add(counting("b", port), { file: "b.dipronn" });
});

Deno.test("SessionTable.prepare refuses a name prepared or running already, and a program naming another session", async () => {
  await using s = await table();
  await s.t.prepare("a", counting("a", freePort()), { file: "a.dipronn" });
  await assert.rejects(
    () => s.t.prepare("a", counting("a", freePort()), { file: "a.dipronn" }),
    SessionConflict,
  );
  await assert.rejects(() => s.t.add(counting("a", freePort()), { file: "a.dipronn" }), SessionConflict);
  await assert.rejects(
    () => s.t.prepare("x", counting("y", freePort()), { file: "y.dipronn" }),
    /names session y, not x/,
  );
});

Deno.test("SessionTable.prepare with a placement plans only this node's APs", async () => {
  await using s = await table();
  const port = freePort();
  const plan = await s.t.prepare("a", counting("a", port), {
    file: "a.dipronn",
    placement: { self: "brno", nodeOf: { F: "brno", C: "prague" } },
  });
  assert.deepEqual(plan.aps.map((a) => a.name), ["F"]);
});
