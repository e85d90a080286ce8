/**
 * The coordinator against in-process fake members: a start is all or nothing when a node refuses, times out, or
 * crashes between prepare and commit (nothing is left prepared or running anywhere); stop reaches every part; a
 * lost node stops the session or restarts it elsewhere, per on_node_loss. Time is a ManualClock.
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { ErrorList } from "../../lib/core/errors.ts";
import { Logger } from "../../lib/core/logger.ts";
import { Coordinator, SessionBusy, UnknownNear } from "../../lib/cluster/coordinator.ts";
import type { Member, UndoResult } from "../../lib/cluster/members.ts";
import { PartRefused, type PartRequest } from "../../lib/cluster/parts.ts";
import { PeerError } from "../../lib/cluster/peers.ts";
import type { NodeUsage } from "../../lib/cluster/usage.ts";
import type { SessionSpec } from "../../lib/dipronn/session.ts";
import { until } from "../_support/until.ts";

type Behaviour = "ok" | "refuse" | "hang" | "crash";

/** A member that keeps its parts in sets and behaves per step as told. */
class FakeMember implements Member {
  readonly prepared = new Map<string, string>();
  readonly running = new Map<string, string>();
  readonly calls: string[] = [];
  on: { prepare: Behaviour; commit: Behaviour; abort: Behaviour; usage: Behaviour } = {
    prepare: "ok",
    commit: "ok",
    abort: "ok",
    usage: "ok",
  };

  constructor(readonly name: string) {}

  #act(step: keyof FakeMember["on"]): Promise<void> {
    this.calls.push(step);
    switch (this.on[step]) {
      case "ok":
        return Promise.resolve();
      case "refuse":
        return Promise.reject(new PartRefused(this.name, `port 5004 is held by session other`));
      case "hang":
        return new Promise(() => {});
      case "crash":
        return Promise.reject(new PeerError(this.name, "unreachable", "connection refused"));
    }
  }

  async usage(): Promise<NodeUsage> {
    await this.#act("usage");
    return {
      name: this.name,
      cpu: 0.1,
      memory: 0.2,
      pps_in: 0,
      pps_out: 0,
      bps_in: 0,
      bps_out: 0,
      sessions: this.running.size,
      aps: 0,
      free_ports: 100,
    };
  }

  /** When set, a prepare answers only once it settles (a slow network). */
  gate: Promise<void> | null = null;

  async prepare(session: string, req: PartRequest): Promise<void> {
    await this.#act("prepare");
    if (this.gate) await this.gate;
    this.prepared.set(session, req.attempt);
  }

  async commit(session: string, attempt: string): Promise<void> {
    await this.#act("commit");
    if (this.prepared.get(session) !== attempt) throw new PartRefused(this.name, "nothing prepared");
    this.prepared.delete(session);
    this.running.set(session, attempt);
  }

  async abort(session: string, attempt: string | undefined): Promise<UndoResult> {
    await this.#act("abort");
    if (this.prepared.has(session) && (attempt === undefined || this.prepared.get(session) === attempt)) {
      this.prepared.delete(session);
      return "released";
    }
    if (this.running.has(session) && (attempt === undefined || this.running.get(session) === attempt)) {
      this.running.delete(session);
      return "stopped";
    }
    return "none";
  }

  heartbeat(): Promise<void> {
    return Promise.resolve();
  }

  get holds(): number {
    return this.prepared.size + this.running.size;
  }
}

const PROGRAM = `Project demo;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(5004)); outputs = out(Mid.in); }
{ AP name="Mid" ref=localservice.forwarder; inputs = in; outputs = out(Last.in); }
{ AP name="Last" ref=localservice.counter; inputs = in; }
`;

function setup(nodeOf: Record<string, string> = { In: "brno", Mid: "prague", Last: "liberec" }) {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const members = ["brno", "prague", "liberec", "pilsen"].map((n) => new FakeMember(n));
  const byName = Object.fromEntries(members.map((m) => [m.name, m]));
  const placed: { nodes: string[]; near?: readonly string[] }[] = [];
  const coordinator = new Coordinator({
    self: "brno",
    members,
    clock,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    stepTimeoutMs: 2000,
    place: (spec: SessionSpec, input) => {
      placed.push({ nodes: input.nodes.map((n) => n.name), near: input.near });
      // Placement puts an AP whose node is gone on the first candidate not in use (what a restart needs).
      const alive = new Set(input.nodes.map((n) => n.name));
      const spare = input.nodes.map((n) => n.name).find((n) => !Object.values(nodeOf).includes(n))!;
      return {
        session: spec.name,
        nodeOf: Object.fromEntries(
          spec.aps.map((a) => [a.name, alive.has(nodeOf[a.name]) ? nodeOf[a.name] : spare]),
        ),
        why: {},
      };
    },
  });
  const nothingAnywhere = () =>
    assert.deepEqual(members.map((m) => [m.name, m.holds]), members.map((m) => [m.name, 0]));
  return { clock, members, byName, coordinator, placed, nothingAnywhere };
}

Deno.test("Coordinator starts a session on every node holding a part, after all prepared", async () => {
  const { byName, coordinator } = setup();
  const outcome = await coordinator.start(PROGRAM, { file: "demo.dipronn", format: "dipronn" });
  assert.equal(outcome.state, "running");
  assert.deepEqual(
    Object.fromEntries(Object.entries(outcome.nodes).map(([n, o]) => [n, [o.state, o.aps]])),
    { brno: ["committed", ["In"]], prague: ["committed", ["Mid"]], liberec: ["committed", ["Last"]] },
  );
  for (const n of ["brno", "prague", "liberec"]) {
    assert.deepEqual(byName[n].calls, ["usage", "prepare", "commit"]);
    assert.equal(byName[n].running.size, 1);
  }
  assert.deepEqual(byName.pilsen.calls, ["usage"], "a node without a part is only asked for its usage");
});

Deno.test("Coordinator leaves nothing anywhere when one node refuses its part", async () => {
  const { byName, coordinator, nothingAnywhere } = setup();
  byName.liberec.on.prepare = "refuse";
  const outcome = await coordinator.start(PROGRAM, { file: "demo.dipronn", format: "dipronn" });
  assert.equal(outcome.state, "failed");
  assert.match(outcome.reason!, /^node liberec refused: port 5004 is held by session other$/);
  assert.equal(outcome.nodes.liberec.state, "refused");
  assert.equal(outcome.nodes.brno.undone, "released");
  assert.equal(outcome.nodes.prague.undone, "released");
  assert.deepEqual(byName.brno.calls, ["usage", "prepare", "abort"], "no commit after a refusal");
  nothingAnywhere();
});

Deno.test("Coordinator leaves nothing anywhere when one node does not answer its prepare in time", async () => {
  const { clock, byName, coordinator, nothingAnywhere } = setup();
  byName.prague.on.prepare = "hang";
  const start = coordinator.start(PROGRAM, { file: "demo.dipronn", format: "dipronn" });
  await until(
    "every prepare sent",
    () => byName.prague.calls.includes("prepare") && byName.brno.prepared.size === 1,
  );
  clock.advance(1999);
  assert.equal(byName.brno.calls.includes("abort"), false);
  clock.advance(1);
  await until("the abort sent to prague", () => byName.prague.calls.includes("abort"));
  const outcome = await start;
  assert.equal(outcome.state, "failed");
  assert.equal(outcome.nodes.prague.state, "timed out");
  assert.match(outcome.reason!, /node prague timed out: prepare on prague: no answer within 2000 ms/);
  nothingAnywhere();
});

Deno.test("Coordinator stops every committed part when a node crashes between prepare and commit", async () => {
  const { byName, coordinator, nothingAnywhere } = setup();
  byName.liberec.on.commit = "crash";
  byName.liberec.on.abort = "crash";
  const outcome = await coordinator.start(PROGRAM, { file: "demo.dipronn", format: "dipronn" });
  assert.equal(outcome.state, "failed");
  assert.equal(outcome.nodes.liberec.state, "unreachable");
  assert.equal(outcome.nodes.brno.state, "stopped");
  assert.equal(outcome.nodes.prague.state, "stopped");
  assert.match(outcome.nodes.liberec.undone!, /^could not undo: Cannot reach peer liberec/);
  // The crashed node's process took its reservation with it.
  byName.liberec.prepared.clear();
  nothingAnywhere();
  assert.ok(
    coordinator.partNodes().has("liberec"),
    "a node that could not be told is watched, to stop it later",
  );
});

Deno.test("Coordinator refuses a program with mistakes before asking any node", async () => {
  const { members, coordinator } = setup();
  const text = PROGRAM.replace("out(Last.in)", "out(Nowhere.in)");
  const error = await coordinator.start(text, { file: "x.dipronn", format: "dipronn" }).catch((e) => e);
  assert.ok(error instanceof ErrorList);
  assert.match(error.format(), /^x\.dipronn:3:\d+: .*Nowhere/m);
  for (const m of members) assert.deepEqual(m.calls, []);
});

Deno.test("Coordinator.plan places without preparing anything", async () => {
  const { members, coordinator } = setup();
  const plan = await coordinator.plan(PROGRAM, { file: "demo.dipronn", format: "dipronn" });
  assert.deepEqual(plan.placement.nodeOf, { In: "brno", Mid: "prague", Last: "liberec" });
  assert.deepEqual(plan.usage.map((u) => u.name), ["brno", "prague", "liberec", "pilsen"]);
  for (const m of members) assert.deepEqual(m.calls, ["usage"]);
});

Deno.test("Coordinator leaves a node that does not answer for its usage out of the placement", async () => {
  const { byName, coordinator, placed } = setup();
  byName.pilsen.on.usage = "crash";
  const plan = await coordinator.plan(PROGRAM, { file: "demo.dipronn", format: "dipronn" });
  assert.deepEqual(placed[0].nodes, ["brno", "prague", "liberec"]);
  assert.match(plan.left_out.pilsen, /connection refused/);
});

Deno.test("Coordinator.stop reaches every part", async () => {
  const { coordinator, nothingAnywhere } = setup();
  await coordinator.start(PROGRAM, { file: "demo.dipronn", format: "dipronn" });
  const outcome = await coordinator.stop("demo");
  assert.equal(outcome!.state, "stopped");
  assert.deepEqual(Object.values(outcome!.nodes).map((n) => n.undone), ["stopped", "stopped", "stopped"]);
  nothingAnywhere();
  assert.equal(await coordinator.stop("nothing"), null);
});

Deno.test("Coordinator stops the whole session when a node is lost and on_node_loss is stop", async () => {
  const { byName, coordinator } = setup();
  await coordinator.start(PROGRAM, { file: "demo.dipronn", format: "dipronn", onNodeLoss: "stop" });
  byName.prague.on.abort = "crash";
  await coordinator.nodeLost("prague");
  const s = coordinator.outcome(coordinator.get("demo")!);
  assert.equal(s.state, "stopped");
  assert.match(s.reason!, /node prague lost: the session was stopped on every node/);
  assert.equal(s.nodes.prague.state, "lost");
  assert.equal(byName.brno.running.size + byName.liberec.running.size, 0);
  // Back again: its stale part is stopped there.
  byName.prague.on.abort = "ok";
  await coordinator.nodeBack("prague");
  assert.equal(byName.prague.running.size, 0);
});

Deno.test("Coordinator restarts the session without a lost node when on_node_loss is restart", async () => {
  const { byName, coordinator, placed } = setup();
  await coordinator.start(PROGRAM, { file: "demo.dipronn", format: "dipronn", onNodeLoss: "restart" });
  const first = coordinator.get("demo")!.attempt;
  byName.prague.on.abort = "crash";
  await coordinator.nodeLost("prague");
  const s = coordinator.outcome(coordinator.get("demo")!);
  assert.equal(s.state, "running");
  assert.match(s.reason!, /node prague lost: restarted without it/);
  assert.notEqual(s.attempt, first);
  assert.deepEqual(placed[1].nodes, ["brno", "liberec", "pilsen"], "the lost node is not a candidate");
  assert.deepEqual(s.placement!.nodeOf, { In: "brno", Mid: "pilsen", Last: "liberec" });
  assert.equal(byName.pilsen.running.get("demo"), s.attempt);
  assert.equal(byName.brno.running.get("demo"), s.attempt);
  assert.ok(s.events.some((e) => /node prague lost; on_node_loss = restart/.test(e.text)));
});

Deno.test("Coordinator takes on_node_loss from the program unless the request says", async () => {
  const { coordinator } = setup();
  const text = PROGRAM.replace("Project demo;", "Project demo;\non_node_loss = restart;");
  assert.equal(
    (await coordinator.start(text, { file: "demo.dipronn", format: "dipronn" })).on_node_loss,
    "restart",
  );
  await coordinator.stop("demo");
  const asked = await coordinator.start(text, {
    file: "demo.dipronn",
    format: "dipronn",
    onNodeLoss: "stop",
  });
  assert.equal(asked.on_node_loss, "stop");
});

Deno.test("Coordinator stops the session, saying why, when a restart without the lost node fails", async () => {
  const { byName, coordinator, nothingAnywhere } = setup();
  await coordinator.start(PROGRAM, { file: "demo.dipronn", format: "dipronn", onNodeLoss: "restart" });
  byName.pilsen.on.prepare = "refuse";
  byName.prague.on.abort = "crash";
  await coordinator.nodeLost("prague");
  const s = coordinator.outcome(coordinator.get("demo")!);
  assert.equal(s.state, "stopped");
  assert.match(s.reason!, /^node prague lost; a restart without it failed: node pilsen refused: port 5004/);
  byName.prague.running.clear();
  nothingAnywhere();
});

Deno.test("Coordinator.stop refuses a session still starting, so a late prepare cannot leave it running", async () => {
  const { byName, coordinator, nothingAnywhere } = setup();
  const gate = Promise.withResolvers<void>();
  byName.prague.gate = gate.promise;
  const start = coordinator.start(PROGRAM, { file: "demo.dipronn", format: "dipronn" });
  await until("prague asked to prepare", () => byName.prague.calls.includes("prepare"));
  const error = await coordinator.stop("demo").catch((e) => e);
  assert.ok(error instanceof SessionBusy);
  assert.equal(error.message, "Cannot stop session demo: it is starting; try again");
  assert.equal(byName.brno.calls.includes("abort"), false, "nothing undone by the refused stop");
  gate.resolve();
  assert.equal((await start).state, "running");
  assert.equal((await coordinator.stop("demo"))!.state, "stopped");
  nothingAnywhere();
});

Deno.test("Coordinator.retryStale stops a part whose commit went through unanswered and whose abort failed", async () => {
  const { clock, byName, coordinator, nothingAnywhere } = setup();
  const liberec = byName.liberec;
  const commit = liberec.commit.bind(liberec);
  liberec.commit = async (session, attempt) => {
    await commit(session, attempt);
    throw new PeerError("liberec", "timeout", "the answer was lost");
  };
  liberec.on.abort = "crash";
  const outcome = await coordinator.start(PROGRAM, { file: "demo.dipronn", format: "dipronn" });
  assert.equal(outcome.state, "failed");
  assert.equal(liberec.running.size, 1, "its part runs on");
  assert.ok(coordinator.partNodes().has("liberec"));
  await coordinator.retryStale("liberec");
  assert.equal(liberec.calls.filter((c) => c === "abort").length, 1, "not before the first retry is due");
  clock.advance(1000);
  await coordinator.retryStale("liberec");
  assert.equal(liberec.calls.filter((c) => c === "abort").length, 2);
  const stale = (coordinator.status().stale_parts as Record<string, { abort_retries: number }>).liberec;
  assert.equal(stale.abort_retries, 1);
  liberec.on.abort = "ok";
  clock.advance(1999);
  await coordinator.retryStale("liberec");
  assert.equal(liberec.calls.filter((c) => c === "abort").length, 2, "backoff: the second retry waits 2 s");
  clock.advance(1);
  await coordinator.retryStale("liberec");
  nothingAnywhere();
  assert.deepEqual(coordinator.status().stale_parts, {});
  assert.equal(coordinator.partNodes().has("liberec"), false, "no longer watched");
});

Deno.test("Coordinator passes the request's nearest nodes to placement, for the plan, the start and a restart", async () => {
  const { coordinator, placed } = setup();
  await coordinator.plan(PROGRAM, { file: "demo.dipronn", format: "dipronn", near: ["liberec"] });
  assert.deepEqual(placed[0].near, ["liberec"]);
  const source = { file: "demo.dipronn", format: "dipronn" as const, onNodeLoss: "restart" as const };
  await coordinator.start(PROGRAM, { ...source, near: ["liberec", "brno"] });
  assert.deepEqual(placed[1].near, ["liberec", "brno"]);
  await coordinator.nodeLost("prague");
  assert.deepEqual(placed[2].near, ["liberec", "brno"], "a restart places near the same nodes");
  await coordinator.plan(PROGRAM, { file: "demo.dipronn", format: "dipronn" });
  assert.equal(placed[3].near, undefined, "no near named: none passed");
});

Deno.test("Coordinator refuses a near list naming a node outside the cluster, before asking any node", async () => {
  const { members, coordinator } = setup();
  for (const near of [["vienna"], ["prague", "prague"]]) {
    const error = await coordinator.start(PROGRAM, { file: "demo.dipronn", format: "dipronn", near })
      .catch((e) => e);
    assert.ok(error instanceof UnknownNear, String(error));
  }
  assert.match(
    String(
      await coordinator.plan(PROGRAM, { file: "d", format: "dipronn", near: ["vienna"] }).catch((e) => e),
    ),
    /Cannot place near vienna: not a node of this cluster/,
  );
  for (const m of members) assert.deepEqual(m.calls, []);
});
