/**
 * The reflector (CESNET's "user-empowered virtual multicast"): a stream arriving on the data port is sent to every
 * participant, from the registration port, so that a participant behind NAT receives it on the flow it opened when
 * it joined. With use_rtp the ports go in pairs: RTP on the data and registration ports, RTCP on each port + 1,
 * sent to each participant's port + 1.
 */
import type { Clock, TimerId } from "../core/clock.ts";
import type { Logger } from "../core/logger.ts";
import type { CounterSet, MetricsRegistry } from "../core/metrics.ts";
import { isRtcp, isRtp } from "../media/rtp.ts";
import { formatHostPort, type HostPort } from "../net/address.ts";
import type { Batch, Destinations, Endpoint, UdpSocket } from "../net/udp.ts";
import { type DenyClass, type Origin, ParticipantTable } from "./participants.ts";
import { publishSocket } from "./relay.ts";

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

interface Path {
  readonly name: "media" | "rtcp";
  readonly from?: UdpSocket;
  readonly out: UdpSocket;
  readonly valid?: (d: Uint8Array) => boolean;
  /** Added to each participant's port (RTCP goes to port + 1). */
  readonly portOffset: number;
  dest: Destinations;
  /** Participant ("IP:PORT" as joined) -> index in `dest`. */
  index: Map<string, number>;
  version: number;
  malformed: number;
}

export class Reflector {
  readonly table: ParticipantTable;
  readonly #paths: Path[];
  readonly #sets: CounterSet[] = [];
  readonly #loops: Promise<void>[] = [];
  readonly #clock: Clock;
  #timer: TimerId | undefined;
  #closed = false;
  #participantRtcp = 0;
  readonly #tallies = new Map<string, { sent: number; dropped: number; set: CounterSet }>();
  #talliesVersion = -1;

  constructor(
    readonly spec: ReflectorSpec,
    readonly sockets: ReflectorSockets,
    private readonly deps: { clock: Clock; metrics: MetricsRegistry; logger: Logger },
  ) {
    this.#clock = deps.clock;
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
    const empty = sockets.registration.destinations([]);
    this.#paths = [{
      name: "media",
      from: sockets.data,
      out: sockets.registration,
      valid: spec.use_rtp ? isRtp : undefined,
      portOffset: 0,
      dest: empty,
      index: new Map(),
      version: -1,
      malformed: 0,
    }];
    if (sockets.registrationRtcp) {
      this.#paths.push({
        name: "rtcp",
        from: sockets.dataRtcp,
        out: sockets.registrationRtcp,
        valid: isRtcp,
        portOffset: 1,
        dest: empty,
        index: new Map(),
        version: -1,
        malformed: 0,
      });
    }
    this.#publish();
    this.#syncParticipants();
    for (const path of this.#paths) if (path.from) this.#loops.push(this.#forward(path.from, path));
    this.#loops.push(this.#control(sockets.registration, false));
    if (sockets.registrationRtcp) this.#loops.push(this.#control(sockets.registrationRtcp, true));
    this.#scheduleExpiry();
  }

  /** Data port -> every participant, from the registration socket. */
  async #forward(from: UdpSocket, path: Path): Promise<void> {
    for (;;) {
      const batch = await from.receive();
      if (!batch) return;
      this.#send(batch, path);
    }
  }

  #send(batch: Batch, path: Path): void {
    if (path.version !== this.table.version) this.#rebuild(path);
    path.out.send(path.valid ? this.#valid(batch, path) : batch, path.dest);
  }

  /** Sends a batch that arrived some other way (from a session graph) to every participant. */
  reflect(batch: Batch, rtcp: boolean): void {
    const path = this.#paths[rtcp ? 1 : 0];
    if (path && !this.#closed) this.#send(batch, path);
  }

  /**
   * New destinations after the participant table changed. What the old ones counted is first added to each
   * participant's tally, so per-participant counters survive the rebuild; participants that left lose theirs.
   */
  #rebuild(path: Path): void {
    this.#fold(path);
    const endpoints = this.table.endpoints();
    path.dest = path.out.destinations(
      endpoints.map((e) => ({ host: e.host, port: e.port + path.portOffset })),
    );
    path.index = new Map(endpoints.map((e, j) => [formatHostPort(e), j]));
    path.version = this.table.version;
    this.#syncParticipants();
  }

  #fold(path: Path): void {
    for (const [key, j] of path.index) {
      const tally = this.#tallies.get(key);
      if (!tally) continue;
      tally.sent += path.dest.sent[j];
      tally.dropped += path.dest.dropped[j];
    }
  }

  /** Datagrams sent to (and refused for) one participant so far, on every path. */
  #counts(key: string): { sent: number; dropped: number } {
    const tally = this.#tallies.get(key);
    let sent = tally?.sent ?? 0;
    let dropped = tally?.dropped ?? 0;
    for (const path of this.#paths) {
      const j = path.index.get(key);
      if (j === undefined) continue;
      sent += path.dest.sent[j];
      dropped += path.dest.dropped[j];
    }
    return { sent, dropped };
  }

  /** One counter set per participant in the table: created on join, removed on leave. */
  #syncParticipants(): void {
    if (this.#talliesVersion === this.table.version) return;
    this.#talliesVersion = this.table.version;
    const current = new Set(this.table.endpoints().map(formatHostPort));
    for (const [key, tally] of this.#tallies) {
      if (current.has(key)) continue;
      this.deps.metrics.remove(tally.set);
      this.#tallies.delete(key);
    }
    for (const key of current) {
      if (this.#tallies.has(key)) continue;
      const set = this.deps.metrics.set("reflector_participant", {
        reflector: this.spec.name,
        participant: key,
      });
      set.counter("sent_total", "Datagrams sent to this participant", () => this.#counts(key).sent);
      set.counter(
        "dropped_total",
        "Datagrams to this participant the kernel refused",
        () => this.#counts(key).dropped,
      );
      this.#tallies.set(key, { sent: 0, dropped: 0, set });
    }
  }

  /** The batch itself when every datagram is well formed (no copy), else the well-formed ones. */
  #valid(batch: Batch, path: Path): Batch | Uint8Array[] {
    let ok = 0;
    for (let i = 0; i < batch.count; i++) if (path.valid!(batch.data(i))) ok++;
    if (ok === batch.count) return batch;
    path.malformed += batch.count - ok;
    const good: Uint8Array[] = [];
    for (let i = 0; i < batch.count; i++) if (path.valid!(batch.data(i))) good.push(batch.data(i));
    return good;
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
    const labels = { reflector: this.spec.name };
    const set = metrics.set("reflector", labels);
    const t = this.table.stats;
    set.gauge("participants", "Participants receiving the stream", () => this.table.size);
    set.counter("joins_total", "JOIN requests answered or refused", () => t.joins);
    set.counter("confirms_total", "Nonces echoed correctly (joins and keepalives)", () => t.confirms);
    set.counter("leaves_total", "Participants that left", () => t.leaves);
    set.counter("expired_total", "Participants dropped after the timeout", () => t.expired);
    set.counter("refused_limit_total", "Joins refused by a participant limit", () => t.refused_limit);
    set.counter("refused_denied_total", "Joins refused by the deny list", () => t.refused_denied);
    set.counter("bad_nonce_total", "Confirms with a wrong or stale nonce", () => t.bad_nonce);
    set.counter(
      "malformed_control_total",
      "Datagrams on the registration port that are no message",
      () => t.malformed,
    );
    set.counter(
      "participant_rtcp_total",
      "RTCP reports from participants (counted, not forwarded)",
      () => this.#participantRtcp,
    );
    set.counter(
      "malformed_data_total",
      "Datagrams on the data ports that are not RTP/RTCP (use_rtp only)",
      () => this.#paths.reduce((n, p) => n + p.malformed, 0),
    );
    this.#sets.push(set);
    for (const [port, socket] of Object.entries(this.sockets)) {
      if (socket) {
        this.#sets.push(publishSocket(metrics, "reflector_socket", { ...labels, port }, socket.stats));
      }
    }
  }

  status(): Record<string, unknown> {
    const now = this.#clock.now();
    this.#syncParticipants();
    return {
      data: this.sockets.data ? formatHostPort(this.sockets.data.local) : "graph",
      registration: formatHostPort(this.sockets.registration.local),
      use_rtp: this.spec.use_rtp,
      udp: this.sockets.registration.impl,
      ...this.table.stats,
      malformed_data: this.#paths.reduce((n, p) => n + p.malformed, 0),
      participant_rtcp: this.#participantRtcp,
      sockets: Object.fromEntries(
        Object.entries(this.sockets).flatMap(([k, s]) => (s ? [[k, { ...s.stats }]] : [])),
      ),
      participants: this.table.list().map((p) => ({
        address: formatHostPort(p.endpoint),
        origin: p.origin,
        ...this.#counts(formatHostPort(p.endpoint)),
        joined_seconds_ago: Math.round((now - p.joinedAt) / 1000),
        idle_seconds: Math.round((now - p.lastSeen) / 1000),
      })),
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    for (const s of Object.values(this.sockets)) await s?.close();
    await Promise.all(this.#loops);
    for (const set of this.#sets) this.deps.metrics.remove(set);
    for (const tally of this.#tallies.values()) this.deps.metrics.remove(tally.set);
  }
}
