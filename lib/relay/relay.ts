/**
 * A relay: datagrams arriving on one address are sent on to a fixed list of targets, a batch at a time, from the
 * same socket. Counters live in the socket (totals) and in its Destinations (per target); the relay only publishes
 * them.
 */
import type { MetricsRegistry } from "../core/metrics.ts";
import { formatHostPort, type HostPort } from "../net/address.ts";
import type { Destinations, UdpSocket } from "../net/udp.ts";

export interface RelaySpec {
  readonly name: string;
  readonly listen: HostPort;
  readonly targets: readonly HostPort[];
}

/** Publishes a socket's tallies as counters of one component. */
export function publishSocket(
  metrics: MetricsRegistry,
  subsystem: string,
  labels: Record<string, string>,
  socket: UdpSocket,
) {
  const set = metrics.set(subsystem, labels);
  const s = socket.stats;
  set.counter("rx_packets_total", "Datagrams received", () => s.rx_packets);
  set.counter("rx_bytes_total", "Bytes received", () => s.rx_bytes);
  set.counter("tx_packets_total", "Datagrams sent", () => s.tx_packets);
  set.counter("tx_bytes_total", "Bytes sent", () => s.tx_bytes);
  set.counter("truncated_total", "Datagrams longer than max_datagram, delivered cut", () => s.truncated);
  set.counter("tx_dropped_total", "Datagrams the kernel would not take", () => s.tx_dropped);
  set.counter("errors_total", "Failed socket calls", () => s.errors);
  return set;
}

export class Relay {
  readonly #to: Destinations;
  readonly #done: Promise<void>;
  readonly #metrics: MetricsRegistry;
  readonly #sets;

  constructor(readonly spec: RelaySpec, private readonly socket: UdpSocket, metrics: MetricsRegistry) {
    this.#to = socket.destinations(spec.targets);
    this.#metrics = metrics;
    this.#sets = [
      publishSocket(metrics, "relay", { relay: spec.name }, socket),
      ...spec.targets.map((t, j) => {
        const set = metrics.set("relay_target", { relay: spec.name, target: formatHostPort(t) });
        set.counter("sent_total", "Datagrams sent to this target", () => this.#to.sent[j]);
        set.counter(
          "dropped_total",
          "Datagrams to this target the kernel refused",
          () => this.#to.dropped[j],
        );
        return set;
      }),
    ];
    this.#done = this.#run();
  }

  async #run(): Promise<void> {
    for (;;) {
      const batch = await this.socket.receive();
      if (!batch) return;
      this.socket.send(batch, this.#to);
    }
  }

  status(): Record<string, unknown> {
    return {
      listen: formatHostPort(this.socket.local),
      udp: this.socket.impl,
      ...this.socket.stats,
      targets: this.spec.targets.map((t, j) => ({
        target: formatHostPort(t),
        sent: this.#to.sent[j],
        dropped: this.#to.dropped[j],
      })),
    };
  }

  async close(): Promise<void> {
    await this.socket.close();
    await this.#done;
    for (const set of this.#sets) this.#metrics.remove(set);
  }
}
