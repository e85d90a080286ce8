import assert from "node:assert/strict";
import { ErrorList } from "../../lib/core/errors.ts";
import { type Program, ProgramError, stripPositions, valueText } from "../../lib/dipronn/ast.ts";
import { parseProgram } from "../../lib/dipronn/parser.ts";
import { printProgram } from "../../lib/dipronn/printer.ts";
import { describeSession } from "../../lib/dipronn/session.ts";
import { parseYamlProgram } from "../../lib/dipronn/yaml.ts";
import { planSession, type SessionPlan } from "../../lib/graph/check.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";

const fixture = (name: string) => Deno.readTextFileSync(new URL(`../fixtures/${name}`, import.meta.url));
const APPENDIX = fixture("appendix_a.dipronn");
const FORWARDERS = fixture("appendix_a_forwarders.dipronn");
const YAML_FORM = fixture("appendix_a.yaml");

const lines = (...ls: string[]) => ls.join("\n") + "\n";

interface Problem {
  /** `line:col` */
  at: string;
  message: string;
  /** `line:col` of the other place a duplicate points at. */
  related?: string;
}

/** Every error the parser and the session description report, in file order, as a user would read them. */
function problems(text: string, file: string): Problem[] {
  const parse = file.endsWith(".yaml") ? parseYamlProgram : parseProgram;
  try {
    describeSession(parse(text, file));
  } catch (error) {
    assert.ok(error instanceof ErrorList, `expected an ErrorList, got ${error}`);
    return error.errors.map((e) => {
      assert.ok(e instanceof ProgramError);
      assert.equal(e.file, file);
      assert.equal(e.format(), `${file}:${e.line}:${e.col}: ${e.message}`);
      const p: Problem = { at: `${e.line}:${e.col}`, message: e.message };
      if (e.related) {
        assert.equal(e.related.file, file);
        p.related = `${e.related.line}:${e.related.col}`;
      }
      return p;
    });
  }
  assert.fail("expected the program to be refused");
}

Deno.test("parseProgram reads the Appendix A program", () => {
  const program = parseProgram(APPENDIX, "appendix_a.dipronn");
  assert.equal(program.file, "appendix_a.dipronn");
  assert.deepEqual(program.project, { name: "synchro_infrastructure.first_tests", pos: { line: 5, col: 1 } });
  const kinds = program.body.map((s) => s.kind === "block" ? `${s.type} block` : s.kind);
  assert.deepEqual(kinds, ["attr", "attr", "flag", ...Array(9).fill("AP block"), "VM block"]);
  const vm = program.body[12];
  assert.ok(vm.kind === "block");
  assert.deepEqual(vm.body.map((s) => s.kind === "block" ? s.type : s.kind), ["AP", "AP"]);
});

for (
  const [name, text] of [["appendix_a.dipronn", APPENDIX], ["appendix_a_forwarders.dipronn", FORWARDERS]]
) {
  Deno.test(`printProgram output of ${name} parses back to the same tree and prints the same again`, () => {
    const program = parseProgram(text, name);
    const printed = printProgram(program);
    const again = parseProgram(printed, name);
    assert.deepEqual(stripPositions(again), stripPositions(program));
    assert.equal(printProgram(again), printed);
    assert.doesNotMatch(printed, /#/, "comments are not kept");
  });
}

Deno.test("describeSession gives the Appendix A session", () => {
  const spec = describeSession(parseProgram(APPENDIX, "appendix_a.dipronn"));
  assert.equal(spec.name, "synchro_infrastructure.first_tests");
  assert.equal(spec.owner, "Tom Rebok");
  assert.equal(spec.notifications, "none");
  assert.equal(spec.useRtp, true);
  assert.deepEqual(spec.aps.map((ap) => [ap.name, ap.ref, ap.vm]), [
    ["Dup_V", "localservice.duplicator", null],
    ["Dup_A", "localservice.duplicator", null],
    ["Transcode", "localservice.transcoder", null],
    ["Sync_high", "localservice.syncer", null],
    ["Sync_low", "localservice.syncer", null],
    ["Dup_high", "localservice.duplicator", null],
    ["Dup_low", "localservice.duplicator", null],
    ["Saver_high", "localservice.saver", null],
    ["Saver_low", "localservice.saver", null],
    ["Reflector_high", "reflector", "my_VM1"],
    ["Reflector_low", "reflector", "my_VM1"],
  ]);
  assert.deepEqual(spec.vms.map((vm) => [vm.name, vm.ref, vm.aps]), [
    ["my_VM1", "my_VM1_image", ["Reflector_high", "Reflector_low"]],
  ]);

  const external = spec.aps.flatMap((ap) =>
    ap.inputs.filter((p) => p.external).map((p) => `${ap.name}.${p.name}(${p.external!.port})`)
  );
  assert.deepEqual(external, [
    "Dup_V.V_in(10000)",
    "Dup_A.A_in(10002)",
    "Reflector_high.participant_registration(12345)",
    "Reflector_low.participant_registration(12354)",
  ]);
  const byName = new Map(spec.aps.map((ap) => [ap.name, ap]));
  assert.deepEqual(byName.get("Sync_high")!.inputs.map((p) => p.name), ["in1", "in2"]);

  const wiring = spec.aps.flatMap((ap) =>
    ap.outputs.map((o) =>
      `${ap.name}.${o.name} -> ${
        o.targets.map((t) => t.kind === "ap" ? `${t.ap}.${t.port}` : `OUT ${t.to ?? "participants"}`).join(
          ", ",
        )
      }`
    )
  );
  assert.deepEqual(wiring, [
    "Dup_V.output1 -> Sync_high.in1",
    "Dup_V.output2 -> Transcode.in",
    "Dup_A.output1 -> Sync_high.in2",
    "Dup_A.output2 -> Sync_low.in2",
    "Transcode.out -> Sync_low.in1",
    "Sync_high.out -> Dup_high.in",
    "Sync_low.out -> Dup_low.in",
    "Dup_high.output1 -> Saver_high.in",
    "Dup_high.output2 -> Reflector_high.in",
    "Dup_low.output1 -> Saver_low.in",
    "Dup_low.output2 -> Reflector_low.in",
    "Reflector_high.out -> OUT participants",
    "Reflector_low.out -> OUT participants",
  ]);
  assert.deepEqual(byName.get("Transcode")!.params.map((a) => a.key), ["output_format", "bitrate", "scale"]);
  assert.deepEqual(byName.get("Sync_low")!.params.map((a) => [a.key, a.values.map(valueText).join(", ")]), [[
    "precision",
    "0.001",
  ]]);
});

/**
 * The plan with each AP's kind given by its name, so that two plans compare as data, without the places the two
 * forms write things at (`at`).
 */
function normalise(plan: SessionPlan): unknown {
  return {
    ...plan,
    aps: plan.aps.map(({ at: _at, ...ap }) => ({
      ...ap,
      kind: ap.kind.name,
      inputs: ap.inputs.map(({ at: _in, ...input }) => input),
    })),
  };
}

Deno.test("parseYamlProgram gives the same session plan as the text form of the program", () => {
  const kinds = coreElements();
  const fromText = planSession(describeSession(parseProgram(FORWARDERS, "appendix_a_forwarders.dipronn")), {
    kinds,
  });
  const fromYaml = planSession(describeSession(parseYamlProgram(YAML_FORM, "appendix_a.yaml")), { kinds });
  assert.equal(fromYaml.aps.length, 11);
  assert.deepEqual(normalise(fromYaml), normalise(fromText));
});

Deno.test("printProgram writes the YAML fixture as the text of appendix_a_forwarders.dipronn", () => {
  const fromYaml = parseYamlProgram(YAML_FORM, "appendix_a.yaml");
  const fromText = parseProgram(FORWARDERS, "appendix_a_forwarders.dipronn");
  assert.deepEqual(stripPositions(fromYaml), stripPositions(fromText));
  assert.equal(printProgram(fromYaml), printProgram(fromText));
});

Deno.test("printProgram turns YAML values the language writes differently into text that parses back", () => {
  const yaml = lines(
    "project: p",
    "owner: 'Say \"hi\" \\ bye'",
    "notifications: mail me",
    "aps:",
    "  - name: A",
    "    ref: localservice.counter",
    "    inputs: in(DIPRONN_INPUT(5000))",
    "    params: {hex: 0x10, half: .5, plus: +5, exp: 1e-3, flag: true, list: [1, two]}",
  );
  const program = parseYamlProgram(yaml, "t.yaml");
  const printed = printProgram(program);
  assert.match(printed, /^notifications = "mail me";$/m);
  assert.match(printed, /^ {4}hex = 16;$/m);
  assert.match(printed, /^ {4}half = 0\.5;$/m);
  assert.match(printed, /^ {4}plus = 5;$/m);
  assert.match(printed, /^ {4}exp = 1e-3;$/m);
  assert.match(printed, /^ {4}list = 1, "two";$/m);
  assert.deepEqual(stripPositions(parseProgram(printed, "t.dipronn")), stripPositions(program));
  assert.equal(describeSession(program).notifications, "mail me");
});

interface Case {
  name: string;
  file?: string;
  text: string;
  errors: Problem[];
}

const AP_OK = '{ AP name="Ok" ref=x; inputs = in(DIPRONN_INPUT(5000)); }';

const MALFORMED: Case[] = [
  // The lexer.
  {
    name: "an unterminated string",
    text: lines("Project p;", 'owner = "Tom Rebok', AP_OK),
    errors: [{ at: "2:9", message: 'Unterminated string: it needs a closing " on the same line' }],
  },
  {
    name: "stray characters, one at the top and one in a block",
    text: lines(
      "Project p;",
      "owner = @x",
      '{ AP name="A" ref=x; $',
      "    inputs = in(DIPRONN_INPUT(5000));",
      "}",
    ),
    errors: [
      { at: "2:9", message: 'Unexpected character "@"' },
      { at: "3:22", message: 'Unexpected character "$"' },
    ],
  },
  {
    name: "a number that is not one and a name ending in a dot",
    text: lines("Project p;", "x = 1e", "y = a."),
    errors: [
      { at: "2:5", message: "Not a number: 1e" },
      { at: "3:6", message: 'A name cannot end with "." here: a.' },
    ],
  },
  // The parser.
  {
    name: "a block never closed",
    text: lines("Project p;", '{ AP name="A" ref=x;', "    inputs = in(DIPRONN_INPUT(5000));"),
    errors: [{ at: "2:1", message: 'The AP block opened here is never closed with "}"' }],
  },
  {
    name:
      "a broken block with another opened inside it at the end: each reported once, not the last { a hundred times",
    text: "Project p;\n{ X {",
    errors: [
      { at: "2:1", message: 'The block opened here is never closed with "}"' },
      { at: "2:3", message: 'Expected AP or VM after "{", found "X"' },
    ],
  },
  {
    name: "a { without AP or VM (the next block is still read)",
    text: lines("Project p;", '{ name="A" ref=x; }', AP_OK),
    errors: [{ at: "2:3", message: 'Expected AP or VM after "{", found "name"' }],
  },
  {
    name: "a header without =",
    text: lines("Project p;", '{ AP name "A" ref=x; }', AP_OK),
    errors: [{ at: "2:11", message: 'Expected "=" after name in the AP header' }],
  },
  {
    name: "two calls missing their )",
    text: lines(
      "Project p;",
      '{ AP name="A" ref=x;',
      "    inputs = in(DIPRONN_INPUT(5000);",
      "    outputs = out(B.in;",
      "}",
    ),
    errors: [
      { at: "3:36", message: 'Expected ")" to close the "(" of in, found ";"' },
      { at: "4:23", message: 'Expected ")" to close the "(" of out, found ";"' },
    ],
  },
  {
    name: "trailing junk after two statements",
    text: lines("Project p;", 'owner = "Tom" extra', "notifications = none none"),
    errors: [
      { at: "2:15", message: 'Expected ";" or the end of the line, found "extra"' },
      { at: "3:22", message: 'Expected ";" or the end of the line, found "none"' },
    ],
  },
  {
    name: "} with no block open, twice",
    text: lines("Project p;", "}", 'owner = "x"', "}", AP_OK),
    errors: [
      { at: "2:1", message: 'Unexpected "}": no block is open here' },
      { at: "4:1", message: 'Unexpected "}": no block is open here' },
    ],
  },
  // The session.
  {
    name: "no Project",
    text: lines('owner = "x"', AP_OK),
    errors: [{ at: "1:1", message: "The program has no Project line naming the session" }],
  },
  {
    name: "Project twice",
    text: lines("Project p;", "Project q;", AP_OK),
    errors: [{ at: "2:1", message: "Project is named twice (first at line 1, column 1)", related: "1:1" }],
  },
  {
    name: "an AP name used twice",
    text: lines(
      "Project p;",
      '{ AP name="A" ref=x; inputs = in(DIPRONN_INPUT(5000)); }',
      '{ AP name="A" ref=x; inputs = in(DIPRONN_INPUT(5002)); }',
    ),
    errors: [{
      at: "3:11",
      message: 'AP name "A" is already used (first at line 2, column 11)',
      related: "2:11",
    }],
  },
  {
    name: "an unknown AP in a target",
    text: lines(
      "Project p;",
      '{ AP name="A" ref=x; inputs = in(DIPRONN_INPUT(5000)); outputs = out(Sinc.in); }',
      '{ AP name="Sink" ref=x; inputs = in; }',
    ),
    errors: [{ at: "2:70", message: 'Unknown AP "Sinc" in A.out (did you mean "Sink"?)' }],
  },
  {
    name: "an unknown port in a target",
    text: lines(
      "Project p;",
      '{ AP name="A" ref=x; inputs = in(DIPRONN_INPUT(5000)); outputs = o1(B.inn), o2(B.data); }',
      '{ AP name="B" ref=x; inputs = in, in2; }',
    ),
    errors: [
      { at: "2:69", message: 'B has no input "inn" (did you mean "in"?)' },
      { at: "2:80", message: 'B has no input "data" (its inputs: in, in2)' },
    ],
  },
  {
    name: "DIPRONN_INPUT with ports that are not UDP ports",
    text: lines(
      "Project p;",
      '{ AP name="A" ref=x; inputs = a(DIPRONN_INPUT(70000)), b(DIPRONN_INPUT("x")), c(DIPRONN_INPUT(0)); }',
    ),
    errors: [
      { at: "2:47", message: "DIPRONN_INPUT takes one UDP port number, 1 to 65535" },
      { at: "2:72", message: "DIPRONN_INPUT takes one UDP port number, 1 to 65535" },
      { at: "2:95", message: "DIPRONN_INPUT takes one UDP port number, 1 to 65535" },
    ],
  },
  {
    name: "DIPRONN_OUTPUT with addresses it cannot send to",
    text: lines(
      "Project p;",
      '{ AP name="A" ref=x; inputs = in(DIPRONN_INPUT(5000));',
      '    outputs = a(DIPRONN_OUTPUT("example.com:5004")), b(DIPRONN_OUTPUT("300.1.1.1:5")),',
      '        c(DIPRONN_OUTPUT(5004)), d(DIPRONN_OUTPUT("10.0.0.1:0"));',
      "}",
    ),
    errors: [
      {
        at: "3:32",
        message: 'DIPRONN_OUTPUT needs an IP address and a port other than 0, not "example.com:5004"',
      },
      { at: "3:71", message: 'DIPRONN_OUTPUT: "300.1.1.1" is not a valid IPv4 address' },
      {
        at: "4:26",
        message: 'DIPRONN_OUTPUT(...) takes one "address:port" in quotes, such as "192.0.2.7:5004"',
      },
      { at: "4:51", message: 'DIPRONN_OUTPUT needs an IP address and a port other than 0, not "10.0.0.1:0"' },
    ],
  },
  {
    name: "an input written in(Other.out) (and nothing else: the port is still declared)",
    text: lines(
      "Project p;",
      '{ AP name="A" ref=x; inputs = in(DIPRONN_INPUT(5000)); outputs = out(B.in); }',
      '{ AP name="B" ref=x; inputs = in(A.out); }',
    ),
    errors: [{
      at: "3:34",
      message:
        "An input names its source only as DIPRONN_INPUT(port); APs are wired from the output side (in got A.out)",
    }],
  },
  {
    name: "several session mistakes in one program",
    text: lines(
      "Project p;",
      'ownr = "x"',
      '{ AP name="A" ref=x colour=red;',
      "    inputs = in(DIPRONN_INPUT(5000)), in;",
      "    outputs = out;",
      "}",
      '{ VM ref=img; { AP name="B" ref=x; inputs = in(DIPRONN_INPUT(5002)); } }',
    ),
    errors: [
      { at: "2:1", message: 'Unknown session attribute "ownr" (did you mean "owner"?)' },
      { at: "3:21", message: 'Unknown AP header field "colour"' },
      {
        at: "4:39",
        message: 'Port "in" is declared twice in A (first at line 4, column 14)',
        related: "4:14",
      },
      { at: "5:15", message: 'Output "out" goes nowhere: write out(AP.port) or out(DIPRONN_OUTPUT(...))' },
      { at: "7:1", message: 'The VM block has no name="..."' },
    ],
  },
  // The YAML form.
  {
    name: "YAML: an unknown key",
    file: "t.yaml",
    text: lines("project: p", "aps:", "  - name: A", "    ref: x", "    input: in(DIPRONN_INPUT(5000))"),
    errors: [{ at: "5:5", message: 'Unknown AP key "input" (did you mean "inputs"?)' }],
  },
  {
    name: "YAML: bad port text, placed inside the file",
    file: "t.yaml",
    text: lines(
      "project: p",
      "aps:",
      "  - name: A",
      "    ref: x",
      "    inputs: [in(DIPRONN_INPUT(70000))]",
      "  - name: B",
      "    ref: x",
      '    inputs: "in(DIPRONN_INPUT(0))"',
    ),
    errors: [
      { at: "5:31", message: "DIPRONN_INPUT takes one UDP port number, 1 to 65535" },
      { at: "8:31", message: "DIPRONN_INPUT takes one UDP port number, 1 to 65535" },
    ],
  },
  {
    name: "YAML: port text that does not parse",
    file: "t.yaml",
    text: lines(
      "project: p",
      "aps:",
      "  - name: A",
      "    ref: x",
      "    inputs: in(DIPRONN_INPUT(5000)",
      '    outputs: "out(B.in) junk"',
    ),
    errors: [
      { at: "5:35", message: 'Expected ")" to close the "(" of in, found the end of the file' },
      { at: "6:25", message: 'Unexpected "junk" after the value' },
    ],
  },
  {
    name: "YAML: values the language cannot write",
    file: "t.yaml",
    text: lines(
      "project: p",
      'owner: "two\\nlines"',
      "aps:",
      "  - name: A",
      "    ref: x",
      "    inputs: in(DIPRONN_INPUT(5000))",
      "    params: {speed: .inf}",
    ),
    errors: [
      { at: "2:8", message: "A string in a program is one line" },
      { at: "7:21", message: "Expected a finite number, not .inf" },
    ],
  },
  {
    name: "YAML: a project and a ref that are not names",
    file: "t.yaml",
    text: lines(
      "project: my session",
      "aps:",
      "  - name: A",
      "    ref: my kind",
      "    inputs: in(DIPRONN_INPUT(5000))",
    ),
    // The YAML reader refuses a project that is not a name itself (3f98412), before the session is described.
    errors: [{ at: "1:10", message: "project is a name such as lecture.first_tests, not my session" }],
  },
  {
    name:
      "YAML: ports folded over lines, and mistakes after escapes in quoted ports (at the column as written)",
    file: "t.yaml",
    text: lines(
      "project: p",
      "aps:",
      "  - name: A",
      "    ref: x",
      "    inputs: >-",
      "      in(DIPRONN_INPUT(5000)),",
      "      in2(DIPRONN_INPUT(5001))",
      "  - name: B",
      "    ref: x",
      '    outputs: "out(DIPRONN_OUTPUT(\\"1.2.3.4:5\\")) $"',
      "  - name: C",
      "    ref: x",
      `    outputs: 'out(DIPRONN_OUTPUT("it''s:5")) $'`,
    ),
    errors: [
      {
        at: "5:13",
        message: "Ports are written on one line, plain or quoted (not as a block or folded over lines)",
      },
      { at: "10:50", message: 'Unexpected character "$"' },
      { at: "13:46", message: 'Unexpected character "$"' },
    ],
  },
  {
    name: "YAML: a key given twice",
    file: "t.yaml",
    text: lines("project: p", "project: q"),
    errors: [{ at: "2:1", message: "YAML: Map keys must be unique" }],
  },
];

for (const c of MALFORMED) {
  Deno.test(`describeSession reports every error of a program with ${c.name}`, () => {
    assert.deepEqual(problems(c.text, c.file ?? "t.dipronn"), c.errors);
  });
}

Deno.test("parseProgram reports every error as file:line:col: message in file order", () => {
  const text = lines("Project p;", "owner = @x", "}", "notifications = none none", '{ AP name "A" ref=x; }');
  assert.throws(() => parseProgram(text, "dir/s.dipronn"), (error: unknown) => {
    assert.ok(error instanceof ErrorList);
    assert.equal(
      error.format(),
      [
        'dir/s.dipronn:2:9: Unexpected character "@"',
        'dir/s.dipronn:3:1: Unexpected "}": no block is open here',
        'dir/s.dipronn:4:22: Expected ";" or the end of the line, found "none"',
        'dir/s.dipronn:5:11: Expected "=" after name in the AP header',
      ].join("\n"),
    );
    return true;
  });
});

Deno.test("parseProgram summarises errors beyond a hundred without building them", () => {
  const text = "Project p;\n" + "@\n".repeat(150_000);
  assert.throws(() => parseProgram(text, "t.dipronn"), (error: unknown) => {
    assert.ok(error instanceof ErrorList);
    assert.equal(error.errors.length, 101);
    assert.equal(error.errors[100].message, "More errors not shown (the first 100 are)");
    return true;
  });
});

Deno.test("stripPositions leaves what was written and drops where", () => {
  const a: Program = parseProgram('Project p;\nowner = "x"\n', "a");
  const b: Program = parseProgram('\n\nProject   p\n\n   owner   =   "x";\n', "b");
  assert.deepEqual(stripPositions(a), stripPositions(b));
  assert.notDeepEqual(stripPositions(a), stripPositions(parseProgram('Project p;\nowner = "y"\n', "a")));
});

Deno.test("parseProgram refuses blocks nested deeper than a VM holding APs", () => {
  const text =
    'Project p;\n{ VM name="v" ref=x;\n  { VM name="w" ref=y;\n    { AP name="a" ref=z; }\n  }\n}\n';
  assert.throws(() => parseProgram(text, "t.dipronn"), (error: unknown) => {
    assert.ok(error instanceof ErrorList);
    assert.deepEqual(error.errors.map((e) => e.format()), [
      "t.dipronn:4:5: Blocks nest two deep at most: a VM holding APs",
    ]);
    return true;
  });
});
