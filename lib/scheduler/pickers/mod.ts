/**
 * Server pickers: how a service chooses the real server for each new connection. One interface (`Picker`, made by a
 * registered `PickerKind`), five kinds: `roundrobin`, `weighted` (smooth weighted round-robin), `leastconn`,
 * `leastload` (by agent reports) and `sourcehash` (consistent hashing on the client address). Every kind passes the
 * same contract suite (tests/scheduler/pickers_contract.ts); each file documents its kind's rule.
 */
import { Registry } from "../../core/registry.ts";
import { leastConn } from "./least_conn.ts";
import { leastLoad } from "./least_load.ts";
import type { PickerKind } from "./picker.ts";
import { roundRobin } from "./round_robin.ts";
import { sourceHash } from "./source_hash.ts";
import { weighted } from "./weighted.ts";

export type { Picker, PickerKind, ServerView } from "./picker.ts";
export { roundRobin, RoundRobinPicker } from "./round_robin.ts";
export { weighted, WeightedPicker } from "./weighted.ts";
export { leastConn, LeastConnPicker } from "./least_conn.ts";
export { leastLoad, LeastLoadPicker } from "./least_load.ts";
export { sourceHash, type SourceHashOptions, SourceHashPicker } from "./source_hash.ts";

/** A fresh registry of every picker kind this build knows, by the name a service's `picker:` setting uses. */
export function builtinPickers(): Registry<PickerKind> {
  return new Registry<PickerKind>("picker", [roundRobin, weighted, leastConn, leastLoad, sourceHash]);
}
