import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { PersistenceTable } from "../../lib/scheduler/persistence.ts";

function table(options: { timeoutMs?: number; maxEntries?: number } = {}) {
  const clock = new ManualClock(1_000_000);
  return { clock, table: new PersistenceTable(clock, { timeoutMs: 60_000, ...options }) };
}

Deno.test("PersistenceTable.get returns the server a client was sent to until the idle timeout", () => {
  const { clock, table: t } = table();
  assert.equal(t.get("192.0.2.1"), undefined);
  t.set("192.0.2.1", "10.0.0.1:80");
  t.set("192.0.2.2", "10.0.0.2:80");
  assert.equal(t.size, 2);
  clock.advance(59_999);
  assert.equal(t.get("192.0.2.1"), "10.0.0.1:80");
  clock.advance(1);
  // 192.0.2.1 was used a moment ago; 192.0.2.2 has now been idle for the whole timeout.
  assert.equal(t.get("192.0.2.2"), undefined);
  assert.equal(t.get("192.0.2.1"), "10.0.0.1:80");
  assert.equal(t.size, 1);
});

Deno.test("PersistenceTable.get refreshes the timeout on every use", () => {
  const { clock, table: t } = table({ timeoutMs: 1000 });
  t.set("192.0.2.1", "10.0.0.1:80");
  for (let n = 0; n < 10; n++) {
    clock.advance(900);
    assert.equal(t.get("192.0.2.1"), "10.0.0.1:80");
  }
  clock.advance(1000);
  assert.equal(t.get("192.0.2.1"), undefined);
  assert.equal(t.size, 0);
});

Deno.test("PersistenceTable.set moves a client to another server and restarts its timeout", () => {
  const { clock, table: t } = table({ timeoutMs: 1000 });
  t.set("192.0.2.1", "10.0.0.1:80");
  clock.advance(800);
  t.set("192.0.2.1", "10.0.0.2:80");
  clock.advance(800);
  assert.equal(t.get("192.0.2.1"), "10.0.0.2:80");
  assert.equal(t.size, 1);
  // The client left the old server's list: forgetting that server leaves it alone.
  assert.equal(t.forget("10.0.0.1:80"), 0);
  assert.equal(t.get("192.0.2.1"), "10.0.0.2:80");
});

Deno.test("PersistenceTable.set evicts the least recently used client at maxEntries", () => {
  const { clock, table: t } = table({ maxEntries: 3 });
  t.set("192.0.2.1", "10.0.0.1:80");
  clock.advance(10);
  t.set("192.0.2.2", "10.0.0.1:80");
  clock.advance(10);
  t.set("192.0.2.3", "10.0.0.2:80");
  clock.advance(10);
  assert.equal(t.get("192.0.2.1"), "10.0.0.1:80"); // now the most recently used
  t.set("192.0.2.4", "10.0.0.2:80");
  assert.equal(t.size, 3);
  assert.equal(t.get("192.0.2.2"), undefined);
  for (const client of ["192.0.2.1", "192.0.2.3", "192.0.2.4"]) assert.notEqual(t.get(client), undefined);
  // Updating a client already held does not evict anyone.
  t.set("192.0.2.3", "10.0.0.3:80");
  assert.equal(t.size, 3);
  // The evicted client left its server's list too.
  assert.equal(t.forget("10.0.0.1:80"), 1);
});

Deno.test("PersistenceTable.set makes room from expired entries before evicting a live one", () => {
  const { clock, table: t } = table({ timeoutMs: 1000, maxEntries: 2 });
  t.set("192.0.2.1", "10.0.0.1:80");
  clock.advance(500);
  t.set("192.0.2.2", "10.0.0.1:80");
  clock.advance(600); // 192.0.2.1 expired, 192.0.2.2 has 400 ms left
  t.set("192.0.2.3", "10.0.0.2:80");
  assert.equal(t.get("192.0.2.2"), "10.0.0.1:80");
  assert.equal(t.get("192.0.2.3"), "10.0.0.2:80");
});

Deno.test("PersistenceTable.forget drops every client of a server and no one else", () => {
  const { table: t } = table();
  for (let n = 0; n < 3000; n++) t.set(`192.0.${n >> 8}.${n & 255}`, `10.0.0.${n % 3}:80`);
  assert.equal(t.forget("10.0.0.1:80"), 1000);
  assert.equal(t.forget("10.0.0.1:80"), 0);
  assert.equal(t.size, 2000);
  for (let n = 0; n < 3000; n++) {
    const expected = n % 3 === 1 ? undefined : `10.0.0.${n % 3}:80`;
    assert.equal(t.get(`192.0.${n >> 8}.${n & 255}`), expected);
  }
});

Deno.test("PersistenceTable.sweep removes expired entries and counts them", () => {
  const { clock, table: t } = table({ timeoutMs: 1000 });
  for (let n = 0; n < 10; n++) {
    t.set(`192.0.2.${n}`, "10.0.0.1:80");
    clock.advance(100);
  }
  // Entries set at 0..900 ms; at 1450 ms the ones set at 0..400 have expired.
  clock.advance(450);
  assert.equal(t.sweep(), 5);
  assert.equal(t.sweep(), 0);
  assert.equal(t.get("192.0.2.4"), undefined);
  assert.equal(t.get("192.0.2.5"), "10.0.0.1:80");
  clock.advance(1000);
  assert.equal(t.sweep(), 5);
  assert.equal(t.size, 0);
  // Expired entries also left their server's list.
  assert.equal(t.forget("10.0.0.1:80"), 0);
});

Deno.test("PersistenceTable.delete and clear drop entries", () => {
  const { table: t } = table();
  t.set("192.0.2.1", "10.0.0.1:80");
  t.set("192.0.2.2", "10.0.0.1:80");
  assert.equal(t.delete("192.0.2.1"), true);
  assert.equal(t.delete("192.0.2.1"), false);
  assert.equal(t.forget("10.0.0.1:80"), 1);
  t.set("192.0.2.3", "10.0.0.2:80");
  t.clear();
  assert.equal(t.size, 0);
  assert.equal(t.get("192.0.2.3"), undefined);
});

Deno.test("PersistenceTable rejects a timeout or bound that is not positive", () => {
  const clock = new ManualClock();
  assert.throws(() => new PersistenceTable(clock, { timeoutMs: 0 }), {
    name: "RangeError",
    message: 'Cannot create a persistence table: timeout "0" ms is not a positive number',
  });
  assert.throws(() => new PersistenceTable(clock, { timeoutMs: 1000, maxEntries: 0 }), {
    name: "RangeError",
    message: 'Cannot create a persistence table: maxEntries "0" is not a positive integer',
  });
});
