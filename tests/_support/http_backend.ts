/**
 * A small HTTP/1.1 server on loopback for load tests (wrk through the scheduler): answers every request with its name,
 * keeps the connection open unless the request says `Connection: close`, and counts the connections it accepted, so a
 * test can tell new connections from requests on established ones. Requests without a body only (what wrk sends).
 */
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const END = /\r\n\r\n/;

export class HttpBackend implements AsyncDisposable {
  readonly name: string;
  readonly port: number;
  /** Connections accepted since start. */
  accepted = 0;
  /** Requests answered since start. */
  requests = 0;
  readonly #listener: Deno.TcpListener;
  readonly #conns = new Set<Deno.TcpConn>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #loop: Promise<void>;

  constructor(name: string) {
    this.name = name;
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#loop = this.#accept();
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  async #accept(): Promise<void> {
    try {
      for await (const conn of this.#listener) {
        this.accepted++;
        this.#conns.add(conn);
        const task = this.#serve(conn).finally(() => {
          this.#conns.delete(conn);
          this.#tasks.delete(task);
        });
        this.#tasks.add(task);
      }
    } catch {
      // closed
    }
  }

  async #serve(conn: Deno.TcpConn): Promise<void> {
    const body = encoder.encode(`${this.name}\n`);
    const buf = new Uint8Array(16 * 1024);
    let pending = "";
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) break;
        pending += decoder.decode(buf.subarray(0, n));
        let close = false;
        for (let m = END.exec(pending); m; m = END.exec(pending)) {
          const head = pending.slice(0, m.index);
          pending = pending.slice(m.index + 4);
          close = /\r\nconnection:\s*close/i.test(head);
          this.requests++;
          const reply = `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\nContent-Type: text/plain\r\n${
            close ? "Connection: close\r\n" : ""
          }\r\n`;
          // One write: a header and a body apart would meet Nagle and the peer's delayed ACK on keepalive.
          const out = new Uint8Array(reply.length + body.length);
          out.set(encoder.encode(reply));
          out.set(body, reply.length);
          await writeAll(conn, out);
          if (close) break;
        }
        if (close) break;
      }
    } catch {
      // reset by the peer
    } finally {
      try {
        conn.close();
      } catch {
        // closed already
      }
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.#listener.close();
    } catch {
      // closed already
    }
    await this.#loop;
    for (const c of this.#conns) {
      try {
        c.close();
      } catch {
        // closed already
      }
    }
    await Promise.all(this.#tasks);
  }
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
}

/** What a wrk run printed, read: requests done, and every kind of failure it counts. */
export interface WrkResult {
  readonly requests: number;
  readonly connectErrors: number;
  readonly readErrors: number;
  readonly writeErrors: number;
  readonly timeouts: number;
  readonly non2xx: number;
  readonly output: string;
}

export function parseWrk(output: string): WrkResult {
  const requests = Number(/(\d+) requests in/.exec(output)?.[1] ?? NaN);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(output);
  return {
    requests,
    connectErrors: Number(socket?.[1] ?? 0),
    readErrors: Number(socket?.[2] ?? 0),
    writeErrors: Number(socket?.[3] ?? 0),
    timeouts: Number(socket?.[4] ?? 0),
    non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(output)?.[1] ?? 0),
    output,
  };
}

/** Starts wrk against `url` for `seconds` (one thread); `close` sends `Connection: close` (a new connection each). */
export function startWrk(
  wrk: string,
  url: string,
  options: { seconds: number; connections: number; close?: boolean },
): Promise<WrkResult> {
  const args = ["-t1", `-c${options.connections}`, `-d${options.seconds}s`, "--timeout", "5s"];
  if (options.close) args.push("-H", "Connection: close");
  const child = new Deno.Command(wrk, { args: [...args, url], stdout: "piped", stderr: "piped" }).spawn();
  return child.output().then((o) => parseWrk(decoder.decode(o.stdout) + decoder.decode(o.stderr)));
}
