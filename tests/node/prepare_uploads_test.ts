/**
 * A session table's uploaded modules in the two phases of a start across nodes, and for a coordinator's check: what
 * the node loads, when it refuses, and how many sandbox processes it holds. The modules are "loaded" by an injected
 * inspection (UploadOptions.inspect) that answers each program's declared ports at once or when the test lets it,
 * so no sandbox child runs; tests/cluster/uploads_test.ts runs real ones.
 */
import { testNode } from "../_support/node.ts";
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { SessionConflict, SessionTable, type UploadOptions } from "../../lib/node/sessions.ts";
import { type ProgramInfo, UploadError } from "../../lib/sandbox/mod.ts";

const LO = "127.0.0.1";
const PASS: ProgramInfo = { ports: { inputs: ["in"], outputs: ["out"] }, params: {}, needs: {} };
const MODULES = { "pass.ts": "export {};\n" };

function freePort(): number {
  const s = Deno.listenDatagram({ transport: "udp", hostname: LO, port: 0 });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}

/** F (uploaded) feeds C (built in); `nodeOf` places them. */
const program = (name: string) =>
  [
    `Project ${name};`,
    `{ AP name="F" ref=upload.pass; inputs = in(DIPRONN_INPUT(${freePort()})); outputs = out(C.in); }`,
    `{ AP name="C" ref=localservice.counter; inputs = in; }`,
  ].join("\n");

const onBrno = { self: "brno", nodeOf: { F: "brno", C: "brno" } };

async function table(o: { maxProcesses?: number; inspect?: UploadOptions["inspect"] } = {}) {
  const clock = new ManualClock(1_000_000);
  const services = testNode(clock, {
    dataDir: await Deno.makeTempDir({ prefix: "edgenode_prepare_uploads_" }),
  });
  const t = new SessionTable(services, coreElements(), {
    maxSessions: 8,
    reservationMs: 5000,
    uploads: {
      limits: { maxModules: 8, maxBytes: 1 << 20 },
      maxProcesses: o.maxProcesses ?? 16,
      storageBytes: 0,
      inspect: o.inspect ?? ((opts) => Promise.resolve((opts.programs ?? []).map(() => PASS))),
    },
  });
  return {
    clock,
    t,
    async [Symbol.asyncDispose]() {
      await t.stopAll();
      await Deno.remove(services.dataDir, { recursive: true });
    },
  };
}

Deno.test("SessionTable.uploadedKinds loads one program at a time however many ask at once", async () => {
  let loading = 0;
  let most = 0;
  const gates: (() => void)[] = [];
  await using h = await table({
    maxProcesses: 1,
    inspect: async (opts) => {
      most = Math.max(most, ++loading);
      await new Promise<void>((resolve) => gates.push(resolve));
      loading--;
      return (opts.programs ?? []).map(() => PASS);
    },
  });
  const source = { file: "s.dipronn", format: "dipronn" as const, modules: MODULES };
  const asked = Array.from({ length: 6 }, () => h.t.uploadedKinds(program("up"), source));
  for (let done = 0; done < asked.length; done++) {
    // Each load starts only once the one before it has finished: one sandbox child at a time.
    for (let i = 0; i < 1000 && gates.length === 0; i++) await new Promise((r) => setTimeout(r, 0));
    assert.equal(gates.length, 1);
    assert.equal(loading, 1);
    gates.shift()!();
  }
  for (const kinds of await Promise.all(asked)) assert.deepEqual(Object.keys(kinds), ["upload.pass"]);
  assert.equal(most, 1);
});

Deno.test("SessionTable.prepare holds a part's sandbox processes against max_processes until abort or expiry", async () => {
  await using h = await table({ maxProcesses: 1 });
  const part = (name: string) =>
    h.t.prepare(name, program(name), { file: `${name}.dipronn`, placement: onBrno, modules: MODULES });
  await part("a");
  // Prepared, not started: its sandbox process is reserved all the same.
  const refused = await part("b").catch((e) => e);
  assert.ok(refused instanceof SessionConflict, String(refused));
  assert.match(
    refused.message,
    /needs 1 sandbox processes and the node runs 1 of at most 1 \(node\.uploads\.max_processes\)/,
  );
  assert.equal(await h.t.abort("a"), true);
  await part("b");
  await assert.rejects(() => part("c"), /node\.uploads\.max_processes/);
  // b's reservation runs out without a commit: its process is free again.
  h.clock.advance(5000);
  assert.deepEqual(h.t.prepared(), []);
  await part("c");
  assert.deepEqual(h.t.prepared().map((p) => p.session), ["c"]);
});

Deno.test("SessionTable.prepare refuses an uploaded AP it runs whose module did not come, whatever kind was declared", async () => {
  await using h = await table();
  const declared = { "upload.pass": { entry: "pass.ts", info: PASS } };
  const error = await h.t.prepare("up", program("up"), {
    file: "up.dipronn",
    placement: onBrno,
    modules: { "other.ts": "export {};\n" },
    remoteKinds: declared,
  }).catch((e) => e);
  assert.ok(error instanceof UploadError, String(error));
  assert.match(
    error.message,
    /this node runs uploaded AP F \(ref=upload\.pass\) and its module did not come/,
  );
  assert.deepEqual(h.t.prepared(), []);
  // The declared kind serves for the same AP on another node: this node checks the wiring to it and runs C only.
  const plan = await h.t.prepare("up", program("up"), {
    file: "up.dipronn",
    placement: { self: "brno", nodeOf: { F: "prague", C: "brno" } },
    remoteKinds: declared,
  });
  assert.deepEqual(plan.aps.map((a) => a.name), ["C"]);
});
