import assert from "node:assert/strict";
import { runProgramCommand } from "../../lib/cli/program.ts";
import { readUsage } from "../../lib/cluster/plan.ts";
import { UsageError } from "../../lib/core/errors.ts";

const read = (path: string) => Deno.readTextFileSync(new URL(path, import.meta.url));
const FOUR_NODES = read("../../config/sessions/presentation_4nodes.dipronn");
const APPENDIX = read("../fixtures/appendix_a.dipronn");

const usage = (...nodes: [string, number, number, number][]) =>
  JSON.stringify(nodes.map(([name, cpu, memory, free_ports]) => ({ name, cpu, memory, free_ports })));
const CITIES = usage(
  ["brno", 0.2, 0.3, 100],
  ["prague", 0.1, 0.3, 100],
  ["liberec", 0.1, 0.3, 100],
  ["pilsen", 0.1, 0.3, 100],
);

/** An io over files held in memory, recording what the command writes. */
function memoryIo(files: Record<string, string>) {
  const out: string[] = [];
  const err: string[] = [];
  const readFile = (path: string) =>
    path in files ? Promise.resolve(files[path]) : Promise.reject(new UsageError(`no file ${path}`));
  return {
    out,
    err,
    io: {
      out: (text: string) => void out.push(text),
      err: (text: string) => void err.push(text),
      readFile,
      readUsageFile: readFile,
    },
  };
}

const FILES = {
  "four.dipronn": FOUR_NODES,
  "appendix.dipronn": APPENDIX,
  "cities.json": CITIES,
  "busy.json": usage(["brno", 0.9, 0.3, 100], ["prague", 0.82, 0.9, 100]),
  "prague_busy.json": usage(["brno", 0.2, 0.3, 100], ["prague", 0.9, 0.3, 100], ["liberec", 0.1, 0.3, 100], [
    "pilsen",
    0.1,
    0.3,
    100,
  ]),
  "empty.json": "[]",
  "bad.json":
    '[\n  {"name": "brno", "cpu": 1.5, "memory": 0.2, "free_ports": 10},\n  {"name": "prague", "cpu": 0.1}\n]\n',
  "broken.json": '[\n  {"name": "brno",\n]\n',
  "bad.dipronn": 'Project p;\n{ AP name="A" ref=localservice.counter; inputs = in; }\n',
};

Deno.test("runProgramCommand plan prints the four-node split, its links and each node's share", async () => {
  const { io, out, err } = memoryIo(FILES);
  assert.equal(await runProgramCommand(["plan", "four.dipronn", "--usage", "cities.json"], io), 0);
  assert.deepEqual(err, []);
  assert.equal(
    out.join(""),
    [
      "Session synchro_infrastructure.first_tests: 11 APs on 4 nodes, 6 links between nodes",
      "",
      "AP              NODE     WHY",
      "Dup_V           brno     pinned to brno",
      "Dup_A           brno     pinned to brno",
      "Transcode       brno     pinned to brno",
      "Sync_high       prague   pinned to prague",
      "Sync_low        liberec  pinned to liberec",
      "Dup_high        prague   pinned to prague",
      "Dup_low         liberec  pinned to liberec",
      "Saver_high      pilsen   pinned to pilsen",
      "Saver_low       pilsen   pinned to pilsen",
      "Reflector_high  prague   with its VM group my_VM_prague: pinned to prague",
      "Reflector_low   liberec  with its VM group my_VM_liberec: pinned to liberec",
      "",
      "FROM              NODE     TO             NODE",
      "Dup_V.output1     brno     Sync_high.in1  prague",
      "Dup_A.output1     brno     Sync_high.in2  prague",
      "Dup_A.output2     brno     Sync_low.in2   liberec",
      "Transcode.out     brno     Sync_low.in1   liberec",
      "Dup_high.output1  prague   Saver_high.in  pilsen",
      "Dup_low.output1   liberec  Saver_low.in   pilsen",
      "",
      "NODE     APS  CPU  CPU AFTER  MEMORY  FREE PORTS  AFTER",
      "brno     3    0.2  0.32       0.3     100         96",
      "prague   3    0.1  0.15       0.3     100         98",
      "liberec  3    0.1  0.15       0.3     100         98",
      "pilsen   2    0.1  0.12       0.3     100         100",
      "",
    ].join("\n"),
  );
});

Deno.test("runProgramCommand plan --json gives the same plan as data", async () => {
  const { io, out } = memoryIo(FILES);
  assert.equal(
    await runProgramCommand([
      "plan",
      "appendix.dipronn",
      "--usage",
      "cities.json",
      "--json",
      "--near",
      "prague",
    ], io),
    0,
  );
  const plan = JSON.parse(out.join(""));
  assert.equal(plan.session, "synchro_infrastructure.first_tests");
  assert.deepEqual(plan.aps[0], {
    ap: "Dup_V",
    node: "brno",
    why: "takes input from outside: on brno, the node that received the request",
  });
  assert.deepEqual(
    plan.aps.filter((a: { node: string }) => a.node === "prague").map((a: { ap: string }) => a.ap),
    ["Reflector_high", "Reflector_low"],
  );
  assert.deepEqual(plan.links, [
    {
      from: "Dup_high",
      output: "output2",
      fromNode: "brno",
      to: "Reflector_high",
      input: "in",
      toNode: "prague",
    },
    {
      from: "Dup_low",
      output: "output2",
      fromNode: "brno",
      to: "Reflector_low",
      input: "in",
      toNode: "prague",
    },
  ]);
  assert.deepEqual(plan.nodes.map((n: { name: string; aps: number }) => [n.name, n.aps]), [
    ["brno", 9],
    ["prague", 2],
    ["liberec", 0],
    ["pilsen", 0],
  ]);
});

Deno.test("runProgramCommand plan --self places the outside inputs on the node named", async () => {
  const { io, out } = memoryIo(FILES);
  assert.equal(
    await runProgramCommand([
      "plan",
      "appendix.dipronn",
      "--usage",
      "cities.json",
      "--self",
      "pilsen",
      "--json",
    ], io),
    0,
  );
  const plan = JSON.parse(out.join(""));
  assert.deepEqual(new Set(plan.aps.map((a: { node: string }) => a.node)), new Set(["pilsen"]));
  assert.deepEqual(plan.links, []);
});

Deno.test("runProgramCommand plan exits 1 with the reason when the session cannot be placed", async () => {
  const busy = memoryIo(FILES);
  assert.equal(await runProgramCommand(["plan", "appendix.dipronn", "--usage", "busy.json"], busy.io), 1);
  assert.deepEqual(busy.out, []);
  assert.equal(
    busy.err.join(""),
    "appendix.dipronn: Cannot place session synchro_infrastructure.first_tests: no node can take Dup_V " +
      "(weight 1, 2 UDP ports): brno: cpu 0.9 + 0.01 for Dup_V > 0.85; prague: memory 0.9 > 0.85\n",
  );
  const pinned = memoryIo(FILES);
  assert.equal(
    await runProgramCommand(["plan", "four.dipronn", "--usage", "prague_busy.json"], pinned.io),
    1,
  );
  assert.equal(
    pinned.err.join(""),
    "four.dipronn: Cannot place session synchro_infrastructure.first_tests: Sync_high is pinned to prague, " +
      "which cannot take it (prague: cpu 0.9 + 0.02 for Sync_high > 0.85)\n",
  );
  const empty = memoryIo(FILES);
  assert.equal(await runProgramCommand(["plan", "four.dipronn", "--usage", "empty.json"], empty.io), 1);
  assert.equal(empty.err.join(""), "empty.json: lists no node: there is nowhere to place the session\n");
});

Deno.test("runProgramCommand plan reports a malformed usage file at its lines", async () => {
  const bad = memoryIo(FILES);
  assert.equal(await runProgramCommand(["plan", "four.dipronn", "--usage", "bad.json"], bad.io), 1);
  assert.equal(
    bad.err.join(""),
    "bad.json:2:27: cpu is a share from 0 to 1, not 1.5\n" +
      'bad.json:3:3: The node usage has no "memory"\n' +
      'bad.json:3:3: The node usage has no "free_ports"\n' +
      "bad.json: 3 errors\n",
  );
  const broken = memoryIo(FILES);
  assert.equal(await runProgramCommand(["plan", "four.dipronn", "--usage", "broken.json"], broken.io), 1);
  assert.match(broken.err.join(""), /^broken\.json:\d+:\d+: Invalid JSON: /);
  assert.match(broken.err.join(""), /\nbroken\.json: \d+ errors?\n$/);
});

Deno.test("runProgramCommand plan reports a program's mistakes as check does", async () => {
  const { io, out, err } = memoryIo(FILES);
  assert.equal(await runProgramCommand(["plan", "bad.dipronn", "--usage", "cities.json"], io), 1);
  assert.deepEqual(out, []);
  assert.equal(
    err.join(""),
    "bad.dipronn:2:50: Input A.in is fed by nothing: wire an output to it or give it DIPRONN_INPUT(port)\n" +
      "bad.dipronn: 1 error\n",
  );
});

Deno.test("runProgramCommand plan refuses a command line without --usage, and plan's options elsewhere", async () => {
  const cases: [string[], string][] = [
    [["plan", "four.dipronn"], "program plan: name the nodes' usage with --usage USAGE.json"],
    [["check", "four.dipronn", "--usage", "cities.json"], "program check: --usage belongs to program plan"],
    [["print", "four.dipronn", "--json"], "program print: --json belongs to program plan"],
  ];
  for (const [args, message] of cases) {
    const { io, out, err } = memoryIo(FILES);
    await assert.rejects(runProgramCommand(args, io), (e: unknown) => {
      assert.ok(e instanceof UsageError);
      assert.equal(e.message, message);
      return true;
    });
    assert.deepEqual([out, err], [[], []]);
  }
});

Deno.test("readUsage reads NodeUsage objects, keeping the optional figures and refusing repeats", () => {
  const nodes = readUsage(
    JSON.stringify([
      { name: "brno", cpu: 0.2, memory: 0.3, free_ports: 10, pps_in: 5000, sessions: 1, version: "x" },
      { name: "prague", cpu: 0, memory: 1, free_ports: 0 },
    ]),
    "u.json",
  );
  assert.deepEqual(nodes, [
    { name: "brno", cpu: 0.2, memory: 0.3, free_ports: 10, pps_in: 5000, sessions: 1 },
    { name: "prague", cpu: 0, memory: 1, free_ports: 0 },
  ]);
  assert.throws(
    () =>
      readUsage(
        '[{"name": "a", "cpu": 0, "memory": 0, "free_ports": 1},\n {"name": "a", "cpu": 0, "memory": 0, "free_ports": 1}]',
        "u.json",
      ),
    (e: unknown) => {
      assert.match(String((e as AggregateError).errors[0].format()), /^u\.json:2:2: Node a is listed twice/);
      return true;
    },
  );
  assert.throws(() => readUsage('{"name": "a"}', "u.json"), /Invalid usage file/);
});
