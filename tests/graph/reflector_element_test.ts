/**
 * The reflector AP whole (its table in the main isolate): what a session graph hands it is reflected as its data
 * port would reflect it, with the AP's own `allow_sources`.
 */
import { testNode } from "../_support/node.ts";
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { ArrayBatch } from "../../lib/graph/batch.ts";
import type { NodeServices } from "../../lib/graph/element.ts";
import { reflectorElement } from "../../lib/graph/elements/reflector.ts";
import { ParamProblem } from "../../lib/graph/params.ts";
import { openUdp } from "../../lib/net/udp.ts";
import { collect } from "../net/udp_contract.ts";
import { poll } from "../_support/until.ts";

const LO = "127.0.0.1";
const enc = new TextEncoder();
const dec = new TextDecoder();
const str = (text: string) => ({ kind: "string" as const, text, pos: { line: 1, col: 1 } });

function freePort(): number {
  const s = Deno.listenDatagram({ hostname: LO, port: 0, transport: "udp" });
  const { port } = s.addr as Deno.NetAddr;
  s.close();
  return port;
}

Deno.test("reflector AP parameter allow_sources takes quoted prefixes and refuses a bad one with its reason", () => {
  const param = reflectorElement.params.allow_sources;
  assert.deepEqual(param.default, []);
  assert.deepEqual(param.parse([str("10.0.0.0/8"), str("::1")]), ["10.0.0.0/8", "::1"]);
  const bad = param.parse([str("10.1.0.0/8")]);
  assert.ok(bad instanceof ParamProblem);
  assert.match(bad.message, /^Cannot read source prefix "10\.1\.0\.0\/8": host bits are set/);
  const unquoted = param.parse([{ kind: "number", text: "10", pos: { line: 1, col: 1 } }]);
  assert.ok(unquoted instanceof ParamProblem);
});

Deno.test("reflector AP reflects what the graph hands it only from allow_sources, never an empty datagram", async () => {
  const clock = new ManualClock(1_000_000);
  const node: NodeServices = testNode(clock);
  const registration = freePort();
  const element = reflectorElement.create({
    name: "R",
    session: "s",
    params: {
      timeout: 30,
      max_participants: 100,
      max_per_address: 4,
      allow: ["loopback"],
      allow_sources: ["192.0.2.0/24"],
    },
    inputs: ["in"],
    outputs: [],
    useRtp: false,
    registration,
    node,
  });
  await element.start!();
  const participant = openUdp({ host: LO, port: 0 });
  try {
    const reg = participant.destinations([{ host: LO, port: registration }]);
    participant.send([enc.encode("EDGENODE-JOIN".padEnd(64))], reg);
    const [challenge] = await collect(participant, 1);
    participant.send([enc.encode(`EDGENODE-CONFIRM ${dec.decode(challenge.data).split(" ")[1]}`)], reg);
    await collect(participant, 1); // WELCOME
    const allowed = { host: "192.0.2.7", port: 5004 };
    const stranger = { host: "198.51.100.1", port: 5004 };
    element.push(
      0,
      new ArrayBatch(
        [enc.encode("one"), enc.encode("stranger's"), new Uint8Array(0), enc.encode("two")],
        [allowed, stranger, allowed, allowed],
      ),
      false,
    );
    const got = await collect(participant, 2);
    assert.deepEqual(got.map((g) => dec.decode(g.data)), ["one", "two"]);
    const s = await poll("the reflector's figures", () => {
      const r = (element.status!() as { reflector: Record<string, unknown> }).reflector;
      return r.dropped_denied === 1 ? r : null;
    });
    assert.equal(s.dropped_empty, 1);
    assert.deepEqual(s.allow_sources, ["192.0.2.0/24"]);
  } finally {
    await participant.close();
    await element.stop!();
  }
});
