/**
 * Clock rates the program itself tells: an AP that makes a stream (the transcoder) knows the rate of what it sends,
 * and every AP downstream of it until the stream is made afresh receives that rate. A syncer given the rate need not
 * measure it from arrivals, which a transcoder's start can mislead (lib/media/sync.ts). Pure: the session's APs in
 * data-flow order in, per AP the rates reaching its inputs out. Worked out over the whole session, so an AP on one
 * node learns the rates of a transcoder on another.
 */
import type { ApDecl } from "../dipronn/session.ts";
import type { ElementKind } from "./element.ts";

/** Per AP name: payload type -> Hz of what reaches its inputs. A type two upstreams give different rates is left out. */
export function upstreamClockRates(
  flow: readonly ApDecl[],
  kindOf: ReadonlyMap<string, ElementKind>,
  paramsOf: ReadonlyMap<string, Record<string, unknown>>,
): Map<string, ReadonlyMap<number, number>> {
  const into = new Map<string, Map<number, number>>();
  /** Payload types that reached an AP at two rates: unknown there and below. */
  const clash = new Map<string, Set<number>>();
  const none: ReadonlyMap<number, number> = new Map();
  for (const ap of flow) {
    const kind = kindOf.get(ap.name);
    const params = paramsOf.get(ap.name);
    const out = kind?.outputClockRates && params
      ? kind.outputClockRates(params as never)
      : into.get(ap.name) ?? none;
    for (const o of ap.outputs) {
      for (const t of o.targets) {
        if (t.kind !== "ap") continue;
        let rates = into.get(t.ap);
        if (!rates) into.set(t.ap, rates = new Map());
        let bad = clash.get(t.ap);
        for (const [pt, hz] of out) {
          if (bad?.has(pt)) continue;
          const had = rates.get(pt);
          if (had === undefined) rates.set(pt, hz);
          else if (had !== hz) {
            rates.delete(pt);
            if (!bad) clash.set(t.ap, bad = new Set());
            bad.add(pt);
          }
        }
      }
    }
  }
  return into;
}
