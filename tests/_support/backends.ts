/**
 * Real TCP peers for the scheduler's tests, on loopback: backends that answer with their own name (then echo, and
 * optionally stream a byte every few ms), load agents that answer a set HAProxy agent-check reply, a backend that reads
 * the PROXY protocol header, and clients that read a backend's name. A backend runs in this process or, where a test
 * must kill or freeze a server for real, as a subprocess running this same file. Every wait is bounded.
 *
 * Unit tests and e2e tests both use these (tests/e2e/_backends.ts re-exports them for older imports).
 *
 * As a program: `deno run --allow-net backends.ts NAME PORT [STREAM_EVERY_MS]` serves one backend and prints
 * `listening PORT` once it listens.
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { connectTcp, TcpConnectError } from "../../lib/net/tcp/socket.ts";
import { type ParsedProxyHeader, parseProxyHeader } from "../../lib/scheduler/proxy_protocol.ts";
import { within } from "./until.ts";

const LOOPBACK = "127.0.0.1";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export interface BackendOptions {
  readonly host?: string;
  /** 0 (the default) takes a free port. */
  readonly port?: number;
  /** After the name line, send "." every this many ms (a streaming server). 0: only echo. */
  readonly streamEveryMs?: number;
}

/**
 * A server that writes `NAME\n` to each connection, echoes what it reads and, when streaming, sends a byte every few
 * ms. `kill()` drops the listener and every connection as a crash would; `restart()` listens again on the same port.
 */
export class Backend implements AsyncDisposable {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly streamEveryMs: number;
  /** Connections accepted since start. */
  accepted = 0;
  #listener: Deno.TcpListener | null;
  readonly #conns = new Set<Deno.TcpConn>();
  readonly #tasks = new Set<Promise<void>>();
  #acceptLoop: Promise<void> = Promise.resolve();

  constructor(name: string, options: BackendOptions = {}) {
    this.name = name;
    this.host = options.host ?? LOOPBACK;
    this.streamEveryMs = options.streamEveryMs ?? 0;
    this.#listener = Deno.listen({ hostname: this.host, port: options.port ?? 0, transport: "tcp" });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#acceptLoop = this.#accept(this.#listener);
  }

  get address(): string {
    return `${this.host}:${this.port}`;
  }

  /** Connections open now. */
  get open(): number {
    return this.#conns.size;
  }

  /** Stops accepting (new connects are refused); open connections go on. */
  async stopListening(): Promise<void> {
    const listener = this.#listener;
    this.#listener = null;
    if (listener) closeQuietly(listener);
    await this.#acceptLoop;
  }

  /** Closes the listener and every open connection, as a crashed server's kernel would. */
  async kill(): Promise<void> {
    await this.stopListening();
    for (const conn of this.#conns) closeQuietly(conn);
    await Promise.all(this.#tasks);
  }

  /** Listens again on the same port after `stopListening` or `kill`. */
  restart(): void {
    assert.equal(this.#listener, null, "restart() needs a stopped backend");
    this.#listener = Deno.listen({ hostname: this.host, port: this.port, transport: "tcp" });
    this.#acceptLoop = this.#accept(this.#listener);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
  }

  async #accept(listener: Deno.TcpListener): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch {
        return; // closed
      }
      this.accepted++;
      this.#conns.add(conn);
      const task = this.#serve(conn).finally(() => {
        this.#conns.delete(conn);
        closeQuietly(conn);
      });
      this.#tasks.add(task);
      task.finally(() => this.#tasks.delete(task));
    }
  }

  async #serve(conn: Deno.TcpConn): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await writeAll(conn, encoder.encode(`${this.name}\n`));
      if (this.streamEveryMs > 0) {
        const dot = encoder.encode(".");
        timer = setInterval(() => conn.write(dot).catch(() => closeQuietly(conn)), this.streamEveryMs);
      }
      const buf = new Uint8Array(16 * 1024);
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) return;
        await writeAll(conn, buf.subarray(0, n));
      }
    } catch {
      // Reset by the peer or closed by kill(): the connection is over either way.
    } finally {
      clearInterval(timer);
    }
  }
}

/**
 * A listener that never accepts, its accept queue filled so that the kernel drops the next SYN: a connect to it
 * hangs, the way a connect to a dead host does. Returns its port and a dispose that frees everything.
 */
export async function blackhole(): Promise<{ port: number } & AsyncDisposable> {
  const listener = Deno.listen({ hostname: LOOPBACK, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const made: Deno.TcpConn[] = [];
  const dispose = () => {
    for (const c of made) c.close();
    listener.close();
  };
  try {
    for (let i = 0; i < 5000; i++) {
      const clock = new ManualClock();
      const attempt = connectTcp({ host: LOOPBACK, port }, { timeoutMs: 1000, clock });
      if (!(await within(attempt, 20))) clock.advance(1000);
      try {
        made.push(await attempt);
      } catch (error) {
        assert.ok(error instanceof TcpConnectError && error.kind === "timeout");
        return { port, [Symbol.asyncDispose]: () => Promise.resolve(dispose()) };
      }
    }
    throw new Error("The accept queue never filled");
  } catch (error) {
    dispose();
    throw error;
  }
}

/** Backends on ports `base .. base+names.length-1`, trying a few unusual bases until every port binds. */
export function backendsOnConsecutivePorts(names: readonly (string | null)[]): Backend[] {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 19_000 + Math.floor(Math.random() * 900);
    const started: Backend[] = [];
    try {
      names.forEach((name, i) => {
        // A null name stands for a port that must be free and stay unanswered: bind it only to see that it is free.
        if (name === null) closeQuietly(Deno.listen({ hostname: LOOPBACK, port: base + i }));
        else started.push(new Backend(name, { port: base + i }));
      });
      return started;
    } catch (error) {
      if (!(error instanceof Deno.errors.AddrInUse)) throw error;
      for (const b of started) b.kill();
    }
  }
  throw new Error(`No ${names.length} consecutive free ports found`);
}

/** A backend run as a subprocess of this file, so that a test can SIGKILL or SIGSTOP a server process for real. */
export class BackendProcess implements AsyncDisposable {
  readonly name: string;
  readonly port: number;
  readonly #child: Deno.ChildProcess;
  #status: Deno.CommandStatus | undefined;

  private constructor(name: string, port: number, child: Deno.ChildProcess) {
    this.name = name;
    this.port = port;
    this.#child = child;
    child.status.then((s) => this.#status = s);
  }

  /** Starts `name` on `port` (0: a free one) and waits, at most `timeoutMs`, until it listens. */
  static async start(
    name: string,
    options: { port?: number; streamEveryMs?: number; timeoutMs?: number } = {},
  ): Promise<BackendProcess> {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net",
        new URL(import.meta.url).pathname,
        name,
        String(options.port ?? 0),
        String(options.streamEveryMs ?? 0),
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`Backend ${name} did not listen within ${options.timeoutMs ?? 10_000} ms`)),
          options.timeoutMs ?? 10_000,
        );
      });
      while (!/listening (\d+)\n/.test(text)) {
        const { value, done } = await Promise.race([reader.read(), timeout]);
        if (done) throw new Error(`Backend ${name} ended before it listened: ${text}`);
        text += value;
      }
    } catch (error) {
      child.kill("SIGKILL");
      await child.status;
      throw error;
    } finally {
      clearTimeout(timer);
    }
    // Nothing more is printed; let the rest of stdout drain so the pipe never fills.
    reader.read().then(function drain(r): Promise<void> | void {
      if (!r.done) return reader.read().then(drain);
    }).catch(() => {});
    return new BackendProcess(name, Number(/listening (\d+)/.exec(text)![1]), child);
  }

  get address(): string {
    return `${LOOPBACK}:${this.port}`;
  }

  signal(signal: Deno.Signal): void {
    this.#child.kill(signal);
  }

  /** SIGKILL, resolving once the process has ended (and the kernel has closed its sockets). */
  async kill(): Promise<void> {
    if (this.#status === undefined) {
      try {
        this.#child.kill("SIGKILL");
      } catch {
        // Ended between the check and the signal.
      }
    }
    await this.#child.status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
  }
}

/** A load agent that answers every poll with `reply` (changeable) and closes, as HAProxy's agent-check expects. */
export class AgentStub implements AsyncDisposable {
  reply: string;
  polls = 0;
  readonly port: number;
  readonly #listener: Deno.TcpListener;
  readonly #loop: Promise<void>;

  constructor(reply: string) {
    this.reply = reply;
    this.#listener = Deno.listen({ hostname: LOOPBACK, port: 0, transport: "tcp" });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#loop = this.#accept();
  }

  get address(): string {
    return `${LOOPBACK}:${this.port}`;
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return;
      }
      this.polls++;
      writeAll(conn, encoder.encode(`${this.reply}\n`)).catch(() => {}).finally(() => closeQuietly(conn));
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    closeQuietly(this.#listener);
    await this.#loop;
  }
}

/**
 * A server behind `proxy_protocol`: it reads the PROXY header each connection starts with, keeps it, and answers
 * `SOURCE-HOST SOURCE-PORT\n` (what it learned of the client) then closes.
 */
export class ProxyBackend implements AsyncDisposable {
  readonly headers: ParsedProxyHeader[] = [];
  readonly port: number;
  readonly #listener: Deno.TcpListener;
  readonly #loop: Promise<void>;

  constructor() {
    this.#listener = Deno.listen({ hostname: LOOPBACK, port: 0, transport: "tcp" });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#loop = this.#accept();
  }

  get address(): string {
    return `${LOOPBACK}:${this.port}`;
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return;
      }
      this.#serve(conn).catch(() => {}).finally(() => closeQuietly(conn));
    }
  }

  async #serve(conn: Deno.TcpConn): Promise<void> {
    const buf = new Uint8Array(512);
    let used = 0;
    for (;;) {
      const n = await conn.read(buf.subarray(used));
      if (n === null) throw new Error("Connection ended before a whole PROXY header");
      used += n;
      const header = parseProxyHeader(buf.subarray(0, used));
      if (header) {
        this.headers.push(header);
        await writeAll(conn, encoder.encode(`${header.source?.host} ${header.source?.port}\n`));
        return;
      }
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    closeQuietly(this.#listener);
    await this.#loop;
  }
}

/** A client connection that reads lines and notices its end. */
export class Client implements Disposable {
  readonly conn: Deno.TcpConn;
  #pending = "";
  #ended: Promise<number> | null = null;

  private constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  static async connect(port: number, host = LOOPBACK): Promise<Client> {
    return new Client(await Deno.connect({ hostname: host, port, transport: "tcp" }));
  }

  get localPort(): number {
    return (this.conn.localAddr as Deno.NetAddr).port;
  }

  /** The next line without its newline; null when the connection ends first. Fails after `timeoutMs`. */
  async readLine(timeoutMs = 5000): Promise<string | null> {
    const buf = new Uint8Array(4096);
    return await bounded(timeoutMs, "a line", async () => {
      for (;;) {
        const newline = this.#pending.indexOf("\n");
        if (newline >= 0) {
          const line = this.#pending.slice(0, newline);
          this.#pending = this.#pending.slice(newline + 1);
          return line;
        }
        let n: number | null;
        try {
          n = await this.conn.read(buf);
        } catch {
          return null;
        }
        if (n === null) return null;
        this.#pending += decoder.decode(buf.subarray(0, n));
      }
    });
  }

  /** Reads (and drops) bytes until at least one arrives; false when the connection ended instead. */
  async readSome(timeoutMs = 5000): Promise<boolean> {
    if (this.#pending.length) {
      this.#pending = "";
      return true;
    }
    const buf = new Uint8Array(4096);
    return await bounded(timeoutMs, "a byte", async () => {
      try {
        return (await this.conn.read(buf)) !== null;
      } catch {
        return false;
      }
    });
  }

  /** Resolves with performance.now() when the connection ends (EOF or reset), reading and dropping data meanwhile. */
  ended(): Promise<number> {
    this.#ended ??= (async () => {
      const buf = new Uint8Array(4096);
      try {
        while ((await this.conn.read(buf)) !== null) { /* streaming bytes: keep reading */ }
      } catch {
        // A reset ends it too.
      }
      return performance.now();
    })();
    return this.#ended;
  }

  async write(text: string): Promise<void> {
    await writeAll(this.conn, encoder.encode(text));
  }

  [Symbol.dispose](): void {
    closeQuietly(this.conn);
  }
}

/** Connects to `port`, reads the backend's name line and closes; null when the connection ended without one. */
export async function fetchName(port: number, timeoutMs = 5000): Promise<string | null> {
  let client: Client;
  try {
    client = await Client.connect(port);
  } catch {
    return null;
  }
  using _ = client;
  return await client.readLine(timeoutMs);
}

/** How many times each name came back from `n` sequential connections (`null` counts failures). */
export async function spread(port: number, n: number): Promise<Map<string | null, number>> {
  const counts = new Map<string | null, number>();
  for (let i = 0; i < n; i++) {
    const name = await fetchName(port);
    counts.set(name, (counts.get(name) ?? 0) + 1);
  }
  return counts;
}

/** Opens clients through `port` until `count` of them are on backend `name`; the others are closed. */
export async function clientsOn(port: number, name: string, count: number): Promise<Client[]> {
  const kept: Client[] = [];
  for (let i = 0; i < 40 && kept.length < count; i++) {
    const client = await Client.connect(port);
    if ((await client.readLine()) === name) kept.push(client);
    else client[Symbol.dispose]();
  }
  assert.equal(kept.length, count, `${count} clients on ${name}`);
  return kept;
}

async function bounded<T>(timeoutMs: number, what: string, work: () => Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`No ${what} within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([work(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

function closeQuietly(closable: { close(): void }): void {
  try {
    closable.close();
  } catch {
    // Closed already.
  }
}

if (import.meta.main) {
  const [name, port, every] = Deno.args;
  const backend = new Backend(name, { port: Number(port), streamEveryMs: Number(every ?? 0) });
  console.log(`listening ${backend.port}`);
}
