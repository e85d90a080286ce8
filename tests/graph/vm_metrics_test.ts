/**
 * The metric sets a VM group's worker reports, as the node's registry shows them: only the reflector's subsystems,
 * with the session's and group's labels forced, at most a cap of sets with the rest counted, never more series than
 * a set was made with, and gone when the worker stops reporting them or the group ends.
 */
import assert from "node:assert/strict";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { MetricMirror } from "../../lib/graph/vm/metrics.ts";
import type { MetricSnapshot } from "../../lib/graph/vm/protocol.ts";

function socketSet(n: number, sent = n): MetricSnapshot {
  return {
    subsystem: "reflector_socket",
    labels: { reflector: "s/R", socket: `10.0.0.1:${n}` },
    series: [{
      kind: "counter",
      name: "sent_total",
      help: "Datagrams sent from this socket",
      value: sent,
    }],
  };
}

function mirror(maxSets?: number) {
  const registry = new MetricsRegistry();
  const told: string[] = [];
  const m = new MetricMirror(registry, {
    labels: { session: "s", vm: "v" },
    maxSets,
    onRefused: (subsystem, why) => told.push(`${subsystem}: ${why}`),
  });
  return { registry, told, m };
}

Deno.test("MetricMirror shows a worker's sets with the session's labels, and follows their values", () => {
  const { registry, m } = mirror();
  m.update([socketSet(1, 5)]);
  assert.match(
    registry.render(),
    /edgenode_reflector_socket_sent_total\{reflector="s\/R",socket="10.0.0.1:1",session="s",vm="v"\} 5\n/,
  );
  m.update([socketSet(1, 9)]);
  assert.match(registry.render(), /socket="10.0.0.1:1",session="s",vm="v"\} 9\n/);
  assert.equal(m.refused, 0);
});

Deno.test("MetricMirror forces the session's labels over those the worker claims", () => {
  const { registry, m } = mirror();
  m.update([{ ...socketSet(1), labels: { reflector: "other/R", session: "other", vm: "x" } }]);
  assert.match(registry.render(), /\{reflector="other\/R",session="s",vm="v"\} 1\n/);
  assert.doesNotMatch(registry.render(), /"other"|"x"/);
});

Deno.test("MetricMirror refuses subsystems a VM may not report and malformed sets, and tells of the first only", () => {
  const { registry, told, m } = mirror();
  const bad = [
    { subsystem: "session_ap", labels: { session: "victim" }, series: [] },
    { ...socketSet(2), labels: { reflector: 5 } },
    { ...socketSet(3), series: [{ kind: "counter", name: "sent_total", help: "x", value: "1" }] },
    { ...socketSet(4), series: [{ kind: "histogram", name: "sent_total", help: "x", value: 1 }] },
    { ...socketSet(5), series: "none" },
    null,
  ] as unknown as MetricSnapshot[];
  m.update([...bad, socketSet(1)]);
  assert.equal(m.refused, bad.length);
  assert.deepEqual(told, ["session_ap: not a subsystem a VM group may report"]);
  assert.equal(registry.render().split("\n").filter((l) => l.startsWith("edgenode_")).length, 1);
});

Deno.test("MetricMirror shows at most maxSets sets, counts the rest, and takes on new ones as old ones go", () => {
  const { registry, told, m } = mirror(3);
  m.update([1, 2, 3, 4, 5].map((n) => socketSet(n)));
  assert.equal(m.refused, 2);
  assert.deepEqual(told, ["reflector_socket: the group shows 3 sets already"]);
  const shown = () => registry.render().match(/socket="10.0.0.1:\d+"/g)?.map((s) => s.slice(17, -1));
  assert.deepEqual(shown(), ["1", "2", "3"]);
  m.update([3, 4, 5].map((n) => socketSet(n)));
  assert.deepEqual(shown(), ["3", "4", "5"], "1 and 2 left; 4 and 5 take their places");
  assert.equal(m.refused, 0);
});

Deno.test("MetricMirror does not let a later report add series to a set", () => {
  const { registry, m } = mirror();
  m.update([socketSet(1)]);
  const grown = socketSet(1);
  m.update([{
    ...grown,
    series: [...grown.series, { kind: "counter", name: "extra_total", help: "Added later", value: 1 }],
  }]);
  assert.doesNotMatch(registry.render(), /extra_total/);
});

Deno.test("MetricMirror counts a set the registry refuses and does not try it again", () => {
  const { registry, told, m } = mirror();
  // A name the registry knows with another help: refused by the registry, not shown.
  registry.set("reflector_socket", { other: "1" }).counter("sent_total", "Something else");
  m.update([socketSet(1)]);
  assert.equal(m.refused, 1);
  assert.match(
    told[0],
    /^reflector_socket: Metric "edgenode_reflector_socket_sent_total" is declared/,
  );
  m.update([socketSet(1)]);
  assert.equal(m.refused, 1);
  assert.equal(told.length, 1);
});

Deno.test("MetricMirror.clear takes every shown set out of the registry", () => {
  const { registry, m } = mirror();
  m.update([socketSet(1), socketSet(2)]);
  m.clear();
  assert.equal(registry.render(), "");
});
