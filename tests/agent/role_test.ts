/**
 * The agent role as an operator meets it: its config section (defaults, mistakes at their place), real checks
 * over TCP, the reading taken once per cache interval, the state route through `app.request()`, the command
 * source with real commands, and start failures that say what failed.
 */
import assert from "node:assert/strict";
import { roleApp } from "../api/_role_app.ts";
import { agentRole, type AgentSection, type RunningAgent, startAgent } from "../../lib/agent/role.ts";
import type { LoadReaders } from "../../lib/agent/load.ts";
import { loadConfig } from "../../lib/config/load.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { ErrorList, StartError } from "../../lib/core/errors.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { Registry } from "../../lib/core/registry.ts";
import type { RoleDef } from "../../lib/roles/role.ts";
import { readToEnd } from "../_support/tcp.ts";

const TOKEN = "agent-token-0123456789";
const auth = { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" };
const roles = new Registry<RoleDef>("role", [agentRole as RoleDef]);
const defaults = agentRole.section.default as AgentSection;

function section(over: Partial<AgentSection> = {}): AgentSection {
  return { ...defaults, listen: { host: "127.0.0.1", port: 0 }, ...over };
}

/** Fixed /proc text; counts how often the load average is read. */
function fixedLoad(loadavg = "1.00 0.50 0.25 1/89 3828\n") {
  const reads = { loadavg: 0 };
  const readers: LoadReaders = {
    readText(path) {
      if (path === "/proc/loadavg") reads.loadavg++;
      return Promise.resolve(path === "/proc/loadavg" ? loadavg : null);
    },
    cpuCount: () => 4,
    run: () => Promise.resolve({ error: "no commands here" }),
  };
  return { readers, reads };
}

async function start(cfg: AgentSection, readers?: LoadReaders) {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const logger = new Logger({ level: "error", clock, sink: () => {} });
  const metrics = new MetricsRegistry();
  const agent = await startAgent(cfg, { nodeName: "n", logger, metrics, clock }, { readers });
  const app = roleApp("agent", agent, { clock, metrics, logger, token: TOKEN });
  return {
    agent,
    app,
    clock,
    metrics,
    port: Number(String(agent.status().listen).split(":").pop()),
    async [Symbol.asyncDispose]() {
      await agent.stop(new AbortController().signal);
    },
  };
}

function errorsOf(text: string): string[] {
  try {
    loadConfig(text, { file: "a.yaml", roles });
  } catch (error) {
    assert.ok(error instanceof ErrorList);
    return error.errors.map((e) => e.format());
  }
  assert.fail("accepted");
}

Deno.test("agent section has working defaults", () => {
  const plan = loadConfig("agent:\n", { file: "a.yaml", roles });
  assert.deepEqual(plan.sections.agent, {
    listen: { host: "0.0.0.0", port: 9777 },
    source: "loadavg",
    port: null,
    max_connections: 1000,
    command: [],
    command_timeout: 2000,
    on_failure: "keep",
    state: "ready",
    maxconn: null,
    min_weight: 1,
    cache: 1000,
    max_clients: 64,
    timeout: 2000,
  });
});

Deno.test("agent section reads a command source with its settings", () => {
  const plan = loadConfig(
    "agent:\n  listen: 127.0.0.1:9800\n  source: command\n  command: [/usr/local/bin/load, --agent]\n" +
      "  command_timeout: 500ms\n  on_failure: down\n  state: drain\n  maxconn: 30\n  cache: 2s\n",
    { file: "a.yaml", roles },
  );
  const a = plan.sections.agent as AgentSection;
  assert.deepEqual(a.command, ["/usr/local/bin/load", "--agent"]);
  assert.deepEqual([a.command_timeout, a.on_failure, a.state, a.maxconn, a.cache], [
    500,
    "down",
    "drain",
    30,
    2000,
  ]);
});

Deno.test("agent section reports its mistakes at their line and column", () => {
  assert.deepEqual(
    errorsOf("agent:\n  source: memroy\n  state: drained\n  cache: 10ms\n  listen: localhost:1\n"),
    [
      'a.yaml:2:11: agent.source: Expected a source: loadavg, memory, connections, command, got "memroy" ' +
      '(did you mean "memory"?)',
      `a.yaml:3:10: agent.state: Expected one of ready, drain, maint, got "drained" (did you mean "drain"?)`,
      "a.yaml:4:10: agent.cache: Duration must be in 100ms..1m, got 10ms",
      `a.yaml:5:11: agent.listen: Expected an IP address, not the host name "localhost"`,
    ],
  );
  assert.deepEqual(errorsOf("agent:\n  source: connections\n"), [
    `a.yaml:2:11: agent.port: The connections source needs "port": the local port whose connections count`,
  ]);
  assert.deepEqual(errorsOf("agent:\n  source: command\n"), [
    'a.yaml:2:11: agent.command: The command source needs "command": the program and its arguments, ' +
    "such as [/usr/bin/load, -q]",
  ]);
});

Deno.test("agent answers a check over TCP with its reading and closes", async () => {
  const { readers } = fixedLoad();
  await using a = await start(section({ maxconn: 30 }), readers);
  assert.equal(await readToEnd(a.port), "75% maxconn:30 ready\n");
  const status = a.agent.status();
  assert.equal(status.last_reply, "75% maxconn:30 ready");
  assert.equal(status.source, "loadavg");
  assert.equal(status.last_computed, "2026-01-01T00:00:00.000Z");
  assert.match(a.metrics.render(), /edgenode_agent_replies_total 1\n/);
});

Deno.test("agent takes its reading once per cache interval however many checks come", async () => {
  const { readers, reads } = fixedLoad();
  await using a = await start(section({ cache: 1000 }), readers);
  await Promise.all(Array.from({ length: 20 }, () => readToEnd(a.port)));
  assert.equal(reads.loadavg, 1);
  a.clock.advance(1000);
  assert.equal(await readToEnd(a.port), "75% ready\n");
  assert.equal(reads.loadavg, 2);
  assert.equal((a.agent.status().counters as Record<string, number>).readings, 2);
});

Deno.test("agent shows in /status the same figures its /metrics series render", async () => {
  const { readers } = fixedLoad();
  await using a = await start(section(), readers);
  await readToEnd(a.port);
  const counters = a.agent.status().counters as Record<string, number>;
  assert.deepEqual(Object.keys(counters), [
    "connections",
    "replies",
    "errors",
    "refused",
    "readings",
    "reading_failures",
    "active_connections",
    "weight_percent",
  ]);
  const text = a.metrics.render();
  for (const [name, value] of Object.entries(counters)) {
    const series = name === "active_connections" || name === "weight_percent" ? name : `${name}_total`;
    assert.match(text, new RegExp(`^edgenode_agent_${series} ${value}$`, "m"), name);
  }
});

Deno.test("agent state route changes the reply at once and says it is not persisted", async () => {
  const { readers } = fixedLoad();
  await using a = await start(section(), readers);
  const res = await a.app.request("/agent/state", {
    method: "POST",
    headers: auth,
    body: JSON.stringify({ state: "drain" }),
  });
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.deepEqual(
    { state: body.state, previous: body.previous, persisted: body.persisted },
    { state: "drain", previous: "ready", persisted: false },
  );
  assert.match(body.note, /not persisted|restart/);
  assert.equal(await readToEnd(a.port), "75% drain\n");
  const status = await (await a.app.request("/agent")).json();
  assert.equal(status.admin, "drain");
  assert.equal(status.admin_persisted, false);
  assert.equal(status.last_reply, "75% drain");
});

Deno.test("agent state route needs the token and a known state", async () => {
  const { readers } = fixedLoad();
  await using a = await start(section(), readers);
  const anon = await a.app.request("/agent/state", { method: "POST", body: '{"state":"maint"}' });
  assert.equal(anon.status, 401);
  const bad = await a.app.request("/agent/state", { method: "POST", headers: auth, body: '{"state":"off"}' });
  assert.equal(bad.status, 400);
  assert.deepEqual(await bad.json(), { error: 'Body must be {"state": one of ready, drain, maint}' });
  assert.equal(a.agent.admin, "ready");
});

Deno.test("agent command source answers with the command's reply", async () => {
  await using a = await start(section({ source: "command", command: ["/bin/echo", "42%", "drain"] }));
  assert.equal(await readToEnd(a.port), "42% drain\n");
});

Deno.test("agent answers a failing command without a weight, or down when configured", async () => {
  {
    await using a = await start(section({ source: "command", command: ["/bin/false"] }));
    assert.equal(await readToEnd(a.port), 'ready #agent reading failed: "/bin/false" exited with status 1\n');
    assert.equal(a.agent.status().last_error, '"/bin/false" exited with status 1');
  }
  {
    await using a = await start(section({ source: "command", command: ["/bin/false"], on_failure: "down" }));
    assert.equal(
      await readToEnd(a.port),
      'ready down #agent reading failed: "/bin/false" exited with status 1\n',
    );
  }
});

Deno.test("agent answers a command past its timeout as a failed reading", async () => {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const logger = new Logger({ level: "error", clock, sink: () => {} });
  const starting = startAgent(
    section({ source: "command", command: ["/bin/sleep", "30"], command_timeout: 50 }),
    { nodeName: "n", logger, metrics: new MetricsRegistry(), clock },
  );
  clock.advance(50);
  const agent: RunningAgent = await starting;
  try {
    assert.equal(
      await agent.reply(),
      'ready #agent reading failed: "/bin/sleep" did not finish within 50 ms\n',
    );
  } finally {
    await agent.stop(new AbortController().signal);
  }
});

Deno.test("agent start fails naming the source when this machine cannot give the reading", async () => {
  const none: LoadReaders = {
    readText: () => Promise.resolve(null),
    cpuCount: () => 1,
    run: () => Promise.resolve({ error: "unused" }),
  };
  await assert.rejects(
    start(section({ source: "memory" }), none),
    (e) =>
      e instanceof StartError &&
      e.message ===
        "Cannot start agent: source memory: Cannot read /proc/meminfo: no such file " +
          "(the memory source needs Linux)",
  );
});

Deno.test("agent start fails naming the address when the port is taken", async () => {
  const { readers } = fixedLoad();
  await using a = await start(section(), readers);
  await assert.rejects(
    start(section({ listen: { host: "127.0.0.1", port: a.port } }), readers),
    (e) =>
      e instanceof StartError &&
      e.message === `Cannot start agent: cannot listen on tcp 127.0.0.1:${a.port}: address already in use`,
  );
});

Deno.test("agent role runs on this machine's own load average", async () => {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const logger = new Logger({ level: "error", clock, sink: () => {} });
  const running = await agentRole.start(section(), {
    nodeName: "n",
    logger,
    metrics: new MetricsRegistry(),
    clock,
  });
  try {
    const port = Number(String(running.status().listen).split(":").pop());
    assert.match(await readToEnd(port), /^[0-9]{1,3}% ready\n$/);
  } finally {
    await running.stop(new AbortController().signal);
  }
});
