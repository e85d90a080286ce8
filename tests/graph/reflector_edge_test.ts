/**
 * The main isolate's half of a reflector split across a VM group (lib/graph/elements/reflector.ts), with a fake link
 * to the worker: control datagrams the worker never answers (it dropped them before its half was ready, or ended)
 * must not shut the join path for good.
 */
import { testNode } from "../_support/node.ts";
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import type { EdgeLink, NodeServices } from "../../lib/graph/element.ts";
import { reflectorElement } from "../../lib/graph/elements/reflector.ts";
import { openUdp } from "../../lib/net/udp.ts";
import { until } from "../_support/until.ts";

const LO = "127.0.0.1";
const PARAMS = {
  timeout: 30,
  max_participants: 100,
  max_per_address: 4,
  allow: ["loopback" as const],
  allow_sources: [],
};

/** The element's context: reflector R of session s, split across VM group "vm" by `link`. */
function contextOf(node: NodeServices, link: EdgeLink, registration: number) {
  return {
    name: "R",
    session: "s",
    params: PARAMS,
    inputs: ["in"],
    outputs: [],
    useRtp: false,
    registration,
    node,
    edge: link,
  };
}

function freePort(): number {
  const s = Deno.listenDatagram({ hostname: LO, port: 0, transport: "udp" });
  const { port } = s.addr as Deno.NetAddr;
  s.close();
  return port;
}

Deno.test("reflector's socket half takes joins again once unanswered control messages are given up as lost", async () => {
  const clock = new ManualClock(1_000_000);
  const node: NodeServices = testNode(clock);
  const posted: unknown[] = [];
  let running = true;
  // A worker that never answers; while "not running" the link refuses messages outright.
  const link: EdgeLink = { vm: "vm", post: (m) => running && posted.push(m) > 0, onMessage: null };
  const registration = freePort();
  const element = reflectorElement.edge!(contextOf(node, link, registration));
  await element.start!();
  const sender = openUdp({ host: LO, port: 0 });
  const reg = sender.destinations([{ host: LO, port: registration }]);
  const join = new TextEncoder().encode("EDGENODE-JOIN".padEnd(64));
  const status = () => element.status!() as { reflector: { control_dropped: number; control_lost: number } };
  try {
    // 64 unanswered messages fill what may be in flight; the next ones are dropped and counted.
    for (let i = 0; i < 70; i++) {
      sender.send([join], reg);
      await until(`join ${i} handled`, () => posted.length + status().reflector.control_dropped === i + 1);
    }
    assert.equal(posted.length, 64);
    assert.equal(status().reflector.control_dropped, 6);
    // Past the answer deadline they count as lost, and a join goes through to the worker again.
    clock.advance(2001);
    sender.send([join], reg);
    await until("a join posted after the deadline", () => posted.length === 65);
    assert.equal(status().reflector.control_lost, 64);
    // A link that cannot post (the worker not running) counts the datagram dropped and keeps nothing in flight.
    running = false;
    sender.send([join], reg);
    await until("a refused post counted", () => status().reflector.control_dropped === 7);
  } finally {
    await sender.close();
    await element.stop!();
  }
});

Deno.test("reflector's table half sends its participant list only when it changed or a second passed", async () => {
  const clock = new ManualClock(1_000_000);
  const node: NodeServices = testNode(clock);
  const answers: { report: { participants?: unknown[] } }[] = [];
  const link: EdgeLink = { vm: "vm", post: (m) => answers.push(m as never) > 0, onMessage: null };
  const table = reflectorElement.create(contextOf(node, link, freePort()));
  await table.start?.();
  try {
    // At start it sent its (empty) list.
    assert.equal(answers.length, 1);
    assert.ok(Array.isArray(answers[0].report.participants));
    answers.length = 0;
    const noise = { rtcp: false, datagrams: [{ host: LO, port: 5004, data: new Uint8Array([1, 2, 3]) }] };
    for (let i = 0; i < 5; i++) link.onMessage!(noise);
    assert.equal(answers.length, 5);
    assert.deepEqual(
      answers.map((a) => a.report.participants),
      [undefined, undefined, undefined, undefined, undefined],
      "answers that changed nothing leave it out",
    );
    clock.advance(1000);
    link.onMessage!(noise);
    assert.ok(
      Array.isArray(answers[5].report.participants),
      "a second later it goes again (last-seen times)",
    );
  } finally {
    await table.stop?.();
  }
});

Deno.test("reflector's socket half keeps the participants it was sent when an answer leaves them out", async () => {
  const clock = new ManualClock(1_000_000);
  const node: NodeServices = testNode(clock);
  const link: EdgeLink = { vm: "vm", post: () => true, onMessage: null };
  const element = reflectorElement.edge!(contextOf(node, link, freePort()));
  await element.start!();
  try {
    const participant = { endpoint: { host: LO, port: 5006 }, origin: "join", joinedAt: 1, lastSeen: 1 };
    const stats = {};
    link.onMessage!({
      answer: false,
      rtcp: false,
      replies: [],
      report: { stats, participants: [participant] },
    });
    link.onMessage!({ answer: false, rtcp: false, replies: [], report: { stats } });
    const shown = (element.status!() as { reflector: { participants: { address: string }[] } }).reflector;
    assert.deepEqual(shown.participants.map((p) => p.address), [`${LO}:5006`]);
  } finally {
    await element.stop?.();
  }
});
