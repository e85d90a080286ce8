import assert from "node:assert/strict";
import { EMBEDDED_SOURCE, loadConfig } from "../../lib/config/load.ts";
import { applyOverrides, type Plan } from "../../lib/config/plan.ts";
import { ConfigError, ErrorList } from "../../lib/core/errors.ts";
import { builtinRoles } from "../../lib/roles/mod.ts";

const roles = builtinRoles();
const ENV: Record<string, string> = {
  EDGENODE_TOKEN: "0123456789abcdef0123",
  ADDR: "127.0.0.2:9000",
  EMPTY: "",
};
const load = (text: string, env: Record<string, string> = ENV) =>
  loadConfig(text, { file: "edge.yaml", roles, env: (name) => env[name] });

/** Loads text that must fail; returns the formatted error lines. */
function errorsOf(text: string): string[] {
  try {
    load(text);
  } catch (error) {
    assert.ok(error instanceof ErrorList, `expected ErrorList, got ${error}`);
    for (const e of error.errors) assert.ok(e instanceof ConfigError);
    return error.errors.map((e) => e.format());
  }
  assert.fail(`config was accepted:\n${text}`);
}

Deno.test("loadConfig gives the defaults for an empty file", () => {
  const plan = load("");
  assert.equal(plan.source, "edge.yaml");
  assert.equal(plan.name, null);
  assert.deepEqual(plan.roles, ["agent", "relay", "node"]);
  assert.deepEqual(plan.status, {
    listen: { host: "127.0.0.1", port: 8080 },
    token: null,
    max_body: 1024 * 1024,
  });
  assert.deepEqual(plan.log, { level: "info" });
  assert.deepEqual(plan.shutdown, { drain_timeout: 10_000, health_grace: 0 });
  assert.deepEqual(Object.keys(plan.sections), ["scheduler", "agent", "relay", "node"]);
});

Deno.test("loadConfig reads every setting", () => {
  const plan = load(`
name: edge-1
roles: [node, scheduler]
status:
  listen: "[::1]:9090"
  token: \${EDGENODE_TOKEN}
  max_body: 64KiB
log:
  level: debug
shutdown:
  drain_timeout: 1.5s
relay: {}
node:
`);
  assert.equal(plan.name, "edge-1");
  assert.deepEqual(plan.roles, ["scheduler", "node"], "roles run in registry order");
  assert.deepEqual(plan.status, {
    listen: { host: "::1", port: 9090 },
    token: "0123456789abcdef0123",
    max_body: 65536,
  });
  assert.equal(plan.log.level, "debug");
  assert.equal(plan.shutdown.drain_timeout, 1500);
});

Deno.test("loadConfig expands the all role", () => {
  assert.deepEqual(load("roles: [all]").roles, ["scheduler", "agent", "relay", "node"]);
});

Deno.test("loadConfig substitutes the environment into any scalar", () => {
  const plan = load(`
status:
  listen: \${ADDR}
  max_body: \${BODY:-2048}
  token: secret-$$-\${MISSING:-x}-0123456789
name: node-\${MISSING:-x}
shutdown:
  drain_timeout: \${EMPTY:-3s}
`);
  assert.deepEqual(plan.status.listen, { host: "127.0.0.2", port: 9000 });
  assert.equal(plan.status.max_body, 2048);
  assert.equal(plan.status.token, "secret-$-x-0123456789", "$$ is one $ and a default fills an unset name");
  assert.equal(plan.name, "node-x");
  assert.equal(plan.shutdown.drain_timeout, 3000, "an empty variable takes the default");
  assert.deepEqual(errorsOf("name: node-$$1"), [
    `edge.yaml:1:7: name: Expected a node name (letters, digits, '.', '_', '-'), got "node-$1"`,
  ]);
});

Deno.test("loadConfig resolves YAML anchors and aliases", () => {
  const plan = load("status:\n  listen: &addr 127.0.0.1:7000\nname: &n edge-9\n");
  assert.equal(plan.status.listen.port, 7000);
  assert.equal(plan.name, "edge-9");
  assert.deepEqual(load("log: &l {level: warn}\n").log, { level: "warn" });
});

Deno.test("loadConfig returns a deeply frozen plan", () => {
  const plan = load("roles: [relay]");
  assert.ok(Object.isFrozen(plan));
  assert.ok(Object.isFrozen(plan.status));
  assert.ok(Object.isFrozen(plan.status.listen));
  assert.ok(Object.isFrozen(plan.roles));
  assert.throws(() => (plan.roles as string[]).push("node"));
});

// Each mistake with the exact place an operator is sent to. Lines and columns count from 1.
const MISTAKES: [string, string, string][] = [
  [
    "YAML syntax: unclosed flow list",
    "status:\n  listen: [127.0.0.1:80\n",
    "edge.yaml:3:1: YAML: Flow sequence in block collection must be sufficiently indented and end with a ]",
  ],
  ["tab indentation", "status:\n\tlisten: 1\n", "edge.yaml:2:1: YAML: Tabs are not allowed as indentation"],
  [
    "two documents",
    "name: a\n---\nname: b\n",
    "edge.yaml:2:1: YAML: A config file holds one document; another starts here",
  ],
  ["top level is a list", "- a\n- b\n", "edge.yaml:1:1: Expected a mapping of settings, got a list"],
  [
    "unknown top-level key",
    "name: a\nstauts:\n  listen: 127.0.0.1:80\n",
    `edge.yaml:2:1: stauts: Unknown key "stauts" (did you mean "status"?) (known keys: name, roles, status, log, shutdown, process, scheduler, agent, relay, node)`,
  ],
  [
    "unknown nested key",
    "status:\n  lisen: 127.0.0.1:80\n",
    `edge.yaml:2:3: status.lisen: Unknown key "lisen" in status (did you mean "listen"?) (known keys: listen, token, max_body)`,
  ],
  [
    "unknown key in a role section",
    "agent:\n  targets: []\n",
    'edge.yaml:2:3: agent.targets: Unknown key "targets" in agent (known keys: listen, source, port, ' +
    "max_connections, command, command_timeout, on_failure, state, maxconn, min_weight, cache, max_clients, " +
    "timeout)",
  ],
  ["a key that is not text", "1: x\n", "edge.yaml:1:1: Keys must be text, got number 1"],
  [
    "section of the wrong type",
    "log:\n  level: info\nstatus: 8080\n",
    "edge.yaml:3:9: status: Expected a mapping, got number 8080",
  ],
  [
    "address that is not IPv4 (the seed's 10.10.10.10.1)",
    "status:\n  listen: 10.10.10.10.1:80\n",
    `edge.yaml:2:11: status.listen: "10.10.10.10.1" is not a valid IPv4 address`,
  ],
  [
    "address without a port",
    "status:\n  listen: 127.0.0.1\n",
    `edge.yaml:2:11: status.listen: Cannot parse "127.0.0.1" as ADDRESS:PORT (IPv6 in brackets: [::1]:8080)`,
  ],
  [
    "port out of range",
    'status:\n  listen: "127.0.0.1:70000"\n',
    "edge.yaml:2:11: status.listen: Port 70000 is out of range 0..65535",
  ],
  [
    "log level not in the list",
    "log:\n  level: verbose\n",
    `edge.yaml:2:10: log.level: Expected one of debug, info, warn, error, got "verbose"`,
  ],
  [
    "duration without a unit",
    "shutdown:\n  drain_timeout: 10\n",
    "edge.yaml:2:18: shutdown.drain_timeout: Expected a duration such as 500ms, 10s, 2m or 1h, got number 10 (a unit is required)",
  ],
  [
    "duration out of range",
    "shutdown:\n  drain_timeout: 11m\n",
    "edge.yaml:2:18: shutdown.drain_timeout: Duration must be in 0ms..10m, got 11m",
  ],
  [
    "size out of range",
    "status:\n  max_body: 10GiB\n",
    "edge.yaml:2:13: status.max_body: Size must be in 1KiB..64MiB, got 10GiB",
  ],
  [
    "size that is not a size",
    "status:\n  max_body: lots\n",
    `edge.yaml:2:13: status.max_body: Expected a size such as 65536, 64KiB or 1MiB, got "lots"`,
  ],
  [
    "misspelt role",
    "roles: [relay, relya]\n",
    `edge.yaml:1:16: roles[1]: Expected a role: scheduler, agent, relay, node, all, got "relya" (did you mean "relay"?)`,
  ],
  [
    "role repeated",
    "roles:\n  - relay\n  - node\n  - relay\n",
    `edge.yaml:4:5: roles[2]: Repeated value "relay"`,
  ],
  ["no roles", "roles: []\n", "edge.yaml:1:8: roles: Expected at least 1 item, got 0"],
  ["roles not a list", "roles: relay\n", `edge.yaml:1:8: roles: Expected a list, got "relay"`],
  [
    "unset environment variable",
    "status:\n  token: ${NOPE_TOKEN}\n",
    `edge.yaml:2:10: status.token: Environment variable "NOPE_TOKEN" is not set`,
  ],
  [
    "malformed environment reference",
    "name: ${bad-ref}\n",
    `edge.yaml:1:7: name: Malformed environment reference "\${bad-ref}" (use \${NAME} or \${NAME:-default})`,
  ],
  [
    "token too short to be a secret",
    "status:\n  token: abc\n",
    "edge.yaml:2:10: status.token: Expected a token of 16..512 characters, got 3",
  ],
  [
    "node name with a space",
    "name: 'bad name'\n",
    `edge.yaml:1:7: name: Expected a node name (letters, digits, '.', '_', '-'), got "bad name"`,
  ],
  [
    "node name that YAML reads as a number",
    "name: 123\n",
    "edge.yaml:1:7: name: Expected a node name (letters, digits, '.', '_', '-'), got number 123 (quote it to make it text)",
  ],
  [
    "empty value where one is needed",
    "log:\n  level:\n",
    "edge.yaml:2:3: log.level: Expected one of debug, info, warn, error, got nothing",
  ],
];

for (const [kind, text, expected] of MISTAKES) {
  Deno.test(`loadConfig reports ${kind} at its line and column`, () => {
    assert.deepEqual(errorsOf(text), [expected]);
  });
}

Deno.test("loadConfig points a duplicate key at both places", () => {
  const text = "name: a\nlog:\n  level: info\nname: b\n";
  assert.deepEqual(errorsOf(text), [`edge.yaml:4:1: name: Duplicate key "name" (first at line 1, column 1)`]);
  try {
    load(text);
  } catch (error) {
    const e = (error as ErrorList).errors[0];
    assert.deepEqual(e.related, { file: "edge.yaml", line: 1, col: 1 });
  }
});

Deno.test("loadConfig reports every error at once, in file order", () => {
  const text = [
    "bogus: 1", //                    line 1
    "status:",
    "  listen: nope", //              line 3
    "  token: short", //              line 4
    "log:",
    "  level: loud", //               line 6
    "roles: [relay, relay]", //       line 7
  ].join("\n");
  assert.deepEqual(errorsOf(text).map((line) => line.split(": ").slice(0, 2).join(": ")), [
    "edge.yaml:1:1: bogus",
    "edge.yaml:3:11: status.listen",
    "edge.yaml:4:10: status.token",
    "edge.yaml:6:10: log.level",
    "edge.yaml:7:16: roles[1]",
  ]);
});

Deno.test("loadConfig caps the error list and says how many it left out", () => {
  const text = Array.from({ length: 130 }, (_, i) => `bad${i}: 1`).join("\n");
  const lines = errorsOf(text);
  assert.equal(lines.length, 101);
  assert.match(lines[100], /30 more errors not shown \(limit 100\)$/);
});

Deno.test("the shipped default config file equals the embedded default", async () => {
  const text = await Deno.readTextFile(new URL("../../config/edgenode.yaml", import.meta.url));
  const fromFile: Plan = load(text);
  const embedded: Plan = loadConfig("", { file: EMBEDDED_SOURCE, roles });
  assert.deepEqual({ ...fromFile, source: "" }, { ...embedded, source: "" });
});

Deno.test("every example in config/ is valid", async () => {
  const dir = new URL("../../config/", import.meta.url);
  const names: string[] = [];
  for await (const entry of Deno.readDir(dir)) if (entry.name.endsWith(".yaml")) names.push(entry.name);
  assert.ok(names.length >= 6, `expected one example per role plus all-in-one and default, got ${names}`);
  for (const name of names) {
    const plan = load(await Deno.readTextFile(new URL(name, dir)));
    assert.ok(plan.roles.length > 0, name);
  }
  for (const role of roles.names()) {
    assert.ok(names.includes(`${role}.yaml`), `config/${role}.yaml is missing`);
  }
});

Deno.test("applyOverrides puts the command line over the config without touching the plan", () => {
  const plan = load("name: cfg\nroles: [relay]\nlog:\n  level: warn\n");
  const over = applyOverrides(plan, {
    roles: ["all"],
    name: "cli",
    status: { host: "0.0.0.0", port: 9999 },
    logLevel: "debug",
  }, roles);
  assert.equal(over.name, "cli");
  assert.deepEqual(over.roles, ["scheduler", "agent", "relay", "node"]);
  assert.deepEqual(over.status.listen, { host: "0.0.0.0", port: 9999 });
  assert.equal(over.status.token, null, "other status settings stay");
  assert.equal(over.log.level, "debug");
  assert.equal(plan.name, "cfg");
  assert.deepEqual(plan.roles, ["relay"]);
  assert.deepEqual(applyOverrides(plan, {}, roles), plan);
});

Deno.test("loadConfig reads process.realtime_priority, 0 by default, and refuses one outside 0..99 at its place", () => {
  assert.deepEqual(load("").process, { realtime_priority: 0, control_socket: null });
  assert.deepEqual(load("process:\n  realtime_priority: 20\n").process, {
    realtime_priority: 20,
    control_socket: null,
  });
  assert.deepEqual(errorsOf("process:\n  realtime_priority: 100\n"), [
    "edge.yaml:2:22: process.realtime_priority: Expected an integer in 0..99, got 100",
  ]);
});
