/**
 * A relay: datagrams arriving on one address are sent on to a list of targets, a batch at a time, from the
 * same socket. A reload changes the list (and on the event loop the allow-list) in place, from the next batch. On the fast path the relay runs on a thread of its own (lib/relay/relay_thread.ts) that waits in
 * recvmmsg as a C relay does, with no event loop between the kernel and the next batch; on the portable path, or when
 * the thread cannot start, it runs on the main thread's event loop. Counters live in the socket (totals) and in its
 * Destinations (per target), in shared memory when a thread does the counting; the relay only publishes them.
 */
import type { Logger } from "../core/logger.ts";
import { type CounterSet, declareSeries, figuresOf, type MetricsRegistry } from "../core/metrics.ts";
import { formatHostPort, type HostPort } from "../net/address.ts";
import { SourceAllowList } from "../net/allow.ts";
import {
  type Destinations,
  sharedStats,
  statsOf,
  type UdpOptions,
  type UdpSocket,
  type UdpStats,
} from "../net/udp.ts";
import { FastUdp } from "../net/udp_fast.ts";
import { admit, DROP, DROP_CELLS } from "./admit.ts";
import type { RelayThreadReport, RelayThreadStart } from "./relay_thread.ts";
import { errorMessage } from "../core/errors.ts";
import { SharedTargets } from "./shared_targets.ts";

export interface RelaySpec {
  readonly name: string;
  readonly listen: HostPort;
  readonly targets: readonly HostPort[];
  /** Source prefixes let in (lib/net/allow.ts); empty or absent: any source. */
  readonly allow_sources?: readonly string[];
}

/** How long a relay thread has to start, and to stop once asked. */
const THREAD_START_MS = 10_000;
const THREAD_STOP_MS = 2_000;

/** A socket's tallies, as every relay and reflector socket shows them in /status and /metrics. */
export const SOCKET_SERIES = declareSeries<Readonly<UdpStats>>({
  rx_packets: { help: "Datagrams received" },
  rx_bytes: { help: "Bytes received" },
  tx_packets: { help: "Datagrams sent" },
  tx_bytes: { help: "Bytes sent" },
  truncated: { help: "Datagrams longer than max_datagram, delivered cut" },
  tx_dropped: { help: "Datagrams the kernel would not take" },
  errors: { help: "Failed socket calls" },
});

/** What a relay's path refused to send on (lib/relay/admit.ts), by reason. */
export interface DropFigures {
  readonly dropped_empty: number;
  readonly dropped_denied: number;
}

export function dropFigures(drops: Float64Array): DropFigures {
  return { dropped_empty: drops[DROP.empty], dropped_denied: drops[DROP.denied] };
}

const RELAY_SERIES = declareSeries<Readonly<UdpStats> & DropFigures>({
  ...SOCKET_SERIES,
  dropped_empty: { help: "Empty datagrams received and not sent on" },
  dropped_denied: { help: "Datagrams from a source outside allow_sources, not sent on" },
});

const TARGET_SERIES = declareSeries<{ sent: number; dropped: number }>({
  sent: { help: "Datagrams sent to this target" },
  dropped: { help: "Datagrams to this target the kernel refused" },
});

/** What a forwarding thread carries besides its receiving socket (see RelayThreadStart). */
export interface ThreadPath {
  /** Who it works for, in log lines: `{ relay: NAME }`, `{ reflector: NAME, path: "media" }`. */
  readonly labels: Record<string, string>;
  readonly to: RelayThreadStart["to"];
  /** Another socket to send from. */
  readonly out?: FastUdp;
  readonly valid?: "rtp" | "rtcp";
  /** Source prefixes let in (empty: any source). */
  readonly allow?: SourceAllowList;
}

/** How a forwarding thread is started. */
export interface RelayThreadOptions {
  /** batch, maxDatagram and gso, for the thread's own socket object. */
  readonly udp?: UdpOptions;
  readonly logger?: Logger;
  /** A stand-in for lib/relay/relay_thread.ts (tests of threads that fail to start). */
  readonly module?: URL;
  /** How long the thread has to say it runs (default THREAD_START_MS). */
  readonly startMs?: number;
}

/**
 * The thread that moves one relay's (or one reflector path's) datagrams, and the shared memory it counts into:
 * `stats` for the receiving socket (and the sending one when it is the same), `outStats` for another sending socket,
 * `drops` for datagrams it did not send on (lib/relay/admit.ts).
 *
 * Only a thread known to be in its loop is woken (`FastUdp.interrupt`: a write to the socket's eventfd, never a
 * shutdown, so a process the socket was handed to goes on reading it). That wake is for good and reaches every reader
 * of the socket in this process: the eventfd is shared by the opener and each adopter and is never drained, so each
 * of them returns null from then on, the main thread's reader of the same socket included. A thread that failed
 * before its loop needs no waking, and one that did not answer in time is terminated without it, so a path that falls
 * back to the event loop after a failed start still has a reader that was not woken. (Such a late thread, should it
 * still reach its loop, sees the stop cell before it reads and returns without taking a batch.)
 */
export class RelayThread {
  readonly stats = sharedStats();
  readonly outStats = sharedStats();
  readonly drops = new Float64Array(new SharedArrayBuffer(DROP_CELLS * 8));
  readonly #control = new Int32Array(new SharedArrayBuffer(4));
  readonly #worker: Worker;
  readonly #stopped: Promise<void>;
  /** "starting" until the thread says it runs (or fails), "running", then "ended" once its loop is over. */
  #phase: "starting" | "running" | "ended" = "starting";
  /** Resolves when the loop runs; rejects when the thread could not start it. */
  readonly started: Promise<void>;
  error: string | null = null;

  private constructor(
    readonly socket: FastUdp,
    path: ThreadPath,
    options: RelayThreadOptions,
  ) {
    const name = Object.values(path.labels).join(" ");
    this.#worker = new Worker(options.module ?? new URL("./relay_thread.ts", import.meta.url), {
      type: "module",
      name,
    });
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
      this.#phase = "ended";
      options.logger?.error("relay thread failed", { ...path.labels, error });
      failed(error);
      stopped();
    };
    this.#worker.onmessage = (event: MessageEvent<RelayThreadReport>) => {
      const r = event.data;
      if ("ready" in r) {
        if (this.#phase === "starting") this.#phase = "running";
        ready();
      } else if ("stopped" in r) {
        this.#phase = "ended";
        stopped();
      } else fail(r.error);
    };
    this.#worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      fail(event.message);
    };
    const udp = options.udp ?? {};
    const start: RelayThreadStart = {
      descriptor: socket.descriptor,
      options: { batch: udp.batch, maxDatagram: udp.maxDatagram, gso: udp.gso },
      stats: this.stats.buffer,
      control: this.#control.buffer as SharedArrayBuffer,
      to: path.to,
      ...(path.out ? { out: { descriptor: path.out.descriptor, stats: this.outStats.buffer } } : {}),
      ...(path.valid ? { valid: path.valid } : {}),
      allow: path.allow?.prefixes ?? [],
      drops: this.drops.buffer as SharedArrayBuffer,
    };
    this.#worker.postMessage(start);
  }

  /** Datagrams the `valid` check refused. */
  get malformed(): number {
    return this.drops[DROP.malformed];
  }

  /** A running thread, or a rejection saying why it could not start (nothing is left running then). */
  static async start(
    socket: FastUdp,
    path: ThreadPath,
    options: RelayThreadOptions = {},
  ): Promise<RelayThread> {
    const thread = new RelayThread(socket, path, options);
    const ms = options.startMs ?? THREAD_START_MS;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
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
   * Asks the loop to stop, wakes it when it runs, and waits for it, terminating it after THREAD_STOP_MS. True when
   * it stopped by itself (or had ended already).
   */
  async stop(): Promise<boolean> {
    Atomics.store(this.#control, 0, 1);
    if (this.#phase !== "running") {
      this.#worker.terminate();
      return this.#phase === "ended";
    }
    this.socket.interrupt();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<false>((r) => timer = setTimeout(() => r(false), THREAD_STOP_MS));
    const byItself = await Promise.race([this.#stopped.then(() => true), late]);
    clearTimeout(timer);
    this.#worker.terminate();
    return byItself;
  }
}

export interface RelayOptions extends RelayThreadOptions {
  /** Run the fast path on a thread of its own (default true). */
  readonly thread?: boolean;
}

/** Most targets of one relay (the config's limit): a thread's shared list has room for them all. */
export const MAX_TARGETS = 1000;

/** Where a relay sends, and what each target was sent, kept by target across changes of the list. */
interface TargetList {
  /** The targets from now on (unique "IP:PORT" keys); what kept targets were sent carries over. */
  set(targets: readonly HostPort[]): void;
  counts(key: string): { sent: number; dropped: number } | undefined;
}

/** A relay on the event loop: Destinations rebuilt on each change, what kept targets were sent carried over. */
class LocalTargets implements TargetList {
  dest: Destinations;
  #index = new Map<string, number>();
  #carried = new Map<string, { sent: number; dropped: number }>();

  constructor(readonly socket: UdpSocket, targets: readonly HostPort[]) {
    this.dest = socket.destinations([]);
    this.set(targets);
  }

  set(targets: readonly HostPort[]): void {
    const carried = new Map<string, { sent: number; dropped: number }>();
    for (const t of targets) {
      const key = formatHostPort(t);
      const c = this.counts(key);
      if (c) carried.set(key, c);
    }
    this.#carried = carried;
    this.dest = this.socket.destinations(targets);
    this.#index = new Map(targets.map((t, j) => [formatHostPort(t), j]));
  }

  counts(key: string): { sent: number; dropped: number } | undefined {
    const j = this.#index.get(key);
    if (j === undefined) return undefined;
    const c = this.#carried.get(key);
    return { sent: (c?.sent ?? 0) + this.dest.sent[j], dropped: (c?.dropped ?? 0) + this.dest.dropped[j] };
  }
}

/**
 * A relay on a thread: the target list is in shared memory (lib/relay/shared_targets.ts), which the thread reads
 * again before each batch it sends, so a new list applies from the next batch with nothing stopped.
 */
class ThreadTargets implements TargetList {
  readonly shared = new SharedTargets(MAX_TARGETS);

  constructor(targets: readonly HostPort[]) {
    this.set(targets);
  }

  set(targets: readonly HostPort[]): void {
    this.shared.set(new Map(targets.map((t) => [formatHostPort(t), t])));
  }

  counts(key: string): { sent: number; dropped: number } | undefined {
    return this.shared.counts(key);
  }
}

export class Relay {
  readonly #targets: TargetList;
  readonly #stats: Readonly<UdpStats>;
  readonly #drops: Float64Array;
  /** Read at every batch on the event loop, so a reload's new allow-list applies from the next one. */
  readonly #rules: { allow: SourceAllowList };
  readonly #thread: RelayThread | null;
  readonly #done: Promise<void>;
  readonly #metrics: MetricsRegistry;
  readonly #logger?: Logger;
  readonly #set;
  /** One counter set per target, by "IP:PORT". */
  readonly #targetSets = new Map<string, CounterSet>();
  #spec: RelaySpec;
  #failed: string | null = null;

  /** Starts relaying `socket` (on a thread of its own where it can); resolves once datagrams move. */
  static async start(
    spec: RelaySpec,
    socket: UdpSocket,
    metrics: MetricsRegistry,
    options: RelayOptions = {},
  ): Promise<Relay> {
    const allow = SourceAllowList.parse(spec.allow_sources ?? []);
    let thread: RelayThread | null = null;
    let targets: ThreadTargets | null = null;
    if (socket instanceof FastUdp && options.thread !== false) {
      targets = new ThreadTargets(spec.targets);
      try {
        thread = await RelayThread.start(
          socket,
          { labels: { relay: spec.name }, to: { shared: targets.shared.memory }, allow },
          options,
        );
      } catch (error) {
        options.logger?.warn("relay thread did not start; relaying on the main thread", {
          relay: spec.name,
          error: errorMessage(error),
        });
      }
    }
    return new Relay(
      spec,
      socket,
      metrics,
      { allow, threaded: thread ? { thread, targets: targets! } : null },
      options.logger,
    );
  }

  private constructor(
    spec: RelaySpec,
    private readonly socket: UdpSocket,
    metrics: MetricsRegistry,
    how: { allow: SourceAllowList; threaded: { thread: RelayThread; targets: ThreadTargets } | null },
    logger?: Logger,
  ) {
    this.#spec = spec;
    const thread = how.threaded?.thread ?? null;
    this.#thread = thread;
    this.#rules = { allow: how.allow };
    this.#logger = logger;
    this.#targets = how.threaded ? how.threaded.targets : new LocalTargets(socket, spec.targets);
    this.#stats = thread ? thread.stats : socket.stats;
    this.#drops = thread ? thread.drops : new Float64Array(DROP_CELLS);
    this.#metrics = metrics;
    this.#set = metrics.publish("relay", { relay: spec.name }, RELAY_SERIES, () => this.#figures());
    this.#publishTargets();
    // A receive that fails (the socket failed) ends the loop with a log line, never with an unhandled rejection.
    this.#done = thread ? Promise.resolve() : this.#run().catch((error) => {
      this.#failed = errorMessage(error);
      logger?.error("relay loop ended", { relay: spec.name, error: this.#failed });
    });
  }

  get spec(): RelaySpec {
    return this.#spec;
  }

  /** Publishes a set for each target that has none, and removes those of targets gone. */
  #publishTargets(): void {
    const keys = new Set(this.#spec.targets.map(formatHostPort));
    for (const [key, set] of this.#targetSets) {
      if (keys.has(key)) continue;
      this.#metrics.remove(set);
      this.#targetSets.delete(key);
    }
    for (const key of keys) {
      if (this.#targetSets.has(key)) continue;
      this.#targetSets.set(
        key,
        this.#metrics.publish(
          "relay_target",
          { relay: this.#spec.name, target: key },
          TARGET_SERIES,
          () => this.#target(key),
        ),
      );
    }
  }

  #figures(): Readonly<UdpStats> & DropFigures {
    return { ...statsOf(this.#stats), ...dropFigures(this.#drops) };
  }

  #target(key: string): { sent: number; dropped: number } {
    return this.#targets.counts(key) ?? { sent: 0, dropped: 0 };
  }

  async #run(): Promise<void> {
    const local = this.#targets as LocalTargets;
    for (;;) {
      const batch = await this.socket.receive();
      if (!batch) return;
      this.socket.send(admit(batch, this.#rules, this.#drops), local.dest);
    }
  }

  /** Whether a thread of its own moves this relay's datagrams. */
  get threaded(): boolean {
    return this.#thread !== null;
  }

  /**
   * Why `spec` cannot be applied to this relay in place (a new relay must replace it), or null when it can: the
   * listen address is the socket's, and a thread's allow-list is fixed when it starts (lib/relay/relay_thread.ts).
   */
  replaceReason(spec: RelaySpec): string | null {
    if (formatHostPort(spec.listen) !== formatHostPort(this.#spec.listen)) return "listen address changed";
    const allow = (s: RelaySpec) => (s.allow_sources ?? []).join(",");
    if (this.threaded && allow(spec) !== allow(this.#spec)) {
      return "allow_sources changed, and a relay thread's allow-list is fixed while it runs";
    }
    return null;
  }

  /**
   * Applies a new spec in place (`replaceReason` must be null): the targets from the next batch on, with what
   * kept targets were sent carried over, and on the event loop the allow-list too. The socket is untouched.
   */
  update(spec: RelaySpec): void {
    const reason = this.replaceReason(spec);
    if (reason) throw new Error(`Relay "${spec.name}" cannot change in place: ${reason}`);
    this.#targets.set(spec.targets);
    this.#rules.allow = SourceAllowList.parse(spec.allow_sources ?? []);
    this.#spec = spec;
    this.#publishTargets();
  }

  status(): Record<string, unknown> {
    const error = this.#thread?.error ?? this.#failed;
    return {
      state: error ? "failed" : "running",
      ...(error ? { error } : {}),
      listen: formatHostPort(this.socket.local),
      udp: this.socket.impl,
      gso: this.socket.gso,
      thread: this.threaded,
      allow_sources: this.#rules.allow.allowsAll ? "any" : this.#rules.allow.prefixes,
      ...this.#set.values(),
      targets: this.#spec.targets.map((t) => ({
        target: formatHostPort(t),
        ...figuresOf(TARGET_SERIES, this.#target(formatHostPort(t))),
      })),
    };
  }

  /** The address the socket is bound to. */
  get local(): HostPort {
    return this.socket.local;
  }

  async close(): Promise<void> {
    if (this.#thread && !await this.#thread.stop() && !this.#thread.error) {
      this.#logger?.warn("relay thread did not stop when asked; terminated", { relay: this.#spec.name });
    }
    await this.socket.close();
    await this.#done;
    for (const set of [this.#set, ...this.#targetSets.values()]) this.#metrics.remove(set);
  }
}
