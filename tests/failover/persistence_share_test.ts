/** What PersistenceTable offers sharing: the onSet hook, import without it, and export. */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { PersistenceTable } from "../../lib/scheduler/persistence.ts";

function table(timeoutMs = 1000, maxEntries = 100) {
  const clock = new ManualClock(0);
  const told: string[] = [];
  const t = new PersistenceTable(clock, { timeoutMs, maxEntries, onSet: (c, k) => told.push(`${c}>${k}`) });
  return { clock, told, t };
}

Deno.test("PersistenceTable onSet tells a new entry, a moved one, and a used one only every half timeout", () => {
  const { clock, told, t } = table();
  t.set("a", "s1");
  t.set("a", "s1");
  clock.advance(499);
  t.set("a", "s1");
  assert.deepEqual(told, ["a>s1"]);
  clock.advance(1);
  t.set("a", "s1");
  assert.deepEqual(told, ["a>s1", "a>s1"]);
  t.set("a", "s2");
  assert.deepEqual(told, ["a>s1", "a>s1", "a>s2"]);
});

Deno.test("PersistenceTable import sets entries with the local timeout and tells nobody", () => {
  const { clock, told, t } = table();
  assert.equal(t.import([["a", "s1"], ["b", "s2"]]), 2);
  assert.deepEqual(told, []);
  assert.equal(t.get("b"), "s2");
  // Used here soon after, an imported entry is not told back; moved, it is.
  t.set("a", "s1");
  assert.deepEqual(told, []);
  t.set("a", "s2");
  assert.deepEqual(told, ["a>s2"]);
  clock.advance(999);
  assert.equal(t.get("b"), "s2", "alive for the local timeout");
  clock.advance(1000);
  assert.equal(t.get("b"), undefined, "an imported entry expires like any other");
});

Deno.test("PersistenceTable import keeps the maxEntries bound and the index forget uses", () => {
  const { t } = table(1000, 2);
  t.import([["a", "s1"], ["b", "s1"], ["c", "s2"]]);
  assert.equal(t.size, 2);
  assert.equal(t.get("a"), undefined, "the least recently used made room");
  assert.equal(t.forget("s1"), 1);
  assert.equal(t.get("b"), undefined);
  assert.equal(t.get("c"), "s2");
});

Deno.test("PersistenceTable export gives live entries, most recently used first, up to max", () => {
  const { clock, t } = table();
  t.set("a", "s1");
  clock.advance(10);
  t.set("b", "s2");
  t.set("c", "s1");
  clock.advance(500);
  t.get("a");
  assert.deepEqual(t.export(), [["a", "s1", 1000], ["c", "s1", 500], ["b", "s2", 500]]);
  assert.deepEqual(t.export(2), [["a", "s1", 1000], ["c", "s1", 500]]);
  clock.advance(600);
  assert.deepEqual(t.export(), [["a", "s1", 400]], "expired entries are not exported");
});

Deno.test("PersistenceTable import keeps a copy at least as long as the sender's entry, though its uses go untold", () => {
  const a = table(1000);
  const b = new PersistenceTable(a.clock, { timeoutMs: 1000 });
  a.t.set("c", "s1");
  b.import([["c", "s1"]]); // what a told, pushed at once
  a.clock.advance(400);
  a.t.get("c");
  a.t.set("c", "s1"); // used again within half a timeout: not told
  assert.deepEqual(a.told, ["c>s1"]);
  a.clock.advance(999);
  assert.equal(a.t.get("c"), "s1", "a still holds it");
  assert.equal(b.get("c"), "s1", "and so does b's copy");
});

Deno.test("PersistenceTable import keeps a copy for what the entry had left at the sender, plus half a timeout", () => {
  const { clock, t } = table(1000);
  t.import([["old", "s1", 200], ["new", "s2", 1000], ["over", "s2", 5000]]);
  assert.equal(t.size, 3);
  clock.advance(699);
  assert.deepEqual(
    t.export(),
    [["over", "s2", 301], ["new", "s2", 301], ["old", "s1", 0]],
    "without the half",
  );
  clock.advance(1);
  assert.equal(t.get("old"), undefined, "200 ms left at the sender plus 500");
  assert.equal(t.size, 2);
  clock.advance(800);
  assert.equal(t.size, 0, "no copy outlives the local timeout plus half of it");
});

Deno.test("PersistenceTable keeps copies imported out of order in order of expiry, and a used copy becomes local", () => {
  const { clock, t } = table(1000, 3);
  t.import([["a", "s1", 900]]);
  t.import([["b", "s1", 100]]);
  t.set("c", "s2");
  clock.advance(600);
  assert.equal(t.size, 2, "b went first though it came later");
  assert.equal(t.get("a"), "s1"); // now used here: the local timeout from now
  clock.advance(999);
  assert.equal(t.get("a"), "s1");
  assert.equal(t.get("c"), undefined);
  // At the bound, the entry that would expire first makes room.
  t.import([["d", "s1", 10], ["e", "s1", 1000]]);
  t.set("f", "s2");
  assert.deepEqual(t.export().map(([c]) => c).sort(), ["a", "e", "f"]);
});
