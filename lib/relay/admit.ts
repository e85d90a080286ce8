/**
 * Which received datagrams a forwarding path sends on: never an empty one (it carries nothing, and a socket shut
 * for reading returns nothing but empty ones: forwarding them would send a flood to every target), only those
 * from an allowed source (`allow_sources`), and with a `valid` check only well-formed ones (RTP on a use_rtp path).
 * What is refused is counted by reason. Pure: used alike on the event loop and in a relay thread.
 */
import type { SourceAllowList } from "../net/allow.ts";
import type { Batch } from "../net/udp.ts";

/** Cells of a drop-count array (a Float64Array, in shared memory when a thread counts). */
export const DROP = { malformed: 0, empty: 1, denied: 2 } as const;
export const DROP_CELLS = 3;

export interface AdmitRules {
  readonly allow: SourceAllowList;
  readonly valid?: ((d: Uint8Array) => boolean) | null;
}

/** The batch itself when every datagram passes (no copy), else the ones that do; `drops` counts the others. */
export function admit(batch: Batch, rules: AdmitRules, drops: Float64Array): Batch | Uint8Array[] {
  const { allow, valid } = rules;
  const anySource = allow.allowsAll;
  let bad = -1;
  for (let i = 0; i < batch.count; i++) {
    if (refusal(batch, i, anySource, allow, valid) >= 0) {
      bad = i;
      break;
    }
  }
  if (bad < 0) return batch;
  const kept: Uint8Array[] = [];
  for (let i = 0; i < bad; i++) kept.push(batch.data(i));
  for (let i = bad; i < batch.count; i++) {
    const why = refusal(batch, i, anySource, allow, valid);
    if (why < 0) kept.push(batch.data(i));
    else drops[why]++;
  }
  return kept;
}

function refusal(
  batch: Batch,
  i: number,
  anySource: boolean,
  allow: SourceAllowList,
  valid: ((d: Uint8Array) => boolean) | null | undefined,
): number {
  if (batch.length(i) === 0) return DROP.empty;
  if (!anySource && !allow.allows(batch.from(i).host)) return DROP.denied;
  if (valid && !valid(batch.data(i))) return DROP.malformed;
  return -1;
}
