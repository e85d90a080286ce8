/** The part host on a real session table: attempts, late prepares after an abort, an abort during a commit. */
import assert from "node:assert/strict";
import { testNode } from "../_support/node.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { SessionTable } from "../../lib/node/sessions.ts";
import { parsePartRequest, PartHost, PartRefused, type PartRequest } from "../../lib/cluster/parts.ts";

function freePort(): number {
  const s = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}

const request = (attempt: string): PartRequest => ({
  text: `Project p;
{ AP name="F" ref=localservice.forwarder; inputs = i(DIPRONN_INPUT(${freePort()})); outputs = o(C.in); }
{ AP name="C" ref=localservice.counter; inputs = in; }`,
  file: "p.dipronn",
  format: "dipronn",
  nodeOf: { F: "brno", C: "brno" },
  coordinator: "prague",
  attempt,
});

function host() {
  const clock = new ManualClock(0);
  const table = new SessionTable(testNode(clock), coreElements(), { maxSessions: 4 });
  const parts = new PartHost("brno", table, new Logger({ level: "error", clock, sink: () => {} }));
  return { clock, table, parts, [Symbol.asyncDispose]: () => table.stopAll() };
}

Deno.test("PartHost refuses a prepare that arrives after its attempt was aborted", async () => {
  await using h = host();
  assert.equal(await h.parts.abort("p", "aaaaaaaa01"), "none");
  const error = await h.parts.prepare("p", request("aaaaaaaa01")).catch((e) => e);
  assert.ok(error instanceof PartRefused);
  assert.match(error.reason, /was aborted already/);
  assert.deepEqual(h.table.prepared(), []);
});

Deno.test("PartHost commits only the attempt it prepared, and abort releases or stops", async () => {
  await using h = host();
  await h.parts.prepare("p", request("aaaaaaaa02"));
  await assert.rejects(() => h.parts.commit("p", "bbbbbbbb02"), PartRefused);
  await h.parts.commit("p", "aaaaaaaa02");
  assert.deepEqual(h.table.list().map((s) => s.plan.name), ["p"]);
  assert.deepEqual(h.parts.coordinators(), new Set(["prague"]));
  assert.equal(await h.parts.abort("p", "aaaaaaaa02"), "stopped");
  assert.deepEqual(h.table.list(), []);
});

Deno.test("PartHost stops what a commit started when its abort came meanwhile, and answers stopped after it", async () => {
  await using h = host();
  await h.parts.prepare("p", request("aaaaaaaa03"));
  const commit = h.parts.commit("p", "aaaaaaaa03").catch((e) => e);
  const undone = await h.parts.abort("p", "aaaaaaaa03");
  assert.equal(undone, "stopped");
  // The abort answered once the start it came during was stopped again: nothing of the attempt is left.
  assert.deepEqual(h.table.list(), []);
  assert.deepEqual(h.table.prepared(), []);
  assert.ok((await commit) instanceof PartRefused);
});

Deno.test("PartHost keeps the next attempt's reservation when an attempt aborted during its commit stops", async () => {
  await using h = host();
  await h.parts.prepare("p", request("aaaaaaaa07"));
  const commitA = h.parts.commit("p", "aaaaaaaa07").catch((e) => e);
  const abortA = h.parts.abort("p", "aaaaaaaa07");
  // A's start returns, finds its part aborted and is being stopped (gone from the table) ...
  let started = false;
  for (let i = 0; i < 100_000; i++) {
    if (h.table.get("p")) started = true;
    else if (started) break;
    await Promise.resolve();
  }
  assert.ok(started, "attempt A started");
  // ... when the coordinator's next attempt prepares.
  const prepareB = h.parts.prepare("p", request("bbbbbbbb07"));
  assert.ok((await commitA) instanceof PartRefused);
  assert.equal(await abortA, "stopped");
  await prepareB;
  assert.deepEqual(h.table.prepared().map((p) => p.session), ["p"]);
  await h.parts.commit("p", "bbbbbbbb07");
  assert.deepEqual(h.table.list().map((s) => s.plan.name), ["p"]);
});

Deno.test("PartHost keeps a part whose commit is under way when its status is read meanwhile", async () => {
  await using h = host();
  await h.parts.prepare("p", request("aaaaaaaa06"));
  const commit = h.parts.commit("p", "aaaaaaaa06");
  // The table gave the reservation up for the start; the start has not returned yet (a heartbeat reads this).
  for (let i = 0; i < 1000 && h.table.prepared().length; i++) await Promise.resolve();
  assert.deepEqual(h.table.prepared(), []);
  assert.equal(h.parts.has("p"), true);
  assert.equal((h.parts.status().p as { state: string }).state, "committing");
  // A repeated commit (a retry) joins the one under way.
  await Promise.all([commit, h.parts.commit("p", "aaaaaaaa06")]);
  assert.deepEqual(h.table.list().map((s) => s.plan.name), ["p"]);
  assert.equal((h.parts.status().p as { state: string }).state, "running");
});

Deno.test("PartHost forgets a part whose reservation expired without anyone reading its status", async () => {
  await using h = host();
  await h.parts.prepare("p", request("aaaaaaaa04"));
  assert.equal(h.parts.has("p"), true);
  h.clock.advance(30_000);
  assert.deepEqual(h.table.prepared(), []);
  assert.equal(h.parts.has("p"), false);
  assert.deepEqual(h.parts.coordinators(), new Set());
  assert.deepEqual(h.parts.sessionsOf("prague"), []);
});

Deno.test("PartHost.coordinatorLost stops the parts held for that coordinator, saying why", async () => {
  await using h = host();
  await h.parts.prepare("p", request("aaaaaaaa05"));
  await h.parts.commit("p", "aaaaaaaa05");
  assert.deepEqual(await h.parts.coordinatorLost("pilsen", "x"), []);
  assert.deepEqual(await h.parts.coordinatorLost("prague", "coordinator prague lost"), ["p"]);
  assert.deepEqual(h.table.list(), []);
  assert.deepEqual(h.parts.orphaned(), [{
    session: "p",
    attempt: "aaaaaaaa05",
    coordinator: "prague",
    undone: "stopped",
    reason: "coordinator prague lost",
  }]);
});

Deno.test("parsePartRequest refuses what is not a part request", () => {
  assert.equal(typeof parsePartRequest(request("aaaaaaaa04")), "object");
  assert.match(parsePartRequest(null) as string, /not a JSON object/);
  assert.match(parsePartRequest({ ...request("aaaaaaaa04"), attempt: "x" }) as string, /attempt/);
  assert.match(parsePartRequest({ ...request("aaaaaaaa04"), nodeOf: { F: "bad name" } }) as string, /nodeOf/);
  assert.match(parsePartRequest({ ...request("aaaaaaaa04"), format: "xml" }) as string, /format/);
  const kind = {
    entry: "pass.ts",
    info: { needs: {}, ports: { inputs: ["in"], outputs: ["out"] }, params: {} },
  };
  const upload = {
    ...request("aaaaaaaa04"),
    modules: { "pass.ts": "export {};" },
    kinds: { "upload.pass": kind },
  };
  assert.deepEqual((parsePartRequest(upload) as PartRequest).kinds, upload.kinds);
  assert.match(parsePartRequest({ ...upload, modules: { "pass.ts": 7 } }) as string, /modules must map/);
  assert.match(parsePartRequest({ ...upload, modules: ["pass.ts"] }) as string, /modules must be a mapping/);
  const noInputs = { ...kind, info: { ...kind.info, ports: { inputs: [], outputs: [] } } };
  assert.match(
    parsePartRequest({ ...upload, kinds: { "upload.pass": noInputs } }) as string,
    /^kinds\.upload\.pass: ports\.inputs must name at least one input/,
  );
  // A declared kind stands in only for an uploaded AP: never for one of the node's own elements.
  assert.match(
    parsePartRequest({ ...upload, kinds: { "localservice.counter": kind } }) as string,
    /^kinds\.localservice\.counter: only uploaded kinds \(upload\.NAME\)/,
  );
});
