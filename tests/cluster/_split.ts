/**
 * What the multi-process cluster tests share: the three-part program they start, each node's config, and the paced
 * datagrams they send.
 */
import { openUdp } from "../../lib/net/udp.ts";

/** In on brno, Mid on prague, Last (a counter) on liberec. */
export const splitProgram = (inPort: number, midPort: number) =>
  `Project split;
{ AP name="In" ref=localservice.forwarder; node = "brno"; inputs = in(DIPRONN_INPUT(${inPort})); outputs = out(Mid.in); }
{ AP name="Mid" ref=localservice.forwarder; node = "prague"; inputs = in, side(DIPRONN_INPUT(${midPort})); outputs = out(Last.in); }
{ AP name="Last" ref=localservice.counter; node = "liberec"; inputs = in; }
`;

/** The config of node `name` in a loopback cluster of `names`: one cluster token, each node naming the others. */
export function clusterConfig(o: {
  name: string;
  names: readonly string[];
  addr: Readonly<Record<string, { api: number; data: number }>>;
  dataDir: string;
  statusToken: string;
  clusterToken: string;
  /** More lines of node.cluster (heartbeat, loss_timeout, etcd). */
  extra?: readonly string[];
}): string {
  const lo = "127.0.0.1";
  const peers = o.names.filter((n) => n !== o.name).map((n) =>
    `      - { name: ${n}, api: "${lo}:${o.addr[n].api}", data: "${lo}:${o.addr[n].data}" }`
  );
  return [
    "roles: [node]",
    "status:",
    `  token: ${o.statusToken}`,
    "node:",
    `  bind: ${lo}`,
    `  data_dir: ${o.dataDir}`,
    "  cluster:",
    `    name: ${o.name}`,
    `    token: ${o.clusterToken}`,
    `    data: ${lo}:${o.addr[o.name].data}`,
    "    peers:",
    ...peers,
    ...(o.extra ?? []).map((t) => `    ${t}`),
    // The test box is shared and often busy: load is not what these tests are about, so it refuses no pin.
    "    load_threshold: 2",
    "",
  ].join("\n");
}

/** Sends `n` datagrams of 100 bytes to 127.0.0.1:`port`, a pause of 5 ms after every 50 (no burst beyond a socket buffer). */
export async function sendDatagrams(port: number, n: number): Promise<void> {
  const tx = openUdp({ host: "127.0.0.1", port: 0 });
  try {
    const data = new Uint8Array(100);
    for (let i = 0; i < n; i++) {
      tx.send(
        { count: 1, data: () => data, length: () => 100, from: () => tx.local, truncated: () => false },
        tx.destinations([{ host: "127.0.0.1", port }]),
      );
      if (i % 50 === 49) await new Promise((r) => setTimeout(r, 5));
    }
  } finally {
    await tx.close();
  }
}
