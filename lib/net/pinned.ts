import type { Batch, Endpoint } from "./udp.ts";

/**
 * A batch whose datagrams lie in memory mapped into this process (a sandbox's shared memory), at native addresses the
 * node itself checked against that mapping: the fast socket sends them from where they lie, with no copy. The
 * addresses are valid while the call that hands the batch on lasts (the mapping outlives it); `data(i)` gives views
 * of the node's own copy (the memory's other side may change it at any time).
 */
export abstract class PinnedBatch implements Batch {
  abstract readonly count: number;
  abstract data(i: number): Uint8Array;
  abstract length(i: number): number;
  abstract from(i: number): Endpoint;
  abstract truncated(i: number): boolean;
  /** The native address of datagram `i`'s `length(i)` bytes. */
  abstract address(i: number): number;
}
