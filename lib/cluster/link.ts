/**
 * The link port: the one UDP socket of a node that carries every link to its peers (the issue's data plane between
 * nodes). A wire from an AP on this node to an AP on a peer sends through `sender()`; an input of a local AP fed from
 * a peer is `register()`ed and gets its batches. Each datagram carries the link header (link_header.ts) in front of
 * the payload; RTCP travels on the same link with the RTCP flag, not on port + 1.
 *
 * Receiving works a batch at a time on the node's UDP path (the fast one where it can, lib/net/udp.ts): a datagram is
 * taken only from a configured peer's data address, with a header that parses, for a registered channel that this
 * peer may feed (`register`'s `fromPeers`), with a sequence number the channel's anti-replay window takes (new to it;
 * a new epoch or a jump beyond the window only once the next number follows); every other one is counted by reason
 * and dropped. Senders start each channel's numbers at random, so a restarted port is told apart even within the
 * epoch's second. The run of one sender within a batch is told from the raw addresses where the UDP path can
 * (`Batch.sameSource`), and headers are read in place (`Batch.slab`): nothing is built per datagram.
 * Accepted datagrams are handed on per run of one channel and flow, as one batch whose views skip the header (valid
 * only during the call, as every batch).
 *
 * Counted per link (peer) and per channel (/status, and per link in /metrics from LINK_SERIES): packets and bytes
 * each way, lost (from sequence gaps, taken back when a late one fills the gap), reordered, duplicates, delay (the
 * receiver's clock minus the sender's timestamp: median and maximum of the last 64) and rejections by reason. Tables
 * are bounded: MAX_LINK_PEERS peers, MAX_LINK_CHANNELS registered channels and senders, and MAX_LINK_TRACKED
 * (peer, channel) receive states; beyond, registering fails and datagrams are refused as "table_full".
 */
import { type Clock, systemClock } from "../core/clock.ts";
import { StartError } from "../core/errors.ts";
import { type CounterSet, declareSeries, figuresOf, type MetricsRegistry } from "../core/metrics.ts";
import { formatHostPort, type HostPort, ipv6Bytes, ipv6Text, isIPv4, isIPv6 } from "../net/address.ts";
import {
  type Batch,
  type Destinations,
  openUdp,
  statsOf,
  type UdpOptions,
  type UdpSocket,
} from "../net/udp.ts";
import {
  channelId,
  DelayWindow,
  encodeDestination,
  LINK_REJECTS,
  type LinkHeaderFields,
  linkHeaderLength,
  type LinkReject,
  ParsedLinkHeader,
  parseLinkHeader,
  refused,
  ReplayWindow,
  writeLinkHeader,
} from "./link_header.ts";

export const MAX_LINK_PEERS = 64;
export const MAX_LINK_CHANNELS = 4096;
export const MAX_LINK_TRACKED = 4096;
/** The largest UDP payload over IPv4: header and datagram together may not exceed it. */
const MAX_UDP_PAYLOAD = 65_507;
/** Staging for one send: datagrams with their headers, handed to the socket when full. */
const SLAB_BYTES = 256 * 1024;

export interface LinkPeer {
  readonly name: string;
  /** Its link port's address: an IP literal and port. */
  readonly data: HostPort;
}

export interface LinkPortOptions {
  readonly bind: HostPort;
  /** This node's name among its peers. */
  readonly self: string;
  readonly peers: readonly LinkPeer[];
  readonly udp?: UdpOptions;
  readonly clock?: Clock;
  /** Where the per-link series go (LINK_SERIES, labelled by peer); absent: /status only. */
  readonly metrics?: MetricsRegistry;
}

/** A peer list or address the link port cannot use. */
export class LinkConfigError extends Error {
  override name = "LinkConfigError";
  constructor(readonly detail: string) {
    super(`Cannot configure link port: ${detail}`);
  }
}

/** What a link (one peer) counts, by the names of LINK_SERIES. */
export interface LinkFigures {
  readonly rx_packets: number;
  readonly rx_bytes: number;
  readonly tx_packets: number;
  readonly tx_bytes: number;
  readonly tx_dropped: number;
  readonly lost: number;
  readonly reordered: number;
  readonly delay_p50_ms: number;
  readonly delay_max_ms: number;
  readonly rejected: Readonly<Record<LinkReject, number>>;
}

/** Per link, in /status and /metrics alike (labels: peer). Payload bytes, headers not counted. */
export const LINK_SERIES = declareSeries<LinkFigures>({
  rx_packets: { help: "Datagrams accepted from the peer" },
  rx_bytes: { help: "Payload bytes accepted from the peer" },
  tx_packets: { help: "Datagrams to the peer the kernel took" },
  tx_bytes: { help: "Payload bytes handed to the socket for the peer" },
  tx_dropped: { help: "Datagrams to the peer the kernel refused, or sent while the peer was not configured" },
  lost: { help: "Datagrams from the peer never received (link sequence gaps)" },
  reordered: { help: "Datagrams from the peer received after a later one" },
  delay_p50_ms: {
    kind: "gauge",
    help: "Median link delay of the last 64 datagrams (receiver clock minus sender timestamp), ms",
  },
  delay_max_ms: { kind: "gauge", help: "Largest link delay of the last 64 datagrams, ms" },
  ...Object.fromEntries(
    LINK_REJECTS.filter((r) => r !== "not_peer").map((r) => [
      `rejected_${r}`,
      {
        help: `Datagrams from the peer refused: ${r.replace("_", " ")}`,
        read: (f: LinkFigures) => f.rejected[r],
      },
    ]),
  ),
});

/** The port as a whole (no peer to count against). */
export const LINK_PORT_SERIES = declareSeries<{ rejected_not_peer: number; deliver_errors: number }>({
  rejected_not_peer: { help: "Datagrams from an address that is no configured peer's data address" },
  deliver_errors: { help: "Batches a receiver threw on (dropped)" },
});

interface Receiver {
  readonly session: string;
  readonly ap: string;
  readonly input: string;
  readonly channel: number;
  readonly deliver: (batch: LinkBatch, rtcp: boolean) => void;
  /** The peers that may feed it, or null: any configured peer. */
  readonly from: ReadonlySet<string> | null;
}

interface RxChannel {
  readonly receiver: Receiver;
  readonly window: ReplayWindow;
  readonly delay: DelayWindow;
  packets: number;
  bytes: number;
}

interface TxChannel {
  readonly peer: Peer;
  readonly session: string;
  readonly ap: string;
  readonly input: string;
  readonly channel: number;
  sequence: number;
  packets: number;
  bytes: number;
  /** Not sent: too large with the header, or the peer is gone. */
  dropped: number;
  users: number;
}

class Peer {
  rxPackets = 0;
  rxBytes = 0;
  txBytes = 0;
  /** Sent while not configured (removed by setPeers), or too large. */
  txLocalDrops = 0;
  lost = 0;
  reordered = 0;
  readonly rejected = Object.fromEntries(LINK_REJECTS.map((r) => [r, 0])) as Record<LinkReject, number>;
  readonly delay = new DelayWindow();
  readonly rx = new Map<number, RxChannel>();
  gone = false;
  /** Where its datagrams go; replaced when its address changes (what the old one counted is kept in `sentBefore`). */
  dest!: Destinations;
  sentBefore = 0;
  droppedBefore = 0;
  set: CounterSet | null = null;
  constructor(readonly name: string, public data: HostPort) {}

  figures(): LinkFigures {
    const d = this.delay.summary();
    return {
      rx_packets: this.rxPackets,
      rx_bytes: this.rxBytes,
      tx_packets: this.sentBefore + this.dest.sent[0],
      tx_bytes: this.txBytes,
      tx_dropped: this.droppedBefore + this.dest.dropped[0] + this.txLocalDrops,
      lost: this.lost,
      reordered: this.reordered,
      delay_p50_ms: d.p50 ?? NaN,
      delay_max_ms: d.max ?? NaN,
      rejected: this.rejected,
    };
  }
}

/** What a registered input gets: payloads (headers skipped), and each datagram's final destination if it has one. */
export interface LinkBatch extends Batch {
  /** The final destination datagram `i`'s header carries (as ARTP's could), or null; allocates. */
  destination(i: number): HostPort | null;
}

/** The accepted datagrams of one run (one channel and flow) of a received batch, their headers skipped. */
class PayloadBatch implements LinkBatch {
  src: Batch | null = null;
  /** The source's buffer, where it offers one (`Batch.slab`): one view per `data()` instead of two. */
  buffer: Uint8Array | null = null;
  picked = new Int32Array(64);
  offsets = new Int32Array(64);
  count = 0;
  data(i: number): Uint8Array {
    const p = this.picked[i];
    const src = this.src!;
    if (this.buffer) {
      const at = src.offset!(p);
      return this.buffer.subarray(at + this.offsets[i], at + src.length(p));
    }
    return src.data(p).subarray(this.offsets[i]);
  }
  length(i: number): number {
    return this.src!.length(this.picked[i]) - this.offsets[i];
  }
  from(i: number): HostPort {
    return this.src!.from(this.picked[i]);
  }
  truncated(_i: number): boolean {
    return false;
  }
  arrivalUs(i: number): number {
    return this.src!.arrivalUs?.(this.picked[i]) ?? NaN;
  }
  destination(i: number): HostPort | null {
    const d = this.src!.data(this.picked[i]);
    return parseLinkHeader(d, this.#header) === "ok" ? this.#header.destination(d) : null;
  }
  readonly #header = new ParsedLinkHeader();
  grow(n: number): void {
    if (this.picked.length >= n) return;
    this.picked = new Int32Array(n);
    this.offsets = new Int32Array(n);
  }
}

export class LinkPort {
  readonly local: HostPort;
  readonly self: string;
  /** This port's epoch (link_header.ts): when it opened, in Unix seconds. */
  readonly epoch: number;
  readonly #socket: UdpSocket;
  readonly #clock: Clock;
  readonly #metrics: MetricsRegistry | undefined;
  readonly #peers = new Map<string, Peer>();
  /** Peers by their data address ("host port", IPv4-mapped IPv6 as IPv4). */
  readonly #byAddress = new Map<string, Peer>();
  readonly #receivers = new Map<number, Receiver>();
  readonly #senders = new Map<string, TxChannel>();
  #tracked = 0;
  #notPeer = 0;
  #deliverErrors = 0;
  readonly #header = new ParsedLinkHeader();
  readonly #run = new PayloadBatch();
  readonly #slab = new Uint8Array(SLAB_BYTES);
  readonly #views: Uint8Array[] = [];
  readonly #fields: LinkHeaderFields = {
    channel: 0,
    epoch: 0,
    sequence: 0,
    sentUs: 0,
    rtcp: false,
    destination: null,
  };
  readonly #portSet: CounterSet | null;
  readonly #loop: Promise<void>;
  #closed = false;

  private constructor(socket: UdpSocket, options: LinkPortOptions) {
    this.#socket = socket;
    this.local = socket.local;
    this.self = options.self;
    this.#clock = options.clock ?? systemClock;
    this.#metrics = options.metrics;
    this.epoch = Math.floor(this.#clock.now() / 1000) >>> 0;
    this.#fields.epoch = this.epoch;
    this.#portSet = this.#metrics?.publish(
      "link_port",
      { self: this.self },
      LINK_PORT_SERIES,
      () => ({ rejected_not_peer: this.#notPeer, deliver_errors: this.#deliverErrors }),
    ) ?? null;
    this.setPeers(options.peers);
    this.#loop = this.#receive();
  }

  /** Binds the port; throws LinkConfigError for a bad peer list and StartError when the socket cannot be had. */
  // deno-lint-ignore require-await
  static async open(options: LinkPortOptions): Promise<LinkPort> {
    checkPeers(options.self, options.peers);
    const socket = openUdp(options.bind, options.udp);
    try {
      return new LinkPort(socket, options);
    } catch (error) {
      void socket.close();
      throw error;
    }
  }

  /**
   * Replaces the peer list (membership changed). A peer kept by name keeps its counters, and its senders send to its
   * new address; a peer removed is no longer let in, and what its senders send is dropped and counted.
   */
  setPeers(peers: readonly LinkPeer[]): void {
    checkPeers(this.self, peers);
    const names = new Set(peers.map((p) => p.name));
    for (const [name, peer] of this.#peers) {
      if (names.has(name)) continue;
      peer.gone = true;
      if (peer.set) this.#metrics?.remove(peer.set);
      this.#tracked -= peer.rx.size;
      this.#peers.delete(name);
    }
    this.#byAddress.clear();
    for (const p of peers) {
      let peer = this.#peers.get(p.name);
      if (!peer) {
        peer = new Peer(p.name, p.data);
        this.#peers.set(p.name, peer);
        const it = peer;
        it.set = this.#metrics?.publish("link", { self: this.self, peer: p.name }, LINK_SERIES, () =>
          it.figures()) ??
          null;
      }
      peer.data = p.data;
      peer.gone = false;
      if (peer.dest) {
        // Counters only go up: what the old destination counted stays.
        peer.sentBefore += peer.dest.sent[0];
        peer.droppedBefore += peer.dest.dropped[0];
      }
      peer.dest = this.#socket.destinations([p.data]);
      this.#byAddress.set(addressKey(p.data.host, p.data.port), peer);
    }
    // Senders of a peer that came back under the same name send again.
    for (const tx of this.#senders.values()) {
      const now = this.#peers.get(tx.peer.name);
      if (now && now !== tx.peer) Object.assign(tx, { peer: now });
    }
  }

  /**
   * What a local AP input fed by a link gets: `deliver` is called per batch for (session, ap, input). Throws
   * StartError when the triple is registered already, when its channel id is another triple's, or when the table
   * is full. Disposing it unregisters it (and forgets what was counted for its channel per peer).
   *
   * `fromPeers`, the nodes the placement puts the input's feeding APs on, are the only peers whose datagrams reach
   * it; another peer's are dropped and counted as `wrong_peer`. Without it, any configured peer may feed it.
   */
  register(
    session: string,
    ap: string,
    input: string,
    deliver: (batch: LinkBatch, rtcp: boolean) => void,
    fromPeers?: Iterable<string>,
  ): Disposable {
    const channel = channelId(session, ap, input);
    const taken = this.#receivers.get(channel);
    if (taken) {
      const same = taken.session === session && taken.ap === ap && taken.input === input;
      throw new StartError(
        same
          ? `Cannot register link input ${session}/${ap}.${input}: it is registered already`
          : `Cannot register link input ${session}/${ap}.${input}: its channel id ${channel} is that of ${taken.session}/${taken.ap}.${taken.input} (rename an AP or port)`,
      );
    }
    if (this.#receivers.size >= MAX_LINK_CHANNELS) {
      throw new StartError(
        `Cannot register link input ${session}/${ap}.${input}: the link port holds ${MAX_LINK_CHANNELS} already`,
      );
    }
    const from = fromPeers === undefined ? null : new Set(fromPeers);
    const receiver: Receiver = { session, ap, input, channel, deliver, from };
    this.#receivers.set(channel, receiver);
    return {
      [Symbol.dispose]: () => {
        if (this.#receivers.get(channel) !== receiver) return;
        this.#receivers.delete(channel);
        for (const peer of this.#peers.values()) if (peer.rx.delete(channel)) this.#tracked--;
      },
    };
  }

  /**
   * Sends a batch to (peer, session, ap, input): each datagram with a link header, RTCP flagged; `destination`, when
   * given, goes in every header as the final destination. Throws StartError for a peer not configured. Senders of one
   * (peer, channel) share one sequence.
   */
  sender(
    peer: string,
    session: string,
    ap: string,
    input: string,
    options: { readonly destination?: HostPort } = {},
  ): (batch: Batch, rtcp: boolean) => void {
    const p = this.#peers.get(peer);
    if (!p) {
      throw new StartError(
        `Cannot send to node ${peer}: it is not among the link port's peers (${
          [...this.#peers.keys()].join(", ") || "none"
        })`,
      );
    }
    const key = `${peer}\0${session}\0${ap}\0${input}`;
    let tx = this.#senders.get(key);
    if (!tx) {
      if (this.#senders.size >= MAX_LINK_CHANNELS) {
        throw new StartError(
          `Cannot send to ${peer}: the link port holds ${MAX_LINK_CHANNELS} senders already`,
        );
      }
      tx = {
        peer: p,
        session,
        ap,
        input,
        channel: channelId(session, ap, input),
        // Random, as RTP's (link_header.ts): a port restarted within the same second is told apart by its numbers.
        sequence: crypto.getRandomValues(new Uint32Array(1))[0],
        packets: 0,
        bytes: 0,
        dropped: 0,
        users: 0,
      };
      this.#senders.set(key, tx);
    }
    tx.users++;
    const destination = options.destination ? encodeDestination(options.destination) : null;
    const it = tx;
    return (batch, rtcp) => this.#send(it, destination, batch, rtcp);
  }

  /** Forgets a sender's counters once no one sends on it (a session stopped). */
  release(peer: string, session: string, ap: string, input: string): void {
    const key = `${peer}\0${session}\0${ap}\0${input}`;
    const tx = this.#senders.get(key);
    if (tx && --tx.users <= 0) this.#senders.delete(key);
  }

  #send(tx: TxChannel, destination: Uint8Array | null, batch: Batch, rtcp: boolean): void {
    const peer = tx.peer;
    if (this.#closed || peer.gone) {
      tx.dropped += batch.count;
      peer.txLocalDrops += batch.count;
      return;
    }
    const f = this.#fields;
    f.channel = tx.channel;
    f.rtcp = rtcp;
    f.destination = destination;
    f.sentUs = Math.floor(this.#clock.nowUs());
    const hlen = linkHeaderLength(destination);
    const slab = this.#slab;
    const views = this.#views;
    views.length = 0;
    let off = 0;
    for (let i = 0; i < batch.count; i++) {
      const len = batch.length(i);
      const need = hlen + len;
      if (need > MAX_UDP_PAYLOAD) {
        tx.dropped++;
        peer.txLocalDrops++;
        continue;
      }
      if (off + need > slab.length) {
        this.#socket.send(views, peer.dest);
        views.length = 0;
        off = 0;
      }
      f.sequence = tx.sequence;
      tx.sequence = (tx.sequence + 1) >>> 0;
      writeLinkHeader(slab, off, f);
      slab.set(batch.data(i), off + hlen);
      views.push(slab.subarray(off, off + need));
      off += need;
      tx.packets++;
      tx.bytes += len;
      peer.txBytes += len;
    }
    if (views.length) this.#socket.send(views, peer.dest);
    views.length = 0;
  }

  async #receive(): Promise<void> {
    for (;;) {
      const batch = await this.#socket.receive();
      if (!batch) return;
      this.#handle(batch);
    }
  }

  /** One received batch: each datagram checked and counted, the accepted ones handed on per run. */
  #handle(batch: Batch): void {
    const h = this.#header;
    const run = this.#run;
    run.grow(batch.count);
    run.src = batch;
    // Where the batch offers its buffer, headers are read in place: no view per datagram.
    const slab = batch.slab?.() ?? null;
    run.buffer = slab;
    run.count = 0;
    let target: Receiver | null = null;
    let rtcp = false;
    const nowUs = this.#clock.nowUs();
    const nowS = nowUs / 1e6;
    // A batch mostly comes from one peer: its address is looked up once per run of it, a run told from the raw
    // addresses where the batch can (`sameSource`: nothing built per datagram), else from `from()`.
    let lastHost = "";
    let lastPort = -1;
    let peer: Peer | undefined;
    for (let i = 0; i < batch.count; i++) {
      if (i === 0 || !batch.sameSource?.(i, i - 1)) {
        const from = batch.from(i);
        if (from.port !== lastPort || from.host !== lastHost) {
          peer = this.#byAddress.get(addressKey(from.host, from.port));
          lastHost = from.host;
          lastPort = from.port;
        }
      }
      if (!peer) {
        this.#notPeer++;
        continue;
      }
      if (batch.truncated(i)) {
        peer.rejected.truncated++;
        continue;
      }
      const len = batch.length(i);
      const at = slab ? batch.offset!(i) : 0;
      const verdict = parseLinkHeader(slab ?? batch.data(i), h, at, at + len);
      if (verdict !== "ok") {
        peer.rejected[verdict]++;
        continue;
      }
      const receiver = this.#receivers.get(h.channel);
      if (!receiver) {
        peer.rejected.foreign++;
        continue;
      }
      if (receiver.from && !receiver.from.has(peer.name)) {
        peer.rejected.wrong_peer++;
        continue;
      }
      let state = peer.rx.get(h.channel);
      if (!state) {
        if (this.#tracked >= MAX_LINK_TRACKED) {
          peer.rejected.table_full++;
          continue;
        }
        state = { receiver, window: new ReplayWindow(), delay: new DelayWindow(), packets: 0, bytes: 0 };
        peer.rx.set(h.channel, state);
        this.#tracked++;
      }
      const w = state.window;
      const lost = w.lost;
      const seen = w.check(h.epoch, h.sequence, nowS);
      if (refused(seen)) {
        peer.rejected[seen]++;
        continue;
      }
      peer.lost += w.lost - lost;
      if (seen === "late") peer.reordered++;
      const bytes = len - h.length;
      state.packets++;
      state.bytes += bytes;
      peer.rxPackets++;
      peer.rxBytes += bytes;
      state.delay.add(h.sentUs, nowUs);
      peer.delay.add(h.sentUs, nowUs);
      if (receiver !== target || h.rtcp !== rtcp) {
        this.#flush(target, rtcp);
        target = receiver;
        rtcp = h.rtcp;
      }
      run.picked[run.count] = i;
      run.offsets[run.count] = h.length;
      run.count++;
    }
    this.#flush(target, rtcp);
    run.src = null;
    run.buffer = null;
  }

  #flush(target: Receiver | null, rtcp: boolean): void {
    const run = this.#run;
    if (!target || run.count === 0) return;
    try {
      target.deliver(run, rtcp);
    } catch {
      this.#deliverErrors++;
    }
    run.count = 0;
  }

  /** Per link: its figures (LINK_SERIES), delay, and its channels each way. */
  status(): Record<string, unknown> {
    return {
      self: this.self,
      listen: formatHostPort(this.local),
      udp: this.#socket.impl,
      epoch: this.epoch,
      socket: statsOf(this.#socket.stats),
      ...figuresOf(LINK_PORT_SERIES, {
        rejected_not_peer: this.#notPeer,
        deliver_errors: this.#deliverErrors,
      }),
      registered: this.#receivers.size,
      links: [...this.#peers.values()].map((p) => this.#linkStatus(p, null)),
    };
  }

  /** The links' figures and only the channels of `session`: what a session's /status shows. */
  sessionStatus(session: string): Record<string, unknown>[] {
    return [...this.#peers.values()]
      .map((p) => this.#linkStatus(p, session))
      .filter((l) => (l.channels as unknown[]).length > 0);
  }

  #linkStatus(p: Peer, session: string | null): Record<string, unknown> {
    const mine = (s: string) => session === null || s === session;
    return {
      peer: p.name,
      data: formatHostPort(p.data),
      // The declared names, as /metrics shows them; a delay is null (NaN) before the first datagram.
      ...figuresOf(LINK_SERIES, p.figures()),
      channels: [
        ...[...p.rx.values()].filter((c) => mine(c.receiver.session)).map((c) => ({
          direction: "in",
          session: c.receiver.session,
          ap: c.receiver.ap,
          input: c.receiver.input,
          channel: c.receiver.channel,
          packets: c.packets,
          bytes: c.bytes,
          lost: c.window.lost,
          reordered: c.window.reordered,
          duplicates: c.window.duplicates,
          ...delays(c.delay),
        })),
        ...[...this.#senders.values()].filter((t) => t.peer === p && mine(t.session)).map((t) => ({
          direction: "out",
          session: t.session,
          ap: t.ap,
          input: t.input,
          channel: t.channel,
          packets: t.packets,
          bytes: t.bytes,
          dropped: t.dropped,
        })),
      ],
    };
  }

  /** Stops receiving, releases the socket and takes the series out of the registry. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#socket.close();
    await this.#loop;
    for (const p of this.#peers.values()) if (p.set) this.#metrics?.remove(p.set);
    if (this.#portSet) this.#metrics?.remove(this.#portSet);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function delays(d: DelayWindow): { delay_p50_ms: number | null; delay_max_ms: number | null } {
  const { p50, max } = d.summary();
  return { delay_p50_ms: p50, delay_max_ms: max };
}

function checkPeers(self: string, peers: readonly LinkPeer[]): void {
  if (peers.length > MAX_LINK_PEERS) {
    throw new LinkConfigError(`${peers.length} peers, more than the ${MAX_LINK_PEERS} a link port holds`);
  }
  const names = new Set<string>();
  const addresses = new Set<string>();
  for (const p of peers) {
    if (p.name === self) throw new LinkConfigError(`peer "${p.name}" is this node itself`);
    if (names.has(p.name)) throw new LinkConfigError(`peer "${p.name}" is listed twice`);
    names.add(p.name);
    if (!isIPv4(p.data.host) && !isIPv6(p.data.host)) {
      throw new LinkConfigError(
        `peer "${p.name}" has data address "${p.data.host}", which is not an IP address`,
      );
    }
    const key = addressKey(p.data.host, p.data.port);
    if (addresses.has(key)) {
      throw new LinkConfigError(`peers share the data address ${formatHostPort(p.data)}`);
    }
    addresses.add(key);
  }
}

/** "host port" with IPv6 in canonical text and IPv4-mapped IPv6 as IPv4 (what a dual-stack socket reports). */
function addressKey(host: string, port: number): string {
  if (host.includes(":")) {
    const lower = host.toLowerCase();
    if (lower.startsWith("::ffff:") && isIPv4(lower.slice(7))) return `${lower.slice(7)} ${port}`;
    if (isIPv6(host)) return `${ipv6Text(ipv6Bytes(host))} ${port}`;
  }
  return `${host} ${port}`;
}
