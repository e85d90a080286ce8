/**
 * A relay: datagrams arriving on one address are sent on to a fixed list of targets, a batch at a time, from the
 * same socket. On the fast path the relay runs on a thread of its own (lib/relay/relay_thread.ts) that waits in
 * recvmmsg as a C relay does, with no event loop between the kernel and the next batch; on the portable path, or when
 * the thread cannot start, it runs on the main thread's event loop. Counters live in the socket (totals) and in its
 * Destinations (per target), in shared memory when a thread does the counting; the relay only publishes them.
 */
import type { Logger } from "../core/logger.ts";
import type { MetricsRegistry } from "../core/metrics.ts";
import { formatHostPort, type HostPort } from "../net/address.ts";
import {
  type Destinations,
  sharedStats,
  statsOf,
  type UdpOptions,
  type UdpSocket,
  type UdpStats,
} from "../net/udp.ts";
import { FastUdp } from "../net/udp_fast.ts";
import type { RelayThreadReport, RelayThreadStart } from "./relay_thread.ts";

export interface RelaySpec {
  readonly name: string;
  readonly listen: HostPort;
  readonly targets: readonly HostPort[];
}

/** How long a relay thread has to start, and to stop once asked. */
const THREAD_START_MS = 10_000;
const THREAD_STOP_MS = 2_000;

/** Publishes a socket's tallies as counters of one component. */
export function publishSocket(
  metrics: MetricsRegistry,
  subsystem: string,
  labels: Record<string, string>,
  s: Readonly<UdpStats>,
) {
  const set = metrics.set(subsystem, labels);
  set.counter("rx_packets_total", "Datagrams received", () => s.rx_packets);
  set.counter("rx_bytes_total", "Bytes received", () => s.rx_bytes);
  set.counter("tx_packets_total", "Datagrams sent", () => s.tx_packets);
  set.counter("tx_bytes_total", "Bytes sent", () => s.tx_bytes);
  set.counter("truncated_total", "Datagrams longer than max_datagram, delivered cut", () => s.truncated);
  set.counter("tx_dropped_total", "Datagrams the kernel would not take", () => s.tx_dropped);
  set.counter("errors_total", "Failed socket calls", () => s.errors);
  return set;
}

/** What a forwarding thread carries besides its receiving socket (see RelayThreadStart). */
export interface ThreadPath {
  /** Who it works for, in log lines: `{ relay: NAME }`, `{ reflector: NAME, path: "media" }`. */
  readonly labels: Record<string, string>;
  readonly to: RelayThreadStart["to"];
  /** Another socket to send from. */
  readonly out?: FastUdp;
  readonly valid?: "rtp" | "rtcp";
}

/**
 * The thread that moves one relay's (or one reflector path's) datagrams, and the shared memory it counts into:
 * `stats` for the receiving socket (and the sending one when it is the same), `outStats` for another sending socket,
 * `malformed` for datagrams a `valid` check refused.
 */
export class RelayThread {
  readonly stats = sharedStats();
  readonly outStats = sharedStats();
  readonly #malformed = new Float64Array(new SharedArrayBuffer(8));
  readonly #control = new Int32Array(new SharedArrayBuffer(4));
  readonly #worker: Worker;
  readonly #stopped: Promise<void>;
  /** Resolves when the loop runs; rejects when the thread could not start it. */
  readonly started: Promise<void>;
  error: string | null = null;

  private constructor(
    readonly socket: FastUdp,
    path: ThreadPath,
    options: UdpOptions,
    logger?: Logger,
  ) {
    const name = Object.values(path.labels).join(" ");
    this.#worker = new Worker(new URL("./relay_thread.ts", import.meta.url), { type: "module", name });
    let ready!: () => void;
    let failed!: (error: string) => void;
    this.started = new Promise<void>((resolve, reject) => {
      ready = resolve;
      failed = (e) => reject(new Error(e));
    });
    this.started.catch(() => {});
    let stopped!: () => void;
    this.#stopped = new Promise<void>((resolve) => stopped = resolve);
    const fail = (error: string) => {
      this.error = error;
      logger?.error("relay thread failed", { ...path.labels, error });
      failed(error);
      stopped();
    };
    this.#worker.onmessage = (event: MessageEvent<RelayThreadReport>) => {
      const r = event.data;
      if ("ready" in r) ready();
      else if ("stopped" in r) stopped();
      else fail(r.error);
    };
    this.#worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      fail(event.message);
    };
    const start: RelayThreadStart = {
      descriptor: socket.descriptor,
      options: { batch: options.batch, maxDatagram: options.maxDatagram, gso: options.gso },
      stats: this.stats.buffer,
      control: this.#control.buffer as SharedArrayBuffer,
      to: path.to,
      ...(path.out ? { out: { descriptor: path.out.descriptor, stats: this.outStats.buffer } } : {}),
      ...(path.valid
        ? { valid: { kind: path.valid, malformed: this.#malformed.buffer as SharedArrayBuffer } }
        : {}),
    };
    this.#worker.postMessage(start);
  }

  /** Datagrams the `valid` check refused. */
  get malformed(): number {
    return this.#malformed[0];
  }

  /** A running thread, or a rejection saying why it could not start (nothing is left running then). */
  static async start(
    socket: FastUdp,
    path: ThreadPath,
    options: UdpOptions,
    logger?: Logger,
  ): Promise<RelayThread> {
    const thread = new RelayThread(socket, path, options, logger);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer in ${THREAD_START_MS} ms`)), THREAD_START_MS);
    });
    try {
      await Promise.race([thread.started, late]);
      return thread;
    } catch (error) {
      await thread.stop();
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Asks the loop to stop, wakes it, and waits for it, terminating it after THREAD_STOP_MS. True when it stopped
   * by itself.
   */
  async stop(): Promise<boolean> {
    Atomics.store(this.#control, 0, 1);
    this.socket.interrupt();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<false>((r) => timer = setTimeout(() => r(false), THREAD_STOP_MS));
    const byItself = await Promise.race([this.#stopped.then(() => true), late]);
    clearTimeout(timer);
    this.#worker.terminate();
    return byItself;
  }
}

export interface RelayOptions {
  /** Run the fast path on a thread of its own (default true). */
  readonly thread?: boolean;
  /** batch, maxDatagram and gso, for the thread's own socket object. */
  readonly udp?: UdpOptions;
  readonly logger?: Logger;
}

export class Relay {
  readonly #to: Destinations;
  readonly #stats: Readonly<UdpStats>;
  readonly #thread: RelayThread | null;
  readonly #done: Promise<void>;
  readonly #metrics: MetricsRegistry;
  readonly #logger?: Logger;
  readonly #sets;

  /** Starts relaying `socket` (on a thread of its own where it can); resolves once datagrams move. */
  static async start(
    spec: RelaySpec,
    socket: UdpSocket,
    metrics: MetricsRegistry,
    options: RelayOptions = {},
  ): Promise<Relay> {
    let thread: RelayThread | null = null;
    let to: Destinations | null = null;
    if (socket instanceof FastUdp && options.thread !== false) {
      const n = spec.targets.length;
      const sent = new SharedArrayBuffer(n * 8);
      const dropped = new SharedArrayBuffer(n * 8);
      to = { endpoints: spec.targets, sent: new Float64Array(sent), dropped: new Float64Array(dropped) };
      try {
        thread = await RelayThread.start(
          socket,
          { labels: { relay: spec.name }, to: { targets: spec.targets, sent, dropped } },
          options.udp ?? {},
          options.logger,
        );
      } catch (error) {
        options.logger?.warn("relay thread did not start; relaying on the main thread", {
          relay: spec.name,
          error: error instanceof Error ? error.message : String(error),
        });
      }
    }
    return new Relay(spec, socket, metrics, thread ? { thread, to: to! } : null, options.logger);
  }

  private constructor(
    readonly spec: RelaySpec,
    private readonly socket: UdpSocket,
    metrics: MetricsRegistry,
    threaded: { thread: RelayThread; to: Destinations } | null,
    logger?: Logger,
  ) {
    const thread = threaded?.thread ?? null;
    this.#thread = thread;
    this.#logger = logger;
    this.#to = threaded ? threaded.to : socket.destinations(spec.targets);
    this.#stats = thread ? thread.stats : socket.stats;
    this.#metrics = metrics;
    this.#sets = [
      publishSocket(metrics, "relay", { relay: spec.name }, this.#stats),
      ...spec.targets.map((t, j) => {
        const set = metrics.set("relay_target", { relay: spec.name, target: formatHostPort(t) });
        set.counter("sent_total", "Datagrams sent to this target", () => this.#to.sent[j]);
        set.counter(
          "dropped_total",
          "Datagrams to this target the kernel refused",
          () => this.#to.dropped[j],
        );
        return set;
      }),
    ];
    this.#done = thread ? Promise.resolve() : this.#run();
  }

  async #run(): Promise<void> {
    for (;;) {
      const batch = await this.socket.receive();
      if (!batch) return;
      this.socket.send(batch, this.#to);
    }
  }

  /** Whether a thread of its own moves this relay's datagrams. */
  get threaded(): boolean {
    return this.#thread !== null;
  }

  status(): Record<string, unknown> {
    const error = this.#thread?.error;
    return {
      state: error ? "failed" : "running",
      ...(error ? { error } : {}),
      listen: formatHostPort(this.socket.local),
      udp: this.socket.impl,
      gso: this.socket.gso,
      thread: this.threaded,
      ...statsOf(this.#stats),
      targets: this.spec.targets.map((t, j) => ({
        target: formatHostPort(t),
        sent: this.#to.sent[j],
        dropped: this.#to.dropped[j],
      })),
    };
  }

  async close(): Promise<void> {
    if (this.#thread && !await this.#thread.stop() && !this.#thread.error) {
      this.#logger?.warn("relay thread did not stop when asked; terminated", { relay: this.spec.name });
    }
    await this.socket.close();
    await this.#done;
    for (const set of this.#sets) this.#metrics.remove(set);
  }
}
