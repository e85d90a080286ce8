import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { guardProcess } from "../../lib/core/guard.ts";
import { Logger } from "../../lib/core/logger.ts";

Deno.test("guardProcess keeps a process up through errors in a timer, a loop and an unawaited promise", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", new URL("./_guarded.ts", import.meta.url).pathname],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, stderr);
  const report = JSON.parse(new TextDecoder().decode(out.stdout));
  assert.equal(report.alive, true);
  assert.equal(report.caught, 3);
  const logged = (report.lines as string[]).map((l) => /msg="([^"]+)" error="?([^"]*)/.exec(l)?.slice(1));
  assert.deepEqual(logged.map((m) => m?.[0]).sort(), [
    "uncaught error; the node stays up",
    "unhandled rejection; the node stays up",
    "unhandled rejection; the node stays up",
  ]);
  assert.ok(report.lines.some((l: string) => l.includes("Error: in a timer")));
  assert.ok(report.lines.some((l: string) => l.includes("Error: nobody awaits this")));
  assert.ok(report.lines.some((l: string) => l.includes("Error: in a loop")));
});

Deno.test("guardProcess lets go of its target when disposed", () => {
  const target = new EventTarget();
  const lines: string[] = [];
  const logger = new Logger({ level: "info", clock: new ManualClock(0), sink: (l) => lines.push(l) });
  {
    using guard = guardProcess(logger, target);
    const event = new ErrorEvent("error", { error: new TypeError("boom"), cancelable: true });
    target.dispatchEvent(event);
    assert.equal(event.defaultPrevented, true);
    assert.equal(guard.caught, 1);
  }
  const later = new ErrorEvent("error", { error: new Error("after"), cancelable: true });
  target.dispatchEvent(later);
  assert.equal(later.defaultPrevented, false);
  assert.equal(lines.length, 1);
  assert.match(lines[0], /level=error .*error="TypeError: boom"/);
});
