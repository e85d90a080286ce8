import assert from "node:assert/strict";
import { parseCommandLine, usage } from "../../lib/cli/args.ts";
import { UsageError } from "../../lib/core/errors.ts";

const known = { roles: ["scheduler", "agent", "relay", "node"], subcommands: ["program"] };
const parse = (...args: string[]) => parseCommandLine(args, known);

function usageError(args: string[], message: RegExp): void {
  assert.throws(() => parseCommandLine(args, known), (e: unknown) => {
    assert.ok(e instanceof UsageError, `expected UsageError, got ${e}`);
    assert.match(e.message, message);
    assert.doesNotMatch(e.message, /\n/, "usage errors are one line");
    return true;
  });
}

Deno.test("parseCommandLine gives defaults for no arguments", () => {
  assert.deepEqual(parse(), { kind: "run", options: { check: false } });
});

Deno.test("parseCommandLine reads every run option", () => {
  const command = parse(
    "--role",
    "relay,node",
    "--config",
    "config/relay.yaml",
    "--status",
    "[::1]:9090",
    "--name",
    "edge-7",
    "--log-level",
    "debug",
    "--check",
  );
  assert.deepEqual(command, {
    kind: "run",
    options: {
      check: true,
      roles: ["relay", "node"],
      config: "config/relay.yaml",
      status: { host: "::1", port: 9090 },
      name: "edge-7",
      logLevel: "debug",
    },
  });
});

Deno.test("parseCommandLine merges repeated and comma-separated roles without repeats", () => {
  const command = parse("-r", "agent", "--role", "relay, agent", "--role=node");
  assert.equal(command.kind, "run");
  assert.deepEqual(command.kind === "run" && command.options.roles, ["agent", "relay", "node"]);
});

Deno.test("parseCommandLine accepts all as a role", () => {
  const command = parse("--role", "all");
  assert.deepEqual(command.kind === "run" && command.options.roles, ["all"]);
});

Deno.test("parseCommandLine returns help and version before checking other options", () => {
  assert.deepEqual(parse("--help"), { kind: "help" });
  assert.deepEqual(parse("-h", "--role", "relay"), { kind: "help" });
  assert.deepEqual(parse("--version"), { kind: "version" });
  assert.deepEqual(parse("-V"), { kind: "version" });
});

Deno.test("parseCommandLine hands a known sub-command its own arguments", () => {
  assert.deepEqual(parse("program", "check", "--strict", "x.dpn"), {
    kind: "sub",
    name: "program",
    args: ["check", "--strict", "x.dpn"],
  });
});

Deno.test("parseCommandLine rejects bad input with one clear line", () => {
  usageError(["--bogus"], /^Unknown option "--bogus"/);
  usageError(["-x"], /^Unknown option "-x"/);
  usageError(
    ["--role", "nope"],
    /^Option --role: unknown role "nope" \(roles: scheduler, agent, relay, node, all\)$/,
  );
  usageError(["--role", "relay,,node"], /empty role name/);
  usageError(["--status", "8080"], /^Option --status: Cannot parse "8080" as ADDRESS:PORT/);
  usageError(["--status", "10.10.10.10.1:80"], /"10.10.10.10.1" is not a valid IPv4 address/);
  usageError(["--status", "127.0.0.1:65536"], /out of range/);
  usageError(
    ["--log-level", "verbose"],
    /^Option --log-level: "verbose" is not one of debug, info, warn, error$/,
  );
  usageError(["--name", "bad name"], /^Option --name: "bad name" is not a node name/);
  usageError(["--config"], /--config needs a value/);
  usageError(["--config", ""], /--config needs a file name/);
  usageError(["--check", "extra"], /^Unexpected argument "extra"/);
  usageError(["frobnicate"], /^Unknown command "frobnicate" \(commands: program; see --help\)$/);
});

Deno.test("usage lists every role with its description", () => {
  const text = usage("1.2.3", [{ name: "relay", description: "fans streams out" }]);
  assert.match(text, /^edgenode 1\.2\.3/);
  assert.match(text, /relay +fans streams out/);
  assert.match(text, /--check/);
  assert.match(text, /Exit status: 0 stopped cleanly, 1 config or start failure, 2 usage error/);
});
