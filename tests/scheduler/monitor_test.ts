/**
 * Health checks and agent polls on a ManualClock with a scripted network exchange: when checks leave, how rise and
 * fall move servers, what agent replies (good, malformed, missing) do, and that nothing piles up or outlives stop().
 * The last tests drive the real exchange (`tcpExchange`) against loopback peers.
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { yieldToEventLoop } from "../../lib/core/yield.ts";
import type { HostPort } from "../../lib/net/address.ts";
import { type ExchangeOptions, type ExchangeResult, tcpExchange } from "../../lib/net/tcp/exchange.ts";
import {
  type AdminState,
  expandServers,
  type SchedulerSection,
  schedulerSection,
  type ServerSpec,
  type ServiceSettings,
} from "../../lib/scheduler/config.ts";
import { MAX_AGENT_REPLY } from "../../lib/net/agent_check.ts";
import { Monitor } from "../../lib/scheduler/monitor.ts";
import { Server, type Transition } from "../../lib/scheduler/server.ts";
import { AgentStub, Backend } from "../_support/backends.ts";
import { until } from "../_support/until.ts";

const DEFAULTS: ServiceSettings = (schedulerSection.default as SchedulerSection).rules_service;

type CheckSettings = ServiceSettings["check"];

function settings(over: Partial<Omit<ServiceSettings, "check">> & { check?: Partial<CheckSettings> } = {}) {
  return { ...DEFAULTS, ...over, check: { ...DEFAULTS.check, ...over.check } } as ServiceSettings;
}

function spec(port: number, agentPort: number | null = null): ServerSpec {
  return {
    address: { host: "127.0.0.1", low: port, high: port },
    weight: 10,
    agent: agentPort === null ? null : { host: "127.0.0.1", port: agentPort },
    maxconn: 0,
    state: "ready" as AdminState,
  };
}

/** The network as a script: answers by address ("ok" unless told), every call recorded with its time. */
class Script {
  readonly calls: { at: number; to: string; options: ExchangeOptions }[] = [];
  readonly answers = new Map<string, ExchangeResult | "hang">();
  readonly #hung: ((r: ExchangeResult) => void)[] = [];

  constructor(private readonly clock: ManualClock) {}

  readonly exchange = (addr: HostPort, options: ExchangeOptions): Promise<ExchangeResult> => {
    const to = `${addr.host}:${addr.port}`;
    this.calls.push({ at: this.clock.now(), to, options });
    const answer = this.answers.get(to) ?? { ok: true, reply: "" };
    if (answer === "hang") {
      const { promise, resolve } = Promise.withResolvers<ExchangeResult>();
      this.#hung.push(resolve);
      return promise;
    }
    return Promise.resolve(answer);
  };

  /** Settles every exchange left hanging with `result`. */
  release(result: ExchangeResult): void {
    for (const resolve of this.#hung.splice(0)) resolve(result);
  }

  to(where: string): number[] {
    return this.calls.filter((c) => c.to === where).map((c) => c.at);
  }
}

function setup(specs: ServerSpec[], over: Parameters<typeof settings>[0] = {}) {
  const clock = new ManualClock(0);
  const lines: string[] = [];
  const logger = new Logger({ level: "info", clock, sink: (l) => lines.push(l) });
  const s = settings(over);
  const servers = expandServers(specs).map((p) => new Server(p, s.check.rise, s.check.fall, clock.now()));
  const script = new Script(clock);
  const changes: [string, Exclude<Transition, null>][] = [];
  const monitor = new Monitor(servers, s, {
    clock,
    logger,
    service: "svc",
    exchange: script.exchange,
    onChange: (server, t) => changes.push([server.key, t]),
  });
  return {
    clock,
    lines,
    servers,
    script,
    changes,
    monitor,
    /** Moves the clock by `ms` and lets the checks that fell due finish. */
    async tick(ms: number) {
      clock.advance(ms);
      for (let i = 0; i < 3; i++) await yieldToEventLoop();
    },
    [Symbol.dispose]: () => monitor.stop(),
  };
}

Deno.test("Monitor spreads a service's first checks over the interval, then checks each server every interval", async () => {
  using env = setup([spec(1), spec(2), spec(3), spec(4)], { check: { interval: 1000 } });
  env.monitor.start();
  await env.tick(0);
  for (let i = 0; i < 4; i++) await env.tick(250);
  assert.deepEqual(
    env.script.calls.map((c) => [c.at, c.to]),
    [
      [0, "127.0.0.1:1"],
      [250, "127.0.0.1:2"],
      [500, "127.0.0.1:3"],
      [750, "127.0.0.1:4"],
      [1000, "127.0.0.1:1"],
    ],
  );
  assert.equal(env.monitor.checks, 5);
  assert.equal(env.monitor.agentPolls, 0, "no agent configured, none polled");
});

Deno.test("Monitor takes a failing server down after `fall` checks and re-enables it after `rise`", async () => {
  using env = setup([spec(1)], { check: { interval: 1000, rise: 2, fall: 3 } });
  const [server] = env.servers;
  env.script.answers.set("127.0.0.1:1", { ok: false, error: "127.0.0.1:1: connection refused" });
  env.monitor.start();
  await env.tick(0);
  await env.tick(1000);
  assert.equal(server.state, "up", "two failures of three");
  assert.deepEqual(env.changes, []);
  await env.tick(1000);
  assert.equal(server.state, "down");
  assert.deepEqual(env.changes, [["127.0.0.1:1", "down"]]);
  assert.match(
    env.lines.at(-1)!,
    /level=warn .*msg="server down" service=svc server=127\.0\.0\.1:1 detail="127\.0\.0\.1:1: connection refused"/,
  );
  await env.tick(1000);
  assert.deepEqual(env.changes.length, 1, "no second 'down' while it stays down");

  env.script.answers.delete("127.0.0.1:1");
  await env.tick(1000);
  assert.equal(server.state, "down", "one good check of two");
  await env.tick(1000);
  assert.equal(server.state, "up");
  assert.deepEqual(env.changes, [["127.0.0.1:1", "down"], ["127.0.0.1:1", "up"]]);
  assert.match(env.lines.at(-1)!, /level=info .*msg="server up" service=svc server=127\.0\.0\.1:1 detail=ok/);
  assert.deepEqual(server.lastCheck, { at: 5000, ok: true, detail: "ok" });
});

Deno.test("Monitor does not take a server down for checks that failed for want of this host's own descriptors", async () => {
  using env = setup([spec(1)], { check: { interval: 1000, fall: 1 } });
  const [server] = env.servers;
  env.script.answers.set("127.0.0.1:1", {
    ok: false,
    error: "Cannot connect to 127.0.0.1:1: Too many open files (os error 24)",
    local: true,
  });
  env.monitor.start();
  await env.tick(0);
  await env.tick(1000);
  assert.equal(env.monitor.checks, 2, "the checks ran");
  assert.equal(server.state, "up");
  assert.deepEqual(env.changes, []);
  assert.equal(server.lastCheck, null, "a check that says nothing about the server is not its last check");
});

Deno.test("Monitor hands the check's timeout, send and expect to the exchange", async () => {
  using env = setup([spec(1)], { check: { interval: 1000, timeout: 300, send: "PING\n", expect: "PONG" } });
  env.monitor.start();
  await env.tick(0);
  const { options } = env.script.calls[0];
  assert.equal(options.timeoutMs, 300);
  assert.equal(options.send, "PING\n");
  assert.equal(options.expect, "PONG");
  assert.equal(options.clock, env.clock, "the timeout runs on the injected clock");
});

Deno.test("Monitor applies agent replies as HAProxy would: weight, maxconn, drain, maint, down, up", async () => {
  using env = setup([spec(1, 9001)], {
    agent_interval: 500,
    agent_timeout: 200,
    check: { interval: 60_000 },
  });
  const [server] = env.servers;
  const agent = "127.0.0.1:9001";
  const reply = async (text: string) => {
    env.script.answers.set(agent, { ok: true, reply: text });
    await env.tick(500);
    return server;
  };
  env.monitor.start();
  env.script.answers.set(agent, { ok: true, reply: "50% maxconn:3\n" });
  await env.tick(0);
  assert.equal(server.weight, 5, "50% halves the configured weight of 10");
  assert.equal(server.maxconn, 3);
  const poll = env.script.calls.find((c) => c.to === agent)!.options;
  assert.equal(poll.read, true);
  assert.equal(poll.timeoutMs, 200);
  assert.ok(poll.maxBytes! <= MAX_AGENT_REPLY + 1, "an agent's reply is read with a small bound");

  assert.equal((await reply("drain\n")).state, "drain");
  assert.equal(server.available, false);
  assert.equal((await reply("ready\n")).state, "up");
  const signal = server.signal;
  assert.equal((await reply("maint\n")).state, "maint");
  assert.equal(signal.aborted, true, "maint closes the open connections");
  assert.equal((await reply("ready\n")).state, "up");
  assert.deepEqual(env.changes, [], "administrative states are no up/down transitions");
  assert.equal((await reply("down #disk full\n")).state, "down");
  assert.deepEqual(env.changes, [["127.0.0.1:1", "down"]]);
  assert.equal((await reply("up\n")).state, "up");
  assert.deepEqual(env.changes, [["127.0.0.1:1", "down"], ["127.0.0.1:1", "up"]]);
  assert.equal((await reply("100%\n")).weight, 10);
  assert.equal(env.monitor.agentPolls, 8);
});

Deno.test("Monitor ignores a malformed agent reply, says so once in the log, and keeps the server as it was", async () => {
  using env = setup([spec(1, 9001)], { agent_interval: 500, check: { interval: 60_000 } });
  const [server] = env.servers;
  env.script.answers.set("127.0.0.1:9001", { ok: true, reply: "25%\n" });
  env.monitor.start();
  await env.tick(0);
  assert.equal(server.weight, 2.5);
  env.script.answers.set("127.0.0.1:9001", { ok: true, reply: "load=high 12x% maxconn:-1\n" });
  const before = env.lines.length;
  await env.tick(500);
  assert.equal(server.weight, 2.5);
  assert.equal(server.maxconn, 0);
  assert.equal(server.state, "up");
  assert.deepEqual(env.changes, []);
  const warned = env.lines.slice(before);
  assert.equal(warned.length, 1);
  assert.match(
    warned[0],
    /level=warn .*msg="agent reply has words it cannot use" service=svc server=127\.0\.0\.1:1/,
  );
  assert.match(warned[0], /Ignored unknown word/);
  assert.deepEqual(server.lastAgent?.problems.length, 3);
  assert.equal(server.lastAgent?.ok, true, "the agent answered; what it said was unusable");
});

Deno.test("Monitor does not mark a server down when only its agent is unreachable", async () => {
  using env = setup([spec(1, 9001)], { agent_interval: 500, check: { interval: 60_000, fall: 1 } });
  const [server] = env.servers;
  env.script.answers.set("127.0.0.1:9001", { ok: false, error: "127.0.0.1:9001: connection refused" });
  env.monitor.start();
  await env.tick(0);
  for (let i = 0; i < 5; i++) await env.tick(500);
  assert.equal(env.monitor.agentPolls, 6);
  assert.equal(server.state, "up");
  assert.equal(server.weight, 10);
  assert.deepEqual(env.changes, []);
  assert.equal(server.lastAgent?.ok, false);
  assert.equal(server.lastAgent?.detail, "127.0.0.1:9001: connection refused");
});

Deno.test("Monitor keeps at most one check per server in flight and re-arms after it ends", async () => {
  using env = setup([spec(1)], { check: { interval: 1000 } });
  env.script.answers.set("127.0.0.1:1", "hang");
  env.monitor.start();
  await env.tick(0);
  for (let i = 0; i < 5; i++) await env.tick(1000);
  assert.deepEqual(env.script.to("127.0.0.1:1"), [0], "a hanging check is not stacked on");
  env.script.answers.delete("127.0.0.1:1");
  env.script.release({ ok: true, reply: "" });
  await env.tick(0);
  assert.equal(env.monitor.checks, 1);
  await env.tick(1000);
  assert.deepEqual(env.script.to("127.0.0.1:1"), [0, 6000]);
});

Deno.test("Monitor stop() clears its timers and drops a result that arrives afterwards", async () => {
  using env = setup([spec(1, 9001), spec(2)], { check: { interval: 1000, fall: 1 } });
  env.script.answers.set("127.0.0.1:1", "hang");
  env.monitor.start();
  await env.tick(0);
  assert.ok(env.clock.pending > 0);
  env.monitor.stop();
  assert.equal(env.clock.pending, 0);
  env.script.release({ ok: false, error: "late" });
  await env.tick(10_000);
  assert.equal(env.servers[0].lastCheck, null);
  assert.equal(env.servers[0].state, "up");
  assert.deepEqual(env.changes, []);
});

// The real exchange, against loopback peers.

Deno.test("tcpExchange reads an agent's one-line reply", async () => {
  await using agent = new AgentStub("75% drain #busy");
  const result = await tcpExchange({ host: "127.0.0.1", port: agent.port }, {
    timeoutMs: 2000,
    clock: new ManualClock(),
    read: true,
    maxBytes: 512,
  });
  assert.deepEqual(result, { ok: true, reply: "75% drain #busy\n" });
});

Deno.test("tcpExchange with send/expect passes when the reply holds `expect` and fails when it does not", async () => {
  await using backend = new Backend("echo");
  const clock = new ManualClock();
  const addr = { host: "127.0.0.1", port: backend.port };
  assert.deepEqual(
    await tcpExchange(addr, { timeoutMs: 2000, clock, send: "PING\n", expect: "PING" }),
    { ok: true, reply: "echo\nPING\n" },
  );
  await using agent = new AgentStub("nope");
  assert.deepEqual(
    await tcpExchange({ host: "127.0.0.1", port: agent.port }, { timeoutMs: 2000, clock, expect: "PONG" }),
    { ok: false, error: `127.0.0.1:${agent.port}: reply does not contain "PONG"` },
  );
});

Deno.test("tcpExchange reports a refused connect as a result, not a throw", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  assert.deepEqual(
    await tcpExchange({ host: "127.0.0.1", port }, { timeoutMs: 2000, clock: new ManualClock() }),
    {
      ok: false,
      error: `Cannot connect to 127.0.0.1:${port}: connection refused`,
    },
  );
});

Deno.test("tcpExchange gives up after timeoutMs on its clock when the peer never answers", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) held.push(conn);
  })();
  try {
    const clock = new ManualClock();
    const result = tcpExchange({ host: "127.0.0.1", port }, { timeoutMs: 500, clock, read: true });
    await until("the check to connect", () => held.length === 1);
    clock.advance(499);
    let settled = false;
    result.then(() => settled = true);
    for (let i = 0; i < 5; i++) await yieldToEventLoop();
    assert.equal(settled, false, "still waiting 1 ms before its deadline");
    clock.advance(1);
    assert.deepEqual(await result, { ok: false, error: `127.0.0.1:${port}: no answer within 500 ms` });
    assert.equal(clock.pending, 0, "no timer left behind");
  } finally {
    listener.close();
    await accepting.catch(() => {});
    for (const c of held) c.close();
  }
});
