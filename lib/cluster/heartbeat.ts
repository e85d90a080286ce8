/**
 * Heartbeats between nodes that hold parts of one session. Every `intervalMs` this node sends a heartbeat to each
 * watched peer; a peer is heard from when it answers one (a signed answer) or sends one. A watched peer not heard
 * from for `lossMs` is declared lost (once), and back when it is heard from again. With etcd, membership counts too
 * (`alive`): a peer whose lease expired is lost at the next round even if it was heard from lately, and it is not
 * back before it joins again. Time is the injected clock's.
 */
import type { Clock, TimerId } from "../core/clock.ts";

export interface HeartbeatOptions {
  readonly clock: Clock;
  readonly intervalMs: number;
  readonly lossMs: number;
  /** The peers to watch now (they hold parts of sessions with this node). */
  readonly watch: () => ReadonlySet<string>;
  /** Sends one heartbeat; resolves when the peer answered. */
  readonly send: (peer: string) => Promise<void>;
  readonly onLost: (peer: string) => void;
  readonly onBack: (peer: string) => void;
  /** The peer answered or sent a heartbeat (each time, lost or not). */
  readonly onHeard?: (peer: string) => void;
  /** False when the peer's membership is known to be gone (its etcd lease expired); absent: heartbeats alone. */
  readonly alive?: (peer: string) => boolean;
}

interface PeerState {
  lastSeen: number;
  lost: boolean;
  sent: number;
  answered: number;
  received: number;
}

export class Heartbeats {
  readonly #peers = new Map<string, PeerState>();
  #timer: TimerId | null = null;
  #stopped = false;

  constructor(private readonly o: HeartbeatOptions) {}

  start(): void {
    if (this.#timer !== null || this.#stopped) return;
    this.#timer = this.o.clock.setTimeout(() => this.#tick(), this.o.intervalMs);
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer !== null) this.o.clock.clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** A heartbeat from `peer` arrived (the route calls this). */
  received(peer: string): void {
    const s = this.#state(peer);
    s.received++;
    this.#heard(peer, s);
  }

  /** One round: send to every watched peer, then declare lost those silent too long. Tests call it directly. */
  tick(): void {
    const now = this.o.clock.now();
    const watched = this.o.watch();
    for (const peer of watched) {
      const s = this.#state(peer);
      s.sent++;
      this.o.send(peer).then(() => {
        s.answered++;
        this.#heard(peer, s);
      }, () => {});
    }
    for (const [peer, s] of this.#peers) {
      if (!watched.has(peer) && !s.lost) {
        // No longer shares a session with this node: forget it, so it starts afresh if it does again.
        this.#peers.delete(peer);
        continue;
      }
      if (!s.lost && (now - s.lastSeen > this.o.lossMs || this.o.alive?.(peer) === false)) {
        s.lost = true;
        this.o.onLost(peer);
      }
    }
  }

  status(): Record<string, unknown> {
    const now = this.o.clock.now();
    return Object.fromEntries(
      [...this.#peers].map(([peer, s]) => [peer, {
        state: s.lost ? "lost" : "alive",
        silent_ms: now - s.lastSeen,
        sent: s.sent,
        answered: s.answered,
        received: s.received,
      }]),
    );
  }

  isLost(peer: string): boolean {
    return this.#peers.get(peer)?.lost ?? false;
  }

  #tick(): void {
    this.#timer = null;
    if (this.#stopped) return;
    try {
      this.tick();
    } finally {
      if (!this.#stopped) this.#timer = this.o.clock.setTimeout(() => this.#tick(), this.o.intervalMs);
    }
  }

  #state(peer: string): PeerState {
    let s = this.#peers.get(peer);
    if (!s) {
      s = { lastSeen: this.o.clock.now(), lost: false, sent: 0, answered: 0, received: 0 };
      this.#peers.set(peer, s);
    }
    return s;
  }

  #heard(peer: string, s: PeerState): void {
    s.lastSeen = this.o.clock.now();
    this.o.onHeard?.(peer);
    if (s.lost && this.o.alive?.(peer) !== false) {
      s.lost = false;
      this.o.onBack(peer);
    }
  }
}
