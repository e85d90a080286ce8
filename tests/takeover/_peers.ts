/**
 * What the takeover tests run beside edgenode: an nginx "hello" backend (as tests/bench/tcp_bench.ts runs it), a
 * keepalive HTTP client on one connection, and a sequenced UDP stream with a receiver that counts what arrived.
 */
import { openUdp, type UdpSocket } from "../../lib/net/udp.ts";
import { freeTcpPort } from "../_support/ports.ts";
import { nginxConfig } from "../_support/nginx.ts";
import { requireTools } from "../_support/tools.ts";
import { until } from "../_support/until.ts";

export const LO = "127.0.0.1";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** nginx answering "hello" on a loopback port; stopped (and its directory removed) on dispose. */
export async function startNginx(): Promise<{ port: number } & AsyncDisposable> {
  const { nginx } = await requireTools(
    "the takeover test",
    ["nginx"],
    "nginx-light (apt-get install nginx-light)",
  );
  const dir = await Deno.makeTempDir({ prefix: "edgenode-takeover-nginx-" });
  const port = freeTcpPort();
  await Deno.writeTextFile(
    `${dir}/nginx.conf`,
    nginxConfig(dir, `${LO}:${port}`),
  );
  const child = new Deno.Command(nginx, {
    args: ["-c", `${dir}/nginx.conf`, "-p", dir],
    stdout: "null",
    stderr: "null",
  })
    .spawn();
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* gone */ }
    await child.status;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  try {
    await until("nginx to listen", async () => {
      try {
        (await Deno.connect({ hostname: LO, port })).close();
        return true;
      } catch {
        return false;
      }
    });
  } catch (error) {
    await stop();
    throw error;
  }
  return { port, [Symbol.asyncDispose]: stop };
}

/** One HTTP/1.1 request on an open keepalive connection; the body, or null when the connection failed. */
export async function ask(conn: Deno.TcpConn): Promise<string | null> {
  try {
    await conn.write(encoder.encode(`GET / HTTP/1.1\r\nHost: t\r\n\r\n`));
    const buf = new Uint8Array(4096);
    let text = "";
    while (!/\r\n\r\n[\s\S]*\n$/.test(text)) {
      const n = await conn.read(buf);
      if (n === null) return null;
      text += decoder.decode(buf.subarray(0, n));
    }
    return text.split("\r\n\r\n")[1].trim();
  } catch {
    return null;
  }
}

/**
 * A receiver counting sequence numbers (u32 at the front of each datagram) on a fast socket with a large buffer, so
 * that the test's own pauses do not drop what the relay sent.
 */
export class SeqReceiver implements AsyncDisposable {
  readonly socket: UdpSocket;
  readonly seen = new Set<number>();
  duplicates = 0;
  readonly #loop: Promise<void>;

  constructor() {
    const socket = openUdp({ host: LO, port: 0 }, { bufferBytes: 16 * 1024 * 1024 });
    this.socket = socket;
    this.#loop = (async () => {
      for (;;) {
        const batch = await socket.receive();
        if (!batch) return;
        for (let i = 0; i < batch.count; i++) {
          const d = batch.data(i);
          if (d.length < 4) continue;
          const seq = new DataView(d.buffer, d.byteOffset).getUint32(0, false);
          if (this.seen.has(seq)) this.duplicates++;
          else this.seen.add(seq);
        }
      }
    })();
  }

  get port(): number {
    return this.socket.local.port;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.socket.close();
    await this.#loop;
  }
}

/** Sends numbered 100-byte datagrams to `port`, `perTick` every `tickMs`, until stopped; `sent` counts them. */
export class SeqSender implements AsyncDisposable {
  readonly socket: UdpSocket;
  sent = 0;
  readonly #timer: ReturnType<typeof setInterval>;

  constructor(port: number, perTick: number, tickMs: number) {
    this.socket = openUdp({ host: LO, port: 0 });
    const to = this.socket.destinations([{ host: LO, port }]);
    this.#timer = setInterval(() => {
      const batch: Uint8Array[] = [];
      for (let k = 0; k < perTick; k++) {
        const d = new Uint8Array(100);
        new DataView(d.buffer).setUint32(0, this.sent++, false);
        batch.push(d);
      }
      this.socket.send(batch, to);
    }, tickMs);
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.stop();
    await this.socket.close();
  }
}
