/**
 * The reflector (CESNET's "user-empowered virtual multicast"): a stream arriving on the data port is sent to every
 * participant, from the registration port, so that a participant behind NAT receives it on the flow it opened when
 * it joined. With use_rtp the ports go in pairs: RTP on the data and registration ports, RTCP on each port + 1,
 * sent to each participant's port + 1.
 *
 * Who the participants are is decided by the participant table and its join protocol (participants.ts). Normally
 * the table is here. A reflector AP in a VM group is split (lib/graph/elements/reflector.ts): the main isolate
 * keeps its sockets and sends the stream, on the fast path, and the group's worker keeps the table. Then the
 * reflector hands control datagrams to `RemoteMembership.control` and is told the outcome: `reply` sends the
 * table's answers, `mirror` gives the participant list, the table's counters and the participants' details.
 */
import type { Clock, TimerId } from "../core/clock.ts";
import type { Logger } from "../core/logger.ts";
import type { CounterSet, Labels, MetricsRegistry } from "../core/metrics.ts";
import { isRtcp, isRtp } from "../media/rtp.ts";
import { formatHostPort, type HostPort, isIPv4, isIPv6 } from "../net/address.ts";
import {
  type Batch,
  type Destinations,
  type Endpoint,
  statsOf,
  sumStats,
  type UdpOptions,
  type UdpSocket,
  type UdpStats,
  wellFormed,
} from "../net/udp.ts";
import { FastUdp } from "../net/udp_fast.ts";
import {
  addressClass,
  type DenyClass,
  type Origin,
  type Participant,
  ParticipantTable,
  type TableStats,
} from "./participants.ts";
import { publishSocket, RelayThread } from "./relay.ts";
import { SharedTargets } from "./shared_targets.ts";

export interface ReflectorSpec {
  readonly name: string;
  readonly registration: HostPort;
  readonly use_rtp: boolean;
  readonly timeout: number;
  readonly max_participants: number;
  readonly max_per_address: number;
  readonly allow: readonly DenyClass[];
  readonly participants: readonly HostPort[];
}

/**
 * The sockets of one reflector: RTP (or plain) pair, and with use_rtp the RTCP pair on port + 1. Without data
 * sockets the stream comes from `reflect()` (the reflector active program of a session graph).
 */
export interface ReflectorSockets {
  readonly data?: UdpSocket;
  readonly registration: UdpSocket;
  readonly dataRtcp?: UdpSocket;
  readonly registrationRtcp?: UdpSocket;
}

type PathName = "media" | "rtcp";

/**
 * Where one path's datagrams go: every participant (at port + the path's offset), with what was sent to each. On
 * the main thread (`LocalFanout`) or from a thread of its own (`ThreadFanout`).
 */
interface Fanout {
  /** The participants from now on, by key ("IP:PORT" as joined) and the address to send to. */
  update(participants: ReadonlyMap<string, Endpoint>): void;
  /** What participant `key` was sent during its current stay on this path. */
  counts(key: string): { sent: number; dropped: number } | undefined;
  /** Datagrams that were not RTP (RTCP) on a use_rtp path. */
  readonly malformed: number;
}

/** A path on the main thread: Destinations rebuilt on each change, what staying participants were sent carried over. */
class LocalFanout implements Fanout {
  malformed = 0;
  #dest: Destinations;
  #index = new Map<string, number>();
  #carried = new Map<string, { sent: number; dropped: number }>();

  constructor(readonly out: UdpSocket, readonly valid?: (d: Uint8Array) => boolean) {
    this.#dest = out.destinations([]);
  }

  update(participants: ReadonlyMap<string, Endpoint>): void {
    const carried = new Map<string, { sent: number; dropped: number }>();
    for (const key of participants.keys()) {
      const c = this.counts(key);
      if (c) carried.set(key, c);
    }
    this.#carried = carried;
    this.#dest = this.out.destinations([...participants.values()]);
    this.#index = new Map([...participants.keys()].map((key, j) => [key, j]));
  }

  counts(key: string): { sent: number; dropped: number } | undefined {
    const j = this.#index.get(key);
    if (j === undefined) return undefined;
    const c = this.#carried.get(key);
    return { sent: (c?.sent ?? 0) + this.#dest.sent[j], dropped: (c?.dropped ?? 0) + this.#dest.dropped[j] };
  }

  send(batch: Batch): void {
    const packets = this.valid ? wellFormed(batch, this.valid, (n) => this.malformed += n) : batch;
    this.out.send(packets, this.#dest);
  }
}

/** A path moved by a thread of its own (lib/relay/relay_thread.ts), reading the participants from shared memory. */
class ThreadFanout implements Fanout {
  constructor(readonly thread: RelayThread, readonly targets: SharedTargets) {}

  update(participants: ReadonlyMap<string, Endpoint>): void {
    this.targets.set(participants);
  }

  counts(key: string): { sent: number; dropped: number } | undefined {
    return this.targets.counts(key);
  }

  get malformed(): number {
    return this.thread.malformed;
  }
}

interface Path {
  readonly name: PathName;
  readonly from?: UdpSocket;
  readonly out: UdpSocket;
  /** Added to each participant's port (RTCP goes to port + 1). */
  readonly portOffset: number;
  readonly fanout: LocalFanout | ThreadFanout;
}

export interface ReflectorOptions {
  /** Move each path that has a data socket on the fast path on a thread of its own (default true). */
  readonly thread?: boolean;
  /** batch, maxDatagram and gso, for the threads' own socket objects. */
  readonly udp?: UdpOptions;
}

interface Deps {
  clock: Clock;
  metrics: MetricsRegistry;
  logger: Logger;
  /** Added to the labels of every metric set (a VM group's reflector: its session and group, as before). */
  labels?: Labels;
}

/** Where control datagrams go when the participant table is kept elsewhere (a VM group's worker). */
export interface RemoteMembership {
  /** Control datagrams from the registration socket (`rtcp`: its RTCP one); the answers come by `reply`. */
  control(batch: Batch, rtcp: boolean): void;
}

/** The table's figures, as the reflector shows them (participant RTCP reports are counted with them). */
export type MembershipStats = TableStats & { participant_rtcp: number };

/** What the remote table reports: who receives, its counters, and for /status when each joined and was last seen. */
export interface MembershipReport {
  readonly stats: MembershipStats;
  readonly participants: readonly Participant[];
}

const STAT_NAMES = [
  "joins",
  "challenges",
  "confirms",
  "leaves",
  "expired",
  "refused_limit",
  "refused_denied",
  "bad_nonce",
  "malformed",
  "participant_rtcp",
] as const;

export function emptyMembershipStats(): MembershipStats {
  return Object.fromEntries(STAT_NAMES.map((k) => [k, 0])) as unknown as MembershipStats;
}

/**
 * A report from a worker, checked as data from code the node does not trust: numbers only, IP endpoints only, no
 * address the deny list refuses (unless allowed), at most `max` participants. Null when it is not a report at all.
 */
export function checkMembershipReport(
  value: unknown,
  limits: { max: number; allow: readonly DenyClass[] },
): MembershipReport | null {
  if (typeof value !== "object" || value === null) return null;
  const v = value as { stats?: unknown; participants?: unknown };
  if (typeof v.stats !== "object" || v.stats === null || !Array.isArray(v.participants)) return null;
  const stats = emptyMembershipStats();
  for (const k of STAT_NAMES) {
    const n = (v.stats as Record<string, unknown>)[k];
    if (typeof n === "number" && Number.isFinite(n)) stats[k] = n;
  }
  const participants: Participant[] = [];
  const seen = new Set<string>();
  for (const p of v.participants.slice(0, limits.max) as unknown[]) {
    const e = (p as { endpoint?: { host?: unknown; port?: unknown } } | null)?.endpoint;
    const { origin, joinedAt, lastSeen } = (p ?? {}) as Record<string, unknown>;
    if (!e || typeof e.host !== "string" || !(isIPv4(e.host) || isIPv6(e.host))) continue;
    if (typeof e.port !== "number" || !Number.isInteger(e.port) || e.port < 1 || e.port > 65534) continue;
    const cls = addressClass(e.host);
    if (cls && !limits.allow.includes(cls)) continue;
    const endpoint = { host: e.host, port: e.port };
    const key = formatHostPort(endpoint);
    if (seen.has(key)) continue;
    seen.add(key);
    participants.push({
      endpoint,
      origin: origin === "config" || origin === "api" ? origin : "join",
      joinedAt: typeof joinedAt === "number" ? joinedAt : 0,
      lastSeen: typeof lastSeen === "number" ? lastSeen : 0,
    });
  }
  return { stats, participants };
}

export class Reflector {
  /** The table, when it is kept here (not for a VM group's reflector: see `mirror`). */
  readonly table: ParticipantTable;
  readonly #remote: RemoteMembership | null;
  /** The remote table's last report, and a version bumped when its participant list changes. */
  #report: MembershipReport = { stats: emptyMembershipStats(), participants: [] };
  #reportVersion = 0;
  readonly #paths: Path[];
  readonly #sets: CounterSet[] = [];
  readonly #loops: Promise<void>[] = [];
  readonly #clock: Clock;
  #timer: TimerId | undefined;
  #closed = false;
  #participantRtcp = 0;
  /** The metrics of each participant in the table, by key. */
  readonly #participantSets = new Map<string, CounterSet>();
  #tableVersion = -1;

  /**
   * Starts a reflector whose data paths run on threads of their own where they can (fast sockets, `thread` not
   * false); a path whose thread does not start runs on the event loop, with a warning.
   */
  static async start(
    spec: ReflectorSpec,
    sockets: ReflectorSockets,
    deps: Deps,
    options: ReflectorOptions = {},
  ): Promise<Reflector> {
    const threads = new Map<PathName, ThreadFanout>();
    const pairs: [PathName, UdpSocket | undefined, UdpSocket | undefined][] = [
      ["media", sockets.data, sockets.registration],
      ["rtcp", sockets.dataRtcp, sockets.registrationRtcp],
    ];
    for (const [name, from, out] of pairs) {
      if (options.thread === false || !(from instanceof FastUdp) || !(out instanceof FastUdp)) continue;
      const targets = new SharedTargets(spec.max_participants);
      try {
        const valid = spec.use_rtp ? (name === "media" ? "rtp" : "rtcp") : undefined;
        const thread = await RelayThread.start(
          from,
          { labels: { reflector: spec.name, path: name }, to: { shared: targets.memory }, out, valid },
          options.udp ?? {},
          deps.logger,
        );
        threads.set(name, new ThreadFanout(thread, targets));
      } catch (error) {
        deps.logger.warn("reflector thread did not start; reflecting on the main thread", {
          reflector: spec.name,
          path: name,
          error: error instanceof Error ? error.message : String(error),
        });
      }
    }
    return new Reflector(spec, sockets, deps, threads);
  }

  /**
   * A reflector on the event loop (`Reflector.start` puts its data paths on threads); with `remote`, its table is
   * kept elsewhere (see the module doc).
   */
  constructor(
    readonly spec: ReflectorSpec,
    readonly sockets: ReflectorSockets,
    private readonly deps: Deps,
    threads: ReadonlyMap<PathName, ThreadFanout> = new Map(),
    remote: RemoteMembership | null = null,
  ) {
    this.#clock = deps.clock;
    this.#remote = remote;
    this.table = new ParticipantTable({
      clock: deps.clock,
      timeoutMs: spec.timeout,
      maxParticipants: spec.max_participants,
      maxPerAddress: spec.max_per_address,
      allow: spec.allow,
    });
    for (const p of spec.participants) {
      const why = this.table.add(p, "config");
      if (why) {
        deps.logger.warn("static participant refused", {
          reflector: spec.name,
          participant: formatHostPort(p),
          why,
        });
      }
    }
    this.#paths = [{
      name: "media",
      from: sockets.data,
      out: sockets.registration,
      portOffset: 0,
      fanout: threads.get("media") ?? new LocalFanout(sockets.registration, spec.use_rtp ? isRtp : undefined),
    }];
    if (sockets.registrationRtcp) {
      this.#paths.push({
        name: "rtcp",
        from: sockets.dataRtcp,
        out: sockets.registrationRtcp,
        portOffset: 1,
        fanout: threads.get("rtcp") ?? new LocalFanout(sockets.registrationRtcp, isRtcp),
      });
    }
    this.#publish();
    this.#syncParticipants();
    for (const path of this.#paths) {
      const fanout = path.fanout;
      if (path.from && fanout instanceof LocalFanout) this.#loops.push(this.#forward(path.from, fanout));
    }
    this.#loops.push(this.#control(sockets.registration, false));
    if (sockets.registrationRtcp) this.#loops.push(this.#control(sockets.registrationRtcp, true));
    if (!remote) this.#scheduleExpiry();
  }

  /** The remote table's report (checked by the caller): the participants to send to from now on, and figures. */
  mirror(report: MembershipReport): void {
    const before = this.#report.participants.map((p) => formatHostPort(p.endpoint)).join(",");
    const after = report.participants.map((p) => formatHostPort(p.endpoint)).join(",");
    this.#report = report;
    if (before !== after) this.#reportVersion++;
    this.#syncParticipants();
  }

  /** Sends the remote table's answer to a control datagram, from the registration socket it came in on. */
  reply(data: Uint8Array, to: Endpoint, rtcp: boolean): void {
    const socket = rtcp ? this.sockets.registrationRtcp : this.sockets.registration;
    if (socket && !this.#closed) socket.send([data], socket.destinations([to]));
  }

  /** Who receives, what the table counted, and since when: here or as the remote table last reported. */
  #view(): { version: number; participants: readonly Participant[]; stats: MembershipStats } {
    if (this.#remote) {
      return {
        version: this.#reportVersion,
        participants: this.#report.participants,
        stats: this.#report.stats,
      };
    }
    return {
      version: this.table.version,
      participants: this.table.list(),
      stats: { ...this.table.stats, participant_rtcp: this.#participantRtcp },
    };
  }

  /** Data port -> every participant, from the registration socket, on the event loop. */
  async #forward(from: UdpSocket, fanout: LocalFanout): Promise<void> {
    for (;;) {
      const batch = await from.receive();
      if (!batch) return;
      fanout.send(batch);
    }
  }

  /** Sends a batch that arrived some other way (from a session graph) to every participant. */
  reflect(batch: Batch, rtcp: boolean): void {
    const fanout = this.#paths[rtcp ? 1 : 0]?.fanout;
    if (fanout instanceof LocalFanout && !this.#closed) fanout.send(batch);
  }

  /** Whether a thread of its own moves each path's datagrams, by path ("media", and "rtcp" with use_rtp). */
  get threads(): Record<string, boolean> {
    return Object.fromEntries(this.#paths.map((p) => [p.name, p.fanout instanceof ThreadFanout]));
  }

  /** Datagrams sent to (and refused for) one participant during its stay, on every path. */
  #counts(key: string): { sent: number; dropped: number } {
    let sent = 0;
    let dropped = 0;
    for (const path of this.#paths) {
      const c = path.fanout.counts(key);
      sent += c?.sent ?? 0;
      dropped += c?.dropped ?? 0;
    }
    return { sent, dropped };
  }

  /**
   * After the table changed: every path sends to the new participant list, and each participant in the table has
   * its metrics (created on join, removed on leave).
   */
  #syncParticipants(): void {
    const view = this.#view();
    if (this.#tableVersion === view.version) return;
    this.#tableVersion = view.version;
    const endpoints = view.participants.map((p) => p.endpoint);
    for (const path of this.#paths) {
      path.fanout.update(
        new Map(endpoints.map((e) => [formatHostPort(e), { host: e.host, port: e.port + path.portOffset }])),
      );
    }
    const current = new Set(endpoints.map(formatHostPort));
    for (const [key, set] of this.#participantSets) {
      if (current.has(key)) continue;
      this.deps.metrics.remove(set);
      this.#participantSets.delete(key);
    }
    for (const key of current) {
      if (this.#participantSets.has(key)) continue;
      const set = this.deps.metrics.set("reflector_participant", {
        reflector: this.spec.name,
        participant: key,
        ...this.deps.labels,
      });
      set.counter("sent_total", "Datagrams sent to this participant", () => this.#counts(key).sent);
      set.counter(
        "dropped_total",
        "Datagrams to this participant the kernel refused",
        () => this.#counts(key).dropped,
      );
      this.#participantSets.set(key, set);
    }
  }

  /** Each socket's counters: a thread's shared ones added to what this thread counted itself. */
  #socketStats(): [string, Readonly<UdpStats>][] {
    const threadOf = (name: PathName) => {
      const f = this.#paths.find((p) => p.name === name)?.fanout;
      return f instanceof ThreadFanout ? f.thread : null;
    };
    const media = threadOf("media");
    const rtcp = threadOf("rtcp");
    const s = this.sockets;
    const out: [string, Readonly<UdpStats>][] = [];
    if (s.data) out.push(["data", media ? media.stats : s.data.stats]);
    out.push(["registration", media ? sumStats(s.registration.stats, media.outStats) : s.registration.stats]);
    if (s.dataRtcp) out.push(["dataRtcp", rtcp ? rtcp.stats : s.dataRtcp.stats]);
    if (s.registrationRtcp) {
      out.push([
        "registrationRtcp",
        rtcp ? sumStats(s.registrationRtcp.stats, rtcp.outStats) : s.registrationRtcp.stats,
      ]);
    }
    return out;
  }

  /**
   * Registration port: joins, confirms, keepalives, leaves. On the RTCP registration port, participants' own RTCP
   * (receiver reports, sent from their port + 1 as RTP receivers do) is expected: counted apart and dropped.
   * Anything else is counted as malformed by the table.
   */
  async #control(socket: UdpSocket, rtcp: boolean): Promise<void> {
    for (;;) {
      const batch = await socket.receive();
      if (!batch) return;
      if (this.#remote) {
        if (!this.#closed) this.#remote.control(batch, rtcp);
        continue;
      }
      for (let i = 0; i < batch.count; i++) {
        const data = batch.data(i);
        if (rtcp && isRtcp(data)) {
          this.#participantRtcp++;
          continue;
        }
        const from = batch.from(i);
        const reply = this.table.onControl(data, from);
        if (reply) socket.send([reply], socket.destinations([from]));
        this.#syncParticipants();
      }
    }
  }

  #scheduleExpiry(): void {
    if (this.#closed) return;
    const every = Math.max(100, Math.min(1000, this.spec.timeout / 4));
    this.#timer = this.#clock.setTimeout(() => {
      const dropped = this.table.expire();
      this.#syncParticipants();
      if (dropped) this.deps.logger.info("participants timed out", { reflector: this.spec.name, dropped });
      this.#scheduleExpiry();
    }, every);
  }

  add(ep: Endpoint, origin: Exclude<Origin, "join">) {
    const refused = this.table.add(ep, origin);
    this.#syncParticipants();
    return refused;
  }

  remove(ep: Endpoint): boolean {
    const removed = this.table.remove(ep);
    this.#syncParticipants();
    return removed;
  }

  #publish(): void {
    const { metrics } = this.deps;
    const labels = { reflector: this.spec.name, ...this.deps.labels };
    const set = metrics.set("reflector", labels);
    const t = () => this.#view().stats;
    set.gauge("participants", "Participants receiving the stream", () => this.#view().participants.length);
    set.counter("joins_total", "JOIN requests answered or refused", () => t().joins);
    set.counter("confirms_total", "Nonces echoed correctly (joins and keepalives)", () => t().confirms);
    set.counter("leaves_total", "Participants that left", () => t().leaves);
    set.counter("expired_total", "Participants dropped after the timeout", () => t().expired);
    set.counter("refused_limit_total", "Joins refused by a participant limit", () => t().refused_limit);
    set.counter("refused_denied_total", "Joins refused by the deny list", () => t().refused_denied);
    set.counter("bad_nonce_total", "Confirms with a wrong or stale nonce", () => t().bad_nonce);
    set.counter(
      "malformed_control_total",
      "Datagrams on the registration port that are no message",
      () => t().malformed,
    );
    set.counter(
      "participant_rtcp_total",
      "RTCP reports from participants (counted, not forwarded)",
      () => t().participant_rtcp,
    );
    set.counter(
      "malformed_data_total",
      "Datagrams on the data ports that are not RTP/RTCP (use_rtp only)",
      () => this.#malformedData(),
    );
    this.#sets.push(set);
    for (const [port, stats] of this.#socketStats()) {
      this.#sets.push(
        publishSocket(
          metrics,
          "reflector_socket",
          { reflector: this.spec.name, port, ...this.deps.labels },
          stats,
        ),
      );
    }
  }

  #malformedData(): number {
    return this.#paths.reduce((n, p) => n + p.fanout.malformed, 0);
  }

  status(): Record<string, unknown> {
    const now = this.#clock.now();
    this.#syncParticipants();
    const { stats, participants } = this.#view();
    const { participant_rtcp, ...table } = stats;
    return {
      data: this.sockets.data ? formatHostPort(this.sockets.data.local) : "graph",
      registration: formatHostPort(this.sockets.registration.local),
      use_rtp: this.spec.use_rtp,
      udp: this.sockets.registration.impl,
      gso: this.sockets.registration.gso,
      threads: this.threads,
      ...this.#threadErrors(),
      ...table,
      malformed_data: this.#malformedData(),
      participant_rtcp,
      sockets: Object.fromEntries(this.#socketStats().map(([k, stats]) => [k, statsOf(stats)])),
      participants: participants.map((p) => ({
        address: formatHostPort(p.endpoint),
        origin: p.origin,
        ...this.#counts(formatHostPort(p.endpoint)),
        joined_seconds_ago: Math.round((now - p.joinedAt) / 1000),
        idle_seconds: Math.round((now - p.lastSeen) / 1000),
      })),
    };
  }

  /** `state: failed` and the error when a path's thread failed after it started (it moves nothing more then). */
  #threadErrors(): Record<string, string> {
    const errors = this.#paths.flatMap((p) =>
      p.fanout instanceof ThreadFanout && p.fanout.thread.error ? [`${p.name}: ${p.fanout.thread.error}`] : []
    );
    return {
      state: errors.length ? "failed" : "running",
      ...(errors.length ? { error: errors.join("; ") } : {}),
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    // Its figures go at once: a VM group's reflector is closed when its group fails, and shows nothing after.
    for (const set of this.#sets) this.deps.metrics.remove(set);
    for (const set of this.#participantSets.values()) this.deps.metrics.remove(set);
    this.#participantSets.clear();
    for (const path of this.#paths) {
      const fanout = path.fanout;
      if (fanout instanceof ThreadFanout && !await fanout.thread.stop() && !fanout.thread.error) {
        this.deps.logger.warn("reflector thread did not stop when asked; terminated", {
          reflector: this.spec.name,
          path: path.name,
        });
      }
    }
    for (const s of Object.values(this.sockets)) await s?.close();
    await Promise.all(this.#loops);
  }
}
