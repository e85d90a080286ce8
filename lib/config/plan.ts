/**
 * The plan: an immutable description of what this process runs, made once from the config file and the command
 * line. Runtime changes (a log level, later a server's drain state) live elsewhere and never edit the plan.
 */
import { errorMessage, formatPosition, type Position, StartError } from "../core/errors.ts";
import { LOG_LEVELS, type LogLevel } from "../core/logger.ts";
import type { Registry } from "../core/registry.ts";
import type { HostPort } from "../net/address.ts";
import type { RoleDef } from "../roles/role.ts";
import { MAX_RT_PRIORITY } from "../core/scheduling.ts";
import { isMap, type YAMLMap } from "yaml";
import {
  byteSize,
  type Context,
  duration,
  hostPort,
  int,
  list,
  nullable,
  obj,
  oneOf,
  opt,
  section,
  str,
} from "./schema.ts";

/** What a role section's check across the config sees of the rest of it. */
export interface ConfigWhole {
  readonly status: { readonly token: string | null };
}

/**
 * A role section whose check needs more than the section (scheduler.share needs status.token): its Field carries
 * `checkWhole`, run once the whole file has checked, with the section's own node so that errors keep file:line:col.
 */
export interface WholeChecked<S> {
  readonly checkWhole?: (
    section: S,
    whole: ConfigWhole,
    node: YAMLMap | null,
    ctx: Context,
    path: string,
  ) => void;
}

function checkRoleSections(roles: Registry<RoleDef>) {
  return (value: Record<string, unknown>, node: YAMLMap | null, ctx: Context): void => {
    for (const role of roles.values()) {
      const check = (role.section as WholeChecked<unknown>).checkWhole;
      if (!check) continue;
      const own = node?.get(role.name, true);
      check(value[role.name], value as unknown as ConfigWhole, isMap(own) ? own : null, ctx, role.name);
    }
  };
}

export const NODE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
export const DEFAULT_STATUS: HostPort = Object.freeze({ host: "127.0.0.1", port: 8080 });

export interface Plan {
  /** The file the plan came from, or `<embedded default>`. */
  readonly source: string;
  /** The node name; null means "the host name", resolved at start. */
  readonly name: string | null;
  /** Roles to run, in start order, `all` expanded. */
  readonly roles: readonly string[];
  readonly status: {
    readonly listen: HostPort;
    /** Bearer token for mutating routes; null turns them off. */
    readonly token: string | null;
    readonly max_body: number;
  };
  readonly log: { readonly level: LogLevel };
  readonly shutdown: {
    readonly drain_timeout: number;
    /** How long /healthz fails ("stopping") before listeners close, so a VRRP peer takes the address first. */
    readonly health_grace: number;
  };
  /** 1..99: every thread runs at that SCHED_FIFO priority (core/scheduling.ts); 0: the normal policy. */
  readonly process: {
    readonly realtime_priority: number;
    /**
     * Path of the control socket a new binary takes this process over through (`edgenode --takeover PATH`); null:
     * none. Guarded only by its file permissions (0600, this user).
     */
    readonly control_socket: string | null;
  };
  /** Each role's checked section, by role name (present for every known role, defaults where absent). */
  readonly sections: Readonly<Record<string, unknown>>;
}

/** The roles run when neither the config nor the command line names any: those needing no outside peer. */
export function defaultRoles(roles: Registry<RoleDef>): string[] {
  return roles.values().filter((r) => !r.needsPeer).map((r) => r.name);
}

/** Expands `all` and puts roles in registry order (the order they start in). */
export function normaliseRoles(names: readonly string[], roles: Registry<RoleDef>): string[] {
  const all = names.includes("all");
  return roles.names().filter((n) => all || names.includes(n));
}

/** The schema of a whole config file; role sections come from the role registry. */
export function configSchema(roles: Registry<RoleDef>) {
  const roleSections = Object.fromEntries(roles.values().map((r) => [r.name, r.section]));
  return obj(
    {
      name: opt(
        nullable(str({ pattern: NODE_NAME, describe: "a node name (letters, digits, '.', '_', '-')" })),
        null,
      ),
      roles: opt(
        list(oneOf([...roles.names(), "all"], "a role:"), { min: 1, unique: true }),
        defaultRoles(roles),
      ),
      status: section({
        listen: opt(hostPort(), DEFAULT_STATUS),
        token: opt(nullable(str({ min: 16, max: 512, describe: "a token" })), null),
        max_body: opt(byteSize({ min: 1024, max: 64 * 1024 * 1024 }), 1024 * 1024),
      }),
      log: section({ level: opt(oneOf(LOG_LEVELS), "info" as LogLevel) }),
      shutdown: section({
        drain_timeout: opt(duration({ max: 10 * 60_000 }), 10_000),
        health_grace: opt(
          duration({ max: 60_000 }),
          0,
          "how long /healthz answers 503 stopping, with everything still serving, before a stop closes listeners",
        ),
      }),
      process: section({
        realtime_priority: opt(
          int({ min: 0, max: MAX_RT_PRIORITY }),
          0,
          "SCHED_FIFO priority of every thread (needs root or CAP_SYS_NICE); 0: the normal policy",
        ),
        control_socket: opt(
          nullable(str({ min: 1, max: 100, describe: "a unix socket path (at most 100 bytes)" })),
          null,
          "unix socket a new binary takes the sockets over through (edgenode --takeover PATH); null: none. " +
            "Only its file permissions (0600, this user) guard it",
        ),
      }),
      ...roleSections,
    },
    "a mapping of settings",
    checkRoleSections(roles),
  );
}

/** What the command line may override. */
export interface Overrides {
  readonly roles?: readonly string[];
  readonly status?: HostPort;
  readonly name?: string;
  readonly logLevel?: LogLevel;
}

/** A new plan with the command line's choices over the config's. */
export function applyOverrides(plan: Plan, overrides: Overrides, roles: Registry<RoleDef>): Plan {
  const next: Plan = Object.freeze({
    ...plan,
    name: overrides.name ?? plan.name,
    roles: overrides.roles ? Object.freeze(normaliseRoles(overrides.roles, roles)) : plan.roles,
    status: overrides.status ? Object.freeze({ ...plan.status, listen: overrides.status }) : plan.status,
    log: overrides.logLevel ? Object.freeze({ level: overrides.logLevel }) : plan.log,
  });
  const places = PLACES.get(plan);
  if (places) {
    const flags: Record<string, string> = { ...places.flags };
    if (overrides.status) flags["status.listen"] = "--status";
    if (overrides.name !== undefined) flags["name"] = "--name";
    if (overrides.roles) flags["roles"] = "--roles";
    PLACES.set(next, { locate: places.locate, flags });
  }
  return next;
}

/** Where a plan's values come from: the config's positions, and the keys the command line overrode (with its flag). */
export interface Places {
  locate(keys: readonly (string | number)[]): Position | null;
  readonly flags: Readonly<Record<string, string>>;
}

/**
 * Kept beside each plan rather than in it: plans stay plain data that compares and prints as such. Set by
 * loadConfig; carried over by applyOverrides.
 */
const PLACES = new WeakMap<Plan, Places>();

export function setPlaces(plan: Plan, places: Places): void {
  PLACES.set(plan, places);
}

/** The keys of a dotted path with indexes (`scheduler.services[1].listen`). */
function pathKeys(path: string): (string | number)[] {
  return [...path.matchAll(/\[(\d+)\]|([^.[\]]+)/g)].map((m) => m[1] !== undefined ? Number(m[1]) : m[2]);
}

/** The config file's position of `path` (or its nearest written parent); null when the plan has none for it. */
export function configPosition(plan: Plan, path: string): Position | null {
  const places = PLACES.get(plan);
  if (!places || !path) return null;
  return places.locate(pathKeys(path));
}

/**
 * Where `path` of the plan comes from: the config's file:line:col (or its nearest written parent), the command-line
 * flag that overrode it, or null (a default, or a plan not loaded from a file).
 */
export function configPlace(plan: Plan, path: string): string | null {
  const places = PLACES.get(plan);
  if (!places || !path) return null;
  const flag = Object.entries(places.flags).find(([key]) => path === key || path.startsWith(`${key}.`));
  if (flag) return `command line ${flag[1]}`;
  const at = places.locate(pathKeys(path));
  return at ? formatPosition(at) : null;
}

/**
 * An error of a part that could not start, as an operator reads it: `file:line:col: path: message` when it is a
 * StartError whose config key the plan's file writes (`command line --status: ...` when the command line set it),
 * its message alone otherwise.
 */
export function describeStartError(plan: Plan, error: unknown): string {
  if (!(error instanceof StartError) || !error.configPath) return errorMessage(error);
  const place = configPlace(plan, error.configPath);
  if (place?.startsWith("command line")) return `${place}: ${error.message}`;
  return place ? `${place}: ${error.configPath}: ${error.message}` : `${error.configPath}: ${error.message}`;
}
