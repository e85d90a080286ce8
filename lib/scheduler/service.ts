/**
 * One virtual service: a listener on VIP:vport, its pool of real servers, a picker, live status (checks and agents),
 * limits and the proxy that joins each client to its server.
 *
 * A client's connection goes through: the service's and its address's connection limits; persistence (the server
 * it had last, while that server can take it); the picker among servers that are up, ready, of weight > 0 and below
 * maxconn; the connect, where a failure counts against the server and the next server is tried (`retries`), so a
 * client sees no failure while any server is healthy; when every available server is at maxconn the client waits
 * in a bounded queue until a slot frees or `queue_timeout` passes. Then the bytes are spliced both ways until either
 * side ends, the idle timeout passes, or the server goes down or into maintenance (its connections close at once).
 */
import type { Clock, TimerId } from "../core/clock.ts";
import type { Logger } from "../core/logger.ts";
import { type CounterSet, declareSeries, figuresOf, type MetricsRegistry } from "../core/metrics.ts";
import type { Registry } from "../core/registry.ts";
import { formatHostPort, type HostPort } from "../net/address.ts";
import { expandServers, type ServiceSettings } from "./config.ts";
import { type Exchange, Monitor } from "./monitor.ts";
import { PersistenceTable } from "./persistence.ts";
import type { Picker, PickerKind } from "./pickers/picker.ts";
import { LocalShortage } from "../net/tcp/errors.ts";
import type { BufferPool } from "../net/tcp/pool.ts";
import { proxyHeader } from "./proxy_protocol.ts";
import { Server, SERVER_SERIES } from "./server.ts";
import type { ServerSpec } from "./config.ts";
import type {
  Conn,
  ConnectTarget,
  SpliceResult,
  SpliceTarget,
  Transport,
  TransportListener,
} from "../net/tcp/transport.ts";

/** What a service is built from: a config entry or an imported agent-rules line. */
export interface ServicePlan {
  readonly name: string;
  readonly listen: HostPort;
  readonly servers: readonly ServerSpec[];
  readonly settings: ServiceSettings;
  /** Where it came from, for /status ("config" or "rules file:line"). */
  readonly origin: string;
  /** Its listen address's config key (`scheduler.services[1].listen`), for errors; absent for a rules service. */
  readonly configPath?: string;
}

export interface ServiceDeps {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
  readonly pickers: Registry<PickerKind>;
  readonly buffers: BufferPool;
  /** What carries the connections (lib/net/tcp/transport.ts). */
  readonly transport: Transport;
  /** Replaces the network exchange of health checks and agent polls (tests). */
  readonly exchange?: Exchange;
  /** Told of persistence entries a backup scheduler should learn (lib/scheduler/share.ts). */
  readonly onPersist?: (service: string, client: string, server: string) => void;
}

/** A shortage of this host's own (out of descriptors) is logged at most once per this long; it is counted always. */
const LOCAL_LOG_MS = 10_000;

/** How long accepting pauses after a failed accept (out of descriptors): the queue stays readable meanwhile. */
const ACCEPT_PAUSE_MS = 100;

/** Most client addresses a persistence table remembers. */
const PERSISTENCE_MAX = 100_000;

interface Waiter {
  readonly wake: () => void;
  readonly timer: TimerId;
}

/** What a Flow's transport callbacks go to: the service's steps, bound once per service. */
interface FlowDriver {
  connected(flow: Flow, conn: Conn): void;
  connectFailed(flow: Flow, error: Error): void;
  spliced(flow: Flow, result: SpliceResult): void;
}

/** One client's way through a service: the target of its connect and its splice (see Service.#admit). */
class Flow implements ConnectTarget, SpliceTarget {
  readonly ip: string;
  admitted = false;
  /** Counted in the service's connections per client address (only where max_per_client limits them). */
  counted = false;
  /** The server connected to, or being connected to. */
  server: Server | null = null;
  /** Servers whose connect failed for this client (made at the first failure). */
  tried: Set<Server> | null = null;
  /** When waiting in the queue must end (0 until the client first waits). */
  waitUntil = 0;
  constructor(readonly driver: FlowDriver, readonly client: Conn) {
    this.ip = client.remote.host;
  }
  connected(conn: Conn): void {
    this.driver.connected(this, conn);
  }
  connectFailed(error: Error): void {
    this.driver.connectFailed(this, error);
  }
  spliced(result: SpliceResult): void {
    this.driver.spliced(this, result);
  }
}

export class Service {
  /** The servers new clients may be given (a reload changes the list in place). */
  readonly servers: Server[];
  #plan: ServicePlan;
  #byKey: Map<string, Server>;
  #picker: Picker;
  #persistence: PersistenceTable | null;
  #monitor: Monitor;
  /** Servers a reload removed, until their last connection ends or the drain deadline cuts them. */
  readonly #retiring = new Set<Server>();
  readonly #perClient = new Map<string, number>();
  readonly #queue: Waiter[] = [];
  readonly #clients = new Set<Conn>();
  /** Client connections being handled, and who waits for them all to end (stop). */
  #handling = 0;
  #allHandled: (() => void) | null = null;
  readonly #sets: CounterSet[] = [];
  #listener: TransportListener | null = null;
  #serving: Promise<void> | null = null;
  #stopping = false;
  /** When a local shortage was last logged (0: never). */
  #localLoggedAt = 0;
  /** Client connections open now (queued ones included). */
  open = 0;
  /** Clients waiting for a server with room. */
  get queueLength(): number {
    return this.#queue.length;
  }
  readonly counts = {
    accepted: 0,
    refused_limit: 0,
    refused_client_limit: 0,
    no_server: 0,
    queue_full: 0,
    queue_timeouts: 0,
    queued: 0,
    retries: 0,
    redirects: 0,
    closed_by_server_down: 0,
    idle_timeouts: 0,
    local_failures: 0,
    bytes_in: 0,
    bytes_out: 0,
  };

  constructor(plan: ServicePlan, private readonly deps: ServiceDeps) {
    const { settings } = plan;
    const now = deps.clock.now();
    this.#plan = plan;
    this.servers = expandServers(plan.servers).map((p) =>
      new Server(p, settings.check.rise, settings.check.fall, now)
    );
    this.#byKey = new Map(this.servers.map((s) => [s.key, s]));
    this.#picker = deps.pickers.get(settings.picker).create();
    this.#persistence = this.#newPersistence(settings);
    this.#monitor = this.#newMonitor();
  }

  get plan(): ServicePlan {
    return this.#plan;
  }

  get name(): string {
    return this.plan.name;
  }

  /** The persistence table (null without persistence), for sharing it with a backup scheduler. */
  get persistence(): PersistenceTable | null {
    return this.#persistence;
  }

  #newPersistence(settings: ServiceSettings): PersistenceTable | null {
    const tell = this.deps.onPersist;
    return settings.persistence > 0
      ? new PersistenceTable(this.deps.clock, {
        timeoutMs: settings.persistence,
        maxEntries: PERSISTENCE_MAX,
        ...(tell ? { onSet: (client: string, key: string) => tell(this.name, client, key) } : {}),
      })
      : null;
  }

  #newMonitor(): Monitor {
    return new Monitor(this.servers, this.plan.settings, {
      clock: this.deps.clock,
      logger: this.deps.logger,
      service: this.plan.name,
      exchange: this.deps.exchange,
      onChange: (server, t) => {
        if (t === "down") this.#persistence?.forget(server.key);
        else this.#wakeQueue();
      },
      onAgentReply: () => this.#wakeQueue(),
    });
  }

  /**
   * What a reload to `plan` (same listen address) would change, one line per item; empty when nothing. Pure.
   */
  changesTo(plan: ServicePlan): string[] {
    const out: string[] = [];
    const old = this.plan;
    if (plan.name !== old.name) out.push(`renamed ${old.name} -> ${plan.name}`);
    const before = new Map(expandServers(old.servers).map((p) => [p.key, p.spec]));
    const after = new Map(expandServers(plan.servers).map((p) => [p.key, p.spec]));
    for (const [key, spec] of after) {
      const was = before.get(key);
      if (!was) out.push(`server ${key} added`);
      else if (!sameJson(was, spec)) out.push(`server ${key} changed`);
    }
    for (const key of before.keys()) if (!after.has(key)) out.push(`server ${key} removed (drains)`);
    for (const [k, v] of Object.entries(plan.settings)) {
      if (!sameJson(v, (old.settings as Record<string, unknown>)[k])) out.push(`${k} changed`);
    }
    if (plan.origin !== old.origin && out.length === 0) out.push(`origin ${plan.origin}`);
    return out;
  }

  /**
   * Applies a reload's plan in place (same listen address, so the listener and every established connection stay):
   * servers kept keep their health, counters, connections and operator state; added ones start checked; removed
   * ones take no new client and drain until `drain` aborts, then their connections are cut. Settings apply to new
   * connections; checks restart on the new settings. Persistence is kept unless its timeout changed.
   */
  update(plan: ServicePlan, drain: AbortSignal): void {
    const { settings } = plan;
    const old = this.plan;
    const now = this.deps.clock.now();
    const next = expandServers(plan.servers).map((p) => {
      const kept = this.#byKey.get(p.key);
      if (!kept) return new Server(p, settings.check.rise, settings.check.fall, now);
      kept.reconfigure(p.spec, settings.check.rise, settings.check.fall);
      return kept;
    });
    const keys = new Set(next.map((s) => s.key));
    for (const s of this.servers) {
      if (keys.has(s.key)) continue;
      s.retire(false);
      this.#persistence?.forget(s.key);
      if (s.active === 0) continue;
      this.#retiring.add(s);
      const cut = () => {
        if (this.#retiring.delete(s)) s.retire(true);
      };
      if (drain.aborted) cut();
      else drain.addEventListener("abort", cut, { once: true });
    }
    this.#monitor.stop();
    this.#plan = plan;
    this.servers.splice(0, this.servers.length, ...next);
    this.#byKey = new Map(next.map((s) => [s.key, s]));
    // A fresh picker: cursors and rings are per server index, and the list may have changed.
    this.#picker = this.deps.pickers.get(settings.picker).create();
    if (settings.persistence !== old.settings.persistence) this.#persistence = this.#newPersistence(settings);
    this.#monitor = this.#newMonitor();
    this.unpublish();
    if (!this.#stopping) {
      this.#publish();
      this.#monitor.start();
    }
    this.#wakeQueue();
  }

  /** Accepting clients: bound, started and not stopping. */
  get listening(): boolean {
    return this.#listener !== null && this.#serving !== null && !this.#stopping;
  }

  /** The bound address (the real port when 0 was asked for). */
  get address(): HostPort {
    return this.#listener?.addr ?? this.plan.listen;
  }

  /** Binds the listener (StartError when it cannot); nothing else starts before every service has bound. */
  listen(reusePort = false): void {
    this.#listener = this.deps.transport.listen(this.plan.listen, { reusePort });
  }

  /** Starts checks, agent polls and accepting. */
  start(): void {
    this.#publish();
    this.#monitor.start();
    this.#serving = this.#listener!.serve(
      (conn) => this.#admit(conn),
      async (error) => {
        // Out of descriptors and the like: say so, pause briefly, keep serving.
        if (error instanceof LocalShortage) this.#localFailure(error);
        else this.deps.logger.error("accept failed", { service: this.name, error: error.message });
        await new Promise<void>((r) => this.deps.clock.setTimeout(r, ACCEPT_PAUSE_MS));
      },
    );
  }

  /**
   * A client from accept to close is a Flow driven by the transport's callbacks: admitted here, then a server is
   * picked and connected (#next, #connected, #connectFailed), the bytes are spliced (#spliced), and the flow ends
   * (#end). No promise, closure or async frame per client on that path: every one is garbage the collector copies
   * while connections are in flight. Only the rare steps (waiting in the queue, a PROXY header) await.
   */
  #admit(client: Conn): void {
    const { settings } = this.plan;
    this.#handling++;
    this.counts.accepted++;
    const flow = new Flow(this.#driver, client);
    if (this.open >= settings.max_connections) {
      this.counts.refused_limit++;
      return this.#end(flow);
    }
    // Connections per client address are counted only where they are limited.
    if (settings.max_per_client > 0) {
      const mine = this.#perClient.get(flow.ip) ?? 0;
      if (mine >= settings.max_per_client) {
        this.counts.refused_client_limit++;
        return this.#end(flow);
      }
      this.#perClient.set(flow.ip, mine + 1);
      flow.counted = true;
    }
    flow.admitted = true;
    this.open++;
    this.#clients.add(client);
    this.#next(flow);
  }

  /** What a Flow tells the service (made once per service: the flows share it). */
  readonly #driver: FlowDriver = {
    connected: (flow, conn) => this.#connected(flow, conn),
    connectFailed: (flow, error) => this.#connectFailed(flow, error),
    spliced: (flow, result) => this.#spliced(flow, result),
  };

  /** Picks a server for `flow` and connects to it, or queues it, or ends it when none can be had (counted). */
  #next(flow: Flow): void {
    if (this.#stopping) return this.#end(flow);
    // Clients already waiting go first: a newcomer queues behind them instead of taking a slot freed for them.
    const behind = flow.waitUntil === 0 && this.#queue.length > 0;
    const server = behind ? null : this.pick(flow.ip, flow.tried);
    if (!server) {
      // Only a pool whose available servers are all full is worth waiting for.
      if (!behind && !this.servers.some((s) => s.available && !s.hasRoom && !flow.tried?.has(s))) {
        this.counts.no_server++;
        return this.#end(flow);
      }
      const now = this.deps.clock.now();
      const first = flow.waitUntil === 0;
      if (first) flow.waitUntil = now + this.plan.settings.queue_timeout;
      this.#wait(flow.waitUntil - now, first).then((ok) => ok ? this.#next(flow) : this.#end(flow));
      return;
    }
    server.active++;
    server.total++;
    flow.server = server;
    this.deps.transport.connect(server.addr, this.plan.settings.connect_timeout, this.deps.clock, flow);
  }

  #connectFailed(flow: Flow, error: Error): void {
    const server = flow.server!;
    flow.server = null;
    server.active--;
    server.total--;
    if (error instanceof LocalShortage) {
      // This host's trouble, not the server's: it is not marked down, and another server would fail the same way.
      this.#localFailure(error);
      return this.#end(flow);
    }
    (flow.tried ??= new Set()).add(server);
    const transition = server.connectFailed(error.message, this.deps.clock.now());
    if (transition === "down") {
      this.deps.logger.warn("server down", {
        service: this.name,
        server: server.key,
        detail: "connect failed",
      });
      this.#persistence?.forget(server.key);
    }
    if (flow.tried.size > this.plan.settings.retries) {
      this.counts.no_server++;
      return this.#end(flow);
    }
    this.counts.retries++;
    this.#next(flow);
  }

  /** Counts a failure of this host's own and logs it, at most once per LOCAL_LOG_MS. */
  #localFailure(error: LocalShortage): void {
    this.counts.local_failures++;
    const now = this.deps.clock.now();
    if (this.#localLoggedAt !== 0 && now - this.#localLoggedAt < LOCAL_LOG_MS) return;
    this.#localLoggedAt = now;
    this.deps.logger.error("out of local resources", {
      service: this.name,
      error: error.message,
      local_failures: this.counts.local_failures,
    });
  }

  #connected(flow: Flow, conn: Conn): void {
    const { settings } = this.plan;
    const { client, server } = flow;
    this.#persistence?.set(flow.ip, server!.key);
    if (settings.proxy_protocol === "none") return this.#splice(flow, conn);
    const header = proxyHeader(settings.proxy_protocol === "v1" ? 1 : 2, client.remote, client.local);
    this.deps.transport.writeAll(conn, header).then(
      () => this.#splice(flow, conn),
      () => {
        conn.close();
        this.#serverDone(flow);
      },
    );
  }

  #splice(flow: Flow, conn: Conn): void {
    this.deps.transport.splice(flow.client, conn, {
      clock: this.deps.clock,
      idleMs: this.plan.settings.idle_timeout,
      signal: flow.server!.signal,
      pool: this.deps.buffers,
    }, flow);
  }

  #spliced(flow: Flow, outcome: SpliceResult): void {
    this.counts.bytes_in += outcome.up;
    this.counts.bytes_out += outcome.down;
    if (outcome.reason === "aborted") this.counts.closed_by_server_down++;
    if (outcome.reason === "idle") this.counts.idle_timeouts++;
    this.#serverDone(flow);
  }

  /** The flow's server connection has ended: its slot is free for the queue. */
  #serverDone(flow: Flow): void {
    const server = flow.server!;
    if (--server.active === 0 && server.retired) this.#retiring.delete(server);
    this.#wakeQueue();
    this.#end(flow);
  }

  #end(flow: Flow): void {
    const { client, ip } = flow;
    client.close();
    if (flow.admitted) {
      this.#clients.delete(client);
      this.open--;
    }
    if (flow.counted) {
      const left = (this.#perClient.get(ip) ?? 1) - 1;
      if (left > 0) this.#perClient.set(ip, left);
      else this.#perClient.delete(ip);
    }
    if (--this.#handling === 0) this.#allHandled?.();
  }

  /**
   * The server for a new connection from `ip`: its persistent server when that one can take it, else the picker's
   * choice among servers that are available, have room and were not `tried`.
   */
  pick(ip: string, tried: ReadonlySet<Server> | null = null): Server | null {
    this.#tried = tried;
    try {
      const sticky = this.#persistence?.get(ip);
      if (sticky !== undefined) {
        const s = this.#byKey.get(sticky);
        if (s && this.#eligible(s)) return s;
      }
      const i = this.#picker.pick(this.servers, this.#eligibleAt, ip);
      return i < 0 ? null : this.servers[i];
    } finally {
      this.#tried = null;
    }
  }

  /** The servers `pick` must pass over, while it runs (a field, so no closure is made per connection). */
  #tried: ReadonlySet<Server> | null = null;

  #eligible(s: Server): boolean {
    return s.available && s.hasRoom && !this.#tried?.has(s);
  }

  readonly #eligibleAt = (i: number): boolean => this.#eligible(this.servers[i]);

  /** The server a redirect sends `ip` to (no connection is made; persistence is kept). */
  redirect(ip: string): Server | null {
    const server = this.pick(ip);
    if (server) {
      this.counts.redirects++;
      this.#persistence?.set(ip, server.key);
    }
    return server;
  }

  /**
   * Waits in the queue for a slot; false when the queue is full, the wait timed out or the service stops. `first`:
   * the client's first wait, counted in `queued` once it is in the queue (a client refused for a full queue is not).
   */
  #wait(ms: number, first: boolean): Promise<boolean> {
    if (ms <= 0) {
      this.counts.queue_timeouts++;
      return Promise.resolve(false);
    }
    if (this.#queue.length >= this.plan.settings.queue) {
      this.counts.queue_full++;
      return Promise.resolve(false);
    }
    return new Promise<boolean>((resolve) => {
      const waiter: Waiter = {
        wake: () => {
          this.deps.clock.clearTimeout(waiter.timer);
          resolve(!this.#stopping);
        },
        timer: this.deps.clock.setTimeout(() => {
          const i = this.#queue.indexOf(waiter);
          if (i >= 0) this.#queue.splice(i, 1);
          this.counts.queue_timeouts++;
          resolve(false);
        }, ms),
      };
      this.#queue.push(waiter);
      if (first) this.counts.queued++;
    });
  }

  /** Lets the first queued clients try again: one per server with room. */
  #wakeQueue(): void {
    let room = 0;
    for (const s of this.servers) {
      if (!s.available) continue;
      room += s.maxconn === 0 ? this.#queue.length : Math.max(0, s.maxconn - s.active);
    }
    while (room-- > 0 && this.#queue.length) this.#queue.shift()!.wake();
  }

  /** Admin change from the API; waking the queue when a server becomes ready. */
  changed(): void {
    this.#wakeQueue();
  }

  /** Takes the service's series out of /metrics (a reload removed it; it still drains). */
  unpublish(): void {
    for (const set of this.#sets.splice(0)) this.deps.metrics.remove(set);
  }

  #publish(): void {
    const { metrics } = this.deps;
    this.#sets.push(metrics.publish("scheduler_service", { service: this.name }, SERVICE_SERIES, () => this));
    for (const s of this.servers) {
      this.#sets.push(
        metrics.publish("scheduler_server", { service: this.name, server: s.key }, SERVER_SERIES, () => s),
      );
    }
  }

  status(): Record<string, unknown> {
    const { settings } = this.plan;
    return {
      listen: formatHostPort(this.address),
      origin: this.plan.origin,
      picker: settings.picker,
      persistence_ms: settings.persistence,
      proxy_protocol: settings.proxy_protocol,
      persistence_entries: this.#persistence?.size ?? 0,
      checks: this.#monitor.checks,
      ...(this.#retiring.size
        ? { retiring: [...this.#retiring].map((s) => ({ server: s.key, active: s.active })) }
        : {}),
      agent_polls: this.#monitor.agentPolls,
      // The figures /metrics shows, by the same declarations.
      ...figuresOf(SERVICE_SERIES, this),
      servers: this.servers.map((s) => s.status()),
    };
  }

  /**
   * Stops accepting and checking at once; open connections may finish until `deadline` aborts, then they are cut.
   */
  stop(deadline: AbortSignal): Promise<void> {
    // A second stop (a reload's drain, then the role's stop) waits for the first, and cuts it short at its deadline.
    if (this.#stopped) {
      const cut = () => {
        for (const c of this.#clients) c.close();
      };
      if (deadline.aborted) cut();
      else deadline.addEventListener("abort", cut, { once: true });
      return this.#stopped.finally(() => deadline.removeEventListener("abort", cut));
    }
    return this.#stopped = this.#stop(deadline);
  }

  #stopped: Promise<void> | null = null;

  async #stop(deadline: AbortSignal): Promise<void> {
    this.#stopping = true;
    this.#listener?.close();
    this.#monitor.stop();
    await this.#serving;
    for (const w of this.#queue.splice(0)) w.wake();
    const cut = () => {
      for (const c of this.#clients) c.close();
    };
    if (deadline.aborted) cut();
    else deadline.addEventListener("abort", cut, { once: true });
    if (this.#handling > 0) await new Promise<void>((resolve) => this.#allHandled = resolve);
    this.#allHandled = null;
    deadline.removeEventListener("abort", cut);
    this.unpublish();
  }
}

/**
 * A service's series, declared once for /metrics (`edgenode_scheduler_service_*{service}`) and /status (the same
 * names, without `_total`).
 */
const SERVICE_SERIES = declareSeries<Service>({
  open_connections: {
    kind: "gauge",
    help: "Client connections open now, queued included",
    read: (s) => s.open,
  },
  queue_length: { kind: "gauge", help: "Clients waiting for a server with room", read: (s) => s.queueLength },
  accepted: { help: "Client connections accepted", read: (s) => s.counts.accepted },
  refused_limit: {
    help: "Clients closed because the service was at max_connections",
    read: (s) => s.counts.refused_limit,
  },
  refused_client_limit: {
    help: "Clients closed because their address was at max_per_client",
    read: (s) => s.counts.refused_client_limit,
  },
  no_server: { help: "Clients closed because no server could take them", read: (s) => s.counts.no_server },
  queue_full: { help: "Clients closed because the queue was full", read: (s) => s.counts.queue_full },
  queue_timeouts: {
    help: "Clients closed after waiting queue_timeout for a server",
    read: (s) => s.counts.queue_timeouts,
  },
  queued: { help: "Clients that waited in the queue", read: (s) => s.counts.queued },
  retries: { help: "Connects retried on another server after one failed", read: (s) => s.counts.retries },
  redirects: { help: "Servers chosen for the redirect route", read: (s) => s.counts.redirects },
  closed_by_server_down: {
    help: "Connections closed because their server went down or into maintenance",
    read: (s) => s.counts.closed_by_server_down,
  },
  idle_timeouts: {
    help: "Connections closed after idle_timeout without a byte",
    read: (s) => s.counts.idle_timeouts,
  },
  local_failures: {
    help:
      "Accepts, connects and checks that failed for want of this host's own descriptors, buffers, memory or ports (no server is blamed)",
    read: (s) => s.counts.local_failures,
  },
  bytes_in: { help: "Bytes from clients to servers (finished connections)", read: (s) => s.counts.bytes_in },
  bytes_out: {
    help: "Bytes from servers to clients (finished connections)",
    read: (s) => s.counts.bytes_out,
  },
});

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
