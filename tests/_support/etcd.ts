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
  readonly #child: Deno.ChildProcess;
  readonly #stderr: Promise<string>;
  #status: Deno.CommandStatus | undefined;

  private constructor(url: string, dataDir: string, child: Deno.ChildProcess) {
    this.url = url;
    this.dataDir = dataDir;
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
  }

  /** Starts etcd and waits until it serves requests. */
  static async start(o: EtcdServerOptions = {}): Promise<EtcdServer> {
    const tools = await requireTools(
      "etcd tests",
      ["etcd", ...(o.netns ? ["ip"] : [])],
      "the Debian package etcd-server (apt-get install etcd-server)",
    );
    const host = o.host ?? "127.0.0.1";
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
    const child = new Deno.Command(command, {
      args: all,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const server = new EtcdServer(client, dataDir, child);
    try {
      await poll(
        `etcd at ${client}`,
        async () => {
          if (server.#status) {
            throw new Error(`etcd exited with code ${server.#status.code}: ${await server.#stderr}`);
          }
          return await server.healthy();
        },
        o.startTimeoutMs ?? 15_000,
        50,
      );
    } catch (error) {
      await server[Symbol.asyncDispose]();
      throw error;
    }
    return server;
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

  get pid(): number {
    return this.#child.pid;
  }

  /** Stops etcd (SIGTERM, SIGKILL after 5 s) and removes its data. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#status === undefined) {
      try {
        this.#child.kill("SIGTERM");
      } catch {
        // Ended between the check and the signal.
      }
      if (!await within(this.#child.status, 5_000)) {
        try {
          this.#child.kill("SIGKILL");
        } catch {
          // Gone meanwhile.
        }
      }
    }
    await this.#child.status;
    await this.#stderr;
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
