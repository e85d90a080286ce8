/**
 * The one registry of this process's listening TCP sockets and bound UDP sockets, for a binary upgrade
 * (`edgenode --takeover PATH`, lib/takeover/): every opener of such a socket asks it first for a descriptor a
 * previous process handed over (same kind, same address) and then tells it what it holds, so the control socket can
 * hand every socket it can to the next process, and say of the others which and why.
 *
 * The registry is the process's, not an object passed down: the openers sit under roles and elements that know
 * nothing of upgrades (a relay opens its socket through lib/net/udp.ts), and sockets are opened on the main thread
 * only (workers adopt descriptors the main thread opened). A deliberate exception to "no module-level state", as
 * libc's library is (lib/net/libc.ts sharedLibc).
 */
import { formatHostPort, type HostPort, ipv6Bytes, ipv6Text, isIPv6 } from "./address.ts";

export type SocketKind = "tcp" | "udp";

/** A socket this process holds, as the control socket lists it. */
export interface HeldSocket {
  readonly kind: SocketKind;
  /** The bound address. */
  readonly addr: HostPort;
  /** The descriptor, or null where the engine keeps it to itself (see `reason`). */
  readonly fd: number | null;
  /** Why it cannot be passed (null: it can). */
  readonly reason: string | null;
}

/** A descriptor handed over by the previous process, waiting for an opener of its kind and address. */
export interface InheritedSocket {
  readonly kind: SocketKind;
  readonly addr: HostPort;
  readonly fd: number;
}

/** The key sockets are matched by: kind and address, the host as an opener spells it after normalising. */
export function socketKey(kind: SocketKind, addr: HostPort): string {
  const host = addr.host === "localhost"
    ? "127.0.0.1"
    : isIPv6(addr.host)
    ? ipv6Text(ipv6Bytes(addr.host))
    : addr.host.toLowerCase();
  return `${kind} ${formatHostPort({ host, port: addr.port })}`;
}

export class SocketRegistry {
  readonly #held = new Map<number, HeldSocket>();
  #next = 1;
  readonly #inherited = new Map<string, InheritedSocket[]>();
  #overlap = false;

  /**
   * Whether sockets that cannot be passed bind with SO_REUSEPORT, so that the next process can bind the same
   * address while this one still holds it (set when this process has a control socket, or takes over).
   */
  get overlap(): boolean {
    return this.#overlap;
  }
  set overlap(on: boolean) {
    this.#overlap = on;
  }

  /**
   * Records a socket this process holds; returns what forgets it (call it before closing the descriptor). A socket
   * bound to a port the kernel chose (asked for port 0) is not listed: no config names its address.
   */
  hold(kind: SocketKind, addr: HostPort, fd: number | null, reason: string | null = null): () => void {
    if (addr.port === 0) return () => {};
    const id = this.#next++;
    this.#held.set(id, Object.freeze({ kind, addr: { ...addr }, fd, reason }));
    return () => void this.#held.delete(id);
  }

  /** Everything held, in the order it was opened. */
  held(): HeldSocket[] {
    return [...this.#held.values()];
  }

  /** Descriptors the previous process handed over, for `take` to give to the openers. */
  inherit(sockets: readonly InheritedSocket[]): void {
    for (const s of sockets) {
      const key = socketKey(s.kind, s.addr);
      const list = this.#inherited.get(key) ?? [];
      list.push({ kind: s.kind, addr: { ...s.addr }, fd: s.fd });
      this.#inherited.set(key, list);
    }
  }

  /** An inherited descriptor of this kind bound to `addr`, taken out of the registry (the caller owns it now). */
  take(kind: SocketKind, addr: HostPort): number | null {
    if (addr.port === 0) return null;
    const key = socketKey(kind, addr);
    const list = this.#inherited.get(key);
    const s = list?.shift();
    if (list && !list.length) this.#inherited.delete(key);
    return s ? s.fd : null;
  }

  /** Inherited descriptors no opener asked for, taken out of the registry: the caller closes and lists them. */
  unclaimed(): InheritedSocket[] {
    const all = [...this.#inherited.values()].flat();
    this.#inherited.clear();
    return all;
  }
}

let processRegistry: SocketRegistry | undefined;

/** This process's registry (made on first use). */
export function processSockets(): SocketRegistry {
  return processRegistry ??= new SocketRegistry();
}
