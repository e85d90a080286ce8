/**
 * One real server of a service and everything the scheduler knows about it: the plan (address, weight, maxconn),
 * the live status from health checks and its agent, the operator's runtime changes, and its connection counts.
 * Pure and clock-free: checks, agent replies and connects report here, and the server says whether it changed state.
 *
 * States follow HAProxy's split. The operational state (up/down) comes from health checks (rise/fall) and from the
 * agent's `down`/`up`; the administrative state (ready/drain/maint) comes from config or the API, and separately from
 * the agent: the stricter of the two applies. `drain` takes no new connections but keeps those open; `maint` and a
 * server going down also close the open ones (their `signal` aborts).
 */
import { declareSeries, figuresOf } from "../core/metrics.ts";
import type { HostPort } from "../net/address.ts";
import type { AgentReply } from "../net/agent_check.ts";
import { type AdminState, MAX_WEIGHT, type PlannedServer, type ServerSpec } from "./config.ts";

export const ADMIN_RANK: Record<AdminState, number> = { ready: 0, drain: 1, maint: 2 };

export interface Observation {
  readonly at: number;
  readonly ok: boolean;
  readonly detail: string;
}

export type Transition = "down" | "up" | null;

export class Server {
  readonly addr: HostPort;
  readonly key: string;
  /** The config entry it came from (replaced by a reload that changes it). */
  spec: ServerSpec;
  /** Operator's administrative state and weight; they start from config and are not persisted. */
  admin: AdminState;
  configuredWeight: number;
  /** What the agent last said (null: nothing, or no agent). */
  agentAdmin: AdminState | null = null;
  agentPercent: number | null = null;
  agentMaxconn: number | null = null;
  agentDown = false;
  /** From health checks and failed connects. A server starts up: the first check or connect corrects it. */
  healthUp = true;
  #failures = 0;
  #successes = 0;
  /** Connections open now, ever, and connects that failed. */
  active = 0;
  total = 0;
  failedConnects = 0;
  lastCheck: Observation | null = null;
  lastAgent: (Observation & { readonly reply: string | null; readonly problems: readonly string[] }) | null =
    null;
  /** When the server last changed between up and down. */
  changedAt: number;
  #abort = new AbortController();

  constructor(planned: PlannedServer, public rise: number, public fall: number, now: number) {
    this.addr = planned.addr;
    this.key = planned.key;
    this.spec = planned.spec;
    this.admin = planned.spec.state;
    this.configuredWeight = planned.spec.weight;
    this.changedAt = now;
  }

  get up(): boolean {
    return this.healthUp && !this.agentDown;
  }

  /** The stricter of the operator's and the agent's administrative state. */
  get effectiveAdmin(): AdminState {
    const agent = this.agentAdmin ?? "ready";
    return ADMIN_RANK[agent] > ADMIN_RANK[this.admin] ? agent : this.admin;
  }

  /**
   * The weight pickers see: the configured weight scaled by the agent's percentage and capped at HAProxy's 256, 0
   * unless ready and up. Unlike HAProxy, the fraction is kept: HAProxy truncates to an integer, so a server of its
   * default weight 1 reporting anything under 100% would get weight 0 and no new clients.
   */
  get weight(): number {
    return this.up && this.effectiveAdmin === "ready" ? this.scaledWeight : 0;
  }

  /** The configured weight scaled by the agent's percentage, whatever the state (HAProxy's `weight` column). */
  get scaledWeight(): number {
    return Math.min(MAX_WEIGHT, this.configuredWeight * (this.agentPercent ?? 100) / 100);
  }

  /** Idle capacity the agent reports (0..100), 100 without one. */
  get capacity(): number {
    return Math.min(100, this.agentPercent ?? 100);
  }

  get maxconn(): number {
    return this.agentMaxconn ?? this.spec.maxconn;
  }

  /** Would take a new connection if it had room. */
  get available(): boolean {
    return this.weight > 0 && !this.retired;
  }

  get hasRoom(): boolean {
    return this.maxconn === 0 || this.active < this.maxconn;
  }

  /** Aborts when the server goes down or into maintenance: its connections close. */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  get state(): string {
    if (!this.up) return "down";
    return this.effectiveAdmin === "ready" ? "up" : this.effectiveAdmin;
  }

  /** A health check's result (a failed client connect counts as a failed check). */
  observe(ok: boolean, detail: string, now: number): Transition {
    this.lastCheck = { at: now, ok, detail };
    const wasUp = this.up;
    if (ok) {
      this.#failures = 0;
      if (!this.healthUp && ++this.#successes >= this.rise) this.healthUp = true;
    } else {
      this.#successes = 0;
      if (this.healthUp && ++this.#failures >= this.fall) this.healthUp = false;
    }
    return this.#transition(wasUp, now);
  }

  connectFailed(detail: string, now: number): Transition {
    this.failedConnects++;
    return this.observe(false, `client connect failed: ${detail}`, now);
  }

  /** Applies an agent reply the way HAProxy does; an unreachable agent (reply null) changes nothing. */
  agentReport(reply: AgentReply | null, raw: string | null, error: string | null, now: number): Transition {
    this.lastAgent = {
      at: now,
      ok: error === null,
      detail: error ?? raw?.trim() ?? "",
      reply: raw,
      problems: reply?.problems ?? [],
    };
    if (!reply) return null;
    const wasUp = this.up;
    const wasMaint = this.#inMaint();
    if (reply.weightPercent !== undefined) this.agentPercent = reply.weightPercent;
    if (reply.maxconn !== undefined) this.agentMaxconn = reply.maxconn;
    if (reply.admin !== undefined) this.agentAdmin = reply.admin;
    if (reply.op !== undefined) this.agentDown = reply.op !== "up";
    const t = this.#transition(wasUp, now);
    if (!wasMaint && this.#inMaint()) this.#closeAll();
    return t;
  }

  /**
   * A reload's new config entry for this server (same address). What the operator set over the API (state, weight)
   * survives unless the config changes that item; health, connections and (with the same agent) agent figures stay.
   */
  reconfigure(spec: ServerSpec, rise: number, fall: number): void {
    const old = this.spec;
    this.spec = spec;
    this.rise = rise;
    this.fall = fall;
    if (spec.weight !== old.weight) this.configuredWeight = spec.weight;
    if (JSON.stringify(spec.agent) !== JSON.stringify(old.agent)) {
      // Another agent, or none: what the old one last said no longer holds.
      this.agentAdmin = null;
      this.agentPercent = null;
      this.agentMaxconn = null;
      this.agentDown = false;
      this.lastAgent = null;
    }
    if (spec.state !== old.state) this.setAdmin(spec.state);
  }

  /** Taken out of its service by a reload: no new connections; `cut` closes the ones still open. */
  retire(cut: boolean): void {
    this.retired = true;
    if (cut) this.#closeAll();
  }

  /** Removed from its service by a reload and draining (never picked again). */
  retired = false;

  /** The operator's change; maint closes the open connections, drain keeps them. */
  setAdmin(state: AdminState): void {
    const wasMaint = this.#inMaint();
    this.admin = state;
    if (!wasMaint && this.#inMaint()) this.#closeAll();
  }

  #inMaint(): boolean {
    return this.effectiveAdmin === "maint";
  }

  #transition(wasUp: boolean, now: number): Transition {
    if (wasUp === this.up) return null;
    this.changedAt = now;
    if (!this.up) {
      this.#closeAll();
      return "down";
    }
    return "up";
  }

  #closeAll(): void {
    this.#abort.abort(new Error(`Server ${this.key} is ${this.state}`));
    this.#abort = new AbortController();
  }

  status(): Record<string, unknown> {
    return {
      server: this.key,
      state: this.state,
      admin: this.admin,
      agent_admin: this.agentAdmin,
      scaled_weight: Math.round(this.scaledWeight * 100) / 100,
      active: this.active,
      total: this.total,
      changed_at: new Date(this.changedAt).toISOString(),
      last_check: this.lastCheck && { ...this.lastCheck, at: new Date(this.lastCheck.at).toISOString() },
      last_agent: this.lastAgent && { ...this.lastAgent, at: new Date(this.lastAgent.at).toISOString() },
      // The figures /metrics shows, by the same declarations.
      ...figuresOf(SERVER_SERIES, this),
    };
  }
}

/** A server's series (`edgenode_scheduler_server_*{service,server}`), shown in its /status by the same names. */
export const SERVER_SERIES = declareSeries<Server>({
  up: {
    kind: "gauge",
    help: "1 when the server takes connections (up and ready), else 0",
    read: (s) => s.available ? 1 : 0,
  },
  healthy: {
    kind: "gauge",
    help: "1 when health checks and the agent say up, else 0",
    read: (s) => s.up ? 1 : 0,
  },
  admin_state: {
    kind: "gauge",
    help: "Administrative state, the stricter of the operator's and the agent's: 0 ready, 1 drain, 2 maint",
    read: (s) => ADMIN_RANK[s.effectiveAdmin],
  },
  weight: { kind: "gauge", help: "Weight from the config or the API", read: (s) => s.configuredWeight },
  effective_weight: {
    kind: "gauge",
    help: "Configured weight scaled by the agent's percentage",
    read: (s) => Math.round(s.weight * 100) / 100,
  },
  maxconn: {
    kind: "gauge",
    help: "Connections at once (the agent's maxconn, else the config's); 0: no limit",
    read: (s) => s.maxconn,
  },
  load_percent: {
    kind: "gauge",
    help: "Load the agent reported (100 - its weight percentage, at least 0); NaN before any report",
    read: (s) => s.agentPercent === null ? NaN : Math.max(0, 100 - s.agentPercent),
  },
  last_check_ok: {
    kind: "gauge",
    help: "1 when the last health check (or client connect) succeeded, 0 when it failed; NaN before any",
    read: (s) => s.lastCheck === null ? NaN : s.lastCheck.ok ? 1 : 0,
  },
  last_check_timestamp_seconds: {
    kind: "gauge",
    help: "When the last health check ended (Unix time); NaN before any",
    read: (s) => s.lastCheck === null ? NaN : s.lastCheck.at / 1000,
  },
  agent_ok: {
    kind: "gauge",
    help: "1 when the agent answered its last poll, 0 when it could not be reached; NaN without a poll yet",
    read: (s) => s.lastAgent === null ? NaN : s.lastAgent.ok ? 1 : 0,
  },
  active_connections: { kind: "gauge", help: "Connections open to the server now", read: (s) => s.active },
  connections: { help: "Connections made to the server", read: (s) => s.total },
  failed_connects: { help: "Client connects to the server that failed", read: (s) => s.failedConnects },
});
