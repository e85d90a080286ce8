/**
 * Property tests of the config loader, which reads files an operator (or an upload to a node) provides: any text
 * gives a plan or an ErrorList of ConfigErrors with positions, never another exception, and a plan is frozen.
 * Inputs are random text, random trees over the config's own keys, and mutations of the example configs.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { stringify } from "yaml";
import { loadConfig } from "../../lib/config/load.ts";
import { ConfigError, ErrorList } from "../../lib/core/errors.ts";
import { builtinRoles } from "../../lib/roles/mod.ts";
import { anyText, onlyThrows, params } from "./_fuzz.ts";

const roles = builtinRoles();
const ENV: Record<string, string> = { EDGENODE_TOKEN: "0123456789abcdef0123", LO: "127.0.0.1", EMPTY: "" };

function load(text: string): void {
  let plan;
  try {
    plan = loadConfig(text, { file: "fuzz.yaml", roles, env: (n) => ENV[n] });
  } catch (error) {
    onlyThrows(() => {
      throw error;
    }, ErrorList);
    for (const e of (error as ErrorList).errors) {
      assert.ok(e instanceof ConfigError, `${e}`);
      assert.ok(e.line >= 1 && e.col >= 1, `a position: ${e.format()}`);
    }
    return;
  }
  assert.ok(Object.isFrozen(plan) && Object.isFrozen(plan.sections), "a plan is frozen");
}

/** The examples shipped in config/ plus a few with every section written out. */
const SEEDS: string[] = [
  ...[...Deno.readDirSync(new URL("../../config/", import.meta.url))]
    .filter((e) => e.name.endsWith(".yaml"))
    .map((e) => Deno.readTextFileSync(new URL(`../../config/${e.name}`, import.meta.url))),
  `roles: [scheduler]
status: {listen: "127.0.0.1:0", token: \${EDGENODE_TOKEN}, max_body: 1MiB}
scheduler:
  services:
    - name: web
      listen: \${LO}:0
      picker: leastload
      max_per_client: 100
      persistence: 1m
      proxy_protocol: v2
      connect_timeout: 1s
      queue: {max: 10, timeout: 1s}
      check: {interval: 100ms, timeout: 300ms, rise: 2, fall: 2, send: "PING\\n", expect: "PING"}
      servers: [{address: "127.0.0.1:8000-8003", weight: 10, agent: "127.0.0.1:9000"}]
`,
  `roles: [relay, node, agent]
relay:
  udp: auto
  batch: 64
  relays: [{name: v, listen: "0.0.0.0:5004", targets: ["192.0.2.1:5004", "[2001:db8::1]:5004"]}]
  reflectors: [{name: r, listen: "0.0.0.0:5010", registration: "0.0.0.0:5011", max_participants: 10}]
node: {bind: 0.0.0.0, data_dir: /tmp/x, max_sessions: 4, sessions: []}
agent: {listen: "127.0.0.1:0", max_clients: 8}
`,
];
const KEYS = (
  "address agent agent_interval agent_timeout allow allow_sources batch bind buffer cache check command " +
  "connect_timeout data_dir drain_timeout expect fall gso idle_timeout interval level listen log max max_body " +
  "max_clients max_connections max_datagram max_participants max_per_address max_per_client max_sessions name " +
  "node participants persistence picker proxy_protocol queue queue_timeout reflectors registration relay relays " +
  "retries rise roles rules scheduler send servers services sessions shutdown socket_buffer state status targets " +
  "timeout token udp weight agent"
).split(" ");
const scalarText = fc.oneof(
  fc.constantFrom(
    "0",
    "-1",
    "1e309",
    "10s",
    "1ms",
    "99999h",
    "1MiB",
    "1TiB",
    "127.0.0.1:0",
    "[::1]:0",
    "0.0.0.0:65536",
    "host:-1",
    "${EDGENODE_TOKEN}",
    "${MISSING}",
    "${MISSING:-x}",
    "$$",
    "${",
    "all",
    "scheduler",
    "v1",
    "v2",
    "roundrobin",
    "null",
    "~",
    "true",
    "[]",
    "{}",
    "*a",
    "&a x",
    "!!binary x",
    "'",
    '"',
  ),
  fc.string({ maxLength: 12 }),
  fc.integer().map(String),
);
const tree = fc.letrec<{ node: unknown }>((tie) => ({
  node: fc.oneof(
    { depthSize: "small" },
    scalarText,
    fc.integer(),
    fc.double(),
    fc.boolean(),
    fc.constant(null),
    fc.array(tie("node"), { maxLength: 3 }),
    fc.dictionary(fc.oneof(fc.constantFrom(...KEYS), fc.string({ maxLength: 6 })), tie("node"), {
      maxKeys: 4,
    }),
  ),
})).node;

/** A seed with a few edits: a line dropped, doubled or re-indented, a value replaced, a character changed. */
const mutated = fc.tuple(
  fc.constantFrom(...SEEDS),
  fc.array(fc.tuple(fc.nat(), fc.nat({ max: 5 }), scalarText), { minLength: 1, maxLength: 4 }),
).map(([seed, edits]) => {
  const lines = seed.split("\n");
  for (const [at, op, text] of edits) {
    const i = at % lines.length;
    const line = lines[i];
    if (op === 0) lines.splice(i, 1);
    else if (op === 1) lines.splice(i, 0, line);
    else if (op === 2) lines[i] = " " + line;
    else if (op === 3) lines[i] = line.replace(/:\s.*$/, `: ${text}`);
    else if (op === 4) {
      lines[i] = line.slice(0, at % (line.length + 1)) + text + line.slice(at % (line.length + 1));
    } else lines[i] = line.replace(/^#\s?/, "");
  }
  return lines.join("\n");
});

Deno.test("loadConfig gives a frozen plan or an ErrorList of positioned ConfigErrors for any text", () => {
  fc.assert(fc.property(anyText(300), load), params(1000));
});

Deno.test("loadConfig does so for random trees over the config's keys", () => {
  fc.assert(
    fc.property(
      fc.dictionary(fc.constantFrom(...KEYS, "name", "roles", "status", "log", "shutdown"), tree, {
        maxKeys: 6,
      }),
      (t) => load(stringify(t)),
    ),
    params(1000),
  );
});

Deno.test("loadConfig does so for edited example configs", () => {
  fc.assert(fc.property(mutated, load), params(1000));
});
