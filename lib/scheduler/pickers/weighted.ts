/**
 * Smooth weighted round-robin, the way nginx does it. On each pick every eligible server's running score grows by
 * its weight; the highest score wins and pays back the sum of the weights it competed against. Over any window a
 * server gets its share of turns, and the turns interleave (weights 5:1:1 give a a b a c a a, not a a a a a b c).
 * Weights are read on every pick, so changes at runtime (operator, agent percentage) apply from the next connection.
 */
import type { Picker, PickerKind, ServerView } from "./picker.ts";

export class WeightedPicker implements Picker {
  /** Running score per server index; resized (and reset) only when the list changes length. */
  #current = new Float64Array(0);

  pick(servers: readonly ServerView[], eligible: (i: number) => boolean): number {
    const n = servers.length;
    // A new list length means a different set of servers: scores earned under the old one mean nothing now.
    if (this.#current.length !== n) this.#current = new Float64Array(n);
    const current = this.#current;
    let total = 0;
    let best = -1;
    for (let i = 0; i < n; i++) {
      const weight = servers[i].weight;
      if (!(weight > 0) || !eligible(i)) continue;
      current[i] += weight;
      total += weight;
      if (best < 0 || current[i] > current[best]) best = i;
    }
    if (best >= 0) current[best] -= total;
    return best;
  }
}

export const weighted: PickerKind = {
  name: "weighted",
  description: "Smooth weighted round-robin (as nginx): turns in proportion to weight, interleaved",
  create: () => new WeightedPicker(),
};
