/**
 * Source-prefix allow-lists for data ports (relay listen, reflector data, DIPRONN_INPUT): a datagram whose sender
 * falls in none of the prefixes is dropped by the port that holds the list. Pure; no sockets are touched here.
 *
 * An empty list allows every source, which is the default of every `allow_sources` key. IPv4-mapped IPv6 senders
 * (`::ffff:a.b.c.d`, what a dual-stack socket reports) are matched as their IPv4 address, so "10.0.0.0/8" covers
 * them too; an IPv4-mapped prefix of /96 or longer is likewise read as the IPv4 prefix it maps.
 */
import { ipv6Bytes, ipv6Text, isIPv4, isIPv6 } from "./address.ts";

/** An `allow_sources` entry that is not an address or CIDR prefix. */
export class AllowListError extends Error {
  override name = "AllowListError";
  constructor(readonly entry: string, detail: string) {
    super(`Cannot read source prefix "${entry}": ${detail}`);
  }
}

/** One prefix: the address bytes (4 or 16) and how many leading bits must match. */
interface Prefix {
  readonly bytes: Uint8Array;
  readonly bits: number;
}

/** Verdicts remembered per sender text; a port sees few distinct senders, and the map is cleared when full. */
const CACHE_LIMIT = 4096;

export class SourceAllowList {
  /** Lets every source in (the default of every `allow_sources` key). */
  static readonly ANY: SourceAllowList = new SourceAllowList([], [], []);

  readonly #v4: readonly Prefix[];
  readonly #v6: readonly Prefix[];
  readonly #verdicts = new Map<string, boolean>();

  private constructor(
    readonly prefixes: readonly string[],
    v4: readonly Prefix[],
    v6: readonly Prefix[],
  ) {
    this.#v4 = v4;
    this.#v6 = v6;
  }

  /**
   * Parses CIDR prefixes ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7" = /32, "::1" = /128); an empty list allows
   * all. Throws AllowListError on the first bad entry. Host bits set below the prefix length are refused: a typo
   * such as "10.1.2.3/8" would otherwise silently allow far more than was meant.
   */
  static parse(prefixes: readonly string[]): SourceAllowList {
    if (prefixes.length === 0) return SourceAllowList.ANY;
    const v4: Prefix[] = [];
    const v6: Prefix[] = [];
    for (const entry of prefixes) {
      const p = parsePrefix(entry);
      (p.bytes.length === 4 ? v4 : v6).push(p);
    }
    return new SourceAllowList(Object.freeze([...prefixes]), v4, v6);
  }

  /** True when every source is let in. */
  get allowsAll(): boolean {
    return this.prefixes.length === 0;
  }

  /** Whether a datagram from `host` (IPv4 text, IPv6 text, or IPv4-mapped ::ffff:a.b.c.d) is let in. */
  allows(host: string): boolean {
    if (this.prefixes.length === 0) return true;
    const known = this.#verdicts.get(host);
    if (known !== undefined) return known;
    const verdict = this.#decide(host);
    if (this.#verdicts.size >= CACHE_LIMIT) this.#verdicts.clear();
    this.#verdicts.set(host, verdict);
    return verdict;
  }

  #decide(host: string): boolean {
    const bytes = addressBytes(host);
    if (!bytes) return false;
    const list = bytes.length === 4 ? this.#v4 : this.#v6;
    return list.some((p) => matches(p, bytes));
  }
}

/** The bytes of an address (4 for IPv4 and IPv4-mapped IPv6, 16 for other IPv6), or null for anything else. */
function addressBytes(host: string): Uint8Array | null {
  if (isIPv4(host)) return new Uint8Array(host.split(".").map(Number));
  if (!isIPv6(host)) return null;
  const b = ipv6Bytes(host);
  return isMapped(b) ? b.slice(12) : b;
}

function isMapped(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

function parsePrefix(entry: string): Prefix {
  const text = entry.trim();
  const slash = text.indexOf("/");
  const addr = slash < 0 ? text : text.slice(0, slash);
  let bytes: Uint8Array;
  if (isIPv4(addr)) bytes = new Uint8Array(addr.split(".").map(Number));
  else if (isIPv6(addr)) bytes = ipv6Bytes(addr);
  else throw new AllowListError(entry, "not an IPv4 or IPv6 address (forms: 10.0.0.0/8, 2001:db8::/32, ::1)");
  const max = bytes.length * 8;
  let bits = max;
  if (slash >= 0) {
    const len = text.slice(slash + 1);
    if (!/^(0|[1-9][0-9]{0,2})$/.test(len) || Number(len) > max) {
      throw new AllowListError(entry, `prefix length must be 0..${max}`);
    }
    bits = Number(len);
  }
  if (bytes.length === 16 && isMapped(bytes) && bits >= 96) {
    bytes = bytes.slice(12);
    bits -= 96;
  }
  const p = { bytes, bits };
  if (!matches(p, bytes, true)) {
    throw new AllowListError(entry, `host bits are set below /${bits} (did you mean ${networkText(p)}?)`);
  }
  return p;
}

/** Whether `addr` lies in `p`; with `strict`, whether `addr` has no bits set past the prefix length. */
function matches(p: Prefix, addr: Uint8Array, strict = false): boolean {
  const full = p.bits >> 3;
  for (let i = 0; i < full; i++) if (!strict && addr[i] !== p.bytes[i]) return false;
  const rest = p.bits & 7;
  if (strict) {
    if (rest && (addr[full] & (0xff >> rest)) !== 0) return false;
    for (let i = full + (rest ? 1 : 0); i < addr.length; i++) if (addr[i] !== 0) return false;
    return true;
  }
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (addr[full] & mask) === (p.bytes[full] & mask);
}

/** The prefix with its host bits cleared, for the hint in an error message. */
function networkText(p: Prefix): string {
  const out = new Uint8Array(p.bytes.length);
  const full = p.bits >> 3;
  out.set(p.bytes.subarray(0, full));
  const rest = p.bits & 7;
  if (rest) out[full] = p.bytes[full] & ((0xff << (8 - rest)) & 0xff);
  return `${out.length === 4 ? out.join(".") : ipv6Text(out)}/${p.bits}`;
}
