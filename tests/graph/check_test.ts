import assert from "node:assert/strict";
import { ErrorList } from "../../lib/core/errors.ts";
import { parseProgram } from "../../lib/dipronn/parser.ts";
import { describeSession } from "../../lib/dipronn/session.ts";
import { planSession, type SessionPlan } from "../../lib/graph/check.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { checkProgram } from "../../lib/graph/program.ts";

const fixture = (name: string) => Deno.readTextFileSync(new URL(`../fixtures/${name}`, import.meta.url));
const kinds = coreElements();
const lines = (...ls: string[]) => ls.join("\n") + "\n";

interface Problem {
  at: string;
  message: string;
  related?: string;
}

/** The errors checkProgram reports, as `line:col` and message (and `related` for the other place, if any). */
function problems(text: string, portsInUse?: ReadonlyMap<number, string>): Problem[] {
  try {
    checkProgram(text, { file: "t.dipronn", kinds, portsInUse });
  } catch (error) {
    assert.ok(error instanceof ErrorList, `expected an ErrorList, got ${error}`);
    return error.errors.map((e) => {
      const p: Problem = { at: `${e.line}:${e.col}`, message: e.message };
      if (e.related) p.related = `${e.related.line}:${e.related.col}`;
      return p;
    });
  }
  assert.fail("expected the program to be refused");
}

const plan = (text: string): SessionPlan => checkProgram(text, { file: "t.dipronn", kinds });

/** `A.out -> B.in` for every wire of the plan, with input names looked up from the input index. */
function wiring(p: SessionPlan): string[] {
  return p.aps.flatMap((ap) =>
    ap.outputs.flatMap((o) =>
      o.wires.map((w) =>
        `${ap.name}.${o.name} -> ${
          w.kind === "ap"
            ? `${p.aps[w.node].name}.${p.aps[w.node].inputs[w.input].name}`
            : w.kind === "link"
            ? `LINK ${w.peer}:${w.ap}.${w.input}`
            : `OUT ${w.to ? `${w.to.host}:${w.to.port}` : "participants"}`
        }`
      )
    )
  );
}

const KNOWN = "localservice.duplicator, localservice.forwarder, localservice.saver, localservice.player, " +
  "localservice.counter, reflector, localservice.syncer, localservice.transcoder";

Deno.test("checkProgram plans the unmodified Appendix with its transcoder and two syncers", () => {
  const p = plan(fixture("appendix_a.dipronn"));
  const kind = (name: string) => p.aps.find((ap) => ap.name === name)!.kind.name;
  assert.equal(kind("Transcode"), "localservice.transcoder");
  assert.equal(kind("Sync_high"), "localservice.syncer");
  assert.equal(kind("Sync_low"), "localservice.syncer");
  const transcode = p.aps.find((ap) => ap.name === "Transcode")!;
  assert.equal(transcode.params.output_format, "mp4v");
  assert.equal(p.aps.find((ap) => ap.name === "Sync_high")!.params.precision, 0.001);
});

Deno.test("checkProgram checks the shipped presentation program: the Appendix as written", () => {
  const shipped = Deno.readTextFileSync(
    new URL("../../config/sessions/presentation.dipronn", import.meta.url),
  );
  assert.equal(plan(shipped).aps.length, 11);
  const body = (text: string) => text.slice(text.indexOf("Project "));
  assert.equal(body(shipped), body(fixture("appendix_a.dipronn")));
});

Deno.test("checkProgram suggests a known kind for a misspelt ref", () => {
  const text = lines(
    "Project p;",
    '{ AP name="A" ref=localservice.counterr; inputs = in(DIPRONN_INPUT(5000)); }',
  );
  assert.deepEqual(problems(text), [{
    at: "2:19",
    message:
      `Unknown AP kind "localservice.counterr" (did you mean "localservice.counter"?) (known: ${KNOWN})`,
  }]);
});

Deno.test("checkProgram plans the Appendix with forwarders in data-flow order", () => {
  const p = plan(fixture("appendix_a_forwarders.dipronn"));
  assert.equal(p.name, "synchro_infrastructure.first_tests");
  assert.equal(p.owner, "Tom Rebok");
  assert.equal(p.useRtp, true);
  assert.deepEqual(p.ports, [10000, 10001, 10002, 10003, 12345, 12346, 12354, 12355]);
  assert.deepEqual(p.vms, [{
    name: "my_VM1",
    ref: "my_VM1_image",
    aps: ["Reflector_high", "Reflector_low"],
  }]);

  const index = new Map(p.aps.map((ap, i) => [ap.name, i]));
  assert.equal(index.size, 11);
  for (const ap of p.aps) {
    for (const o of ap.outputs) {
      for (const w of o.wires) {
        if (w.kind === "ap") {
          assert.ok(w.node > index.get(ap.name)!, `${ap.name} feeds ${p.aps[w.node].name}`);
        }
      }
    }
  }
  assert.deepEqual(wiring(p).sort(), [
    "Dup_A.output1 -> Sync_high.in2",
    "Dup_A.output2 -> Sync_low.in2",
    "Dup_V.output1 -> Sync_high.in1",
    "Dup_V.output2 -> Transcode.in",
    "Dup_high.output1 -> Saver_high.in",
    "Dup_high.output2 -> Reflector_high.in",
    "Dup_low.output1 -> Saver_low.in",
    "Dup_low.output2 -> Reflector_low.in",
    "Reflector_high.out -> OUT participants",
    "Reflector_low.out -> OUT participants",
    "Sync_high.out -> Dup_high.in",
    "Sync_low.out -> Dup_low.in",
    "Transcode.out -> Sync_low.in1",
  ]);

  const byName = new Map(p.aps.map((ap) => [ap.name, ap]));
  const reflector = byName.get("Reflector_low")!;
  assert.equal(reflector.kind.name, "reflector");
  assert.equal(reflector.vm, "my_VM1");
  assert.equal(reflector.registration, 12354);
  assert.deepEqual(
    reflector.inputs,
    [{ name: "in", external: null, allow: [] }],
    "the registration input is not a data input",
  );
  // `at`: where the program asks for the port, named in a start error (a port in use).
  assert.deepEqual(byName.get("Dup_V")!.inputs, [{
    name: "V_in",
    external: 10000,
    at: "t.dipronn:9:19",
    allow: [],
  }]);
  assert.deepEqual(byName.get("Saver_high")!.params, {
    output_file: "stream_high.dump",
    overwrite: false,
    max_bytes: 1024 ** 3,
    port: 5004,
  });
});

Deno.test("planSession puts every AP after those that feed it and wires outputs to the right input", () => {
  // Declared sink first, source last; the forwarder's second input is fed by the duplicator's first output.
  const text = lines(
    "Project p;",
    '{ AP name="C" ref=localservice.counter; inputs = in; }',
    '{ AP name="B" ref=localservice.forwarder; inputs = x, y; outputs = out(C.in); }',
    '{ AP name="A" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(5000)); outputs = o1(B.y), o2(B.x); }',
  );
  const p = planSession(describeSession(parseProgram(text, "t.dipronn")), { kinds });
  assert.deepEqual(p.aps.map((ap) => ap.name), ["A", "B", "C"]);
  assert.deepEqual(p.aps[0].outputs, [
    { name: "o1", wires: [{ kind: "ap", node: 1, input: 1 }] },
    { name: "o2", wires: [{ kind: "ap", node: 1, input: 0 }] },
  ]);
  assert.deepEqual(p.aps[1].outputs, [{ name: "out", wires: [{ kind: "ap", node: 2, input: 0 }] }]);
  assert.deepEqual(p.aps[2].outputs, []);
  assert.deepEqual(p.ports, [5000]);
});

Deno.test("checkProgram refuses an input fed by nothing", () => {
  const text = lines(
    "Project p;",
    '{ AP name="A" ref=localservice.forwarder; inputs = in1(DIPRONN_INPUT(5000)), in2; outputs = out(B.in); }',
    '{ AP name="B" ref=localservice.counter; inputs = in; }',
  );
  assert.deepEqual(problems(text), [{
    at: "2:78",
    message: "Input A.in2 is fed by nothing: wire an output to it or give it DIPRONN_INPUT(port)",
  }]);
});

Deno.test("checkProgram refuses a forwarder output wired twice and lets a duplicator fan out", () => {
  const program = (ref: string) =>
    lines(
      "Project p;",
      `{ AP name="A" ref=${ref}; inputs = in(DIPRONN_INPUT(5000)); outputs = out(B.in, C.in); }`,
      '{ AP name="B" ref=localservice.counter; inputs = in; }',
      '{ AP name="C" ref=localservice.counter; inputs = in; }',
    );
  assert.deepEqual(problems(program("localservice.forwarder")), [{
    at: "2:97",
    message:
      "Output A.out is wired 2 times; localservice.forwarder sends each output to one target (use a duplicator)",
    related: "2:91",
  }]);
  assert.deepEqual(wiring(plan(program("localservice.duplicator"))).sort(), [
    "A.out -> B.in",
    "A.out -> C.in",
  ]);
});

Deno.test("checkProgram with use_RTP refuses ports one apart and accepts ports two apart", () => {
  const program = (rtp: boolean, ports: number[]) =>
    lines(
      "Project p;",
      rtp ? "use_RTP;" : "",
      `{ AP name="A" ref=localservice.forwarder; inputs = ${
        ports.map((n, i) => `i${i}(DIPRONN_INPUT(${n}))`).join(", ")
      }; outputs = out(B.in); }`,
      '{ AP name="B" ref=localservice.counter; inputs = in; }',
    );
  assert.deepEqual(problems(program(true, [10000, 10001])), [{
    at: "3:81",
    message:
      "UDP port 10001 of A.i1 clashes with A.i0 (use_RTP takes port and port + 1) (first at line 3, column 55)",
    related: "3:55",
  }]);
  assert.deepEqual(plan(program(true, [10000, 10002])).ports, [10000, 10001, 10002, 10003]);
  assert.deepEqual(plan(program(false, [10000, 10001])).ports, [10000, 10001]);
  assert.deepEqual(problems(program(false, [10000, 10000])), [{
    at: "3:81",
    message: "UDP port 10000 of A.i1 clashes with A.i0 (first at line 3, column 55)",
    related: "3:55",
  }]);
  assert.deepEqual(problems(program(true, [65535])), [{
    at: "3:55",
    message: "DIPRONN_INPUT(65535) leaves no room for its RTCP port (use_RTP takes port and port + 1)",
  }]);
});

Deno.test("checkProgram refuses ports other sessions hold, including the RTCP port", () => {
  const text = lines(
    "Project p;",
    "use_RTP;",
    '{ AP name="A" ref=localservice.counter; inputs = a(DIPRONN_INPUT(10000)); }',
    '{ AP name="B" ref=localservice.counter; inputs = b(DIPRONN_INPUT(20000)); }',
    '{ AP name="C" ref=localservice.counter; inputs = c(DIPRONN_INPUT(30000)); }',
  );
  const inUse = new Map([[10001, "session other"], [20000, "session x"], [29999, "session y"]]);
  assert.deepEqual(problems(text, inUse), [
    {
      at: "3:52",
      message: "UDP port 10001 of A.a is already used by session other (use_RTP takes port and port + 1)",
    },
    {
      at: "4:52",
      message: "UDP port 20000 of B.b is already used by session x (use_RTP takes port and port + 1)",
    },
  ]);
});

Deno.test("checkProgram refuses an unknown parameter with a did-you-mean and the known ones", () => {
  const text = lines(
    "Project p;",
    '{ AP name="S" ref=localservice.saver; inputs = in(DIPRONN_INPUT(5000));',
    '    output_file = "a.pcap"; overwrit = true; }',
    '{ AP name="F" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(5002)); outputs = out(S2.in); speed = 2; }',
    '{ AP name="S2" ref=localservice.saver; inputs = in; output_file = "b.pcap"; }',
  );
  assert.deepEqual(problems(text), [
    {
      at: "3:29",
      message:
        'localservice.saver has no parameter "overwrit" (did you mean "overwrite"?) (its parameters: output_file, overwrite, max_bytes, port)',
    },
    { at: "4:99", message: 'localservice.forwarder has no parameter "speed" (it takes none)' },
  ]);
});

Deno.test("checkProgram reports a parameter that does not parse once, not as missing as well", () => {
  const text = lines(
    "Project p;",
    '{ AP name="S" ref=localservice.saver; inputs = in(DIPRONN_INPUT(5000)); output_file = "../etc/passwd"; }',
    '{ AP name="P" ref=localservice.player; outputs = out(DIPRONN_OUTPUT("192.0.2.7:5004"));',
    '    input_file = "a.pcap"; speed = 0; }',
    '{ AP name="T" ref=localservice.saver; inputs = in(DIPRONN_INPUT(5002)); }',
  );
  assert.deepEqual(problems(text), [
    {
      at: "2:87",
      message:
        'S.output_file: "../etc/passwd" is not a plain file name: use letters, digits, "_", "-" and ".", no "/" or "..", up to 128',
    },
    { at: "4:36", message: "P.speed: must be at least 0.01" },
    {
      at: "5:1",
      message:
        "T (localservice.saver) needs output_file = ... (the file to write, in the node's data directory)",
    },
  ]);
});

Deno.test("checkProgram refuses two savers writing one file, pointing at both", () => {
  const text = lines(
    "Project p;",
    '{ AP name="S" ref=localservice.saver; inputs = in(DIPRONN_INPUT(5000)); output_file = "x.pcap"; }',
    '{ AP name="T" ref=localservice.saver; inputs = in(DIPRONN_INPUT(5002)); output_file = "x.pcap"; }',
  );
  assert.deepEqual(problems(text), [{
    at: "3:1",
    message: "T and S both use file x.pcap (first at line 2, column 1)",
    related: "2:1",
  }]);
});

Deno.test("checkProgram refuses a loop once", () => {
  const text = lines(
    "Project p;",
    '{ AP name="A" ref=localservice.forwarder; inputs = in1(DIPRONN_INPUT(5000)), in2; outputs = out(B.in); }',
    '{ AP name="B" ref=localservice.forwarder; inputs = in; outputs = out(A.in2); }',
  );
  assert.deepEqual(problems(text), [{ at: "3:70", message: "The graph has a loop: A -> B -> A" }]);
});

Deno.test("checkProgram refuses a reflector without participant_registration or with an address", () => {
  const text = lines(
    "Project p;",
    '{ AP name="R" ref=reflector; inputs = in(DIPRONN_INPUT(5000)); outputs = out(DIPRONN_OUTPUT); }',
    '{ AP name="Q" ref=reflector; inputs = in(DIPRONN_INPUT(5002)), participant_registration(DIPRONN_INPUT(6000));',
    '    outputs = out(DIPRONN_OUTPUT("192.0.2.7:5004")); }',
  );
  assert.deepEqual(problems(text), [
    { at: "2:1", message: "R (reflector) needs an input participant_registration(DIPRONN_INPUT(port))" },
    { at: "4:19", message: "Q.out goes to the reflector's participants: write out(DIPRONN_OUTPUT)" },
  ]);
});

Deno.test("checkProgram refuses DIPRONN_OUTPUT without an address from a forwarder", () => {
  const text = lines(
    "Project p;",
    '{ AP name="F" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(5000)); outputs = out(DIPRONN_OUTPUT); }',
  );
  assert.deepEqual(problems(text), [{
    at: "2:91",
    message: 'DIPRONN_OUTPUT from F.out needs an address: DIPRONN_OUTPUT("192.0.2.7:5004")',
  }]);
  const ok = plan(text.replace("DIPRONN_OUTPUT)", 'DIPRONN_OUTPUT("192.0.2.7:5004"))'));
  assert.deepEqual(wiring(ok), ["F.out -> OUT 192.0.2.7:5004"]);
});

Deno.test("checkProgram refuses port counts a kind does not take", () => {
  const text = lines(
    "Project p;",
    '{ AP name="S" ref=localservice.saver; inputs = in(DIPRONN_INPUT(5000)); outputs = out(C.in);',
    '    output_file = "a.pcap"; }',
    '{ AP name="C" ref=localservice.counter; inputs = in, in2(DIPRONN_INPUT(5002)); }',
  );
  assert.deepEqual(problems(text), [
    { at: "2:1", message: "S (localservice.saver) takes 0 outputs, not 1" },
    { at: "4:1", message: "C (localservice.counter) takes 1 input, not 2" },
  ]);
});

Deno.test("checkProgram refuses a session with no AP", () => {
  assert.deepEqual(problems("Project p;\n"), [{ at: "1:1", message: "The session has no AP" }]);
});

Deno.test("planSession wants whole numbers where a count or a port is asked for", () => {
  const text = `Project p;
{ AP name="S" ref=localservice.saver; inputs = in(DIPRONN_INPUT(4000)); output_file = "a.pcap"; port = 5004.5; }
`;
  assert.throws(() => checkProgram(text, { file: "t.dipronn", kinds: coreElements() }), (error: unknown) => {
    assert.ok(error instanceof ErrorList);
    assert.deepEqual(error.errors.map((e) => e.message), ["S.port: expected a whole number, not 5004.5"]);
    return true;
  });
});

Deno.test("planSession keeps an output's RTCP port in range under use_RTP", () => {
  const text = `Project p;
use_RTP;
{ AP name="F" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(4000)); outputs = out(DIPRONN_OUTPUT("127.0.0.1:65535")); }
`;
  assert.throws(() => checkProgram(text, { file: "t.dipronn", kinds: coreElements() }), (error: unknown) => {
    assert.ok(error instanceof ErrorList);
    assert.match(
      error.format(),
      /^t\.dipronn:3:91: DIPRONN_OUTPUT port 65535 leaves no room for its RTCP port/,
    );
    return true;
  });
});

Deno.test("checkProgram finds a syncer's offsets beyond its inputs and a transcoder without use_RTP at their ref", () => {
  const text = lines(
    "Project p;",
    '{ AP name="S" ref=localservice.syncer; inputs = in1(DIPRONN_INPUT(5000)), in2(DIPRONN_INPUT(5002));',
    "    outputs = out(T.in); offsets = 1, 0, 0.5; }",
    '{ AP name="T" ref=localservice.transcoder; inputs = in; outputs = out(DIPRONN_OUTPUT("192.0.2.7:5004"));',
    '    output_format = "mp4v"; }',
  );
  assert.deepEqual(problems(text), [
    { at: "2:19", message: "S (localservice.syncer): 3 offsets for 2 inputs: give one per input" },
    { at: "4:19", message: "T (localservice.transcoder): needs use_RTP: its timing travels in RTCP" },
  ]);
});
