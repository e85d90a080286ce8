/**
 * The scheduler role: Central Dispatch on one box. Virtual services from the config (and from a Central Dispatch
 * `agent-rules` file) are bound before any starts; one that cannot bind closes those before it. The status API gets
 * the services' state and counters, the operator's drain / maint / ready / weight per server (runtime only), and
 * the load-aware redirect route that answers with the chosen server as a 302 or a player metafile.
 */
import type { Hono } from "hono";
import { errorMessage, StartError, startErrorAt, UsageError } from "../core/errors.ts";
import { readTextFileLimited } from "../core/files.ts";
import { formatHostPort } from "../net/address.ts";
import type { RoleDef } from "../roles/role.ts";
import {
  ADMIN_STATES,
  type AdminState,
  MAX_WEIGHT,
  type SchedulerSection,
  schedulerSection,
} from "./config.ts";
import { builtinPickers } from "./pickers/mod.ts";
import { BufferPool } from "../net/tcp/pool.ts";
import { openTransport } from "../net/tcp/open.ts";
import { metafile } from "./redirect.ts";
import { MAX_RULES_FILE_BYTES, parseRules } from "./rules.ts";
import { Service, type ServicePlan } from "./service.ts";
import { serverChangeOf, servicesShareLocal, type ShareHub, shareHubFor, shareRoutes } from "./share.ts";

/** Buffers kept for reuse beyond those in use (two per connection). */
const POOL_SPARE = 256;

export async function servicePlans(cfg: SchedulerSection): Promise<ServicePlan[]> {
  const plans: ServicePlan[] = cfg.services.map(({ name, listen, servers, ...settings }, i) => ({
    name,
    listen,
    servers,
    settings,
    origin: "config",
    configPath: `scheduler.services[${i}].listen`,
  }));
  if (cfg.rules === null) return plans;
  let text: string;
  try {
    text = await readTextFileLimited(cfg.rules, MAX_RULES_FILE_BYTES, "agent-rules file");
  } catch (error) {
    throw new StartError(error instanceof UsageError ? error.message : String(error));
  }
  const { rules, errors } = parseRules(text, cfg.rules);
  if (errors.length) {
    throw new StartError(
      `Agent-rules file ${cfg.rules} has errors (nothing was imported):\n${
        errors.map((e) => e.format()).join("\n")
      }`,
    );
  }
  const taken = new Map(plans.map((p) => [formatHostPort(p.listen), p.name]));
  for (const rule of rules) {
    const listen = { host: rule.vip, port: rule.vport };
    const key = formatHostPort(listen);
    const where = `${rule.pos.file}:${rule.pos.line}:${rule.pos.col}`;
    if (taken.has(key)) {
      throw new StartError(`${where}: ${key} is already the address of service "${taken.get(key)}"`);
    }
    const name = `${rule.protocol.toLowerCase()}-${key.replace(/[^A-Za-z0-9.]+/g, "-").replace(/-+$/, "")}`;
    taken.set(key, name);
    plans.push({
      name,
      listen,
      servers: rule.servers.map((s) => ({
        address: { host: s.host, low: rule.serverPort, high: rule.serverPort },
        weight: 1,
        agent: null,
        maxconn: 0,
        state: "ready" as AdminState,
      })),
      settings: cfg.rules_service,
      origin: `rules ${where}`,
    });
  }
  return plans;
}

export const schedulerRole: RoleDef<SchedulerSection> = {
  name: "scheduler",
  description: "TCP connection scheduler: virtual services spread over real servers",
  needsPeer: true,
  section: schedulerSection,
  async start(first, ctx) {
    let cfg = first;
    const plans = await servicePlans(cfg);
    const buffers = new BufferPool({ bufferBytes: cfg.buffer, capacity: POOL_SPARE });
    const pickers = builtinPickers();
    const transport = openTransport(cfg.io);
    // Backup schedulers learn persistence and the operator's server changes (lib/scheduler/share.ts).
    const share = cfg.share
      ? shareHubFor(cfg.share, {
        name: ctx.nodeName,
        clock: ctx.clock,
        logger: ctx.logger.child("share"),
        metrics: ctx.metrics,
        local: servicesShareLocal(() => services),
      })
      : null;
    const deps = {
      clock: ctx.clock,
      logger: ctx.logger,
      metrics: ctx.metrics,
      pickers,
      buffers,
      transport,
      ...(share ? { onPersist: share.persisted.bind(share) } : {}),
    };
    const services = await bindAll(plans.map((plan) => new Service(plan, deps)));
    // Where the fast engine waits is settled before anything is served (it is in /status from the start).
    await transport.ready;
    const announce = (s: Service) =>
      ctx.logger.info("service listening", {
        service: s.name,
        listen: formatHostPort(s.address),
        servers: s.servers.length,
        picker: s.plan.settings.picker,
        io: transport.kind,
      });
    for (const s of services) {
      s.start();
      announce(s);
    }
    if (!services.length) {
      ctx.logger.info("no services", { hint: "add scheduler.services or scheduler.rules to the config" });
    }
    const byName = new Map(services.map((s) => [s.name, s]));
    share?.start();
    /** Services a reload removed, until their connections have drained. */
    const draining = new Set<Service>();
    return {
      status: () => ({
        state: "running",
        io: transport.kind,
        ...(transport.waits ? { io_wait: transport.waits } : {}),
        services: Object.fromEntries(services.map((s) => [s.name, s.status()])),
        ...(draining.size
          ? {
            draining: [...draining].map((s) => ({
              service: s.name,
              listen: formatHostPort(s.address),
              open: s.open,
            })),
          }
          : {}),
        ...(share ? { share: share.status() } : {}),
      }),
      async stop(deadline) {
        share?.stop();
        // Services a reload removed are still draining: the stop's deadline cuts them too.
        await Promise.all([...services, ...draining].map((s) => s.stop(deadline)));
      },
      routes: (app) => {
        schedulerRoutes(app, byName, share);
        if (share) shareRoutes(app, share);
      },
      health: () => {
        const problems: string[] = [];
        const degraded: string[] = [];
        for (const s of services) {
          if (!s.listening) problems.push(`service ${s.name}: not listening on ${formatHostPort(s.address)}`);
          else if (!s.servers.some((v) => v.up)) degraded.push(`service ${s.name}: no healthy server`);
        }
        return { ok: problems.length === 0, problems, degraded };
      },
      async prepareReload(section) {
        const next = section as SchedulerSection;
        const nextPlans = await servicePlans(next);
        const byKey = new Map(services.map((s) => [serviceKey(s.plan), s]));
        const kept: [Service, ServicePlan][] = [];
        const added: Service[] = [];
        for (const plan of nextPlans) {
          const running = byKey.get(serviceKey(plan));
          if (running) {
            byKey.delete(serviceKey(plan));
            kept.push([running, plan]);
          } else added.push(new Service(plan, deps));
        }
        const removed = [...byKey.values()];
        // What can fail (binding the new services' addresses) happens now; nothing running has changed.
        await bindAll(added);
        const changed = kept.flatMap(([s, plan]) => {
          const lines = s.changesTo(plan);
          return lines.length ? [`service ${s.name}: ${lines.join(", ")}`] : [];
        });
        const notes: string[] = [];
        if (next.io !== cfg.io) {
          notes.push(`scheduler.io ${cfg.io} -> ${next.io}: takes effect at the next start`);
        }
        if (JSON.stringify(next.share) !== JSON.stringify(cfg.share)) {
          notes.push("scheduler.share changed: takes effect at the next start");
        }
        if (next.buffer !== cfg.buffer) {
          notes.push(`scheduler.buffer ${cfg.buffer} -> ${next.buffer}: takes effect at the next start`);
        }
        return {
          summary: {
            added: added.map((s) => `service ${s.name}`),
            removed: removed.map((s) => `service ${s.name}`),
            changed,
            replaced: [],
            notes,
          },
          commit(drain) {
            // Removed services stop accepting and leave /metrics first, so that a kept or new service may take
            // their name; their open connections drain until `drain` aborts (the role's stop waits for them). The
            // commit resolves once the change is applied, not when the drains end.
            for (const s of removed) {
              ctx.logger.info("service removed, draining", { service: s.name, open: s.open });
              s.unpublish();
              draining.add(s);
              s.stop(drain).catch((error) =>
                ctx.logger.error("service drain failed", { service: s.name, error: errorMessage(error) })
              ).finally(() => draining.delete(s));
            }
            const failed: string[] = [];
            // Changed services publish again under their (maybe new) names: all leave first, so that names may
            // swap. A service the reload does not change is left alone (its checks, picker and series go on).
            const updated = kept.filter(([s, plan]) => s.changesTo(plan).length > 0);
            for (const [s] of updated) s.unpublish();
            for (const [s, plan] of updated) {
              try {
                s.update(plan, drain);
              } catch (error) {
                failed.push(`service ${s.name}: ${errorMessage(error)}`);
              }
            }
            for (const s of added) {
              try {
                s.start();
                announce(s);
              } catch (error) {
                failed.push(`service ${s.name}: ${errorMessage(error)}`);
                void s.stop(AbortSignal.abort());
              }
            }
            services.splice(0, services.length, ...kept.map(([s]) => s), ...added.filter((s) => s.listening));
            byName.clear();
            for (const s of services) byName.set(s.name, s);
            cfg = next;
            return failed.length ? Promise.reject(new Error(failed.join("; "))) : Promise.resolve();
          },
          async abort() {
            const now = AbortSignal.abort();
            for (const s of added) await s.stop(now);
          },
        };
      },
    };
  },
};

/** A service's identity across a reload: its listen address (so a rename keeps the socket), or its name on port 0. */
function serviceKey(plan: ServicePlan): string {
  return plan.listen.port === 0 ? `name ${plan.name}` : formatHostPort(plan.listen);
}

/**
 * Binds every service's address, or none: one that cannot bind closes those bound before it (a StartError naming the
 * service and, for a config service, its key).
 */
async function bindAll(services: Service[]): Promise<Service[]> {
  const bound: Service[] = [];
  try {
    for (const s of services) {
      try {
        s.listen();
      } catch (error) {
        const from = s.plan.configPath ? "" : ` (${s.plan.origin})`;
        throw startErrorAt(error, s.plan.configPath ?? "", `service ${s.name}${from}`);
      }
      bound.push(s);
    }
  } catch (error) {
    const now = AbortSignal.abort();
    for (const s of bound) await s.stop(now);
    throw error;
  }
  return services;
}

/** What a redirect may put into a URL and a metafile: nothing that could end a line or a header. */
const SAFE_PATH = /^[A-Za-z0-9._~\/-]{1,512}$/;

const NOT_PERSISTED = "runtime change; a restart returns to the state and weight in the config";

function schedulerRoutes(app: Hono, services: Map<string, Service>, share: ShareHub | null): void {
  const noService = (name: string) => ({
    error: `No service "${name}" (known: ${[...services.keys()].join(", ") || "none"})`,
  });
  app.get(
    "/scheduler/services",
    (c) => c.json(Object.fromEntries([...services].map(([n, s]) => [n, s.status()]))),
  );
  app.get("/scheduler/services/:service", (c) => {
    const s = services.get(c.req.param("service"));
    return s ? c.json(s.status()) : c.json(noService(c.req.param("service")), 404);
  });
  app.post("/scheduler/services/:service/servers/:server", async (c) => {
    const s = services.get(c.req.param("service"));
    if (!s) return c.json(noService(c.req.param("service")), 404);
    const key = c.req.param("server");
    const server = s.servers.find((v) => v.key === key);
    if (!server) {
      return c.json({
        error: `No server "${key}" in service "${s.name}" (known: ${s.servers.map((v) => v.key).join(", ")})`,
      }, 404);
    }
    const body = await c.req.json().catch(() => undefined) as
      | { state?: unknown; weight?: unknown }
      | undefined;
    const usage = `Body must be {"state": one of ${
      ADMIN_STATES.join(", ")
    }} and/or {"weight": an integer 0..${MAX_WEIGHT}}`;
    if (!body || typeof body !== "object" || (body.state === undefined && body.weight === undefined)) {
      return c.json({ error: usage }, 400);
    }
    const { state, weight } = body;
    if (state !== undefined && !ADMIN_STATES.includes(state as AdminState)) {
      return c.json({ error: usage }, 400);
    }
    if (
      weight !== undefined &&
      !(Number.isInteger(weight) && (weight as number) >= 0 && (weight as number) <= MAX_WEIGHT)
    ) {
      return c.json({ error: usage }, 400);
    }
    if (weight !== undefined) server.configuredWeight = weight as number;
    if (state !== undefined) server.setAdmin(state as AdminState);
    s.changed();
    share?.serverChanged(
      serverChangeOf(s.name, server, {
        state: state as AdminState | undefined,
        weight: weight as number | undefined,
      }),
    );
    return c.json({ ...server.status(), service: s.name, persisted: false, note: NOT_PERSISTED });
  });
  // The redirect route: GET /redirect/<service>/<path>; a .ram, .m3u or .sdp path gets that metafile. The path
  // pattern takes line breaks too (`.` would not), so that such a path gets the 400 below rather than a bare 404.
  app.get("/redirect/:service/:path{[\\s\\S]+}", (c) => {
    const s = services.get(c.req.param("service"));
    if (!s) return c.json(noService(c.req.param("service")), 404);
    const path = `/${c.req.param("path")}`;
    if (!SAFE_PATH.test(path)) {
      return c.json(
        { error: "The stream path may hold letters, digits and . _ ~ / - only (at most 512)" },
        400,
      );
    }
    const remote = (c.env as { remoteAddr?: Deno.NetAddr } | undefined)?.remoteAddr;
    const server = s.redirect(remote?.hostname ?? "0.0.0.0");
    if (!server) return c.json({ error: `No server of service "${s.name}" can take a client now` }, 503);
    const answer = metafile(s.plan.settings.redirect, server.addr, path, s.name);
    c.header("Cache-Control", "no-store");
    if (answer.kind === "redirect") return c.redirect(answer.url, 302);
    c.header("Content-Type", answer.contentType);
    return c.body(answer.body);
  });
}
