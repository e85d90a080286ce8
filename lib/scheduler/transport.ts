/**
 * How a service's connections are carried: one interface, two implementations, as for UDP (lib/net/udp.ts).
 *   fast      nonblocking sockets in an epoll set through FFI to libc (lib/net/tcp_fast.ts), Linux
 *   portable  Deno's own sockets with a read/write loop per direction (lib/scheduler/pipe.ts)
 * `auto` takes the fast one where FFI to libc is allowed. Everything else about a service (limits, picking, queue,
 * retries, PROXY headers, counters) is the same code over either.
 */
import type { Clock } from "../core/clock.ts";
import { StartError } from "../core/errors.ts";
import type { HostPort } from "../net/address.ts";
import { closeQuietly, connectTcp, listenTcp } from "../net/tcp.ts";
import { type FastConn, type SpliceTarget, TcpEngine } from "../net/tcp_fast.ts";
import { pipe, type PipeOptions } from "./pipe.ts";

export type { TransportChoice } from "./config.ts";
import type { TransportChoice } from "./config.ts";

/** A client's or a server's connection, whichever transport carries it. Closing twice is harmless. */
export interface Conn {
  readonly remote: HostPort;
  readonly local: HostPort;
  close(): void;
}

export interface TransportListener {
  readonly addr: HostPort;
  /**
   * Hands every client to `accepted` until closed, then resolves. A failure to accept (out of descriptors) is given
   * to `failed`, and accepting goes on once the promise it returns resolves.
   */
  serve(accepted: (conn: Conn) => void, failed: (error: unknown) => Promise<void>): Promise<void>;
  close(): void;
}

/** Who is told how a connect went. */
export interface ConnectTarget {
  connected(conn: Conn): void;
  /** The Error's message says why; it is shown as the server's last failure. */
  connectFailed(error: Error): void;
}

/** Who is told that a splice has ended (the fast engine's own interface: both transports tell the same thing). */
export type { SpliceTarget } from "../net/tcp_fast.ts";

/**
 * A transport's calls tell a target object rather than return a promise: a service makes one object per client, and
 * no promise, closure or async frame per step (the fast transport calls back from its readiness events).
 */
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
  listen(addr: HostPort, reusePort: boolean): TransportListener;
  connect(addr: HostPort, timeoutMs: number, clock: Clock, target: ConnectTarget): void;
  /** Sends a few bytes (a PROXY header) before any relaying; rejects when they could not all be sent. */
  writeAll(conn: Conn, bytes: Uint8Array): Promise<void>;
  /** Relays both ways until both end; closes both; tells `target` the totals. */
  splice(client: Conn, server: Conn, options: PipeOptions, target: SpliceTarget): void;
}

/** The transport `choice` names (auto: fast where it can). */
export function openTransport(choice: TransportChoice): Transport {
  if (choice !== "portable") {
    const engine = TcpEngine.get();
    if (engine) return fastTransport(engine);
    if (choice === "fast") {
      throw new StartError("Cannot use the fast TCP path: it needs Linux and --allow-ffi (set io: portable)");
    }
  }
  return portableTransport;
}

function fastTransport(engine: TcpEngine): Transport {
  return {
    kind: "fast",
    get waits() {
      return engine.waitsOnEventLoopThread ? "event loop thread" as const : "helper thread" as const;
    },
    ready: engine.ready,
    listen(addr, reusePort) {
      const listener = engine.listen(addr, reusePort);
      return {
        addr: listener.addr,
        // The engine pauses by itself after a failed accept; the failure is only told.
        serve: (accepted, failed) => listener.serve(accepted, (error) => void failed(error)),
        close: () => listener.close(),
      };
    },
    connect: (addr, timeoutMs, clock, target) => engine.connectTo(addr, timeoutMs, clock, target),
    writeAll(conn, bytes) {
      try {
        (conn as FastConn).writeNow(bytes);
        return Promise.resolve();
      } catch (error) {
        return Promise.reject(error);
      }
    },
    splice: (client, server, options, target) =>
      engine.spliceTo(client as FastConn, server as FastConn, options, target),
  };
}

/** A Deno connection with the addresses the service needs. */
class PortableConn implements Conn {
  readonly remote: HostPort;
  readonly local: HostPort;
  constructor(readonly conn: Deno.TcpConn) {
    const r = conn.remoteAddr as Deno.NetAddr;
    const l = conn.localAddr as Deno.NetAddr;
    this.remote = { host: r.hostname, port: r.port };
    this.local = { host: l.hostname, port: l.port };
  }
  close(): void {
    closeQuietly(this.conn);
  }
}

const portableTransport: Transport = {
  kind: "portable",
  waits: null,
  ready: Promise.resolve(),
  listen(addr, reusePort) {
    const listener = listenTcp(addr, { reusePort });
    return {
      addr: listener.addr,
      async serve(accepted, failed) {
        for (;;) {
          let conn: Deno.TcpConn | null;
          try {
            conn = await listener.accept();
          } catch (error) {
            await failed(error);
            continue;
          }
          if (!conn) return;
          accepted(new PortableConn(conn));
        }
      },
      close: () => listener.close(),
    };
  },
  connect(addr, timeoutMs, clock, target) {
    connectTcp(addr, { timeoutMs, clock }).then(
      (conn) => target.connected(new PortableConn(conn)),
      (error) => target.connectFailed(error instanceof Error ? error : new Error(String(error))),
    );
  },
  async writeAll(conn, bytes) {
    const c = (conn as PortableConn).conn;
    let off = 0;
    while (off < bytes.length) off += await c.write(bytes.subarray(off));
  },
  splice(client, server, options, target) {
    pipe((client as PortableConn).conn, (server as PortableConn).conn, options).then((r) =>
      target.spliced(r)
    );
  },
};
