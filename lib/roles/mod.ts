/**
 * The role registry: which roles exist, their config sections and how they start. The data planes of the roles
 * (scheduler and agent, relay and reflector, session graphs) plug in here.
 */
import { agentRole } from "../agent/role.ts";
import { Registry } from "../core/registry.ts";
import { nodeRole } from "../node/role.ts";
import { relayRole } from "../relay/role.ts";
import { schedulerRole } from "../scheduler/role.ts";
import type { RoleDef } from "./role.ts";

/** A fresh registry of every role this build knows. */
export function builtinRoles(): Registry<RoleDef<unknown>> {
  return new Registry<RoleDef<unknown>>("role", [
    schedulerRole as RoleDef<unknown>,
    agentRole as RoleDef<unknown>,
    relayRole as RoleDef<unknown>,
    nodeRole as RoleDef<unknown>,
  ]);
}
