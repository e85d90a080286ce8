import assert from "node:assert/strict";
import { PROGRAM_USAGE, readProgramFile, runProgramCommand } from "../../lib/cli/program.ts";
import { UsageError } from "../../lib/core/errors.ts";
import { parseProgram } from "../../lib/dipronn/parser.ts";
import { printProgram } from "../../lib/dipronn/printer.ts";

const fixture = (name: string) => Deno.readTextFileSync(new URL(`../fixtures/${name}`, import.meta.url));

/** An io over files held in memory, recording what the command writes. */
function memoryIo(files: Record<string, string>) {
  const out: string[] = [];
  const err: string[] = [];
  return {
    out,
    err,
    io: {
      out: (text: string) => void out.push(text),
      err: (text: string) => void err.push(text),
      readFile: (path: string) =>
        path in files ? Promise.resolve(files[path]) : Promise.reject(new UsageError(`no file ${path}`)),
    },
  };
}

const FILES = {
  "appendix_a.dipronn": fixture("appendix_a.dipronn"),
  "forwarders.dipronn": fixture("appendix_a_forwarders.dipronn"),
  "appendix_a.yaml": fixture("appendix_a.yaml"),
  "yaml.txt": fixture("appendix_a.yaml"),
  "one_error.dipronn": 'Project p;\n{ AP name="A" ref=localservice.counter; inputs = in; }\n',
  "misspelt.dipronn": fixture("appendix_a.dipronn")
    .replace("localservice.transcoder", "localservice.transcodr")
    .replaceAll("localservice.syncer", "localservice.sincer"),
  "broken.dipronn": "Project p;\nowner = @\n}\n",
};

Deno.test("runProgramCommand check prints one OK line for a good program", async () => {
  const { io, out, err } = memoryIo(FILES);
  assert.equal(await runProgramCommand(["check", "forwarders.dipronn"], io), 0);
  assert.deepEqual(out, [
    "forwarders.dipronn: program OK (session synchro_infrastructure.first_tests: 11 APs, " +
    "UDP ports 10000, 10001, 10002, 10003, 12345, 12346, 12354, 12355, use_RTP)\n",
  ]);
  assert.deepEqual(err, []);
});

Deno.test("runProgramCommand check reads a .yaml file as YAML", async () => {
  const { io, out } = memoryIo(FILES);
  assert.equal(await runProgramCommand(["check", "appendix_a.yaml"], io), 0);
  assert.match(
    out.join(""),
    /^appendix_a\.yaml: program OK \(session synchro_infrastructure\.first_tests: 11 APs/,
  );
});

Deno.test("runProgramCommand check passes the report's Appendix A program as written", async () => {
  const { io, out, err } = memoryIo(FILES);
  assert.equal(await runProgramCommand(["check", "appendix_a.dipronn"], io), 0);
  assert.deepEqual(out, [
    "appendix_a.dipronn: program OK (session synchro_infrastructure.first_tests: 11 APs, " +
    "UDP ports 10000, 10001, 10002, 10003, 12345, 12346, 12354, 12355, use_RTP)\n",
  ]);
  assert.deepEqual(err, []);
});

Deno.test("runProgramCommand check prints every error on its own line and exits 1", async () => {
  const { io, out, err } = memoryIo(FILES);
  assert.equal(await runProgramCommand(["check", "misspelt.dipronn"], io), 1);
  assert.deepEqual(out, []);
  const printed = err.join("").split("\n");
  assert.equal(printed.pop(), "", "the output ends with a newline");
  assert.equal(printed.length, 4);
  assert.match(
    printed[0],
    /^misspelt\.dipronn:20:27: Unknown AP kind "localservice\.transcodr" \(did you mean "localservice\.transcoder"\?\) \(known: /,
  );
  assert.match(printed[1], /^misspelt\.dipronn:27:27: Unknown AP kind "localservice\.sincer"/);
  assert.match(printed[2], /^misspelt\.dipronn:32:26: Unknown AP kind "localservice\.sincer"/);
  assert.equal(printed[3], "misspelt.dipronn: 3 errors");
});

Deno.test("runProgramCommand check counts a single error as one", async () => {
  const { io, err } = memoryIo(FILES);
  assert.equal(await runProgramCommand(["check", "one_error.dipronn"], io), 1);
  assert.equal(
    err.join(""),
    "one_error.dipronn:2:50: Input A.in is fed by nothing: wire an output to it or give it DIPRONN_INPUT(port)\n" +
      "one_error.dipronn: 1 error\n",
  );
});

Deno.test("runProgramCommand --format yaml reads a file of any name as YAML", async () => {
  const { io, out } = memoryIo(FILES);
  assert.equal(await runProgramCommand(["check", "yaml.txt", "--format", "yaml"], io), 0);
  assert.match(out.join(""), /^yaml\.txt: program OK/);
  const wrong = memoryIo(FILES);
  assert.equal(
    await runProgramCommand(["check", "yaml.txt"], wrong.io),
    1,
    "without --format it is the language",
  );
});

Deno.test("runProgramCommand print writes a YAML program in the DiProNN language", async () => {
  const { io, out, err } = memoryIo(FILES);
  assert.equal(await runProgramCommand(["print", "appendix_a.yaml"], io), 0);
  assert.deepEqual(err, []);
  const text = out.join("");
  assert.equal(text, printProgram(parseProgram(FILES["forwarders.dipronn"], "forwarders.dipronn")));
  assert.match(text, /^Project synchro_infrastructure\.first_tests;\n/);
  assert.match(text, /^ {4}\{ AP name="Reflector_high" ref=reflector;$/m);
});

Deno.test("runProgramCommand print refuses a program that does not parse", async () => {
  const { io, out, err } = memoryIo(FILES);
  assert.equal(await runProgramCommand(["print", "broken.dipronn"], io), 1);
  assert.deepEqual(out, []);
  assert.equal(
    err.join(""),
    'broken.dipronn:2:9: Unexpected character "@"\n' +
      "broken.dipronn:2:10: Expected a value, found the end of the line\n" +
      'broken.dipronn:3:1: Unexpected "}": no block is open here\n' +
      "broken.dipronn: 3 errors\n",
  );
});

Deno.test("runProgramCommand prints its usage for no action and for --help", async () => {
  for (const args of [[], ["--help"], ["check", "-h"]]) {
    const { io, out, err } = memoryIo(FILES);
    assert.equal(await runProgramCommand(args, io), 0, args.join(" "));
    assert.deepEqual(out, [PROGRAM_USAGE]);
    assert.deepEqual(err, []);
  }
});

Deno.test("runProgramCommand refuses a wrong command line with a usage error", async () => {
  const cases: [string[], RegExp][] = [
    [["run", "a.dipronn"], /^program: unknown action "run" \(check, plan, print\)$/],
    [["check"], /^program check: name the program FILE$/],
    [["print", "a.dipronn", "b.dipronn"], /^program print: one FILE at a time, not b\.dipronn$/],
    [
      ["check", "forwarders.dipronn", "--format", "json"],
      /^program: --format must be one of dipronn, yaml, not "json"$/,
    ],
    [["check", "forwarders.dipronn", "--verbose"], /^program: .*--verbose/],
  ];
  for (const [args, message] of cases) {
    const { io, out, err } = memoryIo(FILES);
    await assert.rejects(runProgramCommand(args, io), (e: unknown) => {
      assert.ok(e instanceof UsageError, `${args.join(" ")}: expected UsageError, got ${e}`);
      assert.match(e.message, message);
      return true;
    });
    assert.deepEqual([out, err], [[], []], "nothing is printed before the usage error");
  }
});

Deno.test("readProgramFile refuses a missing file and a directory as usage errors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(readProgramFile(`${dir}/none.dipronn`), UsageError, "no such file");
    await assert.rejects(readProgramFile(dir), UsageError, "not a regular file");
    await Deno.writeTextFile(`${dir}/p.dipronn`, "Project p;\n");
    assert.equal(await readProgramFile(`${dir}/p.dipronn`), "Project p;\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
