/**
 * Loopback ports free a moment ago, for a config that must name other processes' ports before they start (a peer's
 * API and link address). Another process may take one meanwhile; tests that can bind port 0 themselves should.
 */

export function freeTcpPort(host = "127.0.0.1"): number {
  const l = Deno.listen({ hostname: host, port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

export function freeUdpPort(host = "127.0.0.1"): number {
  const s = Deno.listenDatagram({ transport: "udp", hostname: host, port: 0 });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}
