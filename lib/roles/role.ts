/**
 * The contract every role fulfils. A role declares its config section (a schema, so `--check` validates it without
 * starting anything) and starts from its checked section; a running role reports a status summary and stops within
 * a drain deadline.
 */
import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/logger.ts";
import type { MetricsRegistry } from "../core/metrics.ts";
import type { Hono } from "hono";
import type { Field } from "../config/schema.ts";

export interface RoleContext {
  readonly nodeName: string;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
  readonly clock: Clock;
}

export interface RunningRole {
  /** A JSON summary for /status; counters come from the role's counter sets. */
  status(): Record<string, unknown>;
  /** Stop accepting at once, drain until `deadline` aborts, then release everything. */
  stop(deadline: AbortSignal): Promise<void>;
  /**
   * Adds the role's routes to the status API. Mutating methods are already behind the bearer token and the body
   * limit; a route that changes state says in its answer that the change is not persisted.
   */
  routes?(app: Hono): void;
  /**
   * Path prefixes ("/cluster/") whose mutating requests this role's routes check themselves (signed requests, say):
   * the bearer token guard leaves those alone. Only what the running role actually guards; absent: none.
   */
  readonly selfGuarded?: readonly string[];
  /**
   * Reload, phase one: compares a new, already checked section with the running one and takes what the change needs
   * that can fail (binds the sockets of new parts, reads the files they name), changing nothing that runs. Throws
   * (StartError, having released what it took) when the change cannot be made. Absent: the role cannot reload, and a
   * changed section is reported as needing a restart.
   */
  prepareReload?(section: unknown): Promise<RoleReload>;
  /** Whether the role serves what it should (GET /healthz): every listener open, at least one healthy server. */
  health?(): RoleHealth;
}

export interface RoleHealth {
  /** False when there is a problem; `degraded` lines alone leave it true. */
  readonly ok: boolean;
  /** One line per problem (empty when ok): the role does not serve what it should (a listener closed, say). */
  readonly problems: readonly string[];
  /**
   * One line per way the role serves worse than it could (a service with no healthy server): a problem for a plain
   * GET /healthz, left out of GET /healthz?level=listening.
   */
  readonly degraded?: readonly string[];
}

/** What a role's reload did, by part ("service web", "relay r1", "session lecture"), for the log and /status. */
export interface ReloadSummary {
  readonly added: readonly string[];
  readonly removed: readonly string[];
  /** Updated in place: established connections, participants and session state kept. */
  readonly changed: readonly string[];
  /** Replaced by a new part; the old one drains. */
  readonly replaced: readonly string[];
  /** Anything the operator should know (a setting that takes effect at the next start only). */
  readonly notes: readonly string[];
}

export interface RoleReload {
  readonly summary: ReloadSummary;
  /**
   * Phase two, which cannot fail: new parts start serving, changed ones are updated, removed and replaced ones stop
   * taking new work and drain until `drain` aborts. Resolves when the drains are over (the appliance does not wait).
   */
  commit(drain: AbortSignal): Promise<void>;
  /** Releases what phase one took; the running role is as it was. */
  abort(): Promise<void>;
}

export interface RoleDef<S = unknown> {
  readonly name: string;
  readonly description: string;
  /** True when the role is useless without servers or peers elsewhere (so the default config leaves it out). */
  readonly needsPeer: boolean;
  /** The role's top-level config section, with its defaults. */
  readonly section: Field<S>;
  /** Starts the role; throws StartError (after releasing what it took) when it cannot. */
  start(section: S, ctx: RoleContext): Promise<RunningRole>;
}
