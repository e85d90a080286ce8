/**
 * Least-load, by what the servers' agents report. The rule, in order:
 * 1. the highest idle capacity (0..100, the agent's percentage) wins: the agent measures the box as a whole, so its
 *    figure already counts the connections we send there and any load from elsewhere;
 * 2. among equal capacities, the lowest (active + 1) / weight wins, as in `leastconn`, so servers without agents
 *    (all at 100) are spread by connection count relative to their size;
 * 3. remaining ties go to the first server at or after a rotating cursor.
 * The weight is not multiplied into the capacity: it already carries the agent's percentage, so that would count
 * the same report twice. A capacity only changes when an agent reports, so between two polls new connections all go
 * to the idlest server; the poll interval bounds how long that lasts.
 */
import type { Picker, PickerKind, ServerView } from "./picker.ts";

export class LeastLoadPicker implements Picker {
  /** Where the tie-breaking scan starts; moves past each chosen server. */
  #next = 0;

  pick(servers: readonly ServerView[], eligible: (i: number) => boolean): number {
    const n = servers.length;
    const start = this.#next < n ? this.#next : 0;
    let best = -1;
    let bestCapacity = -Infinity;
    let bestBusy = Infinity;
    for (let step = 0; step < n; step++) {
      const i = start + step < n ? start + step : start + step - n;
      const { weight, capacity } = servers[i];
      if (!(weight > 0) || !eligible(i)) continue;
      const busy = (servers[i].active + 1) / weight;
      if (best < 0 || capacity > bestCapacity || (capacity === bestCapacity && busy < bestBusy)) {
        best = i;
        bestCapacity = capacity;
        bestBusy = busy;
      }
    }
    if (best >= 0) this.#next = best + 1;
    return best;
  }
}

export const leastLoad: PickerKind = {
  name: "leastload",
  description: "Highest idle capacity reported by the agents, then fewest connections relative to weight",
  create: () => new LeastLoadPicker(),
};
