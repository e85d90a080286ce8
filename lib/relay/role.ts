/**
 * The relay role: static UDP relays (one listen address fanned out to N targets) and reflectors (participants join
 * and receive a stream), many per box, on the batched UDP data plane. Every socket is opened before anything runs;
 * one that cannot be opened closes those before it. Participants can be listed, added and removed over the status
 * API (runtime changes, not persisted). A reload changes relays and reflectors in place where it can and replaces
 * them otherwise (see prepareRelayReload).
 */
import type { Hono } from "hono";
import {
  allowSources,
  bool,
  type Context,
  defaultsOf,
  duration,
  hostPort,
  int,
  list,
  nodeAt,
  obj,
  type ObjectOf,
  oneOf,
  opt,
  req,
  str,
} from "../config/schema.ts";
import { formatHostPort, type HostPort, isIP, isIPv4, parseHostPort } from "../net/address.ts";
import { openUdp, type UdpOptions, type UdpSocket } from "../net/udp.ts";
import { udpFields, udpOptions } from "../net/udp_fields.ts";
import type { RoleContext, RoleDef, RoleHealth, RoleReload } from "../roles/role.ts";
import { errorMessage, StartError } from "../core/errors.ts";
import { CONFIRM_RATE, DENY_CLASSES, type TableHandOver } from "./participants.ts";
import { Reflector, type ReflectorSockets } from "./reflector.ts";
import { Relay } from "./relay.ts";
import type { YAMLMap } from "yaml";

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const ipPort = hostPort({ ipOnly: true });
const name = (what: string) =>
  str({ pattern: NAME, describe: `a ${what} name (letters, digits, '.', '_', '-')` });

const relayItem = obj({
  name: req(name("relay")),
  listen: req(ipPort),
  targets: req(list(ipPort, { min: 1, max: 1000, uniqueBy: { key: formatHostPort, what: "target" } })),
  allow_sources: allowSources(),
});

const reflectorItem = obj({
  name: req(name("reflector")),
  data: req(ipPort),
  registration: req(ipPort),
  use_rtp: opt(bool(), false),
  timeout: opt(duration({ min: 1000, max: 3_600_000 }), 30_000),
  max_participants: opt(int({ min: 1, max: 10_000 }), 100),
  max_per_address: opt(int({ min: 1, max: 10_000 }), 4),
  allow: opt(list(oneOf(DENY_CLASSES, "an address class:"), { unique: true }), []),
  participants: opt(
    list(ipPort, { max: 10_000, uniqueBy: { key: formatHostPort, what: "participant" } }),
    [],
  ),
  /** Source prefixes let in on the data ports (the registration port takes joins from anywhere). */
  allow_sources: allowSources(),
  confirm_rate: opt(int({ min: 1, max: 10_000 }), CONFIRM_RATE),
});

const relayFields = {
  ...udpFields,
  thread: opt(bool(), true),
  relays: opt(list(relayItem, { max: 256, uniqueBy: { key: (r) => r.name, what: "relay name" } }), []),
  reflectors: opt(
    list(reflectorItem, { max: 256, uniqueBy: { key: (r) => r.name, what: "reflector name" } }),
    [],
  ),
};

export type RelaySection = ObjectOf<typeof relayFields>;

interface Binding {
  addr: HostPort;
  what: string;
  at: ReturnType<typeof nodeAt>;
}

/** Every UDP port the section binds, with the YAML node to blame. */
function bindings(cfg: RelaySection, node: YAMLMap | null): Binding[] {
  const out: Binding[] = [];
  cfg.relays.forEach((r, i) =>
    out.push({ addr: r.listen, what: `relay "${r.name}"`, at: nodeAt(node, ["relays", i, "listen"]) })
  );
  cfg.reflectors.forEach((r, i) => {
    for (const key of ["data", "registration"] as const) {
      const at = nodeAt(node, ["reflectors", i, key]);
      out.push({ addr: r[key], what: `${key} port of reflector "${r.name}"`, at });
      if (r.use_rtp) {
        out.push({
          addr: { ...r[key], port: r[key].port + 1 },
          what: `RTCP ${key} port of reflector "${r.name}"`,
          at,
        });
      }
    }
  });
  return out;
}

const WILDCARD = new Set(["0.0.0.0", "::"]);

/** Two sockets on one port clash when their addresses are equal or either is a wildcard. */
function checkPorts(cfg: RelaySection, node: YAMLMap | null, ctx: Context, path: string): void {
  cfg.relays.forEach((r, i) => {
    // A relay sends from its listen socket: an IPv4 one cannot reach an IPv6 target.
    if (!isIPv4(r.listen.host)) return;
    r.targets.forEach((t, j) => {
      if (isIPv4(t.host)) return;
      ctx.error(
        nodeAt(node, ["relays", i, "targets", j]),
        `${path}.relays[${i}].targets[${j}]`,
        `Target ${formatHostPort(t)} is IPv6, but the relay listens on ${
          formatHostPort(r.listen)
        } (IPv4) and cannot send to it`,
      );
    });
  });
  cfg.reflectors.forEach((r, i) => {
    // Participants are sent to from the registration socket: an IPv4 one cannot reach an IPv6 address.
    if (!isIPv4(r.registration.host)) return;
    r.participants.forEach((p, j) => {
      if (isIPv4(p.host)) return;
      ctx.error(
        nodeAt(node, ["reflectors", i, "participants", j]),
        `${path}.reflectors[${i}].participants[${j}]`,
        `Participant ${formatHostPort(p)} is IPv6, but the registration port ${
          formatHostPort(r.registration)
        } is IPv4 and cannot send to it`,
      );
    });
  });
  cfg.reflectors.forEach((r, i) => {
    if (!r.use_rtp) return;
    for (const key of ["data", "registration"] as const) {
      if (r[key].port === 0 || r[key].port === 65535) {
        ctx.error(
          nodeAt(node, ["reflectors", i, key]),
          `${path}.reflectors[${i}].${key}`,
          `With use_rtp the ${key} port needs a fixed port below 65535 (RTCP takes port + 1), got ${
            r[key].port
          }`,
        );
      }
    }
  });
  const seen: Binding[] = [];
  for (const b of bindings(cfg, node)) {
    const clash = b.addr.port !== 0 && seen.find((s) =>
      s.addr.port === b.addr.port &&
      (s.addr.host === b.addr.host || WILDCARD.has(s.addr.host) || WILDCARD.has(b.addr.host))
    );
    if (clash) {
      const first = typeof clash.at === "number"
        ? ctx.position(clash.at)
        : ctx.position(clash.at.range?.[0] ?? 0);
      ctx.error(
        b.at,
        path,
        `Port clash: ${b.what} (${formatHostPort(b.addr)}) and ${clash.what} (${
          formatHostPort(clash.addr)
        }), ` +
          `first at line ${first.line}, column ${first.col}`,
        first,
      );
    }
    seen.push(b);
  }
}

const relaySection = opt(obj(relayFields, "a mapping", checkPorts), defaultsOf(relayFields));

type RelayItem = RelaySection["relays"][number];
type ReflectorItem = RelaySection["reflectors"][number];

/** One UDP address a part binds, what it is in messages, and its config key (empty when unknown). */
interface PartBinding {
  readonly addr: HostPort;
  readonly what: string;
  readonly configPath: string;
}

/**
 * The addresses a part binds, in the order its sockets open (data, registration, then their RTCP ports), with their
 * keys in `cfg` (the section the part comes from) when given.
 */
function partBindings(
  part: { relay: RelayItem } | { reflector: ReflectorItem },
  cfg?: RelaySection,
): PartBinding[] {
  if ("relay" in part) {
    const i = cfg ? cfg.relays.findIndex((r) => r.name === part.relay.name) : -1;
    const configPath = i >= 0 ? `relay.relays[${i}].listen` : "";
    return [{ addr: part.relay.listen, what: `relay "${part.relay.name}"`, configPath }];
  }
  const r = part.reflector;
  const i = cfg ? cfg.reflectors.findIndex((x) => x.name === r.name) : -1;
  const at = (key: string) => i >= 0 ? `relay.reflectors[${i}].${key}` : "";
  const out: PartBinding[] = [];
  for (const key of ["data", "registration"] as const) {
    out.push({ addr: r[key], what: `${key} port of reflector "${r.name}"`, configPath: at(key) });
  }
  if (r.use_rtp) {
    for (const key of ["data", "registration"] as const) {
      out.push({
        addr: { ...r[key], port: r[key].port + 1 },
        what: `RTCP ${key} port of reflector "${r.name}"`,
        configPath: at(key),
      });
    }
  }
  return out;
}

/** Whether two bindings would clash in the kernel: one port (not 0), equal hosts or either a wildcard. */
function clashes(a: HostPort, b: HostPort): boolean {
  return a.port !== 0 && a.port === b.port &&
    (a.host === b.host || WILDCARD.has(a.host) || WILDCARD.has(b.host));
}

type ReflectorSocketSet = ReflectorSockets & { readonly data: UdpSocket };

/** A reflector's sockets from opened ones, in partBindings order. */
function reflectorSockets(spec: ReflectorItem, s: readonly UdpSocket[]): ReflectorSocketSet {
  return {
    data: s[0],
    registration: s[1],
    ...(spec.use_rtp ? { dataRtcp: s[2], registrationRtcp: s[3] } : {}),
  };
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * A relay role's running parts, by name, and what starting, replacing and stopping them takes. The maps are the
 * ones the status routes read, so a reload shows at once.
 */
class RelayParts {
  readonly relays = new Map<string, Relay>();
  readonly reflectors = new Map<string, Reflector>();
  /** Parts a reload could not start at commit (a same-address rebind that failed), with why. */
  readonly failed = new Map<string, string>();

  constructor(public cfg: RelaySection, readonly ctx: RoleContext) {}

  async startRelay(spec: RelayItem, socket: UdpSocket): Promise<void> {
    const { ctx, cfg } = this;
    const relay = await Relay.start(spec, socket, ctx.metrics, {
      thread: cfg.thread,
      udp: udpOptions(cfg),
      logger: ctx.logger,
    });
    this.relays.set(spec.name, relay);
    ctx.logger.info("relay listening", {
      relay: spec.name,
      listen: formatHostPort(socket.local),
      targets: spec.targets.length,
      udp: socket.impl,
      thread: relay.threaded,
      allow_sources: spec.allow_sources.join(",") || "any",
    });
  }

  async startReflector(
    spec: ReflectorItem,
    sockets: ReflectorSocketSet,
    takeOver?: TableHandOver,
  ): Promise<void> {
    const { ctx, cfg } = this;
    const reflector = await Reflector.start(spec, sockets, ctx, {
      thread: cfg.thread,
      udp: udpOptions(cfg),
      takeOver,
    });
    this.reflectors.set(spec.name, reflector);
    ctx.logger.info("reflector listening", {
      reflector: spec.name,
      data: formatHostPort(sockets.data.local),
      registration: formatHostPort(sockets.registration.local),
      use_rtp: spec.use_rtp,
      udp: sockets.registration.impl,
      thread: Object.values(reflector.threads).every(Boolean),
      allow_sources: spec.allow_sources.join(",") || "any",
    });
  }

  status(): Record<string, unknown> {
    return {
      state: this.failed.size ? "degraded" : "running",
      relays: Object.fromEntries([...this.relays].map(([n, r]) => [n, r.status()])),
      reflectors: Object.fromEntries([...this.reflectors].map(([n, r]) => [n, r.status()])),
      ...(this.failed.size ? { failed: Object.fromEntries(this.failed) } : {}),
    };
  }
}

/** Opens every address in order; on a failure closes those opened and throws StartError naming the address. */
function openAll(bindings: readonly PartBinding[], options: UdpOptions, why: string): UdpSocket[] {
  const opened: UdpSocket[] = [];
  try {
    for (const b of bindings) {
      try {
        opened.push(openUdp(b.addr, options));
      } catch (error) {
        throw new StartError(`${why} ${b.what} on ${formatHostPort(b.addr)}: ${errorMessage(error)}`, {
          cause: error,
          configPath: b.configPath,
        });
      }
    }
  } catch (error) {
    for (const s of opened) void s.close();
    throw error;
  }
  return opened;
}

export const relayRole: RoleDef<RelaySection> = {
  name: "relay",
  description: "UDP relay and reflector fanning streams out to participants",
  needsPeer: false,
  section: relaySection,
  async start(cfg, ctx) {
    const options = udpOptions(cfg);
    const opened: UdpSocket[][] = [];
    const open = (part: { relay: RelayItem } | { reflector: ReflectorItem }) => {
      const sockets = openAll(partBindings(part, cfg), options, "Cannot bind");
      opened.push(sockets);
      return sockets;
    };
    let relaySockets: UdpSocket[];
    let reflectorSockets: ReflectorSocketSet[];
    try {
      relaySockets = cfg.relays.map((r) => open({ relay: r })[0]);
      // In partBindings' order: data, registration, then their RTCP ports.
      reflectorSockets = cfg.reflectors.map((r) => {
        const [data, registration, dataRtcp, registrationRtcp] = open({ reflector: r });
        return { data, registration, ...(r.use_rtp ? { dataRtcp, registrationRtcp } : {}) };
      });
    } catch (error) {
      for (const s of opened.flat()) await s.close();
      throw error;
    }
    const parts = new RelayParts(cfg, ctx);
    for (const [i, spec] of cfg.relays.entries()) await parts.startRelay(spec, relaySockets[i]);
    for (const [i, spec] of cfg.reflectors.entries()) await parts.startReflector(spec, reflectorSockets[i]);
    if (!cfg.relays.length && !cfg.reflectors.length) {
      ctx.logger.info("nothing to relay", { hint: "add relay.relays or relay.reflectors to the config" });
    }
    return {
      status: () => parts.status(),
      // Nothing here drains: each close wakes its thread and waits for it at most 2 s (then terminates it), and
      // closes run side by side, so the stop is bounded whatever the number of relays and well within a deadline.
      async stop() {
        await Promise.all([...parts.reflectors.values()].map((r) => r.close()));
        await Promise.all([...parts.relays.values()].map((r) => r.close()));
      },
      routes: (app) => participantRoutes(app, parts.reflectors),
      health: () => relayHealth(parts),
      prepareReload: (section) => prepareRelayReload(parts, section as RelaySection),
    };
  },
};

function relayHealth(parts: RelayParts): RoleHealth {
  const problems = [...parts.failed].map(([part, why]) => `${part}: ${why}`);
  for (const [name, r] of parts.relays) {
    const s = r.status();
    if (s.state === "failed") problems.push(`relay ${name}: ${s.error}`);
  }
  for (const [name, r] of parts.reflectors) {
    const s = r.status();
    if (s.state === "failed") problems.push(`reflector ${name}: ${s.error}`);
  }
  return { ok: problems.length === 0, problems };
}

/** One part of a reload that needs sockets: bound in prepare, or (`deferred`) at commit once its holder let go. */
interface Incoming {
  readonly part: { relay: RelayItem } | { reflector: ReflectorItem };
  readonly label: string;
  /** Sockets bound in prepare (partBindings order); null when deferred to commit. */
  sockets: UdpSocket[] | null;
  /** For a reflector replaced on the same registration address: the old table's participants, read at commit. */
  readonly takeOver?: () => TableHandOver;
}

/**
 * Reload, phase one. Relays and reflectors are matched by name:
 * - unchanged: left alone;
 * - changed where the part allows it (a relay's targets, and its allow_sources when it runs on the event loop; a
 *   reflector's limits, timeout, address classes, confirm rate, config participants, and allow_sources on the
 *   event loop): updated in place at commit, sockets, threads and participants kept;
 * - otherwise (a listen, data or registration address, use_rtp, a thread's allow-list, and for every part the
 *   section's UDP settings or `thread`): replaced, a new part on new sockets;
 * - added or removed: started, or stopped at commit.
 * The sockets of added and replaced parts are bound here, so a port in use fails the reload with nothing changed.
 * An address that a part stopping in this reload holds cannot be bound twice: when the new address is exactly the
 * one held (a replaced relay keeping its port), it is bound at commit right after the holder closes, which the
 * kernel then allows (datagrams arriving in that gap, a few milliseconds, are lost). A port held by a stopping part
 * under another address (0.0.0.0:5000 becoming 127.0.0.1:5000) is refused here: whether it could be bound after
 * the close cannot be known beforehand; remove the part in one reload and add it in the next.
 */
function prepareRelayReload(parts: RelayParts, next: RelaySection): Promise<RoleReload> {
  const cur = parts.cfg;
  const everything = !sameJson(udpOptions(cur), udpOptions(next)) || cur.thread !== next.thread;
  const added: string[] = [];
  const removed: string[] = [];
  const changed: string[] = [];
  const replaced: string[] = [];
  const notes: string[] = [];
  if (everything) notes.push("UDP settings or relay.thread changed: every relay and reflector is replaced");

  const inPlace: (() => void)[] = [];
  const stopping: { label: string; close: () => Promise<void>; holds: HostPort[] }[] = [];
  const incoming: Incoming[] = [];

  const nextRelays = new Map(next.relays.map((r) => [r.name, r]));
  for (const [name, relay] of parts.relays) {
    const spec = nextRelays.get(name);
    const label = `relay ${name}`;
    const holds = partBindings({ relay: relay.spec as RelayItem });
    if (!spec) {
      removed.push(label);
      stopping.push({ label, close: () => relay.close(), holds: holds.map((b) => b.addr) });
      continue;
    }
    if (!everything && sameJson(spec, relay.spec)) continue;
    const reason = everything ? "UDP settings changed" : relay.replaceReason(spec);
    if (reason === null) {
      changed.push(label);
      inPlace.push(() => relay.update(spec));
    } else {
      replaced.push(label);
      notes.push(`${label} replaced: ${reason}`);
      stopping.push({ label, close: () => relay.close(), holds: holds.map((b) => b.addr) });
      incoming.push({ part: { relay: spec }, label, sockets: null });
    }
  }
  for (const spec of next.relays) {
    if (parts.relays.has(spec.name)) continue;
    added.push(`relay ${spec.name}`);
    incoming.push({ part: { relay: spec }, label: `relay ${spec.name}`, sockets: null });
  }

  const nextReflectors = new Map(next.reflectors.map((r) => [r.name, r]));
  for (const [name, reflector] of parts.reflectors) {
    const spec = nextReflectors.get(name);
    const label = `reflector ${name}`;
    const holds = partBindings({ reflector: reflector.spec as ReflectorItem }).map((b) => b.addr);
    if (!spec) {
      removed.push(label);
      stopping.push({ label, close: () => reflector.close(), holds });
      continue;
    }
    if (!everything && sameJson(spec, reflector.spec)) continue;
    const reason = everything ? "UDP settings changed" : reflector.replaceReason(spec);
    if (reason === null) {
      changed.push(label);
      inPlace.push(() => reflector.update(spec));
    } else {
      replaced.push(label);
      // Participants reach the reflector at its registration address: when that stays, they stay too.
      const sameFlows = formatHostPort(spec.registration) === formatHostPort(reflector.spec.registration) &&
        spec.use_rtp === reflector.spec.use_rtp;
      notes.push(
        `${label} replaced: ${reason}; ${
          sameFlows
            ? "its joined and API participants are taken over by the new one"
            : "its registration address or use_rtp changed, so its participants start afresh"
        }`,
      );
      stopping.push({ label, close: () => reflector.close(), holds });
      incoming.push({
        part: { reflector: spec },
        label,
        sockets: null,
        ...(sameFlows ? { takeOver: () => reflector.table.handOver() } : {}),
      });
    }
  }
  for (const spec of next.reflectors) {
    if (parts.reflectors.has(spec.name)) continue;
    added.push(`reflector ${spec.name}`);
    incoming.push({ part: { reflector: spec }, label: `reflector ${spec.name}`, sockets: null });
  }
  if (changed.some((c) => c.startsWith("reflector "))) {
    notes.push(
      "reflectors changed in place keep their participants; the config's participant list applies by item (added items join, removed ones leave), and runtime changes to items the config did not change stay",
    );
  }

  // Bind what can be bound now; defer exactly-held addresses; refuse other clashes with stopping parts.
  const released = stopping.flatMap((s) => s.holds.map((addr) => ({ addr, by: s.label })));
  const options = udpOptions(next);
  const opened: UdpSocket[] = [];
  try {
    for (const item of incoming) {
      const bindings = partBindings(item.part, next);
      const held = bindings.map((b) => released.find((r) => clashes(r.addr, b.addr)));
      const exact = bindings.map((b, i) =>
        held[i] && formatHostPort(held[i]!.addr) === formatHostPort(b.addr)
      );
      const other = bindings.findIndex((_, i) => held[i] && !exact[i]);
      if (other >= 0) {
        const b = bindings[other];
        const h = held[other]!;
        throw new StartError(
          `Cannot reload ${item.label}: ${b.what} on ${formatHostPort(b.addr)} clashes with ${
            formatHostPort(h.addr)
          }, which ${h.by} holds until it stops; a reload can rebind only the same address (remove the part in one reload, add it in the next)`,
          { configPath: b.configPath },
        );
      }
      if (held.some(Boolean)) continue; // bound at commit, after the holder closes
      item.sockets = openAll(bindings, options, `Cannot reload ${item.label}: cannot bind`);
      opened.push(...item.sockets);
    }
  } catch (error) {
    for (const s of opened) void s.close();
    return Promise.reject(error);
  }

  let done = false;
  return Promise.resolve({
    summary: { added, removed, changed, replaced, notes },
    async commit(_drain: AbortSignal) {
      if (done) return;
      done = true;
      parts.cfg = next;
      // A part that failed at an earlier commit is tried again when the config still has it (it is "added").
      parts.failed.clear();
      for (const apply of inPlace) {
        try {
          apply();
        } catch (error) {
          // Not expected (the schema and prepare checked the change); the part keeps what it had, and says so.
          parts.ctx.logger.error("reload could not change a part in place", { error: errorMessage(error) });
          parts.failed.set(`in-place change ${parts.failed.size + 1}`, errorMessage(error));
        }
      }
      // Old parts close first: a replaced part's counters go under the same name, and deferred addresses free up.
      // Replaced reflectors hand over their participants once closed, so joins confirmed while they stopped go too.
      await Promise.all(stopping.map(async (s) => {
        const [kind, name] = s.label.split(" ");
        if (kind === "relay") parts.relays.delete(name);
        else parts.reflectors.delete(name);
        await s.close();
      }));
      const handOvers = new Map(incoming.map((item) => [item, item.takeOver?.()]));
      // Parts that could not start: reported to the reload once every other part is applied.
      const notStarted: unknown[] = [];
      for (const item of incoming) {
        try {
          const sockets = item.sockets ??
            openAll(
              partBindings(item.part, next),
              options,
              `Cannot start ${item.label} after the reload: cannot bind`,
            );
          const part = item.part;
          if ("relay" in part) {
            await parts.startRelay(part.relay, sockets[0]);
          } else {
            const takeOver = handOvers.get(item);
            await parts.startReflector(part.reflector, reflectorSockets(part.reflector, sockets), takeOver);
          }
        } catch (error) {
          notStarted.push(error);
          parts.failed.set(item.label, errorMessage(error));
          parts.ctx.logger.error("reload could not start a part", {
            part: item.label,
            error: errorMessage(error),
          });
        }
      }
      // The first keeps its config key, so that the reload's answer names its place in the config.
      if (notStarted.length) {
        const first = notStarted[0];
        const message = notStarted.map(errorMessage).join("; ");
        throw new StartError(message, {
          cause: first,
          configPath: first instanceof StartError ? first.configPath : "",
        });
      }
    },
    async abort() {
      if (done) return;
      done = true;
      await Promise.all(opened.map((s) => s.close()));
    },
  });
}

const NOT_PERSISTED = "runtime change; a restart returns to the participants in the config";

function participantRoutes(app: Hono, reflectors: Map<string, Reflector>): void {
  const base = "/relay/reflectors/:name/participants";
  app.get(
    "/relay/reflectors",
    (c) => c.json(Object.fromEntries([...reflectors].map(([n, r]) => [n, r.status()]))),
  );
  app.get(base, (c) => {
    const r = reflectors.get(c.req.param("name"));
    return r
      ? c.json(r.status().participants)
      : c.json({ error: `No reflector "${c.req.param("name")}"` }, 404);
  });
  app.post(base, async (c) => {
    const r = reflectors.get(c.req.param("name"));
    if (!r) return c.json({ error: `No reflector "${c.req.param("name")}"` }, 404);
    const body = await c.req.json().catch(() => undefined) as { address?: unknown } | undefined;
    const addr = typeof body?.address === "string"
      ? parseHostPort(body.address)
      : 'Body must be {"address": "IP:PORT"}';
    if (typeof addr === "string") return c.json({ error: addr }, 400);
    if (!isIP(addr.host)) {
      return c.json({ error: `Expected an IP address, not the host name "${addr.host}"` }, 400);
    }
    const why = r.add(addr, "api");
    if (why === "family") {
      return c.json({
        error: `Participant ${formatHostPort(addr)} refused: reflector "${
          c.req.param("name")
        }" sends from ${r.family} sockets, which cannot reach an ${
          isIPv4(addr.host) ? "IPv4" : "IPv6"
        } address`,
      }, 400);
    }
    if (why) return c.json({ error: `Participant ${formatHostPort(addr)} refused: ${why}` }, 409);
    return c.json({ added: formatHostPort(addr), persisted: false, note: NOT_PERSISTED }, 201);
  });
  app.delete(`${base}/:address`, (c) => {
    const r = reflectors.get(c.req.param("name"));
    if (!r) return c.json({ error: `No reflector "${c.req.param("name")}"` }, 404);
    const addr = parseHostPort(c.req.param("address"));
    if (typeof addr === "string") return c.json({ error: addr }, 400);
    if (!r.remove(addr)) return c.json({ error: `No participant ${formatHostPort(addr)}` }, 404);
    return c.json({ removed: formatHostPort(addr), persisted: false, note: NOT_PERSISTED });
  });
}
