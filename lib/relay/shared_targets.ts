/**
 * A participant list that the main thread rewrites and a forwarding thread reads between batches, in shared memory,
 * with the counters the thread keeps for each participant.
 *
 * - The list is JSON in a byte area guarded by a sequence number (a seqlock): odd while the writer is at it. The
 *   reader copies the bytes and keeps them only if the sequence was even and unchanged across the copy; otherwise it
 *   keeps sending to the list it had and looks again at the next batch.
 * - Each participant has a slot for its whole stay; the thread adds what it sent to (and what the kernel refused
 *   for) each participant into that slot's cells, and only the thread writes them. A slot that falls free goes to
 *   the back of the free list, so it is taken again only after every other free slot: by then the thread has long
 *   moved on to a list without its old holder. The writer notes a slot's counts when it hands it out and reports
 *   counts from there.
 */
import type { Endpoint } from "../net/udp.ts";

/** What a forwarding thread is given: the shared memory of one SharedTargets. */
export interface SharedTargetsMemory {
  /** Int32: [0] sequence (odd while written), [1] byte length of the list. */
  readonly header: SharedArrayBuffer;
  /** The list: JSON of `{ host, port, slot }[]`. */
  readonly list: SharedArrayBuffer;
  /** Float64 per slot: datagrams sent, and datagrams refused. */
  readonly sent: SharedArrayBuffer;
  readonly dropped: SharedArrayBuffer;
}

interface Entry extends Endpoint {
  readonly slot: number;
}

/** Bytes of JSON one entry may take: "[" + {"host":"<45 chars of IPv6>","port":65535,"slot":99999} + ",". */
const ENTRY_BYTES = 96;

/** The main thread's side: hands out slots, writes the list, reads the counts. */
export class SharedTargets {
  readonly memory: SharedTargetsMemory;
  readonly #header: Int32Array;
  readonly #list: Uint8Array;
  readonly #sent: Float64Array;
  readonly #dropped: Float64Array;
  /** key -> [slot, sent and dropped when the slot was handed out]. */
  readonly #slots = new Map<string, [number, number, number]>();
  readonly #free: number[];
  readonly #encoder = new TextEncoder();

  /** Room for `capacity` participants at once (and as many slots again, so that freed ones rest before reuse). */
  constructor(readonly capacity: number) {
    const slots = capacity * 2;
    this.memory = {
      header: new SharedArrayBuffer(8),
      list: new SharedArrayBuffer(capacity * ENTRY_BYTES + 2),
      sent: new SharedArrayBuffer(slots * 8),
      dropped: new SharedArrayBuffer(slots * 8),
    };
    this.#header = new Int32Array(this.memory.header);
    this.#list = new Uint8Array(this.memory.list);
    this.#sent = new Float64Array(this.memory.sent);
    this.#dropped = new Float64Array(this.memory.dropped);
    this.#free = Array.from({ length: slots }, (_, i) => i);
  }

  /**
   * The participants from now on, by key ("IP:PORT" as joined) and the address to send to. Throws, changing
   * nothing, when there are more than `capacity`.
   */
  set(participants: ReadonlyMap<string, Endpoint>): void {
    if (participants.size > this.capacity) {
      throw new RangeError(`${participants.size} participants, room for ${this.capacity}`);
    }
    for (const [key, [slot]] of this.#slots) {
      if (participants.has(key)) continue;
      this.#slots.delete(key);
      this.#free.push(slot);
    }
    const entries: Entry[] = [];
    for (const [key, ep] of participants) {
      let held = this.#slots.get(key);
      if (!held) {
        const slot = this.#free.shift()!;
        held = [slot, this.#sent[slot], this.#dropped[slot]];
        this.#slots.set(key, held);
      }
      entries.push({ host: ep.host, port: ep.port, slot: held[0] });
    }
    const bytes = this.#encoder.encode(JSON.stringify(entries));
    Atomics.add(this.#header, 0, 1); // odd: being written
    this.#list.set(bytes);
    Atomics.store(this.#header, 1, bytes.length);
    Atomics.add(this.#header, 0, 1); // even: complete
  }

  /** What the thread sent to (and the kernel refused for) participant `key` during its current stay. */
  counts(key: string): { sent: number; dropped: number } | undefined {
    const held = this.#slots.get(key);
    if (!held) return undefined;
    const [slot, sent, dropped] = held;
    return { sent: this.#sent[slot] - sent, dropped: this.#dropped[slot] - dropped };
  }
}

/** The forwarding thread's side: the current list, when it has changed, and the counting into slots. */
export class SharedTargetsReader {
  readonly #header: Int32Array;
  readonly #list: Uint8Array;
  readonly #sent: Float64Array;
  readonly #dropped: Float64Array;
  readonly #decoder = new TextDecoder();
  #seen = 0;
  /** Slot of each endpoint of the list last taken. */
  slots: number[] = [];

  constructor(memory: SharedTargetsMemory) {
    this.#header = new Int32Array(memory.header);
    this.#list = new Uint8Array(memory.list);
    this.#sent = new Float64Array(memory.sent);
    this.#dropped = new Float64Array(memory.dropped);
  }

  /** The list when it changed since the last call and was read whole; null otherwise (keep the one you have). */
  changed(): Endpoint[] | null {
    const before = Atomics.load(this.#header, 0);
    if (before === this.#seen || before & 1) return null;
    const length = Atomics.load(this.#header, 1);
    const copy = this.#list.slice(0, length);
    if (Atomics.load(this.#header, 0) !== before) return null;
    const entries = JSON.parse(this.#decoder.decode(copy)) as Entry[];
    this.#seen = before;
    this.slots = entries.map((e) => e.slot);
    return entries.map((e) => ({ host: e.host, port: e.port }));
  }

  /** Adds per-endpoint counts (indexed as the list last taken) into the slots, and zeroes them. */
  credit(sent: Float64Array, dropped: Float64Array): void {
    const slots = this.slots;
    for (let j = 0; j < slots.length; j++) {
      if (sent[j]) {
        this.#sent[slots[j]] += sent[j];
        sent[j] = 0;
      }
      if (dropped[j]) {
        this.#dropped[slots[j]] += dropped[j];
        dropped[j] = 0;
      }
    }
  }
}
