/**
 * Loopback ports free a moment ago, for a config that must name other processes' ports before they start (a peer's
 * API and link address). Tests that can bind port 0 themselves should.
 *
 * They are taken below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 here): a port from
 * that range, once closed, can be given to the next outgoing connection of any process (seen: a node's connection to
 * etcd took the status port another node was about to bind). Below it, only a bind that names the port takes it, and
 * this process hands each port out once.
 */

const LOW = 20_000;
const HIGH = 32_767;
const handedOut = new Set<number>();

function pick(bindable: (port: number) => boolean): number {
  for (let attempt = 0; attempt < 1000; attempt++) {
    const port = LOW + Math.floor(Math.random() * (HIGH - LOW + 1));
    if (handedOut.has(port) || !bindable(port)) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error(`No free loopback port in ${LOW}-${HIGH} after 1000 tries`);
}

function closes(open: () => { close(): void }): boolean {
  try {
    open().close();
    return true;
  } catch {
    return false;
  }
}

export function freeTcpPort(host = "127.0.0.1"): number {
  return pick((port) => closes(() => Deno.listen({ hostname: host, port })));
}

export function freeUdpPort(host = "127.0.0.1"): number {
  return pick((port) => closes(() => Deno.listenDatagram({ transport: "udp", hostname: host, port })));
}
