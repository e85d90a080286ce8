/** The child-process supervisor with an injected clock and fake children: backoff, reaping, stderr ring, stop. */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { type Child, type ChildExit, Supervisor } from "../../lib/core/supervisor.ts";

class FakeChild implements Child {
  static next = 100;
  readonly pid = FakeChild.next++;
  readonly status: Promise<ChildExit>;
  readonly stdout: ReadableStream<Uint8Array>;
  readonly stderr: ReadableStream<Uint8Array>;
  readonly signals: string[] = [];
  exit!: (e: ChildExit) => void;
  #err!: ReadableStreamDefaultController<Uint8Array>;
  #out!: ReadableStreamDefaultController<Uint8Array>;
  constructor(readonly obeysTerm = true) {
    this.status = new Promise((r) =>
      this.exit = (e) => {
        this.#err.close();
        this.#out.close();
        r(e);
      }
    );
    this.stderr = new ReadableStream({ start: (c) => void (this.#err = c) });
    this.stdout = new ReadableStream({ start: (c) => void (this.#out = c) });
  }
  write(text: string, err = true) {
    (err ? this.#err : this.#out).enqueue(new TextEncoder().encode(text));
  }
  kill(signal: Deno.Signal) {
    this.signals.push(signal);
    if (signal === "SIGKILL" || this.obeysTerm) this.exit({ code: 128, signal });
  }
}

const turns = async (n = 20) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setTimeout(r, 0));
};

Deno.test("Supervisor restarts a crashing child with doubling delays up to the cap", async () => {
  const clock = new ManualClock(0);
  const children: FakeChild[] = [];
  const sup = new Supervisor({
    clock,
    spawn: () => {
      const c = new FakeChild();
      children.push(c);
      return c;
    },
    backoff: { initialMs: 100, maxMs: 400, factor: 2, resetAfterMs: 10_000 },
  });
  sup.start();
  await turns();
  const delays: number[] = [];
  for (let i = 0; i < 5; i++) {
    children.at(-1)!.exit({ code: 1, signal: null });
    await turns();
    assert.equal(sup.state, "backoff");
    delays.push(sup.nextDelayMs);
    clock.advance(sup.nextDelayMs);
    await turns();
    assert.equal(sup.state, "running");
  }
  assert.deepEqual(delays, [100, 200, 400, 400, 400]);
  // A long run resets the delay.
  clock.advance(10_000);
  children.at(-1)!.exit({ code: 1, signal: null });
  await turns();
  assert.equal(sup.nextDelayMs, 100);
  assert.equal(sup.runs, 6);
  await sup.stop();
});

Deno.test("Supervisor keeps a bounded stderr ring and hands stdout lines over", async () => {
  const clock = new ManualClock(0);
  const child = new FakeChild();
  const out: string[] = [];
  const sup = new Supervisor({ clock, spawn: () => child, stderrLines: 3, onStdoutLine: (l) => out.push(l) });
  sup.start();
  await turns();
  child.write("a\nb\nc\r\nd\ne");
  child.write("frame=1\nprogress=continue\n", false);
  await turns();
  await sup.stop();
  assert.deepEqual(sup.stderr.lines(), ["c", "d", "e"]);
  assert.equal(sup.stderr.dropped, 2);
  assert.deepEqual(out, ["frame=1", "progress=continue"]);
});

Deno.test("Supervisor stop sends SIGTERM, SIGKILL after the grace period, and reaps the child", async () => {
  const clock = new ManualClock(0);
  const child = new FakeChild(false);
  const sup = new Supervisor({ clock, spawn: () => child, killAfterMs: 500 });
  sup.start();
  await turns();
  const stopped = sup.stop();
  await turns();
  assert.deepEqual(child.signals, ["SIGTERM"]);
  clock.advance(500);
  await stopped;
  assert.deepEqual(child.signals, ["SIGTERM", "SIGKILL"]);
  assert.equal(sup.state, "stopped");
  assert.equal(sup.crashes, 0, "an asked-for end is not a crash");
  assert.equal(clock.pending, 0, "no restart pending");
});

Deno.test("Supervisor fails at once when the program cannot be spawned", async () => {
  const sup = new Supervisor({
    clock: new ManualClock(0),
    spawn: () => {
      throw new Deno.errors.NotFound("ffmpeg: not found");
    },
  });
  sup.start();
  await turns();
  assert.equal(sup.state, "failed");
  assert.match(sup.error!, /^Cannot start the child process: ffmpeg: not found/);
});

Deno.test("Supervisor stop during a spawn resolves only after that child is killed and reaped", async () => {
  const clock = new ManualClock(0);
  const child = new FakeChild();
  let reaped = false;
  void child.status.then(() => reaped = true);
  let spawned!: (c: Child) => void;
  const sup = new Supervisor({ clock, spawn: () => new Promise<Child>((r) => spawned = r) });
  sup.start();
  await turns();
  let done = false;
  const stopped = sup.stop().then(() => done = true);
  await turns();
  assert.equal(done, false, "stop waits for the spawn in flight");
  spawned(child);
  await stopped;
  assert.deepEqual(child.signals, ["SIGKILL"]);
  assert.ok(reaped, "the child's status was awaited before stop resolved");
  assert.equal(sup.state, "stopped");
  assert.equal(sup.runs, 1);
});

Deno.test("Supervisor retries after a passing spawn error and fails only on a missing program", async () => {
  const clock = new ManualClock(0);
  const errors = [new Error("no free port"), new Deno.errors.PermissionDenied("ffmpeg: not executable")];
  const children: FakeChild[] = [];
  const sup = new Supervisor({
    clock,
    backoff: { initialMs: 100 },
    spawn: (run) => {
      if (run === 1) throw errors[0];
      if (run === 3) throw errors[1];
      const c = new FakeChild();
      children.push(c);
      return c;
    },
  });
  sup.start();
  await turns();
  assert.equal(sup.state, "backoff");
  assert.match(sup.error!, /^Cannot start the child process: no free port/);
  clock.advance(100);
  await turns();
  assert.equal(sup.state, "running");
  assert.equal(sup.error, null);
  children[0].exit({ code: 1, signal: null });
  await turns();
  clock.advance(sup.nextDelayMs);
  await turns();
  assert.equal(sup.state, "failed");
  assert.match(sup.error!, /not executable/);
  assert.equal(clock.pending, 0, "no retry after a permanent failure");
  await sup.stop();
});
