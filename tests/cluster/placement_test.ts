import assert from "node:assert/strict";
import {
  crossLinks,
  type NodeLoad,
  place,
  PlacementError,
  type PlacementInput,
} from "../../lib/cluster/placement.ts";
import { parseProgram } from "../../lib/dipronn/parser.ts";
import { describeSession, type SessionSpec } from "../../lib/dipronn/session.ts";

const APPENDIX = Deno.readTextFileSync(new URL("../fixtures/appendix_a.dipronn", import.meta.url));
const FOUR_NODES = Deno.readTextFileSync(
  new URL("../../config/sessions/presentation_4nodes.dipronn", import.meta.url),
);

const spec = (text: string): SessionSpec => describeSession(parseProgram(text, "p.dipronn"));
const lines = (...ls: string[]) => ls.join("\n") + "\n";

/** A node with room to spare unless told otherwise. */
const node = (name: string, o: Partial<NodeLoad> = {}): NodeLoad => ({
  name,
  cpu: 0.1,
  memory: 0.2,
  free_ports: 100,
  ...o,
});
const CITIES = ["brno", "prague", "liberec", "pilsen"].map((n) => node(n));

/** Refused: the reason, checked to be in the message as the contract has it. */
function refusal(s: SessionSpec, input: PlacementInput): string {
  try {
    place(s, input);
  } catch (error) {
    assert.ok(error instanceof PlacementError, `expected a PlacementError, got ${error}`);
    assert.equal(error.message, `Cannot place session ${s.name}: ${error.reason}`);
    return error.reason;
  }
  assert.fail("expected the placement to be refused");
}

/** in(10000) -> A -> B -> C -> out to an address. */
const CHAIN = lines(
  "Project chain;",
  '{ AP name="A" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(10000)); outputs = o(B.in); }',
  '{ AP name="B" ref=localservice.transcoder; inputs = in; outputs = o(C.in); }',
  '{ AP name="C" ref=localservice.forwarder; inputs = in; outputs = o(DIPRONN_OUTPUT("192.0.2.7:5004")); }',
);

Deno.test("place puts the report's four-node split exactly where its pins say", () => {
  const s = spec(FOUR_NODES);
  const p = place(s, { self: "brno", nodes: CITIES });
  assert.equal(p.session, "synchro_infrastructure.first_tests");
  assert.deepEqual(p.nodeOf, {
    Dup_V: "brno",
    Dup_A: "brno",
    Transcode: "brno",
    Sync_high: "prague",
    Sync_low: "liberec",
    Dup_high: "prague",
    Dup_low: "liberec",
    Saver_high: "pilsen",
    Saver_low: "pilsen",
    Reflector_high: "prague",
    Reflector_low: "liberec",
  });
  assert.equal(p.why.Dup_V, "pinned to brno");
  assert.equal(p.why.Reflector_high, "with its VM group my_VM_prague: pinned to prague");
  assert.deepEqual(
    crossLinks(s, p).map((l) => `${l.from}.${l.output}@${l.fromNode} -> ${l.to}.${l.input}@${l.toNode}`),
    [
      "Dup_V.output1@brno -> Sync_high.in1@prague",
      "Dup_A.output1@brno -> Sync_high.in2@prague",
      "Dup_A.output2@brno -> Sync_low.in2@liberec",
      "Transcode.out@brno -> Sync_low.in1@liberec",
      "Dup_high.output1@prague -> Saver_high.in@pilsen",
      "Dup_low.output1@liberec -> Saver_low.in@pilsen",
    ],
  );
});

Deno.test("place keeps the unpinned Appendix A program whole on the healthy node that received it", () => {
  const s = spec(APPENDIX);
  for (const self of ["brno", "liberec"]) {
    const p = place(s, { self, nodes: CITIES });
    assert.deepEqual(new Set(Object.values(p.nodeOf)), new Set([self]), `self ${self}`);
    assert.equal(Object.keys(p.nodeOf).length, 11);
    assert.deepEqual(crossLinks(s, p), []);
    assert.equal(p.why.Dup_V, `takes input from outside: on ${self}, the node that received the request`);
    assert.equal(p.why.Sync_high, `next to Dup_V, Dup_A on ${self}`);
    assert.equal(p.why.Reflector_low, `with its VM group my_VM1: next to Dup_high, Dup_low on ${self}`);
  }
  const alone = place(s, { self: "brno", nodes: [node("brno")] });
  assert.deepEqual(new Set(Object.values(alone.nodeOf)), new Set(["brno"]));
});

Deno.test("place gives one line of why for every AP", () => {
  const s = spec(APPENDIX);
  const p = place(s, { self: "brno", nodes: CITIES, near: ["prague"] });
  assert.deepEqual(Object.keys(p.why), s.aps.map((ap) => ap.name));
  for (const line of Object.values(p.why)) assert.match(line, /^[^\n]+$/);
});

Deno.test("place honours an AP's pin and a VM group's pin", () => {
  const text = lines(
    "Project pins;",
    '{ AP name="In" ref=localservice.duplicator; node = "prague"; inputs = in(DIPRONN_INPUT(10000));',
    "  outputs = a(Save.in), b(Refl.in); }",
    '{ AP name="Save" ref=localservice.saver; inputs = in; output_file = "x.dump"; }',
    '{ VM name="vm" ref=img; node = "pilsen";',
    '  { AP name="Refl" ref=reflector; inputs = in, participant_registration(DIPRONN_INPUT(12345));',
    "    outputs = out(DIPRONN_OUTPUT); }",
    "}",
  );
  const p = place(spec(text), { self: "brno", nodes: CITIES });
  assert.deepEqual(p.nodeOf, { In: "prague", Save: "prague", Refl: "pilsen" });
  assert.equal(p.why.In, "pinned to prague");
  assert.equal(p.why.Save, "next to In on prague");
  assert.equal(p.why.Refl, "with its VM group vm: pinned to pilsen");
});

Deno.test("place runs every AP of a VM group on one node, pinned by one of its APs or not at all", () => {
  // Unpinned: the reflector would go near the receivers and the saver next to its feeder; the group stays one.
  const group = (pin: string) =>
    lines(
      "Project group;",
      '{ AP name="In" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(10000)); outputs = a(Save.in), b(Refl.in); }',
      '{ VM name="vm" ref=img;',
      `  { AP name="Save" ref=localservice.counter; inputs = in; ${pin} }`,
      '  { AP name="Refl" ref=reflector; inputs = in, participant_registration(DIPRONN_INPUT(12345));',
      "    outputs = out(DIPRONN_OUTPUT); }",
      "}",
    );
  const free = place(spec(group("")), { self: "brno", nodes: CITIES, near: ["liberec"] });
  assert.equal(free.nodeOf.In, "brno");
  assert.equal(free.nodeOf.Save, free.nodeOf.Refl);
  assert.equal(free.nodeOf.Refl, "liberec");
  assert.equal(
    free.why.Save,
    "with its VM group vm: sends to receivers: on liberec, the nearest node to them",
  );

  const pinned = place(spec(group('node = "pilsen";')), { self: "brno", nodes: CITIES, near: ["liberec"] });
  assert.deepEqual(pinned.nodeOf, { In: "brno", Save: "pilsen", Refl: "pilsen" });
  assert.equal(pinned.why.Save, "pinned to pilsen, with its VM group vm");
  assert.equal(pinned.why.Refl, "with its VM group vm: pinned to pilsen (AP Save)");
});

Deno.test("place refuses pins that disagree inside one VM group", () => {
  const text = (vmPin: string, a: string, b: string) =>
    lines(
      "Project clash;",
      '{ AP name="In" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(10000)); outputs = a(A.in), b(B.in); }',
      `{ VM name="vm" ref=img; ${vmPin}`,
      `  { AP name="A" ref=localservice.counter; inputs = in; ${a} }`,
      `  { AP name="B" ref=localservice.counter; inputs = in; ${b} }`,
      "}",
    );
  assert.equal(
    refusal(spec(text("", 'node = "prague"', 'node = "liberec"')), { self: "brno", nodes: CITIES }),
    "AP B is pinned to liberec but AP A to prague: every AP of VM group vm runs on one node",
  );
  assert.equal(
    refusal(spec(text('node = "pilsen"', "", 'node = "liberec"')), { self: "brno", nodes: CITIES }),
    "AP B is pinned to liberec but VM group vm to pilsen: every AP of VM group vm runs on one node",
  );
  // Pins that agree are one pin.
  const same = place(spec(text('node = "pilsen"', 'node = "pilsen"', "")), { self: "brno", nodes: CITIES });
  assert.deepEqual([same.nodeOf.A, same.nodeOf.B], ["pilsen", "pilsen"]);
});

Deno.test("place refuses a pin to a node it does not know, naming the known ones", () => {
  const text = CHAIN.replace("ref=localservice.transcoder;", 'ref=localservice.transcoder; node = "prage";');
  assert.equal(
    refusal(spec(text), { self: "brno", nodes: CITIES }),
    'B is pinned to node "prage", which is not among the nodes (brno, prague, liberec, pilsen) (did you mean "prague"?)',
  );
  const vm = FOUR_NODES.replace('node = "liberec";\n    { AP', 'node = "ostrava";\n    { AP');
  assert.equal(
    refusal(spec(vm), { self: "brno", nodes: CITIES }),
    'VM group my_VM_liberec is pinned to node "ostrava", which is not among the nodes (brno, prague, liberec, pilsen)',
  );
});

Deno.test("place moves APs off a node whose CPU, memory or ports are short", () => {
  const s = spec(CHAIN);
  // The node that received the request is busy: the entry goes to the next node, the rest follows it.
  const busy = place(s, { self: "brno", nodes: [node("brno", { cpu: 0.9 }), node("prague")] });
  assert.deepEqual(busy.nodeOf, { A: "prague", B: "prague", C: "prague" });
  assert.equal(
    busy.why.A,
    "not on brno, the node that received the request (brno: cpu 0.9 + 0.01 for A > 0.85); " +
      "no linked AP placed yet: on prague, the first node that can take it (skipped brno: cpu 0.9 + 0.01 for A > 0.85)",
  );
  const memory = place(s, { self: "brno", nodes: [node("brno", { memory: 0.95 }), node("prague")] });
  assert.equal(memory.nodeOf.A, "prague");
  assert.match(memory.why.A, /brno: memory 0\.95 > 0\.85/);
  // use_RTP is off: A binds one port.
  const ports = place(s, { self: "brno", nodes: [node("brno", { free_ports: 0 }), node("prague")] });
  assert.equal(ports.nodeOf.A, "prague");
  assert.match(ports.why.A, /brno: 0 free ports < 1 for A/);
  // Only the transcoder is too heavy for brno at 0.8: it goes to prague, its neighbours stay.
  const heavy = place(s, { self: "brno", nodes: [node("brno", { cpu: 0.8 }), node("prague")] });
  assert.deepEqual(heavy.nodeOf, { A: "brno", B: "prague", C: "prague" });
  assert.equal(
    heavy.why.B,
    "on prague, the first node that can take it (skipped brno: cpu 0.81 + 0.1 for B > 0.85)",
  );
  assert.equal(heavy.why.C, "next to B on prague");
});

Deno.test("place counts what it has already put on a node against its threshold", () => {
  // 0.81 + 0.01 (A) + 0.02 (B, a syncer) + 0.01 (C) + 0.01 (D) > 0.85 at D: D goes to the other node.
  const text = lines(
    "Project fill;",
    '{ AP name="A" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(10000)); outputs = o(B.in1); }',
    '{ AP name="B" ref=localservice.syncer; inputs = in1; outputs = o(C.in); }',
    '{ AP name="C" ref=localservice.duplicator; inputs = in; outputs = o(D.in); }',
    '{ AP name="D" ref=localservice.counter; inputs = in; }',
  );
  const p = place(spec(text), { self: "brno", nodes: [node("brno", { cpu: 0.81 }), node("prague")] });
  assert.deepEqual(p.nodeOf, { A: "brno", B: "brno", C: "brno", D: "prague" });
  assert.equal(
    p.why.D,
    "on prague, the first node that can take it (skipped brno: cpu 0.85 + 0.01 for D > 0.85)",
  );
});

Deno.test("place refuses a pin to a node that cannot take the AP, with the figures", () => {
  const text = CHAIN.replace("ref=localservice.transcoder;", 'ref=localservice.transcoder; node = "prague";');
  assert.equal(
    refusal(spec(text), { self: "brno", nodes: [node("brno"), node("prague", { cpu: 0.8 })] }),
    "B is pinned to prague, which cannot take it (prague: cpu 0.8 + 0.1 for B > 0.85)",
  );
  const ports = FOUR_NODES;
  assert.equal(
    refusal(spec(ports), {
      self: "brno",
      nodes: [node("brno"), node("prague", { free_ports: 1 }), node("liberec"), node("pilsen")],
    }),
    "VM group my_VM_prague is pinned to prague, which cannot take it (prague: 1 free ports < 2 for VM group my_VM_prague)",
  );
});

Deno.test("place refuses a session no node can take, naming the AP and every node's figures", () => {
  const s = spec(CHAIN);
  assert.equal(
    refusal(s, { self: "brno", nodes: [node("brno", { cpu: 0.8 }), node("prague", { memory: 0.9 })] }),
    "no node can take B (weight 10, 0 UDP ports): brno: cpu 0.81 + 0.1 for B > 0.85; prague: memory 0.9 > 0.85",
  );
  assert.equal(refusal(s, { self: "brno", nodes: [] }), "no nodes to place it on");
  assert.equal(
    refusal(s, { self: "brno", nodes: [node("brno"), node("brno")] }),
    "node brno is listed twice",
  );
  // A usage figure that is not a number counts as too busy, never as room.
  assert.match(
    refusal(s, { self: "brno", nodes: [node("brno", { cpu: NaN })] }),
    /^no node can take A .*brno: cpu NaN/,
  );
});

Deno.test("place sends the APs that feed receivers toward the nearest node that can take them", () => {
  const s = spec(APPENDIX);
  const p = place(s, { self: "brno", nodes: CITIES, near: ["prague", "liberec"] });
  assert.equal(p.nodeOf.Reflector_high, "prague");
  assert.equal(p.nodeOf.Reflector_low, "prague");
  assert.equal(p.nodeOf.Dup_V, "brno");
  const busy = place(s, {
    self: "brno",
    nodes: [node("brno"), node("prague", { cpu: 0.9 }), node("liberec"), node("pilsen")],
    near: ["prague", "liberec", "nowhere"],
  });
  assert.equal(busy.nodeOf.Reflector_high, "liberec");
  assert.equal(
    busy.why.Reflector_high,
    "with its VM group my_VM1: sends to receivers: on liberec, the nearest node to them that can take it " +
      "(prague: cpu 0.9 + 0.04 for VM group my_VM1 > 0.85)",
  );
});

Deno.test("place gives the same placement for the same input, ties going to self and then node order", () => {
  // Nothing takes outside input here: every AP is placed by its links alone.
  const text = lines(
    "Project ties;",
    '{ AP name="P" ref=localservice.player; file = "x.pcap"; outputs = o(C.in); }',
    '{ AP name="C" ref=localservice.counter; inputs = in; }',
  );
  const s = spec(text);
  const input = { self: "nowhere", nodes: CITIES };
  const first = place(s, input);
  assert.deepEqual(place(s, input), first);
  assert.deepEqual(first.nodeOf, { P: "brno", C: "brno" });
  assert.equal(first.why.P, "no linked AP placed yet: on brno, the first node that can take it");
  const reversed = place(s, { self: "nowhere", nodes: [...CITIES].reverse() });
  assert.deepEqual(reversed.nodeOf, { P: "pilsen", C: "pilsen" });
  assert.deepEqual(place(s, { self: "liberec", nodes: CITIES }).nodeOf, { P: "liberec", C: "liberec" });
  const a = place(spec(APPENDIX), { self: "prague", nodes: CITIES, near: ["liberec"] });
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(place(spec(APPENDIX), { self: "prague", nodes: CITIES, near: ["liberec"] }), a);
  }
});
