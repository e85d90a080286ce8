/**
 * The role registry: which roles exist, their config sections and how they start. The data planes of the roles
 * (scheduler and agent, relay and reflector, session graphs) plug in here; until one lands, its role starts with an
 * empty section and reports itself idle in /status, so config, status and lifecycle already treat it as a role.
 */
import { Registry } from "../core/registry.ts";
import { section } from "../config/schema.ts";
import { nodeRole } from "../node/role.ts";
import { relayRole } from "../relay/role.ts";
import type { RoleDef, RunningRole } from "./role.ts";

function idleRole(name: string, description: string, needsPeer: boolean): RoleDef<unknown> {
  return {
    name,
    description,
    needsPeer,
    section: section({}),
    start(): Promise<RunningRole> {
      return Promise.resolve({
        status: () => ({ state: "idle", detail: "no data plane configured" }),
        stop: () => Promise.resolve(),
      });
    },
  };
}

/** A fresh registry of every role this build knows. */
export function builtinRoles(): Registry<RoleDef<unknown>> {
  return new Registry<RoleDef<unknown>>("role", [
    idleRole("scheduler", "TCP connection scheduler: virtual services spread over real servers", true),
    idleRole("agent", "load agent beside a real server, answering the scheduler's checks", false),
    relayRole as RoleDef<unknown>,
    nodeRole as RoleDef<unknown>,
  ]);
}
