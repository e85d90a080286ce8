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
import {
  type CounterSet,
  declareSeries,
  figuresOf,
  type Labels,
  type MetricsRegistry,
} from "../core/metrics.ts";
import { isRtcp, isRtp } from "../media/rtp.ts";
import { formatHostPort, type HostPort, isIPv4, isIPv6 } from "../net/address.ts";
import { SourceAllowList } from "../net/allow.ts";
import {
  type Batch,
  type Destinations,
  type Endpoint,
  sumStats,
  type UdpSocket,
  type UdpStats,
} from "../net/udp.ts";
import { FastUdp } from "../net/udp_fast.ts";
import {
  addressClass,
  type DenyClass,
  type Origin,
  type Participant,
  ParticipantTable,
  type Refusal,
  type TableHandOver,
  type TableStats,
} from "./participants.ts";
import { admit, DROP, DROP_CELLS } from "./admit.ts";
import {
  type DropFigures,
  dropFigures,
  RelayThread,
  type RelayThreadOptions,
  SOCKET_SERIES,
} from "./relay.ts";
import { SharedTargets } from "./shared_targets.ts";
import { errorMessage } from "../core/errors.ts";

export interface ReflectorSpec {
  readonly name: string;
  /** The data address (a reload compares it); absent for a session graph's reflector, which has no data port. */
  readonly data?: HostPort;
  readonly registration: HostPort;
  readonly use_rtp: boolean;
  readonly timeout: number;
  readonly max_participants: number;
  readonly max_per_address: number;
  readonly allow: readonly DenyClass[];
  readonly participants: readonly HostPort[];
  /** Source prefixes let in on the data ports (lib/net/allow.ts); empty or absent: any source. */
  readonly allow_sources?: readonly string[];
  /** Nonce-checked messages taken from one address (/64) per second (participants.ts CONFIRM_RATE by default). */
  readonly confirm_rate?: number;
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
  /** What the path did not send on, by reason (lib/relay/admit.ts DROP). */
  readonly drops: Float64Array;
}

/** A path on the main thread: Destinations rebuilt on each change, what staying participants were sent carried over. */
class LocalFanout implements Fanout {
  readonly drops = new Float64Array(DROP_CELLS);
  #dest: Destinations;
  #index = new Map<string, number>();
  #carried = new Map<string, { sent: number; dropped: number }>();

  constructor(
    readonly out: UdpSocket,
    /** Read at every batch: a reload's new allow-list applies from the next one. */
    readonly rules: { allow: SourceAllowList; valid?: (d: Uint8Array) => boolean },
  ) {
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

  /** Sends what `admit` lets through. */
  send(batch: Batch): void {
    this.out.send(admit(batch, this.rules, this.drops), this.#dest);
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

  get drops(): Float64Array {
    return this.thread.drops;
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

export interface ReflectorOptions extends Omit<RelayThreadOptions, "logger"> {
  /** Move each path that has a data socket on the fast path on a thread of its own (default true). */
  readonly thread?: boolean;
  /** The table of a reflector this one replaces on the same registration address (see ParticipantTable.handOver). */
  readonly takeOver?: TableHandOver;
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
  "rate_limited",
  "participant_rtcp",
] as const;

/** A reflector's figures: its table's (or the remote table's), and what its data paths did not send on. */
type ReflectorFigures = MembershipStats & DropFigures & {
  participants: number;
  malformed_data: number;
  control_errors: number;
};

/**
 * A reflector's series, declared once for /status and /metrics. Per-participant figures are in /status only: a
 * label per participant would grow /metrics with every join (and be set by outsiders).
 */
const REFLECTOR_SERIES = declareSeries<ReflectorFigures>({
  participants: { help: "Participants receiving the stream", kind: "gauge" },
  joins: { help: "JOIN requests answered or refused" },
  challenges: { help: "Challenges sent in answer to a JOIN" },
  confirms: { help: "Nonces echoed correctly (joins and keepalives)" },
  leaves: { help: "Participants that left" },
  expired: { help: "Participants dropped after the timeout" },
  refused_limit: { help: "Joins refused by a participant limit" },
  refused_denied: { help: "Joins refused by the deny list" },
  bad_nonce: { help: "Confirms with a wrong or stale nonce" },
  malformed_control: {
    help: "Datagrams on the registration port that are no message",
    read: (f) => f.malformed,
  },
  rate_limited: { help: "CONFIRM and LEAVE messages over the per-address rate, dropped unchecked" },
  participant_rtcp: { help: "RTCP reports from participants (counted, not forwarded)" },
  malformed_data: { help: "Datagrams on the data ports that are not RTP/RTCP (use_rtp only)" },
  dropped_empty: { help: "Empty datagrams on the data ports, not sent on" },
  dropped_denied: { help: "Datagrams on the data ports from a source outside allow_sources, not sent on" },
  control_errors: { help: "Control datagrams whose handling failed (logged; the reflector goes on)" },
});

export function emptyMembershipStats(): MembershipStats {
  return Object.fromEntries(STAT_NAMES.map((k) => [k, 0])) as unknown as MembershipStats;
}

/**
 * A report from a worker, checked as data from code the node does not trust: numbers only, IP endpoints only, no
 * address the deny list refuses (unless allowed), at most `max` participants. Null when it is not a report at all.
 */
export function checkMembershipReport(
  value: unknown,
  limits: { max: number; allow: readonly DenyClass[]; ipv4Only?: boolean },
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
    if (!e || typeof e.host !== "string" || !(isIPv4(e.host) || (!limits.ipv4Only && isIPv6(e.host)))) {
      continue;
    }
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
  #allow: SourceAllowList;
  #spec: ReflectorSpec;
  /** Whether the sockets are IPv4 ones, which cannot send to an IPv6 participant. */
  readonly #ipv4Only: boolean;
  #timer: TimerId | undefined;
  #closed = false;
  #participantRtcp = 0;
  #controlErrors = 0;
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
    const allow = SourceAllowList.parse(spec.allow_sources ?? []);
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
          { labels: { reflector: spec.name, path: name }, to: { shared: targets.memory }, out, valid, allow },
          { ...options, logger: deps.logger },
        );
        threads.set(name, new ThreadFanout(thread, targets));
      } catch (error) {
        deps.logger.warn("reflector thread did not start; reflecting on the main thread", {
          reflector: spec.name,
          path: name,
          error: errorMessage(error),
        });
      }
    }
    return new Reflector(spec, sockets, deps, threads, null, options.takeOver);
  }

  /**
   * A reflector on the event loop (`Reflector.start` puts its data paths on threads); with `remote`, its table is
   * kept elsewhere (see the module doc).
   */
  constructor(
    spec: ReflectorSpec,
    readonly sockets: ReflectorSockets,
    private readonly deps: Deps,
    threads: ReadonlyMap<PathName, ThreadFanout> = new Map(),
    remote: RemoteMembership | null = null,
    takeOver?: TableHandOver,
  ) {
    this.#spec = spec;
    this.#clock = deps.clock;
    this.#remote = remote;
    this.#allow = SourceAllowList.parse(spec.allow_sources ?? []);
    this.#ipv4Only = isIPv4(sockets.registration.local.host);
    this.table = new ParticipantTable({
      clock: deps.clock,
      ...this.#tableRules(spec),
      ...(takeOver ? { secret: takeOver.secret } : {}),
    });
    for (const p of spec.participants) this.#addStatic(p);
    if (takeOver) {
      const refused = this.table.takeOver(takeOver.participants);
      if (refused) {
        deps.logger.warn("participants not taken over by the new reflector", {
          reflector: spec.name,
          refused,
        });
      }
    }
    const allow = this.#allow;
    this.#paths = [{
      name: "media",
      from: sockets.data,
      out: sockets.registration,
      portOffset: 0,
      fanout: threads.get("media") ??
        new LocalFanout(sockets.registration, { allow, ...(spec.use_rtp ? { valid: isRtp } : {}) }),
    }];
    if (sockets.registrationRtcp) {
      this.#paths.push({
        name: "rtcp",
        from: sockets.dataRtcp,
        out: sockets.registrationRtcp,
        portOffset: 1,
        fanout: threads.get("rtcp") ?? new LocalFanout(sockets.registrationRtcp, { allow, valid: isRtcp }),
      });
    }
    this.#publish();
    this.#syncParticipants();
    for (const path of this.#paths) {
      const fanout = path.fanout;
      if (path.from && fanout instanceof LocalFanout) this.#keep(path.name, this.#forward(path.from, fanout));
    }
    this.#keep("registration", this.#control(sockets.registration, false));
    if (sockets.registrationRtcp) {
      this.#keep("registrationRtcp", this.#control(sockets.registrationRtcp, true));
    }
    if (!remote) this.#scheduleExpiry();
  }

  get spec(): ReflectorSpec {
    return this.#spec;
  }

  #tableRules(spec: ReflectorSpec) {
    return {
      timeoutMs: spec.timeout,
      maxParticipants: spec.max_participants,
      maxPerAddress: spec.max_per_address,
      allow: spec.allow,
      ipv4Only: this.#ipv4Only,
      confirmRate: spec.confirm_rate,
    };
  }

  #addStatic(p: HostPort): void {
    const why = this.table.add(p, "config");
    if (why) {
      this.deps.logger.warn("static participant refused", {
        reflector: this.#spec.name,
        participant: formatHostPort(p),
        why,
      });
    }
  }

  /**
   * Why `spec` cannot be applied to this reflector in place (a new one must replace it), or null when it can. The
   * sockets stay, so their addresses and use_rtp must; a path on a thread has its allow-list fixed while it runs
   * (lib/relay/relay_thread.ts) and room in shared memory for the participant limit it started with.
   */
  replaceReason(spec: ReflectorSpec): string | null {
    const old = this.#spec;
    const at = (s: ReflectorSpec) =>
      `${formatHostPort(s.registration)} ${s.data ? formatHostPort(s.data) : ""}`;
    if (at(spec) !== at(old)) return "data or registration address changed";
    if (spec.use_rtp !== old.use_rtp) return "use_rtp changed";
    const threads = this.#paths.filter((p) => p.fanout instanceof ThreadFanout);
    if (!threads.length) return null;
    if ((spec.allow_sources ?? []).join(",") !== (old.allow_sources ?? []).join(",")) {
      return "allow_sources changed, and a reflector thread's allow-list is fixed while it runs";
    }
    const room = Math.min(...threads.map((p) => (p.fanout as ThreadFanout).targets.capacity));
    if (spec.max_participants > room) {
      return `max_participants grew beyond the ${room} its threads have room for`;
    }
    return null;
  }

  /**
   * Applies a new spec in place (`replaceReason` must be null), keeping the sockets, threads and participants:
   * the table's limits, timeout, address classes and confirm rate (see ParticipantTable.reconfigure), the data
   * paths' allow-list (on the event loop), and the config's participant list by item. A participant the new
   * config lists and the old did not is added (it becomes a config participant if it was there already); one the
   * old config listed and the new does not is removed if it is still a config participant. Items the config does
   * not change are left as they are now: a config participant removed over the API stays removed, and participants
   * added over the API or by joining stay.
   */
  update(spec: ReflectorSpec): void {
    const reason = this.replaceReason(spec);
    if (reason) throw new Error(`Reflector "${spec.name}" cannot change in place: ${reason}`);
    const old = this.#spec;
    this.#spec = spec;
    const denied = this.table.reconfigure(this.#tableRules(spec));
    if (denied.length) {
      this.deps.logger.info("participants of an address class no longer allowed removed", {
        reflector: spec.name,
        participants: denied.map((p) => formatHostPort(p.endpoint)).join(","),
      });
    }
    this.#allow = SourceAllowList.parse(spec.allow_sources ?? []);
    for (const path of this.#paths) {
      if (path.fanout instanceof LocalFanout) path.fanout.rules.allow = this.#allow;
    }
    const keys = (list: readonly HostPort[]) => new Set(list.map(formatHostPort));
    const before = keys(old.participants);
    const after = keys(spec.participants);
    for (const p of old.participants) {
      if (!after.has(formatHostPort(p)) && this.table.get(p)?.origin === "config") this.table.remove(p);
    }
    for (const p of spec.participants) if (!before.has(formatHostPort(p))) this.#addStatic(p);
    this.#syncParticipants();
  }

  /** Keeps a loop to wait for at close; one that fails (its socket failed) says so in the log, not by a throw. */
  #keep(name: string, loop: Promise<void>): void {
    this.#loops.push(loop.catch((error) => {
      this.deps.logger.error("reflector loop ended", {
        reflector: this.#spec.name,
        loop: name,
        error: errorMessage(error),
      });
    }));
  }

  /** The remote table's report (checked by the caller): the participants to send to from now on, and figures. */
  mirror(report: MembershipReport): void {
    // The same list as before (an answer that left it out): nothing to compare.
    if (report.participants !== this.#report.participants) {
      const before = this.#report.participants.map((p) => formatHostPort(p.endpoint)).join(",");
      const after = report.participants.map((p) => formatHostPort(p.endpoint)).join(",");
      if (before !== after) this.#reportVersion++;
    }
    this.#report = report;
    this.#syncParticipants();
  }

  /** Sends the remote table's answer to a control datagram, from the registration socket it came in on. */
  reply(data: Uint8Array, to: Endpoint, rtcp: boolean): void {
    const socket = rtcp ? this.sockets.registrationRtcp : this.sockets.registration;
    if (!socket || this.#closed || !this.#reachable(to.host)) return;
    socket.send([data], socket.destinations([to]));
  }

  /** Whether this reflector's sockets can send to `host` (an IPv4 socket cannot send to IPv6). */
  #reachable(host: string): boolean {
    return !this.#ipv4Only || isIPv4(host);
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

  #figures(): ReflectorFigures {
    const view = this.#view();
    const drops = new Float64Array(DROP_CELLS);
    for (const p of this.#paths) for (let c = 0; c < DROP_CELLS; c++) drops[c] += p.fanout.drops[c];
    return {
      ...view.stats,
      ...dropFigures(drops),
      participants: view.participants.length,
      malformed_data: drops[DROP.malformed],
      control_errors: this.#controlErrors,
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

  /**
   * Sends a batch that arrived some other way (from a session graph, its senders kept) to every participant, as
   * the data port would: no empty datagram, only allowed sources (the AP's `allow_sources`), well-formed ones.
   */
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
   * After the table changed: every path sends to the new participant list. An address the sockets cannot send to
   * never gets here through the table (it refuses them) nor through a remote report (checked); it is left out all
   * the same, since a throw here would end the loop or timer that called.
   */
  #syncParticipants(): void {
    // Called for every control datagram: the version is compared before the list is built (a copy of up to
    // max_participants entries), so junk on the registration port costs nothing per participant.
    const version = this.#remote ? this.#reportVersion : this.table.version;
    if (this.#tableVersion === version) return;
    const view = this.#view();
    if (this.#tableVersion === view.version) return;
    this.#tableVersion = view.version;
    const endpoints = view.participants.map((p) => p.endpoint).filter((e) => this.#reachable(e.host));
    for (const path of this.#paths) {
      path.fanout.update(
        new Map(endpoints.map((e) => [formatHostPort(e), { host: e.host, port: e.port + path.portOffset }])),
      );
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
   * Anything else is counted as malformed by the table. A datagram whose handling throws is counted and logged,
   * and the loop goes on: nothing an outsider sends may end it (or, unhandled, the process).
   */
  async #control(socket: UdpSocket, rtcp: boolean): Promise<void> {
    for (;;) {
      const batch = await socket.receive();
      if (!batch) return;
      if (this.#remote) {
        if (!this.#closed) this.#guard(() => this.#remote!.control(batch, rtcp));
        continue;
      }
      for (let i = 0; i < batch.count; i++) {
        this.#guard(() => {
          const data = batch.data(i);
          if (rtcp && isRtcp(data)) {
            this.#participantRtcp++;
            return;
          }
          const from = batch.from(i);
          const reply = this.table.onControl(data, from);
          if (reply && this.#reachable(from.host)) socket.send([reply], socket.destinations([from]));
          this.#syncParticipants();
        });
      }
    }
  }

  #guard(fn: () => void): void {
    try {
      fn();
    } catch (error) {
      this.#controlErrors++;
      this.deps.logger.error("reflector control failed", {
        reflector: this.#spec.name,
        error: errorMessage(error),
      });
    }
  }

  #scheduleExpiry(): void {
    if (this.#closed) return;
    const every = Math.max(100, Math.min(1000, this.#spec.timeout / 4));
    this.#timer = this.#clock.setTimeout(() => {
      this.#guard(() => {
        const dropped = this.table.expire();
        this.#syncParticipants();
        if (dropped) this.deps.logger.info("participants timed out", { reflector: this.#spec.name, dropped });
      });
      this.#scheduleExpiry();
    }, every);
  }

  /**
   * Adds a participant (from config or the API); returns why not when it may not be added: `family` when the
   * reflector's sockets cannot send to its address family.
   */
  add(ep: Endpoint, origin: Exclude<Origin, "join">): Refusal | null {
    const refused = this.table.add(ep, origin);
    this.#syncParticipants();
    return refused;
  }

  /** The address family this reflector's sockets send to, for messages. */
  get family(): "IPv4" | "IPv6" {
    return this.#ipv4Only ? "IPv4" : "IPv6";
  }

  remove(ep: Endpoint): boolean {
    const removed = this.table.remove(ep);
    this.#syncParticipants();
    return removed;
  }

  #publish(): void {
    const { metrics } = this.deps;
    const labels = { reflector: this.#spec.name, ...this.deps.labels };
    this.#sets.push(metrics.publish("reflector", labels, REFLECTOR_SERIES, () => this.#figures()));
    for (const [port, stats] of this.#socketStats()) {
      this.#sets.push(metrics.publish("reflector_socket", { ...labels, port }, SOCKET_SERIES, () => stats));
    }
  }

  status(): Record<string, unknown> {
    const now = this.#clock.now();
    this.#syncParticipants();
    const { participants } = this.#view();
    return {
      data: this.sockets.data ? formatHostPort(this.sockets.data.local) : "graph",
      registration: formatHostPort(this.sockets.registration.local),
      use_rtp: this.#spec.use_rtp,
      udp: this.sockets.registration.impl,
      gso: this.sockets.registration.gso,
      threads: this.threads,
      allow_sources: this.#allow.allowsAll ? "any" : this.#allow.prefixes,
      ...this.#threadErrors(),
      ...figuresOf(REFLECTOR_SERIES, this.#figures()),
      sockets: Object.fromEntries(
        this.#socketStats().map(([k, stats]) => [k, figuresOf(SOCKET_SERIES, stats)]),
      ),
      // The count is `participants` in /metrics; here it is the list, with each one's figures.
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
    for (const path of this.#paths) {
      const fanout = path.fanout;
      if (fanout instanceof ThreadFanout && !await fanout.thread.stop() && !fanout.thread.error) {
        this.deps.logger.warn("reflector thread did not stop when asked; terminated", {
          reflector: this.#spec.name,
          path: path.name,
        });
      }
    }
    for (const s of Object.values(this.sockets)) await s?.close();
    await Promise.all(this.#loops);
  }
}
