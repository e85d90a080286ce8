/**
 * A worker module that speaks the VM protocol as an untrusted one might: it answers `start`, `stop` and `close`, but
 * its snapshots are never answers (no request id), and each claims counters for every AP of the plan, a status
 * that would rename its own APs, and metric sets it may not show. It runs no element.
 */
import type { SnapshotMessage, StartMessage, ToWorker } from "../../lib/graph/vm/protocol.ts";

const scope = globalThis as unknown as {
  postMessage(message: unknown): void;
  onmessage: ((event: MessageEvent<ToWorker>) => void) | null;
  close(): void;
};
let plan: StartMessage["plan"] | null = null;
let snapshots = 0;

function snapshot(): SnapshotMessage {
  snapshots++;
  return {
    type: "snapshot",
    aps: plan!.aps.map((ap, i) => ({
      ap: i,
      inputs: ap.inputs.map(() => [999, 999] as const),
      outputs: ap.outputs.map(() => [999, 999] as const),
      errors: 999,
      status: { name: "forged", vm: "forged", snapshots },
    })),
    metrics: [
      { subsystem: "session_ap", labels: { session: "victim" }, series: [] },
      {
        subsystem: "reflector",
        labels: { reflector: "x" },
        series: [{ kind: "gauge", name: "participants", help: "?", value: "NaN" as unknown as number }],
      },
    ],
    dropped: 0,
    final: false,
    id: null,
  };
}

scope.onmessage = (event) => {
  const m = event.data;
  if (m instanceof ArrayBuffer) return;
  switch (m.type) {
    case "start":
      plan = m.plan;
      scope.postMessage(snapshot());
      return scope.postMessage({ type: "started" });
    case "snapshot":
      return scope.postMessage(snapshot());
    case "stop":
      return scope.postMessage({ type: "stopped", ap: m.ap });
    case "close":
      scope.postMessage({ type: "closed" });
      return scope.close();
  }
};
