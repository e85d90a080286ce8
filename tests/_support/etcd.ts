/**
 * A real etcd (Debian's etcd-server) for tests: a one-member cluster with its own temp data dir on free loopback
 * ports (or on an address inside a network namespace the test made), waited for until it answers, and always stopped
 * and removed on dispose. A missing binary fails the test naming the package.
 */
import { requireTools } from "./tools.ts";
import { poll, within } from "./until.ts";

export interface EtcdServerOptions {
  /** Address to listen on; default 127.0.0.1. */
  readonly host?: string;
  /** Client port; 0 (default) picks a free one (in a namespace: 2379, and 2380 for peers). */
  readonly clientPort?: number;
  readonly peerPort?: number;
  /** Run it inside this network namespace (`ip netns exec NAME etcd ...`). */
  readonly netns?: string;
  /** How long it may take to answer after start, ms. Default 15000. */
  readonly startTimeoutMs?: number;
}

export class EtcdServer implements AsyncDisposable {
  readonly url: string;
  readonly dataDir: string;
  readonly #command: string;
  readonly #args: readonly string[];
  readonly #startTimeoutMs: number;
  #child: Deno.ChildProcess | undefined;
  #stderr: Promise<string> = Promise.resolve("");
  #status: Deno.CommandStatus | undefined;

  private constructor(url: string, dataDir: string, command: string, args: string[], startTimeoutMs: number) {
    this.url = url;
    this.dataDir = dataDir;
    this.#command = command;
    this.#args = args;
    this.#startTimeoutMs = startTimeoutMs;
  }

  /** Starts etcd and waits until it serves requests. */
  static async start(o: EtcdServerOptions = {}): Promise<EtcdServer> {
    const tools = await requireTools(
      "etcd tests",
      ["etcd", ...(o.netns ? ["ip"] : [])],
      "the Debian package etcd-server (apt-get install etcd-server)",
    );
    const host = o.host ?? "127.0.0.1";
    // Ports picked free here can be taken before etcd binds them (another socket's ephemeral port, in a suite that
    // makes thousands of connections; seen once in CI): then new ones, up to three times.
    const picked = !o.netns && (!o.clientPort || !o.peerPort);
    for (let attempt = 1;; attempt++) {
      // A namespace the test made has a network stack of its own: etcd's usual ports are free there.
      const clientPort = o.clientPort || (o.netns ? 2379 : freePort(host));
      const peerPort = o.peerPort || (o.netns ? 2380 : freePort(host));
      const dataDir = await Deno.makeTempDir({ prefix: "edgenode_etcd_" });
      const client = `http://${host}:${clientPort}`;
      const peer = `http://${host}:${peerPort}`;
      const args = [
        "--name=test",
        `--data-dir=${dataDir}/data`,
        `--listen-client-urls=${client}`,
        `--advertise-client-urls=${client}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        `--initial-cluster=test=${peer}`,
        "--initial-cluster-state=new",
        "--log-level=warn",
        "--logger=zap",
      ];
      const [command, all] = o.netns
        ? [tools.ip, ["netns", "exec", o.netns, tools.etcd, ...args]]
        : [tools.etcd, args];
      const server = new EtcdServer(client, dataDir, command, all, o.startTimeoutMs ?? 15_000);
      try {
        await server.restart();
        return server;
      } catch (error) {
        await server[Symbol.asyncDispose]();
        if (!(picked && attempt < 3 && /address already in use/.test(String(error)))) throw error;
      }
    }
  }

  /** Starts etcd again (same ports, same data) after `stop()`, and waits until it serves requests. */
  async restart(): Promise<void> {
    if (this.#child && this.#status === undefined) throw new Error("etcd is running: stop() it first");
    this.#status = undefined;
    const child = new Deno.Command(this.#command, {
      args: [...this.#args],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    child.status.then((s) => this.#status = s);
    // Keep the last few KiB of its log for a failure message; never let the pipe fill.
    this.#stderr = (async () => {
      let tail = "";
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        tail = (tail + chunk).slice(-8192);
      }
      return tail;
    })().catch(() => "");
    await poll(
      `etcd at ${this.url}`,
      async () => {
        if (this.#status) {
          throw new Error(`etcd exited with code ${this.#status.code}: ${await this.#stderr}`);
        }
        return await this.healthy();
      },
      this.#startTimeoutMs,
      50,
    );
  }

  /** True when etcd answers a read; false when it cannot be reached (yet). */
  async healthy(): Promise<boolean> {
    try {
      const r = await fetch(`${this.url}/v3/kv/range`, {
        method: "POST",
        body: JSON.stringify({ key: "AA==" }),
        signal: AbortSignal.timeout(1000),
      });
      await r.body?.cancel();
      return r.ok;
    } catch {
      return false;
    }
  }

  /** Stops etcd (SIGTERM, SIGKILL after 5 s), keeping its data for `restart()`. */
  async stop(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    if (this.#status === undefined) {
      try {
        child.kill("SIGTERM");
      } catch {
        // Ended between the check and the signal.
      }
      if (!await within(child.status, 5_000)) {
        try {
          child.kill("SIGKILL");
        } catch {
          // Gone meanwhile.
        }
      }
    }
    await child.status;
    await this.#stderr;
  }

  /** Stops etcd and removes its data. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
    await Deno.remove(this.dataDir, { recursive: true }).catch(() => {});
  }
}

/** A port free on `host` now (bound to port 0 and released): what etcd is told to listen on. */
function freePort(host: string): number {
  const listener = Deno.listen({ hostname: host, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}
