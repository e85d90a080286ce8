/**
 * The status API every box serves: GET /status (JSON), /metrics (Prometheus text), /healthz, and the mutating routes
 * behind a bearer token and a body size limit. Built from its dependencies alone, so tests call `app.request()`.
 */
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import type { Clock } from "../core/clock.ts";
import { isLogLevel, LOG_LEVELS, type Logger } from "../core/logger.ts";
import type { Counter, MetricsRegistry } from "../core/metrics.ts";
import { requireToken } from "./auth.ts";
import { dashboardRoutes } from "../dashboard/page.tsx";
import type { History } from "../dashboard/history.ts";
import type { RoleHealth } from "../roles/role.ts";

export interface AppDeps {
  readonly name: string;
  readonly version: string;
  readonly clock: Clock;
  /** When the process started, on `clock`. */
  readonly startedAt: number;
  readonly metrics: MetricsRegistry;
  /** Summary of each running role by name. */
  readonly roles: () => Record<string, unknown>;
  /** What /status says of the process itself (its scheduling). */
  readonly process?: () => Record<string, unknown>;
  readonly token: string | null;
  readonly maxBody: number;
  readonly logger: Logger;
  /** Routes added by the running roles, mounted after the built-in ones and behind the same guard. */
  readonly mount?: readonly ((app: Hono) => void)[];
  /**
   * Path prefixes a running role guards itself (RunningRole.selfGuarded, e.g. "/cluster/" with a cluster): the
   * bearer token does not apply there. Each is "/name/"; absent or empty: every mutating route needs the token.
   */
  readonly selfGuarded?: readonly string[];
  /**
   * The running roles by name, for GET /healthz (each one's `health()`; a role without it counts as healthy). Read on
   * every request. Absent: /healthz answers ok.
   */
  readonly health?: () => Iterable<readonly [string, { health?(): RoleHealth }]>;
  /** True while the process is stopping (its grace before listeners close): /healthz then fails, whatever it asks. */
  readonly stopping?: () => boolean;
  /** The figures of the last minutes: with it, GET / is the dashboard (lib/dashboard/page.tsx). */
  readonly history?: History;
}

const PREFIX = /^\/[A-Za-z0-9_.-]+\/$/;

const MUTATING = ["POST", "PUT", "PATCH", "DELETE"];

export function createApp(deps: AppDeps): Hono {
  const { clock, metrics, logger } = deps;
  const { requests, clientErrors, serverErrors } = httpCounters(metrics);
  const guard = requireToken(deps.token);
  const selfGuarded = deps.selfGuarded ?? [];
  for (const p of selfGuarded) {
    // A malformed prefix ("" or "/") would open every route: a programming error, refused at once.
    if (!PREFIX.test(p)) throw new Error(`Cannot exempt "${p}" from the token: a prefix is "/name/"`);
  }
  const limit = bodyLimit({
    maxSize: deps.maxBody,
    onError: (c) => c.json({ error: `Request body larger than ${deps.maxBody} bytes` }, 413),
  });

  const app = new Hono();

  app.use("*", async function countRequests(c, next) {
    await next();
    requests.inc();
    if (c.res.status >= 500) serverErrors.inc();
    else if (c.res.status >= 400) clientErrors.inc();
  });

  // Every mutating route, present and future, sits behind the token and the body limit, except under a prefix a
  // running role guards itself (with a cluster, /cluster/*: each request signed with the cluster token and checked
  // by the cluster's own guard, lib/cluster/auth.ts). Without such a role, /cluster/* needs the token like the rest.
  app.on([...MUTATING], "*", function guardUnlessSelfGuarded(c, next) {
    const path = c.req.path;
    return selfGuarded.some((p) => path.startsWith(p)) ? next() : guard(c, next);
  });
  // The body limit holds for every method that may carry a body, not only the mutating ones: a middleware that
  // reads the body before a route is matched (a self-guarding role's signature check) reads at most this much of an
  // OPTIONS or PROPFIND too.
  app.use("*", function limitBodies(c, next) {
    const method = c.req.method;
    return method === "GET" || method === "HEAD" ? next() : limit(c, next);
  });

  // For keepalived's vrrp_script and load balancers: 200 "ok" when every role serves what it should, else 503 with
  // one line per problem ("scheduler: service web: no healthy server"); JSON when asked for with Accept.
  // `?role=scheduler,relay` asks those roles only (a role not running is a problem), so that a relay's trouble does
  // not move a scheduler's VIP. `?level=listening` leaves out what only degrades a role (a service with no healthy
  // server): keepalived can then put a box whose edgenode is gone in FAULT, and only lower the priority of one whose
  // servers are down (config/keepalived/).
  app.get("/healthz", (c) => {
    const listeningOnly = c.req.query("level") === "listening";
    const asked = c.req.query("role")?.split(",").map((r) => r.trim()).filter(Boolean);
    const running = [...(deps.health?.() ?? [])];
    const picked = asked ? running.filter(([name]) => asked.includes(name)) : running;
    const missing = (asked ?? []).filter((name) => !running.some(([n]) => n === name));
    const report = healthReport([
      ...picked,
      ...missing.map((name) => [name, { health: () => ({ ok: false, problems: ["not running"] }) }] as const),
      ...(deps.stopping?.()
        ? [["edgenode", { health: () => ({ ok: false, problems: ["stopping"] }) }] as const]
        : []),
    ], listeningOnly);
    const json = /\bapplication\/json\b/.test(c.req.header("accept") ?? "");
    c.header("Cache-Control", "no-store");
    if (json) return c.json(report, report.ok ? 200 : 503);
    if (report.ok) return c.text("ok\n");
    const lines = Object.entries(report.roles).flatMap(([role, h]) => h.problems.map((p) => `${role}: ${p}`));
    return c.text(lines.join("\n") + "\n", 503);
  });

  const statusDocument = () => ({
    name: deps.name,
    version: deps.version,
    started_at: new Date(deps.startedAt).toISOString(),
    uptime_seconds: Math.max(0, (clock.now() - deps.startedAt) / 1000),
    log_level: logger.level,
    ...(deps.process ? { process: deps.process() } : {}),
    roles: deps.roles(),
    ...(deps.history ? { history: deps.history.status() } : {}),
  });
  app.get("/status", (c) => c.json(statusDocument()));
  if (deps.history) dashboardRoutes(app, { status: statusDocument, history: deps.history });

  app.get("/metrics", (c) => {
    c.header("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    return c.body(metrics.render());
  });

  app.put("/log-level", async (c) => {
    const body = await readJson(c.req.raw);
    const level = (body as { level?: unknown } | undefined)?.level;
    if (typeof level !== "string" || !isLogLevel(level)) {
      return c.json({ error: `Body must be {"level": one of ${LOG_LEVELS.join(", ")}}` }, 400);
    }
    logger.level = level;
    logger.info("log level changed", { level });
    return c.json({
      level,
      persisted: false,
      note: "runtime change; a restart returns to the config's log.level",
    });
  });

  for (const add of deps.mount ?? []) add(app);

  app.notFound((c) => c.json({ error: `No route ${c.req.method} ${c.req.path}` }, 404));
  app.onError((error, c) => {
    logger.error("request failed", { method: c.req.method, path: c.req.path, error: String(error) });
    return c.json({ error: "Internal error" }, 500);
  });
  return app;
}

/** The status API's counters, made once per registry: a reload makes the app again and keeps counting in them. */
const HTTP_COUNTERS = new WeakMap<
  MetricsRegistry,
  Record<"requests" | "clientErrors" | "serverErrors", Counter>
>();

function httpCounters(metrics: MetricsRegistry) {
  let counters = HTTP_COUNTERS.get(metrics);
  if (!counters) {
    const http = metrics.set("http");
    counters = {
      requests: http.counter("requests_total", "Status API requests answered"),
      clientErrors: http.counter("client_errors_total", "Status API requests answered with 4xx"),
      serverErrors: http.counter("server_errors_total", "Status API requests answered with 5xx"),
    };
    HTTP_COUNTERS.set(metrics, counters);
  }
  return counters;
}

/** Every role's health; a role whose check throws is unhealthy with the error as its problem. */
function healthReport(
  roles: Iterable<readonly [string, { health?(): RoleHealth }]>,
  listeningOnly = false,
): { ok: boolean; roles: Record<string, RoleHealth> } {
  const out: Record<string, RoleHealth> = {};
  let ok = true;
  for (const [name, role] of roles) {
    let h: RoleHealth;
    try {
      h = role.health?.() ?? { ok: true, problems: [] };
    } catch (error) {
      h = {
        ok: false,
        problems: [`health check failed: ${error instanceof Error ? error.message : String(error)}`],
      };
    }
    // A role that says it is not ok without saying why still gets a line.
    if (!h.ok && h.problems.length === 0) h = { ok: false, problems: ["not healthy (no detail given)"] };
    const degraded = listeningOnly ? [] : h.degraded ?? [];
    const fine = h.ok && degraded.length === 0;
    out[name] = { ok: fine, problems: [...h.problems, ...degraded] };
    ok &&= fine;
  }
  return { ok, roles: out };
}

async function readJson(request: Request): Promise<unknown> {
  try {
    return await request.json();
  } catch {
    return undefined;
  }
}
