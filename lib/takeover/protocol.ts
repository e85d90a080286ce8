/**
 * The takeover's control messages (pure): what the new process and the running one say on the control socket, and
 * the checks each makes of what it receives. Frames and descriptors travel through lib/net/fd_channel.ts.
 *
 *   new -> old   takeover  { v, type: "takeover", pid }
 *   old -> new   sockets   { v, type: "sockets", sockets: [{kind, addr}], last, unpassable: [{kind, addr, reason}],
 *                            pid, ready_timeout_ms }
 *                          (the descriptors ride on the frame, in the order of `sockets`; several frames when there
 *                          are many, the last with `last: true`, the unpassable list, the old process's pid and how
 *                          long it waits for "ready") -- or
 *                refused   { v, type: "refused", reason }
 *   new -> old   ready     { v, type: "ready" }            (serving on what it adopted and bound)
 *             or abort     { v, type: "abort", reason }    (the old process goes on as before)
 *   old -> new   draining  { v, type: "draining", drain_timeout_ms }   (the old process stops accepting, drains, exits)
 *
 * Descriptors ride only on "sockets" frames: each side closes any that come with another frame. Each side checks
 * that the peer runs as its own effective uid (SO_PEERCRED) before it says anything else.
 */
import type { HostPort } from "../net/address.ts";
import type { SocketKind } from "../net/handover.ts";

export const PROTOCOL_VERSION = 1;

export interface SocketEntry {
  readonly kind: SocketKind;
  readonly addr: HostPort;
}

export interface UnpassableEntry extends SocketEntry {
  readonly reason: string;
}

export type ControlMessage =
  | { readonly v: number; readonly type: "takeover"; readonly pid: number }
  | {
    readonly v: number;
    readonly type: "sockets";
    readonly sockets: readonly SocketEntry[];
    readonly last: boolean;
    readonly unpassable?: readonly UnpassableEntry[];
    readonly pid?: number;
    /** How long the old process waits for "ready" from this frame on; the new process gives up after it. */
    readonly ready_timeout_ms?: number;
  }
  | { readonly v: number; readonly type: "refused"; readonly reason: string }
  | { readonly v: number; readonly type: "ready" }
  | { readonly v: number; readonly type: "abort"; readonly reason: string }
  | { readonly v: number; readonly type: "draining"; readonly drain_timeout_ms: number };

export class ProtocolError extends Error {
  override name = "ProtocolError";
}

const TYPES = ["takeover", "sockets", "refused", "ready", "abort", "draining"] as const;

/**
 * `raw` as a control message of one of the `expected` types; ProtocolError when it is not one, or speaks another
 * version (the message says both versions).
 */
export function parseMessage<T extends ControlMessage["type"]>(
  raw: unknown,
  expected: readonly T[],
): Extract<ControlMessage, { type: T }> {
  if (typeof raw !== "object" || raw === null) {
    throw new ProtocolError("Not a control message (not an object)");
  }
  const m = raw as Record<string, unknown>;
  if (m.v !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      `The peer speaks takeover protocol version ${
        JSON.stringify(m.v)
      }; this process speaks ${PROTOCOL_VERSION}`,
    );
  }
  const type = m.type as T;
  if (!TYPES.includes(type as typeof TYPES[number])) {
    throw new ProtocolError(`Not a control message (type ${JSON.stringify(m.type)})`);
  }
  if (!expected.includes(type)) {
    throw new ProtocolError(`Unexpected control message "${type}" (expected ${expected.join(" or ")})`);
  }
  const bad = (field: string) => new ProtocolError(`Control message "${type}": bad field "${field}"`);
  switch (type) {
    case "takeover":
      if (!Number.isInteger(m.pid)) throw bad("pid");
      break;
    case "sockets":
      if (!Array.isArray(m.sockets) || !m.sockets.every(isEntry)) throw bad("sockets");
      if (typeof m.last !== "boolean") throw bad("last");
      if (m.unpassable !== undefined) {
        if (!Array.isArray(m.unpassable)) throw bad("unpassable");
        if (
          !m.unpassable.every((u) => isEntry(u) && typeof (u as { reason?: unknown }).reason === "string")
        ) {
          throw bad("unpassable");
        }
      }
      if (m.pid !== undefined && !Number.isInteger(m.pid)) throw bad("pid");
      if (
        m.ready_timeout_ms !== undefined &&
        (typeof m.ready_timeout_ms !== "number" || !(m.ready_timeout_ms > 0))
      ) throw bad("ready_timeout_ms");
      break;
    case "refused":
    case "abort":
      if (typeof m.reason !== "string") throw bad("reason");
      break;
    case "draining":
      if (typeof m.drain_timeout_ms !== "number") throw bad("drain_timeout_ms");
      break;
  }
  return m as unknown as Extract<ControlMessage, { type: T }>;
}

function isEntry(x: unknown): x is SocketEntry {
  if (typeof x !== "object" || x === null) return false;
  const e = x as Record<string, unknown>;
  const a = e.addr as Record<string, unknown> | undefined;
  return (e.kind === "tcp" || e.kind === "udp") && typeof a === "object" && a !== null &&
    typeof a.host === "string" && Number.isInteger(a.port);
}

type WithoutVersion<T> = T extends unknown ? Omit<T, "v"> : never;

/** A message of this version. */
export function message(m: WithoutVersion<ControlMessage>): ControlMessage {
  return { v: PROTOCOL_VERSION, ...m } as ControlMessage;
}
