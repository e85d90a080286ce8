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

/**
 * Some datagrams of another batch, by index (those a port lets in): a view, valid as long as the batch it selects
 * from. The index array is the caller's and is reused from one batch to the next.
 */
export class SelectedBatch implements Batch {
  constructor(
    readonly batch: Batch,
    readonly picked: Int32Array,
    readonly count: number,
  ) {}
  data(i: number): Uint8Array {
    return this.batch.data(this.picked[i]);
  }
  length(i: number): number {
    return this.batch.length(this.picked[i]);
  }
  from(i: number): Endpoint {
    return this.batch.from(this.picked[i]);
  }
  truncated(i: number): boolean {
    return this.batch.truncated(this.picked[i]);
  }
  arrivalUs(i: number): number {
    return this.batch.arrivalUs?.(this.picked[i]) ?? NaN;
  }
}
