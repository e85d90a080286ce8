/**
 * The portable UDP path on Deno.listenDatagram (needs --unstable-net): one datagram per receive call, so its
 * batches hold one datagram. It serves where FFI is not allowed or not Linux, and is the baseline the fast path is
 * measured against.
 */
import { RECEIVE_STREAK, yieldToEventLoop } from "../core/yield.ts";
import { StartError } from "../core/errors.ts";
import { formatHostPort } from "./address.ts";
import { processSockets } from "./handover.ts";
import { describeListenError } from "./http.ts";
import {
  type Batch,
  type Destinations,
  emptyStats,
  type Endpoint,
  UDP_DEFAULTS,
  type UdpOptions,
  type UdpSocket,
  type UdpStats,
} from "./udp.ts";

/** Datagrams waiting to be sent; beyond this, sends are counted as dropped (like a full kernel buffer). */
const SEND_QUEUE = 8192;

class PortableBatch implements Batch {
  count = 0;
  #data: Uint8Array = new Uint8Array(0);
  #from: Endpoint = { host: "", port: 0 };
  #truncated = false;
  set(data: Uint8Array, from: Endpoint, truncated: boolean): this {
    [this.#data, this.#from, this.#truncated, this.count] = [data, from, truncated, 1];
    return this;
  }
  data(_i: number): Uint8Array {
    return this.#data;
  }
  length(_i: number): number {
    return this.#data.length;
  }
  from(_i: number): Endpoint {
    return this.#from;
  }
  truncated(_i: number): boolean {
    return this.#truncated;
  }
}

class PortableDestinations implements Destinations {
  readonly addrs: Deno.NetAddr[];
  readonly sent: Float64Array;
  readonly dropped: Float64Array;
  constructor(readonly endpoints: readonly Endpoint[]) {
    this.addrs = endpoints.map((e) => ({ transport: "udp", hostname: e.host, port: e.port }));
    this.sent = new Float64Array(endpoints.length);
    this.dropped = new Float64Array(endpoints.length);
  }
}

/**
 * Deno keeps this socket's descriptor to itself, so a takeover cannot pass it: it is listed in the process's registry
 * (lib/net/handover.ts) with that reason. Where the process may be taken over (`overlap`), it binds with SO_REUSEADDR
 * and SO_REUSEPORT (Deno's `reuseAddress` sets both on Linux), so the next process can bind the same port while this
 * one still holds it; the kernel then spreads datagrams over both, and those queued here when it closes are lost.
 */
export function openPortableUdp(addr: Endpoint, options: UdpOptions = {}, listed = true): UdpSocket {
  const registry = processSockets();
  let conn: Deno.DatagramConn;
  try {
    conn = Deno.listenDatagram({
      transport: "udp",
      hostname: addr.host,
      port: addr.port,
      ...(registry.overlap ? { reuseAddress: true } : {}),
    });
  } catch (error) {
    throw new StartError(`Cannot listen on udp ${formatHostPort(addr)}: ${describeListenError(error)}`);
  }
  const unlist = listed ? registry.hold("udp", addr, null, PORTABLE_UDP_REASON) : () => {};
  return new PortableUdp(conn, options, unlist);
}

export const PORTABLE_UDP_REASON =
  "the portable UDP path (Deno.listenDatagram) keeps its descriptor; the next process binds the port itself " +
  "(SO_REUSEPORT), and datagrams queued here when this process closes it are lost";

class PortableUdp implements UdpSocket {
  readonly impl = "portable" as const;
  readonly gso = false;
  readonly local: Endpoint;
  readonly stats: UdpStats = emptyStats();
  readonly #limit: number;
  // One byte more than the limit shows a datagram that did not fit (Deno cuts silently).
  readonly #buffer: Uint8Array;
  readonly #batch = new PortableBatch();
  readonly #queue: [Uint8Array, PortableDestinations, number][] = [];
  #head = 0;
  #draining = false;
  #closed = false;

  constructor(
    private readonly conn: Deno.DatagramConn,
    options: UdpOptions,
    private readonly unlist: () => void = () => {},
  ) {
    const addr = conn.addr as Deno.NetAddr;
    this.local = { host: addr.hostname, port: addr.port };
    this.#limit = Math.min(65535, options.maxDatagram ?? UDP_DEFAULTS.maxDatagram);
    this.#buffer = new Uint8Array(65536);
  }

  /** Receives since the event loop last had a turn. */
  #streak = 0;

  async receive(): Promise<Batch | null> {
    if (++this.#streak >= RECEIVE_STREAK) {
      this.#streak = 0;
      await yieldToEventLoop();
    }
    while (!this.#closed) {
      let got: [Uint8Array, Deno.Addr];
      try {
        got = await this.conn.receive(this.#buffer);
      } catch (error) {
        if (this.#closed || error instanceof Deno.errors.BadResource) return null;
        this.stats.errors++;
        continue;
      }
      const [data, from] = got;
      const truncated = data.length > this.#limit;
      const view = truncated ? data.subarray(0, this.#limit) : data;
      this.stats.rx_packets++;
      this.stats.rx_bytes += view.length;
      if (truncated) this.stats.truncated++;
      const { hostname, port } = from as Deno.NetAddr;
      return this.#batch.set(view, { host: hostname, port }, truncated);
    }
    return null;
  }

  destinations(endpoints: readonly Endpoint[]): Destinations {
    return new PortableDestinations(endpoints);
  }

  send(packets: Batch | readonly Uint8Array[], to: Destinations): void {
    if (this.#closed) return;
    const dest = to instanceof PortableDestinations ? to : new PortableDestinations(to.endpoints);
    const batch = "count" in packets ? packets : null;
    const count = batch ? batch.count : (packets as readonly Uint8Array[]).length;
    for (let i = 0; i < count; i++) {
      // Deno's send keeps a reference to the bytes until it settles, and the next receive reuses our buffer: one
      // copy per datagram, shared by all destinations.
      const data = (batch ? batch.data(i) : (packets as readonly Uint8Array[])[i]).slice();
      for (let j = 0; j < dest.addrs.length; j++) {
        if (this.#queue.length - this.#head < SEND_QUEUE) this.#queue.push([data, dest, j]);
        else {
          this.stats.tx_dropped++;
          dest.dropped[j]++;
        }
      }
    }
    if (!this.#draining) this.#drain();
  }

  /**
   * Sends queued datagrams one at a time: Deno completes concurrent sends in no particular order (seen: reversed),
   * and a relay must not reorder a stream.
   */
  async #drain(): Promise<void> {
    this.#draining = true;
    while (this.#head < this.#queue.length && !this.#closed) {
      const [data, dest, j] = this.#queue[this.#head++];
      try {
        this.stats.tx_bytes += await this.conn.send(data, dest.addrs[j]);
        this.stats.tx_packets++;
        dest.sent[j]++;
      } catch {
        if (!this.#closed) {
          this.stats.errors++;
          dest.dropped[j]++;
        }
      }
      if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
        this.#queue.splice(0, this.#head);
        this.#head = 0;
      }
    }
    this.#draining = false;
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.unlist();
      this.conn.close();
    }
    return Promise.resolve();
  }
}
