/**
 * edgenode as an operator runs it: a real process on 127.0.0.1, its exit codes, its log lines, its status API, and
 * how it stops on SIGTERM and SIGINT.
 */
import assert from "node:assert/strict";
import { builtinRoles } from "../../lib/roles/mod.ts";
import { getJson, getText, LISTENING, runToEnd, startEdgenode, tempConfig } from "./_process.ts";

const ROOT = new URL("../../", import.meta.url);
const VERSION: string = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT))).version;
const TOKEN_ENV = { EDGENODE_TOKEN: "x".repeat(20) };
const RUNNING = /component=main msg=running /;

/** A temporary directory holding one config file; removed on dispose. */
function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.test(`edgenode serves its status and stops cleanly on ${signal} within the drain deadline`, async () => {
    const drainMs = 2_000;
    const marginMs = 5_000;
    const name = `e2e-${signal.toLowerCase()}`;
    await using config = await tempConfig(
      [
        `name: ${name}`,
        "roles: [agent, relay]",
        "agent:",
        "  listen: 127.0.0.1:0",
        "shutdown:",
        "  drain_timeout: 2s",
        "",
      ].join("\n"),
    );
    await using edgenode = startEdgenode(["--config", config.path, "--status", "127.0.0.1:0"]);

    const [, port] = await edgenode.waitForLine(LISTENING);
    // Signal handlers are installed before start-up; waiting for "running" makes this a stop of a started node.
    await edgenode.waitForLine(RUNNING);
    const base = `http://127.0.0.1:${port}`;
    const status = await getJson(`${base}/status`);
    assert.equal(status.name, name);
    assert.equal(status.version, VERSION);
    assert.deepEqual(Object.keys(status.roles as object), ["agent", "relay"]);
    const metrics = await getText(`${base}/metrics`);
    assert.match(
      metrics,
      new RegExp(`^edgenode_build_info\\{name="${name}",version="${VERSION}"\\} 1$`, "m"),
    );
    assert.match(metrics, /^edgenode_http_requests_total 1$/m);

    const sentAt = performance.now();
    edgenode.kill(signal);
    const result = await edgenode.waitForExit(drainMs + marginMs);
    const tookMs = performance.now() - sentAt;

    assert.equal(result.code, 0, result.stderr);
    assert.ok(tookMs < drainMs + marginMs, `stopping took ${Math.round(tookMs)} ms`);
    assert.match(result.stderr, new RegExp(`msg=stopping signal=${signal} drain_timeout_ms=${drainMs}`));
    const stops = [...result.stderr.matchAll(/msg=stopped part=(\w+)$/gm)].map((m) => m[1]);
    assert.deepEqual(stops, ["status", "relay", "agent"], "parts stop in reverse order of start");
    assert.match(result.stderr, /component=main msg="all stopped" failed=0$/m);
  });
}

Deno.test("edgenode --check exits 0 for every shipped config", async () => {
  const files = [...Deno.readDirSync(new URL("config/", ROOT))]
    .filter((e) => e.isFile && e.name.endsWith(".yaml"))
    .map((e) => `config/${e.name}`)
    .sort();
  assert.ok(files.length > 0, "no config/*.yaml found");
  for (const file of files) {
    const result = await runToEnd(["--check", "--config", file], { env: TOKEN_ENV });
    assert.equal(result.code, 0, `${file}: ${result.stderr}`);
    assert.match(result.stdout, new RegExp(`^${escapeRegExp(file)}: config OK \\(roles: `));
  }
});

Deno.test("edgenode --check exits 1 and prints every error of a bad config with its position", async () => {
  await using config = await tempConfig(
    ['name: "bad name!"', "log:", "  level: loud", ""].join("\n"),
  );
  const result = await runToEnd(["--check", "--config", config.path]);
  assert.equal(result.code, 1, result.stderr);
  const at = escapeRegExp(config.path);
  const positioned = result.stderr.split("\n").filter((l) => new RegExp(`^${at}:\\d+:\\d+: `).test(l));
  assert.equal(positioned.length, 2, result.stderr);
  assert.match(positioned[0], new RegExp(`^${at}:1:7: name: `));
  assert.match(positioned[1], new RegExp(`^${at}:3:10: log\\.level: .*"loud"`));
  assert.equal(result.stdout, "");
});

Deno.test("edgenode --check exits 2 with one line naming a missing config file", async () => {
  await using config = await tempConfig("");
  const missing = `${config.path}.missing`;
  const result = await runToEnd(["--check", "--config", missing]);
  assert.equal(result.code, 2);
  const lines = result.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, result.stderr);
  assert.ok(lines[0].includes(missing), result.stderr);
});

for (
  const [what, args, mention] of [
    ["an unknown flag", ["--bogus"], "--bogus"],
    ["an unknown role", ["--role", "nope"], '"nope"'],
  ] as const
) {
  Deno.test(`edgenode exits 2 with one line for ${what}`, async () => {
    const result = await runToEnd(args);
    assert.equal(result.code, 2);
    const lines = result.stderr.trimEnd().split("\n");
    assert.equal(lines.length, 1, result.stderr);
    assert.ok(lines[0].startsWith("edgenode: ") && lines[0].includes(mention), result.stderr);
  });
}

Deno.test("edgenode exits 1 with one clear line when the status port is in use", async () => {
  using held = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const addr = `127.0.0.1:${held.addr.port}`;
  const result = await runToEnd(["--status", addr]);

  assert.equal(result.code, 1, result.stderr);
  const lines = result.stderr.trimEnd().split("\n");
  const errors = lines.filter((l) => l.startsWith("edgenode: "));
  assert.equal(errors.length, 1, result.stderr);
  assert.ok(errors[0].includes("address already in use") && errors[0].includes(addr), errors[0]);
  assert.equal(lines.at(-1), errors[0], "the error is the last line");
  // The roles that had started were stopped, in reverse order, before the error; nothing was listening or running.
  const started = lines.flatMap((l) => /msg=started part=(\w+)/.exec(l)?.[1] ?? []);
  const stopped = lines.flatMap((l) => /msg=stopped part=(\w+)/.exec(l)?.[1] ?? []);
  assert.deepEqual(started, ["agent", "relay", "node"], result.stderr);
  assert.deepEqual(stopped, ["node", "relay", "agent"], result.stderr);
  assert.ok(!lines.some((l) => /msg=(listening|running)\b/.test(l)), result.stderr);
});

// An address in use is the commonest start failure: the line names the config's file:line:col and key.
for (
  const [what, udp, config, key, line, col] of [
    [
      "a scheduler service",
      false,
      (a: string) =>
        `roles: [scheduler]\nscheduler:\n  services:\n    - name: web\n      listen: ${a}\n` +
        `      servers: [{ address: "127.0.0.1:1" }]\n`,
      "scheduler.services[0].listen",
      5,
      15,
    ],
    [
      "a relay",
      true,
      (a: string) =>
        `roles: [relay]\nrelay:\n  relays:\n    - {name: r1, listen: 127.0.0.1:0, targets: [127.0.0.1:9]}\n` +
        `    - {name: r2, listen: ${a}, targets: [127.0.0.1:9]}\n`,
      "relay.relays[1].listen",
      5,
      26,
    ],
    [
      "a reflector's data port",
      true,
      (a: string) =>
        `roles: [relay]\nrelay:\n  reflectors:\n    - name: lecture\n      data: ${a}\n` +
        `      registration: 127.0.0.1:0\n`,
      "relay.reflectors[0].data",
      5,
      13,
    ],
    ["the agent", false, (a: string) => `roles: [agent]\nagent:\n  listen: ${a}\n`, "agent.listen", 3, 11],
    [
      "the cluster link port",
      true,
      (a: string) =>
        `roles: [node]\nnode:\n  cluster:\n    name: brno\n    token: cluster-token-0123456789\n` +
        `    data: ${a}\n    peers:\n      - {name: prague, api: "127.0.0.1:9", data: "127.0.0.1:9"}\n`,
      "node.cluster.data",
      6,
      11,
    ],
  ] as const
) {
  Deno.test(`edgenode exits 1 naming the config's file:line:col when ${what}'s address is in use`, async () => {
    const held = udp
      ? Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 })
      : Deno.listen({ hostname: "127.0.0.1", port: 0 });
    using _closed = { [Symbol.dispose]: () => held.close() };
    const addr = `127.0.0.1:${(held.addr as Deno.NetAddr).port}`;
    await using file = await tempConfig(config(addr));
    const result = await runToEnd(["--config", file.path, "--status", "127.0.0.1:0"]);

    assert.equal(result.code, 1, result.stderr);
    const errors = result.stderr.trimEnd().split("\n").filter((l) => l.startsWith("edgenode: "));
    assert.equal(errors.length, 1, result.stderr);
    assert.ok(errors[0].startsWith(`edgenode: ${file.path}:${line}:${col}: ${key}: `), errors[0]);
    assert.ok(errors[0].includes(addr) && errors[0].includes("address already in use"), errors[0]);
  });
}

Deno.test("edgenode --help exits 0 and lists every role", async () => {
  const result = await runToEnd(["--help"]);
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /^Usage: edgenode /m);
  for (const role of builtinRoles().values()) {
    assert.match(result.stdout, new RegExp(`^  ${role.name} +${escapeRegExp(role.description)}$`, "m"));
  }
});

Deno.test("edgenode --version prints the version", async () => {
  const result = await runToEnd(["--version"]);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout, `edgenode ${VERSION}\n`);
  assert.equal(VERSION, "0.1.0");
});

Deno.test("edgenode runs a role given with --role on its section's defaults", async () => {
  await using edgenode = startEdgenode(["--role", "scheduler", "--status", "127.0.0.1:0"]);
  const [, port] = await edgenode.waitForLine(LISTENING);
  await edgenode.waitForLine(/msg=started part=scheduler/);
  await edgenode.waitForLine(RUNNING);
  const status = await getJson(`http://127.0.0.1:${port}/status`);
  assert.deepEqual(Object.keys(status.roles as object), ["scheduler"]);
  // No services on the defaults: the role runs and says so.
  assert.equal((status.roles as Record<string, { state: string }>).scheduler.state, "running");
  assert.deepEqual((status.roles as Record<string, { services: object }>).scheduler.services, {});

  edgenode.kill("SIGTERM");
  const result = await edgenode.waitForExit();
  assert.equal(result.code, 0, result.stderr);
});
