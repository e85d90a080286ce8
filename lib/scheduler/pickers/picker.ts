/**
 * The contract every server picker keeps. A service owns one picker, made by its kind's `create()`, and asks it for a
 * server once per connection attempt; a retry after a failed connect asks again with the failed server no longer
 * eligible. Pickers keep their state (rotation cursors, weights, hash rings) per instance, never per module, and do
 * not allocate per pick once the server list is stable, because a pick sits on the accept path.
 */

/** What a picker sees of a server; the array index is the server's stable id within its service. */
export interface ServerView {
  /** `host:port`, the server's identity (consistent hashing places it on the ring by this). */
  readonly key: string;
  /** Effective weight >= 0: the configured weight scaled by the agent's percentage. */
  readonly weight: number;
  /** Connections open now. */
  readonly active: number;
  /** Idle capacity 0..100 the server's agent reports; 100 when it has no agent or no report yet. */
  readonly capacity: number;
}

export interface Picker {
  /**
   * Index of the server for this connection, or -1 when none is eligible. `eligible(i)` is false for servers that
   * are down, draining, in maintenance, at maxconn, of weight 0, or already tried for this connection; a picker
   * never returns an index for which it is false. `client` is the client's IP address.
   */
  pick(servers: readonly ServerView[], eligible: (i: number) => boolean, client: string): number;
}

/** A named way of picking, registered in the picker registry; `create()` gives a picker with fresh state. */
export interface PickerKind {
  readonly name: string;
  readonly description: string;
  create(): Picker;
}
