/**
 * The agent role: runs beside a real server and answers HAProxy-style agent checks over TCP with one reply
 * line (`75% ready`), so edgenode schedulers and HAProxy alike weight the server by its spare capacity. The
 * reading comes from the load average, memory, connections to a port, or a command's own reply; it is taken
 * at most once per `cache` interval. The administrative state (ready, drain, maint) starts from the config
 * and can be changed over the status API; that change lasts until restart, or a reload that changes `state`. A
 * reload applies a new section in place, except a new listen address, which gets a new listener (see
 * prepareReload in startAgent).
 */
import type { Hono } from "hono";
import type { YAMLMap } from "yaml";
import {
  type Context,
  duration,
  hostPort,
  int,
  list,
  nodeAt,
  nullable,
  type ObjectOf,
  oneOf,
  opt,
  section,
  str,
} from "../config/schema.ts";
import { StartError } from "../core/errors.ts";
import { declareSeries } from "../core/metrics.ts";
import { formatHostPort } from "../net/address.ts";
import type { RoleContext, RoleDef, RoleReload, RunningRole } from "../roles/role.ts";
import {
  AGENT_ADMIN_STATES,
  type AgentAdmin,
  formatAgentReply,
  MAX_AGENT_MAXCONN,
} from "../net/agent_check.ts";
import { Cached } from "./cache.ts";
import { type LoadReaders, systemReaders } from "./load.ts";
import {
  AGENT_SOURCES,
  composeReply,
  FAILURE_POLICIES,
  measure,
  type Measurement,
  type SourceSpec,
} from "./sources.ts";
import { type AgentServer, serveAgent } from "./server.ts";

/** The port agents conventionally listen on (HAProxy examples and other agents use it). */
export const AGENT_DEFAULT_PORT = 9777;

const agentFields = {
  listen: opt(hostPort({ ipOnly: true }), Object.freeze({ host: "0.0.0.0", port: AGENT_DEFAULT_PORT })),
  source: opt(oneOf(AGENT_SOURCES, "a source:"), "loadavg"),
  port: opt(nullable(int({ min: 1, max: 65535 })), null),
  max_connections: opt(int({ min: 1, max: 10_000_000 }), 1000),
  command: opt(list(str({ min: 1, max: 4096, describe: "a command word" }), { max: 256 }), []),
  command_timeout: opt(duration({ min: 10, max: 60_000 }), 2000),
  on_failure: opt(oneOf(FAILURE_POLICIES), "keep"),
  state: opt(oneOf(AGENT_ADMIN_STATES), "ready"),
  maxconn: opt(nullable(int({ min: 0, max: MAX_AGENT_MAXCONN })), null),
  min_weight: opt(int({ min: 0, max: 100 }), 1),
  cache: opt(duration({ min: 100, max: 60_000 }), 1000),
  max_clients: opt(int({ min: 1, max: 10_000 }), 64),
  timeout: opt(duration({ min: 100, max: 60_000 }), 2000),
};

export type AgentSection = ObjectOf<typeof agentFields>;

/** A source's own settings must be there when it is chosen. */
function refine(cfg: AgentSection, node: YAMLMap | null, ctx: Context, path: string): void {
  if (cfg.source === "connections" && cfg.port === null) {
    ctx.error(
      nodeAt(node, ["source"]),
      `${path}.port`,
      'The connections source needs "port": the local port whose connections count',
    );
  }
  if (cfg.source === "command" && cfg.command.length === 0) {
    ctx.error(
      nodeAt(node, ["source"]),
      `${path}.command`,
      'The command source needs "command": the program and its arguments, such as [/usr/bin/load, -q]',
    );
  }
}

/** What the role needs besides its section: the readers are the machine's unless a test gives its own. */
export interface AgentDeps {
  readonly readers?: LoadReaders;
}

/** What the agent counts, by its /status names. */
interface AgentFigures {
  connections: number;
  replies: number;
  errors: number;
  refused: number;
  readings: number;
  reading_failures: number;
  active_connections: number;
  weight_percent: number;
}

/** The agent's series, declared once: /metrics renders them and /status shows them under `counters`. */
const AGENT_SERIES = declareSeries<AgentFigures>({
  connections: { help: "Agent check connections accepted" },
  replies: { help: "Agent replies written" },
  errors: { help: "Agent check connections that ended without a reply" },
  refused: { help: "Agent check connections closed unanswered: too many at once" },
  readings: { help: "Load readings taken" },
  reading_failures: { help: "Load readings that failed" },
  active_connections: { help: "Agent check connections being answered", kind: "gauge" },
  weight_percent: { help: "Weight percentage of the last reading (NaN when it had none)", kind: "gauge" },
});

/** The running agent: its status, its runtime state and its stop; `agentRole.start` wraps this. */
export interface RunningAgent extends RunningRole {
  /** The administrative state now answered. */
  readonly admin: AgentAdmin;
  /** Changes the administrative state until restart; returns the previous one. */
  setAdmin(state: AgentAdmin): AgentAdmin;
  /** The reply a check would get now (computing the reading if it is stale). */
  reply(): Promise<string>;
}

const NOT_PERSISTED = "runtime change; a restart returns to agent.state in the config";

function sourceSpec(cfg: AgentSection): SourceSpec {
  return {
    source: cfg.source,
    port: cfg.port,
    maxConnections: cfg.max_connections,
    command: cfg.command,
    commandTimeoutMs: cfg.command_timeout,
    minWeight: cfg.min_weight,
  };
}

export async function startAgent(
  section: AgentSection,
  ctx: RoleContext,
  deps: AgentDeps = {},
): Promise<RunningAgent> {
  let cfg = section;
  const { clock } = ctx;
  const logger = ctx.logger.child("agent");
  const readers = deps.readers ?? systemReaders(clock);
  let spec = sourceSpec(cfg);
  let admin: AgentAdmin = cfg.state;
  let lastReply: string | null = null;
  let failures = 0;
  let lastError: string | null = null;

  const cache = new Cached<Measurement>(async () => {
    const m = await measure(spec, readers);
    if (!m.ok) {
      failures++;
      // Log a failure when it starts or changes, not at every reading.
      if (m.error !== lastError) logger.warn("agent reading failed", { source: cfg.source, error: m.error });
      lastError = m.error;
    } else {
      if (lastError !== null) logger.info("agent reading recovered", { source: cfg.source });
      lastError = null;
      if (m.problems.length) {
        logger.debug("agent command reply had problems", { problems: m.problems.join("; ") });
      }
    }
    return m;
  }, { clock, ttlMs: cfg.cache, maxWaitMs: Math.floor(cfg.timeout / 2) });

  // The first reading is taken before listening: a source that cannot work on this machine stops the start,
  // and the first checks find a value ready. A command may fail for a while and come good: that only warns.
  const first = await cache.get();
  if (!first.ok && cfg.source !== "command") {
    throw new StartError(`Cannot start agent: source ${cfg.source}: ${first.error}`);
  }

  // `cfg` is the section in force: a reload replaces it, and what reads it below reads the new one.
  const reply = async () => {
    const line = formatAgentReply(
      composeReply(await cache.get(), { admin, maxconn: cfg.maxconn, onFailure: cfg.on_failure }),
    );
    lastReply = line.trimEnd();
    return line;
  };

  // The series are published before the server starts and read its tallies late (a name clash throws first).
  let server: AgentServer | null = null;
  /** What servers a reload replaced had counted, so that counters carry on across a new listener. */
  const retired = { accepted: 0, replies: 0, errors: 0, refused: 0 };
  /** Replaced servers still draining: their tallies count until they are retired. */
  const draining = new Set<AgentServer>();
  const tally = (k: keyof typeof retired) =>
    retired[k] + (server?.stats[k] ?? 0) + [...draining].reduce((n, d) => n + d.stats[k], 0);
  const figures = (): AgentFigures => {
    const s = server?.stats;
    const m = cache.peek()?.value;
    return {
      connections: tally("accepted"),
      replies: tally("replies"),
      errors: tally("errors"),
      refused: tally("refused"),
      readings: cache.computations,
      reading_failures: failures,
      active_connections: s?.active ?? 0,
      weight_percent: m?.ok && m.fields.weightPercent !== undefined ? m.fields.weightPercent : NaN,
    };
  };
  const set = ctx.metrics.publish("agent", {}, AGENT_SERIES, figures);
  try {
    server = serveAgent({
      listen: cfg.listen,
      maxClients: cfg.max_clients,
      timeoutMs: cfg.timeout,
      clock,
      logger,
      reply,
    });
  } catch (error) {
    ctx.metrics.remove(set);
    throw error;
  }
  let running = server;
  let listen = formatHostPort(running.addr);
  logger.info("agent listening", { listen, source: cfg.source, state: admin });

  const status = () => {
    const last = cache.peek();
    return {
      state: "running",
      listen,
      source: cfg.source,
      admin,
      admin_persisted: admin === cfg.state,
      last_reply: lastReply,
      last_computed: last ? new Date(last.at).toISOString() : null,
      last_error: lastError,
      last_request: running.stats.lastRequest,
      counters: set.values(),
    };
  };

  /**
   * Reload, phase one. A changed listen address replaces the listener: the new one is bound here (a port in use
   * fails the reload), and at commit it takes the checks while the old one stops accepting and lets its
   * connections finish until the drain deadline. The same port under another address (0.0.0.0:9777 to
   * 127.0.0.1:9777) cannot be bound beside the old listener, and closing that first would refuse checks while the
   * change could still fail: such a reload is refused (restart, or move the port in two reloads). A changed load
   * source (source, port, max_connections, command, command_timeout, min_weight) takes a first reading here, which
   * fails the reload as it would fail a start; at commit it becomes the reading checks get. Everything else applies
   * in place: cache interval, maxconn, on_failure, max_clients and timeout (for connections from then on). The
   * administrative state set over the API stays unless the config changes `state`.
   */
  const prepareReload = async (section: unknown): Promise<RoleReload> => {
    const next = section as AgentSection;
    const changed: string[] = [];
    const replaced: string[] = [];
    const notes: string[] = [];
    const nextSpec = sourceSpec(next);
    const newSource = JSON.stringify(nextSpec) !== JSON.stringify(spec);
    let reading: Measurement | null = null;
    if (newSource) {
      reading = await measure(nextSpec, readers);
      if (!reading.ok && next.source !== "command") {
        throw new StartError(`Cannot reload agent: source ${next.source}: ${reading.error}`);
      }
    }
    let fresh: AgentServer | null = null;
    const moves = formatHostPort(next.listen) !== formatHostPort(cfg.listen);
    if (moves) {
      if (next.listen.port !== 0 && next.listen.port === running.addr.port) {
        throw new StartError(
          `Cannot reload agent: listen ${
            formatHostPort(next.listen)
          } takes port ${next.listen.port}, which the running listener holds on ${listen}; a reload can move the agent to another port only`,
          { configPath: "agent.listen" },
        );
      }
      fresh = serveAgent({
        listen: next.listen,
        maxClients: next.max_clients,
        timeoutMs: next.timeout,
        clock,
        logger,
        reply,
      });
      replaced.push("agent listener");
    }
    const { listen: _a, ...rest } = cfg;
    const { listen: _b, ...nextRest } = next;
    if (JSON.stringify(rest) !== JSON.stringify(nextRest)) changed.push("agent");
    if (next.state === cfg.state && admin !== cfg.state) {
      notes.push(`agent state ${admin} set over the API stays (the config's state is unchanged)`);
    }
    let done = false;
    return {
      summary: { added: [], removed: [], changed, replaced, notes },
      commit(drain) {
        if (done) return Promise.resolve();
        done = true;
        const old = cfg;
        cfg = next;
        spec = nextSpec;
        if (next.state !== old.state) agent.setAdmin(next.state);
        cache.reconfigure({ ttlMs: next.cache, maxWaitMs: Math.floor(next.timeout / 2) });
        if (reading) {
          lastError = reading.ok ? null : reading.error;
          cache.prime(reading);
        }
        if (!fresh) {
          running.update({ maxClients: next.max_clients, timeoutMs: next.timeout });
          return Promise.resolve();
        }
        const before = running;
        running = fresh;
        server = fresh;
        listen = formatHostPort(fresh.addr);
        logger.info("agent listening", {
          listen,
          source: next.source,
          state: admin,
          replaces: formatHostPort(before.addr),
        });
        // The old listener drains in the background (the role's stop waits for it): the reload is applied now.
        draining.add(before);
        void before.close(drain).finally(() => {
          for (const k of ["accepted", "replies", "errors", "refused"] as const) {
            retired[k] += before.stats[k];
          }
          draining.delete(before);
        });
        return Promise.resolve();
      },
      async abort() {
        if (done) return;
        done = true;
        await fresh?.close(AbortSignal.abort());
      },
    };
  };

  const agent: RunningAgent = {
    get admin() {
      return admin;
    },
    setAdmin(state) {
      const previous = admin;
      admin = state;
      if (state !== previous) {
        logger.info("agent state changed", { from: previous, to: state, persisted: false });
      }
      return previous;
    },
    reply,
    status,
    async stop(drain) {
      await Promise.all([running, ...draining].map((d) => d.close(drain)));
      ctx.metrics.remove(set);
    },
    routes: (app: Hono) => agentRoutes(app, agent, status),
    prepareReload,
  };
  return agent;
}

function agentRoutes(app: Hono, agent: RunningAgent, status: () => Record<string, unknown>): void {
  app.get("/agent", (c) => c.json(status()));
  app.post("/agent/state", async (c) => {
    const body = await c.req.json().catch(() => undefined) as { state?: unknown } | undefined;
    const state = body?.state;
    if (typeof state !== "string" || !(AGENT_ADMIN_STATES as readonly string[]).includes(state)) {
      return c.json({ error: `Body must be {"state": one of ${AGENT_ADMIN_STATES.join(", ")}}` }, 400);
    }
    const previous = agent.setAdmin(state as AgentAdmin);
    return c.json({ state, previous, persisted: false, note: NOT_PERSISTED });
  });
}

export const agentRole: RoleDef<AgentSection> = {
  name: "agent",
  description: "load agent beside a real server, answering the scheduler's checks",
  needsPeer: false,
  section: section(agentFields, refine),
  start: (cfg, ctx) => startAgent(cfg, ctx),
};
