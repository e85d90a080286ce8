/**
 * Least-connections, weighted: the server with the lowest (active + 1) / weight wins, that is the one least busy
 * relative to its size once it has taken this connection (HAProxy's `leastconn` key). Counting the new connection
 * makes the heavier server win among idle ones instead of a plain index order. Ties go to the first server at or
 * after a rotating cursor, so equal servers take turns rather than index 0 always winning.
 */
import type { Picker, PickerKind, ServerView } from "./picker.ts";

export class LeastConnPicker implements Picker {
  /** Where the tie-breaking scan starts; moves past each chosen server. */
  #next = 0;

  pick(servers: readonly ServerView[], eligible: (i: number) => boolean): number {
    const n = servers.length;
    const start = this.#next < n ? this.#next : 0;
    let best = -1;
    let bestScore = Infinity;
    for (let step = 0; step < n; step++) {
      const i = start + step < n ? start + step : start + step - n;
      const { weight } = servers[i];
      if (!(weight > 0) || !eligible(i)) continue;
      const score = (servers[i].active + 1) / weight;
      if (best < 0 || score < bestScore) {
        best = i;
        bestScore = score;
      }
    }
    if (best >= 0) this.#next = best + 1;
    return best;
  }
}

export const leastConn: PickerKind = {
  name: "leastconn",
  description: "Fewest open connections relative to weight; equal servers take turns",
  create: () => new LeastConnPicker(),
};
