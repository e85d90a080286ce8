/**
 * The seed report's maximal throughputs as printed (dipronn-synchronous-infrastructure, section 5.1), for
 * `probe sweep --compare report`: Tables 4, 5, 6 and 8, in Mb/s per packet size (100, 500, 1000 and 1450 B).
 * Table 7 has no figures (it is the Brno node's bandwidths as multiples of x) and is not here.
 */

/** A table of maximal throughputs: a row per packet size, a column per path, receiver or stream count. */
export interface ThroughputTable {
  /** Short: shown above the columns (the unit, Mb/s, is the sweep table's). */
  readonly title: string;
  readonly columns: readonly string[];
  /** Packet size (bytes) -> one value per column, in Mb/s (null: not measured). */
  readonly rows: ReadonlyMap<number, readonly (number | null)[]>;
}

const rows = (values: Record<number, number[]>) =>
  new Map(Object.entries(values).map(([size, v]) => [Number(size), v] as const));

export const REPORT_TABLES: readonly ThroughputTable[] = [
  {
    title: "Report Table 4 (between dom0s)",
    columns: ["Br-Pra", "Br-Lib", "Pra-Pil", "Lib-Pil"],
    rows: rows({
      100: [159, 124, 169, 134],
      500: [597, 582, 603, 599],
      1000: [923, 889, 929, 907],
      1450: [937, 918, 944, 924],
    }),
  },
  {
    title: "Report Table 5 (between domUs)",
    columns: ["Br-Pra", "Br-Lib", "Pra-Pil", "Lib-Pil"],
    rows: rows({
      100: [146, 108, 162, 121],
      500: [577, 578, 592, 586],
      1000: [901, 866, 916, 891],
      1450: [923, 899, 925, 903],
    }),
  },
  {
    title: "Report Table 6 (session, network-bound)",
    columns: ["Prague", "Liberec", "Pil from Pra", "Pil from Lib"],
    rows: rows({
      100: [74.5, 62, 74.5, 62],
      500: [298.5, 291, 298.5, 291],
      1000: [461.5, 444.5, 461.5, 444.5],
      1450: [468.5, 459, 468.5, 459],
    }),
  },
  {
    title: "Report Table 8 (Brno node, Xen streams)",
    columns: ["1 stream", "2 streams", "3 streams", "4 streams"],
    rows: rows({
      100: [86.5, 64.5, 44.2, 34.1],
      500: [398.4, 291.1, 218.7, 163.0],
      1000: [778.2, 407.9, 324.0, 275.4],
      1450: [828.8, 460.1, 411.1, 365.1],
    }),
  },
];
