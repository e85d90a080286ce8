/**
 * The relay role: static UDP relays (one listen address fanned out to N targets) and reflectors (participants join
 * and receive a stream), many per box, on the batched UDP data plane. Every socket is opened before anything runs;
 * one that cannot be opened closes those before it. Participants can be listed, added and removed over the status
 * API (runtime changes, not persisted).
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
import { openUdp, type UdpSocket } from "../net/udp.ts";
import { udpFields, udpOptions } from "../net/udp_fields.ts";
import type { RoleDef } from "../roles/role.ts";
import { CONFIRM_RATE, DENY_CLASSES } from "./participants.ts";
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

export const relayRole: RoleDef<RelaySection> = {
  name: "relay",
  description: "UDP relay and reflector fanning streams out to participants",
  needsPeer: false,
  section: relaySection,
  async start(cfg, ctx) {
    const options = udpOptions(cfg);
    const opened: UdpSocket[] = [];
    const open = (addr: HostPort) => {
      const s = openUdp(addr, options);
      opened.push(s);
      return s;
    };
    let reflectorSockets: (ReflectorSockets & { readonly data: UdpSocket })[];
    try {
      for (const r of cfg.relays) open(r.listen);
      reflectorSockets = cfg.reflectors.map((r) => ({
        data: open(r.data),
        registration: open(r.registration),
        ...(r.use_rtp
          ? {
            dataRtcp: open({ ...r.data, port: r.data.port + 1 }),
            registrationRtcp: open({ ...r.registration, port: r.registration.port + 1 }),
          }
          : {}),
      }));
    } catch (error) {
      for (const s of opened) await s.close();
      throw error;
    }
    const relays: Relay[] = [];
    for (const [i, spec] of cfg.relays.entries()) {
      const relay = await Relay.start(spec, opened[i], ctx.metrics, {
        thread: cfg.thread,
        udp: options,
        logger: ctx.logger,
      });
      relays.push(relay);
      ctx.logger.info("relay listening", {
        relay: spec.name,
        listen: formatHostPort(opened[i].local),
        targets: spec.targets.length,
        udp: opened[i].impl,
        thread: relay.threaded,
        allow_sources: spec.allow_sources.join(",") || "any",
      });
    }
    const reflectors = new Map<string, Reflector>();
    for (const [i, spec] of cfg.reflectors.entries()) {
      const sockets = reflectorSockets[i];
      const reflector = await Reflector.start(spec, sockets, ctx, { thread: cfg.thread, udp: options });
      reflectors.set(spec.name, reflector);
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
    if (!relays.length && !reflectors.size) {
      ctx.logger.info("nothing to relay", { hint: "add relay.relays or relay.reflectors to the config" });
    }
    return {
      status: () => ({
        state: "running",
        relays: Object.fromEntries(relays.map((r) => [r.spec.name, r.status()])),
        reflectors: Object.fromEntries([...reflectors].map(([n, r]) => [n, r.status()])),
      }),
      // Nothing here drains: each close wakes its thread and waits for it at most 2 s (then terminates it), and
      // closes run side by side, so the stop is bounded whatever the number of relays and well within a deadline.
      async stop() {
        await Promise.all([...reflectors.values()].map((r) => r.close()));
        await Promise.all(relays.map((r) => r.close()));
      },
      routes: (app) => participantRoutes(app, reflectors),
    };
  },
};

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
