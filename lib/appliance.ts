/**
 * Plan -> running appliance: start each role of the plan in order, then the status API; stop in reverse. A part that
 * fails to start stops everything started before it, so nothing is left half-running.
 */
import type { Hono } from "hono";
import { createApp } from "./api/app.ts";
import { History } from "./dashboard/history.ts";
import type { Clock } from "./core/clock.ts";
import { ErrorList, errorMessage, StartError, startErrorAt } from "./core/errors.ts";
import { deadline as makeDeadline } from "./core/clock.ts";
import { Lifecycle, type StopResult } from "./core/lifecycle.ts";
import type { Logger } from "./core/logger.ts";
import { MetricsRegistry } from "./core/metrics.ts";
import { runRealtime } from "./core/scheduling.ts";
import type { Registry } from "./core/registry.ts";
import { describeStartError, type Plan } from "./config/plan.ts";
import { formatHostPort, type HostPort } from "./net/address.ts";
import { type Handler, type HttpServer, serveHttp } from "./net/http.ts";
import type { ReloadSummary, RoleDef, RoleReload, RunningRole } from "./roles/role.ts";
import { VERSION } from "./version.ts";

export interface ApplianceDeps {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly roles: Registry<RoleDef>;
  /** The node name when the plan has none (the host name in production). */
  readonly hostname: () => string;
  readonly listen?: (handler: Handler, addr: HostPort) => HttpServer;
  /** Puts the process at a real-time priority, returning how many threads it set (default: core/scheduling.ts). */
  readonly runRealtime?: (priority: number) => number;
  /**
   * Reads and checks the config again, as `--check` does (ErrorList with every error at its place); without it the
   * appliance cannot reload.
   */
  readonly reread?: () => Promise<Plan>;
}

export interface Appliance {
  readonly name: string;
  readonly statusAddr: HostPort;
  readonly metrics: MetricsRegistry;
  /**
   * Reads the config again and applies the difference (SIGHUP, POST /reload): all of it or, on any error, none.
   * Reloads run one at a time. Never throws: the outcome says what happened.
   */
  reload(trigger: string): Promise<ReloadOutcome>;
  /** Stops everything within the plan's drain deadline (sooner if `force` aborts). Never throws. */
  stop(force?: AbortSignal): Promise<StopResult[]>;
}

/** What a reload did, as /status `process.config.last_reload` and the answer of POST /reload show it. */
export interface ReloadOutcome {
  readonly ok: boolean;
  /** The config generation running after it (1 at start; a failed reload leaves it). */
  readonly generation: number;
  readonly trigger: string;
  readonly at: string;
  readonly duration_ms: number;
  /** Every error, `file:line:col: message` where the error has a place; nothing was changed. */
  readonly errors: readonly string[];
  /** Per role: what changed ("started" / "stopped" for a whole role). */
  readonly roles: Readonly<Record<string, ReloadSummary | "started" | "stopped">>;
  readonly notes: readonly string[];
}

export async function startAppliance(plan: Plan, deps: ApplianceDeps): Promise<Appliance> {
  const { clock, logger, roles } = deps;
  const listen = deps.listen ?? serveHttp;
  const name = plan.name ?? deps.hostname();
  const startedAt = clock.now();
  const metrics = new MetricsRegistry();
  metrics.set("build", { name, version: VERSION }).gauge(
    "info",
    "Always 1; labels carry name and version",
    () => 1,
  );
  metrics.set("process").gauge(
    "uptime_seconds",
    "Seconds since start",
    () => (clock.now() - startedAt) / 1000,
  );

  const lifecycle = new Lifecycle(clock);
  /** Running roles in start order (a reload adds and removes). */
  const running = new Map<string, RunningRole>();
  const roleContext = (roleName: string) => ({
    nodeName: name,
    logger: logger.child(roleName),
    metrics,
    clock,
  });
  try {
    // Before any role starts, so that every thread a role makes inherits the policy.
    const scheduling = applyScheduling(plan, deps, logger);
    for (const roleName of plan.roles) {
      const role = await roles.get(roleName).start(plan.sections[roleName], roleContext(roleName));
      running.set(roleName, role);
      lifecycle.add(roleName, (deadline) => role.stop(deadline));
      logger.info("started", { part: roleName });
    }
    let current = plan;
    let generation = 1;
    let lastReload: ReloadOutcome | null = null;
    // The dashboard's figures of the last minutes, read from the roles' status every 2 s.
    const statusOfRoles = () => Object.fromEntries([...running].map(([n, r]) => [n, r.status()]));
    const history = new History({ clock, status: statusOfRoles });
    const reloadRoute = (app: Hono) =>
      app.post("/reload", async (c) => {
        const outcome = await appliance.reload("api");
        return c.json(outcome, outcome.ok ? 200 : 400);
      });
    // The status API is made again after a reload (the token and the roles' routes may have changed).
    const makeApp = (p: Plan) =>
      createApp({
        name,
        version: VERSION,
        clock,
        startedAt,
        metrics,
        roles: statusOfRoles,
        history,
        process: () => ({
          scheduling,
          // Fixed for the life of the process (a reload notes a change for the next start).
          control_socket: plan.process.control_socket,
          config: { source: p.source, generation, last_reload: lastReload },
        }),
        token: p.status.token,
        maxBody: p.status.max_body,
        logger: logger.child("status"),
        mount: [
          reloadRoute,
          ...[...running.values()].flatMap((r) => (r.routes ? [(app: Hono) => r.routes!(app)] : [])),
        ],
        selfGuarded: [...running.values()].flatMap((r) => r.selfGuarded ?? []),
        health: () => running.entries(),
        stopping: () => graceful,
      });
    let app = makeApp(plan);
    // The connection's info goes on as Hono's env: the redirect route's persistence keys on the client's address.
    const handler = (r: Request, info?: Deno.ServeHandlerInfo<Deno.NetAddr>) => app.fetch(r, info);
    let server: HttpServer;
    try {
      server = listen(handler, plan.status.listen);
    } catch (error) {
      throw startErrorAt(error, "status.listen", "status API");
    }
    history.start();
    logger.child("status").info("listening", { addr: formatHostPort(server.addr) });

    // Parts a reload removed or replaced, draining until their deadline (or the stop's).
    const drains = new Set<Promise<void>>();
    const stopping = new AbortController();
    let queue: Promise<unknown> = Promise.resolve();
    let stopped: Promise<StopResult[]> | null = null;
    /** In the stop's health grace: /healthz fails while everything still serves. */
    let graceful = false;

    const apply = async (trigger: string): Promise<ReloadOutcome> => {
      const began = clock.now();
      const outcome = (
        ok: boolean,
        errors: string[],
        summary: Record<string, ReloadSummary | "started" | "stopped"> = {},
        notes: string[] = [],
      ): ReloadOutcome => ({
        ok,
        generation,
        trigger,
        at: new Date(began).toISOString(),
        duration_ms: clock.now() - began,
        errors,
        roles: summary,
        notes,
      });
      if (stopped) return outcome(false, ["Stopping: nothing reloaded"]);
      if (!deps.reread) return outcome(false, ["This appliance was started without a config to reload"]);
      let next: Plan;
      try {
        next = await deps.reread();
      } catch (error) {
        if (error instanceof ErrorList) return outcome(false, error.errors.map((e) => e.format()));
        return outcome(false, [errorMessage(error)]);
      }
      const notes: string[] = [];
      if ((next.name ?? deps.hostname()) !== name) notes.push("name: takes effect at the next start");
      if (next.process.realtime_priority !== current.process.realtime_priority) {
        notes.push("process.realtime_priority: takes effect at the next start");
      }
      if (next.process.control_socket !== current.process.control_socket) {
        notes.push("process.control_socket: takes effect at the next start");
      }
      const summary: Record<string, ReloadSummary | "started" | "stopped"> = {};
      const prepared: [string, RoleReload][] = [];
      const started: [string, RunningRole][] = [];
      let newServer: HttpServer | null = null as HttpServer | null;
      const undo = async () => {
        for (const [, r] of prepared.reverse()) await r.abort().catch(() => {});
        const now = AbortSignal.abort();
        for (const [, r] of started.reverse()) await r.stop(now).catch(() => {});
        await newServer?.stop(now).catch(() => {});
      };
      // Phase one: everything that can fail, changing nothing that runs. Every role is asked, also when its section
      // is the same: the files it names (agent-rules, session programs) may have changed, and a part that failed to
      // start at an earlier reload is tried again. Every error is collected before anything is released.
      const errors: string[] = [];
      for (const roleName of next.roles) {
        const role = running.get(roleName);
        if (!role) continue;
        if (!role.prepareReload) {
          if (!sameJson(current.sections[roleName], next.sections[roleName])) {
            notes.push(`${roleName}: its section changed; this role applies changes at the next start only`);
          }
          continue;
        }
        try {
          prepared.push([roleName, await role.prepareReload(next.sections[roleName])]);
        } catch (error) {
          errors.push(describeStartError(next, error));
        }
      }
      if (!errors.length) {
        for (const roleName of next.roles) {
          if (running.has(roleName)) continue;
          try {
            started.push([
              roleName,
              await roles.get(roleName).start(next.sections[roleName], roleContext(roleName)),
            ]);
          } catch (error) {
            errors.push(describeStartError(next, error));
            break;
          }
        }
      }
      if (!errors.length && formatHostPort(next.status.listen) !== formatHostPort(current.status.listen)) {
        try {
          newServer = listen(handler, next.status.listen);
        } catch (error) {
          errors.push(describeStartError(next, startErrorAt(error, "status.listen", "status API")));
        }
      }
      if (!errors.length && stopped) errors.push("Stopping: nothing reloaded");
      if (errors.length) {
        await undo();
        return outcome(false, errors);
      }
      // Phase two. The drain deadline is left to fire (or to be cut by a stop): parts that drain after their commit
      // (a removed server's connections, say) are cut by it.
      const drainDeadline = makeDeadline(clock, next.shutdown.drain_timeout, stopping.signal);
      const drain = (p: Promise<void>) => {
        const d = p.catch((error) => logger.error("drain failed", { error: errorMessage(error) }));
        drains.add(d);
        d.finally(() => drains.delete(d));
      };
      // Each commit is awaited until its change is applied (the next reload starts from there); one that fails is
      // reported, and the others still apply.
      const failures: string[] = [];
      await Promise.all(prepared.map(async ([roleName, r]) => {
        try {
          await r.commit(drainDeadline.signal);
        } catch (error) {
          failures.push(
            `${roleName}: the change could not be applied in full: ${describeStartError(next, error)}`,
          );
          logger.error("reload commit failed", { part: roleName, error: errorMessage(error) });
        }
        if (!emptySummary(r.summary)) summary[roleName] = r.summary;
      }));
      for (const [roleName, role] of [...running]) {
        if (next.roles.includes(roleName)) continue;
        running.delete(roleName);
        drain(role.stop(drainDeadline.signal));
        summary[roleName] = "stopped";
      }
      for (const [roleName] of started) {
        summary[roleName] = "started";
        logger.info("started", { part: roleName });
      }
      // Start order is registry order, as at start.
      const order = [...running, ...started];
      running.clear();
      for (const roleName of next.roles) {
        const r = order.find(([n]) => n === roleName);
        if (r) running.set(roleName, r[1]);
      }
      if (next.log.level !== current.log.level) logger.level = next.log.level;
      current = next;
      app = makeApp(next);
      if (newServer) {
        const old = server;
        server = newServer;
        drain(old.stop(drainDeadline.signal));
        logger.child("status").info("listening", { addr: formatHostPort(server.addr) });
        summary.status = {
          added: [],
          removed: [],
          changed: [`status.listen ${formatHostPort(old.addr)} -> ${formatHostPort(server.addr)}`],
          replaced: [],
          notes: [],
        };
      }
      generation++;
      return failures.length ? outcome(false, failures, summary, notes) : outcome(true, [], summary, notes);
    };

    const appliance: Appliance = {
      name,
      get statusAddr() {
        return server.addr;
      },
      metrics,
      reload(trigger) {
        const run = queue.then(() => apply(trigger)).then((o) => {
          lastReload = o;
          logReload(logger, o);
          return o;
        });
        queue = run.catch(() => {});
        return run;
      },
      stop(force) {
        stopped ??= (async () => {
          // First the health grace: /healthz says "stopping" while everything still serves, so that keepalived on
          // the other box takes the VIP before these listeners close (cut short by `force`).
          const grace = current.shutdown.health_grace;
          if (grace > 0 && !force?.aborted) {
            graceful = true;
            logger.info("stopping: health fails first", { health_grace_ms: grace });
            await new Promise<void>((resolve) => {
              const id = clock.setTimeout(done, grace);
              force?.addEventListener("abort", done, { once: true });
              function done() {
                clock.clearTimeout(id);
                force?.removeEventListener("abort", done);
                resolve();
              }
            });
          }
          // One deadline for the whole stop: a reload still applying finishes first (its drains are cut with it).
          const deadline = makeDeadline(clock, current.shutdown.drain_timeout, force);
          deadline.signal.addEventListener("abort", () => stopping.abort(), { once: true });
          await queue;
          // Parts stop in reverse order of start, the status API first.
          const parts = new Lifecycle(clock);
          for (const [roleName, role] of running) parts.add(roleName, (d) => role.stop(d));
          parts.add("status", (d) => {
            history.stop();
            return server.stop(d);
          });
          const results = await parts.stop(current.shutdown.drain_timeout, deadline.signal);
          stopping.abort();
          deadline.cancel();
          await Promise.all(drains);
          return logStops(logger, results);
        })();
        return stopped;
      },
    };
    return appliance;
  } catch (error) {
    logStops(logger, await lifecycle.stop(plan.shutdown.drain_timeout));
    // Printed with the config's file:line:col where the part that failed names its key.
    throw new StartError(describeStartError(plan, error), { cause: error });
  }
}

function emptySummary(s: ReloadSummary): boolean {
  return !s.added.length && !s.removed.length && !s.changed.length && !s.replaced.length && !s.notes.length;
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function logReload(logger: Logger, o: ReloadOutcome): void {
  if (!o.ok) {
    logger.error("reload refused; nothing changed", { trigger: o.trigger, errors: o.errors.length });
    for (const e of o.errors) logger.error("reload error", { error: e });
    return;
  }
  const parts = Object.entries(o.roles).map(([role, s]) =>
    typeof s === "string"
      ? `${role} ${s}`
      : `${role}: +${s.added.length} -${s.removed.length} ~${s.changed.length} r${s.replaced.length}`
  );
  logger.info("reloaded", {
    trigger: o.trigger,
    generation: o.generation,
    changes: parts.join("; ") || "none",
  });
  for (const n of o.notes) logger.warn("reload note", { note: n });
  for (const s of Object.values(o.roles)) {
    if (typeof s !== "string") { for (const n of s.notes) logger.warn("reload note", { note: n }); }
  }
}

/** What /status says of the process's scheduling. */
interface SchedulingStatus {
  readonly policy: "fifo" | "other";
  readonly priority: number;
  /** Threads set at start (later ones inherit the policy). */
  readonly threads?: number;
}

function applyScheduling(plan: Plan, deps: ApplianceDeps, logger: Logger): SchedulingStatus {
  const priority = plan.process.realtime_priority;
  if (priority === 0) return { policy: "other", priority: 0 };
  try {
    const threads = (deps.runRealtime ?? runRealtime)(priority);
    logger.info("real-time priority", { policy: "fifo", priority, threads });
    return { policy: "fifo", priority, threads };
  } catch (error) {
    throw new StartError(`${plan.source}: process.realtime_priority: ${errorMessage(error)}`, {
      cause: error,
    });
  }
}

/** One line per part stopped, so an operator sees what was released (after a failed start as after a signal). */
function logStops(logger: Logger, results: StopResult[]): StopResult[] {
  for (const r of results) {
    if (r.error) logger.error("stop failed", { part: r.name, error: String(r.error) });
    else logger.info("stopped", { part: r.name });
  }
  return results;
}
