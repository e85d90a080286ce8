/**
 * The relay role: static UDP relays (one listen address fanned out to N targets), many per box, on the batched UDP
 * data plane. Every socket is opened before any relay runs; a socket that cannot be opened closes the ones before it.
 */
import {
  byteSize,
  hostPort,
  int,
  list,
  obj,
  type ObjectOf,
  oneOf,
  opt,
  req,
  section,
  str,
} from "../config/schema.ts";
import { formatHostPort } from "../net/address.ts";
import {
  openUdp,
  UDP_DEFAULTS,
  UDP_IMPLS,
  type UdpImpl,
  type UdpOptions,
  type UdpSocket,
} from "../net/udp.ts";
import type { RoleDef } from "../roles/role.ts";
import { Relay } from "./relay.ts";

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const ipPort = hostPort({ ipOnly: true });

/** The UDP data-plane settings every role that moves datagrams shares. */
export const udpFields = {
  udp: opt(oneOf(UDP_IMPLS), UDP_DEFAULTS.impl as UdpImpl),
  batch: opt(int({ min: 1, max: 1024 }), UDP_DEFAULTS.batch as number),
  max_datagram: opt(int({ min: 512, max: 65535 }), UDP_DEFAULTS.maxDatagram as number),
  socket_buffer: opt(
    byteSize({ min: 64 * 1024, max: 256 * 1024 * 1024 }),
    UDP_DEFAULTS.bufferBytes as number,
  ),
};

export function udpOptions(s: ObjectOf<typeof udpFields>): UdpOptions {
  return { impl: s.udp, batch: s.batch, maxDatagram: s.max_datagram, bufferBytes: s.socket_buffer };
}

const relayItem = obj({
  name: req(str({ pattern: NAME, describe: "a relay name (letters, digits, '.', '_', '-')" })),
  listen: req(ipPort),
  targets: req(list(ipPort, { min: 1, max: 1000, uniqueBy: { key: formatHostPort, what: "target" } })),
});

const relayFields = {
  ...udpFields,
  relays: opt(list(relayItem, { max: 256, uniqueBy: { key: (r) => r.name, what: "relay name" } }), []),
};

export type RelaySection = ObjectOf<typeof relayFields>;

export const relayRole: RoleDef<RelaySection> = {
  name: "relay",
  description: "UDP relay and reflector fanning streams out to participants",
  needsPeer: false,
  section: section(relayFields),
  async start(cfg, ctx) {
    const options = udpOptions(cfg);
    const sockets: UdpSocket[] = [];
    try {
      for (const r of cfg.relays) sockets.push(openUdp(r.listen, options));
    } catch (error) {
      for (const s of sockets) await s.close();
      throw error;
    }
    const relays = cfg.relays.map((spec, i) => {
      const socket = sockets[i];
      ctx.logger.info("relay listening", {
        relay: spec.name,
        listen: formatHostPort(socket.local),
        targets: spec.targets.length,
        udp: socket.impl,
      });
      return new Relay(spec, socket, ctx.metrics);
    });
    if (relays.length === 0) {
      ctx.logger.info("no relays configured", { hint: "add relay.relays to the config" });
    }
    return {
      status: () => ({
        state: "running",
        relays: Object.fromEntries(relays.map((r) => [r.spec.name, r.status()])),
      }),
      async stop() {
        for (const r of [...relays].reverse()) await r.close();
      },
    };
  },
};
