/** A batch made from arrays, for elements that create datagrams themselves (the player) and for tests. */
import type { Batch, Endpoint } from "../net/udp.ts";

export class ArrayBatch implements Batch {
  constructor(
    readonly items: readonly Uint8Array[],
    readonly senders: readonly Endpoint[],
  ) {}
  get count(): number {
    return this.items.length;
  }
  data(i: number): Uint8Array {
    return this.items[i];
  }
  length(i: number): number {
    return this.items[i].length;
  }
  from(i: number): Endpoint {
    return this.senders[i];
  }
  truncated(_i: number): boolean {
    return false;
  }
}
