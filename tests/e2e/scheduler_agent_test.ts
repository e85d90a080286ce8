/**
 * Agents end to end: a real scheduler process polling a scripted agent and a real edgenode agent process, and a real
 * HAProxy polling an edgenode agent. What an operator notices: a server's state, weight and limit in /status and
 * /metrics, and where new clients go. Time is real; every wait polls with a bound.
 */
import assert from "node:assert/strict";
import { AgentStub, Backend, Client, spread } from "../_support/backends.ts";
import { poll as until } from "../_support/until.ts";
import { getJson, LISTENING, requireTools, startEdgenode, tempConfig } from "./_process.ts";
import {
  assertMetrics,
  counts,
  listenPort,
  LO,
  type ServerStatus,
  serverStatus,
  services,
  startScheduler,
  TOKEN,
} from "./_scheduler.ts";

/** An edgenode agent process answering what `replyFile` holds (its `command` source runs `cat` on it). */
async function startAgent(replyFile: string) {
  const config = await tempConfig(`
roles: [agent]
agent:
  listen: ${LO}:0
  source: command
  command: [cat, ${replyFile}]
  cache: 100ms
`);
  const agent = startEdgenode(["--config", config.path, "--status", `${LO}:0`]);
  const [, statusPort] = await agent.waitForLine(LISTENING);
  const status = await getJson(`http://${LO}:${statusPort}/status`);
  const listen = (status.roles as { agent: { listen: string } }).agent.listen;
  return {
    agent,
    port: Number(listen.split(":").pop()),
    async [Symbol.asyncDispose]() {
      await agent[Symbol.asyncDispose]();
      await config[Symbol.asyncDispose]();
    },
  };
}

Deno.test("edgenode scheduler applies agent replies as HAProxy does, from a scripted agent and an edgenode agent", async () => {
  await using p = new Backend("P");
  await using q = new Backend("Q");
  const stub = new AgentStub("50%");
  const dir = await Deno.makeTempDir({ prefix: "edgenode_agent_e2e_" });
  const replyFile = `${dir}/reply`;
  await Deno.writeTextFile(replyFile, "25% maxconn:7\n");
  const held: Client[] = [];
  try {
    await using agent = await startAgent(replyFile);
    await using config = await tempConfig(`
roles: [scheduler]
status:
  token: ${TOKEN}
scheduler:
  services:
    - name: w
      listen: ${LO}:0
      picker: weighted
      agent_interval: 100ms
      check: {interval: 1m}
      servers:
        - {address: "${p.address}", weight: 10, agent: "${stub.address}"}
        - {address: "${q.address}", weight: 10, agent: "${LO}:${agent.port}"}
`);
    const { edgenode, statusPort } = await startScheduler(config);
    await using _ = edgenode;
    const port = listenPort(await services(statusPort), "w");
    const server = (key: string) => serverStatus(statusPort, "w", key);
    /** Waits until the server's status passes `test`, and returns it. */
    const once = (key: string, what: string, test: (s: ServerStatus) => boolean) =>
      until(`${key}: ${what}`, async () => {
        const s = await server(key);
        return test(s) ? s : null;
      });

    // Weight as a percentage of the configured weight, from both agents; maxconn from the edgenode agent.
    await once(p.address, "weight 50%", (s) => s.effective_weight === 5);
    const qs = await once(
      q.address,
      "weight 25% and maxconn 7",
      (s) => s.effective_weight === 2.5 && s.maxconn === 7,
    );
    assert.equal(qs.load_percent, 75);
    assert.equal(qs.last_agent?.reply, "25% maxconn:7 ready\n", "the edgenode agent adds its own state");
    // Smooth weighted round-robin at 5 : 2.5 is two clients to P for every one to Q.
    assert.deepEqual(counts(await spread(port, 30)), { P: 20, Q: 10 });

    // A reply with unreadable words: the readable one applies, the rest is ignored and listed, as HAProxy ignores it.
    stub.reply = "maxconn:x 40% hello";
    const mixed = await once(p.address, "weight 40%", (s) => s.effective_weight === 4);
    assert.equal(mixed.state, "up");
    assert.equal(mixed.maxconn, 0, "maxconn:x is not a limit");
    assert.deepEqual(mixed.last_agent?.problems, [
      'Ignored "maxconn:x": expected maxconn:N with N in 0..2147483647',
      'Ignored unknown word "hello"',
    ]);
    // Over HAProxy's range: read as 25600%, and the weight stops at 256.
    stub.reply = "30000%";
    await once(p.address, "weight capped at 256", (s) => s.effective_weight === 256);

    // drain: no new clients on P, its open connection goes on.
    const onP = await Client.connect(port);
    held.push(onP);
    assert.equal(await onP.readLine(), "P");
    stub.reply = "drain";
    await once(p.address, "drain", (s) => s.state === "drain" && s.effective_weight === 0);
    assert.deepEqual(counts(await spread(port, 6)), { Q: 6 });
    await onP.write("still here\n");
    assert.equal(await onP.readLine(), "still here");

    // maint: P's open connection is closed at once.
    const ended = onP.ended();
    stub.reply = "maint";
    const maintAt = performance.now();
    await once(p.address, "maint", (s) => s.state === "maint");
    assert.ok((await ended) - maintAt < 1000, "P's client was closed as P went into maintenance");
    await assertMetrics(statusPort, [
      `edgenode_scheduler_server_admin_state{service="w",server="${p.address}"} 2`,
      `edgenode_scheduler_server_up{service="w",server="${p.address}"} 0`,
      `edgenode_scheduler_server_healthy{service="w",server="${p.address}"} 1`,
    ]);

    // down takes it out as a failed check would; up and ready with 100% bring it back at its full weight.
    stub.reply = "down #disk full";
    const down = await once(p.address, "down", (s) => s.state === "down");
    assert.equal(down.last_agent?.detail, "down #disk full");
    stub.reply = "up ready 100%";
    await once(p.address, "up at weight 10", (s) => s.state === "up" && s.effective_weight === 10);

    // The edgenode agent's state changes reach the scheduler the same way.
    await Deno.writeTextFile(replyFile, "drain\n");
    await once(q.address, "drain from the edgenode agent", (s) => s.state === "drain");
    assert.deepEqual(counts(await spread(port, 4)), { P: 4 });
    await Deno.writeTextFile(replyFile, "ready 100%\n");
    await once(q.address, "ready again", (s) => s.state === "up" && s.effective_weight === 10);

    // An agent that cannot be reached does not take its server down: P keeps its last report and its clients.
    await stub[Symbol.asyncDispose]();
    const silent = await once(p.address, "agent unreachable", (s) => s.last_agent?.ok === false);
    assert.equal(silent.state, "up");
    assert.equal(silent.effective_weight, 10);
    assert.deepEqual(counts(await spread(port, 4)), { P: 2, Q: 2 });
    await assertMetrics(statusPort, [
      `edgenode_scheduler_server_agent_ok{service="w",server="${p.address}"} 0`,
      `edgenode_scheduler_server_maxconn{service="w",server="${q.address}"} 7`,
      `edgenode_scheduler_server_load_percent{service="w",server="${q.address}"} 0`,
    ]);

    for (const client of held.splice(0)) client[Symbol.dispose]();
    edgenode.kill("SIGTERM");
    const result = await edgenode.waitForExit();
    assert.equal(result.code, 0, result.stderr);
  } finally {
    for (const client of held) client[Symbol.dispose]();
    await stub[Symbol.asyncDispose]();
    await Deno.remove(dir, { recursive: true });
  }
});

const SKIP_HAPROXY_ENV = "EDGENODE_SKIP_HAPROXY";

/** A port free a moment ago, for a peer that cannot be asked to take port 0 and tell (HAProxy's stats page). */
function freePort(): number {
  const listener = Deno.listen({ hostname: LO, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/**
 * A real HAProxy whose one backend server (weight 100) takes its weight and state from the agent on `agentPort`,
 * polled every 100 ms; `server()` reads that server's status and agent-set weight from HAProxy's own stats page.
 */
async function startHaproxy(agentPort: number, serverPort: number) {
  const { haproxy } = await requireTools(
    "the HAProxy agent test",
    ["haproxy"],
    `the Debian package haproxy (make test does), or set ${SKIP_HAPROXY_ENV}=1 to skip this test`,
  );
  const dir = await Deno.makeTempDir({ prefix: "edgenode_haproxy_e2e_" });
  const statsPort = freePort();
  await Deno.writeTextFile(
    `${dir}/haproxy.cfg`,
    `global
  maxconn 100
defaults
  mode tcp
  timeout connect 1s
  timeout client 10s
  timeout server 10s
frontend stats
  mode http
  bind ${LO}:${statsPort}
  stats enable
  stats uri /stats
backend pool
  server s1 ${LO}:${serverPort} weight 100 agent-check agent-port ${agentPort} agent-inter 100ms
`,
  );
  const child = new Deno.Command(haproxy, {
    args: ["-db", "-f", `${dir}/haproxy.cfg`],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const server = async () => {
    const csv = await (await fetch(`http://${LO}:${statsPort}/stats;csv`)).text();
    const [head, ...rows] = csv.split("\n");
    const columns = head.replace(/^# /, "").split(",");
    const row = rows.map((r) => r.split(",")).find((r) => r[0] === "pool" && r[1] === "s1")!;
    // `uweight` is the weight the agent set; `weight` is the one in force, which a server in MAINT does not update.
    return { status: row[columns.indexOf("status")], weight: Number(row[columns.indexOf("uweight")]) };
  };
  await until("HAProxy's stats page", () => server().catch(() => null));
  return {
    server,
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGTERM");
      } catch { /* exited already */ }
      await child.status;
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test({
  name: "HAProxy takes weight and state from an edgenode agent",
  ignore: Deno.env.get(SKIP_HAPROXY_ENV) === "1",
  async fn() {
    await using backend = new Backend("H");
    const dir = await Deno.makeTempDir({ prefix: "edgenode_agent_e2e_" });
    try {
      const replyFile = `${dir}/reply`;
      await Deno.writeTextFile(replyFile, "50%\n");
      await using agent = await startAgent(replyFile);
      await using haproxy = await startHaproxy(agent.port, backend.port);
      const shows = (status: string, weight: number) =>
        until(`HAProxy to show ${status} at weight ${weight}`, async () => {
          const s = await haproxy.server();
          return s.status === status && s.weight === weight;
        });
      await shows("no check", 50);
      await Deno.writeTextFile(replyFile, "drain\n");
      await shows("DRAIN (agent)", 50);
      await Deno.writeTextFile(replyFile, "ready 100%\n");
      await shows("no check", 100);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/**
 * Replies one agent gives both HAProxy and the edgenode scheduler, in order (state and weight carry over from one to
 * the next), with what HAProxy 2.6 shows (status, weight) and what edgenode shows (state, weight before the state
 * is applied: configured x the agent's percentage, `scaled_weight`). Both servers have weight 100.
 */
const SAME_AS_HAPROXY: readonly [reply: string, haproxy: [string, number], edgenode: [string, number]][] = [
  ["50%", ["no check", 50], ["up", 50]],
  ["maxconn:x 40% hello", ["no check", 40], ["up", 40]],
  ["75%% 20%", ["no check", 20], ["up", 20]],
  ["30000%", ["no check", 256], ["up", 256]],
  ["0%", ["no check", 0], ["up", 0]],
  ["100% DRAIN", ["DRAIN (agent)", 100], ["drain", 100]],
  ["ready", ["no check", 100], ["up", 100]],
  ["fail", ["DOWN (agent)", 100], ["down", 100]],
  ["up", ["no check", 100], ["up", 100]],
  ["stopped", ["DOWN (agent)", 100], ["down", 100]],
  ["up", ["no check", 100], ["up", 100]],
  ["down#busy", ["no check", 100], ["up", 100]],
  ["maint 60%", ["MAINT", 60], ["maint", 60]],
  ["ready,up", ["no check", 60], ["up", 60]],
];

Deno.test({
  name:
    "edgenode scheduler reads agent replies, malformed ones included, as HAProxy does, polling the same agent",
  ignore: Deno.env.get(SKIP_HAPROXY_ENV) === "1",
  async fn() {
    await using backend = new Backend("S");
    await using stub = new AgentStub("100%");
    await using haproxy = await startHaproxy(stub.port, backend.port);
    await using config = await tempConfig(`
roles: [scheduler]
scheduler:
  services:
    - name: same
      listen: ${LO}:0
      agent_interval: 100ms
      check: {interval: 1m}
      servers: [{address: "${backend.address}", weight: 100, agent: "${stub.address}"}]
`);
    const { edgenode, statusPort } = await startScheduler(config);
    await using _ = edgenode;
    const edgenodeSees = async () => {
      const s = await serverStatus(statusPort, "same", backend.address);
      return [s.state, s.scaled_weight];
    };
    for (const [reply, hap, en] of SAME_AS_HAPROXY) {
      stub.reply = reply;
      // Both pollers ask at least once more after the change (a reply that changes nothing must not pass early).
      const polls = stub.polls;
      await until(`two more polls after ${JSON.stringify(reply)}`, () => stub.polls >= polls + 4);
      let seen: unknown;
      await until(`${JSON.stringify(reply)} seen as ${hap} by HAProxy and ${en} by edgenode`, async () => {
        const h = await haproxy.server();
        seen = { haproxy: [h.status, h.weight], edgenode: await edgenodeSees() };
        return JSON.stringify(seen) === JSON.stringify({ haproxy: hap, edgenode: en });
      }, 3000).catch((error) => {
        throw new Error(`${error.message}; last seen ${JSON.stringify(seen)}`);
      });
    }
    edgenode.kill("SIGTERM");
    assert.equal((await edgenode.waitForExit()).code, 0);
  },
});
