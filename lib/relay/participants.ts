/**
 * The reflector's participant table and join protocol. Pure apart from the injected clock: messages in, replies
 * out, so every rule (nonce, keepalive, timeout, limits, deny list) is tested without sockets or sleeping.
 *
 * Protocol (text, one message per datagram, sent to the registration port; see README "Reflector join protocol"):
 *   client  -> "EDGENODE-JOIN" padded to at least 64 bytes
 *   server  -> "EDGENODE-CHALLENGE <nonce>"            (51 bytes: never more than the JOIN it answers)
 *   client  -> "EDGENODE-CONFIRM <nonce>"              (joins; repeat it as a keepalive)
 *   server  -> "EDGENODE-WELCOME <timeout seconds>"    (only to an address that proved it receives)
 *   client  -> "EDGENODE-LEAVE <nonce>"                (leaves at once)
 * The nonce is an HMAC of the address, port and a 30-second epoch under a per-process secret: no state is kept
 * for a JOIN, so forged JOINs from addresses that cannot answer fill nothing.
 */
import { createHmac, randomBytes } from "node:crypto";
import type { Clock } from "../core/clock.ts";
import { formatHostPort, ipv6Bytes, ipv6Text, isIPv4, isIPv6 } from "../net/address.ts";
import type { Endpoint } from "../net/udp.ts";

export const JOIN_MIN_BYTES = 64;
const EPOCH_MS = 30_000;
const enc = new TextEncoder();
const dec = new TextDecoder();

export const DENY_CLASSES = ["loopback", "multicast", "unspecified", "broadcast"] as const;
export type DenyClass = typeof DENY_CLASSES[number];

/** Which deny class an address falls in, or null. IPv4-mapped IPv6 counts as its IPv4 address. */
export function addressClass(host: string): DenyClass | null {
  let v4 = isIPv4(host) ? host : null;
  if (!v4 && isIPv6(host)) {
    const b = ipv6Bytes(host);
    if (b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) {
      v4 = `${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
    } else {
      if (b.every((x) => x === 0)) return "unspecified";
      if (b.subarray(0, 15).every((x) => x === 0) && b[15] === 1) return "loopback";
      if (b[0] === 0xff) return "multicast";
      return null;
    }
  }
  if (!v4) return null;
  const [a] = v4.split(".").map(Number);
  if (v4 === "0.0.0.0") return "unspecified";
  if (v4 === "255.255.255.255") return "broadcast";
  if (a === 127) return "loopback";
  if (a >= 224 && a <= 239) return "multicast";
  return null;
}

/**
 * The address a participant limit counts: an IPv4 address (IPv4-mapped IPv6 as its IPv4 address), or the /64 an
 * IPv6 address lies in, since one subscriber is routinely given a whole /64 and picks addresses in it at will.
 */
export function limitKey(host: string): string {
  if (!isIPv6(host)) return host;
  const b = ipv6Bytes(host);
  if (b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) {
    return `${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  }
  const head = new Uint8Array(16);
  head.set(b.subarray(0, 8));
  return `${ipv6Text(head)}/64`;
}

/** Nonce-checked messages (CONFIRM, LEAVE) taken from one address (/64) per second, by default. */
export const CONFIRM_RATE = 10;
/** Most addresses the confirm rate keeps count of in one second; beyond it new addresses wait for the next. */
const RATE_KEYS = 10_000;

export interface TableOptions {
  readonly clock: Clock;
  /** Silence after which a joined participant is dropped. */
  readonly timeoutMs: number;
  readonly maxParticipants: number;
  /** Most participants from one IP address (any port). */
  readonly maxPerAddress: number;
  /** Address classes that may join (the rest of DENY_CLASSES are refused). */
  readonly allow: readonly DenyClass[];
  /** HMAC key for nonces; a random one per table by default. */
  readonly secret?: Uint8Array;
  /** Only IPv4 participants (the reflector's sockets are IPv4 and cannot send to IPv6). */
  readonly ipv4Only?: boolean;
  /** Nonce-checked messages taken from one address (/64) per second (default CONFIRM_RATE). */
  readonly confirmRate?: number;
}

export type Origin = "join" | "config" | "api";

export interface Participant {
  readonly endpoint: Endpoint;
  readonly origin: Origin;
  readonly joinedAt: number;
  lastSeen: number;
}

/** What the table counts; the reflector publishes these. */
export interface TableStats {
  joins: number;
  challenges: number;
  confirms: number;
  leaves: number;
  expired: number;
  refused_limit: number;
  refused_denied: number;
  bad_nonce: number;
  malformed: number;
  /** CONFIRM and LEAVE messages over the per-address rate, dropped unchecked. */
  rate_limited: number;
}

/** A participant table's state for the table that replaces it (ParticipantTable.handOver). */
export interface TableHandOver {
  readonly secret: Uint8Array;
  readonly participants: readonly Participant[];
}

/** Why a participant may not be added: a deny class, a limit, or an address family its sockets cannot reach. */
export type Refusal = "denied" | "limit" | "family";

export class ParticipantTable {
  readonly stats: TableStats = {
    joins: 0,
    challenges: 0,
    confirms: 0,
    leaves: 0,
    expired: 0,
    refused_limit: 0,
    refused_denied: 0,
    bad_nonce: 0,
    malformed: 0,
    rate_limited: 0,
  };
  readonly #byKey = new Map<string, Participant>();
  /** Participants per address (an IPv6 /64 as one), kept with the table: a JOIN's limit check is one lookup. */
  readonly #perAddress = new Map<string, number>();
  readonly #secret: Uint8Array;
  /** Nonce-checked messages per address in the current second. */
  #rate = new Map<string, number>();
  #rateSecond = -1;
  /** Bumped on every change, so a user of `endpoints()` knows when to rebuild what it derived. */
  version = 0;

  #options: TableOptions;

  constructor(options: TableOptions) {
    this.#options = options;
    this.#secret = options.secret ?? randomBytes(32);
  }

  private get options(): TableOptions {
    return this.#options;
  }

  /**
   * New rules from a reload (the secret and clock stay, so joined participants' nonces stay good). They apply to
   * what comes next: a lowered limit refuses new participants until the table is under it and evicts nobody, a new
   * timeout counts from each participant's last keepalive. Only an address class no longer allowed is taken out
   * at once (it was let in by a rule that is gone); returns those participants.
   */
  reconfigure(options: Omit<TableOptions, "clock" | "secret">): Participant[] {
    this.#options = { ...options, clock: this.#options.clock, secret: this.#secret };
    const denied = this.list().filter((p) => {
      const cls = addressClass(p.endpoint.host);
      return cls !== null && !options.allow.includes(cls);
    });
    for (const p of denied) this.remove(p.endpoint);
    return denied;
  }

  /**
   * What a table that takes over from this one needs (a reflector replaced on the same registration address): the
   * nonce secret, so joined participants' keepalives stay good, and the participants that joined or were added over
   * the API (config participants come from the new config).
   */
  handOver(): TableHandOver {
    return {
      secret: this.#secret,
      participants: this.list().filter((p) => p.origin !== "config").map((p) => ({ ...p })),
    };
  }

  /**
   * Takes participants handed over (`handOver`) with their origin and times (one the table holds already, from the
   * new config, stays as it is); returns how many its rules refused.
   */
  takeOver(participants: readonly Participant[]): number {
    let refused = 0;
    for (const p of participants) {
      if (this.#byKey.has(formatHostPort(p.endpoint))) continue;
      if (this.refusal(p.endpoint)) {
        refused++;
        continue;
      }
      this.#put(p.endpoint, p.origin);
      const held = this.#byKey.get(formatHostPort(p.endpoint))!;
      this.#byKey.set(formatHostPort(p.endpoint), { ...held, joinedAt: p.joinedAt, lastSeen: p.lastSeen });
    }
    return refused;
  }

  /** The participant at `ep`, if any. */
  get(ep: Endpoint): Participant | undefined {
    return this.#byKey.get(formatHostPort(ep));
  }

  get size(): number {
    return this.#byKey.size;
  }

  endpoints(): Endpoint[] {
    return [...this.#byKey.values()].map((p) => p.endpoint);
  }

  list(): Participant[] {
    return [...this.#byKey.values()];
  }

  /** Why `ep` may not be added now, or null when it may. */
  refusal(ep: Endpoint): Refusal | null {
    if (this.options.ipv4Only && !isIPv4(ep.host)) return "family";
    const cls = addressClass(ep.host);
    if (cls && !this.options.allow.includes(cls)) return "denied";
    if (this.#byKey.has(formatHostPort(ep))) return null;
    if (this.#byKey.size >= this.options.maxParticipants) return "limit";
    return (this.#perAddress.get(limitKey(ep.host)) ?? 0) >= this.options.maxPerAddress ? "limit" : null;
  }

  /** Adds a participant that needs no join (from config or the API); returns why not when it cannot. */
  add(ep: Endpoint, origin: Exclude<Origin, "join">): Refusal | null {
    const why = this.refusal(ep);
    if (why) return why;
    this.#put(ep, origin);
    return null;
  }

  remove(ep: Endpoint): boolean {
    const removed = this.#byKey.delete(formatHostPort(ep));
    if (removed) {
      this.#forget(ep.host);
      this.version++;
    }
    return removed;
  }

  /** One participant of `host`'s address fewer. */
  #forget(host: string): void {
    const key = limitKey(host);
    const n = (this.#perAddress.get(key) ?? 0) - 1;
    if (n > 0) this.#perAddress.set(key, n);
    else this.#perAddress.delete(key);
  }

  /** Handles one datagram from the registration port; returns the reply to send back, if any. */
  onControl(data: Uint8Array, from: Endpoint): Uint8Array | null {
    const text = data.length <= 256 ? dec.decode(data) : "";
    if (text.startsWith("EDGENODE-JOIN")) {
      if (data.length < JOIN_MIN_BYTES || !/^EDGENODE-JOIN\s*$/.test(text.replace(/\0+$/, ""))) {
        this.stats.malformed++;
        return null;
      }
      this.stats.joins++;
      if (this.#refuse(from)) return null;
      this.stats.challenges++;
      return enc.encode(`EDGENODE-CHALLENGE ${this.#nonce(from, this.#epoch())}`);
    }
    const m = /^EDGENODE-(CONFIRM|LEAVE) ([0-9a-f]{32})$/.exec(text);
    if (!m) {
      this.stats.malformed++;
      return null;
    }
    // A participant's own keepalives are not rate-limited: a flood spoofed from its address must not cut it off.
    if (!this.#byKey.has(formatHostPort(from)) && !this.#takeRate(from.host)) {
      this.stats.rate_limited++;
      return null;
    }
    const epoch = this.#epoch();
    if (m[2] !== this.#nonce(from, epoch) && m[2] !== this.#nonce(from, epoch - 1)) {
      this.stats.bad_nonce++;
      return null;
    }
    const key = formatHostPort(from);
    if (m[1] === "LEAVE") {
      if (this.#byKey.get(key)?.origin === "join" && this.remove(from)) this.stats.leaves++;
      return null;
    }
    const known = this.#byKey.get(key);
    if (known) known.lastSeen = this.options.clock.now();
    else {
      if (this.#refuse(from)) return null;
      this.#put(from, "join");
    }
    this.stats.confirms++;
    return enc.encode(`EDGENODE-WELCOME ${Math.round(this.options.timeoutMs / 1000)}`);
  }

  /** Drops joined participants silent for longer than the timeout; config and API ones stay. */
  expire(): number {
    const now = this.options.clock.now();
    let dropped = 0;
    for (const [key, p] of this.#byKey) {
      if (p.origin === "join" && now - p.lastSeen > this.options.timeoutMs) {
        this.#byKey.delete(key);
        this.#forget(p.endpoint.host);
        dropped++;
      }
    }
    if (dropped) {
      this.version++;
      this.stats.expired += dropped;
    }
    return dropped;
  }

  /** Whether one more nonce-checked message from `host` fits this second's rate (fixed one-second windows). */
  #takeRate(host: string): boolean {
    const second = Math.floor(this.options.clock.now() / 1000);
    if (second !== this.#rateSecond) {
      this.#rateSecond = second;
      this.#rate = new Map();
    }
    const key = limitKey(host);
    const n = this.#rate.get(key) ?? 0;
    if (n >= (this.options.confirmRate ?? CONFIRM_RATE)) return false;
    // Full for this second: let it through uncounted (the HMAC check still applies) rather than refuse everyone.
    if (n === 0 && this.#rate.size >= RATE_KEYS) return true;
    this.#rate.set(key, n + 1);
    return true;
  }

  #refuse(from: Endpoint): boolean {
    const why = this.refusal(from);
    if (why === "denied" || why === "family") this.stats.refused_denied++;
    if (why === "limit") this.stats.refused_limit++;
    return why !== null;
  }

  #put(ep: Endpoint, origin: Origin): void {
    const now = this.options.clock.now();
    const at = formatHostPort(ep);
    if (!this.#byKey.has(at)) {
      const key = limitKey(ep.host);
      this.#perAddress.set(key, (this.#perAddress.get(key) ?? 0) + 1);
    }
    this.#byKey.set(at, {
      endpoint: { host: ep.host, port: ep.port },
      origin,
      joinedAt: now,
      lastSeen: now,
    });
    this.version++;
  }

  #epoch(): number {
    return Math.floor(this.options.clock.now() / EPOCH_MS);
  }

  #nonce(ep: Endpoint, epoch: number): string {
    return createHmac("sha256", this.#secret).update(`${formatHostPort(ep)}|${epoch}`).digest("hex").slice(
      0,
      32,
    );
  }
}
