/**
 * The machine's readers: real /proc files and real commands, with the command timeout driven by a
 * ManualClock.
 */
import assert from "node:assert/strict";
import { systemReaders } from "../../lib/agent/load.ts";
import { ManualClock } from "../../lib/core/clock.ts";

const options = { timeoutMs: 1000, maxBytes: 1024 };

Deno.test("systemReaders reads /proc text and gives null for a missing file", async () => {
  const r = systemReaders(new ManualClock());
  const loadavg = await r.readText("/proc/loadavg");
  assert.match(loadavg ?? "", /^[0-9]+\.[0-9]+ /);
  assert.equal(await r.readText("/proc/no-such-file"), null);
  assert.ok(r.cpuCount() >= 1);
});

Deno.test("systemReaders runs a command without a shell and returns its output", async () => {
  const r = systemReaders(new ManualClock());
  assert.deepEqual(await r.run(["/bin/echo", "42%", "drain"], options), { stdout: "42% drain\n" });
  // No shell: the argument is passed as is, not expanded.
  assert.deepEqual(await r.run(["/bin/echo", "$HOME *"], options), { stdout: "$HOME *\n" });
});

Deno.test("systemReaders reports a failing or missing command", async () => {
  const r = systemReaders(new ManualClock());
  assert.deepEqual(await r.run(["/bin/false"], options), { error: '"/bin/false" exited with status 1' });
  assert.deepEqual(await r.run(["/nonexistent/agent-probe"], options), {
    error: 'Cannot run "/nonexistent/agent-probe": no such file',
  });
});

Deno.test("systemReaders kills a command that runs past its timeout", async () => {
  const clock = new ManualClock();
  const r = systemReaders(clock);
  const running = r.run(["/bin/sleep", "30"], { timeoutMs: 50, maxBytes: 1024 });
  clock.advance(50);
  assert.deepEqual(await running, { error: '"/bin/sleep" did not finish within 50 ms' });
});

Deno.test("systemReaders kills a command whose output is over the limit", async () => {
  const r = systemReaders(new ManualClock());
  assert.deepEqual(await r.run(["/usr/bin/yes"], { timeoutMs: 10_000, maxBytes: 4096 }), {
    error: '"/usr/bin/yes" wrote more than 4096 bytes',
  });
});
