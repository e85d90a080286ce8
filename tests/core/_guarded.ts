/** A process with the guard installed whose timer, loop and stray promise all throw; it must print "alive". */
import { systemClock } from "../../lib/core/clock.ts";
import { guardProcess } from "../../lib/core/guard.ts";
import { Logger } from "../../lib/core/logger.ts";

const lines: string[] = [];
const guard = guardProcess(new Logger({ level: "info", clock: systemClock, sink: (l) => lines.push(l) }));
setTimeout(() => {
  throw new Error("in a timer");
}, 0);
void Promise.reject(new Error("nobody awaits this"));
(async () => {
  await new Promise((r) => setTimeout(r, 5));
  throw new Error("in a loop");
})();
// Ends once the three have been caught (the guard counts them); the test's own timeout bounds the wait.
const check = setInterval(() => {
  if (guard.caught < 3) return;
  clearInterval(check);
  console.log(JSON.stringify({ alive: true, caught: guard.caught, lines }));
}, 5);
