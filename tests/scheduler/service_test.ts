/**
 * A virtual service in this process, with real loopback sockets between clients, the service and backends, and its
 * timers on a ManualClock; health checks and agent polls answer from a script. What a client notices: which server
 * answers, whether it waits or is closed at once, when an open connection is cut, and what reaches the server.
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { yieldToEventLoop } from "../../lib/core/yield.ts";
import type { HostPort } from "../../lib/net/address.ts";
import type { ExchangeOptions, ExchangeResult } from "../../lib/net/tcp/exchange.ts";
import {
  type AdminState,
  type SchedulerSection,
  schedulerSection,
  type ServerSpec,
  type ServiceSettings,
} from "../../lib/scheduler/config.ts";
import { builtinPickers } from "../../lib/scheduler/pickers/mod.ts";
import { openTransport } from "../../lib/net/tcp/open.ts";
import type { Transport } from "../../lib/net/tcp/transport.ts";
import { LocalShortage } from "../../lib/net/tcp/errors.ts";
import { BufferPool } from "../../lib/net/tcp/pool.ts";
import { Service } from "../../lib/scheduler/service.ts";
import { Backend, blackhole, Client, clientsOn, fetchName, ProxyBackend } from "../_support/backends.ts";
import { until, within } from "../_support/until.ts";

const LO = "127.0.0.1";
const DEFAULTS: ServiceSettings = (schedulerSection.default as SchedulerSection).rules_service;

type Settings = Partial<Omit<ServiceSettings, "check">> & { check?: Partial<ServiceSettings["check"]> };

function server(port: number, over: Partial<ServerSpec> = {}): ServerSpec {
  return {
    address: { host: LO, low: port, high: port },
    weight: 1,
    agent: null,
    maxconn: 0,
    state: "ready" as AdminState,
    ...over,
  };
}

/** Every test runs over both transports (lib/net/tcp/transport.ts); `io` is the one of the test running now. */
let io: Transport = openTransport("portable");
function ioTest(name: string, fn: () => Promise<void>): void {
  for (const kind of ["fast", "portable"] as const) {
    Deno.test(`${name} [${kind}]`, () => {
      io = openTransport(kind);
      return fn();
    });
  }
}

/** A port nothing listens on. */
function closedPort(): number {
  const listener = Deno.listen({ hostname: LO, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** A service on 127.0.0.1:0 over `servers`; checks and agent polls answer from `answers` ("ok" unless set). */
function startService(servers: ServerSpec[], over: Settings = {}) {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const metrics = new MetricsRegistry();
  const answers = new Map<string, ExchangeResult>();
  const exchange = (addr: HostPort, _options: ExchangeOptions) =>
    Promise.resolve(answers.get(`${addr.host}:${addr.port}`) ?? { ok: true as const, reply: "" });
  const settings = {
    ...DEFAULTS,
    picker: "roundrobin",
    ...over,
    check: { ...DEFAULTS.check, ...over.check },
  };
  const svc = new Service(
    {
      name: "svc",
      listen: { host: LO, port: 0 },
      servers,
      settings: settings as ServiceSettings,
      origin: "config",
    },
    {
      clock,
      logger: new Logger({ level: "error", clock, sink: () => {} }),
      metrics,
      pickers: builtinPickers(),
      buffers: new BufferPool({ capacity: 8 }),
      transport: io,
      exchange,
    },
  );
  svc.listen();
  svc.start();
  return {
    svc,
    clock,
    metrics,
    answers,
    port: svc.address.port,
    /** Moves the clock by `ms` and lets what fell due (checks, polls, timeouts) run. */
    async tick(ms: number) {
      clock.advance(ms);
      for (let i = 0; i < 3; i++) await yieldToEventLoop();
    },
    async [Symbol.asyncDispose]() {
      await svc.stop(AbortSignal.abort());
    },
  };
}

ioTest(
  "Service retries a refused connect on the next server: no client fails while one server is up",
  async () => {
    await using a = new Backend("A");
    const dead = closedPort();
    await using env = startService([server(dead), server(a.port)], { check: { fall: 2 }, retries: 3 });
    const names = [];
    for (let i = 0; i < 10; i++) names.push(await fetchName(env.port));
    assert.deepEqual(names, Array(10).fill("A"));
    const [deadServer] = env.svc.servers;
    assert.equal(deadServer.state, "down", "two failed connects in a row (fall 2) took it down");
    assert.equal(deadServer.failedConnects, 2, "once down it is not tried any more");
    assert.match(deadServer.lastCheck!.detail, /client connect failed: .*connection refused/);
    assert.equal(env.svc.counts.retries, 2);
    assert.equal(env.svc.counts.no_server, 0);
    assert.equal(env.svc.counts.accepted, 10);
    const metrics = env.metrics.render();
    assert.match(metrics, /^edgenode_scheduler_service_accepted_total\{service="svc"\} 10$/m);
    assert.match(metrics, /^edgenode_scheduler_service_retries_total\{service="svc"\} 2$/m);
    assert.match(
      metrics,
      new RegExp(
        `^edgenode_scheduler_server_failed_connects_total\\{service="svc",server="${LO}:${dead}"\\} 2$`,
        "m",
      ),
    );
    assert.match(
      metrics,
      new RegExp(
        `^edgenode_scheduler_server_connections_total\\{service="svc",server="${LO}:${a.port}"\\} 10$`,
        "m",
      ),
    );
    assert.match(
      metrics,
      new RegExp(`^edgenode_scheduler_server_up\\{service="svc",server="${LO}:${dead}"\\} 0$`, "m"),
    );
  },
);

ioTest(
  "Service closes a server's open connections as soon as its checks take it down, and only those",
  async () => {
    await using a = new Backend("A");
    await using b = new Backend("B");
    await using env = startService([server(a.port), server(b.port)], { check: { interval: 1000, fall: 1 } });
    const onA = await clientsOn(env.port, "A", 2);
    const onB = await clientsOn(env.port, "B", 2);
    try {
      const ended = onB.map((c) => c.ended());
      env.answers.set(`${LO}:${b.port}`, { ok: false, error: "no answer" });
      await env.tick(0); // A's check
      await env.tick(500); // B's check, half an interval later: it fails, fall 1
      assert.equal(env.svc.servers[1].state, "down");
      assert.equal(await within(Promise.all(ended), 1000), true, "B's clients are closed at once");
      await until("B's side of those connections to be closed too", () => b.open === 0);
      for (const c of onA) {
        await c.write("still there?\n");
        assert.equal(await c.readLine(), "still there?", "A's clients are untouched");
      }
      await until("the closes to be counted", () => env.svc.counts.closed_by_server_down === 2);
      for (let i = 0; i < 4; i++) assert.equal(await fetchName(env.port), "A", "new clients go to A only");
    } finally {
      for (const c of [...onA, ...onB]) c[Symbol.dispose]();
    }
  },
);

ioTest(
  "Service follows its agents: drain keeps open connections, maint closes them, ready takes clients again",
  async () => {
    await using a = new Backend("A");
    await using b = new Backend("B");
    const agent = `${LO}:9`;
    await using env = startService(
      [server(a.port, { agent: { host: LO, port: 9 } }), server(b.port)],
      { agent_interval: 500, check: { interval: 60_000 } },
    );
    const [old] = await clientsOn(env.port, "A", 1);
    try {
      env.answers.set(agent, { ok: true, reply: "drain\n" });
      await env.tick(0);
      assert.equal(env.svc.servers[0].state, "drain");
      for (let i = 0; i < 4; i++) {
        assert.equal(await fetchName(env.port), "B", "no new client to a draining server");
      }
      await old.write("ping\n");
      assert.equal(await old.readLine(), "ping", "the open connection goes on");

      const ended = old.ended();
      env.answers.set(agent, { ok: true, reply: "maint\n" });
      await env.tick(500);
      assert.equal(env.svc.servers[0].state, "maint");
      assert.equal(await within(ended, 1000), true, "maint closes the open connection at once");

      env.answers.set(agent, { ok: true, reply: "ready\n" });
      await env.tick(500);
      const names = new Set<string | null>();
      for (let i = 0; i < 4; i++) names.add(await fetchName(env.port));
      assert.deepEqual(names, new Set(["A", "B"]));
    } finally {
      old[Symbol.dispose]();
    }
  },
);

ioTest("Service agent maxconn:1 holds a second client in the queue until the first leaves", async () => {
  await using a = new Backend("A");
  await using env = startService([server(a.port, { agent: { host: LO, port: 9 } })], { agent_interval: 500 });
  env.answers.set(`${LO}:9`, { ok: true, reply: "maxconn:1\n" });
  await env.tick(0);
  using first = await Client.connect(env.port);
  assert.equal(await first.readLine(), "A");
  using second = await Client.connect(env.port);
  await until("the second client to wait", () => env.svc.status().queue_length === 1);
  const line = second.readLine();
  // The queue is the service's own state, read at once: no real time is waited to show that nothing happened.
  assert.equal(env.svc.status().queue_length, 1, "it waits");
  first[Symbol.dispose]();
  assert.equal(await line, "A", "served once the first left");
});

ioTest(
  "Service queue: with maxconn 1 and queue 1 the 2nd client waits, the 3rd is closed, a wait times out",
  async () => {
    await using a = new Backend("A");
    await using env = startService([server(a.port, { maxconn: 1 })], { queue: 1, queue_timeout: 1000 });
    using first = await Client.connect(env.port);
    assert.equal(await first.readLine(), "A");

    using second = await Client.connect(env.port);
    await until("the second client to wait", () => env.svc.status().queue_length === 1);
    const secondLine = second.readLine();

    using third = await Client.connect(env.port);
    assert.equal(
      await within(third.ended(), 1000),
      true,
      "the third is closed at once: the queue is full",
    );
    assert.equal(env.svc.counts.queue_full, 1);

    first[Symbol.dispose]();
    assert.equal(await secondLine, "A", "the waiting client is served when the first leaves");
    assert.equal(env.svc.counts.queued, 1);

    using fourth = await Client.connect(env.port);
    await until("the fourth client to wait", () => env.svc.status().queue_length === 1);
    const fourthEnded = fourth.ended();
    await env.tick(999);
    assert.equal(env.svc.status().queue_length, 1, "still waiting 1 ms before queue_timeout");
    assert.equal(env.svc.counts.queue_timeouts, 0);
    await env.tick(1);
    assert.equal(await within(fourthEnded, 1000), true, "closed once queue_timeout passed");
    assert.equal(env.svc.counts.queue_timeouts, 1);
    assert.equal(env.svc.status().queue_length, 0);
    assert.equal(env.svc.counts.no_server, 0);
    assert.match(
      env.metrics.render(),
      /^edgenode_scheduler_service_queue_timeouts_total\{service="svc"\} 1$/m,
    );
    assert.match(env.metrics.render(), /^edgenode_scheduler_service_queue_full_total\{service="svc"\} 1$/m);
  },
);

ioTest(
  "Service gives up a connect after connect_timeout, counts it against the server and tries the next",
  async () => {
    await using hole = await blackhole();
    await using a = new Backend("A");
    await using env = startService([server(hole.port), server(a.port)], { connect_timeout: 500 });
    using client = await Client.connect(env.port);
    const [stuck] = env.svc.servers;
    await until("the connect to the silent server", () => stuck.active === 1);
    const line = client.readLine();
    await env.tick(499);
    assert.equal(stuck.active, 1, "still connecting 1 ms before connect_timeout");
    assert.equal(env.svc.counts.retries, 0);
    await env.tick(1);
    assert.equal(await line, "A");
    assert.equal(stuck.failedConnects, 1);
    assert.match(
      stuck.lastCheck!.detail,
      new RegExp(`client connect failed: Cannot connect to ${LO}:${hole.port}: timed out`),
    );
    assert.equal(env.svc.counts.retries, 1);
    assert.equal(stuck.active, 0);
  },
);

ioTest("Service closes a connection after idle_timeout without a byte and counts it", async () => {
  await using a = new Backend("A");
  await using env = startService([server(a.port)], { idle_timeout: 1000 });
  using client = await Client.connect(env.port);
  assert.equal(await client.readLine(), "A");
  const ended = client.ended();
  await env.tick(999);
  assert.equal(env.svc.open, 1, "open 1 ms before idle_timeout");
  assert.equal(env.svc.counts.idle_timeouts, 0);
  await env.tick(1);
  assert.equal(await within(ended, 1000), true, "closed at idle_timeout");
  await until("the idle close to be counted", () => env.svc.counts.idle_timeouts === 1);
  assert.equal(env.svc.open, 0);
});

ioTest(
  "Service persistence keeps a client address on its server until the entry expires or the server goes down",
  async () => {
    const ports = [closedPort(), closedPort(), closedPort()];
    await using env = startService(ports.map((p) => server(p)), {
      persistence: 10_000,
      check: { interval: 60_000, fall: 1 },
    });
    const { svc } = env;
    const first = svc.redirect("10.0.0.1")!.key;
    for (let i = 0; i < 5; i++) assert.equal(svc.redirect("10.0.0.1")!.key, first, "sticks");
    const other = svc.redirect("10.0.0.2")!.key;
    assert.notEqual(other, first, "round-robin alone moves on for another address");
    assert.equal(svc.status().persistence_entries, 2);

    await env.tick(10_001);
    assert.equal(svc.status().persistence_entries, 0, "entries expire after the persistence time");

    const again = svc.redirect("10.0.0.1")!;
    env.answers.set(again.key, { ok: false, error: "refused" });
    // The checks of three servers are spread over the 60 s interval: one tick of 60 s runs each once.
    await env.tick(60_000);
    assert.equal(again.state, "down");
    const moved = svc.redirect("10.0.0.1")!.key;
    assert.notEqual(moved, again.key, "a server that went down loses its clients");
    for (let i = 0; i < 3; i++) {
      assert.equal(svc.redirect("10.0.0.1")!.key, moved, "and they stick to the new one");
    }
  },
);

ioTest(
  "Service sourcehash keeps each address on one server and moves only the clients of a server that goes down",
  async () => {
    const ports = [closedPort(), closedPort(), closedPort()];
    await using env = startService(ports.map((p) => server(p)), {
      picker: "sourcehash",
      check: { interval: 60_000, fall: 1 },
    });
    const { svc } = env;
    const clients = Array.from({ length: 60 }, (_, i) => `192.0.2.${i + 1}`);
    const home = new Map(clients.map((ip) => [ip, svc.pick(ip)!.key]));
    for (const ip of clients) {
      assert.equal(svc.pick(ip)!.key, home.get(ip), `${ip} always gets the same server`);
    }
    assert.equal(new Set(home.values()).size, 3, "the addresses spread over every server");

    const gone = `${LO}:${ports[0]}`;
    env.answers.set(gone, { ok: false, error: "refused" });
    await env.tick(60_000);
    for (const ip of clients) {
      const now = svc.pick(ip)!.key;
      if (home.get(ip) === gone) assert.notEqual(now, gone);
      else assert.equal(now, home.get(ip), `${ip} stays where it was`);
    }
  },
);

ioTest("Service closes a client over max_per_client at once and takes it again once one leaves", async () => {
  await using a = new Backend("A");
  await using env = startService([server(a.port)], { max_per_client: 2 });
  using c1 = await Client.connect(env.port);
  using c2 = await Client.connect(env.port);
  assert.equal(await c1.readLine(), "A");
  assert.equal(await c2.readLine(), "A");
  using c3 = await Client.connect(env.port);
  assert.equal(await c3.readLine(), null, "closed without a server");
  assert.equal(env.svc.counts.refused_client_limit, 1);
  c1[Symbol.dispose]();
  await until("the first client to be gone", () => env.svc.open === 1);
  assert.equal(await fetchName(env.port), "A");
});

ioTest("Service closes a client over max_connections at once", async () => {
  await using a = new Backend("A");
  await using env = startService([server(a.port)], { max_connections: 1 });
  using c1 = await Client.connect(env.port);
  assert.equal(await c1.readLine(), "A");
  using c2 = await Client.connect(env.port);
  assert.equal(await c2.readLine(), null);
  assert.equal(env.svc.counts.refused_limit, 1);
});

for (const version of ["v1", "v2"] as const) {
  ioTest(
    `Service sends a PROXY protocol ${version} header with the client's real address to the server`,
    async () => {
      await using backend = new ProxyBackend();
      await using env = startService([server(backend.port)], { proxy_protocol: version });
      using client = await Client.connect(env.port);
      assert.equal(await client.readLine(), `${LO} ${client.localPort}`);
      const [header] = backend.headers;
      assert.equal(header.version, version === "v1" ? 1 : 2);
      assert.equal(header.command, "proxy");
      assert.equal(header.protocol, "tcp4");
      assert.deepEqual(header.source, { host: LO, port: client.localPort });
      assert.deepEqual(header.destination, { host: LO, port: env.port }, "the VIP the client connected to");
    },
  );
}

ioTest(
  "Service lets a waiting client in as soon as an agent report makes room (maxconn:1 -> maxconn:2)",
  async () => {
    await using a = new Backend("A");
    await using env = startService([server(a.port, { agent: { host: LO, port: 9 } })], {
      agent_interval: 500,
      queue_timeout: 60_000,
    });
    env.answers.set(`${LO}:9`, { ok: true, reply: "maxconn:1\n" });
    await env.tick(0);
    using first = await Client.connect(env.port);
    assert.equal(await first.readLine(), "A");
    using second = await Client.connect(env.port);
    await until("the second client to wait", () => env.svc.status().queue_length === 1);
    const line = second.readLine();
    env.answers.set(`${LO}:9`, { ok: true, reply: "maxconn:2\n" });
    await env.tick(500);
    assert.equal(await within(line, 1000), true, "served while the first is still connected");
    assert.equal(await line, "A");
  },
);

/** `io` with its connects failing as this host does when out of descriptors (EMFILE), before any packet leaves. */
function shortOfDescriptors(inner: Transport): Transport & { connects: number } {
  const t = {
    ...inner,
    connects: 0,
    connect(addr: HostPort, _timeoutMs: number, _clock: unknown, target: { connectFailed(e: Error): void }) {
      t.connects++;
      target.connectFailed(
        new LocalShortage(
          `Cannot connect to ${addr.host}:${addr.port}: too many open files`,
          "connect",
          "EMFILE",
        ),
      );
    },
  } as Transport & { connects: number };
  return t;
}

ioTest(
  "Service does not count its own shortage of descriptors against a server (it stays up, nothing retried)",
  async () => {
    await using a = new Backend("A");
    await using b = new Backend("B");
    const real = io;
    io = shortOfDescriptors(real);
    await using env = startService([server(a.port), server(b.port)], { check: { fall: 1 }, retries: 3 });
    for (let i = 0; i < 3; i++) {
      using client = await Client.connect(env.port);
      assert.equal(await client.readLine(), null, "the client is closed: this host cannot serve it now");
    }
    await until("three local failures counted", () => env.svc.counts.local_failures === 3);
    for (const s of env.svc.servers) {
      assert.equal(s.up, true, `${s.key} stays up`);
      assert.equal(s.failedConnects, 0, `${s.key} has no failed connect`);
    }
    assert.equal(env.svc.counts.retries, 0, "another server would fail the same way: no retry");
    assert.equal((io as Transport & { connects: number }).connects, 3, "one connect per client");
    // An operator sees them: in /status and in /metrics.
    assert.equal(env.svc.status().local_failures, 3);
    assert.match(
      env.metrics.render(),
      /^edgenode_scheduler_service_local_failures_total\{service="svc"\} 3$/m,
    );
  },
);

ioTest(
  "Service counts a failed accept for want of descriptors, pauses on its clock, and then serves again",
  async () => {
    await using a = new Backend("A");
    const real = io;
    io = {
      ...real,
      listen(addr, options) {
        const inner = real.listen(addr, options);
        return {
          addr: inner.addr,
          close: () => inner.close(),
          async serve(accepted, failed) {
            await failed(new LocalShortage("Cannot accept on tcp: too many open files", "accept", "EMFILE"));
            return inner.serve(accepted, failed);
          },
        };
      },
    };
    await using env = startService([server(a.port)]);
    assert.equal(env.svc.counts.local_failures, 1);
    const name = fetchName(env.port);
    await env.tick(100);
    assert.equal(await name, "A", "accepting resumed after the pause");
  },
);

ioTest(
  "Service.update keeps servers with their connections and operator state, adds new ones, drains removed ones",
  async () => {
    await using a = new Backend("A");
    await using b = new Backend("B");
    await using c = new Backend("C");
    await using env = startService([server(a.port), server(b.port)]);
    const [onB] = await clientsOn(env.port, "B", 1);
    try {
      // The operator drains A and gives it weight 5 over the API; the config changes neither.
      const [keptA] = env.svc.servers;
      keptA.setAdmin("drain");
      keptA.configuredWeight = 5;
      const next = { ...env.svc.plan, servers: [server(a.port), server(c.port, { weight: 2 })] };
      assert.deepEqual(env.svc.changesTo(next), [
        `server ${LO}:${c.port} added`,
        `server ${LO}:${b.port} removed (drains)`,
      ]);
      const drain = new AbortController();
      env.svc.update(next, drain.signal);

      assert.deepEqual(env.svc.servers.map((s) => s.key), [`${LO}:${a.port}`, `${LO}:${c.port}`]);
      assert.equal(env.svc.servers[0], keptA, "the same server, with its counters and health");
      assert.equal(keptA.state, "drain", "the runtime drain survives");
      assert.equal(keptA.configuredWeight, 5, "the runtime weight survives");
      for (let i = 0; i < 4; i++) assert.equal(await fetchName(env.port), "C", "A drains, B is gone: C");
      await onB.write("still there?\n");
      assert.equal(await onB.readLine(), "still there?", "B's open connection goes on while it drains");
      assert.deepEqual(env.svc.status().retiring, [{ server: `${LO}:${b.port}`, active: 1 }]);
      assert.doesNotMatch(
        env.metrics.render(),
        new RegExp(`server="${LO}:${b.port}"`),
        "B's series are gone",
      );

      const ended = onB.ended();
      drain.abort();
      assert.equal(await within(ended, 1000), true, "the drain deadline cuts B's connection");
      await until("B to leave the retiring list", () => env.svc.status().retiring === undefined);
    } finally {
      onB[Symbol.dispose]();
    }
  },
);

ioTest("Service.update applies an item the config changes, over the operator's runtime value", async () => {
  await using a = new Backend("A");
  await using env = startService([server(a.port)]);
  const [keptA] = env.svc.servers;
  keptA.setAdmin("drain");
  keptA.configuredWeight = 5;
  const next = { ...env.svc.plan, servers: [server(a.port, { weight: 2, state: "maint" })] };
  assert.deepEqual(env.svc.changesTo(next), [`server ${LO}:${a.port} changed`]);
  env.svc.update(next, new AbortController().signal);
  assert.equal(keptA.configuredWeight, 2);
  assert.equal(keptA.state, "maint");
  // Back to the first config: the config's items changed again, so they apply again.
  env.svc.update({ ...next, servers: [server(a.port)] }, new AbortController().signal);
  assert.equal(keptA.state, "up");
  assert.equal(await fetchName(env.port), "A");
});
