/**
 * Batched UDP sockets: the one interface every UDP data path (relays, reflectors, session inputs and outputs, the
 * probe) uses, with two implementations that pass one contract suite: the Linux fast path (recvmmsg/sendmmsg
 * through FFI to libc, lib/net/udp_fast.ts) and the portable path (Deno.listenDatagram, lib/net/udp_portable.ts).
 *
 * Packets move in batches: `receive()` resolves with every datagram that arrived together (up to `batch`), and
 * `send()` hands many datagrams, each to many destinations, to the kernel in one call.
 */
import { StartError } from "../core/errors.ts";
import type { HostPort } from "./address.ts";
import { openFastUdp } from "./udp_fast.ts";
import { openPortableUdp } from "./udp_portable.ts";

export type Endpoint = HostPort;

export const UDP_IMPLS = ["auto", "fast", "portable"] as const;
export type UdpImpl = typeof UDP_IMPLS[number];

export interface UdpOptions {
  /** Which implementation; `auto` takes the fast path where FFI is allowed on Linux. */
  readonly impl?: UdpImpl;
  /** Most datagrams one receive returns (1..1024). */
  readonly batch?: number;
  /** Largest datagram received whole; larger ones are counted as truncated (up to 65535). */
  readonly maxDatagram?: number;
  /** SO_RCVBUF / SO_SNDBUF asked of the kernel. */
  readonly bufferBytes?: number;
  /**
   * Send runs of same-size datagrams to one destination as one message the kernel segments (UDP GSO, Linux 4.18+;
   * fast path only; default true where the kernel has it).
   */
  readonly gso?: boolean;
  /**
   * Ask the kernel for each datagram's arrival time (SO_TIMESTAMPNS), read with `Batch.arrivalUs` (fast path only):
   * a measuring receiver then times datagrams when they arrived, not when its thread got to them.
   */
  readonly timestamps?: boolean;
}

export const UDP_DEFAULTS = {
  impl: "auto",
  batch: 64,
  maxDatagram: 65535,
  bufferBytes: 4 * 1024 * 1024,
  gso: true,
} as const;

/** Numbers every socket keeps; relays and reflectors expose them in /status and /metrics. */
export interface UdpStats {
  rx_packets: number;
  rx_bytes: number;
  tx_packets: number;
  tx_bytes: number;
  /** Datagrams longer than maxDatagram: delivered cut, and counted here. */
  truncated: number;
  /** Datagrams the kernel would not take (send buffer full). */
  tx_dropped: number;
  /** Failed calls other than the above. */
  errors: number;
}

export function emptyStats(): UdpStats {
  return { rx_packets: 0, rx_bytes: 0, tx_packets: 0, tx_bytes: 0, truncated: 0, tx_dropped: 0, errors: 0 };
}

const STAT_KEYS = Object.keys(emptyStats()) as (keyof UdpStats)[];

/** UdpStats over shared memory: one thread counts, others read (a torn read is off by one datagram at most). */
class SharedStats {
  constructor(readonly buffer: SharedArrayBuffer, readonly cells = new Float64Array(buffer)) {}
}
STAT_KEYS.forEach((key, i) =>
  Object.defineProperty(SharedStats.prototype, key, {
    get(this: SharedStats) {
      return this.cells[i];
    },
    set(this: SharedStats, value: number) {
      this.cells[i] = value;
    },
    enumerable: true,
  })
);

/** Stats in `buffer` (a new one when not given), to be handed to another thread with `.buffer`. */
export function sharedStats(
  buffer = new SharedArrayBuffer(STAT_KEYS.length * 8),
): UdpStats & { readonly buffer: SharedArrayBuffer } {
  return new SharedStats(buffer) as unknown as UdpStats & { readonly buffer: SharedArrayBuffer };
}

/** A plain copy of `stats` (for status documents: shared stats keep their numbers on the prototype). */
export function statsOf(stats: Readonly<UdpStats>): UdpStats {
  return Object.fromEntries(STAT_KEYS.map((k) => [k, stats[k]])) as unknown as UdpStats;
}

/** Counters of one socket that two threads count into: each reads as the sum of both. */
export function sumStats(a: Readonly<UdpStats>, b: Readonly<UdpStats>): Readonly<UdpStats> {
  const sum = {} as UdpStats;
  for (const key of STAT_KEYS) {
    Object.defineProperty(sum, key, { get: () => a[key] + b[key], enumerable: true });
  }
  return sum;
}

/** Datagrams from one receive. Views point into the socket's buffers and are valid until its next receive. */
export interface Batch {
  readonly count: number;
  data(i: number): Uint8Array;
  /** The length of datagram `i` (cheaper than `data(i).length`, which makes a view). */
  length(i: number): number;
  /** The sender of datagram `i`. */
  from(i: number): Endpoint;
  /**
   * Whether datagrams `i` and `j` came from one sender, told without building `from()`'s object (false when it
   * cannot tell). Absent where `from()` costs nothing.
   */
  sameSource?(i: number, j: number): boolean;
  /**
   * The buffer datagram `i` lives in at `offset(i)` (its `length(i)` bytes): reads without a view per datagram.
   * Both or neither are present.
   */
  slab?(): Uint8Array;
  offset?(i: number): number;
  /** True when datagram `i` was longer than maxDatagram and arrived cut. */
  truncated(i: number): boolean;
  /**
   * When datagram `i` reached the kernel, in µs since the Unix epoch (CLOCK_REALTIME); NaN when the socket was not
   * opened with `timestamps` or the kernel gave no time. Absent where the implementation cannot tell.
   */
  arrivalUs?(i: number): number;
}

/** Destinations prepared once (addresses encoded for the kernel), then used for many sends. */
export interface Destinations {
  readonly endpoints: readonly Endpoint[];
  /** Datagrams the kernel took for each endpoint, by index. */
  readonly sent: Float64Array;
  /** Datagrams refused for each endpoint (buffer full or an error). */
  readonly dropped: Float64Array;
}

export interface UdpSocket {
  readonly impl: "fast" | "portable";
  /** Whether sends go as GSO runs (the fast path, where the kernel can and `gso` is not false). */
  readonly gso: boolean;
  /** The bound address (the real port when 0 was asked for). */
  readonly local: Endpoint;
  readonly stats: Readonly<UdpStats>;
  /** The next batch, or null once the socket is closed. One receive at a time. */
  receive(): Promise<Batch | null>;
  destinations(endpoints: readonly Endpoint[]): Destinations;
  /** Sends every datagram (a batch received on any socket, or arrays) to every destination; never blocks. */
  send(packets: Batch | readonly Uint8Array[], to: Destinations): void;
  /** Stops receiving (a pending receive resolves with null) and releases the socket. */
  close(): Promise<void>;
}

/** Opens a UDP socket bound to `addr` with the implementation `options.impl` asks for (auto: fast if possible). */
export function openUdp(addr: Endpoint, options: UdpOptions = {}): UdpSocket {
  return openListed(addr, options, true);
}

/** `listed`: whether the socket goes into the process's registry (lib/net/handover.ts) for a takeover. */
function openListed(addr: Endpoint, options: UdpOptions, listed: boolean): UdpSocket {
  const impl = options.impl ?? UDP_DEFAULTS.impl;
  if (impl !== "portable") {
    const fast = openFastUdp(addr, options, listed);
    if (fast) return fast;
    if (impl === "fast") {
      throw new StartError(
        "Cannot use the fast UDP path: it needs Linux and --allow-ffi (set udp: portable)",
      );
    }
  }
  return openPortableUdp(addr, options, listed);
}

/**
 * Two sockets on `host` on consecutive free ports, p and p + 1 (RTP and its RTCP); with `even`, p is even as RFC 3550
 * recommends. Ports are tried as the kernel hands them out, 50 times at most; throws StartError when none fit.
 */
export function openUdpPair(
  host: string,
  options: UdpOptions & { readonly even?: boolean; readonly secondBatch?: number } = {},
): [UdpSocket, UdpSocket] {
  for (let attempt = 0; attempt < 50; attempt++) {
    const a = openUdp({ host, port: 0 }, options);
    const port = a.local.port;
    if (port < 65535 && (!options.even || port % 2 === 0)) {
      try {
        return [
          a,
          // Its port follows from one the kernel chose: no config names it, so it is not one to hand over.
          openListed(
            { host, port: port + 1 },
            { ...options, batch: options.secondBatch ?? options.batch },
            false,
          ),
        ];
      } catch { /* taken: try another */ }
    }
    void a.close();
  }
  throw new StartError(`Cannot find two free consecutive UDP ports on ${host}`);
}

/** The batch itself when every datagram passes `ok` (no copy), else the ones that do; `bad` counts the others. */
export function wellFormed(
  batch: Batch,
  ok: (d: Uint8Array) => boolean,
  bad: (n: number) => void,
): Batch | Uint8Array[] {
  let good = 0;
  for (let i = 0; i < batch.count; i++) if (ok(batch.data(i))) good++;
  if (good === batch.count) return batch;
  bad(batch.count - good);
  const kept: Uint8Array[] = [];
  for (let i = 0; i < batch.count; i++) if (ok(batch.data(i))) kept.push(batch.data(i));
  return kept;
}
