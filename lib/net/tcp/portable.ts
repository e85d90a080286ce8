/**
 * The portable TCP transport: Deno's own sockets (./socket.ts) and the read/write-loop pipe (./pipe.ts), wherever
 * FFI to libc is not allowed or not Linux.
 */
import type { HostPort } from "../address.ts";
import { LocalShortage, shortageOf } from "./errors.ts";
import { pipe } from "./pipe.ts";
import { closeQuietly, connectTcp, listenTcp, TcpConnectError } from "./socket.ts";
import type { Conn, Transport } from "./transport.ts";
import { errorMessage } from "../../core/errors.ts";

/** A Deno connection with the addresses a service needs. */
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

/** `error` as a LocalShortage when it is one (this host out of descriptors, buffers, memory or ports). */
function sorted(error: unknown, op: "accept" | "connect", where: string): Error {
  const cause = error instanceof TcpConnectError ? error.cause : error;
  const shortage = shortageOf(cause);
  const message = error instanceof TcpConnectError
    ? error.message
    : `Cannot ${op} on ${where}: ${errorMessage(error)}`;
  if (shortage) return new LocalShortage(message, op, shortage, { cause: error });
  return error instanceof Error ? error : new Error(message);
}

export const portableTransport: Transport = {
  kind: "portable",
  waits: null,
  ready: Promise.resolve(),
  listen(addr, options = {}) {
    const listener = listenTcp(addr, { reusePort: options.reusePort ?? false });
    const where = `tcp ${listener.addr.host}:${listener.addr.port}`;
    return {
      addr: listener.addr,
      async serve(accepted, failed) {
        for (;;) {
          let conn: Deno.TcpConn | null;
          try {
            conn = await listener.accept();
          } catch (error) {
            await failed(sorted(error, "accept", where));
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
      (error) => target.connectFailed(sorted(error, "connect", "")),
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
