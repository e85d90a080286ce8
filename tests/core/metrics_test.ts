import assert from "node:assert/strict";
import { declareSeries, figuresOf, MetricsRegistry } from "../../lib/core/metrics.ts";

Deno.test("MetricsRegistry.render writes HELP and TYPE once per name for sets that share it", () => {
  const registry = new MetricsRegistry();
  const a = registry.set("relay", { session: "a" });
  const b = registry.set("relay", { session: "b" });
  a.counter("packets_total", "Packets relayed").inc(5);
  a.gauge("peers", "Peers joined").set(2);
  b.counter("packets_total", "Packets relayed").inc();
  b.gauge("peers", "Peers joined").set(0);
  assert.equal(
    registry.render(),
    [
      "# HELP edgenode_relay_packets_total Packets relayed",
      "# TYPE edgenode_relay_packets_total counter",
      'edgenode_relay_packets_total{session="a"} 5',
      'edgenode_relay_packets_total{session="b"} 1',
      "# HELP edgenode_relay_peers Peers joined",
      "# TYPE edgenode_relay_peers gauge",
      'edgenode_relay_peers{session="a"} 2',
      'edgenode_relay_peers{session="b"} 0',
      "",
    ].join("\n"),
  );
});

Deno.test("MetricsRegistry.render escapes quote, backslash and newline in label values", () => {
  const registry = new MetricsRegistry();
  registry.set("relay", { session: 'say "hi"', path: "C:\\tmp", note: "two\nlines" })
    .counter("packets_total", "Packets relayed").inc(3);
  assert.equal(
    registry.render(),
    [
      "# HELP edgenode_relay_packets_total Packets relayed",
      "# TYPE edgenode_relay_packets_total counter",
      'edgenode_relay_packets_total{session="say \\"hi\\"",path="C:\\\\tmp",note="two\\nlines"} 3',
      "",
    ].join("\n"),
  );
});

Deno.test("MetricsRegistry.render escapes backslash and newline in help text", () => {
  const registry = new MetricsRegistry();
  registry.set("agent").gauge("load", "Load as read from C:\\proc\nper second").set(1);
  assert.equal(
    registry.render(),
    [
      "# HELP edgenode_agent_load Load as read from C:\\\\proc\\nper second",
      "# TYPE edgenode_agent_load gauge",
      "edgenode_agent_load 1",
      "",
    ].join("\n"),
  );
});

Deno.test("MetricsRegistry.render uses the namespace given to the registry", () => {
  const registry = new MetricsRegistry("box");
  registry.set("http").counter("requests_total", "Requests").inc();
  assert.match(registry.render(), /^box_http_requests_total 1$/m);
});

Deno.test("MetricsRegistry.render writes NaN and infinities the Prometheus way", () => {
  const registry = new MetricsRegistry();
  const set = registry.set("x");
  set.gauge("nan", "n").set(NaN);
  set.gauge("up", "u").set(Infinity);
  set.gauge("down", "d").set(-Infinity);
  const samples = registry.render().split("\n").filter((l) => l && !l.startsWith("#"));
  assert.deepEqual(samples, ["edgenode_x_nan NaN", "edgenode_x_up +Inf", "edgenode_x_down -Inf"]);
});

Deno.test("MetricsRegistry.render is empty when nothing is registered", () => {
  assert.equal(new MetricsRegistry().render(), "");
});

Deno.test("CounterSet.gauge with a read callback reports the owner's value at render time", () => {
  const registry = new MetricsRegistry();
  let queue = 4;
  registry.set("relay").gauge("queue_depth", "Packets waiting", () => queue);
  assert.match(registry.render(), /^edgenode_relay_queue_depth 4$/m);
  queue = 9;
  assert.match(registry.render(), /^edgenode_relay_queue_depth 9$/m);
});

Deno.test("CounterSet.counter rejects a name that does not end in _total", () => {
  const set = new MetricsRegistry().set("relay");
  assert.throws(() => set.counter("packets", "Packets"), {
    message: 'Counter name "packets" must end in "_total"',
  });
});

Deno.test("CounterSet rejects a metric name declared twice in one set", () => {
  const set = new MetricsRegistry().set("relay");
  set.counter("packets_total", "Packets");
  assert.throws(() => set.counter("packets_total", "Packets"), {
    message: 'Metric "packets_total" is declared twice in "relay"',
  });
  assert.throws(() => set.gauge("packets_total", "Packets"), /declared twice/);
});

Deno.test("CounterSet rejects invalid metric and label names", () => {
  const registry = new MetricsRegistry();
  assert.throws(() => registry.set("relay").gauge("bad-name", "x"), {
    message: 'Invalid metric name "bad-name"',
  });
  assert.throws(() => registry.set("relay", { "bad-label": "x" }), {
    message: 'Invalid label name "bad-label"',
  });
  assert.throws(() => registry.set("bad subsystem"), { message: 'Invalid subsystem name "bad subsystem"' });
});

Deno.test("CounterSet.values gives current values by short name with _total dropped", () => {
  const set = new MetricsRegistry().set("relay", { session: "a" });
  const packets = set.counter("packets_total", "Packets");
  set.gauge("peers", "Peers").set(3);
  set.gauge("queue_depth", "Queue", () => 7);
  packets.inc();
  packets.inc(4);
  assert.deepEqual(set.values(), { packets: 5, peers: 3, queue_depth: 7 });
});

Deno.test("MetricsRegistry.remove drops a set's series from the rendered text", () => {
  const registry = new MetricsRegistry();
  const a = registry.set("relay", { session: "a" });
  const b = registry.set("relay", { session: "b" });
  a.counter("packets_total", "Packets").inc();
  b.counter("packets_total", "Packets").inc(2);
  registry.remove(a);
  assert.equal(
    registry.render(),
    [
      "# HELP edgenode_relay_packets_total Packets",
      "# TYPE edgenode_relay_packets_total counter",
      'edgenode_relay_packets_total{session="b"} 2',
      "",
    ].join("\n"),
  );
  registry.remove(b);
  assert.equal(registry.render(), "");
});

Deno.test("MetricsRegistry refuses a metric name reused with another kind or help", () => {
  const registry = new MetricsRegistry();
  registry.set("relay", { relay: "a" }).gauge("peers", "Peers joined");
  registry.set("relay", { relay: "a2" }).counter("drops_total", "Packets dropped");
  const b = registry.set("relay", { relay: "b" });
  b.gauge("peers", "Peers joined"); // same kind and help: fine
  assert.throws(
    () => b.gauge("drops_total", "Packets dropped"),
    /"edgenode_relay_drops_total" is declared as counter/,
  );
  const c = registry.set("relay", { relay: "c" });
  assert.throws(
    () => c.gauge("peers", "Participants"),
    /"edgenode_relay_peers" is declared as gauge "Peers joined"/,
  );
});

Deno.test("MetricsRegistry refuses a second live set with the same subsystem and labels", () => {
  const registry = new MetricsRegistry();
  const first = registry.set("http", { a: "1", b: "2" });
  assert.throws(
    () => registry.set("http", { b: "2", a: "1" }),
    /counter set "http" with labels \{b="2",a="1"\} exists already/,
  );
  registry.remove(first);
  registry.set("http", { a: "1", b: "2" });
});

Deno.test("MetricsRegistry.publish shows declared series in /metrics and the same figures in values()", () => {
  const registry = new MetricsRegistry();
  const figures = { rx: 3, queued: 2, cut: 1 };
  const declared = declareSeries<typeof figures>({
    rx: { help: "Datagrams received" },
    queued: { help: "Datagrams waiting", kind: "gauge" },
    truncated: { help: "Datagrams cut", read: (f) => f.cut },
  });
  const set = registry.publish("relay", { relay: "a" }, declared, () => figures);
  figures.rx = 5;
  assert.deepEqual(set.values(), { rx: 5, queued: 2, truncated: 1 });
  assert.deepEqual(figuresOf(declared, figures), set.values());
  assert.equal(
    registry.render(),
    [
      "# HELP edgenode_relay_rx_total Datagrams received",
      "# TYPE edgenode_relay_rx_total counter",
      'edgenode_relay_rx_total{relay="a"} 5',
      "# HELP edgenode_relay_queued Datagrams waiting",
      "# TYPE edgenode_relay_queued gauge",
      'edgenode_relay_queued{relay="a"} 2',
      "# HELP edgenode_relay_truncated_total Datagrams cut",
      "# TYPE edgenode_relay_truncated_total counter",
      'edgenode_relay_truncated_total{relay="a"} 1',
      "",
    ].join("\n"),
  );
});

Deno.test("declareSeries refuses a name that would read differently in /status and /metrics", () => {
  assert.throws(() => declareSeries({ rx_total: { help: "x" } }), /Invalid series name "rx_total"/);
  assert.throws(() => declareSeries({ "rx-packets": { help: "x" } }), /Invalid series name/);
});

Deno.test("MetricsRegistry.publish leaves no set behind when a declaration clashes", () => {
  const registry = new MetricsRegistry();
  registry.set("relay", { relay: "a" }).gauge("rx", "Other meaning");
  assert.throws(
    () =>
      registry.publish(
        "relay",
        { relay: "b" },
        declareSeries({ rx: { help: "Other", kind: "gauge" } }),
        () => ({}),
      ),
    /declared as gauge "Other meaning"/,
  );
  registry.publish(
    "relay",
    { relay: "b" },
    declareSeries({ rx: { help: "Other meaning", kind: "gauge" } }),
    () => ({ rx: 1 }),
  );
});
