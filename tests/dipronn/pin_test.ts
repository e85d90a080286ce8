import assert from "node:assert/strict";
import { ErrorList } from "../../lib/core/errors.ts";
import { stripPositions } from "../../lib/dipronn/ast.ts";
import { parseProgram } from "../../lib/dipronn/parser.ts";
import { printProgram } from "../../lib/dipronn/printer.ts";
import { describeSession } from "../../lib/dipronn/session.ts";
import { parseYamlProgram } from "../../lib/dipronn/yaml.ts";

const lines = (...ls: string[]) => ls.join("\n") + "\n";

const PINNED = lines(
  "Project pins;",
  '{ AP name="In" ref=localservice.duplicator;',
  '    node = "brno";',
  "    inputs = in(DIPRONN_INPUT(10000));",
  "    outputs = a(Refl.in);",
  "}",
  '{ VM name="vm" ref=img;',
  '    node = "prague";',
  '    { AP name="Refl" ref=reflector; inputs = in, participant_registration(DIPRONN_INPUT(12345));',
  "      outputs = out(DIPRONN_OUTPUT); }",
  "}",
);

function errors(text: string, parse = parseProgram): string[] {
  try {
    describeSession(parse(text, "t.dipronn"));
  } catch (error) {
    assert.ok(error instanceof ErrorList);
    return error.errors.map((e) => e.format());
  }
  assert.fail("expected the program to be refused");
}

Deno.test("describeSession reads an AP's node pin apart from its parameters, and a VM group's pin", () => {
  const spec = describeSession(parseProgram(PINNED, "t.dipronn"));
  const [input, refl] = spec.aps;
  assert.deepEqual(input.node, { name: "brno", pos: { line: 3, col: 12 } });
  assert.deepEqual(input.params, [], "node is a placement pin, not the kind's parameter");
  assert.equal(refl.node, null);
  assert.deepEqual(spec.vms.map((v) => [v.name, v.aps, v.node]), [
    ["vm", ["Refl"], { name: "prague", pos: { line: 8, col: 12 } }],
  ]);
  const unpinned = describeSession(parseProgram(PINNED.replaceAll(/ *node = "[a-z]+";\n/g, ""), "t.dipronn"));
  assert.deepEqual([unpinned.aps[0].node, unpinned.vms[0].node], [null, null]);
});

Deno.test("describeSession refuses a pin that names no node, and a VM group pinned twice", () => {
  assert.deepEqual(
    errors(
      PINNED.replace('node = "brno"', "node = 5").replace(
        'node = "prague";',
        'node = "prague";\nnode = "x";',
      ),
    ),
    [
      't.dipronn:3:12: node names the node to run on, such as node = "prague" (letters, digits, "_" and "-"), not 5',
      't.dipronn:9:1: "node" is given twice (first at line 8, column 5)',
    ],
  );
  assert.deepEqual(errors(PINNED.replace('node = "brno"', 'node = "brno", "prague"')), [
    't.dipronn:3:12: node names the node to run on, such as node = "prague" (letters, digits, "_" and "-"), not "brno", "prague"',
  ]);
  assert.deepEqual(errors(PINNED.replace('node = "prague"', "owner = x")), [
    't.dipronn:8:5: A VM block holds only AP blocks and node = "..."; found owner',
  ]);
});

Deno.test("printProgram keeps pins, and the YAML form gives the same tree", () => {
  const program = parseProgram(PINNED, "t.dipronn");
  const printed = printProgram(program);
  assert.match(printed, /^ {4}node = "prague";$/m);
  assert.deepEqual(stripPositions(parseProgram(printed, "t.dipronn")), stripPositions(program));
  const yaml = lines(
    "project: pins",
    "aps:",
    "  - name: In",
    "    ref: localservice.duplicator",
    "    inputs: in(DIPRONN_INPUT(10000))",
    "    outputs: a(Refl.in)",
    "    params: {node: brno}",
    "vms:",
    "  - name: vm",
    "    ref: img",
    "    node: prague",
    "    aps:",
    "      - name: Refl",
    "        ref: reflector",
    "        inputs: [in, participant_registration(DIPRONN_INPUT(12345))]",
    "        outputs: out(DIPRONN_OUTPUT)",
  );
  const spec = describeSession(parseYamlProgram(yaml, "t.yaml"));
  assert.equal(spec.aps[0].node?.name, "brno");
  assert.equal(spec.vms[0].node?.name, "prague");
  const pins = (s: typeof spec) => [
    s.aps.map((ap) => [ap.name, ap.vm, ap.node?.name ?? null, ap.params.length]),
    s.vms.map((v) => [v.name, v.aps, v.node?.name ?? null]),
  ];
  assert.deepEqual(pins(spec), pins(describeSession(program)));
});

Deno.test("describeSession reads on_node_loss from the language and the YAML form alike, and refuses another value", () => {
  const text = lines("Project lossy;", "on_node_loss = restart;", PINNED.split("\n").slice(1).join("\n"));
  assert.equal(describeSession(parseProgram(text, "p.dipronn")).onNodeLoss, "restart");
  const yaml = lines(
    "project: lossy",
    "on_node_loss: restart",
    "aps:",
    "  - name: In",
    "    ref: localservice.duplicator",
    "    inputs: [in(DIPRONN_INPUT(10000))]",
    "    outputs: [a(DIPRONN_OUTPUT)]",
  );
  assert.equal(describeSession(parseYamlProgram(yaml, "p.yaml")).onNodeLoss, "restart");
  assert.throws(
    () => describeSession(parseYamlProgram(yaml.replace("restart", "maybe"), "p.yaml")),
    (e: Error) =>
      e instanceof ErrorList &&
      /p\.yaml:2:\d+: on_node_loss is stop or restart, not maybe/.test(
        e.message + e.errors.map((x) => x.format()).join("\n"),
      ),
  );
});
