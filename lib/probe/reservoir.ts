/**
 * A bounded, uniform sample of a stream of numbers (reservoir sampling, Algorithm R): the first `capacity` values
 * are kept, after that each new value replaces a random kept one with probability capacity / seen, so every value
 * seen is equally likely to stand in the sample. Percentiles of the sample estimate those of all values in constant
 * memory. The store grows as values come, up to `capacity`. Pure apart from `random` (injectable for tests).
 */
export class Reservoir {
  #values: Float64Array;
  #count = 0;
  #seen = 0;

  constructor(readonly capacity: number, readonly random: () => number = Math.random) {
    this.#values = new Float64Array(Math.min(capacity, 1024));
  }

  add(value: number): void {
    this.#seen++;
    if (this.#count < this.capacity) {
      if (this.#count === this.#values.length) {
        const grown = new Float64Array(Math.min(this.capacity, this.#values.length * 2));
        grown.set(this.#values);
        this.#values = grown;
      }
      this.#values[this.#count++] = value;
      return;
    }
    const j = Math.floor(this.random() * this.#seen);
    if (j < this.capacity) this.#values[j] = value;
  }

  /** Values offered so far (not only the kept ones). */
  get seen(): number {
    return this.#seen;
  }

  /** The kept values in ascending order, `map`ped first when given (a new array). */
  sorted(map?: (v: number) => number): Float64Array {
    const out = this.#values.slice(0, this.#count);
    if (map) { for (let i = 0; i < out.length; i++) out[i] = map(out[i]); }
    return out.sort();
  }
}

/** The value at percentile `p` (0..100) of ascending `sorted` (nearest rank, as the probe has always reported). */
export function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}
