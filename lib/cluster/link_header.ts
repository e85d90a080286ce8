/**
 * The link header: what every datagram carried between two nodes' link ports starts with (lib/cluster/link.ts), in
 * the manner of ARTP (the DiProNN report, section 3.2.1), which could carry a datagram's real destination. Pure: no
 * sockets here.
 *
 * Layout (network byte order), 20 bytes, then the final destination when flagged, then the payload unchanged:
 *
 * ```
 *  0      1      2      3      4            8            12           16           20
 *  +------+------+------+------+------------+------------+------------+------------+--------------------+
 *  | 0xD1 | ver 1| flags| dlen | channel    | epoch      | sequence   | sent µs    | destination (dlen) |
 *  +------+------+------+------+------------+------------+------------+------------+--------------------+
 * ```
 *
 * - flags: bit 0 RTCP (the datagram is the RTCP flow of a use_RTP wire: one link carries both flows, instead of
 *   port + 1), bit 1 has-destination; the other bits are reserved and must be 0.
 * - dlen: 0 without a destination, 6 (IPv4 address, port) or 18 (IPv6 address, port) with one; anything else, or a
 *   length that disagrees with the flag, is refused.
 * - channel: names (session, target AP, target input). Both sides derive it from the triple (`channelId`, FNV-1a
 *   over the three names), so nothing is exchanged; a receiver refuses to register two triples with one id, so a
 *   collision is found when a part starts, never guessed at on the wire.
 * - epoch: when the sending link port opened (Unix seconds). A node that restarts starts a new epoch, and its
 *   sequence numbers start again. A receiver takes a new epoch (newer or older: a clock may step back) only once the
 *   next datagram follows it in sequence (`ReplayWindow`), and refuses one more than MAX_EPOCH_AHEAD_S ahead of its
 *   own clock.
 * - sequence: per sending port, peer and channel, from a random number (as RTP's, RFC 3550 section 5.1), modulo
 *   2^32: a port that restarts within the same second, so under the same epoch, starts far from where it was, and
 *   the receiver resynchronises on its second datagram instead of refusing it until the old numbers are passed. The
 *   receiver counts loss, reordering and duplicates from it and keeps a sliding anti-replay window (RFC 4303,
 *   section 3.4.3) of REPLAY_WINDOW numbers.
 * - sent µs: the sender's wall clock in µs, modulo 2^32 (wraps every 71 minutes): the receiver takes the difference
 *   to its own clock as the delay (exact on one host; between hosts, off by how far their clocks disagree).
 */
import { type HostPort, ipv6Bytes, ipv6Text, isIPv4, isIPv6 } from "../net/address.ts";

export const LINK_MAGIC = 0xd1;
export const LINK_VERSION = 1;
export const LINK_HEADER_BYTES = 20;
export const FLAG_RTCP = 0x01;
export const FLAG_DESTINATION = 0x02;
const KNOWN_FLAGS = FLAG_RTCP | FLAG_DESTINATION;
/** Numbers behind the highest seen that are still told apart from replays (a multiple of 32). */
export const REPLAY_WINDOW = 1024;
/** The longest header: with an IPv6 destination. */
export const LINK_HEADER_MAX_BYTES = LINK_HEADER_BYTES + 18;

/** Why a datagram arriving at a link port was refused. The first five are the header's own; see `LinkPort`. */
export const LINK_REJECTS = [
  "truncated",
  "bad_magic",
  "bad_version",
  "bad_flags",
  "bad_destination",
  /** The sender is not a configured peer's data address. */
  "not_peer",
  /** No receiver is registered for the channel (a session not running here, or not this node's). */
  "foreign",
  /** The channel is registered, but not for datagrams from this peer (another node feeds it). */
  "wrong_peer",
  /** Older than the anti-replay window, and not followed by the next number (which would resynchronise). */
  "replayed",
  /** Of another epoch, or beyond the window ahead, and not (yet) followed by the next number. */
  "unconfirmed",
  /** Of an epoch more than MAX_EPOCH_AHEAD_S ahead of the receiver's clock. */
  "future_epoch",
  /** A sequence number inside the window that was already received. */
  "duplicate",
  /** Too many (peer, channel) pairs are tracked already. */
  "table_full",
] as const;
export type LinkReject = typeof LINK_REJECTS[number];
export type HeaderVerdict =
  | "ok"
  | "truncated"
  | "bad_magic"
  | "bad_version"
  | "bad_flags"
  | "bad_destination";

/**
 * The channel id of (session, ap, input): 32-bit FNV-1a over the names' UTF-16 code units, each name ended by a
 * zero, so that ("ab", "c") and ("a", "bc") differ.
 */
export function channelId(session: string, ap: string, input: string): number {
  let h = 0x811c9dc5;
  for (const s of [session, ap, input]) {
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      h = Math.imul(h ^ (c & 0xff), 0x01000193);
      h = Math.imul(h ^ (c >>> 8), 0x01000193);
    }
    h = Math.imul(h ^ 0, 0x01000193);
  }
  return h >>> 0;
}

/** An `encodeDestination` argument that is not an IP address and port. */
export class LinkDestinationError extends Error {
  override name = "LinkDestinationError";
  constructor(readonly destination: HostPort) {
    super(
      `Cannot encode link destination "${destination.host}:${destination.port}": not an IP address and port`,
    );
  }
}

/** The destination field's bytes (address, then port), made once per sender; throws LinkDestinationError. */
export function encodeDestination(to: HostPort): Uint8Array {
  if (!Number.isInteger(to.port) || to.port < 0 || to.port > 65535) throw new LinkDestinationError(to);
  let addr: Uint8Array;
  if (isIPv4(to.host)) addr = Uint8Array.from(to.host.split(".").map(Number));
  else if (isIPv6(to.host)) addr = ipv6Bytes(to.host);
  else throw new LinkDestinationError(to);
  const out = new Uint8Array(addr.length + 2);
  out.set(addr);
  out[addr.length] = to.port >>> 8;
  out[addr.length + 1] = to.port & 0xff;
  return out;
}

/** What a sender writes; one object, reused for every datagram. */
export interface LinkHeaderFields {
  channel: number;
  epoch: number;
  sequence: number;
  /** µs; written modulo 2^32. */
  sentUs: number;
  rtcp: boolean;
  /** From `encodeDestination`, or null. */
  destination: Uint8Array | null;
}

/** The header's length for `destination` (from `encodeDestination`, or null). */
export function linkHeaderLength(destination: Uint8Array | null): number {
  return LINK_HEADER_BYTES + (destination ? destination.length : 0);
}

/**
 * Writes the header at `offset` of `buf` (the caller's: nothing is allocated); returns its length. The caller makes
 * room: `linkHeaderLength(h.destination)` bytes.
 */
export function writeLinkHeader(buf: Uint8Array, offset: number, h: LinkHeaderFields): number {
  const d = h.destination;
  buf[offset] = LINK_MAGIC;
  buf[offset + 1] = LINK_VERSION;
  buf[offset + 2] = (h.rtcp ? FLAG_RTCP : 0) | (d ? FLAG_DESTINATION : 0);
  buf[offset + 3] = d ? d.length : 0;
  put32(buf, offset + 4, h.channel);
  put32(buf, offset + 8, h.epoch);
  put32(buf, offset + 12, h.sequence);
  put32(buf, offset + 16, h.sentUs % 2 ** 32);
  if (d) buf.set(d, offset + LINK_HEADER_BYTES);
  return LINK_HEADER_BYTES + (d ? d.length : 0);
}

/** A parsed header; one object, reused for every datagram (its fields are the last datagram's). */
export class ParsedLinkHeader {
  channel = 0;
  epoch = 0;
  sequence = 0;
  sentUs = 0;
  rtcp = false;
  /** Where the payload starts. */
  length = 0;
  /** 0, 6 or 18. */
  destinationLength = 0;

  /** The final destination of datagram `d` (the one just parsed), or null; allocates, so call it only when needed. */
  destination(d: Uint8Array): HostPort | null {
    const n = this.destinationLength;
    if (n === 0) return null;
    const at = LINK_HEADER_BYTES;
    const addr = d.subarray(at, at + n - 2);
    const host = n === 6 ? Array.from(addr).join(".") : ipv6Text(addr);
    return { host, port: (d[at + n - 2] << 8) | d[at + n - 1] };
  }
}

/**
 * Reads the header of the datagram at `at` of `d` (up to `end`: by default the whole of `d`) into `out`; "ok" or why
 * the datagram is refused. Never throws, never allocates.
 */
export function parseLinkHeader(d: Uint8Array, out: ParsedLinkHeader, at = 0, end = d.length): HeaderVerdict {
  const n = end - at;
  if (n < 2) return n === 1 && d[at] !== LINK_MAGIC ? "bad_magic" : "truncated";
  if (d[at] !== LINK_MAGIC) return "bad_magic";
  if (d[at + 1] !== LINK_VERSION) return "bad_version";
  if (n < LINK_HEADER_BYTES) return "truncated";
  const flags = d[at + 2];
  if (flags & ~KNOWN_FLAGS) return "bad_flags";
  const dlen = d[at + 3];
  if ((flags & FLAG_DESTINATION) ? dlen !== 6 && dlen !== 18 : dlen !== 0) return "bad_destination";
  if (n < LINK_HEADER_BYTES + dlen) return "truncated";
  out.rtcp = (flags & FLAG_RTCP) !== 0;
  out.destinationLength = dlen;
  out.channel = get32(d, at + 4);
  out.epoch = get32(d, at + 8);
  out.sequence = get32(d, at + 12);
  out.sentUs = get32(d, at + 16);
  out.length = LINK_HEADER_BYTES + dlen;
  return "ok";
}

/** What the anti-replay window made of a sequence number. */
export type SequenceVerdict =
  | "next"
  | "gap"
  | "late"
  | "duplicate"
  | "replayed"
  | "restart"
  | "resync"
  | "unconfirmed"
  | "future_epoch";

/** Verdicts whose datagram is not delivered. */
export function refused(v: SequenceVerdict): v is "duplicate" | "replayed" | "unconfirmed" | "future_epoch" {
  return v === "duplicate" || v === "replayed" || v === "unconfirmed" || v === "future_epoch";
}

/**
 * The largest forward jump, confirmed by the next number, whose skipped numbers are counted as lost (RFC 3550's
 * MAX_DROPOUT, scaled to 32-bit numbers); a longer one is taken as a restart of the numbering and counts no loss.
 */
export const MAX_DROPOUT = 65_536;
/** Epochs more than this many seconds ahead of the receiver's clock are refused (an injected or broken clock). */
export const MAX_EPOCH_AHEAD_S = 3600;

/**
 * One (sending port, channel)'s sequence numbers as a receiver sees them: the highest so far, which of the
 * REPLAY_WINDOW below it arrived, and the loss and reordering that follow. Loss is counted when a gap opens and
 * taken back when a late datagram fills it; a datagram too late for the window stays lost (and is refused).
 *
 * The window resynchronises the way RFC 3550 (appendix A.1) does, so that no single datagram, spoofed or stray, can
 * move it: a new epoch (a restart, one in the same second, or a clock stepped back) or a jump of the numbers beyond
 * the window either way is refused, and taken only when the very next datagram of the channel follows it in sequence
 * (then the window starts again from that one). Anything in order in between cancels the pending jump. Loss grows
 * only by numbers skipped inside the window, or by a confirmed jump ahead of at most MAX_DROPOUT within one epoch.
 * This guards against accidents and lone injected datagrams, not against a sender that can forge a whole stream of
 * the peer's address (the link carries no authentication).
 */
export class ReplayWindow {
  #epoch = -1;
  #top = 0;
  /** The lowest number of the epoch seen: loss is counted from it (a late one below it lowers it). */
  #floor = 0;
  /** A jump waiting for confirmation: the epoch and number that would confirm it (-1: none pending). */
  #badEpoch = -1;
  #badSeq = 0;
  readonly #bits = new Uint32Array(REPLAY_WINDOW / 32);
  lost = 0;
  reordered = 0;
  duplicates = 0;
  /** Datagrams accepted (next, gap, late, restart or resync). */
  accepted = 0;

  /**
   * Records `sequence` of `epoch`; the verdict says whether to deliver it (see `refused`). `nowS`, the receiver's
   * clock in Unix seconds, refuses epochs more than MAX_EPOCH_AHEAD_S ahead of it.
   */
  check(epoch: number, sequence: number, nowS = Infinity): SequenceVerdict {
    if (epoch > nowS + MAX_EPOCH_AHEAD_S) return "future_epoch";
    if (this.#epoch < 0) {
      this.#start(epoch, sequence);
      return "next";
    }
    if (epoch !== this.#epoch) {
      if (!this.#confirms(epoch, sequence)) return "unconfirmed";
      this.#start(epoch, sequence);
      return "restart";
    }
    // The distance from the highest seen, as a signed 32-bit number: wrapping sequence numbers compare right.
    const ahead = (sequence - this.#top) | 0;
    if (ahead >= REPLAY_WINDOW) {
      if (!this.#confirms(epoch, sequence)) return "unconfirmed";
      // The one before (refused as unconfirmed) arrived; those between the old top and it did not.
      if (ahead - 2 <= MAX_DROPOUT) this.lost += ahead - 2;
      this.#start(epoch, sequence);
      return "resync";
    }
    if (ahead > 0) {
      for (let s = 1; s <= ahead; s++) this.#clear((this.#top + s) >>> 0);
      this.#top = sequence;
      this.#set(sequence);
      this.lost += ahead - 1;
      this.accepted++;
      this.#badEpoch = -1;
      return ahead === 1 ? "next" : "gap";
    }
    if (ahead === 0) {
      this.duplicates++;
      return "duplicate";
    }
    if (-ahead >= REPLAY_WINDOW) {
      if (!this.#confirms(epoch, sequence)) return "replayed";
      this.#start(epoch, sequence);
      return "resync";
    }
    if (this.#has(sequence)) {
      this.duplicates++;
      return "duplicate";
    }
    this.#set(sequence);
    this.reordered++;
    const below = (this.#floor - sequence) | 0;
    if (below > 0) {
      // Before the first one seen: those between it and the first were lost too.
      this.lost += below - 1;
      this.#floor = sequence;
    } else this.lost--;
    this.accepted++;
    return "late";
  }

  /** Whether (epoch, sequence) follows the pending jump; if not, it becomes the pending jump. */
  #confirms(epoch: number, sequence: number): boolean {
    if (epoch === this.#badEpoch && sequence === this.#badSeq) return true;
    this.#badEpoch = epoch;
    this.#badSeq = (sequence + 1) >>> 0;
    return false;
  }

  #start(epoch: number, sequence: number): void {
    this.#epoch = epoch;
    this.#badEpoch = -1;
    this.#bits.fill(0);
    this.#top = sequence;
    this.#floor = sequence;
    this.#set(sequence);
    this.accepted++;
  }

  #set(s: number): void {
    const bit = s % REPLAY_WINDOW;
    this.#bits[bit >>> 5] |= 1 << (bit & 31);
  }
  #clear(s: number): void {
    const bit = s % REPLAY_WINDOW;
    this.#bits[bit >>> 5] &= ~(1 << (bit & 31));
  }
  #has(s: number): boolean {
    const bit = s % REPLAY_WINDOW;
    return (this.#bits[bit >>> 5] & (1 << (bit & 31))) !== 0;
  }
}

/** The last DELAY_SAMPLES delays of a link or channel, for a median and a maximum in /status. */
export const DELAY_SAMPLES = 64;

export class DelayWindow {
  readonly #samples = new Float64Array(DELAY_SAMPLES);
  #n = 0;

  /** A delay from a header's `sentUs` and the receiver's clock (both µs); kept in µs. */
  add(sentUs: number, nowUs: number): void {
    // Both modulo 2^32: the signed difference is right while the delay is under 35 minutes either way.
    const delay = ((Math.floor(nowUs) % 2 ** 32) - sentUs) | 0;
    this.#samples[this.#n++ % DELAY_SAMPLES] = delay;
  }

  /** p50 and max in ms over the window, or nulls before any sample. */
  summary(): { p50: number | null; max: number | null } {
    const n = Math.min(this.#n, DELAY_SAMPLES);
    if (n === 0) return { p50: null, max: null };
    const sorted = this.#samples.slice(0, n).sort();
    return { p50: round3(sorted[(n - 1) >> 1] / 1000), max: round3(sorted[n - 1] / 1000) };
  }
}

function round3(v: number): number {
  return Math.round(v * 1000) / 1000;
}

function put32(b: Uint8Array, at: number, v: number): void {
  b[at] = v >>> 24;
  b[at + 1] = (v >>> 16) & 0xff;
  b[at + 2] = (v >>> 8) & 0xff;
  b[at + 3] = v & 0xff;
}

function get32(b: Uint8Array, at: number): number {
  return ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0;
}
