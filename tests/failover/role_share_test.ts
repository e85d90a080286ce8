/**
 * Two scheduler roles in this process, each behind its own status API on loopback (real HTTP between them), sharing
 * state through scheduler.share: what one learns the other holds, as a backup box would. One ManualClock drives both
 * (pushes, checks); the HTTP in between is real. And GET /healthz from the role's own health().
 */
import assert from "node:assert/strict";
import { createApp } from "../../lib/api/app.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import type { RunningRole } from "../../lib/roles/role.ts";
import { type SchedulerSection, schedulerSection, type ServiceSpec } from "../../lib/scheduler/config.ts";
import { schedulerRole } from "../../lib/scheduler/role.ts";
import { until } from "../_support/until.ts";

const LO = "127.0.0.1";
const TOKEN = "share-role-token-0123456789";
const DEFAULTS = (schedulerSection.default as SchedulerSection).rules_service;

/** Ports nothing listens on: the redirect route only names a server, and a check of one fails. */
function freePorts(n: number): number[] {
  const listeners = Array.from({ length: n }, () => Deno.listen({ hostname: LO, port: 0 }));
  const ports = listeners.map((l) => (l.addr as Deno.NetAddr).port);
  for (const l of listeners) l.close();
  return ports;
}

/** Service "web" over `ports`; checks every `checkMs` (a check of a port nothing listens on takes it down). */
function web(ports: number[], checkMs = 3_600_000): ServiceSpec {
  return {
    name: "web",
    listen: { host: LO, port: 0 },
    servers: ports.map((port) => ({
      address: { host: LO, low: port, high: port },
      weight: 1,
      agent: null,
      maxconn: 0,
      state: "ready" as const,
    })),
    ...DEFAULTS,
    picker: "roundrobin",
    persistence: 600_000,
    check: { ...DEFAULTS.check, interval: checkMs, fall: 1 },
  } as ServiceSpec;
}

/** A scheduler box: the role and its status API served on loopback (the port known before the role starts). */
class Box implements AsyncDisposable {
  role: RunningRole | null = null;
  app: ReturnType<typeof createApp> | null = null;
  readonly server: Deno.HttpServer<Deno.NetAddr>;
  constructor(readonly name: string) {
    this.server = Deno.serve(
      { hostname: LO, port: 0, onListen: () => {} },
      (request, info) => this.app!.fetch(request, { remoteAddr: info.remoteAddr }),
    );
  }
  get url(): string {
    return `http://${LO}:${this.server.addr.port}`;
  }
  async start(clock: ManualClock, services: ServiceSpec[], peer: Box): Promise<void> {
    const logger = new Logger({ level: "error", clock, sink: () => {} });
    const metrics = new MetricsRegistry();
    const section: SchedulerSection = {
      ...(schedulerSection.default as SchedulerSection),
      services,
      share: {
        peers: [peer.url],
        token: TOKEN,
        etcd: [],
        etcd_prefix: "/edgenode/scheduler/share/",
        etcd_ttl: 3_600_000,
        interval: 100,
        timeout: 2000,
        max_batch: 100,
        max_queue: 1000,
      },
    };
    const role = await schedulerRole.start(section, { nodeName: this.name, logger, metrics, clock });
    this.role = role;
    this.app = createApp({
      name: this.name,
      version: "test",
      clock,
      startedAt: clock.now(),
      metrics,
      roles: () => ({ scheduler: role.status() }),
      token: TOKEN,
      maxBody: 1 << 20,
      logger,
      mount: [(app) => role.routes!(app)],
      health: () => new Map([["scheduler", role]]),
    });
  }
  /** The server the redirect route names for a client at `ip` (it sets persistence as a connection would). */
  async redirect(ip: string): Promise<string> {
    const res = await this.app!.request("/redirect/web/live/cam1", {}, {
      remoteAddr: { transport: "tcp", hostname: ip, port: 40000 },
    });
    await res.body?.cancel();
    return res.headers.get("location") ?? `status ${res.status}`;
  }
  web(): { persistence_entries: number; servers: { server: string; state: string; weight: number }[] } {
    return (this.role!.status().services as Record<string, never>).web;
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.role?.stop(AbortSignal.abort());
    await this.server.shutdown();
  }
}

Deno.test("scheduler roles with scheduler.share hold each other's persistence and server changes", async () => {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  // Servers that pass a TCP check (the kernel completes the connect; nothing needs to be said).
  const listeners = [0, 1].map(() => Deno.listen({ hostname: LO, port: 0 }));
  const ports = listeners.map((l) => (l.addr as Deno.NetAddr).port);
  using _closeListeners = { [Symbol.dispose]: () => listeners.forEach((l) => l.close()) };
  await using a = new Box("a");
  await using b = new Box("b");
  await a.start(clock, [web(ports)], b);
  await b.start(clock, [web(ports)], a);
  const clients = ["192.0.2.1", "192.0.2.2", "192.0.2.3"];
  const before = [];
  for (const ip of clients) before.push(await a.redirect(ip));
  assert.equal(new Set(before).size, 2, `round robin spread them: ${before}`);
  const drained = await a.app!.request(`/scheduler/services/web/servers/${LO}:${ports[1]}`, {
    method: "POST",
    body: JSON.stringify({ state: "drain", weight: 5 }),
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  assert.equal(drained.status, 200);
  // The clock drives the pushes; the HTTP between the boxes is real, so it ticks on while the test waits.
  await until("b holding a's clients and server change", () => {
    clock.advance(100);
    const w = b.web();
    return w.persistence_entries === clients.length && w.servers[1].state === "drain";
  });
  assert.equal(b.web().servers[1].weight, 5);
  // The clients of the server that is not draining keep it on b; the drained one's go elsewhere, as on a.
  for (const [i, ip] of clients.entries()) {
    if (before[i].includes(`:${ports[0]}/`)) assert.equal(await b.redirect(ip), before[i], ip);
  }
  const status = b.role!.status().share as { applied: number; peers: { synced: boolean }[] };
  assert.ok(status.applied >= clients.length + 1);
  assert.equal(status.peers[0].synced, true);
  const metrics = await (await b.app!.request("/metrics")).text();
  assert.match(metrics, /^edgenode_scheduler_share_applied_total [1-9]/m);
  assert.match(
    metrics,
    new RegExp(`^edgenode_scheduler_share_peer_snapshots_total\\{peer="${a.url}"\\} 1$`, "m"),
  );
  assert.match(
    metrics,
    new RegExp(`^edgenode_scheduler_share_peer_dropped_total\\{peer="${a.url}"\\} 0$`, "m"),
  );
});

Deno.test("GET /healthz answers 503 naming the service once the scheduler has no healthy server", async () => {
  const clock = new ManualClock(Date.UTC(2026, 0, 1));
  const ports = freePorts(2);
  await using a = new Box("a");
  await using b = new Box("b");
  await a.start(clock, [web(ports, 1000)], b);
  await b.start(clock, [web(ports, 1000)], a);
  const first = await a.app!.request("/healthz");
  assert.equal(first.status, 200, "servers start up until a check says otherwise");
  assert.equal(await first.text(), "ok\n");
  clock.advance(1000); // one check each, refused (nothing listens): fall 1 takes them down
  await until("a's servers down", () => a.web().servers.every((s) => s.state === "down"));
  const res = await a.app!.request("/healthz");
  assert.equal(res.status, 503);
  assert.equal(await res.text(), "scheduler: service web: no healthy server\n");
  const json = await a.app!.request("/healthz", { headers: { accept: "application/json" } });
  assert.deepEqual(await json.json(), {
    ok: false,
    roles: { scheduler: { ok: false, problems: ["service web: no healthy server"] } },
  });
});
