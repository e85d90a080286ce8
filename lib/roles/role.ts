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
