/**
 * Round-robin: eligible servers take equal turns, ignoring weight and load. The cursor walks the list and an
 * ineligible server is skipped without giving its turn to anyone twice: each eligible server is chosen exactly once
 * per walk of the list.
 */
import type { Picker, PickerKind, ServerView } from "./picker.ts";

export class RoundRobinPicker implements Picker {
  /** Index the next walk starts at. */
  #next = 0;

  pick(servers: readonly ServerView[], eligible: (i: number) => boolean): number {
    const n = servers.length;
    if (n === 0) return -1;
    const start = this.#next < n ? this.#next : 0;
    for (let step = 0; step < n; step++) {
      const i = start + step < n ? start + step : start + step - n;
      if (eligible(i)) {
        this.#next = i + 1;
        return i;
      }
    }
    return -1;
  }
}

export const roundRobin: PickerKind = {
  name: "roundrobin",
  description: "Equal turns among the eligible servers, in list order",
  create: () => new RoundRobinPicker(),
};
