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
import { type FastConn, TcpEngine } from "../net/tcp_fast.ts";
import { pipe, type PipeOptions, type PipeResult } from "./pipe.ts";

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
  /** The next client, or null once closed. */
  accept(): Promise<Conn | null>;
  close(): void;
}

export interface Transport {
  readonly kind: "fast" | "portable";
  /** Failures throw StartError naming the address. */
  listen(addr: HostPort, reusePort: boolean): TransportListener;
  /** Rejects with an Error saying why (its message is shown as the server's last failure). */
  connect(addr: HostPort, timeoutMs: number, clock: Clock): Promise<Conn>;
  /** Sends a few bytes (a PROXY header) before any relaying; rejects when they could not all be sent. */
  writeAll(conn: Conn, bytes: Uint8Array): Promise<void>;
  /** Relays both ways until both end; closes both; never rejects. */
  splice(client: Conn, server: Conn, options: PipeOptions): Promise<PipeResult>;
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
    listen: (addr, reusePort) => engine.listen(addr, reusePort),
    connect: (addr, timeoutMs, clock) => engine.connect(addr, timeoutMs, clock),
    writeAll(conn, bytes) {
      try {
        (conn as FastConn).writeNow(bytes);
        return Promise.resolve();
      } catch (error) {
        return Promise.reject(error);
      }
    },
    splice: (client, server, options) => engine.splice(client as FastConn, server as FastConn, options),
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
  listen(addr, reusePort) {
    const listener = listenTcp(addr, { reusePort });
    return {
      addr: listener.addr,
      async accept() {
        const conn = await listener.accept();
        return conn ? new PortableConn(conn) : null;
      },
      close: () => listener.close(),
    };
  },
  async connect(addr, timeoutMs, clock) {
    return new PortableConn(await connectTcp(addr, { timeoutMs, clock }));
  },
  async writeAll(conn, bytes) {
    const c = (conn as PortableConn).conn;
    let off = 0;
    while (off < bytes.length) off += await c.write(bytes.subarray(off));
  },
  splice: (client, server, options) =>
    pipe((client as PortableConn).conn, (server as PortableConn).conn, options),
};
