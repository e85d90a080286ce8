/**
 * Plan -> running appliance: start each role of the plan in order, then the status API; stop in reverse. A part that
 * fails to start stops everything started before it, so nothing is left half-running.
 */
import type { Hono } from "hono";
import { createApp } from "./api/app.ts";
import { History } from "./dashboard/history.ts";
import type { Clock } from "./core/clock.ts";
import { errorMessage, StartError } from "./core/errors.ts";
import { Lifecycle, type StopResult } from "./core/lifecycle.ts";
import type { Logger } from "./core/logger.ts";
import { MetricsRegistry } from "./core/metrics.ts";
import { runRealtime } from "./core/scheduling.ts";
import type { Registry } from "./core/registry.ts";
import type { Plan } from "./config/plan.ts";
import { formatHostPort, type HostPort } from "./net/address.ts";
import { type HttpServer, serveHttp } from "./net/http.ts";
import type { RoleDef, RunningRole } from "./roles/role.ts";
import { VERSION } from "./version.ts";

export interface ApplianceDeps {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly roles: Registry<RoleDef>;
  /** The node name when the plan has none (the host name in production). */
  readonly hostname: () => string;
  readonly listen?: (handler: (r: Request) => Response | Promise<Response>, addr: HostPort) => HttpServer;
  /** Puts the process at a real-time priority, returning how many threads it set (default: core/scheduling.ts). */
  readonly runRealtime?: (priority: number) => number;
}

export interface Appliance {
  readonly name: string;
  readonly statusAddr: HostPort;
  readonly metrics: MetricsRegistry;
  /** Stops everything within the plan's drain deadline (sooner if `force` aborts). Never throws. */
  stop(force?: AbortSignal): Promise<StopResult[]>;
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
  const running = new Map<string, RunningRole>();
  try {
    // Before any role starts, so that every thread a role makes inherits the policy.
    const scheduling = applyScheduling(plan, deps, logger);
    for (const roleName of plan.roles) {
      const def = roles.get(roleName);
      const role = await def.start(plan.sections[roleName], {
        nodeName: name,
        logger: logger.child(roleName),
        metrics,
        clock,
      });
      running.set(roleName, role);
      lifecycle.add(roleName, (deadline) => role.stop(deadline));
      logger.info("started", { part: roleName });
    }
    // The dashboard's figures of the last minutes, read from the roles' status every 2 s.
    const statusOfRoles = () => Object.fromEntries([...running].map(([n, r]) => [n, r.status()]));
    const history = new History({ clock, status: statusOfRoles });
    const app = createApp({
      name,
      version: VERSION,
      clock,
      startedAt,
      metrics,
      roles: statusOfRoles,
      history,
      process: () => ({ scheduling }),
      token: plan.status.token,
      maxBody: plan.status.max_body,
      logger: logger.child("status"),
      mount: [...running.values()].flatMap((r) => (r.routes ? [(app: Hono) => r.routes!(app)] : [])),
      selfGuarded: [...running.values()].flatMap((r) => r.selfGuarded ?? []),
    });
    const server = listen(app.fetch, plan.status.listen);
    history.start();
    lifecycle.add("status", (deadline) => {
      history.stop();
      return server.stop(deadline);
    });
    logger.child("status").info("listening", { addr: formatHostPort(server.addr) });
    return {
      name,
      statusAddr: server.addr,
      metrics,
      stop: async (force) => logStops(logger, await lifecycle.stop(plan.shutdown.drain_timeout, force)),
    };
  } catch (error) {
    logStops(logger, await lifecycle.stop(plan.shutdown.drain_timeout));
    if (error instanceof StartError) throw error;
    throw new StartError(errorMessage(error), { cause: error });
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
