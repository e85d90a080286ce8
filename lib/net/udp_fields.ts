/**
 * The config fields of the UDP data plane (implementation, batch, datagram size, socket buffers, GSO), shared by
 * every role section that opens data sockets (relay, node), and their translation into `UdpOptions`.
 */
import { bool, byteSize, int, type ObjectOf, oneOf, opt } from "../config/schema.ts";
import { UDP_DEFAULTS, UDP_IMPLS, type UdpImpl, type UdpOptions } from "./udp.ts";

/** The UDP data-plane settings every role that moves datagrams shares. */
export const udpFields = {
  udp: opt(oneOf(UDP_IMPLS), UDP_DEFAULTS.impl as UdpImpl),
  batch: opt(int({ min: 1, max: 1024 }), UDP_DEFAULTS.batch as number),
  max_datagram: opt(int({ min: 512, max: 65535 }), UDP_DEFAULTS.maxDatagram as number),
  socket_buffer: opt(
    byteSize({ min: 64 * 1024, max: 256 * 1024 * 1024 }),
    UDP_DEFAULTS.bufferBytes as number,
  ),
  gso: opt(bool(), UDP_DEFAULTS.gso as boolean),
};

export function udpOptions(s: ObjectOf<typeof udpFields>): UdpOptions {
  return {
    impl: s.udp,
    batch: s.batch,
    maxDatagram: s.max_datagram,
    bufferBytes: s.socket_buffer,
    gso: s.gso,
  };
}
