/**
 * Short TCP exchanges for health checks and agent polls: connect within a deadline, optionally send a line, read a
 * bounded reply until the peer closes (or until `expect` is seen), and always close. Every failure comes back as a
 * message, never as a throw, because a failed check is a result.
 */
import type { Clock } from "../../core/clock.ts";
import { formatHostPort, type HostPort } from "../address.ts";
import { closeQuietly, connectTcp, TcpConnectError } from "./socket.ts";
import { errorMessage } from "../../core/errors.ts";

export interface ExchangeOptions {
  /** Whole exchange: connect, send and read. */
  readonly timeoutMs: number;
  readonly clock: Clock;
  /** Written after connecting. */
  readonly send?: string | null;
  /** Read the reply (agent); without it the connect alone is the answer. */
  readonly read?: boolean;
  /** Stop reading once the reply contains this (health check with expect). */
  readonly expect?: string | null;
  /** Most reply bytes kept. */
  readonly maxBytes?: number;
}

export type ExchangeResult = { readonly ok: true; readonly reply: string } | {
  readonly ok: false;
  readonly error: string;
  /** The failure was this host's own (out of descriptors, ./errors.ts): it says nothing about the peer. */
  readonly local?: true;
};

const encoder = new TextEncoder();

export async function tcpExchange(addr: HostPort, options: ExchangeOptions): Promise<ExchangeResult> {
  const { clock, timeoutMs, maxBytes = 4096 } = options;
  const controller = new AbortController();
  let timedOut = false;
  let conn: Deno.TcpConn | null = null;
  const timer = clock.setTimeout(() => {
    timedOut = true;
    controller.abort();
    if (conn) closeQuietly(conn);
  }, timeoutMs);
  const where = formatHostPort(addr);
  try {
    conn = await connectTcp(addr, { signal: controller.signal });
    if (options.send) await writeAll(conn, encoder.encode(options.send));
    if (!options.read && !options.expect) return { ok: true, reply: "" };
    const buf = new Uint8Array(maxBytes);
    let used = 0;
    const decoder = new TextDecoder();
    for (;;) {
      if (used === buf.length) break;
      const n = await conn.read(buf.subarray(used));
      if (n === null) break;
      used += n;
      if (options.expect && decoder.decode(buf.subarray(0, used)).includes(options.expect)) break;
      if (!options.expect && buf.subarray(0, used).includes(10)) break; // one line is a whole agent reply
    }
    const reply = decoder.decode(buf.subarray(0, used));
    if (options.expect && !reply.includes(options.expect)) {
      return { ok: false, error: `${where}: reply does not contain "${options.expect}"` };
    }
    return { ok: true, reply };
  } catch (error) {
    if (timedOut) return { ok: false, error: `${where}: no answer within ${timeoutMs} ms` };
    if (error instanceof TcpConnectError) {
      return error.kind === "local"
        ? { ok: false, error: error.message, local: true }
        : { ok: false, error: error.message };
    }
    return { ok: false, error: `${where}: ${errorMessage(error)}` };
  } finally {
    clock.clearTimeout(timer);
    if (conn) closeQuietly(conn);
  }
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}
