/**
 * How proxied TCP connections are carried: one interface, two implementations, as for UDP (lib/net/udp.ts).
 *   fast      nonblocking sockets in an epoll set through FFI to libc (./fast/), Linux
 *   portable  Deno's own sockets with a read/write loop per direction (./portable.ts, ./pipe.ts)
 * `openTransport` (./open.ts) picks one. Everything a scheduler decides (limits, picking, queue, retries, PROXY
 * headers, counters) is the same code over either; both splices pass one contract suite (tests/net/tcp_contract.ts).
 *
 * A transport's calls tell a target object rather than return a promise: a service makes one object per client, and
 * no promise, closure or async frame per step (the fast transport calls back from its readiness events).
 */
import type { Clock } from "../../core/clock.ts";
import type { HostPort } from "../address.ts";
import type { BufferPool } from "./pool.ts";

/** A client's or a server's connection, whichever transport carries it. Closing twice is harmless. */
export interface Conn {
  readonly remote: HostPort;
  readonly local: HostPort;
  close(): void;
}

export interface ListenOptions {
  /** SO_REUSEPORT, so that several worker processes can share one address (Linux spreads connections). */
  readonly reusePort?: boolean;
}

export interface TransportListener {
  readonly addr: HostPort;
  /**
   * Hands every client to `accepted` until closed, then resolves. A failure to accept (out of descriptors) is given
   * to `failed` as a LocalShortage or other Error, and accepting resumes once the promise it returns resolves (the
   * caller pauses on its own clock).
   */
  serve(accepted: (conn: Conn) => void, failed: (error: Error) => Promise<void>): Promise<void>;
  close(): void;
}

/** Who is told how a connect went. */
export interface ConnectTarget {
  connected(conn: Conn): void;
  /**
   * The Error's message says why; it is shown as the server's last failure. A `LocalShortage` (./errors.ts) is this
   * host's trouble (out of descriptors or buffers), not the server's.
   */
  connectFailed(error: Error): void;
}

export type SpliceEndReason =
  /** Both directions reached EOF. */
  | "eof"
  /** No byte moved either way for idleMs. */
  | "idle"
  /** The caller's signal aborted, or one of the connections was closed from outside. */
  | "aborted"
  /** A read, write or half-close failed on one side (reset, broken pipe...). */
  | "error";

/** How a splice ended and what it moved: `up` from a to b (client to server), `down` from b to a. */
export interface SpliceResult {
  readonly up: number;
  readonly down: number;
  readonly reason: SpliceEndReason;
  /** The failure ("error") or the signal's reason ("aborted"). */
  readonly error?: unknown;
  /** Which connection failed ("error" only). */
  readonly side?: "a" | "b";
}

/** Who is told that a splice has ended, with its totals. */
export interface SpliceTarget {
  spliced(result: SpliceResult): void;
}

export interface SpliceOptions {
  /** Where buffers come from; without one, each splice allocates its own of BUFFER_DEFAULTS.bufferBytes. */
  readonly pool?: BufferPool;
  /** Close both sides after this many ms with no byte either way; 0 or absent: never. */
  readonly idleMs?: number;
  readonly clock?: Clock;
  /** Closes both sides promptly (the server went down, the service stops). */
  readonly signal?: AbortSignal;
}

export interface Transport {
  readonly kind: "fast" | "portable";
  /**
   * Where the fast engine waits for readiness when quiet (shown in /status): on the event loop's own thread (its
   * epoll set joined, no thread hop per wake-up) or on a helper thread (the event loop's set was not found). Null for
   * the portable transport, whose sockets are Deno's own.
   */
  readonly waits: "event loop thread" | "helper thread" | null;
  /** Resolves once `waits` is settled (the fast engine has looked for the event loop's epoll set). */
  readonly ready: Promise<void>;
  /** Failures throw StartError naming the address. */
  listen(addr: HostPort, options?: ListenOptions): TransportListener;
  connect(addr: HostPort, timeoutMs: number, clock: Clock, target: ConnectTarget): void;
  /** Sends a few bytes (a PROXY header) before any relaying; rejects when they could not all be sent. */
  writeAll(conn: Conn, bytes: Uint8Array): Promise<void>;
  /**
   * Relays between `client` (a) and `server` (b) until both directions end, then closes both; tells `target` the
   * totals, never fails. One side's EOF half-closes the other and the reverse direction runs on; a failure on either
   * side, the idle timeout or the signal closes both.
   */
  splice(client: Conn, server: Conn, options: SpliceOptions, target: SpliceTarget): void;
}

/** What carries a service's connections: fast where it can (auto), or the one named. */
export const TRANSPORTS = ["auto", "fast", "portable"] as const;
export type TransportChoice = typeof TRANSPORTS[number];
